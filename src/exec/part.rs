//! A part task (`nngeo exec PLAN --part STEP[:STAGE]/J/K --out RUN`): runs
//! what the sharded step depends on (without writing any result), then
//! computes part `J` of stage `STAGE` of the step, which the engine writes
//! to `RUN/parts/STEP/` (see [`crate::plan::parts`]).

use crate::backend::{Backend, BackendError, RunContext};
use crate::plan::parts::{self, PartRequest, PartSpec};
use crate::plan::{shard, Plan};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The scratch folder a part task's steps may write into (a training
/// run's per-example files), removed when the part is written.
pub fn scratch_dir(run: &Path, spec: &PartSpec) -> PathBuf {
    parts::step_dir(run, spec.step).join(format!(".task-{}-{}", spec.stage, spec.index))
}

/// Runs part `spec` of `plan` into the run folder `run`.
pub fn run_part(
    plan: &Plan,
    backend: &mut dyn Backend,
    base_dir: &Path,
    run: &Path,
    spec: &PartSpec,
) -> Result<(), BackendError> {
    let step = plan.step(spec.step);
    let deps: BTreeSet<u32> = step.deps.iter().map(|d| d.0).collect();
    let needed = shard::needed(plan, &deps);
    let scratch = scratch_dir(run, spec);
    let ctx = RunContext {
        base_dir: base_dir.to_path_buf(),
        out_dir: scratch.clone(),
    };
    backend.prepare(plan, &ctx)?;
    for s in plan
        .steps
        .iter()
        .filter(|s| s.hook.is_none() && needed.contains(&s.id.0))
    {
        backend.run(plan, s, &mut |_| {})?;
    }
    let task = parts::with_request(
        step,
        PartRequest {
            stage: spec.stage,
            index: spec.index,
        },
    );
    backend.run(plan, &task, &mut |_| {})?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
