//! Fused CPU passes of the candle backend: the geometry's memory-bound
//! steps (a Hadamard product added into a sum, a conversion to f64 into a
//! host matrix, a square summed) done in one pass over the data on rayon's
//! threads. The same steps as separate candle operations each allocated
//! and wrote a full tensor, and candle's own element-wise thread pool spun
//! at a barrier against rayon's (13 % of an NTK's time in the profile).

use super::{cpu_slice, e, tall_matmul};
use crate::geometry::hostcopy::{write_block, BlockAt};
use crate::geometry::ops::{OpsResult, Term};
use candle_core::{Device, Tensor, WithDType};
use rayon::prelude::*;

/// Elements one task of an element-wise pass handles.
const CHUNK: usize = 1 << 14;

/// The shape of a contiguous 2-d CPU tensor.
fn dims2(t: &Tensor) -> Option<[usize; 2]> {
    let d = t.dims();
    (d.len() == 2 && t.is_contiguous() && t.device().is_cpu()).then(|| [d[0], d[1]])
}

/// [`crate::geometry::ops::Ops::sum_products`] on the CPU: each product
/// through faer into one reused buffer, then `acc += p ⊙ h` in a single
/// pass (the first term is taken over in place). The arithmetic is that
/// of the separate operations, so the result is identical.
pub(super) fn sum_products<D>(terms: &[Term<'_, Tensor>]) -> Option<OpsResult<Tensor>>
where
    D: WithDType + faer::traits::ComplexField,
{
    let first = terms.first()?;
    let (m, n) = (dims2(first.0)?[0], dims2(first.1)?[1]);
    for (l, r, h) in terms {
        let (a, b) = (dims2(l)?, dims2(r)?);
        if a[0] != m || b[1] != n || a[1] != b[0] {
            return None;
        }
        if let Some(h) = h {
            if dims2(h)? != [m, n] {
                return None;
            }
        }
    }
    let mut acc: Option<Vec<D>> = None;
    let mut tmp: Vec<D> = Vec::new();
    for (l, r, h) in terms {
        let k = l.dims()[1];
        let (sl, ll) = l.storage_and_layout();
        let (sr, lr) = r.storage_and_layout();
        let x = &cpu_slice::<D>(&sl, ll)?[..m * k];
        let y = &cpu_slice::<D>(&sr, lr)?[..k * n];
        tmp.resize(m * n, D::zero());
        tall_matmul(&mut tmp, x, y, m, k, n);
        match (acc.as_mut(), h) {
            (None, None) => acc = Some(std::mem::take(&mut tmp)),
            (Some(a), None) => a
                .par_chunks_mut(CHUNK)
                .zip(tmp.par_chunks(CHUNK))
                .for_each(|(a, p)| a.iter_mut().zip(p).for_each(|(a, &p)| *a += p)),
            (acc_now, Some(h)) => {
                let (sh, lh) = h.storage_and_layout();
                let hv = &cpu_slice::<D>(&sh, lh)?[..m * n];
                match acc_now {
                    None => {
                        tmp.par_chunks_mut(CHUNK)
                            .zip(hv.par_chunks(CHUNK))
                            .for_each(|(p, h)| p.iter_mut().zip(h).for_each(|(p, &h)| *p *= h));
                        acc = Some(std::mem::take(&mut tmp));
                    }
                    Some(a) => a
                        .par_chunks_mut(CHUNK)
                        .zip(tmp.par_chunks(CHUNK))
                        .zip(hv.par_chunks(CHUNK))
                        .for_each(|((a, p), h)| {
                            for ((a, &p), &h) in a.iter_mut().zip(p).zip(h) {
                                *a += p * h;
                            }
                        }),
                }
            }
        }
    }
    Some(Tensor::from_vec(acc?, (m, n), &Device::Cpu).map_err(e))
}

/// [`crate::geometry::ops::Ops::write_host_block`] straight from a
/// contiguous CPU tensor's storage: no f64 copy of the block is made.
pub(super) fn write_host_block<D, T>(t: &Tensor, dst: &mut [T], at: BlockAt) -> Option<()>
where
    D: WithDType + Into<f64>,
    T: crate::linalg::HostElem,
{
    if !t.is_contiguous() || t.elem_count() != at.rows * at.cols {
        return None;
    }
    let (s, l) = t.storage_and_layout();
    let x = cpu_slice::<D>(&s, l)?;
    write_block(&x[..at.rows * at.cols], dst, at);
    Some(())
}

/// The sum over a dimension that is not the last one (keeping it, as
/// size 1) of a contiguous CPU tensor `[outer, r, inner]`; `None` for the
/// last dimension, which candle's row reduction already does well. candle
/// reduces other dimensions element by element through strided indexing,
/// which made a BatchNorm's parameter gradient (a sum over 10⁵ rows of a
/// few channels) cost more than the convolutions around it. Here whole
/// rows are added, in parallel over independent outputs, and a long
/// reduction into one row is cut into fixed blocks summed in order, so the
/// result does not depend on the thread count. With `square`, each value
/// is squared as it is added (a diagonal's reduction, in one pass).
pub(super) fn cpu_sum_dim<D: WithDType>(
    t: &Tensor,
    dim: usize,
    square: bool,
) -> Option<OpsResult<Tensor>> {
    const COLS: usize = 2048;
    const ROWS: usize = 512;
    let dims = t.dims();
    if dim + 1 >= dims.len() || !t.is_contiguous() {
        return None;
    }
    let outer: usize = dims[..dim].iter().product();
    let r = dims[dim];
    let inner: usize = dims[dim + 1..].iter().product();
    if inner == 1 || r == 0 {
        return None;
    }
    let (st, lt) = t.storage_and_layout();
    let x = &cpu_slice::<D>(&st, lt)?[..outer * r * inner];
    let mut out = vec![D::zero(); outer * inner];
    // Columns `c0..c0 + dst.len()` of `x [rows, inner]` summed over rows.
    let sum_into = |dst: &mut [D], x: &[D], c0: usize| {
        let w = dst.len();
        for row in x.chunks_exact(inner) {
            let row = dst.iter_mut().zip(&row[c0..c0 + w]);
            if square {
                row.for_each(|(d, &v)| *d += v * v);
            } else {
                row.for_each(|(d, &v)| *d += v);
            }
        }
    };
    let by_columns = |o: &mut [D], x: &[D]| {
        o.par_chunks_mut(COLS)
            .enumerate()
            .for_each(|(j, oc)| sum_into(oc, x, j * COLS))
    };
    if outer >= 2 {
        out.par_chunks_mut(inner)
            .zip(x.par_chunks(r * inner))
            .for_each(|(o, x)| {
                if inner >= 2 * COLS {
                    by_columns(o, x)
                } else {
                    sum_into(o, x, 0)
                }
            });
    } else if inner >= 2 * COLS {
        by_columns(&mut out, x);
    } else if r >= 2 * ROWS {
        let parts: Vec<Vec<D>> = x
            .par_chunks(ROWS * inner)
            .map(|xb| {
                let mut p = vec![D::zero(); inner];
                sum_into(&mut p, xb, 0);
                p
            })
            .collect();
        for p in parts {
            for (d, v) in out.iter_mut().zip(p) {
                *d += v;
            }
        }
    } else {
        sum_into(&mut out, x, 0);
    }
    let mut shape = dims.to_vec();
    shape[dim] = 1;
    Some(Tensor::from_vec(out, shape, t.device()).map_err(e))
}
