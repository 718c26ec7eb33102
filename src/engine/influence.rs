//! `influence(M, model, data, test, damping)`: the influence of training
//! examples on a test loss, `−∇L_testᵀ (M + λ)⁻¹ ∇ℓᵢ` (Koh and Liang's
//! `I_up,loss` with `M` for the Hessian). One solve, then one Jacobian
//! product over the examples: `∇ℓᵢᵀ q = (∂ℓᵢ/∂f)ᵀ Jᵢ q`, so no
//! per-example gradient is formed.

use super::vectors::PVec;
use super::*;

impl<O: Ops> Engine<O> {
    pub(super) fn influence(
        &self,
        m: &Operand,
        model: StepId,
        data: StepId,
        test: StepId,
        damping: f64,
    ) -> Result<Vec<f64>, String> {
        let r = self.operand(m)?;
        let infos = self.infos(&r)?;
        let net = self.model(model)?;
        let t = self.data(test)?;
        let mse = t.host.info.classes.is_none();
        let all: Vec<usize> = (0..net.slots.len()).collect();
        let g = self
            .problem(net, t, all, 1)
            .loss_gradient(mse)
            .map_err(|e| e.to_string())?;
        let g = PVec::of_model(net, g)?.gather(&infos)?;
        let q = PVec::of_layers(&infos, self.solve_repr(&r, &g, damping)?);
        let slots = Self::slots_named(net, infos.iter().map(|l| l.name.as_str()))?;
        let d = self.data(data)?;
        let p = self.problem(net, d, slots, net.outputs());
        let e = |e: OpsError| e.to_string();
        let jq = p.jvp_outputs(&q.gather(&p.layer_infos())?).map_err(e)?;
        let dl = p.loss_output_grads(mse).map_err(e)?;
        let c = net.outputs();
        Ok(jq
            .chunks(c)
            .zip(dl.chunks(c))
            .map(|(a, b)| -a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>())
            .collect())
    }
}
