//! Plots of many series, and byte-valued axes.

use super::summary::*;
use super::*;

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
