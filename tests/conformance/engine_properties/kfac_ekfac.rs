//! KFAC against its definition (exact where it must be), and EKFAC's
//! refitted diagonal and its optimality.

use super::*;

// ---------------------------------------------------------------- 4. KFAC

/// `A = √n_out/n Σ ã ãᵀ` recomputed by hand for a single Linear layer.
fn kfac_a_by_hand(fx: &Fx, xs: &[f64], n_out: usize) -> Mat {
    let d = fx.spec.input[0];
    let mut a = Mat::zeros(d + 1, d + 1);
    for i in 0..fx.n {
        let mut at = xs[i * d..(i + 1) * d].to_vec();
        at.push(1.0);
        for r in 0..=d {
            for c in 0..=d {
                a.data[r * (d + 1) + c] += at[r] * at[c];
            }
        }
    }
    let s = (n_out as f64).sqrt() / fx.n as f64;
    a.data.iter_mut().for_each(|x| *x *= s);
    a
}

/// KFAC is exact (= BlockDiag = dense) for one Linear layer when G is the
/// same for every example: regression (G = I/√C), or identical inputs.
/// Its factors equal the hand-made ones; 1e-10.
#[test]
fn kfac_is_exact_where_it_must_be() {
    for (identical, task) in [
        (true, Task::Regression { sigma2: 1.0 }),
        (false, Task::Regression { sigma2: 1.0 }),
        (true, Task::Classification),
    ] {
        let what = format!("identical = {identical}, {task:?}");
        let fx = Fx::build(LINEAR, 8, 51, Dtype::F64, identical);
        let p = match task {
            Task::Classification => fx.problem(fx.n),
            _ => fx.problem_regression(fx.n),
        };
        let t = true_fim(task.clone());
        let dense = p.fim_dense(&t).unwrap().to_dense().unwrap();
        let bd = p
            .fim_blocks(&t, &[BlockKind::Dense])
            .unwrap()
            .to_dense()
            .unwrap();
        let kfac = p.fim_blocks(&t, &[BlockKind::Kfac]).unwrap();
        assert_close(&format!("{what}: BlockDiag"), &bd.data, &dense.data, 1e-12);
        assert_close(
            &format!("{what}: KFAC vs BlockDiag"),
            &kfac.to_dense().unwrap().data,
            &bd.data,
            1e-10,
        );
        let Block::Kfac { a, g } = &blocks(&kfac)[0] else {
            panic!("not KFAC")
        };
        let (a, g) = (&*a.as_f64().unwrap(), &*g.as_f64().unwrap());
        let xs = fx.o.download(&fx.x).unwrap();
        let n_out = match task {
            Task::Classification => fx.c - 1,
            _ => fx.c,
        };
        assert_close(
            &format!("{what}: A"),
            &a.data,
            &kfac_a_by_hand(&fx, &xs, n_out).data,
            1e-12,
        );
        if let Task::Regression { .. } = task {
            let mut gi = Mat::identity(fx.c);
            gi.data.iter_mut().for_each(|x| *x /= (fx.c as f64).sqrt());
            assert_close(&format!("{what}: G"), &g.data, &gi.data, 1e-12);
        }
        // trace = tr A · tr G, Frobenius = ‖A‖‖G‖, against the dense matrix.
        let d = kfac.to_dense().unwrap();
        assert_close(
            &format!("{what}: trace"),
            &[kfac.trace().unwrap()],
            &[a.trace() * g.trace()],
            1e-12,
        );
        assert_close(
            &format!("{what}: trace"),
            &[kfac.trace().unwrap()],
            &[d.trace()],
            1e-10,
        );
        assert_close(
            &format!("{what}: frobenius"),
            &[kfac.frobenius().unwrap()],
            &[a.frobenius() * g.frobenius()],
            1e-12,
        );
        assert_close(
            &format!("{what}: frobenius"),
            &[kfac.frobenius().unwrap()],
            &[d.frobenius()],
            1e-10,
        );
        let v = fx.random_vector(3);
        assert_close(
            &format!("{what}: mv"),
            &kfac.mv(&v).unwrap(),
            &d.matvec(&v),
            1e-10,
        );
        assert_close(
            &format!("{what}: mv vs F"),
            &kfac.mv(&v).unwrap(),
            &dense.matvec(&v),
            1e-10,
        );
    }
}

/// For a single example KFAC is exact on every Linear layer, whatever the
/// model around it (`F_l = E[g gᵀ] ⊗ a aᵀ`): its blocks equal BlockDiag's
/// there (1e-10). A convolution sums over positions, so there it is not
/// (checked to differ, so that the comparison means something).
#[test]
fn kfac_is_exact_on_linear_layers_for_one_example() {
    check_kfac_one_example(MLP, 71);
    check_kfac_one_example(RESNET, 72);
    check_kfac_one_example(BRANCHES, 73);
}

fn check_kfac_one_example(model: impl Model, seed: u64) {
    let fx = Fx::new(model, 1, seed);
    let p = fx.problem(1);
    let t = classification();
    let kfac = p.fim_blocks(&t, &fx.affine_kinds(BlockKind::Kfac)).unwrap();
    let bd = p.fim_blocks(&t, &fx.kinds(BlockKind::Dense)).unwrap();
    let mut linear = 0;
    for (k, l) in kfac.layers.iter().enumerate() {
        let SlotKind::Affine { conv, .. } = fx.net.slots[k].kind else {
            continue;
        };
        let (ours, exact) = (
            blocks(&kfac)[k].to_dense(l).unwrap(),
            blocks(&bd)[k].to_dense(l).unwrap(),
        );
        if conv {
            assert!(
                rel_err(&ours.data, &exact.data) > 1e-6,
                "{model} {}: KFAC of a convolution is exact",
                l.name
            );
        } else {
            assert_close(
                &format!("{model} {}: KFAC vs BlockDiag", l.name),
                &ours.data,
                &exact.data,
                1e-10,
            );
            linear += 1;
        }
    }
    assert!(linear > 0, "{model}: no Linear layer");
}

/// A transposed convolution reading the input, then a Linear head.
const CONVT_HEAD: Graph = Graph("conv_transpose2d + linear", || {
    graph(
        &[2, 3, 2],
        34,
        &[
            (
                "up",
                convt(2, 3, [3, 2], [2, 1], [1, 0], [1, 0], [1, 2], 1, true),
                &["x"],
            ),
            ("flat", Layer::Flatten, &["up"]),
            ("fc", linear(3 * 6 * 4, 4, true), &["flat"]),
        ],
    )
});

/// KFAC of a ConvTranspose2d is NNGeometry's convolution KFAC on the
/// patches of the transposed convolution (`unfold_transpose_conv2d`:
/// per output position, the input each tap reaches):
/// `A = √n_out/n Σ_{i,p} ã ãᵀ` (ã with a trailing 1 for the bias),
/// `G = 1/(√n_out n L) Σ_{i,c,p} g gᵀ`. Both rebuilt here from the
/// definition, the patches by looping over PyTorch's output-size formula
/// and `g` from the Linear head (regression: the outputs themselves are
/// backpropagated, so `g[c, p] = W_fc[c, (co, p)]`). 1e-12.
#[test]
fn kfac_of_conv_transpose_matches_its_definition() {
    let fx = Fx::new(CONVT_HEAD, 5, 81);
    let p = fx.problem_regression(fx.n);
    let t = true_fim(Task::Regression { sigma2: 1.0 });
    let kfac = p
        .fim_blocks(&t, &[BlockKind::Kfac, BlockKind::Kfac])
        .unwrap();
    let Block::Kfac { a, g } = &blocks(&kfac)[0] else {
        panic!("not KFAC")
    };
    let (a, g) = (&*a.as_f64().unwrap(), &*g.as_f64().unwrap());
    let (cin, cout, kh, kw) = (2, 3, 3, 2);
    let (h, w, oh, ow) = (3, 2, 6, 4);
    let (stride, pad, dil) = ([2, 1], [1, 0], [1, 2]);
    let xs = fx.o.download(&fx.x).unwrap();
    let sa = cin * kh * kw + 1;
    let mut a_hand = Mat::zeros(sa, sa);
    for i in 0..fx.n {
        for r in 0..oh {
            for c in 0..ow {
                let mut at = vec![0.0; sa];
                at[sa - 1] = 1.0;
                for ci in 0..cin {
                    for ki in 0..kh {
                        for kj in 0..kw {
                            // r = y·s − p + k·d for some input row y.
                            let ty = r as isize + pad[0] as isize - (ki * dil[0]) as isize;
                            let tx = c as isize + pad[1] as isize - (kj * dil[1]) as isize;
                            if ty < 0 || tx < 0 {
                                continue;
                            }
                            let (ty, tx) = (ty as usize, tx as usize);
                            if ty % stride[0] != 0 || tx % stride[1] != 0 {
                                continue;
                            }
                            let (y, x) = (ty / stride[0], tx / stride[1]);
                            if y < h && x < w {
                                at[ci * kh * kw + ki * kw + kj] =
                                    xs[((i * cin + ci) * h + y) * w + x];
                            }
                        }
                    }
                }
                for u in 0..sa {
                    for v in 0..sa {
                        a_hand.data[u * sa + v] += at[u] * at[v];
                    }
                }
            }
        }
    }
    let c_out = fx.c;
    let root = (c_out as f64).sqrt();
    a_hand
        .data
        .iter_mut()
        .for_each(|x| *x *= root / fx.n as f64);
    assert_close("ConvTranspose2d KFAC A", &a.data, &a_hand.data, 1e-12);
    let wfc = &fx.params.get("fc.weight").unwrap().data;
    let l = oh * ow;
    let mut g_hand = Mat::zeros(cout, cout);
    for c in 0..c_out {
        for q in 0..l {
            for u in 0..cout {
                for v in 0..cout {
                    let (wu, wv) = (wfc[c * cout * l + u * l + q], wfc[c * cout * l + v * l + q]);
                    g_hand.data[u * cout + v] += wu * wv / (root * l as f64);
                }
            }
        }
    }
    assert_close("ConvTranspose2d KFAC G", &g.data, &g_hand.data, 1e-12);
    // And the block is G ⊗ A in PyTorch's flat order `[in, out, kh, kw]`
    // then the bias.
    let l0 = &kfac.layers[0];
    let dense = blocks(&kfac)[0].to_dense(l0).unwrap();
    for (gu, au, gv, av) in [(0, 0, 0, 0), (1, 3, 2, 5), (2, 12, 0, 7), (1, 4, 1, 12)] {
        assert_close(
            "ConvTranspose2d KFAC entry",
            &[dense.get(flat_index(l0, gu, au), flat_index(l0, gv, av))],
            &[g_hand.get(gu, gv) * a_hand.get(au, av)],
            1e-12,
        );
    }
}

// ---------------------------------------------------------------- 5. EKFAC

/// `d[k, j] = u_kjᵀ F_l u_kj` with `u_kj = ug[:, k] ⊗ ua[:, j]` in flat order.
fn kfe_diag_by_hand(l: &LayerInfo, fl: &Mat, ua: &Mat, ug: &Mat) -> Vec<f64> {
    let mut d = Vec::with_capacity(l.sg * l.sa);
    for k in 0..l.sg {
        for j in 0..l.sa {
            let mut u = vec![0.0; l.numel];
            for g in 0..l.sg {
                for a in 0..l.sa {
                    u[flat_index(l, g, a)] = ug.get(g, k) * ua.get(a, j);
                }
            }
            d.push(dot(&u, &fl.matvec(&u)));
        }
    }
    d
}

/// EKFAC without refit = KFAC (1e-10). Refitted: its diagonal is
/// diag(Uᵀ F_l U) (1e-10), its trace the BlockDiag trace (1e-10), and it
/// is no farther from BlockDiag than KFAC is, layer by layer (the EKFAC
/// theorem; 1e-12 slack). On graph models the norm layers take dense
/// blocks (KFAC does not apply to them), the same in every structure.
#[test]
fn ekfac_properties() {
    check_ekfac(MLP, 10, 61);
    check_ekfac(CNN, 6, 62);
    check_ekfac(RESNET, 6, 63);
    check_ekfac(BRANCHES, 6, 64);
    check_ekfac(CONVT, 5, 65);
}

fn check_ekfac(model: impl Model, n: usize, seed: u64) {
    let fx = Fx::new(model, n, seed);
    let p = fx.problem(n);
    let t = classification();
    let kfac = p.fim_blocks(&t, &fx.affine_kinds(BlockKind::Kfac)).unwrap();
    let e0 = p
        .fim_blocks(&t, &fx.affine_kinds(BlockKind::Ekfac { refit: false }))
        .unwrap();
    let e1 = p
        .fim_blocks(&t, &fx.affine_kinds(BlockKind::Ekfac { refit: true }))
        .unwrap();
    let bd = p.fim_blocks(&t, &fx.kinds(BlockKind::Dense)).unwrap();
    assert_close(
        &format!("{model}: EKFAC(refit = false) vs KFAC"),
        &e0.to_dense().unwrap().data,
        &kfac.to_dense().unwrap().data,
        1e-10,
    );
    assert_close(
        &format!("{model}: EKFAC trace"),
        &[e1.trace().unwrap()],
        &[bd.trace().unwrap()],
        1e-10,
    );
    assert_close(
        &format!("{model}: EKFAC dense trace"),
        &[e1.to_dense().unwrap().trace()],
        &[bd.trace().unwrap()],
        1e-10,
    );
    let mut strict = 0;
    for (k, l) in e1.layers.iter().enumerate() {
        let fl = blocks(&bd)[k].to_dense(l).unwrap();
        let kl = blocks(&kfac)[k].to_dense(l).unwrap();
        let el = blocks(&e1)[k].to_dense(l).unwrap();
        let Block::Ekfac { ua, ug, d } = &blocks(&e1)[k] else {
            assert!(
                !fx.net.slots[k].kind.kron(),
                "{model} {}: not EKFAC",
                l.name
            );
            continue;
        };
        assert_close(
            &format!("{model} {}: refitted diagonal", l.name),
            &d.data,
            &kfe_diag_by_hand(l, &fl, &ua.as_f64().unwrap(), &ug.as_f64().unwrap()),
            1e-10,
        );
        let (de, dk) = (frob_dist(&el, &fl), frob_dist(&kl, &fl));
        assert!(
            de <= dk + 1e-12 * fl.frobenius(),
            "{model} {}: ‖EKFAC − F‖ = {de:e} > ‖KFAC − F‖ = {dk:e}",
            l.name
        );
        strict += (de < 0.99 * dk) as usize;
    }
    assert!(strict > 0, "{model}: the refit never improved on KFAC");
    let (de, dk) = (
        frob_dist(&e1.to_dense().unwrap(), &bd.to_dense().unwrap()),
        frob_dist(&kfac.to_dense().unwrap(), &bd.to_dense().unwrap()),
    );
    assert!(
        de <= dk,
        "{model}: ‖EKFAC − F‖ = {de:e} > ‖KFAC − F‖ = {dk:e}"
    );
}
