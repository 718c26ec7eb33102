//! Bakes libtorch's library folder into every binary of this crate (the
//! plugin, its tests) as RUNPATH, so nothing needs LD_LIBRARY_PATH, and
//! records libtorch's version and folder for the code.
//!
//! torch-sys (`links = "tch"`) reports the folder it linked against as the
//! metadata key `libtorch_lib`, which cargo passes to direct dependents as
//! `DEP_TCH_LIBTORCH_LIB`.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let lib = match std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        Some(dir) => PathBuf::from(dir),
        // torch-sys only reports it on Linux and macOS; fall back on LIBTORCH.
        None => match std::env::var_os("LIBTORCH") {
            Some(root) => PathBuf::from(root).join("lib"),
            None => panic!(
                "nngeo-backend-tch: torch-sys reported no libtorch folder and LIBTORCH is not set \
                 (run scripts/setup-libtorch.sh)"
            ),
        },
    };
    let lib = lib.canonicalize().unwrap_or(lib);
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" || target_os == "macos" {
        if target_os == "linux" {
            // RUNPATH rather than the legacy RPATH, whatever the linker's default.
            println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
        }
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    println!("cargo:rustc-env=NNGEO_LIBTORCH_LIB={}", lib.display());
    let version = libtorch_version(&lib).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=NNGEO_LIBTORCH_VERSION={version}");
    // The CUDA toolkit the wheel was built for (`+cu130` → `CUDA 13.0`).
    let cuda = wheel_cuda(&lib).unwrap_or_else(|| "no CUDA build tag".into());
    println!("cargo:rustc-env=NNGEO_LIBTORCH_CUDA={cuda}");
    shim(&lib);
}

/// Compiles `cpp/shim.cpp` against libtorch's headers, with the C++ ABI
/// torch-sys compiles its own bindings with (PyPI's torch: the new one).
fn shim(lib: &Path) {
    println!("cargo:rerun-if-changed=cpp/shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let include = lib.parent().map(|root| root.join("include")).unwrap();
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("cpp/shim.cpp")
        .include(&include)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("nngeo_tch_shim");
}

/// `2.11.0` from a Python wheel's `torch/version.py`, a libtorch archive's
/// `build-version`, or the C++ headers, without any local suffix (`+cu130`).
fn libtorch_version(lib: &Path) -> Option<String> {
    let root = lib.parent()?;
    let strip = |v: &str| v.trim().split('+').next().unwrap_or("").to_string();
    // (A missing file named in rerun-if-changed would rerun this every build.)
    let read = |p: PathBuf| {
        let text = std::fs::read_to_string(&p).ok()?;
        println!("cargo:rerun-if-changed={}", p.display());
        Some(text)
    };
    if let Some(py) = read(root.join("version.py")) {
        for line in py.lines() {
            if let Some(rest) = line.strip_prefix("__version__") {
                let v = rest
                    .trim_start_matches([' ', '='])
                    .trim_matches(['\'', '"', ' ']);
                return Some(strip(v));
            }
        }
    }
    if let Some(v) = read(root.join("build-version")) {
        return Some(strip(&v));
    }
    let header = read(root.join("include/torch/headeronly/version.h"))
        .or_else(|| read(root.join("include/torch/csrc/api/include/torch/version.h")))?;
    let part = |name: &str| {
        header.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("#define ")?.strip_prefix(name)?;
            rest.trim().parse::<u32>().ok()
        })
    };
    Some(format!(
        "{}.{}.{}",
        part("TORCH_VERSION_MAJOR")?,
        part("TORCH_VERSION_MINOR")?,
        part("TORCH_VERSION_PATCH")?
    ))
}

/// `CUDA 13.0` from the local version tag of a wheel's `version.py`.
fn wheel_cuda(lib: &Path) -> Option<String> {
    let py = std::fs::read_to_string(lib.parent()?.join("version.py")).ok()?;
    let line = py.lines().find(|l| l.starts_with("__version__"))?;
    let tag = line.split('+').nth(1)?.trim_matches(['\'', '"', ' ']);
    let digits = tag.strip_prefix("cu")?;
    let (major, minor) = digits.split_at(digits.len().checked_sub(1)?);
    Some(format!("CUDA {major}.{minor}"))
}
