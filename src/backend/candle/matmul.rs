//! Matrix products of contiguous CPU tensors through faer (about twice
//! candle's own gemm on this kind of machine), read in place, strided
//! column panels included; `None` where a case does not apply and
//! candle's path is taken.

use super::e;
use crate::geometry::ops::OpsResult;
use candle_core::{Device, Layout, Storage, Tensor, WithDType};
use rayon::prelude::*;

pub(super) fn cpu_slice<'a, D: WithDType>(s: &'a Storage, l: &Layout) -> Option<&'a [D]> {
    match s {
        Storage::Cpu(c) => c.as_slice::<D>().ok().map(|x| &x[l.start_offset()..]),
        _ => None,
    }
}

/// `[..., m, k] × [..., k, n]` with broadcast batch dimensions, through faer,
/// for contiguous CPU tensors; `None` when it does not apply.
pub(super) fn faer_matmul<D>(a: &Tensor, b: &Tensor) -> Option<OpsResult<Tensor>>
where
    D: WithDType + faer::traits::ComplexField,
{
    let (ad, bd) = (a.dims(), b.dims());
    let (ra, rb) = (ad.len(), bd.len());
    if ra < 2 || rb < 2 || ad[ra - 1] != bd[rb - 2] || !a.is_contiguous() || !b.is_contiguous() {
        return None;
    }
    let (m, k, n) = (ad[ra - 2], ad[ra - 1], bd[rb - 1]);
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let xa = cpu_slice::<D>(&sa, la)?;
    let xb = cpu_slice::<D>(&sb, lb)?;
    // Broadcast the batch dimensions, aligned on the right.
    let r = ra.max(rb) - 2;
    let dim = |d: &[usize], rank: usize, i: usize| -> usize {
        let off = r - (rank - 2);
        if i < off {
            1
        } else {
            d[i - off]
        }
    };
    let mut batch = Vec::with_capacity(r);
    for i in 0..r {
        let (x, y) = (dim(ad, ra, i), dim(bd, rb, i));
        if x != y && x != 1 && y != 1 {
            return None;
        }
        batch.push(x.max(y));
    }
    let total: usize = batch.iter().product();
    let mut out = vec![D::zero(); total * m * n];
    if rb == 2 {
        // One tall product: the batch of `a` is just more rows.
        let rows = xa.len().min(total * m * k) / k;
        tall_matmul(&mut out, &xa[..rows * k], &xb[..k * n], rows, k, n);
    } else {
        // Each product's operand offsets, then the products themselves.
        let (mut ia, mut ib) = (vec![0usize; r], vec![0usize; r]);
        let mut offsets = Vec::with_capacity(total);
        for t in 0..total {
            // Multi-index of batch t, then the operands' own batch offsets.
            let mut rem = t;
            for i in (0..r).rev() {
                let idx = rem % batch[i];
                rem /= batch[i];
                ia[i] = if dim(ad, ra, i) == 1 { 0 } else { idx };
                ib[i] = if dim(bd, rb, i) == 1 { 0 } else { idx };
            }
            let flat = |ix: &[usize], d: &[usize], rank: usize| -> usize {
                (0..r).fold(0, |acc, i| acc * dim(d, rank, i) + ix[i])
            };
            offsets.push((flat(&ia, ad, ra) * m * k, flat(&ib, bd, rb) * k * n));
        }
        let one = |dst: &mut [D], (oa, ob): (usize, usize), par: faer::Par| {
            let lhs = faer::MatRef::from_row_major_slice(&xa[oa..oa + m * k], m, k);
            let rhs = faer::MatRef::from_row_major_slice(&xb[ob..ob + k * n], k, n);
            let dst = faer::MatMut::from_row_major_slice_mut(dst, m, n);
            faer::linalg::matmul::matmul(dst, faer::Accum::Replace, lhs, rhs, D::one(), par);
        };
        if m * n > 0 && (total >= 2 * rayon::current_num_threads() || m * k * n < SEQ_WORK) {
            // Many products: one thread each, no barriers inside.
            out.par_chunks_mut(m * n)
                .zip(offsets.into_par_iter())
                .for_each(|(dst, off)| one(dst, off, faer::Par::Seq));
        } else if m * n > 0 {
            for (dst, off) in out.chunks_mut(m * n).zip(offsets) {
                one(dst, off, faer::Par::rayon(0));
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Some(Tensor::from_vec(out, shape, &Device::Cpu).map_err(e))
}

/// Multiply-adds below which a product is not worth splitting over
/// threads: faer's parallel kernels meet at a barrier per block, and on
/// small or thin products the waiting costs more than the work (measured:
/// half of a ResNet18 KFAC's time went to those barriers).
const SEQ_WORK: usize = 1 << 20;

/// Rows of a tall product given to one task: every task packs the
/// right-hand side once, so a block must be tall enough to amortise it.
const ROW_BLOCK: usize = 1024;

/// `out [rows, n] = a [rows, k] · b [k, n]`, row-major. A tall product is
/// split into blocks of rows, each multiplied on one thread; the result is
/// the same as one product's (rows are independent), whatever the threads.
pub(super) fn tall_matmul<D>(out: &mut [D], a: &[D], b: &[D], rows: usize, k: usize, n: usize)
where
    D: WithDType + faer::traits::ComplexField,
{
    use faer::{Accum, MatMut, MatRef, Par};
    if rows == 0 || n == 0 {
        return;
    }
    let rhs = MatRef::from_row_major_slice(b, k, n);
    let wide = n >= 256 && k >= 256;
    if rows < 2 * ROW_BLOCK || wide {
        // Square-ish or short: faer's own two-dimensional split is better.
        let par = if rows * k * n < SEQ_WORK {
            Par::Seq
        } else {
            Par::rayon(0)
        };
        let lhs = MatRef::from_row_major_slice(a, rows, k);
        let dst = MatMut::from_row_major_slice_mut(out, rows, n);
        faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, D::one(), par);
        return;
    }
    out.par_chunks_mut(ROW_BLOCK * n)
        .zip(a.par_chunks(ROW_BLOCK * k))
        .for_each(|(o, x)| {
            let r = o.len() / n;
            let lhs = MatRef::from_row_major_slice(x, r, k);
            let dst = MatMut::from_row_major_slice_mut(o, r, n);
            faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, D::one(), Par::Seq);
        });
}

/// Fewest rows of the shared dimension one task reduces in
/// [`faer_t_matmul`]: below this, packing the operands costs more than the
/// split saves.
const K_BLOCK_MIN: usize = 1024;

/// Most blocks [`faer_t_matmul`] cuts a long reduction into. The blocks
/// are of equal size and their number depends on the shape alone, so the
/// partial sums (and so the rounding) do not depend on the number of
/// threads, and any thread count up to this many is kept busy: a fixed
/// block length instead left the last, short block to one thread while
/// the other waited (9,000 rows in blocks of 8,192 ran KFAC's output
/// factors on one of two threads, half of the build).
const K_BLOCKS_MAX: usize = 16;

/// Largest number of partial products [`faer_t_matmul`] keeps at once.
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

/// `aᵀ b` for contiguous 2-d CPU tensors `a [k, m]`, `b [k, n]`.
pub(super) fn faer_t_matmul<D>(a: &Tensor, b: &Tensor) -> Option<OpsResult<Tensor>>
where
    D: WithDType + faer::traits::ComplexField,
{
    let (ad, bd) = (a.dims(), b.dims());
    if ad.len() != 2 || bd.len() != 2 {
        return None;
    }
    faer_t_matmul_cols::<D>(a, (0, ad[1]), b, (0, bd[1]))
}

/// `a[:, ca]ᵀ b[:, cb]` for contiguous 2-d CPU tensors `a [k, ·]`,
/// `b [k, ·]` and column ranges `(start, width)`, read in place.
pub(super) fn faer_t_matmul_cols<D>(
    a: &Tensor,
    ca: (usize, usize),
    b: &Tensor,
    cb: (usize, usize),
) -> Option<OpsResult<Tensor>>
where
    D: WithDType + faer::traits::ComplexField,
{
    use faer::{Accum, MatMut, MatRef, Par};
    let (ad, bd) = (a.dims(), b.dims());
    if ad.len() != 2
        || bd.len() != 2
        || ad[0] != bd[0]
        || ca.0 + ca.1 > ad[1]
        || cb.0 + cb.1 > bd[1]
        || !a.is_contiguous()
        || !b.is_contiguous()
    {
        return None;
    }
    let (k, m, n) = (ad[0], ca.1, cb.1);
    let (lda, ldb) = (ad[1], bd[1]);
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let xa = &cpu_slice::<D>(&sa, la)?[..k * lda];
    let xb = &cpu_slice::<D>(&sb, lb)?[..k * ldb];
    let mut out = vec![D::zero(); m * n];
    if m * n == 0 || k == 0 {
        return Some(Tensor::from_vec(out, (m, n), &Device::Cpu).map_err(e));
    }
    // Rows `r0..r1` of the two column ranges, as faer views.
    let product = |dst: &mut [D], r0: usize, r1: usize, accum: Accum, par: Par| {
        let rows = r1 - r0;
        let x = &xa[r0 * lda + ca.0..(r1 - 1) * lda + ca.0 + m];
        let y = &xb[r0 * ldb + cb.0..(r1 - 1) * ldb + cb.0 + n];
        let lhs = MatRef::from_row_major_slice_with_stride(x, rows, m, lda).transpose();
        let rhs = MatRef::from_row_major_slice_with_stride(y, rows, n, ldb);
        let dst = MatMut::from_row_major_slice_mut(dst, m, n);
        faer::linalg::matmul::matmul(dst, accum, lhs, rhs, D::one(), par);
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
                let mut part = vec![D::zero(); m * n];
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
    Some(Tensor::from_vec(out, (m, n), &Device::Cpu).map_err(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    /// `aᵀ b` of a long reduction, cut into blocks, against the plain sum,
    /// and the same bits whatever the number of threads.
    #[test]
    fn a_long_reduction_is_the_plain_sum_on_any_number_of_threads() {
        // 9,000 rows: a fixed block length once left a short last block.
        for (k, m, n) in [(9000, 37, 21), (2500, 64, 64), (300, 5, 7)] {
            let av: Vec<f64> = (0..k * m)
                .map(|i| ((i * 7919) % 1000) as f64 / 1000.0 - 0.5)
                .collect();
            let bv: Vec<f64> = (0..k * n)
                .map(|i| ((i * 104729) % 997) as f64 / 997.0 - 0.5)
                .collect();
            let a = Tensor::from_vec(av.clone(), (k, m), &Device::Cpu).unwrap();
            let b = Tensor::from_vec(bv.clone(), (k, n), &Device::Cpu).unwrap();
            let on = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| host(&faer_t_matmul::<f64>(&a, &b).unwrap().unwrap()))
            };
            let one = on(1);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|r| av[r * m + i] * bv[r * n + j]).sum();
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
