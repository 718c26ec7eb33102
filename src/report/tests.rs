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

use super::summary::{bin_gap, learning_times, median, parse_difficulty, parse_examples, spearman};

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

/// Two training runs (noise = 0.0 / 0.5) measuring total and per-layer
/// alignment, effective rank and trace at steps 0, 10, 20. `total`,
/// `layers` and `rank` give each run's values per step; `layer_tag` is the
/// per-layer loop variable.
fn alignment_dir(
    total: [[f64; 3]; 2],
    layers: [[f64; 2]; 2],
    rank: [[f64; 3]; 2],
    layer_tag: &str,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut steps = vec![serde_json::json!({"id": 0, "op": "model", "name": "net",
        "spec": {"layers": [{"name": "layers.0"}, {"name": "layers.1"}, {"name": "layers.2"}]}})];
    let mut results = String::new();
    for (i, noise) in ["0.0", "0.5"].into_iter().enumerate() {
        let t = 10 * (i as u64 + 1);
        let sweep = serde_json::json!({"noise": noise});
        steps.push(serde_json::json!({"id": t, "op": "train", "sweep": sweep,
            "config": {"mode": {"kind": "plain"}, "optimizer": {"kind": "sgd", "lr": 0.1}}}));
        for (j, key) in ["align/train", "L0", "L2", "effective_rank", "trace"]
            .into_iter()
            .enumerate()
        {
            steps.push(serde_json::json!({"id": t + 1 + j as u64, "op": "measure",
                "hook": {"train": t, "hook": 0}, "sweep": sweep, "key": key}));
        }
        for (k, step) in [0u64, 10, 20].into_iter().enumerate() {
            results += &rec("align/train", t + 1, sweep.clone(), total[i][k], Some(step));
            for (j, layer) in ["layers.0", "layers.2"].into_iter().enumerate() {
                // Per-layer values: the final one given, earlier ones 0.1.
                let v = if k == 2 { layers[i][j] } else { 0.1 };
                results += &rec(
                    &format!("align/train/{layer}"),
                    t + 2 + j as u64,
                    serde_json::json!({"noise": noise, layer_tag: layer}),
                    v,
                    Some(step),
                );
            }
            results += &rec(
                "effective_rank",
                t + 4,
                sweep.clone(),
                rank[i][k],
                Some(step),
            );
            results += &rec("trace", t + 5, sweep.clone(), 100.0 + k as f64, Some(step));
        }
    }
    write(
        dir.path(),
        "plan.json",
        &plan_json("align", "f64", steps.into()),
    );
    write(dir.path(), "results.jsonl", &results);
    dir
}

#[test]
fn summary_alignment_claims_supported() {
    let dir = alignment_dir(
        [[0.1, 0.2, 0.3], [0.05, 0.06, 0.07]],
        [[0.2, 0.4], [0.1, 0.3]],
        [[50.0, 40.0, 30.0], [50.0, 45.0, 44.0]],
        "layer",
    );
    let s = summary_of(dir.path());
    assert!(s.starts_with("# align\n"), "{s}");
    assert!(s.contains("## NTK alignment (Baratin et al. 2021)"), "{s}");
    assert!(
        line_with(&s, "Claim 1,")
            .contains("**supported** — `align/train` last > first in 2 of 2 runs"),
        "{s}"
    );
    // Spreads 0.2 / mean 0.3 and 0.2 / mean 0.2: both above 10 %.
    assert!(
        line_with(&s, "Claim 2,").contains("**supported**")
            && line_with(&s, "Claim 2,").contains("in 2 of 2 runs"),
        "{s}"
    );
    assert!(
        line_with(&s, "Claim 3,").contains("**supported** — last < first in 2 of 2 runs"),
        "{s}"
    );
    assert_eq!(
        line_with(&s, "| noise=0.0 | `align/train` | 0.1 (0)"),
        "| noise=0.0 | `align/train` | 0.1 (0) | 0.3 (20) |"
    );
    assert_eq!(
        line_with(&s, "| noise=0.5 | `align/train` | 0.1 |"),
        "| noise=0.5 | `align/train` | 0.1 | 0.3 | 0.2 | 1 |"
    );
    assert_eq!(
        line_with(&s, "| noise=0.0 | 50 → 30"),
        "| noise=0.0 | 50 → 30 | 100 → 102 |"
    );
    // The EKFAC and lazy/hasty sections have no data here.
    assert!(!s.contains("EKFAC"), "{s}");
    assert!(!s.contains("Lazy vs hasty"), "{s}");
}

#[test]
fn summary_alignment_claims_not_supported() {
    // Run 2's alignment falls, its layers end equal, run 1's rank rises;
    // per-layer tags named `l` are recognised by the model's layer names.
    let dir = alignment_dir(
        [[0.1, 0.2, 0.3], [0.07, 0.06, 0.05]],
        [[0.2, 0.4], [0.3, 0.31]],
        [[30.0, 40.0, 50.0], [50.0, 45.0, 44.0]],
        "l",
    );
    let s = summary_of(dir.path());
    assert!(
        line_with(&s, "Claim 1,")
            .contains("**not supported** — `align/train` last > first in 1 of 2 runs"),
        "{s}"
    );
    let c2 = line_with(&s, "Claim 2,");
    assert!(
        c2.contains("**not supported**") && c2.contains("in 1 of 2 runs"),
        "{s}"
    );
    // Spread 0.01 over a mean of 0.305.
    assert_eq!(
        line_with(&s, "| noise=0.5 | `align/train` | 0.3 |"),
        "| noise=0.5 | `align/train` | 0.3 | 0.31 | 0.01 | 0.03279 |"
    );
    assert!(
        line_with(&s, "Claim 3,").contains("**not supported** — last < first in 1 of 2 runs"),
        "{s}"
    );
}

/// `rel_error/{S}` for KFAC, refitted EKFAC, stale EKFAC and Diag in two
/// runs at steps 0 and 50; `ekfac(run, step)` gives refitted EKFAC's error
/// (KFAC's is 0.5 everywhere).
fn rel_error_results(ekfac: impl Fn(usize, u64) -> f64) -> String {
    let mut s = String::new();
    for (r, opt) in ["sgd", "adam"].into_iter().enumerate() {
        for step in [0u64, 50] {
            for (name, v) in [
                ("Diag", 0.9),
                ("KFAC", 0.5),
                ("EKFAC(refit = true)", ekfac(r, step)),
                ("EKFAC(refit = false)", 0.6),
            ] {
                s += &rec(
                    &format!("rel_error/{name}"),
                    3,
                    serde_json::json!({"S": name, "opt": opt}),
                    v,
                    Some(step),
                );
            }
        }
    }
    s
}

#[test]
fn summary_counts_injected_ekfac_violations() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "plan.json",
        &plan_json("ek", "f64", serde_json::json!([])),
    );
    // Below KFAC, or above it by 1e-12 relative (inside the tolerance). A
    // per-layer KFAC error (below EKFAC's) pairs with no total EKFAC error.
    let mut results = rel_error_results(|r, s| {
        if r == 1 && s == 50 {
            0.5 * (1.0 + 1e-12)
        } else {
            0.4
        }
    });
    results += &rec(
        "rel_error/KFAC/layers.0",
        5,
        serde_json::json!({"opt": "sgd", "layer": "layers.0"}),
        0.1,
        Some(0),
    );
    write(dir.path(), "results.jsonl", &results);
    let s = summary_of(dir.path());
    assert!(s.contains("## EKFAC vs KFAC (George et al. 2018)"), "{s}");
    assert!(
        line_with(&s, "Theorem,").contains("holds at all 4 checkpoints (tolerance 1e-9 relative)"),
        "{s}"
    );
    assert_eq!(
        line_with(&s, "| `EKFAC(refit = true)` |"),
        "| `EKFAC(refit = true)` | 4 | 0.425 | 0.4 | 0.5 |"
    );
    assert_eq!(
        line_with(&s, "| `KFAC/layers.0` |"),
        "| `KFAC/layers.0` | 1 | 0.1 | 0.1 | 0.1 |"
    );
    assert!(
        line_with(&s, "Mean errors of the others")
            .contains("Diag 0.9; EKFAC without refit (KFAC's eigenvalues) 0.6"),
        "{s}"
    );

    // Inject one violation.
    write(
        dir.path(),
        "results.jsonl",
        &rel_error_results(|r, s| if r == 1 && s == 50 { 0.55 } else { 0.4 }),
    );
    let s = summary_of(dir.path());
    let t = line_with(&s, "Theorem,");
    assert!(
        t.contains("**VIOLATED — this is a bug**: at 1 of 4 checkpoints"),
        "{s}"
    );
    assert!(
        t.contains("opt=adam, step 50: EKFAC 0.55 > KFAC 0.5"),
        "{t}"
    );

    // `rel_error` tagged with the structure (as in fim_zoo), no steps.
    let mut results = String::new();
    for (name, v) in [("KFAC", 0.3), ("EKFAC(refit = true)", 0.31), ("Dense", 0.0)] {
        results += &rec("rel_error", 7, serde_json::json!({"S": name}), v, None);
    }
    write(dir.path(), "results.jsonl", &results);
    let s = summary_of(dir.path());
    assert!(
        line_with(&s, "Theorem,").contains(
            "VIOLATED — this is a bug**: at 1 of 1 checkpoints (worst at —: EKFAC 0.31 > KFAC 0.3)"
        ),
        "{s}"
    );
}

#[test]
fn summary_compares_ekfac_and_kfac_training_losses() {
    let dir = tempfile::tempdir().unwrap();
    let mut steps = Vec::new();
    let mut results = String::new();
    let losses = [
        (
            "sgd",
            serde_json::json!({"kind": "sgd", "lr": 0.1}),
            [2.0, 1.5, 1.2, 1.0, 0.9],
        ),
        (
            "kfac",
            serde_json::json!({"kind": "ngd", "fim": {"kind": "KFAC"}}),
            [2.0, 1.0, 0.8, 0.6, 0.5],
        ),
        (
            "ekfac",
            serde_json::json!({"kind": "ngd", "fim": {"kind": "EKFAC", "refit": true}}),
            [2.0, 0.9, 0.7, 0.5, 0.4],
        ),
    ];
    for (i, (opt, optimizer, l)) in losses.iter().enumerate() {
        let t = 10 * (i as u64 + 1);
        steps.push(
            serde_json::json!({"id": t, "op": "train", "sweep": {"opt": opt},
            "config": {"mode": {"kind": "plain"}, "optimizer": optimizer}}),
        );
        steps.push(
            serde_json::json!({"id": t + 1, "op": "measure", "hook": {"train": t, "hook": 0},
            "sweep": {"opt": opt}, "key": "loss/train"}),
        );
        for (k, v) in l.iter().enumerate() {
            results += &rec(
                "loss/train",
                t + 1,
                serde_json::json!({"opt": opt}),
                *v,
                Some(10 * k as u64),
            );
        }
    }
    write(
        dir.path(),
        "plan.json",
        &plan_json("opt", "f32", steps.into()),
    );
    write(dir.path(), "results.jsonl", &results);
    // Wall time from the manifest where it has the step, else the span of
    // the run's time stamps (all 0.5 s here).
    write(
        dir.path(),
        "manifest.json",
        r#"{"status": "ok", "steps": [{"id": 20, "op": "train", "name": "t", "wall_s": 4.25}]}"#,
    );
    let s = summary_of(dir.path());
    assert!(s.contains("## EKFAC vs KFAC"), "{s}");
    assert!(s.contains("### Training loss per optimiser"), "{s}");
    // Common steps 0..40: fixed columns at steps 10, 20, 30.
    assert_eq!(
        line_with(&s, "| opt=kfac |"),
        "| opt=kfac | ngd(fim = KFAC) | 1 | 0.8 | 0.6 | 0.5 (40) | 0.98 | 4.25 |"
    );
    assert!(line_with(&s, "| opt=sgd |").ends_with("| 0 |"), "{s}");
    let c = line_with(&s, "Claim, EKFAC optimises");
    assert!(c.contains("**supported**"), "{c}");
    assert!(
        c.contains(
            "mean loss over 5 common steps EKFAC 0.9 ≤ KFAC 0.98; at step 40 EKFAC 0.4 vs KFAC 0.5"
        ),
        "{c}"
    );
}

/// Checkpoints at steps 0..30 (given out of order, with a malformed line and
/// one of the wrong length) of 5 examples whose learning times are
/// 0, 10, 30 (forgotten at 20, relearned), never (→ 40) and 20.
const EXAMPLES_HASTY: &str = r#"{"step":10,"loss":[0.1,0.2,0.3,0.4,0.5],"correct":"11100"}
{"step":0,"loss":[0.1,0.2,0.3,0.4,0.5],"correct":"10000"}
{"step":15,"correct":"111"}
{"step":20,"loss":[0.1,0.2,0.3,0.4,0.5],"correct":"11001"}
{"step":30,"loss":[0.1,0.2
{"step":30,"loss":[0.1,0.2,0.3,0.4,0.5],"correct":"11101"}
"#;

/// Learning times 10, 10, 20, 20, 30.
const EXAMPLES_LAZY: &str = r#"{"step":0,"correct":"00000"}
{"step":10,"correct":"11000"}
{"step":20,"correct":"11110"}
{"step":30,"correct":"11111"}
"#;

const DIFFICULTY: &str =
    r#"{"score":[5.0,4.0,3.0,1.0,2.0],"bin":[0,0,1,2,1],"bins":3,"method":"test"}"#;

#[test]
fn learning_times_rank_correlation_and_gap_by_hand() {
    let cps = parse_examples(EXAMPLES_HASTY.as_bytes());
    assert_eq!(
        cps.iter().map(|c| c.step).collect::<Vec<_>>(),
        [0, 10, 20, 30]
    );
    let lt = learning_times(&cps);
    assert_eq!(lt, [0.0, 10.0, 30.0, 40.0, 20.0]);
    assert_eq!(median(&lt), Some(20.0));
    let d = parse_difficulty(DIFFICULTY.as_bytes()).unwrap();
    let hardness: Vec<f64> = d.score.as_ref().unwrap().iter().map(|s| -s).collect();
    // Ranks 1 2 4 5 3 against 1 2 3 5 4: ρ = 1 − 6·2 / (5·24).
    assert!((spearman(&lt, &hardness).unwrap() - 0.9).abs() < 1e-12);
    // Hardest bin {40}, easiest bin {0, 10}: (40 − 5) / 20.
    assert_eq!(bin_gap(&lt, d.bin.as_ref().unwrap()), Some(1.75));

    let lazy = learning_times(&parse_examples(EXAMPLES_LAZY.as_bytes()));
    assert_eq!(lazy, [10.0, 10.0, 20.0, 20.0, 30.0]);
    // Tied ranks: 7.5 / √90.
    let rho = spearman(&lazy, &hardness).unwrap();
    assert!((rho - 7.5 / 90f64.sqrt()).abs() < 1e-12, "{rho}");
    assert_eq!(bin_gap(&lazy, d.bin.as_ref().unwrap()), Some(0.5));

    assert!(
        (spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]).unwrap() - 4.5 / 22.5f64.sqrt())
            .abs()
            < 1e-12
    );
    assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
    assert_eq!(spearman(&[1.0], &[1.0]), None);
    assert_eq!(bin_gap(&lt, &[0, 0, 0, 0, 0]), None);
    assert!(learning_times(&[]).is_empty());
    assert!(parse_examples(b"not json\n").is_empty());
    assert_eq!(parse_difficulty(b"{\"bins\": 3}"), None);
}

#[test]
fn summary_lazy_vs_hasty_compares_normalised_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let mut steps = Vec::new();
    let mut results = String::new();
    for (t, name, mode) in [
        (
            4u64,
            "hasty",
            serde_json::json!({"kind": "scaled", "alpha": 1.0}),
        ),
        (
            8,
            "lazy",
            serde_json::json!({"kind": "scaled", "alpha": 100.0}),
        ),
    ] {
        steps.push(
            serde_json::json!({"id": t, "op": "train", "sweep": {"regime": name},
            "config": {"mode": mode, "optimizer": {"kind": "sgd", "lr": 0.1}}}),
        );
        for (k, (clean, flipped)) in [(0.2, 0.0), (0.6, 0.0), (0.9, 0.1), (1.0, 0.3)]
            .iter()
            .enumerate()
        {
            for (g, v) in [("clean", clean), ("flipped", flipped)] {
                results += &rec(
                    "examples/accuracy",
                    t,
                    serde_json::json!({"regime": name, "group": g}),
                    *v,
                    Some(10 * k as u64),
                );
            }
        }
    }
    write(
        dir.path(),
        "plan.json",
        &plan_json("lh", "f32", steps.into()),
    );
    write(dir.path(), "results.jsonl", &results);
    std::fs::create_dir(dir.path().join("examples")).unwrap();
    write(
        &dir.path().join("examples"),
        "train_4.jsonl",
        EXAMPLES_HASTY,
    );
    write(
        &dir.path().join("examples"),
        "train_4.difficulty.json",
        DIFFICULTY,
    );
    write(&dir.path().join("examples"), "train_8.jsonl", EXAMPLES_LAZY);
    write(
        &dir.path().join("examples"),
        "train_8.difficulty.json",
        DIFFICULTY,
    );
    let s = summary_of(dir.path());
    assert!(
        s.contains("## Lazy vs hasty training (George et al. 2022)"),
        "{s}"
    );
    // The hardest bin of the hasty run is never learned: a lower bound.
    assert_eq!(
        line_with(&s, "| regime=hasty | α = 1 |"),
        "| regime=hasty | α = 1 | 4 | 5 | 20 | 1 | 0.9 | ≥ 1.75 (hardest − easiest bin) |"
    );
    assert_eq!(
        line_with(&s, "| regime=lazy | α = 100 |"),
        "| regime=lazy | α = 100 | 4 | 5 | 20 | 0 | 0.7906 | 0.5 (hardest − easiest bin) |"
    );
    assert_eq!(line_with(&s, "| clean |"), "| clean | 10 | 10 |");
    assert_eq!(
        line_with(&s, "| flipped |"),
        "| flipped | not reached | not reached |"
    );
    let c = line_with(&s, "Claim, in the hasty regime");
    assert!(c.contains("**supported**"), "{c}");
    assert!(c.contains("≥ 1.75 for the hasty run regime=hasty (α = 1) > 0.5 for the lazy run regime=lazy (α = 100)"), "{c}");
    assert!(c.contains("ρ 0.9 (hasty) vs 0.7906 (lazy)"), "{c}");

    // Without difficulties: flipped − clean at 50 % accuracy, censored.
    for id in [4, 8] {
        std::fs::remove_file(
            dir.path()
                .join(format!("examples/train_{id}.difficulty.json")),
        )
        .unwrap();
    }
    let s = summary_of(dir.path());
    // Flipped never reaches 50 % (→ step 40), clean at 10; median 20.
    assert!(
        line_with(&s, "| regime=hasty | α = 1 |").ends_with("|  | ≥ 1.5 (flipped − clean) |"),
        "{s}"
    );
    let c = line_with(&s, "Claim, in the hasty regime");
    assert!(
        c.contains("**not supported**") && c.contains("≥ 1.5 for the hasty run"),
        "{c}"
    );
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
    assert!(
        line_with(&s, "Claim 1,")
            .contains("not tested: `align/train` has fewer than 2 checkpoints"),
        "{s}"
    );

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
