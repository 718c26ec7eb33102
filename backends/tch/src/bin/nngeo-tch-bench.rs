//! `nngeo bench` for libtorch: the same cases (src/bench.rs) on `TchOps`,
//! on `cpu` or `cuda`, with candle's CPU medians measured in the same run
//! and NNGeometry's reference figures.
//!
//! ```text
//! nngeo-tch-bench [--device cpu|cuda|cuda:N] [--repeats N] [--no-candle] [--case NAME]...
//! ```
//! `--no-candle` skips the candle column (on a GPU machine, where the
//! comparison that matters is against NNGeometry on the same GPU).
//! Reference column: NNGeometry on a 2-core CPU (as `nngeo bench`) for
//! `cpu`; NNGeometry 0.4 / torch 2.11 on an H200 (shared/GPU.md) for `cuda`.

use nngeo::bench::{median_on, CASES};
use nngeo::plan::Dtype;
use nngeo_backend_tch::TchOps;

/// NNGeometry on an H200, float32 (seconds).
const H200: &[(&str, f64)] = &[
    ("kfac", 0.015),
    ("diag", 0.022),
    ("ekfac-refit", 0.076),
    ("ntk-1000", 2.15),
];

/// As the `nngeo` binary: candle's column runs on the allocator it has
/// there, and libtorch's tensors on the heap settings the plugin sets.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    nngeo::memory::keep_freed_mimalloc_pages();
    nngeo_backend_tch::keep_freed_pages();
    let mut device = "cpu".to_string();
    let mut repeats = 5usize;
    let mut cases: Vec<String> = Vec::new();
    let mut with_candle = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("error: {a} needs {what}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--device" => device = value("a device"),
            "--repeats" => {
                repeats = value("a number").parse().unwrap_or_else(|_| {
                    eprintln!("error: --repeats needs a number");
                    std::process::exit(2)
                })
            }
            "--case" => cases.push(value("a case name")),
            "--no-candle" => with_candle = false,
            _ => {
                eprintln!(
                    "usage: nngeo-tch-bench [--device cpu|cuda|cuda:N] [--repeats N] [--no-candle] [--case NAME]..."
                );
                return std::process::ExitCode::from(2);
            }
        }
    }
    let tch = match TchOps::new(&device, Dtype::F32) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let candle = nngeo::backend::candle::CandleOps::new("cpu", Dtype::F32).expect("cpu");
    let gpu = device != "cpu";
    println!(
        "nngeo-tch-bench: {}, device {device}, f32, median of {repeats}; candle on cpu in the same run",
        nngeo_backend_tch::version()
    );
    println!(
        "{:<12} {:>11} {:>11} {:>12} {:>11} {:>13}  what",
        "case",
        "tch (s)",
        "candle (s)",
        "tch/candle",
        if gpu { "NNG H200" } else { "NNG 2-core" },
        "NNG/tch"
    );
    for c in CASES {
        if !cases.is_empty() && !cases.iter().any(|n| n == c.name) {
            continue;
        }
        // `exec-*` cases run the `nngeo` binary: `NNGEO_BACKEND=tch nngeo bench`.
        if c.name.starts_with("exec-") {
            continue;
        }
        let t = match median_on(&tch, c.name, repeats) {
            Ok((s, _, _)) => s,
            Err(e) => {
                eprintln!("error: {}: {e}", c.name);
                return std::process::ExitCode::from(1);
            }
        };
        let k = with_candle
            .then(|| median_on(&candle, c.name, repeats).map(|r| r.0).ok())
            .flatten();
        let reference = if gpu {
            H200.iter().find(|(n, _)| *n == c.name).map(|(_, s)| *s)
        } else {
            c.reference
        };
        let fmt = |x: Option<f64>, p: usize| x.map_or("-".into(), |v| format!("{v:.p$}"));
        println!(
            "{:<12} {:>11.4} {:>11} {:>12} {:>11} {:>13}  {}",
            c.name,
            t,
            fmt(k, 4),
            fmt(k.map(|k| t / k), 2),
            fmt(reference, 3),
            fmt(reference.map(|r| r / t), 2),
            c.what
        );
    }
    std::process::ExitCode::SUCCESS
}
