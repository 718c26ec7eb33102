//! Layer subsets as sub-blocks of the full Fisher, and matrix powers.

use super::*;

// ---------------------------------------------------------------- layer subsets

/// The flat indices (in the full model) of the layers `slots`, in that order.
fn subset_indices(fx: &Fx, slots: &[usize]) -> Vec<usize> {
    slots
        .iter()
        .flat_map(|&s| {
            let sl = &fx.net.slots[s];
            sl.offset..sl.offset + sl.numel
        })
        .collect()
}

/// A representation restricted to some layers (`Problem::slots`) is the
/// corresponding sub-matrix of the full one, laid out as its `layers`
/// say (1e-12). Sorted subsets.
#[test]
fn layer_subsets_are_sub_blocks_of_the_full_fim() {
    let fx = Fx::new(MLP, 8, 141);
    let t = classification();
    let full = fx.problem(8).fim_dense(&t).unwrap().to_dense().unwrap();
    for slots in [vec![1], vec![0, 2], vec![1, 2]] {
        let mut p = fx.problem(8);
        p.slots = slots.clone();
        let idx = subset_indices(&fx, &slots);
        let mut expect = Mat::zeros(idx.len(), idx.len());
        for (r, &i) in idx.iter().enumerate() {
            for (c, &j) in idx.iter().enumerate() {
                expect.set(r, c, full.get(i, j));
            }
        }
        let dense = p.fim_dense(&t).unwrap();
        let names: Vec<&str> = dense.layers.iter().map(|l| l.name.as_str()).collect();
        let want: Vec<&str> = slots
            .iter()
            .map(|&s| fx.net.slots[s].name.as_str())
            .collect();
        assert_eq!(names, want);
        assert_close(
            &format!("{slots:?}: dense"),
            &dense.to_dense().unwrap().data,
            &expect.data,
            1e-12,
        );
        let v: Vec<f64> = (0..idx.len()).map(|i| (i as f64).sin()).collect();
        assert_close(
            &format!("{slots:?}: implicit"),
            &p.implicit_mv(&t, &v).unwrap(),
            &expect.matvec(&v),
            1e-12,
        );
        let bd = p
            .fim_blocks(&t, &vec![BlockKind::Dense; slots.len()])
            .unwrap();
        for l in &bd.layers {
            let sub = sub_block(&expect, l.offset, l.offset, l.numel, l.numel);
            assert_close(
                &format!("{slots:?}: block {}", l.name),
                &bd.layer(&l.name).unwrap().unwrap().to_dense().unwrap().data,
                &sub.data,
                1e-12,
            );
        }
    }
}

/// `Problem::slots` in an order other than the model's (what
/// `layers = ["layers.4", "layers.0"]` gives, which the checker accepts):
/// every representation must still label each block with the layer it
/// belongs to (1e-12).
#[test]
fn unsorted_layer_subsets_keep_blocks_with_their_layers() {
    let fx = Fx::new(MLP, 8, 151);
    let t = classification();
    let mut sorted = fx.problem(8);
    sorted.slots = vec![0, 2];
    let mut unsorted = fx.problem(8);
    unsorted.slots = vec![2, 0];
    let a = sorted.fim_blocks(&t, &[BlockKind::Diag; 2]).unwrap();
    let b = unsorted.fim_blocks(&t, &[BlockKind::Diag; 2]).unwrap();
    for l in &a.layers {
        assert_close(
            &format!("diag, block {}", l.name),
            &b.layer(&l.name).unwrap().unwrap().diag().unwrap(),
            &a.layer(&l.name).unwrap().unwrap().diag().unwrap(),
            1e-12,
        );
    }
    let a = sorted.fim_dense(&t).unwrap();
    let b = unsorted.fim_dense(&t).unwrap();
    for l in &a.layers {
        assert_close(
            &format!("dense, block {}", l.name),
            &b.layer(&l.name).unwrap().unwrap().to_dense().unwrap().data,
            &a.layer(&l.name).unwrap().unwrap().to_dense().unwrap().data,
            1e-12,
        );
    }
}

/// The same layer named twice (`layers = ["layers.0", "layers.0"]`, which
/// the checker accepts) must give a result or an error, not a panic.
#[test]
fn duplicated_layer_subsets_do_not_panic() {
    let fx = Fx::new(MLP, 8, 161);
    let t = classification();
    let mut p = fx.problem(8);
    p.slots = vec![0, 0];
    let dense = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.fim_dense(&t).map(|f| f.dim())
    }));
    assert!(dense.is_ok(), "fim_dense panicked on slots [0, 0]");
    let blocks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.fim_blocks(&t, &[BlockKind::Diag; 2]).map(|f| f.dim())
    }));
    assert!(blocks.is_ok(), "fim_blocks panicked on slots [0, 0]");
}

/// `power(½, λ)` applied twice is `F + λI`, and `power(1, 0)` is `F`, for
/// every positive semi-definite representation, KFAC included (1e-9).
#[test]
fn matrix_powers_compose() {
    for (model, n, seed) in [(MLP, 10, 171), (CNN, 6, 172)] {
        let fx = Fx::new(model, n, seed);
        let p = fx.problem(n);
        let t = classification();
        let dense = p.fim_dense(&t).unwrap();
        let lambda = 1e-2 * dense.trace().unwrap() / dense.dim() as f64;
        let mut reps = vec![
            ("dense", dense),
            ("lowrank", p.fim_lowrank(&t, None).unwrap()),
        ];
        for (name, k) in [
            ("blockdiag", BlockKind::Dense),
            ("diag", BlockKind::Diag),
            ("kfac", BlockKind::Kfac),
            ("ekfac", BlockKind::Ekfac { refit: true }),
        ] {
            reps.push((name, p.fim_blocks(&t, &fx.kinds(k)).unwrap()));
        }
        // (QuasiDiag is left out: it is indefinite, and `power` clamps
        // negative eigenvalues to zero by design.)
        let v = fx.random_vector(17);
        for (name, f) in &reps {
            let d = f.to_dense().unwrap();
            let half = f.power(0.5, lambda).unwrap();
            let twice = half.mv(&half.mv(&v).unwrap()).unwrap();
            let expect: Vec<f64> = d
                .matvec(&v)
                .iter()
                .zip(&v)
                .map(|(a, b)| a + lambda * b)
                .collect();
            assert_close(&format!("{model} {name}: power(½)²"), &twice, &expect, 1e-9);
            let one = f.power(1.0, 0.0).unwrap();
            assert_close(
                &format!("{model} {name}: power(1)"),
                &one.to_dense().unwrap().data,
                &d.data,
                1e-9,
            );
        }
    }
}
