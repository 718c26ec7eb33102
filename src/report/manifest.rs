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
    /// `"ok"` or `"failed: <message>"`.
    pub status: String,
    pub steps: Vec<StepTiming>,
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
    /// Writes `dir/manifest.json` (pretty-printed).
    pub fn write(&self, dir: &Path) -> Result<(), ReportError> {
        let path = dir.join(MANIFEST_JSON);
        let mut text = serde_json::to_string_pretty(self).expect("manifests always serialise");
        text.push('\n');
        std::fs::write(&path, text).map_err(write_err(&path))
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
