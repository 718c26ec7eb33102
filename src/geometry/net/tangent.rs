//! Each layer's forward-mode rule (the linearised model's forward pass):
//! the tangent of its output from the tangents of its inputs and the
//! direction `tl` of its own parameters.

use super::{act_grad, Cache, Net, NetLayer};
use crate::geometry::ops::{Ops, OpsError, OpsResult};
use crate::plan::{image_dims, Layer};

impl<O: Ops> Net<O> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer_tangent(
        &self,
        o: &O,
        layer: &NetLayer<O::T>,
        tl: &NetLayer<O::T>,
        xs: &[&O::T],
        dxs: &[Option<&O::T>],
        cache: &Cache<O::T>,
        n: usize,
    ) -> OpsResult<Option<O::T>> {
        let x = xs[0];
        let dx = dxs[0];
        let mut out_shape = vec![n];
        out_shape.extend(&layer.spec.output);
        let sum = |a: Option<O::T>, b: O::T| -> OpsResult<O::T> {
            match a {
                Some(a) => o.add(&a, &b),
                None => Ok(b),
            }
        };
        // A norm layer's output tangent: through its input, plus its own
        // scale and shift's direction where it has them (`affine`).
        let norm_out =
            |through: Option<O::T>, own: &dyn Fn() -> OpsResult<O::T>| -> OpsResult<Option<O::T>> {
                let t = if layer.spec.params > 0 {
                    Some(sum(through, own()?)?)
                } else {
                    through
                };
                t.map(|t| o.reshape(&t, &out_shape)).transpose()
            };
        Ok(match (&layer.spec.layer, cache) {
            (Layer::Linear { .. }, _) => {
                // d(x Wᵀ + b) = dx Wᵀ + x Vᵀ + v_b
                let k = layer.spec.input[0];
                let x2 = o.reshape(x, &[n, k])?;
                let through = dx
                    .map(|d| o.matmul(&o.reshape(d, &[n, k])?, layer.wt.as_ref().unwrap()))
                    .transpose()?;
                let mut y = sum(through, o.matmul(&x2, tl.wt.as_ref().unwrap())?)?;
                if let Some(vb) = &tl.b {
                    y = o.add(&y, vb)?;
                }
                Some(y)
            }
            (Layer::Embedding { .. }, Cache::Embed { tok, .. }) => {
                if dx.is_some() {
                    return Err(OpsError(format!(
                        "embedding `{}` reads a value that depends on the weights",
                        layer.spec.name
                    )));
                }
                let y = o.index_select(tl.w.as_ref().unwrap(), tok, 0)?;
                Some(o.reshape(&y, &out_shape)?)
            }
            (Layer::Conv2d { .. } | Layer::Conv1d { .. } | Layer::ConvTranspose2d { .. }, _) => {
                let u = layer.unfold.as_ref().unwrap();
                let through = dx
                    .map(|d| self.conv(o, u, layer.w.as_ref().unwrap(), layer.wt.as_ref(), d, n))
                    .transpose()?;
                let own = self.conv(o, u, tl.w.as_ref().unwrap(), None, x, n)?;
                let mut y = sum(through, own)?;
                if let Some(vb) = &tl.b {
                    y = o.add(&y, vb)?;
                }
                Some(o.reshape(&y, &out_shape)?)
            }
            (l, Cache::Act { x, y }) => match dx {
                None => None,
                Some(d) => Some(o.mul(d, &act_grad(o, l, x, y)?)?),
            },
            (_, Cache::Reshape) => dx.map(|d| o.reshape(d, &out_shape)).transpose()?,
            (_, Cache::Mask(mask)) => dx.map(|d| o.mul(d, mask)).transpose()?,
            (_, Cache::Pool { route, .. }) => match dx {
                None => None,
                Some(d) => {
                    let u = layer.unfold.as_ref().unwrap();
                    let dp = o.reshape(&self.unfold(o, u, d, n)?, &[n, u.cin, u.k, u.l])?;
                    let y = if let Some(route) = route {
                        // The first maximum's derivative, as in the backward pass.
                        o.sum_dim(&o.mul(&dp, route)?, 2)?
                    } else if let Some(wts) = &layer.pool_weights {
                        o.sum_dim(&o.mul(&dp, wts)?, 2)?
                    } else {
                        o.scale(&o.sum_dim(&dp, 2)?, 1.0 / u.k as f64)?
                    };
                    Some(o.reshape(&y, &out_shape)?)
                }
            },
            (Layer::AdaptiveAvgPool2d { .. } | Layer::AdaptiveAvgPool1d { .. }, _) => match dx {
                None => None,
                Some(d) => {
                    let (pool, _) = layer.pool.as_ref().unwrap();
                    let [c, h, w] = image_dims(&layer.spec.input);
                    let hw = h * w;
                    let y = o.matmul(&o.reshape(d, &[n * c, hw])?, pool)?;
                    Some(o.reshape(&y, &out_shape)?)
                }
            },
            (Layer::BatchNorm1d { .. } | Layer::BatchNorm2d { .. }, Cache::Norm { s, .. }) => {
                // y = γ (x − μ) s + β with running statistics.
                let c = layer.spec.input[0];
                let l: usize = layer.spec.input[1..].iter().product();
                let (mean, _) = layer.running.as_ref().unwrap();
                let xhat = o.mul(&o.sub(&o.reshape(x, &[n, c, l])?, mean)?, s)?;
                let own = || {
                    o.add(
                        &o.mul(&xhat, tl.w.as_ref().unwrap())?,
                        tl.b.as_ref().unwrap(),
                    )
                };
                let through = dx
                    .map(|d| {
                        o.mul(
                            &o.reshape(d, &[n, c, l])?,
                            &o.mul(layer.w.as_ref().unwrap(), s)?,
                        )
                    })
                    .transpose()?;
                norm_out(through, &own)?
            }
            (
                Layer::GroupNorm {
                    groups, channels, ..
                },
                Cache::Norm {
                    s, batch: Some(xg), ..
                },
            ) => {
                let total: usize = layer.spec.input.iter().product();
                let (g, d, l) = (*groups, total / groups, total / channels);
                let x3 = o.reshape(xg, &[n, *channels, l])?;
                let own = || o.add(&o.mul(&x3, tl.w.as_ref().unwrap())?, tl.b.as_ref().unwrap());
                let through = dx
                    .map(|dx| {
                        // dx̂ = s (dx − mean(dx) − x̂ mean(dx x̂)) within each group.
                        let dx = o.reshape(dx, &[n, g, d])?;
                        let m1 = o.scale(&o.sum_dim(&dx, 2)?, 1.0 / d as f64)?;
                        let m2 = o.scale(&o.sum_dim(&o.mul(&dx, xg)?, 2)?, 1.0 / d as f64)?;
                        let dxhat = o.mul(&o.sub(&o.sub(&dx, &m1)?, &o.mul(xg, &m2)?)?, s)?;
                        o.mul(
                            &o.reshape(&dxhat, &[n, *channels, l])?,
                            layer.w.as_ref().unwrap(),
                        )
                    })
                    .transpose()?;
                norm_out(through, &own)?
            }
            (Layer::LayerNorm { shape, .. }, Cache::Norm { xhat, s, .. }) => {
                let d: usize = shape.iter().product();
                let l = layer.spec.input.iter().product::<usize>() / d;
                let own = || {
                    o.add(
                        &o.mul(xhat, tl.w.as_ref().unwrap())?,
                        tl.b.as_ref().unwrap(),
                    )
                };
                let through = dx
                    .map(|dx| {
                        // dx̂ = s (dx − mean(dx) − x̂ mean(dx x̂)), means over the d features.
                        let dx = o.reshape(dx, &[n, l, d])?;
                        let m1 = o.scale(&o.sum_dim(&dx, 2)?, 1.0 / d as f64)?;
                        let m2 = o.scale(&o.sum_dim(&o.mul(&dx, xhat)?, 2)?, 1.0 / d as f64)?;
                        let dxhat = o.mul(&o.sub(&o.sub(&dx, &m1)?, &o.mul(xhat, &m2)?)?, s)?;
                        o.mul(&dxhat, layer.w.as_ref().unwrap())
                    })
                    .transpose()?;
                norm_out(through, &own)?
            }
            (Layer::Add, _) => {
                let mut acc: Option<O::T> = None;
                for d in dxs.iter().flatten() {
                    acc = Some(sum(acc, (*d).clone())?);
                }
                acc.map(|t| o.reshape(&t, &out_shape)).transpose()?
            }
            (Layer::Concat, _) => {
                if dxs.iter().all(|d| d.is_none()) {
                    None
                } else {
                    let parts = dxs
                        .iter()
                        .zip(&layer.src)
                        .map(|(d, &src)| {
                            let s = self.spec.node_shape(src);
                            let rest: usize = s[1..].iter().product();
                            match d {
                                Some(d) => o.reshape(d, &[n, s[0], rest]),
                                None => o.zeros(&[n, s[0], rest]),
                            }
                        })
                        .collect::<OpsResult<Vec<_>>>()?;
                    Some(o.reshape(&o.cat(&parts, 1)?, &out_shape)?)
                }
            }
            (l, _) => {
                return Err(OpsError(format!(
                    "no forward-mode rule for {}",
                    l.type_name()
                )))
            }
        })
    }
}
