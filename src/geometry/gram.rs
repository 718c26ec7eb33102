//! Symmetric products `Σ tᵀ t` (KFAC's factors, a dense diagonal block of
//! a BlockDiag Fisher) with about half the arithmetic of a plain `tᵀ t`.
//!
//! A general matrix product computes both triangles of a result that is
//! symmetric. Neither candle nor libtorch offers a rank-k update that fills
//! one triangle (BLAS's `syrk`), so the columns of `t` are cut into panels
//! and only the panel products on and above the diagonal are formed, each
//! kept on the device and summed over batches. The host copy writes every
//! off-diagonal block twice (itself and its mirror) in the pass that
//! converts it to f64, so the lower triangle costs no product and no extra
//! device memory.

use super::hostcopy::BlockAt;
use super::ops::{write_host, Ops, OpsError, OpsResult};
use crate::linalg::{HostMatrix, Keep, Mat, Stored};
use crate::plan::Dtype;

/// Below this width one product is as fast as the panels (the saving is
/// eaten by the smaller products' lower efficiency).
const MIN_SPLIT: usize = 256;
/// Panels at least this wide keep each product near the matmul rate.
const MIN_PANEL: usize = 128;
/// Up to this many panels for moderate widths; wider panels than
/// `MAX_PANEL` are cut further so that no product is enormous.
const FEW_PANELS: usize = 4;
const MAX_PANEL: usize = 2048;

/// Column ranges `(start, width)` the `k` columns are cut into: even
/// widths rounded to multiples of 16 (whole SIMD registers in both
/// backends' kernels), the last one taking the remainder.
pub fn panels(k: usize) -> Vec<(usize, usize)> {
    if k < MIN_SPLIT {
        return vec![(0, k)];
    }
    let p = (k / MIN_PANEL).min(FEW_PANELS).max(k.div_ceil(MAX_PANEL));
    let width = (k / p).div_ceil(16) * 16;
    let mut out = Vec::with_capacity(p);
    let mut s = 0;
    while s < k {
        let w = width.min(k - s);
        out.push((s, w));
        s += w;
    }
    out
}

/// `Σ tᵀ t` over the batches added to it, held as its upper panel blocks.
pub struct GramSum<T> {
    k: usize,
    bounds: Vec<(usize, usize)>,
    /// Blocks `(a, b)` with `b ≥ a`, row by row.
    blocks: Vec<Option<T>>,
}

impl<T: Clone> GramSum<T> {
    pub fn new(k: usize) -> Self {
        let bounds = panels(k);
        let p = bounds.len();
        GramSum {
            k,
            bounds,
            blocks: vec![None; p * (p + 1) / 2],
        }
    }

    /// Adds `tᵀ t` for `t [r, k]`.
    pub fn add<O: Ops<T = T>>(&mut self, o: &O, t: &T) -> OpsResult<()> {
        let shape = o.shape(t);
        if shape.len() != 2 || shape[1] != self.k {
            return Err(OpsError(format!(
                "gram: expected a [rows, {}] matrix, got {shape:?}",
                self.k
            )));
        }
        let one = self.bounds.len() == 1;
        let mut slot = self.blocks.iter_mut();
        for (a, &ca) in self.bounds.iter().enumerate() {
            for &cb in &self.bounds[a..] {
                let blk = if one {
                    o.t_matmul(t, t)?
                } else {
                    o.t_matmul_cols(t, ca, t, cb)?
                };
                let acc = slot.next().expect("one slot per upper block");
                *acc = Some(match acc.take() {
                    Some(s) => o.add(&s, &blk)?,
                    None => blk,
                });
            }
        }
        Ok(())
    }

    /// The whole symmetric sum on the host in f64, times `scale`; each
    /// device block is freed as it is copied.
    pub fn into_host<O: Ops<T = T>>(self, o: &O, scale: f64) -> OpsResult<Mat> {
        Ok(self.into_matrix(o, scale, Dtype::F64)?.into_f64())
    }

    /// Each upper panel block with where it goes in the `k × k` sum (its
    /// mirror below the diagonal included), in order, handing each over.
    fn into_blocks(self, mut f: impl FnMut(T, BlockAt) -> OpsResult<()>) -> OpsResult<()> {
        let k = self.k;
        let mut slot = self.blocks.into_iter();
        for (a, &(ra, wa)) in self.bounds.iter().enumerate() {
            for &(cb, wb) in &self.bounds[a..] {
                let blk = slot
                    .next()
                    .flatten()
                    .ok_or_else(|| OpsError("no examples".into()))?;
                let at = BlockAt {
                    rows: wa,
                    cols: wb,
                    ld: k,
                    r0: ra,
                    c0: cb,
                    mirror: cb != ra,
                    accumulate: false,
                };
                f(blk, at)?;
            }
        }
        Ok(())
    }

    /// The whole symmetric sum times `scale`, kept where `keep` says: on
    /// the host in its precision, or assembled on the backend's device
    /// (each upper block scaled and written with its mirror) and held
    /// there, with no host copy.
    pub fn into_stored<O: Ops<T = T>>(self, o: &O, scale: f64, keep: Keep) -> OpsResult<Stored> {
        if let Keep::Host(dtype) = keep {
            return Ok(self.into_matrix(o, scale, dtype)?.into());
        }
        let dst = o.zeros(&[self.k, self.k])?;
        self.into_blocks(|blk, at| o.write_device_block(&o.scale(&blk, scale)?, &dst, at))?;
        Ok(Stored::Device(o.hold(dst)?))
    }

    /// A KFAC factor: the whole symmetric sum times `scale` in f64, on the
    /// host ([`GramSum::into_host`]) or, where `keep` says the device,
    /// assembled there in the run's precision and widened and scaled there
    /// ([`Ops::hold_f64`]): the same values, with no host copy.
    pub fn into_factor<O: Ops<T = T>>(self, o: &O, scale: f64, keep: Keep) -> OpsResult<Stored> {
        if let Keep::Host(_) = keep {
            return Ok(Stored::from(self.into_host(o, scale)?));
        }
        let dst = o.zeros(&[self.k, self.k])?;
        self.into_blocks(|blk, at| o.write_device_block(&blk, &dst, at))?;
        Ok(Stored::Device(o.hold_f64(dst, scale)?))
    }

    /// [`GramSum::into_host`] kept in the precision of `dtype`.
    pub fn into_matrix<O: Ops<T = T>>(
        self,
        o: &O,
        scale: f64,
        dtype: Dtype,
    ) -> OpsResult<HostMatrix> {
        let mut m = HostMatrix::zeros(self.k, self.k, dtype);
        self.into_blocks(|blk, at| write_host(o, &blk, &mut m, at))?;
        if scale != 1.0 {
            m.map_in_place(|x| x * scale);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::candle::CandleOps;
    use crate::plan::Dtype;
    use crate::rng::Rng;

    /// Two batches through the panels against one plain `Σ tᵀ t` on the
    /// host, for widths below, at and well above the split: every entry,
    /// both triangles.
    #[test]
    fn the_panel_sum_is_the_whole_gram_matrix() {
        let o = CandleOps::new("cpu", Dtype::F64).unwrap();
        let mut rng = Rng::new(7);
        for k in [1, 17, 256, 300, 785] {
            let mut sum = GramSum::new(k);
            let mut want = Mat::zeros(k, k);
            for rows in [33, 5] {
                let t: Vec<f64> = (0..rows * k).map(|_| rng.normal()).collect();
                sum.add(&o, &o.upload(&[rows, k], &t).unwrap()).unwrap();
                let t = Mat::from_vec(rows, k, t);
                let tt = t.transpose().matmul(&t);
                want.data
                    .iter_mut()
                    .zip(&tt.data)
                    .for_each(|(w, x)| *w += x);
            }
            let got = sum.into_host(&o, 0.5).unwrap();
            for i in 0..k {
                for j in 0..k {
                    let w = 0.5 * want.get(i, j);
                    let d = (got.get(i, j) - w).abs();
                    assert!(
                        d <= 1e-12 * (1.0 + w.abs()),
                        "k {k} ({i}, {j}): {} vs {w}",
                        got.get(i, j)
                    );
                }
            }
        }
    }

    #[test]
    fn a_sum_of_nothing_or_the_wrong_width_is_an_error() {
        let o = CandleOps::new("cpu", Dtype::F64).unwrap();
        assert!(GramSum::<candle_core::Tensor>::new(300)
            .into_host(&o, 1.0)
            .is_err());
        let mut sum = GramSum::new(300);
        let t = o.upload(&[2, 299], &[0.0; 598]).unwrap();
        let err = sum.add(&o, &t).unwrap_err();
        assert!(err.0.contains("[rows, 300]"), "{err}");
    }

    #[test]
    fn panels_cover_the_columns_once_in_order() {
        for k in [0, 1, 10, 255, 256, 300, 512, 785, 4160, 36_864] {
            let b = panels(k);
            let mut next = 0;
            for &(s, w) in &b {
                assert_eq!(s, next, "k = {k}: {b:?}");
                assert!(w > 0 || k == 0, "k = {k}: {b:?}");
                next = s + w;
            }
            assert_eq!(next, k, "k = {k}: {b:?}");
            assert!(b.iter().all(|&(_, w)| w <= MAX_PANEL), "k = {k}: {b:?}");
            if k >= MIN_SPLIT {
                assert!(b.len() > 1, "k = {k} is split");
            }
        }
    }
}
