//! The run folder: who may write into it (an exclusive lock), what an
//! earlier run left in it, and files that are replaced atomically.
//!
//! Policy (see the README, "What a run leaves"):
//! - `exec` writes into a folder that does not exist yet, is empty, or
//!   holds no earlier run; a folder holding one (`plan.json`,
//!   `results.jsonl`, `manifest.json`, `results.csv`, `summary.md` or
//!   `examples/`) is refused unless `--overwrite` (its files are removed,
//!   plots and saved weights included, once the new run has got as far as
//!   its first measurement) or `--resume` (it is continued) is given;
//! - while a run writes into a folder it holds an exclusive `flock` on
//!   `DIR/.nngeo.lock`, whose text says who holds it (pid, host, start).

use crate::report::{self, Manifest, MANIFEST_JSON, PLAN_JSON, RESULTS_CSV, RESULTS_JSONL};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The lock file inside a run folder.
pub const LOCK_FILE: &str = ".nngeo.lock";
/// Per-example files of training runs.
pub const EXAMPLES_DIR: &str = "examples";

/// The files (and the folder) by which a folder is recognised as holding a run.
pub const RUN_FILES: [&str; 6] = [
    PLAN_JSON,
    RESULTS_JSONL,
    MANIFEST_JSON,
    RESULTS_CSV,
    report::SUMMARY_MD,
    EXAMPLES_DIR,
];

/// What `exec` may do with a folder that already holds a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Refuse it.
    #[default]
    New,
    /// Remove its files and start afresh.
    Overwrite,
    /// Continue it: run only the steps that have no result yet.
    Resume,
}

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("`{dir}` already holds a run ({what}); pass `--overwrite` to replace it, `--resume` to continue it, or choose another `--out`")]
    Occupied { dir: String, what: String },
    #[error("`{dir}` is in use by another nngeo run ({holder}); wait for it to finish or choose another `--out`")]
    Locked { dir: String, holder: String },
    #[error("cannot resume `{dir}`: it was started from a different plan (plan hash {recorded} in its manifest.json, {current} now); the .ngx file or the --backend/--device/--dtype options changed. Use --overwrite to start it afresh")]
    PlanChanged {
        dir: String,
        recorded: String,
        current: String,
    },
    #[error("cannot resume `{dir}`: {reason}")]
    NothingToResume { dir: String, reason: String },
    #[error("cannot write `{path}`: {source}")]
    Io { path: String, source: io::Error },
}

impl RunDirError {
    /// A refusal the user can act on (exit status 2), as opposed to a
    /// failing file system.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, RunDirError::Io { .. })
    }
}

pub(crate) fn io_err(path: &Path) -> impl Fn(io::Error) -> RunDirError + '_ {
    move |source| RunDirError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn shown(dir: &Path) -> String {
    dir.display().to_string()
}

// ---------------------------------------------------------------- lock

/// An exclusive lock on a run folder, released when dropped (or when the
/// process dies, however it dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Takes the lock on `dir` (which must exist) without waiting, and writes
/// who holds it into the lock file.
pub fn lock(dir: &Path) -> Result<Lock, RunDirError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(RunDirError::Locked {
                dir: shown(dir),
                holder: describe_holder(&mut file),
            })
        }
        Err(TryLockError::Error(e)) => return Err(io_err(&path)(e)),
    }
    let me = serde_json::json!({
        "pid": std::process::id(),
        "host": hostname(),
        "started": report::now_rfc3339(),
    });
    file.set_len(0)
        .and_then(|_| file.write_all(format!("{me}\n").as_bytes()))
        .map_err(io_err(&path))?;
    Ok(Lock { _file: file })
}

/// Who holds the lock on `dir` now, if anyone does.
pub fn holder(dir: &Path) -> Option<String> {
    let mut file = File::open(dir.join(LOCK_FILE)).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(TryLockError::WouldBlock) => Some(describe_holder(&mut file)),
        Err(TryLockError::Error(_)) => None,
    }
}

fn describe_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
    match (v["pid"].as_u64(), v["host"].as_str(), v["started"].as_str()) {
        (Some(pid), Some(host), Some(started)) => {
            format!("pid {pid} on host {host}, started {started}")
        }
        _ => "a process that has not yet said who it is".into(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------- earlier runs

/// What `dir` holds of an earlier run, in words; `None` when nothing.
pub fn previous_run(dir: &Path) -> Option<String> {
    let present: Vec<&str> = RUN_FILES
        .iter()
        .copied()
        .filter(|f| dir.join(f).exists())
        .collect();
    if present.is_empty() {
        return None;
    }
    Some(match Manifest::read(dir) {
        Ok(m) => format!(
            "experiment `{}`, status {}, started {}",
            m.experiment,
            m.status.lines().next().unwrap_or(""),
            m.started
        ),
        Err(_) => present.join(", "),
    })
}

/// Removes what an earlier run left in `dir`: the run files, `examples/`,
/// and the plots and saved weights its `plan.json` names (only inside
/// `dir`). Other files are left alone. Returns what was removed.
pub fn clear(dir: &Path) -> Result<Vec<PathBuf>, RunDirError> {
    let mut names: Vec<String> = Vec::new();
    if let Some(plan) = std::fs::read_to_string(dir.join(PLAN_JSON))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    {
        for step in plan["steps"].as_array().into_iter().flatten() {
            match step["op"].as_str() {
                Some("plot") => {
                    if let Some(file) = step["file"].as_str() {
                        let stem = file
                            .strip_suffix(".png")
                            .or_else(|| file.strip_suffix(".svg"))
                            .unwrap_or(file);
                        names.push(format!("{stem}.png"));
                        names.push(format!("{stem}.svg"));
                    }
                }
                Some("save") => names.extend(step["path"].as_str().map(str::to_string)),
                _ => {}
            }
        }
    }
    names.extend(RUN_FILES.iter().map(|s| s.to_string()));
    // Temporary files of atomic writes cut short by a crash.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                names.push(name);
            }
        }
    }
    let mut removed = Vec::new();
    for name in names {
        let rel = Path::new(&name);
        let inside = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            continue;
        }
        let path = dir.join(rel);
        let result = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(_) => continue,
        };
        result.map_err(io_err(&path))?;
        removed.push(path);
    }
    Ok(removed)
}

// ---------------------------------------------------------------- atomic files

/// Replaces `path` with `bytes` atomically: written to a temporary file
/// next to it, synced, then renamed over it, so a reader (or a crash)
/// sees the old content or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        // flock locks belong to the open file description, so a second
        // open in the same process conflicts like another process would.
        let err = lock(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(holder(dir.path()).is_some());
        drop(first);
        assert!(holder(dir.path()).is_none());
        lock(dir.path()).unwrap();
    }

    #[test]
    fn clear_removes_the_run_and_its_plots_but_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let plan = r#"{"steps": [{"op": "plot", "file": "loss_vs_step"},
            {"op": "save", "path": "w/net.safetensors"},
            {"op": "plot", "file": "../escape"}]}"#;
        std::fs::write(d.join(PLAN_JSON), plan).unwrap();
        for f in [
            "results.jsonl",
            "loss_vs_step.png",
            "loss_vs_step.svg",
            "notes.txt",
            ".manifest.json.12.tmp",
        ] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        std::fs::create_dir_all(d.join("w")).unwrap();
        std::fs::write(d.join("w/net.safetensors"), "x").unwrap();
        std::fs::create_dir_all(d.join("examples")).unwrap();
        std::fs::write(d.join("examples/train_3.jsonl"), "x").unwrap();
        assert!(previous_run(d).is_some());
        let removed = clear(d).unwrap();
        assert_eq!(removed.len(), 7, "{removed:?}");
        assert!(previous_run(d).is_none());
        assert!(d.join("notes.txt").exists());
        assert!(d.join("w").is_dir());
    }

    #[test]
    fn atomic_writes_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
