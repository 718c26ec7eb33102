//! The libtorch and candle backends agree: every Fisher structure, the NTK,
//! Jacobians and loss gradients of small networks in float64 through the
//! engine's API, and a whole plan (measurements, SGD and natural-gradient
//! training with hooks) through the `Backend` objects, within 1e-10
//! relative (`max|a − b| / max|b|`).

use nngeo::backend::candle::CandleOps;
use nngeo::backend::RunContext;
use nngeo::geometry::build::{BlockKind, Problem, Target};
use nngeo::geometry::init::init_params;
use nngeo::geometry::net::Net;
use nngeo::geometry::ops::Ops;
use nngeo::plan::{Dtype, FisherVariant, Layer, ModelSpec, Task};
use nngeo::rng::Rng;
use nngeo_backend_tch::TchOps;
use std::collections::BTreeMap;

#[path = "../../../tests/conformance/common.rs"]
mod common;
use common::compile_model;

const TOL: f64 = 1e-10;

const MLP: &str = "mlp(in = 6, hidden = [8, 7], out = 5, act = tanh, init = pytorch(seed = 1))";

const CNN: &str = "sequential(\
    conv2d(1, 3, kernel = 3, padding = 1), relu,\
    conv2d(3, 4, kernel = 3, stride = 2), tanh,\
    flatten, linear(36, 5),\
    input = [1, 8, 8], init = pytorch(seed = 2))";

/// Every other layer type: pools, norms, gelu, sigmoid, conv1d.
const NORM_CNN: &str = "sequential(\
    conv2d(2, 4, kernel = 3, stride = 2, padding = 1), batchnorm2d(4), relu,\
    avgpool2d(kernel = 2, stride = 1),\
    conv2d(4, 3, kernel = [3, 2], padding = 1, bias = false), gelu,\
    maxpool2d(kernel = 2, stride = 1),\
    flatten, batchnorm1d(36), tanh,\
    linear(36, 6, bias = false), sigmoid, layernorm([6]),\
    linear(6, 4), tanh,\
    input = [2, 10, 10], init = pytorch(seed = 3))";

const SEQ: &str = "sequential(\
    conv1d(2, 3, kernel = 3, stride = 2, padding = 1), batchnorm1d(3), tanh,\
    layernorm([6]),\
    conv1d(3, 4, kernel = 2, bias = false), gelu,\
    layernorm(shape = [4, 5]), relu,\
    flatten, linear(20, 3), sigmoid,\
    input = [2, 12], init = pytorch(seed = 4))";

fn affine_only(spec: &ModelSpec) -> bool {
    !spec.layers.iter().any(|l| {
        matches!(
            l.layer,
            Layer::BatchNorm1d { .. } | Layer::BatchNorm2d { .. } | Layer::LayerNorm { .. }
        )
    })
}

/// Everything the engine computes for one model on one backend, by name.
fn quantities<O: Ops>(o: &O, model: &str, n: usize, seed: u64) -> BTreeMap<String, Vec<f64>> {
    let spec = compile_model(model);
    let params = init_params(&spec, &spec.init);
    let net = Net::new(o, &spec, params).unwrap();
    let mut rng = Rng::new(seed);
    let d: usize = spec.input.iter().product();
    let c = spec.outputs();
    let xs: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
    let labels: Vec<f64> = (0..n).map(|_| rng.below(c.max(2)) as f64).collect();
    let targets: Vec<f64> = (0..n * c).map(|_| rng.normal()).collect();
    let v: Vec<f64> = (0..net.num_params()).map(|_| rng.normal()).collect();
    let mut shape = vec![n];
    shape.extend(&spec.input);
    let x = o.upload(&shape, &xs).unwrap();
    let p = Problem {
        o,
        net: &net,
        x: &x,
        y: &labels,
        target_dim: 1,
        n,
        slots: (0..net.slots.len()).collect(),
        batch: n,
    };
    let reg = Problem {
        y: &targets,
        target_dim: c,
        ..p.clone_shallow()
    };
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: Vec<f64>| {
        assert!(out.insert(k.to_string(), v).is_none(), "{k} twice");
    };
    put(
        "outputs",
        o.download(&net.forward(o, &x, false).unwrap().output)
            .unwrap(),
    );
    put("jacobian", p.jacobian_rows(&Target::Outputs).unwrap().data);
    let (loss, grad) = p.loss_and_gradient(false).unwrap();
    put("loss", vec![loss]);
    put("gradient", grad);
    put("ntk", p.ntk_dense(false).unwrap().data);
    put("ntk per example", p.ntk_dense(true).unwrap().data);
    let kinds = |k| vec![k; net.slots.len()];
    let targets = [
        (
            "true",
            &p,
            Target::Fim {
                variant: FisherVariant::True,
                task: Task::Classification,
            },
        ),
        (
            "empirical",
            &p,
            Target::Fim {
                variant: FisherVariant::Empirical,
                task: Task::Classification,
            },
        ),
        (
            "mc",
            &p,
            Target::Fim {
                variant: FisherVariant::Mc {
                    samples: 2,
                    seed: 5,
                },
                task: Task::Classification,
            },
        ),
        (
            "regression",
            &reg,
            Target::Fim {
                variant: FisherVariant::True,
                task: Task::Regression { sigma2: 0.5 },
            },
        ),
    ];
    for (tag, prob, t) in &targets {
        put(
            &format!("{tag}/dense"),
            prob.fim_dense(t).unwrap().to_dense().unwrap().data,
        );
        let mut structures = vec![("blockdiag", BlockKind::Dense), ("diag", BlockKind::Diag)];
        if affine_only(&spec) {
            structures.extend([
                ("kfac", BlockKind::Kfac),
                ("ekfac", BlockKind::Ekfac { refit: false }),
                ("ekfac refit", BlockKind::Ekfac { refit: true }),
                ("quasidiag", BlockKind::QuasiDiag),
            ]);
        }
        for (name, k) in structures {
            let f = prob.fim_blocks(t, &kinds(k)).unwrap();
            put(&format!("{tag}/{name}"), f.to_dense().unwrap().data);
            if *tag == "true" {
                put(&format!("{tag}/{name} solve"), f.solve(&v, 1e-3).unwrap());
            }
        }
        put(
            &format!("{tag}/implicit mv"),
            prob.implicit_mv(t, &v).unwrap(),
        );
    }
    let low = p.fim_lowrank(&targets[0].2, None).unwrap();
    put("true/lowrank", low.to_dense().unwrap().data);
    out
}

/// `Problem` is not `Clone`; a copy of its fields.
trait CloneShallow {
    fn clone_shallow(&self) -> Self;
}

impl<O: Ops> CloneShallow for Problem<'_, O> {
    fn clone_shallow(&self) -> Self {
        Problem {
            slots: self.slots.clone(),
            ..*self
        }
    }
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let err = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    if scale > 0.0 {
        err / scale
    } else {
        err
    }
}

fn agree(model: &str, name: &str, n: usize) {
    agree_on(TchOps::new("cpu", Dtype::F64).unwrap(), model, name, n);
}

fn agree_on(tch: TchOps, model: &str, name: &str, n: usize) {
    let c = quantities(&CandleOps::new("cpu", Dtype::F64).unwrap(), model, n, 11);
    let t = quantities(&tch, model, n, 11);
    assert_eq!(c.keys().collect::<Vec<_>>(), t.keys().collect::<Vec<_>>());
    let mut worst = (0.0f64, String::new());
    for (k, a) in &c {
        let e = rel(&t[k], a);
        assert!(
            e <= TOL,
            "{name} {k}: tch vs candle relative error {e:.3e} > {TOL:e}"
        );
        if e > worst.0 {
            worst = (e, k.clone());
        }
    }
    eprintln!(
        "{name}: {} quantities agree; worst {:.2e} ({})",
        c.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn mlp_agrees_with_candle() {
    agree(MLP, "mlp", 9);
}

/// EKFAC's bases from `torch.linalg.eigh` (the path a CUDA run takes),
/// forced on the CPU: every structure still agrees with candle's, whose
/// bases come from the host.
#[test]
fn ekfac_bases_from_libtorch_agree_with_candle() {
    for (model, name, n) in [(MLP, "mlp", 9), (CNN, "cnn", 7)] {
        let t = TchOps::new("cpu", Dtype::F64)
            .unwrap()
            .with_device_linalg(true);
        assert!(t.device_linalg());
        agree_on(t, model, name, n);
    }
}

#[test]
fn cnn_agrees_with_candle() {
    agree(CNN, "cnn", 7);
}

#[test]
fn norm_cnn_agrees_with_candle() {
    agree(NORM_CNN, "norm cnn", 6);
}

#[test]
fn sequence_model_agrees_with_candle() {
    agree(SEQ, "conv1d", 6);
}

/// A whole plan through both `Backend` objects: representations and
/// measurements, then SGD and KFAC natural-gradient training with hooks.
const PLAN: &str = r#"
experiment cross {
  seed = 1
  dtype = f64
}

data blobs4 = blobs(n = 120, classes = 3, dim = 6, std = 0.7, seed = 1)
data tr, te = blobs4 |> split(0.75, seed = 1)
data probe = tr |> take(4, per_class, seed = 2)
model net = mlp(in = 6, hidden = [10, 8], out = 3, act = tanh, init = pytorch(seed = 3))

let v = random_vector(net, seed = 3)
let g = grad(net, probe)
let F = Fim(Dense) of net on probe
let K = Fim(KFAC) of net on probe
let E = Fim(EKFAC(refit = true)) of net on probe
let N = Ntk(Dense) of net on probe

measure trace(F) as "trace/F", frobenius(F) as "frob/F", vTMv(F, v) as "vtmv/F"
measure eigenvalues(F, top = 4) as "evals/F", eigenvalues(K, top = 4) as "evals/K", mv(K, v) as "mv/K"
measure rel_error(K, F) as "rel/K", rel_error(E, F) as "rel/E"
measure solve(E, g, damping = 1e-2) as "solve/E", norm(g) as "norm/g"
measure solve(F, g, damping = 1e-2) as "solve/F", solve(K, g, damping = 1e-3) as "solve/K"
measure trace(N) as "trace/N", alignment(N, onehot(probe), centered = true) as "align/N"
measure eigenvalues(N, top = 5) as "evals/N", frobenius(N) as "frob/N", diag(N) as "diag/N"
measure alignment(N, onehot(probe)) as "align/N/raw", alignment(N, onehot(probe), kernel = trace) as "align/N/trace"
measure effective_rank(N) as "erank/N"
measure eigenvalues(Ntk(LowRank(rank = 3)) of net on probe, top = 3) as "evals/Nlow"

for opt in [
  sgd(lr = 0.1, momentum = 0.9) as "sgd",
  ngd(fim = KFAC, lr = 0.05, damping = 1e-2, refresh = 3) as "kfac",
] {
  train net on tr {
    optimizer = opt
    epochs = 2
    batch = 30
    every 2 steps {
      measure loss(net, tr) as "loss/train"
      measure norm(weights(net) - initial_weights(net)) as "dist"
      measure trace(Fim(Diag) of net on probe) as "trace/diag"
    }
  }
}
"#;

fn run_plan(backend: &mut dyn nngeo::backend::Backend) -> Vec<(String, String, Vec<f64>)> {
    let plan = nngeo::compile_source(PLAN, &Default::default()).unwrap_or_else(|e| panic!("{e:?}"));
    let dir = tempfile::tempdir().unwrap();
    let ctx = RunContext {
        base_dir: dir.path().to_path_buf(),
        out_dir: dir.path().join("out"),
    };
    nngeo::exec::run(&plan, backend, &ctx).unwrap();
    let text = std::fs::read_to_string(ctx.out_dir.join("results.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let j: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut tag = j["sweep"].to_string();
            if let Some(s) = j.get("step") {
                tag.push_str(&format!(" step {s}"));
            }
            let value = match &j["value"] {
                serde_json::Value::Number(x) => vec![x.as_f64().unwrap()],
                other => other["data"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{l}"))
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect(),
            };
            (j["key"].as_str().unwrap().to_string(), tag, value)
        })
        .collect()
}

#[test]
fn a_whole_plan_gives_the_same_results() {
    same_plan_results(nngeo_backend_tch::backend().as_mut());
}

/// `TchOps` that decompose in libtorch and keep the dense NTK there, as
/// they do on CUDA.
fn tch_decomposing(device: &str, dtype: Dtype) -> Result<TchOps, nngeo::geometry::ops::OpsError> {
    TchOps::new(device, dtype).map(|o| o.with_device_linalg(true).with_device_storage(true))
}

/// The plan again with every decomposition a CUDA run would hand libtorch
/// (EKFAC's bases, dense spectra, the low-rank NTK, the dense and KFAC
/// solves of `solve(...)` and of natural-gradient steps) handed to it on
/// the CPU, and the dense NTK held in libtorch (its trace, norm, diagonal,
/// alignments and spectrum computed there).
#[test]
fn a_whole_plan_with_libtorch_decompositions_gives_the_same_results() {
    let mut tch = nngeo::engine::Engine::new("tch", "test", tch_decomposing);
    same_plan_results(&mut tch);
}

fn same_plan_results(tch: &mut dyn nngeo::backend::Backend) {
    let c = run_plan(nngeo::select::candle_backend().as_mut());
    let t = run_plan(tch);
    assert_eq!(c.len(), t.len(), "as many results");
    assert!(c.len() > 30, "{} results", c.len());
    let mut worst = 0.0f64;
    for ((kc, tc, vc), (kt, tt, vt)) in c.iter().zip(&t) {
        assert_eq!((kc, tc), (kt, tt), "results in the same order");
        let e = rel(vt, vc);
        assert!(e <= TOL, "{kc} {tc}: tch {vt:?} vs candle {vc:?} ({e:.3e})");
        worst = worst.max(e);
    }
    eprintln!("{} results agree; worst {worst:.2e}", c.len());
}

/// libtorch's CPU ops keeping dense results "on the device", `model` with
/// its initial weights, and `n` random inputs.
fn stored_on_device(
    model: &str,
    n: usize,
    dtype: Dtype,
    rng: &mut Rng,
) -> (TchOps, Net<TchOps>, <TchOps as Ops>::T) {
    let o = TchOps::new("cpu", dtype).unwrap().with_device_storage(true);
    let spec = compile_model(model);
    let net = Net::new(&o, &spec, init_params(&spec, &spec.init)).unwrap();
    let d: usize = spec.input.iter().product();
    let mut shape = vec![n];
    shape.extend(&spec.input);
    let xs: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
    let x = o.upload(&shape, &xs).unwrap();
    (o, net, x)
}

/// Every operation on a Fisher held on the device agrees with the same
/// Fisher held on the host: values, trace, norm, diagonal, `mv`, `vTMv`,
/// the spectrum (device-side where held), the damped solve (device-side),
/// the undamped solve's verdict, a layer, sums, scaling, damping, a power
/// and the top eigenvalues (through host copies).
fn same_operations(
    what: &str,
    held: &nngeo::geometry::repr::Fim,
    on_host: &nngeo::geometry::repr::Fim,
    dtype: Dtype,
    rng: &mut Rng,
) {
    let tol = if dtype == Dtype::F64 { 1e-13 } else { 1e-6 };
    let close = |name: &str, a: &[f64], b: &[f64]| {
        let e = rel(a, b);
        assert!(e <= tol, "{what} {name}: {e:.2e}");
    };
    let h = on_host.to_dense().unwrap();
    close("values", &held.to_dense().unwrap().data, &h.data);
    close("trace", &[held.trace().unwrap()], &[h.trace()]);
    close("frobenius", &[held.frobenius().unwrap()], &[h.frobenius()]);
    close("diag", &held.diag().unwrap(), &h.diag());
    let v: Vec<f64> = (0..h.rows).map(|_| rng.normal()).collect();
    close("mv", &held.mv(&v).unwrap(), &h.matvec(&v));
    close(
        "vTMv",
        &[held.vtmv(&v).unwrap()],
        &[on_host.vtmv(&v).unwrap()],
    );
    close(
        "eigenvalues",
        &held.eigenvalues().unwrap(),
        &on_host.eigenvalues().unwrap(),
    );
    // The solve magnifies the last-bit differences by the damped matrix's
    // condition number (at most 1 + 100·P here).
    let damping = 1e-2 * h.trace() / h.rows as f64;
    let (a, b) = (
        held.solve(&v, damping).unwrap(),
        on_host.solve(&v, damping).unwrap(),
    );
    let e = rel(&a, &b);
    assert!(e <= tol * 1e3, "{what} solve: {e:.2e}");
    // Fewer examples × outputs than parameters: singular, refused by both
    // in f64 (an f32 Fisher's rounding lifts its zero eigenvalues above
    // f64's working precision: both solve).
    let (a, b) = (held.solve(&v, 0.0), on_host.solve(&v, 0.0));
    assert_eq!(a.is_ok(), b.is_ok(), "{what}: the same verdict");
    if dtype == Dtype::F64 {
        let (a, b) = (a.unwrap_err().to_string(), b.unwrap_err().to_string());
        assert!(
            a.contains("singular") && b.contains("singular"),
            "{what}: {a} / {b}"
        );
    }
    // Non-finite input (in the first layer, a dense block in both
    // Fishers): refused by both, in the host solver's words.
    let mut bad = v.clone();
    bad[0] = f64::NAN;
    let (a, b) = (held.solve(&bad, damping), on_host.solve(&bad, damping));
    let (a, b) = (a.unwrap_err().to_string(), b.unwrap_err().to_string());
    assert!(
        a.contains("NaN or infinite") && b.contains("NaN or infinite"),
        "{what}: {a} / {b}"
    );
    let first = &held.layers[0].name;
    let layer =
        |f: &nngeo::geometry::repr::Fim| f.layer(first).unwrap().unwrap().to_dense().unwrap().data;
    close("layer", &layer(held), &layer(on_host));
    let derived = |f: &nngeo::geometry::repr::Fim| {
        let mut out = f.combine(f, 0.5, 2.0).unwrap().to_dense().unwrap().data;
        out.extend(f.scale(-1.5).unwrap().to_dense().unwrap().data);
        out.extend(f.damp(damping).unwrap().to_dense().unwrap().data);
        out.extend(f.pow(2.0).unwrap().to_dense().unwrap().data);
        out
    };
    close("derived", &derived(held), &derived(on_host));
    let (ha, _) = held.eigenpairs(3).unwrap();
    let (hb, _) = on_host.eigenpairs(3).unwrap();
    close("top eigenvalues", &ha, &hb);
}

/// A Fisher built with device storage is assembled and held on the
/// device, and every operation on it ([`same_operations`]) agrees with the
/// host-held Fisher's, in either precision, one batch or several:
/// - Dense: one device matrix, each panel product scaled and added in
///   place with its mirror (2,693 parameters: two panels of at most 2,048);
/// - BlockDiag: each dense block in its own device matrix (a
///   2,080-parameter block in several column panels), mixed with Diag
///   blocks (on the host) and KFAC blocks (their factors held in f64, the
///   host's values bit for bit).
///
/// Fails if a mirror is missed, a panel lands in the wrong place, or the
/// device solve drops the damping (checked).
#[test]
fn fishers_held_on_the_device_equal_the_host_path() {
    use nngeo::geometry::repr::{Block, FimBody};
    use nngeo::linalg::{Keep, Stored};
    const WIDE: &str =
        "mlp(in = 6, hidden = [64, 32], out = 5, act = tanh, init = pytorch(seed = 2))";
    let t = Target::Fim {
        variant: FisherVariant::True,
        task: Task::Classification,
    };
    for dtype in [Dtype::F64, Dtype::F32] {
        for (model, n, batch) in [(MLP, 7, 7), (NORM_CNN, 5, 2), (WIDE, 4, 3)] {
            let mut rng = Rng::new(11);
            let (o, net, x) = stored_on_device(model, n, dtype, &mut rng);
            let labels: Vec<f64> = (0..n).map(|i| (i % 3) as f64).collect();
            let p = Problem {
                batch,
                ..Problem::whole(&o, &net, &x, &labels, n)
            };
            let on_host = p.fim_dense_in(&t, Keep::Host(dtype)).unwrap();
            let held = p.fim_dense(&t).unwrap();
            let what = format!("{model} {dtype:?} batch {batch} Dense");
            let FimBody::Dense(m) = &held.body else {
                panic!("{what}: a dense body");
            };
            assert!(matches!(m, Stored::Device(_)), "{what}");
            assert_eq!(held.bytes(), on_host.bytes(), "{what}: the run's precision");
            // Scaled before it is summed on the device, after on the host.
            same_operations(&what, &held, &on_host, dtype, &mut rng);

            let layers = p.layer_infos();
            // Dense everywhere but the second layer (Diag) and, where it
            // is a linear layer, the last (KFAC).
            let kinds: Vec<BlockKind> = (0..layers.len())
                .map(|k| match k {
                    1 => BlockKind::Diag,
                    k if k + 1 == layers.len() && model != NORM_CNN => BlockKind::Kfac,
                    _ => BlockKind::Dense,
                })
                .collect();
            let on_host = p.fim_blocks_in(&t, &kinds, Keep::Host(dtype)).unwrap();
            let held = p.fim_blocks(&t, &kinds).unwrap();
            let what = format!("{model} {dtype:?} batch {batch} BlockDiag");
            let (FimBody::Blocks(hb), FimBody::Blocks(db)) = (&on_host.body, &held.body) else {
                panic!("{what}: block bodies");
            };
            for ((k, a), b) in kinds.iter().zip(hb).zip(db) {
                match (k, a, b) {
                    (BlockKind::Dense, Block::Dense(Stored::Host(_)), Block::Dense(m)) => {
                        assert!(matches!(m, Stored::Device(_)), "{what}: held");
                        assert_eq!(m.dtype(), dtype, "{what}: the run's precision");
                    }
                    (BlockKind::Dense, ..) => panic!("{what}: dense blocks"),
                    (BlockKind::Kfac, Block::Kfac { a: ha, g: hg }, Block::Kfac { a, g }) => {
                        for (h, d) in [(ha, a), (hg, g)] {
                            assert!(matches!(d, Stored::Device(_)), "{what}: factor held");
                            assert_eq!(d.dtype(), Dtype::F64, "{what}: factors in f64");
                            // Widened and scaled as the host does: bit for bit.
                            assert_eq!(d.as_f64().unwrap(), h.as_f64().unwrap(), "{what}");
                        }
                    }
                    (_, a, b) => assert_eq!(a, b, "{what}: other blocks are the host's"),
                }
            }
            assert_eq!(held.bytes(), on_host.bytes(), "{what}");
            same_operations(&what, &held, &on_host, dtype, &mut rng);
        }
    }
}

/// KFAC and EKFAC (with and without refit) built with device storage keep
/// KFAC's factors and EKFAC's bases on the device in f64, in either run
/// precision, and every operation on them ([`same_operations`]: products,
/// spectra, solves through the factors held there, the dense form, derived
/// Fishers through host copies) agrees with the host-held Fisher's; a
/// natural-gradient inverse prepared from the held factors applies as the
/// host's, to a host vector or to per-layer tensors on the device; the
/// same Fisher summed from three parts holds its factors on the device too
/// and agrees. Layers KFAC cannot take (norms) are Diag blocks.
///
/// Fails if the device's product drops a transpose, its solve the damping
/// or its eigenbasis comes back transposed (each checked).
#[test]
fn factored_fishers_held_on_the_device_equal_the_host_path() {
    use nngeo::geometry::inverse::{download_flat, upload_natural, Inverse};
    use nngeo::geometry::parts::{fim_sharded, FimShape};
    use nngeo::geometry::repr::{Block, FimBody};
    use nngeo::linalg::{Host, Keep, Stored};
    let t = Target::Fim {
        variant: FisherVariant::True,
        task: Task::Classification,
    };
    for dtype in [Dtype::F64, Dtype::F32] {
        for (model, n, batch) in [(MLP, 7, 7), (NORM_CNN, 5, 2), (CNN, 6, 4)] {
            let mut rng = Rng::new(13);
            let (o, net, x) = stored_on_device(model, n, dtype, &mut rng);
            let labels: Vec<f64> = (0..n).map(|i| (i % 4) as f64).collect();
            let p = Problem {
                batch,
                ..Problem::whole(&o, &net, &x, &labels, n)
            };
            let kron: Vec<bool> = p
                .ordered_slots()
                .iter()
                .map(|&k| p.net.slots[k].kind.kron())
                .collect();
            for structure in [
                BlockKind::Kfac,
                BlockKind::Ekfac { refit: false },
                BlockKind::Ekfac { refit: true },
            ] {
                let kinds: Vec<BlockKind> = kron
                    .iter()
                    .map(|&k| if k { structure } else { BlockKind::Diag })
                    .collect();
                let on_host = p.fim_blocks_in(&t, &kinds, Keep::Host(dtype)).unwrap();
                let held = p.fim_blocks(&t, &kinds).unwrap();
                let what = format!("{model} {dtype:?} batch {batch} {structure:?}");
                let (FimBody::Blocks(hb), FimBody::Blocks(db)) = (&on_host.body, &held.body) else {
                    panic!("{what}: block bodies");
                };
                for (a, b) in hb.iter().zip(db) {
                    match (a, b) {
                        (Block::Kfac { .. }, Block::Kfac { a, g })
                        | (Block::Ekfac { .. }, Block::Ekfac { ua: a, ug: g, .. }) => {
                            for m in [a, g] {
                                assert!(matches!(m, Stored::Device(_)), "{what}: held");
                                assert_eq!(m.dtype(), Dtype::F64, "{what}: in f64");
                            }
                        }
                        (Block::Diag(_), Block::Diag(_)) => assert_eq!(a, b, "{what}"),
                        _ => panic!("{what}: the same structure on both sides"),
                    }
                }
                assert_eq!(held.bytes(), on_host.bytes(), "{what}");
                same_operations(&what, &held, &on_host, dtype, &mut rng);
                // The natural gradient's prepared inverse, from the held
                // factors and bases, on the device.
                let v: Vec<f64> = (0..held.dim()).map(|_| rng.normal()).collect();
                let damping = 1e-2 * on_host.trace().unwrap() / held.dim() as f64;
                let inv = Inverse::new(&o, &held, damping, &Host).unwrap();
                let got = inv.apply(&o, &v, &Host).unwrap();
                let want = on_host.solve(&v, damping).unwrap();
                let tol = if dtype == Dtype::F64 { 1e-10 } else { 1e-4 };
                let e = rel(&got, &want);
                assert!(e <= tol, "{what}: prepared inverse {e:.2e}");
                // Applied to a gradient kept on the device (a training
                // step's), layer by layer in the natural layout.
                let nat = upload_natural(&o, &v, &held.layers).unwrap();
                let y = inv.apply_natural(&o, &nat, &Host).unwrap();
                let e = rel(&download_flat(&o, &y, &held.layers).unwrap(), &want);
                assert!(e <= tol, "{what}: prepared inverse on the device {e:.2e}");
                // Summed from three parts on the host, the factors go to
                // the device as a whole build's do (EKFAC's refit then in
                // the bases decomposed there).
                let shape = FimShape::Blocks(kinds.clone());
                let sharded = fim_sharded(&p, &t, &shape, 3).unwrap();
                let FimBody::Blocks(sb) = &sharded.body else {
                    panic!("{what}: sharded blocks");
                };
                for b in sb {
                    if let Block::Kfac { a, g } | Block::Ekfac { ua: a, ug: g, .. } = b {
                        assert!(a.device().is_some() && g.device().is_some(), "{what}");
                    }
                }
                let e = rel(
                    &sharded.to_dense().unwrap().data,
                    &on_host.to_dense().unwrap().data,
                );
                assert!(e <= tol, "{what}: sharded {e:.2e}");
            }
        }
    }
}

/// A dense NTK held in libtorch is the host's, value for value: the same
/// blocks written in place of copied, and every reduction the engine asks
/// of it (trace, norm, diagonal, products, the trace kernel, alignments
/// centred or not, the spectrum) agrees with the host's to round-off, in
/// either precision. Fails if a block lands in the wrong place, a mirror
/// is missed, or a reduction reads the kernel in the run's precision.
#[test]
fn a_kernel_held_on_the_device_equals_the_host_path() {
    use nngeo::geometry::kernel;
    use nngeo::linalg::{Keep, Stored};
    for dtype in [Dtype::F64, Dtype::F32] {
        for (model, n) in [(MLP, 7), (NORM_CNN, 5)] {
            let mut rng = Rng::new(9);
            let (o, net, x) = stored_on_device(model, n, dtype, &mut rng);
            assert!(o.holds_on_device());
            let labels = vec![0.0; n];
            let p = Problem::whole(&o, &net, &x, &labels, n);
            let on_host = p.ntk_dense_in(false, Keep::Host(dtype)).unwrap();
            let held = p.ntk_dense_in(false, Keep::Device).unwrap();
            let what = format!("{model} {dtype:?}");
            assert!(matches!(held, Stored::Device(_)), "{what}");
            assert_eq!(held.device().as_deref(), Some("cpu"), "{what}");
            assert_eq!(held.bytes(), on_host.bytes(), "{what}: the run's precision");
            let h = on_host.as_f64().unwrap().into_owned();
            let got = held.as_f64().unwrap().into_owned();
            assert_eq!(
                rel(&got.data, &h.data),
                0.0,
                "{what}: the same values, in the same places"
            );
            let c = h.rows / n;
            let close = |name: &str, a: &[f64], b: &[f64]| {
                let e = rel(a, b);
                assert!(e <= 1e-12, "{what} {name}: {a:?} vs {b:?} ({e:.2e})");
            };
            close("trace", &[held.trace().unwrap()], &[h.trace()]);
            close("frobenius", &[held.frobenius().unwrap()], &[h.frobenius()]);
            close("diag", &held.diag().unwrap(), &h.diag());
            let v: Vec<f64> = (0..h.rows).map(|_| rng.normal()).collect();
            close("matvec", &held.matvec(&v).unwrap(), &h.matvec(&v));
            close(
                "eigvalsh",
                &held.eigvalsh().unwrap(),
                &nngeo::linalg::eigvalsh(&h).unwrap(),
            );
            close(
                "trace kernel",
                &kernel::trace_kernel_of(&held, c, n).unwrap().data,
                &kernel::trace_kernel(&h, c, n).data,
            );
            let y: Vec<f64> = (0..h.rows).map(|i| ((i * 7) % 5) as f64 - 2.0).collect();
            for centered in [false, true] {
                close(
                    &format!("alignment centred {centered}"),
                    &[kernel::alignment_stored(&held, &y, c, n, centered).unwrap()],
                    &[kernel::alignment(&h, &y, c, n, centered)],
                );
            }
        }
    }
}
