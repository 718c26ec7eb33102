//! Mathematical properties of the geometry engine, checked against
//! independent computations made here (finite differences, explicit
//! matrices, closed forms), in float64 unless stated otherwise.
//!
//! Shared by every backend: the including test crate supplies `TestOps`,
//! `test_ops(dtype)` and `mod common` (see `tests/engine_properties.rs`).
//!
//! Every comparison is `max|a − b| / max|b| ≤ tol` (see [`assert_close`])
//! unless stated otherwise; each test states its tolerance.

use crate::common::{compile_model, conv, graph, rel_err};
use crate::{test_ops, TestOps};
use nngeo::geometry::build::{BlockKind, Problem, Target};
use nngeo::geometry::init::init_params;
use nngeo::geometry::kernel;
use nngeo::geometry::net::{HostParams, Net, Phase, SlotKind};
use nngeo::geometry::ops::Ops;
use nngeo::geometry::repr::{Block, Fim, FimBody, LayerInfo};
use nngeo::geometry::stats;
use nngeo::linalg::{eigvalsh, Mat};
use nngeo::plan::{Dtype, FisherVariant, Layer, ModelSpec, Task};
use nngeo::rng::Rng;
use std::collections::BTreeSet;

type T = <TestOps as Ops>::T;

// ---------------------------------------------------------------- models

/// Every layer type on images: strided and padded conv2d with a
/// non-square kernel, with and without bias, overlapping pools, both
/// BatchNorms, LayerNorm, every activation and a trailing nonlinearity.
const ALL_2D: &str = "sequential(\
    conv2d(2, 4, kernel = 3, stride = 2, padding = 1), batchnorm2d(4), relu,\
    avgpool2d(kernel = 2, stride = 1),\
    conv2d(4, 3, kernel = [3, 2], padding = 1, bias = false), gelu,\
    maxpool2d(kernel = 2, stride = 1),\
    flatten, batchnorm1d(36), tanh,\
    linear(36, 6, bias = false), sigmoid, layernorm([6]),\
    linear(6, 4), tanh,\
    input = [2, 10, 10], init = pytorch(seed = 3))";

/// Sequences: strided, padded conv1d with and without bias, BatchNorm1d
/// over `[C, L]`, LayerNorm over the last dimension and over two.
const ALL_1D: &str = "sequential(\
    conv1d(2, 3, kernel = 3, stride = 2, padding = 1), batchnorm1d(3), tanh,\
    layernorm([6]),\
    conv1d(3, 4, kernel = 2, bias = false), gelu,\
    layernorm(shape = [4, 5]), relu,\
    flatten, linear(20, 3), sigmoid,\
    input = [2, 12], init = pytorch(seed = 4))";

/// Parameter-free layers before the first parameterised one (whose input
/// gradient the backward pass skips), which is a BatchNorm1d over `[C]`.
const POOL_FIRST: &str = "sequential(\
    maxpool2d(kernel = 2), tanh, avgpool2d(kernel = [1, 2]), flatten,\
    batchnorm1d(12), linear(12, 4, bias = false), gelu, layernorm([4]),\
    input = [2, 6, 8], init = pytorch(seed = 9))";

const MLP: &str = "mlp(in = 6, hidden = [8, 7], out = 5, act = tanh, init = pytorch(seed = 1))";

/// Affine layers only (KFAC and EKFAC apply to every layer).
const CNN: &str = "sequential(\
    conv2d(1, 3, kernel = 3, padding = 1), relu,\
    conv2d(3, 4, kernel = 3, stride = 2), tanh,\
    flatten, linear(36, 5),\
    input = [1, 8, 8], init = pytorch(seed = 2))";

/// Smooth, with norm layers (for the structures that take any layer).
const NORM_CNN: &str = "sequential(\
    conv2d(1, 3, kernel = 3, padding = 1), batchnorm2d(3), gelu,\
    conv2d(3, 4, kernel = 3, stride = 2), tanh,\
    flatten, layernorm([36]), linear(36, 5),\
    input = [1, 8, 8], init = pytorch(seed = 5))";

const LINEAR: &str = "sequential(linear(5, 3), input = [5], init = pytorch(seed = 6))";

/// One logit: a Bernoulli output (Task::Binary).
const BINARY_MLP: &str = "mlp(in = 6, hidden = [8], out = 1, act = tanh, init = pytorch(seed = 7))";

/// For the Gaussian output (Task::Regression).
const REG_MLP: &str = "mlp(in = 6, hidden = [8], out = 3, act = gelu, init = pytorch(seed = 8))";

/// A test model: `.ngx` source, or a graph built here.
trait Model: std::fmt::Display + Copy {
    fn spec(&self) -> ModelSpec;
}

impl Model for &str {
    fn spec(&self) -> ModelSpec {
        compile_model(self)
    }
}

/// A graph model: its name and the function that builds it.
#[derive(Clone, Copy)]
struct Graph(&'static str, fn() -> ModelSpec);

impl std::fmt::Display for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Model for Graph {
    fn spec(&self) -> ModelSpec {
        (self.1)()
    }
}

fn bn2d(c: usize) -> Layer {
    Layer::BatchNorm2d {
        channels: c,
        eps: 1e-5,
    }
}

/// Residual blocks, smooth, BatchNorm in evaluation mode: a stem, a block
/// with an identity shortcut, a block with a strided 1×1 projection
/// shortcut (6×6 → 3×3), adaptive average pooling of 3×3 to 2×2 (windows
/// of two overlapping by one) and a Linear head.
const RESNET: Graph = Graph("resnet graph", || {
    graph(
        &[2, 6, 6],
        21,
        &[
            ("stem", conv(2, 3, 3, 1, 1, 1, true), &["x"]),
            ("stem.bn", bn2d(3), &["stem"]),
            ("stem.act", Layer::Tanh, &["stem.bn"]),
            (
                "stem.pool",
                Layer::MaxPool2d {
                    kernel: [3, 3],
                    stride: [1, 1],
                    padding: [1, 1],
                },
                &["stem.act"],
            ),
            ("b1.conv1", conv(3, 3, 3, 1, 1, 1, false), &["stem.pool"]),
            ("b1.bn1", bn2d(3), &["b1.conv1"]),
            ("b1.act1", Layer::Gelu, &["b1.bn1"]),
            ("b1.conv2", conv(3, 3, 3, 1, 1, 1, true), &["b1.act1"]),
            ("b1.bn2", bn2d(3), &["b1.conv2"]),
            ("b1.add", Layer::Add, &["b1.bn2", "stem.pool"]),
            ("b1.act2", Layer::Tanh, &["b1.add"]),
            ("b2.conv1", conv(3, 4, 3, 2, 1, 1, false), &["b1.act2"]),
            ("b2.bn1", bn2d(4), &["b2.conv1"]),
            ("b2.act1", Layer::Tanh, &["b2.bn1"]),
            ("b2.conv2", conv(4, 4, 3, 1, 1, 1, false), &["b2.act1"]),
            ("b2.bn2", bn2d(4), &["b2.conv2"]),
            ("b2.proj", conv(3, 4, 1, 2, 0, 1, false), &["b1.act2"]),
            ("b2.proj_bn", bn2d(4), &["b2.proj"]),
            ("b2.add", Layer::Add, &["b2.bn2", "b2.proj_bn"]),
            ("b2.act2", Layer::Tanh, &["b2.add"]),
            (
                "pool",
                Layer::AdaptiveAvgPool2d { output: [2, 2] },
                &["b2.act2"],
            ),
            ("flatten", Layer::Flatten, &["pool"]),
            (
                "fc",
                Layer::Linear {
                    in_features: 16,
                    out_features: 4,
                    bias: true,
                },
                &["flatten"],
            ),
        ],
    )
});

/// Branches: a dilated convolution and a 1×1 one concatenated with the
/// raw input (a branch with no parameter upstream), GroupNorm over the
/// concatenation, a convolution with a non-square dilation added to a 1×1
/// one read twice (`d + e + e`), adaptive average pooling of 5×5 to 2×2
/// (windows of three overlapping by one) and a Linear head.
const BRANCHES: Graph = Graph("branch graph", || {
    graph(
        &[2, 5, 5],
        22,
        &[
            ("a", conv(2, 3, 3, 1, 2, 2, true), &["x"]),
            ("a.act", Layer::Gelu, &["a"]),
            ("b", conv(2, 3, 1, 1, 0, 1, false), &["x"]),
            ("b.act", Layer::Tanh, &["b"]),
            ("cat", Layer::Concat, &["a.act", "b.act", "x"]),
            (
                "gn",
                Layer::GroupNorm {
                    groups: 4,
                    channels: 8,
                    eps: 1e-5,
                },
                &["cat"],
            ),
            ("gn.act", Layer::Tanh, &["gn"]),
            (
                "d",
                Layer::Conv2d {
                    in_channels: 8,
                    out_channels: 3,
                    kernel: [3, 3],
                    stride: [1, 1],
                    padding: [2, 3],
                    dilation: [2, 3],
                    bias: true,
                    groups: 1,
                },
                &["gn.act"],
            ),
            ("e", conv(8, 3, 1, 1, 0, 1, false), &["gn.act"]),
            ("sum", Layer::Add, &["d", "e", "e"]),
            ("sum.act", Layer::Tanh, &["sum"]),
            (
                "pool",
                Layer::AdaptiveAvgPool2d { output: [2, 2] },
                &["sum.act"],
            ),
            ("flatten", Layer::Flatten, &["pool"]),
            (
                "fc",
                Layer::Linear {
                    in_features: 12,
                    out_features: 4,
                    bias: true,
                },
                &["flatten"],
            ),
        ],
    )
});

/// Token ids `[5]` → `[5, 3]` embeddings (vocabulary 7), a nonlinearity
/// and a Linear head.
const EMBED: Graph = Graph("embedding graph", || {
    graph(
        &[5],
        31,
        &[
            (
                "emb",
                Layer::Embedding {
                    num_embeddings: 7,
                    dim: 3,
                },
                &["x"],
            ),
            ("act", Layer::Tanh, &["emb"]),
            ("flat", Layer::Flatten, &["act"]),
            ("fc", linear(15, 4, true), &["flat"]),
        ],
    )
});

/// Two transposed convolutions (strided, padded, output padding, dilated,
/// non-square kernel; with and without bias) and a Linear head.
const CONVT: Graph = Graph("conv_transpose2d graph", || {
    graph(
        &[2, 3, 3],
        32,
        &[
            (
                "up1",
                convt(2, 3, [3, 2], [2, 1], [1, 0], [1, 0], [1, 2], 1, true),
                &["x"],
            ),
            ("act1", Layer::Tanh, &["up1"]),
            (
                "up2",
                convt(3, 2, [2, 2], [1, 1], [0, 0], [0, 0], [1, 1], 1, false),
                &["act1"],
            ),
            ("act2", Layer::Gelu, &["up2"]),
            ("flat", Layer::Flatten, &["act2"]),
            ("fc", linear(2 * 7 * 6, 3, true), &["flat"]),
        ],
    )
});

/// Grouped convolutions, plain and transposed, between ungrouped ones.
const GROUPED: Graph = Graph("grouped conv graph", || {
    let grouped = Layer::Conv2d {
        in_channels: 4,
        out_channels: 6,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        dilation: [1, 1],
        bias: true,
        groups: 2,
    };
    graph(
        &[2, 4, 4],
        33,
        &[
            ("c0", conv(2, 4, 1, 1, 0, 1, true), &["x"]),
            ("a0", Layer::Tanh, &["c0"]),
            ("g1", grouped, &["a0"]),
            ("a1", Layer::Gelu, &["g1"]),
            (
                "g2",
                convt(6, 4, [2, 2], [2, 2], [0, 0], [0, 0], [1, 1], 2, true),
                &["a1"],
            ),
            ("a2", Layer::Tanh, &["g2"]),
            (
                "pool",
                Layer::AvgPool2d {
                    kernel: [4, 4],
                    stride: [4, 4],
                    padding: [0, 0],
                },
                &["a2"],
            ),
            ("flat", Layer::Flatten, &["pool"]),
            ("fc", linear(16, 3, false), &["flat"]),
        ],
    )
});

fn linear(i: usize, o: usize, bias: bool) -> Layer {
    Layer::Linear {
        in_features: i,
        out_features: o,
        bias,
    }
}

#[allow(clippy::too_many_arguments)]
fn convt(
    cin: usize,
    cout: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    output_padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    bias: bool,
) -> Layer {
    Layer::ConvTranspose2d {
        in_channels: cin,
        out_channels: cout,
        kernel,
        stride,
        padding,
        output_padding,
        dilation,
        groups,
        bias,
    }
}

/// The vocabulary of a model whose first layer is an embedding.
fn embedding_vocab(spec: &ModelSpec) -> Option<usize> {
    match spec.layers.first().map(|l| &l.layer) {
        Some(Layer::Embedding { num_embeddings, .. }) => Some(*num_embeddings),
        _ => None,
    }
}

fn is_norm(l: &Layer) -> bool {
    matches!(
        l,
        Layer::BatchNorm1d { .. }
            | Layer::BatchNorm2d { .. }
            | Layer::LayerNorm { .. }
            | Layer::GroupNorm { .. }
    )
}

/// The model's initial weights, with every norm layer's scale, shift and
/// running statistics moved away from the identity so that those paths
/// are really exercised.
fn random_params(spec: &ModelSpec, rng: &mut Rng) -> HostParams {
    let mut p = init_params(spec, &spec.init);
    for l in spec.layers.iter().filter(|l| is_norm(&l.layer)) {
        let prefix = format!("{}.", l.name);
        for t in p.tensors.iter_mut().filter(|t| t.key.starts_with(&prefix)) {
            let what = t.key[prefix.len()..].to_string();
            for x in t.data.iter_mut() {
                *x = match what.as_str() {
                    "weight" => 1.0 + 0.4 * rng.normal(),
                    "bias" => 0.3 * rng.normal(),
                    "running_mean" => 0.2 * rng.normal(),
                    "running_var" => 0.3 + rng.uniform(),
                    "num_batches_tracked" => *x,
                    other => panic!("unexpected norm tensor {other}"),
                };
            }
        }
    }
    p
}

/// A model, its weights and `n` random examples.
struct Fx {
    o: TestOps,
    spec: ModelSpec,
    params: HostParams,
    net: Net<TestOps>,
    x: T,
    /// Class ids in `0..C`.
    labels: Vec<f64>,
    /// Regression targets `[n, C]`.
    targets: Vec<f64>,
    n: usize,
    c: usize,
}

impl Fx {
    fn new(model: impl Model, n: usize, seed: u64) -> Fx {
        Fx::build(model, n, seed, Dtype::F64, false)
    }

    /// `identical`: every example is the same input.
    fn build(model: impl Model, n: usize, seed: u64, dtype: Dtype, identical: bool) -> Fx {
        let o = test_ops(dtype);
        let spec = model.spec();
        let mut rng = Rng::new(seed);
        let params = random_params(&spec, &mut rng);
        let net = Net::new(&o, &spec, params.clone()).unwrap();
        let d: usize = spec.input.iter().product();
        let xs: Vec<f64> = if identical {
            let one: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            (0..n).flat_map(|_| one.iter().copied()).collect()
        } else if let Some(num) = embedding_vocab(&spec) {
            // Token ids for a model that starts with an embedding.
            (0..n * d).map(|_| rng.below(num) as f64).collect()
        } else {
            (0..n * d).map(|_| rng.normal()).collect()
        };
        let mut shape = vec![n];
        shape.extend(&spec.input);
        let x = o.upload(&shape, &xs).unwrap();
        let c = spec.outputs();
        // A one-output model is a binary classifier: labels 0 and 1.
        let labels = (0..n).map(|_| rng.below(c.max(2)) as f64).collect();
        let targets = (0..n * c).map(|_| rng.normal()).collect();
        Fx {
            o,
            spec,
            params,
            net,
            x,
            labels,
            targets,
            n,
            c,
        }
    }

    fn problem(&self, batch: usize) -> Problem<'_, TestOps> {
        Problem {
            o: &self.o,
            net: &self.net,
            x: &self.x,
            y: &self.labels,
            target_dim: 1,
            n: self.n,
            slots: (0..self.net.slots.len()).collect(),
            batch,
        }
    }

    fn problem_regression(&self, batch: usize) -> Problem<'_, TestOps> {
        Problem {
            y: &self.targets,
            target_dim: self.c,
            ..self.problem(batch)
        }
    }

    /// The problem whose targets suit `task`.
    fn problem_for(&self, task: &Task, batch: usize) -> Problem<'_, TestOps> {
        match task {
            Task::Regression { .. } => self.problem_regression(batch),
            _ => self.problem(batch),
        }
    }

    /// Example i's target(s) for `task`.
    fn target(&self, task: &Task, i: usize) -> Vec<f64> {
        match task {
            Task::Regression { .. } => self.targets[i * self.c..(i + 1) * self.c].to_vec(),
            _ => vec![self.labels[i]],
        }
    }

    /// Outputs `[n, C]` (row-major) with the trainable parameters set to `flat`.
    fn outputs_at(&self, flat: &[f64]) -> Vec<f64> {
        let mut p = self.params.clone();
        p.set_flat(flat).unwrap();
        let net = Net::new(&self.o, &self.spec, p).unwrap();
        self.o
            .download(&net.forward(&self.o, &self.x, false).unwrap().output)
            .unwrap()
    }

    fn kinds(&self, k: BlockKind) -> Vec<BlockKind> {
        vec![k; self.net.slots.len()]
    }

    /// `k` for the Linear and convolution layers, dense blocks for the
    /// norm layers.
    fn affine_kinds(&self, k: BlockKind) -> Vec<BlockKind> {
        self.net
            .slots
            .iter()
            .map(|s| if s.kind.kron() { k } else { BlockKind::Dense })
            .collect()
    }

    fn random_vector(&self, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        (0..self.net.num_params()).map(|_| rng.normal()).collect()
    }
}

fn true_fim(task: Task) -> Target {
    Target::Fim {
        variant: FisherVariant::True,
        task,
    }
}

fn classification() -> Target {
    true_fim(Task::Classification)
}

// ---------------------------------------------------------------- comparisons

/// `NNGEO_SHOW_ERRORS=1` prints every comparison's error (with
/// `--nocapture`).
fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
    let e = rel_err(a, b);
    if std::env::var_os("NNGEO_SHOW_ERRORS").is_some() {
        eprintln!("{what}: {e:.2e} (tolerance {tol:e})");
    }
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:e}");
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sub_block(m: &Mat, r0: usize, c0: usize, rows: usize, cols: usize) -> Mat {
    let mut s = Mat::zeros(rows, cols);
    for r in 0..rows {
        for c in 0..cols {
            s.set(r, c, m.get(r0 + r, c0 + c));
        }
    }
    s
}

fn add_mats(a: &Mat, b: &Mat) -> Mat {
    Mat::from_vec(
        a.rows,
        a.cols,
        a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect(),
    )
}

fn frob_dist(a: &Mat, b: &Mat) -> f64 {
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Index in a layer's flat order of natural position `(g, a)`, written
/// here from the documented layout (weights row-major, then the bias; a
/// transposed convolution's weight is PyTorch's `[in, out/groups, K]`
/// while its natural rows are output channels).
fn flat_index(l: &LayerInfo, g: usize, a: usize) -> usize {
    let sa_w = l.sa - l.bias as usize;
    if l.bias && a == sa_w {
        return l.sg * sa_w + g;
    }
    match l.order {
        None => g * sa_w + a,
        Some((groups, k)) => {
            let (out_g, in_g) = (l.sg / groups, sa_w / k);
            let (group, co, ci, tap) = (g / out_g, g % out_g, a / k, a % k);
            let cin = group * in_g + ci;
            (cin * out_g + co) * k + tap
        }
    }
}

fn blocks(f: &Fim) -> &[Block] {
    match &f.body {
        FimBody::Blocks(b) => b,
        _ => panic!("not a block-diagonal representation"),
    }
}

fn log_softmax(z: &[f64]) -> Vec<f64> {
    let mx = z.iter().fold(f64::NEG_INFINITY, |m, x| m.max(*x));
    let lse = mx + z.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
    z.iter().map(|x| x - lse).collect()
}

/// `ln(1 + eˣ)`, stable.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// Negative log-likelihood of target `y` under the output distribution
/// that `task` puts on the outputs `z` of one example.
fn nll(task: &Task, z: &[f64], y: &[f64]) -> f64 {
    match task {
        Task::Classification => -log_softmax(z)[y[0] as usize],
        // −[y ln σ(z) + (1 − y) ln(1 − σ(z))]
        Task::Binary => softplus(z[0]) - y[0] * z[0],
        Task::Regression { sigma2 } => {
            z.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / (2.0 * sigma2)
        }
    }
}

/// `KL(p(·|z) ‖ p(·|z2))` for one example.
fn kl(task: &Task, z: &[f64], z2: &[f64]) -> f64 {
    match task {
        Task::Classification => {
            let (lp, lq) = (log_softmax(z), log_softmax(z2));
            lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
        }
        Task::Binary => {
            // ln σ(z) = −softplus(−z), ln(1 − σ(z)) = −softplus(z).
            let (a, b) = (z[0], z2[0]);
            let p = 1.0 / (1.0 + (-a).exp());
            p * (softplus(-b) - softplus(-a)) + (1.0 - p) * (softplus(b) - softplus(a))
        }
        Task::Regression { sigma2 } => {
            z.iter().zip(z2).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / (2.0 * sigma2)
        }
    }
}

/// The smooth models of the likelihood tests, one per task.
fn task_models() -> Vec<(&'static str, usize, Task)> {
    vec![
        (MLP, 10, Task::Classification),
        (NORM_CNN, 6, Task::Classification),
        (BINARY_MLP, 10, Task::Binary),
        (REG_MLP, 8, Task::Regression { sigma2: 0.5 }),
    ]
}

// ---------------------------------------------------------------- 1. Jacobian

/// `jacobian_rows(Outputs)` (rows `c·n + i`) against central differences
/// of `net.forward` with h = 1e-6, per layer: error ≤ 1e-6 × the layer's
/// largest Jacobian entry. The dense true Fisher for classification
/// against `1/n Σᵢ Jᵢᵀ (diag pᵢ − pᵢ pᵢᵀ) Jᵢ` made from those finite
/// differences: 1e-6.
fn check_jacobian_fd(model: impl Model, n: usize, seed: u64) -> BTreeSet<&'static str> {
    let fx = Fx::new(model, n, seed);
    let (c, np) = (fx.c, fx.net.num_params());
    let j = fx.problem(n).jacobian_rows(&Target::Outputs).unwrap();
    assert_eq!((j.rows, j.cols), (c * n, np));
    let w0 = fx.params.flat();
    assert_eq!(w0.len(), np);
    let h = 1e-6;
    let mut fd = Mat::zeros(c * n, np);
    let mut w = w0.clone();
    for k in 0..np {
        w[k] = w0[k] + h;
        let zp = fx.outputs_at(&w);
        w[k] = w0[k] - h;
        let zm = fx.outputs_at(&w);
        w[k] = w0[k];
        for i in 0..n {
            for a in 0..c {
                fd.set(a * n + i, k, (zp[i * c + a] - zm[i * c + a]) / (2.0 * h));
            }
        }
    }
    for slot in &fx.net.slots {
        let cols = |m: &Mat| sub_block(m, 0, slot.offset, c * n, slot.numel).data;
        let (ours, theirs) = (cols(&j), cols(&fd));
        assert!(
            theirs.iter().any(|x| x.abs() > 1e-8),
            "{}: the finite-difference Jacobian of {} vanishes",
            model,
            slot.name
        );
        assert_close(
            &format!("Jacobian of {} ({})", slot.name, model),
            &ours,
            &theirs,
            1e-6,
        );
    }
    // F = 1/n Σᵢ Jᵢᵀ Hᵢ Jᵢ, Hᵢ = diag pᵢ − pᵢ pᵢᵀ (softmax probabilities).
    let z = fx.outputs_at(&w0);
    let mut f = Mat::zeros(np, np);
    for i in 0..n {
        let p: Vec<f64> = log_softmax(&z[i * c..(i + 1) * c])
            .iter()
            .map(|l| l.exp())
            .collect();
        let mut hj = Mat::zeros(c, np);
        for a in 0..c {
            for k in 0..np {
                let v = (0..c)
                    .map(|b| {
                        let hab = if a == b { p[a] } else { 0.0 } - p[a] * p[b];
                        hab * fd.get(b * n + i, k)
                    })
                    .sum();
                hj.set(a, k, v);
            }
        }
        let ji = Mat::from_vec(
            c,
            np,
            (0..c)
                .flat_map(|a| (0..np).map(move |k| (a, k)))
                .map(|(a, k)| fd.get(a * n + i, k))
                .collect(),
        );
        f = add_mats(&f, &ji.transpose().matmul(&hj));
    }
    f.data.iter_mut().for_each(|x| *x /= n as f64);
    let dense = fx
        .problem(n)
        .fim_dense(&classification())
        .unwrap()
        .to_dense()
        .unwrap();
    assert_close(
        &format!("{model}: dense FIM vs finite-difference Jᵀ H J"),
        &dense.data,
        &f.data,
        1e-6,
    );
    fx.spec.layers.iter().map(|l| l.layer.type_name()).collect()
}

/// Every layer type, chains and graphs.
#[test]
fn jacobian_matches_finite_differences_for_every_layer_type() {
    let mut seen = check_jacobian_fd(ALL_2D, 6, 11);
    seen.extend(check_jacobian_fd(ALL_1D, 6, 12));
    seen.extend(check_jacobian_fd(POOL_FIRST, 6, 13));
    seen.extend(check_jacobian_fd(RESNET, 5, 14));
    seen.extend(check_jacobian_fd(BRANCHES, 5, 15));
    seen.extend(check_jacobian_fd(EMBED, 5, 16));
    seen.extend(check_jacobian_fd(CONVT, 4, 17));
    seen.extend(check_jacobian_fd(GROUPED, 4, 18));
    let every: BTreeSet<&str> = [
        "Embedding",
        "ConvTranspose2d",
        "Linear",
        "Conv2d",
        "Conv1d",
        "ReLU",
        "Tanh",
        "Sigmoid",
        "GELU",
        "Flatten",
        "MaxPool2d",
        "AvgPool2d",
        "AdaptiveAvgPool2d",
        "BatchNorm1d",
        "BatchNorm2d",
        "LayerNorm",
        "GroupNorm",
        "Add",
        "Concat",
    ]
    .into_iter()
    .collect();
    let missing: Vec<_> = every.difference(&seen).collect();
    assert!(missing.is_empty(), "layer types not covered: {missing:?}");
}

// ---------------------------------------------------------------- 2. NTK

/// NTK = J Jᵀ; structured path = per-example path; per-layer NTKs sum to
/// the total. All to 1e-10.
fn check_ntk(model: impl Model, n: usize, seed: u64, expect_structured: bool) {
    let fx = Fx::new(model, n, seed);
    let p = fx.problem(n);
    let j = p.jacobian_rows(&Target::Outputs).unwrap();
    let jjt = j.matmul(&j.transpose());
    let k = p.ntk_dense(false).unwrap();
    assert_eq!((k.rows, k.cols), (fx.c * n, fx.c * n));
    assert_close(&format!("{model}: NTK vs J Jᵀ"), &k.data, &jjt.data, 1e-10);
    let k_pe = p.ntk_dense(true).unwrap();
    assert_close(
        &format!("{model}: structured vs per-example NTK"),
        &k.data,
        &k_pe.data,
        1e-10,
    );
    // The structured path is really taken for some layer of the MLP.
    let structured = fx.net.slots.iter().any(|s| {
        let (a, b) = stats::ntk_costs(s, fx.c, n, 1);
        s.kind.kron() && a <= b
    });
    assert_eq!(structured, expect_structured, "{model}: structured path");
    let mut sum = Mat::zeros(k.rows, k.cols);
    for s in 0..fx.net.slots.len() {
        let mut pl = fx.problem(n);
        pl.slots = vec![s];
        let kl = pl.ntk_dense(false).unwrap();
        // Each layer's NTK is its own J_l J_lᵀ.
        let jl = sub_block(&j, 0, fx.net.slots[s].offset, j.rows, fx.net.slots[s].numel);
        assert_close(
            &format!("{model}: NTK of layer {s}"),
            &kl.data,
            &jl.matmul(&jl.transpose()).data,
            1e-10,
        );
        sum = add_mats(&sum, &kl);
    }
    assert_close(
        &format!("{model}: Σ per-layer NTK"),
        &sum.data,
        &k.data,
        1e-10,
    );
}

#[test]
fn ntk_is_j_jt_by_every_path() {
    check_ntk(MLP, 8, 21, true);
    check_ntk(CNN, 6, 22, true);
    check_ntk(NORM_CNN, 6, 23, true);
    check_ntk(RESNET, 5, 24, true);
    check_ntk(BRANCHES, 5, 25, true);
    check_ntk(EMBED, 5, 26, true);
    check_ntk(CONVT, 4, 27, true);
    check_ntk(GROUPED, 4, 28, true);
}

// ---------------------------------------------------------------- 3. structures

/// Every structure against the dense FIM it approximates (1e-10).
fn check_structures(model: impl Model, n: usize, seed: u64) {
    let fx = Fx::new(model, n, seed);
    let p = fx.problem(n);
    let t = classification();
    let fim = p.fim_dense(&t).unwrap();
    let f = fim.to_dense().unwrap();
    let np = fx.net.num_params();
    assert_eq!((f.rows, f.cols), (np, np));
    let layers = fim.layers.clone();
    let in_block = |r: usize, c: usize| {
        layers.iter().any(|l| {
            (l.offset..l.offset + l.numel).contains(&r)
                && (l.offset..l.offset + l.numel).contains(&c)
        })
    };
    // The expected matrix of a structure: F where `keep(r, c)`, else 0.
    let masked = |keep: &dyn Fn(usize, usize) -> bool| {
        let mut m = Mat::zeros(np, np);
        for r in 0..np {
            for c in 0..np {
                if keep(r, c) {
                    m.set(r, c, f.get(r, c));
                }
            }
        }
        m
    };
    let bd = p.fim_blocks(&t, &fx.kinds(BlockKind::Dense)).unwrap();
    assert_close(
        &format!("{model}: BlockDiag"),
        &bd.to_dense().unwrap().data,
        &masked(&in_block).data,
        1e-10,
    );
    let diag = p.fim_blocks(&t, &fx.kinds(BlockKind::Diag)).unwrap();
    assert_close(
        &format!("{model}: Diag"),
        &diag.to_dense().unwrap().data,
        &masked(&|r, c| r == c).data,
        1e-10,
    );
    // QuasiDiag: the diagonal and each (weight, bias of the same output
    // unit) pair — for norm layers, (scale, shift of the same feature).
    let mut pairs = BTreeSet::new();
    for l in &layers {
        if l.bias {
            for g in 0..l.sg {
                let b = l.offset + flat_index(l, g, l.sa - 1);
                for a in 0..l.sa - 1 {
                    let w = l.offset + flat_index(l, g, a);
                    pairs.insert((w, b));
                    pairs.insert((b, w));
                }
            }
        }
    }
    let qd = p.fim_blocks(&t, &fx.kinds(BlockKind::QuasiDiag)).unwrap();
    assert_close(
        &format!("{model}: QuasiDiag"),
        &qd.to_dense().unwrap().data,
        &masked(&|r, c| r == c || pairs.contains(&(r, c))).data,
        1e-10,
    );
    let low = p.fim_lowrank(&t, None).unwrap();
    assert_close(
        &format!("{model}: LowRank"),
        &low.to_dense().unwrap().data,
        &f.data,
        1e-10,
    );
    for s in 0..3 {
        let v = fx.random_vector(100 + s);
        assert_close(
            &format!("{model}: implicit mv"),
            &p.implicit_mv(&t, &v).unwrap(),
            &f.matvec(&v),
            1e-10,
        );
    }
    // LowRank(k): the top-k eigenvalues of F, and its trace their sum.
    let mut ev = eigvalsh(&f).unwrap();
    ev.sort_by(|a, b| b.total_cmp(a));
    let k = 5;
    let lk = p.fim_lowrank(&t, Some(k)).unwrap();
    let evk = lk.eigenvalues().unwrap();
    let mut expect = ev[..k].to_vec();
    expect.resize(np, 0.0);
    assert_close(
        &format!("{model}: LowRank({k}) eigenvalues"),
        &evk,
        &expect,
        1e-9,
    );
    assert_close(
        &format!("{model}: LowRank({k}) trace"),
        &[lk.trace().unwrap()],
        &[ev[..k].iter().sum()],
        1e-9,
    );
}

#[test]
fn structures_match_the_dense_fim() {
    check_structures(MLP, 10, 31);
    check_structures(CNN, 6, 32);
    check_structures(NORM_CNN, 6, 33);
    check_structures(RESNET, 5, 34);
    check_structures(BRANCHES, 5, 35);
    check_structures(CONVT, 4, 36);
    check_structures_without_kron(EMBED, 5, 37);
    check_structures_without_kron(GROUPED, 4, 38);
}

/// Token ids that are not integers in `[0, num)` are an error of the
/// forward pass naming the layer, the example and the position.
#[test]
fn embedding_refuses_bad_token_ids() {
    let fx = Fx::new(EMBED, 2, 39);
    for bad in [2.5, 7.0, -1.0] {
        let mut xs = fx.o.download(&fx.x).unwrap();
        xs[5 + 3] = bad;
        let x = fx.o.upload(&[2, 5], &xs).unwrap();
        let err = fx
            .net
            .forward(&fx.o, &x, false)
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_else(|| panic!("token {bad} accepted"));
        assert!(
            err.contains("`emb`") && err.contains("example 1 of the batch, position 3"),
            "{err}"
        );
    }
}

/// Layers without Kronecker factors (embeddings, grouped convolutions):
/// BlockDiag, Diag, LowRank and the implicit product against the dense
/// FIM (1e-10), and KFAC refused by the engine.
fn check_structures_without_kron(model: impl Model, n: usize, seed: u64) {
    let fx = Fx::new(model, n, seed);
    let p = fx.problem(n);
    let t = classification();
    let f = p.fim_dense(&t).unwrap().to_dense().unwrap();
    let bd = p.fim_blocks(&t, &fx.kinds(BlockKind::Dense)).unwrap();
    let bdd = bd.to_dense().unwrap();
    for l in &bd.layers {
        let r = l.offset..l.offset + l.numel;
        for i in r.clone() {
            for j in 0..f.cols {
                let want = if r.contains(&j) { f.get(i, j) } else { 0.0 };
                assert!(
                    (bdd.get(i, j) - want).abs() <= 1e-10 * f.frobenius(),
                    "{model}: BlockDiag ({i}, {j})"
                );
            }
        }
    }
    let diag = p.fim_blocks(&t, &fx.kinds(BlockKind::Diag)).unwrap();
    assert_close(
        &format!("{model}: Diag"),
        &diag.diag().unwrap(),
        &f.diag(),
        1e-10,
    );
    let low = p.fim_lowrank(&t, None).unwrap();
    assert_close(
        &format!("{model}: LowRank"),
        &low.to_dense().unwrap().data,
        &f.data,
        1e-10,
    );
    for s in 0..2 {
        let v = fx.random_vector(200 + s);
        assert_close(
            &format!("{model}: implicit mv"),
            &p.implicit_mv(&t, &v).unwrap(),
            &f.matvec(&v),
            1e-10,
        );
    }
    let refused = fx.net.slots.iter().position(|s| !s.kind.kron()).unwrap();
    let mut kinds = fx.affine_kinds(BlockKind::Kfac);
    kinds[refused] = BlockKind::Kfac;
    let err = p.fim_blocks(&t, &kinds).expect_err("KFAC refused");
    assert!(
        err.to_string().contains("no Kronecker factors"),
        "{model}: {err}"
    );
}

/// trace, Frobenius norm, diagonal, mv, vᵀMv and eigenvalues of every
/// representation agree with its own `to_dense()` (1e-10; eigenvalues
/// 1e-9 of the largest).
#[test]
fn every_representation_is_self_consistent() {
    for (model, n, seed) in [(MLP, 8, 41), (CNN, 6, 42)] {
        let fx = Fx::new(model, n, seed);
        let p = fx.problem(n);
        let t = classification();
        let mut reps = vec![
            ("dense", p.fim_dense(&t).unwrap()),
            ("lowrank", p.fim_lowrank(&t, None).unwrap()),
            ("lowrank(4)", p.fim_lowrank(&t, Some(4)).unwrap()),
        ];
        for (name, k) in [
            ("blockdiag", BlockKind::Dense),
            ("diag", BlockKind::Diag),
            ("kfac", BlockKind::Kfac),
            ("ekfac", BlockKind::Ekfac { refit: false }),
            ("ekfac refit", BlockKind::Ekfac { refit: true }),
            ("quasidiag", BlockKind::QuasiDiag),
        ] {
            reps.push((name, p.fim_blocks(&t, &fx.kinds(k)).unwrap()));
        }
        let v = fx.random_vector(7);
        for (name, f) in &reps {
            let d = f.to_dense().unwrap();
            let what = |q: &str| format!("{model} {name}: {q}");
            assert_close(&what("trace"), &[f.trace().unwrap()], &[d.trace()], 1e-10);
            assert_close(
                &what("frobenius"),
                &[f.frobenius().unwrap()],
                &[d.frobenius()],
                1e-10,
            );
            assert_close(&what("diag"), &f.diag().unwrap(), &d.diag(), 1e-10);
            assert_close(&what("mv"), &f.mv(&v).unwrap(), &d.matvec(&v), 1e-10);
            assert_close(
                &what("vTMv"),
                &[f.vtmv(&v).unwrap()],
                &[dot(&v, &d.matvec(&v))],
                1e-10,
            );
            let mut ours = f.eigenvalues().unwrap();
            let mut theirs = eigvalsh(&d).unwrap();
            ours.sort_by(f64::total_cmp);
            theirs.sort_by(f64::total_cmp);
            assert_close(&what("eigenvalues"), &ours, &theirs, 1e-9);
            // Symmetric.
            assert_close(&what("symmetry"), &d.transpose().data, &d.data, 1e-12);
        }
    }
}

// ---------------------------------------------------------------- 4. KFAC

/// `A = √n_out/n Σ ã ãᵀ` recomputed by hand for a single Linear layer.
fn kfac_a_by_hand(fx: &Fx, xs: &[f64], n_out: usize) -> Mat {
    let d = fx.spec.input[0];
    let mut a = Mat::zeros(d + 1, d + 1);
    for i in 0..fx.n {
        let mut at = xs[i * d..(i + 1) * d].to_vec();
        at.push(1.0);
        for r in 0..=d {
            for c in 0..=d {
                a.data[r * (d + 1) + c] += at[r] * at[c];
            }
        }
    }
    let s = (n_out as f64).sqrt() / fx.n as f64;
    a.data.iter_mut().for_each(|x| *x *= s);
    a
}

/// KFAC is exact (= BlockDiag = dense) for one Linear layer when G is the
/// same for every example: regression (G = I/√C), or identical inputs.
/// Its factors equal the hand-made ones; 1e-10.
#[test]
fn kfac_is_exact_where_it_must_be() {
    for (identical, task) in [
        (true, Task::Regression { sigma2: 1.0 }),
        (false, Task::Regression { sigma2: 1.0 }),
        (true, Task::Classification),
    ] {
        let what = format!("identical = {identical}, {task:?}");
        let fx = Fx::build(LINEAR, 8, 51, Dtype::F64, identical);
        let p = match task {
            Task::Classification => fx.problem(fx.n),
            _ => fx.problem_regression(fx.n),
        };
        let t = true_fim(task.clone());
        let dense = p.fim_dense(&t).unwrap().to_dense().unwrap();
        let bd = p
            .fim_blocks(&t, &[BlockKind::Dense])
            .unwrap()
            .to_dense()
            .unwrap();
        let kfac = p.fim_blocks(&t, &[BlockKind::Kfac]).unwrap();
        assert_close(&format!("{what}: BlockDiag"), &bd.data, &dense.data, 1e-12);
        assert_close(
            &format!("{what}: KFAC vs BlockDiag"),
            &kfac.to_dense().unwrap().data,
            &bd.data,
            1e-10,
        );
        let Block::Kfac { a, g } = &blocks(&kfac)[0] else {
            panic!("not KFAC")
        };
        let xs = fx.o.download(&fx.x).unwrap();
        let n_out = match task {
            Task::Classification => fx.c - 1,
            _ => fx.c,
        };
        assert_close(
            &format!("{what}: A"),
            &a.data,
            &kfac_a_by_hand(&fx, &xs, n_out).data,
            1e-12,
        );
        if let Task::Regression { .. } = task {
            let mut gi = Mat::identity(fx.c);
            gi.data.iter_mut().for_each(|x| *x /= (fx.c as f64).sqrt());
            assert_close(&format!("{what}: G"), &g.data, &gi.data, 1e-12);
        }
        // trace = tr A · tr G, Frobenius = ‖A‖‖G‖, against the dense matrix.
        let d = kfac.to_dense().unwrap();
        assert_close(
            &format!("{what}: trace"),
            &[kfac.trace().unwrap()],
            &[a.trace() * g.trace()],
            1e-12,
        );
        assert_close(
            &format!("{what}: trace"),
            &[kfac.trace().unwrap()],
            &[d.trace()],
            1e-10,
        );
        assert_close(
            &format!("{what}: frobenius"),
            &[kfac.frobenius().unwrap()],
            &[a.frobenius() * g.frobenius()],
            1e-12,
        );
        assert_close(
            &format!("{what}: frobenius"),
            &[kfac.frobenius().unwrap()],
            &[d.frobenius()],
            1e-10,
        );
        let v = fx.random_vector(3);
        assert_close(
            &format!("{what}: mv"),
            &kfac.mv(&v).unwrap(),
            &d.matvec(&v),
            1e-10,
        );
        assert_close(
            &format!("{what}: mv vs F"),
            &kfac.mv(&v).unwrap(),
            &dense.matvec(&v),
            1e-10,
        );
    }
}

/// For a single example KFAC is exact on every Linear layer, whatever the
/// model around it (`F_l = E[g gᵀ] ⊗ a aᵀ`): its blocks equal BlockDiag's
/// there (1e-10). A convolution sums over positions, so there it is not
/// (checked to differ, so that the comparison means something).
#[test]
fn kfac_is_exact_on_linear_layers_for_one_example() {
    check_kfac_one_example(MLP, 71);
    check_kfac_one_example(RESNET, 72);
    check_kfac_one_example(BRANCHES, 73);
}

fn check_kfac_one_example(model: impl Model, seed: u64) {
    let fx = Fx::new(model, 1, seed);
    let p = fx.problem(1);
    let t = classification();
    let kfac = p.fim_blocks(&t, &fx.affine_kinds(BlockKind::Kfac)).unwrap();
    let bd = p.fim_blocks(&t, &fx.kinds(BlockKind::Dense)).unwrap();
    let mut linear = 0;
    for (k, l) in kfac.layers.iter().enumerate() {
        let SlotKind::Affine { conv, .. } = fx.net.slots[k].kind else {
            continue;
        };
        let (ours, exact) = (
            blocks(&kfac)[k].to_dense(l).unwrap(),
            blocks(&bd)[k].to_dense(l).unwrap(),
        );
        if conv {
            assert!(
                rel_err(&ours.data, &exact.data) > 1e-6,
                "{model} {}: KFAC of a convolution is exact",
                l.name
            );
        } else {
            assert_close(
                &format!("{model} {}: KFAC vs BlockDiag", l.name),
                &ours.data,
                &exact.data,
                1e-10,
            );
            linear += 1;
        }
    }
    assert!(linear > 0, "{model}: no Linear layer");
}

/// A transposed convolution reading the input, then a Linear head.
const CONVT_HEAD: Graph = Graph("conv_transpose2d + linear", || {
    graph(
        &[2, 3, 2],
        34,
        &[
            (
                "up",
                convt(2, 3, [3, 2], [2, 1], [1, 0], [1, 0], [1, 2], 1, true),
                &["x"],
            ),
            ("flat", Layer::Flatten, &["up"]),
            ("fc", linear(3 * 6 * 4, 4, true), &["flat"]),
        ],
    )
});

/// KFAC of a ConvTranspose2d is NNGeometry's convolution KFAC on the
/// patches of the transposed convolution (`unfold_transpose_conv2d`:
/// per output position, the input each tap reaches):
/// `A = √n_out/n Σ_{i,p} ã ãᵀ` (ã with a trailing 1 for the bias),
/// `G = 1/(√n_out n L) Σ_{i,c,p} g gᵀ`. Both rebuilt here from the
/// definition, the patches by looping over PyTorch's output-size formula
/// and `g` from the Linear head (regression: the outputs themselves are
/// backpropagated, so `g[c, p] = W_fc[c, (co, p)]`). 1e-12.
#[test]
fn kfac_of_conv_transpose_matches_its_definition() {
    let fx = Fx::new(CONVT_HEAD, 5, 81);
    let p = fx.problem_regression(fx.n);
    let t = true_fim(Task::Regression { sigma2: 1.0 });
    let kfac = p
        .fim_blocks(&t, &[BlockKind::Kfac, BlockKind::Kfac])
        .unwrap();
    let Block::Kfac { a, g } = &blocks(&kfac)[0] else {
        panic!("not KFAC")
    };
    let (cin, cout, kh, kw) = (2, 3, 3, 2);
    let (h, w, oh, ow) = (3, 2, 6, 4);
    let (stride, pad, dil) = ([2, 1], [1, 0], [1, 2]);
    let xs = fx.o.download(&fx.x).unwrap();
    let sa = cin * kh * kw + 1;
    let mut a_hand = Mat::zeros(sa, sa);
    for i in 0..fx.n {
        for r in 0..oh {
            for c in 0..ow {
                let mut at = vec![0.0; sa];
                at[sa - 1] = 1.0;
                for ci in 0..cin {
                    for ki in 0..kh {
                        for kj in 0..kw {
                            // r = y·s − p + k·d for some input row y.
                            let ty = r as isize + pad[0] as isize - (ki * dil[0]) as isize;
                            let tx = c as isize + pad[1] as isize - (kj * dil[1]) as isize;
                            if ty < 0 || tx < 0 {
                                continue;
                            }
                            let (ty, tx) = (ty as usize, tx as usize);
                            if ty % stride[0] != 0 || tx % stride[1] != 0 {
                                continue;
                            }
                            let (y, x) = (ty / stride[0], tx / stride[1]);
                            if y < h && x < w {
                                at[ci * kh * kw + ki * kw + kj] =
                                    xs[((i * cin + ci) * h + y) * w + x];
                            }
                        }
                    }
                }
                for u in 0..sa {
                    for v in 0..sa {
                        a_hand.data[u * sa + v] += at[u] * at[v];
                    }
                }
            }
        }
    }
    let c_out = fx.c;
    let root = (c_out as f64).sqrt();
    a_hand
        .data
        .iter_mut()
        .for_each(|x| *x *= root / fx.n as f64);
    assert_close("ConvTranspose2d KFAC A", &a.data, &a_hand.data, 1e-12);
    let wfc = &fx.params.get("fc.weight").unwrap().data;
    let l = oh * ow;
    let mut g_hand = Mat::zeros(cout, cout);
    for c in 0..c_out {
        for q in 0..l {
            for u in 0..cout {
                for v in 0..cout {
                    let (wu, wv) = (wfc[c * cout * l + u * l + q], wfc[c * cout * l + v * l + q]);
                    g_hand.data[u * cout + v] += wu * wv / (root * l as f64);
                }
            }
        }
    }
    assert_close("ConvTranspose2d KFAC G", &g.data, &g_hand.data, 1e-12);
    // And the block is G ⊗ A in PyTorch's flat order `[in, out, kh, kw]`
    // then the bias.
    let l0 = &kfac.layers[0];
    let dense = blocks(&kfac)[0].to_dense(l0).unwrap();
    for (gu, au, gv, av) in [(0, 0, 0, 0), (1, 3, 2, 5), (2, 12, 0, 7), (1, 4, 1, 12)] {
        assert_close(
            "ConvTranspose2d KFAC entry",
            &[dense.get(flat_index(l0, gu, au), flat_index(l0, gv, av))],
            &[g_hand.get(gu, gv) * a_hand.get(au, av)],
            1e-12,
        );
    }
}

// ---------------------------------------------------------------- 5. EKFAC

/// `d[k, j] = u_kjᵀ F_l u_kj` with `u_kj = ug[:, k] ⊗ ua[:, j]` in flat order.
fn kfe_diag_by_hand(l: &LayerInfo, fl: &Mat, ua: &Mat, ug: &Mat) -> Vec<f64> {
    let mut d = Vec::with_capacity(l.sg * l.sa);
    for k in 0..l.sg {
        for j in 0..l.sa {
            let mut u = vec![0.0; l.numel];
            for g in 0..l.sg {
                for a in 0..l.sa {
                    u[flat_index(l, g, a)] = ug.get(g, k) * ua.get(a, j);
                }
            }
            d.push(dot(&u, &fl.matvec(&u)));
        }
    }
    d
}

/// EKFAC without refit = KFAC (1e-10). Refitted: its diagonal is
/// diag(Uᵀ F_l U) (1e-10), its trace the BlockDiag trace (1e-10), and it
/// is no farther from BlockDiag than KFAC is, layer by layer (the EKFAC
/// theorem; 1e-12 slack). On graph models the norm layers take dense
/// blocks (KFAC does not apply to them), the same in every structure.
#[test]
fn ekfac_properties() {
    check_ekfac(MLP, 10, 61);
    check_ekfac(CNN, 6, 62);
    check_ekfac(RESNET, 6, 63);
    check_ekfac(BRANCHES, 6, 64);
    check_ekfac(CONVT, 5, 65);
}

fn check_ekfac(model: impl Model, n: usize, seed: u64) {
    let fx = Fx::new(model, n, seed);
    let p = fx.problem(n);
    let t = classification();
    let kfac = p.fim_blocks(&t, &fx.affine_kinds(BlockKind::Kfac)).unwrap();
    let e0 = p
        .fim_blocks(&t, &fx.affine_kinds(BlockKind::Ekfac { refit: false }))
        .unwrap();
    let e1 = p
        .fim_blocks(&t, &fx.affine_kinds(BlockKind::Ekfac { refit: true }))
        .unwrap();
    let bd = p.fim_blocks(&t, &fx.kinds(BlockKind::Dense)).unwrap();
    assert_close(
        &format!("{model}: EKFAC(refit = false) vs KFAC"),
        &e0.to_dense().unwrap().data,
        &kfac.to_dense().unwrap().data,
        1e-10,
    );
    assert_close(
        &format!("{model}: EKFAC trace"),
        &[e1.trace().unwrap()],
        &[bd.trace().unwrap()],
        1e-10,
    );
    assert_close(
        &format!("{model}: EKFAC dense trace"),
        &[e1.to_dense().unwrap().trace()],
        &[bd.trace().unwrap()],
        1e-10,
    );
    let mut strict = 0;
    for (k, l) in e1.layers.iter().enumerate() {
        let fl = blocks(&bd)[k].to_dense(l).unwrap();
        let kl = blocks(&kfac)[k].to_dense(l).unwrap();
        let el = blocks(&e1)[k].to_dense(l).unwrap();
        let Block::Ekfac { ua, ug, d } = &blocks(&e1)[k] else {
            assert!(
                !fx.net.slots[k].kind.kron(),
                "{model} {}: not EKFAC",
                l.name
            );
            continue;
        };
        assert_close(
            &format!("{model} {}: refitted diagonal", l.name),
            &d.data,
            &kfe_diag_by_hand(l, &fl, ua, ug),
            1e-10,
        );
        let (de, dk) = (frob_dist(&el, &fl), frob_dist(&kl, &fl));
        assert!(
            de <= dk + 1e-12 * fl.frobenius(),
            "{model} {}: ‖EKFAC − F‖ = {de:e} > ‖KFAC − F‖ = {dk:e}",
            l.name
        );
        strict += (de < 0.99 * dk) as usize;
    }
    assert!(strict > 0, "{model}: the refit never improved on KFAC");
    let (de, dk) = (
        frob_dist(&e1.to_dense().unwrap(), &bd.to_dense().unwrap()),
        frob_dist(&kfac.to_dense().unwrap(), &bd.to_dense().unwrap()),
    );
    assert!(
        de <= dk,
        "{model}: ‖EKFAC − F‖ = {de:e} > ‖KFAC − F‖ = {dk:e}"
    );
}

// ---------------------------------------------------------------- 6. solve

/// `‖(F + λI) x − v‖ / ‖v‖` with `x = fim.solve(v, λ)` ≤ 1e-8 for every
/// structure with an exact damped inverse; KFAC against its π-damped
/// factors (1e-8) and, with λ = 1e-20, against itself (1e-8); EKFAC's
/// `power(−1, λ)` against `solve` for every structure but LowRank (1e-9).
#[test]
fn solve_inverts_the_damped_matrix() {
    for (model, n, seed) in [(MLP, 10, 71), (CNN, 6, 72), (NORM_CNN, 6, 73)] {
        let fx = Fx::new(model, n, seed);
        let p = fx.problem(n);
        let t = classification();
        let dense = p.fim_dense(&t).unwrap();
        let lambda = 1e-3 * dense.trace().unwrap() / dense.dim() as f64;
        let kfac_ok = !fx.spec.layers.iter().any(|l| is_norm(&l.layer));
        let mut reps = vec![
            ("dense", dense.clone()),
            ("lowrank", p.fim_lowrank(&t, None).unwrap()),
        ];
        let mut kinds = vec![
            ("blockdiag", BlockKind::Dense),
            ("diag", BlockKind::Diag),
            ("quasidiag", BlockKind::QuasiDiag),
        ];
        if kfac_ok {
            kinds.push(("ekfac", BlockKind::Ekfac { refit: true }));
            kinds.push(("ekfac no refit", BlockKind::Ekfac { refit: false }));
        }
        for (name, k) in kinds {
            reps.push((name, p.fim_blocks(&t, &fx.kinds(k)).unwrap()));
        }
        for s in 0..2 {
            let v = fx.random_vector(200 + s);
            for (name, f) in &reps {
                // LowRank with fewer rows than parameters solves in its row
                // space (NNGeometry's convention): give it a vector there.
                let v = match &f.body {
                    FimBody::LowRank(l) if l.rows < l.cols => f.mv(&v).unwrap(),
                    _ => v.clone(),
                };
                let x = f.solve(&v, lambda).unwrap();
                let back: Vec<f64> = f
                    .mv(&x)
                    .unwrap()
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| a + lambda * b)
                    .collect();
                assert_close(
                    &format!("{model} {name}: (F + λI) solve(v)"),
                    &back,
                    &v,
                    1e-8,
                );
                // QuasiDiag is indefinite (its cross terms are not those of
                // a principal sub-matrix): `power` clamps its negative
                // eigenvalues, so only `solve` inverts it.
                if *name != "lowrank" && *name != "quasidiag" {
                    let pw = f.power(-1.0, lambda).unwrap().mv(&v).unwrap();
                    assert_close(
                        &format!("{model} {name}: power(-1) vs solve"),
                        &pw,
                        &x,
                        // `power` clamps round-off negative eigenvalues
                        // (≈ −1e-17 ‖F‖) to 0 and `solve` does not, and
                        // goes through an eigendecomposition.
                        1e-9,
                    );
                }
            }
        }
        if !kfac_ok {
            continue;
        }
        // KFAC: x solves (G + √λ/π I) X (A + π√λ I) = V, π² = (tr A/sa)/(tr G/sg).
        let kfac = p.fim_blocks(&t, &fx.kinds(BlockKind::Kfac)).unwrap();
        let damped: Vec<Block> = blocks(&kfac)
            .iter()
            .map(|b| {
                let Block::Kfac { a, g } = b else {
                    panic!("not KFAC")
                };
                let pi = ((a.trace() / a.rows as f64) / (g.trace() / g.rows as f64)).sqrt();
                let (mut a, mut g) = (a.clone(), g.clone());
                a.add_diag(pi * lambda.sqrt());
                g.add_diag(lambda.sqrt() / pi);
                Block::Kfac { a, g }
            })
            .collect();
        let damped = Fim {
            body: FimBody::Blocks(damped),
            ..kfac.clone()
        };
        let v = fx.random_vector(300);
        let x = kfac.solve(&v, lambda).unwrap();
        assert_close(
            &format!("{model} kfac: π-damped solve"),
            &damped.mv(&x).unwrap(),
            &v,
            1e-8,
        );
    }
    // λ → 0 on a well-conditioned KFAC: one Linear layer, random inputs,
    // regression (G = I/√C; with classification G is singular, since the
    // softmax ignores a common shift of the logits). √λ = 1e-10 leaves a
    // residual of ~1e-10 relative.
    let fx = Fx::new(LINEAR, 12, 74);
    let p = fx.problem_regression(12);
    let kfac = p
        .fim_blocks(
            &true_fim(Task::Regression { sigma2: 1.0 }),
            &[BlockKind::Kfac],
        )
        .unwrap();
    let ev = kfac.eigenvalues().unwrap();
    assert!(
        ev.iter().all(|e| *e > 1e-3),
        "KFAC not well conditioned: {ev:?}"
    );
    let v = fx.random_vector(5);
    let x = kfac.solve(&v, 1e-20).unwrap();
    assert_close("linear kfac: mv(solve(v))", &kfac.mv(&x).unwrap(), &v, 1e-8);
    // LowRank with at least as many rows as parameters: the full solve.
    let t = true_fim(Task::Regression { sigma2: 1.0 });
    let low = p.fim_lowrank(&t, None).unwrap();
    let FimBody::LowRank(l) = &low.body else {
        panic!("not LowRank")
    };
    assert!(l.rows >= l.cols);
    let lambda = 1e-3;
    let x = low.solve(&v, lambda).unwrap();
    let back: Vec<f64> = low
        .mv(&x)
        .unwrap()
        .iter()
        .zip(&x)
        .map(|(a, b)| a + lambda * b)
        .collect();
    assert_close("linear lowrank: (F + λI) solve(v)", &back, &v, 1e-8);
}

// ---------------------------------------------------------------- 7. KL

/// `mean_i KL(p_i(w) ‖ p_i(w + εδ)) ≈ ½ ε² δᵀFδ` for ε = 1e-4 (relative
/// 1e-3), for every task's output distribution, on smooth models (no ReLU
/// or max-pool kink to cross).
#[test]
fn fim_is_the_curvature_of_the_kl_divergence() {
    for (k, (model, n, task)) in task_models().into_iter().enumerate() {
        let fx = Fx::new(model, n, 81 + k as u64);
        let f = fx
            .problem_for(&task, n)
            .fim_dense(&true_fim(task.clone()))
            .unwrap();
        let w0 = fx.params.flat();
        let z0 = fx.outputs_at(&w0);
        for s in 0..3 {
            let mut delta = fx.random_vector(400 + s);
            let norm = dot(&delta, &delta).sqrt();
            delta.iter_mut().for_each(|x| *x /= norm);
            let eps = 1e-4;
            let w: Vec<f64> = w0.iter().zip(&delta).map(|(a, d)| a + eps * d).collect();
            let mean_kl = fx
                .outputs_at(&w)
                .chunks(fx.c)
                .zip(z0.chunks(fx.c))
                .map(|(z2, z)| kl(&task, z, z2))
                .sum::<f64>()
                / n as f64;
            let quad = 0.5 * eps * eps * f.vtmv(&delta).unwrap();
            assert!(quad > 0.0);
            assert_close(
                &format!("{model} {task:?}: KL vs ½ε²δᵀFδ"),
                &[mean_kl],
                &[quad],
                1e-3,
            );
        }
    }
}

// ---------------------------------------------------------------- 8. batching

/// batch = n and batch = 3 give the same FIM for every representation
/// (1e-12; the EKFAC refit, which goes through eigenvectors, 1e-10).
#[test]
fn batching_does_not_change_any_representation() {
    for (model, n, seed) in [(CNN, 10, 91), (NORM_CNN, 10, 92), (MLP, 11, 93)] {
        let fx = Fx::new(model, n, seed);
        let kfac_ok = !fx.spec.layers.iter().any(|l| is_norm(&l.layer));
        let (whole, split) = (fx.problem(n), fx.problem(3));
        let v = fx.random_vector(9);
        for t in [
            classification(),
            Target::Fim {
                variant: FisherVariant::Empirical,
                task: Task::Classification,
            },
            Target::Fim {
                variant: FisherVariant::Mc {
                    samples: 3,
                    seed: 4,
                },
                task: Task::Classification,
            },
        ] {
            let what = |q: &str| format!("{model} {t:?}: {q}");
            let a = whole.fim_dense(&t).unwrap().to_dense().unwrap();
            let b = split.fim_dense(&t).unwrap().to_dense().unwrap();
            assert_close(&what("dense"), &b.data, &a.data, 1e-12);
            let a = whole.fim_lowrank(&t, None).unwrap().to_dense().unwrap();
            let b = split.fim_lowrank(&t, None).unwrap().to_dense().unwrap();
            assert_close(&what("lowrank"), &b.data, &a.data, 1e-12);
            assert_close(
                &what("implicit"),
                &split.implicit_mv(&t, &v).unwrap(),
                &whole.implicit_mv(&t, &v).unwrap(),
                1e-12,
            );
            let mut kinds = vec![BlockKind::Dense, BlockKind::Diag, BlockKind::QuasiDiag];
            if kfac_ok {
                kinds.extend([
                    BlockKind::Kfac,
                    BlockKind::Ekfac { refit: false },
                    BlockKind::Ekfac { refit: true },
                ]);
            }
            for k in kinds {
                let a = whole
                    .fim_blocks(&t, &fx.kinds(k))
                    .unwrap()
                    .to_dense()
                    .unwrap();
                let b = split
                    .fim_blocks(&t, &fx.kinds(k))
                    .unwrap()
                    .to_dense()
                    .unwrap();
                let tol = if matches!(k, BlockKind::Ekfac { .. }) {
                    1e-10
                } else {
                    1e-12
                };
                assert_close(&what(&format!("{k:?}")), &b.data, &a.data, tol);
            }
        }
    }
}

// ---------------------------------------------------------------- 9. f32

/// The float32 backend's dense FIM agrees with float64 to 1e-4.
#[test]
fn float32_agrees_with_float64() {
    for (model, n) in [(MLP, 10), (NORM_CNN, 6)] {
        let f64x = Fx::build(model, n, 101, Dtype::F64, false);
        let f32x = Fx::build(model, n, 101, Dtype::F32, false);
        assert_eq!(f64x.params, f32x.params);
        for t in [classification(), true_fim(Task::Regression { sigma2: 1.0 })] {
            let a = f64x.problem(n).fim_dense(&t).unwrap().to_dense().unwrap();
            let b = f32x.problem(n).fim_dense(&t).unwrap().to_dense().unwrap();
            assert_close(
                &format!("{model} {t:?}: f32 vs f64"),
                &b.data,
                &a.data,
                1e-4,
            );
        }
        let a = f64x.problem(n).ntk_dense(false).unwrap();
        let b = f32x.problem(n).ntk_dense(false).unwrap();
        assert_close(&format!("{model}: NTK f32 vs f64"), &b.data, &a.data, 1e-4);
    }
}

/// A float32 run holds its dense NTK in f32: half the bytes, and the very
/// values the f64-held kernel of the same run has (they were computed in
/// f32), so every measurement reads the same numbers; the alignments read
/// in place agree with those of the f64 copy.
#[test]
fn a_float32_kernel_is_held_in_float32_with_the_same_values() {
    use nngeo::linalg::{HostMatrix, Keep, Stored};
    for (model, n) in [(MLP, 10), (NORM_CNN, 6)] {
        let fx = Fx::build(model, n, 102, Dtype::F32, false);
        let p = fx.problem(n);
        let held = p.ntk_dense_in(false, Keep::Host(Dtype::F32)).unwrap();
        let wide = p.ntk_dense_in(false, Keep::Host(Dtype::F64)).unwrap();
        assert!(
            matches!(held, Stored::Host(HostMatrix::F32 { .. })),
            "{model}"
        );
        assert_eq!(held.bytes() * 2, wide.bytes(), "{model}");
        let (h, w) = (
            held.as_f64().unwrap().into_owned(),
            wide.into_f64().unwrap(),
        );
        assert_eq!(h, w, "{model}: the same values");
        let c = h.rows / n;
        let y: Vec<f64> = (0..c * n).map(|i| ((i * 7) % 5) as f64 - 2.0).collect();
        for centered in [false, true] {
            let a = kernel::alignment_stored(&held, &y, c, n, centered).unwrap();
            let b = kernel::alignment(&w, &y, c, n, centered);
            assert!(
                (a - b).abs() <= 1e-12 * b.abs(),
                "{model} {centered}: {a} vs {b}"
            );
        }
        assert_eq!(
            kernel::trace_kernel_of(&held, c, n).unwrap(),
            kernel::trace_kernel(&w, c, n)
        );
    }
}

/// A float32 run holds its dense Fisher and BlockDiag's blocks in f32:
/// half the bytes, each value the f32 rounding of what an f64-held Fisher
/// of the same run holds (both summed in f32 on the device, scaled by
/// `1/n` in f64), and the measurements over them agree to f32 rounding.
#[test]
fn a_float32_fisher_is_held_in_float32() {
    use nngeo::linalg::{HostMatrix, Keep, Stored};
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-300);
    for (model, n) in [(MLP, 10), (NORM_CNN, 6)] {
        let fx = Fx::build(model, n, 103, Dtype::F32, false);
        let p = fx.problem(n);
        let t = classification();
        let held = p.fim_dense(&t).unwrap();
        let wide = p.fim_dense_in(&t, Keep::Host(Dtype::F64)).unwrap();
        let (FimBody::Dense(h), FimBody::Dense(w)) = (&held.body, &wide.body) else {
            panic!("{model}: dense bodies");
        };
        assert!(matches!(h, Stored::Host(HostMatrix::F32 { .. })), "{model}");
        assert_eq!(h.bytes() * 2, w.bytes(), "{model}");
        assert_eq!(held.bytes() * 2, wide.bytes(), "{model}");
        let (hv, wv) = (h.values_f64().unwrap(), w.values_f64().unwrap());
        assert!(
            hv.iter()
                .zip(wv.iter())
                .all(|(a, b)| *a == *b as f32 as f64),
            "{model}: every value the f32 rounding of the f64-held one"
        );
        assert!(
            rel(held.trace().unwrap(), wide.trace().unwrap()) < 1e-6,
            "{model}"
        );
        assert!(
            rel(held.frobenius().unwrap(), wide.frobenius().unwrap()) < 1e-6,
            "{model}"
        );
        let v: Vec<f64> = (0..held.dim()).map(|i| (i % 7) as f64 - 3.0).collect();
        let (a, b) = (held.solve(&v, 1e-2).unwrap(), wide.solve(&v, 1e-2).unwrap());
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = b.iter().map(|y| y * y).sum::<f64>().sqrt();
        assert!(err < 1e-4 * norm, "{model}: solve {err:e} of {norm:e}");
        // BlockDiag: each block in f32, the dense Fisher's diagonal block.
        let bd = p.fim_blocks(&t, &fx.kinds(BlockKind::Dense)).unwrap();
        let FimBody::Blocks(blocks) = &bd.body else {
            panic!("{model}: blocks");
        };
        let mut bytes = 0;
        for (b, l) in blocks.iter().zip(&bd.layers) {
            let Block::Dense(m) = b else {
                panic!("{model}: a dense block");
            };
            assert!(
                matches!(m, Stored::Host(HostMatrix::F32 { .. })),
                "{model} {}",
                l.name
            );
            bytes += l.numel * l.numel * 4;
            let want = wide.layer(&l.name).unwrap().unwrap().to_dense().unwrap();
            let got = m.as_f64().unwrap();
            let top = want.data.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            let diff = got
                .data
                .iter()
                .zip(&want.data)
                .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
            assert!(
                diff <= 1e-5 * top,
                "{model} {}: {diff:e} of {top:e}",
                l.name
            );
        }
        assert_eq!(bd.bytes(), bytes, "{model}");
    }
}

// ---------------------------------------------------------------- 10. kernels

/// `H = (I_n − 11ᵀ/n) ⊗ I_C` on the `[C·n]` layout (row `c·n + i`).
fn centring(c: usize, n: usize) -> Mat {
    let mut h = Mat::zeros(c * n, c * n);
    for a in 0..c {
        for i in 0..n {
            for j in 0..n {
                let v = if i == j { 1.0 } else { 0.0 } - 1.0 / n as f64;
                h.set(a * n + i, a * n + j, v);
            }
        }
    }
    h
}

fn outer(y: &[f64]) -> Mat {
    let m = y.len();
    let mut o = Mat::zeros(m, m);
    for r in 0..m {
        for c in 0..m {
            o.set(r, c, y[r] * y[c]);
        }
    }
    o
}

fn alignment_by_hand(k: &Mat, y: &[f64], c: usize, n: usize, centered: bool) -> f64 {
    let yy = outer(y);
    let (k, yy) = if centered {
        let h = centring(c, n);
        (h.matmul(k).matmul(&h), h.matmul(&yy).matmul(&h))
    } else {
        (k.clone(), yy)
    };
    dot(&k.data, &yy.data) / (k.frobenius() * yy.frobenius())
}

/// `center_examples` = H K H, `alignment` = the formula on explicit
/// matrices, and A(yyᵀ, y) = 1: all 1e-12.
#[test]
fn kernel_functions_match_their_definitions() {
    let (n, c) = (7, 5);
    let fx = Fx::new(MLP, n, 111);
    let ntk = fx.problem(n).ntk_dense(false).unwrap();
    let mut rng = Rng::new(112);
    let b = Mat::from_vec(
        c * n,
        4,
        (0..c * n * 4).map(|_| rng.normal()).collect::<Vec<_>>(),
    );
    let random_psd = b.matmul(&b.transpose());
    let mut onehot = vec![0.0; n * c];
    for (i, l) in fx.labels.iter().enumerate() {
        onehot[i * c + *l as usize] = 1.0;
    }
    let y_onehot = kernel::target_vector(&onehot, n, c);
    // target_vector: y[c·n + i] = Y[i, c].
    for i in 0..n {
        for a in 0..c {
            assert_eq!(y_onehot[a * n + i], onehot[i * c + a]);
        }
    }
    let y_real: Vec<f64> = (0..n * c).map(|_| rng.normal()).collect();
    let h = centring(c, n);
    for (kname, k) in [("ntk", &ntk), ("random", &random_psd)] {
        assert_close(
            &format!("{kname}: center_examples"),
            &kernel::center_examples(k, c, n).data,
            &h.matmul(k).matmul(&h).data,
            1e-12,
        );
        for (yname, y) in [("onehot", &y_onehot), ("real", &y_real)] {
            for centered in [false, true] {
                let ours = kernel::alignment(k, y, c, n, centered);
                let theirs = alignment_by_hand(k, y, c, n, centered);
                assert_close(
                    &format!("{kname} {yname} centered = {centered}: alignment"),
                    &[ours],
                    &[theirs],
                    1e-12,
                );
                assert!(ours.abs() <= 1.0 + 1e-12);
                let self_align = kernel::alignment(&outer(y), y, c, n, centered);
                assert_close(
                    &format!("{yname} centered = {centered}: A(yyᵀ, y)"),
                    &[self_align],
                    &[1.0],
                    1e-12,
                );
            }
        }
    }
}

// ---------------------------------------------------------------- 11. MC

/// Monte-Carlo Fisher with 2000 samples: within 10% (Frobenius, relative)
/// of the true FIM for every task; another seed gives another matrix; the
/// same seed the same matrix, bit for bit.
#[test]
fn monte_carlo_fisher_converges_and_is_reproducible() {
    for (k, (model, n, task)) in task_models().into_iter().enumerate() {
        if model == NORM_CNN {
            continue;
        }
        let fx = Fx::new(model, n, 121 + k as u64);
        let p = fx.problem_for(&task, n);
        let exact = p
            .fim_dense(&true_fim(task.clone()))
            .unwrap()
            .to_dense()
            .unwrap();
        let mc = |samples: usize, seed: u64| {
            p.fim_dense(&Target::Fim {
                variant: FisherVariant::Mc { samples, seed },
                task: task.clone(),
            })
            .unwrap()
            .to_dense()
            .unwrap()
        };
        let a = mc(2000, 1);
        let rel = frob_dist(&a, &exact) / exact.frobenius();
        assert!(
            rel < 0.1,
            "{model} {task:?}: MC Fisher off by {rel:.3} (Frobenius, relative)"
        );
        let again = mc(2000, 1);
        assert!(
            a.data == again.data,
            "{model}: same seed, different matrices"
        );
        let b = mc(2000, 2);
        let diff = frob_dist(&a, &b) / exact.frobenius();
        assert!(
            diff > 1e-4,
            "{model}: seeds 1 and 2 give the same matrix ({diff:e})"
        );
        // One sample per example: much noisier.
        assert!(frob_dist(&mc(1, 1), &exact) > frob_dist(&a, &exact));
    }
}

// ---------------------------------------------------------------- 12. empirical

/// Gradients of each example's negative log-likelihood, rows `[n, P]`,
/// by central differences with h = 1e-6.
fn nll_gradients_fd(fx: &Fx, task: &Task) -> Mat {
    let (n, c, np) = (fx.n, fx.c, fx.net.num_params());
    let losses = |w: &[f64]| -> Vec<f64> {
        fx.outputs_at(w)
            .chunks(c)
            .enumerate()
            .map(|(i, z)| nll(task, z, &fx.target(task, i)))
            .collect()
    };
    let w0 = fx.params.flat();
    let h = 1e-6;
    let mut g = Mat::zeros(n, np);
    let mut w = w0.clone();
    for k in 0..np {
        w[k] = w0[k] + h;
        let lp = losses(&w);
        w[k] = w0[k] - h;
        let lm = losses(&w);
        w[k] = w0[k];
        for i in 0..n {
            g.set(i, k, (lp[i] - lm[i]) / (2.0 * h));
        }
    }
    g
}

/// Empirical Fisher = 1/n Σ gᵢ gᵢᵀ with gᵢ the gradient of example i's
/// negative log-likelihood (cross-entropy, Bernoulli, Gaussian with
/// σ² = 0.5) by central differences (h = 1e-6); 1e-6.
#[test]
fn empirical_fisher_is_the_mean_outer_product_of_gradients() {
    for (k, (model, n, task)) in task_models().into_iter().enumerate() {
        let n = n.min(6);
        let fx = Fx::new(model, n, 131 + k as u64);
        let g = nll_gradients_fd(&fx, &task);
        let mut expect = g.transpose().matmul(&g);
        expect.data.iter_mut().for_each(|x| *x /= n as f64);
        let p = fx.problem_for(&task, n);
        let efim = p
            .fim_dense(&Target::Fim {
                variant: FisherVariant::Empirical,
                task: task.clone(),
            })
            .unwrap();
        assert_close(
            &format!("{model} {task:?}: empirical Fisher"),
            &efim.to_dense().unwrap().data,
            &expect.data,
            1e-6,
        );
    }
}

/// `loss_gradient` is the gradient of the mean loss — cross-entropy
/// (classification) or PyTorch's MSE (regression) — by central
/// differences (h = 1e-6); 1e-6.
#[test]
fn loss_gradient_matches_finite_differences() {
    for (model, n, seed) in [(MLP, 6, 181), (NORM_CNN, 5, 182)] {
        let fx = Fx::new(model, n, seed);
        let g = nll_gradients_fd(&fx, &Task::Classification);
        let mean: Vec<f64> = (0..g.cols)
            .map(|k| (0..n).map(|i| g.get(i, k)).sum::<f64>() / n as f64)
            .collect();
        assert_close(
            &format!("{model}: cross-entropy gradient"),
            &fx.problem(n).loss_gradient(false).unwrap(),
            &mean,
            1e-6,
        );
    }
    // MSE = 1/(nC) Σ (z − y)² is the Gaussian NLL with σ² = nC/2, summed.
    let (n, c) = (6, 3);
    let fx = Fx::new(REG_MLP, n, 183);
    let g = nll_gradients_fd(
        &fx,
        &Task::Regression {
            sigma2: (n * c) as f64 / 2.0,
        },
    );
    let sum: Vec<f64> = (0..g.cols)
        .map(|k| (0..n).map(|i| g.get(i, k)).sum::<f64>())
        .collect();
    assert_close(
        "MSE gradient",
        &fx.problem_regression(n).loss_gradient(true).unwrap(),
        &sum,
        1e-6,
    );
}

/// In training mode (BatchNorm normalising with the statistics of the
/// batch, which couples the examples) the loss gradient is that of the
/// training-mode loss: central differences (h = 1e-6) along random
/// directions, 1e-6; chains and graphs with both BatchNorms. The batch
/// statistics are the mean and unbiased variance of each channel's inputs
/// (1e-12 against an evaluation-mode pass with those as running
/// statistics, which must then give the same outputs).
#[test]
fn train_mode_gradient_matches_finite_differences() {
    check_train_mode_gradient(NORM_CNN, 6, 191);
    check_train_mode_gradient(ALL_2D, 5, 192);
    check_train_mode_gradient(RESNET, 5, 193);
}

fn check_train_mode_gradient(model: impl Model, n: usize, seed: u64) {
    let fx = Fx::new(model, n, seed);
    let w0 = fx.params.flat();
    let train_loss = |w: &[f64]| {
        let net = fx.model_at(w, &TrainMode::Plain);
        let p = Problem {
            net: &net,
            ..fx.problem(n)
        };
        p.loss_gradient_in(false, Phase::Train { seed: 0 }).unwrap()
    };
    let (_, g, stats) = train_loss(&w0);
    assert!(!stats.is_empty(), "{model}: no batch statistics");
    let h = 1e-6;
    for s in 0..3 {
        let v = fx.random_vector(200 + s);
        let fd = (train_loss(&axpy(&w0, h, &v)).0 - train_loss(&axpy(&w0, -h, &v)).0) / (2.0 * h);
        assert_close(
            &format!("{model}: train-mode directional derivative"),
            &[dot(&g, &v)],
            &[fd],
            1e-6,
        );
    }
    // Outputs with the batch statistics as running statistics (var + eps
    // from the unbiased variance back to the biased one) are the
    // training-mode outputs.
    let mut p = fx.params.clone();
    for st in &stats {
        let name = &fx.spec.layers[st.layer].name;
        let l: usize = fx.spec.layers[st.layer].input[1..].iter().product();
        let count = (n * l) as f64;
        let set = |p: &mut HostParams, key: &str, v: Vec<f64>| {
            let t = p
                .tensors
                .iter_mut()
                .find(|t| t.key == format!("{name}.{key}"))
                .unwrap();
            t.data = v;
        };
        set(&mut p, "running_mean", st.mean.clone());
        set(
            &mut p,
            "running_var",
            st.var.iter().map(|v| v * (count - 1.0) / count).collect(),
        );
    }
    let eval = Net::new(&fx.o, &fx.spec, p).unwrap();
    let train = fx
        .net
        .forward_in(&fx.o, &fx.x, false, Phase::Train { seed: 0 })
        .unwrap();
    assert_close(
        &format!("{model}: batch statistics"),
        &fx.outputs_of(&eval),
        &fx.o.download(&train.output).unwrap(),
        1e-12,
    );
}

/// A one-logit model on two classes is a binary classifier (the checker
/// accepts it and the FIM uses a Bernoulli output): its loss must be the
/// binary cross-entropy, its gradient that loss's, and its accuracy that
/// of `z > 0` (1e-6).
#[test]
fn binary_classifier_loss_and_gradient() {
    let n = 8;
    let fx = Fx::new(BINARY_MLP, n, 191);
    let task = Task::Binary;
    let z = fx.outputs_at(&fx.params.flat());
    let bce: f64 = (0..n)
        .map(|i| nll(&task, &z[i..i + 1], &[fx.labels[i]]))
        .sum::<f64>()
        / n as f64;
    let acc = (0..n)
        .filter(|&i| (z[i] > 0.0) == (fx.labels[i] == 1.0))
        .count() as f64
        / n as f64;
    let (loss, accuracy) = fx.problem(n).loss_accuracy(false).unwrap();
    assert_close("binary loss", &[loss], &[bce], 1e-6);
    assert_close("binary accuracy", &[accuracy.unwrap()], &[acc], 1e-12);
    let g = nll_gradients_fd(&fx, &task);
    let mean: Vec<f64> = (0..g.cols)
        .map(|k| (0..n).map(|i| g.get(i, k)).sum::<f64>() / n as f64)
        .collect();
    assert_close(
        "binary gradient",
        &fx.problem(n).loss_gradient(false).unwrap(),
        &mean,
        1e-6,
    );
}

// ---------------------------------------------------------------- layer subsets

/// The flat indices (in the full model) of the layers `slots`, in that order.
fn subset_indices(fx: &Fx, slots: &[usize]) -> Vec<usize> {
    slots
        .iter()
        .flat_map(|&s| {
            let sl = &fx.net.slots[s];
            sl.offset..sl.offset + sl.numel
        })
        .collect()
}

/// A representation restricted to some layers (`Problem::slots`) is the
/// corresponding sub-matrix of the full one, laid out as its `layers`
/// say (1e-12). Sorted subsets.
#[test]
fn layer_subsets_are_sub_blocks_of_the_full_fim() {
    let fx = Fx::new(MLP, 8, 141);
    let t = classification();
    let full = fx.problem(8).fim_dense(&t).unwrap().to_dense().unwrap();
    for slots in [vec![1], vec![0, 2], vec![1, 2]] {
        let mut p = fx.problem(8);
        p.slots = slots.clone();
        let idx = subset_indices(&fx, &slots);
        let mut expect = Mat::zeros(idx.len(), idx.len());
        for (r, &i) in idx.iter().enumerate() {
            for (c, &j) in idx.iter().enumerate() {
                expect.set(r, c, full.get(i, j));
            }
        }
        let dense = p.fim_dense(&t).unwrap();
        let names: Vec<&str> = dense.layers.iter().map(|l| l.name.as_str()).collect();
        let want: Vec<&str> = slots
            .iter()
            .map(|&s| fx.net.slots[s].name.as_str())
            .collect();
        assert_eq!(names, want);
        assert_close(
            &format!("{slots:?}: dense"),
            &dense.to_dense().unwrap().data,
            &expect.data,
            1e-12,
        );
        let v: Vec<f64> = (0..idx.len()).map(|i| (i as f64).sin()).collect();
        assert_close(
            &format!("{slots:?}: implicit"),
            &p.implicit_mv(&t, &v).unwrap(),
            &expect.matvec(&v),
            1e-12,
        );
        let bd = p
            .fim_blocks(&t, &vec![BlockKind::Dense; slots.len()])
            .unwrap();
        for l in &bd.layers {
            let sub = sub_block(&expect, l.offset, l.offset, l.numel, l.numel);
            assert_close(
                &format!("{slots:?}: block {}", l.name),
                &bd.layer(&l.name).unwrap().unwrap().to_dense().unwrap().data,
                &sub.data,
                1e-12,
            );
        }
    }
}

/// `Problem::slots` in an order other than the model's (what
/// `layers = ["layers.4", "layers.0"]` gives, which the checker accepts):
/// every representation must still label each block with the layer it
/// belongs to (1e-12).
#[test]
fn unsorted_layer_subsets_keep_blocks_with_their_layers() {
    let fx = Fx::new(MLP, 8, 151);
    let t = classification();
    let mut sorted = fx.problem(8);
    sorted.slots = vec![0, 2];
    let mut unsorted = fx.problem(8);
    unsorted.slots = vec![2, 0];
    let a = sorted.fim_blocks(&t, &[BlockKind::Diag; 2]).unwrap();
    let b = unsorted.fim_blocks(&t, &[BlockKind::Diag; 2]).unwrap();
    for l in &a.layers {
        assert_close(
            &format!("diag, block {}", l.name),
            &b.layer(&l.name).unwrap().unwrap().diag().unwrap(),
            &a.layer(&l.name).unwrap().unwrap().diag().unwrap(),
            1e-12,
        );
    }
    let a = sorted.fim_dense(&t).unwrap();
    let b = unsorted.fim_dense(&t).unwrap();
    for l in &a.layers {
        assert_close(
            &format!("dense, block {}", l.name),
            &b.layer(&l.name).unwrap().unwrap().to_dense().unwrap().data,
            &a.layer(&l.name).unwrap().unwrap().to_dense().unwrap().data,
            1e-12,
        );
    }
}

/// The same layer named twice (`layers = ["layers.0", "layers.0"]`, which
/// the checker accepts) must give a result or an error, not a panic.
#[test]
fn duplicated_layer_subsets_do_not_panic() {
    let fx = Fx::new(MLP, 8, 161);
    let t = classification();
    let mut p = fx.problem(8);
    p.slots = vec![0, 0];
    let dense = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.fim_dense(&t).map(|f| f.dim())
    }));
    assert!(dense.is_ok(), "fim_dense panicked on slots [0, 0]");
    let blocks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.fim_blocks(&t, &[BlockKind::Diag; 2]).map(|f| f.dim())
    }));
    assert!(blocks.is_ok(), "fim_blocks panicked on slots [0, 0]");
}

/// `power(½, λ)` applied twice is `F + λI`, and `power(1, 0)` is `F`, for
/// every positive semi-definite representation, KFAC included (1e-9).
#[test]
fn matrix_powers_compose() {
    for (model, n, seed) in [(MLP, 10, 171), (CNN, 6, 172)] {
        let fx = Fx::new(model, n, seed);
        let p = fx.problem(n);
        let t = classification();
        let dense = p.fim_dense(&t).unwrap();
        let lambda = 1e-2 * dense.trace().unwrap() / dense.dim() as f64;
        let mut reps = vec![
            ("dense", dense),
            ("lowrank", p.fim_lowrank(&t, None).unwrap()),
        ];
        for (name, k) in [
            ("blockdiag", BlockKind::Dense),
            ("diag", BlockKind::Diag),
            ("kfac", BlockKind::Kfac),
            ("ekfac", BlockKind::Ekfac { refit: true }),
        ] {
            reps.push((name, p.fim_blocks(&t, &fx.kinds(k)).unwrap()));
        }
        // (QuasiDiag is left out: it is indefinite, and `power` clamps
        // negative eigenvalues to zero by design.)
        let v = fx.random_vector(17);
        for (name, f) in &reps {
            let d = f.to_dense().unwrap();
            let half = f.power(0.5, lambda).unwrap();
            let twice = half.mv(&half.mv(&v).unwrap()).unwrap();
            let expect: Vec<f64> = d
                .matvec(&v)
                .iter()
                .zip(&v)
                .map(|(a, b)| a + lambda * b)
                .collect();
            assert_close(&format!("{model} {name}: power(½)²"), &twice, &expect, 1e-9);
            let one = f.power(1.0, 0.0).unwrap();
            assert_close(
                &format!("{model} {name}: power(1)"),
                &one.to_dense().unwrap().data,
                &d.data,
                1e-9,
            );
        }
    }
}

// ---------------------------------------------------------------- training

use nngeo::engine::train::{train, TrainData, TrainObserver};
use nngeo::plan::{Length, LossKind, LrSchedule, Optimizer, Structure, TrainConfig, TrainMode};

const LINEARISED: TrainMode = TrainMode::Linearized { center: false };

/// `a + s·b`.
fn axpy(a: &[f64], s: f64, b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + s * y).collect()
}

impl Fx {
    /// This model at weights `w`, trained in `mode` from the fixture's weights.
    fn model_at(&self, w: &[f64], mode: &TrainMode) -> Net<TestOps> {
        let mut p = self.params.clone();
        p.set_flat(w).unwrap();
        Net::new(&self.o, &self.spec, p)
            .unwrap()
            .reparam(&self.o, mode, &self.params)
            .unwrap()
    }

    fn outputs_of(&self, net: &Net<TestOps>) -> Vec<f64> {
        self.o
            .download(&net.forward(&self.o, &self.x, false).unwrap().output)
            .unwrap()
    }

    /// Mean cross-entropy of `net` on the fixture's labels, and its gradient.
    fn loss_grad_of(&self, net: &Net<TestOps>) -> (f64, Vec<f64>) {
        Problem {
            net,
            ..self.problem(self.n)
        }
        .loss_and_gradient(false)
        .unwrap()
    }

    fn jacobian_of(&self, net: &Net<TestOps>) -> Mat {
        Problem {
            net,
            ..self.problem(self.n)
        }
        .jacobian_rows(&Target::Outputs)
        .unwrap()
    }
}

/// `J v` with `J` in `jacobian_rows` layout (rows `a·n + i`), as `[n, C]`.
fn j_times(j: &Mat, v: &[f64], n: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * c];
    for i in 0..n {
        for a in 0..c {
            out[i * c + a] = (0..v.len()).map(|k| j.get(a * n + i, k) * v[k]).sum();
        }
    }
    out
}

/// The linearised model is `f(w₀) + J(w₀) Δw` (forward mode, to 1e-10
/// against the dense Jacobian), its directional derivative matches central
/// finite differences of the network (1e-6), it is exactly linear in Δw,
/// and its Jacobian is the network's at w₀ whatever the weights (1e-12).
/// Every layer type takes part, in chains and in graphs.
#[test]
fn linearised_model_is_the_first_order_expansion_at_w0() {
    let chains = [(ALL_2D, 31), (ALL_1D, 32), (POOL_FIRST, 33), (MLP, 34)];
    for (model, seed) in chains {
        check_linearised(model, seed);
    }
    check_linearised(RESNET, 35);
    check_linearised(BRANCHES, 36);
}

fn check_linearised(model: impl Model, seed: u64) {
    let fx = Fx::new(model, 5, seed);
    let (n, c) = (fx.n, fx.c);
    let w0 = fx.params.flat();
    let dw: Vec<f64> = fx
        .random_vector(seed + 100)
        .iter()
        .map(|x| 0.3 * x)
        .collect();
    let j0 = fx.jacobian_of(&fx.net);
    let f0 = fx.outputs_of(&fx.net);
    let lin = fx.model_at(&axpy(&w0, 1.0, &dw), &LINEARISED);
    let taylor = axpy(&f0, 1.0, &j_times(&j0, &dw, n, c));
    assert_close(
        &format!("f_lin ({model})"),
        &fx.outputs_of(&lin),
        &taylor,
        1e-10,
    );
    // Forward mode against finite differences of the network itself.
    let h = 1e-6;
    let zp = fx.outputs_at(&axpy(&w0, h, &dw));
    let zm = fx.outputs_at(&axpy(&w0, -h, &dw));
    let fd: Vec<f64> = zp
        .iter()
        .zip(&zm)
        .map(|(p, m)| (p - m) / (2.0 * h))
        .collect();
    let jv: Vec<f64> = fx
        .outputs_of(&lin)
        .iter()
        .zip(&f0)
        .map(|(a, b)| a - b)
        .collect();
    assert_close(&format!("J v by forward mode ({model})"), &jv, &fd, 1e-6);
    // Centred: J(w₀) Δw alone.
    let centred = fx.model_at(
        &axpy(&w0, 1.0, &dw),
        &TrainMode::Linearized { center: true },
    );
    assert_close(
        &format!("centred f_lin ({model})"),
        &fx.outputs_of(&centred),
        &jv,
        1e-12,
    );
    // Exactly linear: doubling Δw doubles the change.
    let lin2 = fx.model_at(&axpy(&w0, 2.0, &dw), &LINEARISED);
    let jv2: Vec<f64> = fx
        .outputs_of(&lin2)
        .iter()
        .zip(&f0)
        .map(|(a, b)| a - b)
        .collect();
    let twice: Vec<f64> = jv.iter().map(|x| 2.0 * x).collect();
    assert_close(&format!("linearity ({model})"), &jv2, &twice, 1e-12);
    assert_close(
        &format!("linearised Jacobian ({model})"),
        &fx.jacobian_of(&lin2).data,
        &j0.data,
        1e-12,
    );
}

/// The gradient of the linearised model's loss is `J(w₀)ᵀ ∇ℓ` at the
/// linearised outputs: it matches central finite differences of that loss
/// along random directions (1e-6), and is not the network's own gradient.
#[test]
fn linearised_loss_gradient_matches_finite_differences() {
    let fx = Fx::new(MLP, 7, 41);
    let w0 = fx.params.flat();
    let w = axpy(&w0, 0.5, &fx.random_vector(42));
    let lin = fx.model_at(&w, &LINEARISED);
    let (_, g) = fx.loss_grad_of(&lin);
    let h = 1e-5;
    for s in 0..3 {
        let v = fx.random_vector(50 + s);
        let lp = fx
            .loss_grad_of(&fx.model_at(&axpy(&w, h, &v), &LINEARISED))
            .0;
        let lm = fx
            .loss_grad_of(&fx.model_at(&axpy(&w, -h, &v), &LINEARISED))
            .0;
        let fd = (lp - lm) / (2.0 * h);
        assert_close("directional derivative", &[dot(&g, &v)], &[fd], 1e-6);
    }
    let (_, g_net) = fx.loss_grad_of(&fx.model_at(&w, &TrainMode::Plain));
    assert!(
        rel_err(&g, &g_net) > 1e-3,
        "the linearised gradient is the network's"
    );
}

/// `f_α = α (f(w) − f(w₀))` (1e-12), its Jacobian is `α J(w)` (1e-12), its
/// loss gradient matches finite differences (1e-6); uncentred at α = 1 it
/// is the network, bit for bit.
#[test]
fn scaled_model_is_alpha_times_the_centred_network() {
    let fx = Fx::new(MLP, 6, 43);
    let w0 = fx.params.flat();
    let w = axpy(&w0, 0.01, &fx.random_vector(44));
    let alpha = 10.0;
    let scaled = TrainMode::Scaled {
        alpha,
        center: true,
    };
    let net = fx.model_at(&w, &scaled);
    let f0 = fx.outputs_of(&fx.net);
    let f = fx.outputs_at(&w);
    let want: Vec<f64> = f.iter().zip(&f0).map(|(a, b)| alpha * (a - b)).collect();
    assert_close("f_alpha", &fx.outputs_of(&net), &want, 1e-12);
    let plain = fx.model_at(&w, &TrainMode::Plain);
    let j_alpha: Vec<f64> = fx
        .jacobian_of(&plain)
        .data
        .iter()
        .map(|x| alpha * x)
        .collect();
    assert_close(
        "Jacobian of f_alpha",
        &fx.jacobian_of(&net).data,
        &j_alpha,
        1e-12,
    );
    let (_, g) = fx.loss_grad_of(&net);
    let h = 1e-6;
    let v = fx.random_vector(45);
    let lp = fx.loss_grad_of(&fx.model_at(&axpy(&w, h, &v), &scaled)).0;
    let lm = fx.loss_grad_of(&fx.model_at(&axpy(&w, -h, &v), &scaled)).0;
    assert_close(
        "scaled gradient",
        &[dot(&g, &v)],
        &[(lp - lm) / (2.0 * h)],
        1e-6,
    );
    assert!((net.loss_scale() - 1.0 / (alpha * alpha)).abs() < 1e-18);
    let one = fx.model_at(
        &w,
        &TrainMode::Scaled {
            alpha: 1.0,
            center: false,
        },
    );
    assert_eq!(fx.outputs_of(&one), f);
    assert_eq!(fx.loss_grad_of(&one), fx.loss_grad_of(&plain));
}

struct Quiet;
impl TrainObserver<TestOps> for Quiet {
    fn hook(&mut self, _: usize, _: u64, _: &Net<TestOps>) -> Result<(), String> {
        Ok(())
    }
    fn log(&mut self, _: &str, _: u64, _: f64, _: &[(&str, String)]) {}
    fn examples(&mut self, _: u64, _: &[f64], _: &[bool]) -> Result<(), String> {
        Ok(())
    }
}

fn config(optimizer: Optimizer, mode: TrainMode, steps: u64, batch: usize) -> TrainConfig {
    TrainConfig {
        augment: None,
        penalties: vec![],
        loss: LossKind::CrossEntropy,
        optimizer,
        length: Length::Steps(steps),
        batch,
        schedule: LrSchedule::Constant,
        mode,
        seed: 3,
        eval: None,
        track: None,
        total_steps: steps,
    }
}

impl Fx {
    fn train(&self, cfg: &TrainConfig) -> Vec<f64> {
        let data = TrainData {
            x: &self.x,
            y: &self.labels,
            n: self.n,
            target_dim: 1,
            flipped: &[],
        };
        train(
            &self.o,
            &self.spec,
            self.params.clone(),
            &data,
            None,
            cfg,
            &[],
            &mut Quiet,
        )
        .unwrap()
        .flat()
    }
}

fn ngd(fim: Structure, refresh: u64, refit: Option<u64>) -> Optimizer {
    Optimizer::Ngd {
        fim,
        fisher: FisherVariant::True,
        lr: 0.7,
        damping: 0.05,
        refresh,
        refit,
        momentum: 0.0,
        decay: 0.95,
    }
}

/// One natural-gradient step on the full batch is `w − lr (F + λI)⁻¹ ∇L`
/// with F the representation built directly (Dense: the exact solve of the
/// exact Fisher; KFAC with π-damping; EKFAC refitted), to 1e-10. A second
/// step uses the running average 0.95 F(w₀) + 0.05 F(w₁).
#[test]
fn natural_gradient_steps_solve_with_the_fisher() {
    let fx = Fx::new(CNN, 10, 61);
    let w0 = fx.params.flat();
    let (lr, damping) = (0.7, 0.05);
    let (_, g0) = fx.loss_grad_of(&fx.net);
    let p = fx.problem(fx.n);
    let exact = {
        let mut f = p.fim_dense(&classification()).unwrap().to_dense().unwrap();
        f.add_diag(damping);
        nngeo::linalg::solve_sym(&f, &Mat::from_vec(g0.len(), 1, g0.clone()))
            .unwrap()
            .data
    };
    let got = fx.train(&config(
        ngd(Structure::Dense, 1, None),
        TrainMode::Plain,
        1,
        fx.n,
    ));
    assert_close("dense NGD step", &got, &axpy(&w0, -lr, &exact), 1e-10);
    for (s, kind) in [
        (Structure::BlockDiag, BlockKind::Dense),
        (Structure::Diag, BlockKind::Diag),
        (Structure::Kfac, BlockKind::Kfac),
        (
            Structure::Ekfac {
                refit: true,
                initial_basis: false,
            },
            BlockKind::Ekfac { refit: true },
        ),
    ] {
        let refit = matches!(s, Structure::Ekfac { .. }).then_some(1);
        let f = p.fim_blocks(&classification(), &fx.kinds(kind)).unwrap();
        let want = axpy(&w0, -lr, &f.solve(&g0, damping).unwrap());
        let got = fx.train(&config(ngd(s.clone(), 1, refit), TrainMode::Plain, 1, fx.n));
        assert_close(&format!("{} NGD step", s.name()), &got, &want, 1e-10);
    }
    // Two Diag steps: the second preconditions with the running average.
    let w1 = fx.train(&config(
        ngd(Structure::Diag, 1, None),
        TrainMode::Plain,
        1,
        fx.n,
    ));
    let d0 = p
        .fim_blocks(&classification(), &fx.kinds(BlockKind::Diag))
        .unwrap()
        .diag()
        .unwrap();
    let net1 = fx.model_at(&w1, &TrainMode::Plain);
    let p1 = Problem {
        net: &net1,
        ..fx.problem(fx.n)
    };
    let d1 = p1
        .fim_blocks(&classification(), &fx.kinds(BlockKind::Diag))
        .unwrap()
        .diag()
        .unwrap();
    let (_, g1) = fx.loss_grad_of(&net1);
    let step: Vec<f64> = (0..g1.len())
        .map(|k| g1[k] / (0.95 * d0[k] + 0.05 * d1[k] + damping))
        .collect();
    let got = fx.train(&config(
        ngd(Structure::Diag, 1, None),
        TrainMode::Plain,
        2,
        fx.n,
    ));
    assert_close(
        "running-average Diag step",
        &got,
        &axpy(&w1, -lr, &step),
        1e-10,
    );
}

/// α-scaled training without centring at α = 1 is plain training, bit for
/// bit (same shuffles, momentum, steps); centred α = 100 moves the weights
/// about α times less than α = 1 over the same steps.
#[test]
fn scaled_training_at_alpha_one_is_plain_training() {
    let fx = Fx::new(MLP, 12, 71);
    let sgd = Optimizer::Sgd {
        lr: 0.3,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 1e-3,
    };
    let plain = fx.train(&config(sgd.clone(), TrainMode::Plain, 7, 5));
    let one = fx.train(&config(
        sgd.clone(),
        TrainMode::Scaled {
            alpha: 1.0,
            center: false,
        },
        7,
        5,
    ));
    assert_eq!(plain, one, "α = 1 differs from plain training");
    let w0 = fx.params.flat();
    let moved = |w: &[f64]| -> f64 {
        w.iter()
            .zip(&w0)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let sgd = Optimizer::Sgd {
        lr: 0.05,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    let centred = |alpha| {
        let w = fx.train(&config(
            sgd.clone(),
            TrainMode::Scaled {
                alpha,
                center: true,
            },
            3,
            12,
        ));
        moved(&w)
    };
    let ratio = centred(1.0) / centred(100.0);
    assert!(
        (ratio / 100.0 - 1.0).abs() < 0.2,
        "weights moved {ratio:.1}× less at α = 100, expected about 100×"
    );
}

/// A Fisher's prepared damped inverse (what natural-gradient steps between
/// refreshes apply) is its solve: every structure, on convolutions and
/// transposed convolutions (whose natural layout differs from the flat
/// order), to 1e-10 in f64; in f32 the inverse and the products are in
/// single precision, to 1e-5 of the f64 solve of the same matrix.
#[test]
fn a_prepared_inverse_is_the_solve() {
    prepared_inverse_is_the_solve(CNN, Dtype::F64, 1e-10);
    prepared_inverse_is_the_solve(CONVT, Dtype::F64, 1e-10);
    prepared_inverse_is_the_solve(CNN, Dtype::F32, 1e-5);
}

fn prepared_inverse_is_the_solve(model: impl Model, dtype: Dtype, tol: f64) {
    use nngeo::geometry::inverse::Inverse;
    use nngeo::linalg::Host;
    let t = classification();
    let damping = 0.05;
    let fx = Fx::build(model, 10, 62, dtype, false);
    let p = fx.problem(fx.n);
    let mut fims = vec![
        ("Dense", p.fim_dense(&t).unwrap()),
        ("LowRank", p.fim_lowrank(&t, None).unwrap()),
    ];
    for (name, k) in [
        ("BlockDiag", BlockKind::Dense),
        ("Diag", BlockKind::Diag),
        ("QuasiDiag", BlockKind::QuasiDiag),
        ("KFAC", BlockKind::Kfac),
        ("EKFAC", BlockKind::Ekfac { refit: true }),
    ] {
        fims.push((name, p.fim_blocks(&t, &fx.kinds(k)).unwrap()));
    }
    let mut rng = Rng::new(5);
    let v: Vec<f64> = (0..fims[0].1.dim()).map(|_| rng.normal()).collect();
    for (name, f) in fims {
        let want = f.solve(&v, damping).unwrap();
        let inv = Inverse::new(&fx.o, &f, damping, &Host).unwrap();
        let got = inv.apply(&fx.o, &v, &Host).unwrap();
        assert_close(&format!("{model} {dtype:?} {name}"), &got, &want, tol);
    }
}

/// EKFAC natural gradient between eigenbasis refreshes: with `refresh = 3`
/// and `refit = 1`, the second step keeps the basis of w₀ and refits the
/// diagonal at w₁ in it, averaged as 0.95 d(w₀) + 0.05 d(w₁) (1e-10).
#[test]
fn ekfac_natural_gradient_refits_between_refreshes() {
    let fx = Fx::new(MLP, 9, 81);
    let (lr, damping) = (0.7, 0.05);
    let ekfac = Structure::Ekfac {
        refit: true,
        initial_basis: false,
    };
    let w1 = fx.train(&config(
        ngd(ekfac.clone(), 3, Some(1)),
        TrainMode::Plain,
        1,
        fx.n,
    ));
    let p = fx.problem(fx.n);
    let mut f = p
        .fim_blocks(
            &classification(),
            &fx.kinds(BlockKind::Ekfac { refit: true }),
        )
        .unwrap();
    let net1 = fx.model_at(&w1, &TrainMode::Plain);
    let p1 = Problem {
        net: &net1,
        ..fx.problem(fx.n)
    };
    let FimBody::Blocks(blocks) = &mut f.body else {
        panic!("EKFAC is block-diagonal")
    };
    let mut fresh = blocks.clone();
    let which: Vec<usize> = (0..fresh.len()).collect();
    p1.refit(&classification(), &f.layers, &mut fresh, &which, None)
        .unwrap();
    for (b, x) in blocks.iter_mut().zip(&fresh) {
        let (Block::Ekfac { d, .. }, Block::Ekfac { d: dx, .. }) = (b, x) else {
            panic!("EKFAC blocks")
        };
        for (a, b) in d.data.iter_mut().zip(&dx.data) {
            *a = 0.95 * *a + 0.05 * b;
        }
    }
    let (_, g1) = fx.loss_grad_of(&net1);
    let want = axpy(&w1, -lr, &f.solve(&g1, damping).unwrap());
    let got = fx.train(&config(ngd(ekfac, 3, Some(1)), TrainMode::Plain, 2, fx.n));
    assert_close("EKFAC step in a kept basis", &got, &want, 1e-10);
}

/// Natural gradient on a scaled model uses the model's own gradient and
/// Fisher, without SGD's 1/α² loss factor: one Dense step is
/// `w − lr (F_α + λI)⁻¹ ∇L_α` (1e-10), so the function step does not shrink
/// with α.
#[test]
fn natural_gradient_on_a_scaled_model_is_not_rescaled() {
    let fx = Fx::new(MLP, 8, 91);
    let (lr, damping) = (0.7, 0.05);
    let scaled = TrainMode::Scaled {
        alpha: 10.0,
        center: true,
    };
    let w0 = fx.params.flat();
    let net = fx.model_at(&w0, &scaled);
    let (_, g) = fx.loss_grad_of(&net);
    let p = Problem {
        net: &net,
        ..fx.problem(fx.n)
    };
    let mut f = p.fim_dense(&classification()).unwrap().to_dense().unwrap();
    f.add_diag(damping);
    let step = nngeo::linalg::solve_sym(&f, &Mat::from_vec(g.len(), 1, g.clone()))
        .unwrap()
        .data;
    let got = fx.train(&config(ngd(Structure::Dense, 1, None), scaled, 1, fx.n));
    assert_close("scaled NGD step", &got, &axpy(&w0, -lr, &step), 1e-10);
}

/// For the MSE loss (PyTorch's mean over the C outputs) the natural
/// gradient's Fisher is the loss's Gauss–Newton matrix
/// `(2/C) · 1/n Σ Jᵢᵀ Jᵢ`, built here from the dense Jacobian (1e-10).
#[test]
fn natural_gradient_for_mse_uses_the_gauss_newton_matrix() {
    let fx = Fx::new(REG_MLP, 7, 93);
    let (n, c) = (fx.n, fx.c);
    let (lr, damping) = (0.4, 0.05);
    let w0 = fx.params.flat();
    let (_, g) = fx.problem_regression(n).loss_and_gradient(true).unwrap();
    let j = fx.jacobian_of(&fx.net);
    let mut gn = j.transpose().matmul(&j);
    gn.data
        .iter_mut()
        .for_each(|x| *x *= 2.0 / (c as f64 * n as f64));
    gn.add_diag(damping);
    let step = nngeo::linalg::solve_sym(&gn, &Mat::from_vec(g.len(), 1, g.clone()))
        .unwrap()
        .data;
    let mut cfg = config(ngd(Structure::Dense, 1, None), TrainMode::Plain, 1, n);
    cfg.loss = LossKind::Mse;
    if let Optimizer::Ngd { lr: l, .. } = &mut cfg.optimizer {
        *l = lr;
    }
    let data = TrainData {
        x: &fx.x,
        y: &fx.targets,
        n,
        target_dim: c,
        flipped: &[],
    };
    let got = train(
        &fx.o,
        &fx.spec,
        fx.params.clone(),
        &data,
        None,
        &cfg,
        &[],
        &mut Quiet,
    )
    .unwrap()
    .flat();
    assert_close("MSE NGD step", &got, &axpy(&w0, -lr, &step), 1e-10);
}

#[path = "hessian.rs"]
mod hessian;

#[path = "jacobian.rs"]
mod jacobian;
