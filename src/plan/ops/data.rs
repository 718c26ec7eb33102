//! Datasets: where they come from, the transforms between, and what is
//! known of them before they are read.

use super::*;

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
