//! Whole experiments through the example backend and through the built-in
//! candle backend: every number in `results.jsonl` must agree.
//!
//! Both backends run the same generic engine, so any disagreement is a bug
//! in one backend's `Ops`. Tolerance: 1e-10 relative; for tensor-valued
//! results, relative to the tensor's largest entry (entries that are zero
//! up to rounding cannot agree relatively).

use nngeo::backend::{Backend, RunContext};
use nngeo::plugin::BackendPlugin;
use nngeo::select::candle_backend;
use nngeo_backend_example::Example;
use serde_json::Value;

const TOL: f64 = 1e-10;

/// Compiles `src`, runs it on `backend`, and returns the lines of
/// `results.jsonl`.
fn run(src: &str, backend: &mut dyn Backend) -> Vec<Value> {
    let plan = nngeo::compile_source(src, &nngeo::check::CheckOptions::default())
        .unwrap_or_else(|e| panic!("{src}\n{e:?}"));
    let dir = tempfile::tempdir().unwrap();
    let ctx = RunContext {
        base_dir: env!("CARGO_MANIFEST_DIR").into(),
        out_dir: dir.path().to_path_buf(),
    };
    nngeo::exec::run(&plan, backend, &ctx).unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn example() -> Box<dyn Backend> {
    // Exactly what the plugin's C entry point calls.
    Example::create().unwrap()
}

/// The numbers of one result value, and its shape if it is a tensor.
fn numbers(v: &Value) -> (Vec<f64>, Option<Vec<u64>>) {
    let f = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    match v {
        Value::Object(o) => (
            o["data"].as_array().unwrap().iter().map(f).collect(),
            Some(
                o["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .collect(),
            ),
        ),
        _ => (vec![f(v)], None),
    }
}

/// Line by line: the same results in the same order (key, step ids, sweep
/// tags, training step), and every number within `TOL`. Returns how many
/// numbers were compared and the largest relative difference.
fn compare(ours: &[Value], reference: &[Value]) -> (usize, f64) {
    assert_eq!(ours.len(), reference.len(), "different numbers of results");
    assert!(!reference.is_empty());
    let (mut count, mut worst) = (0, 0.0f64);
    for (a, b) in ours.iter().zip(reference) {
        for field in ["key", "step_id", "sweep", "step"] {
            assert_eq!(a.get(field), b.get(field), "{field} of {a} vs {b}");
        }
        let ((xa, sa), (xb, sb)) = (numbers(&a["value"]), numbers(&b["value"]));
        assert_eq!((&sa, xa.len()), (&sb, xb.len()), "shapes of {}", b["key"]);
        // A tensor is compared at the scale of its largest entry.
        let tensor_scale = sb.map(|_| xb.iter().fold(0.0f64, |m, x| m.max(x.abs())));
        for (i, (x, y)) in xa.iter().zip(&xb).enumerate() {
            assert!(y.is_finite(), "{} [{i}] = {y} on candle", b["key"]);
            let scale = tensor_scale.unwrap_or(y.abs()).max(f64::MIN_POSITIVE);
            let d = (x - y).abs() / scale;
            assert!(
                d <= TOL,
                "{} {} [{i}]: example {x} vs candle {y} (relative {d:e})",
                b["key"],
                b["sweep"]
            );
            worst = worst.max(d);
            count += 1;
        }
    }
    (count, worst)
}

fn agree(src: &str) {
    let ours = run(src, example().as_mut());
    let reference = run(src, candle_backend().as_mut());
    let (count, worst) = compare(&ours, &reference);
    eprintln!(
        "{count} numbers in {} results agree, worst {worst:e}",
        ours.len()
    );
}

/// An MLP: dense, block, diagonal and Kronecker Fishers, the dense NTK, and
/// SGD with measurements during and after training.
#[test]
fn mlp_fims_ntk_and_training_agree() {
    agree(
        r#"
experiment mlp { seed = 0  dtype = f64 }
data train = digits(split = train) |> normalize
data probe = train |> take(3, per_class, seed = 1)
model net = sequential(
  linear(64, 16), tanh, linear(16, 12), relu, linear(12, 10),
  input = [64], init = pytorch(seed = 3),
)
let v = random_vector(net, seed = 5)

let F = Fim(Dense) of net on probe
measure trace(F), frobenius(F), spectral_norm(F), eigenvalues(F, top = 5)
measure mv(F, v) as "mv", solve(F, v, damping = 1e-2) as "solve"
for S in [BlockDiag, Diag, KFAC, EKFAC, EKFAC(refit = true), QuasiDiag, LowRank(rank = 8)] {
  let M = Fim(S) of net on probe
  measure trace(M) as "trace", frobenius(M) as "frobenius", vTMv(M, v) as "vTMv"
  measure rel_error(M, F) as "rel_error", memory(M) as "memory"
}
measure solve(Fim(KFAC) of net on probe, v, damping = 1e-2) as "solve/KFAC"
measure trace(Fim(Diag, fisher = empirical) of net on probe) as "trace/empirical"

let K = Ntk(Dense) of net on probe
measure trace(K) as "ntk/trace", frobenius(K) as "ntk/frobenius", diag(K) as "ntk/diag"
measure eigenvalues(K, top = 5) as "ntk/eigenvalues", effective_rank(K) as "ntk/erank"
measure alignment(K, onehot(probe), centered = true) as "ntk/alignment"
for layer in layers(net) { measure trace(K[layer]) as "ntk/trace/{layer}" }

let g = grad(net, probe)
measure norm(g) as "grad/norm", dot(g, v) as "grad/dot"

train net on train as trained {
  loss = cross_entropy
  optimizer = sgd(lr = 0.1, momentum = 0.9)
  steps = 6
  batch = 32
  at [0, 3, 6] {
    measure loss(net, probe) as "loss", accuracy(net, probe) as "accuracy"
    measure trace(Fim(KFAC) of net on probe) as "kfac/trace"
  }
}
measure norm(weights(trained) - initial_weights(trained)) as "distance"
measure trace(Ntk(Dense) of trained on probe) as "ntk/trace/trained"
"#,
    );
}

/// A small CNN with every layer the engine gathers and scatters for
/// (convolutions, max and average pooling), normalisation layers and GELU.
#[test]
fn conv_net_agrees() {
    agree(
        r#"
experiment cnn { seed = 0  dtype = f64 }
data train = digits(split = train) |> normalize
data probe = train |> take(2, per_class, seed = 1)
model net = sequential(
  conv2d(1, 4, kernel = 3, padding = 1), batchnorm2d(4), gelu,
  maxpool2d(2),
  conv2d(4, 4, kernel = 3, stride = 1, padding = 1), sigmoid,
  avgpool2d(kernel = 2, stride = 2),
  flatten,
  layernorm([16]),
  linear(16, 10),
  input = [1, 8, 8],
  init = kaiming(seed = 0),
)
let v = random_vector(net, seed = 2)
let F = Fim(Dense) of net on probe
measure trace(F), frobenius(F), eigenvalues(F, top = 4)
// Normalisation layers have no Kronecker factors: BlockDiag for them.
for S in [
  BlockDiag, Diag,
  mix(linear = KFAC, conv = KFAC, norm = BlockDiag),
  mix(linear = EKFAC(refit = true), conv = EKFAC(refit = true), norm = BlockDiag),
] {
  let M = Fim(S) of net on probe
  measure trace(M) as "trace", vTMv(M, v) as "vTMv", rel_error(M, F) as "rel_error"
}
let K = Ntk(Dense) of net on probe
measure trace(K) as "ntk/trace", frobenius(K) as "ntk/frobenius", eigenvalues(K, top = 4) as "ntk/eigenvalues"
train net on train as trained {
  optimizer = sgd(lr = 0.05, momentum = 0.9)
  steps = 3
  batch = 16
}
measure loss(trained, probe) as "loss/trained", trace(Fim(mix(linear = KFAC, conv = KFAC, norm = BlockDiag)) of trained on probe) as "kfac/trained"
"#,
    );
}

/// The plugin through nngeo's C ABI, exactly as `nngeo --backend` loads it.
#[test]
fn the_cdylib_loads_as_a_plugin() {
    // Cargo builds the cdylib next to this test's executable.
    let exe = std::env::current_exe().unwrap();
    let lib = exe.parent().unwrap().join(format!(
        "{}nngeo_backend_example{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let plugin = nngeo::plugin::load(&lib).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    assert_eq!(plugin.meta.name, "example");
    let mut backend = plugin.create().unwrap();
    assert_eq!(backend.info().name, "example");
    let src = r#"
experiment abi { dtype = f64 }
data probe = digits(split = train) |> normalize |> take(2, per_class, seed = 1)
model net = mlp(in = 64, hidden = [8], out = 10, init = pytorch(seed = 1))
measure trace(Fim(KFAC) of net on probe) as "kfac", trace(Ntk(Dense) of net on probe) as "ntk"
"#;
    let through_abi = run(src, &mut backend);
    compare(&through_abi, &run(src, example().as_mut()));
}

/// Other devices are refused when the run starts, with a clear message.
#[test]
fn other_devices_are_refused() {
    let plan = nngeo::compile_source(
        "experiment d { device = cuda }\n\
         data probe = digits(split = train) |> take(5)\n\
         model net = mlp(in = 64, hidden = [4], out = 10)\n\
         measure trace(Fim(Diag) of net on probe)\n",
        &Default::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ctx = RunContext {
        base_dir: ".".into(),
        out_dir: dir.path().to_path_buf(),
    };
    let e = nngeo::exec::run(&plan, example().as_mut(), &ctx).unwrap_err();
    assert!(e.to_string().contains("`cpu` only"), "{e}");
}

/// Single precision: every result is rounded to f32, so the example agrees
/// with candle's f32 run to single precision, not better.
#[test]
fn float32_runs_agree_to_single_precision() {
    let src = r#"
experiment f32 { dtype = f32 }
data probe = digits(split = train) |> normalize |> take(3, per_class, seed = 1)
model net = mlp(in = 64, hidden = [16], out = 10, act = tanh, init = pytorch(seed = 3))
measure trace(Fim(KFAC) of net on probe) as "kfac", trace(Fim(Dense) of net on probe) as "dense"
measure trace(Ntk(Dense) of net on probe) as "ntk"
"#;
    let ours = run(src, example().as_mut());
    let reference = run(src, candle_backend().as_mut());
    let as_f64 = src.replace("dtype = f32", "dtype = f64");
    let exact = run(&as_f64, example().as_mut());
    for ((a, b), c) in ours.iter().zip(&reference).zip(&exact) {
        let (x, y, z) = (
            a["value"].as_f64().unwrap(),
            b["value"].as_f64().unwrap(),
            c["value"].as_f64().unwrap(),
        );
        assert!(
            (x - y).abs() < 1e-5 * y.abs(),
            "{}: {x} vs candle {y}",
            a["key"]
        );
        // Really single precision: not the f64 answer.
        assert!(x != z, "{}: {x} is the f64 result", a["key"]);
    }
}
