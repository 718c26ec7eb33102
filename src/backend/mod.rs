//! The `Backend` trait: what executes a plan.
//!
//! The trait is coarse-grained and object-safe: a backend receives plan
//! steps (build this model, load this dataset, compute this representation,
//! measure, train) and answers with host values. Tensors and models stay on
//! the backend's device behind the step ids that made them.

pub mod candle;

use crate::plan::{Dtype, Plan, Step, StepId};
use serde::{Deserialize, Serialize};

/// What a backend tells about itself (`nngeo backends`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub name: String,
    pub version: String,
    /// Devices it can run on, e.g. `cpu`, `cuda:0`.
    pub devices: Vec<String>,
    pub dtypes: Vec<Dtype>,
    /// Named features, e.g. `fim:kfac`, `ntk:dense`, `train:ngd`.
    pub capabilities: Vec<String>,
}

/// A neutral host tensor: row-major `f64` data with its shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// What a step produced, as far as the host needs to see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepOutput {
    /// The result lives on the backend under the step's id.
    Stored,
    Scalar {
        value: f64,
    },
    Tensor {
        tensor: HostTensor,
    },
}

#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum BackendError {
    #[error("backend `{name}` is not available: {reason}")]
    Unavailable { name: String, reason: String },
    #[error("backend `{backend}` does not support {what}")]
    Unsupported { backend: String, what: String },
    #[error("step #{step} failed: {message}")]
    Failed { step: u32, message: String },
}

/// Where a run reads relative paths from (the `.ngx` file's folder) and
/// writes into (the output folder).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunContext {
    pub base_dir: std::path::PathBuf,
    pub out_dir: std::path::PathBuf,
}

/// A result produced inside a step: a hook's measurement during training,
/// or a training curve (`train/loss`, `eval/accuracy`).
#[derive(Clone, Debug, PartialEq)]
pub struct Emitted {
    /// The measure step (for hooks) or the train step (for curves).
    pub step_id: StepId,
    pub key: String,
    /// The optimiser step it belongs to.
    pub train_step: Option<u64>,
    /// Seconds the training run had spent on optimiser steps by then
    /// (hooks, tracking and evaluation excluded): the clock of "loss
    /// against time" comparisons between optimisers.
    pub train_time: Option<f64>,
    /// Tags added to the step's sweep tags, e.g. `group = flipped`.
    pub tags: crate::plan::Tags,
    pub output: StepOutput,
}

pub trait Backend {
    fn info(&self) -> BackendInfo;
    /// Prepares to run `plan` (device, dtype); refuses what it cannot do.
    fn prepare(&mut self, plan: &Plan, ctx: &RunContext) -> Result<(), BackendError>;
    /// Runs one step whose dependencies have all run; results produced
    /// along the way (training curves, hook measurements) go to `emit` the
    /// moment they exist.
    fn run(
        &mut self,
        plan: &Plan,
        step: &Step,
        emit: &mut dyn FnMut(Emitted),
    ) -> Result<StepOutput, BackendError>;
    /// Warnings gathered since the last call (e.g. EKFAC without refit).
    fn warnings(&mut self) -> Vec<String> {
        Vec::new()
    }
}
