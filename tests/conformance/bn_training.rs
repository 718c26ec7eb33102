//! nngeo against PyTorch float64 (tests/fixtures/bn_train, written by
//! scripts/fixtures/bn_train.py): BatchNorm in training mode (batch
//! statistics in the forward and backward passes, running statistics and
//! `num_batches_tracked` after each step) over five full-batch SGD steps,
//! and the forward pass of the graph layers (GroupNorm, AdaptiveAvgPool2d
//! with uneven windows, dilated Conv2d, Concat).
//!
//! Full batches, so that the order in which nngeo shuffles the examples
//! cannot matter. Every comparison is `max|a − b| / max|b|` per tensor;
//! each test states its tolerance.
//!
//! Shared by every backend: the including test crate supplies `TestOps`,
//! `test_ops(dtype)`, `mod common` and `fixtures_dir()` (a folder of
//! tests/fixtures; its sibling `bn_train/` is read).

use crate::common::{compile_model, graph_spec, read_tensors, rel_err};
use crate::{fixtures_dir, test_ops, TestOps};
use nngeo::engine::train::{train, TrainData, TrainObserver};
use nngeo::geometry::build::Problem;
use nngeo::geometry::init::load_params;
use nngeo::geometry::net::{HostParams, Net, Phase};
use nngeo::geometry::ops::Ops;
use nngeo::plan::{
    Dtype, Length, LossKind, LrSchedule, ModelSpec, Optimizer, TrainConfig, TrainMode,
};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

type Tensors = HashMap<String, (Vec<usize>, Vec<f64>)>;

pub(crate) fn dir() -> PathBuf {
    fixtures_dir().parent().unwrap().join("bn_train")
}

pub(crate) fn json(name: &str) -> Value {
    let path = dir().join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

pub(crate) fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) -> f64 {
    assert_eq!(
        a.len(),
        b.len(),
        "{what}: length {} vs {}",
        a.len(),
        b.len()
    );
    let e = rel_err(a, b);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:e}");
    e
}

/// One training of `training.json`: the model, its data and PyTorch's
/// weights before and after.
struct Case {
    name: String,
    meta: Value,
    spec: ModelSpec,
    init: HostParams,
    data: Tensors,
}

fn training_cases() -> Vec<Case> {
    let all = json("training.json");
    let mut out = Vec::new();
    for (name, meta) in all["cases"].as_object().unwrap() {
        let spec = match meta["ngx"].as_str() {
            Some(model) => compile_model(model),
            None => {
                let input: Vec<usize> = meta["model"]["forward"]["input_shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                graph_spec(name, &meta["model"], &input)
            }
        };
        let init = load_params(&spec, &dir().join(format!("{name}_init.safetensors"))).unwrap();
        // Every state_dict tensor PyTorch has, and no other.
        let keys: Vec<&str> = init.tensors.iter().map(|t| t.key.as_str()).collect();
        let theirs: Vec<&str> = meta["state_dict"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().split(' ').next().unwrap())
            .collect();
        assert_eq!(keys, theirs, "{name}: state_dict keys");
        out.push(Case {
            name: name.clone(),
            meta: meta.clone(),
            spec,
            init,
            data: read_tensors(&dir().join(format!("{name}_data.safetensors"))),
        });
    }
    assert_eq!(out.len(), 2, "the chain and the resnet");
    out
}

impl Case {
    fn inputs(&self, o: &TestOps) -> (<TestOps as Ops>::T, Vec<f64>, usize) {
        let (shape, x) = &self.data["inputs"];
        let labels = self.data["labels"].1.clone();
        (o.upload(shape, x).unwrap(), labels, shape[0])
    }
}

/// Records `train/loss`.
struct Losses(Vec<f64>);
impl TrainObserver<TestOps> for Losses {
    fn log(&mut self, key: &str, _: u64, value: f64, _: &[(&str, String)]) {
        if key == "train/loss" {
            self.0.push(value);
        }
    }
}

/// The logits of one forward pass at PyTorch's initial weights, in
/// training mode (batch statistics) and in evaluation mode (running
/// statistics): 1e-12.
#[test]
fn train_mode_forward_matches_pytorch() {
    let o = test_ops(Dtype::F64);
    for case in training_cases() {
        let net = Net::new(&o, &case.spec, case.init.clone()).unwrap();
        let (x, _, _) = case.inputs(&o);
        for (phase, key) in [
            (Phase::Train { seed: 0 }, "logits_train"),
            (Phase::Eval, "logits_eval"),
        ] {
            let f = net.forward_in(&o, &x, false, phase).unwrap();
            let bn = case
                .spec
                .layers
                .iter()
                .filter(|l| l.layer.type_name().starts_with("BatchNorm"))
                .count();
            let want = if phase == (Phase::Train { seed: 0 }) {
                bn
            } else {
                0
            };
            assert_eq!(f.batch_stats.len(), want, "{}: batch statistics", case.name);
            let e = assert_close(
                &format!("{}: {key}", case.name),
                &o.download(&f.output).unwrap(),
                &case.data[key].1,
                1e-12,
            );
            eprintln!("{}: {key} relative error {e:.2e}", case.name);
        }
        // The two phases really differ.
        let a = o
            .download(
                &net.forward_in(&o, &x, false, Phase::Train { seed: 0 })
                    .unwrap()
                    .output,
            )
            .unwrap();
        assert!(rel_err(&a, &case.data["logits_eval"].1) > 1e-3);
    }
}

/// Five full-batch SGD steps (cross-entropy, `model.train()`): every
/// weight, running mean and running variance after training 1e-10, the
/// loss of every step 1e-10, `num_batches_tracked` exactly.
#[test]
fn batchnorm_training_matches_pytorch() {
    let o = test_ops(Dtype::F64);
    for case in training_cases() {
        let m = &case.meta;
        let opt = &m["optimizer"];
        assert_eq!(opt["name"], "sgd");
        assert_eq!(m["batch"], m["n"], "{}: full batches", case.name);
        let f = |k: &str| opt[k].as_f64().unwrap_or(0.0);
        let steps = m["steps"].as_u64().unwrap();
        let cfg = TrainConfig {
            augment: None,
            penalties: vec![],
            loss: LossKind::CrossEntropy,
            optimizer: Optimizer::Sgd {
                lr: f("lr"),
                momentum: f("momentum"),
                nesterov: false,
                weight_decay: f("weight_decay"),
            },
            length: Length::Steps(steps),
            batch: m["batch"].as_u64().unwrap() as usize,
            schedule: LrSchedule::Constant,
            mode: TrainMode::Plain,
            seed: 7,
            eval: None,
            track: None,
            total_steps: steps,
        };
        let (x, labels, n) = case.inputs(&o);
        let data = TrainData {
            x: &x,
            y: &labels,
            n,
            target_dim: 1,
            flipped: &[],
        };
        let mut losses = Losses(vec![]);
        let trained = train(
            &o,
            &case.spec,
            case.init.clone(),
            &data,
            None,
            &cfg,
            &[],
            &mut losses,
        )
        .unwrap();
        let theirs: Vec<f64> = m["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_close(&format!("{}: losses", case.name), &losses.0, &theirs, 1e-10);
        let final_path = dir().join(format!("{}_final.safetensors", case.name));
        let want = read_tensors(&final_path);
        let mut worst = (0.0, String::new());
        let (mut moved, mut compared) = (0, 0);
        for t in &trained.tensors {
            let what = format!("{}: {}", case.name, t.key);
            let (shape, w) = &want[&t.key];
            assert_eq!(&t.shape, shape, "{what}: shape");
            if t.key.ends_with("num_batches_tracked") {
                let start = case.init.get(&t.key).unwrap().data[0];
                assert_eq!(t.data, w.as_slice(), "{what}");
                assert_eq!(w[0], start + steps as f64, "{what}: one per step");
                continue;
            }
            let e = assert_close(&what, &t.data, w, 1e-10);
            if e > worst.0 {
                worst = (e, t.key.clone());
            }
            let before = &case.init.get(&t.key).unwrap().data;
            moved += (rel_err(before, w) > 1e-3) as usize;
            compared += 1;
        }
        // Training moved the weights and statistics: the comparison is not
        // one of initial values. (Not all of them: a convolution's bias
        // just before a BatchNorm in training mode has zero gradient.)
        assert!(
            moved + 2 >= compared,
            "{}: only {moved} of {compared} tensors moved",
            case.name
        );
        eprintln!(
            "{}: worst relative error {:.2e} ({})",
            case.name, worst.0, worst.1
        );
    }
}

/// GroupNorm, AdaptiveAvgPool2d (uneven and overlapping windows), dilated
/// Conv2d and Concat, alone and in one graph, in evaluation mode: the
/// forward output 1e-12; the graph's cross-entropy loss and gradient 1e-10.
#[test]
fn graph_layers_match_pytorch() {
    check_layer_cases(
        "layers",
        &["GroupNorm", "AdaptiveAvgPool2d", "Conv2d", "Concat"],
    );
}

/// Embedding (token ids), ConvTranspose2d (output padding, dilation,
/// groups) and grouped Conv2d, alone and in two small graphs
/// (scripts/fixtures/new_layers.py): every `state_dict` loads unchanged
/// (PyTorch's layouts), the forward output 1e-12, the graphs'
/// cross-entropy loss and gradient 1e-10.
#[test]
fn new_layers_match_pytorch() {
    check_layer_cases("new_layers", &["Embedding", "ConvTranspose2d", "Conv2d"]);
}

/// The cases of `tests/fixtures/bn_train/{stem}.json` against their
/// PyTorch outputs; `required` layer types must appear.
fn check_layer_cases(stem: &str, required: &[&str]) {
    let o = test_ops(Dtype::F64);
    let all = json(&format!("{stem}.json"));
    let path = dir().join(format!("{stem}.safetensors"));
    let t = read_tensors(&path);
    let mut seen = std::collections::BTreeSet::new();
    for c in all["cases"].as_array().unwrap() {
        let name = c["case"].as_str().unwrap();
        let (shape, xs) = &t[&format!("{name}.inputs")];
        let spec = graph_spec(name, &c["model"], &shape[1..]);
        seen.extend(spec.layers.iter().map(|l| l.layer.type_name()));
        let params = load_params(&spec, &path).unwrap();
        let net = Net::new(&o, &spec, params).unwrap();
        let x = o.upload(shape, xs).unwrap();
        let out = o
            .download(&net.forward(&o, &x, false).unwrap().output)
            .unwrap();
        let e = assert_close(
            &format!("{name}: output"),
            &out,
            &t[&format!("{name}.output")].1,
            1e-12,
        );
        eprintln!("{name}: output relative error {e:.2e}");
        if let Some((_, labels)) = t.get(&format!("{name}.labels")) {
            let p = Problem::whole(&o, &net, &x, labels, shape[0]);
            let (loss, g) = p.loss_and_gradient(false).unwrap();
            assert_close(
                &format!("{name}: loss"),
                &[loss],
                &t[&format!("{name}.loss")].1,
                1e-10,
            );
            let e = assert_close(
                &format!("{name}: gradient"),
                &g,
                &t[&format!("{name}.gradient")].1,
                1e-10,
            );
            eprintln!("{name}: gradient relative error {e:.2e}");
        }
    }
    for l in required {
        assert!(seen.contains(l), "{l} not covered");
    }
}
