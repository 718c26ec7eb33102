//! The plan-level executor shared by every backend: it keeps datasets,
//! models, representations and vectors behind the step ids that made them,
//! and answers measurements. A backend only provides [`Ops`].

pub mod device_update;
pub mod difficulty;
mod hooks;
mod influence;
mod matrices;
mod measure;
mod part_file;
mod preconditioner;
mod sharded;
pub mod train;
mod vectors;

use crate::backend::{
    Backend, BackendError, BackendInfo, Emitted, HostTensor, RunContext, StepOutput,
};
use crate::data::{self, HostData};
use crate::geometry::build::{BlockKind, Problem, Target};
use crate::geometry::init::{init_params, load_params};
use crate::geometry::kernel::{self, Ntk, NtkBody};
use crate::geometry::net::Net;
use crate::geometry::ops::{linalg_of, Ops, OpsError};
use crate::geometry::repr::{Fim, FimBody, LayerInfo};
use crate::linalg::{self, Keep, Mat, Stored};
use crate::plan::{
    Dtype, FisherVariant, HookSpec, Measurement, Object, Op, Operand, Plan, ReprOptions, Step,
    StepId, Structure, TrainConfig, VectorOp,
};
use crate::rng::Rng;
use std::collections::HashMap;
use train::{TrainData, TrainObserver};

struct DataValue<T> {
    host: HostData,
    x: T,
    y: Vec<f64>,
}

/// A representation as stored, with what made it (for layer views and the
/// matrix-free representation, which recomputes from model and data).
#[derive(Clone)]
struct ReprValue {
    model: StepId,
    data: StepId,
    target: Target,
    slots: Vec<usize>,
    centered: bool,
    /// `sharded(k)`: the implicit representation's products (and layer
    /// views) are computed over `k` example ranges.
    shards: Option<usize>,
    kind: ReprKind,
    /// What an implicit representation's products compute from the
    /// Fisher's (`inverse(I + λ)`); the identity form for every other.
    form: ImplicitForm,
}

/// `(F + shift·I)`, inverted when `inverse` (products by conjugate
/// gradients), for a matrix-free Fisher `F`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct ImplicitForm {
    shift: f64,
    inverse: bool,
}

#[derive(Clone)]
enum ReprKind {
    Fim(Fim),
    Implicit(Vec<LayerInfo>),
    Ntk(Ntk),
}

enum Value<O: Ops> {
    Data(DataValue<O::T>),
    Model(Box<Net<O>>, Vec<f64>),
    Repr(ReprValue),
    Vector(vectors::PVec),
    None,
}

/// Generic backend over tensor operations `O`.
pub struct Engine<O: Ops> {
    name: String,
    version: String,
    make: fn(&str, Dtype) -> Result<O, OpsError>,
    ops: Option<O>,
    /// What `info()` lists; a backend that can see GPUs sets it.
    devices: Vec<String>,
    /// Where the representations' linear algebra runs, for `info()`.
    linalg: Vec<String>,
    ctx: RunContext,
    values: HashMap<StepId, Value<O>>,
    /// Results dropped after each top-level step ([`Plan::freed_after`]).
    freed_after: HashMap<StepId, Vec<StepId>>,
    warnings: std::cell::RefCell<Vec<String>>,
}

fn fail(step: &Step, msg: impl std::fmt::Display) -> BackendError {
    BackendError::Failed {
        step: step.id.0,
        message: msg.to_string(),
    }
}

/// Examples per batch (shared with the plan's memory estimate).
use crate::plan::cost::batch_examples as batch_size;

impl<O: Ops> Engine<O> {
    /// Drops the results no step after `step` reads: a sweep's
    /// representations go as its iterations end, not with the run.
    fn drop_freed(&mut self, step: StepId) {
        for id in self.freed_after.get(&step).into_iter().flatten() {
            self.values.remove(id);
        }
    }

    pub fn new(name: &str, version: &str, make: fn(&str, Dtype) -> Result<O, OpsError>) -> Self {
        Engine {
            name: name.into(),
            version: version.into(),
            make,
            ops: None,
            devices: vec!["cpu".into()],
            linalg: vec!["linalg:host".into()],
            ctx: RunContext::default(),
            values: HashMap::new(),
            freed_after: HashMap::new(),
            warnings: Default::default(),
        }
    }

    /// The devices `info()` reports (default: `cpu`).
    pub fn with_devices(mut self, devices: Vec<String>) -> Self {
        self.devices = devices;
        self
    }

    /// Where the linear algebra of representations runs, as `info()`
    /// lists it (default `linalg:host`: all of it on the host, with faer;
    /// e.g. `linalg:eigh:cuda` where [`Ops::device_linalg`] holds on CUDA).
    pub fn with_linalg(mut self, linalg: Vec<String>) -> Self {
        self.linalg = linalg;
        self
    }

    fn o(&self) -> &O {
        self.ops.as_ref().expect("prepare() runs first")
    }

    fn data(&self, id: StepId) -> Result<&DataValue<O::T>, String> {
        match self.values.get(&id) {
            Some(Value::Data(d)) => Ok(d),
            _ => Err(format!("step #{} is not a dataset", id.0)),
        }
    }
    fn model(&self, id: StepId) -> Result<&Net<O>, String> {
        match self.values.get(&id) {
            Some(Value::Model(m, _)) => Ok(m),
            _ => Err(format!("step #{} is not a model", id.0)),
        }
    }
    fn vector(&self, id: StepId) -> Result<&vectors::PVec, String> {
        match self.values.get(&id) {
            Some(Value::Vector(v)) => Ok(v),
            _ => Err(format!("step #{} is not a vector", id.0)),
        }
    }
    fn repr(&self, id: StepId) -> Result<&ReprValue, String> {
        match self.values.get(&id) {
            Some(Value::Repr(r)) => Ok(r),
            _ => Err(format!("step #{} is not a representation", id.0)),
        }
    }

    fn problem<'a>(
        &'a self,
        net: &'a Net<O>,
        d: &'a DataValue<O::T>,
        slots: Vec<usize>,
        m: usize,
    ) -> Problem<'a, O> {
        let n = d.host.info.n;
        let width = net.num_params().max(
            net.spec
                .layers
                .iter()
                .map(|l| l.output.iter().product::<usize>())
                .max()
                .unwrap_or(1),
        );
        Problem {
            o: self.o(),
            net,
            x: &d.x,
            y: &d.y,
            target_dim: d.host.info.target_dim.max(1),
            n,
            slots,
            batch: batch_size(n, m, width),
        }
    }
}

impl<O: Ops> Backend for Engine<O> {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: self.name.clone(),
            version: self.version.clone(),
            devices: self.devices.clone(),
            dtypes: vec![Dtype::F32, Dtype::F64],
            capabilities: [
                "fim:dense",
                "fim:blockdiag",
                "fim:diag",
                "fim:kfac",
                "fim:ekfac",
                "fim:lowrank",
                "fim:quasidiag",
                "fim:implicit",
                "fim:mix",
                "ntk:dense",
                "ntk:blockdiag",
                "ntk:diag",
                "ntk:lowrank",
                "train:sgd",
                "train:adam",
                "train:hooks",
                "train:ngd",
                "train:linearized",
                "train:scaled",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(self.linalg.iter().cloned())
            .collect(),
        }
    }

    fn prepare(&mut self, plan: &Plan, ctx: &RunContext) -> Result<(), BackendError> {
        let h = &plan.experiment;
        let ops = (self.make)(&h.device, h.dtype).map_err(|e| BackendError::Unavailable {
            name: self.name.clone(),
            reason: e.to_string(),
        })?;
        self.ops = Some(ops);
        self.ctx = ctx.clone();
        self.values.clear();
        self.freed_after = plan.freed_after();
        Ok(())
    }

    fn run(
        &mut self,
        plan: &Plan,
        step: &Step,
        emit: &mut dyn FnMut(Emitted),
    ) -> Result<StepOutput, BackendError> {
        let value = match &step.op {
            Op::Data { source, .. } => {
                let host = data::load(source, &self.ctx.base_dir).map_err(|e| fail(step, e))?;
                self.load_data(step, host)?
            }
            Op::Transform {
                input, transform, ..
            } => {
                let inp = self.data(*input).map_err(|e| fail(step, e))?;
                let like = match transform {
                    crate::plan::Transform::Normalize { like: Some(l), .. } => {
                        // `normalize(like = train)` where `train` is itself
                        // normalised means "with train's statistics": take
                        // them from the data before its normalisation.
                        let mut src = *l;
                        if let Some(Op::Transform {
                            input,
                            transform: crate::plan::Transform::Normalize { .. },
                            ..
                        }) = Some(&plan.step(src).op)
                        {
                            src = *input;
                        }
                        Some(&self.data(src).map_err(|e| fail(step, e))?.host)
                    }
                    _ => None,
                };
                let host = data::transform::apply(transform, &inp.host, like)
                    .map_err(|e| fail(step, e))?;
                self.load_data(step, host)?
            }
            Op::Model { spec, .. } => {
                let params = match &spec.weights {
                    Some(w) => {
                        load_params(spec, &self.ctx.base_dir.join(w)).map_err(|e| fail(step, e))?
                    }
                    None => init_params(spec, &spec.init),
                };
                let w0 = params.flat();
                let net = Net::new(self.o(), spec, params).map_err(|e| fail(step, e))?;
                Value::Model(Box::new(net), w0)
            }
            Op::WithWeights { model, weights, .. } => self
                .with_weights(*model, *weights)
                .map_err(|e| fail(step, e))?,
            Op::Repr {
                object,
                structure,
                model,
                data,
                options,
                ..
            } => {
                let at = sharded::PartsAt::of(plan, step);
                self.build_repr(*object, structure, *model, *data, options, at.as_ref())
                    .map_err(|e| fail(step, e))?
            }
            Op::Vector { vector, .. } => {
                let at = sharded::PartsAt::of(plan, step);
                match self
                    .vector_op(vector, at.as_ref())
                    .map_err(|e| fail(step, e))?
                {
                    sharded::Built::Whole(v) => Value::Vector(v),
                    sharded::Built::PartWritten => Value::None,
                }
            }
            Op::Matrix { matrix, .. } => self.matrix_op(matrix).map_err(|e| fail(step, e))?,
            Op::Measure { measurement, .. } => {
                let out = self.measure(measurement).map_err(|e| fail(step, e));
                self.drop_freed(step.id);
                crate::memory::release();
                return out;
            }
            Op::Train {
                model,
                data,
                config,
                hooks,
                ..
            } => self
                .train(plan, step, *model, *data, config, hooks, emit)
                .map_err(|e| fail(step, e))?,
            Op::Save { model, path } if matches!(self.values.get(model), Some(Value::Repr(_))) => {
                self.save_repr(*model, path).map_err(|e| fail(step, e))?;
                Value::None
            }
            Op::Save { model, path } => {
                let net = self.model(*model).map_err(|e| fail(step, e))?;
                // Weights land in the run folder: a run's outputs stay
                // together (absolute paths are used as given).
                let p = self.ctx.out_dir.join(path);
                let dtype = self.o().dtype();
                save_params(&net.params, &p, dtype).map_err(|e| fail(step, e))?;
                Value::None
            }
            Op::Plot { .. } | Op::Expect { .. } => Value::None,
        };
        self.values.insert(step.id, value);
        self.drop_freed(step.id);
        // What the step freed goes back to the OS: the next step's
        // estimate does not count it (see `crate::memory`).
        crate::memory::release();
        Ok(StepOutput::Stored)
    }

    fn warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.borrow_mut())
    }
}

/// Writes parameters as safetensors with their `state_dict` names, in the
/// run's precision (an f32 run's weights are f32 values; widening them to
/// f64 would claim digits the run never had).
fn save_params(
    params: &crate::geometry::net::HostParams,
    path: &std::path::Path,
    dtype: crate::plan::Dtype,
) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    }
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = params
        .tensors
        .iter()
        .map(|t| {
            (
                t.key.clone(),
                match dtype {
                    crate::plan::Dtype::F64 => {
                        t.data.iter().flat_map(|x| x.to_le_bytes()).collect()
                    }
                    crate::plan::Dtype::F32 => t
                        .data
                        .iter()
                        .flat_map(|x| (*x as f32).to_le_bytes())
                        .collect(),
                },
                t.shape.clone(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, b, s)| {
            let st_dtype = match dtype {
                crate::plan::Dtype::F64 => safetensors::Dtype::F64,
                crate::plan::Dtype::F32 => safetensors::Dtype::F32,
            };
            safetensors::tensor::TensorView::new(st_dtype, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    safetensors::serialize_to_file(views, &None, path).map_err(|e| e.to_string())
}
