//! Evaluates the claims an experiment declares (`expect "text" : ...`, see
//! `plan::claim`) on a run's results, and says for each whether the
//! results support it, with its number and, when it fails, the first
//! checkpoint where it does.

use super::{Record, Results};
use crate::plan::claim::{ClaimExpr, Cmp, Logic, Reducer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

type Tags = BTreeMap<String, String>;

/// One declared claim and what the results say of it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimOutcome {
    pub text: String,
    /// `line:col` of the `expect` statement.
    pub at: Option<String>,
    pub verdict: Verdict,
    /// The number the verdict rests on (e.g. "12/12 hold", "0.41 > 0.2").
    pub value: String,
    /// Where it fails (first failing checkpoint), when it does.
    pub failing: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Supported,
    NotSupported,
    /// The results it needs are missing (an interrupted run, a key that was
    /// never measured, tensors where numbers are needed).
    NoData(String),
    /// Over replicates, the mean supports it but its 95 % interval also
    /// includes the opposite conclusion (or the replicates disagree).
    Inconclusive(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Supported => write!(f, "supported"),
            Verdict::NotSupported => write!(f, "not supported"),
            Verdict::NoData(why) => write!(f, "not evaluated: {why}"),
            Verdict::Inconclusive(why) => write!(f, "inconclusive: {why}"),
        }
    }
}

impl ClaimOutcome {
    pub fn failed(&self) -> bool {
        self.verdict != Verdict::Supported
    }
}

/// [`evaluate_plan`] for the run in `dir`. A run that has not ended `ok`
/// (interrupted, failed, or merged from shards some of which are missing)
/// holds part of the data a claim was declared on, so no verdict is
/// given: the outcome says why, and what the results so far would say.
pub fn evaluate_run(dir: &std::path::Path, plan: &Value, results: &Results) -> Vec<ClaimOutcome> {
    let mut out = evaluate_plan(plan, results);
    if let Some(why) = super::manifest::incomplete_reason(dir) {
        for c in &mut out {
            if !matches!(c.verdict, Verdict::NoData(_)) {
                c.verdict = Verdict::NoData(format!(
                    "the run is incomplete ({why}); the results so far: {}",
                    c.verdict
                ));
                c.failing = None;
            }
        }
    }
    out
}

/// The claims of a plan (its `expect` steps), evaluated on `results`.
pub fn evaluate_plan(plan: &Value, results: &Results) -> Vec<ClaimOutcome> {
    let mut out = Vec::new();
    for step in plan["steps"].as_array().into_iter().flatten() {
        if step["op"].as_str() != Some("expect") {
            continue;
        }
        let text = step["text"].as_str().unwrap_or("").to_string();
        let at = match (step["span"]["line"].as_u64(), step["span"]["col"].as_u64()) {
            (Some(l), Some(c)) => Some(format!("{l}:{c}")),
            _ => None,
        };
        let replicates = plan_replicates(plan);
        let outcome = match serde_json::from_value::<ClaimExpr>(step["claim"].clone()) {
            Ok(claim) if replicates.is_empty() => evaluate(&text, &claim, &results.records),
            Ok(claim) => evaluate_replicated(&text, &claim, &results.records, &replicates),
            Err(e) => ClaimOutcome {
                text: text.clone(),
                at: None,
                verdict: Verdict::NoData(format!("the plan's claim cannot be read ({e})")),
                value: String::new(),
                failing: None,
            },
        };
        out.push(ClaimOutcome { at, ..outcome });
    }
    out
}

/// The sweep tags a plan (as JSON) repeats runs over (`replicate`).
pub(crate) fn plan_replicates(plan: &Value) -> Vec<String> {
    plan["experiment"]["replicates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// Two operands of a binary reducer, in order.
fn two(mut vals: Vec<V>, name: &str) -> R<(V, V)> {
    let b = vals.pop();
    let a = vals.pop();
    match (a, b) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(format!("`{name}` needs two series")),
    }
}

/// Evaluates one claim on records.
pub fn evaluate(text: &str, claim: &ClaimExpr, records: &[Record]) -> ClaimOutcome {
    evaluate_truth(text, claim, records).0
}

/// Evaluates a claim once per replicate (each combination of the values of
/// the `replicates` tags) and combines: a comparison of two numbers by the
/// mean and 95 % interval (Student t) of its margin over replicates, any
/// other claim by whether every replicate supports it.
pub fn evaluate_replicated(
    text: &str,
    claim: &ClaimExpr,
    records: &[Record],
    replicates: &[String],
) -> ClaimOutcome {
    let mut groups: BTreeMap<Vec<String>, Vec<Record>> = BTreeMap::new();
    for r in records {
        let key: Vec<String> = replicates
            .iter()
            .map(|t| r.sweep.get(t).cloned().unwrap_or_default())
            .collect();
        // Within a replicate its tags are constant: drop them, so the claim
        // sees the index the checker typed it with.
        let mut r = r.clone();
        for t in replicates {
            r.sweep.remove(t);
        }
        groups.entry(key).or_default().push(r);
    }
    // Results measured outside the replicate loop belong to every replicate.
    let shared = groups
        .remove(&vec![String::new(); replicates.len()])
        .unwrap_or_default();
    if groups.is_empty() {
        return evaluate(text, claim, &shared);
    }
    let mut outcomes = Vec::new();
    for (_, mut recs) in groups {
        recs.extend(shared.iter().cloned());
        outcomes.push(evaluate_truth(text, claim, &recs));
    }
    let n = outcomes.len();
    if let Some((o, _)) = outcomes
        .iter()
        .find(|(o, _)| matches!(o.verdict, Verdict::NoData(_)))
    {
        return o.clone();
    }
    let held = outcomes
        .iter()
        .filter(|(o, _)| o.verdict == Verdict::Supported)
        .count();
    let failing = outcomes.iter().find_map(|(o, _)| o.failing.clone());
    let margins: Option<Vec<f64>> = outcomes.iter().map(|(_, m)| m.map(|m| m.0)).collect();
    // `>=` and `<=` hold at a margin of 0; `>` and `<` need a positive one.
    let inclusive = outcomes.iter().all(|(_, m)| m.is_some_and(|m| m.1));
    let beyond = |x: f64| if inclusive { x >= 0.0 } else { x > 0.0 };
    let (verdict, value) = match margins {
        Some(m) if n >= 2 => {
            let mean = m.iter().sum::<f64>() / n as f64;
            let var = m.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let half = t975(n - 1) * (var / n as f64).sqrt();
            let value = format!(
                "margin {} ± {} (95 %, n = {n}); holds in {held}/{n} replicates",
                num(mean),
                num(half)
            );
            let verdict = if beyond(mean - half) {
                Verdict::Supported
            } else if beyond(mean) {
                Verdict::Inconclusive(
                    "the mean supports it, but the 95 % interval includes the opposite".into(),
                )
            } else {
                Verdict::NotSupported
            };
            (verdict, value)
        }
        _ => {
            let value = format!("holds in {held}/{n} replicates");
            let verdict = if held == n {
                Verdict::Supported
            } else if held > 0 {
                Verdict::Inconclusive("the replicates disagree".into())
            } else {
                Verdict::NotSupported
            };
            (verdict, value)
        }
    };
    ClaimOutcome {
        text: text.to_string(),
        at: None,
        verdict,
        value,
        failing,
    }
}

/// Student's t quantile 0.975 for `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const T: [f64; 10] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    ];
    match df {
        0 => f64::INFINITY,
        1..=10 => T[df - 1],
        11..=20 => 2.2 - (df - 10) as f64 * 0.0114,
        21..=30 => 2.086 - (df - 20) as f64 * 0.0044,
        _ => 1.96,
    }
}

/// The outcome, and for a comparison of two numbers its margin (how far
/// the claim holds: `lhs − rhs` for `>`, `rhs − lhs` for `<`) and whether
/// a margin of 0 holds.
fn evaluate_truth(
    text: &str,
    claim: &ClaimExpr,
    records: &[Record],
) -> (ClaimOutcome, Option<(f64, bool)>) {
    let mut ev = Eval { records };
    let mut margin = None;
    let (verdict, value, failing) = match ev.eval(claim) {
        Ok(V::Bool(b)) => {
            margin = b.margin;
            let verdict = if b.holds {
                Verdict::Supported
            } else {
                Verdict::NotSupported
            };
            (verdict, b.value, b.failing)
        }
        Ok(_) => (
            Verdict::NoData("the claim is not a truth value".into()),
            String::new(),
            None,
        ),
        Err(why) => (Verdict::NoData(why), String::new(), None),
    };
    (
        ClaimOutcome {
            text: text.to_string(),
            at: None,
            verdict,
            value,
            failing,
        },
        margin,
    )
}

/// A result: its tags, its training step (if measured during training) and
/// its number.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    tags: Tags,
    step: Option<u64>,
    v: f64,
}

/// A comparison at one entry, with both sides kept for the report.
#[derive(Clone, Debug, PartialEq)]
struct Check {
    tags: Tags,
    step: Option<u64>,
    holds: bool,
    lhs: f64,
    rhs: f64,
    op: Cmp,
}

#[derive(Clone, Debug, PartialEq)]
struct Truth {
    holds: bool,
    value: String,
    failing: Option<String>,
    /// For one comparison of two numbers: by how much it holds, and
    /// whether a margin of 0 holds (`>=`, `<=`).
    margin: Option<(f64, bool)>,
}

#[derive(Clone, Debug, PartialEq)]
enum V {
    Num(f64),
    Series(Vec<Entry>),
    Bool(Truth),
    Checks(Vec<Check>),
}

struct Eval<'r> {
    records: &'r [Record],
}

type R<T> = Result<T, String>;

impl Eval<'_> {
    fn eval(&mut self, e: &ClaimExpr) -> R<V> {
        self.eval_raw(e).map(settle)
    }

    fn eval_raw(&mut self, e: &ClaimExpr) -> R<V> {
        match e {
            ClaimExpr::Number { value } => Ok(V::Num(*value)),
            ClaimExpr::Key { pattern } => self.key(pattern).map(V::Series),
            ClaimExpr::Select { base, filters } => {
                let keep = |tags: &Tags| {
                    filters
                        .iter()
                        .all(|f| tags.get(&f.tag).is_some_and(|v| *v == f.value))
                };
                let strip = |mut tags: Tags| {
                    for f in filters {
                        tags.remove(&f.tag);
                    }
                    tags
                };
                match self.eval(base)? {
                    V::Series(s) => {
                        let out: Vec<Entry> = s
                            .into_iter()
                            .filter(|x| keep(&x.tags))
                            .map(|x| Entry {
                                tags: strip(x.tags),
                                ..x
                            })
                            .collect();
                        if out.is_empty() {
                            return Err(format!("no results with {}", filters_text(filters)));
                        }
                        Ok(V::Series(out))
                    }
                    V::Checks(s) => Ok(V::Checks(
                        s.into_iter()
                            .filter(|x| keep(&x.tags))
                            .map(|x| Check {
                                tags: strip(x.tags),
                                ..x
                            })
                            .collect(),
                    )),
                    other => Ok(other),
                }
            }
            ClaimExpr::Neg { value } => Ok(match self.eval(value)? {
                V::Num(x) => V::Num(-x),
                V::Series(s) => V::Series(s.into_iter().map(|x| Entry { v: -x.v, ..x }).collect()),
                other => other,
            }),
            ClaimExpr::Arith { op, lhs, rhs } => {
                let (l, r) = (self.eval(lhs)?, self.eval(rhs)?);
                if let (V::Num(a), V::Num(b)) = (&l, &r) {
                    return Ok(V::Num(op.apply(*a, *b)));
                }
                Ok(V::Series(
                    numeric_pair(l, r)?
                        .into_iter()
                        .map(|(tags, step, a, b)| Entry {
                            tags,
                            step,
                            v: op.apply(a, b),
                        })
                        .collect(),
                ))
            }
            ClaimExpr::Compare { op, lhs, rhs } => {
                let (l, r) = (self.eval(lhs)?, self.eval(rhs)?);
                Ok(V::Checks(
                    numeric_pair(l, r)?
                        .into_iter()
                        .map(|(tags, step, a, b)| Check {
                            tags,
                            step,
                            holds: op.holds(a, b),
                            lhs: a,
                            rhs: b,
                            op: *op,
                        })
                        .collect(),
                ))
            }
            ClaimExpr::Logic { op, lhs, rhs } => {
                let l = self.truth(lhs)?;
                let r = self.truth(rhs)?;
                let holds = match op {
                    Logic::And => l.holds && r.holds,
                    Logic::Or => l.holds || r.holds,
                };
                Ok(V::Bool(Truth {
                    holds,
                    value: format!("{}; {}", l.value, r.value),
                    failing: l.failing.or(r.failing),
                    margin: None,
                }))
            }
            ClaimExpr::Reduce { reducer, args, by } => {
                let vals = args.iter().map(|a| self.eval(a)).collect::<R<Vec<V>>>()?;
                reduce(*reducer, vals, by)
            }
        }
    }

    fn truth(&mut self, e: &ClaimExpr) -> R<Truth> {
        match self.eval(e)? {
            V::Bool(t) => Ok(t),
            _ => Err("a part of the claim is not a truth value".into()),
        }
    }

    /// The numeric results of a key or pattern (a pattern adds the tag
    /// `key`).
    fn key(&self, pattern: &str) -> R<Vec<Entry>> {
        let is_glob = pattern.contains('*');
        let mut out = Vec::new();
        let mut tensors = 0;
        for r in self.records {
            if !crate::check::glob(pattern, &r.key) {
                continue;
            }
            let Some(v) = r.value.as_scalar() else {
                tensors += 1;
                continue;
            };
            let mut tags: Tags = r
                .sweep
                .iter()
                .filter(|(_, v)| !crate::plan::claim::rendered(&r.key, v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if is_glob {
                tags.insert("key".into(), r.key.clone());
            }
            out.push(Entry {
                tags,
                step: r.step,
                v,
            });
        }
        if out.is_empty() {
            return Err(if tensors > 0 {
                format!("`{pattern}` holds tensors, not numbers")
            } else {
                format!("no results for `{pattern}`")
            });
        }
        Ok(out)
    }
}

type Pairs = Vec<(Tags, Option<u64>, f64, f64)>;

/// A series of one entry with neither tags nor step is a number, and one
/// such comparison a truth value (the checker types them the same way).
fn settle(v: V) -> V {
    match v {
        V::Series(s) if s.len() == 1 && s[0].tags.is_empty() && s[0].step.is_none() => {
            V::Num(s[0].v)
        }
        V::Checks(c) if c.len() == 1 && c[0].tags.is_empty() && c[0].step.is_none() => {
            let c = &c[0];
            V::Bool(Truth {
                holds: c.holds,
                value: format!("{} {} {}", num(c.lhs), c.op.symbol(), num(c.rhs)),
                failing: None,
                margin: match c.op {
                    Cmp::Gt => Some((c.lhs - c.rhs, false)),
                    Cmp::Ge => Some((c.lhs - c.rhs, true)),
                    Cmp::Lt => Some((c.rhs - c.lhs, false)),
                    Cmp::Le => Some((c.rhs - c.lhs, true)),
                    Cmp::Eq | Cmp::Ne => None,
                },
            })
        }
        v => v,
    }
}

/// Lines up two numeric values: numbers with numbers, a number with every
/// entry of a series, and two series entry by entry where their common tags
/// (and their steps, when both have one) agree.
fn numeric_pair(l: V, r: V) -> R<Pairs> {
    let as_entries = |v: V| -> R<Vec<Entry>> {
        match v {
            V::Num(x) => Ok(vec![Entry {
                tags: Tags::new(),
                step: None,
                v: x,
            }]),
            V::Series(s) => Ok(s),
            _ => Err("a comparison where a number is needed".into()),
        }
    };
    let (l, r) = (as_entries(l)?, as_entries(r)?);
    let mut out = Vec::new();
    for a in &l {
        for b in &r {
            if !joinable(a, b) {
                continue;
            }
            let mut tags = a.tags.clone();
            tags.extend(b.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
            out.push((tags, a.step.or(b.step), a.v, b.v));
        }
    }
    if out.is_empty() {
        return Err(
            "the two sides have no results in common (no tags and steps that agree)".into(),
        );
    }
    Ok(out)
}

fn joinable(a: &Entry, b: &Entry) -> bool {
    let steps = match (a.step, b.step) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    };
    steps
        && a.tags
            .iter()
            .all(|(k, v)| b.tags.get(k).is_none_or(|w| w == v))
}

/// Groups by the values of `by` (all entries in one group when empty).
fn groups<T>(items: Vec<T>, tags: impl Fn(&T) -> &Tags, by: &[String]) -> BTreeMap<Tags, Vec<T>> {
    let mut out: BTreeMap<Tags, Vec<T>> = BTreeMap::new();
    for it in items {
        let key: Tags = by
            .iter()
            .filter_map(|b| tags(&it).get(b).map(|v| (b.clone(), v.clone())))
            .collect();
        out.entry(key).or_default().push(it);
    }
    out
}

fn reduce(reducer: Reducer, mut vals: Vec<V>, by: &[String]) -> R<V> {
    let name = reducer.name();
    match reducer {
        Reducer::All | Reducer::Any | Reducer::Fraction => {
            let checks = match vals.pop() {
                Some(V::Checks(c)) => c,
                Some(V::Bool(t)) if reducer != Reducer::Fraction => return Ok(V::Bool(t)),
                _ => return Err(format!("`{name}` needs comparisons")),
            };
            if checks.is_empty() {
                return Err(format!("`{name}` has no comparisons to check"));
            }
            let grouped = groups(checks, |c| &c.tags, by);
            if by.is_empty() || reducer == Reducer::Fraction {
                let all: Vec<Check> = grouped.into_values().flatten().collect();
                if reducer == Reducer::Fraction {
                    return Ok(V::Num(fraction(&all)));
                }
                return Ok(V::Bool(truth_of(reducer, &all)));
            }
            // `all(..., by = t)`: one comparison per group, "does it hold in
            // the group", for an outer reducer.
            Ok(V::Checks(
                grouped
                    .into_iter()
                    .map(|(tags, cs)| {
                        let t = truth_of(reducer, &cs);
                        Check {
                            tags,
                            step: None,
                            holds: t.holds,
                            lhs: fraction(&cs),
                            rhs: 1.0,
                            op: Cmp::Eq,
                        }
                    })
                    .collect(),
            ))
        }
        Reducer::FirstStep => {
            let Some(V::Checks(checks)) = vals.pop() else {
                return Err("`first_step` needs comparisons".into());
            };
            // Per combination of the other tags: the earliest training step
            // at which the comparison holds, ∞ when it never does.
            let mut first: BTreeMap<Tags, f64> = BTreeMap::new();
            for c in checks {
                let slot = first.entry(c.tags).or_insert(f64::INFINITY);
                if c.holds {
                    *slot = slot.min(c.step.unwrap_or(0) as f64);
                }
            }
            Ok(V::Series(
                first
                    .into_iter()
                    .map(|(tags, v)| Entry {
                        tags,
                        step: None,
                        v,
                    })
                    .collect(),
            ))
        }
        Reducer::Mean | Reducer::Median | Reducer::Min | Reducer::Max | Reducer::Spread => {
            let Some(V::Series(s)) = vals.pop() else {
                return Err(format!("`{name}` needs a series"));
            };
            let grouped = groups(s, |e| &e.tags, by);
            let mut out = Vec::new();
            for (tags, es) in grouped {
                let v: Vec<f64> = es.iter().map(|e| e.v).collect();
                out.push(Entry {
                    tags,
                    step: None,
                    v: summarise(reducer, &v),
                });
            }
            Ok(single_or_series(out, by))
        }
        Reducer::First | Reducer::Last => {
            let Some(V::Series(s)) = vals.pop() else {
                return Err(format!("`{name}` needs a series"));
            };
            let mut pick: BTreeMap<Tags, Entry> = BTreeMap::new();
            for e in s {
                let later = |old: &Entry| {
                    let (a, b) = (e.step.unwrap_or(0), old.step.unwrap_or(0));
                    if reducer == Reducer::First {
                        a < b
                    } else {
                        a >= b
                    }
                };
                match pick.get(&e.tags) {
                    Some(old) if !later(old) => {}
                    _ => {
                        pick.insert(e.tags.clone(), Entry { step: None, ..e });
                    }
                }
            }
            Ok(V::Series(pick.into_values().collect()))
        }
        Reducer::Spearman => {
            let (a, b) = two(vals, name)?;
            let pairs = numeric_pair(a, b)?;
            let grouped = groups(pairs, |p| &p.0, by);
            let mut out = Vec::new();
            for (tags, ps) in grouped {
                let (xs, ys): (Vec<f64>, Vec<f64>) = ps.iter().map(|p| (p.2, p.3)).unzip();
                out.push(Entry {
                    tags,
                    step: None,
                    v: super::stats::spearman(&xs, &ys).unwrap_or(f64::NAN),
                });
            }
            Ok(single_or_series(out, by))
        }
        Reducer::Ratio => {
            let (a, b) = two(vals, name)?;
            let pairs = numeric_pair(a, b)?;
            Ok(V::Series(
                pairs
                    .into_iter()
                    .map(|(tags, step, a, b)| Entry {
                        tags,
                        step,
                        v: a / b,
                    })
                    .collect(),
            ))
        }
    }
}

fn single_or_series(out: Vec<Entry>, by: &[String]) -> V {
    if by.is_empty() && out.len() == 1 {
        V::Num(out[0].v)
    } else {
        V::Series(out)
    }
}

fn fraction(cs: &[Check]) -> f64 {
    cs.iter().filter(|c| c.holds).count() as f64 / cs.len().max(1) as f64
}

fn summarise(r: Reducer, v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match r {
        Reducer::Mean => mean,
        Reducer::Median => super::stats::median(v).unwrap_or(f64::NAN),
        Reducer::Min => min,
        Reducer::Max => max,
        Reducer::Spread => (max - min) / mean.abs(),
        _ => f64::NAN,
    }
}

/// `all` or `any` over comparisons: whether it holds, "k/n hold", and for
/// `all` the first comparison that fails (in step order).
fn truth_of(r: Reducer, cs: &[Check]) -> Truth {
    let k = cs.iter().filter(|c| c.holds).count();
    let holds = if r == Reducer::Any {
        k > 0
    } else {
        k == cs.len()
    };
    let value = format!("{k}/{} hold", cs.len());
    let failing = if r == Reducer::All && !holds {
        cs.iter()
            .filter(|c| !c.holds)
            .min_by_key(|c| c.step.unwrap_or(0))
            .map(describe_check)
    } else {
        None
    };
    Truth {
        holds,
        value,
        failing,
        margin: None,
    }
}

fn describe_check(c: &Check) -> String {
    let mut at: Vec<String> = c.tags.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    if let Some(s) = c.step {
        at.push(format!("step {s}"));
    }
    let place = if at.is_empty() {
        String::new()
    } else {
        format!("at {}: ", at.join(", "))
    };
    format!(
        "{place}{} {} {} is false",
        num(c.lhs),
        c.op.symbol(),
        num(c.rhs)
    )
}

fn filters_text(filters: &[crate::plan::claim::TagFilter]) -> String {
    filters
        .iter()
        .map(|f| format!("{} = {}", f.tag, f.value))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A number as a claim shows it: four significant digits.
pub(crate) fn num(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "∞".into() } else { "-∞".into() };
    }
    if v == v.trunc() && v.abs() < 1e9 {
        return format!("{v:.0}");
    }
    let a = v.abs();
    if (1e-3..1e5).contains(&a) {
        let digits = (3 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{v:.digits$}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        let s = format!("{v:.3e}");
        match s.split_once('e') {
            Some((m, e)) => format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.')),
            None => s,
        }
    }
}
