//! Slurm: the job-array script, `sbatch`, and what the scheduler says of
//! each task. nngeo schedules nothing itself: every shard is one task of
//! one `sbatch --array` job, which runs `nngeo exec RUN/plan.json --shard
//! I/N --out RUN/shards/I` on its node: the plan as it was submitted, so
//! that editing the `.ngx` file while the array waits changes nothing.

use super::{ClusterError, ShardsFile, Submission, SLURM_DIR};
use crate::config::SlurmSection;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the job script runs and asks for.
#[derive(Clone, Debug)]
pub struct JobScript {
    pub experiment: String,
    pub plan_hash: String,
    /// The `nngeo` executable the tasks run (this one), absolute.
    pub exe: PathBuf,
    /// The folder of the `.ngx` file, where the plan's relative paths
    /// (data, weights) start; absolute.
    pub base_dir: PathBuf,
    /// The run folder, absolute.
    pub run: PathBuf,
    /// The working directory of the tasks (where `nngeo.toml` is found).
    pub chdir: PathBuf,
    pub count: usize,
    /// Options that fix the plan on the node: backend, device, dtype…
    pub exec_args: Vec<String>,
    pub resources: SlurmSection,
    /// The largest shard's estimated peak memory, used for `--mem` when
    /// the configuration does not set it.
    pub estimated_bytes: u64,
}

/// Single-quotes `s` for the shell.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn shown(p: &Path) -> String {
    quote(&p.display().to_string())
}

/// Least memory asked for a task: the estimate bounds what nngeo's own
/// steps hold, while a backend's libraries (libtorch, CUDA) load more
/// than a tiny plan's estimate.
const MIN_TASK_BYTES: u64 = 1 << 30;

/// `--mem` from the estimate: whole MiB, rounded up, at least 1 GiB.
fn mem_of(bytes: u64) -> String {
    format!("{}M", bytes.max(MIN_TASK_BYTES).div_ceil(1 << 20))
}

impl JobScript {
    /// The `sbatch` script. The array range is given on the command line
    /// (a resume submits only some tasks), so the script names none.
    pub fn render(&self) -> String {
        let mut s = self.header(
            &format!("{} shard(s)", self.count),
            "",
            self.estimated_bytes,
        );
        let mut cmd = self.nngeo_exec();
        cmd.extend([
            "--shard".into(),
            format!("\"$SLURM_ARRAY_TASK_ID/{}\"", self.count),
            "--out".into(),
            format!(
                "{}/\"$SLURM_ARRAY_TASK_ID\"",
                shown(&self.run.join(super::SHARDS_DIR))
            ),
        ]);
        cmd.extend(self.exec_args.iter().map(|a| quote(a)));
        s.push_str(&cmd.join(" "));
        s.push('\n');
        s
    }

    /// The script of the part tasks of stage `stage` (`parts` of them) of
    /// the sharded step `step`: task J writes `RUN/parts/STEP/`. Without
    /// a configured memory, `--mem` is `estimated_bytes`, one part task's
    /// estimate (at least 1 GiB).
    pub fn render_part(
        &self,
        step: u32,
        stage: &str,
        parts: usize,
        estimated_bytes: u64,
    ) -> String {
        let mut s = self.header(
            &format!("step #{step}, stage `{stage}`, {parts} part(s)"),
            &format!("-part{step}-{stage}"),
            estimated_bytes,
        );
        let mut cmd = self.nngeo_exec();
        cmd.extend([
            "--part".into(),
            format!("\"{step}:{stage}/$SLURM_ARRAY_TASK_ID/{parts}\""),
            "--out".into(),
            shown(&self.run),
        ]);
        cmd.extend(self.exec_args.iter().map(|a| quote(a)));
        s.push_str(&cmd.join(" "));
        s.push('\n');
        s
    }

    /// `exec nngeo exec RUN/plan.json --base-dir DIR`.
    fn nngeo_exec(&self) -> Vec<String> {
        vec![
            "exec".to_string(),
            shown(&self.exe),
            "exec".into(),
            shown(&self.run.join(crate::report::PLAN_JSON)),
            "--base-dir".into(),
            shown(&self.base_dir),
        ]
    }

    /// The script up to its command.
    fn header(&self, what: &str, job_suffix: &str, estimated_bytes: u64) -> String {
        let r = &self.resources;
        let logs = self.run.join(SLURM_DIR).join("logs");
        let mut s = String::new();
        s.push_str("#!/bin/bash\n");
        s.push_str(&format!(
            "# nngeo: experiment `{}`, plan {}, {what}; submitted with `sbatch --array=...`\n",
            self.experiment,
            &self.plan_hash[..self.plan_hash.len().min(12)],
        ));
        let mut directive = |line: String| s.push_str(&format!("#SBATCH {line}\n"));
        directive(format!(
            "--job-name={}",
            quote(&format!("nngeo-{}{job_suffix}", self.experiment))
        ));
        directive(format!("--output={}", shown(&logs.join("%A_%a.out"))));
        directive(format!("--chdir={}", shown(&self.chdir)));
        directive(format!(
            "--mem={}",
            r.mem.clone().unwrap_or_else(|| mem_of(estimated_bytes))
        ));
        if let Some(c) = r.cpus {
            directive(format!("--cpus-per-task={c}"));
        }
        if let Some(t) = &r.time {
            directive(format!("--time={}", quote(t)));
        }
        if let Some(p) = &r.partition {
            directive(format!("--partition={}", quote(p)));
        }
        if let Some(a) = &r.account {
            directive(format!("--account={}", quote(a)));
        }
        if let Some(g) = r.gpus {
            directive(format!("--gres=gpu:{g}"));
        }
        for line in &r.extra {
            directive(line.clone());
        }
        s.push_str("set -eu\n");
        s.push_str("# One compute thread per CPU Slurm gave the task.\n");
        s.push_str("if [ -n \"${SLURM_CPUS_PER_TASK:-}\" ]; then export RAYON_NUM_THREADS=\"$SLURM_CPUS_PER_TASK\"; fi\n");
        s
    }
}

/// `sbatch --parsable --array=LIST SCRIPT`: the job id.
pub fn submit(script: &Path, tasks: &[usize]) -> Result<String, ClusterError> {
    submit_after(script, tasks, &[])
}

/// [`submit`] with `--dependency=afterok:ID:...` on the jobs `after`.
pub fn submit_after(
    script: &Path,
    tasks: &[usize],
    after: &[String],
) -> Result<String, ClusterError> {
    let array = super::list(tasks);
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable").arg(format!("--array={array}"));
    if !after.is_empty() {
        cmd.arg(format!("--dependency=afterok:{}", after.join(":")));
        // A failed stage cancels what waits for it instead of leaving it
        // pending for ever; `--resume` submits it again.
        cmd.arg("--kill-on-invalid-dep=yes");
    }
    let out = cmd
        .arg(script)
        .output()
        .map_err(|e| {
            ClusterError::Slurm(format!(
                "cannot run `sbatch` ({e}): is Slurm installed here, and is this a node that may submit jobs?"
            ))
        })?;
    if !out.status.success() {
        return Err(ClusterError::Slurm(format!(
            "sbatch refused the job: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `--parsable` prints `JOBID` or `JOBID;CLUSTER`.
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(ClusterError::Slurm(format!(
            "sbatch printed no job id: `{}`",
            text.trim()
        )));
    }
    Ok(id)
}

/// Submits `tasks` of the run's array and records the submission.
pub fn submit_tasks(
    run: &Path,
    sf: &mut ShardsFile,
    tasks: &[usize],
    after: &[String],
) -> Result<String, ClusterError> {
    let id = submit_after(&run.join(SLURM_DIR).join("array.sbatch"), tasks, after)?;
    sf.submissions.push(Submission {
        job_id: id.clone(),
        tasks: tasks.to_vec(),
        submitted: crate::report::now_rfc3339(),
    });
    sf.write(run)?;
    Ok(id)
}

/// The state of each task of array job `job_id` (`scontrol show job`,
/// which keeps finished jobs for `MinJobAge`); an error when Slurm cannot
/// be asked.
pub fn task_states(job_id: &str) -> Result<BTreeMap<usize, String>, String> {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", job_id])
        .output()
        .map_err(|e| format!("cannot run `scontrol`: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(parse_scontrol(&String::from_utf8_lossy(&out.stdout)))
}

/// Task → state from `scontrol show job -o` lines. A line of pending tasks
/// names them as a range (`ArrayTaskId=3-9%2`, `ArrayTaskId=1,4`).
pub fn parse_scontrol(text: &str) -> BTreeMap<usize, String> {
    let mut states = BTreeMap::new();
    for line in text.lines() {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
        };
        let (Some(tasks), Some(state)) = (field("ArrayTaskId"), field("JobState")) else {
            continue;
        };
        let tasks = tasks.split('%').next().unwrap_or("");
        for part in tasks.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                for t in a..=b {
                    states.insert(t, state.to_string());
                }
            }
        }
    }
    states
}

/// States of every submission of the run that Slurm still knows.
pub fn run_states(sf: &ShardsFile) -> (BTreeMap<String, BTreeMap<usize, String>>, Vec<String>) {
    let mut states = BTreeMap::new();
    let mut warnings = Vec::new();
    for id in sf.job_ids() {
        if states.contains_key(id) {
            continue;
        }
        match task_states(id) {
            Ok(t) => {
                states.insert(id.to_string(), t);
            }
            Err(e) => warnings.push(format!("Slurm job {id}: {e}")),
        }
    }
    (states, warnings)
}
