//! The optimiser's update where the backend computes.
//!
//! The host update of [`super::train`] downloads the gradient, steps an f64
//! copy of the weights and uploads them into a new network every step:
//! about a gigabyte of host traffic for a ResNet18 step, negligible next to
//! a CPU step but several times a GPU's. Here the gradient stays on the
//! device: each layer's tensors (and the optimiser's state, tensor by
//! tensor as PyTorch keeps it) are replaced by their stepped values, slot by
//! slot, in the run's dtype, and the host sees only what it did before the
//! update (the outputs the loss is computed from, BatchNorm's per-channel
//! batch statistics) plus one vector of sums that says whether anything
//! diverged. SGD and Adam step from the gradient; natural gradient from its
//! preconditioned direction, which a prepared inverse makes on the device
//! (after a refresh or refit, the one solve with a new Fisher, and the
//! layers a diagonal or low-rank Fisher covers, take the gradient to the
//! host). With float64 storage the arithmetic is the host's up to rounding
//! (Adam's bias corrections multiply where the host divides); in float32
//! the weights are float32, as in PyTorch.

use crate::geometry::net::{BatchStats, Net, Reparam};
use crate::geometry::ops::{Binary, Ops, OpsError, OpsResult, Reduce, Unary};
use crate::plan::{ModelSpec, Optimizer};
use std::sync::Arc;

/// Where a training run's optimiser updates the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateAt {
    /// An f64 copy of the weights on the host, re-uploaded every step.
    Host,
    /// The backend's tensors, stepped on its device.
    Device,
}

impl UpdateAt {
    /// The backend's choice ([`Ops::trains_on_device`]).
    pub fn of<O: Ops>(o: &O) -> Self {
        if o.trains_on_device() {
            UpdateAt::Device
        } else {
            UpdateAt::Host
        }
    }
}

/// The optimiser's state on the device: per trainable tensor (slot by
/// slot, weight then bias), SGD's momentum buffer or Adam's moments.
pub(crate) struct DeviceUpdate<O: Ops> {
    first: Vec<O::T>,
    second: Vec<O::T>,
    /// Adam's step count.
    t: i32,
}

impl<O: Ops> DeviceUpdate<O> {
    pub fn new() -> Self {
        DeviceUpdate {
            first: Vec::new(),
            second: Vec::new(),
            t: 0,
        }
    }

    /// One optimiser step on `net` from `grads` (per slot, natural
    /// layout): the mean loss's gradient for SGD and Adam, scaled by
    /// `scale` (the loss scale of an α-scaled model); for natural gradient
    /// its preconditioned direction, with the gradient itself in `raw`
    /// (only checked). At learning rate `lr`. Each slot's tensors are
    /// replaced as soon as they are stepped, so the update holds one
    /// slot's temporaries at a time. A linearised model's offset from its
    /// initial weights takes the step and its weights follow from it
    /// (`w = w₀ + δ`, so that a step too small for `w`'s precision still
    /// counts in the function trained). Fails, with the host update's
    /// words, when the gradient or the new weights are not finite.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        o: &O,
        opt: &Optimizer,
        net: &mut Net<O>,
        grads: Vec<(usize, O::T)>,
        raw: &[O::T],
        scale: f64,
        lr: f64,
        step: u64,
        loss: f64,
    ) -> Result<(), String> {
        let e = |e: OpsError| e.to_string();
        if let Optimizer::Adam { .. } = opt {
            self.t += 1;
        }
        let natural = matches!(opt, Optimizer::Ngd { .. });
        let fresh = self.first.is_empty();
        // Sums whose non-finiteness says the gradient diverged, then the
        // new weights'.
        let mut gradient = raw
            .iter()
            .map(|g| total(o, g))
            .collect::<OpsResult<Vec<_>>>()
            .map_err(e)?;
        let mut weights = Vec::with_capacity(2 * grads.len());
        let mut i = 0;
        for (s, g) in grads {
            let gs = net.split_natural(o, s, &g).map_err(e)?;
            drop(g);
            let ws = net.slot_tensors(s);
            let mut stepped = Vec::with_capacity(ws.len());
            let mut moves = Vec::with_capacity(ws.len());
            for (g, w) in gs.into_iter().zip(&ws) {
                if !natural {
                    gradient.push(total(o, &g).map_err(e)?);
                }
                let g = if scale != 1.0 {
                    o.scale(&g, scale).map_err(e)?
                } else {
                    g
                };
                let d = self.direction(o, opt, g, w, i, fresh, lr).map_err(e)?;
                let w2 = o.sub(w, &d).map_err(e)?;
                stepped.push(w2);
                moves.push(d);
                i += 1;
            }
            drop(ws);
            if let Reparam::Linearized { base, delta, .. } = &mut net.mode {
                let shifted = delta
                    .slot_tensors(s)
                    .iter()
                    .zip(&moves)
                    .map(|(t, d)| o.sub(t, d))
                    .collect::<OpsResult<Vec<_>>>()
                    .map_err(e)?;
                stepped = base
                    .slot_tensors(s)
                    .iter()
                    .zip(&shifted)
                    .map(|(w0, dt)| o.add(w0, dt))
                    .collect::<OpsResult<Vec<_>>>()
                    .map_err(e)?;
                delta.set_slot_tensors(o, s, shifted).map_err(e)?;
            }
            drop(moves);
            for w in &stepped {
                weights.push(total(o, w).map_err(e)?);
            }
            net.set_slot_tensors(o, s, stepped).map_err(e)?;
        }
        // One download says whether every gradient and weight is finite
        // (their sums are); only a failing step looks further.
        let ng = gradient.len();
        gradient.extend(weights);
        let sums = o.download(&o.cat(&gradient, 0).map_err(e)?).map_err(e)?;
        if sums[..ng].iter().any(|x| !x.is_finite()) {
            return Err(format!(
                "training diverged at step {}: the mini-batch loss is {loss}; lower the learning rate",
                step + 1
            ));
        }
        if sums[ng..].iter().any(|x| !x.is_finite()) {
            net.download_params(o).map_err(e)?;
            let w = net.params.flat();
            if let Some(i) = w.iter().position(|x| !x.is_finite()) {
                return Err(format!(
                    "training diverged at step {}: weight {i} became {} after the update; lower the learning rate or raise the damping",
                    step + 1,
                    w[i]
                ));
            }
        }
        Ok(())
    }

    /// The step `d` (the weights become `w − d`) of trainable tensor `i`
    /// with gradient `g`, in the host update's order of operations.
    #[allow(clippy::too_many_arguments)]
    fn direction(
        &mut self,
        o: &O,
        opt: &Optimizer,
        g: O::T,
        w: &O::T,
        i: usize,
        fresh: bool,
        lr: f64,
    ) -> OpsResult<O::T> {
        match opt {
            Optimizer::Sgd {
                momentum,
                nesterov,
                weight_decay,
                ..
            } => {
                let mut g = decayed(o, g, w, *weight_decay)?;
                if *momentum != 0.0 {
                    let b = if fresh {
                        g.clone()
                    } else {
                        o.add(&o.scale(&self.first[i], *momentum)?, &g)?
                    };
                    g = if *nesterov {
                        o.add(&g, &o.scale(&b, *momentum)?)?
                    } else {
                        b.clone()
                    };
                    self.keep(i, fresh, b);
                }
                o.scale(&g, lr)
            }
            Optimizer::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                let g = decayed(o, g, w, *weight_decay)?;
                let m = o.scale(&g, 1.0 - beta1)?;
                let v = o.mul(&o.scale(&g, 1.0 - beta2)?, &g)?;
                let (m, v) = if fresh {
                    (m, v)
                } else {
                    (
                        o.add(&o.scale(&self.first[i], *beta1)?, &m)?,
                        o.add(&o.scale(&self.second[i], *beta2)?, &v)?,
                    )
                };
                let (c1, c2) = (1.0 - beta1.powi(self.t), 1.0 - beta2.powi(self.t));
                let den = o.affine(
                    &o.unary(Unary::Sqrt, &o.affine(&v, 1.0 / c2, 0.0)?)?,
                    1.0,
                    *eps,
                )?;
                let d = o.binary(Binary::Div, &o.affine(&m, lr / c1, 0.0)?, &den)?;
                self.keep(i, fresh, m);
                if fresh {
                    self.second.push(v);
                } else {
                    self.second[i] = v;
                }
                Ok(d)
            }
            Optimizer::Ngd { momentum, .. } => {
                // `g` is already the preconditioned direction.
                let mut d = g;
                if *momentum != 0.0 {
                    if !fresh {
                        d = o.add(&d, &o.scale(&self.first[i], *momentum)?)?;
                    }
                    self.keep(i, fresh, d.clone());
                }
                o.scale(&d, lr)
            }
        }
    }

    fn keep(&mut self, i: usize, fresh: bool, t: O::T) {
        if fresh {
            self.first.push(t);
        } else {
            self.first[i] = t;
        }
    }
}

/// `g + λ w`: weight decay as an L2 term of the loss (PyTorch's SGD and
/// Adam, and the host update).
fn decayed<O: Ops>(o: &O, g: O::T, w: &O::T, decay: f64) -> OpsResult<O::T> {
    if decay == 0.0 {
        return Ok(g);
    }
    o.add(&g, &o.scale(w, decay)?)
}

/// The sum of every entry of `t`, as a one-entry tensor left on the device.
fn total<O: Ops>(o: &O, t: &O::T) -> OpsResult<O::T> {
    let flat = o.reshape(t, &[o.numel(t)])?;
    o.reshape(&o.reduce(Reduce::Sum, &flat, 0)?, &[1])
}

/// The batch's BatchNorm statistics folded into the running averages (on
/// the host, a few numbers per channel) and re-read by the network, and by
/// a centred scaled model's initial copy, which normalises as it does.
pub(crate) fn refresh_buffers<O: Ops>(
    o: &O,
    net: &mut Net<O>,
    spec: &ModelSpec,
    stats: &[BatchStats],
) -> OpsResult<()> {
    if stats.is_empty() {
        return Ok(());
    }
    net.params.fold_batch_stats(spec, stats);
    net.refresh_running(o)?;
    if let Reparam::Scaled { base: Some(b), .. } = &mut net.mode {
        // Held by this run alone, the initial copy is updated in place.
        let b = Arc::make_mut(b);
        for t in b.params.tensors.iter_mut().filter(|t| !t.trainable) {
            if let Some(now) = net.params.get(&t.key) {
                t.data.clone_from(&now.data);
            }
        }
        b.refresh_running(o)?;
    }
    Ok(())
}
