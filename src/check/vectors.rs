//! Parameter-space vectors: `grad`, `random_vector`, `weights`, the vector
//! results of `mv`, `solve` and `diag`, one layer's part `v[layer]`, and
//! their combinations. Each vector knows its layers (as NNGeometry's
//! `PVector`), so combining vectors over different layers is refused here.

use super::env::{ReprV, Val, VecV};
use super::Checker;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::{cost, Measurement, ModelSpec, Object, Op, Operand, StepId, VectorOp};
use crate::syntax::{BinOp, Expr, ExprKind, Span};

pub const VECTORS: [&str; 7] = [
    "grad",
    "random_vector",
    "weights",
    "initial_weights",
    "eigenvector",
    "jvp",
    "vjp",
];
/// Measurements whose result is a parameter-space vector (of a Fisher).
pub const VECTOR_MEASUREMENTS: [&str; 3] = ["mv", "solve", "diag"];

/// Every parameterised layer of a model with its parameter count.
pub(super) fn model_layers(spec: &ModelSpec) -> Vec<(String, u64)> {
    spec.param_layers()
        .map(|l| (l.name.clone(), l.params))
        .collect()
}

/// The layers a representation (or one layer's block of it) covers.
pub(super) fn repr_layers(r: &ReprV, layer: Option<&str>) -> Vec<(String, u64)> {
    cost::covered_layers(&r.model.spec, &r.options)
        .iter()
        .filter(|l| layer.is_none_or(|n| l.name == n))
        .map(|l| (l.name.clone(), l.params))
        .collect()
}

fn names(layers: &[(String, u64)]) -> Vec<&str> {
    layers.iter().map(|(n, _)| n.as_str()).collect()
}

/// Whether two vectors cover the same layers (in any order).
fn same_layers(a: &[(String, u64)], b: &[(String, u64)]) -> bool {
    let mut x = a.to_vec();
    let mut y = b.to_vec();
    x.sort();
    y.sort();
    x == y
}

impl<'a> Checker<'a> {
    /// Whether `e` is written as a vector (so `let x = e[...]` is one).
    pub(super) fn looks_vector(&self, e: &'a Expr) -> bool {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Ident(n) => matches!(self.lookup_val(n), Some(Val::Vector(_))),
            ExprKind::Call { callee, .. } => {
                VECTORS.contains(&callee.name.as_str())
                    || VECTOR_MEASUREMENTS.contains(&callee.name.as_str())
            }
            ExprKind::Index { base, .. } | ExprKind::Neg(base) => self.looks_vector(base),
            ExprKind::Binary { lhs, rhs, .. } => self.looks_vector(lhs) || self.looks_vector(rhs),
            _ => false,
        }
    }

    /// The object and layers of a representation operand, from its step.
    fn operand_layers(&self, op: &Operand) -> Option<(Object, Vec<(String, u64)>)> {
        let Op::Repr {
            object,
            model,
            options,
            ..
        } = &self.items.get(op.repr.0 as usize)?.op
        else {
            return None;
        };
        let mut id = *model;
        let spec = loop {
            match &self.items.get(id.0 as usize)?.op {
                Op::Model { spec, .. } => break spec,
                Op::Train { model, .. } | Op::WithWeights { model, .. } => id = *model,
                _ => return None,
            }
        };
        let layers = cost::covered_layers(spec, options)
            .iter()
            .filter(|l| op.layer.as_ref().is_none_or(|n| &l.name == n))
            .map(|l| (l.name.clone(), l.params))
            .collect();
        Some((*object, layers))
    }

    /// A parameter-space vector.
    pub(super) fn vector_expr(&mut self, e: &'a Expr, name: &str) -> Option<VecV> {
        let d = self.deref(e);
        let name = self.name_or_anon(name);
        let (vector, layers) = match &d.kind {
            ExprKind::Ident(n) => match self.lookup_val(n) {
                Some(Val::Vector(v)) => return Some(v),
                other => {
                    self.error(Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: "a vector".into(),
                            found: match other {
                                Some(v) => format!("{} `{n}`", v.kind()),
                                None => format!("undefined `{n}`"),
                            },
                        },
                        d.span,
                        "not a vector",
                    )
                    .hint("vectors: grad(net, data), random_vector(net, seed = 0), weights(net), initial_weights(net), eigenvector(F, 1), mv(F, v), solve(F, v, damping = 1e-3), diag(F)"));
                    return None;
                }
            },
            ExprKind::Call { callee, args } => {
                let f = callee.name.as_str();
                match f {
                    "grad" => {
                        let c = self.bind(callee, d.span, args, &["model", "data"])?;
                        let me = self.req(&c, "model");
                        let de = self.req(&c, "data");
                        let m = self.model_expr(me?, "")?;
                        // `grad(net, train sharded(8))`: the mean over the
                        // examples as 8 range means, reduced.
                        let (de, k) = match &self.deref(de?).kind {
                            ExprKind::Sharded { data, shards } => (&**data, Some(&**shards)),
                            _ => (de?, None),
                        };
                        let dv = self.data_expr(de, "")?;
                        if !self.compatible(&m, &dv, de.span) {
                            return None;
                        }
                        let shards = match k {
                            Some(k) => Some(self.shard_k(k, dv.info.n)?),
                            None => None,
                        };
                        (
                            VectorOp::Grad {
                                model: m.step,
                                data: dv.step,
                                shards,
                                part: None,
                            },
                            model_layers(&m.spec),
                        )
                    }
                    "random_vector" => {
                        let c = self.bind(callee, d.span, args, &["model", "seed"])?;
                        let me = self.req(&c, "model")?;
                        let m = self.model_expr(me, "")?;
                        let seed = self.seed(&c)?;
                        (
                            VectorOp::Random {
                                model: m.step,
                                seed,
                            },
                            model_layers(&m.spec),
                        )
                    }
                    "eigenvector" => {
                        let c = self.bind(callee, d.span, args, &["m", "k"])?;
                        let me = self.req(&c, "m");
                        let ke = self.req(&c, "k");
                        let (r, layer) = self.operand(me?)?;
                        let layers = repr_layers(&r, layer.as_deref());
                        let dim: u64 = layers.iter().map(|(_, p)| p).sum();
                        let rank = self.int(ke?, "k", 1, dim.max(1) as i64)? as usize;
                        if !r.object.param_space() {
                            self.error(
                                Diagnostic::new(
                                    ErrorKind::Invalid {
                                        message:
                                            "an NTK's eigenvectors are not parameter-space vectors"
                                                .into(),
                                    },
                                    d.span,
                                    "the NTK lives on examples × outputs",
                                )
                                .hint("its eigenvalues: `measure eigenvalues(K, top = 5)`"),
                            );
                            return None;
                        }
                        (
                            VectorOp::Eigenvector {
                                m: Operand {
                                    repr: r.step,
                                    layer,
                                },
                                rank,
                            },
                            layers,
                        )
                    }
                    "jvp" | "vjp" => self.jacobian_product(f, callee, args, d.span)?,
                    "weights" | "initial_weights" => {
                        let c = self.bind(callee, d.span, args, &["model"])?;
                        let me = self.req(&c, "model")?;
                        let m = self.model_expr(me, "")?;
                        let op = if f == "weights" {
                            VectorOp::Weights { model: m.step }
                        } else {
                            VectorOp::InitialWeights { model: m.step }
                        };
                        (op, model_layers(&m.spec))
                    }
                    f if VECTOR_MEASUREMENTS.contains(&f) => {
                        let measurement = self.measurement(callee, args, d.span)?;
                        let (Measurement::Mv { m, .. }
                        | Measurement::Solve { m, .. }
                        | Measurement::Diagonal { m }) = measurement.clone()
                        else {
                            return None;
                        };
                        let (object, layers) = self.operand_layers(&m)?;
                        if !object.param_space() {
                            self.error(
                                Diagnostic::new(
                                    ErrorKind::Invalid {
                                        message: format!(
                                            "`{f}` of an NTK is not a parameter-space vector"
                                        ),
                                    },
                                    d.span,
                                    "the NTK lives on examples × outputs",
                                )
                                .hint(format!(
                                    "measure it instead: `measure {}`",
                                    self.expr_text(d)
                                )),
                            );
                            return None;
                        }
                        (VectorOp::Measured { measurement }, layers)
                    }
                    other => {
                        let mut all = VECTORS.to_vec();
                        all.extend(VECTOR_MEASUREMENTS);
                        self.error(
                            Diagnostic::new(
                                ErrorKind::Unknown {
                                    what: "vector".into(),
                                    name: other.into(),
                                },
                                callee.span,
                                "not a vector",
                            )
                            .hint_opt(did_you_mean(other, all.iter().copied()))
                            .hint(format!("vectors: {}", all.join(", "))),
                        );
                        return None;
                    }
                }
            }
            ExprKind::Index { base, index } => {
                let v = self.vector_expr(base, "")?;
                let covered: Vec<String> = v.layers.iter().map(|(n, _)| n.clone()).collect();
                let layer = self.layer_index(index, &covered, "MODEL", "this vector")?;
                let params = v
                    .layers
                    .iter()
                    .find(|(n, _)| *n == layer)
                    .map_or(0, |(_, p)| *p);
                (
                    VectorOp::Part {
                        v: v.step,
                        layer: layer.clone(),
                    },
                    vec![(layer, params)],
                )
            }
            ExprKind::Binary { op, lhs, rhs } => match op {
                BinOp::Mul if !self.looks_vector(lhs) => {
                    let factor = self.number(lhs, "scale factor")?;
                    let v = self.vector_expr(rhs, "")?;
                    (VectorOp::Scale { factor, v: v.step }, v.layers)
                }
                BinOp::Div if !self.looks_vector(rhs) => {
                    let by = self.number(rhs, "divisor")?;
                    let v = self.vector_expr(lhs, "")?;
                    (
                        VectorOp::Scale {
                            factor: 1.0 / by,
                            v: v.step,
                        },
                        v.layers,
                    )
                }
                _ => {
                    let a = self.vector_expr(lhs, "");
                    let b = self.vector_expr(rhs, "");
                    let (a, b) = (a?, b?);
                    self.same_layers(&a, &b, d.span)?;
                    let (a, b, layers) = (a.step, b.step, a.layers);
                    let op = match op {
                        BinOp::Add => VectorOp::Add { a, b },
                        BinOp::Sub => VectorOp::Sub { a, b },
                        BinOp::Mul => VectorOp::Mul { a, b },
                        BinOp::Div => VectorOp::Div { a, b },
                    };
                    (op, layers)
                }
            },
            ExprKind::Neg(x) => {
                let v = self.vector_expr(x, "")?;
                (
                    VectorOp::Scale {
                        factor: -1.0,
                        v: v.step,
                    },
                    v.layers,
                )
            }
            _ => {
                let found = self.describe(d);
                self.error(Diagnostic::new(
                    ErrorKind::TypeMismatch {
                        expected: "a vector".into(),
                        found,
                    },
                    d.span,
                    "not a vector",
                ));
                return None;
            }
        };
        let step = self.emit(Op::Vector { name, vector }, d.span);
        let len = layers.iter().map(|(_, p)| p).sum();
        Some(VecV { step, len, layers })
    }

    /// Refuses to combine vectors over different layers (E051).
    pub(super) fn same_layers(&mut self, a: &VecV, b: &VecV, span: Span) -> Option<()> {
        if same_layers(&a.layers, &b.layers) {
            return Some(());
        }
        let shown = |v: &VecV| {
            let mut n = names(&v.layers);
            let more = n.len().saturating_sub(4);
            n.truncate(4);
            let etc = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("{}{etc} ({} entries)", n.join(", "), v.len)
        };
        let detail = format!("{} vs {}", shown(a), shown(b));
        self.error(
            Diagnostic::new(
                ErrorKind::Mismatch {
                    what: "vectors over different layers".into(),
                    detail,
                },
                span,
                "vectors of different models or layers",
            )
            .hint("combine vectors of the same layers: take one layer's part with `v[\"layer\"]`"),
        );
        None
    }

    /// A parameter vector for `m`'s Fisher: it must hold every layer the
    /// representation (or its one block) covers.
    pub(super) fn fim_vector(
        &mut self,
        m: &ReprV,
        layer: Option<&str>,
        e: &'a Expr,
        what: &str,
    ) -> Option<StepId> {
        if !m.object.param_space() {
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: format!("`{what}` needs a Fisher or Hessian representation"),
                    },
                    e.span,
                    "parameter vectors apply to the Fisher",
                )
                .hint("the NTK lives on examples × outputs; use Fim(...) here"),
            );
            return None;
        }
        let v = self.vector_expr(e, "")?;
        let want = repr_layers(m, layer);
        let missing: Vec<&str> = want
            .iter()
            .filter(|l| !v.layers.contains(l))
            .map(|(n, _)| n.as_str())
            .collect();
        if !missing.is_empty() {
            let rows: u64 = want.iter().map(|(_, p)| p).sum();
            let detail = format!(
                "{} entries (layers {}), the representation has {rows} rows; missing: {}",
                v.len,
                names(&v.layers).join(", "),
                missing.join(", ")
            );
            self.error(Diagnostic::new(
                ErrorKind::Mismatch {
                    what: "vector size".into(),
                    detail,
                },
                e.span,
                "vector of another model or other layers",
            ));
            return None;
        }
        Some(v.step)
    }

    /// A layer named by an index (`[layer]` or `["layers.0"]`, a pattern
    /// matching exactly one), among the `covered` layers of `owner`.
    pub(super) fn layer_index(
        &mut self,
        index: &'a Expr,
        covered: &[String],
        model: &str,
        owner: &str,
    ) -> Option<String> {
        let id = self.deref(index);
        let layer = match &id.kind {
            ExprKind::Ident(n) => match self.lookup_val(n) {
                Some(Val::Layer(l)) => l,
                _ => {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::TypeMismatch {
                                expected: "a layer".into(),
                                found: self.describe(id),
                            },
                            id.span,
                            "not a layer",
                        )
                        .hint("loop over layers with `for layer in layers(net) { ... }` or write `\"layers.0\"`"),
                    );
                    return None;
                }
            },
            ExprKind::Str(s) => s.clone(),
            _ => {
                let kind = owner.trim_start_matches("this ");
                self.error(Diagnostic::new(
                    ErrorKind::TypeMismatch {
                        expected: "a layer".into(),
                        found: self.describe(id),
                    },
                    id.span,
                    format!("index {kind}s by layer name"),
                ));
                return None;
            }
        };
        // A pattern selects one block: it must match exactly one.
        let layer = if layer.contains('*') {
            let known: Vec<&str> = covered.iter().map(|s| s.as_str()).collect();
            let hits = self.match_layers(&layer, &known, id.span, owner)?;
            if hits.len() > 1 {
                self.error(
                    Diagnostic::new(
                        ErrorKind::Invalid {
                            message: format!(
                                "`{layer}` matches {} layers, `[...]` takes one",
                                hits.len()
                            ),
                        },
                        id.span,
                        format!("matches {}", hits.join(", ")),
                    )
                    .hint(format!(
                        "loop over them: `for layer in layers({model}, \"{layer}\") {{ ... }}`"
                    )),
                );
                return None;
            }
            hits[0].clone()
        } else {
            layer
        };
        if !covered.contains(&layer) {
            self.error(
                Diagnostic::new(
                    ErrorKind::Unknown {
                        what: "layer".into(),
                        name: layer.clone(),
                    },
                    id.span,
                    format!("not a layer of {owner}"),
                )
                .hint_opt(did_you_mean(&layer, covered.iter().map(|s| s.as_str())))
                .hint(format!("layers: {}", covered.join(", "))),
            );
            return None;
        }
        Some(layer)
    }
}
