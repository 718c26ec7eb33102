//! Convolution patches of contiguous CPU tensors in one parallel pass
//! each (unfold, fold, the input gradient, a transpose), instead of a
//! padded copy, a gather and a transpose through candle's operations.

use super::{cpu_slice, e};
use crate::geometry::ops::OpsResult;
use candle_core::{Tensor, WithDType};
use rayon::prelude::*;

/// The index map of [`Ops::unfold_patches`] on the host, position-major
/// (`[L, K]`), and `L`; `None` unless it is a contiguous CPU `u32` tensor.
fn host_index(idx: &Tensor, k: usize) -> Option<(Vec<u32>, usize)> {
    if !idx.is_contiguous() || k == 0 {
        return None;
    }
    let (si, li) = idx.storage_and_layout();
    let kl = idx.elem_count();
    let ix = &cpu_slice::<u32>(&si, li)?[..kl];
    let l = kl / k;
    let mut t = vec![0u32; kl];
    for (kk, row) in ix.chunks_exact(l.max(1)).enumerate() {
        for (li, &q) in row.iter().enumerate() {
            t[li * k + kk] = q;
        }
    }
    Some((t, l))
}

/// [`Ops::unfold_patches`] for a contiguous CPU tensor: one pass over the
/// output, in parallel over the batch (instead of a padded copy, a
/// gather and, for `lk`, a transpose).
pub(super) fn cpu_unfold<D: WithDType>(
    x: &Tensor,
    idx: &Tensor,
    c: usize,
    k: usize,
    fill: f64,
    lk: bool,
) -> Option<OpsResult<Tensor>> {
    let b = *x.dims().first()?;
    let total = x.elem_count();
    if b == 0 || c == 0 || !total.is_multiple_of(b * c) {
        return None;
    }
    let s = total / (b * c);
    let (ixt, l) = host_index(idx, k)?;
    let (sx, lx) = x.storage_and_layout();
    let xs = &cpu_slice::<D>(&sx, lx)?[..total];
    let fill = D::from_f64(fill);
    let ck = c * k;
    let mut out = vec![D::zero(); b * ck * l];
    if ck * l > 0 {
        out.par_chunks_mut(ck * l)
            .zip(xs.par_chunks(c * s))
            .for_each(|(o, x)| {
                if lk {
                    // o [L, c·K]: written in order.
                    for (row, taps) in o.chunks_exact_mut(ck).zip(ixt.chunks_exact(k)) {
                        for (ci, dst) in row.chunks_exact_mut(k).enumerate() {
                            let xc = &x[ci * s..(ci + 1) * s];
                            for (d, &q) in dst.iter_mut().zip(taps) {
                                *d = xc.get(q as usize).copied().unwrap_or(fill);
                            }
                        }
                    }
                } else {
                    // o [c·K, L].
                    for (ci, plane) in o.chunks_exact_mut(k * l).enumerate() {
                        let xc = &x[ci * s..(ci + 1) * s];
                        for (kk, dst) in plane.chunks_exact_mut(l).enumerate() {
                            for (li, d) in dst.iter_mut().enumerate() {
                                let q = ixt[li * k + kk] as usize;
                                *d = xc.get(q).copied().unwrap_or(fill);
                            }
                        }
                    }
                }
            });
    }
    let shape = if lk { [b, l, ck] } else { [b, ck, l] };
    Some(Tensor::from_vec(out, &shape, x.device()).map_err(e))
}

/// [`Ops::fold_patches`] for a contiguous CPU tensor: each example's
/// patches summed onto its pixels in one pass, in parallel over the batch.
pub(super) fn cpu_fold<D: WithDType>(
    p: &Tensor,
    idx: &Tensor,
    c: usize,
    k: usize,
    s: usize,
    lk: bool,
) -> Option<OpsResult<Tensor>> {
    let b = *p.dims().first()?;
    let (ixt, l) = host_index(idx, k)?;
    let ck = c * k;
    if b == 0 || p.elem_count() != b * ck * l {
        return None;
    }
    let (sp, lp) = p.storage_and_layout();
    let ps = &cpu_slice::<D>(&sp, lp)?[..b * ck * l];
    let mut out = vec![D::zero(); b * c * s];
    if c * s > 0 && ck * l > 0 {
        out.par_chunks_mut(c * s)
            .zip(ps.par_chunks(ck * l))
            .for_each(|(o, p)| {
                if lk {
                    fold_lk(o, p, &ixt, k, s);
                } else {
                    // p [c·K, L].
                    for (ci, plane) in p.chunks_exact(k * l).enumerate() {
                        let oc = &mut o[ci * s..(ci + 1) * s];
                        for (kk, src) in plane.chunks_exact(l).enumerate() {
                            for (li, &v) in src.iter().enumerate() {
                                if let Some(d) = oc.get_mut(ixt[li * k + kk] as usize) {
                                    *d += v;
                                }
                            }
                        }
                    }
                }
            });
    }
    Some(Tensor::from_vec(out, (b, c, s), p.device()).map_err(e))
}

/// Swaps adjacent dimensions `d0 < d1 = d0 + 1` of a contiguous CPU
/// tensor, `[pre, a, b, post]` → `[pre, b, a, post]`, in 32×32 blocks, in
/// parallel over `pre`; `None` for other cases.
pub(super) fn cpu_transpose<D: WithDType>(
    t: &Tensor,
    d0: usize,
    d1: usize,
) -> Option<OpsResult<Tensor>> {
    let dims = t.dims();
    if d1 != d0 + 1 || d1 >= dims.len() || !t.is_contiguous() {
        return None;
    }
    let pre: usize = dims[..d0].iter().product();
    let (a, b) = (dims[d0], dims[d1]);
    let post: usize = dims[d1 + 1..].iter().product();
    let total = pre * a * b * post;
    let (st, lt) = t.storage_and_layout();
    let x = &cpu_slice::<D>(&st, lt)?[..total];
    let mut out = vec![D::zero(); total];
    let plane = a * b * post;
    if plane > 0 {
        const BS: usize = 32;
        out.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .for_each(|(o, x)| {
                for i0 in (0..a).step_by(BS) {
                    for j0 in (0..b).step_by(BS) {
                        for i in i0..(i0 + BS).min(a) {
                            for j in j0..(j0 + BS).min(b) {
                                let (to, from) = ((j * a + i) * post, (i * b + j) * post);
                                o[to..to + post].copy_from_slice(&x[from..from + post]);
                            }
                        }
                    }
                }
            });
    }
    let mut shape = dims.to_vec();
    shape.swap(d0, d1);
    Some(Tensor::from_vec(out, shape, t.device()).map_err(e))
}

/// One example's patches `p [L, c·K]` (read in order) added onto its
/// pixels `o [c, s]`; `ixt` is the position-major index map.
fn fold_lk<D: WithDType>(o: &mut [D], p: &[D], ixt: &[u32], k: usize, s: usize) {
    let ck = o.len() / s.max(1) * k;
    for (row, taps) in p.chunks_exact(ck).zip(ixt.chunks_exact(k)) {
        for (ci, src) in row.chunks_exact(k).enumerate() {
            let oc = &mut o[ci * s..(ci + 1) * s];
            for (&v, &q) in src.iter().zip(taps) {
                if let Some(d) = oc.get_mut(q as usize) {
                    *d += v;
                }
            }
        }
    }
}

/// [`Ops::conv_input_grad`] for contiguous CPU tensors, one example at a
/// time in parallel: `g_bᵀ w` (faer, the transpose a free view) into a
/// buffer of `L·c·K` values that stays in cache, folded at once onto the
/// example's pixels. Neither the patches' gradient of the batch nor the
/// transpose of `g` is ever formed.
pub(super) fn cpu_conv_input_grad<D>(
    g: &Tensor,
    w: &Tensor,
    idx: &Tensor,
    c: usize,
    k: usize,
    s: usize,
) -> Option<OpsResult<Tensor>>
where
    D: WithDType + faer::traits::ComplexField,
{
    use faer::{Accum, MatMut, MatRef, Par};
    let (gd, wd) = (g.dims(), w.dims());
    if gd.len() != 3 || wd.len() != 2 || gd[1] != wd[0] {
        return None;
    }
    let (b, cout, l) = (gd[0], gd[1], gd[2]);
    let ck = c * k;
    if wd[1] != ck || b == 0 || s == 0 || ck == 0 {
        return None;
    }
    let (ixt, li) = host_index(idx, k)?;
    if li != l {
        return None;
    }
    let (sg, lg) = g.storage_and_layout();
    let (sw, lw) = w.storage_and_layout();
    let gs = &cpu_slice::<D>(&sg, lg)?[..b * cout * l];
    let ws = &cpu_slice::<D>(&sw, lw)?[..cout * ck];
    let mut out = vec![D::zero(); b * c * s];
    out.par_chunks_mut(c * s)
        .zip(gs.par_chunks(cout * l))
        .for_each_init(
            || vec![D::zero(); l * ck],
            |buf, (o, gb)| {
                let lhs = MatRef::from_row_major_slice(gb, cout, l).transpose();
                let rhs = MatRef::from_row_major_slice(ws, cout, ck);
                let dst = MatMut::from_row_major_slice_mut(buf, l, ck);
                faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, D::one(), Par::Seq);
                fold_lk(o, buf, &ixt, k, s);
            },
        );
    Some(Tensor::from_vec(out, (b, c, s), g.device()).map_err(e))
}
