//! The three thesis experiments of `experiments/` run end to end in a
//! reduced configuration: the files themselves, with the listed
//! substitutions (fewer examples and steps), through `nngeo exec`. Each
//! substitution must apply, so that a change to an experiment file cannot
//! silently turn its test into a run of something else.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

#[path = "conformance/reduced.rs"]
mod reduced;

/// Runs `experiments/<name>.ngx` with `edits` applied; returns the results
/// directory's parsed `results.jsonl` and its `summary.md`.
fn run_reduced(name: &str, edits: &[(&str, &str)], out: &Path) -> (Vec<Value>, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = reduced::source(root, name, edits);
    let file = out.join(format!("{name}.ngx"));
    std::fs::write(&file, src).unwrap();
    let dir = out.join("results");
    let run = Command::new(env!("CARGO_BIN_EXE_nngeo"))
        .args([
            "exec",
            file.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ])
        .current_dir(root)
        .env("NO_COLOR", "1")
        .output()
        .expect("run nngeo");
    assert!(
        run.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let results = std::fs::read_to_string(dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for f in ["results.csv", "manifest.json", "plan.json"] {
        assert!(dir.join(f).exists(), "{name}: no {f}");
    }
    (
        results,
        std::fs::read_to_string(dir.join("summary.md")).unwrap(),
    )
}

/// `(sweep tag value, training step, value)` of every scalar `key`.
fn series<'a>(results: &'a [Value], key: &str, tag: &str) -> Vec<(&'a str, u64, f64)> {
    results
        .iter()
        .filter(|r| r["key"] == key)
        .filter_map(|r| {
            Some((
                r["sweep"][tag].as_str()?,
                r["step"].as_u64()?,
                r["value"].as_f64()?,
            ))
        })
        .collect()
}

fn pngs(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("results"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count()
}

#[test]
fn ntk_align_runs_reduced() {
    let dir = tempfile::tempdir().unwrap();
    let (results, summary) = run_reduced("ntk_align", reduced::NTK_ALIGN, dir.path());
    for key in [
        "align/train",
        "align/test",
        "align_trace/train",
        "effective_rank",
        "trace",
        "distance_from_init",
    ] {
        let s = series(&results, key, "noise");
        for noise in ["0.0", "0.2", "0.5"] {
            assert!(s.iter().any(|x| x.0 == noise), "no {key} for noise {noise}");
        }
        assert!(s.iter().all(|x| x.2.is_finite()), "{key}");
    }
    // The kernel's distance to its initial value: 0 at step 0, then > 0.
    for (_, step, v) in series(&results, "ntk_distance", "noise") {
        assert_eq!(step == 0, v == 0.0, "ntk_distance {v} at step {step}");
    }
    assert!(results.iter().any(|r| r["key"]
        .as_str()
        .is_some_and(|k| k.starts_with("align/train/layers."))));
    assert_claims_evaluated(&summary, 4);
    assert!(pngs(dir.path()) >= 5);
}

#[test]
fn ekfac_optim_runs_reduced() {
    let dir = tempfile::tempdir().unwrap();
    let (results, summary) = run_reduced("ekfac_optim", reduced::EKFAC_OPTIM, dir.path());
    check_optimisers(&results, &summary);
    assert!(dir.path().join("results/loss_train_vs_time.png").exists());
}

/// What both EKFAC experiments must show: every optimiser lowers the
/// training loss, and refitted EKFAC is never further from the
/// block-diagonal Fisher than KFAC (a theorem; f32 runs: 1e-5 relative) at
/// each of the 4 optimisers × 3 checkpoints.
fn check_optimisers(results: &[Value], summary: &str) {
    let loss = series(results, "loss/train", "opt");
    for opt in ["sgd", "adam", "kfac", "ekfac"] {
        let run: Vec<_> = loss.iter().filter(|x| x.0 == opt).collect();
        let (first, last) = (run.first().unwrap(), run.last().unwrap());
        assert!(last.2 < first.2, "{opt}: loss {} → {}", first.2, last.2);
        // The training clock: from 0, never backwards, hooks excluded (so
        // below the run's wall time since its first result).
        let clock: Vec<(f64, f64)> = results
            .iter()
            .filter(|r| r["key"] == "loss/train" && r["sweep"]["opt"] == opt)
            .map(|r| {
                (
                    r["train_time_s"].as_f64().expect("train_time_s"),
                    r["time_s"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(clock[0].0, 0.0);
        assert!(clock.windows(2).all(|w| w[1].0 >= w[0].0), "{clock:?}");
        let (t_end, wall_end) = *clock.last().unwrap();
        assert!(t_end > 0.0 && t_end < wall_end - clock[0].1, "{clock:?}");
    }
    let kfac = series(results, "rel_error/KFAC", "opt");
    let ekfac = series(results, "rel_error/EKFAC(refit = true)", "opt");
    assert_eq!(kfac.len(), 12, "4 optimisers × 3 checkpoints");
    for (k, e) in kfac.iter().zip(&ekfac) {
        assert_eq!((k.0, k.1), (e.0, e.1));
        assert!(
            e.2 <= k.2 * (1.0 + 1e-5),
            "EKFAC {} > KFAC {} at {k:?}",
            e.2,
            k.2
        );
    }
    let theorem = summary
        .lines()
        .find(|l| {
            l.starts_with(
                "| refitted EKFAC is never further from the block-diagonal Fisher than KFAC |",
            )
        })
        .unwrap_or_else(|| panic!("no EKFAC claim in {summary}"));
    assert!(
        theorem.ends_with("| 12/12 hold | **supported** |"),
        "{summary}"
    );
    assert_claims_evaluated(summary, 4);
}

/// The experiment's declared claims are all in the summary with a verdict
/// computed from the run (supported or not, never "not evaluated").
fn assert_claims_evaluated(summary: &str, n: usize) {
    assert!(summary.contains("## Claims"), "{summary}");
    assert!(
        summary.contains(&format!(" of {n} claims declared")),
        "{summary}"
    );
    assert!(!summary.contains("not evaluated"), "{summary}");
}

#[test]
fn ekfac_autoencoder_runs_reduced() {
    let dir = tempfile::tempdir().unwrap();
    let (results, summary) = run_reduced(
        "ekfac_autoencoder",
        &[
            (
                "data digits_train = digits(split = train) |> normalize",
                "data digits_train = digits(split = train) |> normalize |> take(256, random, seed = 0)",
            ),
            ("take(50, random, seed = 4)", "take(12, random, seed = 4)"),
            ("hidden = [48, 16, 48]", "hidden = [16, 4, 16]"),
            ("epochs = 10", "epochs = 6"),
            ("every 50 steps", "every 6 steps"),
        ],
        dir.path(),
    );
    check_optimisers(&results, &summary);
    let ekfac = series(&results, "rel_error/EKFAC(refit = true)", "opt");
    let stale = series(&results, "rel_error/EKFAC(basis = initial)", "opt");
    assert_eq!(stale.len(), 12);
    // At step 0 the stale basis is the current one.
    for (s, e) in stale.iter().zip(&ekfac).filter(|(s, _)| s.1 == 0) {
        assert!((s.2 / e.2 - 1.0).abs() < 1e-5, "{s:?} vs {e:?}");
    }
}

#[test]
fn lazy_vs_hasty_runs_reduced() {
    let dir = tempfile::tempdir().unwrap();
    let (results, summary) = run_reduced("lazy_vs_hasty", reduced::LAZY_VS_HASTY, dir.path());
    let acc: Vec<&Value> = results
        .iter()
        .filter(|r| r["key"] == "examples/accuracy")
        .collect();
    for regime in ["hasty", "lazy", "linear"] {
        for group in ["clean", "flipped", "difficulty 1/4", "difficulty 4/4"] {
            assert!(
                acc.iter()
                    .any(|r| r["sweep"]["regime"] == regime && r["sweep"]["group"] == group),
                "no {group} accuracy for {regime}"
            );
        }
    }
    let difficulty: Vec<_> = std::fs::read_dir(dir.path().join("results/examples"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".difficulty.json")
        })
        .collect();
    assert_eq!(difficulty.len(), 9, "3 regimes × 3 initialisations");
    // α = 100 is the lazy limit: its loss curve is the centred linearised
    // model's to within a few percent, while the weights move ~α times less.
    let loss = series(&results, "loss/train", "regime");
    let last = |regime: &str| loss.iter().rfind(|x| x.0 == regime).unwrap().2;
    assert!(
        (last("lazy") / last("linear") - 1.0).abs() < 0.05,
        "lazy {} vs linearised {}",
        last("lazy"),
        last("linear")
    );
    let moved = series(&results, "distance_from_init", "regime");
    let far = |regime: &str| moved.iter().rfind(|x| x.0 == regime).unwrap().2;
    assert!(far("hasty") > 20.0 * far("lazy"));
    assert_claims_evaluated(&summary, 3);
}

/// The residual variant: a ResNet (BatchNorm trained with batch
/// statistics) runs in all three regimes with the same groups, and the
/// lazy model's weights move far less than the hasty one's.
#[test]
fn lazy_vs_hasty_resnet_runs_reduced() {
    let dir = tempfile::tempdir().unwrap();
    let (results, _) = run_reduced(
        "lazy_vs_hasty_resnet",
        reduced::LAZY_VS_HASTY_RESNET,
        dir.path(),
    );
    for regime in ["hasty", "lazy", "linear"] {
        for group in ["clean", "flipped", "difficulty 1/4", "difficulty 4/4"] {
            assert!(
                results.iter().any(|r| r["key"] == "examples/accuracy"
                    && r["sweep"]["regime"] == regime
                    && r["sweep"]["group"] == group),
                "no {group} accuracy for {regime}"
            );
        }
    }
    let moved = series(&results, "distance_from_init", "regime");
    let far = |regime: &str| moved.iter().rfind(|x| x.0 == regime).unwrap().2;
    assert!(
        far("hasty") > 20.0 * far("lazy"),
        "{} vs {}",
        far("hasty"),
        far("lazy")
    );
}

/// Elastic weight consolidation: every penalty structure trains through
/// both later tasks with its penalty logged, and every claim is evaluated.
#[test]
fn ewc_runs_reduced() {
    let dir = tempfile::tempdir().unwrap();
    let (results, summary) = run_reduced(
        "ewc",
        &[
            ("replicate init in 0..5", "replicate init in 0..2"),
            ("take(300, random, seed = 7)", "take(60, random, seed = 7)"),
            ("epochs = 10", "epochs = 2"),
            ("every 20 steps", "every 10 steps"),
        ],
        dir.path(),
    );
    for s in ["Diag", "KFAC", "EKFAC", "BlockDiag"] {
        let after: Vec<f64> = results
            .iter()
            .filter(|r| r["key"] == "after/task1" && r["sweep"]["S"] == s)
            .map(|r| r["value"].as_f64().unwrap())
            .collect();
        assert_eq!(after.len(), 2, "{s}: one per initialisation");
        // Both penalised trainings log their penalty, which is positive
        // once the weights leave the anchor.
        let penalty: Vec<f64> = results
            .iter()
            .filter(|r| r["key"] == "train/penalty" && r["sweep"]["S"] == s)
            .map(|r| r["value"].as_f64().unwrap())
            .collect();
        assert!(!penalty.is_empty(), "{s}: no train/penalty");
        assert!(penalty.iter().all(|p| p.is_finite() && *p >= 0.0), "{s}");
        assert!(penalty.iter().any(|p| *p > 0.0), "{s}");
    }
    assert!(
        !results
            .iter()
            .any(|r| r["key"] == "train/penalty" && r["sweep"]["S"].is_null()),
        "the unpenalised run logs no penalty"
    );
    assert_claims_evaluated(&summary, 3);
}

/// Natural gradient with BatchNorm statistics of both kinds: every
/// configuration trains (finite mini-batch losses), and the batch
/// statistics change the trajectory of the same configuration.
#[test]
fn ngd_batchnorm_runs_reduced() {
    let dir = tempfile::tempdir().unwrap();
    let (results, _) = run_reduced(
        "ngd_batchnorm",
        &[
            (
                "data train = digits(split = train) |> normalize",
                "data train = digits(split = train) |> normalize |> take(192, random, seed = 0)",
            ),
            ("conv2d(1, 32,", "conv2d(1, 8,"),
            ("batchnorm2d(32)", "batchnorm2d(8)"),
            ("conv2d(32, 64,", "conv2d(8, 16,"),
            ("batchnorm2d(64)", "batchnorm2d(16)"),
            ("linear(64, 10)", "linear(16, 10)"),
            ("epochs = 3", "epochs = 2"),
        ],
        dir.path(),
    );
    let loss = series(&results, "train/loss", "opt");
    let run = |opt: &str| -> Vec<f64> { loss.iter().filter(|x| x.0 == opt).map(|x| x.2).collect() };
    for lr_d in ["lr0.03/d0.01", "lr0.1/d0.01", "lr0.1/d0.1"] {
        let (running, batch) = (
            run(&format!("running/{lr_d}")),
            run(&format!("batch/{lr_d}")),
        );
        assert_eq!(running.len(), 6, "{lr_d}: 3 steps per epoch × 2");
        assert_eq!(batch.len(), running.len(), "{lr_d}");
        assert!(
            running.iter().chain(&batch).all(|l| l.is_finite()),
            "{lr_d}"
        );
        // Step 1's loss comes before any update; later ones differ.
        assert_eq!(running[0], batch[0], "{lr_d}");
        assert!(
            running[1..].iter().zip(&batch[1..]).any(|(a, b)| a != b),
            "{lr_d}: batch statistics changed nothing"
        );
    }
}

/// experiments/influence.ngx in small: each preconditioner's influence of
/// every example, of the chosen ones (the same numbers) and the means over
/// the mislabelled and the clean examples (which add up to the total), and
/// the leave-one-out retrainings.
#[test]
fn influence_runs_reduced() {
    let dir = tempfile::tempdir().unwrap();
    let (results, summary) = run_reduced(
        "influence",
        &[
            ("[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]", "[0, 1, 2, 3]"),
            ("steps = 1500", "steps = 200"),
        ],
        dir.path(),
    );
    let value = |key: &str, m: &str| -> &Value {
        &results
            .iter()
            .find(|r| r["key"] == key && r["sweep"]["M"] == m)
            .unwrap_or_else(|| panic!("no {key} for {m}"))["value"]
    };
    for m in ["KFAC", "EKFAC", "Fisher", "Hessian"] {
        let all: Vec<f64> = value("influence", m)["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(all.len(), 300, "{m}");
        let scale = all.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        for r in results
            .iter()
            .filter(|r| r["key"] == "predicted" && r["sweep"]["M"] == m)
        {
            let i: usize = r["sweep"]["i"].as_str().unwrap().parse().unwrap();
            let p = r["value"].as_f64().unwrap();
            assert!((p - all[i]).abs() <= 1e-10 * scale, "{m}: example {i}");
        }
        // 30 of the 300 labels are flipped.
        let (f, c) = (
            value("mean/flipped", m).as_f64().unwrap(),
            value("mean/clean", m).as_f64().unwrap(),
        );
        let total: f64 = all.iter().sum();
        assert!(
            (30.0 * f + 270.0 * c - total).abs() <= 1e-9 * scale * 300.0,
            "{m}"
        );
    }
    let loo = results.iter().filter(|r| r["key"] == "loss/loo").count();
    assert_eq!(loo, 4);
    assert_claims_evaluated(&summary, 4);
}
