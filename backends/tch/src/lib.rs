//! The libtorch backend of nngeo: [`TchOps`], the engine's primitive tensor
//! operations on libtorch through `tch`. Every Fisher and NTK structure,
//! training and measurement comes from nngeo's shared engine
//! ([`nngeo::engine::Engine`]); only the tensors live in libtorch.
//!
//! Built as a plugin (`cdylib`) and as a library (`rlib`, for tests).
//! libtorch's library folder is baked in as RUNPATH by `build.rs`; CUDA is
//! used when libtorch's CUDA library loads and sees a device.

pub mod ops;

pub use ops::{TchOps, TT};

/// The libtorch version this crate was built against, e.g. `2.11.0`.
pub fn libtorch_version() -> String {
    env!("NNGEO_LIBTORCH_VERSION").to_string()
}

/// The number of CUDA devices libtorch can use, or why it can use none.
/// The first call loads `libtorch_cuda.so`; the answer is then cached.
pub fn cuda_status() -> Result<usize, String> {
    ops::cuda_device_count()
}

/// `cpu`, then `cuda:0` … `cuda:{n-1}` when CUDA is usable.
pub fn devices() -> Vec<String> {
    let mut d = vec!["cpu".to_string()];
    if let Ok(n) = cuda_status() {
        d.extend((0..n).map(|i| format!("cuda:{i}")));
    }
    d
}

/// e.g. `nngeo-backend-tch 0.1.0, libtorch 2.11.0`.
pub fn version() -> String {
    format!(
        "nngeo-backend-tch {}, libtorch {}",
        env!("CARGO_PKG_VERSION"),
        libtorch_version()
    )
}

/// The backend: nngeo's engine over [`TchOps`].
pub fn backend() -> Box<dyn nngeo::backend::Backend> {
    Box::new(nngeo::engine::Engine::new("tch", &version(), TchOps::new).with_devices(devices()))
}

// ---------------------------------------------------------------- plugin export

/// The plugin: `nngeo exec FILE --backend tch [--device cuda]`.
pub struct Tch;

impl nngeo::plugin::BackendPlugin for Tch {
    const NAME: &'static str = "tch";
    fn framework() -> String {
        match cuda_status() {
            Ok(n) => format!(
                "libtorch {} built for {}; {n} CUDA device(s)",
                libtorch_version(),
                env!("NNGEO_LIBTORCH_CUDA")
            ),
            Err(why) => format!(
                "libtorch {} built for {}; CPU only here: {why}",
                libtorch_version(),
                env!("NNGEO_LIBTORCH_CUDA")
            ),
        }
    }
    fn create() -> Result<Box<dyn nngeo::backend::Backend>, nngeo::backend::BackendError> {
        Ok(backend())
    }
}

nngeo::export_backend!(Tch);
