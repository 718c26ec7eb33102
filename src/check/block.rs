//! Blocks and defs: user-defined, parametrised modules evaluated at check
//! time.
//!
//! A block's parameters and members are evaluated to [`V`]alues: numbers,
//! booleans, symbols (`cifar`), lists and *module descriptions*
//! ([`Module`]). A description is not yet a layer of any model: it gets
//! its PyTorch module path, and its shapes, only when it is applied to an
//! input (`graph.rs`). So the same description may be copied freely
//! (`repeat(3, basic(64, 64))`) and an absent module (`when(false, ...)`)
//! costs nothing.
//!
//! Blocks may live in another source (an imported file or the model
//! library). Errors found there are reported at the call in the checked
//! file, with the inner location as a hint: the rendering of diagnostics
//! knows one source only.

use super::Checker;
use crate::diag::{did_you_mean, line_col, Diagnostic, ErrorKind};
use crate::plan::Layer;
use crate::syntax::{Arg, BinOp, CmpOp, Expr, ExprKind, Ident, LogicOp, Member, Param, Span};
use std::collections::BTreeMap;
use std::rc::Rc;

/// Index into [`Checker::sources`]; 0 is the checked file.
pub type SrcId = usize;

/// A source other than the checked file: an import or a library file.
pub struct Source<'a> {
    pub name: String,
    pub text: &'a str,
}

/// A `block` or `def` visible to the checked file.
#[derive(Clone, Copy)]
pub enum Def<'a> {
    Block {
        name: &'a Ident,
        params: &'a [Param],
        members: &'a [Member],
        src: SrcId,
    },
    Value {
        name: &'a Ident,
        params: &'a [Param],
        value: &'a Expr,
        src: SrcId,
    },
}

impl<'a> Def<'a> {
    pub fn name(&self) -> &'a Ident {
        match self {
            Def::Block { name, .. } | Def::Value { name, .. } => name,
        }
    }
    pub fn params(&self) -> &'a [Param] {
        match self {
            Def::Block { params, .. } | Def::Value { params, .. } => params,
        }
    }
    pub fn src(&self) -> SrcId {
        match self {
            Def::Block { src, .. } | Def::Value { src, .. } => *src,
        }
    }
}

/// A value while evaluating blocks.
#[derive(Clone, Debug)]
pub enum V<'a> {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// A bare word that names nothing: `cifar`, `imagenet`.
    Sym(String),
    List(Vec<V<'a>>),
    Module(Rc<Module<'a>>),
    /// `when(false, ...)`: no module (identity where applied, skipped in a
    /// `sequential`).
    Absent,
}

impl V<'_> {
    pub fn describe(&self) -> String {
        match self {
            V::Int(i) => format!("the integer {i}"),
            V::Float(f) => format!("the number {f}"),
            V::Bool(b) => format!("`{b}`"),
            V::Str(s) => format!("the string \"{s}\""),
            V::Sym(s) => format!("`{s}`"),
            V::List(_) => "a list".into(),
            V::Module(_) => "a module".into(),
            V::Absent => "an absent module".into(),
        }
    }
}

/// A module description.
#[derive(Debug)]
pub enum Module<'a> {
    /// A built-in layer (`conv2d(...)`, `relu`).
    Layer(Layer),
    /// `dropout(p)` (identity at evaluation, as in curvature computations)
    /// or `identity`: takes an index in a `sequential`, has no layer.
    Identity,
    Seq(Vec<Rc<Module<'a>>>),
    Block(Inst<'a>),
}

/// An instantiated block: its members, evaluated.
#[derive(Debug)]
pub struct Inst<'a> {
    pub block: String,
    pub src: SrcId,
    /// Parameters and non-module members.
    pub env: BTreeMap<String, V<'a>>,
    /// Module members (`Absent` for `when(false, ...)`) in declaration
    /// (registration) order, with where they are declared.
    pub modules: Vec<(String, V<'a>, Span)>,
    /// `out(x, ...) = expr`.
    pub out: Option<(&'a [Ident], &'a Expr)>,
}

impl<'a> Inst<'a> {
    pub fn member(&self, name: &str) -> Option<&V<'a>> {
        self.modules
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v)
    }
}

/// What names mean while evaluating a value.
#[derive(Clone, Default)]
pub struct Frame<'a> {
    pub src: SrcId,
    pub vars: BTreeMap<String, V<'a>>,
    /// Module members declared so far (only usable in `out`).
    pub members: Vec<String>,
    /// Arguments written in the checked file: sweep variables and `let`s
    /// of plain values are visible.
    pub top: bool,
}

/// A call's argument, evaluated.
pub struct ArgV<'a> {
    pub name: Option<&'a Ident>,
    pub value: V<'a>,
    pub span: Span,
}

/// Layer constructors and their options.
pub const CTORS: [(&str, &[&str]); 18] = [
    ("linear", &["in", "out", "bias"]),
    (
        "conv2d",
        &[
            "in", "out", "kernel", "stride", "padding", "bias", "dilation",
        ],
    ),
    (
        "conv1d",
        &["in", "out", "kernel", "stride", "padding", "bias"],
    ),
    ("relu", &[]),
    ("tanh", &[]),
    ("sigmoid", &[]),
    ("gelu", &[]),
    ("flatten", &[]),
    ("maxpool2d", &["kernel", "stride"]),
    ("avgpool2d", &["kernel", "stride"]),
    ("adaptive_avgpool2d", &["output"]),
    ("batchnorm1d", &["features", "eps"]),
    ("batchnorm2d", &["features", "eps"]),
    ("layernorm", &["shape", "eps"]),
    ("groupnorm", &["groups", "channels", "eps"]),
    ("dropout", &["p"]),
    ("identity", &[]),
    ("sequential", &[]),
];

/// Functions of block bodies besides the constructors.
pub const BUILTINS: [&str; 6] = ["if", "when", "repeat", "choice", "require", "cat"];

/// Deepest nesting of block and def calls (guards against runaway
/// recursion through defaults).
const MAX_DEPTH: usize = 48;

pub fn ctor_params(name: &str) -> Option<&'static [&'static str]> {
    CTORS.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

impl<'a> Checker<'a> {
    /// Reports an error found while evaluating code of source `src`.
    pub(super) fn error_in(&mut self, src: SrcId, d: Diagnostic) {
        if src == 0 {
            self.error(d);
            return;
        }
        let source = &self.sources[src];
        let at = |s: Span| {
            let (l, c) = line_col(source.text, s.start);
            format!("{}:{l}:{c}", source.name)
        };
        let mut hints = vec![format!("at {}: {}", at(d.span), d.label)];
        for (s, text) in &d.related {
            hints.push(format!("{}: {text}", at(*s)));
        }
        let block = self
            .eval_stack
            .iter()
            .rev()
            .find(|(_, s)| *s == src)
            .map(|(n, _)| n.clone())
            .unwrap_or_default();
        let mut out = Diagnostic::new(
            d.kind,
            self.anchor.unwrap_or_default(),
            format!("in `{block}` ({})", source.name),
        );
        out.hints = hints;
        out.hints.extend(d.hints);
        self.error(out);
    }

    fn err_at(&mut self, src: SrcId, kind: ErrorKind, span: Span, label: impl Into<String>) {
        self.error_in(src, Diagnostic::new(kind, span, label));
    }

    fn expect(&mut self, f: &Frame<'a>, e: &'a Expr, v: &V<'a>, expected: &str, what: &str) {
        self.err_at(
            f.src,
            ErrorKind::TypeMismatch {
                expected: expected.into(),
                found: v.describe(),
            },
            e.span,
            format!("`{what}` needs {expected}"),
        );
    }

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
        if ctor_params(n).is_some_and(|p| p.is_empty() || n == "dropout") {
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

    fn truth(&mut self, e: &'a Expr, v: &V<'a>, f: &Frame<'a>) -> Option<bool> {
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
                            text: format!("{x} {op:?} {y}"),
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

    pub(super) fn eval_args(
        &mut self,
        args: impl IntoIterator<Item = &'a Arg>,
        f: &Frame<'a>,
    ) -> Option<Vec<ArgV<'a>>> {
        let mut out = Vec::new();
        let mut ok = true;
        for a in args {
            match self.eval_v(&a.value, f) {
                Some(value) => out.push(ArgV {
                    name: a.name.as_ref(),
                    value,
                    span: a.value.span,
                }),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn eval_call(
        &mut self,
        e: &'a Expr,
        callee: &'a Ident,
        args: &'a [Arg],
        f: &Frame<'a>,
    ) -> Option<V<'a>> {
        let n = callee.name.as_str();
        match n {
            // Lazy: only the chosen branch is evaluated.
            "if" => {
                let [c, a, b] = args else {
                    self.arity(f, callee, e.span, "if(condition, then, else)");
                    return None;
                };
                let cv = self.eval_v(&c.value, f)?;
                if self.truth(&c.value, &cv, f)? {
                    self.eval_v(&a.value, f)
                } else {
                    self.eval_v(&b.value, f)
                }
            }
            "when" => {
                let [c, m] = args else {
                    self.arity(f, callee, e.span, "when(condition, module)");
                    return None;
                };
                let cv = self.eval_v(&c.value, f)?;
                if !self.truth(&c.value, &cv, f)? {
                    return Some(V::Absent);
                }
                let mv = self.eval_v(&m.value, f)?;
                match mv {
                    V::Module(_) | V::Absent => Some(mv),
                    other => {
                        self.expect(f, &m.value, &other, "a module", "when");
                        None
                    }
                }
            }
            "repeat" => {
                let [k, item] = args else {
                    self.arity(f, callee, e.span, "repeat(count, item)");
                    return None;
                };
                let kv = self.eval_v(&k.value, f)?;
                let count = match kv {
                    V::Int(i) if (0..=4096).contains(&i) => i as usize,
                    other => {
                        self.expect(f, &k.value, &other, "a count between 0 and 4096", "repeat");
                        return None;
                    }
                };
                let v = self.eval_v(&item.value, f)?;
                Some(V::List(vec![v; count]))
            }
            "choice" => {
                let [x, options] = args else {
                    self.arity(f, callee, e.span, "choice(value, [allowed, ...])");
                    return None;
                };
                let xv = self.eval_v(&x.value, f)?;
                let V::List(opts) = self.eval_v(&options.value, f)? else {
                    self.arity(f, callee, e.span, "choice(value, [allowed, ...])");
                    return None;
                };
                let shown: Vec<String> = opts.iter().map(show).collect();
                if shown.contains(&show(&xv)) {
                    return Some(xv);
                }
                let what = x.value.as_ident().unwrap_or("value").to_string();
                let d = Diagnostic::new(
                    ErrorKind::BadChoice {
                        what: what.clone(),
                        value: show(&xv),
                    },
                    x.value.span,
                    format!("expected one of {}", shown.join(", ")),
                )
                .hint_opt(did_you_mean(&show(&xv), shown.iter().map(|s| s.as_str())));
                // Point at the argument in the checked file when it came
                // from there.
                match self.origins.get(&what).copied().filter(|_| f.src != 0) {
                    Some(at) => self.error(Diagnostic { span: at, ..d }),
                    None => self.error_in(f.src, d),
                }
                None
            }
            "require" => {
                let [c, msg] = args else {
                    self.arity(f, callee, e.span, "require(condition, \"message\")");
                    return None;
                };
                let cv = self.eval_v(&c.value, f)?;
                if self.truth(&c.value, &cv, f)? {
                    return Some(V::Bool(true));
                }
                let message = match self.eval_v(&msg.value, f)? {
                    V::Str(s) => s,
                    other => show(&other),
                };
                self.err_at(
                    f.src,
                    ErrorKind::Invalid { message },
                    c.value.span,
                    "this requirement does not hold",
                );
                None
            }
            "cat" => {
                self.err_at(
                    f.src,
                    ErrorKind::Invalid {
                        message: "`cat` joins tensors: use it in `out(x) = ...`".into(),
                    },
                    e.span,
                    "not in `out`",
                );
                None
            }
            _ if ctor_params(n).is_some() => {
                let vals = self.eval_args(args, f)?;
                self.eval_ctor(e.span, callee, vals, f)
            }
            _ => match self.defs.get(n).copied() {
                Some(def) => {
                    let vals = self.eval_args(args, f)?;
                    self.call_def(def, callee, e.span, vals, f)
                }
                None => {
                    let mut cands: Vec<&str> = CTORS.iter().map(|(c, _)| *c).collect();
                    cands.extend(BUILTINS);
                    let defs: Vec<String> = self.defs.keys().cloned().collect();
                    cands.extend(defs.iter().map(|s| s.as_str()));
                    let d = Diagnostic::new(
                        ErrorKind::Unknown {
                            what: "block or layer".into(),
                            name: n.into(),
                        },
                        callee.span,
                        "not a block, def or layer",
                    )
                    .hint_opt(did_you_mean(n, cands.iter().copied()));
                    let d = if f.members.iter().any(|m| m == n) {
                        d.hint(format!("`{n}` is a member: apply it in `out(x) = ...`"))
                    } else {
                        d
                    };
                    self.error_in(f.src, d);
                    None
                }
            },
        }
    }

    fn arity(&mut self, f: &Frame<'a>, callee: &Ident, span: Span, form: &str) {
        self.error_in(
            f.src,
            Diagnostic::new(
                ErrorKind::Invalid {
                    message: format!("`{}` takes its arguments as `{form}`", callee.name),
                },
                span,
                "wrong arguments",
            ),
        );
    }

    /// Matches evaluated arguments to parameter names (positional in order,
    /// or by name), as [`Checker::bind`] does for expressions.
    pub(super) fn bind_vals(
        &mut self,
        src: SrcId,
        callee: &Ident,
        args: Vec<ArgV<'a>>,
        params: &[&str],
    ) -> Option<BTreeMap<String, (V<'a>, Span)>> {
        let mut out = BTreeMap::new();
        let mut ok = true;
        let named: Vec<String> = args
            .iter()
            .filter_map(|a| a.name.map(|n| n.name.clone()))
            .collect();
        let mut next = 0;
        for a in args {
            let key = match a.name {
                Some(n) => {
                    if !params.contains(&n.name.as_str()) {
                        self.error_in(src, super::args::unknown_option(callee, n, params));
                        ok = false;
                        continue;
                    }
                    n.name.clone()
                }
                None => {
                    while next < params.len() && named.iter().any(|n| n == params[next]) {
                        next += 1;
                    }
                    if next >= params.len() {
                        self.error_in(
                            src,
                            Diagnostic::new(
                                ErrorKind::TooManyArguments {
                                    func: callee.name.clone(),
                                    max: params.len(),
                                },
                                a.span,
                                "extra argument",
                            )
                            .hint(takes(&callee.name, params)),
                        );
                        ok = false;
                        continue;
                    }
                    next += 1;
                    params[next - 1].to_string()
                }
            };
            if out.insert(key.clone(), (a.value, a.span)).is_some() {
                self.err_at(
                    src,
                    ErrorKind::Duplicate { name: key },
                    a.span,
                    "given again here",
                );
                ok = false;
            }
        }
        ok.then_some(out)
    }

    /// Calls a block (→ a module) or a def (→ its value).
    pub(super) fn call_def(
        &mut self,
        def: Def<'a>,
        callee: &Ident,
        span: Span,
        args: Vec<ArgV<'a>>,
        f: &Frame<'a>,
    ) -> Option<V<'a>> {
        let name = def.name().name.clone();
        if self.eval_stack.iter().any(|(n, _)| *n == name) || self.eval_stack.len() >= MAX_DEPTH {
            self.error_in(
                f.src,
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: format!("`{name}` uses itself"),
                    },
                    callee.span,
                    "recursive use",
                )
                .hint("blocks and defs cannot be recursive: write the repetition with `repeat(n, ...)`"),
            );
            return None;
        }
        let params: Vec<&str> = def.params().iter().map(|p| p.name.name.as_str()).collect();
        let mut given = self.bind_vals(f.src, callee, args, &params)?;
        // Errors in another source are shown at the outermost call in the
        // checked file.
        let saved_anchor = self.anchor;
        if f.top {
            self.anchor = Some(span);
            self.origins = given.iter().map(|(k, (_, s))| (k.clone(), *s)).collect();
        }
        self.eval_stack.push((name.clone(), def.src()));
        let mut frame = Frame {
            src: def.src(),
            ..Frame::default()
        };
        let mut ok = true;
        for p in def.params() {
            let v = match given.remove(&p.name.name) {
                Some((v, _)) => Some(v),
                None => match &p.default {
                    // Defaults see the parameters before them.
                    Some(d) => self.eval_v(d, &frame),
                    None => {
                        self.error_in(
                            f.src,
                            Diagnostic::new(
                                ErrorKind::MissingOption {
                                    func: name.clone(),
                                    name: p.name.name.clone(),
                                },
                                span,
                                format!("`{}` is missing", p.name.name),
                            )
                            .hint(takes(&name, &params)),
                        );
                        None
                    }
                },
            };
            match v {
                Some(v) => {
                    frame.vars.insert(p.name.name.clone(), v);
                }
                None => ok = false,
            }
        }
        if f.top {
            self.top_params = frame.vars.clone();
        }
        let result = if !ok {
            None
        } else {
            match def {
                Def::Value { value, .. } => self.eval_v(value, &frame),
                Def::Block { members, .. } => self
                    .instantiate(&name, members, frame)
                    .map(|i| V::Module(Rc::new(Module::Block(i)))),
            }
        };
        self.eval_stack.pop();
        self.anchor = saved_anchor;
        result
    }

    /// Evaluates a block's members in order.
    fn instantiate(
        &mut self,
        name: &str,
        members: &'a [Member],
        mut frame: Frame<'a>,
    ) -> Option<Inst<'a>> {
        let src = frame.src;
        let mut inst = Inst {
            block: name.to_string(),
            src,
            env: BTreeMap::new(),
            modules: Vec::new(),
            out: None,
        };
        let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
        let mut ok = true;
        for m in members {
            if let Some(first) = seen.insert(&m.name.name, m.name.span) {
                self.error_in(
                    src,
                    Diagnostic::new(
                        ErrorKind::Redefined {
                            name: m.name.name.clone(),
                        },
                        m.name.span,
                        "declared again here",
                    )
                    .related(first, "first declared here"),
                );
                ok = false;
                continue;
            }
            if frame.vars.contains_key(&m.name.name) {
                self.error_in(
                    src,
                    Diagnostic::new(
                        ErrorKind::Redefined {
                            name: m.name.name.clone(),
                        },
                        m.name.span,
                        "a parameter has this name",
                    ),
                );
                ok = false;
                continue;
            }
            if let Some(inputs) = &m.inputs {
                if m.name.name != "out" {
                    self.error_in(
                        src,
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: "only `out(x) = ...` takes inputs".into(),
                            },
                            m.name.span,
                            "a member with inputs",
                        )
                        .hint(
                            "declare modules as `name = module` and apply them in `out(x) = ...`",
                        ),
                    );
                    ok = false;
                    continue;
                }
                inst.out = Some((inputs.as_slice(), &m.value));
                continue;
            }
            match self.eval_v(&m.value, &frame) {
                Some(v @ (V::Module(_) | V::Absent)) => {
                    frame.members.push(m.name.name.clone());
                    inst.modules.push((m.name.name.clone(), v, m.name.span));
                }
                Some(v) => {
                    frame.vars.insert(m.name.name.clone(), v);
                }
                None => ok = false,
            }
        }
        inst.env = frame.vars;
        ok.then_some(inst)
    }

    /// A layer constructor applied to evaluated arguments.
    pub(super) fn eval_ctor(
        &mut self,
        span: Span,
        callee: &Ident,
        args: Vec<ArgV<'a>>,
        f: &Frame<'a>,
    ) -> Option<V<'a>> {
        let name = callee.name.as_str();
        if name == "sequential" {
            return self.eval_sequential(span, args, f);
        }
        let params = ctor_params(name).unwrap_or(&[]);
        let a = self.bind_vals(f.src, callee, args, params)?;
        let mut g = Getter {
            c: self,
            a: &a,
            src: f.src,
            func: name,
            span,
        };
        let layer = match name {
            "linear" => Layer::Linear {
                in_features: g.count("in")?,
                out_features: g.count("out")?,
                bias: g.bool_or("bias", true)?,
            },
            "conv2d" => Layer::Conv2d {
                in_channels: g.count("in")?,
                out_channels: g.count("out")?,
                kernel: g.pair("kernel", None, 1)?,
                stride: g.pair("stride", Some([1, 1]), 1)?,
                padding: g.pair("padding", Some([0, 0]), 0)?,
                bias: g.bool_or("bias", true)?,
                dilation: g.pair("dilation", Some([1, 1]), 1)?,
            },
            "conv1d" => Layer::Conv1d {
                in_channels: g.count("in")?,
                out_channels: g.count("out")?,
                kernel: g.count("kernel")?,
                stride: g.int_or("stride", 1, 1)?,
                padding: g.int_or("padding", 0, 0)?,
                bias: g.bool_or("bias", true)?,
            },
            "relu" => Layer::Relu,
            "tanh" => Layer::Tanh,
            "sigmoid" => Layer::Sigmoid,
            "gelu" => Layer::Gelu,
            "flatten" => Layer::Flatten,
            "maxpool2d" | "avgpool2d" => {
                let kernel = g.pair("kernel", None, 1)?;
                let stride = g.pair("stride", Some(kernel), 1)?;
                if name == "maxpool2d" {
                    Layer::MaxPool2d { kernel, stride }
                } else {
                    Layer::AvgPool2d { kernel, stride }
                }
            }
            "adaptive_avgpool2d" => Layer::AdaptiveAvgPool2d {
                output: g.pair("output", Some([1, 1]), 1)?,
            },
            "batchnorm1d" => Layer::BatchNorm1d {
                features: g.count("features")?,
                eps: g.eps()?,
            },
            "batchnorm2d" => Layer::BatchNorm2d {
                channels: g.count("features")?,
                eps: g.eps()?,
            },
            "layernorm" => Layer::LayerNorm {
                shape: g.shape("shape")?,
                eps: g.eps()?,
            },
            "groupnorm" => {
                let groups = g.count("groups")?;
                let channels = g.count("channels")?;
                if channels % groups != 0 {
                    g.c.err_at(
                        f.src,
                        ErrorKind::Invalid {
                            message: format!(
                                "{channels} channels do not split into {groups} groups"
                            ),
                        },
                        span,
                        "groups must divide channels",
                    );
                    return None;
                }
                Layer::GroupNorm {
                    groups,
                    channels,
                    eps: g.eps()?,
                }
            }
            // `dropout(p)` and `identity`: identity at evaluation.
            _ => {
                if a.contains_key("p") {
                    g.number_in("p", 0.0, 1.0)?;
                }
                return Some(V::Module(Rc::new(Module::Identity)));
            }
        };
        Some(V::Module(Rc::new(Module::Layer(layer))))
    }

    /// `sequential(a, [b, c], when(x, d), ...)`: lists are spliced and
    /// absent modules dropped before numbering, as a PyTorch
    /// `nn.Sequential(*layers)` built in a loop would be.
    fn eval_sequential(&mut self, span: Span, args: Vec<ArgV<'a>>, f: &Frame<'a>) -> Option<V<'a>> {
        fn splice<'a>(v: V<'a>, out: &mut Vec<Rc<Module<'a>>>, bad: &mut Option<String>) {
            match v {
                V::Module(m) => out.push(m),
                V::Absent => {}
                V::List(items) => items.into_iter().for_each(|i| splice(i, out, bad)),
                other => *bad = Some(other.describe()),
            }
        }
        let mut items = Vec::new();
        for a in args {
            if let Some(n) = a.name {
                self.err_at(
                    f.src,
                    ErrorKind::UnknownOption {
                        func: "sequential".into(),
                        name: n.name.clone(),
                    },
                    n.span,
                    "a sequential inside a block takes modules only",
                );
                return None;
            }
            let mut bad = None;
            splice(a.value, &mut items, &mut bad);
            if let Some(found) = bad {
                self.err_at(
                    f.src,
                    ErrorKind::TypeMismatch {
                        expected: "a module".into(),
                        found,
                    },
                    a.span,
                    "not a module",
                );
                return None;
            }
        }
        if items.is_empty() {
            self.err_at(
                f.src,
                ErrorKind::Invalid {
                    message: "a sequential needs at least one module".into(),
                },
                span,
                "no modules",
            );
            return None;
        }
        Some(V::Module(Rc::new(Module::Seq(items))))
    }
}

/// `value` as written in the language (for `choice` and its messages).
fn show(v: &V) -> String {
    match v {
        V::Int(i) => i.to_string(),
        V::Float(x) => x.to_string(),
        V::Bool(b) => b.to_string(),
        V::Str(s) => format!("\"{s}\""),
        V::Sym(s) => s.clone(),
        V::List(items) => format!(
            "[{}]",
            items.iter().map(show).collect::<Vec<_>>().join(", ")
        ),
        V::Module(_) => "a module".into(),
        V::Absent => "nothing".into(),
    }
}

fn takes(func: &str, params: &[&str]) -> String {
    if params.is_empty() {
        format!("`{func}` takes no arguments")
    } else {
        format!("`{func}` takes: {}", params.join(", "))
    }
}

fn describe_kind(k: &ExprKind) -> &'static str {
    match k {
        ExprKind::Size(_) => "a memory size",
        ExprKind::Field { .. } => "a field access",
        ExprKind::Pipe { .. } => "a pipeline",
        ExprKind::Repr { .. } => "a representation",
        _ => "this expression",
    }
}

/// Reads a constructor's evaluated options.
struct Getter<'c, 'a, 'm> {
    c: &'c mut Checker<'a>,
    a: &'m BTreeMap<String, (V<'a>, Span)>,
    src: SrcId,
    func: &'m str,
    span: Span,
}

impl<'a> Getter<'_, 'a, '_> {
    fn get(&mut self, key: &str) -> Option<(V<'a>, Span)> {
        self.a.get(key).cloned()
    }
    fn missing(&mut self, key: &str) {
        self.c.err_at(
            self.src,
            ErrorKind::MissingOption {
                func: self.func.into(),
                name: key.into(),
            },
            self.span,
            format!("`{key}` is missing"),
        );
    }
    fn bad(&mut self, key: &str, v: &V, span: Span, expected: &str) {
        self.c.err_at(
            self.src,
            ErrorKind::TypeMismatch {
                expected: expected.into(),
                found: v.describe(),
            },
            span,
            format!("`{key}` needs {expected}"),
        );
    }
    fn int_v(&mut self, key: &str, v: &V, span: Span, min: i64) -> Option<usize> {
        match v {
            V::Int(i) if *i >= min && *i <= 1 << 40 => Some(*i as usize),
            V::Int(i) => {
                self.c.err_at(
                    self.src,
                    ErrorKind::OutOfRange {
                        name: key.into(),
                        value: i.to_string(),
                        range: format!("must be ≥ {min}"),
                    },
                    span,
                    format!("must be ≥ {min}"),
                );
                None
            }
            other => {
                self.bad(key, other, span, "an integer");
                None
            }
        }
    }
    fn int_or(&mut self, key: &str, default: usize, min: i64) -> Option<usize> {
        match self.get(key) {
            Some((v, s)) => self.int_v(key, &v, s, min),
            None => Some(default),
        }
    }
    fn count(&mut self, key: &str) -> Option<usize> {
        match self.get(key) {
            Some((v, s)) => self.int_v(key, &v, s, 1),
            None => {
                self.missing(key);
                None
            }
        }
    }
    fn bool_or(&mut self, key: &str, default: bool) -> Option<bool> {
        match self.get(key) {
            Some((V::Bool(b), _)) => Some(b),
            Some((v, s)) => {
                self.bad(key, &v, s, "`true` or `false`");
                None
            }
            None => Some(default),
        }
    }
    fn shape(&mut self, key: &str) -> Option<Vec<usize>> {
        let Some((v, s)) = self.get(key) else {
            self.missing(key);
            return None;
        };
        match v {
            V::List(items) => items.iter().map(|i| self.int_v(key, i, s, 1)).collect(),
            other => self.int_v(key, &other, s, 1).map(|i| vec![i]),
        }
    }
    /// `k` or `[kh, kw]`.
    fn pair(&mut self, key: &str, default: Option<[usize; 2]>, min: i64) -> Option<[usize; 2]> {
        let Some((v, s)) = self.get(key) else {
            if default.is_none() {
                self.missing(key);
            }
            return default;
        };
        match &v {
            V::List(items) if items.len() == 2 => Some([
                self.int_v(key, &items[0], s, min)?,
                self.int_v(key, &items[1], s, min)?,
            ]),
            V::List(_) => {
                self.bad(key, &v, s, "one or two integers");
                None
            }
            other => self.int_v(key, other, s, min).map(|k| [k, k]),
        }
    }
    fn number_in(&mut self, key: &str, min: f64, max: f64) -> Option<f64> {
        let (v, s) = self.get(key)?;
        let x = match v {
            V::Int(i) => i as f64,
            V::Float(x) => x,
            other => {
                self.bad(key, &other, s, "a number");
                return None;
            }
        };
        if x < min || x > max {
            self.c.err_at(
                self.src,
                ErrorKind::OutOfRange {
                    name: key.into(),
                    value: x.to_string(),
                    range: format!("must be between {min} and {max}"),
                },
                s,
                "out of range",
            );
            return None;
        }
        Some(x)
    }
    fn eps(&mut self) -> Option<f64> {
        if self.a.contains_key("eps") {
            return self.number_in("eps", f64::MIN_POSITIVE, 1.0);
        }
        Some(1e-5)
    }
}
