//! Second order: Hessian–vector products of a loss by forward-over-reverse
//! differentiation (Pearlmutter's R-operator).
//!
//! One evaluation-mode forward pass and one backward pass of the loss
//! gradient are kept whole ([`Curvature`]); each direction `v` then costs a
//! tangent forward pass (`ẋ` at every node, the linearised model's pass)
//! and a tangent backward pass: the derivative along `v` of every node's
//! gradient and, at each parameterised layer, of its parameter gradient.
//!
//! The derivative of a layer's backward rule `dx = B(g; x, w)` splits in
//! three: `B(ġ; x, w)` (the same rule on the tangent gradient: what carries
//! the Gauss–Newton part), `B(g; x, v)` (the rule with the direction's
//! weights: the rule is linear in `w`) and `∂B/∂x · ẋ` (non-zero only for
//! curved activations). The parameter gradient `Σ g ⊗ a` likewise gives
//! `Σ ġ ⊗ a + Σ g ⊗ ȧ`. Layers whose backward rule depends on the input in
//! other ways (LayerNorm, GroupNorm, BatchNorm on batch statistics) have no
//! rule here and are refused, by the checker first.

use super::{Cache, Capture, Net, Reparam};
use crate::geometry::ops::{Ops, OpsError, OpsResult, Unary};
use crate::geometry::stats;
use crate::plan::Layer;

/// Which part of the Hessian `H = Jᵀ H_ℓ J + Σ_c (∂ℓ/∂f_c) ∇²f_c` a
/// product computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    /// The Gauss–Newton term `Jᵀ H_ℓ J`.
    pub gauss_newton: bool,
    /// The term of the network's own curvature.
    pub residual: bool,
}

/// A batch's forward and loss-gradient backward pass, kept whole.
pub struct Curvature<T> {
    n: usize,
    /// Every node's value (0 = the input).
    vals: Vec<T>,
    caches: Vec<Cache<T>>,
    /// Per layer: the gradient w.r.t. its output, `[1, n, output...]`.
    gout: Vec<Option<T>>,
    /// Per layer: its capture of the loss gradient, if parameterised.
    caps: Vec<Option<Capture<T>>>,
    /// The model's outputs `[n, C]`.
    pub output: T,
}

/// Whether a layer has a second-order rule here (see the module doc).
pub fn has_second_order_rule(layer: &Layer) -> bool {
    !matches!(layer, Layer::LayerNorm { .. } | Layer::GroupNorm { .. })
}

/// `d²σ/dx²` of a curved activation at `x` (output `y`); `None` where it
/// vanishes almost everywhere (ReLU).
fn act_second<O: Ops>(o: &O, layer: &Layer, x: &O::T, y: &O::T) -> OpsResult<Option<O::T>> {
    Ok(match layer {
        Layer::Relu | Layer::LeakyRelu { .. } | Layer::Hardtanh { .. } | Layer::Hardsigmoid => None,
        // (2x + 3)/6 inside (−3, 3): 1/3 there, 0 elsewhere.
        Layer::Hardswish => Some(o.scale(
            &o.mul(
                &o.unary(Unary::Step, &o.affine(x, 1.0, 3.0)?)?,
                &o.unary(Unary::Step, &o.affine(x, -1.0, 3.0)?)?,
            )?,
            1.0 / 3.0,
        )?),
        // [x ≤ 0]·α·eˣ = [x ≤ 0]·(y + α).
        Layer::Elu { alpha } => {
            let left = o.affine(&o.unary(Unary::Step, x)?, -1.0, 1.0)?;
            Some(o.mul(&left, &o.affine(y, 1.0, *alpha)?)?)
        }
        // d/dx [σ + xσ(1 − σ)] = σ(1 − σ)·(2 + x·(1 − 2σ)).
        Layer::Silu => {
            let s = o.unary(Unary::Sigmoid, x)?;
            let d = o.mul(&s, &o.affine(&s, -1.0, 1.0)?)?;
            let t = o.affine(&o.mul(x, &o.affine(&s, -2.0, 1.0)?)?, 1.0, 2.0)?;
            Some(o.mul(&d, &t)?)
        }
        // σ' = 1 − y², σ'' = −2y(1 − y²).
        Layer::Tanh => {
            let d1 = o.affine(&o.unary(Unary::Sqr, y)?, -1.0, 1.0)?;
            Some(o.scale(&o.mul(y, &d1)?, -2.0)?)
        }
        // σ' = y(1 − y), σ'' = σ'(1 − 2y).
        Layer::Sigmoid => {
            let d1 = o.mul(y, &o.affine(y, -1.0, 1.0)?)?;
            Some(o.mul(&d1, &o.affine(y, -2.0, 1.0)?)?)
        }
        // d/dx [Φ(x) + x φ(x)] = φ(x) (2 − x²).
        Layer::Gelu => {
            let x2 = o.unary(Unary::Sqr, x)?;
            let pdf = o.scale(
                &o.unary(Unary::Exp, &o.scale(&x2, -0.5)?)?,
                1.0 / (2.0 * std::f64::consts::PI).sqrt(),
            )?;
            Some(o.mul(&pdf, &o.affine(&x2, -1.0, 2.0)?)?)
        }
        other => {
            return Err(OpsError(format!(
                "no second derivative for {}",
                other.type_name()
            )))
        }
    })
}

fn add_opt<O: Ops>(o: &O, acc: &mut Option<O::T>, t: O::T) -> OpsResult<()> {
    *acc = Some(match acc.take() {
        Some(a) => o.add(&a, &t)?,
        None => t,
    });
    Ok(())
}

impl<O: Ops> Net<O> {
    fn second_order_ready(&self) -> OpsResult<()> {
        match &self.mode {
            Reparam::Plain => {}
            Reparam::Scaled { alpha, base: None } if *alpha == 1.0 => {}
            _ => {
                return Err(OpsError(
                    "the Hessian of an α-scaled or linearised model is not supported: take it of the network itself".into(),
                ))
            }
        }
        if let Some(l) = self
            .layers
            .iter()
            .find(|l| !has_second_order_rule(&l.spec.layer))
        {
            return Err(OpsError(format!(
                "layer `{}` ({}) has no second-order rule",
                l.spec.name,
                l.spec.layer.type_name()
            )));
        }
        Ok(())
    }

    /// The forward pass of `x` in evaluation mode and the backward pass of
    /// `seed(outputs) [1, n, C]` (the loss gradient), everything kept.
    pub fn curvature(
        &self,
        o: &O,
        x: &O::T,
        seed: impl FnOnce(&O::T) -> OpsResult<O::T>,
    ) -> OpsResult<Curvature<O::T>> {
        self.second_order_ready()?;
        let n = o.shape(x)[0];
        let last = self.layers.len();
        let mut vals = Vec::with_capacity(last + 1);
        vals.push(x.clone());
        let mut caches = Vec::with_capacity(last);
        for layer in &self.layers {
            let ins: Vec<&O::T> = layer.src.iter().map(|&s| &vals[s]).collect();
            let (out, cache, _) = self.layer_forward(o, layer, &ins, n, super::Phase::Eval)?;
            caches.push(cache);
            vals.push(out);
        }
        let output = o.reshape(&vals[last], &[n, self.outputs()])?;
        let seed = seed(&output)?;
        let mut gout = vec![None; last];
        let mut caps = vec![None; last];
        let slots = &self.slots;
        self.backward_graph(
            o,
            super::Caches::Borrowed(&caches),
            n,
            &seed,
            &mut |cap| {
                let i = slots[cap.slot].index;
                caps[i] = Some(cap);
                Ok(())
            },
            &mut |i, g| {
                gout[i] = Some(g.clone());
                Ok(())
            },
            None,
        )?;
        Ok(Curvature {
            n,
            vals,
            caches,
            gout,
            caps,
            output,
        })
    }

    /// The derivative along the direction `t` (a network holding `v` as
    /// its parameters) of the loss gradient kept in `cv`: `H v` in parts.
    /// `out_seed(ḟ)` maps the outputs' tangent `ḟ [n, C]` to the tangent of
    /// the output gradient, `H_ℓ ḟ [1, n, C]`. `sink(slot, t)` receives each
    /// parameterised layer's share in its natural layout `[sg, sa]`.
    pub fn gradient_tangent(
        &self,
        o: &O,
        cv: &Curvature<O::T>,
        t: &Net<O>,
        parts: Parts,
        out_seed: impl FnOnce(&O::T) -> OpsResult<O::T>,
        sink: &mut dyn FnMut(usize, O::T) -> OpsResult<()>,
    ) -> OpsResult<()> {
        let n = cv.n;
        let last = self.layers.len();
        // Tangent forward pass.
        let mut tans: Vec<Option<O::T>> = vec![None; last + 1];
        for (i, (layer, tl)) in self.layers.iter().zip(&t.layers).enumerate() {
            let ins: Vec<&O::T> = layer.src.iter().map(|&s| &cv.vals[s]).collect();
            let dins: Vec<Option<&O::T>> = layer.src.iter().map(|&s| tans[s].as_ref()).collect();
            tans[i + 1] = self.layer_tangent(o, layer, tl, &ins, &dins, &cv.caches[i], n)?;
        }
        let mut gdot: Vec<Option<O::T>> = vec![None; last + 1];
        if parts.gauss_newton {
            let c = self.outputs();
            let fdot = match &tans[last] {
                Some(d) => o.reshape(d, &[n, c])?,
                None => o.zeros(&[n, c])?,
            };
            gdot[last] = Some(out_seed(&fdot)?);
        }
        let ones = o.affine(&o.zeros(&[1, n])?, 0.0, 1.0)?;
        for i in (0..last).rev() {
            if !self.needs_grad[i + 1] {
                continue;
            }
            let layer = &self.layers[i];
            let cache = &cv.caches[i];
            let need: Vec<bool> = layer.src.iter().map(|&s| self.needs_grad[s]).collect();
            let mut shape = vec![1, n];
            shape.extend(&layer.spec.output);
            let mut ins: Vec<Option<O::T>> = vec![None; layer.src.len()];
            let mut share: Option<O::T> = None;
            // B(ġ; x, w) and Σ ġ ⊗ a.
            if let Some(gd) = gdot[i + 1].take() {
                let gd = o.reshape(&gd, &shape)?;
                let (cap, dins) = self.layer_backward(o, i, cache, &gd, 1, n, &need)?;
                if let Some(cap) = cap {
                    share = Some(stats::jtu(o, &self.slots[cap.slot], &cap, &ones)?);
                }
                ins = dins;
            }
            if parts.residual {
                if let Some(g) = &cv.gout[i] {
                    let xdot = tans[layer.src[0]].as_ref();
                    let extra = self.backward_curvature(o, i, cv, t, g, xdot, &need)?;
                    if let Some(d) = extra.dx {
                        add_opt(o, &mut ins[0], d)?;
                    }
                    if let Some(s) = extra.param {
                        add_opt(o, &mut share, s)?;
                    }
                }
            }
            if let (Some(slot), Some(s)) = (self.slot_of[i], share) {
                sink(slot, s)?;
            }
            for (&s, gin) in layer.src.iter().zip(ins) {
                if let Some(gin) = gin {
                    add_opt(o, &mut gdot[s], gin)?;
                }
            }
        }
        Ok(())
    }

    /// The terms of layer `i`'s backward rule that its weights and input
    /// curvature add along the direction: `B(g; x, v) + ∂B/∂x · ẋ` for the
    /// input and `Σ g ⊗ ȧ` for its parameters.
    #[allow(clippy::too_many_arguments)]
    fn backward_curvature(
        &self,
        o: &O,
        i: usize,
        cv: &Curvature<O::T>,
        t: &Net<O>,
        g: &O::T,
        xdot: Option<&O::T>,
        need: &[bool],
    ) -> OpsResult<Extra<O::T>> {
        let layer = &self.layers[i];
        let n = cv.n;
        let cache = &cv.caches[i];
        let need0 = need.first().copied().unwrap_or(false);
        let mut out = Extra {
            dx: None,
            param: None,
        };
        match (&layer.spec.layer, cache) {
            (l, Cache::Act { x, y }) => {
                if let (true, Some(xd)) = (need0, xdot) {
                    if let Some(d2) = act_second(o, l, x, y)? {
                        let mut in_shape = vec![1, n];
                        in_shape.extend(&layer.spec.input);
                        let xd = o.reshape(xd, &in_shape)?;
                        out.dx = Some(o.mul(&o.mul(g, &d2)?, &xd)?);
                    }
                }
            }
            (Layer::Embedding { .. }, _) => {}
            // Running statistics without scale and shift: a fixed affine
            // map of the input, with no weights to couple to.
            (
                Layer::BatchNorm1d { affine: false, .. } | Layer::BatchNorm2d { affine: false, .. },
                _,
            ) => {}
            (
                Layer::Linear { .. }
                | Layer::Conv2d { .. }
                | Layer::Conv1d { .. }
                | Layer::ConvTranspose2d { .. }
                | Layer::BatchNorm1d { .. }
                | Layer::BatchNorm2d { .. },
                _,
            ) => {
                if need0 {
                    // The backward rule is linear in the weights: run it
                    // with the direction's.
                    out.dx = t.layer_backward(o, i, cache, g, 1, n, need)?.1.remove(0);
                }
                if let Some(xd) = xdot {
                    let cap = cv.caps[i].as_ref().ok_or_else(|| {
                        OpsError(format!("no capture kept for layer `{}`", layer.spec.name))
                    })?;
                    let adot = self.capture_input_tangent(o, i, cache, xd, n)?;
                    let slot = &self.slots[cap.slot];
                    let c = Capture {
                        slot: cap.slot,
                        a: adot,
                        g: cap.g.clone(),
                    };
                    let ones = o.affine(&o.zeros(&[1, n])?, 0.0, 1.0)?;
                    let s = stats::jtu(o, slot, &c, &ones)?;
                    // The bias (or a norm's shift) reads no input: its
                    // gradient Σ g has no such term.
                    let (sg, sa, bias) = stats::layout(slot);
                    out.param = Some(if bias {
                        o.cat(&[o.narrow(&s, 1, 0, sa - 1)?, o.zeros(&[sg, 1])?], 1)?
                    } else {
                        s
                    });
                }
            }
            (Layer::LayerNorm { .. } | Layer::GroupNorm { .. }, _) => {
                return Err(OpsError(format!(
                    "layer `{}` ({}) has no second-order rule",
                    layer.spec.name,
                    layer.spec.layer.type_name()
                )))
            }
            // Linear in their input with fixed coefficients (pools, max
            // pooling's selection, reshapes, joins, dropout's mask).
            _ => {}
        }
        Ok(out)
    }

    /// The tangent of layer `i`'s capture input `a` for the input tangent
    /// `ẋ`, in the capture's layout (a bias column, if any, is left as the
    /// primal's and its share discarded by the caller).
    fn capture_input_tangent(
        &self,
        o: &O,
        i: usize,
        cache: &Cache<O::T>,
        xd: &O::T,
        n: usize,
    ) -> OpsResult<O::T> {
        let layer = &self.layers[i];
        match (&layer.spec.layer, &layer.unfold) {
            (Layer::Linear { bias, .. }, _) => {
                let x2 = o.reshape(xd, &[n, layer.spec.input[0]])?;
                let a = if *bias {
                    o.cat(&[x2, o.zeros(&[n, 1])?], 1)?
                } else {
                    x2
                };
                let sa = o.shape(&a)[1];
                o.reshape(&a, &[n, 1, sa])
            }
            (Layer::BatchNorm1d { .. } | Layer::BatchNorm2d { .. }, _) => {
                // x̂ = (x − μ) s: ẋ̂ = ẋ s, in the capture's `[n, L, C]`.
                let Cache::Norm { s, batch: None, .. } = cache else {
                    return Err(OpsError(format!(
                        "BatchNorm `{}` on batch statistics has no second-order rule",
                        layer.spec.name
                    )));
                };
                let c = layer.spec.input[0];
                let l: usize = layer.spec.input[1..].iter().product();
                let xs = o.mul(&o.reshape(xd, &[n, c, l])?, s)?;
                o.transpose(&xs, 1, 2)
            }
            (_, Some(u)) => {
                let bias = matches!(
                    layer.spec.layer,
                    Layer::Conv2d { bias: true, .. }
                        | Layer::Conv1d { bias: true, .. }
                        | Layer::ConvTranspose2d { bias: true, .. }
                );
                self.conv_capture_input(o, u, xd, n, bias)
            }
            (l, _) => Err(OpsError(format!(
                "no capture tangent for {}",
                l.type_name()
            ))),
        }
    }
}

/// What [`Net::backward_curvature`] adds to a layer's tangent backward pass.
struct Extra<T> {
    dx: Option<T>,
    param: Option<T>,
}
