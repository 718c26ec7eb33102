//! `summary.md`: what a run directory says about the papers' claims.
//!
//! The sections are chosen from the data present, never from the
//! experiment's name, so any experiment gets whatever applies:
//!
//! - a header (experiment, status, wall time) from `plan.json` and
//!   `manifest.json`;
//! - **NTK alignment** (Baratin et al. 2021) when keys `align/...` exist:
//!   first and last alignment per run, whether it rises, how differently the
//!   layers align, whether the effective rank falls;
//! - **EKFAC vs KFAC** (George et al. 2018) when `rel_error/...` keys name
//!   both KFAC and a refitted EKFAC: the theorem "refitted EKFAC is never
//!   further from the Fisher than KFAC" checked at every checkpoint; and,
//!   when training runs with different optimisers log a loss, their losses
//!   and wall times and whether EKFAC optimises at least as fast as KFAC;
//! - **lazy vs hasty training** (George et al. 2022) when per-example
//!   tracking exists: per-group learning times and, across runs of different
//!   scale α, whether easy or clean examples are learned comparatively
//!   earlier in the hasty regime;
//! - a generic table of every scalar key's first and last value.
//!
//! Every file is optional: a crashed run (no manifest, a truncated
//! `results.jsonl`, no plan) gets a summary of what exists.

use super::{read_results, write_err, Record, ReportError, Results, PLAN_JSON, RESULTS_JSONL};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// File name of the summary inside a run directory.
pub const SUMMARY_MD: &str = "summary.md";

/// Rows of the generic table before it is cut short.
const MAX_GENERIC_ROWS: usize = 80;
/// Layers "align differently" when the spread of their final alignments
/// exceeds this fraction of their mean.
const LAYER_SPREAD: f64 = 0.1;
/// A group is "learned" once its accuracy reaches this.
const GROUP_LEARNED: f64 = 0.5;

type Tags = BTreeMap<String, String>;

/// Context tag holding the layer of a per-layer series (a name no sweep
/// variable can have).
const LAYER: &str = "\u{0}layer";

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
    let s = Summary::new(dir, plan, results.unwrap_or(&empty));
    let mut out = String::new();
    s.header(&mut out, results.is_some());
    s.alignment(&mut out);
    s.ekfac(&mut out);
    s.lazy_hasty(&mut out);
    s.generic(&mut out);
    out
}

// ---------------------------------------------------------------- plan

/// How a training run's output was scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Regime {
    /// `plain` (α = 1) or `scaled(alpha)`.
    Alpha(f64),
    Linearized,
}

impl Regime {
    /// α, with linearised training as α = ∞ (its limit).
    fn alpha(self) -> f64 {
        match self {
            Regime::Alpha(a) => a,
            Regime::Linearized => f64::INFINITY,
        }
    }

    fn describe(self) -> String {
        match self {
            Regime::Alpha(a) => format!("α = {}", num(a)),
            Regime::Linearized => "linearised".into(),
        }
    }
}

/// One `train` step of the plan.
#[derive(Clone, Debug)]
struct Run {
    id: u64,
    sweep: Tags,
    regime: Option<Regime>,
    /// `sgd`, `adam`, `ngd(fim = KFAC)`, ...
    optimizer: Option<String>,
    /// The Fisher structure of a natural-gradient optimiser.
    fim: Option<String>,
}

#[derive(Debug, Default)]
struct PlanInfo {
    name: Option<String>,
    dtype: Option<String>,
    runs: Vec<Run>,
    /// Step id → id of the training run it belongs to (the run itself and
    /// the steps of its hooks).
    owner: HashMap<u64, u64>,
    /// Layer names of every model, to recognise per-layer tags.
    layers: BTreeSet<String>,
}

impl PlanInfo {
    fn parse(plan: Option<&Value>) -> PlanInfo {
        let mut info = PlanInfo::default();
        let Some(plan) = plan else { return info };
        info.name = plan["experiment"]["name"].as_str().map(str::to_string);
        info.dtype = plan["experiment"]["dtype"].as_str().map(str::to_string);
        for step in plan["steps"].as_array().into_iter().flatten() {
            let Some(id) = step["id"].as_u64() else {
                continue;
            };
            if let Some(t) = step["hook"]["train"].as_u64() {
                info.owner.insert(id, t);
            }
            match step["op"].as_str() {
                Some("train") => {
                    info.owner.insert(id, id);
                    info.runs.push(parse_run(id, step));
                }
                Some("model") => {
                    for l in step["spec"]["layers"].as_array().into_iter().flatten() {
                        if let Some(n) = l["name"].as_str() {
                            info.layers.insert(n.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        info
    }

    fn run(&self, id: u64) -> Option<&Run> {
        self.runs.iter().find(|r| r.id == id)
    }

    /// The training run a record was measured in.
    fn run_of(&self, r: &Record) -> Option<u64> {
        self.owner.get(&r.step_id).copied()
    }

    /// A run's name: its sweep tags, or `train #id`.
    fn label(&self, id: u64) -> String {
        match self.run(id) {
            Some(r) if !r.sweep.is_empty() => tags_label(&r.sweep),
            _ => format!("train #{id}"),
        }
    }

    fn is_layer_tag(&self, name: &str, value: &str) -> bool {
        name == "layer" || self.layers.contains(value)
    }
}

fn parse_run(id: u64, step: &Value) -> Run {
    let sweep = step["sweep"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let config = &step["config"];
    let regime = match config["mode"]["kind"].as_str() {
        Some("plain") => Some(Regime::Alpha(1.0)),
        Some("scaled") => config["mode"]["alpha"].as_f64().map(Regime::Alpha),
        Some("linearized") => Some(Regime::Linearized),
        _ => None,
    };
    let opt = &config["optimizer"];
    let fim = opt["fim"]["kind"].as_str().map(str::to_string);
    let optimizer = opt["kind"].as_str().map(|k| match &fim {
        Some(f) => format!("{k}(fim = {f})"),
        None => k.to_string(),
    });
    Run {
        id,
        sweep,
        regime,
        optimizer,
        fim,
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
    fn at(&self, step: u64) -> Option<f64> {
        self.points
            .iter()
            .rev()
            .find(|p| p.step == Some(step))
            .map(|p| p.value)
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

/// Whether a tag's value is spelled out as a whole `/`-segment of the key
/// (as `{S}` in `rel_error/{S}`): such a tag is redundant with the key.
fn rendered(key: &str, value: &str) -> bool {
    !value.is_empty() && key.split('/').any(|s| s == value)
}

/// The record's sweep tags minus those spelled out in its key.
fn context(r: &Record) -> Tags {
    r.sweep
        .iter()
        .filter(|(_, v)| !rendered(&r.key, v))
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
    dir: &'a Path,
    plan: PlanInfo,
    manifest: Option<Value>,
    records: &'a [Record],
    skipped: usize,
}

impl<'a> Summary<'a> {
    fn new(dir: &'a Path, plan: Option<&Value>, results: &'a Results) -> Self {
        // Only a manifest of this plan; `running` told apart from killed.
        let manifest = super::manifest::trusted_json(dir);
        Summary {
            dir,
            plan: PlanInfo::parse(plan),
            manifest,
            records: &results.records,
            skipped: results.skipped,
        }
    }

    fn header(&self, out: &mut String, have_results: bool) {
        let m = self.manifest.as_ref();
        let name = self
            .plan
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

    // ------------------------------------------------------------ alignment

    fn alignment(&self, out: &mut String) {
        let is_align = |k: &str| k == "align" || k.starts_with("align/");
        let layer_tag = |r: &Record| {
            r.sweep
                .iter()
                .find(|(k, v)| self.plan.is_layer_tag(k, v))
                .map(|(k, v)| (k.clone(), v.clone()))
        };
        let total = collect_series(self.records, |r| {
            (is_align(&r.key) && layer_tag(r).is_none()).then(|| (r.key.clone(), context(r)))
        });
        // Per-layer series: key = family (the key without the layer
        // segment), the layer kept in the context under LAYER.
        let per_layer = collect_series(self.records, |r| {
            if !is_align(&r.key) {
                return None;
            }
            let (tag, layer) = layer_tag(r)?;
            let family = r
                .key
                .split('/')
                .filter(|s| *s != layer)
                .collect::<Vec<_>>()
                .join("/");
            let mut ctx = context(r);
            ctx.remove(&tag);
            ctx.insert(LAYER.into(), layer);
            Some((family, ctx))
        });
        if total.is_empty() && per_layer.is_empty() {
            return;
        }
        let _ = writeln!(out, "## NTK alignment (Baratin et al. 2021)\n");
        let _ = writeln!(
            out,
            "Alignment is the kernel–target alignment yᵀKy / (‖K‖_F ‖y‖²) of the NTK K with the one-hot labels y, centred over examples where the experiment asks (1: the kernel points along the targets); \
             first and last are its values at a run's first and last checkpoint.\n"
        );
        if !total.is_empty() {
            let rows: Vec<Vec<String>> = total
                .iter()
                .map(|s| {
                    vec![
                        tags_label(&s.ctx),
                        code(&s.key),
                        point(s.first()),
                        point(s.last()),
                    ]
                })
                .collect();
            table(out, &["run", "key", "first (step)", "last (step)"], &rows);
        }
        let a = alignment_claims(&total, &per_layer);
        let rank = collect_series(self.records, |r| {
            (r.key == "effective_rank").then(|| (r.key.clone(), context(r)))
        });
        let trace = collect_series(self.records, |r| {
            (r.key == "trace").then(|| (r.key.clone(), context(r)))
        });
        let rank: Vec<&Series> = rank.iter().filter(|s| s.points.len() >= 2).collect();
        let falling = rank
            .iter()
            .filter(|s| matches!((s.first(), s.last()), (Some(a), Some(b)) if b.value < a.value))
            .count();

        let claim1 = "alignment rises during training";
        match &a.rising {
            None => claim(
                out,
                1,
                claim1,
                "not tested: no total (not per-layer) alignment key",
            ),
            Some((k, _, 0)) => claim(
                out,
                1,
                claim1,
                &format!("not tested: `{k}` has fewer than 2 checkpoints per run"),
            ),
            Some((k, rising, n)) => claim(
                out,
                1,
                claim1,
                &format!(
                    "{} — `{k}` last > first in {rising} of {n} runs",
                    yes_no(rising == n)
                ),
            ),
        }
        let claim2 = "layers align differently";
        if a.layers.is_empty() {
            claim(
                out,
                2,
                claim2,
                "not tested: no per-layer alignment (`align/.../{layer}`) of two or more layers",
            );
        } else {
            let differ = a.layers.iter().filter(|l| l.rel > LAYER_SPREAD).count();
            claim(
                out,
                2,
                claim2,
                &format!(
                    "{} — final spread (max − min) over layers above {} % of their mean in {differ} of {} runs",
                    yes_no(differ == a.layers.len()),
                    num(LAYER_SPREAD * 100.0),
                    a.layers.len()
                ),
            );
        }
        let claim3 = "the NTK's effective rank falls during training";
        if rank.is_empty() {
            claim(
                out,
                3,
                claim3,
                "not tested: no `effective_rank` measured at two or more checkpoints",
            );
        } else {
            claim(
                out,
                3,
                claim3,
                &format!(
                    "{} — last < first in {falling} of {} runs",
                    yes_no(falling == rank.len()),
                    rank.len()
                ),
            );
        }
        out.push('\n');

        if !a.layers.is_empty() {
            let names: Vec<&str> = unique(
                a.layers
                    .iter()
                    .flat_map(|l| l.finals.iter().map(|(n, _)| n.as_str())),
            );
            let mut head = vec!["run".to_string(), "key".to_string()];
            head.extend(names.iter().map(|l| format!("final {l}")));
            head.extend(["spread".to_string(), "spread / mean".to_string()]);
            let rows: Vec<Vec<String>> = a
                .layers
                .iter()
                .map(|l| {
                    let mut row = vec![tags_label(&l.ctx), code(&l.family)];
                    for n in &names {
                        row.push(
                            l.finals
                                .iter()
                                .find(|(m, _)| m == n)
                                .map_or(String::new(), |(_, v)| num(*v)),
                        );
                    }
                    row.push(num(l.spread));
                    row.push(num(l.rel));
                    row
                })
                .collect();
            let head: Vec<&str> = head.iter().map(String::as_str).collect();
            table(out, &head, &rows);
        }
        if !rank.is_empty() {
            let _ = writeln!(
                out,
                "Effective rank is the exponential of the entropy of K's normalised eigenvalues; tr K is the kernel's trace (its overall scale).\n"
            );
            let rows: Vec<Vec<String>> = rank
                .iter()
                .map(|s| {
                    let t = trace.iter().find(|t| t.ctx == s.ctx);
                    vec![
                        tags_label(&s.ctx),
                        arrow(s.first(), s.last()),
                        t.map_or(String::new(), |t| arrow(t.first(), t.last())),
                    ]
                })
                .collect();
            table(
                out,
                &["run", "effective rank first → last", "tr K first → last"],
                &rows,
            );
        }
    }

    // ------------------------------------------------------------ EKFAC

    fn ekfac(&self, out: &mut String) {
        let errs = self.rel_errors();
        let has = |c: Kind| errs.iter().any(|e| e.kind == c);
        let theorem = has(Kind::Kfac) && has(Kind::EkfacRefit);
        let opt = self.optimizer_runs();
        let kfac_runs = opt
            .as_ref()
            .is_some_and(|o| o.runs.iter().any(|r| r.family.is_some()));
        if !theorem && opt.is_none() {
            return;
        }
        if theorem || kfac_runs {
            let _ = writeln!(out, "## EKFAC vs KFAC (George et al. 2018)\n");
        }
        if theorem {
            self.ekfac_theorem(out, &errs);
        }
        if let Some(o) = opt {
            let level = if theorem || kfac_runs { "###" } else { "##" };
            self.optimizers(out, &o, level);
        }
    }

    fn rel_errors(&self) -> Vec<RelError> {
        let mut out = Vec::new();
        for r in self.records {
            let mut segs = r.key.split('/');
            if segs.next() != Some("rel_error") {
                continue;
            }
            let Some(value) = r.value.as_scalar().filter(|v| v.is_finite()) else {
                continue;
            };
            let name = match segs.next() {
                Some(s) if !s.is_empty() => s.to_string(),
                _ => match r.sweep.values().find(|v| structure_kind(v).is_some()) {
                    Some(v) => v.clone(),
                    None => continue,
                },
            };
            let Some(kind) = structure_kind(&name) else {
                continue;
            };
            // The checkpoint's context: every tag but the one naming the
            // structure (per-layer tags stay, so per-layer errors pair only
            // with per-layer errors).
            let mut ctx: Tags = r.sweep.clone();
            ctx.retain(|_, v| *v != name);
            // Results of different training runs never pair, even when no
            // sweep tag tells them apart.
            if let Some(run) = self.plan.run_of(r) {
                ctx.insert("\u{0}train".into(), format!("#{run}"));
            }
            let rest: Vec<&str> = segs.collect();
            let label = if rest.is_empty() {
                name.clone()
            } else {
                ctx.insert("\u{0}key".into(), rest.join("/"));
                format!("{name}/{}", rest.join("/"))
            };
            out.push(RelError {
                name,
                label,
                kind,
                ctx,
                step: r.step,
                value,
            });
        }
        out
    }

    fn ekfac_theorem(&self, out: &mut String, errs: &[RelError]) {
        let _ = writeln!(
            out,
            "Relative error is ‖F̂ − F‖_F / ‖F‖_F of each approximation F̂ against the reference Fisher F it was measured with, over all checkpoints (run × training step; a per-layer key is its own row).\n"
        );
        let labels = unique(errs.iter().map(|e| e.label.as_str()));
        let rows: Vec<Vec<String>> = labels
            .iter()
            .map(|n| {
                let v: Vec<f64> = errs
                    .iter()
                    .filter(|e| e.label == *n)
                    .map(|e| e.value)
                    .collect();
                let (lo, hi, mean) = spread(v.iter().copied());
                vec![code(n), v.len().to_string(), num(mean), num(lo), num(hi)]
            })
            .collect();
        table(
            out,
            &["structure", "checkpoints", "mean error", "min", "max"],
            &rows,
        );
        let tol = match self.plan.dtype.as_deref() {
            Some("f32") => 1e-5,
            _ => 1e-9,
        };
        let (n, bad) = ekfac_violations(errs, tol);
        let verdict = if n == 0 {
            "not tested: KFAC and refitted EKFAC were never measured at the same checkpoint".into()
        } else if bad.is_empty() {
            format!(
                "holds at {} (tolerance {} relative{})",
                if n == 1 {
                    "the one checkpoint".to_string()
                } else {
                    format!("all {n} checkpoints")
                },
                num(tol),
                if tol > 1e-9 { ", for f32 results" } else { "" }
            )
        } else {
            let worst = bad
                .iter()
                .max_by(|a, b| (a.1 / a.2).total_cmp(&(b.1 / b.2)))
                .map(|(at, e, k)| format!("worst at {at}: EKFAC {} > KFAC {}", num(*e), num(*k)))
                .unwrap_or_default();
            format!(
                "**VIOLATED — this is a bug**: at {} of {n} checkpoints ({worst})",
                bad.len()
            )
        };
        let _ = writeln!(
            out,
            "- Theorem, refitted EKFAC is never further from the Fisher than KFAC (same eigenbasis, optimal diagonal): {verdict}."
        );
        let mean_of = |k: Kind| {
            let v: Vec<f64> = errs
                .iter()
                .filter(|e| e.kind == k && e.label == e.name)
                .map(|e| e.value)
                .collect();
            (!v.is_empty()).then(|| spread(v.into_iter()).2)
        };
        let mut extra = Vec::new();
        if let Some(m) = mean_of(Kind::Diag) {
            extra.push(format!("Diag {}", num(m)));
        }
        if let Some(m) = mean_of(Kind::EkfacNoRefit) {
            extra.push(format!(
                "EKFAC without refit (KFAC's eigenvalues) {}",
                num(m)
            ));
        }
        if let Some(m) = mean_of(Kind::EkfacStale) {
            extra.push(format!(
                "EKFAC with the initial eigenbasis, refitted (a stale basis) {}",
                num(m)
            ));
        }
        if !extra.is_empty() {
            let _ = writeln!(out, "- Mean errors of the others: {}.", extra.join("; "));
        }
        out.push('\n');
    }

    /// Training runs that log a loss and differ in their optimiser.
    fn optimizer_runs(&self) -> Option<OptRuns> {
        let key = ["loss/train", "train/loss"]
            .into_iter()
            .find(|k| self.records.iter().any(|r| r.key == *k))?;
        let series = collect_series(self.records, |r| {
            let run = self.plan.run_of(r).filter(|_| r.key == key)?;
            Some((
                r.key.clone(),
                Tags::from([("run".to_string(), run.to_string())]),
            ))
        });
        let mut runs = Vec::new();
        for s in series {
            let Some(id) = s.ctx.get("run").and_then(|v| v.parse::<u64>().ok()) else {
                continue;
            };
            let Some(run) = self.plan.run(id) else {
                continue;
            };
            let family = match run.fim.as_deref() {
                Some("KFAC") => Some(Family::Kfac),
                Some("EKFAC") => Some(Family::Ekfac),
                Some(_) => None,
                None if run.optimizer.is_some() => None,
                None => run
                    .sweep
                    .values()
                    .find_map(|v| match v.to_lowercase().as_str() {
                        "kfac" => Some(Family::Kfac),
                        "ekfac" => Some(Family::Ekfac),
                        _ => None,
                    }),
            };
            runs.push(OptRun {
                run: run.clone(),
                series: s,
                family,
            });
        }
        let optimizers: BTreeSet<String> = runs
            .iter()
            .map(|r| {
                r.run
                    .optimizer
                    .clone()
                    .unwrap_or_else(|| self.plan.label(r.run.id))
            })
            .collect();
        (runs.len() >= 2 && optimizers.len() >= 2).then_some(OptRuns {
            key: key.to_string(),
            runs,
        })
    }

    fn optimizers(&self, out: &mut String, o: &OptRuns, level: &str) {
        let _ = writeln!(out, "{level} Training loss per optimiser\n");
        let common = common_steps(o.runs.iter().map(|r| &r.series));
        let picks: Vec<u64> = if common.len() >= 4 {
            let n = common.len();
            let mut p: Vec<u64> = [n / 4, n / 2, 3 * n / 4]
                .iter()
                .map(|&i| common[i])
                .collect();
            p.dedup();
            p
        } else {
            Vec::new()
        };
        let _ = writeln!(
            out,
            "`{}` per run: at fixed steps, at the run's last step, and its mean over the {} steps every run measured (the area under the loss curve); time is the run's training time (optimiser steps only; hooks and tracking excluded; the whole step's wall time for older results).\n",
            o.key,
            common.len()
        );
        let mut head = vec!["run".to_string(), "optimiser".to_string()];
        head.extend(picks.iter().map(|s| format!("step {s}")));
        head.extend([
            "final (step)".into(),
            "mean over common steps".into(),
            "training time s".into(),
        ]);
        let rows: Vec<Vec<String>> = o
            .runs
            .iter()
            .map(|r| {
                let mut row = vec![
                    self.plan.label(r.run.id),
                    r.run.optimizer.clone().unwrap_or_else(|| "?".into()),
                ];
                for s in &picks {
                    row.push(r.series.at(*s).map_or("".into(), num));
                }
                row.push(point(r.series.last()));
                row.push(mean_at(&r.series, &common).map_or("".into(), num));
                row.push(self.wall_time(r.run.id).map_or("".into(), num));
                row
            })
            .collect();
        let head: Vec<&str> = head.iter().map(String::as_str).collect();
        table(out, &head, &rows);

        let claim_text = "EKFAC optimises at least as fast as KFAC per step";
        let ekfac: Vec<&OptRun> = o
            .runs
            .iter()
            .filter(|r| r.family == Some(Family::Ekfac))
            .collect();
        let kfac: Vec<&OptRun> = o
            .runs
            .iter()
            .filter(|r| r.family == Some(Family::Kfac))
            .collect();
        if ekfac.is_empty() || kfac.is_empty() {
            if level == "###" {
                let _ = writeln!(
                    out,
                    "- Claim, {claim_text}: not tested (needs runs with `ngd(fim = KFAC)` and `ngd(fim = EKFAC)`).\n"
                );
            }
            return;
        }
        let mut ok = true;
        let mut parts = Vec::new();
        for e in &ekfac {
            // The KFAC run sharing the most sweep tags.
            let Some(k) = kfac.iter().max_by_key(|k| {
                k.run
                    .sweep
                    .iter()
                    .filter(|(t, v)| e.run.sweep.get(*t) == Some(v))
                    .count()
            }) else {
                continue;
            };
            let steps = common_steps([&e.series, &k.series]);
            let (Some(me), Some(mk), Some(&last)) = (
                mean_at(&e.series, &steps),
                mean_at(&k.series, &steps),
                steps.last(),
            ) else {
                parts.push(format!(
                    "{} and {} share no step",
                    self.plan.label(e.run.id),
                    self.plan.label(k.run.id)
                ));
                ok = false;
                continue;
            };
            ok &= me <= mk;
            parts.push(format!(
                "mean loss over {} common steps EKFAC {} {} KFAC {}; at step {last} EKFAC {} vs KFAC {}",
                steps.len(),
                num(me),
                if me <= mk { "≤" } else { ">" },
                num(mk),
                e.series.at(last).map_or("?".into(), num),
                k.series.at(last).map_or("?".into(), num),
            ));
        }
        let _ = writeln!(
            out,
            "- Claim, {claim_text} (judged on the mean loss over common steps): {} — {}.\n",
            yes_no(ok),
            parts.join("; ")
        );
    }

    /// Time of training run `id`: its optimiser-step clock (hooks
    /// excluded) where results carry it, else the manifest's wall time,
    /// else the span of its results' time stamps.
    fn wall_time(&self, id: u64) -> Option<f64> {
        let clock = self
            .records
            .iter()
            .filter(|r| self.plan.run_of(r) == Some(id))
            .filter_map(|r| r.train_time_s)
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
        if clock.is_some() {
            return clock;
        }
        let from_manifest = self.manifest.as_ref().and_then(|m| {
            m["steps"]
                .as_array()?
                .iter()
                .find(|s| s["id"].as_u64() == Some(id))?["wall_s"]
                .as_f64()
        });
        from_manifest.or_else(|| {
            let times: Vec<f64> = self
                .records
                .iter()
                .filter(|r| self.plan.run_of(r) == Some(id))
                .filter_map(|r| r.time_s)
                .collect();
            let (lo, hi, _) = spread(times.iter().copied());
            (times.len() >= 2).then_some(hi - lo)
        })
    }

    // ------------------------------------------------------------ lazy vs hasty

    fn lazy_hasty(&self, out: &mut String) {
        let acc = collect_series(self.records, |r| {
            if r.key != "examples/accuracy" {
                return None;
            }
            let run = self.plan.run_of(r).unwrap_or(r.step_id);
            let group = r
                .sweep
                .get("group")
                .cloned()
                .unwrap_or_else(|| "all".into());
            Some((group, Tags::from([("run".to_string(), run.to_string())])))
        });
        let mut ids: Vec<u64> = acc
            .iter()
            .filter_map(|s| s.ctx.get("run")?.parse().ok())
            .collect();
        ids.extend(example_files(self.dir));
        let ids = unique(ids);
        if ids.is_empty() {
            return;
        }
        let runs: Vec<Tracked> = ids
            .iter()
            .map(|&id| {
                let groups: Vec<&Series> = acc
                    .iter()
                    .filter(|s| s.ctx.get("run") == Some(&id.to_string()))
                    .collect();
                self.tracked(id, &groups)
            })
            .collect();

        let (lo, hi) = runs
            .iter()
            .filter_map(|t| t.regime.map(Regime::alpha))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), a| {
                (lo.min(a), hi.max(a))
            });
        // The claim needs runs of different scale; otherwise this is only
        // a per-example learning report.
        let compare = lo < hi;
        if compare {
            let _ = writeln!(out, "## Lazy vs hasty training (George et al. 2022)\n");
        } else {
            let _ = writeln!(out, "## Per-example learning\n");
        }
        let _ = writeln!(
            out,
            "An example's learning time is the first checkpoint from which it stays correctly classified with probability above 1/2 (loss below ln 2) to the end of training (never: one checkpoint interval after the last). \
             ρ is the Spearman rank correlation between learning time and difficulty (positive: harder examples are learned later). \
             The gap is the median learning time of the hardest difficulty bin minus the easiest (without difficulties: the step at which `flipped` minus `clean` reach {} % accuracy), divided by the run's median learning time, so runs of different speeds compare.\n",
            num(GROUP_LEARNED * 100.0)
        );
        let rows: Vec<Vec<String>> = runs
            .iter()
            .map(|t| {
                vec![
                    self.plan.label(t.id),
                    t.regime.map_or("?".into(), Regime::describe),
                    t.checkpoints.to_string(),
                    t.n.to_string(),
                    t.median.map_or("".into(), num),
                    t.never.map_or("".into(), |n| n.to_string()),
                    t.rho.map_or("".into(), num),
                    t.gap
                        .map_or("".into(), |g| format!("{} ({})", g.show(), g.how)),
                ]
            })
            .collect();
        table(
            out,
            &[
                "run",
                "regime",
                "checkpoints",
                "examples",
                "median learning time",
                "never learned",
                "ρ",
                "normalised gap",
            ],
            &rows,
        );

        let groups: Vec<&str> = unique(acc.iter().map(|s| s.key.as_str()));
        if !groups.is_empty() {
            let _ = writeln!(
                out,
                "First step at which each group's accuracy reaches {} %:\n",
                num(GROUP_LEARNED * 100.0)
            );
            let mut head = vec!["group".to_string()];
            head.extend(runs.iter().map(|t| self.plan.label(t.id)));
            let head: Vec<&str> = head.iter().map(String::as_str).collect();
            let rows: Vec<Vec<String>> = groups
                .iter()
                .map(|g| {
                    let mut row = vec![g.to_string()];
                    for t in &runs {
                        row.push(match t.t50.iter().find(|(n, _)| n == g) {
                            Some((_, Some(s))) => s.to_string(),
                            Some((_, None)) => "not reached".into(),
                            None => "".into(),
                        });
                    }
                    row
                })
                .collect();
            table(out, &head, &rows);
        }

        let claim_text = "in the hasty regime (smallest α) easy/clean examples are learned earlier, relative to hard/noisy ones, than in the lazy regime (largest α or linearised)";
        let with_regime: Vec<&Tracked> = runs.iter().filter(|t| t.regime.is_some()).collect();
        let alpha = |t: &Tracked| t.regime.map_or(f64::NAN, Regime::alpha);
        let hasty = with_regime
            .iter()
            .min_by(|a, b| alpha(a).total_cmp(&alpha(b)));
        let lazy = with_regime
            .iter()
            .max_by(|a, b| alpha(a).total_cmp(&alpha(b)));
        let verdict = match (hasty, lazy) {
            (Some(h), Some(l)) if alpha(h) < alpha(l) => match (h.gap, l.gap) {
                (Some(gh), Some(gl)) if gh.how == gl.how => format!(
                    "{} — normalised gap ({}) {} for the hasty run {} ({}) {} {} for the lazy run {} ({}){}",
                    yes_no(gh.value > gl.value),
                    gh.how,
                    gh.show(),
                    self.plan.label(h.id),
                    h.regime.map_or("?".into(), Regime::describe),
                    if gh.value > gl.value { ">" } else { "≤" },
                    gl.show(),
                    self.plan.label(l.id),
                    l.regime.map_or("?".into(), Regime::describe),
                    match (h.rho, l.rho) {
                        (Some(rh), Some(rl)) => format!("; ρ {} (hasty) vs {} (lazy)", num(rh), num(rl)),
                        _ => String::new(),
                    }
                ),
                _ => "not tested: the hasty and lazy runs lack a comparable gap (difficulty bins or flipped/clean groups)".into(),
            },
            _ => String::new(),
        };
        if compare {
            let _ = writeln!(out, "- Claim, {claim_text}: {verdict}.\n");
        } else {
            let _ = writeln!(
                out,
                "The lazy vs hasty comparison (George et al. 2022) needs two or more tracked runs that differ by mode (α).\n"
            );
        }
    }

    fn tracked(&self, id: u64, groups: &[&Series]) -> Tracked {
        let examples_dir = self.dir.join("examples");
        let checkpoints = std::fs::read(examples_dir.join(format!("train_{id}.jsonl")))
            .map(|b| parse_examples(&b))
            .unwrap_or_default();
        let lt = learning_times(&checkpoints);
        let n = lt.len();
        let med = median(&lt);
        let end = censor_step(checkpoints.iter().map(|c| c.step));
        let never = (n > 0).then(|| {
            lt.iter()
                .filter(|&&t| Some(t) == end.map(|e| e as f64))
                .count()
        });
        let difficulty = std::fs::read(examples_dir.join(format!("train_{id}.difficulty.json")))
            .ok()
            .and_then(|b| parse_difficulty(&b))
            .filter(|d| d.len() == Some(n) && n > 0);
        let rho = difficulty.as_ref().and_then(|d| {
            let hardness: Vec<f64> = match (&d.score, &d.bin) {
                (Some(s), _) => s.iter().map(|x| -x).collect(),
                (None, Some(b)) => b.iter().map(|&x| x as f64).collect(),
                (None, None) => return None,
            };
            spearman(&lt, &hardness)
        });
        let never_t = end.map(|e| e as f64);
        let gap = difficulty
            .as_ref()
            .and_then(|d| {
                let bin = d.bin.as_deref()?;
                let g = bin_gap(&lt, bin)?;
                let hardest = *bin.iter().max()?;
                let hard: Vec<f64> = lt
                    .iter()
                    .zip(bin)
                    .filter(|(_, &b)| b == hardest)
                    .map(|(t, _)| *t)
                    .collect();
                Some(Gap {
                    value: g,
                    how: "hardest − easiest bin",
                    censored: median(&hard) == never_t,
                })
            })
            .or_else(|| {
                // (step reached, censored) per group.
                let t50 = |g: &str| {
                    let s = groups.iter().find(|s| s.key == g)?;
                    match first_reaching(s, GROUP_LEARNED) {
                        Some(t) => Some((t, false)),
                        None => Some((censor_step(s.points.iter().filter_map(|p| p.step))?, true)),
                    }
                };
                let ((f, censored), (c, _)) = (t50("flipped")?, t50("clean")?);
                let norm = med.or_else(|| t50("all").map(|(s, _)| s as f64))?;
                (norm > 0.0).then(|| Gap {
                    value: (f as f64 - c as f64) / norm,
                    how: "flipped − clean",
                    censored,
                })
            });
        Tracked {
            id,
            regime: self.plan.run(id).and_then(|r| r.regime),
            checkpoints: checkpoints.len(),
            n,
            median: med,
            never,
            rho,
            gap,
            t50: groups
                .iter()
                .map(|s| (s.key.clone(), first_reaching(s, GROUP_LEARNED)))
                .collect(),
        }
    }

    // ------------------------------------------------------------ generic

    fn generic(&self, out: &mut String) {
        let mut series = collect_series(self.records, |r| Some((r.key.clone(), context(r))));
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
            "Every scalar key per sweep: how many values, the first and the last (by training step where there is one)."
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
                    point(s.first()),
                    point(s.last()),
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

// ---------------------------------------------------------------- alignment helpers

/// Final per-layer alignments of one run and one key family.
#[derive(Clone, Debug, PartialEq)]
struct LayerSpread {
    family: String,
    ctx: Tags,
    finals: Vec<(String, f64)>,
    /// max − min of `finals`.
    spread: f64,
    /// `spread` / |mean of `finals`|.
    rel: f64,
}

#[derive(Clone, Debug, PartialEq)]
struct AlignClaims {
    /// The total train alignment key, in how many runs it rose, and how
    /// many runs have two or more checkpoints of it.
    rising: Option<(String, usize, usize)>,
    /// Runs × families with two or more layers.
    layers: Vec<LayerSpread>,
}

fn alignment_claims(total: &[Series], per_layer: &[Series]) -> AlignClaims {
    let keys: Vec<&str> = unique(total.iter().map(|s| s.key.as_str()));
    let train_key = keys
        .iter()
        .find(|k| **k == "align/train")
        .or_else(|| keys.iter().find(|k| k.contains("train")))
        .or_else(|| keys.iter().find(|k| !k.contains("test")))
        .copied();
    let rising = train_key.map(|k| {
        let tested: Vec<(f64, f64)> = total
            .iter()
            .filter(|s| s.key == k && s.points.len() >= 2)
            .filter_map(|s| Some((s.first()?.value, s.last()?.value)))
            .collect();
        let up = tested.iter().filter(|(a, b)| b > a).count();
        (k.to_string(), up, tested.len())
    });
    // (family, run) → final value per layer.
    type Finals = Vec<(String, f64)>;
    let mut groups: Vec<((String, Tags), Finals)> = Vec::new();
    for s in per_layer {
        let mut ctx = s.ctx.clone();
        let layer = ctx.remove(LAYER).unwrap_or_default();
        let Some(last) = s.last() else { continue };
        let gk = (s.key.clone(), ctx);
        match groups.iter_mut().find(|(k, _)| *k == gk) {
            Some((_, v)) => v.push((layer, last.value)),
            None => groups.push((gk, vec![(layer, last.value)])),
        }
    }
    let layers = groups
        .into_iter()
        .filter(|(_, v)| v.len() >= 2)
        .map(|((family, ctx), finals)| {
            let (lo, hi, mean) = spread(finals.iter().map(|(_, v)| *v));
            LayerSpread {
                family,
                ctx,
                finals,
                spread: hi - lo,
                rel: (hi - lo) / mean.abs(),
            }
        })
        .collect();
    AlignClaims { rising, layers }
}

// ---------------------------------------------------------------- EKFAC helpers

/// Which approximation a `rel_error` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Kfac,
    EkfacRefit,
    /// EKFAC with KFAC's eigenvalues (`refit = false`).
    EkfacNoRefit,
    /// EKFAC refitted in an old eigenbasis (`basis = initial`).
    EkfacStale,
    Diag,
    Other,
}

fn structure_kind(name: &str) -> Option<Kind> {
    let l = name.to_ascii_lowercase();
    let compact = l.replace(' ', "");
    Some(if l.starts_with("ekfac") {
        // Refitted in the current basis unless it says otherwise
        // (`EKFAC` alone refits).
        if compact.contains("basis=initial") {
            Kind::EkfacStale
        } else if compact.contains("refit=false") {
            Kind::EkfacNoRefit
        } else {
            Kind::EkfacRefit
        }
    } else if l.starts_with("kfac") {
        Kind::Kfac
    } else if l.starts_with("diag") {
        Kind::Diag
    } else if [
        "dense",
        "blockdiag",
        "lowrank",
        "quasidiag",
        "implicit",
        "mix",
    ]
    .iter()
    .any(|p| l.starts_with(p))
    {
        Kind::Other
    } else {
        return None;
    })
}

#[derive(Clone, Debug, PartialEq)]
struct RelError {
    /// The structure, as spelled in the key or the sweep tag.
    name: String,
    /// `name` plus the rest of the key (`KFAC/layers.0`).
    label: String,
    kind: Kind,
    ctx: Tags,
    step: Option<u64>,
    value: f64,
}

/// Checkpoints where both KFAC and refitted EKFAC were measured, and those
/// where EKFAC's error exceeds KFAC's by more than `tol` relative:
/// `(checkpoint, ekfac, kfac)`.
fn ekfac_violations(errs: &[RelError], tol: f64) -> (usize, Vec<(String, f64, f64)>) {
    type At = (Tags, Option<u64>);
    let mut kfac: HashMap<At, f64> = HashMap::new();
    let mut ekfac: Vec<(At, f64)> = Vec::new();
    for e in errs {
        let at = (e.ctx.clone(), e.step);
        match e.kind {
            Kind::Kfac => {
                kfac.insert(at, e.value);
            }
            Kind::EkfacRefit => ekfac.push((at, e.value)),
            _ => {}
        }
    }
    let mut n = 0;
    let mut bad = Vec::new();
    for (at, e) in ekfac {
        let Some(&k) = kfac.get(&at) else { continue };
        n += 1;
        if e > k + tol * k.abs().max(e.abs()) {
            let mut label = tags_label(
                &at.0
                    .iter()
                    .map(|(a, b)| (a.trim_start_matches('\u{0}').to_string(), b.clone()))
                    .collect(),
            );
            if let Some(s) = at.1 {
                label.push_str(&format!(", step {s}"));
            }
            bad.push((label, e, k));
        }
    }
    (n, bad)
}

// ---------------------------------------------------------------- optimiser helpers

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Kfac,
    Ekfac,
}

struct OptRun {
    run: Run,
    series: Series,
    family: Option<Family>,
}

struct OptRuns {
    key: String,
    runs: Vec<OptRun>,
}

/// Steps present in every series, ascending.
fn common_steps<'s>(series: impl IntoIterator<Item = &'s Series>) -> Vec<u64> {
    let mut common: Option<BTreeSet<u64>> = None;
    for s in series {
        let steps: BTreeSet<u64> = s.points.iter().filter_map(|p| p.step).collect();
        common = Some(match common {
            None => steps,
            Some(c) => c.intersection(&steps).copied().collect(),
        });
    }
    common.unwrap_or_default().into_iter().collect()
}

fn mean_at(s: &Series, steps: &[u64]) -> Option<f64> {
    let v: Vec<f64> = steps.iter().filter_map(|&t| s.at(t)).collect();
    (!v.is_empty() && v.len() == steps.len()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

// ---------------------------------------------------------------- examples

/// One line of `examples/train_<id>.jsonl`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Checkpoint {
    pub step: u64,
    pub correct: Vec<bool>,
}

/// Parses an examples file: checkpoints sorted by step; malformed lines and
/// lines with a different number of examples than the first are skipped.
pub(crate) fn parse_examples(bytes: &[u8]) -> Vec<Checkpoint> {
    let mut out: Vec<Checkpoint> = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let (Some(step), Some(c)) = (v["step"].as_u64(), v["correct"].as_str()) else {
            continue;
        };
        if !c.bytes().all(|b| b == b'0' || b == b'1') {
            continue;
        }
        let mut correct: Vec<bool> = c.bytes().map(|b| b == b'1').collect();
        // Learned means the label's probability is above 1/2 (loss below
        // ln 2), not only the arg-max: a centred model starts with all
        // logits equal, where the arg-max is a tie.
        if let Some(loss) = v["loss"].as_array().filter(|l| l.len() == correct.len()) {
            for (ok, l) in correct.iter_mut().zip(loss) {
                *ok = *ok && l.as_f64().is_some_and(|l| l < std::f64::consts::LN_2);
            }
        }
        if out
            .first()
            .is_some_and(|f| f.correct.len() != correct.len())
        {
            continue;
        }
        out.push(Checkpoint { step, correct });
    }
    out.sort_by_key(|c| c.step);
    out.dedup_by_key(|c| c.step);
    out
}

/// The step standing for "never": one checkpoint interval after the last.
fn censor_step(steps: impl Iterator<Item = u64>) -> Option<u64> {
    let mut s: Vec<u64> = steps.collect();
    s.sort_unstable();
    s.dedup();
    let last = *s.last()?;
    let interval = match s.len() {
        1 => 1,
        n => (last - s[n - 2]).max(1),
    };
    Some(last + interval)
}

/// Each example's learning time: the step of the first checkpoint from
/// which it is correct at every later checkpoint; examples wrong at the
/// last checkpoint get [`censor_step`].
pub(crate) fn learning_times(checkpoints: &[Checkpoint]) -> Vec<f64> {
    let Some(never) = censor_step(checkpoints.iter().map(|c| c.step)) else {
        return Vec::new();
    };
    let n = checkpoints[0].correct.len();
    (0..n)
        .map(|i| {
            let mut t = never;
            for c in checkpoints.iter().rev() {
                if c.correct[i] {
                    t = c.step;
                } else {
                    break;
                }
            }
            t as f64
        })
        .collect()
}

/// `examples/train_<id>.difficulty.json`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Difficulty {
    /// Higher = easier.
    pub score: Option<Vec<f64>>,
    /// 0 = easiest.
    pub bin: Option<Vec<usize>>,
}

impl Difficulty {
    fn len(&self) -> Option<usize> {
        match (&self.score, &self.bin) {
            (Some(s), Some(b)) if s.len() != b.len() => None,
            (Some(s), _) => Some(s.len()),
            (None, Some(b)) => Some(b.len()),
            (None, None) => None,
        }
    }
}

pub(crate) fn parse_difficulty(bytes: &[u8]) -> Option<Difficulty> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let score = v["score"]
        .as_array()
        .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>());
    let bin = v["bin"].as_array().and_then(|a| {
        a.iter()
            .map(|x| x.as_u64().map(|x| x as usize))
            .collect::<Option<Vec<usize>>>()
    });
    (score.is_some() || bin.is_some()).then_some(Difficulty { score, bin })
}

/// (Median learning time of the hardest bin − that of the easiest) / the
/// median learning time of all examples.
pub(crate) fn bin_gap(lt: &[f64], bin: &[usize]) -> Option<f64> {
    if lt.len() != bin.len() {
        return None;
    }
    let (lo, hi) = (*bin.iter().min()?, *bin.iter().max()?);
    if lo == hi {
        return None;
    }
    let of = |b: usize| {
        let v: Vec<f64> = lt
            .iter()
            .zip(bin)
            .filter(|(_, &x)| x == b)
            .map(|(t, _)| *t)
            .collect();
        median(&v)
    };
    let all = median(lt)?;
    let (h, l) = (of(hi)?, of(lo)?);
    (all > 0.0).then(|| (h - l) / all)
}

/// First step at which a series reaches `level`.
fn first_reaching(s: &Series, level: f64) -> Option<u64> {
    s.points
        .iter()
        .find(|p| p.value >= level)
        .and_then(|p| p.step)
}

/// Ids `N` of `dir/examples/train_N.jsonl`.
fn example_files(dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir.join("examples")) else {
        return Vec::new();
    };
    let mut ids: Vec<u64> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("train_")?
                .strip_suffix(".jsonl")?
                .parse()
                .ok()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// A run's normalised learning-time gap between hard (or flipped) and easy
/// (or clean) examples.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Gap {
    value: f64,
    /// Which groups were compared.
    how: &'static str,
    /// The hard side was never learned, so the gap is a lower bound.
    censored: bool,
}

impl Gap {
    fn show(self) -> String {
        format!(
            "{}{}",
            if self.censored { "≥ " } else { "" },
            num(self.value)
        )
    }
}

struct Tracked {
    id: u64,
    regime: Option<Regime>,
    checkpoints: usize,
    n: usize,
    median: Option<f64>,
    never: Option<usize>,
    rho: Option<f64>,
    gap: Option<Gap>,
    /// Per group: first step reaching [`GROUP_LEARNED`] accuracy.
    t50: Vec<(String, Option<u64>)>,
}

// ---------------------------------------------------------------- statistics

pub(crate) fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Ranks from 1, ties sharing their mean rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (Pearson correlation of tie-averaged ranks);
/// `None` for fewer than two pairs or a constant input.
pub(crate) fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    (saa > 0.0 && sbb > 0.0).then(|| sab / (saa * sbb).sqrt())
}

/// (min, max, mean); NaNs for an empty input.
fn spread(v: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let (mut lo, mut hi, mut sum, mut n) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0usize);
    for x in v {
        lo = lo.min(x);
        hi = hi.max(x);
        sum += x;
        n += 1;
    }
    if n == 0 {
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        (lo, hi, sum / n as f64)
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

fn arrow(a: Option<Point>, b: Option<Point>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{} → {}", num(a.value), num(b.value)),
        _ => "".into(),
    }
}

fn yes_no(ok: bool) -> &'static str {
    if ok {
        "**supported**"
    } else {
        "**not supported**"
    }
}

fn claim(out: &mut String, n: usize, text: &str, verdict: &str) {
    let _ = writeln!(out, "- Claim {n}, {text}: {verdict}.");
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
