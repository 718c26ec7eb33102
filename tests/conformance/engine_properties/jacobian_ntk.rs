//! Per-example Jacobians against central finite differences, and the NTK
//! as `J Jᵀ` by every path.

use super::*;

// ---------------------------------------------------------------- 1. Jacobian

/// `jacobian_rows(Outputs)` (rows `c·n + i`) against central differences
/// of `net.forward` with h = 1e-6, per layer: error ≤ 1e-6 × the layer's
/// largest Jacobian entry. The dense true Fisher for classification
/// against `1/n Σᵢ Jᵢᵀ (diag pᵢ − pᵢ pᵢᵀ) Jᵢ` made from those finite
/// differences: 1e-6.
fn check_jacobian_fd(model: impl Model, n: usize, seed: u64) -> BTreeSet<&'static str> {
    let fx = Fx::new(model, n, seed);
    let (c, np) = (fx.c, fx.net.num_params());
    let j = fx.problem(n).jacobian_rows(&Target::Outputs).unwrap();
    assert_eq!((j.rows, j.cols), (c * n, np));
    let w0 = fx.params.flat();
    assert_eq!(w0.len(), np);
    let h = 1e-6;
    let mut fd = Mat::zeros(c * n, np);
    let mut w = w0.clone();
    for k in 0..np {
        w[k] = w0[k] + h;
        let zp = fx.outputs_at(&w);
        w[k] = w0[k] - h;
        let zm = fx.outputs_at(&w);
        w[k] = w0[k];
        for i in 0..n {
            for a in 0..c {
                fd.set(a * n + i, k, (zp[i * c + a] - zm[i * c + a]) / (2.0 * h));
            }
        }
    }
    for slot in &fx.net.slots {
        let cols = |m: &Mat| sub_block(m, 0, slot.offset, c * n, slot.numel).data;
        let (ours, theirs) = (cols(&j), cols(&fd));
        assert!(
            theirs.iter().any(|x| x.abs() > 1e-8),
            "{}: the finite-difference Jacobian of {} vanishes",
            model,
            slot.name
        );
        assert_close(
            &format!("Jacobian of {} ({})", slot.name, model),
            &ours,
            &theirs,
            1e-6,
        );
    }
    // F = 1/n Σᵢ Jᵢᵀ Hᵢ Jᵢ, Hᵢ = diag pᵢ − pᵢ pᵢᵀ (softmax probabilities).
    let z = fx.outputs_at(&w0);
    let mut f = Mat::zeros(np, np);
    for i in 0..n {
        let p: Vec<f64> = log_softmax(&z[i * c..(i + 1) * c])
            .iter()
            .map(|l| l.exp())
            .collect();
        let mut hj = Mat::zeros(c, np);
        for a in 0..c {
            for k in 0..np {
                let v = (0..c)
                    .map(|b| {
                        let hab = if a == b { p[a] } else { 0.0 } - p[a] * p[b];
                        hab * fd.get(b * n + i, k)
                    })
                    .sum();
                hj.set(a, k, v);
            }
        }
        let ji = Mat::from_vec(
            c,
            np,
            (0..c)
                .flat_map(|a| (0..np).map(move |k| (a, k)))
                .map(|(a, k)| fd.get(a * n + i, k))
                .collect(),
        );
        f = add_mats(&f, &ji.transpose().matmul(&hj));
    }
    f.data.iter_mut().for_each(|x| *x /= n as f64);
    let dense = fx
        .problem(n)
        .fim_dense(&classification())
        .unwrap()
        .to_dense()
        .unwrap();
    assert_close(
        &format!("{model}: dense FIM vs finite-difference Jᵀ H J"),
        &dense.data,
        &f.data,
        1e-6,
    );
    fx.spec.layers.iter().map(|l| l.layer.type_name()).collect()
}

/// Every layer type, chains and graphs.
#[test]
fn jacobian_matches_finite_differences_for_every_layer_type() {
    let mut seen = check_jacobian_fd(ALL_2D, 6, 11);
    seen.extend(check_jacobian_fd(ALL_1D, 6, 12));
    seen.extend(check_jacobian_fd(POOL_FIRST, 6, 13));
    seen.extend(check_jacobian_fd(RESNET, 5, 14));
    seen.extend(check_jacobian_fd(BRANCHES, 5, 15));
    seen.extend(check_jacobian_fd(EMBED, 5, 16));
    seen.extend(check_jacobian_fd(CONVT, 4, 17));
    seen.extend(check_jacobian_fd(GROUPED, 4, 18));
    seen.extend(check_jacobian_fd(MORE_2D, 5, 19));
    seen.extend(check_jacobian_fd(MORE_1D, 5, 20));
    seen.extend(check_jacobian_fd(PLAIN_NORMS, 5, 21));
    seen.extend(check_jacobian_fd(NORMS_1D, 5, 22));
    seen.extend(check_jacobian_fd(HARD, 6, 23));
    let every: BTreeSet<&str> = [
        "Embedding",
        "ConvTranspose2d",
        "Linear",
        "Conv2d",
        "Conv1d",
        "ReLU",
        "Tanh",
        "Sigmoid",
        "GELU",
        "LeakyReLU",
        "ELU",
        "SiLU",
        "Hardtanh",
        "ReLU6",
        "Hardsigmoid",
        "Hardswish",
        "Flatten",
        "MaxPool2d",
        "AvgPool2d",
        "AdaptiveAvgPool2d",
        "MaxPool1d",
        "AvgPool1d",
        "AdaptiveAvgPool1d",
        "AdaptiveMaxPool2d",
        "AdaptiveMaxPool1d",
        "BatchNorm1d",
        "BatchNorm2d",
        "LayerNorm",
        "GroupNorm",
        "Add",
        "Concat",
    ]
    .into_iter()
    .collect();
    let missing: Vec<_> = every.difference(&seen).collect();
    assert!(missing.is_empty(), "layer types not covered: {missing:?}");
}

// ---------------------------------------------------------------- 2. NTK

/// NTK = J Jᵀ; structured path = per-example path; per-layer NTKs sum to
/// the total. All to 1e-10.
fn check_ntk(model: impl Model, n: usize, seed: u64, expect_structured: bool) {
    let fx = Fx::new(model, n, seed);
    let p = fx.problem(n);
    let j = p.jacobian_rows(&Target::Outputs).unwrap();
    let jjt = j.matmul(&j.transpose());
    let k = p.ntk_dense(false).unwrap();
    assert_eq!((k.rows, k.cols), (fx.c * n, fx.c * n));
    assert_close(&format!("{model}: NTK vs J Jᵀ"), &k.data, &jjt.data, 1e-10);
    let k_pe = p.ntk_dense(true).unwrap();
    assert_close(
        &format!("{model}: structured vs per-example NTK"),
        &k.data,
        &k_pe.data,
        1e-10,
    );
    // The structured path is really taken for some layer of the MLP.
    let structured = fx.net.slots.iter().any(|s| {
        let (a, b) = stats::ntk_costs(s, fx.c, n, 1);
        s.kind.kron() && a <= b
    });
    assert_eq!(structured, expect_structured, "{model}: structured path");
    let mut sum = Mat::zeros(k.rows, k.cols);
    for s in 0..fx.net.slots.len() {
        let mut pl = fx.problem(n);
        pl.slots = vec![s];
        let kl = pl.ntk_dense(false).unwrap();
        // Each layer's NTK is its own J_l J_lᵀ.
        let jl = sub_block(&j, 0, fx.net.slots[s].offset, j.rows, fx.net.slots[s].numel);
        assert_close(
            &format!("{model}: NTK of layer {s}"),
            &kl.data,
            &jl.matmul(&jl.transpose()).data,
            1e-10,
        );
        sum = add_mats(&sum, &kl);
    }
    assert_close(
        &format!("{model}: Σ per-layer NTK"),
        &sum.data,
        &k.data,
        1e-10,
    );
}

#[test]
fn ntk_is_j_jt_by_every_path() {
    check_ntk(MLP, 8, 21, true);
    check_ntk(CNN, 6, 22, true);
    check_ntk(NORM_CNN, 6, 23, true);
    check_ntk(RESNET, 5, 24, true);
    check_ntk(BRANCHES, 5, 25, true);
    check_ntk(EMBED, 5, 26, true);
    check_ntk(CONVT, 4, 27, true);
    check_ntk(GROUPED, 4, 28, true);
}
