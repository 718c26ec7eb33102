//! Parameter-space vectors as values: each knows which layer every entry
//! belongs to (as NNGeometry's `PVector`), so a layer's part, a product with
//! a representation restricted to some layers and the vector results of
//! `mv`, `solve` and `diag` combine by layer name.

use super::*;

/// One layer's entries in a [`PVec`].
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Part {
    /// The layer's PyTorch module path.
    pub name: String,
    /// Where its entries start in [`PVec::data`].
    pub offset: usize,
    pub numel: usize,
}

/// A parameter-space vector: entries laid out layer by layer.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct PVec {
    pub data: Vec<f64>,
    pub parts: Vec<Part>,
    /// A function-space vector (`jvp(J, v)`): its examples, the entries
    /// being `[n, C]` row-major under one part.
    pub rows: Option<usize>,
}

impl PVec {
    /// A vector over every parameter of `net`, in its flat order.
    pub fn of_model<O: Ops>(net: &Net<O>, data: Vec<f64>) -> Result<PVec, String> {
        if data.len() != net.num_params() {
            return Err(format!(
                "a vector of {} entries for a model of {} parameters",
                data.len(),
                net.num_params()
            ));
        }
        let parts = net
            .slots
            .iter()
            .map(|s| Part {
                name: s.name.clone(),
                offset: s.offset,
                numel: s.numel,
            })
            .collect();
        Ok(PVec {
            data,
            parts,
            rows: None,
        })
    }

    /// A vector laid out like a representation over `layers`.
    pub fn of_layers(layers: &[LayerInfo], data: Vec<f64>) -> PVec {
        let parts = layers
            .iter()
            .map(|l| Part {
                name: l.name.clone(),
                offset: l.offset,
                numel: l.numel,
            })
            .collect();
        PVec {
            data,
            parts,
            rows: None,
        }
    }

    /// The entries of layer `name`.
    pub fn part(&self, name: &str) -> Result<&[f64], String> {
        let p = self.parts.iter().find(|p| p.name == name).ok_or_else(|| {
            let have: Vec<&str> = self.parts.iter().map(|p| p.name.as_str()).collect();
            format!(
                "the vector has no part for layer `{name}` (it covers {})",
                have.join(", ")
            )
        })?;
        Ok(&self.data[p.offset..p.offset + p.numel])
    }

    /// One layer's part as a vector of its own.
    pub fn layer(&self, name: &str) -> Result<PVec, String> {
        let data = self.part(name)?.to_vec();
        Ok(PVec {
            parts: vec![Part {
                name: name.into(),
                offset: 0,
                numel: data.len(),
            }],
            data,
            rows: self.rows,
        })
    }

    /// Entries for `layers`, in their order (a representation's layout).
    pub fn gather(&self, layers: &[LayerInfo]) -> Result<Vec<f64>, String> {
        let mut out = Vec::with_capacity(layers.iter().map(|l| l.numel).sum());
        for l in layers {
            let part = self.part(&l.name)?;
            if part.len() != l.numel {
                return Err(format!(
                    "layer `{}` has {} entries in the vector but {} in the representation",
                    l.name,
                    part.len(),
                    l.numel
                ));
            }
            out.extend_from_slice(part);
        }
        Ok(out)
    }

    /// `f(a, b)` entry by entry, matched by layer; laid out like `self`.
    pub fn zip_with(&self, other: &PVec, f: impl Fn(f64, f64) -> f64) -> Result<PVec, String> {
        if self.parts.len() != other.parts.len() {
            return Err(format!(
                "vectors over {} and {} layers",
                self.parts.len(),
                other.parts.len()
            ));
        }
        let mut data = vec![0.0; self.data.len()];
        for p in &self.parts {
            let b = other.part(&p.name)?;
            if b.len() != p.numel {
                return Err(format!(
                    "layer `{}` has {} and {} entries",
                    p.name,
                    p.numel,
                    b.len()
                ));
            }
            let a = &self.data[p.offset..p.offset + p.numel];
            for ((o, x), y) in data[p.offset..p.offset + p.numel].iter_mut().zip(a).zip(b) {
                *o = f(*x, *y);
            }
        }
        Ok(PVec {
            data,
            parts: self.parts.clone(),
            rows: self.rows,
        })
    }

    pub fn map(&self, f: impl Fn(f64) -> f64) -> PVec {
        PVec {
            data: self.data.iter().map(|x| f(*x)).collect(),
            parts: self.parts.clone(),
            rows: self.rows,
        }
    }

    pub fn dot(&self, other: &PVec) -> Result<f64, String> {
        Ok(self.zip_with(other, |x, y| x * y)?.data.iter().sum())
    }
}

impl<O: Ops> Engine<O> {
    /// `with_weights(model, v)`: a copy of the model whose layers covered
    /// by `v` take `v`'s entries; its initial weights are these.
    pub(super) fn with_weights(&self, model: StepId, v: StepId) -> Result<Value<O>, String> {
        let net = self.model(model)?;
        let v = self.vector(v)?;
        let mut w = net.params.flat();
        for part in &v.parts {
            let slot = net
                .slots
                .iter()
                .find(|s| s.name == part.name)
                .ok_or_else(|| format!("the model has no layer `{}`", part.name))?;
            if slot.numel != part.numel {
                return Err(format!(
                    "layer `{}` has {} parameters but the vector {} entries",
                    part.name, slot.numel, part.numel
                ));
            }
            w[slot.offset..slot.offset + slot.numel]
                .copy_from_slice(&v.data[part.offset..part.offset + part.numel]);
        }
        let mut params = net.params.clone();
        params.set_flat(&w).map_err(|e| e.to_string())?;
        let out = net
            .with_params(self.o(), params)
            .map_err(|e| e.to_string())?;
        Ok(Value::Model(Box::new(out), w))
    }

    pub(super) fn vector_op(
        &self,
        v: &VectorOp,
        at: Option<&sharded::PartsAt>,
    ) -> Result<sharded::Built<PVec>, String> {
        let on_model = |model: &StepId, data: Vec<f64>| PVec::of_model(self.model(*model)?, data);
        let whole = match v {
            VectorOp::Random { model, seed } => {
                let p = self.model(*model)?.num_params();
                let mut rng = Rng::new(*seed);
                on_model(model, (0..p).map(|_| rng.normal()).collect())
            }
            VectorOp::Weights { model } => on_model(model, self.model(*model)?.params.flat()),
            VectorOp::Eigenvector { m, rank } => self.eigenvector(m, *rank),
            VectorOp::InitialWeights { model } => match self.values.get(model) {
                Some(Value::Model(_, w0)) => on_model(model, w0.clone()),
                _ => Err("not a model".into()),
            },
            VectorOp::Grad {
                model,
                data,
                shards,
                ..
            } => {
                let net = self.model(*model)?;
                let d = self.data(*data)?;
                let p = self.problem(net, d, (0..net.slots.len()).collect(), 1);
                // A sharded gradient in a part task writes its part instead.
                return match self.grad_full(&p, d.host.info.classes.is_none(), *shards, at)? {
                    sharded::Built::Whole(g) => on_model(model, g).map(sharded::Built::Whole),
                    sharded::Built::PartWritten => Ok(sharded::Built::PartWritten),
                };
            }
            VectorOp::Add { a, b } => self.vector(*a)?.zip_with(self.vector(*b)?, |x, y| x + y),
            VectorOp::Sub { a, b } => self.vector(*a)?.zip_with(self.vector(*b)?, |x, y| x - y),
            VectorOp::Mul { a, b } => self.vector(*a)?.zip_with(self.vector(*b)?, |x, y| x * y),
            VectorOp::Div { a, b } => self.vector(*a)?.zip_with(self.vector(*b)?, |x, y| x / y),
            VectorOp::Scale { factor, v } => Ok(self.vector(*v)?.map(|x| x * factor)),
            VectorOp::Part { v, layer } => self.vector(*v)?.layer(layer),
            VectorOp::Measured { measurement } => self.vector_result(measurement),
            VectorOp::Jvp { model, data, v } => self.jvp(*model, *data, *v),
            VectorOp::Vjp { model, data, u } => self.vjp(*model, *data, *u),
        };
        whole.map(sharded::Built::Whole)
    }

    /// `J v` on every example of `data`, `v` covering some of the model's
    /// layers (the Jacobian restricted to them).
    fn jvp(&self, model: StepId, data: StepId, v: StepId) -> Result<PVec, String> {
        let net = self.model(model)?;
        let d = self.data(data)?;
        let v = self.vector(v)?;
        let slots = Self::slots_named(net, v.parts.iter().map(|p| p.name.as_str()))?;
        let p = self.problem(net, d, slots, net.outputs());
        let x = v.gather(&p.layer_infos())?;
        let out = p.jvp_outputs(&x).map_err(|e| e.to_string())?;
        // Only vectors on the same data meet (the checker sees to it).
        let name = format!("outputs(#{})", data.0);
        Ok(PVec {
            parts: vec![Part {
                name,
                offset: 0,
                numel: out.len(),
            }],
            data: out,
            rows: Some(d.host.info.n),
        })
    }

    /// `Jᵀ u` over every parameter of the model.
    fn vjp(&self, model: StepId, data: StepId, u: StepId) -> Result<PVec, String> {
        let net = self.model(model)?;
        let d = self.data(data)?;
        let u = self.vector(u)?;
        let p = self.problem(net, d, (0..net.slots.len()).collect(), net.outputs());
        let g = p.vjp_params(&u.data).map_err(|e| e.to_string())?;
        PVec::of_model(net, g)
    }

    /// The eigenvector of `m` with the `rank`-th largest eigenvalue.
    fn eigenvector(&self, m: &Operand, rank: usize) -> Result<PVec, String> {
        let (infos, mut vectors) = self.eigenvectors(m, rank)?;
        let u = vectors.swap_remove(rank - 1);
        Ok(PVec::of_layers(&infos, u))
    }

    /// The unit eigenvectors of the `top` largest eigenvalues of `m`, in
    /// order, each with its largest entry positive: each stored
    /// structure's own eigenpairs ([`Fim::eigenpairs`]); Lanczos on the
    /// product for a large Dense Fisher and for an Implicit one.
    pub(super) fn eigenvectors(
        &self,
        m: &Operand,
        top: usize,
    ) -> Result<(Vec<LayerInfo>, Vec<Vec<f64>>), String> {
        let r = self.operand(m)?;
        let infos = self.infos(&r)?;
        let dim: usize = infos.iter().map(|l| l.numel).sum();
        if top == 0 || top > dim {
            return Err(format!(
                "eigenvector {top} of a {dim} × {dim} matrix does not exist"
            ));
        }
        let lanczos = |op: &mut dyn FnMut(&[f64]) -> Vec<f64>| {
            linalg::top_eigpairs_op(dim, top, op, 1e-12)
                .map(|(_, mut v)| {
                    v.iter_mut().for_each(|u| linalg::fix_sign(u));
                    v
                })
                .ok_or_else(|| "the eigenvector iteration met a non-finite product".to_string())
        };
        let vectors = match &r.kind {
            ReprKind::Fim(f) if matches!(f.body, FimBody::Dense(_)) && dim > 2000 && top <= 64 => {
                linalg::with_fallible_op(&mut |v| f.mv(v), lanczos).map_err(|e| e.to_string())??
            }
            ReprKind::Fim(f) => f.eigenpairs(top).map_err(|e| e.to_string())?.1,
            ReprKind::Implicit(_) => {
                linalg::with_fallible_op(&mut |v| self.implicit_mv(&r, v), lanczos)??
            }
            ReprKind::Ntk(_) => return Err("an NTK's eigenvectors live on examples".into()),
        };
        Ok((infos, vectors))
    }

    /// `(M + λ)⁻¹ v` in the representation's order: its structure's solve,
    /// or conjugate gradients on products for an implicit one.
    pub(super) fn solve_repr(
        &self,
        r: &ReprValue,
        v: &[f64],
        damping: f64,
    ) -> Result<Vec<f64>, String> {
        match &r.kind {
            ReprKind::Fim(f) => f
                .solve_in(v, damping, &*linalg_of(self.o()))
                .map_err(|e| e.to_string()),
            _ => {
                let mut op = |x: &[f64]| self.implicit_mv(r, x);
                measure::conjugate_gradient(&mut op, v, damping, 1e-12, 10 * v.len().max(10))
            }
        }
    }

    /// The parameter-space vector a measurement yields (`mv`, `solve`,
    /// `diag` of a Fisher), laid out on the representation's layers.
    pub(super) fn vector_result(&self, m: &Measurement) -> Result<PVec, String> {
        let (op, v) = match m {
            Measurement::Mv { m, v } | Measurement::Solve { m, v, .. } => (m, Some(*v)),
            Measurement::Diagonal { m } => (m, None),
            _ => return Err("this measurement is not a parameter-space vector".into()),
        };
        let r = self.operand(op)?;
        let infos = self.infos(&r)?;
        let v = match v {
            Some(v) => self.vector(v)?.gather(&infos)?,
            None => Vec::new(),
        };
        let data = match (m, &r.kind) {
            (Measurement::Mv { .. }, ReprKind::Fim(f)) => f.mv(&v).map_err(|e| e.to_string())?,
            (Measurement::Mv { .. }, _) => self.implicit_mv(&r, &v)?,
            (Measurement::Solve { damping, .. }, _) => self.solve_repr(&r, &v, *damping)?,
            (_, ReprKind::Fim(f)) => f.diag().map_err(|e| e.to_string())?,
            (_, _) => self
                .implicit_fim(&r, BlockKind::Diag)?
                .diag()
                .map_err(|e| e.to_string())?,
        };
        Ok(PVec::of_layers(&infos, data))
    }
}
