//! The plan-level executor shared by every backend: it keeps datasets,
//! models, representations and vectors behind the step ids that made them,
//! and answers measurements. A backend only provides [`Ops`].

use super::train::{self, TrainData, TrainObserver};
use super::{Backend, BackendError, BackendInfo, Emitted, HostTensor, RunContext, StepOutput};
use crate::data::{self, HostData};
use crate::geometry::build::{BlockKind, Problem, Target};
use crate::geometry::init::{init_params, load_params};
use crate::geometry::kernel::{self, Ntk, NtkBody};
use crate::geometry::net::Net;
use crate::geometry::ops::{Ops, OpsError};
use crate::geometry::repr::{Fim, FimBody, LayerInfo};
use crate::linalg::{self, Mat};
use crate::plan::{
    Dtype, FisherVariant, HookSpec, LayerFamily, Measurement, Object, Op, Operand, Plan,
    ReprOptions, Step, StepId, Structure, TrainConfig, VectorOp,
};
use crate::rng::Rng;
use std::collections::HashMap;

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
    kind: ReprKind,
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
    Vector(Vec<f64>),
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
    ctx: RunContext,
    values: HashMap<StepId, Value<O>>,
    warnings: std::cell::RefCell<Vec<String>>,
}

fn fail(step: &Step, msg: impl std::fmt::Display) -> BackendError {
    BackendError::Failed {
        step: step.id.0,
        message: msg.to_string(),
    }
}

/// Examples per batch so that per-example data (`m · nb · width`) stays
/// near 2²⁶ numbers.
fn batch_size(n: usize, m: usize, width: usize) -> usize {
    let per = (m * width).max(1);
    (((1usize << 26) / per).max(1)).min(n.max(1))
}

impl<O: Ops> Engine<O> {
    pub fn new(name: &str, version: &str, make: fn(&str, Dtype) -> Result<O, OpsError>) -> Self {
        Engine {
            name: name.into(),
            version: version.into(),
            make,
            ops: None,
            devices: vec!["cpu".into()],
            ctx: RunContext::default(),
            values: HashMap::new(),
            warnings: Default::default(),
        }
    }

    /// The devices `info()` reports (default: `cpu`).
    pub fn with_devices(mut self, devices: Vec<String>) -> Self {
        self.devices = devices;
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
    fn vector(&self, id: StepId) -> Result<&[f64], String> {
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

    fn load_data(&self, step: &Step, host: HostData) -> Result<Value<O>, BackendError> {
        let o = self.o();
        let mut shape = vec![host.info.n];
        shape.extend(&host.info.shape);
        let xs: Vec<f64> = host.x.iter().map(|&v| v as f64).collect();
        let x = o.upload(&shape, &xs).map_err(|e| fail(step, e))?;
        let y = host.y.iter().map(|&v| v as f64).collect();
        Ok(Value::Data(DataValue { host, x, y }))
    }

    fn slots_for(net: &Net<O>, opts: &ReprOptions) -> Result<Vec<usize>, String> {
        if opts.layers.is_empty() {
            return Ok((0..net.slots.len()).collect());
        }
        // Model order, each layer once: the order every representation uses.
        let mut slots = opts
            .layers
            .iter()
            .map(|name| {
                net.slot(name)
                    .ok_or_else(|| format!("the model has no parameterised layer `{name}`"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        slots.sort_unstable();
        slots.dedup();
        Ok(slots)
    }

    fn build_repr(
        &mut self,
        step: &Step,
        object: Object,
        structure: &Structure,
        model: StepId,
        data: StepId,
        opts: &ReprOptions,
    ) -> Result<Value<O>, String> {
        let net = self.model(model)?;
        let d = self.data(data)?;
        let slots = Self::slots_for(net, opts)?;
        if object == Object::Ntk {
            let target = Target::Outputs;
            let p = self.problem(net, d, slots.clone(), net.outputs());
            let c = net.outputs();
            let n = d.host.info.n;
            let body = match structure {
                Structure::BlockDiag | Structure::Diag => {
                    let j = p.jacobian_rows(&target).map_err(|e| e.to_string())?;
                    // Rows of `j` are batch-major: (batch, o, i within batch).
                    let mut blocks = vec![Mat::zeros(c, c); n];
                    let mut start = 0;
                    let mut row = 0;
                    while start < n {
                        let nb = p.batch.min(n - start);
                        for a in 0..c {
                            for b in 0..c {
                                for i in 0..nb {
                                    let ra = &j.data[(row + a * nb + i) * j.cols..][..j.cols];
                                    let rb = &j.data[(row + b * nb + i) * j.cols..][..j.cols];
                                    let v: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
                                    blocks[start + i].set(a, b, v);
                                }
                            }
                        }
                        row += c * nb;
                        start += nb;
                    }
                    if matches!(structure, Structure::Diag) {
                        let mut diag = vec![0.0; c * n];
                        for (i, b) in blocks.iter().enumerate() {
                            for a in 0..c {
                                diag[a * n + i] = b.get(a, a);
                            }
                        }
                        NtkBody::Diag(diag)
                    } else {
                        NtkBody::BlockDiag(blocks)
                    }
                }
                Structure::LowRank { rank: Some(k) } => {
                    // The best rank-k approximation: the top k eigenpairs.
                    let full = p.ntk_dense(false).map_err(|e| e.to_string())?;
                    let (ev, u) = linalg::eigh(&full).map_err(|e| e.to_string())?;
                    let m = full.rows;
                    let mut low = Mat::zeros(m, m);
                    for e in m.saturating_sub(*k)..m {
                        for r in 0..m {
                            let ur = u.get(r, e) * ev[e];
                            for c in 0..m {
                                low.data[r * m + c] += ur * u.get(c, e);
                            }
                        }
                    }
                    NtkBody::Dense(low)
                }
                _ => NtkBody::Dense(p.ntk_dense(false).map_err(|e| e.to_string())?),
            };
            let mut ntk = Ntk { c, n, body };
            if opts.centered {
                ntk = ntk.centered();
            }
            return Ok(Value::Repr(ReprValue {
                model,
                data,
                target,
                slots,
                centered: opts.centered,
                kind: ReprKind::Ntk(ntk),
            }));
        }
        let target = Target::Fim {
            variant: opts.fisher.clone().unwrap_or(FisherVariant::True),
            task: opts.task.clone(),
        };
        if opts.centered {
            return Err(
                "a centred Fisher matrix is not supported yet (centring applies to Ntk)".into(),
            );
        }
        let m = self.problem(net, d, slots.clone(), 1).outputs_of(&target).0;
        let p = self.problem(net, d, slots.clone(), m);
        let kind = match structure {
            Structure::Dense => ReprKind::Fim(p.fim_dense(&target).map_err(|e| e.to_string())?),
            Structure::LowRank { rank } => {
                ReprKind::Fim(p.fim_lowrank(&target, *rank).map_err(|e| e.to_string())?)
            }
            Structure::Implicit => ReprKind::Implicit(p.layer_infos()),
            s => {
                let kinds = slots
                    .iter()
                    .map(|&k| {
                        let layer = &net.spec.layers[net.slots[k].index];
                        block_kind(s, layer.layer.family())
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                if kinds.contains(&BlockKind::Ekfac { refit: false }) {
                    self.warnings.borrow_mut().push(format!(
                        "line {}: EKFAC without refit equals KFAC; use `EKFAC(refit = true)` for the eigenvalue-corrected diagonal",
                        step.span.line
                    ));
                }
                if let Structure::Ekfac {
                    initial_basis: true,
                    ..
                } = s
                {
                    ReprKind::Fim(self.ekfac_initial_basis(model, &p, &target, kinds.len())?)
                } else {
                    ReprKind::Fim(p.fim_blocks(&target, &kinds).map_err(|e| e.to_string())?)
                }
            }
        };
        Ok(Value::Repr(ReprValue {
            model,
            data,
            target,
            slots,
            centered: false,
            kind,
        }))
    }

    /// Resolves an operand, restricted to one layer when it names one.
    fn operand(&self, op: &Operand) -> Result<ReprValue, String> {
        let r = self.repr(op.repr)?.clone();
        let Some(layer) = &op.layer else {
            return Ok(r);
        };
        let net = self.model(r.model)?;
        let slot = net
            .slot(layer)
            .ok_or_else(|| format!("the model has no parameterised layer `{layer}`"))?;
        if !r.slots.contains(&slot) {
            return Err(format!(
                "layer `{layer}` is not part of this representation"
            ));
        }
        let kind = match &r.kind {
            ReprKind::Fim(f) => ReprKind::Fim(f.layer(layer).ok_or("no such layer")?),
            ReprKind::Implicit(infos) => {
                let mut l = infos
                    .iter()
                    .find(|l| &l.name == layer)
                    .ok_or("no such layer")?
                    .clone();
                l.offset = 0;
                ReprKind::Implicit(vec![l])
            }
            ReprKind::Ntk(k) => {
                let d = self.data(r.data)?;
                let p = self.problem(net, d, vec![slot], net.outputs());
                let mut ntk = Ntk {
                    c: k.c,
                    n: k.n,
                    body: NtkBody::Dense(p.ntk_dense(false).map_err(|e| e.to_string())?),
                };
                if r.centered {
                    ntk = ntk.centered();
                }
                ReprKind::Ntk(ntk)
            }
        };
        Ok(ReprValue {
            slots: vec![slot],
            kind,
            ..r
        })
    }

    /// Parameter-space vector restricted to a representation's layers.
    fn gather(&self, r: &ReprValue, v: &[f64]) -> Result<Vec<f64>, String> {
        let infos = self.infos(r)?;
        let p: usize = self.model(r.model)?.num_params();
        if v.len() != p {
            return Err(format!(
                "a vector of {} entries for a model of {p} parameters",
                v.len()
            ));
        }
        Ok(infos
            .iter()
            .flat_map(|l| v[l.full_offset..l.full_offset + l.numel].iter().copied())
            .collect())
    }

    fn infos(&self, r: &ReprValue) -> Result<Vec<LayerInfo>, String> {
        match &r.kind {
            ReprKind::Fim(f) => Ok(f.layers.clone()),
            ReprKind::Implicit(l) => Ok(l.clone()),
            ReprKind::Ntk(_) => Err(
                "this operation applies to parameter-space matrices (Fim), not to an Ntk".into(),
            ),
        }
    }

    /// EKFAC with the eigenbases of the model at its initial weights and the
    /// diagonal refitted on the current model: how stale bases degrade.
    fn ekfac_initial_basis(
        &self,
        model: StepId,
        p: &Problem<'_, O>,
        target: &Target,
        layers: usize,
    ) -> Result<Fim, String> {
        let Some(Value::Model(net, w0)) = self.values.get(&model) else {
            return Err(format!("step #{} is not a model", model.0));
        };
        let mut initial = net.params.clone();
        initial.set_flat(w0).map_err(|e| e.to_string())?;
        let net0 = net
            .with_params(self.o(), initial)
            .map_err(|e| e.to_string())?;
        let p0 = Problem {
            net: &net0,
            slots: p.slots.clone(),
            ..*p
        };
        let kinds = vec![BlockKind::Ekfac { refit: false }; layers];
        let mut f = p0.fim_blocks(target, &kinds).map_err(|e| e.to_string())?;
        let FimBody::Blocks(blocks) = &mut f.body else {
            return Err("EKFAC is block-diagonal".into());
        };
        let which: Vec<usize> = (0..layers).collect();
        p.refit(target, &f.layers, blocks, &which, None)
            .map_err(|e| e.to_string())?;
        f.refit = true;
        Ok(f)
    }

    /// The problem a stored representation was built from, batched for its
    /// number of output functions.
    fn repr_problem(&self, r: &ReprValue) -> Result<Problem<'_, O>, String> {
        let net = self.model(r.model)?;
        let d = self.data(r.data)?;
        let m = self
            .problem(net, d, r.slots.clone(), 1)
            .outputs_of(&r.target)
            .0;
        Ok(self.problem(net, d, r.slots.clone(), m))
    }

    fn implicit_mv(&self, r: &ReprValue, v: &[f64]) -> Result<Vec<f64>, String> {
        self.repr_problem(r)?
            .implicit_mv(&r.target, v)
            .map_err(|e| e.to_string())
    }

    /// The implicit representation materialised as `kind` (Diag for its
    /// diagonal and trace, Dense for comparisons).
    fn implicit_fim(&self, r: &ReprValue, kind: BlockKind) -> Result<Fim, String> {
        let p = self.repr_problem(r)?;
        match kind {
            BlockKind::Dense => p.fim_dense(&r.target),
            k => p.fim_blocks(&r.target, &vec![k; p.ordered_slots().len()]),
        }
        .map_err(|e| e.to_string())
    }

    fn dense(&self, r: &ReprValue) -> Result<Mat, String> {
        Ok(match &r.kind {
            ReprKind::Fim(f) => f.to_dense(),
            ReprKind::Implicit(_) => self.implicit_fim(r, BlockKind::Dense)?.to_dense(),
            ReprKind::Ntk(k) => k.to_dense(),
        })
    }

    fn eigenvalues(&self, r: &ReprValue, top: Option<usize>) -> Result<Vec<f64>, String> {
        let mut ev = match &r.kind {
            // A few top eigenvalues of a large matrix: Lanczos on `mv`
            // instead of a full O(P³) decomposition.
            ReprKind::Fim(f) if top.is_some_and(|k| k <= 64) && f.dim() > 2000 => {
                let mut op = |v: &[f64]| f.mv(v);
                linalg::top_eigs_op(f.dim(), top.unwrap_or(1), &mut op, 1e-10)
            }
            ReprKind::Fim(f) => f.eigenvalues().map_err(|e| e.to_string())?,
            ReprKind::Ntk(k) => k.eigenvalues().map_err(|e| e.to_string())?,
            ReprKind::Implicit(infos) => {
                let dim: usize = infos.iter().map(|l| l.numel).sum();
                let k = top.unwrap_or(dim).min(dim);
                let mut err = None;
                let mut op = |v: &[f64]| match self.implicit_mv(r, v) {
                    Ok(x) => x,
                    Err(e) => {
                        err = Some(e);
                        vec![f64::NAN; v.len()]
                    }
                };
                let ev = linalg::top_eigs_op(dim, k, &mut op, 1e-10);
                if let Some(e) = err {
                    return Err(e);
                }
                ev
            }
        };
        if let Some(k) = top {
            ev.truncate(k);
        }
        Ok(ev)
    }

    fn measure(&self, m: &Measurement) -> Result<StepOutput, String> {
        let scalar = |value: f64| StepOutput::Scalar { value };
        let vector = |data: Vec<f64>| StepOutput::Tensor {
            tensor: HostTensor {
                shape: vec![data.len()],
                data,
            },
        };
        Ok(match m {
            Measurement::Trace { m } => {
                let r = self.operand(m)?;
                scalar(match &r.kind {
                    ReprKind::Fim(f) => f.trace(),
                    ReprKind::Ntk(k) => k.trace(),
                    ReprKind::Implicit(_) => self.implicit_fim(&r, BlockKind::Diag)?.trace(),
                })
            }
            Measurement::Frobenius { m } => {
                let r = self.operand(m)?;
                scalar(match &r.kind {
                    ReprKind::Fim(f) => f.frobenius(),
                    ReprKind::Ntk(k) => k.frobenius(),
                    ReprKind::Implicit(_) => self.dense(&r)?.frobenius(),
                })
            }
            Measurement::SpectralNorm { m } => {
                let r = self.operand(m)?;
                let ev = self.eigenvalues(&r, Some(1))?;
                scalar(ev.first().copied().unwrap_or(0.0))
            }
            Measurement::Diagonal { m } => {
                let r = self.operand(m)?;
                vector(match &r.kind {
                    ReprKind::Fim(f) => f.diag(),
                    ReprKind::Ntk(k) => k.diag(),
                    ReprKind::Implicit(_) => self.implicit_fim(&r, BlockKind::Diag)?.diag(),
                })
            }
            Measurement::Mv { m, v } => {
                let r = self.operand(m)?;
                let v = self.gather(&r, self.vector(*v)?)?;
                vector(match &r.kind {
                    ReprKind::Fim(f) => f.mv(&v),
                    _ => self.implicit_mv(&r, &v)?,
                })
            }
            Measurement::VTMv { m, v } => {
                let r = self.operand(m)?;
                let v = self.gather(&r, self.vector(*v)?)?;
                scalar(match &r.kind {
                    ReprKind::Fim(f) => f.vtmv(&v),
                    _ => {
                        let fv = self.implicit_mv(&r, &v)?;
                        v.iter().zip(&fv).map(|(a, b)| a * b).sum()
                    }
                })
            }
            Measurement::Solve { m, v, damping } => {
                let r = self.operand(m)?;
                let v = self.gather(&r, self.vector(*v)?)?;
                vector(match &r.kind {
                    ReprKind::Fim(f) => f.solve(&v, *damping).map_err(|e| e.to_string())?,
                    _ => {
                        let mut op = |x: &[f64]| self.implicit_mv(&r, x);
                        conjugate_gradient(&mut op, &v, *damping, 1e-12, 10 * v.len().max(10))?
                    }
                })
            }
            Measurement::Eigenvalues { m, top } => {
                let r = self.operand(m)?;
                vector(self.eigenvalues(&r, Some(*top))?)
            }
            Measurement::EffectiveRank { m } => {
                let r = self.operand(m)?;
                scalar(linalg::effective_rank(&self.eigenvalues(&r, None)?))
            }
            Measurement::Alignment {
                m,
                targets,
                centered,
                trace,
            } => {
                let r = self.operand(m)?;
                let ReprKind::Ntk(k) = &r.kind else {
                    return Err("alignment applies to an Ntk".into());
                };
                let d = self.data(*targets)?;
                if d.host.info.n != k.n {
                    return Err(format!(
                        "the kernel is over {} examples but the targets have {}",
                        k.n, d.host.info.n
                    ));
                }
                let y = targets_matrix(d, k.c)?;
                if *trace {
                    let t = kernel::trace_kernel(&k.to_dense(), k.c, k.n);
                    let ym = crate::linalg::Mat::from_vec(k.n, k.c, y);
                    let yy = ym.matmul(&ym.transpose());
                    return Ok(scalar(kernel::alignment_matrices(&t, &yy, *centered)));
                }
                let yv = kernel::target_vector(&y, k.n, k.c);
                scalar(kernel::alignment(&k.to_dense(), &yv, k.c, k.n, *centered))
            }
            Measurement::RelError { a, b } => {
                let ra = self.operand(a)?;
                let rb = self.operand(b)?;
                if let (ReprKind::Fim(fa), ReprKind::Fim(fb)) = (&ra.kind, &rb.kind) {
                    if let Some(e) = blockwise_rel_error(fa, fb) {
                        return Ok(scalar(e));
                    }
                }
                let da = self.dense(&ra)?;
                let db = self.dense(&rb)?;
                if da.rows != db.rows {
                    return Err(format!(
                        "cannot compare a {}×{0} matrix with a {}×{1} one",
                        da.rows, db.rows
                    ));
                }
                let diff: f64 = da
                    .data
                    .iter()
                    .zip(&db.data)
                    .map(|(x, y)| (x - y) * (x - y))
                    .sum::<f64>()
                    .sqrt();
                scalar(diff / db.frobenius())
            }
            Measurement::Memory { m } => {
                let r = self.operand(m)?;
                let size = self.o().dtype().size() as f64;
                scalar(match &r.kind {
                    ReprKind::Fim(f) => f.stored() as f64 * size,
                    ReprKind::Ntk(k) => k.stored() as f64 * size,
                    ReprKind::Implicit(_) => 0.0,
                })
            }
            Measurement::Loss { model, data } | Measurement::Accuracy { model, data } => {
                let net = self.model(*model)?;
                let d = self.data(*data)?;
                let mse = d.host.info.classes.is_none();
                let p = self.problem(net, d, (0..net.slots.len()).collect(), 1);
                let (loss, acc) = p.loss_accuracy(mse).map_err(|e| e.to_string())?;
                match m {
                    Measurement::Loss { .. } => scalar(loss),
                    _ => scalar(acc.ok_or("accuracy needs a classification dataset")?),
                }
            }
            Measurement::Norm { v } => {
                scalar(self.vector(*v)?.iter().map(|x| x * x).sum::<f64>().sqrt())
            }
            Measurement::Dot { a, b } => {
                let (a, b) = (self.vector(*a)?, self.vector(*b)?);
                if a.len() != b.len() {
                    return Err("vectors of different lengths".into());
                }
                scalar(a.iter().zip(b).map(|(x, y)| x * y).sum())
            }
        })
    }

    fn vector_op(&self, v: &VectorOp) -> Result<Vec<f64>, String> {
        Ok(match v {
            VectorOp::Random { model, seed } => {
                let p = self.model(*model)?.num_params();
                let mut rng = Rng::new(*seed);
                (0..p).map(|_| rng.normal()).collect()
            }
            VectorOp::Weights { model } => self.model(*model)?.params.flat(),
            VectorOp::InitialWeights { model } => match self.values.get(model) {
                Some(Value::Model(_, w0)) => w0.clone(),
                _ => return Err("not a model".into()),
            },
            VectorOp::Grad { model, data } => {
                let net = self.model(*model)?;
                let d = self.data(*data)?;
                let p = self.problem(net, d, (0..net.slots.len()).collect(), 1);
                p.loss_gradient(d.host.info.classes.is_none())
                    .map_err(|e| e.to_string())?
            }
            VectorOp::Add { a, b } | VectorOp::Sub { a, b } => {
                let (x, y) = (self.vector(*a)?, self.vector(*b)?);
                let s = if matches!(v, VectorOp::Add { .. }) {
                    1.0
                } else {
                    -1.0
                };
                x.iter().zip(y).map(|(p, q)| p + s * q).collect()
            }
            VectorOp::Scale { factor, v } => self.vector(*v)?.iter().map(|x| x * factor).collect(),
        })
    }
}

/// Runs hook steps on the live model and forwards results to the sink.
struct HookRunner<'a, 'e, O: Ops> {
    engine: &'a mut Engine<O>,
    plan: &'a Plan,
    train_id: StepId,
    w0: Vec<f64>,
    hooks: &'a [HookSpec],
    emit: &'a mut dyn FnMut(Emitted),
    /// The training run's optimiser-step clock, in seconds.
    clock: f64,
    _e: std::marker::PhantomData<&'e ()>,
}

impl<O: Ops> TrainObserver<O> for HookRunner<'_, '_, O> {
    fn hook(&mut self, hook: usize, step: u64, net: &Net<O>) -> Result<(), String> {
        let live = net
            .with_params(self.engine.o(), net.params.clone())
            .map_err(|e| e.to_string())?;
        self.engine
            .values
            .insert(self.train_id, Value::Model(Box::new(live), self.w0.clone()));
        for &id in &self.hooks[hook].steps {
            let hs = self.plan.step(id);
            let clock = self.clock;
            let mut inner = |mut e: Emitted| {
                e.train_step = e.train_step.or(Some(step));
                e.train_time = e.train_time.or(Some(clock));
                (self.emit)(e)
            };
            let out = self
                .engine
                .run(self.plan, hs, &mut inner)
                .map_err(|e| e.to_string())?;
            if let Op::Measure { key, .. } = &hs.op {
                if let StepOutput::Scalar { value } = &out {
                    if !value.is_finite() {
                        return Err(format!(
                            "training stopped at step {step}: measurement `{key}` is {value} (the model diverged, or the measurement is undefined here)"
                        ));
                    }
                }
                (self.emit)(Emitted {
                    step_id: id,
                    key: key.clone(),
                    train_step: Some(step),
                    train_time: Some(self.clock),
                    tags: Default::default(),
                    output: out,
                });
            }
        }
        Ok(())
    }

    fn log(&mut self, key: &str, step: u64, value: f64, tags: &[(&str, String)]) {
        (self.emit)(Emitted {
            step_id: self.train_id,
            key: key.into(),
            train_step: Some(step),
            train_time: Some(self.clock),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            output: StepOutput::Scalar { value },
        });
    }

    fn clock(&mut self, seconds: f64) {
        self.clock = seconds;
    }

    fn difficulty(&mut self, score: &[f64], bin: &[usize], k: usize) -> Result<(), String> {
        let dir = self.engine.ctx.out_dir.join("examples");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        let path = dir.join(format!("train_{}.difficulty.json", self.train_id.0));
        let doc = serde_json::json!({
            "score": score,
            "bin": bin,
            "bins": k,
            "method": super::difficulty::METHOD,
        });
        std::fs::write(&path, doc.to_string())
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
    }

    fn examples(&mut self, step: u64, loss: &[f64], correct: &[bool]) -> Result<(), String> {
        // One line per checkpoint: losses as f32 text and correctness as a
        // 0/1 string, never one line per example.
        let dir = self.engine.ctx.out_dir.join("examples");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        let path = dir.join(format!("train_{}.jsonl", self.train_id.0));
        let line = serde_json::json!({
            "step": step,
            "loss": loss.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            "correct": correct.iter().map(|&c| if c { '1' } else { '0' }).collect::<String>(),
        });
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
        writeln!(f, "{line}").map_err(|e| format!("cannot write `{}`: {e}", path.display()))
    }
}

impl<O: Ops> Engine<O> {
    #[allow(clippy::too_many_arguments)]
    fn train(
        &mut self,
        plan: &Plan,
        step: &Step,
        model: StepId,
        data: StepId,
        config: &TrainConfig,
        hooks: &[HookSpec],
        emit: &mut dyn FnMut(Emitted),
    ) -> Result<Value<O>, String> {
        let (spec, params, w0) = match self.values.get(&model) {
            Some(Value::Model(m, w0)) => (m.spec.clone(), m.params.clone(), w0.clone()),
            _ => return Err(format!("step #{} is not a model", model.0)),
        };
        let snapshot = |id: StepId| -> Result<(O::T, Vec<f64>, usize, usize), String> {
            let d = self.data(id)?;
            Ok((
                d.x.clone(),
                d.y.clone(),
                d.host.info.n,
                d.host.info.target_dim.max(1),
            ))
        };
        let (x, y, n, td) = snapshot(data)?;
        let flipped = self.data(data)?.host.flipped.clone();
        let ev = config.eval.map(&snapshot).transpose()?;
        let per_epoch = n.div_ceil(config.batch.max(1)) as u64;
        let firing: Vec<Vec<u64>> = hooks
            .iter()
            .map(|h| h.schedule.firing_steps(config.total_steps, per_epoch))
            .collect();
        let o = self.o().clone();
        let train_data = TrainData {
            x: &x,
            y: &y,
            n,
            target_dim: td,
            flipped: &flipped,
        };
        let eval_data = ev.as_ref().map(|(x, y, n, td)| TrainData {
            x,
            y,
            n: *n,
            target_dim: *td,
            flipped: &[],
        });
        // A rerun into the same folder starts its per-example files afresh.
        let examples = self.ctx.out_dir.join("examples");
        for name in [
            format!("train_{}.jsonl", step.id.0),
            format!("train_{}.difficulty.json", step.id.0),
        ] {
            let path = examples.join(name);
            if path.exists() {
                std::fs::remove_file(&path)
                    .map_err(|e| format!("cannot remove `{}`: {e}", path.display()))?;
            }
        }
        let mut runner = HookRunner {
            engine: self,
            plan,
            train_id: step.id,
            w0: w0.clone(),
            hooks,
            emit,
            clock: 0.0,
            _e: std::marker::PhantomData,
        };
        let init = params.clone();
        let fin = train::train(
            &o,
            &spec,
            params,
            &train_data,
            eval_data.as_ref(),
            config,
            &firing,
            &mut runner,
        );
        // What the hooks computed is not needed any more (a block-diagonal
        // Fisher can be hundreds of MB).
        for id in hooks.iter().flat_map(|h| &h.steps) {
            self.values.remove(id);
        }
        // The trained model keeps its mode: a linearised model stays linear.
        let net = Net::new(&o, &spec, fin?)
            .and_then(|n| n.reparam(&o, &config.mode, &init))
            .map_err(|e| e.to_string())?;
        Ok(Value::Model(Box::new(net), w0))
    }
}

pub(crate) fn block_kind(s: &Structure, family: Option<LayerFamily>) -> Result<BlockKind, String> {
    Ok(match s {
        Structure::BlockDiag => BlockKind::Dense,
        Structure::Diag => BlockKind::Diag,
        Structure::Kfac => BlockKind::Kfac,
        Structure::Ekfac { refit, .. } => BlockKind::Ekfac { refit: *refit },
        Structure::QuasiDiag => BlockKind::QuasiDiag,
        Structure::Mix { families } => {
            let f = family.ok_or("a parameter-free layer in a mix")?;
            let inner = families
                .get(&f)
                .ok_or_else(|| format!("this mix gives no structure for {f:?} layers"))?;
            block_kind(inner, family)?
        }
        other => return Err(format!("{} cannot be one block of a mix", other.name())),
    })
}

/// `‖A − B‖_F / ‖B‖_F` block by block when both are block-diagonal on the
/// same layers: the off-diagonal blocks are zero on both sides, so the
/// whole matrices (P² entries each) are never formed.
fn blockwise_rel_error(a: &Fim, b: &Fim) -> Option<f64> {
    let (FimBody::Blocks(ba), FimBody::Blocks(bb)) = (&a.body, &b.body) else {
        return None;
    };
    if a.layers != b.layers || ba.len() != bb.len() {
        return None;
    }
    let (mut diff, mut norm) = (0.0, 0.0);
    for ((l, x), y) in a.layers.iter().zip(ba).zip(bb) {
        let (dx, dy) = (x.to_dense(l), y.to_dense(l));
        diff += dx
            .data
            .iter()
            .zip(&dy.data)
            .map(|(p, q)| (p - q) * (p - q))
            .sum::<f64>();
        norm += dy.data.iter().map(|q| q * q).sum::<f64>();
    }
    Some(diff.sqrt() / norm.sqrt())
}

/// `[n, C]` targets: one-hot rows for class labels, raw values otherwise.
fn targets_matrix<T>(d: &DataValue<T>, c: usize) -> Result<Vec<f64>, String> {
    let n = d.host.info.n;
    match d.host.info.classes {
        Some(_) if d.host.info.target_dim == 1 => {
            let mut y = vec![0.0; n * c];
            for i in 0..n {
                let k = d.y[i] as usize;
                if k >= c {
                    return Err(format!("label {k} for a model with {c} outputs"));
                }
                y[i * c + k] = 1.0;
            }
            Ok(y)
        }
        _ => {
            if d.host.info.target_dim != c {
                return Err(format!(
                    "targets of width {} for a model with {c} outputs",
                    d.host.info.target_dim
                ));
            }
            Ok(d.y.clone())
        }
    }
}

type MatVec<'a> = dyn FnMut(&[f64]) -> Result<Vec<f64>, String> + 'a;

/// `(A + λI) x = b` for a symmetric PSD operator, by conjugate gradients.
fn conjugate_gradient(
    op: &mut MatVec<'_>,
    b: &[f64],
    damping: f64,
    tol: f64,
    max_iter: usize,
) -> Result<Vec<f64>, String> {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut x = vec![0.0; b.len()];
    let mut r = b.to_vec();
    let mut p = r.clone();
    let mut rs = dot(&r, &r);
    let b2 = rs.max(f64::MIN_POSITIVE);
    for _ in 0..max_iter {
        if rs <= tol * tol * b2 {
            break;
        }
        let mut ap = op(&p)?;
        ap.iter_mut().zip(&p).for_each(|(a, q)| *a += damping * q);
        let alpha = rs / dot(&p, &ap);
        x.iter_mut().zip(&p).for_each(|(xi, pi)| *xi += alpha * pi);
        r.iter_mut().zip(&ap).for_each(|(ri, a)| *ri -= alpha * a);
        let rs_new = dot(&r, &r);
        let beta = rs_new / rs;
        p.iter_mut()
            .zip(&r)
            .for_each(|(pi, ri)| *pi = ri + beta * *pi);
        rs = rs_new;
    }
    Ok(x)
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
                    crate::plan::Transform::Normalize { like: Some(l) } => {
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
            Op::Repr {
                object,
                structure,
                model,
                data,
                options,
                ..
            } => self
                .build_repr(step, *object, structure, *model, *data, options)
                .map_err(|e| fail(step, e))?,
            Op::Vector { vector, .. } => {
                Value::Vector(self.vector_op(vector).map_err(|e| fail(step, e))?)
            }
            Op::Measure { measurement, .. } => {
                return self.measure(measurement).map_err(|e| fail(step, e));
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
            Op::Save { model, path } => {
                let net = self.model(*model).map_err(|e| fail(step, e))?;
                let p = self.ctx.out_dir.join(path);
                save_params(&net.params, &p).map_err(|e| fail(step, e))?;
                Value::None
            }
            Op::Plot { .. } => Value::None,
        };
        self.values.insert(step.id, value);
        Ok(StepOutput::Stored)
    }

    fn warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.borrow_mut())
    }
}

/// Writes parameters as safetensors (f64) with their `state_dict` names.
fn save_params(
    params: &crate::geometry::net::HostParams,
    path: &std::path::Path,
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
                t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                t.shape.clone(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, b, s)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F64, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    safetensors::serialize_to_file(views, &None, path).map_err(|e| e.to_string())
}
