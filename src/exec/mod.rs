//! Walks a plan and streams results.
//!
//! Every measurement is appended to `results.jsonl` the moment it is
//! computed, so a run that fails keeps everything computed before the
//! failure; the plan is written first, and the manifest, `results.csv` and
//! plots are written at the end whether the run succeeded or not.

use crate::backend::{Backend, BackendError, Emitted, RunContext, StepOutput};
use crate::plan::{Op, Plan, Step};
use crate::report::{self, Manifest, StepTiming};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot write results in `{path}`: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ExecError + '_ {
    move |source| ExecError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What a finished run left behind.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// `results.csv` and the plots.
    pub files: Vec<PathBuf>,
    pub warnings: Vec<String>,
}

fn step_name(step: &Step) -> (String, String) {
    let (op, name) = match &step.op {
        Op::Data { name, .. } => ("data", name.clone()),
        Op::Transform { name, .. } => ("transform", name.clone()),
        Op::Model { name, .. } => ("model", name.clone()),
        Op::Repr {
            name, structure, ..
        } => ("repr", format!("{name} ({})", structure.name())),
        Op::Vector { name, .. } => ("vector", name.clone()),
        Op::Measure { key, .. } => ("measure", key.clone()),
        Op::Train { name, .. } => ("train", name.clone()),
        Op::Save { path, .. } => ("save", path.clone()),
        Op::Plot { file, .. } => ("plot", file.clone()),
    };
    (op.to_string(), name)
}

fn value_json(output: StepOutput) -> Option<serde_json::Value> {
    match output {
        StepOutput::Scalar { value } => Some(json!(value)),
        StepOutput::Tensor { tensor } => Some(json!({"shape": tensor.shape, "data": tensor.data})),
        StepOutput::Stored => None,
    }
}

/// Runs every top-level step in order (hook steps run inside their
/// training step, driven by the backend), writing into `ctx.out_dir`.
pub fn run(
    plan: &Plan,
    backend: &mut dyn Backend,
    ctx: &RunContext,
) -> Result<RunSummary, ExecError> {
    let out = ctx.out_dir.as_path();
    std::fs::create_dir_all(out).map_err(io(out))?;
    let plan_path = out.join("plan.json");
    std::fs::write(&plan_path, plan.to_json()).map_err(io(&plan_path))?;
    let results_path = out.join("results.jsonl");
    let mut results = std::fs::File::create(&results_path).map_err(io(&results_path))?;
    let info = backend.info();
    let started = report::now_rfc3339();
    let t0 = Instant::now();
    let mut timings = Vec::new();
    let steps: Vec<&Step> = plan.steps.iter().filter(|s| s.hook.is_none()).collect();
    let bar = report::progress(steps.len() as u64, &plan.experiment.name);
    let mut outcome = backend.prepare(plan, ctx).map_err(ExecError::from);
    if outcome.is_ok() {
        for step in &steps {
            let (op, name) = step_name(step);
            bar.set_message(format!("{op} {name}"));
            let ts = Instant::now();
            let mut write_err = None;
            let mut emit = |e: Emitted| {
                let mut sweep = plan.step(e.step_id).sweep.clone();
                sweep.extend(e.tags);
                if let Some(value) = value_json(e.output) {
                    let mut line = json!({
                        "key": e.key,
                        "step_id": e.step_id.0,
                        "sweep": sweep,
                        "value": value,
                        "time_s": t0.elapsed().as_secs_f64(),
                    });
                    if let Some(s) = e.train_step {
                        line["step"] = json!(s);
                    }
                    if let Some(t) = e.train_time {
                        line["train_time_s"] = json!(t);
                    }
                    if let Err(err) = writeln!(results, "{line}").and_then(|_| results.flush()) {
                        write_err.get_or_insert(err);
                    }
                }
            };
            let result = backend.run(plan, step, &mut emit);
            if let Some(err) = write_err {
                return Err(io(&results_path)(err));
            }
            let output = match result {
                Ok(o) => o,
                Err(e) => {
                    outcome = Err(e.into());
                    break;
                }
            };
            let wall_s = ts.elapsed().as_secs_f64();
            timings.push(StepTiming {
                id: step.id.0,
                op,
                name,
                wall_s,
                peak_rss_bytes: report::peak_rss_bytes(),
            });
            bar.inc(1);
            if let Op::Measure { key, .. } = &step.op {
                let Some(value) = value_json(output) else {
                    continue;
                };
                let line = json!({
                    "key": key,
                    "step_id": step.id.0,
                    "sweep": step.sweep,
                    "value": value,
                    "time_s": t0.elapsed().as_secs_f64(),
                });
                writeln!(results, "{line}").map_err(io(&results_path))?;
                results.flush().map_err(io(&results_path))?;
            }
        }
    }
    bar.finish_and_clear();
    let mut summary = RunSummary {
        warnings: backend.warnings(),
        ..Default::default()
    };
    let manifest = Manifest {
        plan_hash: plan.hash(),
        experiment: plan.experiment.name.clone(),
        backend: info.name,
        backend_version: info.version,
        device: plan.experiment.device.clone(),
        dtype: format!("{:?}", plan.experiment.dtype).to_lowercase(),
        seed: plan.experiment.seed,
        nngeo_version: env!("CARGO_PKG_VERSION").into(),
        started,
        wall_time_s: t0.elapsed().as_secs_f64(),
        peak_memory_bytes: report::peak_rss_bytes(),
        status: match &outcome {
            Ok(()) => "ok".into(),
            Err(e) => format!("failed: {e}"),
        },
        steps: timings,
    };
    let written = manifest.write(out);
    // Plots and CSV are rebuilt from results.jsonl, also after a failure.
    match report::rebuild(out) {
        Ok(r) => {
            summary.files = r.files;
            summary.warnings.extend(r.warnings);
        }
        Err(e) => summary
            .warnings
            .push(format!("could not rebuild plots: {e}")),
    }
    outcome?;
    if let Err(e) = written {
        summary.warnings.push(e.to_string());
    }
    Ok(summary)
}
