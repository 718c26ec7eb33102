//! The report's readers, plots and manifest.

use super::manifest::parse_vm_hwm;
use super::*;
use std::time::{Duration, UNIX_EPOCH};

mod series;
mod summary;

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
