//! A network's trainable tensors as its layers hold them on the backend's
//! device, so that an optimiser can update them there: on a GPU, a step
//! that downloads every gradient and uploads every weight (and rebuilds
//! the network) costs several times the step itself.
//!
//! Each parameterised layer holds its weight in the natural layout of
//! [`super::super::stats`] (`[out, in·K]`, per group `[G, out/G, in/G·K]`)
//! and its bias, or a norm layer's scale and shift, as column tensors; a
//! gradient in the natural layout `[sg, sa]` is cut into the same pieces.

use super::super::stats;
use super::layers::running_tensors;
use super::{BatchStats, HostParams, Net, Phase, Reparam};
use crate::geometry::ops::{Ops, OpsError, OpsResult};
use crate::plan::Layer;

impl<O: Ops> Net<O> {
    /// The trainable tensors of slot `s` as its layer holds them: the
    /// weight, then the bias (a norm layer's shift) when there is one.
    pub fn slot_tensors(&self, s: usize) -> Vec<O::T> {
        let l = &self.layers[self.slots[s].index];
        l.w.iter().chain(l.b.iter()).cloned().collect()
    }

    /// A gradient of slot `s` in its natural layout `[sg, sa]`, cut into
    /// the shapes of [`Net::slot_tensors`].
    pub fn split_natural(&self, o: &O, s: usize, g: &O::T) -> OpsResult<Vec<O::T>> {
        let (sg, sa, bias) = stats::layout(&self.slots[s]);
        let g = o.reshape(g, &[sg, sa])?;
        let ts = self.slot_tensors(s);
        if ts.len() != 1 + bias as usize {
            return Err(OpsError(format!(
                "layer `{}` holds {} trainable tensors where its layout has {}",
                self.slots[s].name,
                ts.len(),
                1 + bias as usize
            )));
        }
        let sa_w = sa - bias as usize;
        let weight = if bias {
            o.narrow(&g, 1, 0, sa_w)?
        } else {
            g.clone()
        };
        let mut out = vec![o.reshape(&weight, &o.shape(&ts[0]))?];
        if bias {
            out.push(o.reshape(&o.narrow(&g, 1, sa_w, 1)?, &o.shape(&ts[1]))?);
        }
        Ok(out)
    }

    /// Replaces the trainable tensors of slot `s` (shapes as
    /// [`Net::slot_tensors`] gives them), with the transposed view the
    /// backward pass reads.
    pub fn set_slot_tensors(&mut self, o: &O, s: usize, ts: Vec<O::T>) -> OpsResult<()> {
        let name = self.slots[s].name.clone();
        let l = &mut self.layers[self.slots[s].index];
        let want = 1 + l.b.is_some() as usize;
        if ts.len() != want {
            return Err(OpsError(format!(
                "layer `{name}` takes {want} trainable tensors, given {}",
                ts.len()
            )));
        }
        let mut it = ts.into_iter();
        let w = it.next().expect("counted above");
        if l.wt.is_some() {
            // As `conv_weights` and `Net::new` make it: `[in, out]`, or per
            // group `[G, in/G·K, out/G]`.
            let r = o.shape(&w).len();
            l.wt = Some(o.transpose(&w, r - 2, r - 1)?);
        }
        l.w = Some(w);
        if l.b.is_some() {
            l.b = it.next();
        }
        Ok(())
    }

    /// Copies every slot's trainable tensors into [`Net::params`] in
    /// PyTorch's layout (one download per tensor).
    pub fn download_params(&mut self, o: &O) -> OpsResult<()> {
        for slot in &self.slots {
            let l = &self.layers[slot.index];
            let Some(w) = &l.w else {
                continue;
            };
            let nat = o.download(w)?;
            let weight = match stats::order(slot) {
                None => nat,
                Some(ord) => {
                    let (sg, sa, bias) = stats::layout(slot);
                    let sa_w = sa - bias as usize;
                    let mut pt = vec![0.0; nat.len()];
                    for g in 0..sg {
                        for a in 0..sa_w {
                            pt[stats::weight_pos(g, a, sg, sa_w, Some(ord))] = nat[g * sa_w + a];
                        }
                    }
                    pt
                }
            };
            set(&mut self.params, &format!("{}.weight", slot.name), weight)?;
            if let Some(b) = &l.b {
                set(
                    &mut self.params,
                    &format!("{}.bias", slot.name),
                    o.download(b)?,
                )?;
            }
        }
        Ok(())
    }

    /// Makes each BatchNorm's evaluation pass normalise with the statistics
    /// of a training batch (its mean and biased variance), held fixed: the
    /// function that batch's training pass `phase` on `x` computed, without
    /// the examples' coupling through the statistics. `stats` are the
    /// network's; a centred scaled model's initial copy normalised that
    /// pass with its own, which are recomputed here. [`Net::refresh_running`]
    /// (or rebuilding the network) restores the running averages.
    pub fn normalise_with(
        &mut self,
        o: &O,
        stats: &[BatchStats],
        x: &O::T,
        phase: Phase,
    ) -> OpsResult<()> {
        if stats.is_empty() {
            // No BatchNorm (or a linearised model, which has none in
            // training): nothing to do, and a shared initial copy stays
            // shared.
            return Ok(());
        }
        self.hold_statistics(o, stats)?;
        if let Reparam::Scaled { base: Some(b), .. } = &mut self.mode {
            let own = b.forward_net(o, x, false, phase)?.batch_stats;
            std::sync::Arc::make_mut(b).hold_statistics(o, &own)?;
        }
        Ok(())
    }

    /// Each BatchNorm of `stats` normalises with them in evaluation.
    fn hold_statistics(&mut self, o: &O, stats: &[BatchStats]) -> OpsResult<()> {
        for st in stats {
            let spec = &self.spec.layers[st.layer];
            let (Layer::BatchNorm1d { eps, .. } | Layer::BatchNorm2d { eps, .. }) = spec.layer
            else {
                return Err(OpsError(format!(
                    "batch statistics for `{}`, which is no BatchNorm",
                    spec.name
                )));
            };
            self.layers[st.layer].running =
                Some(running_tensors(o, &st.mean, &st.biased_var(), eps)?);
        }
        Ok(())
    }

    /// Re-reads each BatchNorm's running statistics from [`Net::params`]
    /// into the tensors its evaluation pass uses.
    pub fn refresh_running(&mut self, o: &O) -> OpsResult<()> {
        for (l, spec) in self.layers.iter_mut().zip(&self.spec.layers) {
            let eps = match spec.layer {
                Layer::BatchNorm1d { eps, .. } | Layer::BatchNorm2d { eps, .. } => eps,
                _ => continue,
            };
            let get = |k: &str| {
                self.params
                    .get(&format!("{}.{k}", spec.name))
                    .map(|t| &t.data[..])
                    .ok_or_else(|| OpsError(format!("missing buffer `{}.{k}`", spec.name)))
            };
            l.running = Some(running_tensors(
                o,
                get("running_mean")?,
                get("running_var")?,
                eps,
            )?);
        }
        Ok(())
    }
}

fn set(params: &mut HostParams, key: &str, data: Vec<f64>) -> OpsResult<()> {
    let t = params
        .tensors
        .iter_mut()
        .find(|t| t.key == key)
        .ok_or_else(|| OpsError(format!("missing parameter `{key}`")))?;
    if t.data.len() != data.len() {
        return Err(OpsError(format!(
            "parameter `{key}` has {} entries, the device holds {}",
            t.data.len(),
            data.len()
        )));
    }
    t.data = data;
    Ok(())
}
