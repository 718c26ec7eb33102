//! Walks a plan and streams results into a run folder.
//!
//! Nothing in the folder is touched until the first step that writes
//! results is about to run: a run that fails before (backend, device,
//! data, weights) leaves an earlier run's folder exactly as it was. From
//! then on every measurement is appended to `results.jsonl` the moment it
//! is computed (whole lines only, see [`jsonl`]), the manifest says
//! `running` and lists each finished top-level step, and the run holds an
//! exclusive lock on the folder ([`run_dir`]). At the end the manifest
//! says `ok` or `failed: ...`, and `results.csv`, the plots and
//! `summary.md` are rebuilt from `results.jsonl`, whether the run
//! succeeded or not.
//!
//! Resuming (`Mode::Resume`) runs the top-level steps the manifest does
//! not list as finished, plus the earlier ones they need (data, models,
//! representations, a training run whose trained model a later step
//! uses), whose results are not written again. An interrupted training
//! run is redone from its start.

pub mod interrupt;
pub mod jsonl;
pub mod limit;
pub mod part;
mod progress;
pub mod run_dir;
mod session;

pub use run_dir::{Mode, RunDirError};

use crate::backend::{Backend, BackendError, Emitted, RunContext, StepOutput};
use crate::plan::{Op, Plan, Step};
use crate::report::{self, ShardRef, StepTiming};
use serde_json::json;
use session::{Pending, Session};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Failed before the run took its folder: nothing in it was changed.
    #[error("{0}")]
    BeforeStart(BackendError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Folder(#[from] RunDirError),
    /// SIGINT or SIGTERM: the run stopped between two steps.
    #[error("interrupted by {signal} before step #{before}")]
    Interrupted {
        signal: &'static str,
        before: u32,
        /// Whether the run had taken its folder (results may be there).
        folder_taken: bool,
    },
    #[error("cannot write results in `{path}`: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl ExecError {
    /// A refusal to use the folder (held by another run, holds an earlier
    /// run, resumed with another plan): the user's to fix, exit status 2.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ExecError::Folder(e) if e.is_refusal())
    }

    /// The plan step that failed, where the backend names one.
    pub fn failed_step(&self) -> Option<u32> {
        match self {
            ExecError::BeforeStart(BackendError::Failed { step, .. })
            | ExecError::Backend(BackendError::Failed { step, .. }) => Some(*step),
            _ => None,
        }
    }

    /// Whether the run failed while taking its folder, before any result
    /// was written (a folder write after that is an [`ExecError::Io`]).
    pub fn before_any_step(&self) -> bool {
        matches!(self, ExecError::Folder(_)) || self.left_folder_untouched()
    }

    /// Whether the output folder was left exactly as it was.
    pub fn left_folder_untouched(&self) -> bool {
        matches!(
            self,
            ExecError::BeforeStart(_)
                | ExecError::Interrupted {
                    folder_taken: false,
                    ..
                }
        ) || self.is_refusal()
    }
}

/// What a finished run left behind.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// `results.csv` and the plots.
    pub files: Vec<PathBuf>,
    pub warnings: Vec<String>,
    /// The experiment's declared claims, evaluated on its results.
    pub claims: Vec<report::claims::ClaimOutcome>,
}

fn step_name(step: &Step) -> (String, String) {
    let (op, name) = match &step.op {
        Op::Data { name, .. } => ("data", name.clone()),
        Op::Transform { name, .. } => ("transform", name.clone()),
        Op::Model { name, .. } | Op::WithWeights { name, .. } => ("model", name.clone()),
        Op::Repr {
            name, structure, ..
        } => ("repr", format!("{name} ({})", structure.name())),
        Op::Vector { name, .. } => ("vector", name.clone()),
        Op::Matrix { name, .. } => ("matrix", name.clone()),
        Op::Measure { key, .. } => ("measure", key.clone()),
        Op::Train { name, .. } => ("train", name.clone()),
        Op::Save { path, .. } => ("save", path.clone()),
        Op::Plot { file, .. } => ("plot", file.clone()),
        Op::Expect { text, .. } => ("expect", text.clone()),
    };
    (op.to_string(), name)
}

/// A result's JSON value and, where JSON cannot hold it, what it is.
fn value_json(output: StepOutput) -> Option<(serde_json::Value, Option<String>)> {
    let what = non_finite(&output);
    let value = match output {
        StepOutput::Scalar { value } => json!(value),
        StepOutput::Tensor { tensor } => json!({"shape": tensor.shape, "data": tensor.data}),
        StepOutput::Stored => return None,
    };
    Some((value, what))
}

/// A result line of `results.jsonl`; a value JSON cannot hold (written as
/// `null`) is named in `non_finite` and remembered for the run's warning.
fn result_line(
    key: &str,
    step_id: u32,
    sweep: &impl serde::Serialize,
    (value, what): (serde_json::Value, Option<String>),
    non_finite: &mut Vec<String>,
) -> serde_json::Value {
    let mut line = json!({
        "key": key,
        "step_id": step_id,
        "sweep": sweep,
        "value": value,
    });
    if let Some(what) = what {
        non_finite.push(format!("{key}: {what}"));
        line["non_finite"] = json!(what);
    }
    line
}

/// What JSON cannot hold of a result (it writes NaN and ±∞ as `null`):
/// `NaN`, `inf`, `-inf`, or for a tensor how many entries are not finite.
fn non_finite(output: &StepOutput) -> Option<String> {
    let word = |v: f64| {
        if v.is_nan() {
            "NaN"
        } else if v > 0.0 {
            "inf"
        } else {
            "-inf"
        }
    };
    match output {
        StepOutput::Scalar { value } if !value.is_finite() => Some(word(*value).into()),
        StepOutput::Tensor { tensor } => {
            let bad: Vec<f64> = tensor
                .data
                .iter()
                .copied()
                .filter(|v| !v.is_finite())
                .collect();
            (!bad.is_empty()).then(|| {
                let kinds: BTreeSet<&str> = bad.iter().map(|&v| word(v)).collect();
                format!(
                    "{} of {} entries ({})",
                    bad.len(),
                    tensor.data.len(),
                    kinds.into_iter().collect::<Vec<_>>().join(", ")
                )
            })
        }
        _ => None,
    }
}

/// Runs `plan` into a new folder (`ctx.out_dir` must not hold an earlier
/// run); see [`run_with`].
pub fn run(
    plan: &Plan,
    backend: &mut dyn Backend,
    ctx: &RunContext,
) -> Result<RunSummary, ExecError> {
    run_with(plan, backend, ctx, Mode::New)
}

/// Whether running `step` writes into the run folder.
fn writes_folder(step: &Step) -> bool {
    matches!(
        step.op,
        Op::Measure { .. } | Op::Train { .. } | Op::Save { .. } | Op::Plot { .. }
    )
}

/// The top-level steps to run when the steps in `done` have their results:
/// the others, and (transitively) what they and their hooks depend on.
fn to_run(plan: &Plan, done: &BTreeSet<u32>) -> BTreeSet<u32> {
    let todo: BTreeSet<u32> = plan
        .steps
        .iter()
        .filter(|s| s.hook.is_none() && !done.contains(&s.id.0))
        .map(|s| s.id.0)
        .collect();
    crate::plan::shard::needed(plan, &todo)
}

/// Runs every top-level step in order (hook steps run inside their
/// training step, driven by the backend), writing into `ctx.out_dir`
/// according to `mode`.
pub fn run_with(
    plan: &Plan,
    backend: &mut dyn Backend,
    ctx: &RunContext,
    mode: Mode,
) -> Result<RunSummary, ExecError> {
    run_shard(plan, backend, ctx, mode, None)
}

/// Like [`run_with`], writing only the results of `shard`'s steps (all of
/// them when `None`): the steps they depend on run without writing (see
/// [`crate::plan::shard`]). The folder's manifest records the shard, and
/// resuming it as another shard is refused.
pub fn run_shard(
    plan: &Plan,
    backend: &mut dyn Backend,
    ctx: &RunContext,
    mode: Mode,
    shard: Option<&ShardRef>,
) -> Result<RunSummary, ExecError> {
    let mut pending = Some(Pending::check(&ctx.out_dir, mode, plan, shard)?);
    let mut done = pending.as_ref().map(Pending::done).unwrap_or_default();
    if let Some(shard) = shard {
        // Steps owned by other shards count as done here: they run only
        // where an owned step needs them, and write nothing.
        let owned: BTreeSet<u32> = shard.owned.iter().copied().collect();
        done.extend(
            plan.steps
                .iter()
                .filter(|s| s.hook.is_none() && !owned.contains(&s.id.0))
                .map(|s| s.id.0),
        );
    }
    let needed = to_run(plan, &done);
    let info = backend.info();
    backend.prepare(plan, ctx).map_err(ExecError::BeforeStart)?;
    let steps: Vec<&Step> = plan.steps.iter().filter(|s| s.hook.is_none()).collect();
    let mut progress = progress::Progress::new(steps.len(), &plan.experiment.name);
    let t0 = Instant::now();
    let mut session: Option<Session> = None;
    // Timings of steps run before the folder was taken.
    let mut early: Vec<StepTiming> = Vec::new();
    let mut outcome: Result<(), ExecError> = Ok(());
    // Results JSON cannot hold (NaN, ±∞), for the run's warning.
    let mut non_finite: Vec<String> = Vec::new();
    for step in &steps {
        let (op, name) = step_name(step);
        progress.step(format!("{op} {name}"));
        if !needed.contains(&step.id.0) {
            continue;
        }
        // Between steps: a run asked to stop does not start another one.
        if let Some(signal) = interrupt::requested() {
            outcome = Err(ExecError::Interrupted {
                signal,
                before: step.id.0,
                folder_taken: session.is_some(),
            });
            break;
        }
        // Run again only for what later steps need: its results are in.
        let silent = done.contains(&step.id.0);
        if session.is_none() && writes_folder(step) {
            let s = open(&mut pending, plan, &info, shard, &mut early)?;
            session = Some(s);
        }
        let ts = Instant::now();
        let mut write_err: Option<ExecError> = None;
        // Results a step emits before the folder is taken (a backend may
        // emit during any step): they are the first measurements, so the
        // folder is taken for them once the step returns.
        let mut early_lines: Vec<serde_json::Value> = Vec::new();
        // Results with a training step come from this top-level step (a
        // training run and its hooks): look its epoch length up once, not
        // per emitted value.
        let per_epoch = plan.steps_per_epoch(step.id);
        let result = {
            let mut emit = |e: Emitted| {
                if silent || write_err.is_some() {
                    return;
                }
                let mut sweep = plan.step(e.step_id).sweep.clone();
                sweep.extend(e.tags);
                let Some(value) = value_json(e.output) else {
                    return;
                };
                if let (true, Some(t), Op::Train { config, .. }, Some(loss)) = (
                    e.key == "train/loss",
                    e.train_step,
                    &step.op,
                    value.0.as_f64(),
                ) {
                    progress.train(t, config.total_steps, loss);
                }
                let mut line = result_line(&e.key, e.step_id.0, &sweep, value, &mut non_finite);
                if let Some(t) = e.train_step {
                    line["step"] = json!(t);
                    // Epochs done when the value was taken: fractional for
                    // a run set by `steps`, whole at epoch boundaries.
                    if let Some(per) = per_epoch {
                        line["epoch"] = json!(t as f64 / per.max(1) as f64);
                    }
                }
                if let Some(t) = e.train_time {
                    line["train_time_s"] = json!(t);
                }
                match session.as_mut() {
                    Some(s) => {
                        line["time_s"] = json!(s.elapsed_s());
                        write_err = append(s, &line).err();
                    }
                    None => {
                        line["time_s"] = json!(t0.elapsed().as_secs_f64());
                        early_lines.push(line);
                    }
                }
            };
            backend.run(plan, step, &mut emit)
        };
        if !early_lines.is_empty() {
            let mut s = open(&mut pending, plan, &info, shard, &mut early)?;
            for line in &early_lines {
                if let Err(e) = append(&mut s, line) {
                    write_err.get_or_insert(e);
                    break;
                }
            }
            session = Some(s);
        }
        if let Some(e) = write_err {
            outcome = Err(e);
            break;
        }
        let output = match result {
            Ok(o) => o,
            Err(e) => {
                outcome = Err(match session {
                    Some(_) => e.into(),
                    None => ExecError::BeforeStart(e),
                });
                break;
            }
        };
        if silent {
            continue;
        }
        if let (Op::Measure { key, .. }, Some(s)) = (&step.op, session.as_mut()) {
            if let Some(value) = value_json(output) {
                let mut line = result_line(key, step.id.0, &step.sweep, value, &mut non_finite);
                line["time_s"] = json!(s.elapsed_s());
                if let Err(e) = append(s, &line) {
                    outcome = Err(e);
                    break;
                }
            }
        }
        progress.step_done();
        let timing = StepTiming {
            id: step.id.0,
            op,
            name,
            wall_s: ts.elapsed().as_secs_f64(),
            peak_rss_bytes: report::peak_rss_bytes(),
        };
        match session.as_mut() {
            Some(s) => {
                if let Err(e) = s.step_done(timing) {
                    outcome = Err(after_results(e));
                    break;
                }
            }
            None => early.push(timing),
        }
    }
    progress.finish();
    let (mut s, outcome) = match (session, outcome) {
        (Some(s), outcome) => (s, outcome),
        (None, Err(e)) => return Err(e),
        // Nothing wrote results (a plan without measurements, or a resumed
        // run that had finished): take the folder now for the manifest.
        (None, Ok(())) => (open(&mut pending, plan, &info, shard, &mut early)?, Ok(())),
    };
    let mut summary = RunSummary {
        warnings: backend.warnings(),
        ..Default::default()
    };
    if !non_finite.is_empty() {
        const SHOWN: usize = 5;
        let more = non_finite.len().saturating_sub(SHOWN);
        summary.warnings.push(format!(
            "{} result{} not finite ({}{}); results.jsonl writes {} as null and names it in `non_finite`",
            non_finite.len(),
            if non_finite.len() == 1 { " is" } else { "s are" },
            non_finite[..non_finite.len().min(SHOWN)].join("; "),
            if more > 0 { format!("; {more} more") } else { String::new() },
            if non_finite.len() == 1 { "it" } else { "each" },
        ));
    }
    let finished = s.finish(outcome.as_ref().err().map(ToString::to_string));
    // Plots and CSV are rebuilt from results.jsonl, also after a failure
    // (under the lock: nothing else writes here meanwhile).
    match report::rebuild(s.dir()) {
        Ok(r) => {
            summary.files = r.files;
            summary.warnings.extend(r.warnings);
            summary.claims = r.claims;
        }
        Err(e) => summary
            .warnings
            .push(format!("could not rebuild plots: {e}")),
    }
    outcome?;
    finished.map_err(after_results)?;
    Ok(summary)
}

/// A folder write that fails once results are in it: a write error like
/// any other (the run can be resumed), not a failure to take the folder.
fn after_results(e: RunDirError) -> ExecError {
    match e {
        RunDirError::Io { path, source } => ExecError::Io { path, source },
        other => ExecError::Folder(other),
    }
}

/// Takes the run folder (see [`Pending::open`]) and records the steps that
/// ran before.
fn open(
    pending: &mut Option<Pending>,
    plan: &Plan,
    info: &crate::backend::BackendInfo,
    shard: Option<&ShardRef>,
    early: &mut Vec<StepTiming>,
) -> Result<Session, ExecError> {
    let p = pending.take().expect("the folder is taken once");
    let mut s = p.open(plan, info, shard)?;
    for t in early.drain(..) {
        s.step_done(t)?;
    }
    Ok(s)
}

/// Appends one result line; a failed write names the file and the reason.
fn append(s: &mut Session, line: &serde_json::Value) -> Result<(), ExecError> {
    s.results
        .append(&line.to_string())
        .map_err(|source| ExecError::Io {
            path: s.results.path().display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::HostTensor;

    /// JSON writes NaN and ±∞ as null: the result line says which, and a
    /// tensor how many of its entries.
    #[test]
    fn results_json_cannot_hold_are_named() {
        let scalar = |value| StepOutput::Scalar { value };
        assert_eq!(non_finite(&scalar(1.5)), None);
        assert_eq!(non_finite(&scalar(f64::NAN)).as_deref(), Some("NaN"));
        assert_eq!(non_finite(&scalar(f64::INFINITY)).as_deref(), Some("inf"));
        assert_eq!(
            non_finite(&scalar(f64::NEG_INFINITY)).as_deref(),
            Some("-inf")
        );
        let tensor = StepOutput::Tensor {
            tensor: HostTensor {
                shape: vec![4],
                data: vec![1.0, f64::NAN, f64::INFINITY, f64::NAN],
            },
        };
        assert_eq!(
            non_finite(&tensor).as_deref(),
            Some("3 of 4 entries (NaN, inf)")
        );
        let mut seen = Vec::new();
        let line = result_line(
            "trace(M)",
            7,
            &serde_json::Map::new(),
            value_json(scalar(f64::INFINITY)).unwrap(),
            &mut seen,
        );
        assert_eq!(line["value"], serde_json::Value::Null);
        assert_eq!(line["non_finite"], "inf");
        assert_eq!(seen, ["trace(M): inf"]);
        let line = result_line(
            "x",
            1,
            &serde_json::Map::new(),
            value_json(scalar(2.0)).unwrap(),
            &mut seen,
        );
        assert!(line.get("non_finite").is_none());
        assert_eq!(seen.len(), 1);
    }
}
