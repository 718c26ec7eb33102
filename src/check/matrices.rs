//! Matrix algebra on Fisher representations: `A + B`, `A - B`, `c * A`,
//! `A / c`, `-A`, `A + λ` (damping), `inverse(M)`, `power(M, p)` and
//! `dense(M)`. The result is a representation every measurement accepts.

use super::env::{ReprV, Val};
use super::Checker;
use crate::diag::{Diagnostic, ErrorKind};
use crate::plan::{MatrixOp, Object, Op, Operand, Structure};
use crate::syntax::{BinOp, Expr, ExprKind};

pub const MATRIX_FUNCTIONS: [&str; 4] = ["inverse", "power", "dense", "fim"];

impl<'a> Checker<'a> {
    /// Whether `e` is written as a representation.
    pub(super) fn looks_matrix(&self, e: &'a Expr) -> bool {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Ident(n) => matches!(self.lookup_val(n), Some(Val::Repr(_))),
            ExprKind::Repr { .. } => true,
            ExprKind::Call { callee, .. } => MATRIX_FUNCTIONS.contains(&callee.name.as_str()),
            ExprKind::Index { base, .. } | ExprKind::Neg(base) => self.looks_matrix(base),
            ExprKind::Binary { lhs, rhs, .. } => self.looks_matrix(lhs) || self.looks_matrix(rhs),
            _ => false,
        }
    }

    /// A Fisher representation that algebra can take, with its layer.
    fn algebra_operand(&mut self, e: &'a Expr, what: &str) -> Option<(ReprV, Operand)> {
        let (r, layer) = self.operand(e)?;
        let why = match (r.object, &r.structure) {
            (Object::Ntk, _) => Some("matrix algebra applies to Fisher representations"),
            (_, Structure::Implicit) if !["dense", "inverse", "+ λ"].contains(&what) => {
                Some("Fim(Implicit) takes `+ λ`, `inverse` (by conjugate gradients) and `dense(M)`")
            }
            _ => None,
        };
        if let Some(why) = why {
            self.error(Diagnostic::new(
                ErrorKind::Invalid {
                    message: format!(
                        "`{what}` of {}({})",
                        fmt_object(r.object),
                        r.structure.name()
                    ),
                },
                e.span,
                why,
            ));
            return None;
        }
        let op = Operand {
            repr: r.step,
            layer: layer.clone(),
        };
        let mut r = r;
        if let Some(l) = layer {
            r.options.layers = vec![l];
        }
        Some((r, op))
    }

    /// A representation computed by matrix algebra.
    pub(super) fn matrix_expr(&mut self, e: &'a Expr, name: &str) -> Option<ReprV> {
        let d = self.deref(e);
        let (matrix, base) = match &d.kind {
            ExprKind::Call { callee, args } if callee.name == "fim" => {
                return self.load_repr(callee, args, d.span, name);
            }
            ExprKind::Call { callee, args } => {
                let f = callee.name.as_str();
                let names: &[&str] = if f == "power" { &["m", "p"] } else { &["m"] };
                let c = self.bind(callee, d.span, args, names)?;
                let me = self.req(&c, "m")?;
                let (r, m) = self.algebra_operand(me, f)?;
                let matrix = match f {
                    "inverse" => MatrixOp::Power { m, power: -1.0 },
                    "power" => {
                        let pe = self.req(&c, "p")?;
                        let power = self.number(pe, "power")?;
                        MatrixOp::Power { m, power }
                    }
                    _ => MatrixOp::Dense { m },
                };
                (matrix, r)
            }
            ExprKind::Neg(x) => {
                let (r, m) = self.algebra_operand(x, "-")?;
                (MatrixOp::Scale { factor: -1.0, m }, r)
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let sym = match op {
                    BinOp::Add => "+",
                    BinOp::Sub => "-",
                    BinOp::Mul => "*",
                    BinOp::Div => "/",
                };
                let (lm, rm) = (self.looks_matrix(lhs), self.looks_matrix(rhs));
                match op {
                    BinOp::Add | BinOp::Sub if lm && rm => {
                        let a = self.algebra_operand(lhs, sym);
                        let b = self.algebra_operand(rhs, sym);
                        let ((ra, a), (rb, b)) = (a?, b?);
                        self.same_structure(&ra, &rb, sym, d)?;
                        let cb = if *op == BinOp::Add { 1.0 } else { -1.0 };
                        (MatrixOp::Combine { a, b, ca: 1.0, cb }, ra)
                    }
                    BinOp::Add | BinOp::Sub if lm => {
                        let (r, m) = self.algebra_operand(lhs, "+ λ")?;
                        let x = self.number(rhs, "damping")?;
                        let damping = if *op == BinOp::Add { x } else { -x };
                        (MatrixOp::Damp { m, damping }, r)
                    }
                    BinOp::Add => {
                        let damping = self.number(lhs, "damping")?;
                        let (r, m) = self.algebra_operand(rhs, "+ λ")?;
                        (MatrixOp::Damp { m, damping }, r)
                    }
                    BinOp::Mul if rm && !lm => {
                        let factor = self.number(lhs, "scale factor")?;
                        let (r, m) = self.algebra_operand(rhs, sym)?;
                        (MatrixOp::Scale { factor, m }, r)
                    }
                    BinOp::Mul | BinOp::Div if lm && !rm => {
                        let x = self.number(rhs, "scale factor")?;
                        let factor = if *op == BinOp::Mul { x } else { 1.0 / x };
                        let (r, m) = self.algebra_operand(lhs, sym)?;
                        (MatrixOp::Scale { factor, m }, r)
                    }
                    _ => {
                        self.error(
                            Diagnostic::new(
                                ErrorKind::Invalid {
                                    message: format!("`{sym}` is not defined here for representations"),
                                },
                                d.span,
                                "not a matrix operation",
                            )
                            .hint("representations take `A + B`, `A - B`, `c * A`, `A / c`, `A + λ`, `inverse(A)`, `power(A, p)`"),
                        );
                        return None;
                    }
                }
            }
            _ => {
                let (r, _) = self.operand(d)?;
                return Some(r);
            }
        };
        let name = self.name_or_anon(name);
        let structure = matrix.result_structure(&base.structure);
        let step = self.emit(Op::Matrix { name, matrix }, d.span);
        Some(ReprV {
            step,
            structure,
            ..base
        })
    }

    /// Refuses a sum of representations of different structures, models or
    /// layers (E053 names both structures).
    fn same_structure(&mut self, a: &ReprV, b: &ReprV, op: &str, e: &'a Expr) -> Option<()> {
        let shown = |r: &ReprV| format!("{}({})", fmt_object(r.object), r.structure.name());
        if a.structure != b.structure {
            let ExprKind::Binary { lhs, rhs, .. } = &e.kind else {
                return None;
            };
            self.error(
                Diagnostic::new(
                    ErrorKind::StructureMismatch {
                        op: op.into(),
                        a: shown(a),
                        b: shown(b),
                    },
                    e.span,
                    "different structures",
                )
                .related(lhs.span, shown(a))
                .related(rhs.span, shown(b))
                .hint("compute both with the same structure, or convert both with `dense(M)`"),
            );
            return None;
        }
        let layers = |r: &ReprV| super::vectors::repr_layers(r, None);
        if layers(a) != layers(b) {
            self.error(Diagnostic::new(
                ErrorKind::Mismatch {
                    what: "representations over different layers".into(),
                    detail: format!("{} vs {}", a.model.shown(), b.model.shown()),
                },
                e.span,
                "they cover different parameters",
            ));
            return None;
        }
        Some(())
    }
}

fn fmt_object(o: Object) -> &'static str {
    match o {
        Object::Fim => "Fim",
        Object::Ntk => "Ntk",
        Object::Hessian => "Hessian",
    }
}
