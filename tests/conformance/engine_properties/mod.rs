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

mod float32;
mod gradients;
mod jacobian_ntk;
mod kernels;
mod kfac_ekfac;
mod operations;
mod structures;
mod subsets;
mod training;

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

/// PyTorch's other activations and pooling options (after a BatchNorm
/// without affine parameters): LeakyReLU, ELU and
/// SiLU; a dilated, padded ceil-mode max pool (5×5 from 8×8, floor mode
/// gives 4×4); an average pool without the padded zeros in its divisor
/// (windows of 4, 6 and 9) and a ceil-mode one whose last windows hang
/// over the image (2×2 from 3×3, divisors 4, 2 and 1).
const MORE_2D: &str = "sequential(\
    conv2d(2, 4, kernel = 2), batchnorm2d(4, affine = false), leaky_relu(slope = 0.1),\
    maxpool2d(kernel = 2, stride = 2, padding = 1, dilation = 2, ceil_mode = true),\
    conv2d(4, 4, kernel = 3, padding = 1), elu(alpha = 0.7), adaptive_maxpool2d([5, 4]),\
    avgpool2d(kernel = 3, stride = 2, padding = 1, ceil_mode = true, count_include_pad = false),\
    avgpool2d(kernel = 2, stride = 2, ceil_mode = true), silu,\
    flatten, linear(16, 5), elu,\
    input = [2, 9, 9], init = pytorch(seed = 10))";

/// MobileNet's clamped activations, with bounds inside the pre-activations'
/// range so that every piece (both saturations, the ramp) is exercised.
const HARD: &str = "sequential(\
    conv2d(2, 4, kernel = 3, padding = 1), hardtanh(min = -0.3, max = 0.4),\
    conv2d(4, 4, kernel = 3, stride = 2), hardswish, flatten, linear(16, 6), relu6,\
    linear(6, 6), hardsigmoid, linear(6, 4),\
    input = [2, 6, 6], init = pytorch(seed = 13))";

/// Norm layers without scale and shift (PyTorch's `affine=False`): a
/// BatchNorm with running statistics only, an InstanceNorm, a GroupNorm and
/// a LayerNorm; parameters only in the convolutions and the head.
const PLAIN_NORMS: &str = "sequential(\
    conv2d(1, 4, kernel = 3, padding = 1), batchnorm2d(4, affine = false), tanh,\
    conv2d(4, 4, kernel = 3, stride = 2, padding = 1), instancenorm2d(4), gelu,\
    groupnorm(2, 4, affine = false), flatten, layernorm([64], affine = false),\
    linear(64, 5),\
    input = [1, 8, 8], init = pytorch(seed = 13))";

/// A grouped, dilated, padded conv1d, then a strided one; LeakyReLU with
/// PyTorch's default slope; 1-D pooling: a padded ceil-mode max pool, an
/// average pool that leaves its padding out of the divisor, adaptive max
/// pooling of 4 to 3 and adaptive average pooling of 3 to 2 (overlapping
/// windows).
const MORE_1D: &str = "sequential(\
    conv1d(2, 4, kernel = 3, padding = 2, dilation = 2, groups = 2), silu,\
    maxpool1d(3, stride = 2, padding = 1, ceil_mode = true),\
    avgpool1d(2, stride = 1, padding = 1, count_include_pad = false),\
    conv1d(4, 3, kernel = 2, stride = 2), leaky_relu,\
    adaptive_maxpool1d(3), adaptive_avgpool1d(2),\
    flatten, linear(6, 3),\
    input = [2, 12], init = pytorch(seed = 12))";

/// Norms over `[C, L]`: an InstanceNorm1d with scale and shift, a
/// BatchNorm1d (running statistics) and one without affine parameters.
const NORMS_1D: &str = "sequential(\
    conv1d(2, 3, kernel = 3), instancenorm1d(3, affine = true), tanh,\
    conv1d(3, 3, kernel = 3, padding = 1), batchnorm1d(3), gelu,\
    instancenorm1d(3), flatten, linear(30, 3),\
    input = [2, 12], init = pytorch(seed = 14))";

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
        affine: true,
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
                    dilation: [1, 1],
                    ceil_mode: false,
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
                    affine: true,
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
                    ceil_mode: false,
                    count_include_pad: true,
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

// ---------------------------------------------------------------- training helpers

use nngeo::engine::device_update::UpdateAt;
use nngeo::engine::train::{train, train_at, TrainData, TrainObserver};
use nngeo::plan::{
    BatchNormStats, LayerFamily, Length, LossKind, LrSchedule, Optimizer, Structure, TrainConfig,
    TrainMode,
};

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

#[path = "../hessian.rs"]
mod hessian;

#[path = "../jacobian.rs"]
mod jacobian;
