//! `summary.md`: declared claims evaluated on a run's results.

use super::*;

// ---------------------------------------------------------------- summary.md

/// One `results.jsonl` line.
pub(super) fn rec(
    key: &str,
    step_id: u64,
    sweep: serde_json::Value,
    value: f64,
    step: Option<u64>,
) -> String {
    let mut line = serde_json::json!({
        "key": key, "step_id": step_id, "sweep": sweep, "value": value, "time_s": 0.5,
    });
    if let Some(s) = step {
        line["step"] = serde_json::json!(s);
    }
    format!("{line}\n")
}

pub(super) fn plan_json(name: &str, dtype: &str, steps: serde_json::Value) -> String {
    serde_json::json!({
        "format": 1,
        "experiment": {"name": name, "seed": 0, "backend": "candle", "device": "cpu",
                        "dtype": dtype, "out": "out"},
        "steps": steps,
    })
    .to_string()
}

pub(super) fn summary_of(dir: &Path) -> String {
    let path = write_summary(dir).unwrap();
    assert_eq!(path, dir.join("summary.md"));
    std::fs::read_to_string(path).unwrap()
}

pub(super) fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with `{needle}` in\n{text}"))
}

use super::claims::{evaluate, Verdict};
use crate::plan::claim::{ArithOp, ClaimExpr, Cmp, Reducer, TagFilter};

pub(super) fn records_of(lines: &str) -> Vec<Record> {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "results.jsonl", lines);
    read_results(&p).unwrap().records
}

/// Records written back as `results.jsonl` lines.
pub(super) fn jsonl_of(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| {
            let sweep = serde_json::to_value(&r.sweep).unwrap();
            rec(
                &r.key,
                r.step_id,
                sweep,
                r.value.as_scalar().unwrap(),
                r.step,
            )
        })
        .collect()
}

pub(super) fn key(p: &str) -> Box<ClaimExpr> {
    Box::new(ClaimExpr::Key { pattern: p.into() })
}

pub(super) fn sel(base: Box<ClaimExpr>, tag: &str, value: &str) -> Box<ClaimExpr> {
    Box::new(ClaimExpr::Select {
        base,
        filters: vec![TagFilter {
            tag: tag.into(),
            value: value.into(),
        }],
    })
}

#[allow(clippy::vec_box)] // the helpers build boxed nodes
pub(super) fn red(reducer: Reducer, args: Vec<Box<ClaimExpr>>, by: &[&str]) -> Box<ClaimExpr> {
    Box::new(ClaimExpr::Reduce {
        reducer,
        args: args.into_iter().map(|a| *a).collect(),
        by: by.iter().map(|s| s.to_string()).collect(),
    })
}

pub(super) fn cmp(op: Cmp, lhs: Box<ClaimExpr>, rhs: Box<ClaimExpr>) -> Box<ClaimExpr> {
    Box::new(ClaimExpr::Compare { op, lhs, rhs })
}

pub(super) fn number(v: f64) -> Box<ClaimExpr> {
    Box::new(ClaimExpr::Number { value: v })
}

/// `rel_error/EKFAC` and `rel_error/KFAC` for two optimisers at steps 0,
/// 10, 20, the EKFAC error `ekfac(opt, step)`; the sweep tag `S` is spelled
/// in the key, so the two keys line up by `opt` and step.
pub(super) fn ekfac_records(ekfac: impl Fn(&str, u64) -> f64) -> Vec<Record> {
    let mut lines = String::new();
    for opt in ["sgd", "kfac"] {
        for step in [0, 10, 20] {
            let kfac = 0.5 + step as f64 / 100.0;
            lines += &rec(
                "rel_error/KFAC",
                3,
                serde_json::json!({"opt": opt, "S": "KFAC"}),
                kfac,
                Some(step),
            );
            lines += &rec(
                "rel_error/EKFAC",
                4,
                serde_json::json!({"opt": opt, "S": "EKFAC"}),
                ekfac(opt, step),
                Some(step),
            );
        }
    }
    records_of(&lines)
}

#[test]
fn all_pairs_results_by_tags_and_step_and_names_the_first_failure() {
    let claim = red(
        Reducer::All,
        vec![cmp(Cmp::Le, key("rel_error/EKFAC"), key("rel_error/KFAC"))],
        &[],
    );
    let ok = evaluate(
        "theorem",
        &claim,
        &ekfac_records(|_, s| 0.4 + s as f64 / 100.0),
    );
    assert_eq!(ok.verdict, Verdict::Supported);
    assert_eq!(ok.value, "6/6 hold");
    assert_eq!(ok.failing, None);

    // One violation (kfac run, step 10), another later (step 20): the
    // earliest is reported with both sides.
    let bad = evaluate(
        "theorem",
        &claim,
        &ekfac_records(|o, s| if o == "kfac" && s >= 10 { 0.9 } else { 0.1 }),
    );
    assert_eq!(bad.verdict, Verdict::NotSupported);
    assert_eq!(bad.value, "4/6 hold");
    assert_eq!(
        bad.failing.as_deref(),
        Some("at opt = kfac, step 10: 0.9 <= 0.6 is false")
    );
}

#[test]
fn selections_first_last_and_arithmetic_give_numbers() {
    let mut lines = String::new();
    for (lr, losses) in [("0.1", [2.0, 1.0, 0.5]), ("0.2", [2.0, 1.5, 1.25])] {
        for (i, l) in losses.iter().enumerate() {
            lines += &rec(
                "loss",
                2,
                serde_json::json!({ "lr": lr }),
                *l,
                Some(i as u64 * 10),
            );
        }
    }
    let records = records_of(&lines);
    let gain = |lr: &str| {
        Box::new(ClaimExpr::Arith {
            op: ArithOp::Sub,
            lhs: red(Reducer::First, vec![sel(key("loss"), "lr", lr)], &[]),
            rhs: red(Reducer::Last, vec![sel(key("loss"), "lr", lr)], &[]),
        })
    };
    let c = evaluate("gain", &cmp(Cmp::Gt, gain("0.1"), gain("0.2")), &records);
    assert_eq!(c.verdict, Verdict::Supported);
    assert_eq!(c.value, "1.5 > 0.75");

    // mean by lr, then all: one comparison per lr.
    let c = evaluate(
        "mean",
        &red(
            Reducer::All,
            vec![cmp(
                Cmp::Lt,
                red(Reducer::Mean, vec![key("loss")], &["lr"]),
                number(1.5),
            )],
            &[],
        ),
        &records,
    );
    assert_eq!(c.verdict, Verdict::NotSupported);
    assert_eq!(
        c.failing.as_deref(),
        Some("at lr = 0.2: 1.583 < 1.5 is false")
    );

    // First step at which the loss is at most 1: 10 and never (∞).
    let c = evaluate(
        "first_step",
        &red(
            Reducer::All,
            vec![cmp(
                Cmp::Le,
                red(
                    Reducer::FirstStep,
                    vec![cmp(Cmp::Le, key("loss"), number(1.0))],
                    &[],
                ),
                number(10.0),
            )],
            &[],
        ),
        &records,
    );
    assert_eq!(c.value, "1/2 hold");
    assert_eq!(c.failing.as_deref(), Some("at lr = 0.2: ∞ <= 10 is false"));
}

#[test]
fn spearman_spread_and_patterns() {
    let mut lines = String::new();
    for (layer, v) in [("fc1", 0.1), ("fc2", 0.3), ("fc3", 0.2)] {
        lines += &rec(
            &format!("align/{layer}"),
            2,
            serde_json::json!({ "layer": layer }),
            v,
            None,
        );
        lines += &rec(
            &format!("rank/{layer}"),
            3,
            serde_json::json!({ "layer": layer }),
            v * 10.0,
            None,
        );
    }
    let records = records_of(&lines);
    // (0.3 − 0.1) / 0.2 = 1 over the three keys of the pattern.
    let c = evaluate(
        "spread",
        &cmp(
            Cmp::Gt,
            red(Reducer::Spread, vec![key("align/*")], &[]),
            number(0.99),
        ),
        &records,
    );
    assert_eq!(c.value, "1 > 0.99", "{c:?}");
    assert_eq!(c.verdict, Verdict::Supported);
    // The `layer` tag is spelled in each key, so the two patterns pair up
    // by nothing but their `key` tag: they do not, and the claim says so.
    let c = evaluate(
        "spearman",
        &cmp(
            Cmp::Gt,
            red(Reducer::Spearman, vec![key("align/*"), key("rank/*")], &[]),
            number(0.0),
        ),
        &records,
    );
    assert!(matches!(c.verdict, Verdict::NoData(_)), "{c:?}");
    assert_eq!(
        super::stats::spearman(&[1.0, 2.0, 3.0], &[10.0, 30.0, 20.0]),
        Some(0.5)
    );
    assert_eq!(super::stats::median(&[3.0, 1.0, 2.0, 10.0]), Some(2.5));
}

#[test]
fn missing_results_are_no_data_not_a_verdict() {
    let records = ekfac_records(|_, _| 0.1);
    let c = evaluate(
        "absent",
        &red(
            Reducer::All,
            vec![cmp(Cmp::Lt, key("loss"), number(1.0))],
            &[],
        ),
        &records,
    );
    assert_eq!(c.verdict, Verdict::NoData("no results for `loss`".into()));
    assert!(c.failed());
    let c = evaluate(
        "absent value",
        &red(
            Reducer::All,
            vec![cmp(
                Cmp::Lt,
                sel(key("rel_error/KFAC"), "opt", "adam"),
                number(1.0),
            )],
            &[],
        ),
        &records,
    );
    assert_eq!(
        c.verdict,
        Verdict::NoData("no results with opt = adam".into())
    );
}

/// `loss` at steps 0 and 10 for lr 0.1 / 0.5 in three replicates `s`;
/// the gain of lr 0.5 over lr 0.1 in replicate `s` is `gap[s]`.
pub(super) fn replicated_records(gap: [f64; 3]) -> Vec<Record> {
    let mut lines = String::new();
    for (s, g) in gap.iter().enumerate() {
        for (lr, end) in [("0.1", 1.0), ("0.5", 1.0 - g)] {
            let tags = serde_json::json!({"lr": lr, "s": s.to_string()});
            lines += &rec("loss", 2, tags.clone(), 2.0, Some(0));
            lines += &rec("loss", 2, tags, end, Some(10));
        }
    }
    records_of(&lines)
}

#[test]
fn replicated_claims_give_a_mean_margin_with_a_95_percent_interval() {
    use super::claims::evaluate_replicated;
    let gain = |lr: &str| {
        Box::new(ClaimExpr::Arith {
            op: ArithOp::Sub,
            lhs: red(Reducer::First, vec![sel(key("loss"), "lr", lr)], &[]),
            rhs: red(Reducer::Last, vec![sel(key("loss"), "lr", lr)], &[]),
        })
    };
    let claim = cmp(Cmp::Gt, gain("0.5"), gain("0.1"));
    let s = ["s".to_string()];
    // Margins 0.3, 0.4, 0.5: mean 0.4, s.d. 0.1, half-width 4.303 · 0.1/√3.
    let c = evaluate_replicated("gain", &claim, &replicated_records([0.3, 0.4, 0.5]), &s);
    assert_eq!(c.verdict, Verdict::Supported);
    assert_eq!(
        c.value,
        "margin 0.4 ± 0.2484 (95 %, n = 3); holds in 3/3 replicates"
    );
    // Margins 0.1, −0.05, 0.2: the mean supports it, the interval does not.
    let c = evaluate_replicated("gain", &claim, &replicated_records([0.1, -0.05, 0.2]), &s);
    assert!(matches!(c.verdict, Verdict::Inconclusive(_)), "{c:?}");
    assert!(c.value.ends_with("holds in 2/3 replicates"), "{c:?}");
    assert!(c.failed());
    // All negative: not supported.
    let c = evaluate_replicated("gain", &claim, &replicated_records([-0.1, -0.2, -0.3]), &s);
    assert_eq!(c.verdict, Verdict::NotSupported);
    // Equal gains: `>=` holds in every replicate at margin 0 ± 0, `>` in
    // none.
    let same = replicated_records([0.0, 0.0, 0.0]);
    let ge = cmp(Cmp::Ge, gain("0.5"), gain("0.1"));
    let c = evaluate_replicated("gain", &ge, &same, &s);
    assert_eq!(c.verdict, Verdict::Supported, "{c:?}");
    assert!(c.value.ends_with("holds in 3/3 replicates"), "{c:?}");
    let c = evaluate_replicated("gain", &claim, &same, &s);
    assert_eq!(c.verdict, Verdict::NotSupported, "{c:?}");
}

#[test]
fn summary_shows_declared_claims_with_their_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let claim = red(
        Reducer::All,
        vec![cmp(Cmp::Le, key("rel_error/EKFAC"), key("rel_error/KFAC"))],
        &[],
    );
    let plan = plan_json(
        "ekfac",
        "f64",
        serde_json::json!([{
            "id": 7, "deps": [], "span": {"start": 0, "end": 1, "line": 12, "col": 1},
            "op": "expect", "text": "EKFAC never worse", "claim": claim,
            "cost": {"memory": 0, "peak": 0, "flops": 0},
        }]),
    );
    write(dir.path(), "plan.json", &plan);
    let lines = jsonl_of(&ekfac_records(|o, s| {
        if o == "kfac" && s == 20 {
            0.9
        } else {
            0.1
        }
    }));
    write(dir.path(), "results.jsonl", &lines);
    let s = summary_of(dir.path());
    assert!(s.contains("0 of 1 claims declared"), "{s}");
    assert_eq!(
        line_with(&s, "| EKFAC never worse"),
        "| EKFAC never worse | 12:1 | 5/6 hold | **not supported** |"
    );
    assert!(
        s.contains("- EKFAC never worse: fails at opt = kfac, step 20: 0.9 <= 0.7 is false"),
        "{s}"
    );
    // No paper is recognised from key names any more.
    assert!(!s.contains("George et al."), "{s}");
}

#[test]
fn summary_of_a_partial_run_reports_what_exists() {
    // No plan, no manifest, a results.jsonl cut off mid-line.
    let dir = tempfile::tempdir().unwrap();
    let mut results = rec("loss", 3, serde_json::json!({"lr": "0.1"}), 2.0, Some(0));
    results += &rec("loss", 3, serde_json::json!({"lr": "0.1"}), 0.5, Some(10));
    results += &rec("align/train", 4, serde_json::json!({}), 0.25, Some(0));
    results += "{\"key\":\"align/train\",\"step_id\":4,\"val";
    write(dir.path(), "results.jsonl", &results);
    let s = summary_of(dir.path());
    assert!(s.contains("(unknown experiment: no plan.json)"), "{s}");
    assert!(s.contains("- status: unknown"), "{s}");
    assert!(s.contains("- 3 results, 1 malformed line skipped"), "{s}");
    assert_eq!(
        line_with(&s, "| `loss` |"),
        "| `loss` | lr=0.1 | 2 | 2 (0) | 0.5 (10) |"
    );
    assert!(!s.contains("## Claims"), "{s}");

    // A failed run: status and a warning that the numbers are partial.
    write(
        dir.path(),
        "manifest.json",
        r#"{"experiment": "x", "status": "failed: out of memory", "wall_time_s": 3.5, "steps": []}"#,
    );
    let s = summary_of(dir.path());
    assert!(
        s.contains("- status: failed: out of memory\n- wall time: 3.5 s"),
        "{s}"
    );
    assert!(s.contains("The run did not finish"), "{s}");

    // Nothing at all.
    let empty = tempfile::tempdir().unwrap();
    let s = summary_of(empty.path());
    assert!(
        s.contains("no readable results.jsonl") && s.contains("No results yet."),
        "{s}"
    );
}
