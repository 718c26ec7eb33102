//! Where each shard of a sharded run stands, from its folder and, when it
//! was submitted to Slurm, from the scheduler.

use super::{shard_dir, ClusterError, ShardsFile, SLURM_DIR};
use crate::report::{run_state, Manifest, RunState, RESULTS_JSONL};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardState {
    /// Nothing ran yet and no scheduler knows of it.
    NotStarted,
    Pending,
    Running,
    Done,
    Cancelled,
    /// The scheduler's state (`FAILED`, `TIMEOUT`, `OUT_OF_MEMORY`…) or the
    /// run's own error.
    Failed(String),
    /// The process died without saying why (killed, node lost).
    Interrupted,
}

impl ShardState {
    pub fn word(&self) -> &'static str {
        match self {
            ShardState::NotStarted => "not started",
            ShardState::Pending => "pending",
            ShardState::Running => "running",
            ShardState::Done => "done",
            ShardState::Cancelled => "cancelled",
            ShardState::Failed(_) => "failed",
            ShardState::Interrupted => "interrupted",
        }
    }

    /// Whether a resume should submit it again.
    pub fn needs_rerun(&self) -> bool {
        !matches!(
            self,
            ShardState::Done | ShardState::Pending | ShardState::Running
        )
    }
}

/// One shard's line in `nngeo status`.
#[derive(Clone, Debug)]
pub struct ShardStatus {
    pub index: usize,
    pub units: Vec<String>,
    pub state: ShardState,
    /// Result lines written so far.
    pub lines: usize,
    /// The Slurm job (`ARRAY_TASK`) and its log file.
    pub job: Option<String>,
    pub log: Option<PathBuf>,
}

/// The state of a shard from its folder and the scheduler's word for its
/// task (`None`: unknown to the scheduler or not submitted).
pub fn classify(folder: &RunState, slurm: Option<&str>) -> ShardState {
    if let RunState::Ended { status } = folder {
        if status == "ok" {
            return ShardState::Done;
        }
    }
    if let RunState::Running { .. } = folder {
        return ShardState::Running;
    }
    match slurm {
        Some(
            "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "RESIZING" | "SUSPENDED",
        ) => return ShardState::Pending,
        Some("RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING") => return ShardState::Running,
        Some("CANCELLED") => return ShardState::Cancelled,
        Some(
            s @ ("FAILED" | "TIMEOUT" | "OUT_OF_MEMORY" | "NODE_FAIL" | "BOOT_FAIL" | "DEADLINE"
            | "PREEMPTED"),
        ) => {
            // The run's own error says more than the scheduler's word.
            if let RunState::Ended { status } = folder {
                let why = status.strip_prefix("failed: ").unwrap_or(status);
                return ShardState::Failed(format!("{s}: {why}"));
            }
            return ShardState::Failed(s.to_string());
        }
        _ => {}
    }
    match folder {
        RunState::Ended { status } => ShardState::Failed(
            status
                .strip_prefix("failed: ")
                .unwrap_or(status)
                .to_string(),
        ),
        RunState::Interrupted { .. } => ShardState::Interrupted,
        RunState::Stale { .. } => ShardState::Failed("its folder holds another run".into()),
        RunState::NoManifest if slurm == Some("COMPLETED") => {
            ShardState::Failed("the job ended without writing a manifest".into())
        }
        _ => ShardState::NotStarted,
    }
}

/// Every shard's status. `slurm` maps a job id to its tasks' states
/// (from [`super::slurm::task_states`]; empty without a scheduler).
pub fn shard_states(
    run: &Path,
    sf: &ShardsFile,
    slurm: &BTreeMap<String, BTreeMap<usize, String>>,
) -> Result<Vec<ShardStatus>, ClusterError> {
    let mut out = Vec::new();
    for entry in &sf.shards {
        let dir = shard_dir(run, entry.index);
        let folder = if dir.join(crate::report::MANIFEST_JSON).exists() {
            run_state(&dir)
        } else {
            RunState::NoManifest
        };
        let job = sf.job_of(entry.index);
        let word = job
            .and_then(|j| slurm.get(&j.job_id))
            .and_then(|t| t.get(&entry.index))
            .map(String::as_str);
        let mut state = classify(&folder, word);
        // A resumed shard's earlier manifest may say `failed` while its
        // new task waits or runs.
        if matches!(state, ShardState::Failed(_) | ShardState::Interrupted)
            && matches!(word, Some("PENDING" | "RUNNING" | "COMPLETING"))
        {
            state = classify(&RunState::NoManifest, word);
        }
        if let (ShardState::Done, Ok(m)) = (&state, Manifest::read(&dir)) {
            let finished: Vec<u32> = m.steps.iter().map(|s| s.id).collect();
            if !entry.owned.iter().all(|o| finished.contains(o)) {
                state = ShardState::Failed("its manifest lacks some of its steps".into());
            }
        }
        let lines = std::fs::read(dir.join(RESULTS_JSONL))
            .map(|t| t.iter().filter(|&&b| b == b'\n').count())
            .unwrap_or(0);
        out.push(ShardStatus {
            index: entry.index,
            units: entry.units.clone(),
            state,
            lines,
            job: job.map(|j| format!("{}_{}", j.job_id, entry.index)),
            log: job.map(|j| log_path(run, &j.job_id, entry.index)),
        });
    }
    Ok(out)
}

/// `RUN/slurm/logs/JOB_TASK.out`, as the job script names it.
pub fn log_path(run: &Path, job_id: &str, task: usize) -> PathBuf {
    run.join(SLURM_DIR)
        .join("logs")
        .join(format!("{job_id}_{task}.out"))
}

/// The last `n` lines of a log, for a failed shard.
pub fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}
