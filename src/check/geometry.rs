//! The value of a `let` (a representation, dataset, model or vector)
//! and whether a model and a dataset fit each other; representations are
//! checked in `repr.rs`, measurements in `measure.rs`.

use super::env::{DataV, ModelV, Val};
use super::Checker;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::{Layer, Op, Transform};
use crate::syntax::{Expr, ExprKind, Span};

pub const STRUCTURES: [&str; 9] = [
    "Dense",
    "BlockDiag",
    "Diag",
    "KFAC",
    "EKFAC",
    "LowRank",
    "QuasiDiag",
    "Implicit",
    "mix",
];
pub(super) const NTK_STRUCTURES: [&str; 5] = ["Dense", "BlockDiag", "Diag", "LowRank", "Implicit"];
pub const MEASUREMENTS: [&str; 18] = [
    "trace",
    "frobenius",
    "spectral_norm",
    "diag",
    "mv",
    "vTMv",
    "solve",
    "eigenvalues",
    "eigenvectors",
    "effective_rank",
    "alignment",
    "rel_error",
    "memory",
    "loss",
    "accuracy",
    "norm",
    "dot",
    "influence",
];
use super::vectors::VECTORS;

impl<'a> Checker<'a> {
    /// The value of a `let`: a representation, dataset, model or vector.
    pub(super) fn value(&mut self, e: &'a Expr, name: &str) -> Option<Val> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Repr { .. } => self.repr_expr(d, name).map(|r| Val::Repr(Box::new(r))),
            ExprKind::Pipe { .. } => self.data_expr(d, name).map(Val::Data),
            ExprKind::Binary { .. } | ExprKind::Neg(_) if self.looks_matrix(d) => {
                self.matrix_expr(d, name).map(|r| Val::Repr(Box::new(r)))
            }
            ExprKind::Call { callee, .. }
                if super::matrices::MATRIX_FUNCTIONS.contains(&callee.name.as_str()) =>
            {
                self.matrix_expr(d, name).map(|r| Val::Repr(Box::new(r)))
            }
            ExprKind::Binary { .. } => self.vector_expr(d, name).map(Val::Vector),
            ExprKind::Index { base, .. } if self.looks_vector(base) => {
                self.vector_expr(d, name).map(Val::Vector)
            }
            ExprKind::Ident(n) => match self.lookup_val(n) {
                Some(v) => Some(v),
                None => {
                    self.error(Diagnostic::new(
                        ErrorKind::Undefined {
                            what: "name".into(),
                            name: n.clone(),
                        },
                        d.span,
                        "not defined",
                    ));
                    None
                }
            },
            ExprKind::Call { callee, .. } => {
                let f = callee.name.as_str();
                if super::data::SOURCES.contains(&f) {
                    self.data_expr(d, name).map(Val::Data)
                } else if f == "sequential"
                    || f == "mlp"
                    || f == "onnx"
                    || self.defs.contains_key(f)
                {
                    self.model_expr(d, name).map(Val::Model)
                } else if VECTORS.contains(&f) || super::vectors::VECTOR_MEASUREMENTS.contains(&f) {
                    self.vector_expr(d, name).map(Val::Vector)
                } else if f == "Fim" || f == "Ntk" {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: "a representation needs a model and data".into(),
                            },
                            d.span,
                            "of which model, on which data?",
                        )
                        .hint(format!("write `{} of MODEL on DATA`", self.expr_text(d))),
                    );
                    None
                } else if MEASUREMENTS.contains(&f) {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: format!("`{f}` is a measurement"),
                            },
                            d.span,
                            "measurements are not stored in names",
                        )
                        .hint(format!("write `measure {}`", self.expr_text(d))),
                    );
                    None
                } else {
                    let mut all: Vec<&str> = super::data::SOURCES.to_vec();
                    all.extend(VECTORS);
                    all.extend(["sequential", "mlp", "onnx", "Fim", "Ntk"]);
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Unknown {
                                what: "function".into(),
                                name: f.into(),
                            },
                            callee.span,
                            "unknown",
                        )
                        .hint_opt(did_you_mean(f, all)),
                    );
                    None
                }
            }
            _ => {
                let found = self.describe(d);
                self.error(Diagnostic::new(
                    ErrorKind::TypeMismatch {
                        expected: "a representation, dataset, model or vector".into(),
                        found,
                    },
                    d.span,
                    "cannot be named with `let`",
                ));
                None
            }
        }
    }

    /// An embedding reading the input needs integer token ids in
    /// `[0, num)`: checked on the values where the data is a file or a
    /// built-in source and its transforms keep values; a transform that
    /// rescales them is refused.
    fn tokens_fit(&mut self, model: &ModelV, data: &DataV, span: Span) -> bool {
        let Some((layer, num)) = model.spec.layers.iter().find_map(|l| match l.layer {
            Layer::Embedding { num_embeddings, .. } => Some((l.name.clone(), num_embeddings)),
            _ => None,
        }) else {
            return true;
        };
        let mut step = data.step;
        let source = loop {
            match &self.items[step.0 as usize].op {
                Op::Transform {
                    input, transform, ..
                } => match transform {
                    Transform::Normalize { .. }
                    | Transform::ChannelNormalize { .. }
                    | Transform::Scale { .. } => {
                        self.error(
                            Diagnostic::new(
                                ErrorKind::Invalid {
                                    message: format!(
                                        "embedding `{layer}` reads token ids, but {} rescales its inputs",
                                        data.shown()
                                    ),
                                },
                                span,
                                "token ids would no longer be integers",
                            )
                            .hint("drop `normalize`/`scale` from the token data's pipeline"),
                        );
                        return false;
                    }
                    _ => step = *input,
                },
                Op::Data { source, .. } => break source.clone(),
                _ => return true,
            }
        };
        let Ok(host) = crate::data::load(&source, &self.opts.base_dir) else {
            return true; // reported where the data was declared
        };
        let d: usize = host.info.shape.iter().product::<usize>().max(1);
        let bad = host
            .x
            .iter()
            .position(|&t| !(t.fract() == 0.0 && t >= 0.0 && (t as f64) < num as f64));
        if let Some(j) = bad {
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: format!(
                            "embedding `{layer}` takes token ids in [0, {num}), but example {} of {}'s source has {} at position {}",
                            j / d,
                            data.shown(),
                            host.x[j],
                            j % d
                        ),
                    },
                    span,
                    "not integer token ids for this vocabulary",
                )
                .hint(format!(
                    "token ids must be integers from 0 to {}; raise `num_embeddings` or fix the data",
                    num - 1
                )),
            );
            return false;
        }
        true
    }

    /// Checks that `model` can run on `data` (input shape, outputs vs targets).
    pub(super) fn compatible(&mut self, model: &ModelV, data: &DataV, span: Span) -> bool {
        let want: usize = model.spec.input.iter().product();
        let have: usize = data.info.shape.iter().product();
        if want == have && !self.tokens_fit(model, data, span) {
            return false;
        }
        if want != have {
            self.error(
                Diagnostic::new(
                    ErrorKind::ShapeMismatch {
                        layer: format!(
                            "{} (input)",
                            if model.name.starts_with('_') {
                                "model"
                            } else {
                                &model.name
                            }
                        ),
                        expected: super::data::fmt_shape(&model.spec.input),
                        found: super::data::fmt_shape(&data.info.shape),
                    },
                    span,
                    format!(
                        "{} has examples of {} values, the model takes {}",
                        data.shown(),
                        have,
                        want
                    ),
                )
                .hint(if model.spec.input.len() == 1 {
                    format!("give the model `in = {have}` (mlp) or a first `linear({have}, ...)`")
                } else {
                    format!(
                        "inputs are reshaped to `input = {}`, so it must have {have} values",
                        super::data::fmt_shape(&model.spec.input)
                    )
                }),
            );
            return false;
        }
        let outputs = model.spec.outputs();
        let ok = match data.info.classes {
            Some(c) => outputs == c || (outputs == 1 && c == 2),
            None => outputs == data.info.target_dim,
        };
        if !ok {
            let (what, k) = match data.info.classes {
                Some(c) => ("classes", c),
                None => ("target values per example", data.info.target_dim),
            };
            let fix = match data.info.classes {
                Some(2) => "give the model 1 output (binary) or 2 outputs".to_string(),
                _ => format!("give the model {k} outputs, e.g. `out = {k}`"),
            };
            self.error(
                Diagnostic::new(
                    ErrorKind::Mismatch {
                        what: "outputs do not match targets".into(),
                        detail: format!(
                            "{} has {outputs} outputs but {} has {k} {what}",
                            model.shown(),
                            data.shown()
                        ),
                    },
                    span,
                    format!("{k} {what}"),
                )
                .hint(fix),
            );
        }
        ok
    }
}
