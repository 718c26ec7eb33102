use super::manifest::parse_vm_hwm;
use super::*;
use std::time::{Duration, UNIX_EPOCH};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const SMALL: &str = r#"{"key":"loss","step_id":3,"sweep":{},"value":0.5,"step":10,"time_s":1.5}
{"key":"rel_error","step_id":12,"sweep":{"S":"KFAC","noise":"0.2"},"value":1e-7}

{"key":"eig","step_id":13,"sweep":{"S":"a,b","noise":"say \"hi\""},"value":{"shape":[3],"data":[3.0,2.5,null]}}
{"key":"rel_error","step_id":12,"sweep":{"S":"diag","noise":"0.2"},"value":null}
{"key":"rel_error","step_id":12,"sweep":{"S":"diag","noi"#;

#[test]
fn csv_has_exact_rows_and_skips_truncated_line() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = write(dir.path(), "results.jsonl", SMALL);
    let csv = dir.path().join("results.csv");
    let summary = write_csv_summary(&jsonl, &csv).unwrap();
    assert_eq!(
        summary,
        CsvSummary {
            rows: 6,
            skipped: 1
        }
    );
    assert_eq!(write_csv(&jsonl, &csv).unwrap(), 6);
    let text = std::fs::read_to_string(&csv).unwrap();
    let expected = "\
key,step_id,step,S,noise,index,value
loss,3,10,,,,0.5
rel_error,12,,KFAC,0.2,,1e-7
eig,13,,\"a,b\",\"say \"\"hi\"\"\",0,3.0
eig,13,,\"a,b\",\"say \"\"hi\"\"\",1,2.5
eig,13,,\"a,b\",\"say \"\"hi\"\"\",2,NaN
rel_error,12,,diag,0.2,,NaN
";
    assert_eq!(text, expected);
}

#[test]
fn csv_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    let err = write_csv(&missing, &dir.path().join("x.csv")).unwrap_err();
    assert!(matches!(err, ReportError::Read { .. }));
    assert!(err.to_string().contains("nope.jsonl"), "{err}");
}

#[test]
fn records_parse_steps_times_and_tensors() {
    let r = parse_results(SMALL.as_bytes());
    assert_eq!(r.records.len(), 4);
    assert_eq!(r.skipped, 1);
    assert_eq!(r.records[0].step, Some(10));
    assert_eq!(r.records[0].time_s, Some(1.5));
    let Measured::Tensor { shape, data } = &r.records[2].value else {
        panic!("not a tensor: {:?}", r.records[2].value)
    };
    assert_eq!(shape, &[3]);
    assert_eq!(&data[..2], &[3.0, 2.5]);
    assert!(data[2].is_nan());
    assert!(r.records[3].value.as_scalar().unwrap().is_nan());
}

fn results_with_steps() -> String {
    let mut s = String::new();
    for (tag, scale) in [("KFAC", 1.0), ("diag", 3.0)] {
        for step in [0u64, 10, 20, 30, 40] {
            let v = scale / (1.0 + step as f64);
            s.push_str(&format!(
                "{{\"key\":\"loss\",\"step_id\":4,\"sweep\":{{\"S\":\"{tag}\"}},\"value\":{v},\"step\":{step}}}\n"
            ));
        }
    }
    s
}

fn spec(pattern: &str, x: &str, by: &[&str], file: &str) -> PlotSpec {
    PlotSpec {
        pattern: pattern.into(),
        x: x.into(),
        by: by.iter().map(|s| s.to_string()).collect(),
        flags: vec![],
        file: file.into(),
        replicates: vec![],
    }
}

fn assert_png_svg(files: &[PathBuf], labels: &[&str]) {
    assert_eq!(files.len(), 2);
    let png = std::fs::read(&files[0]).unwrap();
    assert!(png.len() > 1000, "PNG too small: {} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(&files[1]).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
    for l in labels {
        assert!(svg.contains(l), "SVG lacks `{l}`");
    }
}

#[test]
fn step_plot_writes_png_and_svg_with_labels() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "results.jsonl", &results_with_steps());
    let files = plot(dir.path(), &spec("loss", "step", &["S"], "loss_vs_step")).unwrap();
    assert_eq!(
        files,
        vec![
            dir.path().join("loss_vs_step.png"),
            dir.path().join("loss_vs_step.svg")
        ]
    );
    assert_png_svg(&files, &["S=KFAC", "S=diag", "step", "loss"]);
}

/// `against index`: a vector's entries by position, an `[n, C]` tensor's
/// one series per column, the last measurement of each sweep point.
#[test]
fn index_plot_draws_vectors_and_columns() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        r#"{"key":"u","step_id":3,"sweep":{},"value":{"shape":[3,2],"data":[1,2,3,4,5,6]}}"#,
        r#"{"key":"ev","step_id":4,"sweep":{"S":"KFAC"},"value":{"shape":[4],"data":[9,4,1,0.5]}}"#,
        r#"{"key":"ev","step_id":4,"sweep":{"S":"Diag"},"value":{"shape":[4],"data":[8,3,2,1]}}"#,
        r#"{"key":"loss","step_id":5,"sweep":{},"value":0.5}"#,
    ];
    write(dir.path(), "results.jsonl", &(rows.join("\n") + "\n"));
    let files = plot(dir.path(), &spec("u", "index", &[], "u")).unwrap();
    assert_png_svg(&files, &["u[0]", "u[1]", "index"]);
    let files = plot(dir.path(), &spec("ev", "index", &["S"], "ev")).unwrap();
    assert_png_svg(&files, &["S=KFAC", "S=Diag"]);
    // A scalar has no entries to draw by position.
    assert!(plot(dir.path(), &spec("loss", "index", &[], "l")).is_err());
}

#[test]
fn step_plot_with_log_axes_and_points() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "results.jsonl", &results_with_steps());
    let mut s = spec("lo*", "step", &["S"], "sub/loss_log");
    s.flags = vec!["log_x".into(), "log_y".into(), "points".into()];
    let files = plot(dir.path(), &s).unwrap();
    assert_png_svg(&files, &["S=KFAC", "S=diag"]);
    assert!(dir.path().join("sub/loss_log.svg").exists());
}

fn categorical_results() -> String {
    let mut s = String::new();
    let mut id = 20;
    for (noise, base) in [("0.1", 1e-6), ("0.5", 1e-2)] {
        for (i, method) in ["KFAC", "EKFAC", "diag"].into_iter().enumerate() {
            id += 1;
            for key in ["align/fisher", "align/ntk"] {
                let v = base * 10f64.powi(i as i32);
                s.push_str(&format!(
                    "{{\"key\":\"{key}\",\"step_id\":{id},\"sweep\":{{\"S\":\"{method}\",\"noise\":\"{noise}\"}},\"value\":{v}}}\n"
                ));
            }
        }
    }
    s.push_str("{\"key\":\"other\",\"step_id\":1,\"sweep\":{},\"value\":1}\n");
    s
}

#[test]
fn categorical_plot_with_wildcard_and_auto_log_y() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "results.jsonl", &categorical_results());
    let s = spec("align/*", "S", &["noise"], "align_vs_S");
    let records = read_results(&dir.path().join("results.jsonl"))
        .unwrap()
        .records;
    let chart = plot::tests_support::build(&s, &records).unwrap();
    assert_eq!(chart.categories, vec!["KFAC", "EKFAC", "diag"]);
    assert!(chart.log_y, "values span 6 decades and are positive");
    assert_eq!(
        chart.labels,
        vec![
            "align/fisher [noise=0.1]",
            "align/ntk [noise=0.1]",
            "align/fisher [noise=0.5]",
            "align/ntk [noise=0.5]",
        ]
    );
    let files = plot(dir.path(), &s).unwrap();
    assert_png_svg(
        &files,
        &["align/fisher [noise=0.1]", "KFAC", "EKFAC", "diag", "noise"],
    );
}

#[test]
fn numeric_sweep_plot_uses_last_training_step_on_a_number_line() {
    let text = "\
{\"key\":\"acc\",\"step_id\":5,\"sweep\":{\"lr\":\"0.1\"},\"value\":0.2,\"step\":1}
{\"key\":\"acc\",\"step_id\":5,\"sweep\":{\"lr\":\"0.1\"},\"value\":0.9,\"step\":2}
{\"key\":\"acc\",\"step_id\":6,\"sweep\":{\"lr\":\"0.01\"},\"value\":0.7,\"step\":2}
{\"key\":\"acc\",\"step_id\":6,\"sweep\":{\"lr\":\"0.01\"},\"value\":0.1,\"step\":1}
";
    let records = parse_results(text.as_bytes()).records;
    let s = spec("acc", "lr", &[], "acc_vs_lr");
    let chart = plot::tests_support::build(&s, &records).unwrap();
    // Numbers, not categories: x is the learning rate itself.
    assert!(chart.categories.is_empty());
    assert!(chart.lines);
    assert!(!chart.log_y);
    assert_eq!(chart.labels, vec!["acc"]);
    assert_eq!(chart.points, vec![vec![(0.1, 0.9), (0.01, 0.7)]]);
}

#[test]
fn a_sweep_over_structures_is_categories_drawn_as_points() {
    let records = parse_results(categorical_results().as_bytes()).records;
    let chart = plot::tests_support::build(&spec("align/*", "S", &[], "x"), &records).unwrap();
    assert_eq!(chart.categories, vec!["KFAC", "EKFAC", "diag"]);
    assert!(!chart.lines, "no line joins unrelated categories");
    // The y axis names the quantity the keys share, not `value`.
    assert_eq!(chart.y_desc, "align");
}

#[test]
fn losses_spanning_two_decades_get_a_log_axis_unless_linear_y() {
    let text: String = (1..=4)
        .map(|k| {
            format!(
                "{{\"key\":\"train/loss\",\"step_id\":3,\"sweep\":{{}},\"value\":{},\"step\":{k}}}\n",
                10f64.powi(-k)
            )
        })
        .collect();
    let records = parse_results(text.as_bytes()).records;
    let chart =
        plot::tests_support::build(&spec("train/loss", "step", &[], "l"), &records).unwrap();
    assert!(chart.log_y);
    let linear = PlotSpec {
        flags: vec!["linear_y".into()],
        ..spec("train/loss", "step", &[], "l")
    };
    assert!(!plot::tests_support::build(&linear, &records).unwrap().log_y);
}

#[test]
fn nothing_to_plot_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "results.jsonl", &categorical_results());
    let err = plot(dir.path(), &spec("loss*", "step", &[], "x")).unwrap_err();
    assert!(matches!(&err, ReportError::NothingToPlot { pattern } if pattern == "loss*"));
    assert!(err.to_string().contains("`loss*`"), "{err}");
    // Matching keys, but none has a training step.
    let err = plot(dir.path(), &spec("align/*", "step", &[], "x")).unwrap_err();
    assert!(matches!(err, ReportError::NothingToPlot { .. }));
    // Matching keys, but none has the sweep tag.
    let err = plot(dir.path(), &spec("other", "S", &[], "x")).unwrap_err();
    assert!(matches!(err, ReportError::NothingToPlot { .. }));
    assert!(!dir.path().join("x.png").exists());
}

#[test]
fn rebuild_writes_csv_and_plots_and_collects_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let mut results = results_with_steps();
    results.push_str(&categorical_results());
    results.push_str("{\"key\":\"loss\",\"st");
    write(dir.path(), "results.jsonl", &results);
    let plan = serde_json::json!({
        "format": 1,
        "experiment": {"name": "t", "seed": 0, "backend": "cpu", "device": "cpu",
                        "dtype": "f32", "out": "out"},
        "steps": [
            {"id": 0, "deps": [], "op": "measure", "key": "loss"},
            {"id": 1, "deps": [], "op": "plot", "pattern": "loss", "x": "step",
             "by": ["S"], "flags": [], "file": "loss_vs_step"},
            {"id": 2, "deps": [], "op": "plot", "pattern": "align/*", "x": "S",
             "by": ["noise"], "flags": ["log_y"], "file": "align_vs_S"},
            {"id": 3, "deps": [], "op": "plot", "pattern": "missing", "x": "S",
             "by": [], "flags": [], "file": "missing_vs_S"}
        ]
    });
    write(dir.path(), "plan.json", &plan.to_string());
    let out = rebuild(dir.path()).unwrap();
    let names: Vec<String> = out
        .files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "results.csv",
            "summary.md",
            "loss_vs_step.png",
            "loss_vs_step.svg",
            "align_vs_S.png",
            "align_vs_S.svg"
        ]
    );
    assert_eq!(out.warnings.len(), 2, "{:?}", out.warnings);
    assert!(out.warnings[0].contains("skipped 1 malformed line"));
    assert!(out.warnings[1].contains("missing_vs_S"));
    assert!(!dir.path().join("missing_vs_S.png").exists());
}

#[test]
fn rebuild_reports_a_bad_plan_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "plan.json", "{\"steps\": ");
    let err = rebuild(dir.path()).unwrap_err();
    assert!(matches!(err, ReportError::Parse { .. }));
    assert!(err.to_string().contains("plan.json"), "{err}");
    write(dir.path(), "plan.json", "{}");
    let err = rebuild(dir.path()).unwrap_err();
    assert!(matches!(err, ReportError::Plan { .. }), "{err}");
}

#[test]
fn manifest_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manifest {
        plan_hash: "ab12".into(),
        experiment: "fim_zoo".into(),
        backend: "candle".into(),
        backend_version: "0.11.0".into(),
        device: "cpu".into(),
        dtype: "f64".into(),
        seed: 7,
        nngeo_version: env!("CARGO_PKG_VERSION").into(),
        started: now_rfc3339(),
        wall_time_s: 12.25,
        peak_memory_bytes: peak_rss_bytes(),
        status: "failed: out of memory".into(),
        total_steps: Some(2),
        resumed: vec![],
        steps: vec![
            StepTiming {
                id: 0,
                op: "data".into(),
                name: "digits".into(),
                wall_s: 0.5,
                peak_rss_bytes: Some(1 << 20),
            },
            StepTiming {
                id: 1,
                op: "repr".into(),
                name: "F".into(),
                wall_s: 11.0,
                peak_rss_bytes: None,
            },
        ],
        shard: None,
    };
    m.write(dir.path()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
    assert!(text.contains("\n  \"plan_hash\": \"ab12\""), "{text}");
    assert_eq!(Manifest::read(dir.path()).unwrap(), m);
}

#[test]
fn rfc3339_of_known_times() {
    let at = |s: u64| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(at(0), "1970-01-01T00:00:00Z");
    assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    let now = now_rfc3339();
    assert_eq!(now.len(), 20);
    assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T');
}

#[test]
fn vm_hwm_parses() {
    let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
    assert_eq!(parse_vm_hwm(status), Some(1234 * 1024));
    assert_eq!(parse_vm_hwm("Name: x\n"), None);
    if cfg!(target_os = "linux") {
        assert!(peak_rss_bytes().unwrap() > 0);
    }
}

#[test]
fn progress_is_hidden_without_a_terminal() {
    use std::io::IsTerminal;
    let bar = progress(10, "measuring");
    assert_eq!(bar.is_hidden(), !std::io::stderr().is_terminal());
    bar.inc(3);
    bar.finish_and_clear();
}

#[test]
fn plot_spec_from_plan_step() {
    let step = serde_json::json!({"id": 9, "deps": [], "op": "plot", "pattern": "a*",
        "x": "step", "by": ["S"], "flags": ["log_y"], "file": "a_vs_step", "cost": {}});
    let s = PlotSpec::from_plan_step(&step).unwrap();
    assert_eq!(s, {
        let mut t = spec("a*", "step", &["S"], "a_vs_step");
        t.flags = vec!["log_y".into()];
        t
    });
    let other = serde_json::json!({"op": "measure", "key": "a"});
    assert_eq!(PlotSpec::from_plan_step(&other), None);
}

// ---------------------------------------------------------------- summary.md

/// One `results.jsonl` line.
fn rec(key: &str, step_id: u64, sweep: serde_json::Value, value: f64, step: Option<u64>) -> String {
    let mut line = serde_json::json!({
        "key": key, "step_id": step_id, "sweep": sweep, "value": value, "time_s": 0.5,
    });
    if let Some(s) = step {
        line["step"] = serde_json::json!(s);
    }
    format!("{line}\n")
}

fn plan_json(name: &str, dtype: &str, steps: serde_json::Value) -> String {
    serde_json::json!({
        "format": 1,
        "experiment": {"name": name, "seed": 0, "backend": "candle", "device": "cpu",
                        "dtype": dtype, "out": "out"},
        "steps": steps,
    })
    .to_string()
}

fn summary_of(dir: &Path) -> String {
    let path = write_summary(dir).unwrap();
    assert_eq!(path, dir.join("summary.md"));
    std::fs::read_to_string(path).unwrap()
}

fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with `{needle}` in\n{text}"))
}

use super::claims::{evaluate, Verdict};
use crate::plan::claim::{ArithOp, ClaimExpr, Cmp, Reducer, TagFilter};

fn records_of(lines: &str) -> Vec<Record> {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "results.jsonl", lines);
    read_results(&p).unwrap().records
}

/// Records written back as `results.jsonl` lines.
fn jsonl_of(records: &[Record]) -> String {
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

fn key(p: &str) -> Box<ClaimExpr> {
    Box::new(ClaimExpr::Key { pattern: p.into() })
}

fn sel(base: Box<ClaimExpr>, tag: &str, value: &str) -> Box<ClaimExpr> {
    Box::new(ClaimExpr::Select {
        base,
        filters: vec![TagFilter {
            tag: tag.into(),
            value: value.into(),
        }],
    })
}

#[allow(clippy::vec_box)] // the helpers build boxed nodes
fn red(reducer: Reducer, args: Vec<Box<ClaimExpr>>, by: &[&str]) -> Box<ClaimExpr> {
    Box::new(ClaimExpr::Reduce {
        reducer,
        args: args.into_iter().map(|a| *a).collect(),
        by: by.iter().map(|s| s.to_string()).collect(),
    })
}

fn cmp(op: Cmp, lhs: Box<ClaimExpr>, rhs: Box<ClaimExpr>) -> Box<ClaimExpr> {
    Box::new(ClaimExpr::Compare { op, lhs, rhs })
}

fn number(v: f64) -> Box<ClaimExpr> {
    Box::new(ClaimExpr::Number { value: v })
}

/// `rel_error/EKFAC` and `rel_error/KFAC` for two optimisers at steps 0,
/// 10, 20, the EKFAC error `ekfac(opt, step)`; the sweep tag `S` is spelled
/// in the key, so the two keys line up by `opt` and step.
fn ekfac_records(ekfac: impl Fn(&str, u64) -> f64) -> Vec<Record> {
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
fn replicated_records(gap: [f64; 3]) -> Vec<Record> {
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

// ------------------------------------------------------- many series, bytes

#[test]
fn twenty_five_series_get_distinct_colour_and_dash_pairs() {
    use plot::{series_style, Dash, Marker};
    let styles: Vec<_> = (0..25).map(|i| series_style(i, 25)).collect();
    let pairs: std::collections::HashSet<_> = styles
        .iter()
        .map(|s| ((s.color.0, s.color.1, s.color.2), s.dash))
        .collect();
    assert_eq!(pairs.len(), 25, "a (colour, dash) pair repeats");
    // Beyond ten series, dashes are in use; up to ten, all lines are solid
    // round-marked and the colours distinct.
    assert!(styles.iter().any(|s| s.dash != Dash::Solid));
    let few: Vec<_> = (0..10).map(|i| series_style(i, 10)).collect();
    assert!(few
        .iter()
        .all(|s| s.dash == Dash::Solid && s.marker == Marker::Circle));
    let colours: std::collections::HashSet<_> = few
        .iter()
        .map(|s| (s.color.0, s.color.1, s.color.2))
        .collect();
    assert_eq!(colours.len(), 10);
    // Up to 160 series, (colour, dash, marker) stays distinct.
    let all: std::collections::HashSet<_> = (0..160)
        .map(|i| series_style(i, 160))
        .map(|s| ((s.color.0, s.color.1, s.color.2), s.dash, s.marker))
        .collect();
    assert_eq!(all.len(), 160);
}

#[test]
fn byte_ticks_read_in_binary_units() {
    use plot::format_bytes_tick as f;
    assert_eq!(f(0.0), "0 B");
    assert_eq!(f(512.0), "512 B");
    assert_eq!(f(1024.0), "1 KiB");
    assert_eq!(f(1536.0), "1.5 KiB");
    assert_eq!(f(256.0 * 1024.0 * 1024.0), "256 MiB");
    assert_eq!(f(2.0 * 1024f64.powi(3)), "2 GiB");
    assert_eq!(f(1e6), "977 KiB");
    assert_eq!(f(1.25e7), "11.9 MiB");
    assert_eq!(f(3.0 * 1024f64.powi(4)), "3 TiB");
}

/// `n` series of one key each (`key_0` ... ), over steps 0..5.
fn many_series(
    n: usize,
    key: impl Fn(usize) -> String,
    value: impl Fn(usize, u64) -> f64,
) -> String {
    let mut s = String::new();
    for i in 0..n {
        for step in 0..5u64 {
            s.push_str(&format!(
                "{{\"key\":\"{}\",\"step_id\":{i},\"sweep\":{{}},\"value\":{},\"step\":{step}}}\n",
                key(i),
                value(i, step)
            ));
        }
    }
    s
}

#[test]
fn a_plot_of_twelve_series_puts_the_legend_outside_and_renders() {
    let dir = tempfile::tempdir().unwrap();
    let text = many_series(
        12,
        |i| format!("rel_error/layer{i}"),
        |i, s| (1 + i) as f64 * 0.01 + s as f64 * 0.001,
    );
    write(dir.path(), "results.jsonl", &text);
    let s = spec("rel_error/*", "step", &[], "many");
    let records = parse_results(text.as_bytes()).records;
    let chart = plot::tests_support::build(&s, &records).unwrap();
    assert_eq!(chart.labels.len(), 12);
    assert!(chart.legend_outside, "12 series: the legend goes outside");
    assert_eq!(chart.y_desc, "rel_error", "the quantity, not `value`");
    let files = plot(dir.path(), &s).unwrap();
    assert_png_svg(
        &files,
        &["rel_error/layer0", "rel_error/layer11", "rel_error"],
    );
    // Dashed series are drawn as dashes.
    let svg = std::fs::read_to_string(&files[1]).unwrap();
    let lines = svg.matches("<polyline").count() + svg.matches("<line").count();
    assert!(lines > 12 * 2, "dashes and legend rows: {lines} lines");
    // Ten series keep the legend inside the data area.
    let text = many_series(10, |i| format!("rel_error/layer{i}"), |i, _| i as f64 + 1.0);
    let records = parse_results(text.as_bytes()).records;
    assert!(
        !plot::tests_support::build(&s, &records)
            .unwrap()
            .legend_outside
    );
}

#[test]
fn memory_is_plotted_on_a_log_axis_in_binary_units() {
    let dir = tempfile::tempdir().unwrap();
    // 4 KiB to 3 GiB, one series per structure.
    let text = many_series(
        3,
        |i| format!("memory/S{i}"),
        |i, s| 4096.0 * 16f64.powi(i as i32 * 2) * (1.0 + s as f64),
    );
    write(dir.path(), "results.jsonl", &text);
    let s = spec("memory/*", "step", &[], "mem");
    let records = parse_results(text.as_bytes()).records;
    let chart = plot::tests_support::build(&s, &records).unwrap();
    assert!(chart.bytes && chart.log_y, "memory: a log axis of bytes");
    assert_eq!(chart.y_desc, "memory");
    // Ticks at powers of two, thinned to whole KiB/MiB/GiB here.
    assert!(!chart.byte_ticks.is_empty());
    for t in &chart.byte_ticks {
        assert_eq!(t.log2().fract(), 0.0, "{t} is not a power of two");
    }
    let labels: Vec<String> = chart
        .byte_ticks
        .iter()
        .map(|&t| plot::format_bytes_tick(t))
        .collect();
    assert!(labels.iter().any(|l| l.ends_with("MiB")), "{labels:?}");
    let files = plot(dir.path(), &s).unwrap();
    assert_png_svg(&files, &["MiB", "memory/S0"]);
    // `linear_y` keeps a linear axis, still in bytes.
    let linear = PlotSpec {
        flags: vec!["linear_y".into()],
        ..spec("memory/*", "step", &[], "mem")
    };
    let chart = plot::tests_support::build(&linear, &records).unwrap();
    assert!(chart.bytes && !chart.log_y);
}

#[test]
fn replicates_are_drawn_as_a_mean_with_a_standard_error_band() {
    use super::plot::mean_and_band;
    let (line, band) = mean_and_band(&[
        (10.0, 1.0),
        (0.0, 2.0),
        (10.0, 3.0),
        (0.0, 2.0),
        (20.0, 5.0),
    ]);
    assert_eq!(line, vec![(0.0, 2.0), (10.0, 2.0), (20.0, 5.0)]);
    // x = 0: no spread; x = 10: s.d. √2, s.e. 1; x = 20: one value, no band.
    assert_eq!(band.len(), 2);
    assert_eq!(band[0], (0.0, 2.0, 2.0));
    assert!(
        (band[1].1 - 1.0).abs() < 1e-12 && (band[1].2 - 3.0).abs() < 1e-12,
        "{band:?}"
    );

    // A plan with replicates: the plot is drawn (one series per `lr`).
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    for s in 0..3 {
        for step in [0u64, 5, 10] {
            let tags = serde_json::json!({"lr": "0.1", "s": s.to_string()});
            lines += &rec(
                "loss",
                2,
                tags,
                2.0 - step as f64 / 10.0 + s as f64 / 10.0,
                Some(step),
            );
        }
    }
    write(dir.path(), "results.jsonl", &lines);
    let mut spec = spec("loss", "step", &["lr"], "loss_vs_step");
    spec.replicates = vec!["s".into()];
    let files = plot_records(
        dir.path(),
        &spec,
        &read_results(&dir.path().join("results.jsonl"))
            .unwrap()
            .records,
    )
    .unwrap();
    assert_png_svg(&files, &["lr=0.1"]);
}

#[test]
fn summary_tables_average_over_replicates() {
    let dir = tempfile::tempdir().unwrap();
    let lines = jsonl_of(&replicated_records([0.2, 0.4, 0.6]));
    write(dir.path(), "results.jsonl", &lines);
    let mut plan: serde_json::Value =
        serde_json::from_str(&plan_json("rep", "f64", serde_json::json!([]))).unwrap();
    plan["experiment"]["replicates"] = serde_json::json!(["s"]);
    write(dir.path(), "plan.json", &plan.to_string());
    let s = summary_of(dir.path());
    // lr 0.5 ends at 0.8, 0.6, 0.4: mean 0.6, s.e. 0.2/√3.
    assert_eq!(
        line_with(&s, "| `loss` | lr=0.5 |"),
        "| `loss` | lr=0.5 | 6 | 2 ± 0 (0) | 0.6 ± 0.1155 (10) |"
    );
    assert!(
        s.contains("over the replicates (s), the mean ± one standard error"),
        "{s}"
    );
}
