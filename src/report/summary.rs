//! `summary.md`: what a run directory holds, and what it says of the
//! claims the experiment declares.
//!
//! - a header (experiment, status, wall time) from `plan.json` and
//!   `manifest.json`;
//! - **claims**: each `expect "..." : ...` statement of the experiment with
//!   its number and verdict (see `report::claims`). What a paper claims is
//!   written in the `.ngx` file, not recognised here from key names;
//! - a generic table of every scalar key's first and last value.
//!
//! Every file is optional: a crashed run (no manifest, a truncated
//! `results.jsonl`, no plan) gets a summary of what exists.

use super::claims::{evaluate_run, ClaimOutcome, Verdict};
use super::{read_results, write_err, Record, ReportError, Results, PLAN_JSON, RESULTS_JSONL};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// File name of the summary inside a run directory.
pub const SUMMARY_MD: &str = "summary.md";

/// Rows of the generic table before it is cut short.
const MAX_GENERIC_ROWS: usize = 80;

type Tags = BTreeMap<String, String>;

/// Writes `dir/summary.md` from whatever of `plan.json`, `manifest.json`,
/// `results.jsonl` and `examples/` exists (missing or malformed files are
/// left out of the summary, not errors). Fails only when the summary cannot
/// be written.
pub fn write_summary(dir: &Path) -> Result<PathBuf, ReportError> {
    let plan = std::fs::read_to_string(dir.join(PLAN_JSON))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let results = read_results(&dir.join(RESULTS_JSONL)).ok();
    write_summary_from(dir, plan.as_ref(), results.as_ref())
}

/// [`write_summary`] with the plan and results already read.
pub(super) fn write_summary_from(
    dir: &Path,
    plan: Option<&Value>,
    results: Option<&Results>,
) -> Result<PathBuf, ReportError> {
    let text = render_summary(dir, plan, results);
    let path = dir.join(SUMMARY_MD);
    std::fs::write(&path, text).map_err(write_err(&path))?;
    Ok(path)
}

/// The Markdown text of the summary (see the module documentation).
pub fn render_summary(dir: &Path, plan: Option<&Value>, results: Option<&Results>) -> String {
    let empty = Results::default();
    let results_or_empty = results.unwrap_or(&empty);
    let s = Summary::new(dir, plan, results_or_empty);
    let claims = plan.map_or_else(Vec::new, |p| evaluate_run(dir, p, results_or_empty));
    let mut out = String::new();
    s.header(&mut out, results.is_some());
    render_claims(&mut out, &claims);
    s.generic(&mut out);
    out
}

/// The "Claims" section: each declared claim, its number and its verdict.
fn render_claims(out: &mut String, claims: &[ClaimOutcome]) {
    if claims.is_empty() {
        return;
    }
    let held = claims.iter().filter(|c| !c.failed()).count();
    let _ = writeln!(
        out,
        "## Claims
"
    );
    let _ = writeln!(
        out,
        "{held} of {} claims declared in the experiment (`expect`) are supported by these results.\n",
        claims.len()
    );
    let rows: Vec<Vec<String>> = claims
        .iter()
        .map(|c| {
            let verdict = match &c.verdict {
                Verdict::Supported => "**supported**".to_string(),
                Verdict::NotSupported => "**not supported**".to_string(),
                v => v.to_string(),
            };
            vec![
                one_line(&c.text),
                c.at.clone().unwrap_or_default(),
                one_line(&c.value),
                verdict,
            ]
        })
        .collect();
    table(out, &["claim", "line:col", "value", "verdict"], &rows);
    for c in claims {
        if let Some(f) = &c.failing {
            let _ = writeln!(out, "- {}: fails {}", one_line(&c.text), one_line(f));
        }
    }
    if claims.iter().any(|c| c.failing.is_some()) {
        out.push('\n');
    }
}

// ---------------------------------------------------------------- series

/// One finite scalar value of a series.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    step: Option<u64>,
    value: f64,
}

/// The values of one key in one context (sweep tags), ordered by training
/// step (results without a step keep their file order).
#[derive(Clone, Debug)]
struct Series {
    key: String,
    ctx: Tags,
    points: Vec<Point>,
}

impl Series {
    fn first(&self) -> Option<Point> {
        self.points.first().copied()
    }
    fn last(&self) -> Option<Point> {
        self.points.last().copied()
    }
}

/// Groups the finite scalar records that `f` maps to `(key, context)` into
/// series, in the order they first appear.
fn collect_series<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    mut f: impl FnMut(&Record) -> Option<(String, Tags)>,
) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    let mut index: HashMap<(String, Tags), usize> = HashMap::new();
    for r in records {
        let Some(value) = r.value.as_scalar().filter(|v| v.is_finite()) else {
            continue;
        };
        let Some((key, ctx)) = f(r) else { continue };
        let i = *index.entry((key.clone(), ctx.clone())).or_insert_with(|| {
            out.push(Series {
                key,
                ctx,
                points: Vec::new(),
            });
            out.len() - 1
        });
        out[i].points.push(Point {
            step: r.step,
            value,
        });
    }
    for s in &mut out {
        s.points.sort_by_key(|p| p.step);
    }
    out
}

/// The record's sweep tags minus those spelled out in its key.
fn context(r: &Record) -> Tags {
    r.sweep
        .iter()
        .filter(|(_, v)| !crate::plan::claim::rendered(&r.key, v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn tags_label(t: &Tags) -> String {
    if t.is_empty() {
        return "—".into();
    }
    t.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------- summary

struct Summary<'a> {
    /// The experiment's name, from the plan.
    name: Option<String>,
    /// Sweep tags over repetitions, averaged in the tables.
    replicates: Vec<String>,
    manifest: Option<Value>,
    records: &'a [Record],
    skipped: usize,
}

impl<'a> Summary<'a> {
    fn new(dir: &Path, plan: Option<&Value>, results: &'a Results) -> Self {
        // Only a manifest of this plan; `running` told apart from killed.
        let manifest = super::manifest::trusted_json(dir);
        Summary {
            name: plan.and_then(|p| p["experiment"]["name"].as_str().map(str::to_string)),
            replicates: plan.map(super::claims::plan_replicates).unwrap_or_default(),
            manifest,
            records: &results.records,
            skipped: results.skipped,
        }
    }

    fn header(&self, out: &mut String, have_results: bool) {
        let m = self.manifest.as_ref();
        let name = self
            .name
            .clone()
            .or_else(|| m.and_then(|m| m["experiment"].as_str().map(str::to_string)))
            .unwrap_or_else(|| "(unknown experiment: no plan.json)".into());
        let _ = writeln!(out, "# {name}\n");
        match m.and_then(|m| m["status"].as_str()) {
            Some(s) => {
                let _ = writeln!(out, "- status: {}", one_line(s));
            }
            None => {
                let _ = writeln!(
                    out,
                    "- status: unknown (no readable manifest.json of this plan)"
                );
            }
        }
        if let Some(t) = m.and_then(|m| m["wall_time_s"].as_f64()) {
            let _ = writeln!(out, "- wall time: {} s", num(t));
        }
        if let Some(m) = m {
            let field = |k: &str| m[k].as_str().unwrap_or("?").to_string();
            let _ = writeln!(
                out,
                "- backend: {} on {}, {}",
                field("backend"),
                field("device"),
                field("dtype")
            );
        }
        if !have_results {
            let _ = writeln!(out, "- no readable results.jsonl");
        } else {
            let nonfinite = self
                .records
                .iter()
                .filter(|r| r.value.as_scalar().is_some_and(|v| !v.is_finite()))
                .count();
            let _ = write!(out, "- {} results", self.records.len());
            if self.skipped > 0 {
                let _ = write!(
                    out,
                    ", {} malformed line{} skipped",
                    self.skipped,
                    if self.skipped == 1 { "" } else { "s" }
                );
            }
            if nonfinite > 0 {
                let _ = write!(out, ", {nonfinite} non-finite values left out below");
            }
            out.push('\n');
        }
        if m.and_then(|m| m["status"].as_str())
            .is_some_and(|s| s != "ok")
        {
            let _ = writeln!(
                out,
                "\nThe run did not finish: everything below uses only what was computed before it stopped."
            );
        }
        out.push('\n');
    }

    fn generic(&self, out: &mut String) {
        let reps = &self.replicates;
        let mut series = collect_series(self.records, |r| {
            let mut ctx = context(r);
            ctx.retain(|k, _| !reps.contains(k));
            Some((r.key.clone(), ctx))
        });
        // Rows of one key together, keys in the order they first appear.
        let keys: Vec<String> = unique(series.iter().map(|s| s.key.clone()));
        series.sort_by_key(|s| keys.iter().position(|k| *k == s.key));
        let tensors = self
            .records
            .iter()
            .filter(|r| r.value.as_scalar().is_none())
            .count();
        if series.is_empty() && tensors == 0 {
            let _ = writeln!(out, "No results yet.");
            return;
        }
        let _ = writeln!(out, "## All scalar results\n");
        let _ = writeln!(
            out,
            "Every scalar key per sweep: how many values, the first and the last (by training step where there is one){}.",
            if reps.is_empty() {
                String::new()
            } else {
                format!(
                    "; over the replicates ({}), the mean ± one standard error",
                    reps.join(", ")
                )
            }
        );
        if tensors > 0 {
            let _ = writeln!(
                out,
                "{tensors} vector or matrix results are not shown (see results.csv)."
            );
        }
        out.push('\n');
        let rows: Vec<Vec<String>> = series
            .iter()
            .take(MAX_GENERIC_ROWS)
            .map(|s| {
                vec![
                    code(&s.key),
                    tags_label(&s.ctx),
                    s.points.len().to_string(),
                    if reps.is_empty() {
                        point(s.first())
                    } else {
                        replicated_point(s, true)
                    },
                    if reps.is_empty() {
                        point(s.last())
                    } else {
                        replicated_point(s, false)
                    },
                ]
            })
            .collect();
        table(
            out,
            &["key", "sweep", "n", "first (step)", "last (step)"],
            &rows,
        );
        if series.len() > MAX_GENERIC_ROWS {
            let _ = writeln!(
                out,
                "… and {} more rows in results.csv.\n",
                series.len() - MAX_GENERIC_ROWS
            );
        }
    }
}

// ---------------------------------------------------------------- text

/// Distinct items in first-appearance order.
fn unique<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Four significant digits, trailing zeros dropped; scientific outside
/// [1e-3, 1e5).
fn num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (1e-3..1e5).contains(&a) {
        let d = (3 - a.log10().floor() as i32).max(0) as usize;
        trim_zeros(format!("{v:.d$}"))
    } else {
        let s = format!("{v:.3e}");
        match s.split_once('e') {
            Some((m, e)) => format!("{}e{e}", trim_zeros(m.to_string())),
            None => s,
        }
    }
}

/// `1.500` → `1.5`, `2.000` → `2`.
fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn point(p: Option<Point>) -> String {
    match p {
        None => "".into(),
        Some(Point {
            step: Some(s),
            value,
            ..
        }) => format!("{} ({s})", num(value)),
        Some(p) => num(p.value),
    }
}

/// Over replicates: the mean ± one standard error of the values at the
/// series' first (or last) step, `n` of them.
fn replicated_point(s: &Series, first: bool) -> String {
    let Some(at) = (if first { s.first() } else { s.last() }) else {
        return String::new();
    };
    let v: Vec<f64> = s
        .points
        .iter()
        .filter(|p| p.step == at.step)
        .map(|p| p.value)
        .collect();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let spread = if v.len() > 1 {
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        format!(" ± {}", num((var / n).sqrt()))
    } else {
        String::new()
    };
    let step = at.step.map_or(String::new(), |s| format!(" ({s})"));
    format!("{}{spread}{step}", num(mean))
}

fn code(s: &str) -> String {
    format!("`{}`", s.replace('`', "'"))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A Markdown table followed by a blank line.
fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    let cell = |s: &str| one_line(s).replace('|', "\\|");
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    out.push_str(&line(head.iter().map(|h| cell(h)).collect()));
    out.push_str(&line(head.iter().map(|_| "---".to_string()).collect()));
    for r in rows {
        out.push_str(&line(r.iter().map(|c| cell(c)).collect()));
    }
    out.push('\n');
}
