//! What a plan step does. These types are the contract between the front end
//! and every backend: they are serialised into plans, snapshots and plugin
//! messages, so variants are only ever added.

mod data;
mod geometry;
mod model;
mod train;

pub use data::*;
pub use geometry::*;
pub use model::*;
pub use train::*;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A step's position in [`crate::plan::Plan::steps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StepId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F64,
}

impl Dtype {
    pub fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Load or generate a dataset.
    Data {
        name: String,
        source: DataSource,
        info: DataInfo,
    },
    /// Derive a dataset from `input`.
    Transform {
        name: String,
        input: StepId,
        transform: Transform,
        info: DataInfo,
    },
    /// Build a model and initialise (or load) its weights.
    Model { name: String, spec: ModelSpec },
    /// `with_weights(model, v)`: the model with the layers `v` covers set
    /// to `v`'s entries (the others kept): a point along a direction,
    /// an eigenvector's perturbation, a merged network.
    WithWeights {
        name: String,
        model: StepId,
        weights: StepId,
    },
    /// Compute a Fisher or NTK representation of `model` on `data`.
    Repr {
        name: String,
        object: Object,
        structure: Structure,
        model: StepId,
        data: StepId,
        options: ReprOptions,
    },
    /// A parameter-space vector.
    Vector { name: String, vector: VectorOp },
    /// A representation computed from others (`A + B`, `inverse(F + λ)`).
    Matrix {
        name: String,
        matrix: super::MatrixOp,
    },
    /// Compute one measurement and stream it out under `key`.
    Measure {
        key: String,
        measurement: Measurement,
    },
    /// Train `model` on `data`; the steps listed in each hook run at its
    /// schedule, against the live weights of this run.
    Train {
        name: String,
        model: StepId,
        data: StepId,
        config: TrainConfig,
        hooks: Vec<HookSpec>,
    },
    /// Write a model's weights as safetensors with PyTorch `state_dict` names.
    Save { model: StepId, path: String },
    /// Draw measurements matching `pattern` against `x`.
    Plot {
        pattern: String,
        x: String,
        by: Vec<String>,
        flags: Vec<String>,
        file: String,
    },
    /// A claim checked on the results when the report is written.
    Expect {
        text: String,
        claim: crate::plan::claim::ClaimExpr,
    },
}
