//! The parts of the steps sharded over data in a run folder: what one part
//! task is estimated to cost (`nngeo plan --on slurm`, the part arrays'
//! `--mem`), and where each part stands (`nngeo status`): done when its
//! file is in `RUN/parts/STEP/`, else what Slurm says of its task.

use super::state::{log_path, ShardState};
use super::ShardsFile;
use crate::plan::cost::{format_bytes, format_flops};
use crate::plan::parts::{self, PartCost, Sharded};
use crate::plan::Plan;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `plan --on slurm`'s list of the steps sharded over data: each stage
/// with its task count and one task's memory and FLOP estimate.
pub fn render_plan(plan: &Plan, sharded: &[Sharded]) -> String {
    let mut s = format!(
        "\n{} step(s) sharded over data run as job arrays of parts before the shards (each waits for the stage before it: --dependency=afterok); per task, the steps it recomputes, then its part:\n",
        sharded.len()
    );
    for sh in sharded {
        let step = plan.step(sh.step);
        s.push_str(&format!(
            "  step #{} (line {}) {}, sharded({})\n",
            sh.step.0,
            step.span.line,
            parts::describe(step),
            sh.shards
        ));
        for (i, st) in sh.stages.iter().enumerate() {
            let c = parts::part_cost(plan, sh, i + 1);
            s.push_str(&format!(
                "    stage {} `{}`: {} task(s){}; each ≤ {} examples, {}, {}\n",
                i + 1,
                st.name,
                st.parts,
                if i > 0 {
                    format!(" after stage {i}")
                } else {
                    String::new()
                },
                c.examples,
                format_bytes(c.peak_memory),
                format_flops(c.flops)
            ));
        }
    }
    s
}

/// One task's estimate of each stage of `sh`, in stage order.
pub fn stage_costs(plan: &Plan, sh: &Sharded) -> Vec<PartCost> {
    (1..=sh.stages.len())
        .map(|i| parts::part_cost(plan, sh, i))
        .collect()
}

/// Where the parts of one stage of a sharded step stand.
#[derive(Clone, Debug, PartialEq)]
pub struct StageStatus {
    pub step: u32,
    /// `` `F` = Fim(EKFAC) ``.
    pub what: String,
    pub stage: &'static str,
    pub parts: usize,
    /// Each part's state, by index.
    pub states: Vec<ShardState>,
    /// The newest Slurm job of each part, when one was submitted.
    pub jobs: Vec<Option<String>>,
    /// The log of each part's newest task.
    pub logs: Vec<Option<PathBuf>>,
}

impl StageStatus {
    /// Parts in state `word` (`done`, `failed`…).
    pub fn with(&self, word: &str) -> Vec<usize> {
        (0..self.parts)
            .filter(|&j| self.states[j].word() == word)
            .collect()
    }

    /// Parts a resume submits again: without a file and not waiting or
    /// running in Slurm.
    pub fn rerun(&self) -> Vec<usize> {
        (0..self.parts)
            .filter(|&j| self.states[j].needs_rerun())
            .collect()
    }

    /// Slurm jobs with parts of this stage pending or running.
    pub fn live_jobs(&self) -> Vec<String> {
        let mut ids: Vec<String> = (0..self.parts)
            .filter(|&j| matches!(self.states[j], ShardState::Pending | ShardState::Running))
            .filter_map(|j| self.jobs[j].as_ref())
            .map(|t| t.split('_').next().unwrap_or(t).to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// A part's state: done when its file exists, else the scheduler's word
/// for its task (`None`: not submitted, or unknown to the scheduler).
pub fn classify(file: bool, slurm: Option<&str>) -> ShardState {
    if file {
        return ShardState::Done;
    }
    match slurm {
        Some(
            "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "RESIZING" | "SUSPENDED",
        ) => ShardState::Pending,
        Some("RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING") => ShardState::Running,
        Some("CANCELLED") => ShardState::Cancelled,
        Some("COMPLETED") => ShardState::Failed("the task ended without writing its part".into()),
        Some(s) => ShardState::Failed(s.to_string()),
        None => ShardState::NotStarted,
    }
}

/// Every stage of every step of `plan` sharded over data, as the run
/// folder and the scheduler (`slurm`: job id → task → state, empty
/// without one) say.
pub fn part_states(
    run: &Path,
    plan: &Plan,
    sf: Option<&ShardsFile>,
    slurm: &BTreeMap<String, BTreeMap<usize, String>>,
) -> Vec<StageStatus> {
    let mut out = Vec::new();
    for sh in parts::sharded_steps(plan) {
        let what = parts::describe(plan.step(sh.step));
        for st in &sh.stages {
            let mut status = StageStatus {
                step: sh.step.0,
                what: what.clone(),
                stage: st.name,
                parts: st.parts,
                states: Vec::new(),
                jobs: Vec::new(),
                logs: Vec::new(),
            };
            for j in 0..st.parts {
                let file = parts::part_file(run, sh.step, st.name, j, st.parts).is_file();
                let job = sf.and_then(|f| f.part_job_of(sh.step.0, st.name, j));
                let word = job
                    .and_then(|s| slurm.get(&s.job_id))
                    .and_then(|t| t.get(&j))
                    .map(String::as_str);
                status.states.push(classify(file, word));
                status.jobs.push(job.map(|s| format!("{}_{j}", s.job_id)));
                status.logs.push(job.map(|s| log_path(run, &s.job_id, j)));
            }
            out.push(status);
        }
    }
    out
}

/// The parts' lines of `nngeo status`: per stage, how many parts are in
/// each state (which ones when not all are done), then each failed or
/// cancelled part with its Slurm task and the last lines of its log.
pub fn render_states(run: &Path, stages: &[StageStatus]) -> String {
    if stages.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "parts of the steps sharded over data ({}):\n",
        run.join(parts::PARTS_DIR).join("STEP").display()
    );
    for st in stages {
        let mut counts = vec![format!("{} of {} done", st.with("done").len(), st.parts)];
        for word in ["pending", "running", "failed", "cancelled", "not started"] {
            let ix = st.with(word);
            if !ix.is_empty() {
                counts.push(format!(
                    "{} {word} ({})",
                    ix.len(),
                    crate::geometry::parts::list(&ix)
                ));
            }
        }
        let mut jobs: Vec<&str> = st
            .jobs
            .iter()
            .flatten()
            .map(|t| t.split('_').next().unwrap_or(t))
            .collect();
        jobs.sort();
        jobs.dedup();
        s.push_str(&format!(
            "  step #{} {}, stage `{}`: {}{}\n",
            st.step,
            st.what,
            st.stage,
            counts.join(", "),
            if jobs.is_empty() {
                String::new()
            } else {
                format!("; Slurm job(s) {}", jobs.join(", "))
            }
        ));
        for j in 0..st.parts {
            let why = match &st.states[j] {
                ShardState::Failed(why) => format!("failed: {why}"),
                ShardState::Cancelled => "cancelled".into(),
                _ => continue,
            };
            s.push_str(&format!(
                "       part {j}{} {why}\n",
                st.jobs[j]
                    .as_deref()
                    .map(|t| format!(" (task {t})"))
                    .unwrap_or_default()
            ));
            if let Some(log) = st.logs[j].as_ref().filter(|l| l.is_file()) {
                s.push_str(&format!("       log: {}\n", log.display()));
                for line in super::state::log_tail(log, 3) {
                    s.push_str(&format!("       | {line}\n"));
                }
            }
        }
    }
    s
}
