//! The plugin side of the ABI, generic over a [`BackendPlugin`]:
//! `export_backend!` instantiates these functions in the plugin crate, so a
//! plugin author writes a `Backend` (usually `Engine<TheirOps>`) and one
//! macro line, and no `unsafe`.
//!
//! Since Rust 1.81 a panic unwinding out of an `extern "C"` function aborts
//! the process, so every entry point runs its body under `catch_unwind` and
//! turns a panic into `STATUS_PANIC` with the message.

use super::abi::{Buf, EmitFn, PluginTable, Str, SyncTable, ABI_VERSION, STATUS_ERROR};
use super::abi::{STATUS_OK, STATUS_PANIC};
use super::wire::{self, Request, Response, WireEmitted, WireOutput};
use crate::backend::{Backend, BackendError, BackendInfo};
use crate::plan::Plan;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a plugin crate implements; `export_backend!(ItsType)` does the rest.
pub trait BackendPlugin {
    /// The name users select with `--backend`.
    const NAME: &'static str;
    /// The numerical framework and its version, e.g. `candle-core 0.11` or
    /// `libtorch 2.11.0, CUDA 13.0`.
    fn framework() -> String;
    /// Enabled Cargo features worth reporting (e.g. `cuda`).
    fn features() -> Vec<String> {
        Vec::new()
    }
    fn create() -> Result<Box<dyn Backend>, BackendError>;
}

/// The state behind a plugin handle.
struct Guest {
    backend: Box<dyn Backend>,
    plan: Option<Plan>,
}

fn leak(s: String) -> Str {
    Str::from_static(Box::leak(s.into_boxed_str()))
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".into()
    }
}

/// Runs `body`, writing its message (or error, or panic text) to `out`.
fn guarded(out: *mut Buf, body: impl FnOnce() -> Result<Vec<u8>, Vec<u8>>) -> i32 {
    let (status, bytes) = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(msg)) => (STATUS_OK, msg),
        Ok(Err(msg)) => (STATUS_ERROR, msg),
        Err(p) => (STATUS_PANIC, panic_message(p).into_bytes()),
    };
    if !out.is_null() {
        // SAFETY: the host passes a valid, writable `Buf`.
        unsafe { out.write(Buf::from_vec(bytes)) };
    }
    status
}

/// Builds the plugin's table (called once, from the macro's `OnceLock`).
pub fn table<P: BackendPlugin>(plugin_version: &'static str) -> SyncTable {
    let mut features = catch_unwind(P::features).unwrap_or_default();
    features.sort();
    SyncTable(PluginTable {
        size: std::mem::size_of::<PluginTable>(),
        abi_version: ABI_VERSION,
        name: Str::from_static(P::NAME),
        plugin_version: Str::from_static(plugin_version),
        nngeo_version: Str::from_static(super::NNGEO_VERSION),
        rustc_version: Str::from_static(super::RUSTC_VERSION),
        features: leak(features.join(",")),
        framework: leak(
            catch_unwind(P::framework)
                .unwrap_or_else(|p| format!("unknown ({})", panic_message(p))),
        ),
        create: Some(create::<P>),
        destroy: Some(destroy),
        capabilities: Some(capabilities),
        call: Some(call),
        free_buf: Some(free_buf),
    })
}

extern "C" fn create<P: BackendPlugin>(handle: *mut *mut c_void, out: *mut Buf) -> i32 {
    guarded(out, || match P::create() {
        Ok(backend) => {
            let g = Box::new(Guest {
                backend,
                plan: None,
            });
            // SAFETY: the host passes a valid out pointer.
            unsafe { handle.write(Box::into_raw(g).cast()) };
            Ok(Vec::new())
        }
        Err(e) => Err(wire::encode_error(&e)),
    })
}

extern "C" fn destroy(handle: *mut c_void) {
    if handle.is_null() {
        return;
    }
    // A panic in a backend's Drop must not cross the boundary either.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `handle` came from `create` and is destroyed once.
        drop(unsafe { Box::from_raw(handle.cast::<Guest>()) })
    }));
}

fn guest<'a>(handle: *mut c_void) -> &'a mut Guest {
    assert!(!handle.is_null(), "null plugin handle");
    // SAFETY: `handle` came from `create`; the host never shares it between
    // threads or calls re-entrantly.
    unsafe { &mut *handle.cast::<Guest>() }
}

extern "C" fn capabilities(handle: *mut c_void, out: *mut Buf) -> i32 {
    guarded(out, || {
        let info: BackendInfo = guest(handle).backend.info();
        Ok(wire::encode(&info, &[]))
    })
}

extern "C" fn call(
    handle: *mut c_void,
    req: *const u8,
    len: usize,
    emit: EmitFn,
    emit_ctx: *mut c_void,
    out: *mut Buf,
) -> i32 {
    guarded(out, || {
        let g = guest(handle);
        // SAFETY: the host passes `len` readable bytes.
        let msg = unsafe { std::slice::from_raw_parts(req, len) };
        let fail =
            |step: u32, m: String| wire::encode_error(&BackendError::Failed { step, message: m });
        let (request, _) = wire::decode::<Request>(msg).map_err(|e| fail(0, e.to_string()))?;
        let response = match request {
            Request::Prepare { plan, ctx } => {
                g.backend
                    .prepare(&plan, &ctx)
                    .map_err(|e| wire::encode_error(&e))?;
                g.plan = Some(*plan);
                Response::Prepared
            }
            Request::Run { step } => {
                let plan = g
                    .plan
                    .as_ref()
                    .ok_or_else(|| fail(step.0, "run before prepare".into()))?;
                let s = plan
                    .steps
                    .get(step.0 as usize)
                    .ok_or_else(|| fail(step.0, "no such step in the prepared plan".into()))?;
                let mut sink = |e| {
                    let mut tail = Vec::new();
                    let w = WireEmitted::pack(e, &mut tail);
                    let m = wire::encode(&w, &tail);
                    emit(emit_ctx, m.as_ptr(), m.len());
                };
                let output = g
                    .backend
                    .run(plan, s, &mut sink)
                    .map_err(|e| wire::encode_error(&e))?;
                let mut tail = Vec::new();
                let output = WireOutput::pack(output, &mut tail);
                return Ok(wire::encode(&Response::Output { output }, &tail));
            }
            Request::Warnings => Response::Warnings {
                warnings: g.backend.warnings(),
            },
        };
        Ok(wire::encode(&response, &[]))
    })
}

extern "C" fn free_buf(buf: Buf) {
    // SAFETY: every Buf handed to the host came from `Buf::from_vec` here.
    drop(unsafe { buf.into_vec() })
}

/// Exports a backend plugin: `nngeo::export_backend!(MyPlugin);` in a
/// `cdylib` crate, where `MyPlugin: nngeo::plugin::BackendPlugin`.
#[macro_export]
macro_rules! export_backend {
    ($plugin:ty) => {
        /// ABI version of this plugin; the host reads it before anything else.
        #[no_mangle]
        pub extern "C" fn nngeo_plugin_abi_version() -> u32 {
            $crate::plugin::abi::ABI_VERSION
        }

        /// The plugin's table of metadata and entry points.
        #[no_mangle]
        pub extern "C" fn nngeo_plugin_table() -> *const $crate::plugin::abi::PluginTable {
            static TABLE: ::std::sync::OnceLock<$crate::plugin::abi::SyncTable> =
                ::std::sync::OnceLock::new();
            &TABLE
                .get_or_init(|| $crate::plugin::guest::table::<$plugin>(env!("CARGO_PKG_VERSION")))
                .0
        }
    };
}
