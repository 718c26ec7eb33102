//! CUDA through libtorch: whether the NVIDIA driver is there, loading
//! `libtorch_cuda.so` next to the `libtorch_cpu.so` in use, and libtorch's
//! own error messages.

use std::sync::OnceLock;

/// How many CUDA devices libtorch can use, or why none.
///
/// rustc links with `--as-needed`, which drops `libtorch_cuda.so` (nothing
/// in the plugin names one of its symbols), and without it libtorch has no
/// CUDA kernels or CUDA hooks. So it is loaded here (and by the first
/// [`crate::ops::TchOps::new`], whatever the device), once, globally, from the folder
/// the running `libtorch_cpu.so` came from; the handle is never closed.
/// Where the NVIDIA driver is missing nothing is loaded.
pub fn cuda_device_count() -> Result<usize, String> {
    static STATUS: OnceLock<Result<usize, String>> = OnceLock::new();
    STATUS.get_or_init(probe_cuda).clone()
}

fn probe_cuda() -> Result<usize, String> {
    // Without the driver there is no device: libtorch_cuda.so and the CUDA
    // libraries it pulls in (cuBLAS, cuDNN, NCCL…) are then not loaded at
    // all, which took 0.1 s of every CPU run's start where the full torch
    // wheel is installed.
    nvidia_driver().map_err(|why| format!("no CUDA device visible ({why})"))?;
    load_libtorch_cuda().map_err(|why| format!("CUDA is not available to libtorch: {why}"))?;
    // Straight through torch-sys, reading libtorch's error slot ourselves:
    // tch's `Cuda::device_count` panics on an error.
    let count = unsafe { torch_sys::cuda::atc_cuda_device_count() };
    if let Some(err) = take_torch_error() {
        return Err(format!(
            "CUDA is not available to libtorch: {}",
            first_line(&err)
        ));
    }
    if count <= 0 {
        return Err(format!("no CUDA device visible ({})", driver_status()));
    }
    Ok(count as usize)
}

fn take_torch_error() -> Option<String> {
    unsafe {
        let p = torch_sys::get_and_reset_last_err();
        if p.is_null() {
            return None;
        }
        let s = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        libc::free(p as *mut libc::c_void);
        Some(s)
    }
}

pub(crate) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Whether the NVIDIA driver's library loads (checked once).
pub(crate) fn nvidia_driver() -> Result<(), String> {
    static DRIVER: OnceLock<Result<(), String>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            use libloading::os::unix::{Library, RTLD_LAZY, RTLD_LOCAL};
            unsafe { Library::open(Some("libcuda.so.1"), RTLD_LAZY | RTLD_LOCAL) }
                .map(drop)
                .map_err(|err| format!("driver libcuda.so.1 could not be loaded: {err}"))
        })
        .clone()
}

/// What the dynamic loader says about the NVIDIA driver library.
fn driver_status() -> String {
    use libloading::os::unix::{Library, RTLD_LAZY, RTLD_LOCAL};
    match unsafe { Library::open(Some("libcuda.so.1"), RTLD_LAZY | RTLD_LOCAL) } {
        Ok(_) => "the NVIDIA driver libcuda.so.1 loads, but reports no device".into(),
        Err(err) => format!("driver libcuda.so.1 could not be loaded: {err}"),
    }
}

/// The folder of the `libtorch_cpu.so` this process runs with, or the one
/// the crate was built against.
fn libtorch_lib_dir() -> std::path::PathBuf {
    loaded_dir("libtorch_cpu.so")
        .unwrap_or_else(|| std::path::PathBuf::from(env!("NNGEO_LIBTORCH_LIB")))
}

/// The directory of an already loaded shared library (`dlinfo`).
fn loaded_dir(name: &str) -> Option<std::path::PathBuf> {
    let cname = std::ffi::CString::new(name).ok()?;
    unsafe {
        let h = libc::dlopen(cname.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        if h.is_null() {
            return None;
        }
        let mut buf = vec![0 as libc::c_char; libc::PATH_MAX as usize + 1];
        let r = libc::dlinfo(
            h,
            libc::RTLD_DI_ORIGIN,
            buf.as_mut_ptr() as *mut libc::c_void,
        );
        libc::dlclose(h);
        if r != 0 {
            return None;
        }
        let s = std::ffi::CStr::from_ptr(buf.as_ptr()).to_str().ok()?;
        Some(std::path::PathBuf::from(s))
    }
}

/// Loads `libtorch_cuda.so` once (the first call decides).
pub(crate) fn load_libtorch_cuda() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED.get_or_init(dlopen_libtorch_cuda).clone()
}

fn dlopen_libtorch_cuda() -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    let path = libtorch_lib_dir().join("libtorch_cuda.so");
    if !path.exists() {
        return Err(format!(
            "libtorch_cuda.so could not be loaded: {} does not exist (a CPU-only libtorch)",
            path.display()
        ));
    }
    match unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(lib) => {
            // Never unloaded: libtorch keeps pointers into it.
            std::mem::forget(lib);
            Ok(())
        }
        Err(err) => Err(format!("libtorch_cuda.so could not be loaded: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::TchOps;
    use nngeo::geometry::ops::Ops;
    use nngeo::plan::Dtype;

    /// CUDA's library is looked for next to the `libtorch_cpu.so` really
    /// loaded, which is the one baked in as RUNPATH.
    #[test]
    fn libtorch_is_found_where_it_was_loaded_from() {
        let o = TchOps::new("cpu", Dtype::F64).unwrap();
        o.zeros(&[1]).unwrap();
        let dir = loaded_dir("libtorch_cpu.so").expect("libtorch_cpu.so is loaded");
        assert_eq!(dir, std::path::PathBuf::from(env!("NNGEO_LIBTORCH_LIB")));
        assert_eq!(libtorch_lib_dir(), dir);
        assert!(loaded_dir("libsurely_not_loaded_here.so").is_none());
    }
}
