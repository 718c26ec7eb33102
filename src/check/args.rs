//! Arguments and plain values: binding a call's arguments to a function's
//! parameters, and checking numbers, strings, symbols against what a
//! parameter accepts. Every failure becomes a diagnostic and `None`.

use super::env::{Binding, Val};
use super::Checker;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::MAX_NODE_SIZE;
use crate::syntax::{Arg, Expr, ExprKind, Ident, Span};
use std::collections::BTreeMap;

/// A call whose arguments were matched to parameter names.
pub struct Call<'a> {
    pub func: String,
    pub span: Span,
    pub args: BTreeMap<&'static str, &'a Expr>,
    /// Positional arguments beyond the named parameters (variadic calls).
    pub rest: Vec<&'a Expr>,
    /// Arguments keyed by a quoted layer name or pattern (`"fc" = Diag`),
    /// in source order, for calls that take them.
    pub keyed: Vec<(&'a Ident, &'a Expr)>,
}

impl<'a> Call<'a> {
    pub fn get(&self, name: &str) -> Option<&'a Expr> {
        self.args.get(name).copied()
    }
}

/// Where a call's arguments beyond its named parameters may go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Extra {
    /// Nowhere: they are errors.
    None,
    /// Surplus positional arguments go to [`Call::rest`].
    Variadic,
    /// Arguments keyed by a quoted layer name go to [`Call::keyed`].
    Keyed,
}

impl<'a> Checker<'a> {
    /// `name` or `name(args...)`: the callee and its arguments, else a
    /// located error saying a `what` (one of `names`) was expected.
    pub(super) fn named(
        &mut self,
        d: &'a Expr,
        what: &str,
        names: &[&str],
    ) -> Option<(Ident, &'a [Arg])> {
        match &d.kind {
            ExprKind::Ident(n) => Some((
                Ident {
                    name: n.clone(),
                    span: d.span,
                },
                &[],
            )),
            ExprKind::Call { callee, args } => Some((callee.clone(), args.as_slice())),
            _ => {
                let found = self.describe(d);
                self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: format!("a {what}"),
                            found,
                        },
                        d.span,
                        format!("not a {what}"),
                    )
                    .hint(format!("{what}s: {}", names.join(", "))),
                );
                None
            }
        }
    }

    /// Matches `args` to `params` (positional in order, or by name).
    pub(super) fn bind(
        &mut self,
        callee: &Ident,
        span: Span,
        args: &'a [Arg],
        params: &[&'static str],
    ) -> Option<Call<'a>> {
        self.bind_as(callee, span, args, params, Extra::None)
    }

    /// Like [`bind`], but surplus positional arguments go to `rest`.
    pub(super) fn bind_variadic(
        &mut self,
        callee: &Ident,
        span: Span,
        args: &'a [Arg],
        params: &[&'static str],
    ) -> Option<Call<'a>> {
        self.bind_as(callee, span, args, params, Extra::Variadic)
    }

    /// Like [`bind`], with `extra` saying where arguments beyond the named
    /// parameters go.
    pub(super) fn bind_as(
        &mut self,
        callee: &Ident,
        span: Span,
        args: &'a [Arg],
        params: &[&'static str],
        extra: Extra,
    ) -> Option<Call<'a>> {
        let mut call = Call {
            func: callee.name.clone(),
            span,
            args: BTreeMap::new(),
            rest: Vec::new(),
            keyed: Vec::new(),
        };
        let mut ok = true;
        let mut next_positional = 0;
        for a in args {
            if let (true, Some(n)) = (a.quoted, &a.name) {
                if extra == Extra::Keyed {
                    call.keyed.push((n, &a.value));
                } else {
                    self.error(quoted_key(callee, n));
                    ok = false;
                }
                continue;
            }
            match &a.name {
                Some(n) => match params.iter().find(|p| **p == n.name) {
                    Some(p) => {
                        if call.args.insert(p, &a.value).is_some() {
                            self.error(Diagnostic::new(
                                ErrorKind::Duplicate {
                                    name: n.name.clone(),
                                },
                                n.span,
                                "given again here",
                            ));
                            ok = false;
                        }
                    }
                    None => {
                        self.error(unknown_option(callee, n, params));
                        ok = false;
                    }
                },
                None => {
                    // Variadic calls take every positional argument as `rest`.
                    if extra == Extra::Variadic {
                        call.rest.push(&a.value);
                        continue;
                    }
                    while next_positional < params.len()
                        && args.iter().any(|b| {
                            !b.quoted
                                && b.name
                                    .as_ref()
                                    .is_some_and(|n| n.name == params[next_positional])
                        })
                    {
                        next_positional += 1;
                    }
                    if next_positional >= params.len() {
                        self.error(
                            Diagnostic::new(
                                ErrorKind::TooManyArguments {
                                    func: callee.name.clone(),
                                    max: params.len(),
                                },
                                a.span,
                                "extra argument",
                            )
                            .hint(if params.is_empty() {
                                format!("`{}` takes no arguments", callee.name)
                            } else {
                                format!("`{}` takes: {}", callee.name, params.join(", "))
                            }),
                        );
                        ok = false;
                        continue;
                    }
                    call.args.insert(params[next_positional], &a.value);
                    next_positional += 1;
                }
            }
        }
        ok.then_some(call)
    }

    /// A required argument.
    pub(super) fn req(&mut self, call: &Call<'a>, name: &str) -> Option<&'a Expr> {
        let v = call.get(name);
        if v.is_none() {
            self.missing(call, name, format!("add `{name} = ...`"));
        }
        v
    }

    /// Reports that `call` lacks the required option `name`.
    pub(super) fn missing(&mut self, call: &Call<'a>, name: &str, hint: String) {
        self.error(
            Diagnostic::new(
                ErrorKind::MissingOption {
                    func: call.func.clone(),
                    name: name.into(),
                },
                call.span,
                format!("`{name}` is missing"),
            )
            .hint(hint),
        );
    }

    /// Follows sweep variables and `let` bindings of plain values to the
    /// expression they stand for.
    pub(super) fn deref(&self, e: &'a Expr) -> &'a Expr {
        let mut e = e;
        for _ in 0..64 {
            match &e.kind {
                ExprKind::Ident(n) => match self.scopes.get(n) {
                    Some(Binding::Expr(bound, _)) if !std::ptr::eq(*bound, e) => e = bound,
                    _ => return e,
                },
                _ => return e,
            }
        }
        e
    }

    /// The value a name is bound to, if it is bound to a value.
    pub(super) fn lookup_val(&self, name: &str) -> Option<Val> {
        match self.scopes.get(name) {
            Some(Binding::Val(v, _)) => Some(v.clone()),
            _ => None,
        }
    }

    /// The source text of an expression, whitespace collapsed.
    pub(super) fn expr_text(&self, e: &Expr) -> String {
        let raw = self.src.get(e.span.start..e.span.end).unwrap_or("");
        let mut out = String::new();
        let mut space = false;
        for c in raw.chars() {
            if c.is_whitespace() {
                space = true;
            } else {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                out.push(c);
            }
        }
        out
    }

    /// What an expression is, for "expected X, found Y" messages.
    pub(super) fn describe(&self, e: &'a Expr) -> String {
        let e = self.deref(e);
        match &e.kind {
            ExprKind::Int(i) => format!("the integer {i}"),
            ExprKind::Float(f) => format!("the number {f}"),
            ExprKind::Size(_) => "a memory size".into(),
            ExprKind::Str(s) => format!("the string \"{s}\""),
            ExprKind::Bool(b) => format!("`{b}`"),
            ExprKind::Ident(n) => match self.scopes.get(n) {
                Some(Binding::Val(v, _)) => format!("{} `{n}`", v.kind()),
                _ => format!("`{n}`"),
            },
            ExprKind::List(_) => "a list".into(),
            ExprKind::Call { callee, .. } => format!("a call to `{}`", callee.name),
            ExprKind::Index { .. } => "an indexed value".into(),
            ExprKind::Field { .. } => "a field access".into(),
            ExprKind::Select { .. } => "a selection of results".into(),
            ExprKind::Pipe { .. } => "a pipeline".into(),
            ExprKind::Binary { .. } | ExprKind::Neg(_) => "an arithmetic expression".into(),
            ExprKind::Compare { .. } => "a comparison".into(),
            ExprKind::Logic { .. } => "a condition".into(),
            ExprKind::Repr { .. } => "a representation".into(),
            ExprKind::Sharded { .. } => "a sharded dataset (`DATA sharded(k)`)".into(),
        }
    }

    fn mismatch(&mut self, e: &'a Expr, expected: &str, what: &str) {
        let found = self.describe(e);
        self.error(Diagnostic::new(
            ErrorKind::TypeMismatch {
                expected: expected.into(),
                found,
            },
            e.span,
            format!("`{what}` needs {expected}"),
        ));
    }

    /// A number, with arithmetic on numbers allowed (`1/16`, `-0.5`).
    /// `1e400` and the like: E004 at the literal.
    pub(super) fn not_finite(&mut self, e: &Expr) {
        self.error(Diagnostic::new(
            ErrorKind::BadNumber {
                text: self.expr_text(e),
            },
            e.span,
            "not a finite number",
        ));
    }

    /// Whether `name` is a `def name(...) = value` (not a block).
    fn is_value_def(&self, name: &str) -> bool {
        matches!(self.defs.get(name), Some(super::block::Def::Value { .. }))
    }

    /// A call of a value `def` written in the checked file (`f(2)` in a
    /// layer's argument), evaluated as inside a block.
    fn eval_value_def(&mut self, call: &'a Expr) -> Option<super::block::V<'a>> {
        let frame = super::block::Frame {
            top: true,
            ..Default::default()
        };
        self.eval_v(call, &frame)
    }

    pub(super) fn number(&mut self, e: &'a Expr, what: &str) -> Option<f64> {
        let e = self.deref(e);
        match &e.kind {
            ExprKind::Int(i) => Some(*i as f64),
            ExprKind::Call { callee, .. } if self.is_value_def(&callee.name) => {
                match self.eval_value_def(e)? {
                    super::block::V::Int(i) => Some(i as f64),
                    super::block::V::Float(f) if f.is_finite() => Some(f),
                    _ => {
                        self.mismatch(e, "a number", what);
                        None
                    }
                }
            }
            ExprKind::Float(f) if f.is_finite() => Some(*f),
            ExprKind::Float(_) => {
                self.not_finite(e);
                None
            }
            ExprKind::Neg(x) => self.number(x, what).map(|v| -v),
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.number(lhs, what)?;
                let b = self.number(rhs, what)?;
                let v = op.apply(a, b);
                if v.is_finite() {
                    Some(v)
                } else {
                    self.error(Diagnostic::new(
                        ErrorKind::BadNumber {
                            text: self.expr_text(e),
                        },
                        e.span,
                        "this is not a finite number",
                    ));
                    None
                }
            }
            ExprKind::Str(t) if t.trim().parse::<f64>().is_ok() => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: "a number".into(),
                            found: self.describe(e),
                        },
                        e.span,
                        format!("`{what}` needs a number"),
                    )
                    .hint(format!("remove the quotes: `{}`", t.trim())),
                );
                None
            }
            _ => {
                self.mismatch(e, "a number", what);
                None
            }
        }
    }

    /// A number within `[min, max]`.
    pub(super) fn float_in(&mut self, e: &'a Expr, what: &str, min: f64, max: f64) -> Option<f64> {
        let v = self.number(e, what)?;
        if v < min || v > max {
            self.out_of_range(e, what, v, &range_text(min, max));
            return None;
        }
        Some(v)
    }

    /// A number strictly above `min`.
    pub(super) fn positive(&mut self, e: &'a Expr, what: &str) -> Option<f64> {
        let v = self.number(e, what)?;
        if v <= 0.0 {
            self.out_of_range(e, what, v, "must be > 0");
            return None;
        }
        Some(v)
    }

    pub(super) fn out_of_range(&mut self, e: &'a Expr, what: &str, v: f64, range: &str) {
        self.error(Diagnostic::new(
            ErrorKind::OutOfRange {
                name: what.into(),
                value: fmt_num(v),
                range: range.into(),
            },
            e.span,
            range.to_string(),
        ));
    }

    /// An integer within `[min, max]`.
    pub(super) fn int(&mut self, e: &'a Expr, what: &str, min: i64, max: i64) -> Option<i64> {
        let d = self.deref(e);
        let v = match &d.kind {
            ExprKind::Int(i) => *i,
            ExprKind::Float(f) if f.fract() == 0.0 && f.abs() < 9e15 => *f as i64,
            ExprKind::Call { callee, .. } if self.is_value_def(&callee.name) => {
                match self.eval_value_def(d)? {
                    super::block::V::Int(i) => i,
                    super::block::V::Float(f) if f.fract() == 0.0 && f.abs() < 9e15 => f as i64,
                    _ => {
                        self.mismatch(d, "an integer", what);
                        return None;
                    }
                }
            }
            ExprKind::Neg(_) | ExprKind::Binary { .. } => {
                let f = self.number(d, what)?;
                if f.fract() != 0.0 {
                    self.mismatch(d, "an integer", what);
                    return None;
                }
                f as i64
            }
            _ => {
                self.mismatch(d, "an integer", what);
                return None;
            }
        };
        if v < min || v > max {
            // The bound that is broken, with the value as written (an
            // `f64` would round a large one).
            let range = if max < MAX_NODE_SIZE as i64 {
                format!("must be between {min} and {max}")
            } else if v < min {
                format!("must be ≥ {min}")
            } else {
                format!("must be ≤ {max}")
            };
            self.error(Diagnostic::new(
                ErrorKind::OutOfRange {
                    name: what.into(),
                    value: v.to_string(),
                    range: range.clone(),
                },
                d.span,
                range,
            ));
            return None;
        }
        Some(v)
    }

    /// A count ≥ 1.
    pub(super) fn count(&mut self, e: &'a Expr, what: &str) -> Option<usize> {
        self.int(e, what, 1, 1 << 40).map(|v| v as usize)
    }

    pub(super) fn seed(&mut self, call: &Call<'a>) -> Option<u64> {
        match call.get("seed") {
            Some(e) => self.int(e, "seed", 0, u32::MAX as i64).map(|v| v as u64),
            None => Some(self.header.seed),
        }
    }

    pub(super) fn boolean(&mut self, e: &'a Expr, what: &str) -> Option<bool> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Bool(b) => Some(*b),
            _ => {
                self.mismatch(d, "`true` or `false`", what);
                None
            }
        }
    }

    pub(super) fn string(&mut self, e: &'a Expr, what: &str) -> Option<String> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Str(s) => Some(s.clone()),
            _ => {
                self.mismatch(d, "a string", what);
                None
            }
        }
    }

    pub(super) fn size(&mut self, e: &'a Expr, what: &str) -> Option<u64> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Size(b) if *b > 0 => Some(*b),
            ExprKind::Int(i) if *i > 0 => Some(*i as u64),
            _ => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: "a memory size".into(),
                            found: self.describe(d),
                        },
                        d.span,
                        format!("`{what}` needs a size such as `8GiB`"),
                    )
                    .hint("units: B, KiB, MiB, GiB, TiB, kB, MB, GB, TB"),
                );
                None
            }
        }
    }

    /// A bare word (identifier), e.g. a backend name.
    pub(super) fn word(&mut self, e: &'a Expr, what: &str) -> Option<String> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Ident(n) => Some(n.clone()),
            ExprKind::Str(s) if !s.is_empty() => Some(s.clone()),
            _ => {
                self.mismatch(d, "a name", what);
                None
            }
        }
    }

    /// One of `choices`, written as a bare word.
    pub(super) fn symbol(&mut self, e: &'a Expr, what: &str, choices: &[&str]) -> Option<String> {
        let d = self.deref(e);
        let word = match &d.kind {
            ExprKind::Ident(n) => n.clone(),
            ExprKind::Call { callee, args } if args.is_empty() => callee.name.clone(),
            _ => {
                let found = self.describe(d);
                self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: format!("one of {}", quoted(choices)),
                            found,
                        },
                        d.span,
                        format!("not a valid {what}"),
                    )
                    .hint(format!("{what}: {}", choices.join(", "))),
                );
                return None;
            }
        };
        if choices.contains(&word.as_str()) {
            return Some(word);
        }
        self.error(
            Diagnostic::new(
                ErrorKind::BadChoice {
                    what: what.into(),
                    value: word.clone(),
                },
                d.span,
                format!("expected {}", quoted(choices)),
            )
            .hint_opt(did_you_mean(&word, choices.iter().copied())),
        );
        None
    }

    /// A list of integers (`[128, 128]`), or a single one.
    pub(super) fn int_list(&mut self, e: &'a Expr, what: &str, min: i64) -> Option<Vec<usize>> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::List(items) => {
                let mut out = Vec::new();
                let mut ok = true;
                for it in items {
                    match self.int(&it.value, what, min, MAX_NODE_SIZE as i64) {
                        Some(v) => out.push(v as usize),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            _ => self
                .int(d, what, min, MAX_NODE_SIZE as i64)
                .map(|v| vec![v as usize]),
        }
    }

    /// A list of numbers (or one number).
    pub(super) fn number_list(&mut self, e: &'a Expr, what: &str) -> Option<Vec<f64>> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::List(items) => {
                let vals: Vec<Option<f64>> = items
                    .iter()
                    .map(|it| self.number(&it.value, what))
                    .collect();
                vals.into_iter().collect()
            }
            _ => self.number(d, what).map(|v| vec![v]),
        }
    }

    /// A list of strings.
    pub(super) fn str_list(&mut self, e: &'a Expr, what: &str) -> Option<Vec<String>> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::List(items) => {
                let mut out = Vec::new();
                for it in items {
                    out.push(self.string(&it.value, what)?);
                }
                Some(out)
            }
            ExprKind::Str(s) => Some(vec![s.clone()]),
            _ => {
                self.mismatch(d, "a list of strings", what);
                None
            }
        }
    }

    /// A call by name, or a bare name standing for a call without arguments.
    pub(super) fn as_call(e: &'a Expr) -> Option<(&'a Ident, &'a [Arg])> {
        match &e.kind {
            ExprKind::Call { callee, args } => Some((callee, args.as_slice())),
            _ => None,
        }
    }
}

/// "`f` has no option `n`", with the closest option and the list. A layer
/// lists every option it takes, also those only its block form reads
/// (a grouped `conv2d` is built there).
pub fn unknown_option(callee: &Ident, n: &Ident, params: &[&str]) -> Diagnostic {
    let params = super::ctor::ctor_params(&callee.name)
        .filter(|all| params.iter().all(|p| all.contains(p)) && all.len() > params.len())
        .unwrap_or(params);
    Diagnostic::new(
        ErrorKind::UnknownOption {
            func: callee.name.clone(),
            name: n.name.clone(),
        },
        n.span,
        "unknown option",
    )
    .hint_opt(did_you_mean(&n.name, params.iter().copied()))
    .hint(if params.is_empty() {
        format!("`{}` takes no options", callee.name)
    } else {
        format!("`{}` takes: {}", callee.name, params.join(", "))
    })
}

pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn range_text(min: f64, max: f64) -> String {
    if max >= (1u64 << 40) as f64 {
        format!("must be ≥ {}", fmt_num(min))
    } else {
        format!("must be between {} and {}", fmt_num(min), fmt_num(max))
    }
}

pub fn quoted(choices: &[&str]) -> String {
    let q: Vec<String> = choices.iter().map(|c| format!("`{c}`")).collect();
    match q.len() {
        0 => String::new(),
        1 => q[0].clone(),
        n => format!("{} or {}", q[..n - 1].join(", "), q[n - 1]),
    }
}

/// A quoted key (`"fc" = ...`) where the function takes only option names.
pub(super) fn quoted_key(callee: &Ident, key: &Ident) -> Diagnostic {
    Diagnostic::new(
        ErrorKind::Invalid {
            message: format!("`{}` takes no layer-keyed arguments", callee.name),
        },
        key.span,
        "a quoted name keys a layer",
    )
    .hint(format!(
        "write option names without quotes (`{} = ...`); quoted layer names are for `mix(...)`",
        key.name
    ))
}
