//! The host side: loading a plugin library, checking that it speaks our ABI,
//! and wrapping it as a [`Backend`].

use super::abi::{Buf, PluginTable, Str, ABI_VERSION, STATUS_ERROR, STATUS_OK, STATUS_PANIC};
use super::abi::{CallFn, CapabilitiesFn, CreateFn, DestroyFn, FreeBufFn};
use super::abi::{TABLE_SYMBOL, VERSION_SYMBOL};
use super::wire::{self, Request, Response, WireEmitted};
use super::NNGEO_VERSION;
use crate::backend::{Backend, BackendError, BackendInfo, Emitted, RunContext, StepOutput};
use crate::plan::{Plan, Step};
use std::ffi::c_void;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Why a library is not usable as a plugin.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LoadError {
    /// The dynamic loader refused it (missing file, missing dependency such
    /// as `libcuda.so.1`, wrong architecture…): `reason` is the loader's.
    #[error("{}: cannot be loaded: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    #[error("{}: not an nngeo backend plugin: {reason}", path.display())]
    NotAPlugin { path: PathBuf, reason: String },
    /// It is a plugin, built for another host: `field` says what differs.
    #[error("{}: refused: {field} differs (plugin {plugin}, host {host})", path.display())]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        plugin: String,
        host: String,
    },
}

/// What a plugin's table says about it.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginMeta {
    pub path: PathBuf,
    pub name: String,
    pub plugin_version: String,
    pub nngeo_version: String,
    pub rustc_version: String,
    pub features: Vec<String>,
    pub framework: String,
}

/// A loaded, compatible plugin. Its library stays loaded for the life of the
/// process: code of an unloaded library may still be referenced (thread
/// locals, atexit handlers of libtorch), so unloading is never safe.
#[derive(Clone)]
pub struct Plugin {
    pub meta: PluginMeta,
    table: Entries,
}

/// The table's entry points, checked non-null.
#[derive(Clone, Copy)]
struct Entries {
    create: CreateFn,
    destroy: DestroyFn,
    capabilities: CapabilitiesFn,
    call: CallFn,
    free_buf: FreeBufFn,
}

/// libloading's `Display` of a dlopen failure says only "DlOpen { .. }"; the
/// loader's own message is its `source()`.
fn loader_reason(e: &libloading::Error) -> String {
    use std::error::Error;
    match e.source() {
        Some(s) => s.to_string(),
        None => e.to_string(),
    }
}

fn read_str(s: Str) -> String {
    if s.ptr.is_null() {
        return String::new();
    }
    // SAFETY: the plugin's table points at static UTF-8 of `len` bytes; lossy
    // conversion guards against a plugin that lies about UTF-8.
    String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(s.ptr, s.len) }).into_owned()
}

/// Loads `path` and checks, in order: the ABI version, the table's size, the
/// nngeo version it was built against (the message schema).
pub fn load(path: &Path) -> Result<Plugin, LoadError> {
    let p = path.to_path_buf();
    // SAFETY: loading runs the library's initialisers; that is what a plugin
    // is. Version checks catch mistakes, not malice.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::Open {
        path: p.clone(),
        reason: loader_reason(&e),
    })?;
    // SAFETY: the symbol's type is fixed by ABI version 1 onwards.
    let version = unsafe { lib.get::<extern "C" fn() -> u32>(VERSION_SYMBOL) }.map_err(|e| {
        LoadError::NotAPlugin {
            path: p.clone(),
            reason: format!(
                "no `nngeo_plugin_abi_version` symbol ({})",
                loader_reason(&e)
            ),
        }
    })?;
    let v = version();
    if v != ABI_VERSION {
        return Err(LoadError::Mismatch {
            path: p,
            field: "ABI version",
            plugin: v.to_string(),
            host: ABI_VERSION.to_string(),
        });
    }
    // SAFETY: with a matching ABI version this symbol has this type.
    let table_fn = unsafe { lib.get::<extern "C" fn() -> *const PluginTable>(TABLE_SYMBOL) }
        .map_err(|e| LoadError::NotAPlugin {
            path: p.clone(),
            reason: format!("no `nngeo_plugin_table` symbol ({})", loader_reason(&e)),
        })?;
    let ptr = table_fn();
    if ptr.is_null() {
        return Err(LoadError::NotAPlugin {
            path: p,
            reason: "its table is null".into(),
        });
    }
    // SAFETY: the first field of every table version is its size.
    let size = unsafe { std::ptr::read(ptr.cast::<usize>()) };
    if size < std::mem::size_of::<PluginTable>() {
        return Err(LoadError::Mismatch {
            path: p,
            field: "table size",
            plugin: format!("{size} bytes"),
            host: format!("at least {} bytes", std::mem::size_of::<PluginTable>()),
        });
    }
    // The library is never unloaded, so its static table lives forever.
    let lib = Box::leak(Box::new(lib));
    let _ = lib;
    // SAFETY: size checked; the table is a static of the (leaked) library.
    let table: &'static PluginTable = unsafe { &*ptr };
    let meta = PluginMeta {
        path: p.clone(),
        name: read_str(table.name),
        plugin_version: read_str(table.plugin_version),
        nngeo_version: read_str(table.nngeo_version),
        rustc_version: read_str(table.rustc_version),
        features: read_str(table.features)
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        framework: read_str(table.framework),
    };
    if meta.nngeo_version != NNGEO_VERSION {
        return Err(LoadError::Mismatch {
            path: p,
            field: "nngeo version (message schema)",
            plugin: meta.nngeo_version,
            host: NNGEO_VERSION.into(),
        });
    }
    let null = |entry: &str| LoadError::NotAPlugin {
        path: p.clone(),
        reason: format!("its table's `{entry}` entry point is null"),
    };
    let table = Entries {
        create: table.create.ok_or_else(|| null("create"))?,
        destroy: table.destroy.ok_or_else(|| null("destroy"))?,
        capabilities: table.capabilities.ok_or_else(|| null("capabilities"))?,
        call: table.call.ok_or_else(|| null("call"))?,
        free_buf: table.free_buf.ok_or_else(|| null("free_buf"))?,
    };
    Ok(Plugin { meta, table })
}

/// Copies a plugin-allocated buffer into host memory and gives it back.
fn take(table: &Entries, buf: Buf) -> Vec<u8> {
    let v = if buf.ptr.is_null() {
        Vec::new()
    } else {
        // SAFETY: the plugin wrote `len` initialised bytes at `ptr`.
        unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec()
    };
    (table.free_buf)(buf);
    v
}

impl Plugin {
    /// A fresh backend instance of this plugin.
    pub fn create(&self) -> Result<PluginBackend, BackendError> {
        let mut handle: *mut c_void = std::ptr::null_mut();
        let mut out = Buf::empty();
        let status = (self.table.create)(&mut handle, &mut out);
        let msg = take(&self.table, out);
        let unavailable = |reason: String| BackendError::Unavailable {
            name: self.meta.name.clone(),
            reason,
        };
        match status {
            STATUS_OK if !handle.is_null() => {}
            STATUS_OK => return Err(unavailable("the plugin returned no backend".into())),
            STATUS_ERROR => {
                return Err(wire::decode::<BackendError>(&msg)
                    .map(|(e, _)| e)
                    .unwrap_or_else(|e| unavailable(e.to_string())))
            }
            _ => {
                return Err(unavailable(format!(
                    "the plugin panicked while starting: {}",
                    String::from_utf8_lossy(&msg)
                )))
            }
        }
        let mut backend = PluginBackend {
            plugin: self.clone(),
            handle,
            info: None,
        };
        let mut out = Buf::empty();
        let status = (self.table.capabilities)(handle, &mut out);
        let msg = take(&self.table, out);
        let info = backend.response(status, &msg, 0, |m| {
            wire::decode::<BackendInfo>(m)
                .map(|(i, _)| i)
                .map_err(|e| e.to_string())
        })?;
        backend.info = Some(info);
        Ok(backend)
    }
}

/// A plugin's backend instance, usable wherever the built-in one is.
pub struct PluginBackend {
    plugin: Plugin,
    handle: *mut c_void,
    info: Option<BackendInfo>,
}

/// Where the plugin's emit callback delivers to.
struct EmitSink<'a> {
    emit: &'a mut dyn FnMut(Emitted),
    malformed: Option<String>,
    panic: Option<Box<dyn std::any::Any + Send>>,
}

extern "C" fn deliver(ctx: *mut c_void, msg: *const u8, len: usize) -> i32 {
    // SAFETY: `ctx` is the `EmitSink` of the `call` in progress, and the
    // plugin passes `len` readable bytes.
    let sink = unsafe { &mut *ctx.cast::<EmitSink>() };
    let bytes = unsafe { std::slice::from_raw_parts(msg, len) };
    let decoded = wire::decode::<WireEmitted>(bytes).and_then(|(w, tail)| w.unpack(tail));
    match decoded {
        Ok(e) => match catch_unwind(AssertUnwindSafe(|| (sink.emit)(e))) {
            Ok(()) => 0,
            Err(p) => {
                // Re-raised on the host's side of the boundary after `call`.
                sink.panic.get_or_insert(p);
                1
            }
        },
        Err(e) => {
            sink.malformed.get_or_insert(e.to_string());
            1
        }
    }
}

impl PluginBackend {
    pub fn plugin(&self) -> &PluginMeta {
        &self.plugin.meta
    }

    /// Turns a status and message into a value or a `BackendError`.
    fn response<T>(
        &self,
        status: i32,
        msg: &[u8],
        step: u32,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<T, BackendError> {
        let name = &self.plugin.meta.name;
        match status {
            STATUS_OK => parse(msg).map_err(|e| BackendError::Failed {
                step,
                message: format!("backend plugin `{name}` answered badly: {e}"),
            }),
            STATUS_ERROR => Err(wire::decode::<BackendError>(msg)
                .map(|(e, _)| e)
                .unwrap_or_else(|e| BackendError::Failed {
                    step,
                    message: format!(
                        "backend plugin `{name}` failed and its error is unreadable: {e}"
                    ),
                })),
            STATUS_PANIC => Err(BackendError::Failed {
                step,
                message: format!(
                    "backend plugin `{name}` panicked: {}",
                    String::from_utf8_lossy(msg)
                ),
            }),
            other => Err(BackendError::Failed {
                step,
                message: format!("backend plugin `{name}` returned unknown status {other}"),
            }),
        }
    }

    /// Sends one request; returns the success message, or the error.
    fn exchange(
        &mut self,
        req: &Request,
        step: u32,
        emit: &mut dyn FnMut(Emitted),
    ) -> Result<Vec<u8>, BackendError> {
        let msg = wire::encode(req, &[]);
        let mut sink = EmitSink {
            emit,
            malformed: None,
            panic: None,
        };
        let mut out = Buf::empty();
        let status = (self.plugin.table.call)(
            self.handle,
            msg.as_ptr(),
            msg.len(),
            deliver,
            (&mut sink as *mut EmitSink).cast(),
            &mut out,
        );
        let reply = take(&self.plugin.table, out);
        if let Some(p) = sink.panic {
            resume_unwind(p);
        }
        if let Some(m) = sink.malformed {
            return Err(BackendError::Failed {
                step,
                message: format!(
                    "backend plugin `{}` emitted a bad result: {m}",
                    self.plugin.meta.name
                ),
            });
        }
        self.response(status, &reply, step, |m| Ok(m.to_vec()))
    }

    /// Sends a request and decodes its response.
    fn request<T>(
        &mut self,
        req: &Request,
        step: u32,
        emit: &mut dyn FnMut(Emitted),
        read: impl FnOnce(Response, &[u8]) -> Result<T, String>,
    ) -> Result<T, BackendError> {
        let reply = self.exchange(req, step, emit)?;
        let bad = |e: String| BackendError::Failed {
            step,
            message: format!(
                "backend plugin `{}` answered badly: {e}",
                self.plugin.meta.name
            ),
        };
        let (r, tail) = wire::decode::<Response>(&reply).map_err(|e| bad(e.to_string()))?;
        read(r, tail).map_err(bad)
    }
}

impl Backend for PluginBackend {
    fn info(&self) -> BackendInfo {
        self.info.clone().expect("set by Plugin::create")
    }

    fn prepare(&mut self, plan: &Plan, ctx: &RunContext) -> Result<(), BackendError> {
        let req = Request::Prepare {
            plan: Box::new(plan.clone()),
            ctx: ctx.clone(),
        };
        self.request(&req, 0, &mut |_| {}, |r, _| match r {
            Response::Prepared => Ok(()),
            other => Err(format!("expected `prepared`, got {other:?}")),
        })
    }

    fn run(
        &mut self,
        _plan: &Plan,
        step: &Step,
        emit: &mut dyn FnMut(Emitted),
    ) -> Result<StepOutput, BackendError> {
        // The plugin runs the step of the plan it was prepared with.
        self.request(
            &Request::Run { step: step.id },
            step.id.0,
            emit,
            |r, tail| match r {
                Response::Output { output } => output.unpack(tail).map_err(|e| e.to_string()),
                other => Err(format!("expected an output, got {other:?}")),
            },
        )
    }

    fn warnings(&mut self) -> Vec<String> {
        let r = self.request(&Request::Warnings, 0, &mut |_| {}, |r, _| match r {
            Response::Warnings { warnings } => Ok(warnings),
            other => Err(format!("expected warnings, got {other:?}")),
        });
        r.unwrap_or_else(|e| vec![format!("could not read the plugin's warnings: {e}")])
    }
}

impl Drop for PluginBackend {
    fn drop(&mut self) {
        (self.plugin.table.destroy)(self.handle);
    }
}
