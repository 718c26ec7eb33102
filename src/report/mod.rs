//! Everything a finished (or crashed) run directory is turned into: a tidy
//! `results.csv`, plots (PNG and SVG), a `manifest.json` describing the run,
//! and the progress bar shown while it runs.
//!
//! ```text
//! out/plan.json ─┐
//!                ├─ rebuild ─▶ results.csv, summary.md, <plot file>.png, <plot file>.svg
//! out/results.jsonl
//! ```
//!
//! `summary.md` (see [`write_summary`]) states the papers' claims that the
//! results bear on and whether this run supports them, with the numbers.
//!
//! Every function here reads only files, so `nngeo report DIR` can redo all
//! of it after the run, and a run that crashed half-way (leaving a truncated
//! last line in `results.jsonl`) still gets its CSV and plots.

pub mod claims;
mod manifest;
mod plot;
mod stats;
mod summary;

pub use manifest::{
    now_rfc3339, peak_rss_bytes, rfc3339_utc, run_state, Manifest, RunState, ShardRef, StepTiming,
};
pub use plot::{plot, plot_records, PlotSpec};
pub use summary::{render_summary, write_summary, SUMMARY_MD};

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File names inside a run directory.
pub const RESULTS_JSONL: &str = "results.jsonl";
pub const RESULTS_CSV: &str = "results.csv";
pub const PLAN_JSON: &str = "plan.json";
pub const MANIFEST_JSON: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse `{}`: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// `plan.json` parses as JSON but is not shaped like a plan.
    #[error("invalid plan `{}`: {message}", path.display())]
    Plan { path: PathBuf, message: String },
    /// The plotting library failed while drawing into `path`.
    #[error("cannot draw `{}`: {message}", path.display())]
    Draw { path: PathBuf, message: String },
    /// No finite scalar measurement matches the plot's pattern (and has a
    /// value for the plot's x: a `step`, or the sweep variable).
    #[error("nothing to plot for `{pattern}`: no scalar measurement in the results matches it")]
    NothingToPlot { pattern: String },
}

fn read_err(path: &Path) -> impl Fn(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn write_err(path: &Path) -> impl Fn(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------- results

/// One line of `results.jsonl`.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub key: String,
    pub step_id: u64,
    /// Sweep tags (`for` loop variables) of the step that measured it.
    pub sweep: BTreeMap<String, String>,
    pub value: Measured,
    /// Training step, for measurements taken inside a training hook.
    pub step: Option<u64>,
    /// Epochs done at `step` (fractional between epoch boundaries).
    pub epoch: Option<f64>,
    /// Seconds since the start of the run.
    pub time_s: Option<f64>,
    /// Inside a training run: seconds it had spent on optimiser steps.
    pub train_time_s: Option<f64>,
}

/// A measured value. JSON `null` (how non-finite numbers are written) reads
/// as NaN.
#[derive(Clone, Debug, PartialEq)]
pub enum Measured {
    Scalar(f64),
    Tensor { shape: Vec<usize>, data: Vec<f64> },
}

impl Measured {
    /// The value of a scalar, or of a tensor with exactly one element.
    pub fn as_scalar(&self) -> Option<f64> {
        match self {
            Measured::Scalar(v) => Some(*v),
            Measured::Tensor { data, .. } if data.len() == 1 => Some(data[0]),
            Measured::Tensor { .. } => None,
        }
    }
}

/// The readable content of a `results.jsonl`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Results {
    pub records: Vec<Record>,
    /// Non-empty lines that were not a well-formed record (typically the
    /// last line of a run that was killed while writing it).
    pub skipped: usize,
    /// Those lines: where they are and what is wrong with them.
    pub malformed: Vec<Malformed>,
}

/// A line of `results.jsonl` that is not a result.
#[derive(Clone, Debug, PartialEq)]
pub struct Malformed {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Reads `results.jsonl`, skipping (and counting) malformed lines.
pub fn read_results(path: &Path) -> Result<Results, ReportError> {
    let bytes = std::fs::read(path).map_err(read_err(path))?;
    Ok(parse_results(&bytes))
}

fn parse_results(bytes: &[u8]) -> Results {
    let mut out = Results::default();
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let last = i + 1 == lines.len();
        let reason = match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(v) => match parse_record(&v) {
                Some(r) => {
                    out.records.push(r);
                    continue;
                }
                None => "not a result (needs `key`, `step_id` and a numeric `value`)".to_string(),
            },
            Err(_) if last => {
                "incomplete (no line end): the run stopped while writing it".to_string()
            }
            Err(e) => format!("not JSON: {e}"),
        };
        out.malformed.push(Malformed {
            line: i + 1,
            reason,
        });
    }
    out.skipped = out.malformed.len();
    out
}

fn number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Null => Some(f64::NAN),
        v => v.as_f64(),
    }
}

fn parse_record(v: &serde_json::Value) -> Option<Record> {
    use serde_json::Value as J;
    let obj = v.as_object()?;
    let key = obj.get("key")?.as_str()?.to_string();
    let step_id = obj.get("step_id")?.as_u64()?;
    let mut sweep = BTreeMap::new();
    match obj.get("sweep") {
        None | Some(J::Null) => {}
        Some(J::Object(m)) => {
            for (k, v) in m {
                let s = match v {
                    J::String(s) => s.clone(),
                    J::Number(_) | J::Bool(_) => v.to_string(),
                    _ => return None,
                };
                sweep.insert(k.clone(), s);
            }
        }
        Some(_) => return None,
    }
    let value = match obj.get("value")? {
        // A null is a value JSON cannot hold: `non_finite` says which.
        v @ (J::Number(_) | J::Null) => Measured::Scalar(match obj.get("non_finite") {
            Some(J::String(w)) if w == "inf" => f64::INFINITY,
            Some(J::String(w)) if w == "-inf" => f64::NEG_INFINITY,
            _ => number(v)?,
        }),
        J::Object(t) => {
            let data = t
                .get("data")?
                .as_array()?
                .iter()
                .map(number)
                .collect::<Option<Vec<f64>>>()?;
            let shape = match t.get("shape") {
                Some(s) => s
                    .as_array()?
                    .iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect::<Option<Vec<usize>>>()?,
                None => vec![data.len()],
            };
            Measured::Tensor { shape, data }
        }
        _ => return None,
    };
    let step = match obj.get("step") {
        None | Some(J::Null) => None,
        Some(s) => Some(match s.as_u64() {
            Some(n) => n,
            None => {
                let f = s.as_f64()?;
                if f < 0.0 || f.fract() != 0.0 {
                    return None;
                }
                f as u64
            }
        }),
    };
    let time_s = match obj.get("time_s") {
        None | Some(J::Null) => None,
        Some(t) => Some(t.as_f64()?),
    };
    let train_time_s = obj.get("train_time_s").and_then(|t| t.as_f64());
    let epoch = obj.get("epoch").and_then(|t| t.as_f64());
    Some(Record {
        key,
        step_id,
        sweep,
        value,
        step,
        epoch,
        time_s,
        train_time_s,
    })
}

// ---------------------------------------------------------------- CSV

/// What [`write_csv_summary`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsvSummary {
    /// Data rows (the header not counted).
    pub rows: usize,
    /// Malformed lines of `results.jsonl` that were skipped.
    pub skipped: usize,
}

/// Writes `results_jsonl` as a tidy CSV with columns
/// `key,step_id,step,<sweep tags, sorted>,index,value`: one row per scalar
/// (empty `index`) and one row per tensor element (`index` = flat element
/// index). Malformed lines are skipped; returns the number of rows written.
pub fn write_csv(results_jsonl: &Path, csv: &Path) -> Result<usize, ReportError> {
    write_csv_summary(results_jsonl, csv).map(|s| s.rows)
}

/// [`write_csv`], also saying how many malformed lines were skipped.
pub fn write_csv_summary(results_jsonl: &Path, csv: &Path) -> Result<CsvSummary, ReportError> {
    let results = read_results(results_jsonl)?;
    let rows = write_csv_records(&results.records, csv)?;
    Ok(CsvSummary {
        rows,
        skipped: results.skipped,
    })
}

/// Writes already-read records as CSV (see [`write_csv`]).
pub fn write_csv_records(records: &[Record], csv: &Path) -> Result<usize, ReportError> {
    let file = std::fs::File::create(csv).map_err(write_err(csv))?;
    let mut w = std::io::BufWriter::new(file);
    let rows = csv_to(records, &mut w).map_err(write_err(csv))?;
    w.flush().map_err(write_err(csv))?;
    Ok(rows)
}

fn csv_to(records: &[Record], w: &mut impl Write) -> std::io::Result<usize> {
    let tags: BTreeSet<&str> = records
        .iter()
        .flat_map(|r| r.sweep.keys().map(String::as_str))
        .collect();
    let mut header = vec!["key", "step_id", "step"];
    header.extend(tags.iter().copied());
    header.extend(["index", "value"]);
    write_row(w, header.iter().map(|s| s.to_string()))?;
    let mut rows = 0;
    for r in records {
        let mut row = |index: String, value: f64| {
            let mut fields = vec![
                r.key.clone(),
                r.step_id.to_string(),
                r.step.map(|s| s.to_string()).unwrap_or_default(),
            ];
            for t in &tags {
                fields.push(r.sweep.get(*t).cloned().unwrap_or_default());
            }
            fields.push(index);
            fields.push(format_value(value));
            rows += 1;
            write_row(w, fields)
        };
        match &r.value {
            Measured::Scalar(v) => row(String::new(), *v)?,
            Measured::Tensor { data, .. } => {
                for (i, v) in data.iter().enumerate() {
                    row(i.to_string(), *v)?;
                }
            }
        }
    }
    Ok(rows)
}

/// Shortest text that reads back as the same `f64` (`NaN`, `inf`, `-inf`
/// for non-finite values).
fn format_value(v: f64) -> String {
    format!("{v:?}")
}

fn write_row(w: &mut impl Write, fields: impl IntoIterator<Item = String>) -> std::io::Result<()> {
    let mut first = true;
    for f in fields {
        if !first {
            w.write_all(b",")?;
        }
        first = false;
        w.write_all(csv_field(&f).as_bytes())?;
    }
    w.write_all(b"\n")
}

/// RFC 4180 quoting: fields with a comma, quote, line break or surrounding
/// spaces are quoted, with quotes doubled.
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    let needs = s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ');
    if needs {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

// ---------------------------------------------------------------- rebuild

/// What [`rebuild`] produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rebuilt {
    /// `results.csv` first, then `summary.md`, then each plot's PNG and
    /// SVG, in plan order.
    pub files: Vec<PathBuf>,
    /// Things worth telling the user that did not stop the rebuild: skipped
    /// malformed result lines, plots with nothing to plot.
    pub warnings: Vec<String>,
    /// The experiment's declared claims, evaluated on the results.
    pub claims: Vec<claims::ClaimOutcome>,
}

/// Re-creates `dir/results.csv`, `dir/summary.md` and every plot described
/// by the plot steps of `dir/plan.json`, from `dir/results.jsonl` (and, for
/// the summary, `manifest.json` and `examples/`).
///
/// A plot with nothing to plot is skipped with a warning; any other error
/// (unreadable files, a plot that cannot be written) stops the rebuild.
pub fn rebuild(dir: &Path) -> Result<Rebuilt, ReportError> {
    let plan_path = dir.join(PLAN_JSON);
    let text = std::fs::read_to_string(&plan_path).map_err(read_err(&plan_path))?;
    let plan: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ReportError::Parse {
            path: plan_path.clone(),
            source,
        })?;
    let steps = plan
        .get("steps")
        .and_then(|s| s.as_array())
        .ok_or_else(|| ReportError::Plan {
            path: plan_path.clone(),
            message: "no `steps` list".into(),
        })?;
    let mut specs = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if step.get("op").and_then(|o| o.as_str()) != Some("plot") {
            continue;
        }
        let mut spec = PlotSpec::from_plan_step(step).ok_or_else(|| ReportError::Plan {
            path: plan_path.clone(),
            message: format!(
                "plot step {} lacks `pattern`, `x` or `file`",
                step_id(step, i)
            ),
        })?;
        spec.replicates = claims::plan_replicates(&plan);
        specs.push(spec);
    }

    let mut out = Rebuilt::default();
    let results_path = dir.join(RESULTS_JSONL);
    let results = read_results(&results_path)?;
    if results.skipped > 0 {
        let shown: Vec<String> = results
            .malformed
            .iter()
            .take(5)
            .map(ToString::to_string)
            .collect();
        let more = results.skipped.saturating_sub(shown.len());
        out.warnings.push(format!(
            "skipped {} malformed line{} in `{}`: {}{}",
            results.skipped,
            if results.skipped == 1 { "" } else { "s" },
            results_path.display(),
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        ));
    }
    if let Some(note) = manifest::run_state_note(dir) {
        out.warnings.push(note);
    }
    out.claims = claims::evaluate_run(dir, &plan, &results);
    let csv = dir.join(RESULTS_CSV);
    write_csv_records(&results.records, &csv)?;
    out.files.push(csv);
    out.files.push(summary::write_summary_from(
        dir,
        Some(&plan),
        Some(&results),
    )?);
    for spec in &specs {
        match plot_records(dir, spec, &results.records) {
            Ok(files) => out.files.extend(files),
            Err(e @ ReportError::NothingToPlot { .. }) => out
                .warnings
                .push(format!("plot `{}` skipped: {e}", spec.file)),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn step_id(step: &serde_json::Value, index: usize) -> String {
    step.get("id")
        .map(|i| i.to_string())
        .unwrap_or_else(|| format!("#{index}"))
}

// ---------------------------------------------------------------- progress

/// A progress bar on stderr with `len` steps, shown only when stderr is a
/// terminal; hidden (drawing nothing) otherwise, so CI logs stay clean.
pub fn progress(len: u64, msg: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let style = indicatif::ProgressStyle::with_template(
        "{msg:.bold} [{bar:32}] {pos}/{len} {elapsed_precise} (eta {eta})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar = indicatif::ProgressBar::new(len).with_style(style);
    bar.set_message(msg.to_string());
    bar
}

#[cfg(test)]
mod tests;
