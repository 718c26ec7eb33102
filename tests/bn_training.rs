//! nngeo against PyTorch float64 in BatchNorm's training mode and on the
//! graph layers (tests/conformance/bn_training.rs) on the built-in candle
//! backend, CPU; and the same training through the user's path, an `.ngx`
//! file run by `nngeo exec`. The libtorch backend runs the shared module
//! from backends/tch/tests/conformance.rs.

use nngeo::plan::Dtype;
use std::path::PathBuf;

type TestOps = nngeo::backend::candle::CandleOps;

fn test_ops(dtype: Dtype) -> TestOps {
    TestOps::new("cpu", dtype).unwrap()
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bn_train")
}

#[path = "conformance/common.rs"]
mod common;

#[path = "conformance/bn_training.rs"]
mod bn_training;

use bn_training::{assert_close, dir, json};
use common::read_tensors;
use std::process::Command;

/// The chain's training as a user writes it: its `state_dict` loaded by
/// `sequential(..., weights = ...)`, the data by `tensors(...)` (float32
/// on the way in: the digits are multiples of 1/16, exact), SGD with
/// momentum for five full-batch steps, the model saved by `save`. Every
/// saved tensor against PyTorch's 1e-10, `num_batches_tracked` exactly.
#[test]
fn bn_training_by_nngeo_exec_matches_pytorch() {
    let case = &json("training.json")["cases"]["chain"];
    let opt = &case["optimizer"];
    let d = dir();
    let at = |f: &str| d.join(f).to_str().unwrap().to_string();
    let src = format!(
        r#"experiment bn_train {{
  seed = 0
  dtype = f64
}}
data train = tensors(path = "{data}", x = "inputs", y = "labels")
model net = {model}
train net on train as trained {{
  loss = cross_entropy
  optimizer = sgd(lr = {lr}, momentum = {momentum})
  steps = {steps}
  batch = {batch}
}}
save trained to "trained.safetensors"
"#,
        data = at("chain_data.safetensors"),
        model = case["ngx"].as_str().unwrap().replace(
            "input = ",
            &format!("weights = \"{}\", input = ", at("chain_init.safetensors"))
        ),
        lr = opt["lr"],
        momentum = opt["momentum"],
        steps = case["steps"],
        batch = case["batch"],
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bn_train.ngx");
    std::fs::write(&file, &src).unwrap();
    let out = tmp.path().join("results");
    let run = Command::new(env!("CARGO_BIN_EXE_nngeo"))
        .args([
            "exec",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("run nngeo");
    assert!(
        run.status.success(),
        "{src}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ours = read_tensors(&out.join("trained.safetensors"));
    let theirs = read_tensors(&d.join("chain_final.safetensors"));
    assert_eq!(
        ours.keys().collect::<std::collections::BTreeSet<_>>(),
        theirs.keys().collect(),
        "saved keys"
    );
    let mut worst = 0.0f64;
    for (k, (shape, w)) in &theirs {
        assert_eq!(&ours[k].0, shape, "{k}: shape");
        if k.ends_with("num_batches_tracked") {
            assert_eq!(&ours[k].1, w, "{k}");
        } else {
            worst = worst.max(assert_close(k, &ours[k].1, w, 1e-10));
        }
    }
    eprintln!("nngeo exec: worst relative error {worst:.2e}");
}
