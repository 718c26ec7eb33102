//! Solves, the Fisher as the KL divergence's curvature, and batching that
//! changes no representation.

use super::*;

// ---------------------------------------------------------------- 6. solve

/// `‖(F + λI) x − v‖ / ‖v‖` with `x = fim.solve(v, λ)` ≤ 1e-8 for every
/// structure with an exact damped inverse; KFAC against its π-damped
/// factors (1e-8) and, with λ = 1e-20, against itself (1e-8); EKFAC's
/// `power(−1, λ)` against `solve` for every structure but LowRank (1e-9).
#[test]
fn solve_inverts_the_damped_matrix() {
    for (model, n, seed) in [(MLP, 10, 71), (CNN, 6, 72), (NORM_CNN, 6, 73)] {
        let fx = Fx::new(model, n, seed);
        let p = fx.problem(n);
        let t = classification();
        let dense = p.fim_dense(&t).unwrap();
        let lambda = 1e-3 * dense.trace().unwrap() / dense.dim() as f64;
        let kfac_ok = !fx.spec.layers.iter().any(|l| is_norm(&l.layer));
        let mut reps = vec![
            ("dense", dense.clone()),
            ("lowrank", p.fim_lowrank(&t, None).unwrap()),
        ];
        let mut kinds = vec![
            ("blockdiag", BlockKind::Dense),
            ("diag", BlockKind::Diag),
            ("quasidiag", BlockKind::QuasiDiag),
        ];
        if kfac_ok {
            kinds.push(("ekfac", BlockKind::Ekfac { refit: true }));
            kinds.push(("ekfac no refit", BlockKind::Ekfac { refit: false }));
        }
        for (name, k) in kinds {
            reps.push((name, p.fim_blocks(&t, &fx.kinds(k)).unwrap()));
        }
        for s in 0..2 {
            let v = fx.random_vector(200 + s);
            for (name, f) in &reps {
                // LowRank with fewer rows than parameters solves in its row
                // space (NNGeometry's convention): give it a vector there.
                let v = match &f.body {
                    FimBody::LowRank(l) if l.rows < l.cols => f.mv(&v).unwrap(),
                    _ => v.clone(),
                };
                let x = f.solve(&v, lambda).unwrap();
                let back: Vec<f64> = f
                    .mv(&x)
                    .unwrap()
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| a + lambda * b)
                    .collect();
                assert_close(
                    &format!("{model} {name}: (F + λI) solve(v)"),
                    &back,
                    &v,
                    1e-8,
                );
                // QuasiDiag is indefinite (its cross terms are not those of
                // a principal sub-matrix): `power` clamps its negative
                // eigenvalues, so only `solve` inverts it.
                if *name != "lowrank" && *name != "quasidiag" {
                    let pw = f.power(-1.0, lambda).unwrap().mv(&v).unwrap();
                    assert_close(
                        &format!("{model} {name}: power(-1) vs solve"),
                        &pw,
                        &x,
                        // `power` clamps round-off negative eigenvalues
                        // (≈ −1e-17 ‖F‖) to 0 and `solve` does not, and
                        // goes through an eigendecomposition.
                        1e-9,
                    );
                }
            }
        }
        if !kfac_ok {
            continue;
        }
        // KFAC: x solves (G + √λ/π I) X (A + π√λ I) = V, π² = (tr A/sa)/(tr G/sg).
        let kfac = p.fim_blocks(&t, &fx.kinds(BlockKind::Kfac)).unwrap();
        let damped: Vec<Block> = blocks(&kfac)
            .iter()
            .map(|b| {
                let Block::Kfac { a, g } = b else {
                    panic!("not KFAC")
                };
                let (mut a, mut g) = (
                    a.as_f64().unwrap().into_owned(),
                    g.as_f64().unwrap().into_owned(),
                );
                let pi = ((a.trace() / a.rows as f64) / (g.trace() / g.rows as f64)).sqrt();
                a.add_diag(pi * lambda.sqrt());
                g.add_diag(lambda.sqrt() / pi);
                Block::Kfac {
                    a: a.into(),
                    g: g.into(),
                }
            })
            .collect();
        let damped = Fim {
            body: FimBody::Blocks(damped),
            ..kfac.clone()
        };
        let v = fx.random_vector(300);
        let x = kfac.solve(&v, lambda).unwrap();
        assert_close(
            &format!("{model} kfac: π-damped solve"),
            &damped.mv(&x).unwrap(),
            &v,
            1e-8,
        );
    }
    // λ → 0 on a well-conditioned KFAC: one Linear layer, random inputs,
    // regression (G = I/√C; with classification G is singular, since the
    // softmax ignores a common shift of the logits). √λ = 1e-10 leaves a
    // residual of ~1e-10 relative.
    let fx = Fx::new(LINEAR, 12, 74);
    let p = fx.problem_regression(12);
    let kfac = p
        .fim_blocks(
            &true_fim(Task::Regression { sigma2: 1.0 }),
            &[BlockKind::Kfac],
        )
        .unwrap();
    let ev = kfac.eigenvalues().unwrap();
    assert!(
        ev.iter().all(|e| *e > 1e-3),
        "KFAC not well conditioned: {ev:?}"
    );
    let v = fx.random_vector(5);
    let x = kfac.solve(&v, 1e-20).unwrap();
    assert_close("linear kfac: mv(solve(v))", &kfac.mv(&x).unwrap(), &v, 1e-8);
    // LowRank with at least as many rows as parameters: the full solve.
    let t = true_fim(Task::Regression { sigma2: 1.0 });
    let low = p.fim_lowrank(&t, None).unwrap();
    let FimBody::LowRank(l) = &low.body else {
        panic!("not LowRank")
    };
    assert!(l.rows >= l.cols);
    let lambda = 1e-3;
    let x = low.solve(&v, lambda).unwrap();
    let back: Vec<f64> = low
        .mv(&x)
        .unwrap()
        .iter()
        .zip(&x)
        .map(|(a, b)| a + lambda * b)
        .collect();
    assert_close("linear lowrank: (F + λI) solve(v)", &back, &v, 1e-8);
}

/// A vector with a NaN, an infinite damping or a vector of the wrong
/// length is refused by every structure with the same located words,
/// never divided through (Diag) or sliced out of bounds (BlockDiag).
#[test]
fn every_structure_refuses_a_bad_right_hand_side() {
    let fx = Fx::new(MLP, 6, 74);
    let p = fx.problem(6);
    let t = classification();
    let mut reps = vec![("dense", p.fim_dense(&t).unwrap())];
    for (name, k) in [
        ("blockdiag", BlockKind::Dense),
        ("diag", BlockKind::Diag),
        ("kfac", BlockKind::Kfac),
    ] {
        reps.push((name, p.fim_blocks(&t, &fx.kinds(k)).unwrap()));
    }
    let v = fx.random_vector(5);
    let mut nan = v.clone();
    *nan.last_mut().unwrap() = f64::NAN;
    for (name, f) in &reps {
        let err = |v: &[f64], d: f64| f.solve(v, d).unwrap_err().to_string();
        assert!(err(&nan, 0.1).contains("NaN or infinite"), "{name}");
        assert!(err(&v, f64::INFINITY).contains("NaN or infinite"), "{name}");
        assert!(err(&v[1..], 0.1).contains("dimension mismatch"), "{name}");
        assert!(f.solve(&v, 0.1).is_ok(), "{name}");
    }
}

// ---------------------------------------------------------------- 7. KL

/// `mean_i KL(p_i(w) ‖ p_i(w + εδ)) ≈ ½ ε² δᵀFδ` for ε = 1e-4 (relative
/// 1e-3), for every task's output distribution, on smooth models (no ReLU
/// or max-pool kink to cross).
#[test]
fn fim_is_the_curvature_of_the_kl_divergence() {
    for (k, (model, n, task)) in task_models().into_iter().enumerate() {
        let fx = Fx::new(model, n, 81 + k as u64);
        let f = fx
            .problem_for(&task, n)
            .fim_dense(&true_fim(task.clone()))
            .unwrap();
        let w0 = fx.params.flat();
        let z0 = fx.outputs_at(&w0);
        for s in 0..3 {
            let mut delta = fx.random_vector(400 + s);
            let norm = dot(&delta, &delta).sqrt();
            delta.iter_mut().for_each(|x| *x /= norm);
            let eps = 1e-4;
            let w: Vec<f64> = w0.iter().zip(&delta).map(|(a, d)| a + eps * d).collect();
            let mean_kl = fx
                .outputs_at(&w)
                .chunks(fx.c)
                .zip(z0.chunks(fx.c))
                .map(|(z2, z)| kl(&task, z, z2))
                .sum::<f64>()
                / n as f64;
            let quad = 0.5 * eps * eps * f.vtmv(&delta).unwrap();
            assert!(quad > 0.0);
            assert_close(
                &format!("{model} {task:?}: KL vs ½ε²δᵀFδ"),
                &[mean_kl],
                &[quad],
                1e-3,
            );
        }
    }
}

// ---------------------------------------------------------------- 8. batching

/// batch = n and batch = 3 give the same FIM for every representation
/// (1e-12; the EKFAC refit, which goes through eigenvectors, 1e-10).
#[test]
fn batching_does_not_change_any_representation() {
    for (model, n, seed) in [(CNN, 10, 91), (NORM_CNN, 10, 92), (MLP, 11, 93)] {
        let fx = Fx::new(model, n, seed);
        let kfac_ok = !fx.spec.layers.iter().any(|l| is_norm(&l.layer));
        let (whole, split) = (fx.problem(n), fx.problem(3));
        let v = fx.random_vector(9);
        for t in [
            classification(),
            Target::Fim {
                variant: FisherVariant::Empirical,
                task: Task::Classification,
            },
            Target::Fim {
                variant: FisherVariant::Mc {
                    samples: 3,
                    seed: 4,
                },
                task: Task::Classification,
            },
        ] {
            let what = |q: &str| format!("{model} {t:?}: {q}");
            let a = whole.fim_dense(&t).unwrap().to_dense().unwrap();
            let b = split.fim_dense(&t).unwrap().to_dense().unwrap();
            assert_close(&what("dense"), &b.data, &a.data, 1e-12);
            let a = whole.fim_lowrank(&t, None).unwrap().to_dense().unwrap();
            let b = split.fim_lowrank(&t, None).unwrap().to_dense().unwrap();
            assert_close(&what("lowrank"), &b.data, &a.data, 1e-12);
            assert_close(
                &what("implicit"),
                &split.implicit_mv(&t, &v).unwrap(),
                &whole.implicit_mv(&t, &v).unwrap(),
                1e-12,
            );
            let mut kinds = vec![BlockKind::Dense, BlockKind::Diag, BlockKind::QuasiDiag];
            if kfac_ok {
                kinds.extend([
                    BlockKind::Kfac,
                    BlockKind::Ekfac { refit: false },
                    BlockKind::Ekfac { refit: true },
                ]);
            }
            for k in kinds {
                let a = whole
                    .fim_blocks(&t, &fx.kinds(k))
                    .unwrap()
                    .to_dense()
                    .unwrap();
                let b = split
                    .fim_blocks(&t, &fx.kinds(k))
                    .unwrap()
                    .to_dense()
                    .unwrap();
                let tol = if matches!(k, BlockKind::Ekfac { .. }) {
                    1e-10
                } else {
                    1e-12
                };
                assert_close(&what(&format!("{k:?}")), &b.data, &a.data, tol);
            }
        }
    }
}
