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

use crate::linalg::gemm::SEQ_WORK;

/// Fewest rows of a tall product given to one task: every task packs the
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
    // Blocks of about equal height (at least ROW_BLOCK rows each): fixed
    // ones left a short last block, 3,000 rows running as 2,048 on one
    // thread and 952 on the other.
    let block = rows.div_ceil(rows / ROW_BLOCK);
    out.par_chunks_mut(block * n)
        .zip(a.par_chunks(block * k))
        .for_each(|(o, x)| {
            let r = o.len() / n;
            let lhs = MatRef::from_row_major_slice(x, r, k);
            let dst = MatMut::from_row_major_slice_mut(o, r, n);
            faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, D::one(), Par::Seq);
        });
}

/// `aᵀ b` for contiguous 2-d CPU tensors `a [k, m]`, `b [k, n]`.
pub(super) fn faer_t_matmul<D>(a: &Tensor, b: &Tensor) -> Option<OpsResult<Tensor>>
where
    D: WithDType + crate::linalg::gemm::Real,
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
    D: WithDType + crate::linalg::gemm::Real,
{
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
    let out = crate::linalg::gemm::t_matmul_cols(xa, lda, ca, xb, ldb, cb, k);
    Some(Tensor::from_vec(out, (m, n), &Device::Cpu).map_err(e))
}

#[cfg(test)]
mod tests {
    use super::tall_matmul;

    /// Tall products cut into row blocks equal the plain product, on any
    /// number of threads (rows above, at and between block multiples).
    #[test]
    fn a_tall_product_in_row_blocks_is_the_plain_product() {
        for rows in [2048, 3000, 5121] {
            let (k, n) = (7, 5);
            let a: Vec<f64> = (0..rows * k)
                .map(|i| ((i * 7919) % 101) as f64 - 50.0)
                .collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 31) % 17) as f64 - 8.0).collect();
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut out = vec![0.0; rows * n];
                pool.install(|| tall_matmul(&mut out, &a, &b, rows, k, n));
                for r in 0..rows {
                    for c in 0..n {
                        let want: f64 = (0..k).map(|j| a[r * k + j] * b[j * n + c]).sum();
                        assert_eq!(
                            out[r * n + c],
                            want,
                            "rows {rows}, threads {threads}: ({r}, {c})"
                        );
                    }
                }
            }
        }
    }
}
