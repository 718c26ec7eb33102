//! The training loss with penalty terms, as in
//! `loss = cross_entropy + 0.5 * lambda * vTMv(F_A, weights(net) - w_A)`
//! or `loss = mse + 1e-4 * l2(weights(net) - w0)`. The data loss appears
//! once; every other term is a constant factor times
//! `vTMv(M, weights(NET) [- anchor])`, with `M` a Fisher, or
//! `l2(weights(NET) [- anchor])`, the squared norm. `NET` is the model
//! being trained, read at every step; the anchor and `M` are values
//! computed before the training.

use super::env::{ModelV, VecV};
use super::vectors::repr_layers;
use super::Checker;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::{LossKind, Operand, Penalty};
use crate::syntax::{BinOp, Expr, ExprKind};

const LOSSES: [&str; 2] = ["cross_entropy", "mse"];
const PENALTIES: [&str; 2] = ["vTMv", "l2"];

impl<'a> Checker<'a> {
    /// The `loss` setting: the data loss and the penalty terms added to it.
    pub(super) fn loss_setting(
        &mut self,
        e: &'a Expr,
        m: &ModelV,
    ) -> Option<(LossKind, Vec<Penalty>)> {
        let mut terms = Vec::new();
        self.sum_terms(e, 1.0, &mut terms);
        let mut base: Option<(LossKind, &'a Expr)> = None;
        let mut penalties = Vec::new();
        let mut ok = true;
        for (sign, t) in terms {
            let d = self.deref(t);
            if let ExprKind::Ident(word) = &d.kind {
                if LOSSES.contains(&word.as_str()) || !self.is_bound(word) {
                    let kind = self.symbol(d, "loss", &LOSSES).map(|w| {
                        if w == "mse" {
                            LossKind::Mse
                        } else {
                            LossKind::CrossEntropy
                        }
                    });
                    match (kind, base) {
                        (Some(_), Some((_, first))) => {
                            self.error(
                                Diagnostic::new(
                                    ErrorKind::Invalid {
                                        message: "the loss has two data terms".into(),
                                    },
                                    d.span,
                                    "a second data loss",
                                )
                                .related(first.span, "the first"),
                            );
                            ok = false;
                        }
                        (Some(_), None) if sign < 0.0 => {
                            self.error(Diagnostic::new(
                                ErrorKind::Invalid {
                                    message: "the data loss is subtracted".into(),
                                },
                                d.span,
                                "training would maximise it",
                            ));
                            ok = false;
                        }
                        (Some(k), None) => base = Some((k, d)),
                        (None, _) => ok = false,
                    }
                    continue;
                }
            }
            match self.penalty_term(d, sign, m) {
                Some(p) => penalties.push(p),
                None => ok = false,
            }
        }
        let Some((kind, _)) = base else {
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: "the loss has no data term".into(),
                    },
                    e.span,
                    "penalties alone",
                )
                .hint("add `cross_entropy` or `mse`: `loss = cross_entropy + 0.5 * vTMv(F, weights(net) - w0)`"),
            );
            return None;
        };
        ok.then_some((kind, penalties))
    }

    fn is_bound(&self, name: &str) -> bool {
        self.lookup_val(name).is_some()
    }

    /// Splits `a + b - c` into signed terms.
    fn sum_terms(&self, e: &'a Expr, sign: f64, out: &mut Vec<(f64, &'a Expr)>) {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Binary {
                op: op @ (BinOp::Add | BinOp::Sub),
                lhs,
                rhs,
            } if self.mentions_loss(d) => {
                self.sum_terms(lhs, sign, out);
                let s = if *op == BinOp::Sub { -sign } else { sign };
                self.sum_terms(rhs, s, out);
            }
            _ => out.push((sign, d)),
        }
    }

    /// Whether `e` contains a data loss or a penalty (and so is a sum of
    /// loss terms rather than a number).
    fn mentions_loss(&self, e: &'a Expr) -> bool {
        match &self.deref(e).kind {
            ExprKind::Ident(n) => LOSSES.contains(&n.as_str()),
            ExprKind::Call { callee, .. } => PENALTIES.contains(&callee.name.as_str()),
            ExprKind::Binary { lhs, rhs, .. } => self.mentions_loss(lhs) || self.mentions_loss(rhs),
            ExprKind::Neg(x) => self.mentions_loss(x),
            _ => false,
        }
    }

    /// `c * vTMv(M, weights(NET) - anchor)` or `c * l2(...)`.
    fn penalty_term(&mut self, e: &'a Expr, sign: f64, m: &ModelV) -> Option<Penalty> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Binary {
                op: BinOp::Mul,
                lhs,
                rhs,
            } => {
                // The term is the side with the loss or, failing that, the
                // call (`0.1 * l1(w)` is an unknown term, not a bad number).
                let rhs_term = self.mentions_loss(rhs)
                    || (!self.mentions_loss(lhs)
                        && matches!(self.deref(rhs).kind, ExprKind::Call { .. }));
                let (num, term) = if rhs_term { (lhs, rhs) } else { (rhs, lhs) };
                let c = self.number(num, "penalty factor")?;
                self.penalty_term(term, sign * c, m)
            }
            ExprKind::Binary {
                op: BinOp::Div,
                lhs,
                rhs,
            } if !self.mentions_loss(rhs) => {
                let c = self.number(rhs, "penalty divisor")?;
                self.penalty_term(lhs, sign / c, m)
            }
            ExprKind::Neg(x) => self.penalty_term(x, -sign, m),
            ExprKind::Call { callee, args } if PENALTIES.contains(&callee.name.as_str()) => {
                let quadratic = callee.name == "vTMv";
                let names: &[&str] = if quadratic { &["m", "v"] } else { &["v"] };
                let c = self.bind(callee, d.span, args, names)?;
                let ve = self.req(&c, "v")?;
                let operand = if quadratic {
                    let me = self.req(&c, "m")?;
                    let (r, layer) = self.operand(me)?;
                    if !r.object.param_space() {
                        self.error(Diagnostic::new(
                            ErrorKind::Invalid {
                                message: "a penalty's matrix must be a Fisher or a Hessian".into(),
                            },
                            c.get("m").map_or(d.span, |x| x.span),
                            "an NTK lives on examples, not on the weights",
                        ));
                        return None;
                    }
                    if r.model.spec.param_layers().count() != m.spec.param_layers().count()
                        || r.model
                            .spec
                            .param_layers()
                            .zip(m.spec.param_layers())
                            .any(|(a, b)| a.name != b.name || a.params != b.params)
                    {
                        self.error(Diagnostic::new(
                            ErrorKind::Invalid {
                                message: format!(
                                    "the Fisher is of {}, whose layers differ from those of {}",
                                    r.model.shown(),
                                    m.shown()
                                ),
                            },
                            c.get("m").map_or(d.span, |x| x.span),
                            "another network",
                        ));
                        return None;
                    }
                    let covers = repr_layers(&r, layer.as_deref());
                    Some((
                        Operand {
                            repr: r.step,
                            layer,
                        },
                        covers,
                    ))
                } else {
                    None
                };
                let anchor = self.penalty_difference(ve, m)?;
                if let Some(a) = &anchor {
                    let need = match &operand {
                        Some((_, covers)) => covers.clone(),
                        None => m
                            .spec
                            .param_layers()
                            .map(|l| (l.name.clone(), l.params))
                            .collect(),
                    };
                    if let Some((name, _)) = need.iter().find(|l| !a.layers.contains(l)) {
                        self.error(Diagnostic::new(
                            ErrorKind::Invalid {
                                message: format!(
                                    "the anchor has no part for layer `{name}`, which the penalty covers"
                                ),
                            },
                            ve.span,
                            "the anchor",
                        ));
                        return None;
                    }
                }
                Some(Penalty {
                    coef: sign,
                    m: operand.map(|(o, _)| o),
                    anchor: anchor.map(|a| a.step),
                })
            }
            ExprKind::Call { callee, .. } => {
                let name = callee.name.as_str();
                self.error(
                    Diagnostic::new(
                        ErrorKind::Unknown {
                            what: "loss term".into(),
                            name: name.into(),
                        },
                        callee.span,
                        "not a loss term",
                    )
                    .hint_opt(did_you_mean(name, PENALTIES.iter().chain(&LOSSES).copied()))
                    .hint("loss terms: cross_entropy, mse, c * vTMv(F, weights(net) - w0), c * l2(weights(net) - w0)"),
                );
                None
            }
            _ => {
                let found = self.describe(d);
                self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: "a loss term".into(),
                            found,
                        },
                        d.span,
                        "not a loss term",
                    )
                    .hint("loss terms: cross_entropy, mse, c * vTMv(F, weights(net) - w0), c * l2(weights(net) - w0)"),
                );
                None
            }
        }
    }

    /// `weights(NET)` or `weights(NET) - anchor`, with `NET` the model being
    /// trained; returns the anchor.
    fn penalty_difference(&mut self, e: &'a Expr, m: &ModelV) -> Option<Option<VecV>> {
        let d = self.deref(e);
        let (w, anchor) = match &d.kind {
            ExprKind::Binary {
                op: BinOp::Sub,
                lhs,
                rhs,
            } => (&**lhs, Some(&**rhs)),
            _ => (d, None),
        };
        let live = match &self.deref(w).kind {
            ExprKind::Call { callee, args } if callee.name == "weights" => {
                let c = self.bind(callee, w.span, args, &["model"])?;
                let me = self.req(&c, "model")?;
                let mv = self.model_expr(me, "")?;
                if mv.step != m.step {
                    self.error(Diagnostic::new(
                        ErrorKind::Invalid {
                            message: format!(
                                "a penalty is on the weights being trained, those of {}",
                                m.shown()
                            ),
                        },
                        me.span,
                        format!("this is {}", mv.shown()),
                    ));
                    return None;
                }
                true
            }
            _ => false,
        };
        if !live {
            self.error(
                Diagnostic::new(
                    ErrorKind::TypeMismatch {
                        expected: format!(
                            "`weights({})` or `weights({}) - anchor`",
                            m.name, m.name
                        ),
                        found: self.describe(d),
                    },
                    d.span,
                    "a penalty measures the weights being trained",
                )
                .hint(format!(
                    "e.g. `vTMv(F_A, weights({}) - w_A)` with `let w_A = weights(...)` before",
                    m.name
                )),
            );
            return None;
        }
        match anchor {
            Some(a) => self.vector_expr(a, "").map(Some),
            None => Some(None),
        }
    }
}
