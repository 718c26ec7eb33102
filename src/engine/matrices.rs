//! Representations computed from others: `A + B`, `c * A`, `A + λ`,
//! `inverse(M)`, `power(M, p)`, `dense(M)` (see `geometry::algebra`). The
//! result keeps the first operand's model, data and layers, so every
//! measurement applies to it.

use super::*;
use crate::geometry::repr::Block;
use crate::geometry::repr_io;
use crate::plan::MatrixOp;
use std::borrow::Cow;

impl<O: Ops> Engine<O> {
    /// The stored Fisher of a resolved operand; an implicit one only
    /// materialised for `dense(M)`.
    fn fim_of<'r>(&self, r: &'r ReprValue, densify: bool) -> Result<Cow<'r, Fim>, String> {
        match &r.kind {
            ReprKind::Fim(f) => Ok(Cow::Borrowed(f)),
            ReprKind::Implicit(_) if densify => {
                Ok(Cow::Owned(self.implicit_fim(r, BlockKind::Dense)?))
            }
            ReprKind::Implicit(_) => Err(
                "matrix algebra on Fim(Implicit) needs it stored: write `dense(M)` first".into(),
            ),
            ReprKind::Ntk(_) => Err("matrix algebra applies to Fisher representations".into()),
        }
    }

    pub(super) fn matrix_op(&self, m: &MatrixOp) -> Result<Value<O>, String> {
        let base = self.operand(m.operands()[0])?;
        if let (ReprKind::Implicit(_), false) = (&base.kind, matches!(m, MatrixOp::Dense { .. })) {
            return self.implicit_op(base.into_owned(), m);
        }
        let f = self.fim_of(&base, matches!(m, MatrixOp::Dense { .. }))?;
        let out = match m {
            MatrixOp::Combine { b, ca, cb, .. } => {
                let rb = self.operand(b)?;
                f.combine(&*self.fim_of(&rb, false)?, *ca, *cb)
            }
            MatrixOp::Scale { factor, .. } => f.scale(*factor),
            MatrixOp::Damp { damping, .. } => f.damp(*damping),
            MatrixOp::Power { power, .. } => f.pow(*power),
            MatrixOp::Dense { .. } => f.densified(),
        }
        .map_err(|e| e.to_string())?;
        let mut r = base.into_owned();
        r.kind = ReprKind::Fim(out);
        Ok(Value::Repr(r))
    }
}

impl<O: Ops> Engine<O> {
    /// `save F to "path"`: into the run folder, as weights are.
    pub(super) fn save_repr(&self, id: StepId, path: &str) -> Result<(), String> {
        let r = self.repr(id)?;
        let f = self.fim_of(r, false)?;
        let p = self.ctx.out_dir.join(path);
        let data = repr_io::to_bytes(&f, &repr_io::structure_of(&f))?;
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        }
        crate::exec::run_dir::write_atomic(&p, &data)
            .map_err(|e| format!("cannot write `{}`: {e}", p.display()))
    }

    /// `fim("path", model = net)`: a saved representation on `net`'s layers
    /// (read relative to the .ngx file, as every input).
    pub(super) fn load_repr(&self, model: StepId, file: &str) -> Result<Value<O>, String> {
        let net = self.model(model)?;
        let (_, mut f) = repr_io::load(&self.ctx.base_dir.join(file))?;
        if self.o().holds_on_device() {
            // Where the run keeps its dense matrices on the device, a
            // loaded one joins them: its operations then run as those of
            // the matrix that was saved did.
            f = dense_to_device(self.o(), f).map_err(|e| e.to_string())?;
        }
        let mut slots = Vec::with_capacity(f.layers.len());
        for l in &mut f.layers {
            let s = net
                .slot(&l.name)
                .ok_or_else(|| format!("the model has no parameterised layer `{}`", l.name))?;
            l.full_offset = net.slots[s].offset;
            slots.push(s);
        }
        Ok(Value::Repr(ReprValue {
            form: Default::default(),
            model,
            data: model,
            target: Target::Fim {
                variant: FisherVariant::True,
                task: crate::plan::Task::Classification,
            },
            slots,
            centered: false,
            shards: None,
            kind: ReprKind::Fim(f),
        }))
    }
}

/// A Fisher's dense matrices (the whole matrix, BlockDiag's blocks) held
/// on `o`'s device in the run's dtype, KFAC's factors and EKFAC's bases
/// there in f64: where the run's own are.
fn dense_to_device<O: Ops>(o: &O, mut f: Fim) -> crate::geometry::ops::OpsResult<Fim> {
    use crate::geometry::ops::OpsError;
    use crate::linalg::Stored;
    let up = |m: &Stored| -> crate::geometry::ops::OpsResult<Stored> {
        let m = m.as_f64().map_err(|e| OpsError(e.to_string()))?;
        Ok(Stored::Device(
            o.hold(o.upload(&[m.rows, m.cols], &m.data)?)?,
        ))
    };
    match &mut f.body {
        FimBody::Dense(m) => *m = up(m)?,
        FimBody::Blocks(blocks) => {
            for b in blocks.iter_mut() {
                if let Block::Dense(m) = b {
                    *m = up(m)?;
                }
            }
            crate::geometry::build::factors_to_device(o, blocks)?;
        }
        FimBody::LowRank(_) => {}
    }
    Ok(f)
}

impl<O: Ops> Engine<O> {
    /// `Implicit + λ` and `inverse(Implicit + λ)`: still matrix-free, the
    /// inverse's products by conjugate gradients.
    fn implicit_op(&self, mut r: ReprValue, m: &MatrixOp) -> Result<Value<O>, String> {
        match m {
            MatrixOp::Damp { damping, .. } if !r.form.inverse => r.form.shift += damping,
            MatrixOp::Power { power, .. } if *power == -1.0 && !r.form.inverse => {
                if r.form.shift <= 0.0 {
                    return Err(
                        "the inverse of a Fisher by conjugate gradients needs damping: write `inverse(I + λ)` with λ > 0".into(),
                    );
                }
                r.form.inverse = true
            }
            _ => {
                return Err(
                    "Fim(Implicit) takes `+ λ` and then `inverse`; write `dense(M)` for more"
                        .into(),
                )
            }
        }
        Ok(Value::Repr(r))
    }

    /// An implicit representation materialised column by column from its
    /// products (`dense(inverse(I + λ))`, its trace, diagonal...).
    pub(super) fn implicit_columns(&self, r: &ReprValue) -> Result<Fim, String> {
        let infos = self.infos(r)?;
        let p: usize = infos.iter().map(|l| l.numel).sum();
        let mut m = Mat::zeros(p, p);
        let mut e = vec![0.0; p];
        for c in 0..p {
            e[c] = 1.0;
            let col = self.implicit_mv(r, &e)?;
            e[c] = 0.0;
            for (i, x) in col.iter().enumerate() {
                m.set(i, c, *x);
            }
        }
        // Symmetric up to the solver's tolerance: symmetrise.
        let mt = m.transpose();
        m.data
            .iter_mut()
            .zip(&mt.data)
            .for_each(|(a, b)| *a = 0.5 * (*a + b));
        Ok(Fim {
            layers: infos,
            body: FimBody::Dense(m.into()),
            n: self.data(r.data)?.host.info.n,
            refit: false,
        })
    }
}
