//! Measurements through the whole pipeline (text → plan → candle backend →
//! results.jsonl), checked against each other where the mathematics says
//! they must agree.

mod run_ngx;

use nngeo::backend::RunContext;
use run_ngx::{backend, num, rel, run_source, vec_of};
use serde_json::Value;
use std::collections::HashMap;

/// Runs `body` (declarations and measurements) after a common header and
/// returns every result by key.
fn run(dtype: &str, body: &str) -> HashMap<String, Value> {
    let src = format!(
        "experiment t {{ dtype = {dtype} }}\n\
         data train = digits(split = train) |> normalize\n\
         data probe = train |> take(3, per_class, seed = 1)\n\
         model net = sequential(conv2d(1, 2, kernel = 3, stride = 2, padding = 1), tanh, flatten, \
         linear(32, 8), relu, linear(8, 10), input = [1, 8, 8], init = pytorch(seed = 3))\n\
         let v = random_vector(net, seed = 5)\n{body}\n"
    );
    run_source(&src)
}

#[test]
fn ntk_structures_agree_with_the_dense_kernel() {
    let r = run(
        "f64",
        "let K = Ntk(Dense) of net on probe\n\
         measure trace(K) as \"t/dense\", frobenius(K) as \"f/dense\", diag(K) as \"d/dense\"\n\
         measure eigenvalues(K, top = 5) as \"ev/dense\", effective_rank(K) as \"erank\"\n\
         measure trace(Ntk(BlockDiag) of net on probe) as \"t/block\", diag(Ntk(BlockDiag) of net on probe) as \"d/block\"\n\
         measure trace(Ntk(Diag) of net on probe) as \"t/diag\"\n\
         measure eigenvalues(Ntk(LowRank(rank = 5)) of net on probe, top = 5) as \"ev/low\"\n\
         measure trace(Ntk(LowRank(rank = 5)) of net on probe) as \"t/low\"\n\
         measure alignment(K, onehot(probe)) as \"align\", alignment(K, onehot(probe), centered = true) as \"align/c\"\n\
         measure rel_error(Ntk(Dense, centered = true) of net on probe, K) as \"centering\"\n\
         for layer in layers(net) { measure trace(K[layer]) as \"t/{layer}\" }",
    );
    let t = num(&r, "t/dense");
    assert!((num(&r, "t/block") - t).abs() < 1e-10 * t);
    assert!((num(&r, "t/diag") - t).abs() < 1e-10 * t);
    assert!(rel(&vec_of(&r, "d/block"), &vec_of(&r, "d/dense")) < 1e-12);
    // The best rank-5 approximation keeps the top 5 eigenpairs exactly.
    let top = vec_of(&r, "ev/dense");
    assert!(rel(&vec_of(&r, "ev/low"), &top) < 1e-10);
    assert!((num(&r, "t/low") - top.iter().sum::<f64>()).abs() < 1e-9 * t);
    // Per-layer kernels sum to the total.
    let layers: f64 = ["layers.0", "layers.3", "layers.5"]
        .iter()
        .map(|l| num(&r, &format!("t/{l}")))
        .sum();
    assert!((layers - t).abs() < 1e-10 * t, "{layers} vs {t}");
    let erank = num(&r, "erank");
    assert!(erank > 1.0 && erank < 300.0, "{erank}");
    for k in ["align", "align/c"] {
        let a = num(&r, k);
        assert!(a > 0.0 && a < 1.0, "{k} = {a}");
    }
    assert!(num(&r, "centering") > 1e-3);
}

#[test]
fn implicit_agrees_with_dense() {
    let r = run(
        "f64",
        "let F = Fim(Dense) of net on probe\n\
         let I = Fim(Implicit) of net on probe\n\
         measure mv(F, v) as \"mv/F\", mv(I, v) as \"mv/I\"\n\
         measure trace(F) as \"t/F\", trace(I) as \"t/I\", frobenius(F) as \"f/F\", frobenius(I) as \"f/I\"\n\
         measure solve(F, v, damping = 1e-2) as \"s/F\", solve(I, v, damping = 1e-2) as \"s/I\"\n\
         measure eigenvalues(F, top = 3) as \"e/F\", eigenvalues(I, top = 3) as \"e/I\"\n\
         measure spectral_norm(I) as \"sn/I\", memory(I) as \"mem/I\", rel_error(I, F) as \"err/I\"",
    );
    assert!(rel(&vec_of(&r, "mv/I"), &vec_of(&r, "mv/F")) < 1e-10);
    assert!((num(&r, "t/I") - num(&r, "t/F")).abs() < 1e-10 * num(&r, "t/F"));
    assert!((num(&r, "f/I") - num(&r, "f/F")).abs() < 1e-10 * num(&r, "f/F"));
    // Conjugate gradients against the Cholesky solve.
    assert!(rel(&vec_of(&r, "s/I"), &vec_of(&r, "s/F")) < 1e-6);
    assert!(rel(&vec_of(&r, "e/I"), &vec_of(&r, "e/F")) < 1e-8);
    assert!((num(&r, "sn/I") - vec_of(&r, "e/F")[0]).abs() < 1e-8 * vec_of(&r, "e/F")[0]);
    assert_eq!(num(&r, "mem/I"), 0.0);
    assert!(num(&r, "err/I") < 1e-10);
}

#[test]
fn tasks_layers_and_variants() {
    let r = run(
        "f64",
        "let F = Fim(Dense) of net on probe\n\
         measure trace(Fim(Dense, layers = [\"layers.5\"]) of net on probe) as \"t/one\", trace(F[\"layers.5\"]) as \"t/block\"\n\
         measure trace(Fim(Dense, task = regression(sigma2 = 0.5)) of net on probe) as \"t/reg05\"\n\
         measure trace(Fim(Dense, task = regression(sigma2 = 1.0)) of net on probe) as \"t/reg1\"\n\
         measure trace(Fim(mix(linear = EKFAC(refit = true), conv = KFAC)) of net on probe) as \"t/mix\"\n\
         measure trace(Fim(BlockDiag) of net on probe) as \"t/bd\"\n\
         measure trace(Fim(Diag, fisher = empirical) of net on probe) as \"t/emp\"\n\
         measure trace(Fim(Dense, fisher = empirical) of net on probe) as \"t/emp_dense\"\n\
         measure trace(Fim(LowRank(rank = 4)) of net on probe) as \"t/low4\", eigenvalues(F, top = 4) as \"ev\"",
    );
    assert!((num(&r, "t/one") - num(&r, "t/block")).abs() < 1e-12 * num(&r, "t/one"));
    assert!((num(&r, "t/reg05") - 2.0 * num(&r, "t/reg1")).abs() < 1e-10 * num(&r, "t/reg05"));
    assert!((num(&r, "t/emp") - num(&r, "t/emp_dense")).abs() < 1e-10 * num(&r, "t/emp"));
    let top4: f64 = vec_of(&r, "ev").iter().sum();
    assert!((num(&r, "t/low4") - top4).abs() < 1e-9 * top4);
    assert!(num(&r, "t/mix") > 0.0 && num(&r, "t/bd") > 0.0);
}

/// A mix keyed by layer names and globs gives each layer the block its
/// structure alone gives it; a later entry overrides an earlier one.
#[test]
fn mix_by_layer_name_gives_each_layer_its_structure() {
    let r = run(
        "f64",
        "let M = Fim(mix(conv = KFAC, linear = KFAC, \"layers.5\" = Diag, \"layers.0\" = EKFAC(refit = true))) of net on probe\n\
         let G = Fim(mix(\"layers.*\" = Diag, \"layers.3\" = BlockDiag)) of net on probe\n\
         measure frobenius(M[\"layers.5\"]) as \"m5\", frobenius((Fim(Diag) of net on probe)[\"layers.5\"]) as \"d5\"\n\
         measure frobenius(M[\"layers.3\"]) as \"m3\", frobenius((Fim(KFAC) of net on probe)[\"layers.3\"]) as \"k3\"\n\
         measure frobenius(M[\"layers.0\"]) as \"m0\", frobenius((Fim(EKFAC(refit = true)) of net on probe)[\"layers.0\"]) as \"e0\"\n\
         measure frobenius(G[\"layers.3\"]) as \"g3\", frobenius((Fim(BlockDiag) of net on probe)[\"layers.3\"]) as \"b3\"\n\
         measure frobenius(G[\"layers.0\"]) as \"g0\", frobenius((Fim(Diag) of net on probe)[\"layers.0\"]) as \"d0\"",
    );
    for (got, want) in [
        ("m5", "d5"),
        ("m3", "k3"),
        ("m0", "e0"),
        ("g3", "b3"),
        ("g0", "d0"),
    ] {
        let (g, w) = (num(&r, got), num(&r, want));
        assert!((g - w).abs() <= 1e-12 * w, "{got} = {g} vs {want} = {w}");
    }
    // The structures differ on these layers, so the test can tell them apart.
    assert!((num(&r, "k3") - num(&r, "b3")).abs() > 1e-6 * num(&r, "b3"));
    assert!((num(&r, "d5") - num(&r, "m3")).abs() > 0.0);
}

#[test]
fn float32_runs_agree_with_float64() {
    let body = "let F = Fim(KFAC) of net on probe\n\
                measure trace(F) as \"t\", vTMv(F, v) as \"q\"\n\
                measure trace(Ntk(Dense) of net on probe) as \"k\"";
    let a = run("f32", body);
    let b = run("f64", body);
    for k in ["t", "q", "k"] {
        let (x, y) = (num(&a, k), num(&b, k));
        assert!((x - y).abs() < 1e-4 * y.abs(), "{k}: f32 {x} vs f64 {y}");
    }
}

/// `memory(M)` is what the representation holds, in the precision it is
/// held in: a dense Fisher and BlockDiag's blocks in the run's precision
/// (f32: half of f64), KFAC's factors in f64 whatever the run's dtype, a
/// dense NTK in the run's precision, a centred one in f64. The counts
/// follow from the layers: the conv's 2 × (9 + 1) weights,
/// `linear(32, 8)`'s 8 × 33, `linear(8, 10)`'s 10 × 9 (374 parameters);
/// KFAC holds 10² + 2², 33² + 8² and 9² + 10²; the probe has 30 examples
/// of 10 outputs.
#[test]
fn memory_is_what_a_representation_holds_in_either_dtype() {
    let body = "measure memory(Fim(KFAC) of net on probe) as \"kfac\"\n\
                measure memory(Fim(Dense) of net on probe) as \"dense\"\n\
                measure memory(Fim(BlockDiag) of net on probe) as \"blocks\"\n\
                measure memory(Ntk(Dense) of net on probe) as \"ntk\"\n\
                measure memory(Ntk(Dense, centered = true) of net on probe) as \"centred\"";
    let kfac = (100 + 4 + 33 * 33 + 64 + 81 + 100) as f64;
    let blocks = (20 * 20 + 264 * 264 + 90 * 90) as f64;
    for dtype in ["f32", "f64"] {
        let r = run(dtype, body);
        let size = if dtype == "f32" { 4.0 } else { 8.0 };
        assert_eq!(num(&r, "kfac"), kfac * 8.0, "{dtype}");
        assert_eq!(num(&r, "dense"), (374.0 * 374.0) * size, "{dtype}");
        assert_eq!(num(&r, "blocks"), blocks * size, "{dtype}");
        assert_eq!(num(&r, "ntk"), (300.0 * 300.0) * size, "{dtype}");
        assert_eq!(num(&r, "centred"), (300.0 * 300.0) * 8.0, "{dtype}");
    }
}

/// EKFAC without refit keeps KFAC's eigenvalue products, so its trace is
/// KFAC's, `tr(A)·tr(G)`, in any precision. With a single-precision
/// eigendecomposition of the 513-wide factors it was 1.3·10⁻³ short.
#[test]
fn float32_ekfac_without_refit_keeps_the_kfac_trace() {
    let src = "experiment t { dtype = f32 }\n\
               data train = digits(split = train) |> normalize\n\
               data probe = train |> take(600, random, seed = 1)\n\
               model net = mlp(in = 64, hidden = [512, 512], out = 10, act = relu, \
               init = pytorch(seed = 3))\n\
               measure trace(Fim(KFAC) of net on probe) as \"kfac\"\n\
               measure trace(Fim(EKFAC(refit = false)) of net on probe) as \"ekfac\"\n";
    let r = run_source(src);
    let (kfac, ekfac) = (num(&r, "kfac"), num(&r, "ekfac"));
    assert!(
        (kfac - ekfac).abs() <= 1e-5 * kfac.abs(),
        "f32 EKFAC trace {ekfac} vs KFAC {kfac}: rel {:.2e}",
        (kfac - ekfac).abs() / kfac.abs()
    );
}

#[test]
fn saturated_softmax_gives_a_finite_fisher() {
    // Weights so large that p is one-hot to machine precision, where
    // NNGeometry's pseudo-outputs give NaN.
    let src = "experiment sat { dtype = f64 }\n\
               data train = digits(split = train) |> normalize\n\
               data probe = train |> take(20)\n\
               model net = mlp(in = 64, hidden = [16], out = 10, init = normal(std = 100, seed = 1))\n\
               let F = Fim(Dense) of net on probe\n\
               measure trace(F) as \"t\", frobenius(F) as \"f\", trace(Fim(KFAC) of net on probe) as \"k\"\n";
    let plan = nngeo::compile_source(src, &Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ctx = RunContext {
        base_dir: ".".into(),
        out_dir: dir.path().to_path_buf(),
    };
    nngeo::exec::run(&plan, backend().as_mut(), &ctx).unwrap();
    let text = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 3);
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let x = v["value"].as_f64().unwrap_or(f64::NAN);
        assert!(x.is_finite() && x >= 0.0, "{line}");
    }
}

#[test]
fn training_hooks_and_per_example_tracking() {
    let src = "experiment tr { dtype = f64 }\n\
               data d = digits(split = train) |> normalize |> take(60)\n\
               data noisy = d |> label_noise(0.2, seed = 1)\n\
               model net = mlp(in = 64, hidden = [16], out = 10, init = pytorch(seed = 2))\n\
               train net on noisy {\n\
                 loss = cross_entropy\n\
                 optimizer = sgd(lr = 0.1, momentum = 0.9)\n\
                 steps = 10\n\
                 batch = 20\n\
                 track = per_example(every = 5, groups = [all, flipped, clean])\n\
                 at [0, 5, 10] { measure accuracy(net, noisy) as \"acc\", loss(net, noisy) as \"loss\" }\n\
               }\n";
    let plan = nngeo::compile_source(src, &Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ctx = RunContext {
        base_dir: ".".into(),
        out_dir: dir.path().to_path_buf(),
    };
    nngeo::exec::run(&plan, backend().as_mut(), &ctx).unwrap();
    let text = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |key: &str, step: u64, group: Option<&str>| -> f64 {
        lines
            .iter()
            .find(|l| {
                l["key"] == key
                    && l["step"] == step
                    && group.is_none_or(|g| l["sweep"]["group"] == g)
            })
            .and_then(|l| l["value"].as_f64())
            .unwrap_or_else(|| panic!("no {key} at {step} for {group:?}"))
    };
    // 10 optimiser steps, each with its mini-batch loss.
    assert_eq!(
        lines.iter().filter(|l| l["key"] == "train/loss").count(),
        10
    );
    for step in [0, 5, 10] {
        // The tracked summary is the direct computation of the hook.
        let acc = find("acc", step, None);
        assert!((find("examples/accuracy", step, Some("all")) - acc).abs() < 1e-12);
        let loss = find("loss", step, None);
        assert!((find("examples/loss", step, Some("all")) - loss).abs() < 1e-12 * loss);
        // 12 of the 60 labels were flipped: the groups average to the whole.
        let mixed = (12.0 * find("examples/accuracy", step, Some("flipped"))
            + 48.0 * find("examples/accuracy", step, Some("clean")))
            / 60.0;
        assert!((mixed - acc).abs() < 1e-12);
    }
    // Training lowers the loss on this small set.
    assert!(find("loss", 10, None) < find("loss", 0, None));
    // Every example at every checkpoint, one line per checkpoint.
    let ex_dir = dir.path().join("examples");
    let file = std::fs::read_dir(&ex_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let ex = std::fs::read_to_string(file).unwrap();
    let ex: Vec<Value> = ex
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ex.len(), 3);
    for e in &ex {
        assert_eq!(e["loss"].as_array().unwrap().len(), 60);
        assert_eq!(e["correct"].as_str().unwrap().len(), 60);
    }
}

/// `EKFAC(basis = initial)`: at initialisation it is EKFAC itself (1e-12);
/// after training it differs from a fresh EKFAC, and its refitted diagonal
/// is the best diagonal in that stale basis, so it is closer to the
/// block-diagonal Fisher than the initial EKFAC (same basis, old diagonal).
/// A fresh refitted EKFAC is never further than KFAC (the theorem).
#[test]
fn ekfac_with_a_stale_basis() {
    let r = run(
        "f64",
        "let E = Fim(EKFAC) of net on probe\n\
         measure rel_error(Fim(EKFAC(basis = initial)) of net on probe, E) as \"at_init\"\n\
         train net on train {\n optimizer = sgd(lr = 0.5, momentum = 0.9)\n steps = 5\n batch = 64\n\
           at end {\n\
             let B = Fim(BlockDiag) of net on probe\n\
             let S = Fim(EKFAC(basis = initial)) of net on probe\n\
             measure rel_error(S, Fim(EKFAC) of net on probe) as \"stale_vs_fresh\"\n\
             measure rel_error(S, B) as \"stale\", rel_error(E, B) as \"initial\"\n\
             measure rel_error(Fim(EKFAC) of net on probe, B) as \"fresh\"\n\
             measure rel_error(Fim(KFAC) of net on probe, B) as \"kfac\"\n\
           }\n\
         }",
    );
    assert!(num(&r, "at_init") < 1e-12, "{}", num(&r, "at_init"));
    assert!(
        num(&r, "stale_vs_fresh") > 1e-6,
        "{}",
        num(&r, "stale_vs_fresh")
    );
    assert!(num(&r, "stale") <= num(&r, "initial") * (1.0 + 1e-12));
    assert!(num(&r, "fresh") <= num(&r, "kfac") * (1.0 + 1e-12));
}

/// The Hessian and Jacobian products through the language: each Hessian
/// structure agrees with the dense one, its Gauss–Newton part with the
/// true Fisher; `jvp` is a `[n, C]` tensor and `vjp` its adjoint.
#[test]
fn hessian_and_jacobian_products() {
    let r = run(
        "f64",
        "let H = Hessian(Dense) of net on probe\n\
         let HI = Hessian(Implicit) of net on probe\n\
         measure trace(H) as \"t/dense\", trace(Hessian(Diag) of net on probe) as \"t/diag\"\n\
         measure trace(Hessian(BlockDiag) of net on probe) as \"t/block\", vTMv(H, v) as \"q/dense\", vTMv(HI, v) as \"q/implicit\"\n\
         measure eigenvalues(H, top = 3) as \"ev/dense\", eigenvalues(HI, top = 3) as \"ev/implicit\"\n\
         measure rel_error(Hessian(Dense, part = gauss_newton) of net on probe, Fim(Dense) of net on probe) as \"gn\"\n\
         measure rel_error(H, Hessian(Dense, part = gauss_newton) of net on probe) as \"curved\"\n\
         let J = Jacobian of net on probe\n\
         let u = jvp(J, v)\n\
         let w = random_vector(net, seed = 9)\n\
         measure u as \"u\", dot(jvp(J, w), u) as \"<Jw, Jv>\", dot(vjp(J, u), w) as \"<JtJv, w>\"",
    );
    let t = num(&r, "t/dense");
    for k in ["t/diag", "t/block"] {
        assert!((num(&r, k) - t).abs() < 1e-10 * t.abs(), "{k}");
    }
    let q = num(&r, "q/dense");
    assert!((num(&r, "q/implicit") - q).abs() < 1e-10 * q.abs());
    assert!(rel(&vec_of(&r, "ev/implicit"), &vec_of(&r, "ev/dense")) < 1e-8);
    assert!(num(&r, "gn") < 1e-10, "{}", num(&r, "gn"));
    assert!(
        num(&r, "curved") > 1e-3,
        "the network's curvature is missing"
    );
    let shape: Vec<u64> = r["u"]["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(shape, vec![30, 10]);
    let a = num(&r, "<Jw, Jv>");
    assert!((num(&r, "<JtJv, w>") - a).abs() < 1e-12 * a.abs().max(1.0));
}

/// `influence` against the same numbers written out in the language: the
/// test gradient solved with M, against example i's own gradient (from
/// the mean over all examples and the mean without it, `drop(i)`), for a
/// KFAC Fisher and a dense Hessian; the mean option is the mean.
#[test]
fn influence_is_the_preconditioned_gradient_product() {
    let r = run(
        "f64",
        "data test = digits(split = test) |> normalize |> take(20, random, seed = 3)\n\
         let F = Fim(KFAC) of net on probe\n\
         let H = Hessian(Dense) of net on probe\n\
         let gi = 30 * grad(net, probe) - 29 * grad(net, probe |> drop(7))\n\
         measure dot(solve(F, grad(net, test), damping = 1e-2), gi) as \"F/by hand\"\n\
         measure influence(F, net, probe, test, damping = 1e-2, example = 7) as \"F/influence\"\n\
         measure dot(solve(H, grad(net, test), damping = 1e-1), gi) as \"H/by hand\"\n\
         measure influence(H, net, probe, test, damping = 1e-1, example = 7) as \"H/influence\"\n\
         measure influence(F, net, probe, test, damping = 1e-2) as \"F/all\"\n\
         measure influence(F, net, probe, test, damping = 1e-2, mean = true) as \"F/mean\"",
    );
    for m in ["F", "H"] {
        let by_hand = -num(&r, &format!("{m}/by hand"));
        let got = num(&r, &format!("{m}/influence"));
        assert!(
            (got - by_hand).abs() <= 1e-10 * by_hand.abs(),
            "{m}: {got} vs {by_hand}"
        );
    }
    let all = vec_of(&r, "F/all");
    assert_eq!(all.len(), 30);
    assert!((all[7] - num(&r, "F/influence")).abs() <= 1e-12 * all[7].abs());
    let mean = all.iter().sum::<f64>() / 30.0;
    assert!((num(&r, "F/mean") - mean).abs() <= 1e-12 * mean.abs().max(1e-300));
}
