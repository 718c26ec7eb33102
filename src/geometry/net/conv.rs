//! Convolutions and pools as the engine runs them: patches unfolded (and
//! folded back) by index, the backend's own convolution where it has one,
//! and a convolution's capture for the curvature statistics.

use super::*;

impl<O: Ops> Net<O> {
    /// `[n, cin, (h,) w]` → patches `[n, cin·K, L]`, padding with zeros.
    pub(super) fn unfold(&self, o: &O, u: &Unfold<O::T>, x: &O::T, n: usize) -> OpsResult<O::T> {
        self.unfold_with(o, u, x, n, 0.0)
    }

    /// [`Self::unfold`] padding with `fill` (max pooling pads with the most
    /// negative value, so that padding never wins).
    pub(super) fn unfold_with(
        &self,
        o: &O,
        u: &Unfold<O::T>,
        x: &O::T,
        n: usize,
        fill: f64,
    ) -> OpsResult<O::T> {
        let x = o.reshape(x, &[n, u.cin, u.hw])?;
        o.unfold_patches(&x, &u.idx, u.cin, u.k, fill, false) // [n, cin·K, L]
    }

    /// The convolution of `x` by the natural weight `w` (`wt`, its
    /// transpose, where the layer keeps one), `[n, cout, L]` without the
    /// bias: the backend's own kernel where it has one, otherwise a product
    /// with the unfolded patches.
    pub(super) fn conv(
        &self,
        o: &O,
        u: &Unfold<O::T>,
        w: &O::T,
        wt: Option<&O::T>,
        x: &O::T,
        n: usize,
    ) -> OpsResult<O::T> {
        if let Some(g) = &u.geom {
            let x4 = o.reshape(x, &[n, u.cin, g.input[0], g.input[1]])?;
            if let Some(y) = o.conv2d(&x4, w, g)? {
                return o.reshape(&y, &[n, g.cout, u.l]);
            }
        }
        match wt {
            // Patches straight in the capture's layout: an ungrouped
            // convolution is then one tall product `[n·L, cin·K] ×
            // [cin·K, cout]` rather than n small ones.
            Some(wt) if o.shape(w).len() == 2 => {
                let a = self.unfold_lk(o, u, x, n)?; // [n, L, cin·K]
                o.transpose(&o.matmul(&a, wt)?, 1, 2)
            }
            _ => grouped_matmul(o, w, &self.unfold(o, u, x, n)?),
        }
    }

    /// A convolution's capture layout: `[n, L, cin·K]`.
    pub(super) fn unfold_lk(&self, o: &O, u: &Unfold<O::T>, x: &O::T, n: usize) -> OpsResult<O::T> {
        let x = o.reshape(x, &[n, u.cin, u.hw])?;
        o.unfold_patches(&x, &u.idx, u.cin, u.k, 0.0, true)
    }

    /// A convolution's capture `a [n, L, cin·K (+1)]` from its input: the
    /// patches, with a column of ones for the bias.
    pub(super) fn conv_capture_input(
        &self,
        o: &O,
        u: &Unfold<O::T>,
        x: &O::T,
        n: usize,
        bias: bool,
    ) -> OpsResult<O::T> {
        let a = self.unfold_lk(o, u, x, n)?;
        if bias {
            o.cat(&[a, o.affine(&o.zeros(&[n, u.l, 1])?, 0.0, 1.0)?], 2)
        } else {
            Ok(a)
        }
    }

    /// Adjoint of [`Self::unfold`]: `[b, cin·K, L]` → `[b, cin, hw]`.
    pub(super) fn fold(&self, o: &O, u: &Unfold<O::T>, p: &O::T) -> OpsResult<O::T> {
        o.fold_patches(p, &u.idx, u.cin, u.k, u.hw, false)
    }
}
