//! Training runs: loss, optimiser, schedule, mode, penalties, tracking and
//! the hooks that measure during training.

use super::*;

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
        /// Which statistics BatchNorm layers normalise with in the Fisher.
        #[serde(default, skip_serializing_if = "BatchNormStats::is_running")]
        batchnorm: BatchNormStats,
    },
}

/// The statistics a natural gradient's Fisher normalises BatchNorm layers
/// with. Every measurement takes the running averages (evaluation mode, as
/// NNGeometry does); a training step normalises with its mini-batch's own,
/// and early in training the two differ widely, so a preconditioner built
/// in evaluation mode fits a different function than the one trained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchNormStats {
    /// The running averages (evaluation mode).
    #[default]
    Running,
    /// The mini-batch's mean and biased variance, as the training step
    /// normalised it, held fixed (no gradient through the statistics).
    Batch,
}

impl BatchNormStats {
    fn is_running(&self) -> bool {
        *self == BatchNormStats::Running
    }
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
    /// How many times this hook fires, without listing a regular
    /// schedule's steps (a run of 10¹² steps checks in no memory).
    pub fn fire_count(&self, total: u64, per_epoch: u64) -> u64 {
        let every = |k: u64| total / k.max(1) + 1;
        match self {
            HookSchedule::EverySteps { n } => every(*n),
            HookSchedule::EveryEpochs { n } => every(n.saturating_mul(per_epoch.max(1))),
            _ => self.firing_steps(total, per_epoch).len() as u64,
        }
    }

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
