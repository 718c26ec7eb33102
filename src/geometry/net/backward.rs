//! Each layer's backward pass for a stack of `m` output functions per
//! example: the gradient w.r.t. its inputs, and for a parameterised layer
//! the capture (`a`, `g`) every representation is built from.

use super::{act_grad, Cache, Capture, Net};
use crate::geometry::ops::{Ops, OpsError, OpsResult};
use crate::plan::{image_dims, Layer};

/// The capture of a parameterised layer and the gradient for each of its
/// inputs (`None` where no parameter lies upstream).
type Step<T> = (Option<Capture<T>>, Vec<Option<T>>);

/// A layer's slot, its gradient summed over the examples and the gradient
/// for each of its inputs.
type Summed<T> = (usize, T, Vec<Option<T>>);

/// A layer's summed gradient and the gradient for its one input.
type Share<T> = (T, Option<T>);

impl<O: Ops> Net<O> {
    /// A convolution's input gradient from `g3 [b, cout, L]`: the
    /// backend's native transposed convolution where it has one, else the
    /// patch product folded back onto the image.
    fn conv_dx(&self, o: &O, i: usize, g3: &O::T) -> OpsResult<O::T> {
        let layer = &self.layers[i];
        let u = layer.unfold.as_ref().unwrap();
        let w = layer.w.as_ref().unwrap();
        if let Some(geom) = &u.geom {
            let b = o.shape(g3)[0];
            let g4 = o.reshape(g3, &[b, geom.cout, geom.output[0], geom.output[1]])?;
            if let Some(dx) = o.conv2d_input_grad(&g4, w, geom)? {
                return Ok(dx);
            }
        }
        if o.shape(w).len() == 2 {
            o.conv_input_grad(g3, w, &u.idx, u.cin, u.k, u.hw)
        } else {
            let dp = super::grouped_matmul(o, layer.wt.as_ref().unwrap(), g3)?; // [b, cin·K, L]
            self.fold(o, u, &dp)
        }
    }

    /// Layer `i`'s gradient summed over the examples for one output
    /// function (`g [1, n, output...]`, a loss gradient), without the
    /// per-example capture the Fisher structures need, where the layer has
    /// such a path: a convolution the backend differentiates natively
    /// ([`Self::conv_gradient`]), a BatchNorm with batch statistics
    /// ([`Self::batch_norm_gradient`]). Its slot, the gradient in the
    /// slot's natural layout and the gradient for its input; `None`: the
    /// capture path.
    pub(super) fn summed_gradient(
        &self,
        o: &O,
        i: usize,
        cache: &Cache<O::T>,
        g: &O::T,
        n: usize,
        need: &[bool],
    ) -> OpsResult<Option<Summed<O::T>>> {
        let layer = &self.layers[i];
        let Some(slot) = self.slot_of[i] else {
            return Ok(None);
        };
        let need0 = need.first().copied().unwrap_or(false);
        let found = match (&layer.spec.layer, cache) {
            (Layer::Conv2d { .. } | Layer::Conv1d { .. }, Cache::Conv { x, bias }) => {
                self.conv_gradient(o, i, x, *bias, g, n, need0)?
            }
            (
                Layer::BatchNorm1d { .. } | Layer::BatchNorm2d { .. },
                Cache::Norm {
                    s, batch: Some(xh), ..
                },
            ) => Some(self.batch_norm_gradient(o, i, s, xh, g, n, need0)?),
            _ => None,
        };
        let mut shape = vec![1, n];
        shape.extend(&layer.spec.input);
        found
            .map(|(grad, dx)| {
                let dx = dx.map(|d| o.reshape(&d, &shape)).transpose()?;
                Ok((slot, grad, vec![dx]))
            })
            .transpose()
    }

    /// A training-mode BatchNorm's summed gradient `[C, 2]` (scale, shift:
    /// `Σ g ⊙ x̂` and `Σ g` over examples and positions) and its input
    /// gradient, straight from `g` in the layer's own `[n, C, L]` layout
    /// (`x̂ [n, C, L]`, `s [1, C, 1]`): no transposed capture, and the two
    /// sums the input gradient needs come from the parameter gradient.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_gradient(
        &self,
        o: &O,
        i: usize,
        s: &O::T,
        xh: &O::T,
        g: &O::T,
        n: usize,
        need: bool,
    ) -> OpsResult<Share<O::T>> {
        let layer = &self.layers[i];
        let c = layer.spec.input[0];
        let l: usize = layer.spec.input[1..].iter().product();
        let g3 = o.reshape(g, &[n, c, l])?;
        let sum_nl = |t: &O::T| -> OpsResult<O::T> { o.sum_dim(&o.sum_dim(t, 2)?, 0) }; // [1, C, 1]
        let dshift = sum_nl(&g3)?;
        let dscale = sum_nl(&o.mul(&g3, xh)?)?;
        let grad = o.cat(
            &[o.reshape(&dscale, &[c, 1])?, o.reshape(&dshift, &[c, 1])?],
            1,
        )?;
        if !need {
            return Ok((grad, None));
        }
        // dx = s (dx̂ − mean(dx̂) − x̂ mean(dx̂ x̂)) with dx̂ = w g, whose means
        // over examples and positions are w Σg / count and w Σ g x̂ / count.
        let w = o.reshape(layer.w.as_ref().unwrap(), &[1, c, 1])?;
        let count = 1.0 / (n * l) as f64;
        let m1 = o.scale(&o.mul(&dshift, &w)?, count)?;
        let m2 = o.scale(&o.mul(&dscale, &w)?, count)?;
        let inner = o.sub(&o.sub(&o.mul(&g3, &w)?, &m1)?, &o.mul(xh, &m2)?)?;
        Ok((grad, Some(o.mul(&inner, s)?)))
    }

    /// A convolution's gradient summed over the examples by the backend's
    /// native weight-gradient kernel (`x` its input, `g` its output's
    /// gradient): the natural layout `[cout, cin/groups · K (+1)]` and the
    /// gradient for its input. No patches are unfolded. `None` where the
    /// backend has no kernel for this convolution.
    #[allow(clippy::too_many_arguments)]
    fn conv_gradient(
        &self,
        o: &O,
        i: usize,
        x: &O::T,
        bias: bool,
        g: &O::T,
        n: usize,
        need: bool,
    ) -> OpsResult<Option<Share<O::T>>> {
        let layer = &self.layers[i];
        let Some(u) = layer.unfold.as_ref() else {
            return Ok(None);
        };
        let Some(geom) = &u.geom else {
            return Ok(None);
        };
        let cout = geom.cout;
        let x4 = o.reshape(x, &[n, u.cin, geom.input[0], geom.input[1]])?;
        let g4 = o.reshape(g, &[n, cout, geom.output[0], geom.output[1]])?;
        let Some(dw) = o.conv2d_weight_grad(&x4, &g4, geom)? else {
            return Ok(None);
        };
        let dw = o.reshape(&dw, &[cout, u.cin / geom.groups * u.k])?;
        let g3 = o.reshape(g, &[n, cout, u.l])?;
        let grad = if bias {
            let per = o.sum_dim(&g3, 2)?; // [n, cout, 1]
            let db = o.reshape(&o.sum_dim(&per, 0)?, &[cout, 1])?;
            o.cat(&[dw, db], 1)?
        } else {
            dw
        };
        let dx = need.then(|| self.conv_dx(o, i, &g3)).transpose()?;
        Ok(Some((grad, dx)))
    }

    /// Layer `i`'s backward pass from the gradient `g [m, n, output...]`
    /// w.r.t. its output; `need[k]` says whether input `k` wants its
    /// gradient.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer_backward(
        &self,
        o: &O,
        i: usize,
        cache: &Cache<O::T>,
        g: &O::T,
        m: usize,
        n: usize,
        need: &[bool],
    ) -> OpsResult<Step<O::T>> {
        let layer = &self.layers[i];
        let slot = self.slot_of[i];
        let mut in_shape = vec![m, n];
        in_shape.extend(&layer.spec.input);
        let need0 = need.first().copied().unwrap_or(false);
        let one = |t: Option<O::T>| -> OpsResult<Vec<Option<O::T>>> {
            Ok(vec![t.map(|t| o.reshape(&t, &in_shape)).transpose()?])
        };
        match (&layer.spec.layer, cache) {
            (Layer::Linear { out_features, .. }, Cache::Affine { a }) => {
                let g2 = o.reshape(g, &[m * n, *out_features])?;
                let cap = Capture {
                    slot: slot.unwrap(),
                    a: a.clone(),
                    g: o.reshape(&g2, &[m, n, 1, *out_features])?,
                };
                let dx = need0
                    .then(|| o.matmul(&g2, layer.w.as_ref().unwrap()))
                    .transpose()?;
                Ok((Some(cap), one(dx)?))
            }
            (Layer::Embedding { dim, .. }, Cache::Embed { rows, .. }) => {
                // Token ids are not differentiable: the pass stops here.
                let l = layer.spec.input.iter().product::<usize>();
                let cap = Capture {
                    slot: slot.unwrap(),
                    a: rows.clone(),
                    g: o.reshape(g, &[m, n, l, *dim])?,
                };
                Ok((Some(cap), vec![None]))
            }
            (
                Layer::Conv2d { out_channels, .. }
                | Layer::Conv1d { out_channels, .. }
                | Layer::ConvTranspose2d { out_channels, .. },
                Cache::Conv { x, bias },
            ) => {
                let u = layer.unfold.as_ref().unwrap();
                let a = self.conv_capture_input(o, u, x, n, *bias)?;
                let cout = *out_channels;
                let g3 = o.reshape(g, &[m * n, cout, u.l])?;
                let gt = o.transpose(&g3, 1, 2)?; // [mn, L, cout], the capture's layout
                let dx = need0.then(|| self.conv_dx(o, i, &g3)).transpose()?;
                let cap = Capture {
                    slot: slot.unwrap(),
                    a,
                    g: o.reshape(&gt, &[m, n, u.l, cout])?,
                };
                Ok((Some(cap), one(dx)?))
            }
            (Layer::Relu, Cache::Act { x, .. }) => one(Some(o.relu_grad(g, x)?)).map(|d| (None, d)),
            (l, Cache::Act { x, y }) => {
                one(Some(o.mul(g, &act_grad(o, l, x, y)?)?)).map(|d| (None, d))
            }
            (_, Cache::Reshape) => Ok((None, one(Some(g.clone()))?)),
            (_, Cache::Mask(mask)) => Ok((None, one(Some(o.mul(g, mask)?))?)),
            (_, Cache::Pool { route, .. }) => {
                let u = layer.unfold.as_ref().unwrap();
                // One output function at a time: the gradient spread over
                // the windows is K times the layer's output per function,
                // so all m at once would outweigh every other buffer of
                // the pass (a 3×3 max pool under a 10-class Fisher: 90×).
                let through = |gj: &O::T| -> OpsResult<O::T> {
                    let g4 = o.reshape(gj, &[n, u.cin, 1, u.l])?;
                    let dp = if let Some(route) = route {
                        o.mul(&g4, route)?
                    } else if let Some(wts) = &layer.pool_weights {
                        o.mul(&g4, &o.reshape(wts, &[1, 1, u.k, u.l])?)?
                    } else {
                        let ones = o.affine(&o.zeros(&[1, 1, u.k, 1])?, 0.0, 1.0 / u.k as f64)?;
                        o.mul(&g4, &ones)?
                    };
                    self.fold(o, u, &o.reshape(&dp, &[n, u.cin * u.k, u.l])?)
                };
                let dx = if m == 1 {
                    through(g)?
                } else {
                    let g2 = o.reshape(g, &[m, n * u.cin * u.l])?;
                    let parts = (0..m)
                        .map(|j| through(&o.narrow(&g2, 0, j, 1)?))
                        .collect::<OpsResult<Vec<_>>>()?;
                    o.cat(&parts, 0)?
                };
                Ok((None, one(Some(dx))?))
            }
            (Layer::AdaptiveAvgPool2d { .. } | Layer::AdaptiveAvgPool1d { .. }, Cache::Linear) => {
                let (_, pool_t) = layer.pool.as_ref().unwrap();
                let [c, oh, ow] = image_dims(&layer.spec.output);
                let g2 = o.reshape(g, &[m * n * c, oh * ow])?;
                Ok((None, one(Some(o.matmul(&g2, pool_t)?))?))
            }
            (
                Layer::BatchNorm1d { .. } | Layer::BatchNorm2d { .. },
                Cache::Norm { xhat, s, batch },
            ) => {
                let c = layer.spec.input[0];
                let l: usize = layer.spec.input[1..].iter().product();
                let g4 = o.reshape(g, &[m, n, c, l])?;
                // Without affine parameters there is nothing to capture.
                let cap = slot
                    .map(|slot| -> OpsResult<_> {
                        Ok(Capture {
                            slot,
                            a: xhat.clone(),
                            g: o.reshape(
                                &o.transpose(&o.reshape(&g4, &[m * n, c, l])?, 1, 2)?,
                                &[m, n, l, c],
                            )?,
                        })
                    })
                    .transpose()?;
                if !need0 {
                    return Ok((cap, vec![None]));
                }
                let w = layer.w.as_ref().unwrap();
                let dx = match batch {
                    // Running statistics: an affine map per channel, one
                    // pass over the gradient.
                    None => o.mul(&g4, &o.mul(w, s)?)?,
                    // Batch statistics couple the examples:
                    // dx = s (dx̂ − mean(dx̂) − x̂ mean(dx̂ x̂)), means over
                    // examples and positions.
                    Some(xh) => {
                        let dxhat = o.mul(&g4, w)?; // [m, n, c, l]
                        let count = (n * l) as f64;
                        let mean_nl = |t: &O::T| -> OpsResult<O::T> {
                            o.scale(&o.sum_dim(&o.sum_dim(t, 3)?, 1)?, 1.0 / count)
                        };
                        let m1 = mean_nl(&dxhat)?; // [m, 1, c, 1]
                        let m2 = mean_nl(&o.mul(&dxhat, xh)?)?;
                        let inner = o.sub(&o.sub(&dxhat, &m1)?, &o.mul(xh, &m2)?)?;
                        o.mul(&inner, s)?
                    }
                };
                Ok((cap, one(Some(dx))?))
            }
            (
                Layer::GroupNorm {
                    groups, channels, ..
                },
                Cache::Norm { xhat, s, batch },
            ) => {
                let total: usize = layer.spec.input.iter().product();
                let (gr, d, l) = (*groups, total / groups, total / channels);
                let g4 = o.reshape(g, &[m, n, *channels, l])?;
                let cap = slot
                    .map(|slot| -> OpsResult<_> {
                        Ok(Capture {
                            slot,
                            a: xhat.clone(),
                            g: o.reshape(
                                &o.transpose(&o.reshape(&g4, &[m * n, *channels, l])?, 1, 2)?,
                                &[m, n, l, *channels],
                            )?,
                        })
                    })
                    .transpose()?;
                if !need0 {
                    return Ok((cap, vec![None]));
                }
                let xg = batch.as_ref().unwrap(); // [n, G, D]
                let dxhat = o.reshape(&o.mul(&g4, layer.w.as_ref().unwrap())?, &[m, n, gr, d])?;
                let m1 = o.scale(&o.sum_dim(&dxhat, 3)?, 1.0 / d as f64)?;
                let m2 = o.scale(&o.sum_dim(&o.mul(&dxhat, xg)?, 3)?, 1.0 / d as f64)?;
                let inner = o.sub(&o.sub(&dxhat, &m1)?, &o.mul(xg, &m2)?)?;
                Ok((cap, one(Some(o.mul(&inner, s)?))?))
            }
            (Layer::LayerNorm { shape, .. }, Cache::Norm { xhat, s, .. }) => {
                let d: usize = shape.iter().product();
                let l = layer.spec.input.iter().product::<usize>() / d;
                let g4 = o.reshape(g, &[m, n, l, d])?;
                let cap = slot.map(|slot| Capture {
                    slot,
                    a: xhat.clone(),
                    g: g4.clone(),
                });
                if !need0 {
                    return Ok((cap, vec![None]));
                }
                // dx = s (dx̂ − mean(dx̂) − x̂ mean(dx̂ x̂)), means over the d features.
                let dxhat = o.mul(&g4, layer.w.as_ref().unwrap())?;
                let m1 = o.scale(&o.sum_dim(&dxhat, 3)?, 1.0 / d as f64)?;
                let m2 = o.scale(&o.sum_dim(&o.mul(&dxhat, xhat)?, 3)?, 1.0 / d as f64)?;
                let inner = o.sub(&o.sub(&dxhat, &m1)?, &o.mul(xhat, &m2)?)?;
                Ok((cap, one(Some(o.mul(&inner, s)?))?))
            }
            (Layer::Add, Cache::Join) => Ok((
                None,
                need.iter()
                    .zip(&layer.src)
                    .map(|(&want, &src)| {
                        want.then(|| {
                            let mut shape = vec![m, n];
                            shape.extend(self.spec.node_shape(src));
                            o.reshape(g, &shape)
                        })
                        .transpose()
                    })
                    .collect::<OpsResult<_>>()?,
            )),
            (Layer::Concat, Cache::Join) => {
                let out = &layer.spec.output;
                let rest: usize = out[1..].iter().product();
                let g3 = o.reshape(g, &[m * n, out[0], rest])?;
                let mut at = 0;
                let mut ins = Vec::with_capacity(need.len());
                for (&want, &src) in need.iter().zip(&layer.src) {
                    let s = self.spec.node_shape(src);
                    if want {
                        let mut shape = vec![m, n];
                        shape.extend(s);
                        ins.push(Some(o.reshape(&o.narrow(&g3, 1, at, s[0])?, &shape)?));
                    } else {
                        ins.push(None);
                    }
                    at += s[0];
                }
                Ok((None, ins))
            }
            (l, _) => Err(OpsError(format!("no backward rule for {}", l.type_name()))),
        }
    }
}
