//! Every Fisher structure against the dense Fisher it approximates, and
//! each representation's operations against its own dense form.

use super::*;

// ---------------------------------------------------------------- 3. structures

/// Every structure against the dense FIM it approximates (1e-10).
fn check_structures(model: impl Model, n: usize, seed: u64) {
    let fx = Fx::new(model, n, seed);
    let p = fx.problem(n);
    let t = classification();
    let fim = p.fim_dense(&t).unwrap();
    let f = fim.to_dense().unwrap();
    let np = fx.net.num_params();
    assert_eq!((f.rows, f.cols), (np, np));
    let layers = fim.layers.clone();
    let in_block = |r: usize, c: usize| {
        layers.iter().any(|l| {
            (l.offset..l.offset + l.numel).contains(&r)
                && (l.offset..l.offset + l.numel).contains(&c)
        })
    };
    // The expected matrix of a structure: F where `keep(r, c)`, else 0.
    let masked = |keep: &dyn Fn(usize, usize) -> bool| {
        let mut m = Mat::zeros(np, np);
        for r in 0..np {
            for c in 0..np {
                if keep(r, c) {
                    m.set(r, c, f.get(r, c));
                }
            }
        }
        m
    };
    let bd = p.fim_blocks(&t, &fx.kinds(BlockKind::Dense)).unwrap();
    assert_close(
        &format!("{model}: BlockDiag"),
        &bd.to_dense().unwrap().data,
        &masked(&in_block).data,
        1e-10,
    );
    let diag = p.fim_blocks(&t, &fx.kinds(BlockKind::Diag)).unwrap();
    assert_close(
        &format!("{model}: Diag"),
        &diag.to_dense().unwrap().data,
        &masked(&|r, c| r == c).data,
        1e-10,
    );
    // QuasiDiag: the diagonal and each (weight, bias of the same output
    // unit) pair — for norm layers, (scale, shift of the same feature).
    let mut pairs = BTreeSet::new();
    for l in &layers {
        if l.bias {
            for g in 0..l.sg {
                let b = l.offset + flat_index(l, g, l.sa - 1);
                for a in 0..l.sa - 1 {
                    let w = l.offset + flat_index(l, g, a);
                    pairs.insert((w, b));
                    pairs.insert((b, w));
                }
            }
        }
    }
    let qd = p.fim_blocks(&t, &fx.kinds(BlockKind::QuasiDiag)).unwrap();
    assert_close(
        &format!("{model}: QuasiDiag"),
        &qd.to_dense().unwrap().data,
        &masked(&|r, c| r == c || pairs.contains(&(r, c))).data,
        1e-10,
    );
    let low = p.fim_lowrank(&t, None).unwrap();
    assert_close(
        &format!("{model}: LowRank"),
        &low.to_dense().unwrap().data,
        &f.data,
        1e-10,
    );
    for s in 0..3 {
        let v = fx.random_vector(100 + s);
        assert_close(
            &format!("{model}: implicit mv"),
            &p.implicit_mv(&t, &v).unwrap(),
            &f.matvec(&v),
            1e-10,
        );
    }
    // LowRank(k): the top-k eigenvalues of F, and its trace their sum.
    let mut ev = eigvalsh(&f).unwrap();
    ev.sort_by(|a, b| b.total_cmp(a));
    let k = 5;
    let lk = p.fim_lowrank(&t, Some(k)).unwrap();
    let evk = lk.eigenvalues().unwrap();
    let mut expect = ev[..k].to_vec();
    expect.resize(np, 0.0);
    assert_close(
        &format!("{model}: LowRank({k}) eigenvalues"),
        &evk,
        &expect,
        1e-9,
    );
    assert_close(
        &format!("{model}: LowRank({k}) trace"),
        &[lk.trace().unwrap()],
        &[ev[..k].iter().sum()],
        1e-9,
    );
}

#[test]
fn structures_match_the_dense_fim() {
    check_structures(MLP, 10, 31);
    check_structures(CNN, 6, 32);
    check_structures(NORM_CNN, 6, 33);
    check_structures(RESNET, 5, 34);
    check_structures(BRANCHES, 5, 35);
    check_structures(CONVT, 4, 36);
    check_structures_without_kron(EMBED, 5, 37);
    check_structures_without_kron(GROUPED, 4, 38);
}

/// Token ids that are not integers in `[0, num)` are an error of the
/// forward pass naming the layer, the example and the position.
#[test]
fn embedding_refuses_bad_token_ids() {
    let fx = Fx::new(EMBED, 2, 39);
    for bad in [2.5, 7.0, -1.0] {
        let mut xs = fx.o.download(&fx.x).unwrap();
        xs[5 + 3] = bad;
        let x = fx.o.upload(&[2, 5], &xs).unwrap();
        let err = fx
            .net
            .forward(&fx.o, &x, false)
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_else(|| panic!("token {bad} accepted"));
        assert!(
            err.contains("`emb`") && err.contains("example 1 of the batch, position 3"),
            "{err}"
        );
    }
}

/// Layers without Kronecker factors (embeddings, grouped convolutions):
/// BlockDiag, Diag, LowRank and the implicit product against the dense
/// FIM (1e-10), and KFAC refused by the engine.
fn check_structures_without_kron(model: impl Model, n: usize, seed: u64) {
    let fx = Fx::new(model, n, seed);
    let p = fx.problem(n);
    let t = classification();
    let f = p.fim_dense(&t).unwrap().to_dense().unwrap();
    let bd = p.fim_blocks(&t, &fx.kinds(BlockKind::Dense)).unwrap();
    let bdd = bd.to_dense().unwrap();
    for l in &bd.layers {
        let r = l.offset..l.offset + l.numel;
        for i in r.clone() {
            for j in 0..f.cols {
                let want = if r.contains(&j) { f.get(i, j) } else { 0.0 };
                assert!(
                    (bdd.get(i, j) - want).abs() <= 1e-10 * f.frobenius(),
                    "{model}: BlockDiag ({i}, {j})"
                );
            }
        }
    }
    let diag = p.fim_blocks(&t, &fx.kinds(BlockKind::Diag)).unwrap();
    assert_close(
        &format!("{model}: Diag"),
        &diag.diag().unwrap(),
        &f.diag(),
        1e-10,
    );
    let low = p.fim_lowrank(&t, None).unwrap();
    assert_close(
        &format!("{model}: LowRank"),
        &low.to_dense().unwrap().data,
        &f.data,
        1e-10,
    );
    for s in 0..2 {
        let v = fx.random_vector(200 + s);
        assert_close(
            &format!("{model}: implicit mv"),
            &p.implicit_mv(&t, &v).unwrap(),
            &f.matvec(&v),
            1e-10,
        );
    }
    let refused = fx.net.slots.iter().position(|s| !s.kind.kron()).unwrap();
    let mut kinds = fx.affine_kinds(BlockKind::Kfac);
    kinds[refused] = BlockKind::Kfac;
    let err = p.fim_blocks(&t, &kinds).expect_err("KFAC refused");
    assert!(
        err.to_string().contains("no Kronecker factors"),
        "{model}: {err}"
    );
}

/// trace, Frobenius norm, diagonal, mv, vᵀMv and eigenvalues of every
/// representation agree with its own `to_dense()` (1e-10; eigenvalues
/// 1e-9 of the largest).
#[test]
fn every_representation_is_self_consistent() {
    for (model, n, seed) in [(MLP, 8, 41), (CNN, 6, 42)] {
        let fx = Fx::new(model, n, seed);
        let p = fx.problem(n);
        let t = classification();
        let mut reps = vec![
            ("dense", p.fim_dense(&t).unwrap()),
            ("lowrank", p.fim_lowrank(&t, None).unwrap()),
            ("lowrank(4)", p.fim_lowrank(&t, Some(4)).unwrap()),
        ];
        for (name, k) in [
            ("blockdiag", BlockKind::Dense),
            ("diag", BlockKind::Diag),
            ("kfac", BlockKind::Kfac),
            ("ekfac", BlockKind::Ekfac { refit: false }),
            ("ekfac refit", BlockKind::Ekfac { refit: true }),
            ("quasidiag", BlockKind::QuasiDiag),
        ] {
            reps.push((name, p.fim_blocks(&t, &fx.kinds(k)).unwrap()));
        }
        let v = fx.random_vector(7);
        for (name, f) in &reps {
            let d = f.to_dense().unwrap();
            let what = |q: &str| format!("{model} {name}: {q}");
            assert_close(&what("trace"), &[f.trace().unwrap()], &[d.trace()], 1e-10);
            assert_close(
                &what("frobenius"),
                &[f.frobenius().unwrap()],
                &[d.frobenius()],
                1e-10,
            );
            assert_close(&what("diag"), &f.diag().unwrap(), &d.diag(), 1e-10);
            assert_close(&what("mv"), &f.mv(&v).unwrap(), &d.matvec(&v), 1e-10);
            assert_close(
                &what("vTMv"),
                &[f.vtmv(&v).unwrap()],
                &[dot(&v, &d.matvec(&v))],
                1e-10,
            );
            let mut ours = f.eigenvalues().unwrap();
            let mut theirs = eigvalsh(&d).unwrap();
            ours.sort_by(f64::total_cmp);
            theirs.sort_by(f64::total_cmp);
            assert_close(&what("eigenvalues"), &ours, &theirs, 1e-9);
            // Symmetric.
            assert_close(&what("symmetry"), &d.transpose().data, &d.data, 1e-12);
        }
    }
}
