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

use super::ctor::{ctor_params, CTORS};
use super::Checker;
use crate::diag::{did_you_mean, line_col, Diagnostic, ErrorKind};
use crate::plan::Layer;
use crate::syntax::{Arg, Expr, ExprKind, Ident, Member, Param, Span};
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
    Seq(Vec<SeqItem<'a>>),
    Block(Inst<'a>),
}

/// A module of a `sequential(...)` and where it was written (the argument
/// it came from), so that an error in it points there.
#[derive(Debug)]
pub struct SeqItem<'a> {
    pub module: Rc<Module<'a>>,
    pub span: Span,
    pub src: SrcId,
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

/// Functions of block bodies besides the constructors.
pub const BUILTINS: [&str; 6] = ["if", "when", "repeat", "choice", "require", "cat"];

/// Deepest nesting of block and def calls (guards against runaway
/// recursion through defaults).
const MAX_DEPTH: usize = 48;

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

    pub(super) fn err_at(
        &mut self,
        src: SrcId,
        kind: ErrorKind,
        span: Span,
        label: impl Into<String>,
    ) {
        self.error_in(src, Diagnostic::new(kind, span, label));
    }

    pub(super) fn expect(
        &mut self,
        f: &Frame<'a>,
        e: &'a Expr,
        v: &V<'a>,
        expected: &str,
        what: &str,
    ) {
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

    pub(super) fn eval_args(
        &mut self,
        args: impl IntoIterator<Item = &'a Arg>,
        f: &Frame<'a>,
    ) -> Option<Vec<ArgV<'a>>> {
        let mut out = Vec::new();
        let mut ok = true;
        for a in args {
            if let (true, Some(n)) = (a.quoted, &a.name) {
                let callee = Ident {
                    name: "a block".into(),
                    span: a.span,
                };
                self.error_in(f.src, super::args::quoted_key(&callee, n));
                ok = false;
                continue;
            }
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

    pub(super) fn eval_call(
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

pub(super) fn describe_kind(k: &ExprKind) -> &'static str {
    match k {
        ExprKind::Size(_) => "a memory size",
        ExprKind::Field { .. } => "a field access",
        ExprKind::Pipe { .. } => "a pipeline",
        ExprKind::Repr { .. } => "a representation",
        ExprKind::Sharded { .. } => "a sharded dataset",
        _ => "this expression",
    }
}
