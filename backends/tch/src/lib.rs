//! The libtorch backend of nngeo: [`TchOps`], the engine's primitive tensor
//! operations on libtorch through `tch`. Every Fisher and NTK structure,
//! training and measurement comes from nngeo's shared engine
//! ([`nngeo::engine::Engine`]); only the tensors live in libtorch.
//!
//! Built as a plugin (`cdylib`) and as a library (`rlib`, for tests).
//! libtorch's library folder is baked in as RUNPATH by `build.rs`; CUDA is
//! used when libtorch's CUDA library loads and sees a device.

mod cuda;
pub mod held;
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

/// libtorch takes every CPU tensor from the C library's `malloc`, which
/// maps each large one afresh and unmaps it when it is freed: a ResNet18
/// KFAC (width 8, n = 256) took 3.2 million page faults and 6.6 s of
/// kernel time in a 13 s run, most of it the kernel zeroing pages the
/// previous layer had just returned. Here freed memory stays in the heap
/// for the next tensor (no `mmap` for large blocks, no trimming of the
/// heap's top within a step), and the executor's step boundaries
/// ([`nngeo::memory::release`]) hand it back with `malloc_trim`. A user's
/// own `GLIBC_TUNABLES` or `MALLOC_*_` settings win.
pub fn keep_freed_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        let user = std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy();
            k == "GLIBC_TUNABLES" || (k.starts_with("MALLOC_") && k.ends_with('_'))
        });
        if user {
            return;
        }
        ONCE.call_once(|| {
            // SAFETY: mallopt only sets the allocator's parameters; blocks
            // already mapped are still unmapped when freed.
            unsafe {
                libc::mallopt(libc::M_MMAP_MAX, 0);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            }
            nngeo::memory::set_release(|| {
                // SAFETY: returns the free parts of every arena to the OS.
                unsafe { libc::malloc_trim(0) };
            });
        });
    }
}

/// The backend: nngeo's engine over [`TchOps`].
pub fn backend() -> Box<dyn nngeo::backend::Backend> {
    keep_freed_pages();
    Box::new(
        nngeo::engine::Engine::new("tch", &version(), TchOps::new)
            .with_devices(devices())
            // EKFAC's bases, dense spectra and a Fisher's solves run in
            // libtorch on CUDA (`TchOps::with_device_linalg`); a dense NTK,
            // a dense Fisher, BlockDiag's dense blocks, KFAC's factors and
            // EKFAC's bases stay on the GPU with their reductions,
            // products, spectra and solves (`TchOps::with_device_storage`),
            // and so do the optimiser's weights and state in training; the
            // rest (Lanczos, low-rank algebra, the per-parameter diagonals
            // of Diag, QuasiDiag and EKFAC) on the host.
            .with_linalg(vec![
                "linalg:host".into(),
                "linalg:eigh:cuda".into(),
                "linalg:solve:cuda".into(),
                "storage:ntk:cuda".into(),
                "storage:fim-dense:cuda".into(),
                "storage:fim-blocks:cuda".into(),
                "storage:fim-factors:cuda".into(),
                "train:update:cuda".into(),
            ]),
    )
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
