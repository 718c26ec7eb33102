//! Host matrix products on row-major slices through faer, read in place
//! (candle's CPU tensors; any backend whose CPU buffers can be viewed).
//! libtorch's MKL was measured at the same speed on KFAC's factors, so the
//! tch plugin keeps its own GEMM.

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::ops::AddAssign;

/// A real scalar faer multiplies: `f32` or `f64`.
pub trait Real: faer::traits::ComplexField + Copy + Default + AddAssign + Send + Sync {
    const ONE: Self;
}
impl Real for f32 {
    const ONE: Self = 1.0;
}
impl Real for f64 {
    const ONE: Self = 1.0;
}

/// Multiply-adds below which a product is not worth splitting over
/// threads: faer's parallel kernels meet at a barrier per block, and on
/// small or thin products the waiting costs more than the work (measured:
/// half of a ResNet18 KFAC's time went to those barriers).
pub const SEQ_WORK: usize = 1 << 20;

/// Fewest rows of the shared dimension one task reduces in
/// [`t_matmul_cols`]: below this, packing the operands costs more than the
/// split saves.
const K_BLOCK_MIN: usize = 1024;

/// Most blocks [`t_matmul_cols`] cuts a long reduction into. The blocks
/// are of equal size and their number depends on the shape alone, so the
/// partial sums (and so the rounding) do not depend on the number of
/// threads, and any thread count up to this many is kept busy: a fixed
/// block length instead left the last, short block to one thread while
/// the other waited (9,000 rows in blocks of 8,192 ran KFAC's output
/// factors on one of two threads, half of the build).
const K_BLOCKS_MAX: usize = 16;

/// Largest number of partial products [`t_matmul_cols`] keeps at once.
const MAX_PARTIAL_VALUES: usize = 1 << 23;

/// Equal blocks of the shared dimension `k` for a result of `mn` values:
/// their number, from the shape alone (1 when it is not worth splitting).
fn k_blocks(k: usize, m: usize, n: usize) -> usize {
    if k < 8 * (m + n) {
        return 1;
    }
    (k / K_BLOCK_MIN)
        .min(K_BLOCKS_MAX)
        .min(MAX_PARTIAL_VALUES / (m * n).max(1))
        .max(1)
}

/// `a[:, ca]ᵀ b[:, cb]` for row-major `a [k, lda]` and `b [k, ldb]` and
/// column ranges `(start, width)`, read in place: `[ca.1, cb.1]`,
/// row-major.
pub fn t_matmul_cols<D: Real>(
    xa: &[D],
    lda: usize,
    ca: (usize, usize),
    xb: &[D],
    ldb: usize,
    cb: (usize, usize),
    k: usize,
) -> Vec<D> {
    let (m, n) = (ca.1, cb.1);
    assert!(
        ca.0 + m <= lda && cb.0 + n <= ldb,
        "t_matmul_cols: columns out of range"
    );
    assert!(
        xa.len() >= k * lda && xb.len() >= k * ldb,
        "t_matmul_cols: too few rows"
    );
    let mut out = vec![D::default(); m * n];
    if m * n == 0 || k == 0 {
        return out;
    }
    // Rows `r0..r1` of the two column ranges, as faer views.
    let product = |dst: &mut [D], r0: usize, r1: usize, accum: Accum, par: Par| {
        let rows = r1 - r0;
        let x = &xa[r0 * lda + ca.0..(r1 - 1) * lda + ca.0 + m];
        let y = &xb[r0 * ldb + cb.0..(r1 - 1) * ldb + cb.0 + n];
        let lhs = MatRef::from_row_major_slice_with_stride(x, rows, m, lda).transpose();
        let rhs = MatRef::from_row_major_slice_with_stride(y, rows, n, ldb);
        let dst = MatMut::from_row_major_slice_mut(dst, m, n);
        faer::linalg::matmul::matmul(dst, accum, lhs, rhs, D::ONE, par);
    };
    let blocks = k_blocks(k, m, n);
    if blocks >= 2 {
        // A long reduction into a small result (a Kronecker factor over
        // every example and position): equal blocks of the shared
        // dimension on separate threads, summed in a fixed order.
        let bounds = |blk: usize| (blk * k / blocks, (blk + 1) * k / blocks);
        let parts: Vec<Vec<D>> = (0..blocks)
            .into_par_iter()
            .map(|blk| {
                let mut part = vec![D::default(); m * n];
                let (r0, r1) = bounds(blk);
                product(&mut part, r0, r1, Accum::Replace, Par::Seq);
                part
            })
            .collect();
        const CHUNK: usize = 1 << 14;
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
            let (at, len) = (c * CHUNK, o.len());
            for part in &parts {
                for (o, v) in o.iter_mut().zip(&part[at..at + len]) {
                    *o += *v;
                }
            }
        });
    } else {
        let par = if k * m * n < SEQ_WORK {
            Par::Seq
        } else {
            Par::rayon(0)
        };
        product(&mut out, 0, k, Accum::Replace, par);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `aᵀ b` of a long reduction, cut into blocks, against the plain sum,
    /// and the same bits whatever the number of threads.
    #[test]
    fn a_long_reduction_is_the_plain_sum_on_any_number_of_threads() {
        // 9,000 rows: a fixed block length once left a short last block.
        for (k, m, n) in [(9000, 37, 21), (2500, 64, 64), (300, 5, 7)] {
            let lda = m + 3;
            let av: Vec<f64> = (0..k * lda)
                .map(|i| ((i * 7919) % 1000) as f64 / 1000.0 - 0.5)
                .collect();
            let bv: Vec<f64> = (0..k * n)
                .map(|i| ((i * 104729) % 997) as f64 / 997.0 - 0.5)
                .collect();
            let on = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| t_matmul_cols(&av, lda, (2, m), &bv, n, (0, n), k))
            };
            let one = on(1);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|r| av[r * lda + 2 + i] * bv[r * n + j]).sum();
                    let got = one[i * n + j];
                    assert!(
                        (got - want).abs() <= 1e-12 * (1.0 + want.abs()),
                        "{k}: {got} vs {want}"
                    );
                }
            }
            assert_eq!(one, on(3), "k = {k}: the threads changed the rounding");
        }
        assert_eq!(k_blocks(9000, 256, 256), 8);
        assert_eq!(k_blocks(1000, 785, 785), 1);
    }
}
