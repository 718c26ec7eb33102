//! What a plan step does. These types are the contract between the front end
//! and every backend: they are serialised into plans, snapshots and plugin
//! messages, so variants are only ever added.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A step's position in [`super::Plan::steps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StepId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F64,
}

impl Dtype {
    pub fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Load or generate a dataset.
    Data {
        name: String,
        source: DataSource,
        info: DataInfo,
    },
    /// Derive a dataset from `input`.
    Transform {
        name: String,
        input: StepId,
        transform: Transform,
        info: DataInfo,
    },
    /// Build a model and initialise (or load) its weights.
    Model { name: String, spec: ModelSpec },
    /// `with_weights(model, v)`: the model with the layers `v` covers set
    /// to `v`'s entries (the others kept): a point along a direction,
    /// an eigenvector's perturbation, a merged network.
    WithWeights {
        name: String,
        model: StepId,
        weights: StepId,
    },
    /// Compute a Fisher or NTK representation of `model` on `data`.
    Repr {
        name: String,
        object: Object,
        structure: Structure,
        model: StepId,
        data: StepId,
        options: ReprOptions,
    },
    /// A parameter-space vector.
    Vector { name: String, vector: VectorOp },
    /// A representation computed from others (`A + B`, `inverse(F + λ)`).
    Matrix {
        name: String,
        matrix: super::MatrixOp,
    },
    /// Compute one measurement and stream it out under `key`.
    Measure {
        key: String,
        measurement: Measurement,
    },
    /// Train `model` on `data`; the steps listed in each hook run at its
    /// schedule, against the live weights of this run.
    Train {
        name: String,
        model: StepId,
        data: StepId,
        config: TrainConfig,
        hooks: Vec<HookSpec>,
    },
    /// Write a model's weights as safetensors with PyTorch `state_dict` names.
    Save { model: StepId, path: String },
    /// Draw measurements matching `pattern` against `x`.
    Plot {
        pattern: String,
        x: String,
        by: Vec<String>,
        flags: Vec<String>,
        file: String,
    },
    /// A claim checked on the results when the report is written.
    Expect {
        text: String,
        claim: super::claim::ClaimExpr,
    },
}

// ---------------------------------------------------------------- data

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSource {
    Digits {
        split: String,
    },
    Diabetes,
    Idx {
        images: String,
        labels: String,
        /// The stated class count (`classes = N`); `None` counts the labels.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classes: Option<usize>,
    },
    Cifar10 {
        batches: Vec<String>,
    },
    Csv {
        path: String,
        target: String,
        features: Option<Vec<String>>,
        header: bool,
        delimiter: Option<char>,
        classification: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classes: Option<usize>,
    },
    Tensors {
        path: String,
        x: String,
        y: String,
        classification: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classes: Option<usize>,
    },
    Blobs {
        n: usize,
        classes: usize,
        dim: usize,
        std: f64,
        seed: u64,
    },
    Teacher {
        n: usize,
        dim: usize,
        out: usize,
        hidden: Vec<usize>,
        noise: f64,
        seed: u64,
    },
    NoisyLinear {
        n: usize,
        dim: usize,
        noise: f64,
        seed: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transform {
    /// The first `n` examples.
    TakeFirst { n: usize },
    /// `n` examples drawn without replacement.
    TakeRandom { n: usize, seed: u64 },
    /// `n` examples of each class.
    TakePerClass { n: usize, seed: u64 },
    /// One part of a seeded random split; `first` is the `fraction` part.
    Split {
        fraction: f64,
        seed: u64,
        first: bool,
    },
    /// Per-feature standardisation (mean 0, std 1), with statistics from
    /// `like` when given (e.g. the training set) or from this dataset.
    /// `per_channel`: one mean and std per channel (the first per-example
    /// dimension), over examples and positions, as image pipelines do.
    Normalize {
        like: Option<StepId>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        per_channel: bool,
    },
    /// `(x − mean[c]) / std[c]` per channel with given statistics
    /// (torchvision's `Normalize(mean, std)`).
    ChannelNormalize { mean: Vec<f64>, std: Vec<f64> },
    /// Multiply every feature by `factor`.
    Scale { factor: f64 },
    /// The examples whose labels `label_noise` flipped (`flipped`), or the
    /// others.
    Only { flipped: bool },
    /// Every example but the `index`-th (0-based): leave-one-out retraining.
    Drop { index: usize },
    /// The same fixed random permutation of every example's features,
    /// drawn from `seed` (the permuted-pixels tasks of continual learning).
    Permute { seed: u64 },
    /// Replace a `fraction` of the labels by a different random class; the
    /// flipped examples form the group `flipped`, the others `clean`.
    LabelNoise { fraction: f64, seed: u64 },
    /// Targets as one-hot vectors (for MSE on classes).
    OneHot,
    /// The inputs become the targets (a regression dataset): autoencoders.
    Autoencode,
}

/// What the checker needs to know about a dataset without loading it all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataInfo {
    /// Number of examples.
    pub n: usize,
    /// Per-example feature shape, e.g. `[1, 8, 8]` or `[10]`.
    pub shape: Vec<usize>,
    /// `Some(C)` for classification (labels `0..C-1`), `None` for regression.
    pub classes: Option<usize>,
    /// 1 for class labels or scalar regression targets; `k` for `k`-column targets.
    pub target_dim: usize,
}

// ---------------------------------------------------------------- models

/// A model as a directed acyclic graph of named layers.
///
/// `layers` is in execution (topological) order and the last layer's output
/// is the model's output. A chain leaves every `from` empty. Names are
/// PyTorch module paths (`layer2.0.downsample.0`), so a `state_dict` loads
/// unchanged; a parameter-free module applied twice (a block's `relu`) is
/// two layers of the same name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Per-example input shape; inputs are reshaped to it (row-major).
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub layers: Vec<LayerSpec>,
    /// Total number of parameters.
    pub params: u64,
    pub init: Init,
    /// safetensors file with PyTorch `state_dict` names to load.
    pub weights: Option<String>,
    /// Indices into `layers` of the parameterised layers in parameter
    /// order (PyTorch's `named_modules()` order, which NNGeometry's flat
    /// vectors follow), when that differs from execution order. Empty:
    /// execution order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub param_order: Vec<usize>,
}

impl ModelSpec {
    pub fn outputs(&self) -> usize {
        self.output.iter().product()
    }
    /// The parameterised layer of this name (parameter-free names may
    /// repeat; the first is returned).
    pub fn layer(&self, name: &str) -> Option<&LayerSpec> {
        self.layers.iter().find(|l| l.name == name)
    }
    /// Indices of the layers that own parameters, in parameter order.
    pub fn param_indices(&self) -> Vec<usize> {
        if self.param_order.is_empty() {
            (0..self.layers.len())
                .filter(|&i| self.layers[i].params > 0)
                .collect()
        } else {
            self.param_order.clone()
        }
    }
    /// Layers that own parameters, in parameter order.
    pub fn param_layers(&self) -> impl Iterator<Item = &LayerSpec> {
        self.param_indices().into_iter().map(|i| &self.layers[i])
    }
    /// Layers that carry `state_dict` tensors (parameters or buffers), in
    /// `state_dict` order.
    pub fn stateful_layers(&self) -> impl Iterator<Item = &LayerSpec> {
        self.param_layers()
    }
    /// The graph nodes layer `i` reads: `0` is the model input, `k` the
    /// output of `layers[k − 1]`.
    pub fn sources(&self, i: usize) -> Vec<usize> {
        let f = &self.layers[i].from;
        if f.is_empty() {
            vec![i]
        } else {
            f.clone()
        }
    }
    /// Whether any layer reads something other than its predecessor.
    pub fn is_graph(&self) -> bool {
        self.layers
            .iter()
            .enumerate()
            .any(|(i, l)| !l.from.is_empty() && l.from != [i])
    }
    /// The shape of graph node `node` (see [`Self::sources`]).
    pub fn node_shape(&self, node: usize) -> &[usize] {
        if node == 0 {
            &self.input
        } else {
            &self.layers[node - 1].output
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// The PyTorch module path (`layers.{i}` in an `nn.Sequential`).
    pub name: String,
    pub layer: Layer,
    /// Shape of the (first) input, per example.
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub params: u64,
    /// Graph models: the nodes this layer reads (`0` the model input, `k`
    /// the output of layer `k − 1`); empty reads the previous layer's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Layer {
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
    },
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        bias: bool,
        #[serde(default = "ones2", skip_serializing_if = "is_ones2")]
        dilation: [usize; 2],
        /// Weight `[out, in/groups, kh, kw]`.
        #[serde(default = "one", skip_serializing_if = "is_one")]
        groups: usize,
    },
    /// PyTorch's `ConvTranspose2d`: weight `[in, out/groups, kh, kw]`,
    /// output `(H−1)·stride − 2·padding + dilation·(k−1) + output_padding + 1`.
    ConvTranspose2d {
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        #[serde(default, skip_serializing_if = "is_zero2")]
        output_padding: [usize; 2],
        #[serde(default = "ones2", skip_serializing_if = "is_ones2")]
        dilation: [usize; 2],
        #[serde(default = "one", skip_serializing_if = "is_one")]
        groups: usize,
        bias: bool,
    },
    /// PyTorch's `Embedding`: weight `[num_embeddings, dim]`; reads the
    /// model input, whose values are integer token ids.
    Embedding {
        num_embeddings: usize,
        dim: usize,
    },
    Conv1d {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    },
    Relu,
    Tanh,
    Sigmoid,
    Gelu,
    Flatten,
    /// Max pooling; padded positions never win (PyTorch pads with −∞).
    MaxPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        #[serde(default, skip_serializing_if = "is_zero2")]
        padding: [usize; 2],
    },
    /// Average pooling; padded zeros count (PyTorch's `count_include_pad`).
    AvgPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        #[serde(default, skip_serializing_if = "is_zero2")]
        padding: [usize; 2],
    },
    /// Evaluation mode (running statistics) for curvature.
    BatchNorm1d {
        features: usize,
        eps: f64,
    },
    BatchNorm2d {
        channels: usize,
        eps: f64,
    },
    LayerNorm {
        shape: Vec<usize>,
        eps: f64,
    },
    /// Per-channel affine over `groups` normalised channel groups.
    GroupNorm {
        groups: usize,
        channels: usize,
        eps: f64,
    },
    /// Average over windows `[floor(i·H/oh), ceil((i+1)·H/oh))`, as
    /// PyTorch's `AdaptiveAvgPool2d` (global average pooling at 1×1).
    AdaptiveAvgPool2d {
        output: [usize; 2],
    },
    /// Zeroes each value with probability `p` and scales the rest by
    /// 1/(1−p) in training (seeded per step); the identity in evaluation,
    /// so every measurement sees the deterministic network.
    Dropout {
        p: f64,
    },
    /// Elementwise sum of its inputs (a skip connection).
    Add,
    /// Concatenation of its inputs along the channel (first per-example)
    /// dimension.
    Concat,
}

fn one() -> usize {
    1
}
fn is_one(g: &usize) -> bool {
    *g == 1
}
fn ones2() -> [usize; 2] {
    [1, 1]
}
fn is_ones2(d: &[usize; 2]) -> bool {
    *d == [1, 1]
}
fn is_zero2(d: &[usize; 2]) -> bool {
    *d == [0, 0]
}

impl Layer {
    pub fn type_name(&self) -> &'static str {
        match self {
            Layer::Linear { .. } => "Linear",
            Layer::Conv2d { .. } => "Conv2d",
            Layer::Conv1d { .. } => "Conv1d",
            Layer::ConvTranspose2d { .. } => "ConvTranspose2d",
            Layer::Embedding { .. } => "Embedding",
            Layer::Relu => "ReLU",
            Layer::Tanh => "Tanh",
            Layer::Sigmoid => "Sigmoid",
            Layer::Gelu => "GELU",
            Layer::Flatten => "Flatten",
            Layer::MaxPool2d { .. } => "MaxPool2d",
            Layer::AvgPool2d { .. } => "AvgPool2d",
            Layer::BatchNorm1d { .. } => "BatchNorm1d",
            Layer::BatchNorm2d { .. } => "BatchNorm2d",
            Layer::LayerNorm { .. } => "LayerNorm",
            Layer::GroupNorm { .. } => "GroupNorm",
            Layer::AdaptiveAvgPool2d { .. } => "AdaptiveAvgPool2d",
            Layer::Dropout { .. } => "Dropout",
            Layer::Add => "Add",
            Layer::Concat => "Concat",
        }
    }
    /// Which group of a per-layer-type `mix(...)` this layer falls in.
    pub fn family(&self) -> Option<LayerFamily> {
        match self {
            Layer::Linear { .. } => Some(LayerFamily::Linear),
            Layer::Conv2d { .. } | Layer::Conv1d { .. } | Layer::ConvTranspose2d { .. } => {
                Some(LayerFamily::Conv)
            }
            Layer::Embedding { .. } => Some(LayerFamily::Embedding),
            Layer::BatchNorm1d { .. }
            | Layer::BatchNorm2d { .. }
            | Layer::LayerNorm { .. }
            | Layer::GroupNorm { .. } => Some(LayerFamily::Norm),
            _ => None,
        }
    }

    /// Why KFAC, EKFAC and QuasiDiag (Kronecker-factored structures) cannot
    /// represent this layer's block, if they cannot. As NNGeometry: Linear,
    /// Conv1d/2d without groups and ConvTranspose2d have factors.
    pub fn kron_refusal(&self) -> Option<&'static str> {
        match self {
            Layer::Conv2d { groups, .. } | Layer::ConvTranspose2d { groups, .. } if *groups > 1 => {
                Some("has no Kronecker factors for grouped convolutions (NNGeometry has none either)")
            }
            Layer::Embedding { .. } => Some("has no Kronecker factors for embeddings"),
            l if l.family() == Some(LayerFamily::Norm) => {
                Some("has no Kronecker factors for normalisation layers")
            }
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case")]
pub enum Init {
    /// PyTorch's default initialisation of each layer type.
    Pytorch {
        seed: u64,
    },
    Kaiming {
        seed: u64,
    },
    Xavier {
        seed: u64,
    },
    Normal {
        std: f64,
        seed: u64,
    },
}

// ---------------------------------------------------------------- geometry

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Object {
    Fim,
    Ntk,
    /// The Hessian of the mean loss (or one of its parts).
    Hessian,
}

impl Object {
    /// Whether its matrices act on parameter-space vectors (a Fisher or a
    /// Hessian), not on the examples' outputs (an NTK).
    pub fn param_space(self) -> bool {
        !matches!(self, Object::Ntk)
    }
}

/// Which part of the loss Hessian `Jᵀ H_ℓ J + Σ_c (∂ℓ/∂f_c) ∇²f_c`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HessianPart {
    #[default]
    Full,
    /// `Jᵀ H_ℓ J`: the true Fisher for the cross-entropy.
    GaussNewton,
    /// The network's own curvature weighted by the loss gradient.
    Residual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerFamily {
    Linear,
    Conv,
    Norm,
    Embedding,
}

impl LayerFamily {
    /// Its key in `mix(...)`.
    pub fn key(self) -> &'static str {
        match self {
            LayerFamily::Linear => "linear",
            LayerFamily::Conv => "conv",
            LayerFamily::Norm => "norm",
            LayerFamily::Embedding => "embedding",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Structure {
    Dense,
    BlockDiag,
    Diag,
    #[serde(rename = "KFAC")]
    Kfac,
    /// `refit`: the diagonal is refitted on data (true EKFAC); without it the
    /// eigenvalues are products of KFAC's and EKFAC equals KFAC.
    /// `initial_basis`: the eigenbases come from the model at its
    /// initialisation (a stale basis), the diagonal is refitted now.
    #[serde(rename = "EKFAC")]
    Ekfac {
        refit: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        initial_basis: bool,
    },
    /// `rank`: keep the top-k directions; `None` keeps the full factor.
    LowRank {
        rank: Option<usize>,
    },
    QuasiDiag,
    Implicit,
    /// A structure per layer family, with per-layer exceptions.
    Mix {
        families: BTreeMap<LayerFamily, Structure>,
        /// Exact layer names (patterns are expanded by the checker) whose
        /// structure overrides their family's.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        layers: BTreeMap<String, Structure>,
    },
}

impl Structure {
    /// The structure that layer `name` of `family` gets: a mix's choice for
    /// it (its own entry, else its family's), or `self` for a whole-model
    /// structure. `None` where a mix says nothing about the layer.
    pub fn for_layer(&self, name: &str, family: Option<LayerFamily>) -> Option<&Structure> {
        match self {
            Structure::Mix { families, layers } => layers
                .get(name)
                .or_else(|| family.and_then(|f| families.get(&f))),
            s => Some(s),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Structure::Dense => "Dense".into(),
            Structure::BlockDiag => "BlockDiag".into(),
            Structure::Diag => "Diag".into(),
            Structure::Kfac => "KFAC".into(),
            Structure::Ekfac { .. } => "EKFAC".into(),
            Structure::LowRank { .. } => "LowRank".into(),
            Structure::QuasiDiag => "QuasiDiag".into(),
            Structure::Implicit => "Implicit".into(),
            Structure::Mix { .. } => "mix".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FisherVariant {
    /// Exact expectation under the model's output distribution.
    True,
    /// Monte-Carlo estimate with `samples` draws per example.
    Mc { samples: usize, seed: u64 },
    /// Uses the dataset's labels.
    Empirical,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    Classification,
    /// Binary classification with one logit (Bernoulli output).
    Binary,
    /// Gaussian output with variance `sigma2`.
    Regression {
        sigma2: f64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReprOptions {
    /// Fisher only.
    pub fisher: Option<FisherVariant>,
    pub task: Task,
    /// Layers included; all parameterised layers when empty.
    pub layers: Vec<String>,
    /// Centre per-example Jacobians over examples (NTK) / gradients (FIM).
    pub centered: bool,
    /// Number of examples the representation is computed on.
    pub examples: usize,
    /// Number of model outputs.
    pub outputs: usize,
    /// `sharded(k)`: computed over `k` contiguous example ranges whose
    /// partial sums are reduced exactly (see [`super::parts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// Set only by a part task (`nngeo exec --part`): compute this part of
    /// one stage, write it to the run folder, and nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<super::parts::PartRequest>,
    /// Read from a file written by `save F to "...safetensors"` instead
    /// of computed (`fim("f.safetensors", model = net)`; the step's `data`
    /// is then the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Hessian only: which part. Its loss is the task's (cross-entropy
    /// for classes, PyTorch's MSE for regression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hessian: Option<HessianPart>,
}

/// A representation, whole or one layer's block of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operand {
    pub repr: StepId,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub layer: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VectorOp {
    /// The eigenvector of a Fisher with the `rank`-th largest eigenvalue
    /// (1 = the top one), unit norm, its largest entry positive.
    Eigenvector {
        m: Operand,
        rank: usize,
    },
    /// Gradient of the mean training loss.
    Grad {
        model: StepId,
        data: StepId,
        /// `grad(net, data sharded(k))`: summed over `k` contiguous
        /// example ranges, reduced exactly (see [`super::parts`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shards: Option<usize>,
        /// Set only by a part task (`nngeo exec --part`): compute this
        /// part, write it to the run folder, and nothing else.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        part: Option<super::parts::PartRequest>,
    },
    /// Standard normal entries.
    Random {
        model: StepId,
        seed: u64,
    },
    /// Current weights.
    Weights {
        model: StepId,
    },
    /// Weights at initialisation (before any training).
    InitialWeights {
        model: StepId,
    },
    Add {
        a: StepId,
        b: StepId,
    },
    Sub {
        a: StepId,
        b: StepId,
    },
    Scale {
        factor: f64,
        v: StepId,
    },
    /// A vector-valued measurement (`mv`, `solve`, `diag` of a Fisher)
    /// kept as a vector: laid out on the representation's layers.
    Measured {
        measurement: Measurement,
    },
    /// One layer's part of `v` (`v[layer]`).
    Part {
        v: StepId,
        layer: String,
    },
    /// `J v`: the outputs' directional derivative on every example, a
    /// function-space vector `[n, C]` (NNGeometry's `FVector`); `v` may
    /// cover some layers only (the others count as zero).
    Jvp {
        model: StepId,
        data: StepId,
        v: StepId,
    },
    /// `Jᵀ u` for a function-space vector `u [n, C]`: a vector over every
    /// parameter of the model.
    Vjp {
        model: StepId,
        data: StepId,
        u: StepId,
    },
    /// Elementwise `a * b`.
    Mul {
        a: StepId,
        b: StepId,
    },
    /// Elementwise `a / b`.
    Div {
        a: StepId,
        b: StepId,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Measurement {
    Trace {
        m: Operand,
    },
    Frobenius {
        m: Operand,
    },
    SpectralNorm {
        m: Operand,
    },
    Diagonal {
        m: Operand,
    },
    Mv {
        m: Operand,
        v: StepId,
    },
    #[serde(rename = "vTMv")]
    VTMv {
        m: Operand,
        v: StepId,
    },
    Solve {
        m: Operand,
        v: StepId,
        damping: f64,
    },
    Eigenvalues {
        m: Operand,
        top: usize,
    },
    /// The eigenvectors of the `top` largest eigenvalues of a Fisher, as
    /// the rows of a `[top, P]` tensor (those of `eigenvector(M, k)`).
    Eigenvectors {
        m: Operand,
        top: usize,
    },
    EffectiveRank {
        m: Operand,
    },
    /// Kernel–target alignment with the targets of `targets` (one-hot for
    /// classes); `centered` centres over examples.
    Alignment {
        m: Operand,
        targets: StepId,
        centered: bool,
        /// Align the `[n, n]` trace kernel `Σ_c K_cc` with `Y Yᵀ` instead
        /// of the full `[C·n, C·n]` kernel with `y yᵀ`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        trace: bool,
    },
    /// ‖a − b‖_F / ‖b‖_F
    RelError {
        a: Operand,
        b: Operand,
    },
    /// Bytes the representation holds.
    Memory {
        m: Operand,
    },
    Loss {
        model: StepId,
        data: StepId,
    },
    Accuracy {
        model: StepId,
        data: StepId,
    },
    Norm {
        v: StepId,
    },
    Dot {
        a: StepId,
        b: StepId,
    },
    /// The influence of each example of `data` on the mean loss of
    /// `model` on `test`: `−∇L_testᵀ (M + λ)⁻¹ ∇ℓᵢ` (Koh and Liang's
    /// `I_up,loss`, preconditioned by `M`), for every example, one
    /// (`example`), or their mean (`mean`).
    Influence {
        m: Operand,
        model: StepId,
        data: StepId,
        test: StepId,
        damping: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        example: Option<usize>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        mean: bool,
    },
    /// A vector's entries, streamed as they are (`measure u`).
    Vector {
        v: StepId,
    },
}

// ---------------------------------------------------------------- training

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub loss: LossKind,
    /// Terms added to the data loss (`loss = cross_entropy + 50 *
    /// vTMv(F_A, weights(net) - w_A)`), as elastic weight consolidation does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub penalties: Vec<Penalty>,
    pub optimizer: Optimizer,
    pub length: Length,
    pub batch: usize,
    pub schedule: LrSchedule,
    pub mode: TrainMode,
    /// Seed of the mini-batch shuffling.
    pub seed: u64,
    /// Held-out data evaluated at every epoch.
    pub eval: Option<StepId>,
    pub track: Option<Tracking>,
    /// Optimiser steps this run takes.
    pub total_steps: u64,
    /// Training-time augmentation of each mini-batch (images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
}

/// Random crop after zero padding and random horizontal flip, drawn anew
/// for every example of every mini-batch from `seed` and the step (the
/// standard CIFAR augmentation). Measurements never see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Zero padding on each side before a crop of the original size; 0 = no crop.
    pub padding: usize,
    /// Flip left–right with probability ½.
    pub flip: bool,
    pub seed: u64,
}

/// `coef · (w − anchor)ᵀ M (w − anchor)` on the weights `w` being trained,
/// restricted to the layers `M` covers (`M` = identity: `l2`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Penalty {
    pub coef: f64,
    /// A stored Fisher (or a matrix computed from one); `None`: the
    /// squared Euclidean norm over every parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<Operand>,
    /// A parameter-space vector step; `None`: the origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<StepId>,
}

impl Penalty {
    /// Steps the term reads.
    pub fn refs(&self) -> impl Iterator<Item = StepId> + '_ {
        self.m.iter().map(|m| m.repr).chain(self.anchor)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    CrossEntropy,
    Mse,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Optimizer {
    Sgd {
        lr: f64,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    },
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
    /// Natural gradient preconditioned by `fim`; factors and eigenbases are
    /// recomputed every `refresh` steps, EKFAC's diagonal every `refit`.
    Ngd {
        fim: Structure,
        fisher: FisherVariant,
        lr: f64,
        damping: f64,
        refresh: u64,
        refit: Option<u64>,
        momentum: f64,
        /// Running averages: `new = decay · old + (1 − decay) · batch`.
        #[serde(default = "ngd_decay")]
        decay: f64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Length {
    Epochs(u64),
    Steps(u64),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        every: u64,
        gamma: f64,
    },
    Cosine,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrainMode {
    Plain,
    /// `α (f(w) − f(w₀))` (`α f(w)` when not centred), loss divided by α².
    Scaled {
        alpha: f64,
        #[serde(default = "yes")]
        center: bool,
    },
    /// `f(w₀) + J(w₀)(w − w₀)`, or `J(w₀)(w − w₀)` when centred (the
    /// α → ∞ limit of the centred scaled model).
    Linearized {
        #[serde(default)]
        center: bool,
    },
}

fn ngd_decay() -> f64 {
    0.95
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tracking {
    /// Record every example's loss and correctness every `every` steps.
    pub every: u64,
    pub groups: Vec<Group>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Group {
    All,
    Flipped,
    Clean,
    PerClass,
    /// Quantile bins of example difficulty.
    Difficulty {
        bins: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HookSpec {
    pub schedule: HookSchedule,
    /// How many times the hook fires in this run.
    pub fires: u64,
    pub steps: Vec<StepId>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HookSchedule {
    EverySteps {
        n: u64,
    },
    EveryEpochs {
        n: u64,
    },
    /// Steps ⌊start·factor^k⌋ (deduplicated), plus step 0.
    LogSteps {
        start: u64,
        factor: f64,
    },
    Steps {
        at: Vec<u64>,
    },
    Start,
    End,
}

impl HookSchedule {
    /// The optimiser steps at which this hook fires in a run of
    /// `total` steps with `per_epoch` steps per epoch.
    pub fn firing_steps(&self, total: u64, per_epoch: u64) -> Vec<u64> {
        let mut out: Vec<u64> = match self {
            HookSchedule::EverySteps { n } => (0..=total).step_by((*n).max(1) as usize).collect(),
            HookSchedule::EveryEpochs { n } => (0..=total)
                .step_by((n.max(&1) * per_epoch.max(1)) as usize)
                .collect(),
            HookSchedule::LogSteps { start, factor } => {
                let mut v = vec![0];
                let mut x = *start as f64;
                while x <= total as f64 && v.len() < 100_000 {
                    v.push(x.floor() as u64);
                    x *= factor.max(1.0 + 1e-9);
                }
                v
            }
            HookSchedule::Steps { at } => at.iter().copied().filter(|s| *s <= total).collect(),
            HookSchedule::Start => vec![0],
            HookSchedule::End => vec![total],
        };
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The representation structure and scalar tags of a step, kept as plain
/// strings so results can be grouped by them (`by noise`).
pub type Tags = BTreeMap<String, String>;
