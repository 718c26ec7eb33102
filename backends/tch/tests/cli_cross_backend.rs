//! `nngeo exec FILE --backend tch` against `--backend candle`: the same
//! `results.jsonl` up to float tolerance, through the real executable and
//! the tch plugin loaded from next to it; tch both on its CPU paths and on
//! the GPU's (`NNGEO_TCH_DEVICE_PATHS=on`: the NTK and dense Fishers held
//! as libtorch tensors, decompositions and solves in libtorch, the
//! optimiser's update on the device), which no GPU is needed to check.
//!
//! Tolerances: `fim_zoo` (f64, no training) within 1e-10 relative to each
//! value's largest entry; the training experiments, forced to f64, within
//! 1e-8 (hundreds of optimiser steps let rounding differences of the two
//! libraries' kernels grow, but nowhere near f32's 1e-7).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

// Not every reduced configuration is compared across backends here.
#[allow(dead_code)]
#[path = "../../../tests/conformance/reduced.rs"]
mod reduced;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds `nngeo` and the tch plugin (same profile as this test) once;
/// returns the executable.
fn nngeo_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        // The test binary lives in target/<profile>/deps.
        let dir = std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .to_path_buf();
        let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        // `--lib` too: with `--bin` alone the plugin's library is not a
        // target of this build and a stale copy next to `nngeo` would load.
        cmd.current_dir(root()).args([
            "build",
            "-p",
            "nngeo",
            "--bin",
            "nngeo",
            "-p",
            "nngeo-backend-tch",
            "--lib",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir.join(format!("nngeo{}", std::env::consts::EXE_SUFFIX))
    })
}

fn nngeo(args: &[&str]) -> Output {
    nngeo_with(args, &[])
}

fn nngeo_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(nngeo_exe())
        .args(args)
        .current_dir(root())
        .env_remove("NNGEO_BACKEND")
        .env_remove("NNGEO_DEVICE")
        .env_remove("NNGEO_TCH_DEVICE_PATHS")
        .env("NNGEO_CONFIG", "")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The GPU's code paths on the CPU (see `TchOps`): results held and
/// decomposed as libtorch tensors, the optimiser's update on the device.
const GPU_PATHS: &[(&str, &str)] = &[("NNGEO_TCH_DEVICE_PATHS", "on")];

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn exec(file: &Path, backend: &str, extra: &[&str], out: &Path) -> Vec<Value> {
    exec_with(file, backend, extra, out, &[])
}

fn exec_with(
    file: &Path,
    backend: &str,
    extra: &[&str],
    out: &Path,
    env: &[(&str, &str)],
) -> Vec<Value> {
    let mut args = vec![
        "exec",
        file.to_str().unwrap(),
        "--backend",
        backend,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = nngeo_with(&args, env);
    assert!(o.status.success(), "{backend}: {}", text(&o));
    std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn largest(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap().abs(),
        Value::Array(a) => a.iter().map(largest).fold(0.0, f64::max),
        Value::Object(o) => o.values().map(largest).fold(0.0, f64::max),
        _ => 0.0,
    }
}

/// Largest |a − b| / scale over the numbers of two JSON values of the same
/// structure; `Err` where the structure differs.
fn max_rel(a: &Value, b: &Value, scale: f64, path: &str) -> Result<f64, String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            Ok((x - y).abs() / scale.max(1e-300))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .try_fold(0.0f64, |m, (p, q)| Ok(m.max(max_rel(p, q, scale, path)?))),
        (Value::Object(x), Value::Object(y)) if x.len() == y.len() => {
            x.iter().try_fold(0.0f64, |m, (k, p)| {
                let q = y.get(k).ok_or(format!("{path}.{k} missing"))?;
                Ok(m.max(max_rel(p, q, scale, &format!("{path}.{k}"))?))
            })
        }
        _ if a == b => Ok(0.0),
        _ => Err(format!("{path}: {a} vs {b}")),
    }
}

/// Compares two result streams line by line; returns the worst relative
/// difference and its key.
fn compare(tch: &[Value], candle: &[Value], tol: f64) -> (f64, String) {
    assert_eq!(tch.len(), candle.len(), "different numbers of results");
    let mut worst = (0.0f64, String::new());
    for (a, b) in tch.iter().zip(candle) {
        let key = b["key"].as_str().unwrap().to_string();
        assert_eq!(a["key"], b["key"]);
        assert_eq!(a["step_id"], b["step_id"]);
        assert_eq!(a["sweep"], b["sweep"]);
        assert_eq!(a.get("step"), b.get("step"), "{key}");
        if key.contains("time") || key.starts_with("memory") {
            continue;
        }
        // Each value relative to its own largest entry (a kernel's error is
        // judged against the kernel, not entry by entry near zero).
        let mut scale = largest(&b["value"]).max(1e-12);
        if key.starts_with("rel_error") {
            // Already relative, 1 is its natural scale: an exact structure's
            // error is rounding noise (1e-16 on either backend), whose
            // "relative difference" means nothing.
            scale = scale.max(1.0);
        }
        let r = max_rel(&a["value"], &b["value"], scale, &key).unwrap();
        assert!(
            r <= tol,
            "{key} (step {:?}, {}): tch and candle differ by {r:.2e} relative\n tch: {}\n candle: {}",
            b.get("step"),
            b["sweep"],
            a["value"],
            b["value"]
        );
        if r >= worst.0 {
            worst = (r, key);
        }
    }
    worst
}

#[test]
fn fim_zoo_gives_the_same_results_on_tch_and_candle() {
    let dir = tempfile::tempdir().unwrap();
    let file = root().join("experiments/fim_zoo.ngx");
    let c = exec(&file, "candle", &[], &dir.path().join("candle"));
    let t = exec(&file, "tch", &[], &dir.path().join("tch"));
    assert!(c.len() > 20);
    let (worst, key) = compare(&t, &c, 1e-10);
    println!("fim_zoo: worst relative difference {worst:.2e} ({key})");
    let g = exec_with(&file, "tch", &[], &dir.path().join("gpu"), GPU_PATHS);
    let (worst, key) = compare(&g, &c, 1e-10);
    println!("fim_zoo, GPU paths: worst relative difference {worst:.2e} ({key})");
    let manifest = std::fs::read_to_string(dir.path().join("tch/manifest.json")).unwrap();
    assert!(manifest.contains("\"backend\": \"tch\""), "{manifest}");
}

/// `experiments/NAME.ngx` with `edits` (each must apply), forced to f64, on
/// both backends.
fn experiment_agrees(name: &str, edits: &[(&str, &str)], tol: f64) {
    let dir = tempfile::tempdir().unwrap();
    let src = reduced::source(&root(), name, edits);
    let file = dir.path().join(format!("{name}.ngx"));
    std::fs::write(&file, src).unwrap();
    let f64 = ["--dtype", "f64"];
    let c = exec(&file, "candle", &f64, &dir.path().join("candle"));
    let t = exec(&file, "tch", &f64, &dir.path().join("tch"));
    let (worst, key) = compare(&t, &c, tol);
    println!(
        "{name}: {} results, worst relative difference {worst:.2e} ({key})",
        c.len()
    );
    let g = exec_with(&file, "tch", &f64, &dir.path().join("gpu"), GPU_PATHS);
    let (worst, key) = compare(&g, &c, tol);
    println!("{name}, GPU paths: worst relative difference {worst:.2e} ({key})");
}

#[test]
fn ntk_align_agrees() {
    experiment_agrees("ntk_align", reduced::NTK_ALIGN, 1e-8);
}

#[test]
fn ekfac_optim_agrees() {
    experiment_agrees("ekfac_optim", reduced::EKFAC_OPTIM, 1e-8);
}

#[test]
fn lazy_vs_hasty_agrees() {
    experiment_agrees("lazy_vs_hasty", reduced::LAZY_VS_HASTY, 1e-8);
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error_not_a_crash() {
    if std::env::var_os("NNGEO_TEST_HAS_CUDA").is_some() {
        return; // on a GPU machine this run would succeed
    }
    let dir = tempfile::tempdir().unwrap();
    let o = nngeo(&[
        "exec",
        "experiments/fim_zoo.ngx",
        "--backend",
        "tch",
        "--device",
        "cuda",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("CUDA"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}
