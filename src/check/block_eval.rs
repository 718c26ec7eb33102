//! Expressions inside blocks and defs: numbers, booleans, symbols, lists,
//! names in scope, arithmetic and comparisons, evaluated at check time to
//! [`V`]alues.

use super::block::*;
use super::ctor::{ctor_params, ALL_OPTIONAL};
use super::Checker;
use crate::diag::ErrorKind;
use crate::syntax::{BinOp, CmpOp, Expr, ExprKind, Ident, LogicOp};

impl<'a> Checker<'a> {
    /// Evaluates an expression of a block body, a def or a block call's
    /// argument.
    pub(super) fn eval_v(&mut self, e: &'a Expr, f: &Frame<'a>) -> Option<V<'a>> {
        match &e.kind {
            ExprKind::Int(i) => Some(V::Int(*i)),
            ExprKind::Float(x) if x.is_finite() => Some(V::Float(*x)),
            ExprKind::Bool(b) => Some(V::Bool(*b)),
            ExprKind::Str(s) => Some(V::Str(s.clone())),
            ExprKind::Ident(n) => self.eval_ident(e, n, f),
            ExprKind::List(items) => {
                let mut out = Vec::new();
                for it in items {
                    out.push(self.eval_v(&it.value, f)?);
                }
                Some(V::List(out))
            }
            ExprKind::Neg(x) => match self.eval_v(x, f)? {
                V::Int(i) => Some(V::Int(-i)),
                V::Float(x) => Some(V::Float(-x)),
                other => {
                    self.expect(f, e, &other, "a number", "-");
                    None
                }
            },
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.eval_v(lhs, f)?;
                let b = self.eval_v(rhs, f)?;
                self.arith(e, *op, a, b, f)
            }
            ExprKind::Compare { op, lhs, rhs } => {
                let a = self.eval_v(lhs, f)?;
                let b = self.eval_v(rhs, f)?;
                self.compare(e, *op, &a, &b, f).map(V::Bool)
            }
            ExprKind::Logic { op, lhs, rhs } => {
                let a = self.eval_v(lhs, f)?;
                let a = self.truth(lhs, &a, f)?;
                // Short-circuit, so `stride != 1 or x` needs no `x` then.
                match (op, a) {
                    (LogicOp::And, false) => return Some(V::Bool(false)),
                    (LogicOp::Or, true) => return Some(V::Bool(true)),
                    _ => {}
                }
                let b = self.eval_v(rhs, f)?;
                self.truth(rhs, &b, f).map(V::Bool)
            }
            ExprKind::Index { base, index } => {
                let b = self.eval_v(base, f)?;
                let i = self.eval_v(index, f)?;
                let V::List(items) = b else {
                    self.expect(f, base, &b, "a list", "[...]");
                    return None;
                };
                let V::Int(k) = i else {
                    self.expect(f, index, &i, "an integer", "[...]");
                    return None;
                };
                let at = if k < 0 { items.len() as i64 + k } else { k };
                match items.get(at as usize).filter(|_| at >= 0) {
                    Some(v) => Some(v.clone()),
                    None => {
                        self.err_at(
                            f.src,
                            ErrorKind::OutOfRange {
                                name: "index".into(),
                                value: k.to_string(),
                                range: format!("the list has {} items", items.len()),
                            },
                            index.span,
                            "no such item",
                        );
                        None
                    }
                }
            }
            ExprKind::Call { callee, args } => self.eval_call(e, callee, args, f),
            _ => {
                self.err_at(
                    f.src,
                    ErrorKind::TypeMismatch {
                        expected: "a number, boolean, list or module".into(),
                        found: describe_kind(&e.kind).into(),
                    },
                    e.span,
                    "not allowed in a block",
                );
                None
            }
        }
    }

    fn eval_ident(&mut self, e: &'a Expr, n: &str, f: &Frame<'a>) -> Option<V<'a>> {
        if let Some(v) = f.vars.get(n) {
            return Some(v.clone());
        }
        if f.members.iter().any(|m| m == n) {
            self.err_at(
                f.src,
                ErrorKind::Invalid {
                    message: format!("member `{n}` used inside another member"),
                },
                e.span,
                "a member is a module of its own",
            );
            return None;
        }
        if f.top {
            let d = self.deref(e);
            if !std::ptr::eq(d, e) {
                return self.eval_v(d, f);
            }
        }
        // A constructor without required options stands for itself.
        if ctor_params(n).is_some_and(|p| p.is_empty() || ALL_OPTIONAL.contains(&n)) {
            let callee = Ident {
                name: n.into(),
                span: e.span,
            };
            return self.eval_ctor(e.span, &callee, vec![], f);
        }
        if let Some(def) = self.defs.get(n).copied() {
            if def.params().iter().all(|p| p.default.is_some()) {
                let callee = Ident {
                    name: n.into(),
                    span: e.span,
                };
                return self.call_def(def, &callee, e.span, vec![], f);
            }
        }
        Some(V::Sym(n.to_string()))
    }

    pub(super) fn truth(&mut self, e: &'a Expr, v: &V<'a>, f: &Frame<'a>) -> Option<bool> {
        match v {
            V::Bool(b) => Some(*b),
            other => {
                self.expect(f, e, other, "`true` or `false`", "condition");
                None
            }
        }
    }

    fn arith(
        &mut self,
        e: &'a Expr,
        op: BinOp,
        a: V<'a>,
        b: V<'a>,
        f: &Frame<'a>,
    ) -> Option<V<'a>> {
        let num = |v: &V| match v {
            V::Int(i) => Some(*i as f64),
            V::Float(x) => Some(*x),
            _ => None,
        };
        if let (V::Int(x), V::Int(y)) = (&a, &b) {
            let (x, y) = (*x, *y);
            let exact = match op {
                BinOp::Add => x.checked_add(y),
                BinOp::Sub => x.checked_sub(y),
                BinOp::Mul => x.checked_mul(y),
                // Integer division stays an integer when it is exact, so
                // `cout / 4` can size a layer.
                BinOp::Div => (y != 0 && x % y == 0).then(|| x / y),
            };
            if let Some(v) = exact {
                return Some(V::Int(v));
            }
        }
        match (num(&a), num(&b)) {
            (Some(x), Some(y)) => {
                let v = op.apply(x, y);
                if v.is_finite() {
                    Some(V::Float(v))
                } else {
                    self.err_at(
                        f.src,
                        ErrorKind::BadNumber {
                            text: format!("{x} {} {y}", op.symbol()),
                        },
                        e.span,
                        "not a finite number",
                    );
                    None
                }
            }
            _ => {
                let bad = if num(&a).is_none() { &a } else { &b };
                self.expect(f, e, bad, "a number", "arithmetic");
                None
            }
        }
    }

    fn compare(
        &mut self,
        e: &'a Expr,
        op: CmpOp,
        a: &V<'a>,
        b: &V<'a>,
        f: &Frame<'a>,
    ) -> Option<bool> {
        let num = |v: &V| match v {
            V::Int(i) => Some(*i as f64),
            V::Float(x) => Some(*x),
            _ => None,
        };
        if let (Some(x), Some(y)) = (num(a), num(b)) {
            return Some(match op {
                CmpOp::Eq => x == y,
                CmpOp::Ne => x != y,
                CmpOp::Lt => x < y,
                CmpOp::Le => x <= y,
                CmpOp::Gt => x > y,
                CmpOp::Ge => x >= y,
            });
        }
        let same = match (a, b) {
            (V::Bool(x), V::Bool(y)) => Some(x == y),
            (V::Sym(x), V::Sym(y)) | (V::Str(x), V::Str(y)) => Some(x == y),
            (V::List(_), V::List(_)) => Some(format!("{a:?}") == format!("{b:?}")),
            _ => None,
        };
        match (same, op) {
            (Some(s), CmpOp::Eq) => Some(s),
            (Some(s), CmpOp::Ne) => Some(!s),
            _ => {
                self.err_at(
                    f.src,
                    ErrorKind::TypeMismatch {
                        expected: "two numbers, or two values of one kind for `==` / `!=`".into(),
                        found: format!("{} and {}", a.describe(), b.describe()),
                    },
                    e.span,
                    "cannot compare these",
                );
                None
            }
        }
    }
}
