//! `Hessian(S, loss = ..., part = ...) of model on data`: its options and
//! what it supports (structures built from Hessian–vector products, layers
//! with a second-order rule).

use super::env::{DataV, ModelV};
use super::Checker;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::geometry::net::hessian::has_second_order_rule;
use crate::plan::{HessianPart, Structure, Task};
use crate::syntax::{Expr, ExprKind, Span};

/// The structures a Hessian is built in: from its columns (Dense,
/// BlockDiag, Diag), its top eigenpairs (LowRank) or left matrix-free.
pub const HESSIAN_STRUCTURES: [&str; 5] = ["Dense", "BlockDiag", "Diag", "LowRank", "Implicit"];

impl<'a> Checker<'a> {
    fn choice(&mut self, e: &'a Expr) -> (String, Span) {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Ident(n) => (n.clone(), d.span),
            _ => (self.expr_text(d), d.span),
        }
    }

    /// `loss = cross_entropy | mse`, as `train` takes it; the data must
    /// have the matching targets.
    pub(super) fn hessian_loss(&mut self, e: &'a Expr, m: &ModelV, dv: &DataV) -> Option<Task> {
        let (name, span) = self.choice(e);
        let classes = dv.info.classes.is_some();
        let (task, wants) = match name.as_str() {
            "cross_entropy" if m.spec.outputs() == 1 => (Task::Binary, true),
            "cross_entropy" => (Task::Classification, true),
            "mse" => (Task::Regression { sigma2: 1.0 }, false),
            other => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::BadChoice {
                            what: "loss".into(),
                            value: other.into(),
                        },
                        span,
                        "expected `cross_entropy` or `mse`",
                    )
                    .hint_opt(did_you_mean(other, ["cross_entropy", "mse"])),
                );
                return None;
            }
        };
        if wants != classes {
            let (expected, found) = if wants {
                ("class labels", "regression targets")
            } else {
                ("regression targets", "class labels")
            };
            self.error(
                Diagnostic::new(
                    ErrorKind::TypeMismatch {
                        expected: format!("data with {expected} for `{name}`"),
                        found: format!("{} with {found}", dv.shown()),
                    },
                    span,
                    format!("`{name}` needs {expected}"),
                )
                .hint(if wants {
                    "use `loss = mse` for regression targets"
                } else {
                    "use `loss = cross_entropy` for class labels"
                }),
            );
            return None;
        }
        Some(task)
    }

    /// `part = full | gauss_newton | residual`.
    pub(super) fn hessian_part(&mut self, e: &'a Expr) -> Option<HessianPart> {
        let (name, span) = self.choice(e);
        match name.as_str() {
            "full" => Some(HessianPart::Full),
            "gauss_newton" => Some(HessianPart::GaussNewton),
            "residual" => Some(HessianPart::Residual),
            other => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::BadChoice {
                            what: "Hessian part".into(),
                            value: other.into(),
                        },
                        span,
                        "expected `full`, `gauss_newton` or `residual`",
                    )
                    .hint_opt(did_you_mean(other, ["full", "gauss_newton", "residual"])),
                );
                None
            }
        }
    }

    /// Refuses the structures a Hessian has no construction for, a LowRank
    /// without its rank, and layers with no second-order rule, naming
    /// the layer.
    pub(super) fn hessian_support(
        &mut self,
        structure: &Structure,
        span: Span,
        m: &ModelV,
    ) -> Option<()> {
        let name = structure.name();
        if !HESSIAN_STRUCTURES.contains(&name.as_str()) {
            self.error(
                Diagnostic::new(
                    ErrorKind::UnsupportedStructure {
                        object: "Hessian".into(),
                        structure: name,
                    },
                    span,
                    "Kronecker and quasi-diagonal structures approximate a Fisher",
                )
                .hint(format!(
                    "Hessian supports: {}",
                    HESSIAN_STRUCTURES.join(", ")
                )),
            );
            return None;
        }
        if let Structure::LowRank { rank: None } = structure {
            self.error(
                Diagnostic::new(
                    ErrorKind::MissingOption {
                        func: "LowRank".into(),
                        name: "rank".into(),
                    },
                    span,
                    "a Hessian's LowRank keeps its top eigenpairs: how many?",
                )
                .hint("write `Hessian(LowRank(rank = 10))`"),
            );
            return None;
        }
        // Every layer on the way back counts, included or not.
        if let Some(l) = m
            .spec
            .layers
            .iter()
            .find(|l| !has_second_order_rule(&l.layer))
        {
            self.error(
                Diagnostic::new(
                    ErrorKind::UnsupportedLayer {
                        structure: "Hessian".into(),
                        layer: l.name.clone(),
                        layer_type: l.layer.type_name().into(),
                    },
                    span,
                    format!(
                        "{} has no second-order rule (its backward pass depends on its input through the normalisation)",
                        l.layer.type_name()
                    ),
                )
                .hint("take the Hessian of a model without LayerNorm or GroupNorm, or use `Fim(...)`"),
            );
            return None;
        }
        Some(())
    }
}
