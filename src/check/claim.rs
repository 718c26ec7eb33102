//! `expect "text" : expression`: claims over the run's results, typed here
//! against what the file measures (its keys, their sweep tags and the
//! values those tags take), so that a claim naming a key, a tag or a value
//! the run never produces is a located error before anything runs.

use super::{glob, Checker};
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::claim::{ArithOp, ClaimExpr, Cmp, Logic, Reducer, TagFilter, REDUCERS};
use crate::plan::Op;
use crate::syntax::{BinOp, CmpOp, Expr, ExprKind, LogicOp, Span, StrLit};
use std::collections::{BTreeMap, BTreeSet};

/// The tags a key's results carry, each with the values it takes (`None`:
/// not known before the run, e.g. per-example groups).
pub(super) type KeyTags = BTreeMap<String, Option<BTreeSet<String>>>;

/// A claim waiting for every measurement of the file to be known.
pub(super) struct PendingClaim<'a> {
    pub text: &'a StrLit,
    pub expr: &'a Expr,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    /// One number.
    Scalar,
    /// Numbers indexed by tags (and training step).
    Series,
    /// One truth value.
    Bool,
    /// Comparisons indexed by tags (and training step).
    Bools,
}

impl Ty {
    fn describe(self) -> &'static str {
        match self {
            Ty::Scalar => "a number",
            Ty::Series => "a series of results",
            Ty::Bool => "a truth value",
            Ty::Bools => "a series of comparisons",
        }
    }
    fn numeric(self) -> bool {
        matches!(self, Ty::Scalar | Ty::Series)
    }
}

struct Typed {
    expr: ClaimExpr,
    ty: Ty,
    /// Tags still in the index, with their values.
    tags: KeyTags,
    /// Whether entries may differ by training step.
    stepped: bool,
}

impl Typed {
    /// A series with neither tags nor steps left is one number (and
    /// comparisons of it one truth value), as evaluation makes it.
    fn settle(mut self) -> Typed {
        if self.tags.is_empty() && !self.stepped {
            self.ty = match self.ty {
                Ty::Series => Ty::Scalar,
                Ty::Bools => Ty::Bool,
                t => t,
            };
        }
        self
    }
}

impl Checker<'_> {
    /// Records that `key` is measured with the current sweep tags (and
    /// `extra` ones), for `plot` patterns and claims.
    pub(super) fn record_key(&mut self, key: &str, extra: &[&str]) {
        self.keys.insert(key.to_string());
        if self.hook.is_some()
            || !extra.is_empty()
            || key.starts_with("train/")
            || key.starts_with("eval/")
        {
            self.stepped_keys.insert(key.to_string());
        }
        let tags = self.key_tags.entry(key.to_string()).or_default();
        for (name, value) in &self.sweep {
            // `rel_error/{S}`: the tag is spelled out in the key. A
            // replicate tag is averaged over, never selected.
            if crate::plan::claim::rendered(key, value) || self.header.replicates.contains(name) {
                continue;
            }
            if let Some(values) = tags
                .entry(name.clone())
                .or_insert_with(|| Some(BTreeSet::new()))
            {
                values.insert(value.clone());
            }
        }
        for name in extra {
            tags.insert(name.to_string(), None);
        }
    }

    /// Types each claim and appends it to the program.
    pub(super) fn check_claims(&mut self) {
        // After another error some measurements were never checked: a key
        // the claim names may be missing only because of that.
        let complete = self.diags.is_empty();
        for c in std::mem::take(&mut self.claims) {
            let errors = self.diags.len();
            let Some(t) = self.claim_expr(c.expr, complete) else {
                continue;
            };
            if self.diags.len() > errors {
                continue;
            }
            match t.ty {
                Ty::Bool => {
                    self.emit(
                        Op::Expect {
                            text: c.text.value.clone(),
                            claim: t.expr,
                        },
                        c.span,
                    );
                }
                Ty::Bools => self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: "a truth value".into(),
                            found: Ty::Bools.describe().into(),
                        },
                        c.expr.span,
                        "one comparison per result: which must hold?",
                    )
                    .hint("wrap it in `all(...)` (every one holds) or `any(...)`"),
                ),
                other => self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: "a truth value".into(),
                            found: other.describe().into(),
                        },
                        c.expr.span,
                        "a claim must be true or false",
                    )
                    .hint("compare it: e.g. `mean(\"loss\") < 0.5`"),
                ),
            }
        }
    }

    fn claim_expr(&mut self, e: &Expr, complete: bool) -> Option<Typed> {
        match &e.kind {
            ExprKind::Int(i) => Some(number(*i as f64)),
            ExprKind::Float(f) if f.is_finite() => Some(number(*f)),
            ExprKind::Float(_) => {
                // `1e400`: the plan could not hold it (JSON has no ∞).
                self.not_finite(e);
                None
            }
            ExprKind::Str(s) => self.claim_key(s, e.span, complete),
            ExprKind::Ident(n) => match self.defs.get(n).copied() {
                // `def gap = "a" - "b"` names a part of claims (this file's
                // defs only, so that spans stay in this file).
                Some(super::block::Def::Value {
                    params: [],
                    value,
                    src: 0,
                    ..
                }) if !self.claim_defs.contains(n) => {
                    self.claim_defs.push(n.clone());
                    let t = self.claim_expr(value, complete);
                    self.claim_defs.pop();
                    t
                }
                _ => self.claim_key(n, e.span, complete),
            },
            ExprKind::Neg(x) => {
                let t = self.claim_expr(x, complete)?;
                self.want_numeric(&t, x.span, "`-`")?;
                Some(Typed {
                    expr: ClaimExpr::Neg {
                        value: Box::new(t.expr),
                    },
                    ..t
                })
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let (l, r) = self.claim_pair(lhs, rhs, complete)?;
                self.want_numeric(&l, lhs.span, "arithmetic")?;
                self.want_numeric(&r, rhs.span, "arithmetic")?;
                let op = match op {
                    BinOp::Add => ArithOp::Add,
                    BinOp::Sub => ArithOp::Sub,
                    BinOp::Mul => ArithOp::Mul,
                    BinOp::Div => ArithOp::Div,
                };
                Some(combine(l, r, Ty::Scalar, Ty::Series, |l, r| {
                    ClaimExpr::Arith { op, lhs: l, rhs: r }
                }))
            }
            ExprKind::Compare { op, lhs, rhs } => {
                let (l, r) = self.claim_pair(lhs, rhs, complete)?;
                self.want_numeric(&l, lhs.span, "a comparison")?;
                self.want_numeric(&r, rhs.span, "a comparison")?;
                let op = match op {
                    CmpOp::Eq => Cmp::Eq,
                    CmpOp::Ne => Cmp::Ne,
                    CmpOp::Lt => Cmp::Lt,
                    CmpOp::Le => Cmp::Le,
                    CmpOp::Gt => Cmp::Gt,
                    CmpOp::Ge => Cmp::Ge,
                };
                Some(combine(l, r, Ty::Bool, Ty::Bools, |l, r| {
                    ClaimExpr::Compare { op, lhs: l, rhs: r }
                }))
            }
            ExprKind::Logic { op, lhs, rhs } => {
                let (l, r) = self.claim_pair(lhs, rhs, complete)?;
                for (t, side) in [(&l, lhs), (&r, rhs)] {
                    if t.ty != Ty::Bool {
                        self.claim_mismatch(
                            side.span,
                            "a truth value",
                            t.ty,
                            "`and`/`or` join claims",
                        );
                        return None;
                    }
                }
                let op = match op {
                    LogicOp::And => Logic::And,
                    LogicOp::Or => Logic::Or,
                };
                Some(Typed {
                    expr: ClaimExpr::Logic {
                        op,
                        lhs: Box::new(l.expr),
                        rhs: Box::new(r.expr),
                    },
                    ty: Ty::Bool,
                    tags: KeyTags::new(),
                    stepped: false,
                })
            }
            ExprKind::Select { base, filters } => {
                let mut t = self.claim_expr(base, complete)?;
                if !matches!(t.ty, Ty::Series | Ty::Bools) {
                    self.claim_mismatch(
                        base.span,
                        "a series of results",
                        t.ty,
                        "selecting by tags",
                    );
                    return None;
                }
                let mut out = Vec::new();
                for f in filters {
                    let Some(tag) = &f.name else {
                        self.error(
                            Diagnostic::new(
                                ErrorKind::Invalid {
                                    message: "a selection names a tag and its value".into(),
                                },
                                f.span,
                                "no tag",
                            )
                            .hint("write `[tag = value]`, e.g. `\"rel_error\"[S = KFAC]`"),
                        );
                        return None;
                    };
                    let value = self.filter_value(&t.tags, &tag.name, tag.span, &f.value)?;
                    t.tags.remove(&tag.name);
                    out.push(TagFilter {
                        tag: tag.name.clone(),
                        value,
                    });
                }
                Some(
                    Typed {
                        expr: ClaimExpr::Select {
                            base: Box::new(t.expr),
                            filters: out,
                        },
                        ..t
                    }
                    .settle(),
                )
            }
            ExprKind::Call { callee, args } => {
                self.claim_call(&callee.name, callee.span, args, e.span, complete)
            }
            _ => {
                let found = self.describe(e);
                self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: "results, numbers, comparisons or reducers".into(),
                            found,
                        },
                        e.span,
                        "not part of a claim",
                    )
                    .hint(format!("reducers: {}", reducer_names())),
                );
                None
            }
        }
    }

    fn claim_pair(&mut self, a: &Expr, b: &Expr, complete: bool) -> Option<(Typed, Typed)> {
        let l = self.claim_expr(a, complete);
        let r = self.claim_expr(b, complete);
        Some((l?, r?))
    }

    fn want_numeric(&mut self, t: &Typed, span: Span, what: &str) -> Option<()> {
        if t.ty.numeric() {
            Some(())
        } else {
            self.claim_mismatch(
                span,
                "a number or a series",
                t.ty,
                &format!("{what} needs numbers"),
            );
            None
        }
    }

    fn claim_mismatch(&mut self, span: Span, expected: &str, found: Ty, label: &str) {
        self.error(Diagnostic::new(
            ErrorKind::TypeMismatch {
                expected: expected.into(),
                found: found.describe().into(),
            },
            span,
            label,
        ));
    }

    /// A key or `*` pattern, which must match something the file measures.
    fn claim_key(&mut self, pattern: &str, span: Span, complete: bool) -> Option<Typed> {
        let matched: Vec<String> = self
            .keys
            .iter()
            .filter(|k| glob(pattern, k))
            .cloned()
            .collect();
        if matched.is_empty() {
            if complete {
                let keys: Vec<&str> = self.keys.iter().map(String::as_str).collect();
                let d = Diagnostic::new(
                    ErrorKind::Invalid {
                        message: format!("no measurement matches `{pattern}`"),
                    },
                    span,
                    "the run measures nothing by this name",
                )
                .hint_opt(did_you_mean(pattern, keys.iter().copied()))
                .hint(if keys.is_empty() {
                    "this file measures nothing".to_string()
                } else {
                    format!(
                        "measured: {}",
                        keys.iter().take(10).copied().collect::<Vec<_>>().join(", ")
                    )
                });
                self.error(d);
            }
            return None;
        }
        let mut tags = KeyTags::new();
        for k in &matched {
            for (name, values) in self.key_tags.get(k).into_iter().flatten() {
                let slot = tags
                    .entry(name.clone())
                    .or_insert_with(|| Some(BTreeSet::new()));
                match (slot.as_mut(), values) {
                    (Some(all), Some(v)) => all.extend(v.iter().cloned()),
                    _ => *slot = None,
                }
            }
        }
        let stepped = matched.iter().any(|k| self.stepped_keys.contains(k));
        if pattern.contains('*') {
            tags.insert("key".into(), Some(matched.into_iter().collect()));
        }
        Some(
            Typed {
                expr: ClaimExpr::Key {
                    pattern: pattern.to_string(),
                },
                ty: Ty::Series,
                tags,
                stepped,
            }
            .settle(),
        )
    }

    /// The value of `tag = value`, as the results record it.
    fn filter_value(
        &mut self,
        tags: &KeyTags,
        tag: &str,
        tag_span: Span,
        value: &Expr,
    ) -> Option<String> {
        let Some(known) = tags.get(tag) else {
            let names: Vec<&str> = tags.keys().map(String::as_str).collect();
            self.error(
                Diagnostic::new(
                    ErrorKind::Unknown {
                        what: "tag".into(),
                        name: tag.into(),
                    },
                    tag_span,
                    "these results are not tagged with it",
                )
                .hint_opt(did_you_mean(tag, names.iter().copied()))
                .hint(if names.is_empty() {
                    "these results have no tags left to select by".to_string()
                } else {
                    format!("tags: {}", names.join(", "))
                }),
            );
            return None;
        };
        let written = match &value.kind {
            ExprKind::Str(s) => s.clone(),
            _ => self.expr_text(value),
        };
        let Some(known) = known else {
            return Some(written);
        };
        let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        let as_num = |s: &str| s.trim().parse::<f64>().ok();
        let found = known.iter().find(|k| **k == written).or_else(|| {
            known.iter().find(|k| {
                squash(k) == squash(&written)
                    || matches!((as_num(k), as_num(&written)), (Some(a), Some(b)) if a == b)
            })
        });
        match found {
            Some(k) => Some(k.clone()),
            None => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::Unknown {
                            what: format!("value of `{tag}`"),
                            name: written.clone(),
                        },
                        value.span,
                        "no result has this value",
                    )
                    .hint_opt(did_you_mean(&written, known.iter().map(String::as_str)))
                    .hint(format!(
                        "`{tag}` takes: {}",
                        known.iter().cloned().collect::<Vec<_>>().join(", ")
                    )),
                );
                None
            }
        }
    }

    fn claim_call(
        &mut self,
        name: &str,
        name_span: Span,
        args: &[crate::syntax::Arg],
        span: Span,
        complete: bool,
    ) -> Option<Typed> {
        let Some(reducer) = Reducer::by_name(name) else {
            self.error(
                Diagnostic::new(
                    ErrorKind::Unknown {
                        what: "reducer".into(),
                        name: name.into(),
                    },
                    name_span,
                    "not a reducer of claims",
                )
                .hint_opt(did_you_mean(name, REDUCERS.iter().map(|r| r.0)))
                .hint(format!("reducers: {}", reducer_names())),
            );
            return None;
        };
        let arity = if matches!(reducer, Reducer::Spearman | Reducer::Ratio) {
            2
        } else {
            1
        };
        let mut positional = Vec::new();
        let mut by_expr = None;
        for a in args {
            match &a.name {
                None => positional.push(&a.value),
                Some(n) if n.name == "by" && by_allowed(reducer) => by_expr = Some(&a.value),
                Some(n) => {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::UnknownOption {
                                func: name.into(),
                                name: n.name.clone(),
                            },
                            n.span,
                            "no such option",
                        )
                        .hint(if by_allowed(reducer) {
                            "the only option is `by = tag` (or a list of tags)"
                        } else {
                            "it takes no options"
                        }),
                    );
                    return None;
                }
            }
        }
        if positional.len() != arity {
            self.error(Diagnostic::new(
                ErrorKind::Invalid {
                    message: format!(
                        "`{name}` takes {}, got {} argument(s)",
                        REDUCERS.iter().find(|r| r.1 == reducer).map_or("", |r| r.2),
                        positional.len()
                    ),
                },
                span,
                "wrong number of arguments",
            ));
            return None;
        }
        let mut typed = Vec::new();
        for p in &positional {
            typed.push(self.claim_expr(p, complete));
        }
        let typed: Vec<Typed> = typed.into_iter().collect::<Option<_>>()?;
        let wants_bools = matches!(
            reducer,
            Reducer::All | Reducer::Any | Reducer::Fraction | Reducer::FirstStep
        );
        for (t, p) in typed.iter().zip(&positional) {
            let ok = if wants_bools {
                matches!(t.ty, Ty::Bools | Ty::Bool)
                    && (reducer != Reducer::FirstStep || t.ty == Ty::Bools)
            } else {
                t.ty == Ty::Series || (t.ty == Ty::Scalar && reducer == Reducer::Ratio)
            };
            if !ok {
                let expected = if wants_bools {
                    "comparisons of results"
                } else {
                    "a series of results"
                };
                self.claim_mismatch(
                    p.span,
                    expected,
                    t.ty,
                    &format!("`{name}` needs {expected}"),
                );
                return None;
            }
        }
        let mut tags = KeyTags::new();
        for t in &typed {
            for (k, v) in &t.tags {
                tags.insert(k.clone(), v.clone());
            }
        }
        let by = match by_expr {
            None => Vec::new(),
            Some(b) => self.by_tags(b, &tags)?,
        };
        let ty = match reducer {
            Reducer::All | Reducer::Any if by.is_empty() => Ty::Bool,
            Reducer::All | Reducer::Any => Ty::Bools,
            Reducer::First | Reducer::Last | Reducer::FirstStep | Reducer::Ratio => Ty::Series,
            _ if by.is_empty() => Ty::Scalar,
            _ => Ty::Series,
        };
        let stepped = reducer == Reducer::Ratio && typed.iter().any(|t| t.stepped);
        let tags = match reducer {
            Reducer::First | Reducer::Last | Reducer::FirstStep | Reducer::Ratio => tags,
            _ => tags.into_iter().filter(|(k, _)| by.contains(k)).collect(),
        };
        Some(
            Typed {
                expr: ClaimExpr::Reduce {
                    reducer,
                    args: typed.into_iter().map(|t| t.expr).collect(),
                    by,
                },
                ty,
                tags,
                stepped,
            }
            .settle(),
        )
    }

    /// `by = tag` or `by = [tag, ...]`: tags the argument has.
    fn by_tags(&mut self, e: &Expr, tags: &KeyTags) -> Option<Vec<String>> {
        let items: Vec<&Expr> = match &e.kind {
            ExprKind::List(items) => items.iter().map(|i| &i.value).collect(),
            _ => vec![e],
        };
        let mut out = Vec::new();
        for it in items {
            let name = match &it.kind {
                ExprKind::Ident(n) | ExprKind::Str(n) => n.clone(),
                _ => {
                    self.error(Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: "a tag name".into(),
                            found: self.describe(it),
                        },
                        it.span,
                        "`by` names tags",
                    ));
                    return None;
                }
            };
            if !tags.contains_key(&name) {
                let names: Vec<&str> = tags.keys().map(String::as_str).collect();
                self.error(
                    Diagnostic::new(
                        ErrorKind::Unknown {
                            what: "tag".into(),
                            name: name.clone(),
                        },
                        it.span,
                        "these results are not tagged with it",
                    )
                    .hint_opt(did_you_mean(&name, names.iter().copied()))
                    .hint(format!("tags: {}", names.join(", "))),
                );
                return None;
            }
            out.push(name);
        }
        Some(out)
    }
}

fn number(v: f64) -> Typed {
    Typed {
        expr: ClaimExpr::Number { value: v },
        ty: Ty::Scalar,
        tags: KeyTags::new(),
        stepped: false,
    }
}

/// A binary operation: `one` when both sides are single values, `many`
/// otherwise (the sides' tags joined).
fn combine(
    l: Typed,
    r: Typed,
    one: Ty,
    many: Ty,
    make: impl FnOnce(Box<ClaimExpr>, Box<ClaimExpr>) -> ClaimExpr,
) -> Typed {
    let single = l.ty == Ty::Scalar && r.ty == Ty::Scalar;
    let stepped = l.stepped || r.stepped;
    let mut tags = l.tags;
    tags.extend(r.tags);
    Typed {
        expr: make(Box::new(l.expr), Box::new(r.expr)),
        ty: if single { one } else { many },
        tags,
        stepped,
    }
    .settle()
}

fn by_allowed(r: Reducer) -> bool {
    !matches!(
        r,
        Reducer::First | Reducer::Last | Reducer::FirstStep | Reducer::Ratio
    )
}

fn reducer_names() -> String {
    REDUCERS.iter().map(|r| r.0).collect::<Vec<_>>().join(", ")
}
