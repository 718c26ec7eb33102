//! A model as the engine sees it: layers with their parameters on the
//! backend's device, a forward pass that keeps what the backward pass and
//! the curvature statistics need, and a backward pass that pushes a whole
//! stack of output functions (`m` of them per example) through the network
//! at once.
//!
//! Differentiating layer by layer here, rather than through a framework's
//! autograd, is deliberate: every output function (C logits for the NTK,
//! the Fisher's pseudo-outputs) rides along as one more leading dimension of
//! a single backward pass, and each layer's input `a` and output gradient
//! `g` come out directly — the two things every representation is built
//! from. The same code then serves every backend.

use super::ops::{Binary, Ops, OpsError, OpsResult, Reduce, Unary};
use crate::plan::{Layer, LayerSpec, ModelSpec, TrainMode};
use std::sync::Arc;

/// Parameters on the host, in `state_dict` order with PyTorch names and
/// shapes (BatchNorm running statistics included).
#[derive(Clone, Debug, PartialEq)]
pub struct HostParams {
    pub tensors: Vec<HostParam>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HostParam {
    pub key: String,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
    /// False for buffers (running mean/var), which are not parameters.
    pub trainable: bool,
}

impl HostParams {
    /// Trainable parameters as one vector, in NNGeometry's flat order
    /// (layer by layer, weight row-major then bias).
    pub fn flat(&self) -> Vec<f64> {
        self.tensors
            .iter()
            .filter(|t| t.trainable)
            .flat_map(|t| t.data.iter().copied())
            .collect()
    }
    pub fn set_flat(&mut self, flat: &[f64]) -> Result<(), OpsError> {
        let n: usize = self
            .tensors
            .iter()
            .filter(|t| t.trainable)
            .map(|t| t.data.len())
            .sum();
        if n != flat.len() {
            return Err(OpsError(format!(
                "a parameter vector of {} entries for a model of {n} parameters",
                flat.len()
            )));
        }
        let mut at = 0;
        for t in self.tensors.iter_mut().filter(|t| t.trainable) {
            let k = t.data.len();
            t.data.copy_from_slice(&flat[at..at + k]);
            at += k;
        }
        Ok(())
    }
    pub fn get(&self, key: &str) -> Option<&HostParam> {
        self.tensors.iter().find(|t| t.key == key)
    }
}

/// Where one parameterised layer sits in the flat parameter vector.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSlot {
    /// Index into `Net::layers`.
    pub index: usize,
    pub name: String,
    pub offset: usize,
    pub numel: usize,
    pub kind: SlotKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// Linear or convolution: per-example gradient `Σ_loc g aᵀ` in an
    /// `[sg, sa]` layout whose last column is the bias when there is one.
    Affine {
        sg: usize,
        sa: usize,
        bias: bool,
        conv: bool,
    },
    /// Norm layers: elementwise scale and shift over `d` features.
    Elementwise { d: usize },
}

/// Index map of an unfold (im2col): patches `[c_in·K, L]` from an image
/// flattened to `hw` values plus one trailing zero for padding.
#[derive(Clone, Debug)]
struct Unfold<T> {
    idx: T,
    cin: usize,
    k: usize,
    l: usize,
    hw: usize,
}

pub struct NetLayer<T> {
    pub spec: LayerSpec,
    /// Linear `[out, in]`; convolutions `[out, in·K]`.
    w: Option<T>,
    wt: Option<T>,
    /// Bias, or the shift of a norm layer.
    b: Option<T>,
    /// BatchNorm: per-channel `(mean, 1/sqrt(var+eps))`.
    running: Option<(T, T)>,
    unfold: Option<Unfold<T>>,
}

pub struct Net<O: Ops> {
    pub spec: ModelSpec,
    pub layers: Vec<NetLayer<O::T>>,
    pub slots: Vec<LayerSlot>,
    pub params: HostParams,
    /// Which function of the weights the model computes.
    pub mode: Reparam<O>,
}

/// The function a model computes from its weights `w`: the network itself,
/// the α-scaled model of lazy training, or the network linearised at `w₀`.
///
/// Every representation, loss and gradient goes through [`Net::forward`]
/// and [`Net::backward`], so each of them is that of the model as trained:
/// the NTK of a scaled model is α² times the network's, a linearised
/// model's NTK stays the kernel at `w₀`.
pub enum Reparam<O: Ops> {
    Plain,
    /// `α (f(x; w) − f(x; w₀))`, or `α f(x; w)` when `base` is `None`
    /// (uncentred: at α = 1 exactly the plain network).
    Scaled {
        alpha: f64,
        base: Option<Arc<Net<O>>>,
    },
    /// `f(x; w₀) + J(x; w₀) (w − w₀)`: the forward pass is a Jacobian–vector
    /// product at `w₀` with tangent `delta = w − w₀`, the backward pass is
    /// the network's at `w₀`.
    Linearized {
        base: Arc<Net<O>>,
        delta: Box<Net<O>>,
        /// Drop `f(x; w₀)`: the linearisation of the centred model.
        center: bool,
    },
}

/// What the forward pass keeps for the backward pass, per layer.
pub enum Cache<T> {
    /// Input `[n, L, sa]` (with the bias column of ones when there is one).
    Affine {
        a: T,
    },
    Act {
        x: T,
        y: T,
    },
    Reshape,
    Pool {
        patches: T,
        out: T,
        max: bool,
    },
    Norm {
        xhat: T,
        s: T,
    },
}

pub struct Forward<T> {
    pub output: T,
    pub caches: Vec<Cache<T>>,
    pub n: usize,
}

/// One parameterised layer's share of a backward pass.
#[derive(Clone)]
pub struct Capture<T> {
    pub slot: usize,
    /// Affine: `a [n, L, sa]`; elementwise: `x̂ [n, L, d]`.
    pub a: T,
    /// Gradient w.r.t. the layer output, `[m, n, L, sg]` (or `[m, n, L, d]`).
    pub g: T,
}

fn unfold_index(
    h: usize,
    w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> (Vec<u32>, usize, usize) {
    let oh = (h + 2 * padding[0] - kernel[0]) / stride[0] + 1;
    let ow = (w + 2 * padding[1] - kernel[1]) / stride[1] + 1;
    let pad = (h * w) as u32;
    let mut idx = Vec::with_capacity(kernel[0] * kernel[1] * oh * ow);
    for ki in 0..kernel[0] {
        for kj in 0..kernel[1] {
            for oi in 0..oh {
                for oj in 0..ow {
                    let r = (oi * stride[0] + ki) as isize - padding[0] as isize;
                    let c = (oj * stride[1] + kj) as isize - padding[1] as isize;
                    if r >= 0 && c >= 0 && (r as usize) < h && (c as usize) < w {
                        idx.push((r as usize * w + c as usize) as u32);
                    } else {
                        idx.push(pad);
                    }
                }
            }
        }
    }
    (idx, oh, ow)
}

impl<O: Ops> Net<O> {
    /// Uploads `params` (as made by [`super::init`] or read from a file).
    pub fn new(o: &O, spec: &ModelSpec, params: HostParams) -> OpsResult<Self> {
        let mut layers = Vec::new();
        let mut slots = Vec::new();
        let mut offset = 0;
        for (index, l) in spec.layers.iter().enumerate() {
            let key = |k: &str| format!("{}.{k}", l.name);
            let get = |k: &str| -> OpsResult<&HostParam> {
                params
                    .get(&key(k))
                    .ok_or_else(|| OpsError(format!("missing parameter `{}`", key(k))))
            };
            let mut layer = NetLayer {
                spec: l.clone(),
                w: None,
                wt: None,
                b: None,
                running: None,
                unfold: None,
            };
            let mut slot_kind = None;
            match &l.layer {
                Layer::Linear {
                    in_features,
                    out_features,
                    bias,
                } => {
                    let w = o.upload(&[*out_features, *in_features], &get("weight")?.data)?;
                    layer.wt = Some(o.transpose(&w, 0, 1)?);
                    layer.w = Some(w);
                    if *bias {
                        layer.b = Some(o.upload(&[*out_features], &get("bias")?.data)?);
                    }
                    slot_kind = Some(SlotKind::Affine {
                        sg: *out_features,
                        sa: in_features + *bias as usize,
                        bias: *bias,
                        conv: false,
                    });
                }
                Layer::Conv2d { .. } | Layer::Conv1d { .. } => {
                    // A Conv1d is a Conv2d over a 1-pixel-high image.
                    let (cin, cout, h, w, kernel, stride, padding, bias) = match &l.layer {
                        Layer::Conv2d {
                            in_channels,
                            out_channels,
                            kernel,
                            stride,
                            padding,
                            bias,
                        } => (
                            *in_channels,
                            *out_channels,
                            l.input[1],
                            l.input[2],
                            *kernel,
                            *stride,
                            *padding,
                            *bias,
                        ),
                        Layer::Conv1d {
                            in_channels,
                            out_channels,
                            kernel,
                            stride,
                            padding,
                            bias,
                        } => (
                            *in_channels,
                            *out_channels,
                            1,
                            l.input[1],
                            [1, *kernel],
                            [1, *stride],
                            [0, *padding],
                            *bias,
                        ),
                        _ => unreachable!(),
                    };
                    let (idx, oh, ow) = unfold_index(h, w, kernel, stride, padding);
                    let k = kernel[0] * kernel[1];
                    layer.unfold = Some(Unfold {
                        idx: o.upload_index(&idx)?,
                        cin,
                        k,
                        l: oh * ow,
                        hw: h * w,
                    });
                    let wt = o.upload(&[cout, cin * k], &get("weight")?.data)?;
                    layer.wt = Some(o.transpose(&wt, 0, 1)?);
                    layer.w = Some(wt);
                    if bias {
                        layer.b = Some(o.upload(&[cout, 1], &get("bias")?.data)?);
                    }
                    slot_kind = Some(SlotKind::Affine {
                        sg: cout,
                        sa: cin * k + bias as usize,
                        bias,
                        conv: true,
                    });
                }
                Layer::MaxPool2d { kernel, stride } | Layer::AvgPool2d { kernel, stride } => {
                    let (c, h, w) = (l.input[0], l.input[1], l.input[2]);
                    let (idx, oh, ow) = unfold_index(h, w, *kernel, *stride, [0, 0]);
                    layer.unfold = Some(Unfold {
                        idx: o.upload_index(&idx)?,
                        cin: c,
                        k: kernel[0] * kernel[1],
                        l: oh * ow,
                        hw: h * w,
                    });
                }
                Layer::BatchNorm1d { features: c, eps }
                | Layer::BatchNorm2d { channels: c, eps } => {
                    layer.w = Some(o.upload(&[*c, 1], &get("weight")?.data)?);
                    layer.b = Some(o.upload(&[*c, 1], &get("bias")?.data)?);
                    let mean = &get("running_mean")?.data;
                    let s: Vec<f64> = get("running_var")?
                        .data
                        .iter()
                        .map(|v| 1.0 / (v + eps).sqrt())
                        .collect();
                    layer.running = Some((o.upload(&[*c, 1], mean)?, o.upload(&[*c, 1], &s)?));
                    slot_kind = Some(SlotKind::Elementwise { d: *c });
                }
                Layer::LayerNorm { shape, .. } => {
                    let d: usize = shape.iter().product();
                    layer.w = Some(o.upload(&[1, d], &get("weight")?.data)?);
                    layer.b = Some(o.upload(&[1, d], &get("bias")?.data)?);
                    slot_kind = Some(SlotKind::Elementwise { d });
                }
                Layer::Relu | Layer::Tanh | Layer::Sigmoid | Layer::Gelu | Layer::Flatten => {}
            }
            if let Some(kind) = slot_kind {
                let numel = l.params as usize;
                slots.push(LayerSlot {
                    index,
                    name: l.name.clone(),
                    offset,
                    numel,
                    kind,
                });
                offset += numel;
            }
            layers.push(layer);
        }
        Ok(Net {
            spec: spec.clone(),
            layers,
            slots,
            params,
            mode: Reparam::Plain,
        })
    }

    /// The model trained in `mode` from initial weights `w0`, currently at
    /// this network's weights.
    pub fn reparam(self, o: &O, mode: &TrainMode, w0: &HostParams) -> OpsResult<Self> {
        let mode = match mode {
            TrainMode::Plain => Reparam::Plain,
            TrainMode::Scaled { alpha, center } => Reparam::Scaled {
                alpha: *alpha,
                base: if *center {
                    Some(Arc::new(Net::new(o, &self.spec, w0.clone())?))
                } else {
                    None
                },
            },
            TrainMode::Linearized { center } => {
                let base = Arc::new(Net::new(o, &self.spec, w0.clone())?);
                let delta = Box::new(Self::delta(o, &base, &self.params)?);
                Reparam::Linearized {
                    base,
                    delta,
                    center: *center,
                }
            }
        };
        Ok(Net { mode, ..self })
    }

    /// A network whose parameters are `params − base.params` (buffers
    /// such as running statistics are the base's).
    fn delta(o: &O, base: &Net<O>, params: &HostParams) -> OpsResult<Self> {
        let mut d = base.params.clone();
        let w = params.flat();
        let w0 = base.params.flat();
        let diff: Vec<f64> = w.iter().zip(&w0).map(|(a, b)| a - b).collect();
        d.set_flat(&diff)?;
        Net::new(o, &base.spec, d)
    }

    /// The same model (same mode and initial weights) at other weights.
    pub fn with_params(&self, o: &O, params: HostParams) -> OpsResult<Self> {
        let mode = match &self.mode {
            Reparam::Plain => Reparam::Plain,
            Reparam::Scaled { alpha, base } => Reparam::Scaled {
                alpha: *alpha,
                base: base.clone(),
            },
            Reparam::Linearized { base, center, .. } => Reparam::Linearized {
                base: base.clone(),
                delta: Box::new(Self::delta(o, base, &params)?),
                center: *center,
            },
        };
        Ok(Net {
            mode,
            ..Net::new(o, &self.spec, params)?
        })
    }

    /// The factor gradient-descent training applies to the loss: 1/α² for a
    /// scaled model (Chizat et al.), so that under SGD its function moves at
    /// the same speed for every α while its weights move α times less
    /// (natural gradient needs no factor; Adam ignores it).
    pub fn loss_scale(&self) -> f64 {
        match &self.mode {
            Reparam::Scaled { alpha, .. } => 1.0 / (alpha * alpha),
            _ => 1.0,
        }
    }

    pub fn num_params(&self) -> usize {
        self.slots.iter().map(|s| s.numel).sum()
    }
    pub fn outputs(&self) -> usize {
        self.spec.outputs()
    }
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }

    /// Forward pass on `x [n, ...input]`; returns the model's outputs
    /// `[n, C]` (see [`Reparam`]).
    pub fn forward(&self, o: &O, x: &O::T, keep: bool) -> OpsResult<Forward<O::T>> {
        match &self.mode {
            Reparam::Plain => self.forward_net(o, x, keep),
            Reparam::Scaled { alpha, base } => {
                let mut f = self.forward_net(o, x, keep)?;
                if let Some(b) = base {
                    f.output = o.sub(&f.output, &b.forward_net(o, x, false)?.output)?;
                }
                if *alpha != 1.0 {
                    f.output = o.scale(&f.output, *alpha)?;
                }
                Ok(f)
            }
            Reparam::Linearized {
                base,
                delta,
                center,
            } => {
                let (mut f, t) = base.jvp(o, x, delta, keep)?;
                f.output = if *center { t } else { o.add(&f.output, &t)? };
                Ok(f)
            }
        }
    }

    /// Backpropagates `seed [m, n, C]` through the model (see
    /// [`Self::backward_net`]).
    pub fn backward(
        &self,
        o: &O,
        fwd: &Forward<O::T>,
        seed: &O::T,
    ) -> OpsResult<Vec<Capture<O::T>>> {
        match &self.mode {
            Reparam::Plain => self.backward_net(o, fwd, seed),
            Reparam::Scaled { alpha, .. } if *alpha == 1.0 => self.backward_net(o, fwd, seed),
            Reparam::Scaled { alpha, .. } => self.backward_net(o, fwd, &o.scale(seed, *alpha)?),
            Reparam::Linearized { base, .. } => base.backward_net(o, fwd, seed),
        }
    }

    /// The network's own forward pass.
    fn forward_net(&self, o: &O, x: &O::T, keep: bool) -> OpsResult<Forward<O::T>> {
        let n = o.shape(x)[0];
        let mut h = x.clone();
        let mut caches = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (out, cache) = self.layer_forward(o, layer, &h, n)?;
            if keep {
                caches.push(cache);
            }
            h = out;
        }
        let c = self.outputs();
        let output = o.reshape(&h, &[n, c])?;
        Ok(Forward { output, caches, n })
    }

    fn layer_forward(
        &self,
        o: &O,
        layer: &NetLayer<O::T>,
        x: &O::T,
        n: usize,
    ) -> OpsResult<(O::T, Cache<O::T>)> {
        let mut out_shape = vec![n];
        out_shape.extend(&layer.spec.output);
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
                Ok((y, Cache::Affine { a }))
            }
            Layer::Conv2d { bias, .. } | Layer::Conv1d { bias, .. } => {
                let u = layer.unfold.as_ref().unwrap();
                let patches = self.unfold(o, u, x, n)?; // [n, cin·K, L]
                let w = layer.w.as_ref().unwrap();
                let mut y = o.matmul(w, &patches)?; // [n, cout, L]
                if let Some(b) = &layer.b {
                    y = o.add(&y, b)?;
                }
                let y = o.reshape(&y, &out_shape)?;
                let mut a = o.transpose(&patches, 1, 2)?; // [n, L, cin·K]
                if *bias {
                    a = o.cat(&[a, o.affine(&o.zeros(&[n, u.l, 1])?, 0.0, 1.0)?], 2)?;
                }
                Ok((y, Cache::Affine { a }))
            }
            Layer::Relu | Layer::Tanh | Layer::Sigmoid | Layer::Gelu => {
                let op = match layer.spec.layer {
                    Layer::Relu => Unary::Relu,
                    Layer::Tanh => Unary::Tanh,
                    Layer::Sigmoid => Unary::Sigmoid,
                    _ => Unary::GeluErf,
                };
                let y = o.unary(op, x)?;
                Ok((y.clone(), Cache::Act { x: x.clone(), y }))
            }
            Layer::Flatten => Ok((o.reshape(x, &out_shape)?, Cache::Reshape)),
            Layer::MaxPool2d { .. } | Layer::AvgPool2d { .. } => {
                let max = matches!(layer.spec.layer, Layer::MaxPool2d { .. });
                let u = layer.unfold.as_ref().unwrap();
                let p = self.unfold(o, u, x, n)?; // [n, c·K, L]
                let p = o.reshape(&p, &[n, u.cin, u.k, u.l])?;
                let out = if max {
                    o.reduce(Reduce::Max, &p, 2)?
                } else {
                    o.scale(&o.sum_dim(&p, 2)?, 1.0 / u.k as f64)?
                };
                let y = o.reshape(&out, &out_shape)?;
                Ok((
                    y,
                    Cache::Pool {
                        patches: p,
                        out,
                        max,
                    },
                ))
            }
            Layer::BatchNorm1d { .. } | Layer::BatchNorm2d { .. } => {
                let c = layer.spec.input[0];
                let l: usize = layer.spec.input[1..].iter().product();
                let x3 = o.reshape(x, &[n, c, l])?;
                let (mean, s) = layer.running.as_ref().unwrap();
                let xhat = o.mul(&o.sub(&x3, mean)?, s)?;
                let y = o.add(
                    &o.mul(&xhat, layer.w.as_ref().unwrap())?,
                    layer.b.as_ref().unwrap(),
                )?;
                let xhat_t = o.transpose(&xhat, 1, 2)?; // [n, L, C]
                Ok((
                    o.reshape(&y, &out_shape)?,
                    Cache::Norm {
                        xhat: xhat_t,
                        s: s.clone(),
                    },
                ))
            }
            Layer::LayerNorm { shape, eps } => {
                let d: usize = shape.iter().product();
                let total: usize = layer.spec.input.iter().product();
                let l = total / d;
                let x3 = o.reshape(x, &[n, l, d])?;
                let mean = o.scale(&o.sum_dim(&x3, 2)?, 1.0 / d as f64)?;
                let xc = o.sub(&x3, &mean)?;
                let var = o.scale(&o.sum_dim(&o.unary(Unary::Sqr, &xc)?, 2)?, 1.0 / d as f64)?;
                let s = o.unary(
                    Unary::Recip,
                    &o.unary(Unary::Sqrt, &o.affine(&var, 1.0, *eps)?)?,
                )?;
                let xhat = o.mul(&xc, &s)?;
                let y = o.add(
                    &o.mul(&xhat, layer.w.as_ref().unwrap())?,
                    layer.b.as_ref().unwrap(),
                )?;
                Ok((o.reshape(&y, &out_shape)?, Cache::Norm { xhat, s }))
            }
        }
    }

    /// `[n, cin, (h,) w]` → patches `[n, cin·K, L]`.
    fn unfold(&self, o: &O, u: &Unfold<O::T>, x: &O::T, n: usize) -> OpsResult<O::T> {
        let x = o.reshape(x, &[n, u.cin, u.hw])?;
        let x = o.cat(&[x, o.zeros(&[n, u.cin, 1])?], 2)?;
        let p = o.index_select(&x, &u.idx, 2)?; // [n, cin, K·L]
        o.reshape(&p, &[n, u.cin * u.k, u.l])
    }

    /// Forward-mode derivative: the outputs at these weights and their
    /// directional derivative `J(x; w) v`, where `t` holds the direction
    /// `v` as a network's parameters (its buffers are ignored). One pass,
    /// each layer pushing the tangent of its input forward next to the
    /// primal value; `J` is never formed.
    pub fn jvp(&self, o: &O, x: &O::T, t: &Net<O>, keep: bool) -> OpsResult<(Forward<O::T>, O::T)> {
        let n = o.shape(x)[0];
        let mut h = x.clone();
        // The input does not depend on the weights: no tangent until the
        // first parameterised layer.
        let mut dh: Option<O::T> = None;
        let mut caches = Vec::with_capacity(self.layers.len());
        for (layer, tl) in self.layers.iter().zip(&t.layers) {
            let (out, cache) = self.layer_forward(o, layer, &h, n)?;
            dh = self.layer_tangent(o, layer, tl, &h, dh.as_ref(), &cache, n)?;
            if keep {
                caches.push(cache);
            }
            h = out;
        }
        let c = self.outputs();
        let output = o.reshape(&h, &[n, c])?;
        let tangent = match dh {
            Some(d) => o.reshape(&d, &[n, c])?,
            None => o.zeros(&[n, c])?,
        };
        Ok((Forward { output, caches, n }, tangent))
    }

    /// One layer's tangent: `dx` is the tangent of its input `x`, `tl` the
    /// layer's parameter direction.
    #[allow(clippy::too_many_arguments)]
    fn layer_tangent(
        &self,
        o: &O,
        layer: &NetLayer<O::T>,
        tl: &NetLayer<O::T>,
        x: &O::T,
        dx: Option<&O::T>,
        cache: &Cache<O::T>,
        n: usize,
    ) -> OpsResult<Option<O::T>> {
        let mut out_shape = vec![n];
        out_shape.extend(&layer.spec.output);
        let sum = |a: Option<O::T>, b: O::T| -> OpsResult<O::T> {
            match a {
                Some(a) => o.add(&a, &b),
                None => Ok(b),
            }
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
            (Layer::Conv2d { .. } | Layer::Conv1d { .. }, _) => {
                let u = layer.unfold.as_ref().unwrap();
                let through = dx
                    .map(|d| o.matmul(layer.w.as_ref().unwrap(), &self.unfold(o, u, d, n)?))
                    .transpose()?;
                let own = o.matmul(tl.w.as_ref().unwrap(), &self.unfold(o, u, x, n)?)?;
                let mut y = sum(through, own)?;
                if let Some(vb) = &tl.b {
                    y = o.add(&y, vb)?;
                }
                Some(o.reshape(&y, &out_shape)?)
            }
            (_, Cache::Act { x, y }) => match dx {
                None => None,
                Some(d) => {
                    let deriv = match layer.spec.layer {
                        Layer::Relu => o.unary(Unary::Step, x)?,
                        Layer::Tanh => o.affine(&o.unary(Unary::Sqr, y)?, -1.0, 1.0)?,
                        Layer::Sigmoid => o.mul(y, &o.affine(y, -1.0, 1.0)?)?,
                        _ => gelu_grad(o, x)?,
                    };
                    Some(o.mul(d, &deriv)?)
                }
            },
            (_, Cache::Reshape) => dx.map(|d| o.reshape(d, &out_shape)).transpose()?,
            (_, Cache::Pool { patches, out, max }) => match dx {
                None => None,
                Some(d) => {
                    let u = layer.unfold.as_ref().unwrap();
                    let dp = o.reshape(&self.unfold(o, u, d, n)?, &[n, u.cin, u.k, u.l])?;
                    let y = if *max {
                        // Ties share the derivative, as in the backward pass.
                        let mask = o.binary(Binary::Ge, patches, out)?;
                        let count = o.sum_dim(&mask, 2)?;
                        let w = o.binary(Binary::Div, &mask, &count)?;
                        o.sum_dim(&o.mul(&dp, &w)?, 2)?
                    } else {
                        o.scale(&o.sum_dim(&dp, 2)?, 1.0 / u.k as f64)?
                    };
                    Some(o.reshape(&y, &out_shape)?)
                }
            },
            (Layer::BatchNorm1d { .. } | Layer::BatchNorm2d { .. }, Cache::Norm { s, .. }) => {
                // y = γ (x − μ) s + β with running statistics.
                let c = layer.spec.input[0];
                let l: usize = layer.spec.input[1..].iter().product();
                let (mean, _) = layer.running.as_ref().unwrap();
                let xhat = o.mul(&o.sub(&o.reshape(x, &[n, c, l])?, mean)?, s)?;
                let own = o.add(
                    &o.mul(&xhat, tl.w.as_ref().unwrap())?,
                    tl.b.as_ref().unwrap(),
                )?;
                let through = dx
                    .map(|d| {
                        o.mul(
                            &o.reshape(d, &[n, c, l])?,
                            &o.mul(layer.w.as_ref().unwrap(), s)?,
                        )
                    })
                    .transpose()?;
                Some(o.reshape(&sum(through, own)?, &out_shape)?)
            }
            (Layer::LayerNorm { shape, .. }, Cache::Norm { xhat, s }) => {
                let d: usize = shape.iter().product();
                let l = layer.spec.input.iter().product::<usize>() / d;
                let own = o.add(
                    &o.mul(xhat, tl.w.as_ref().unwrap())?,
                    tl.b.as_ref().unwrap(),
                )?;
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
                Some(o.reshape(&sum(through, own)?, &out_shape)?)
            }
            _ => {
                return Err(OpsError(format!(
                    "no forward-mode rule for {}",
                    layer.spec.layer.type_name()
                )))
            }
        })
    }

    /// Adjoint of [`Self::unfold`]: `[b, cin·K, L]` → `[b, cin, hw]`.
    fn fold(&self, o: &O, u: &Unfold<O::T>, p: &O::T, b: usize) -> OpsResult<O::T> {
        let p = o.reshape(p, &[b, u.cin, u.k * u.l])?;
        let z = o.zeros(&[b, u.cin, u.hw + 1])?;
        let x = o.index_add(&z, &u.idx, &p, 2)?;
        o.narrow(&x, 2, 0, u.hw)
    }

    /// Backpropagates `seed [m, n, C]` (m output functions per example) and
    /// returns, for each parameterised layer, its input and output
    /// gradient. `first` limits how far back the pass goes: layers before
    /// the first parameterised layer need no input gradient.
    fn backward_net(
        &self,
        o: &O,
        fwd: &Forward<O::T>,
        seed: &O::T,
    ) -> OpsResult<Vec<Capture<O::T>>> {
        let n = fwd.n;
        let m = o.shape(seed)[0];
        let first = self.slots.first().map(|s| s.index).unwrap_or(usize::MAX);
        let mut caps = Vec::with_capacity(self.slots.len());
        let mut g = seed.clone();
        for (index, (layer, cache)) in self.layers.iter().zip(&fwd.caches).enumerate().rev() {
            if index < first {
                break;
            }
            let mut shape = vec![m, n];
            shape.extend(&layer.spec.output);
            g = o.reshape(&g, &shape)?;
            let need_input = index > first;
            let mut in_shape = vec![m, n];
            in_shape.extend(&layer.spec.input);
            let slot = self.slots.iter().position(|s| s.index == index);
            match (&layer.spec.layer, cache) {
                (Layer::Linear { out_features, .. }, Cache::Affine { a }) => {
                    let g2 = o.reshape(&g, &[m * n, *out_features])?;
                    let next = if need_input {
                        Some(o.matmul(&g2, layer.w.as_ref().unwrap())?)
                    } else {
                        None
                    };
                    caps.push(Capture {
                        slot: slot.unwrap(),
                        a: a.clone(),
                        g: o.reshape(&g2, &[m, n, 1, *out_features])?,
                    });
                    match next {
                        Some(x) => g = o.reshape(&x, &in_shape)?,
                        None => break,
                    }
                }
                (
                    Layer::Conv2d { out_channels, .. } | Layer::Conv1d { out_channels, .. },
                    Cache::Affine { a },
                ) => {
                    let u = layer.unfold.as_ref().unwrap();
                    let g3 = o.reshape(&g, &[m * n, *out_channels, u.l])?;
                    if need_input {
                        let dp = o.matmul(layer.wt.as_ref().unwrap(), &g3)?; // [mn, cin·K, L]
                        let dx = self.fold(o, u, &dp, m * n)?;
                        caps.push(Capture {
                            slot: slot.unwrap(),
                            a: a.clone(),
                            g: o.reshape(&o.transpose(&g3, 1, 2)?, &[m, n, u.l, *out_channels])?,
                        });
                        g = o.reshape(&dx, &in_shape)?;
                    } else {
                        caps.push(Capture {
                            slot: slot.unwrap(),
                            a: a.clone(),
                            g: o.reshape(&o.transpose(&g3, 1, 2)?, &[m, n, u.l, *out_channels])?,
                        });
                        break;
                    }
                }
                (_, Cache::Act { x, y }) => {
                    let d = match layer.spec.layer {
                        Layer::Relu => o.unary(Unary::Step, x)?,
                        Layer::Tanh => o.affine(&o.unary(Unary::Sqr, y)?, -1.0, 1.0)?,
                        Layer::Sigmoid => o.mul(y, &o.affine(y, -1.0, 1.0)?)?,
                        _ => gelu_grad(o, x)?,
                    };
                    g = o.mul(&g, &d)?;
                }
                (_, Cache::Reshape) => g = o.reshape(&g, &in_shape)?,
                (_, Cache::Pool { patches, out, max }) => {
                    let u = layer.unfold.as_ref().unwrap();
                    let g4 = o.reshape(&g, &[m, n, u.cin, 1, u.l])?;
                    let dp = if *max {
                        let mask = o.binary(Binary::Ge, patches, out)?; // [n, c, K, L]
                        let count = o.sum_dim(&mask, 2)?;
                        let w = o.binary(Binary::Div, &mask, &count)?;
                        o.mul(&g4, &w)?
                    } else {
                        let ones =
                            o.affine(&o.zeros(&[1, 1, 1, u.k, 1])?, 0.0, 1.0 / u.k as f64)?;
                        o.mul(&g4, &ones)?
                    };
                    let dx =
                        self.fold(o, u, &o.reshape(&dp, &[m * n, u.cin * u.k, u.l])?, m * n)?;
                    g = o.reshape(&dx, &in_shape)?;
                }
                (
                    Layer::BatchNorm1d { .. } | Layer::BatchNorm2d { .. },
                    Cache::Norm { xhat, s },
                ) => {
                    let c = layer.spec.input[0];
                    let l: usize = layer.spec.input[1..].iter().product();
                    let g4 = o.reshape(&g, &[m, n, c, l])?;
                    caps.push(Capture {
                        slot: slot.unwrap(),
                        a: xhat.clone(),
                        g: o.transpose(&o.reshape(&g4, &[m * n, c, l])?, 1, 2)
                            .and_then(|t| o.reshape(&t, &[m, n, l, c]))?,
                    });
                    if !need_input {
                        break;
                    }
                    let gamma_s = o.mul(layer.w.as_ref().unwrap(), s)?; // [c, 1]
                    g = o.reshape(&o.mul(&g4, &gamma_s)?, &in_shape)?;
                }
                (Layer::LayerNorm { shape, .. }, Cache::Norm { xhat, s }) => {
                    let d: usize = shape.iter().product();
                    let l = layer.spec.input.iter().product::<usize>() / d;
                    let g4 = o.reshape(&g, &[m, n, l, d])?;
                    caps.push(Capture {
                        slot: slot.unwrap(),
                        a: xhat.clone(),
                        g: g4.clone(),
                    });
                    if !need_input {
                        break;
                    }
                    // dx = s (dx̂ − mean(dx̂) − x̂ mean(dx̂ x̂)), means over the d features.
                    let dxhat = o.mul(&g4, layer.w.as_ref().unwrap())?;
                    let m1 = o.scale(&o.sum_dim(&dxhat, 3)?, 1.0 / d as f64)?;
                    let m2 = o.scale(&o.sum_dim(&o.mul(&dxhat, xhat)?, 3)?, 1.0 / d as f64)?;
                    let inner = o.sub(&o.sub(&dxhat, &m1)?, &o.mul(xhat, &m2)?)?;
                    g = o.reshape(&o.mul(&inner, s)?, &in_shape)?;
                }
                _ => {
                    return Err(OpsError(format!(
                        "no backward rule for {}",
                        layer.spec.layer.type_name()
                    )))
                }
            }
        }
        caps.reverse();
        Ok(caps)
    }
}

/// d/dx [x Φ(x)] = Φ(x) + x φ(x).
fn gelu_grad<O: Ops>(o: &O, x: &O::T) -> OpsResult<O::T> {
    let cdf = o.affine(
        &o.unary(Unary::Erf, &o.scale(x, std::f64::consts::FRAC_1_SQRT_2)?)?,
        0.5,
        0.5,
    )?;
    let pdf = o.scale(
        &o.unary(Unary::Exp, &o.scale(&o.unary(Unary::Sqr, x)?, -0.5)?)?,
        1.0 / (2.0 * std::f64::consts::PI).sqrt(),
    )?;
    o.add(&cdf, &o.mul(x, &pdf)?)
}
