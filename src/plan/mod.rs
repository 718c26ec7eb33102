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
pub use layers::{
    adaptive_taps, adaptive_window, conv_len, conv_transpose_len, pool_len, within_limit,
    MAX_NODE_SIZE,
};
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
    /// For each top-level step, the top-level results that no later step
    /// reads, to be dropped once it has run: a sweep's representations do
    /// not pile up one iteration after another. A result is read by the
    /// steps that name it, by a training run whose hooks name it, and by
    /// whatever reads a result built from it (a representation keeps its
    /// model and data: the matrix-free ones recompute from them); a result
    /// nothing reads goes with its own step.
    pub fn freed_after(&self) -> std::collections::HashMap<StepId, Vec<StepId>> {
        let top = |id: StepId| self.step(id).hook.map_or(id, |h| h.train);
        // Index of the last reader of each step (its own index if none).
        let mut last: Vec<u32> = (0..self.steps.len() as u32).collect();
        for s in &self.steps {
            let reader = top(s.id).0;
            for r in s.op.refs() {
                if self.step(r).hook.is_none() {
                    last[r.0 as usize] = last[r.0 as usize].max(reader);
                }
            }
        }
        // Readers of a result read what it was built from (refs are earlier
        // steps, so one pass from the end carries this through chains).
        for s in self.steps.iter().rev().filter(|s| s.hook.is_none()) {
            for r in s.op.refs() {
                if self.step(r).hook.is_none() {
                    last[r.0 as usize] = last[r.0 as usize].max(last[s.id.0 as usize]);
                }
            }
        }
        let mut freed: std::collections::HashMap<StepId, Vec<StepId>> = Default::default();
        for s in self.steps.iter().filter(|s| s.hook.is_none()) {
            freed
                .entry(StepId(last[s.id.0 as usize]))
                .or_default()
                .push(s.id);
        }
        freed
    }

    /// The run's estimated peak memory (resident set): the process itself
    /// ([`cost::Process`]) plus, at the worst step, the results held
    /// before it and what the step needs while it runs.
    pub fn peak_memory(&self) -> u64 {
        self.peak_step().map_or(self.process().base, |(_, b)| b)
    }

    /// The process of the backend that runs the plan.
    pub fn process(&self) -> cost::Process {
        cost::Process::of(&self.experiment.backend)
    }

    /// The top-level step at which the run's memory peaks, and the peak.
    pub fn peak_step(&self) -> Option<(StepId, u64)> {
        self.peak_step_among(|_| true)
    }

    /// The estimated peak memory of a process that runs only the top-level
    /// steps in `runs` (a shard, see [`shard`]).
    pub fn peak_memory_of(&self, runs: &std::collections::BTreeSet<u32>) -> u64 {
        self.peak_step_of(runs)
            .map_or(self.process().base, |(_, b)| b)
    }

    /// [`Plan::peak_step`] of a process that runs only the steps in `runs`.
    pub fn peak_step_of(&self, runs: &std::collections::BTreeSet<u32>) -> Option<(StepId, u64)> {
        self.peak_step_among(|s| runs.contains(&s.id.0))
    }

    /// The estimated peak memory of a process that runs the top-level
    /// steps in `runs`, then one more costing `last` (a part task's part,
    /// see [`parts`]).
    pub fn peak_memory_then(
        &self,
        runs: &std::collections::BTreeSet<u32>,
        last: cost::Cost,
    ) -> u64 {
        let (worst, held) = self.walk(|s| runs.contains(&s.id.0));
        let p = self.process();
        let at = p.base + p.headroom((held - p.base).saturating_add(last.peak.max(last.memory)));
        worst.map_or(at, |(_, w)| w.max(at))
    }

    fn peak_step_among(&self, runs: impl Fn(&Step) -> bool) -> Option<(StepId, u64)> {
        self.walk(runs).0
    }

    /// The worst step among `runs` and the bytes held after them all.
    fn walk(&self, runs: impl Fn(&Step) -> bool) -> (Option<(StepId, u64)>, u64) {
        let freed = self.freed_after();
        let p = self.process();
        let mut held = p.base;
        let mut worst: Option<(StepId, u64)> = None;
        let mut kept = std::collections::HashSet::new();
        for s in self.steps.iter().filter(|s| s.hook.is_none() && runs(s)) {
            let at =
                p.base + p.headroom((held - p.base).saturating_add(s.cost.peak.max(s.cost.memory)));
            if worst.is_none_or(|(_, w)| at > w) {
                worst = Some((s.id, at));
            }
            // A training run's hook results are held while it runs (its
            // `peak` counts them) and freed when it ends, so they are not
            // held by the steps after it.
            held = held.saturating_add(s.cost.memory);
            kept.insert(s.id);
            // What no later step reads is dropped by the executor.
            for id in freed.get(&s.id).into_iter().flatten() {
                if kept.remove(id) {
                    held = held.saturating_sub(self.step(*id).cost.memory);
                }
            }
        }
        (worst, held)
    }
}
