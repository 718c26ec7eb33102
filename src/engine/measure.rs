//! Measurements: representations built from a model on a dataset, and
//! every quantity a plan can measure of them.

use super::*;
use crate::geometry::parts::{self, FimShape};
use std::borrow::Cow;

impl<O: Ops> Engine<O> {
    pub(super) fn load_data(&self, step: &Step, host: HostData) -> Result<Value<O>, BackendError> {
        let o = self.o();
        let mut shape = vec![host.info.n];
        shape.extend(&host.info.shape);
        let xs: Vec<f64> = host.x.iter().map(|&v| v as f64).collect();
        let x = o.upload(&shape, &xs).map_err(|e| fail(step, e))?;
        let y = host.y.iter().map(|&v| v as f64).collect();
        Ok(Value::Data(DataValue { host, x, y }))
    }

    pub(super) fn slots_for(net: &Net<O>, opts: &ReprOptions) -> Result<Vec<usize>, String> {
        if opts.layers.is_empty() {
            return Ok((0..net.slots.len()).collect());
        }
        Self::slots_named(net, opts.layers.iter().map(String::as_str))
    }

    /// The slots of the named layers in model order, each once: the order
    /// every representation uses.
    pub(super) fn slots_named<'n>(
        net: &Net<O>,
        names: impl Iterator<Item = &'n str>,
    ) -> Result<Vec<usize>, String> {
        let mut slots = names
            .map(|name| {
                net.slot(name)
                    .ok_or_else(|| format!("the model has no parameterised layer `{name}`"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        slots.sort_unstable();
        slots.dedup();
        Ok(slots)
    }

    pub(super) fn build_repr(
        &mut self,
        object: Object,
        structure: &Structure,
        model: StepId,
        data: StepId,
        opts: &ReprOptions,
        at: Option<&sharded::PartsAt>,
    ) -> Result<Value<O>, String> {
        use sharded::Built;
        if let Some(file) = &opts.file {
            return self.load_repr(model, file);
        }
        let net = self.model(model)?;
        let d = self.data(data)?;
        let slots = Self::slots_for(net, opts)?;
        if object == Object::Hessian {
            let (task, part) = (&opts.task, opts.hessian.unwrap_or_default());
            let e = |e: OpsError| e.to_string();
            let mut p = self.problem(net, d, slots.clone(), 1);
            p.batch = crate::plan::cost::hessian_batch(&net.spec, p.n);
            let kind = match structure {
                Structure::Dense => ReprKind::Fim(p.hessian_dense(task, part).map_err(e)?),
                Structure::BlockDiag | Structure::Diag => {
                    let kind = if *structure == Structure::Diag {
                        BlockKind::Diag
                    } else {
                        BlockKind::Dense
                    };
                    let kinds = vec![kind; slots.len()];
                    ReprKind::Fim(p.hessian_blocks(task, part, &kinds).map_err(e)?)
                }
                Structure::LowRank { rank } => ReprKind::Fim(
                    p.hessian_lowrank(task, part, rank.unwrap_or(1))
                        .map_err(e)?,
                ),
                Structure::Implicit => ReprKind::Implicit(p.layer_infos()),
                other => return Err(format!("a Hessian has no {} form", other.name())),
            };
            return Ok(Value::Repr(ReprValue {
                model,
                data,
                target: Target::Hessian {
                    task: task.clone(),
                    part,
                },
                slots,
                centered: false,
                shards: None,
                kind,
                form: Default::default(),
            }));
        }
        if object == Object::Ntk {
            let target = Target::Outputs;
            let p = self.problem(net, d, slots.clone(), net.outputs());
            let c = net.outputs();
            let n = d.host.info.n;
            let body = match structure {
                Structure::BlockDiag | Structure::Diag => {
                    // Layer by layer from the captures, batched by the
                    // widest per-example gradient a layer forms (as planned).
                    let mut p = p;
                    let width = crate::plan::cost::ntk_batch_width(&net.spec, structure);
                    p.batch = crate::plan::cost::batch_examples(n, c, width);
                    let diag = matches!(structure, Structure::Diag);
                    let v = p.ntk_example_blocks(diag).map_err(|e| e.to_string())?;
                    if diag {
                        NtkBody::Diag(v)
                    } else {
                        NtkBody::BlockDiag(
                            v.chunks_exact(c * c)
                                .map(|b| Mat::from_vec(c, c, b.to_vec()))
                                .collect(),
                        )
                    }
                }
                Structure::LowRank { rank: Some(k) } => {
                    // The best rank-k approximation: the top k eigenpairs.
                    let Built::Whole(full) =
                        self.ntk_full(&p, opts.shards, at, Keep::Host(Dtype::F64))?
                    else {
                        return Ok(Value::None);
                    };
                    // The kernel is given up to its decomposition, whose
                    // top k eigenvectors alone are kept (see
                    // `plan::cost::repr_peak`).
                    let full = full.into_f64().map_err(|e| e.to_string())?;
                    let m = full.rows;
                    let (ev, u) = self.eigh_top(full, *k)?;
                    let mut low = Mat::zeros(m, m);
                    for (e, &lambda) in ev.iter().enumerate() {
                        for r in 0..m {
                            let ur = u.get(r, e) * lambda;
                            for c in 0..m {
                                low.data[r * m + c] += ur * u.get(c, e);
                            }
                        }
                    }
                    NtkBody::Dense(Stored::from(low))
                }
                // Held in the run's precision unless it is centred next
                // (new values, derived on the host in f64).
                _ => {
                    match self.ntk_full(&p, opts.shards, at, store_for(self.o(), opts.centered))? {
                        Built::Whole(k) => NtkBody::Dense(k),
                        Built::PartWritten => return Ok(Value::None),
                    }
                }
            };
            let mut ntk = Ntk { c, n, body };
            if opts.centered {
                ntk = ntk.centered().map_err(|e| e.to_string())?;
            }
            return Ok(Value::Repr(ReprValue {
                model,
                data,
                target,
                slots,
                centered: opts.centered,
                shards: opts.shards,
                kind: ReprKind::Ntk(ntk),
                form: Default::default(),
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
        let mut p = self.problem(net, d, slots.clone(), m);
        // Batched by what the structure holds per example, as planned.
        let width = crate::plan::cost::fim_batch_width(&net.spec, structure);
        p.batch = crate::plan::cost::batch_examples(p.n, m, width);
        let kind = match structure {
            Structure::Dense => {
                match self.fim_full(&p, &target, FimShape::Dense, opts.shards, at)? {
                    Built::Whole(f) => ReprKind::Fim(f),
                    Built::PartWritten => return Ok(Value::None),
                }
            }
            Structure::LowRank { rank } => {
                ReprKind::Fim(p.fim_lowrank(&target, *rank).map_err(|e| e.to_string())?)
            }
            Structure::Implicit => ReprKind::Implicit(p.layer_infos()),
            s => {
                let kinds = slots
                    .iter()
                    .map(|&k| {
                        let layer = &net.spec.layers[net.slots[k].index];
                        BlockKind::for_structure(s, &layer.name, layer.layer.family())
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                // `EKFAC(refit = false)` equals KFAC: the checker warns.
                if let Structure::Ekfac {
                    initial_basis: true,
                    ..
                } = s
                {
                    ReprKind::Fim(self.ekfac_initial_basis(model, &p, &target, kinds.len())?)
                } else {
                    let shape = FimShape::Blocks(kinds);
                    match self.fim_full(&p, &target, shape, opts.shards, at)? {
                        Built::Whole(f) => ReprKind::Fim(f),
                        Built::PartWritten => return Ok(Value::None),
                    }
                }
            }
        };
        Ok(Value::Repr(ReprValue {
            model,
            data,
            target,
            slots,
            centered: false,
            shards: opts.shards,
            kind,
            form: Default::default(),
        }))
    }

    /// Resolves an operand, restricted to one layer when it names one: the
    /// stored representation itself (never a copy of it) for a whole one.
    pub(super) fn operand(&self, op: &Operand) -> Result<Cow<'_, ReprValue>, String> {
        let r = self.repr(op.repr)?;
        let Some(layer) = &op.layer else {
            return Ok(Cow::Borrowed(r));
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
            ReprKind::Fim(f) => ReprKind::Fim(
                f.layer(layer)
                    .map_err(|e| e.to_string())?
                    .ok_or("no such layer")?,
            ),
            ReprKind::Implicit(_) if r.form.inverse => {
                return Err(format!(
                    "layer `{layer}` of an implicit inverse is not its inverse block: take `dense(M)[\"{layer}\"]`"
                ))
            }
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
                let body = match r.shards {
                    Some(s) => Stored::from(parts::ntk_sharded(&p, s).map_err(|e| e.to_string())?),
                    None => p
                        .ntk_dense_in(false, store_for(self.o(), r.centered))
                        .map_err(|e| e.to_string())?,
                };
                let mut ntk = Ntk {
                    c: k.c,
                    n: k.n,
                    body: NtkBody::Dense(body),
                };
                if r.centered {
                    ntk = ntk.centered().map_err(|e| e.to_string())?;
                }
                ReprKind::Ntk(ntk)
            }
        };
        Ok(Cow::Owned(ReprValue {
            model: r.model,
            data: r.data,
            target: r.target.clone(),
            slots: vec![slot],
            centered: r.centered,
            shards: r.shards,
            kind,
            form: r.form,
        }))
    }

    pub(super) fn infos(&self, r: &ReprValue) -> Result<Vec<LayerInfo>, String> {
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
    pub(super) fn ekfac_initial_basis(
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
    pub(super) fn repr_problem(&self, r: &ReprValue) -> Result<Problem<'_, O>, String> {
        let net = self.model(r.model)?;
        let d = self.data(r.data)?;
        let m = self
            .problem(net, d, r.slots.clone(), 1)
            .outputs_of(&r.target)
            .0;
        let mut p = self.problem(net, d, r.slots.clone(), m);
        if let Target::Hessian { .. } = r.target {
            p.batch = crate::plan::cost::hessian_batch(&net.spec, p.n);
        }
        Ok(p)
    }

    /// `M v` for an implicit `M = (F + shift)^(±1)`: the Fisher's
    /// matrix-free product, or conjugate gradients for the inverse.
    pub(super) fn implicit_mv(&self, r: &ReprValue, v: &[f64]) -> Result<Vec<f64>, String> {
        let p = self.repr_problem(r)?;
        let mut fv = |x: &[f64]| match r.shards {
            Some(k) => parts::implicit_mv_sharded(&p, &r.target, x, k).map_err(|e| e.to_string()),
            None => p.implicit_mv(&r.target, x).map_err(|e| e.to_string()),
        };
        let ImplicitForm { shift, inverse } = r.form;
        if inverse {
            return conjugate_gradient(&mut fv, v, shift, 1e-14, 10 * v.len().max(10));
        }
        let mut y = fv(v)?;
        if shift != 0.0 {
            y.iter_mut().zip(v).for_each(|(a, b)| *a += shift * b);
        }
        Ok(y)
    }

    /// The implicit representation materialised as `kind` (Diag for its
    /// diagonal and trace, Dense for comparisons).
    pub(super) fn implicit_fim(&self, r: &ReprValue, kind: BlockKind) -> Result<Fim, String> {
        if r.form.inverse {
            return self.implicit_columns(r);
        }
        if r.form.shift != 0.0 {
            let plain = ReprValue {
                form: Default::default(),
                ..r.clone()
            };
            let f = self.implicit_fim(&plain, kind)?;
            return f.damp(r.form.shift).map_err(|e| e.to_string());
        }
        let p = self.repr_problem(r)?;
        let shape = match kind {
            BlockKind::Dense => FimShape::Dense,
            k => FimShape::Blocks(vec![k; p.ordered_slots().len()]),
        };
        if let Some(k) = r.shards {
            return parts::fim_sharded(&p, &r.target, &shape, k).map_err(|e| e.to_string());
        }
        match shape {
            FimShape::Dense => p.fim_dense(&r.target),
            FimShape::Blocks(kinds) => p.fim_blocks(&r.target, &kinds),
        }
        .map_err(|e| e.to_string())
    }

    pub(super) fn dense(&self, r: &ReprValue) -> Result<Mat, String> {
        Ok(match &r.kind {
            ReprKind::Fim(f) => f.to_dense().map_err(|e| e.to_string())?,
            ReprKind::Implicit(_) => self
                .implicit_fim(r, BlockKind::Dense)?
                .to_dense()
                .map_err(|e| e.to_string())?,
            ReprKind::Ntk(k) => k.to_dense().map_err(|e| e.to_string())?,
        })
    }

    /// A dense symmetric matrix's eigenpairs (ascending): on the backend's
    /// device where [`Ops::device_linalg`] says it decomposes there, else on
    /// the host.
    /// The top `k` eigenpairs of a matrix given up to its decomposition
    /// ([`linalg::eigh_top`]; on the backend's device where it decomposes
    /// there, with its top `k` eigenvectors copied out).
    fn eigh_top(&self, m: Mat, k: usize) -> Result<(Vec<f64>, Mat), String> {
        if !self.o().device_linalg() {
            return linalg::eigh_top(m, k).map_err(|e| e.to_string());
        }
        let (ev, u) = self.o().eigh(&m).map_err(|e| e.to_string())?;
        drop(m);
        let n = u.rows;
        let k = k.min(n);
        let mut top = Mat::zeros(n, k);
        for r in 0..n {
            for (j, e) in (n - k..n).enumerate() {
                top.data[r * k + j] = u.get(r, e);
            }
        }
        Ok((ev[n - k..].to_vec(), top))
    }

    pub(super) fn eigenvalues(
        &self,
        r: &ReprValue,
        top: Option<usize>,
    ) -> Result<Vec<f64>, String> {
        let mut ev = match &r.kind {
            // A few top eigenvalues of a large matrix: Lanczos on `mv`
            // instead of a full O(P³) decomposition.
            ReprKind::Fim(f) if top.is_some_and(|k| k <= 64) && f.dim() > 2000 => {
                let k = top.unwrap_or(1);
                linalg::with_fallible_op(&mut |v| f.mv(v), |op| {
                    linalg::top_eigs_op(f.dim(), k, op, 1e-10)
                })
                .map_err(|e| e.to_string())?
            }
            // Dense spectra on the backend's device where it decomposes
            // there: a 10,000-square NTK takes minutes on the host's cores
            // (a kernel held there is decomposed in place, no copies).
            ReprKind::Ntk(Ntk {
                body: NtkBody::Dense(m),
                ..
            }) if self.o().device_linalg() && m.device().is_none() => {
                let m = m.as_f64().map_err(|e| e.to_string())?;
                let mut ev = self.o().eigvalsh(&m).map_err(|e| e.to_string())?;
                ev.reverse();
                ev
            }
            ReprKind::Fim(f) => f
                .eigenvalues_in(&*linalg_of(self.o()))
                .map_err(|e| e.to_string())?,
            ReprKind::Ntk(k) => k.eigenvalues().map_err(|e| e.to_string())?,
            ReprKind::Implicit(infos) => {
                let dim: usize = infos.iter().map(|l| l.numel).sum();
                let k = top.unwrap_or(dim).min(dim);
                linalg::with_fallible_op(&mut |v| self.implicit_mv(r, v), |op| {
                    linalg::top_eigs_op(dim, k, op, 1e-10)
                })?
            }
        };
        if let Some(k) = top {
            ev.truncate(k);
        }
        Ok(ev)
    }

    pub(super) fn measure(&self, m: &Measurement) -> Result<StepOutput, String> {
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
                    ReprKind::Fim(f) => f.trace().map_err(|e| e.to_string())?,
                    ReprKind::Ntk(k) => k.trace().map_err(|e| e.to_string())?,
                    ReprKind::Implicit(_) => self
                        .implicit_fim(&r, BlockKind::Diag)?
                        .trace()
                        .map_err(|e| e.to_string())?,
                })
            }
            Measurement::Frobenius { m } => {
                let r = self.operand(m)?;
                scalar(match &r.kind {
                    ReprKind::Fim(f) => f.frobenius().map_err(|e| e.to_string())?,
                    ReprKind::Ntk(k) => k.frobenius().map_err(|e| e.to_string())?,
                    ReprKind::Implicit(_) => self.dense(&r)?.frobenius(),
                })
            }
            Measurement::SpectralNorm { m } => {
                let r = self.operand(m)?;
                let ev = self.eigenvalues(&r, Some(1))?;
                scalar(ev.first().copied().unwrap_or(0.0))
            }
            Measurement::Diagonal { m: op } => {
                let r = self.operand(op)?;
                match &r.kind {
                    ReprKind::Ntk(k) => vector(k.diag().map_err(|e| e.to_string())?),
                    _ => vector(self.vector_result(m)?.data),
                }
            }
            Measurement::Mv { .. } | Measurement::Solve { .. } => {
                vector(self.vector_result(m)?.data)
            }
            Measurement::VTMv { m, v } => {
                let r = self.operand(m)?;
                let v = self.vector(*v)?.gather(&self.infos(&r)?)?;
                scalar(match &r.kind {
                    ReprKind::Fim(f) => f.vtmv(&v).map_err(|e| e.to_string())?,
                    _ => {
                        let fv = self.implicit_mv(&r, &v)?;
                        v.iter().zip(&fv).map(|(a, b)| a * b).sum()
                    }
                })
            }
            Measurement::Eigenvalues { m, top } => {
                let r = self.operand(m)?;
                vector(self.eigenvalues(&r, Some(*top))?)
            }
            Measurement::Eigenvectors { m, top } => {
                let (_, vectors) = self.eigenvectors(m, *top)?;
                let dim = vectors.first().map_or(0, Vec::len);
                StepOutput::Tensor {
                    tensor: HostTensor {
                        shape: vec![vectors.len(), dim],
                        data: vectors.concat(),
                    },
                }
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
                    let t = match &k.body {
                        NtkBody::Dense(m) => kernel::trace_kernel_of(m, k.c, k.n),
                        _ => k.to_dense().map(|d| kernel::trace_kernel(&d, k.c, k.n)),
                    }
                    .map_err(|e| e.to_string())?;
                    let ym = crate::linalg::Mat::from_vec(k.n, k.c, y);
                    let yy = ym.matmul(&ym.transpose());
                    return Ok(scalar(kernel::alignment_matrices(&t, &yy, *centered)));
                }
                let yv = kernel::target_vector(&y, k.n, k.c);
                // A dense kernel is read where it is stored, in its precision.
                scalar(
                    match &k.body {
                        NtkBody::Dense(m) => kernel::alignment_stored(m, &yv, k.c, k.n, *centered),
                        _ => k
                            .to_dense()
                            .map(|d| kernel::alignment(&d, &yv, k.c, k.n, *centered)),
                    }
                    .map_err(|e| e.to_string())?,
                )
            }
            Measurement::RelError { a, b } => {
                let ra = self.operand(a)?;
                let rb = self.operand(b)?;
                if let (ReprKind::Fim(fa), ReprKind::Fim(fb)) = (&ra.kind, &rb.kind) {
                    if let Some(e) = blockwise_rel_error(fa, fb).map_err(|e| e.to_string())? {
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
                // What the representation holds, in the precision it holds
                // it (as the plan counts it: `plan::cost::dense_dtype`).
                let r = self.operand(m)?;
                scalar(match &r.kind {
                    ReprKind::Fim(f) => f.bytes() as f64,
                    ReprKind::Ntk(k) => k.bytes() as f64,
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
            Measurement::Norm { v } => scalar(
                self.vector(*v)?
                    .data
                    .iter()
                    .map(|x| x * x)
                    .sum::<f64>()
                    .sqrt(),
            ),
            Measurement::Dot { a, b } => scalar(self.vector(*a)?.dot(self.vector(*b)?)?),
            Measurement::Influence {
                m,
                model,
                data,
                test,
                damping,
                example,
                mean,
            } => {
                let s = self.influence(m, *model, *data, *test, *damping)?;
                match (example, mean) {
                    (Some(i), _) => scalar(*s.get(*i).ok_or("no such example")?),
                    (None, true) => scalar(s.iter().sum::<f64>() / s.len().max(1) as f64),
                    (None, false) => vector(s),
                }
            }
            Measurement::Vector { v } => {
                let v = self.vector(*v)?;
                match v.rows {
                    // A function-space vector: `[n, C]`.
                    Some(n) if n > 0 => StepOutput::Tensor {
                        tensor: HostTensor {
                            shape: vec![n, v.data.len() / n],
                            data: v.data.clone(),
                        },
                    },
                    _ => vector(v.data.clone()),
                }
            }
        })
    }
}

/// `‖A − B‖_F / ‖B‖_F` block by block when both are block-diagonal on the
/// same layers: the off-diagonal blocks are zero on both sides, so the
/// whole matrices (P² entries each) are never formed.
pub(super) fn blockwise_rel_error(
    a: &Fim,
    b: &Fim,
) -> Result<Option<f64>, crate::geometry::repr::ReprError> {
    let (FimBody::Blocks(ba), FimBody::Blocks(bb)) = (&a.body, &b.body) else {
        return Ok(None);
    };
    if a.layers != b.layers || ba.len() != bb.len() {
        return Ok(None);
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for ((l, x), y) in a.layers.iter().zip(ba).zip(bb) {
        let (dx, dy) = (x.to_dense(l)?, y.to_dense(l)?);
        diff += dx
            .data
            .iter()
            .zip(&dy.data)
            .map(|(p, q)| (p - q) * (p - q))
            .sum::<f64>();
        norm += dy.data.iter().map(|q| q * q).sum::<f64>();
    }
    Ok(Some(diff.sqrt() / norm.sqrt()))
}

/// `[n, C]` targets: one-hot rows for class labels, raw values otherwise.
pub(super) fn targets_matrix<T>(d: &DataValue<T>, c: usize) -> Result<Vec<f64>, String> {
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
pub(super) fn conjugate_gradient(
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

/// Where a dense NTK is held: on the device where the backend keeps
/// results there, else on the host in the run's precision; on the host in
/// f64 when it is centred next (new values derived there; see
/// `plan::cost::dense_dtype`).
fn store_for<O: Ops>(o: &O, centered: bool) -> Keep {
    if centered {
        Keep::Host(Dtype::F64)
    } else {
        crate::geometry::ops::keep_of(o)
    }
}
