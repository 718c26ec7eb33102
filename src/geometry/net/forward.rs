//! Each layer's forward pass, keeping what its backward pass and the
//! curvature statistics need.

use super::{Cache, Net, NetLayer, Phase};
use crate::geometry::ops::{Binary, Ops, OpsError, OpsResult, Reduce, Unary};
use crate::plan::{image_dims, Layer};

/// A BatchNorm layer's batch mean and unbiased variance, on the host, and
/// how many values each channel's statistics summarise.
pub(super) type HostStats = Option<(Vec<f64>, Vec<f64>, usize)>;

/// Position of `layer` in its network.
fn layer_index<O: Ops>(net: &Net<O>, layer: &NetLayer<O::T>) -> usize {
    net.layers
        .iter()
        .position(|l| std::ptr::eq(l, layer))
        .unwrap_or(0)
}

/// `1/sqrt(var + eps)`.
fn inv_std<O: Ops>(o: &O, var: &O::T, eps: f64) -> OpsResult<O::T> {
    o.unary(
        Unary::Recip,
        &o.unary(Unary::Sqrt, &o.affine(var, 1.0, eps)?)?,
    )
}

impl<O: Ops> Net<O> {
    /// An embedding's token ids from its input `x [n, ...]` (floats that
    /// must be integers in `[0, num)`): the ids `[n·L]` and `i·num + id`
    /// per (example i, position), as index tensors.
    pub(super) fn tokens(
        &self,
        o: &O,
        layer: &NetLayer<O::T>,
        x: &O::T,
        n: usize,
        num: usize,
    ) -> OpsResult<(O::T, O::T)> {
        let v = o.download(x)?;
        let l = v.len() / n.max(1);
        let mut tok = Vec::with_capacity(v.len());
        let mut rows = Vec::with_capacity(v.len());
        for (j, &t) in v.iter().enumerate() {
            if !(t.fract() == 0.0 && t >= 0.0 && t < num as f64) {
                return Err(OpsError(format!(
                    "embedding `{}`: example {} of the batch, position {}: token id {t} is not an integer in [0, {num})",
                    layer.spec.name,
                    j / l.max(1),
                    j % l.max(1)
                )));
            }
            tok.push(t as u32);
            rows.push(((j / l.max(1)) * num) as u32 + t as u32);
        }
        Ok((o.upload_index(&tok)?, o.upload_index(&rows)?))
    }

    pub(super) fn layer_forward(
        &self,
        o: &O,
        layer: &NetLayer<O::T>,
        xs: &[&O::T],
        n: usize,
        phase: Phase,
    ) -> OpsResult<(O::T, Cache<O::T>, HostStats)> {
        let x = xs[0];
        let mut out_shape = vec![n];
        out_shape.extend(&layer.spec.output);
        let plain = |y: O::T, c: Cache<O::T>| Ok((y, c, None));
        match &layer.spec.layer {
            Layer::Linear { bias, .. } => {
                let x2 = o.reshape(x, &[n, layer.spec.input[0]])?;
                let mut y = o.matmul(&x2, layer.wt.as_ref().unwrap())?;
                if let Some(b) = &layer.b {
                    y = o.add(&y, b)?;
                }
                let a = if *bias {
                    o.cat(&[x2, o.affine(&o.zeros(&[n, 1])?, 0.0, 1.0)?], 1)?
                } else {
                    x2
                };
                let a = o.reshape(&a, &[n, 1, o.shape(&a)[1]])?;
                plain(y, Cache::Affine { a })
            }
            Layer::Embedding { num_embeddings, .. } => {
                let (tok, rows) = self.tokens(o, layer, x, n, *num_embeddings)?;
                let y = o.index_select(layer.w.as_ref().unwrap(), &tok, 0)?; // [n·L, dim]
                plain(o.reshape(&y, &out_shape)?, Cache::Embed { tok, rows })
            }
            Layer::Conv2d { bias, .. }
            | Layer::Conv1d { bias, .. }
            | Layer::ConvTranspose2d { bias, .. } => {
                let u = layer.unfold.as_ref().unwrap();
                let w = layer.w.as_ref().unwrap();
                let mut y = self.conv(o, u, w, layer.wt.as_ref(), x, n)?; // [n, cout, L]
                if let Some(b) = &layer.b {
                    y = o.add(&y, b)?;
                }
                let y = o.reshape(&y, &out_shape)?;
                // The patches hold K times the input: the backward pass
                // rebuilds them from the input when it needs them.
                let x = o.reshape(x, &[n, u.cin, u.hw])?;
                plain(y, Cache::Conv { x, bias: *bias })
            }
            Layer::Relu
            | Layer::Tanh
            | Layer::Sigmoid
            | Layer::Gelu
            | Layer::LeakyRelu { .. }
            | Layer::Elu { .. }
            | Layer::Silu
            | Layer::Hardtanh { .. }
            | Layer::Hardsigmoid
            | Layer::Hardswish => {
                let y = super::act_forward(o, &layer.spec.layer, x)?;
                plain(y.clone(), Cache::Act { x: x.clone(), y })
            }
            Layer::Flatten => plain(o.reshape(x, &out_shape)?, Cache::Reshape),
            Layer::Dropout { p } => match phase {
                Phase::Eval => plain(x.clone(), Cache::Reshape),
                Phase::Train { seed } => {
                    // One stream per layer and pass, drawn on the host so
                    // that every backend drops the same values.
                    let mut rng = crate::rng::Rng::new(
                        seed ^ (layer_index(self, layer) as u64)
                            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    );
                    let keep = 1.0 / (1.0 - p);
                    let numel = n * layer.spec.input.iter().product::<usize>();
                    let mask: Vec<f64> = (0..numel)
                        .map(|_| if rng.uniform() < *p { 0.0 } else { keep })
                        .collect();
                    let mut shape = vec![n];
                    shape.extend(&layer.spec.input);
                    let mask = o.upload(&shape, &mask)?;
                    plain(o.mul(&o.reshape(x, &shape)?, &mask)?, Cache::Mask(mask))
                }
            },
            Layer::MaxPool2d { .. }
            | Layer::AvgPool2d { .. }
            | Layer::MaxPool1d { .. }
            | Layer::AvgPool1d { .. }
            | Layer::AdaptiveMaxPool2d { .. }
            | Layer::AdaptiveMaxPool1d { .. } => {
                let max = layer.spec.layer.pooling().is_some_and(|(p, _)| p.is_max());
                let u = layer.unfold.as_ref().unwrap();
                let fill = if max { -(f32::MAX as f64) } else { 0.0 };
                let p = self.unfold_with(o, u, x, n, fill)?; // [n, c·K, L]
                let p = o.reshape(&p, &[n, u.cin, u.k, u.l])?;
                let out = if max {
                    o.reduce(Reduce::Max, &p, 2)?
                } else if let Some(wts) = &layer.pool_weights {
                    o.sum_dim(&o.mul(&p, wts)?, 2)?
                } else {
                    o.scale(&o.sum_dim(&p, 2)?, 1.0 / u.k as f64)?
                };
                let y = o.reshape(&out, &out_shape)?;
                let route = max
                    .then(|| first_max(o, &p, &out, [n, u.cin, u.k, u.l]))
                    .transpose()?;
                plain(y, Cache::Pool { out, route })
            }
            Layer::AdaptiveAvgPool2d { .. } | Layer::AdaptiveAvgPool1d { .. } => {
                let (pool, _) = layer.pool.as_ref().unwrap();
                let [c, h, w] = image_dims(&layer.spec.input);
                let hw = h * w;
                let y = o.matmul(&o.reshape(x, &[n * c, hw])?, pool)?;
                plain(o.reshape(&y, &out_shape)?, Cache::Linear)
            }
            Layer::BatchNorm1d { eps, .. } | Layer::BatchNorm2d { eps, .. } => {
                let c = layer.spec.input[0];
                let l: usize = layer.spec.input[1..].iter().product();
                let x3 = o.reshape(x, &[n, c, l])?;
                let (xhat, s, batch, stats) = match phase {
                    Phase::Eval => {
                        let (mean, s) = layer.running.as_ref().unwrap();
                        (o.mul(&o.sub(&x3, mean)?, s)?, s.clone(), None, None)
                    }
                    Phase::Train { .. } => {
                        // Batch statistics over examples and positions,
                        // the biased variance normalising as PyTorch does.
                        let count = (n * l) as f64;
                        let sum_nl =
                            |t: &O::T| -> OpsResult<O::T> { o.sum_dim(&o.sum_dim(t, 2)?, 0) };
                        let mean = o.scale(&sum_nl(&x3)?, 1.0 / count)?; // [1, c, 1]
                        let xc = o.sub(&x3, &mean)?;
                        let var = o.scale(&sum_nl(&o.unary(Unary::Sqr, &xc)?)?, 1.0 / count)?;
                        let s = inv_std(o, &var, *eps)?;
                        let xhat = o.mul(&xc, &s)?;
                        let unbiased = if count > 1.0 {
                            count / (count - 1.0)
                        } else {
                            1.0
                        };
                        let stats = (
                            o.download(&mean)?,
                            o.download(&var)?.iter().map(|v| v * unbiased).collect(),
                            n * l,
                        );
                        (xhat.clone(), s, Some(xhat), Some(stats))
                    }
                };
                let y = o.add(
                    &o.mul(&xhat, layer.w.as_ref().unwrap())?,
                    layer.b.as_ref().unwrap(),
                )?;
                let xhat_t = o.transpose(&xhat, 1, 2)?; // [n, L, C]
                Ok((
                    o.reshape(&y, &out_shape)?,
                    Cache::Norm {
                        xhat: xhat_t,
                        s,
                        batch,
                    },
                    stats,
                ))
            }
            Layer::GroupNorm {
                groups,
                channels,
                eps,
                ..
            } => {
                let total: usize = layer.spec.input.iter().product();
                let (g, d) = (*groups, total / groups);
                let l = total / channels;
                let xg = o.reshape(x, &[n, g, d])?;
                let mean = o.scale(&o.sum_dim(&xg, 2)?, 1.0 / d as f64)?;
                let xc = o.sub(&xg, &mean)?;
                let var = o.scale(&o.sum_dim(&o.unary(Unary::Sqr, &xc)?, 2)?, 1.0 / d as f64)?;
                let s = inv_std(o, &var, *eps)?; // [n, G, 1]
                let xhat = o.mul(&xc, &s)?; // [n, G, D]
                let x3 = o.reshape(&xhat, &[n, *channels, l])?;
                let y = o.add(
                    &o.mul(&x3, layer.w.as_ref().unwrap())?,
                    layer.b.as_ref().unwrap(),
                )?;
                Ok((
                    o.reshape(&y, &out_shape)?,
                    Cache::Norm {
                        xhat: o.transpose(&x3, 1, 2)?,
                        s,
                        batch: Some(xhat),
                    },
                    None,
                ))
            }
            Layer::LayerNorm { shape, eps, .. } => {
                let d: usize = shape.iter().product();
                let total: usize = layer.spec.input.iter().product();
                let l = total / d;
                let x3 = o.reshape(x, &[n, l, d])?;
                let mean = o.scale(&o.sum_dim(&x3, 2)?, 1.0 / d as f64)?;
                let xc = o.sub(&x3, &mean)?;
                let var = o.scale(&o.sum_dim(&o.unary(Unary::Sqr, &xc)?, 2)?, 1.0 / d as f64)?;
                let s = inv_std(o, &var, *eps)?;
                let xhat = o.mul(&xc, &s)?;
                let y = o.add(
                    &o.mul(&xhat, layer.w.as_ref().unwrap())?,
                    layer.b.as_ref().unwrap(),
                )?;
                plain(
                    o.reshape(&y, &out_shape)?,
                    Cache::Norm {
                        xhat,
                        s,
                        batch: None,
                    },
                )
            }
            Layer::Add => {
                let mut y = xs[0].clone();
                for t in &xs[1..] {
                    y = o.add(&y, t)?;
                }
                plain(o.reshape(&y, &out_shape)?, Cache::Join)
            }
            Layer::Concat => {
                let parts = xs
                    .iter()
                    .zip(&layer.src)
                    .map(|(t, &src)| {
                        let s = self.spec.node_shape(src);
                        let rest: usize = s[1..].iter().product();
                        o.reshape(t, &[n, s[0], rest])
                    })
                    .collect::<OpsResult<Vec<_>>>()?;
                plain(o.reshape(&o.cat(&parts, 1)?, &out_shape)?, Cache::Join)
            }
        }
    }
}

/// For max pooling's windows `p [n, c, K, L]` and their maxima
/// `out [n, c, 1, L]`: the one-hot of each window's first maximum in the
/// kernel's row-major order, PyTorch's choice when values tie (a bias-only
/// region of a feature map ties whole windows).
fn first_max<O: Ops>(o: &O, p: &O::T, out: &O::T, dims: [usize; 4]) -> OpsResult<O::T> {
    let [n, c, k, l] = dims;
    let hit = o.binary(Binary::Ge, p, out)?;
    if k == 1 {
        return Ok(hit);
    }
    // Maxima strictly before each position: the hits times a strictly
    // upper-triangular matrix of ones (exact small integers in any dtype).
    let upper: Vec<f64> = (0..k * k)
        .map(|i| if i / k < i % k { 1.0 } else { 0.0 })
        .collect();
    let upper = o.upload(&[k, k], &upper)?;
    let rows = o.reshape(
        &o.transpose(&o.reshape(&hit, &[n * c, k, l])?, 1, 2)?,
        &[n * c * l, k],
    )?;
    let before = o.matmul(&rows, &upper)?;
    let none_before = o.binary(Binary::Ge, &o.zeros(&[1, 1])?, &before)?;
    let first = o.mul(&rows, &none_before)?;
    o.reshape(
        &o.transpose(&o.reshape(&first, &[n * c, l, k])?, 1, 2)?,
        &[n, c, k, l],
    )
}
