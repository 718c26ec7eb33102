//! `nngeo plan`'s human-readable view: one row per step with its estimated
//! memory and cost.

use super::cost::{format_bytes, format_flops, format_seconds, nominal_flops_per_second};
use super::*;
use std::fmt::Write;

fn describe(op: &Op) -> (String, String) {
    match op {
        Op::Data { name, source, .. } => (
            "data".into(),
            format!(
                "{name} = {}",
                serde_json::to_string(source).unwrap_or_default()
            ),
        ),
        Op::Transform {
            name,
            input,
            transform,
            info,
        } => (
            "data".into(),
            format!(
                "{name} = #{} |> {} ({} examples)",
                input.0,
                serde_json::to_string(transform).unwrap_or_default(),
                info.n
            ),
        ),
        Op::Model { name, spec } => (
            "model".into(),
            format!(
                "{name}: {} layers, {} parameters, {:?} → {:?}",
                spec.layers.len(),
                spec.params,
                spec.input,
                spec.output
            ),
        ),
        Op::Repr {
            name,
            object,
            structure,
            model,
            options,
            ..
        } if options.file.is_some() => (
            "repr".into(),
            format!(
                "{name} = {object:?}({}) of #{} from `{}`",
                structure.name(),
                model.0,
                options.file.as_deref().unwrap_or_default()
            ),
        ),
        Op::Repr {
            name,
            object,
            structure,
            model,
            data,
            options,
        } => (
            "repr".into(),
            format!(
                "{name} = {object:?}({}) of #{} on #{} ({} examples{})",
                structure.name(),
                model.0,
                data.0,
                options.examples,
                options
                    .shards
                    .map(|k| format!(", sharded({k})"))
                    .unwrap_or_default()
            ),
        ),
        Op::Vector { name, vector } => (
            "vector".into(),
            format!(
                "{name} = {}",
                serde_json::to_string(vector).unwrap_or_default()
            ),
        ),
        Op::Matrix { name, matrix } => (
            "matrix".into(),
            format!(
                "{name} = {}",
                serde_json::to_string(matrix).unwrap_or_default()
            ),
        ),
        Op::Measure { key, measurement } => {
            let kind = serde_json::to_value(measurement)
                .ok()
                .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(String::from))
                .unwrap_or_default();
            ("measure".into(), format!("\"{key}\" = {kind}"))
        }
        Op::Train {
            name,
            model,
            data,
            config,
            hooks,
        } => (
            "train".into(),
            format!(
                "{name}: #{} on #{}, {} steps, {} hook(s)",
                model.0,
                data.0,
                config.total_steps,
                hooks.len()
            ),
        ),
        Op::Save { model, path } => ("save".into(), format!("#{} → {path}", model.0)),
        Op::WithWeights {
            name,
            model,
            weights,
        } => (
            "model".into(),
            format!("{name} = #{} with the weights of #{}", model.0, weights.0),
        ),
        Op::Expect { text, .. } => ("expect".into(), format!("\"{text}\"")),
        Op::Plot { pattern, x, by, .. } => (
            "plot".into(),
            format!(
                "\"{pattern}\" against {x}{}",
                if by.is_empty() {
                    String::new()
                } else {
                    format!(" by {}", by.join(", "))
                }
            ),
        ),
    }
}

/// The per-step table printed by `nngeo plan`.
pub fn render_table(plan: &Plan) -> String {
    let rate = nominal_flops_per_second(&plan.experiment.device);
    let mut out = String::new();
    let h = &plan.experiment;
    let _ = writeln!(
        out,
        "experiment {}: backend {}, device {}, dtype {:?}, seed {}, out {}",
        h.name, h.backend, h.device, h.dtype, h.seed, h.out
    );
    let _ = writeln!(
        out,
        "{:>4}  {:<7} {:>10} {:>12} {:>9}  {:<6} what",
        "id", "kind", "memory", "compute", "time≈", "line"
    );
    let mut total_flops: u64 = 0;
    for s in &plan.steps {
        let (kind, what) = describe(&s.op);
        let mut what = what;
        if !s.sweep.is_empty() {
            let tags: Vec<String> = s.sweep.iter().map(|(k, v)| format!("{k}={v}")).collect();
            what.push_str(&format!("  [{}]", tags.join(", ")));
        }
        if let Some(hk) = s.hook {
            what = format!("↳ hook {} of #{}: {what}", hk.hook, hk.train.0);
        } else {
            total_flops = total_flops.saturating_add(s.cost.flops);
        }
        let _ = writeln!(
            out,
            "{:>4}  {:<7} {:>10} {:>12} {:>9}  {:<6} {}",
            s.id.0,
            kind,
            format_bytes(s.cost.memory),
            format_flops(s.cost.flops),
            format_seconds(s.cost.flops as f64 / rate),
            s.span.line,
            what
        );
    }
    let _ = writeln!(
        out,
        "{} steps; peak memory of the run ≈ {}; total ≈ {} (≈ {} at a nominal {} FLOP/s on {})",
        plan.steps.len(),
        format_bytes(plan.peak_memory()),
        format_flops(total_flops),
        format_seconds(total_flops as f64 / rate),
        format_flops(rate as u64).trim_end_matches("FLOP").trim(),
        h.device
    );
    out
}
