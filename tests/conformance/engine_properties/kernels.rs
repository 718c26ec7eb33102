//! Kernel functions (trace kernel, alignments) against their definitions.

use super::*;

// ---------------------------------------------------------------- 10. kernels

/// `H = (I_n − 11ᵀ/n) ⊗ I_C` on the `[C·n]` layout (row `c·n + i`).
fn centring(c: usize, n: usize) -> Mat {
    let mut h = Mat::zeros(c * n, c * n);
    for a in 0..c {
        for i in 0..n {
            for j in 0..n {
                let v = if i == j { 1.0 } else { 0.0 } - 1.0 / n as f64;
                h.set(a * n + i, a * n + j, v);
            }
        }
    }
    h
}

fn outer(y: &[f64]) -> Mat {
    let m = y.len();
    let mut o = Mat::zeros(m, m);
    for r in 0..m {
        for c in 0..m {
            o.set(r, c, y[r] * y[c]);
        }
    }
    o
}

fn alignment_by_hand(k: &Mat, y: &[f64], c: usize, n: usize, centered: bool) -> f64 {
    let yy = outer(y);
    let (k, yy) = if centered {
        let h = centring(c, n);
        (h.matmul(k).matmul(&h), h.matmul(&yy).matmul(&h))
    } else {
        (k.clone(), yy)
    };
    dot(&k.data, &yy.data) / (k.frobenius() * yy.frobenius())
}

/// `center_examples` = H K H, `alignment` = the formula on explicit
/// matrices, and A(yyᵀ, y) = 1: all 1e-12.
#[test]
fn kernel_functions_match_their_definitions() {
    let (n, c) = (7, 5);
    let fx = Fx::new(MLP, n, 111);
    let ntk = fx.problem(n).ntk_dense(false).unwrap();
    let mut rng = Rng::new(112);
    let b = Mat::from_vec(
        c * n,
        4,
        (0..c * n * 4).map(|_| rng.normal()).collect::<Vec<_>>(),
    );
    let random_psd = b.matmul(&b.transpose());
    let mut onehot = vec![0.0; n * c];
    for (i, l) in fx.labels.iter().enumerate() {
        onehot[i * c + *l as usize] = 1.0;
    }
    let y_onehot = kernel::target_vector(&onehot, n, c);
    // target_vector: y[c·n + i] = Y[i, c].
    for i in 0..n {
        for a in 0..c {
            assert_eq!(y_onehot[a * n + i], onehot[i * c + a]);
        }
    }
    let y_real: Vec<f64> = (0..n * c).map(|_| rng.normal()).collect();
    let h = centring(c, n);
    for (kname, k) in [("ntk", &ntk), ("random", &random_psd)] {
        assert_close(
            &format!("{kname}: center_examples"),
            &kernel::center_examples(k, c, n).data,
            &h.matmul(k).matmul(&h).data,
            1e-12,
        );
        for (yname, y) in [("onehot", &y_onehot), ("real", &y_real)] {
            for centered in [false, true] {
                let ours = kernel::alignment(k, y, c, n, centered);
                let theirs = alignment_by_hand(k, y, c, n, centered);
                assert_close(
                    &format!("{kname} {yname} centered = {centered}: alignment"),
                    &[ours],
                    &[theirs],
                    1e-12,
                );
                assert!(ours.abs() <= 1.0 + 1e-12);
                let self_align = kernel::alignment(&outer(y), y, c, n, centered);
                assert_close(
                    &format!("{yname} centered = {centered}: A(yyᵀ, y)"),
                    &[self_align],
                    &[1.0],
                    1e-12,
                );
            }
        }
    }
}
