//! One `exec`'s hold on its run folder: checked (and locked, when it
//! exists) before anything runs, opened for writing only when the first
//! step that writes results is about to run, so that everything that can
//! fail before (backend, device, data, weights) leaves the folder as it was.
//!
//! The manifest is the run's journal: it says `running` from the moment the
//! folder is opened, lists every top-level step whose results are all in
//! `results.jsonl`, and is replaced atomically after each of them; at the
//! end it says `ok` or `failed: <error>`. `--resume` trusts exactly that
//! list (see [`Pending::done`]).

use super::jsonl::JsonlFile;
use super::run_dir::{self, io_err, Lock, Mode, RunDirError};
use crate::backend::BackendInfo;
use crate::plan::Plan;
use crate::report::{self, Manifest, ShardRef, StepTiming, PLAN_JSON, RESULTS_JSONL};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The folder, checked but not yet written to.
#[derive(Debug)]
pub struct Pending {
    dir: PathBuf,
    mode: Mode,
    lock: Option<Lock>,
    /// The manifest of the run being resumed.
    resumed: Option<Manifest>,
}

impl Pending {
    /// Checks `dir` for `mode` without writing anything into it except the
    /// lock file: another run holding it, an earlier run without
    /// `--overwrite`/`--resume`, a resume of another plan are refused here.
    pub fn check(
        dir: &Path,
        mode: Mode,
        plan: &Plan,
        shard: Option<&ShardRef>,
    ) -> Result<Pending, RunDirError> {
        let shown = dir.display().to_string();
        if !dir.exists() {
            if mode == Mode::Resume {
                return Err(RunDirError::NothingToResume {
                    dir: shown,
                    reason: "it does not exist".into(),
                });
            }
            return Ok(Pending {
                dir: dir.to_path_buf(),
                mode,
                lock: None,
                resumed: None,
            });
        }
        let lock = run_dir::lock(dir)?;
        let mut resumed = None;
        match mode {
            Mode::New => {
                if let Some(what) = run_dir::previous_run(dir) {
                    return Err(RunDirError::Occupied { dir: shown, what });
                }
            }
            Mode::Overwrite => {}
            Mode::Resume => {
                let m = Manifest::read(dir).map_err(|e| RunDirError::NothingToResume {
                    dir: shown.clone(),
                    reason: format!("{e} (a run writes its manifest when it starts; without one there is nothing to continue, use --overwrite)"),
                })?;
                let current = plan.hash();
                if m.plan_hash != current {
                    return Err(RunDirError::PlanChanged {
                        dir: shown,
                        recorded: m.plan_hash,
                        current,
                    });
                }
                if m.shard.as_ref() != shard {
                    let name = |s: Option<&ShardRef>| match s {
                        Some(s) => format!("shard {}/{}", s.index, s.count),
                        None => "the whole plan".into(),
                    };
                    return Err(RunDirError::NothingToResume {
                        dir: shown,
                        reason: format!("it holds {}, not {}", name(m.shard.as_ref()), name(shard)),
                    });
                }
                resumed = Some(m);
            }
        }
        Ok(Pending {
            dir: dir.to_path_buf(),
            mode,
            lock: Some(lock),
            resumed,
        })
    }

    /// Top-level steps whose results are complete in the folder (resume).
    pub fn done(&self) -> BTreeSet<u32> {
        self.resumed
            .iter()
            .flat_map(|m| m.steps.iter().map(|s| s.id))
            .collect()
    }

    /// Takes the folder for this run: creates and locks it, removes an
    /// earlier run (`--overwrite`) or keeps only its complete steps'
    /// results (`--resume`), writes `plan.json` and a `running` manifest.
    pub fn open(
        self,
        plan: &Plan,
        info: &BackendInfo,
        shard: Option<&ShardRef>,
    ) -> Result<Session, RunDirError> {
        let dir = self.dir;
        let lock = match self.lock {
            Some(l) => l,
            None => {
                std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                let l = run_dir::lock(&dir)?;
                // Another run may have filled it since it was checked.
                if self.mode == Mode::New {
                    if let Some(what) = run_dir::previous_run(&dir) {
                        return Err(RunDirError::Occupied {
                            dir: dir.display().to_string(),
                            what,
                        });
                    }
                }
                l
            }
        };
        if self.mode == Mode::Overwrite {
            run_dir::clear(&dir)?;
        }
        let plan_path = dir.join(PLAN_JSON);
        run_dir::write_atomic(&plan_path, plan.to_json().as_bytes()).map_err(io_err(&plan_path))?;
        let results_path = dir.join(RESULTS_JSONL);
        let (manifest, results) = match self.resumed {
            Some(mut m) => {
                let done: BTreeSet<u32> = m.steps.iter().map(|s| s.id).collect();
                keep_done_results(plan, &results_path, &done)?;
                m.status = "running".into();
                m.resumed.push(report::now_rfc3339());
                let f = JsonlFile::append_to(&results_path).map_err(io_err(&results_path))?;
                (m, f)
            }
            None => {
                let m = Manifest {
                    status: "running".into(),
                    total_steps: Some(match shard {
                        Some(s) => s.owned.len(),
                        None => plan.steps.iter().filter(|s| s.hook.is_none()).count(),
                    }),
                    shard: shard.cloned(),
                    ..Manifest::start(plan, &info.name, &info.version)
                };
                let f = JsonlFile::create(&results_path).map_err(io_err(&results_path))?;
                (m, f)
            }
        };
        let session = Session {
            prior_wall_s: manifest.wall_time_s,
            dir,
            _lock: lock,
            results,
            manifest,
            started: std::time::Instant::now(),
        };
        session.save_manifest()?;
        Ok(session)
    }
}

/// Rewrites `results.jsonl` (atomically) with only the lines of the steps
/// in `done`: a step that was interrupted is redone from its start, so its
/// partial lines (and an incomplete last line) go.
fn keep_done_results(plan: &Plan, path: &Path, done: &BTreeSet<u32>) -> Result<(), RunDirError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut kept = Vec::with_capacity(text.len());
    for (top, line) in super::jsonl::lines_by_step(plan, &text) {
        let keep = top.is_some_and(|id| done.contains(&id));
        if keep {
            kept.extend_from_slice(line);
        }
    }
    if kept != text {
        run_dir::write_atomic(path, &kept).map_err(io_err(path))?;
    }
    Ok(())
}

/// The folder, taken by this run.
#[derive(Debug)]
pub struct Session {
    dir: PathBuf,
    _lock: Lock,
    pub results: JsonlFile,
    manifest: Manifest,
    /// Wall time of the earlier sessions of a resumed run.
    prior_wall_s: f64,
    started: std::time::Instant,
}

impl Session {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Seconds since the run began (earlier sessions included).
    pub fn elapsed_s(&self) -> f64 {
        self.prior_wall_s + self.started.elapsed().as_secs_f64()
    }

    fn save_manifest(&self) -> Result<(), RunDirError> {
        self.manifest.write(&self.dir).map_err(|e| match e {
            report::ReportError::Write { path, source } => RunDirError::Io {
                path: path.display().to_string(),
                source,
            },
            other => RunDirError::Io {
                path: self.dir.join(report::MANIFEST_JSON).display().to_string(),
                source: std::io::Error::other(other.to_string()),
            },
        })
    }

    /// Records a top-level step whose results are all written.
    pub fn step_done(&mut self, timing: StepTiming) -> Result<(), RunDirError> {
        self.manifest.steps.push(timing);
        self.manifest.wall_time_s = self.elapsed_s();
        self.manifest.peak_memory_bytes = report::peak_rss_bytes();
        self.save_manifest()
    }

    /// Writes the final manifest: `ok`, or `failed: <error>`.
    pub fn finish(&mut self, error: Option<String>) -> Result<(), RunDirError> {
        self.manifest.status = match error {
            None => "ok".into(),
            Some(e) => format!("failed: {e}"),
        };
        self.manifest.wall_time_s = self.elapsed_s();
        self.manifest.peak_memory_bytes = report::peak_rss_bytes();
        self.save_manifest()
    }
}
