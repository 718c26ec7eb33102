//! The execution plan: a flat, ordered list of steps with ids, dependencies,
//! the source span each came from and an estimate of its memory and cost.
//!
//! Plans are deterministic (same file → byte-identical JSON) and round-trip
//! through JSON unchanged; backends receive these types.

pub mod claim;
mod compile;
pub mod cost;
mod layers;
mod matrix;
mod ops;
pub mod parts;
pub mod shard;
mod table;

pub use compile::compile;
pub use layers::{conv_len, conv_transpose_len};
pub use matrix::MatrixOp;
pub use ops::*;
pub use table::render_table;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped when a plan's meaning changes incompatibly.
pub const PLAN_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format: u32,
    pub experiment: Header,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub seed: u64,
    pub backend: String,
    pub device: String,
    pub dtype: Dtype,
    pub out: String,
    /// Bytes; `None` means the default (half of physical memory).
    pub memory_budget: Option<u64>,
    /// Sweep variables that repeat a run (`replicate seed in 0..5`):
    /// plots and claims average over them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicates: Vec<String>,
}

/// Where in the source a step came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSpan {
    pub start: usize,
    pub end: usize,
    pub line: usize,
    pub col: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: StepId,
    pub deps: Vec<StepId>,
    pub span: SourceSpan,
    /// Values of the sweep variables (`for x in [...]`) this step belongs to.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub sweep: Tags,
    /// Set for steps that run inside a training hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookRef>,
    #[serde(flatten)]
    pub op: Op,
    pub cost: cost::Cost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRef {
    pub train: StepId,
    pub hook: u32,
}

impl Plan {
    /// Optimiser steps per epoch of the training run that step `id` belongs
    /// to (the run itself, or a measurement in one of its hooks).
    pub fn steps_per_epoch(&self, id: StepId) -> Option<u64> {
        let train = self.steps.iter().find(|s| match &s.op {
            Op::Train { hooks, .. } => s.id == id || hooks.iter().any(|h| h.steps.contains(&id)),
            _ => false,
        })?;
        let Op::Train { data, config, .. } = &train.op else {
            return None;
        };
        let n = match &self.steps.get(data.0 as usize)?.op {
            Op::Data { info, .. } | Op::Transform { info, .. } => info.n,
            _ => return None,
        };
        Some(n.div_ceil(config.batch.max(1)) as u64)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plans always serialise")
    }
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("plans always serialise")
    }
    pub fn from_json(text: &str) -> Result<Plan, serde_json::Error> {
        serde_json::from_str(text)
    }
    /// SHA-256 of the JSON form: identifies a plan in run manifests.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.to_json().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
    pub fn step(&self, id: StepId) -> &Step {
        &self.steps[id.0 as usize]
    }
    /// The run's estimated peak memory (resident set): the process itself
    /// ([`cost::BASE_BYTES`]) plus, at the worst step, the results held
    /// before it and what the step needs while it runs.
    pub fn peak_memory(&self) -> u64 {
        self.peak_step().map_or(cost::BASE_BYTES, |(_, b)| b)
    }

    /// The top-level step at which the run's memory peaks, and the peak.
    pub fn peak_step(&self) -> Option<(StepId, u64)> {
        self.peak_step_among(|_| true)
    }

    /// The estimated peak memory of a process that runs only the top-level
    /// steps in `runs` (a shard, see [`shard`]).
    pub fn peak_memory_of(&self, runs: &std::collections::BTreeSet<u32>) -> u64 {
        self.peak_step_of(runs).map_or(cost::BASE_BYTES, |(_, b)| b)
    }

    /// [`Plan::peak_step`] of a process that runs only the steps in `runs`.
    pub fn peak_step_of(&self, runs: &std::collections::BTreeSet<u32>) -> Option<(StepId, u64)> {
        self.peak_step_among(|s| runs.contains(&s.id.0))
    }

    fn peak_step_among(&self, runs: impl Fn(&Step) -> bool) -> Option<(StepId, u64)> {
        let mut held = cost::BASE_BYTES;
        let mut worst: Option<(StepId, u64)> = None;
        for s in self.steps.iter().filter(|s| s.hook.is_none() && runs(s)) {
            let at = cost::BASE_BYTES
                + cost::with_headroom(
                    (held - cost::BASE_BYTES).saturating_add(s.cost.peak.max(s.cost.memory)),
                );
            if worst.is_none_or(|(_, w)| at > w) {
                worst = Some((s.id, at));
            }
            // A training run's hook results are held while it runs (its
            // `peak` counts them) and freed when it ends, so they are not
            // held by the steps after it.
            held = held.saturating_add(s.cost.memory);
        }
        worst
    }
}
