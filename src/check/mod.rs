//! Semantic checks: AST → [`Program`].
//!
//! Resolves names, checks the type of every argument and option, propagates
//! shapes through each model from its input shape, refuses structures that
//! do not support a layer and representations over the memory budget. All
//! errors of a file are collected. Sweeps (`for x in [...]`) are unrolled
//! here, so the program (and the plan) is a flat list.

mod args;
mod block;
mod block_eval;
mod block_model;
mod claim;
mod ctor;
mod data;
mod env;
mod geometry;
mod graph;
mod header;
mod hessian;
mod influence;
mod jacobian;
mod layers;
mod library;
mod matrices;
mod measure;
mod model;
mod names;
mod onnx;
mod optim;
mod penalty;
mod plots;
mod repr;
mod saved;
mod sharded;
mod sources;
mod train;
mod transforms;
mod vectors;

use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::{Dtype, Header, HookRef, Op, StepId, Tags};
use crate::syntax::{Expr, ExprKind, File, Span, Stmt, StmtKind, StrLit};
use env::{Binding, Scopes, Val};
use std::collections::BTreeSet;
use std::path::PathBuf;

pub use library::{library_models, LibraryModel};

/// How to check: where relative paths start and how much memory a single
/// representation may take.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Directory that relative paths in the file are resolved against.
    pub base_dir: PathBuf,
    /// Overrides the file's `memory_budget` (bytes).
    pub memory_budget: Option<u64>,
    /// Used when neither the file nor the caller sets a budget.
    pub default_budget: u64,
    /// Folders where standard datasets are looked for by name
    /// (`cifar10(split = train)`): `$NNGEO_DATA`, then `nngeo.toml`'s
    /// `[data] paths`.
    pub data_dirs: Vec<PathBuf>,
}

/// The folders of `$NNGEO_DATA` (a `:`-separated list).
pub fn data_dirs_from_env() -> Vec<PathBuf> {
    std::env::var_os("NNGEO_DATA")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            base_dir: PathBuf::from("."),
            memory_budget: None,
            default_budget: default_memory_budget(),
            data_dirs: data_dirs_from_env(),
        }
    }
}

/// Half of physical memory (from /proc/meminfo), or 8 GiB if unknown.
pub fn default_memory_budget() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    total.map_or(8 << 30, |t| t / 2)
}

/// One checked step, before planning assigns dependencies and costs.
#[derive(Clone, Debug)]
pub struct Item {
    pub op: Op,
    pub span: Span,
    pub sweep: Tags,
    pub hook: Option<HookRef>,
}

/// The checked program: resolved, typed, flat.
#[derive(Clone, Debug)]
pub struct Program {
    pub header: Header,
    pub items: Vec<Item>,
    /// Valid but probably unintended constructs (`ErrorKind::Suspicious`).
    pub warnings: Vec<Diagnostic>,
}

/// Checks a parsed file.
pub fn check(file: &File, src: &str, opts: &CheckOptions) -> Result<Program, Vec<Diagnostic>> {
    let (imports, import_errors) = library::load_imports(file, &opts.base_dir);
    let mut c = Checker::new(src, opts);
    c.diags.extend(import_errors);
    c.register_defs(file, &imports);
    collect_definitions(&file.stmts, &mut c.definitions);
    c.scopes.push();
    c.header(file);
    for stmt in &file.stmts {
        c.stmt(stmt, true);
    }
    c.check_plots();
    c.check_claims();
    if c.diags.is_empty() {
        Ok(Program {
            header: c.header,
            items: c.items,
            warnings: c.warnings,
        })
    } else {
        Err(c.finish_diags())
    }
}

struct HookCtx {
    train: StepId,
    hook: u32,
}

struct PlotCheck {
    pattern: String,
    span: Span,
    x: (String, Span),
    by: Vec<(String, Span)>,
}

/// The most steps a plan may unroll into (nested sweeps multiply).
const MAX_PLAN_STEPS: usize = 100_000;
/// The longest range `a..b` a sweep unrolls (the parser's limit).
const MAX_SWEEP_RANGE: usize = 10_000;

pub(crate) struct Checker<'a> {
    src: &'a str,
    opts: &'a CheckOptions,
    diags: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    /// Models trained without `as` in an open scope: (name, the model's
    /// step, the `train` head, scope depth). Using that name later in the
    /// scope would silently mean the untrained model, so it is an error.
    trained_unnamed: Vec<(String, StepId, Span, usize)>,
    items: Vec<Item>,
    scopes: Scopes<'a>,
    header: Header,
    budget: u64,
    sweep: Tags,
    hook: Option<HookCtx>,
    /// Every measurement key the file produces (for `plot` patterns).
    keys: BTreeSet<String>,
    /// Each key's tags and the values they take (for claims).
    key_tags: std::collections::BTreeMap<String, claim::KeyTags>,
    /// `expect` statements, typed once every key is known.
    claims: Vec<claim::PendingClaim<'a>>,
    /// Keys measured during training (their results differ by step).
    stepped_keys: BTreeSet<String>,
    /// Defs being expanded inside a claim (recursion guard).
    claim_defs: Vec<String>,
    /// Every sweep variable name (for `plot ... by`).
    sweep_vars: BTreeSet<String>,
    /// Set once the plan has passed [`MAX_PLAN_STEPS`] (reported once).
    plan_too_long: bool,
    plots: Vec<PlotCheck>,
    anon: usize,
    /// Names whose definition failed: their uses are not reported again as
    /// undefined (the definition's error says what is wrong).
    failed: BTreeSet<String>,
    /// Where each name is defined in the file (first definition), to say
    /// "defined later" when a name is used before its definition.
    definitions: std::collections::BTreeMap<String, Span>,
    /// The checked file (0), its imports and the model library.
    sources: Vec<block::Source<'a>>,
    /// Blocks and defs by name (the file's, then imports', then the
    /// library's).
    defs: std::collections::BTreeMap<String, block::Def<'a>>,
    /// Blocks and defs being evaluated, with their source (recursion,
    /// error context).
    eval_stack: Vec<(String, block::SrcId)>,
    /// The call in the checked file that errors in other sources are
    /// shown at.
    anchor: Option<Span>,
    /// Where each argument of the outermost block call is written.
    origins: std::collections::BTreeMap<String, Span>,
    /// The parameters of the outermost block call, evaluated (a model's
    /// `input`).
    top_params: std::collections::BTreeMap<String, block::V<'a>>,
}

impl<'a> Checker<'a> {
    fn new(src: &'a str, opts: &'a CheckOptions) -> Self {
        Checker {
            src,
            opts,
            diags: Vec::new(),
            warnings: Vec::new(),
            trained_unnamed: Vec::new(),
            items: Vec::new(),
            scopes: Scopes::default(),
            header: Header {
                name: String::new(),
                seed: 0,
                backend: "candle".into(),
                device: "cpu".into(),
                dtype: Dtype::F32,
                out: String::new(),
                memory_budget: None,
                replicates: Vec::new(),
            },
            budget: opts.default_budget,
            sweep: Tags::new(),
            hook: None,
            keys: BTreeSet::new(),
            key_tags: std::collections::BTreeMap::new(),
            claims: Vec::new(),
            claim_defs: Vec::new(),
            stepped_keys: BTreeSet::new(),
            sweep_vars: BTreeSet::new(),
            plan_too_long: false,
            plots: Vec::new(),
            anon: 0,
            failed: BTreeSet::new(),
            definitions: std::collections::BTreeMap::new(),
            sources: Vec::new(),
            defs: std::collections::BTreeMap::new(),
            eval_stack: Vec::new(),
            anchor: None,
            origins: std::collections::BTreeMap::new(),
            top_params: std::collections::BTreeMap::new(),
        }
    }

    fn error(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// Closes a scope, forgetting what was trained in it.
    fn pop_scope(&mut self) {
        self.scopes.pop();
        let depth = self.scopes.depth();
        self.trained_unnamed.retain(|t| t.3 <= depth);
    }

    /// A warning, once per place (sweeps check their body repeatedly).
    fn warn(&mut self, d: Diagnostic) {
        if !self
            .warnings
            .iter()
            .any(|w| w.span == d.span && w.kind == d.kind)
        {
            self.warnings.push(d);
        }
    }

    /// Diagnostics in source order, each once (unrolled sweeps repeat them).
    fn finish_diags(&mut self) -> Vec<Diagnostic> {
        let mut seen = BTreeSet::new();
        let mut out: Vec<Diagnostic> = Vec::new();
        for mut d in std::mem::take(&mut self.diags) {
            if self.is_cascade(&d) {
                continue;
            }
            let later = match &d.kind {
                ErrorKind::Undefined { what, name } if what != "sweep variable" => self
                    .definitions
                    .get(name)
                    .filter(|def| def.start > d.span.end)
                    .map(|def| (*def, name.clone())),
                _ => None,
            };
            if let Some((def, name)) = later {
                d = d
                    .related(def, "defined later here")
                    .hint(format!("move the definition of `{name}` before this use"));
            }
            let key = (d.span, d.kind.to_string(), d.label.clone());
            if seen.insert(key) {
                out.push(d);
            }
        }
        out.sort_by_key(|d| d.span.start);
        out
    }

    /// An "undefined `x`" error for a name whose definition already failed.
    fn is_cascade(&self, d: &Diagnostic) -> bool {
        match &d.kind {
            ErrorKind::Undefined { what, name } => {
                what != "sweep variable" && self.failed.contains(name)
            }
            ErrorKind::TypeMismatch { found, .. } => found
                .strip_prefix("undefined `")
                .and_then(|f| f.strip_suffix('`'))
                .is_some_and(|n| self.failed.contains(n)),
            _ => false,
        }
    }

    /// Records that defining `name` failed (see [`Checker::is_cascade`]).
    fn definition_failed(&mut self, name: &str) {
        self.failed.insert(name.to_string());
    }

    /// Appends a step and returns its id.
    fn emit(&mut self, op: Op, span: Span) -> StepId {
        let id = StepId(self.items.len() as u32);
        self.items.push(Item {
            op,
            span,
            sweep: self.sweep.clone(),
            hook: self.hook.as_ref().map(|h| HookRef {
                train: h.train,
                hook: h.hook,
            }),
        });
        id
    }

    /// A name for a step that has none in the source (`_1`, `_2`, ...).
    fn anon_name(&mut self) -> String {
        self.anon += 1;
        format!("_{}", self.anon)
    }

    /// `name`, or a fresh anonymous one when it is empty.
    fn name_or_anon(&mut self, name: &str) -> String {
        if name.is_empty() {
            self.anon_name()
        } else {
            name.to_string()
        }
    }

    // ------------------------------------------------------------ statements

    fn stmt(&mut self, stmt: &'a Stmt, top: bool) {
        match &stmt.kind {
            StmtKind::Experiment { .. } => {
                if !top {
                    self.error(Diagnostic::new(
                        ErrorKind::Invalid {
                            message: "`experiment` must be at the top level".into(),
                        },
                        stmt.span,
                        "inside a block",
                    ));
                }
            }
            // Registered before checking (see `register_defs`): blocks are
            // evaluated where a model uses them.
            StmtKind::Import { .. } | StmtKind::Block { .. } | StmtKind::Def { .. } => {
                if !top {
                    self.error(Diagnostic::new(
                        ErrorKind::Invalid {
                            message: "`import`, `block` and `def` must be at the top level".into(),
                        },
                        stmt.span,
                        "inside a block",
                    ));
                }
            }
            StmtKind::Data { names, value } => self.data_stmt(names, value, stmt.span),
            StmtKind::Model { name, value } => {
                if !self.define_check(&name.name, name.span) {
                    return;
                }
                match self.model_expr(value, &name.name) {
                    Some(m) => self
                        .scopes
                        .insert(name.name.clone(), Binding::Val(Val::Model(m), name.span)),
                    None => self.definition_failed(&name.name),
                }
            }
            StmtKind::Let { name, value } => self.let_stmt(name, value),
            StmtKind::Measure { items } => {
                for item in items {
                    self.measure_item(item);
                }
            }
            StmtKind::Train {
                model,
                data,
                result,
                settings,
                hooks,
            } => {
                if self.hook.is_some() {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: "`train` cannot run inside a training hook".into(),
                            },
                            Span::new(stmt.span.start, data.span.end),
                            "nested training",
                        )
                        .hint("train after the outer `train` block, on its result (`train ... as trained`)"),
                    );
                    return;
                }
                self.train_stmt(model, data, result.as_ref(), settings, hooks, stmt.span);
            }
            StmtKind::For {
                var,
                iter,
                body,
                replicate,
            } => {
                if *replicate && !self.header.replicates.contains(&var.name) {
                    self.header.replicates.push(var.name.clone());
                }
                self.for_stmt(var, iter, body)
            }
            StmtKind::Plot {
                pattern,
                x,
                by,
                flags,
                file,
            } => {
                if !top {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: "`plot` must be at the top level".into(),
                            },
                            stmt.span,
                            "inside a block",
                        )
                        .hint("move it after the loop; `plot ... by VAR` draws one line per sweep value"),
                    );
                    return;
                }
                if file.as_ref().is_some_and(|f| !self.in_run_folder(f)) {
                    return;
                }
                self.plot_stmt(pattern, x, by, flags, file.as_ref(), stmt.span);
            }
            StmtKind::Expect { text, claim } => {
                if !top {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: "`expect` must be at the top level".into(),
                            },
                            stmt.span,
                            "inside a block",
                        )
                        .hint("move it after the loop; select sweep values with `\"key\"[var = value]`"),
                    );
                    return;
                }
                self.claims.push(claim::PendingClaim {
                    text,
                    expr: claim,
                    span: stmt.span,
                });
            }
            StmtKind::Save { model, path } => {
                if !self.in_run_folder(path) {
                    return;
                }
                if self.save_repr(model, path, stmt.span).is_some() {
                    return;
                }
                let Some(m) = self.model_ref(model) else {
                    return;
                };
                if path.value.is_empty() || !path.value.ends_with(".safetensors") {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: "weights are saved as safetensors".into(),
                            },
                            path.span,
                            "not a `.safetensors` path",
                        )
                        .hint("use a path ending in `.safetensors`"),
                    );
                    return;
                }
                self.emit(
                    Op::Save {
                        model: m.step,
                        path: path.value.clone(),
                    },
                    stmt.span,
                );
            }
        }
    }

    /// A file a run writes (`save ... to`, `plot ... as`) is a relative
    /// path that stays inside the run folder: an absolute path or `..` would
    /// write (and could overwrite) files outside it, where `--overwrite`,
    /// `--resume` and the manifest do not look.
    fn in_run_folder(&mut self, path: &StrLit) -> bool {
        use std::path::Component;
        let escapes = std::path::Path::new(&path.value)
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes {
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: format!(
                            "`{}` leaves the run folder: results are written inside it",
                            path.value
                        ),
                    },
                    path.span,
                    "absolute or `..` path",
                )
                .hint("give a path relative to the run folder (`--out`), e.g. `\"figures/loss\"`"),
            );
        }
        !escapes
    }

    /// Refuses to define a name twice in the same scope.
    fn define_check(&mut self, name: &str, span: Span) -> bool {
        if let Some(prev) = self.scopes.local(name) {
            let prev = prev.span();
            self.error(
                Diagnostic::new(
                    ErrorKind::Redefined { name: name.into() },
                    span,
                    "defined again here",
                )
                .related(prev, "first defined here")
                .hint("pick another name"),
            );
            return false;
        }
        true
    }

    fn let_stmt(&mut self, name: &'a crate::syntax::Ident, value: &'a Expr) {
        if !self.define_check(&name.name, name.span) {
            return;
        }
        let target = self.deref(value);
        let plain = matches!(
            target.kind,
            ExprKind::Int(_)
                | ExprKind::Float(_)
                | ExprKind::Str(_)
                | ExprKind::Bool(_)
                | ExprKind::Size(_)
                | ExprKind::List(_)
                | ExprKind::Neg(_)
        ) || matches!(&target.kind, ExprKind::Ident(n) if self.scopes.get(n).is_none())
            || Self::is_jacobian(target);
        if plain {
            self.scopes
                .insert(name.name.clone(), Binding::Expr(value, name.span));
            return;
        }
        match self.value(value, &name.name) {
            Some(v) => self
                .scopes
                .insert(name.name.clone(), Binding::Val(v, name.span)),
            None => self.definition_failed(&name.name),
        }
    }

    fn for_stmt(&mut self, var: &'a crate::syntax::Ident, iter: &'a Expr, body: &'a [Stmt]) {
        self.sweep_vars.insert(var.name.clone());
        let iter_d = self.deref(iter);
        let items: Vec<(Binding<'a>, String)> = match &iter_d.kind {
            ExprKind::List(items) => {
                if items.is_empty() {
                    // The parser leaves a range too long to unroll empty.
                    let text = self.expr_text(iter_d);
                    let too_long = text.split_once("..").is_some_and(|(a, b)| {
                        match (a.trim().parse::<i64>(), b.trim().parse::<i64>()) {
                            (Ok(a), Ok(b)) => b.saturating_sub(a) > MAX_SWEEP_RANGE as i64,
                            _ => true,
                        }
                    });
                    let (message, label) = if too_long {
                        (
                            format!("the range `{text}` is too long: a sweep takes at most {MAX_SWEEP_RANGE} values"),
                            "too long",
                        )
                    } else {
                        ("a sweep needs at least one value".to_string(), "empty list")
                    };
                    self.error(Diagnostic::new(
                        ErrorKind::Invalid { message },
                        iter.span,
                        label,
                    ));
                    return;
                }
                items
                    .iter()
                    .map(|it| {
                        let label = match &it.label {
                            Some(l) => l.value.clone(),
                            None => self.expr_text(&it.value),
                        };
                        (Binding::Expr(&it.value, var.span), label)
                    })
                    .collect()
            }
            ExprKind::Call { callee, args } if callee.name == "layers" => {
                let Some(call) = self.bind(callee, iter_d.span, args, &["model", "pattern"]) else {
                    return;
                };
                let Some(me) = self.req(&call, "model") else {
                    return;
                };
                let Some(m) = self.model_expr(me, "") else {
                    return;
                };
                let Some(names) = self.layer_names(&m, call.get("pattern")) else {
                    return;
                };
                names
                    .into_iter()
                    .map(|l| (Binding::Val(Val::Layer(l.clone()), var.span), l))
                    .collect()
            }
            // `for layer in net`: the model's parameterised layers.
            ExprKind::Ident(n) if matches!(self.lookup_val(n), Some(Val::Model(_))) => {
                let Some(Val::Model(m)) = self.lookup_val(n) else {
                    return;
                };
                m.spec
                    .param_layers()
                    .map(|l| {
                        (
                            Binding::Val(Val::Layer(l.name.clone()), var.span),
                            l.name.clone(),
                        )
                    })
                    .collect()
            }
            _ => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: "a list `[a, b, ...]` or `layers(model)`".into(),
                            found: self.describe(iter),
                        },
                        iter.span,
                        "cannot loop over this",
                    )
                    .hint("sweep over a list, e.g. `for noise in [0.0, 0.2, 0.5] { ... }`"),
                );
                return;
            }
        };
        for (binding, label) in items {
            // Nested sweeps multiply: refuse a plan that would not fit in
            // memory before unrolling it.
            if self.items.len() > MAX_PLAN_STEPS {
                if !std::mem::replace(&mut self.plan_too_long, true) {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: format!(
                                    "these sweeps unroll into more than {MAX_PLAN_STEPS} plan steps"
                                ),
                            },
                            iter.span,
                            "too many sweep values",
                        )
                        .hint("sweep fewer values, or split the experiment into several files"),
                    );
                }
                return;
            }
            let saved = self.sweep.clone();
            self.sweep.insert(var.name.clone(), label);
            self.scopes.push();
            self.scopes.insert(var.name.clone(), binding);
            for s in body {
                self.stmt(s, false);
            }
            self.pop_scope();
            self.sweep = saved;
        }
    }

    /// The parameterised layers of `m`, or those matching `pattern`.
    fn layer_names(&mut self, m: &env::ModelV, pattern: Option<&'a Expr>) -> Option<Vec<String>> {
        let known: Vec<&str> = m.spec.param_layers().map(|l| l.name.as_str()).collect();
        match pattern {
            None => Some(known.iter().map(|s| s.to_string()).collect()),
            Some(p) => {
                let text = self.string(p, "pattern")?;
                self.match_layers(&text, &known, p.span, &m.shown())
            }
        }
    }
}

/// The names a file defines (data, model, let, train results), with the
/// span of their first definition.
fn collect_definitions(stmts: &[Stmt], out: &mut std::collections::BTreeMap<String, Span>) {
    for st in stmts {
        match &st.kind {
            StmtKind::Data { names, .. } => {
                for n in names {
                    out.entry(n.name.clone()).or_insert(n.span);
                }
            }
            StmtKind::Model { name, .. } | StmtKind::Let { name, .. } => {
                out.entry(name.name.clone()).or_insert(name.span);
            }
            StmtKind::Train { result, hooks, .. } => {
                if let Some(r) = result {
                    out.entry(r.name.clone()).or_insert(r.span);
                }
                for h in hooks {
                    collect_definitions(&h.body, out);
                }
            }
            StmtKind::For { body, .. } => collect_definitions(body, out),
            _ => {}
        }
    }
}

/// `*` matches any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}
