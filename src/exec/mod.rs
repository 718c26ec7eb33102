//! Walks a plan and streams results.
//!
//! Every measurement is appended to `results.jsonl` the moment it is
//! computed, so a run that fails keeps everything computed before the
//! failure; the plan itself is written next to it first.

use crate::backend::{Backend, BackendError, StepOutput};
use crate::plan::{Op, Plan};
use serde_json::json;
use std::io::Write;
use std::path::Path;

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

/// Runs every top-level step in order (hook steps run inside their
/// training step, driven by the backend), writing into `out`.
pub fn run(plan: &Plan, backend: &mut dyn Backend, out: &Path) -> Result<(), ExecError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let plan_path = out.join("plan.json");
    std::fs::write(&plan_path, plan.to_json()).map_err(io(&plan_path))?;
    let results_path = out.join("results.jsonl");
    let mut results = std::fs::File::create(&results_path).map_err(io(&results_path))?;
    backend.prepare(plan)?;
    for step in plan.steps.iter().filter(|s| s.hook.is_none()) {
        let output = backend.run(plan, step)?;
        if let Op::Measure { key, .. } = &step.op {
            let value = match output {
                StepOutput::Scalar { value } => json!(value),
                StepOutput::Tensor { tensor } => {
                    json!({"shape": tensor.shape, "data": tensor.data})
                }
                StepOutput::Stored => continue,
            };
            let line =
                json!({"key": key, "step_id": step.id.0, "sweep": step.sweep, "value": value});
            writeln!(results, "{line}").map_err(io(&results_path))?;
            results.flush().map_err(io(&results_path))?;
        }
    }
    Ok(())
}
