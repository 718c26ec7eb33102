//! `Jacobian of MODEL on DATA` (NNGeometry's `PFMap`) and its products:
//! `jvp(J, v)`, a function-space vector `[n, C]` (an `FVector`), and
//! `vjp(J, u)`, a parameter-space vector.
//!
//! A function-space vector is a vector with one part, named
//! `outputs(DATA)`, of `n · C` entries: it adds, scales, takes `dot` and
//! `norm` and is measured like any vector, and is refused wherever
//! parameters are expected (no layer has that name).

use super::env::{DataV, ModelV};
use super::vectors::model_layers;
use super::Checker;
use crate::diag::{Diagnostic, ErrorKind};
use crate::plan::VectorOp;
use crate::syntax::{Arg, Expr, ExprKind, Ident, Span};

/// The part name of a function-space vector on `data`.
pub fn outputs_part(data: &DataV) -> String {
    format!("outputs({})", data.name)
}

impl<'a> Checker<'a> {
    /// Whether `e` is written `Jacobian of MODEL on DATA`.
    pub(super) fn is_jacobian(e: &Expr) -> bool {
        let ExprKind::Repr { structure, .. } = &e.kind else {
            return false;
        };
        matches!(&structure.kind, ExprKind::Ident(n) if n == "Jacobian")
    }

    /// The model and data of a Jacobian operand.
    fn jacobian_operand(&mut self, e: &'a Expr) -> Option<(ModelV, DataV)> {
        let d = self.deref(e);
        let (model, data) = match &d.kind {
            ExprKind::Repr {
                model,
                data: Some(data),
                shards: None,
                ..
            } if Self::is_jacobian(d) => (model, data),
            _ => {
                let found = self.describe(d);
                self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: "a Jacobian".into(),
                            found,
                        },
                        d.span,
                        "`jvp` and `vjp` take `Jacobian of MODEL on DATA`",
                    )
                    .hint(
                        "write `let J = Jacobian of net on train`, then `jvp(J, v)` or `vjp(J, u)`",
                    ),
                );
                return None;
            }
        };
        let m = self.model_expr(model, "");
        let dv = self.data_expr(data, "");
        let (m, dv) = (m?, dv?);
        if !self.compatible(&m, &dv, data.span) {
            return None;
        }
        Some((m, dv))
    }

    /// `jvp(J, v)` and `vjp(J, u)`: the product and the layers of its result.
    pub(super) fn jacobian_product(
        &mut self,
        f: &str,
        callee: &Ident,
        args: &'a [Arg],
        span: Span,
    ) -> Option<(VectorOp, Vec<(String, u64)>)> {
        let c = self.bind(callee, span, args, &["J", "v"])?;
        let je = self.req(&c, "J");
        let ve = self.req(&c, "v");
        let (m, dv) = self.jacobian_operand(je?)?;
        let ve = ve?;
        let v = self.vector_expr(ve, "")?;
        let params = model_layers(&m.spec);
        let part = outputs_part(&dv);
        let len = (dv.info.n * m.spec.outputs()) as u64;
        let outputs = vec![(part.clone(), len)];
        if f == "jvp" {
            if let Some((name, k)) = v.layers.iter().find(|l| !params.contains(l)) {
                self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: format!("a vector on the layers of {}", m.shown()),
                            found: format!("a vector with `{name}` ({k} entries)"),
                        },
                        ve.span,
                        "`jvp` takes a parameter-space vector",
                    )
                    .hint(if name.starts_with("outputs(") {
                        "function-space vectors go to `vjp(J, u)`"
                    } else {
                        "a vector of this model: `random_vector(net, seed = 0)`, `weights(net)`, `grad(net, data)`"
                    }),
                );
                return None;
            }
            let op = VectorOp::Jvp {
                model: m.step,
                data: dv.step,
                v: v.step,
            };
            return Some((op, outputs));
        }
        if v.layers != outputs {
            let found = match v.layers.as_slice() {
                [(name, k)] if name.starts_with("outputs(") => {
                    format!("a function-space vector `{name}` of {k} entries")
                }
                _ => "a parameter-space vector".into(),
            };
            self.error(
                Diagnostic::new(
                    ErrorKind::TypeMismatch {
                        expected: format!(
                            "a function-space vector `{part}` of {len} entries ({} examples × {} outputs)",
                            dv.info.n,
                            m.spec.outputs()
                        ),
                        found,
                    },
                    ve.span,
                    "`vjp` takes a vector on the Jacobian's examples and outputs",
                )
                .hint("make one with `jvp(J, v)` on the same data"),
            );
            return None;
        }
        let op = VectorOp::Vjp {
            model: m.step,
            data: dv.step,
            u: v.step,
        };
        Some((op, params))
    }
}
