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

//!
//! Models are graphs: each layer reads one or more earlier nodes (see
//! [`ModelSpec::sources`]); the forward pass keeps each node's value until
//! its last reader has run, and the backward pass accumulates the gradient
//! of every node from all of its readers before pushing it further, so a
//! skip connection's two branches both reach the layers before it.

mod backward;
mod conv;
mod forward;
pub mod hessian;
mod layers;
mod params;
mod tangent;
mod trainable;

pub use params::{HostParam, HostParams};

use layers::grouped_matmul;
pub use layers::unfold_index;

use super::ops::{ConvGeom, Ops, OpsError, OpsResult, Unary};
use crate::plan::{image_dims, Layer, LayerSpec, ModelSpec, Pooling, TrainMode};
use std::sync::Arc;

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
        /// Grouped convolutions: each output channel reads `sa − bias`
        /// of the `groups · (sa − bias)` columns of `a`.
        groups: usize,
        /// Transposed convolutions: `Some(K)`, the weight's columns being
        /// PyTorch's in another order (see [`super::stats::Order`]); `a`
        /// then holds, per output position, the inputs each tap reaches.
        transposed: Option<usize>,
    },
    /// Norm layers: elementwise scale and shift over `d` features.
    Elementwise { d: usize },
    /// An embedding `[num, dim]`: `a` holds `i·num + token` per (example
    /// i, position), `g` is `[m, n, L, dim]`.
    Embedding { num: usize, dim: usize },
}

impl SlotKind {
    /// Whether KFAC and EKFAC have factors for this layer (Linear and
    /// ungrouped convolutions, transposed or not).
    pub fn kron(&self) -> bool {
        matches!(self, SlotKind::Affine { groups: 1, .. })
    }
}

/// Index map of an unfold (im2col): patches `[c_in·K, L]` from an image
/// flattened to `hw` values plus one trailing zero for padding.
#[derive(Clone, Debug)]
pub(crate) struct Unfold<T> {
    idx: T,
    cin: usize,
    k: usize,
    l: usize,
    hw: usize,
    /// An untransposed convolution's shape, for native kernels.
    geom: Option<ConvGeom>,
}

#[derive(Clone)]
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
    /// Adaptive average pooling as a matrix `[H·W, oh·ow]` and its transpose.
    pool: Option<(T, T)>,
    /// Average pooling whose windows do not all divide by `K` (ceil mode,
    /// `count_include_pad = false`): each tap's weight per window `[1, 1, K, L]`.
    pool_weights: Option<T>,
    /// The graph nodes this layer reads (see [`ModelSpec::sources`]).
    src: Vec<usize>,
}

#[derive(Clone)]
pub struct Net<O: Ops> {
    pub spec: ModelSpec,
    pub layers: Vec<NetLayer<O::T>>,
    pub slots: Vec<LayerSlot>,
    /// The weights and buffers on the host. A training run whose update
    /// stays on the device leaves the trainable entries behind between
    /// steps and refreshes them ([`Net::download_params`]) before anyone
    /// reads them: hooks, the end of the run.
    pub params: HostParams,
    /// Which function of the weights the model computes.
    pub mode: Reparam<O>,
    /// Per graph node (0 = the input): whether a parameter lies upstream,
    /// i.e. whether the backward pass must reach it.
    needs_grad: Vec<bool>,
    /// Per graph node: the last layer that reads it.
    last_use: Vec<usize>,
    /// Per layer: its slot, if it has parameters.
    slot_of: Vec<Option<usize>>,
}

/// Whether norm layers use the statistics of the batch (training, as
/// PyTorch's `model.train()`) or their running statistics (evaluation:
/// every measurement, as NNGeometry takes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Eval,
    /// `seed` draws the dropout masks of this pass.
    Train {
        seed: u64,
    },
}

/// One BatchNorm layer's statistics over a training batch, for its
/// running averages: the mean and the unbiased variance, per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    pub layer: usize,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    /// Values per channel (examples × positions) the statistics are over.
    pub count: usize,
}

impl BatchStats {
    /// The variance the batch was normalised with (PyTorch's training
    /// mode divides by the count, not by count − 1).
    pub fn biased_var(&self) -> Vec<f64> {
        let c = self.count as f64;
        let f = if c > 1.0 { (c - 1.0) / c } else { 1.0 };
        self.var.iter().map(|v| v * f).collect()
    }
}

/// The function a model computes from its weights `w`: the network itself,
/// the α-scaled model of lazy training, or the network linearised at `w₀`.
///
/// Every representation, loss and gradient goes through [`Net::forward`]
/// and [`Net::backward`], so each of them is that of the model as trained:
/// the NTK of a scaled model is α² times the network's, a linearised
/// model's NTK stays the kernel at `w₀`.
#[derive(Clone)]
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
    /// A convolution's input `[n, cin, hw]`; its patches (the capture's
    /// `a`, K times larger) are rebuilt in the backward pass.
    Conv {
        x: T,
        bias: bool,
    },
    Act {
        x: T,
        y: T,
    },
    Reshape,
    /// Pooling: `out [n, c, 1, L]`, each window's value; for max pooling
    /// `route [n, c, K, L]`, one-hot on the window's first maximum, where
    /// the whole gradient goes (PyTorch's rule: tied maxima do not share
    /// it, which KFAC's output-gradient factor of the layer below sees).
    Pool {
        out: T,
        route: Option<T>,
    },
    /// Norm layers. BatchNorm: `xhat [n, L, C]` (what the capture needs),
    /// `s [C, 1]` (evaluation) or, with `batch` (training, batch
    /// statistics), `s [1, C, 1]` and `batch = x̂ [n, C, L]`. LayerNorm:
    /// `xhat [n, L, d]`, `s [n, L, 1]`. GroupNorm: `xhat [n, L, C]`,
    /// `s [n, G, 1]`, `batch = x̂ [n, G, D]`.
    Norm {
        xhat: T,
        s: T,
        batch: Option<T>,
    },
    /// Add / Concat: nothing to keep.
    Join,
    /// Dropout in training: the mask, already scaled by 1/(1−p).
    Mask(T),
    /// Adaptive average pooling: linear, nothing to keep.
    Linear,
    /// Embedding: the token ids `[n·L]` and `i·num + token` per (example i,
    /// position), both index tensors.
    Embed {
        tok: T,
        rows: T,
    },
}

pub struct Forward<T> {
    pub output: T,
    pub caches: Vec<Cache<T>>,
    pub n: usize,
    /// Training phase: each BatchNorm layer's batch statistics.
    pub batch_stats: Vec<BatchStats>,
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

impl<O: Ops> Net<O> {
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
    ///
    /// A centred scaled model subtracts the initial weights' function
    /// under the *current* BatchNorm running statistics: `f(w)` and
    /// `f(w₀)` are then normalised alike in evaluation as they are in
    /// training (batch statistics), instead of `α` times a mismatch of
    /// running statistics dominating every measurement.
    pub fn with_params(&self, o: &O, params: HostParams) -> OpsResult<Self> {
        let mode = match &self.mode {
            Reparam::Plain => Reparam::Plain,
            Reparam::Scaled { alpha, base } => Reparam::Scaled {
                alpha: *alpha,
                base: match base {
                    Some(b) if self.has_batch_norm() => {
                        let mut p = b.params.clone();
                        for t in p.tensors.iter_mut().filter(|t| !t.trainable) {
                            if let Some(now) = params.get(&t.key) {
                                t.data.clone_from(&now.data);
                            }
                        }
                        Some(Arc::new(Net::new(o, &b.spec, p)?))
                    }
                    other => other.clone(),
                },
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
    /// Whether the model has layers whose training forward pass differs
    /// from evaluation (BatchNorm).
    pub fn has_batch_norm(&self) -> bool {
        self.spec.layers.iter().any(|l| {
            matches!(
                l.layer,
                Layer::BatchNorm1d { .. } | Layer::BatchNorm2d { .. }
            )
        })
    }

    /// Forward pass on `x [n, ...input]` in evaluation mode; returns the
    /// model's outputs `[n, C]` (see [`Reparam`]).
    pub fn forward(&self, o: &O, x: &O::T, keep: bool) -> OpsResult<Forward<O::T>> {
        self.forward_in(o, x, keep, Phase::Eval)
    }

    /// Forward pass in `phase`. A linearised model is always the
    /// linearisation of the network in evaluation mode.
    pub fn forward_in(
        &self,
        o: &O,
        x: &O::T,
        keep: bool,
        phase: Phase,
    ) -> OpsResult<Forward<O::T>> {
        match &self.mode {
            Reparam::Plain => self.forward_net(o, x, keep, phase),
            Reparam::Scaled { alpha, base } => {
                let mut f = self.forward_net(o, x, keep, phase)?;
                if let Some(b) = base {
                    f.output = o.sub(&f.output, &b.forward_net(o, x, false, phase)?.output)?;
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
        let mut caps = Vec::with_capacity(self.slots.len());
        self.backward_with(o, Caches::Borrowed(&fwd.caches), fwd.n, seed, &mut |c| {
            caps.push(c);
            Ok(())
        })?;
        caps.sort_by_key(|c| c.slot);
        Ok(caps)
    }

    /// [`Self::backward`] that hands each capture to `sink` as soon as it
    /// is made (from the output back, so in decreasing slot order) and
    /// drops each layer's forward cache once the pass has gone through it.
    /// A caller that reduces captures (KFAC factors, diagonals) then never
    /// holds more than one layer's per-example data.
    pub fn backward_each(
        &self,
        o: &O,
        fwd: Forward<O::T>,
        seed: &O::T,
        sink: &mut dyn FnMut(Capture<O::T>) -> OpsResult<()>,
    ) -> OpsResult<()> {
        let n = fwd.n;
        self.backward_with(o, Caches::Owned(fwd.caches), n, seed, sink)
    }

    /// The gradient of `⟨seed, outputs⟩` summed over the examples
    /// (`seed [1, n, C]`, a loss gradient), layer by layer from the output
    /// back: `sink(slot, g)` with `g` in the slot's natural layout
    /// `[sg, sa]`. A convolution whose backend has a native
    /// weight-gradient kernel ([`Ops::conv2d_weight_grad`]) never unfolds
    /// its patches here, and a training-mode BatchNorm sums its gradient in
    /// its own layout; every other layer is reduced from its capture.
    pub fn gradient_each(
        &self,
        o: &O,
        fwd: Forward<O::T>,
        seed: &O::T,
        sink: &mut dyn FnMut(usize, O::T) -> OpsResult<()>,
    ) -> OpsResult<()> {
        let n = fwd.n;
        let (runner, seed) = match &self.mode {
            Reparam::Scaled { alpha, .. } if *alpha != 1.0 => (self, o.scale(seed, *alpha)?),
            Reparam::Linearized { base, .. } => (&**base, seed.clone()),
            _ => (self, seed.clone()),
        };
        let ones = o.affine(&o.zeros(&[1, n])?, 0.0, 1.0)?;
        // Both paths hand their layer to the one sink, never at once.
        let sink = std::cell::RefCell::new(sink);
        runner.backward_graph(
            o,
            Caches::Owned(fwd.caches),
            n,
            &seed,
            &mut |cap| {
                let t = super::stats::jtu(o, &runner.slots[cap.slot], &cap, &ones)?;
                (sink.borrow_mut())(cap.slot, t)
            },
            &mut |_, _| Ok(()),
            Some(&mut |slot, g| (sink.borrow_mut())(slot, g)),
        )
    }

    fn backward_with(
        &self,
        o: &O,
        caches: Caches<'_, O::T>,
        n: usize,
        seed: &O::T,
        sink: &mut dyn FnMut(Capture<O::T>) -> OpsResult<()>,
    ) -> OpsResult<()> {
        match &self.mode {
            Reparam::Plain => self.backward_net(o, caches, n, seed, sink),
            Reparam::Scaled { alpha, .. } if *alpha == 1.0 => {
                self.backward_net(o, caches, n, seed, sink)
            }
            Reparam::Scaled { alpha, .. } => {
                self.backward_net(o, caches, n, &o.scale(seed, *alpha)?, sink)
            }
            Reparam::Linearized { base, .. } => base.backward_net(o, caches, n, seed, sink),
        }
    }

    /// The network's own forward pass, node by node; a node's value is
    /// dropped once its last reader has run.
    fn forward_net(&self, o: &O, x: &O::T, keep: bool, phase: Phase) -> OpsResult<Forward<O::T>> {
        let n = o.shape(x)[0];
        let last = self.layers.len();
        let mut vals: Vec<Option<O::T>> = vec![None; last + 1];
        vals[0] = Some(x.clone());
        let mut caches = Vec::with_capacity(if keep { last } else { 0 });
        let mut batch_stats = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let ins = self.inputs_of(&vals, layer)?;
            let (out, cache, stats) = self.layer_forward(o, layer, &ins, n, phase)?;
            if let Some((mean, var, count)) = stats {
                batch_stats.push(BatchStats {
                    layer: i,
                    mean,
                    var,
                    count,
                });
            }
            if keep {
                caches.push(cache);
            }
            vals[i + 1] = Some(out);
            self.release(&mut vals, layer, i);
        }
        let output = o.reshape(vals[last].as_ref().unwrap(), &[n, self.outputs()])?;
        Ok(Forward {
            output,
            caches,
            n,
            batch_stats,
        })
    }

    fn inputs_of<'v>(
        &self,
        vals: &'v [Option<O::T>],
        layer: &NetLayer<O::T>,
    ) -> OpsResult<Vec<&'v O::T>> {
        layer
            .src
            .iter()
            .map(|&s| {
                vals[s]
                    .as_ref()
                    .ok_or_else(|| OpsError(format!("graph node {s} read after release")))
            })
            .collect()
    }

    /// Drops the values whose last reader was layer `i`.
    fn release(&self, vals: &mut [Option<O::T>], layer: &NetLayer<O::T>, i: usize) {
        for &s in &layer.src {
            if self.last_use[s] == i && s != self.layers.len() {
                vals[s] = None;
            }
        }
    }

    /// Forward-mode derivative: the outputs at these weights and their
    /// directional derivative `J(x; w) v`, where `t` holds the direction
    /// `v` as a network's parameters (its buffers are ignored). One pass,
    /// each layer pushing the tangent of its inputs forward next to the
    /// primal value; `J` is never formed.
    pub fn jvp(&self, o: &O, x: &O::T, t: &Net<O>, keep: bool) -> OpsResult<(Forward<O::T>, O::T)> {
        let n = o.shape(x)[0];
        let last = self.layers.len();
        let mut vals: Vec<Option<O::T>> = vec![None; last + 1];
        // The input does not depend on the weights: no tangent until the
        // first parameterised layer.
        let mut tans: Vec<Option<O::T>> = vec![None; last + 1];
        vals[0] = Some(x.clone());
        let mut caches = Vec::with_capacity(if keep { last } else { 0 });
        for (i, (layer, tl)) in self.layers.iter().zip(&t.layers).enumerate() {
            let ins = self.inputs_of(&vals, layer)?;
            let (out, cache, _) = self.layer_forward(o, layer, &ins, n, Phase::Eval)?;
            let dins: Vec<Option<&O::T>> = layer.src.iter().map(|&s| tans[s].as_ref()).collect();
            tans[i + 1] = self.layer_tangent(o, layer, tl, &ins, &dins, &cache, n)?;
            if keep {
                caches.push(cache);
            }
            vals[i + 1] = Some(out);
            for &s in &layer.src {
                if self.last_use[s] == i && s != last {
                    vals[s] = None;
                    tans[s] = None;
                }
            }
        }
        let c = self.outputs();
        let output = o.reshape(vals[last].as_ref().unwrap(), &[n, c])?;
        let tangent = match &tans[last] {
            Some(d) => o.reshape(d, &[n, c])?,
            None => o.zeros(&[n, c])?,
        };
        Ok((
            Forward {
                output,
                caches,
                n,
                batch_stats: vec![],
            },
            tangent,
        ))
    }

    /// Backpropagates `seed [m, n, C]` (m output functions per example) and
    /// gives `sink`, for each parameterised layer, its input and output
    /// gradient, from the last layer back. A node's gradient is the sum
    /// over its readers; nodes with no parameter upstream get none.
    fn backward_net(
        &self,
        o: &O,
        caches: Caches<'_, O::T>,
        n: usize,
        seed: &O::T,
        sink: &mut dyn FnMut(Capture<O::T>) -> OpsResult<()>,
    ) -> OpsResult<()> {
        self.backward_graph(o, caches, n, seed, sink, &mut |_, _| Ok(()), None)
    }

    /// [`Self::backward_net`] that also hands `each(i, g)` the gradient
    /// w.r.t. layer `i`'s output, `[m, n, output...]`, before its rule runs.
    /// With `summed` (one output function only), a layer with a path of
    /// its own (`summed_gradient`) hands it its summed gradient instead of
    /// a capture (see [`Self::gradient_each`]).
    #[allow(clippy::too_many_arguments)]
    fn backward_graph(
        &self,
        o: &O,
        mut caches: Caches<'_, O::T>,
        n: usize,
        seed: &O::T,
        sink: &mut dyn FnMut(Capture<O::T>) -> OpsResult<()>,
        each: &mut dyn FnMut(usize, &O::T) -> OpsResult<()>,
        mut summed: Option<&mut dyn FnMut(usize, O::T) -> OpsResult<()>>,
    ) -> OpsResult<()> {
        let m = o.shape(seed)[0];
        let last = self.layers.len();
        let mut grads: Vec<Option<O::T>> = vec![None; last + 1];
        grads[last] = Some(seed.clone());
        for i in (0..last).rev() {
            let Some(g) = grads[i + 1].take() else {
                continue;
            };
            if !self.needs_grad[i + 1] {
                continue;
            }
            let layer = &self.layers[i];
            let mut shape = vec![m, n];
            shape.extend(&layer.spec.output);
            let g = o.reshape(&g, &shape)?;
            each(i, &g)?;
            let need: Vec<bool> = layer.src.iter().map(|&s| self.needs_grad[s]).collect();
            let native = match summed.as_mut() {
                Some(to) if m == 1 => {
                    match self.summed_gradient(o, i, caches.get(i)?, &g, n, &need)? {
                        Some((slot, grad, ins)) => {
                            to(slot, grad)?;
                            Some(ins)
                        }
                        None => None,
                    }
                }
                _ => None,
            };
            let ins = match native {
                Some(ins) => ins,
                None => {
                    let (cap, ins) = self.layer_backward(o, i, caches.get(i)?, &g, m, n, &need)?;
                    if let Some(cap) = cap {
                        sink(cap)?;
                    }
                    ins
                }
            };
            caches.release(i);
            for (&s, gin) in layer.src.iter().zip(ins) {
                if let Some(gin) = gin {
                    grads[s] = Some(match grads[s].take() {
                        Some(acc) => o.add(&acc, &gin)?,
                        None => gin,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The forward caches a backward pass reads: borrowed (the caller keeps
/// them) or owned (each dropped once its layer is done).
enum Caches<'a, T> {
    Borrowed(&'a [Cache<T>]),
    Owned(Vec<Cache<T>>),
}

impl<T> Caches<'_, T> {
    fn get(&self, i: usize) -> OpsResult<&Cache<T>> {
        let c = match self {
            Caches::Borrowed(c) => c.get(i),
            Caches::Owned(c) => c.get(i),
        };
        c.ok_or_else(|| OpsError(format!("no forward cache for layer {i}")))
    }

    fn release(&mut self, i: usize) {
        if let Caches::Owned(c) = self {
            if let Some(slot) = c.get_mut(i) {
                *slot = Cache::Join;
            }
        }
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

/// An activation's output at `x`. The piecewise ones are composed from
/// `relu` and `Step` (`min(x, 0) = x − relu(x)`), so that every backend,
/// plugins included, computes them from the primitives it already has.
fn act_forward<O: Ops>(o: &O, layer: &Layer, x: &O::T) -> OpsResult<O::T> {
    match layer {
        Layer::Relu => o.unary(Unary::Relu, x),
        Layer::Tanh => o.unary(Unary::Tanh, x),
        Layer::Sigmoid => o.unary(Unary::Sigmoid, x),
        Layer::Gelu => o.unary(Unary::GeluErf, x),
        // (1 − s)·relu(x) + s·x.
        Layer::LeakyRelu { slope } => o.add(
            &o.scale(&o.unary(Unary::Relu, x)?, 1.0 - slope)?,
            &o.scale(x, *slope)?,
        ),
        // relu(x) + α·(exp(min(x, 0)) − 1).
        Layer::Elu { alpha } => {
            let r = o.unary(Unary::Relu, x)?;
            let e = o.unary(Unary::Exp, &o.sub(x, &r)?)?;
            o.add(&r, &o.affine(&e, *alpha, -alpha)?)
        }
        Layer::Silu => o.mul(x, &o.unary(Unary::Sigmoid, x)?),
        Layer::Hardtanh { min, max } => clamp(o, x, *min, *max),
        Layer::Hardsigmoid => o.affine(&clamp(o, x, -3.0, 3.0)?, 1.0 / 6.0, 0.5),
        Layer::Hardswish => o.mul(x, &act_forward(o, &Layer::Hardsigmoid, x)?),
        other => Err(OpsError(format!(
            "{} is not an activation",
            other.type_name()
        ))),
    }
}

/// The hard sigmoid's slope in PyTorch's backward pass: `1/6` as a float32.
const HARD_SIGMOID_SLOPE: f64 = (1.0f32 / 6.0) as f64;

/// `x` clamped to `[lo, hi]`: `lo + relu(x − lo) − relu(x − hi)`.
fn clamp<O: Ops>(o: &O, x: &O::T, lo: f64, hi: f64) -> OpsResult<O::T> {
    let above = o.unary(Unary::Relu, &o.affine(x, 1.0, -lo)?)?;
    let over = o.unary(Unary::Relu, &o.affine(x, 1.0, -hi)?)?;
    o.affine(&o.sub(&above, &over)?, 1.0, lo)
}

/// `[lo < x < hi]`: where a clamp passes its gradient (PyTorch's
/// `hardtanh_backward` is 0 at both bounds).
fn inside<O: Ops>(o: &O, x: &O::T, lo: f64, hi: f64) -> OpsResult<O::T> {
    o.mul(
        &o.unary(Unary::Step, &o.affine(x, 1.0, -lo)?)?,
        &o.unary(Unary::Step, &o.affine(x, -1.0, hi)?)?,
    )
}

/// The derivative of an activation at its input `x` (output `y`). At a
/// kink it is PyTorch's: ReLU and LeakyReLU take the left slope at 0, ELU
/// its left derivative `α` (its right one is 1).
fn act_grad<O: Ops>(o: &O, layer: &Layer, x: &O::T, y: &O::T) -> OpsResult<O::T> {
    match layer {
        Layer::Relu => o.unary(Unary::Step, x),
        Layer::Tanh => o.affine(&o.unary(Unary::Sqr, y)?, -1.0, 1.0),
        Layer::Sigmoid => o.mul(y, &o.affine(y, -1.0, 1.0)?),
        // s + (1 − s)·[x > 0].
        Layer::LeakyRelu { slope } => o.affine(&o.unary(Unary::Step, x)?, 1.0 - slope, *slope),
        // [x > 0] + [x ≤ 0]·(y + α): for x ≤ 0, y + α = α·eˣ.
        Layer::Elu { alpha } => {
            let step = o.unary(Unary::Step, x)?;
            let left = o.mul(&o.affine(&step, -1.0, 1.0)?, &o.affine(y, 1.0, *alpha)?)?;
            o.add(&step, &left)
        }
        Layer::Hardtanh { min, max } => inside(o, x, *min, *max),
        // PyTorch's slope is the float32 1/6 even in float64 (3e-8 off):
        // taken as it is, so that gradients match NNGeometry's to 1e-8.
        Layer::Hardsigmoid => o.scale(&inside(o, x, -3.0, 3.0)?, HARD_SIGMOID_SLOPE),
        // h(x) + x·h'(x), h the hard sigmoid: (2x + 3)/6 inside (−3, 3), 1
        // above, 0 below (PyTorch's values at ±3 too).
        Layer::Hardswish => {
            let h = act_forward(o, &Layer::Hardsigmoid, x)?;
            let inner = o.scale(&o.mul(x, &inside(o, x, -3.0, 3.0)?)?, 1.0 / 6.0)?;
            o.add(&h, &inner)
        }
        // σ + x·σ(1 − σ) = σ·(1 + x·(1 − σ)).
        Layer::Silu => {
            let s = o.unary(Unary::Sigmoid, x)?;
            let t = o.affine(&o.mul(x, &o.affine(&s, -1.0, 1.0)?)?, 1.0, 1.0)?;
            o.mul(&s, &t)
        }
        _ => gelu_grad(o, x),
    }
}

#[cfg(test)]
mod tests;
