//! Splitting a plan into shards that run as separate processes (a Slurm
//! job array, a shell loop, any batch launcher) and merge into exactly the
//! results of one process.
//!
//! A *unit* is what one process can compute alone: the top-level steps
//! that write results (`measure`, `train`, `save`) of one sweep point,
//! that is one combination of the sweep and replicate variables' values.
//! Result-writing steps outside every sweep form one more unit, the shared
//! one. Plots and claims are not owned by any unit: they are drawn and
//! evaluated when the shards are merged (`nngeo report`).
//!
//! A shard owns whole units (`--shard i/N` takes the i-th of N contiguous,
//! balanced groups of units) and runs its owned steps together with the
//! steps they depend on. A dependency owned by another unit (a training
//! run outside the sweep whose model each sweep point measures) is
//! recomputed in each shard that needs it, without writing its results
//! again: every plan step is deterministic given its seeds, so the shard
//! sees the same model as one process would. This costs the step's FLOPs
//! once per shard that needs it, which `nngeo plan --on slurm` shows;
//! the alternative, a first job whose outputs the array loads, would need
//! every intermediate (models, representations) to be written to disk.

use super::{Op, Plan, Step, StepId, Tags};
use std::collections::BTreeSet;

/// A group of result-writing steps that run together.
#[derive(Clone, Debug, PartialEq)]
pub struct Unit {
    /// The sweep values shared by the unit's steps (empty: the shared unit).
    pub tags: Tags,
    /// Top-level steps owned by the unit, in plan order.
    pub steps: Vec<StepId>,
}

impl Unit {
    /// `noise = 0.1, s = 2`, or `shared` for the steps outside every sweep.
    pub fn label(&self) -> String {
        if self.tags.is_empty() {
            return "shared".into();
        }
        self.tags
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One shard: the units it owns and what it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
    pub units: Vec<Unit>,
    /// Top-level steps whose results this shard writes.
    pub owned: BTreeSet<u32>,
    /// Top-level steps it runs (owned ones and their dependencies).
    pub runs: BTreeSet<u32>,
    /// Result-writing steps owned elsewhere that this shard recomputes.
    pub recomputed: Vec<StepId>,
    /// FLOPs of everything the shard runs.
    pub flops: u64,
    /// Estimated peak memory of the shard's process.
    pub peak_memory: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShardError {
    #[error("`--shard {given}`: expected I/N with 0 <= I < N, e.g. `--shard 0/4`")]
    Syntax { given: String },
    #[error("`--shard {index}/{count}`: the plan has {units} independent part(s) ({list}), so at most {units} shard(s)")]
    TooMany {
        index: usize,
        count: usize,
        units: usize,
        list: String,
    },
    #[error("the plan writes no results, so there is nothing to shard")]
    Nothing,
}

/// Parses `I/N`.
pub fn parse_spec(s: &str) -> Result<(usize, usize), ShardError> {
    let err = || ShardError::Syntax { given: s.into() };
    let (i, n) = s.split_once('/').ok_or_else(err)?;
    let i: usize = i.trim().parse().map_err(|_| err())?;
    let n: usize = n.trim().parse().map_err(|_| err())?;
    if n == 0 || i >= n {
        return Err(err());
    }
    Ok((i, n))
}

/// Whether a top-level step writes results into the run folder and so
/// belongs to exactly one unit.
pub fn owns_results(step: &Step) -> bool {
    step.hook.is_none()
        && matches!(
            step.op,
            Op::Measure { .. } | Op::Train { .. } | Op::Save { .. }
        )
}

/// The plan's units: the shared one first (when there is one), then one per
/// sweep point in the order their first step appears.
pub fn units(plan: &Plan) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    for s in plan.steps.iter().filter(|s| owns_results(s)) {
        match units.iter_mut().find(|u| u.tags == s.sweep) {
            Some(u) => u.steps.push(s.id),
            None => units.push(Unit {
                tags: s.sweep.clone(),
                steps: vec![s.id],
            }),
        }
    }
    units.sort_by_key(|u| !u.tags.is_empty());
    units
}

/// The units of shard `index` of `count`: contiguous groups whose sizes
/// differ by at most one.
fn group(n_units: usize, index: usize, count: usize) -> std::ops::Range<usize> {
    (index * n_units / count)..((index + 1) * n_units / count)
}

/// Shard `index` of `count` (see the module documentation).
pub fn shard(plan: &Plan, index: usize, count: usize) -> Result<Shard, ShardError> {
    let all = units(plan);
    if all.is_empty() {
        return Err(ShardError::Nothing);
    }
    if count > all.len() || index >= count {
        let mut list: Vec<String> = all.iter().take(4).map(Unit::label).collect();
        if all.len() > 4 {
            list.push("…".into());
        }
        return Err(ShardError::TooMany {
            index,
            count,
            units: all.len(),
            list: list.join("; "),
        });
    }
    let units = all[group(all.len(), index, count)].to_vec();
    let owned: BTreeSet<u32> = units.iter().flat_map(|u| &u.steps).map(|s| s.0).collect();
    let runs = needed(plan, &owned);
    let recomputed = runs
        .iter()
        .map(|&i| plan.step(StepId(i)))
        .filter(|s| owns_results(s) && !owned.contains(&s.id.0))
        .map(|s| s.id)
        .collect();
    let flops = runs
        .iter()
        .map(|&i| plan.step(StepId(i)).cost.flops)
        .fold(0u64, u64::saturating_add);
    Ok(Shard {
        index,
        count,
        units,
        peak_memory: plan.peak_memory_of(&runs),
        owned,
        runs,
        recomputed,
        flops,
    })
}

/// Every shard when the plan is split into its natural number of shards
/// (one per unit), or into `count`.
pub fn all(plan: &Plan, count: Option<usize>) -> Result<Vec<Shard>, ShardError> {
    let n = count.unwrap_or_else(|| units(plan).len());
    if n == 0 {
        return Err(ShardError::Nothing);
    }
    (0..n).map(|i| shard(plan, i, n)).collect()
}

/// The top-level steps to run for `owned`: those, and transitively what
/// they and their hooks depend on.
pub fn needed(plan: &Plan, owned: &BTreeSet<u32>) -> BTreeSet<u32> {
    let mut need = BTreeSet::new();
    let mut stack: Vec<StepId> = owned.iter().map(|&i| StepId(i)).collect();
    while let Some(id) = stack.pop() {
        let step = plan.step(id);
        // A hook step runs inside its training run.
        let id = step.hook.map_or(id, |h| h.train);
        if !need.insert(id.0) {
            continue;
        }
        stack.extend(plan.step(id).deps.iter().copied());
        for s in &plan.steps {
            if s.hook.is_some_and(|h| h.train == id) {
                stack.extend(s.deps.iter().copied());
            }
        }
    }
    need
}

/// The top-level step a result line's `step_id` belongs to (a hook step's
/// training run), if the plan has that step.
pub fn top_level(plan: &Plan, step_id: u64) -> Option<u32> {
    let step = plan.steps.get(usize::try_from(step_id).ok()?)?;
    Some(step.hook.map_or(step.id, |h| h.train).0)
}
