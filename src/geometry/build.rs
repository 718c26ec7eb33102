//! Building representations from a model and a dataset, generic over the
//! backend's [`Ops`]: batches of examples go forward once, their output
//! functions (the Fisher's pseudo-outputs or the NTK's logits) backward once,
//! and each layer's statistics are accumulated on the device. This file
//! holds the [`Problem`] and its passes; what is built from them lives
//! beside it: the Fisher structures in [`super::fisher`], the NTK in
//! [`super::ntk`], the Hessian in [`super::hessian`].

pub use super::fisher::{factors_to_device, kfac_eigenbasis, to_eigenbases, BlockKind, Eigh};
use super::net::{BatchStats, Capture, Net, Phase};
use super::ops::{Ops, OpsError, OpsResult};
use super::repr::LayerInfo;
use super::stats;
use crate::plan::{FisherVariant, HessianPart, Task};
use crate::rng::Rng;

/// Which output functions are backpropagated.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A Fisher matrix `1/n Σ Jᵢᵀ Mᵢ Jᵢ`, through a factor of `Mᵢ`.
    Fim { variant: FisherVariant, task: Task },
    /// The model's raw outputs (NTK, Jacobians).
    Outputs,
    /// The Hessian of the mean loss of `task` (see [`super::hessian`]).
    Hessian { task: Task, part: HessianPart },
}

/// A model, its examples, and which layers take part.
pub struct Problem<'a, O: Ops> {
    pub o: &'a O,
    pub net: &'a Net<O>,
    /// `[n, ...input]`.
    pub x: &'a O::T,
    /// `n · target_dim` targets (class ids for classification).
    pub y: &'a [f64],
    pub target_dim: usize,
    pub n: usize,
    /// Indices into `net.slots` of the layers included.
    pub slots: Vec<usize>,
    /// Examples per batch.
    pub batch: usize,
}

impl<'a, O: Ops> Problem<'a, O> {
    /// Every layer of `net` on the `n` examples `x` with one target each
    /// (class ids), in one batch.
    pub fn whole(o: &'a O, net: &'a Net<O>, x: &'a O::T, y: &'a [f64], n: usize) -> Self {
        Problem {
            o,
            net,
            x,
            y,
            target_dim: 1,
            n,
            slots: (0..net.slots.len()).collect(),
            batch: n,
        }
    }
}

pub(super) fn softmax(z: &[f64]) -> Vec<f64> {
    let mx = z.iter().fold(f64::NEG_INFINITY, |m, x| m.max(*x));
    let e: Vec<f64> = z.iter().map(|x| (x - mx).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// One example's loss, its gradient w.r.t. the outputs, and whether it is
/// classified correctly: PyTorch's MSE (mean over outputs), softmax
/// cross-entropy, or — for a single logit on class labels — binary
/// cross-entropy with the logit.
pub(super) fn example_loss(z: &[f64], y: &[f64], mse: bool) -> (f64, Vec<f64>, bool) {
    let c = z.len();
    if mse {
        let mut g = vec![0.0; c];
        let mut loss = 0.0;
        for k in 0..c {
            let r = z[k] - y[k.min(y.len() - 1)];
            loss += r * r / c as f64;
            g[k] = 2.0 * r / c as f64;
        }
        return (loss, g, false);
    }
    if c == 1 {
        let (zz, yy) = (z[0], y[0]);
        let loss = zz.max(0.0) - yy * zz + (-zz.abs()).exp().ln_1p();
        return (loss, vec![sigmoid(zz) - yy], (zz > 0.0) == (yy > 0.5));
    }
    let label = (y[0] as usize).min(c - 1);
    let mx = z.iter().fold(f64::NEG_INFINITY, |m, x| m.max(*x));
    let lse = mx + z.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
    let p = softmax(z);
    let g = (0..c).map(|k| p[k] - (k == label) as u8 as f64).collect();
    let arg = z
        .iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (k, x)| if *x > b.1 { (k, *x) } else { b },
        )
        .0;
    (lse - z[label], g, arg == label)
}

impl<'a, O: Ops> Problem<'a, O> {
    /// The included layers in model order, each once: captures come out
    /// of the backward pass in that order, so every representation is laid
    /// out that way whatever order `slots` lists them in.
    pub fn ordered_slots(&self) -> Vec<usize> {
        let mut s = self.slots.clone();
        s.sort_unstable();
        s.dedup();
        s
    }

    pub fn layer_infos(&self) -> Vec<LayerInfo> {
        let mut offset = 0;
        self.ordered_slots()
            .iter()
            .map(|&s| {
                let slot = &self.net.slots[s];
                let (sg, sa, bias) = stats::layout(slot);
                let info = LayerInfo {
                    name: slot.name.clone(),
                    offset,
                    full_offset: slot.offset,
                    numel: slot.numel,
                    sg,
                    sa,
                    bias,
                    order: stats::order(slot),
                };
                offset += slot.numel;
                info
            })
            .collect()
    }

    /// Number of output functions per example, and NNGeometry's `n_out`
    /// (which sets how KFAC splits its scale between A and G).
    pub fn outputs_of(&self, target: &Target) -> (usize, usize) {
        let c = self.net.outputs();
        match target {
            Target::Outputs => (c, c),
            // One function: the loss.
            Target::Hessian { .. } => (1, 1),
            Target::Fim { variant, task } => match (variant, task) {
                (FisherVariant::True, Task::Classification) => {
                    let k = c.saturating_sub(1).max(1);
                    (k, k)
                }
                (FisherVariant::True, Task::Binary) => (1, 1),
                (FisherVariant::True, Task::Regression { .. }) => (c, c),
                (FisherVariant::Empirical, _) => (1, 1),
                (FisherVariant::Mc { samples, .. }, _) => (*samples, *samples),
            },
        }
    }

    /// Output-space seeds `[m, nb, C]` for a batch with logits `z [nb, C]`.
    ///
    /// True classification Fisher: C−1 pseudo-outputs, an exact factor of
    /// `diag(p) − ppᵀ` (as many as NNGeometry's, so KFAC's scale split
    /// matches), built without NNGeometry's divisions by `1 − Σ p`, so it
    /// stays finite when p is one-hot to machine precision.
    pub(super) fn seeds(
        &self,
        target: &Target,
        z: &[f64],
        start: usize,
        nb: usize,
        rng: &mut Rng,
    ) -> Vec<f64> {
        let c = self.net.outputs();
        let (m, _) = self.outputs_of(target);
        let mut s = vec![0.0; m * nb * c];
        let at = |o: usize, i: usize, k: usize| (o * nb + i) * c + k;
        for i in 0..nb {
            let zi = &z[i * c..(i + 1) * c];
            let yi = &self.y[(start + i) * self.target_dim..(start + i + 1) * self.target_dim];
            match target {
                Target::Outputs => {
                    for k in 0..c {
                        s[at(k, i, k)] = 1.0;
                    }
                }
                // The gradient of the example's loss.
                Target::Hessian { task, .. } => {
                    let mse = matches!(task, Task::Regression { .. });
                    let (_, g, _) = example_loss(zi, yi, mse);
                    for k in 0..c {
                        s[at(0, i, k)] = g[k];
                    }
                }
                Target::Fim { variant, task } => match task {
                    Task::Classification => {
                        let p = softmax(zi);
                        match variant {
                            FisherVariant::True if c == 1 => {}
                            FisherVariant::True => {
                                // Rows R_o = √p_o (e_o − p) factor diag p − ppᵀ
                                // exactly, and √pᵀR = 0. A Householder
                                // reflection whose last row is −√pᵀ turns the
                                // last row into zeros, leaving C−1 rows:
                                // R_k − 2 w_k R_last / ‖w‖², w = √p + e_last.
                                // ‖w‖² ≥ 2, so nothing is ever divided by a
                                // small number, even for a one-hot p.
                                let last = c - 1;
                                let sp: Vec<f64> = p.iter().map(|x| x.sqrt()).collect();
                                let w2 = 2.0 + 2.0 * sp[last];
                                let row =
                                    |o: usize, k: usize| sp[o] * ((o == k) as u8 as f64 - p[k]);
                                for o in 0..last {
                                    let f = 2.0 * sp[o] / w2;
                                    for k in 0..c {
                                        s[at(o, i, k)] = row(o, k) - f * row(last, k);
                                    }
                                }
                            }
                            FisherVariant::Empirical => {
                                let y = yi[0] as usize;
                                for k in 0..c {
                                    s[at(0, i, k)] = (k == y) as u8 as f64 - p[k];
                                }
                            }
                            FisherVariant::Mc { samples, .. } => {
                                let w = 1.0 / (*samples as f64).sqrt();
                                for o in 0..*samples {
                                    let u = rng.uniform();
                                    let mut acc = 0.0;
                                    let mut y = c - 1;
                                    for (k, pk) in p.iter().enumerate() {
                                        acc += pk;
                                        if u < acc {
                                            y = k;
                                            break;
                                        }
                                    }
                                    for k in 0..c {
                                        s[at(o, i, k)] = w * ((k == y) as u8 as f64 - p[k]);
                                    }
                                }
                            }
                        }
                    }
                    Task::Binary => {
                        let p = sigmoid(zi[0]);
                        match variant {
                            FisherVariant::True => s[at(0, i, 0)] = (p * (1.0 - p)).sqrt(),
                            FisherVariant::Empirical => s[at(0, i, 0)] = yi[0] - p,
                            FisherVariant::Mc { samples, .. } => {
                                let w = 1.0 / (*samples as f64).sqrt();
                                for o in 0..*samples {
                                    let y = (rng.uniform() < p) as u8 as f64;
                                    s[at(o, i, 0)] = w * (y - p);
                                }
                            }
                        }
                    }
                    Task::Regression { sigma2 } => {
                        let sd = sigma2.sqrt();
                        match variant {
                            FisherVariant::True => {
                                for k in 0..c {
                                    s[at(k, i, k)] = 1.0 / sd;
                                }
                            }
                            FisherVariant::Empirical => {
                                for k in 0..c {
                                    s[at(0, i, k)] =
                                        (yi[k.min(self.target_dim - 1)] - zi[k]) / sigma2;
                                }
                            }
                            FisherVariant::Mc { samples, .. } => {
                                let w = 1.0 / (*samples as f64).sqrt();
                                for o in 0..*samples {
                                    for k in 0..c {
                                        s[at(o, i, k)] = w * rng.normal() / sd;
                                    }
                                }
                            }
                        }
                    }
                },
            }
        }
        s
    }

    fn rng(target: &Target) -> Rng {
        match target {
            Target::Fim {
                variant: FisherVariant::Mc { seed, .. },
                ..
            } => Rng::new(*seed),
            _ => Rng::new(0),
        }
    }

    /// Runs `f(captures of the included layers, first example, batch size)`
    /// on every batch.
    pub fn for_each_batch(
        &self,
        target: &Target,
        mut f: impl FnMut(&[Capture<O::T>], usize, usize) -> OpsResult<()>,
    ) -> OpsResult<()> {
        let o = self.o;
        let mut rng = Self::rng(target);
        let mut start = 0;
        while start < self.n {
            let nb = self.batch.min(self.n - start);
            let (fwd, seed) = self.batch_pass(target, &mut rng, start, nb)?;
            let caps = self.net.backward(o, &fwd, &seed)?;
            let chosen: Vec<Capture<O::T>> = caps
                .into_iter()
                .filter(|cap| self.slots.contains(&cap.slot))
                .collect();
            f(&chosen, start, nb)?;
            start += nb;
        }
        Ok(())
    }

    /// Runs `f(k, capture, first example, batch size)` on each included
    /// layer's capture of every batch as the backward pass makes it, from
    /// the last layer back; `k` indexes [`Self::layer_infos`]. Unlike
    /// [`Self::for_each_batch`] no batch's captures are ever all held at
    /// once, nor the forward caches of layers already passed.
    pub fn for_each_capture(
        &self,
        target: &Target,
        mut f: impl FnMut(usize, Capture<O::T>, usize, usize) -> OpsResult<()>,
    ) -> OpsResult<()> {
        let order = self.ordered_slots();
        let mut rng = Self::rng(target);
        let mut start = 0;
        while start < self.n {
            let nb = self.batch.min(self.n - start);
            let (fwd, seed) = self.batch_pass(target, &mut rng, start, nb)?;
            self.net
                .backward_each(
                    self.o,
                    fwd,
                    &seed,
                    &mut |cap| match order.binary_search(&cap.slot) {
                        Ok(k) => f(k, cap, start, nb),
                        Err(_) => Ok(()),
                    },
                )?;
            start += nb;
        }
        Ok(())
    }

    /// The forward pass of the batch `start..start + nb` and its output
    /// seeds `[m, nb, C]` for `target`.
    fn batch_pass(
        &self,
        target: &Target,
        rng: &mut Rng,
        start: usize,
        nb: usize,
    ) -> OpsResult<(super::net::Forward<O::T>, O::T)> {
        let o = self.o;
        let c = self.net.outputs();
        let (m, _) = self.outputs_of(target);
        let xb = if nb == self.n {
            self.x.clone()
        } else {
            o.narrow(self.x, 0, start, nb)?
        };
        let fwd = self.net.forward(o, &xb, true)?;
        let z = o.download(&fwd.output)?;
        let seeds = self.seeds(target, &z, start, nb, rng);
        let seed = o.upload(&[m, nb, c], &seeds)?;
        Ok((fwd, seed))
    }

    pub(super) fn dtype_bytes(&self) -> usize {
        match self.o.dtype() {
            crate::plan::Dtype::F32 => 4,
            crate::plan::Dtype::F64 => 8,
        }
    }

    pub(super) fn slot_of(&self, cap: &Capture<O::T>) -> &super::net::LayerSlot {
        &self.net.slots[cap.slot]
    }

    /// Each layer's part of `v` (the representation's order over
    /// `layers`) on the device, in its natural layout `[sg, sa]`.
    pub fn upload_natural(&self, layers: &[LayerInfo], v: &[f64]) -> OpsResult<Vec<O::T>> {
        layers
            .iter()
            .map(|l| {
                let nat = stats::from_flat_host(
                    &v[l.offset..l.offset + l.numel],
                    l.sg,
                    l.sa,
                    l.bias,
                    l.order,
                );
                self.o.upload(&[l.sg, l.sa], &nat)
            })
            .collect()
    }

    /// Mean loss and accuracy (classification) of the model on the examples.
    pub fn loss_accuracy(&self, mse: bool) -> OpsResult<(f64, Option<f64>)> {
        let (losses, correct) = self.per_example_loss(mse)?;
        let n = self.n as f64;
        let loss = losses.iter().sum::<f64>() / n;
        let right = correct.iter().filter(|&&c| c).count() as f64;
        Ok((loss, (!mse).then(|| right / n)))
    }

    /// Every example's loss and whether it is classified correctly.
    pub fn per_example_loss(&self, mse: bool) -> OpsResult<(Vec<f64>, Vec<bool>)> {
        let (mut losses, mut correct) = (Vec::with_capacity(self.n), Vec::with_capacity(self.n));
        self.each_example_loss(mse, |l, _, ok| {
            losses.push(l);
            correct.push(ok);
        })?;
        Ok((losses, correct))
    }

    /// `f(loss, ∂loss/∂outputs, correct)` for every example in order, from
    /// one forward pass per batch.
    pub fn each_example_loss(
        &self,
        mse: bool,
        mut f: impl FnMut(f64, Vec<f64>, bool),
    ) -> OpsResult<()> {
        let o = self.o;
        let c = self.net.outputs();
        let mut start = 0;
        while start < self.n {
            let nb = self.batch.min(self.n - start);
            let xb = o.narrow(self.x, 0, start, nb)?;
            let z = o.download(&self.net.forward(o, &xb, false)?.output)?;
            for i in 0..nb {
                let zi = &z[i * c..(i + 1) * c];
                let yi = &self.y[(start + i) * self.target_dim..(start + i + 1) * self.target_dim];
                let (l, g, ok) = example_loss(zi, yi, mse);
                f(l, g, ok);
            }
            start += nb;
        }
        Ok(())
    }

    /// Gradient of the mean loss (cross-entropy or PyTorch's MSE), flat.
    pub fn loss_gradient(&self, mse: bool) -> OpsResult<Vec<f64>> {
        Ok(self.loss_and_gradient(mse)?.1)
    }

    /// Mean loss and its gradient (flat), from one forward and one
    /// backward pass per batch, in evaluation mode.
    pub fn loss_and_gradient(&self, mse: bool) -> OpsResult<(f64, Vec<f64>)> {
        let (loss, g, _) = self.loss_gradient_in(mse, Phase::Eval)?;
        Ok((loss, g))
    }

    /// Mean loss and gradient of a training step: BatchNorm normalises
    /// with the statistics of each batch (PyTorch's `model.train()`), which
    /// are returned for the running averages.
    pub fn loss_gradient_in(
        &self,
        mse: bool,
        phase: Phase,
    ) -> OpsResult<(f64, Vec<f64>, Vec<BatchStats>)> {
        let (loss, grads, stats) = self.loss_gradient_natural_in(mse, phase)?;
        let mut out = Vec::new();
        for (l, (_, g)) in self.layer_infos().iter().zip(&grads) {
            let nat = self.o.download(g)?;
            out.extend(stats::to_flat_host(&nat, l.sg, l.sa, l.bias, l.order));
        }
        Ok((loss, out, stats))
    }

    /// [`Problem::loss_gradient_in`] with the gradient left where it was
    /// computed: per slot (in [`Problem::ordered_slots`] order), the
    /// backend tensor of its natural layout `[sg, sa]`. An optimiser that
    /// updates the weights on the device reads it there.
    #[allow(clippy::type_complexity)]
    pub fn loss_gradient_natural_in(
        &self,
        mse: bool,
        phase: Phase,
    ) -> OpsResult<(f64, Vec<(usize, O::T)>, Vec<BatchStats>)> {
        let o = self.o;
        let mut loss = 0.0;
        let c = self.net.outputs();
        let order = self.ordered_slots();
        let mut acc: Vec<Option<O::T>> = vec![None; order.len()];
        let mut stats = Vec::new();
        let mut start = 0;
        while start < self.n {
            let nb = self.batch.min(self.n - start);
            let xb = o.narrow(self.x, 0, start, nb)?;
            let mut fwd = self.net.forward_in(o, &xb, true, phase)?;
            stats.append(&mut fwd.batch_stats);
            let z = o.download(&fwd.output)?;
            let mut s = vec![0.0; nb * c];
            for i in 0..nb {
                let zi = &z[i * c..(i + 1) * c];
                let yi = &self.y[(start + i) * self.target_dim..(start + i + 1) * self.target_dim];
                let (l, g, _) = example_loss(zi, yi, mse);
                loss += l;
                for k in 0..c {
                    s[i * c + k] = g[k] / self.n as f64;
                }
            }
            let seed = o.upload(&[1, nb, c], &s)?;
            // Streamed: each layer's share is reduced to its gradient as
            // the backward pass makes it, so no batch holds every layer's
            // per-example data at once.
            self.net.gradient_each(o, fwd, &seed, &mut |slot, t| {
                let Ok(k) = order.binary_search(&slot) else {
                    return Ok(());
                };
                acc[k] = Some(match acc[k].take() {
                    Some(a) => o.add(&a, &t)?,
                    None => t,
                });
                Ok(())
            })?;
            start += nb;
        }
        let grads = order
            .iter()
            .zip(acc)
            .map(|(&s, g)| {
                let (sg, sa, _) = stats::layout(&self.net.slots[s]);
                let g = g.ok_or_else(|| {
                    OpsError(format!(
                        "no gradient reached layer `{}`",
                        self.net.slots[s].name
                    ))
                })?;
                Ok((s, o.reshape(&g, &[sg, sa])?))
            })
            .collect::<OpsResult<Vec<_>>>()?;
        Ok((loss / self.n as f64, grads, stats))
    }
}
