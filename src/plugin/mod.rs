//! Backends loaded at run time.
//!
//! A plugin is a `cdylib` exporting a versioned C ABI ([`abi`]); requests
//! and results cross it as serde messages ([`wire`]). Plugin authors write a
//! [`Backend`](crate::backend::Backend) and call [`export_backend!`](crate::export_backend),
//! which generates every `extern "C"` entry point ([`guest`]); the host
//! loads, checks and wraps plugins ([`host`]) and finds them ([`discover`]).
//! See `backends/README.md` for a walk-through.

pub mod abi;
pub mod discover;
pub mod guest;
pub mod host;
pub mod wire;

pub use guest::BackendPlugin;

/// Everything a backend plugin needs, in one import:
/// `use nngeo::plugin::prelude::*;`.
pub mod prelude {
    pub use crate::backend::{Backend, BackendError};
    pub use crate::engine::Engine;
    pub use crate::geometry::ops::{Binary, Ops, OpsError, OpsResult, Reduce, Unary};
    pub use crate::plan::Dtype;
    pub use crate::plugin::BackendPlugin;
}
pub use host::{load, LoadError, Plugin, PluginBackend, PluginMeta};

/// The nngeo version: the schema of the messages a plugin exchanges.
pub const NNGEO_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The compiler that built this nngeo (and so the plugins built with it).
pub const RUSTC_VERSION: &str = env!("NNGEO_RUSTC_VERSION");
