//! The C ABI between the host and a backend plugin.
//!
//! Rust trait objects are only sound across libraries built by the identical
//! compiler from the identical crate graph; a libtorch plugin is a separately
//! built tree. So the boundary is this small C ABI and everything richer
//! travels as serde messages ([`super::wire`]).
//!
//! Reading order, which the host never changes:
//! 1. `nngeo_plugin_abi_version() -> u32`: nothing else is read unless it
//!    equals [`ABI_VERSION`];
//! 2. `nngeo_plugin_table() -> *const PluginTable`: a table whose first field
//!    is its own size. Fields are only ever appended, so a host reads the
//!    prefix it knows and refuses a table shorter than that.
//!
//! Ownership: a [`Buf`] returned by the plugin was allocated by the plugin
//! and goes back through its `free_buf`; the host never frees plugin memory
//! with its own allocator (they may differ).

use std::ffi::c_void;

/// Bumped whenever [`PluginTable`] or the calling convention changes in a way
/// an older host or plugin cannot read.
pub const ABI_VERSION: u32 = 1;

/// Exported symbol names (NUL-terminated for `dlsym`).
pub const VERSION_SYMBOL: &[u8] = b"nngeo_plugin_abi_version\0";
pub const TABLE_SYMBOL: &[u8] = b"nngeo_plugin_table\0";

/// A call succeeded; the out buffer holds the response message.
pub const STATUS_OK: i32 = 0;
/// The backend returned an error; the out buffer holds it as a message.
pub const STATUS_ERROR: i32 = 1;
/// The plugin panicked; the out buffer holds the panic message as UTF-8.
pub const STATUS_PANIC: i32 = 2;

/// A borrowed string with static lifetime inside the plugin.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Str {
    pub ptr: *const u8,
    pub len: usize,
}

impl Str {
    pub fn from_static(s: &'static str) -> Self {
        Str {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }
}

/// Bytes owned by the side that allocated them.
#[repr(C)]
pub struct Buf {
    pub ptr: *mut u8,
    pub len: usize,
    pub cap: usize,
}

impl Buf {
    pub fn empty() -> Self {
        Buf {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }
    /// Hands a vector over; it comes back through [`Buf::into_vec`] on the
    /// same side.
    pub fn from_vec(v: Vec<u8>) -> Self {
        let mut v = std::mem::ManuallyDrop::new(v);
        Buf {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            cap: v.capacity(),
        }
    }
    /// # Safety
    /// `self` came from [`Buf::from_vec`] in this same library.
    pub unsafe fn into_vec(self) -> Vec<u8> {
        if self.ptr.is_null() {
            return Vec::new();
        }
        Vec::from_raw_parts(self.ptr, self.len, self.cap)
    }
}

/// Called by the plugin for each result produced inside a step (a training
/// curve point, a hook's measurement), the moment it exists: a run that fails
/// later keeps it. Returns non-zero if the host could not take it.
pub type EmitFn = extern "C" fn(ctx: *mut c_void, msg: *const u8, len: usize) -> i32;

/// What a plugin exports. `#[repr(C)]`; never reorder, only append.
#[repr(C)]
pub struct PluginTable {
    /// `size_of::<PluginTable>()` where the plugin was built.
    pub size: usize,
    pub abi_version: u32,
    /// The backend's name, as `--backend` selects it.
    pub name: Str,
    /// The plugin crate's version.
    pub plugin_version: Str,
    /// The nngeo version the plugin was built against: the message schema
    /// (plan steps, values), so host and plugin must agree on it.
    pub nngeo_version: Str,
    /// The compiler that built the plugin (informative: the C ABI and serde
    /// messages do not depend on it).
    pub rustc_version: Str,
    /// Enabled Cargo features, comma-separated.
    pub features: Str,
    /// The numerical framework, e.g. `libtorch 2.11.0, CUDA 13.0`.
    pub framework: Str,
    /// Creates a backend instance; on failure writes an error message.
    /// (Entry points are `Option`s, i.e. nullable C function pointers: the
    /// host refuses a table with a null one rather than calling it.)
    pub create: Option<CreateFn>,
    pub destroy: Option<DestroyFn>,
    /// Writes the backend's `BackendInfo` message.
    pub capabilities: Option<CapabilitiesFn>,
    /// One request message in, one response (or error) message out.
    pub call: Option<CallFn>,
    /// Frees a buffer the plugin returned.
    pub free_buf: Option<FreeBufFn>,
}

pub type CreateFn = extern "C" fn(handle: *mut *mut c_void, out: *mut Buf) -> i32;
pub type DestroyFn = extern "C" fn(handle: *mut c_void);
pub type CapabilitiesFn = extern "C" fn(handle: *mut c_void, out: *mut Buf) -> i32;
pub type CallFn = extern "C" fn(
    handle: *mut c_void,
    req: *const u8,
    len: usize,
    emit: EmitFn,
    emit_ctx: *mut c_void,
    out: *mut Buf,
) -> i32;
pub type FreeBufFn = extern "C" fn(buf: Buf);

/// The table lives in a `static` of the plugin; raw pointers in it are to
/// immutable, never-freed data.
pub struct SyncTable(pub PluginTable);
unsafe impl Sync for SyncTable {}
unsafe impl Send for SyncTable {}
