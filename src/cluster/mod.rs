//! Runs split into shards: the sharded run folder, following its shards,
//! and merging them into the results one process would have written.
//!
//! ```text
//! RUN/
//!   plan.json          the whole plan
//!   shards.json        the shards (units, estimates) and the submissions
//!   slurm/array.sbatch the job script, slurm/logs/JOB_TASK.out its logs
//!   shards/I/          an ordinary run folder per shard (`--shard I/N`)
//!   results.jsonl …    written by `nngeo report RUN` from the shards
//! ```
//! Any launcher can fill `RUN/shards/I` with `nngeo exec FILE --shard I/N
//! --out RUN/shards/I`; `nngeo report RUN` merges whatever shards are
//! complete. [`slurm`] submits the shards as one job array.

pub mod parts;
pub mod slurm;
pub mod state;

pub use state::{shard_states, ShardState, ShardStatus};

use crate::exec::run_dir::{self, io_err, RunDirError};
use crate::plan::shard::{self, Shard};
use crate::plan::Plan;
use crate::report::{self, Manifest, MANIFEST_JSON, PLAN_JSON, RESULTS_JSONL};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub const SHARDS_JSON: &str = "shards.json";
pub const SHARDS_DIR: &str = "shards";
pub const SLURM_DIR: &str = "slurm";

/// `RUN/shards.json`: what was split, how, and what was submitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardsFile {
    pub plan_hash: String,
    pub experiment: String,
    /// The `.ngx` file, absolute.
    pub file: PathBuf,
    pub count: usize,
    pub shards: Vec<ShardEntry>,
    #[serde(default)]
    pub submissions: Vec<Submission>,
    /// The part arrays of the steps sharded over data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part_submissions: Vec<PartSubmission>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub index: usize,
    /// Its units' labels (`noise = 0.1, s = 2`, `shared`).
    pub units: Vec<String>,
    pub owned: Vec<u32>,
    pub peak_memory_bytes: u64,
    pub flops: u64,
}

/// One `sbatch` of some of the shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub job_id: String,
    pub tasks: Vec<usize>,
    pub submitted: String,
}

/// One `sbatch` of some parts of one stage of a step sharded over data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartSubmission {
    pub step: u32,
    pub stage: String,
    pub job_id: String,
    pub tasks: Vec<usize>,
    pub submitted: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Folder(#[from] RunDirError),
    #[error(transparent)]
    Shard(#[from] shard::ShardError),
    #[error("`{}` is not a sharded run: it has no `{SHARDS_DIR}/` folder with shard runs (`nngeo exec FILE --shard I/N --out RUN/{SHARDS_DIR}/I` makes one)", dir.display())]
    NotSharded { dir: PathBuf },
    #[error("`{}`: {message}", path.display())]
    Bad { path: PathBuf, message: String },
    #[error("{0}")]
    Slurm(String),
}

impl ShardsFile {
    pub fn new(plan: &Plan, file: &Path, shards: &[Shard]) -> ShardsFile {
        ShardsFile {
            plan_hash: plan.hash(),
            experiment: plan.experiment.name.clone(),
            file: std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf()),
            count: shards.len(),
            shards: shards
                .iter()
                .map(|s| ShardEntry {
                    index: s.index,
                    units: s.units.iter().map(|u| u.label()).collect(),
                    owned: s.owned.iter().copied().collect(),
                    peak_memory_bytes: s.peak_memory,
                    flops: s.flops,
                })
                .collect(),
            submissions: Vec::new(),
            part_submissions: Vec::new(),
        }
    }

    pub fn read(run: &Path) -> Result<ShardsFile, ClusterError> {
        let path = run.join(SHARDS_JSON);
        let text = std::fs::read_to_string(&path).map_err(|e| ClusterError::Bad {
            path: path.clone(),
            message: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| ClusterError::Bad {
            path,
            message: e.to_string(),
        })
    }

    pub fn write(&self, run: &Path) -> Result<(), ClusterError> {
        let path = run.join(SHARDS_JSON);
        let mut text = serde_json::to_string_pretty(self).expect("shard files always serialise");
        text.push('\n');
        run_dir::write_atomic(&path, text.as_bytes()).map_err(io_err(&path))?;
        Ok(())
    }

    /// The newest submission that ran shard `index`.
    pub fn job_of(&self, index: usize) -> Option<&Submission> {
        self.submissions
            .iter()
            .rev()
            .find(|s| s.tasks.contains(&index))
    }

    /// The newest submission that ran part `index` of stage `stage` of
    /// step `step`.
    pub fn part_job_of(&self, step: u32, stage: &str, index: usize) -> Option<&PartSubmission> {
        self.part_submissions
            .iter()
            .rev()
            .find(|s| s.step == step && s.stage == stage && s.tasks.contains(&index))
    }

    /// Every Slurm job of the run: the shards' arrays and the parts'.
    pub fn job_ids(&self) -> impl Iterator<Item = &str> {
        self.submissions
            .iter()
            .map(|s| s.job_id.as_str())
            .chain(self.part_submissions.iter().map(|s| s.job_id.as_str()))
    }
}

/// `RUN/shards/I`.
pub fn shard_dir(run: &Path, index: usize) -> PathBuf {
    run.join(SHARDS_DIR).join(index.to_string())
}

/// Checks that a shard's output folder, when it lies inside a sharded run
/// (`RUN/shards/I` with `RUN/plan.json`), belongs to the same plan and
/// index: a task must not mix the results of an edited file into a run.
pub fn check_shard_folder(out: &Path, plan: &Plan, index: usize) -> Result<(), String> {
    let Some(run) = out
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == SHARDS_DIR))
        .and_then(Path::parent)
    else {
        return Ok(());
    };
    let Ok(text) = std::fs::read_to_string(run.join(PLAN_JSON)) else {
        return Ok(());
    };
    let same = Plan::from_json(&text).is_ok_and(|p| p.hash() == plan.hash());
    if !same {
        return Err(format!(
            "`{}` belongs to the sharded run in `{}`, whose plan.json differs from this plan (was the .ngx file or an option changed since it was submitted?)",
            out.display(),
            run.display()
        ));
    }
    if out.file_name().and_then(|n| n.to_str()) != Some(&index.to_string()) {
        return Err(format!(
            "`{}` is not the folder of shard {index}: use `{}`",
            out.display(),
            shard_dir(run, index).display()
        ));
    }
    Ok(())
}

/// Starts a sharded run in `run`: refuses a folder holding another run,
/// writes `plan.json` and `shards.json`. A run of the same plan is kept
/// (`resume`), its shards untouched.
pub fn prepare(
    run: &Path,
    plan: &Plan,
    file: &Path,
    shards: &[Shard],
    resume: bool,
) -> Result<ShardsFile, ClusterError> {
    let shown = run.display().to_string();
    if resume {
        let sf = ShardsFile::read(run)?;
        if sf.plan_hash != plan.hash() {
            return Err(RunDirError::PlanChanged {
                dir: shown,
                recorded: sf.plan_hash,
                current: plan.hash(),
            }
            .into());
        }
        return Ok(sf);
    }
    if let Some(what) = run_dir::previous_run(run) {
        return Err(RunDirError::Occupied { dir: shown, what }.into());
    }
    if run.join(SHARDS_JSON).exists() || run.join(SHARDS_DIR).exists() {
        return Err(RunDirError::Occupied {
            dir: shown,
            what: "a sharded run".into(),
        }
        .into());
    }
    std::fs::create_dir_all(run.join(SLURM_DIR).join("logs")).map_err(io_err(run))?;
    let plan_path = run.join(PLAN_JSON);
    run_dir::write_atomic(&plan_path, plan.to_json().as_bytes()).map_err(io_err(&plan_path))?;
    let sf = ShardsFile::new(plan, file, shards);
    sf.write(run)?;
    Ok(sf)
}

/// What [`merge`] found.
#[derive(Debug, Default)]
pub struct Merged {
    pub count: usize,
    /// Shards with all their results.
    pub complete: Vec<usize>,
    /// Shards without (all) their results.
    pub missing: Vec<usize>,
    pub lines: usize,
    /// Per-example files and saved weights brought from the shards.
    pub files: usize,
    pub warnings: Vec<String>,
}

/// The shard folders under `RUN/shards/`, by index.
fn shard_folders(run: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(run.join(SHARDS_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let i: usize = e.file_name().to_str()?.parse().ok()?;
            Some((i, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// `RUN/shards.json`, or for shards written by another launcher (no
/// `shards.json`), the same description made from the plan and the count
/// the shard folders' manifests give.
pub fn describe(run: &Path) -> Result<ShardsFile, ClusterError> {
    if run.join(SHARDS_JSON).exists() {
        return ShardsFile::read(run);
    }
    let folders = shard_folders(run);
    let manifests: Vec<Manifest> = folders
        .iter()
        .filter_map(|(_, d)| Manifest::read(d).ok())
        .collect();
    let count = manifests
        .iter()
        .find_map(|m| m.shard.as_ref().map(|s| s.count))
        .ok_or_else(|| ClusterError::NotSharded { dir: run.into() })?;
    let (plan, _) = run_plan(run, &folders)?;
    let shards = shard::all(&plan, Some(count))?;
    Ok(ShardsFile::new(&plan, Path::new(""), &shards))
}

/// The plan of a sharded run (see [`run_plan`]).
pub fn plan_of(run: &Path) -> Result<Plan, ClusterError> {
    Ok(run_plan(run, &shard_folders(run))?.0)
}

/// The plan of a sharded run and its text: the run's own, else the first
/// shard's (a launcher other than `--on slurm` may not have written one).
fn run_plan(run: &Path, folders: &[(usize, PathBuf)]) -> Result<(Plan, String), ClusterError> {
    let text = std::fs::read_to_string(run.join(PLAN_JSON))
        .ok()
        .or_else(|| {
            folders
                .iter()
                .find_map(|(_, d)| std::fs::read_to_string(d.join(PLAN_JSON)).ok())
        })
        .ok_or_else(|| ClusterError::Bad {
            path: run.join(PLAN_JSON),
            message: "no plan.json here nor in any shard".into(),
        })?;
    let plan = Plan::from_json(&text).map_err(|e| ClusterError::Bad {
        path: run.join(PLAN_JSON),
        message: e.to_string(),
    })?;
    Ok((plan, text))
}

/// Whether `run` holds shards to merge.
pub fn is_sharded(run: &Path) -> bool {
    run.join(SHARDS_JSON).exists() || !shard_folders(run).is_empty()
}

/// Merges the shards of `run` into `RUN/results.jsonl` and
/// `RUN/manifest.json`: each shard's lines of the steps it owns and
/// finished, ordered by top-level step as one process writes them (lines
/// of one step keep their order). The manifest says `ok` only when every
/// shard is complete. Holds the run folder's lock meanwhile.
pub fn merge(run: &Path) -> Result<Merged, ClusterError> {
    let folders = shard_folders(run);
    let sharded = ShardsFile::read(run).ok();
    if folders.is_empty() && sharded.is_none() {
        return Err(ClusterError::NotSharded { dir: run.into() });
    }
    let _lock = run_dir::lock(run)?;
    let (plan, plan_text) = run_plan(run, &folders)?;
    let hash = plan.hash();
    let mut merged = Merged::default();
    let mut count = sharded.as_ref().map(|s| s.count);
    let mut lines: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut steps: Vec<report::StepTiming> = Vec::new();
    let mut first: Option<Manifest> = None;
    let mut wall = 0.0f64;
    let mut peak: Option<u64> = None;
    for (i, dir) in &folders {
        let m = match Manifest::read(dir) {
            Ok(m) => m,
            Err(e) => {
                merged
                    .warnings
                    .push(format!("shard {i}: no results yet ({e})"));
                continue;
            }
        };
        let Some(shard) = m.shard.clone() else {
            merged.warnings.push(format!(
                "`{}` is not a shard run (its manifest names no shard): skipped",
                dir.display()
            ));
            continue;
        };
        if m.plan_hash != hash || shard.index != *i || count.is_some_and(|c| c != shard.count) {
            merged.warnings.push(format!(
                "`{}` holds shard {}/{} of plan {}, not shard {i}{} of this run's plan {}: skipped",
                dir.display(),
                shard.index,
                shard.count,
                short(&m.plan_hash),
                count.map(|c| format!("/{c}")).unwrap_or_default(),
                short(&hash)
            ));
            continue;
        }
        count.get_or_insert(shard.count);
        let finished: BTreeSet<u32> = m.steps.iter().map(|s| s.id).collect();
        let owned: BTreeSet<u32> = shard.owned.iter().copied().collect();
        let text = std::fs::read(dir.join(RESULTS_JSONL)).unwrap_or_default();
        for (top, line) in crate::exec::jsonl::lines_by_step(&plan, &text) {
            if let Some(top) = top.filter(|t| owned.contains(t) && finished.contains(t)) {
                lines.push((top, line.to_vec()));
            }
        }
        let done: BTreeSet<u32> = owned.intersection(&finished).copied().collect();
        merged.files += bring_files(&plan, dir, run, &done)?;
        steps.extend(m.steps.iter().filter(|s| owned.contains(&s.id)).cloned());
        wall += m.wall_time_s;
        peak = peak.max(m.peak_memory_bytes);
        if owned.is_subset(&finished) && m.status == "ok" {
            merged.complete.push(*i);
        }
        first.get_or_insert(m);
    }
    let count = count.unwrap_or(folders.len());
    merged.count = count;
    merged.missing = (0..count)
        .filter(|i| !merged.complete.contains(i))
        .collect();
    // Stable: the lines of one step stay in the order they were written.
    lines.sort_by_key(|(top, _)| *top);
    steps.sort_by_key(|s| s.id);
    merged.lines = lines.len();
    let bytes: Vec<u8> = lines.into_iter().flat_map(|(_, l)| l).collect();
    let results_path = run.join(RESULTS_JSONL);
    run_dir::write_atomic(&results_path, &bytes).map_err(io_err(&results_path))?;
    let plan_path = run.join(PLAN_JSON);
    if !plan_path.exists() {
        run_dir::write_atomic(&plan_path, plan_text.as_bytes()).map_err(io_err(&plan_path))?;
    }
    let base = first.unwrap_or_else(|| Manifest::start(&plan, &plan.experiment.backend, ""));
    let status = if merged.missing.is_empty() {
        "ok".to_string()
    } else {
        format!(
            "incomplete: {} of {count} shard(s) without all their results ({}); `nngeo status {}` shows why",
            merged.missing.len(),
            list(&merged.missing),
            run.display()
        )
    };
    let manifest = Manifest {
        wall_time_s: wall,
        peak_memory_bytes: peak,
        status,
        total_steps: Some(plan.steps.iter().filter(|s| shard::owns_results(s)).count()),
        resumed: Vec::new(),
        steps,
        shard: None,
        ..base
    };
    manifest.write(run).map_err(|e| ClusterError::Bad {
        path: run.join(MANIFEST_JSON),
        message: e.to_string(),
    })?;
    Ok(merged)
}

/// Links (or copies) into `run` the files a shard's finished steps wrote
/// besides results: per-example files of its training runs and the
/// weights its `save` steps wrote. Files of steps it only recomputed are
/// left behind: their owner brings them.
fn bring_files(
    plan: &Plan,
    shard: &Path,
    run: &Path,
    done: &BTreeSet<u32>,
) -> Result<usize, ClusterError> {
    let mut names: Vec<PathBuf> = Vec::new();
    for &id in done {
        match &plan.step(crate::plan::StepId(id)).op {
            crate::plan::Op::Train { .. } => {
                for f in [
                    format!("train_{id}.jsonl"),
                    format!("train_{id}.difficulty.json"),
                ] {
                    names.push(Path::new(run_dir::EXAMPLES_DIR).join(f));
                }
            }
            crate::plan::Op::Save { path, .. } => {
                let rel = Path::new(path);
                if rel
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
                {
                    names.push(rel.to_path_buf());
                }
            }
            _ => {}
        }
    }
    let mut brought = 0;
    for name in names {
        let from = shard.join(&name);
        if !from.is_file() {
            continue;
        }
        let to = run.join(&name);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        if to.exists() {
            std::fs::remove_file(&to).map_err(io_err(&to))?;
        }
        std::fs::hard_link(&from, &to)
            .or_else(|_| std::fs::copy(&from, &to).map(|_| ()))
            .map_err(io_err(&to))?;
        brought += 1;
    }
    Ok(brought)
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// `0-3,7,9-10`.
pub fn list(items: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let start = items[i];
        let mut end = start;
        while i + 1 < items.len() && items[i + 1] == end + 1 {
            i += 1;
            end = items[i];
        }
        out.push(if end > start {
            format!("{start}-{end}")
        } else {
            start.to_string()
        });
        i += 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests;
