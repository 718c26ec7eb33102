//! Float32 runs against float64, and what a float32 run holds.

use super::*;

// ---------------------------------------------------------------- 9. f32

/// The float32 backend's dense FIM agrees with float64 to 1e-4.
#[test]
fn float32_agrees_with_float64() {
    for (model, n) in [(MLP, 10), (NORM_CNN, 6)] {
        let f64x = Fx::build(model, n, 101, Dtype::F64, false);
        let f32x = Fx::build(model, n, 101, Dtype::F32, false);
        assert_eq!(f64x.params, f32x.params);
        for t in [classification(), true_fim(Task::Regression { sigma2: 1.0 })] {
            let a = f64x.problem(n).fim_dense(&t).unwrap().to_dense().unwrap();
            let b = f32x.problem(n).fim_dense(&t).unwrap().to_dense().unwrap();
            assert_close(
                &format!("{model} {t:?}: f32 vs f64"),
                &b.data,
                &a.data,
                1e-4,
            );
        }
        let a = f64x.problem(n).ntk_dense(false).unwrap();
        let b = f32x.problem(n).ntk_dense(false).unwrap();
        assert_close(&format!("{model}: NTK f32 vs f64"), &b.data, &a.data, 1e-4);
    }
}

/// A float32 run holds its dense NTK in f32: half the bytes, and the very
/// values the f64-held kernel of the same run has (they were computed in
/// f32), so every measurement reads the same numbers; the alignments read
/// in place agree with those of the f64 copy.
#[test]
fn a_float32_kernel_is_held_in_float32_with_the_same_values() {
    use nngeo::linalg::{HostMatrix, Keep, Stored};
    for (model, n) in [(MLP, 10), (NORM_CNN, 6)] {
        let fx = Fx::build(model, n, 102, Dtype::F32, false);
        let p = fx.problem(n);
        let held = p.ntk_dense_in(false, Keep::Host(Dtype::F32)).unwrap();
        let wide = p.ntk_dense_in(false, Keep::Host(Dtype::F64)).unwrap();
        assert!(
            matches!(held, Stored::Host(HostMatrix::F32 { .. })),
            "{model}"
        );
        assert_eq!(held.bytes() * 2, wide.bytes(), "{model}");
        let (h, w) = (
            held.as_f64().unwrap().into_owned(),
            wide.into_f64().unwrap(),
        );
        assert_eq!(h, w, "{model}: the same values");
        let c = h.rows / n;
        let y: Vec<f64> = (0..c * n).map(|i| ((i * 7) % 5) as f64 - 2.0).collect();
        for centered in [false, true] {
            let a = kernel::alignment_stored(&held, &y, c, n, centered).unwrap();
            let b = kernel::alignment(&w, &y, c, n, centered);
            assert!(
                (a - b).abs() <= 1e-12 * b.abs(),
                "{model} {centered}: {a} vs {b}"
            );
        }
        assert_eq!(
            kernel::trace_kernel_of(&held, c, n).unwrap(),
            kernel::trace_kernel(&w, c, n)
        );
    }
}

/// A float32 run holds its dense Fisher and BlockDiag's blocks in f32:
/// half the bytes, each value the f32 rounding of what an f64-held Fisher
/// of the same run holds (both summed in f32 on the device, scaled by
/// `1/n` in f64), and the measurements over them agree to f32 rounding.
#[test]
fn a_float32_fisher_is_held_in_float32() {
    use nngeo::linalg::{HostMatrix, Keep, Stored};
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-300);
    for (model, n) in [(MLP, 10), (NORM_CNN, 6)] {
        let fx = Fx::build(model, n, 103, Dtype::F32, false);
        let p = fx.problem(n);
        let t = classification();
        // Kept on the host (a CUDA run keeps it on the device, where
        // `cross_backend.rs` checks it against this path).
        let held = p.fim_dense_in(&t, Keep::Host(Dtype::F32)).unwrap();
        let wide = p.fim_dense_in(&t, Keep::Host(Dtype::F64)).unwrap();
        let (FimBody::Dense(h), FimBody::Dense(w)) = (&held.body, &wide.body) else {
            panic!("{model}: dense bodies");
        };
        assert!(matches!(h, Stored::Host(HostMatrix::F32 { .. })), "{model}");
        assert_eq!(h.bytes() * 2, w.bytes(), "{model}");
        assert_eq!(held.bytes() * 2, wide.bytes(), "{model}");
        let (hv, wv) = (h.values_f64().unwrap(), w.values_f64().unwrap());
        assert!(
            hv.iter()
                .zip(wv.iter())
                .all(|(a, b)| *a == *b as f32 as f64),
            "{model}: every value the f32 rounding of the f64-held one"
        );
        assert!(
            rel(held.trace().unwrap(), wide.trace().unwrap()) < 1e-6,
            "{model}"
        );
        assert!(
            rel(held.frobenius().unwrap(), wide.frobenius().unwrap()) < 1e-6,
            "{model}"
        );
        let v: Vec<f64> = (0..held.dim()).map(|i| (i % 7) as f64 - 3.0).collect();
        let (a, b) = (held.solve(&v, 1e-2).unwrap(), wide.solve(&v, 1e-2).unwrap());
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = b.iter().map(|y| y * y).sum::<f64>().sqrt();
        assert!(err < 1e-4 * norm, "{model}: solve {err:e} of {norm:e}");
        // BlockDiag: each block in f32, the dense Fisher's diagonal block.
        let bd = p
            .fim_blocks_in(&t, &fx.kinds(BlockKind::Dense), Keep::Host(Dtype::F32))
            .unwrap();
        let FimBody::Blocks(blocks) = &bd.body else {
            panic!("{model}: blocks");
        };
        let mut bytes = 0;
        for (b, l) in blocks.iter().zip(&bd.layers) {
            let Block::Dense(m) = b else {
                panic!("{model}: a dense block");
            };
            assert!(
                matches!(m, Stored::Host(HostMatrix::F32 { .. })),
                "{model} {}",
                l.name
            );
            bytes += l.numel * l.numel * 4;
            let want = wide.layer(&l.name).unwrap().unwrap().to_dense().unwrap();
            let got = m.as_f64().unwrap();
            let top = want.data.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            let diff = got
                .data
                .iter()
                .zip(&want.data)
                .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
            assert!(
                diff <= 1e-5 * top,
                "{model} {}: {diff:e} of {top:e}",
                l.name
            );
        }
        assert_eq!(bd.bytes(), bytes, "{model}");
    }
}
