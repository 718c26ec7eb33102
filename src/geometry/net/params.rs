//! A network's parameters and buffers on the host, as PyTorch names and
//! lays them out.

use super::{BatchStats, OpsError};
use crate::plan::ModelSpec;

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

    /// BatchNorm's running averages after a training batch, as PyTorch
    /// updates them: `r ← (1 − momentum) r + momentum · batch`, with the
    /// unbiased batch variance, and one more `num_batches_tracked`.
    pub fn fold_batch_stats(&mut self, spec: &ModelSpec, stats: &[BatchStats]) {
        for st in stats {
            let name = &spec.layers[st.layer].name;
            for (key, batch) in [("running_mean", &st.mean), ("running_var", &st.var)] {
                if let Some(t) = self.get_mut(&format!("{name}.{key}")) {
                    t.data
                        .iter_mut()
                        .zip(batch)
                        .for_each(|(r, b)| *r = (1.0 - BN_MOMENTUM) * *r + BN_MOMENTUM * b);
                }
            }
            if let Some(t) = self.get_mut(&format!("{name}.num_batches_tracked")) {
                t.data[0] += 1.0;
            }
        }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut HostParam> {
        self.tensors.iter_mut().find(|t| t.key == key)
    }
}

/// PyTorch's default BatchNorm momentum.
const BN_MOMENTUM: f64 = 0.1;
