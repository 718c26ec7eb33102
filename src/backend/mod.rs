//! The `Backend` trait: what executes a plan.
//!
//! The trait is coarse-grained and object-safe: a backend receives plan
//! steps (build this model, load this dataset, compute this representation,
//! measure, train) and answers with host values. Tensors and models stay on
//! the backend's device behind the step ids that made them.

pub mod candle;
pub mod difficulty;
pub mod engine;
pub mod train;

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

/// The built-in candle backend.
pub fn candle_backend() -> Box<dyn Backend> {
    Box::new(engine::Engine::new(
        "candle",
        concat!("nngeo ", env!("CARGO_PKG_VERSION"), ", candle-core 0.11"),
        candle::CandleOps::new,
    ))
}

/// Creates a built-in backend.
pub type MakeBackend = fn() -> Box<dyn Backend>;

/// Backends linked into this executable.
pub const BUILT_IN: &[(&str, MakeBackend)] = &[("candle", candle_backend)];

/// Plugins this repository ships, listed by `nngeo backends` even when
/// they are not built, with how to build them.
pub const SHIPPED_PLUGINS: &[&str] = &["tch", "candle-cuda", "example"];

/// How to get a plugin that is known by name but was not found.
pub fn build_hint(name: &str) -> Option<&'static str> {
    match name {
        "tch" => Some("the libtorch plugin is not built: run `scripts/setup-libtorch.sh` (add `--release` for a release `nngeo`)"),
        "candle-cuda" => Some("the candle CUDA plugin is not built: see backends/README.md (`candle-cuda`)"),
        "candle" => Some("build the candle plugin with `cargo build -p nngeo-backend-candle`"),
        "example" => Some("build the example plugin with `cargo build -p nngeo-backend-example`"),
        _ => None,
    }
}

/// Creates the backend called `name`:
/// - a built-in name (`candle`) is the backend linked into this executable;
/// - `plugin:NAME` is the plugin of that name even where a built-in one
///   exists (how the test suite runs candle through its plugin);
/// - a path to a library (`./libnngeo_backend_x.so`) loads that file;
/// - any other name is looked up among the plugins found (see
///   [`crate::plugin::discover`]), the first of that name winning.
pub fn create(
    name: &str,
    config: &crate::config::Config,
) -> Result<Box<dyn Backend>, BackendError> {
    use crate::plugin::discover;
    let unavailable = |reason: String| BackendError::Unavailable {
        name: name.into(),
        reason,
    };
    let (wanted, plugin_only) = match name.strip_prefix("plugin:") {
        Some(n) => (n, true),
        None => (name, false),
    };
    if !plugin_only {
        if let Some((_, make)) = BUILT_IN.iter().find(|(n, _)| *n == wanted) {
            return Ok(make());
        }
    }
    let as_path = std::path::Path::new(wanted);
    if wanted.contains(std::path::MAIN_SEPARATOR) || wanted.ends_with(std::env::consts::DLL_SUFFIX)
    {
        let plugin = crate::plugin::load(as_path).map_err(|e| unavailable(e.to_string()))?;
        return Ok(Box::new(plugin.create()?));
    }
    let found = discover::discover(config);
    let mut refused = Vec::new();
    for f in &found {
        match &f.result {
            Ok(p) if p.meta.name == wanted => return Ok(Box::new(p.create()?)),
            Err(e) if f.name() == wanted => refused.push(e.to_string()),
            _ => {}
        }
    }
    if !refused.is_empty() {
        return Err(unavailable(refused.join("; ")));
    }
    let mut known: Vec<String> = BUILT_IN.iter().map(|(n, _)| n.to_string()).collect();
    for f in found.iter().filter(|f| f.result.is_ok()) {
        if !known.contains(&f.name()) {
            known.push(f.name());
        }
    }
    let searched: Vec<String> = discover::search_path(config)
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    let mut reason = format!(
        "no built-in backend or plugin of this name (known: {}; plugins searched in: {})",
        known.join(", "),
        searched.join(", ")
    );
    if let Some(h) = build_hint(wanted) {
        reason = format!("{h} ({reason})");
    }
    Err(unavailable(reason))
}
