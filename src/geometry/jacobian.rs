//! Products with the Jacobian of the outputs w.r.t. the parameters
//! (NNGeometry's `PFMap`) over a dataset, never forming it: `J v` on
//! every example (a function-space vector `[n, C]`, its `FVector`) and
//! `Jᵀ u`, both from one backward pass of the C outputs per batch.

use super::build::{Problem, Target};
use super::ops::{Ops, OpsError, OpsResult};
use super::stats;

impl<O: Ops> Problem<'_, O> {
    /// `J v` for `v` in the representation's order over the included
    /// layers: `[n, C]` row-major (example by example).
    pub fn jvp_outputs(&self, v: &[f64]) -> OpsResult<Vec<f64>> {
        let o = self.o;
        let layers = self.layer_infos();
        let c = self.net.outputs();
        let vs = self.upload_natural(&layers, v)?;
        let mut out = vec![0.0; self.n * c];
        self.for_each_batch(&Target::Outputs, |caps, start, nb| {
            let mut u: Option<O::T> = None;
            for (k, cap) in caps.iter().enumerate() {
                let j = stats::jv(o, self.slot_of(cap), cap, &vs[k])?; // [C, nb]
                u = Some(match u.take() {
                    Some(t) => o.add(&t, &j)?,
                    None => j,
                });
            }
            let u = o.download(&u.ok_or_else(|| OpsError("no layers".into()))?)?;
            for k in 0..c {
                for i in 0..nb {
                    out[(start + i) * c + k] = u[k * nb + i];
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// `Jᵀ u` for `u [n, C]` (row-major), in the representation's order.
    pub fn vjp_params(&self, u: &[f64]) -> OpsResult<Vec<f64>> {
        let o = self.o;
        let layers = self.layer_infos();
        let c = self.net.outputs();
        if u.len() != self.n * c {
            return Err(OpsError(format!(
                "a function-space vector of {} entries for {} examples × {c} outputs",
                u.len(),
                self.n
            )));
        }
        let mut acc: Vec<Option<O::T>> = vec![None; layers.len()];
        self.for_each_batch(&Target::Outputs, |caps, start, nb| {
            let mut ub = vec![0.0; c * nb];
            for k in 0..c {
                for i in 0..nb {
                    ub[k * nb + i] = u[(start + i) * c + k];
                }
            }
            let ub = o.upload(&[c, nb], &ub)?;
            for (k, cap) in caps.iter().enumerate() {
                let t = stats::jtu(o, self.slot_of(cap), cap, &ub)?;
                acc[k] = Some(match acc[k].take() {
                    Some(a) => o.add(&a, &t)?,
                    None => t,
                });
            }
            Ok(())
        })?;
        let mut out = Vec::with_capacity(layers.iter().map(|l| l.numel).sum());
        for (k, l) in layers.iter().enumerate() {
            let nat = o.download(
                acc[k]
                    .as_ref()
                    .ok_or_else(|| OpsError("no examples".into()))?,
            )?;
            out.extend(stats::to_flat_host(&nat, l.sg, l.sa, l.bias, l.order));
        }
        Ok(out)
    }

    /// Each example's loss gradient w.r.t. its outputs, `∂ℓᵢ/∂f [n, C]`
    /// row-major (cross-entropy, or PyTorch's MSE when `mse`).
    pub fn loss_output_grads(&self, mse: bool) -> OpsResult<Vec<f64>> {
        let mut out = Vec::with_capacity(self.n * self.net.outputs());
        self.each_example_loss(mse, |_, g, _| out.extend(g))?;
        Ok(out)
    }
}
