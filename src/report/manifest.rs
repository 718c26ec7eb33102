//! `manifest.json`: what ran, where, how long it took and how it ended.

use super::{read_err, write_err, ReportError, MANIFEST_JSON};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// A run's identity card, written next to its results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// SHA-256 of `plan.json` (see `Plan::hash`).
    pub plan_hash: String,
    pub experiment: String,
    pub backend: String,
    pub backend_version: String,
    pub device: String,
    pub dtype: String,
    pub seed: u64,
    pub nngeo_version: String,
    /// Start time, RFC 3339 in UTC (see [`rfc3339_utc`]).
    pub started: String,
    pub wall_time_s: f64,
    /// Peak resident memory of the process, where the OS reports it.
    pub peak_memory_bytes: Option<u64>,
    /// `"running"` from the moment the run takes its folder until it ends,
    /// then `"ok"` or `"failed: <message>"`. A manifest still saying
    /// `running` with no process holding the folder's lock belongs to a
    /// run that was killed.
    pub status: String,
    /// Top-level steps in the plan (`steps` lists those that finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<usize>,
    /// When the run was resumed (`nngeo exec --resume`), RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumed: Vec<String>,
    /// Top-level steps whose results are all in `results.jsonl`, in the
    /// order they finished: what `--resume` does not run again.
    pub steps: Vec<StepTiming>,
    /// Set when this folder holds one shard of a plan (`--shard I/N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardRef>,
}

/// Which shard of the plan a run folder holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRef {
    pub index: usize,
    pub count: usize,
    /// The top-level steps whose results it writes.
    pub owned: Vec<u32>,
}

impl ShardRef {
    pub fn of(shard: &crate::plan::shard::Shard) -> ShardRef {
        ShardRef {
            index: shard.index,
            count: shard.count,
            owned: shard.owned.iter().copied().collect(),
        }
    }
}

/// Time spent in one top-level plan step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    pub id: u32,
    pub op: String,
    pub name: String,
    pub wall_s: f64,
    /// Peak resident memory of the process when the step finished.
    pub peak_rss_bytes: Option<u64>,
}

impl Manifest {
    /// The manifest of a run of `plan` starting now on `backend`, with no
    /// step finished yet and an empty status.
    pub fn start(plan: &crate::plan::Plan, backend: &str, backend_version: &str) -> Manifest {
        Manifest {
            plan_hash: plan.hash(),
            experiment: plan.experiment.name.clone(),
            backend: backend.into(),
            backend_version: backend_version.into(),
            device: plan.experiment.device.clone(),
            dtype: format!("{:?}", plan.experiment.dtype).to_lowercase(),
            seed: plan.experiment.seed,
            nngeo_version: env!("CARGO_PKG_VERSION").into(),
            started: now_rfc3339(),
            wall_time_s: 0.0,
            peak_memory_bytes: None,
            status: String::new(),
            total_steps: None,
            resumed: Vec::new(),
            steps: Vec::new(),
            shard: None,
        }
    }

    /// Writes `dir/manifest.json` (pretty-printed), atomically: a reader
    /// sees the previous manifest or this one, never a mix.
    pub fn write(&self, dir: &Path) -> Result<(), ReportError> {
        let path = dir.join(MANIFEST_JSON);
        let mut text = serde_json::to_string_pretty(self).expect("manifests always serialise");
        text.push('\n');
        crate::exec::run_dir::write_atomic(&path, text.as_bytes()).map_err(write_err(&path))
    }

    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest, ReportError> {
        let path = dir.join(MANIFEST_JSON);
        let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
        serde_json::from_str(&text).map_err(|source| ReportError::Parse { path, source })
    }
}

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`);
/// `None` where that file does not exist (not Linux) or cannot be read.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

pub(super) fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut words = line["VmHWM:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    let unit = match words.next().unwrap_or("B") {
        "B" => 1,
        "kB" | "KB" | "KiB" => 1024,
        "mB" | "MB" | "MiB" => 1024 * 1024,
        "gB" | "GB" | "GiB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// The current time as RFC 3339 UTC, e.g. `2024-05-01T13:45:07Z`.
pub fn now_rfc3339() -> String {
    rfc3339_utc(SystemTime::now())
}

/// `t` as RFC 3339 UTC to the second (times before 1970 read as 1970).
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// What a run folder's manifest can be trusted to say about the run.
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    /// No readable `manifest.json`.
    NoManifest,
    /// `manifest.json` was written for another plan than `plan.json`'s
    /// (left by another run): nothing in it describes these results.
    Stale { recorded: String, plan: String },
    /// Still running: a process holds the folder's lock.
    Running { holder: String },
    /// The manifest says `running` but no process holds the lock: the run
    /// was killed or crashed after `done` of its `total` top-level steps.
    Interrupted { done: usize, total: Option<usize> },
    /// `ok` or `failed: ...`.
    Ended { status: String },
}

/// Reads `dir`'s manifest and checks it against `plan.json` and the lock.
pub fn run_state(dir: &Path) -> RunState {
    match read_json(dir) {
        Some(v) => state_of(dir, &v),
        None => RunState::NoManifest,
    }
}

fn read_json(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(MANIFEST_JSON)).ok()?;
    serde_json::from_str(&text).ok()
}

fn state_of(dir: &Path, m: &serde_json::Value) -> RunState {
    if let (Some(recorded), Ok(plan)) = (
        m["plan_hash"].as_str(),
        std::fs::read(dir.join(super::PLAN_JSON)),
    ) {
        use sha2::Digest;
        // The hash of the plan as nngeo writes it (`Plan::hash`): a
        // plan.json placed by hand (`nngeo plan --format json > ...`, as
        // a sharded run's folder may be set up) differs in layout only.
        let hash = std::str::from_utf8(&plan)
            .ok()
            .and_then(|t| crate::plan::Plan::from_json(t).ok())
            .map(|p| p.hash())
            .unwrap_or_else(|| {
                let digest = sha2::Sha256::digest(&plan);
                digest.iter().map(|b| format!("{b:02x}")).collect()
            });
        if hash != recorded {
            return RunState::Stale {
                recorded: recorded.to_string(),
                plan: hash,
            };
        }
    }
    let status = m["status"].as_str().unwrap_or("unknown");
    if status != "running" {
        return RunState::Ended {
            status: status.to_string(),
        };
    }
    match crate::exec::run_dir::holder(dir) {
        Some(holder) => RunState::Running { holder },
        None => RunState::Interrupted {
            done: m["steps"].as_array().map_or(0, Vec::len),
            total: m["total_steps"].as_u64().map(|t| t as usize),
        },
    }
}

impl RunState {
    /// The status line a summary shows, where it differs from the
    /// manifest's own `status`.
    fn status(&self) -> Option<String> {
        match self {
            RunState::Running { holder } => Some(format!("running ({holder})")),
            RunState::Interrupted { done, total } => Some(format!(
                "interrupted: the run was killed or crashed after {done}{} top-level steps; `nngeo exec FILE --resume DIR` finishes it",
                total.map(|t| format!(" of {t}")).unwrap_or_default()
            )),
            _ => None,
        }
    }
}

/// A warning for `nngeo report` when the manifest does not say the run
/// ended (or cannot be trusted).
pub(super) fn run_state_note(dir: &Path) -> Option<String> {
    let state = run_state(dir);
    match &state {
        RunState::Stale { recorded, plan } => Some(format!(
            "`{}` belongs to another run (plan hash {recorded}, while plan.json's is {plan}): it is ignored",
            dir.join(MANIFEST_JSON).display()
        )),
        RunState::Running { .. } | RunState::Interrupted { .. } => {
            state.status().map(|s| format!("the run is incomplete: {s}"))
        }
        RunState::NoManifest | RunState::Ended { .. } => None,
    }
}

/// Why the results in `dir` are not a finished run's, if they are not: the
/// run still runs, was interrupted, failed, or was merged from shards some
/// of which are missing. `None` for a run that ended `ok`, and where no
/// manifest says anything (results copied on their own).
pub(super) fn incomplete_reason(dir: &Path) -> Option<String> {
    match run_state(dir) {
        RunState::Ended { status } if status == "ok" => None,
        RunState::Ended { status } => Some(status),
        RunState::NoManifest | RunState::Stale { .. } => None,
        state => state.status(),
    }
}

/// `dir/manifest.json` as JSON, if it describes the run of `plan.json`,
/// with its `status` saying whether a `running` run still runs or was
/// interrupted.
pub(super) fn trusted_json(dir: &Path) -> Option<serde_json::Value> {
    let mut v = read_json(dir)?;
    let state = state_of(dir, &v);
    if matches!(state, RunState::Stale { .. }) {
        return None;
    }
    if let Some(s) = state.status() {
        v["status"] = serde_json::Value::String(s);
    }
    Some(v)
}
