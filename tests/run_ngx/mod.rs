//! Running `.ngx` sources through the public path (text → plan → backend →
//! results.jsonl) for the integration tests that include this module.
#![allow(dead_code)]

use nngeo::backend::{Backend, RunContext};
use nngeo::select::candle_backend;
use serde_json::Value;
use std::collections::HashMap;

/// The backend under test: the built-in candle, or `$NNGEO_BACKEND` (e.g.
/// `plugin:candle`, `tch`) to run this whole suite through a plugin.
pub fn backend() -> Box<dyn Backend> {
    match std::env::var("NNGEO_BACKEND") {
        Ok(name) if !name.is_empty() => {
            let config = nngeo::config::load().expect("nngeo.toml");
            nngeo::select::create(&name, &config).unwrap_or_else(|e| panic!("{e}"))
        }
        _ => candle_backend(),
    }
}

/// Runs a whole source file and returns every result by key.
pub fn run_source(src: &str) -> HashMap<String, Value> {
    run_in(src, tempfile::tempdir().unwrap().path())
}

/// Runs a whole source file with its run folder at `out` (which must not
/// hold an earlier run) and returns every result by key.
pub fn run_in(src: &str, out: &std::path::Path) -> HashMap<String, Value> {
    let plan =
        nngeo::compile_source(src, &Default::default()).unwrap_or_else(|e| panic!("{src}\n{e:?}"));
    let ctx = RunContext {
        base_dir: ".".into(),
        out_dir: out.to_path_buf(),
    };
    let mut be = backend();
    nngeo::exec::run(&plan, be.as_mut(), &ctx).unwrap();
    let text = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["key"].as_str().unwrap().to_string(), v["value"].clone())
        })
        .collect()
}

pub fn num(r: &HashMap<String, Value>, k: &str) -> f64 {
    r[k].as_f64().unwrap_or_else(|| panic!("{k}: {:?}", r[k]))
}

pub fn vec_of(r: &HashMap<String, Value>, k: &str) -> Vec<f64> {
    r[k]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{k}: {:?}", r[k]))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Every Fisher structure that is stored (all but Implicit), KFAC first.
pub const STORED: [&str; 7] = [
    "KFAC",
    "Dense",
    "BlockDiag",
    "Diag",
    "EKFAC",
    "QuasiDiag",
    "LowRank",
];
