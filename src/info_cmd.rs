//! The commands that describe this build rather than run a file:
//! `nngeo models` (the model library), `nngeo backends` (what was found,
//! with versions and capabilities) and `nngeo bench`.

use nngeo::check::CheckOptions;
use std::process::ExitCode;

pub(crate) fn models() -> ExitCode {
    let opts = CheckOptions {
        default_budget: u64::MAX,
        ..CheckOptions::default()
    };
    for m in nngeo::check::library_models() {
        let src = format!(
            "experiment models {{ seed = 0 }}\nmodel net = {}()\n",
            m.name
        );
        let count = match nngeo::compile_source(&src, &opts) {
            Ok(plan) => plan
                .steps
                .iter()
                .find_map(|s| match &s.op {
                    nngeo::plan::Op::Model { spec, .. } => Some(group_digits(spec.params)),
                    _ => None,
                })
                .unwrap_or_default(),
            Err(_) => "?".into(),
        };
        let params: Vec<String> = m
            .params
            .iter()
            .map(|(n, d)| match d {
                Some(d) => format!("{n} = {d}"),
                None => n.clone(),
            })
            .collect();
        println!("{}({})", m.name, params.join(", "));
        println!("    {count} parameters at the defaults");
        if !m.doc.is_empty() {
            println!("    {}", m.doc);
        }
    }
    ExitCode::SUCCESS
}

/// 11689512 → "11,689,512".
fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `nngeo backends`: built-in backends and every plugin found, with what
/// each can do, or exactly why it was refused.
pub(crate) fn backends() -> ExitCode {
    let config = match nngeo::config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let show = |info: &nngeo::backend::BackendInfo| {
        println!("  version:      {}", info.version);
        println!("  devices:      {}", info.devices.join(", "));
        let dtypes: Vec<String> = info
            .dtypes
            .iter()
            .map(|d| format!("{d:?}").to_lowercase())
            .collect();
        println!("  dtypes:       {}", dtypes.join(", "));
        println!("  capabilities: {}", info.capabilities.join(", "));
    };
    let mut names: Vec<String> = Vec::new();
    for (name, make) in nngeo::select::BUILT_IN {
        println!("{name} (built-in): ready");
        show(&make().info());
        names.push(name.to_string());
    }
    for f in nngeo::plugin::discover::discover(&config) {
        let name = f.name();
        match &f.result {
            Ok(p) => {
                let m = &p.meta;
                let shadow = if names.contains(&name) {
                    format!(", shadowed by an earlier `{name}` (select it as `plugin:{name}` or by path)")
                } else {
                    String::new()
                };
                match p.create() {
                    Ok(b) => {
                        use nngeo::backend::Backend;
                        println!("{name} (plugin): ready{shadow}");
                        println!("  file:         {} ({})", m.path.display(), f.origin);
                        println!(
                            "  plugin:       {} {}, nngeo {}, {}",
                            name, m.plugin_version, m.nngeo_version, m.rustc_version
                        );
                        println!("  framework:    {}", m.framework);
                        println!(
                            "  features:     {}",
                            if m.features.is_empty() {
                                "-".into()
                            } else {
                                m.features.join(", ")
                            }
                        );
                        show(&b.info());
                    }
                    Err(e) => {
                        println!("{name} (plugin): unavailable: {e}");
                        println!("  file:         {} ({})", m.path.display(), f.origin);
                    }
                }
            }
            Err(e) => {
                println!("{name} (plugin): unavailable");
                println!("  reason:       {e}");
                println!("  found:        {}", f.origin);
            }
        }
        names.push(name);
    }
    for name in nngeo::select::SHIPPED_PLUGINS {
        if !names.iter().any(|n| n == name) {
            println!("{name} (plugin): not built");
            if let Some(h) = nngeo::select::build_hint(name) {
                println!("  how:          {h}");
            }
        }
    }
    ExitCode::SUCCESS
}

/// Peak memory of `case` run alone in a fresh process (`bench --once`).
fn once_peak(exe: &std::path::Path, case: &str) -> Option<f64> {
    let out = std::process::Command::new(exe)
        .args(["bench", "--once", "--case", case])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace().find_map(|kv| {
        kv.strip_prefix("peak_rss_bytes")?
            .strip_prefix('=')?
            .parse()
            .ok()
    })
}

pub(crate) fn bench(cases: Vec<String>, repeats: usize, once: bool) -> ExitCode {
    use nngeo::bench::{median, run_once, CASES};
    if once {
        let Some(name) = cases.first() else {
            return ExitCode::from(2);
        };
        let before = nngeo::report::peak_rss_bytes().unwrap_or(0);
        return match run_once(name) {
            Ok((s, _, _)) => {
                let peak = nngeo::report::peak_rss_bytes().unwrap_or(0);
                println!("seconds={s} peak_rss_bytes={peak} baseline_rss_bytes={before}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    let selected: Vec<_> = CASES
        .iter()
        .filter(|c| cases.is_empty() || cases.iter().any(|n| n == c.name))
        .collect();
    if selected.is_empty() {
        let names: Vec<_> = CASES.iter().map(|c| c.name).collect();
        eprintln!("error: no such case; cases: {}", names.join(", "));
        return ExitCode::from(2);
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into());
    println!("nngeo bench: candle backend (faer matmul), cpu, f32, threads = {threads}, median of {repeats}");
    println!("(`exec-*` cases run `nngeo exec` on $NNGEO_BACKEND / $NNGEO_DEVICE, candle on cpu when unset)");
    println!(
        "{:<12} {:>9} {:>8} {:>8} {:>10} {:>7} {:>9} {:>9}  what",
        "case", "median s", "GFLOP", "GFLOP/s", "NNGeom. s", "speedup", "peak MB", "stored MB"
    );
    let exe = std::env::current_exe().ok();
    // (case, median seconds, the representation step's median for `exec-*`).
    let mut medians: Vec<(&str, f64, Option<f64>)> = Vec::new();
    for c in selected {
        let measured = if nngeo::bench::exec_counterpart(c.name).is_some() {
            // A whole `nngeo exec` per run, its peak from the run itself;
            // no FLOP count or stored size of its own.
            nngeo::bench::exec_median(c.name, repeats).map(|t| {
                (
                    t.whole_s,
                    f64::NAN,
                    f64::NAN,
                    Some(t.peak_bytes),
                    Some(t.step_s),
                )
            })
        } else {
            median(c.name, repeats).map(|(secs, flops, stored)| {
                let peak = exe.as_ref().and_then(|exe| once_peak(exe, c.name));
                (secs, flops, stored, peak, None)
            })
        };
        let (secs, flops, stored, peak, step) = match measured {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {}: {e}", c.name);
                return ExitCode::from(1);
            }
        };
        let reference = c
            .reference
            .map(|r| format!("{r:.2}"))
            .unwrap_or_else(|| "-".into());
        let speedup = c
            .reference
            .map(|r| format!("{:.2}x", r / secs))
            .unwrap_or_else(|| "-".into());
        let num = |x: f64, p: usize| {
            if x.is_finite() {
                format!("{x:.p$}")
            } else {
                "-".into()
            }
        };
        println!(
            "{:<12} {:>9.4} {:>8} {:>8} {:>10} {:>7} {:>9} {:>9}  {}",
            c.name,
            secs,
            num(flops / 1e9, 2),
            num(flops / secs / 1e9, 1),
            reference,
            speedup,
            num(peak.unwrap_or(f64::NAN) / 1e6, 0),
            num(stored / 1e6, 1),
            c.what
        );
        medians.push((c.name, secs, step));
    }
    // The user's path against the builder alone, where both ran: the whole
    // process, and the representation's own step in it.
    for (name, whole, step) in &medians {
        let Some((inner, n)) = nngeo::bench::exec_counterpart(name) else {
            continue;
        };
        if let Some((_, s, _)) = medians.iter().find(|(m, _, _)| *m == inner) {
            // A Fisher's build is linear in n (`exec-kfac-5000` against
            // 5 × `kfac`); an NTK is compared at equal n only.
            let m = nngeo::bench::case_examples(inner);
            let scale = if m == n {
                String::new()
            } else if inner.contains("ntk") {
                continue;
            } else {
                format!(" × {}/{m}", n)
            };
            let s = s * n as f64 / m as f64;
            println!(
                "{name} / {inner}{scale}: whole process {:.2}, its `repr` step {:.2}",
                whole / s,
                step.unwrap_or(f64::NAN) / s
            );
        }
    }
    ExitCode::SUCCESS
}
