//! Module descriptions applied to inputs: the layers of a graph model.
//!
//! Applying a description at a module path adds its layers to the graph
//! in execution order; `out(x) = ...` is walked left to right, as
//! PyTorch's `forward` runs. Shapes are propagated with
//! [`Layer::output_shape`], and a join (`+`, `cat`) of differently shaped
//! branches is reported at the operator. The parameter order is the
//! registration (declaration) order of the modules, PyTorch's
//! `named_modules()` order, recorded in `ModelSpec::param_order` when it
//! differs from the execution order.

use super::block::{Frame, Inst, Module, SrcId, V};
use super::data::fmt_shape;
use super::Checker;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::{Layer, LayerSpec};
use crate::syntax::{BinOp, Expr, ExprKind, Span};
use std::collections::BTreeMap;
use std::rc::Rc;

/// A graph node: 0 is the input, `k` the output of layer `k − 1`.
pub type Node = usize;

/// The layers built so far.
pub struct Graph {
    pub input: Vec<usize>,
    pub layers: Vec<LayerSpec>,
    /// Parameterised module paths already applied, and where.
    applied: BTreeMap<String, Span>,
    /// Module applications by (path, inputs): applying a module to the
    /// same nodes again is the same computation, so `out` may repeat a
    /// subexpression (`shortcut(relu1(bn1(x)))` beside
    /// `conv1(relu1(bn1(x)))`) without applying anything twice.
    memo: BTreeMap<(String, Vec<Node>), Node>,
}

/// A parameterised module declared somewhere in the module tree.
pub struct Declared {
    pub path: String,
    pub span: Span,
    pub src: SrcId,
}

impl Graph {
    pub fn new(input: Vec<usize>) -> Self {
        Graph {
            input,
            layers: Vec::new(),
            applied: BTreeMap::new(),
            memo: BTreeMap::new(),
        }
    }
    pub fn shape(&self, n: Node) -> &[usize] {
        if n == 0 {
            &self.input
        } else {
            &self.layers[n - 1].output
        }
    }

    /// The parameter order: parameterised layers by registration rank.
    /// Empty when it is the execution order.
    pub fn param_order(&self, declared: &[Declared]) -> Vec<usize> {
        let rank: BTreeMap<&str, usize> = declared
            .iter()
            .enumerate()
            .map(|(i, d)| (d.path.as_str(), i))
            .collect();
        let exec: Vec<usize> = (0..self.layers.len())
            .filter(|&i| self.layers[i].params > 0)
            .collect();
        let mut order = exec.clone();
        order.sort_by_key(|&i| rank.get(self.layers[i].name.as_str()).copied());
        if order == exec {
            vec![]
        } else {
            order
        }
    }
}

/// `parent.child`, or `child` at the root.
pub fn join_path(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// The parameterised modules of a description in registration order
/// (depth first, members in declaration order).
pub fn declared(m: &Module, path: &str, span: Span, src: SrcId, out: &mut Vec<Declared>) {
    match m {
        Module::Layer(l) => {
            if l.num_params() > 0 {
                out.push(Declared {
                    path: path.to_string(),
                    span,
                    src,
                });
            }
        }
        Module::Identity => {}
        Module::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let at = join_path(path, &i.to_string());
                declared(&it.module, &at, it.span, it.src, out);
            }
        }
        Module::Block(inst) => {
            for (name, v, at) in &inst.modules {
                if let V::Module(sub) = v {
                    declared(sub, &join_path(path, name), *at, inst.src, out);
                }
            }
        }
    }
}

/// Where `out(x) = ...` is being evaluated.
struct OutCtx<'i, 'a> {
    inst: &'i Inst<'a>,
    path: &'i str,
    inputs: BTreeMap<&'a str, Node>,
}

impl<'a> Checker<'a> {
    /// Applies module `m` at module path `path` to `inputs`; the node of
    /// its output. `span`/`src` locate the application for errors.
    pub(super) fn apply(
        &mut self,
        g: &mut Graph,
        m: &Module<'a>,
        path: &str,
        inputs: &[Node],
        span: Span,
        src: SrcId,
    ) -> Option<Node> {
        let key = (path.to_string(), inputs.to_vec());
        if let Some(&n) = g.memo.get(&key) {
            return Some(n);
        }
        let out = match m {
            Module::Layer(layer) => {
                let [x] = inputs else {
                    self.inputs_error(src, span, path, 1, inputs.len());
                    return None;
                };
                self.add_layer(g, layer.clone(), path, &[*x], span, src)
            }
            Module::Identity => {
                let [x] = inputs else {
                    self.inputs_error(src, span, path, 1, inputs.len());
                    return None;
                };
                Some(*x)
            }
            Module::Seq(items) => {
                let [mut x] = inputs else {
                    self.inputs_error(src, span, path, 1, inputs.len());
                    return None;
                };
                // Each module is located at the argument it came from.
                for (i, it) in items.iter().enumerate() {
                    let at = join_path(path, &i.to_string());
                    x = self.apply(g, &it.module, &at, &[x], it.span, it.src)?;
                }
                Some(x)
            }
            Module::Block(inst) => self.apply_block(g, inst, path, inputs, span, src),
        }?;
        g.memo.insert(key, out);
        Some(out)
    }

    fn inputs_error(&mut self, src: SrcId, span: Span, path: &str, want: usize, got: usize) {
        self.error_in(
            src,
            Diagnostic::new(
                ErrorKind::Invalid {
                    message: format!(
                        "`{}` takes {want} input(s), given {got}",
                        if path.is_empty() { "the model" } else { path }
                    ),
                },
                span,
                "wrong number of inputs",
            ),
        );
    }

    fn apply_block(
        &mut self,
        g: &mut Graph,
        inst: &Inst<'a>,
        path: &str,
        inputs: &[Node],
        span: Span,
        src: SrcId,
    ) -> Option<Node> {
        self.eval_stack.push((inst.block.clone(), inst.src));
        let result = match inst.out {
            // No `out`: the members in order, as an `nn.Sequential`.
            None => {
                let [mut x] = inputs else {
                    self.inputs_error(src, span, path, 1, inputs.len());
                    self.eval_stack.pop();
                    return None;
                };
                for (name, v, at) in &inst.modules {
                    if let V::Module(m) = v {
                        match self.apply(g, m, &join_path(path, name), &[x], *at, inst.src) {
                            Some(y) => x = y,
                            None => {
                                self.eval_stack.pop();
                                return None;
                            }
                        }
                    }
                }
                Some(x)
            }
            Some((names, body)) => {
                if names.len() != inputs.len() {
                    self.inputs_error(src, span, path, names.len(), inputs.len());
                    self.eval_stack.pop();
                    return None;
                }
                let ctx = OutCtx {
                    inst,
                    path,
                    inputs: names
                        .iter()
                        .map(|n| n.name.as_str())
                        .zip(inputs.iter().copied())
                        .collect(),
                };
                self.eval_out(g, body, &ctx)
            }
        };
        self.eval_stack.pop();
        result
    }

    /// Adds one layer reading `inputs`.
    fn add_layer(
        &mut self,
        g: &mut Graph,
        layer: Layer,
        path: &str,
        inputs: &[Node],
        span: Span,
        src: SrcId,
    ) -> Option<Node> {
        if matches!(layer, Layer::Embedding { .. }) && inputs != [0] {
            self.error_in(
                src,
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: format!(
                            "embedding `{path}` must read the model input (its token ids)"
                        ),
                    },
                    span,
                    "reads the output of another layer",
                )
                .hint("token ids are not differentiable: apply the embedding to the model's input `x` first"),
            );
            return None;
        }
        if layer.num_params() > 0 {
            if let Some(first) = g.applied.get(path).copied() {
                self.error_in(
                    src,
                    Diagnostic::new(
                        ErrorKind::Invalid {
                            message: format!(
                                "`{path}` is applied twice (weight sharing is not supported)"
                            ),
                        },
                        span,
                        "applied again here",
                    )
                    .related(first, "first applied here")
                    .hint("declare a second module for the second use"),
                );
                return None;
            }
            g.applied.insert(path.to_string(), span);
        }
        // A layer reading the previous node leaves `from` empty: chains
        // stay chains in the plan.
        let from = if inputs == [g.layers.len()] {
            vec![]
        } else {
            inputs.to_vec()
        };
        let shapes: Vec<&[usize]> = inputs.iter().map(|&n| g.shape(n)).collect();
        match LayerSpec::node(path, layer.clone(), &shapes, from) {
            Ok(spec) => {
                g.layers.push(spec);
                Some(g.layers.len())
            }
            Err(msg) => {
                let found = shapes.first().map_or_else(String::new, |s| fmt_shape(s));
                let kind = match msg.strip_prefix("expected ") {
                    Some(rest) if layer.is_join() || rest.contains(", found ") => {
                        ErrorKind::ShapeMismatch {
                            layer: format!("{path} ({})", layer.type_name()),
                            expected: rest.split(", found ").next().unwrap_or(rest).into(),
                            found: found.clone(),
                        }
                    }
                    _ => ErrorKind::Invalid { message: msg },
                };
                let n: usize = shapes.first().map_or(0, |s| s.iter().product());
                let hint = match &layer {
                    Layer::Linear { in_features, .. }
                        if shapes.first().is_some_and(|s| s.len() > 1) =>
                    {
                        Some(if *in_features == n {
                            "add `flatten` before this layer".to_string()
                        } else {
                            format!("after `flatten` it would get [{n}]")
                        })
                    }
                    _ => None,
                };
                self.error_in(
                    src,
                    Diagnostic::new(kind, span, format!("input of shape {found}")).hint_opt(hint),
                );
                None
            }
        }
    }

    /// Evaluates `out(x) = body`: the node of its result.
    fn eval_out(&mut self, g: &mut Graph, e: &'a Expr, ctx: &OutCtx<'_, 'a>) -> Option<Node> {
        let src = ctx.inst.src;
        match &e.kind {
            ExprKind::Ident(n) => {
                if let Some(&x) = ctx.inputs.get(n.as_str()) {
                    return Some(x);
                }
                self.out_error(e, n, ctx, "not an input of `out`");
                None
            }
            ExprKind::Binary { op: BinOp::Add, .. } => {
                // `a + b + c` is one n-ary addition.
                let mut terms = Vec::new();
                let mut ops = Vec::new();
                flatten_sum(e, &mut terms, &mut ops);
                let mut nodes = Vec::new();
                for t in terms {
                    nodes.push(self.eval_out(g, t, ctx)?);
                }
                let at = self.operator_span(src, ops[0], '+').unwrap_or(e.span);
                self.join(
                    g,
                    Layer::Add,
                    "+",
                    &join_path(ctx.path, "add"),
                    &nodes,
                    at,
                    src,
                )
            }
            ExprKind::Call { callee, args } => {
                let n = callee.name.as_str();
                let tensor_args = |c: &mut Self, g: &mut Graph| -> Option<Vec<Node>> {
                    let mut nodes = Vec::new();
                    for a in args {
                        if let Some(name) = &a.name {
                            c.error_in(
                                src,
                                Diagnostic::new(
                                    ErrorKind::UnknownOption {
                                        func: n.into(),
                                        name: name.name.clone(),
                                    },
                                    name.span,
                                    "modules are applied to tensors only",
                                ),
                            );
                            return None;
                        }
                        nodes.push(c.eval_out(g, &a.value, ctx)?);
                    }
                    Some(nodes)
                };
                if let Some(m) = ctx.inst.member(n) {
                    let m = m.clone();
                    let nodes = tensor_args(self, g)?;
                    return match m {
                        V::Module(module) => {
                            self.apply(g, &module, &join_path(ctx.path, n), &nodes, e.span, src)
                        }
                        // An absent member is the identity.
                        _ => match nodes.as_slice() {
                            [x] => Some(*x),
                            _ => {
                                self.inputs_error(src, e.span, n, 1, nodes.len());
                                None
                            }
                        },
                    };
                }
                // `if(condition, a, b)`: a branch chosen by the block's
                // parameters.
                if n == "if" && args.len() == 3 && !ctx.inst.modules.iter().any(|m| m.0 == "if") {
                    let frame = Frame {
                        src,
                        vars: ctx.inst.env.clone(),
                        ..Frame::default()
                    };
                    let c = self.eval_v(&args[0].value, &frame)?;
                    let V::Bool(c) = c else {
                        self.error_in(
                            src,
                            Diagnostic::new(
                                ErrorKind::TypeMismatch {
                                    expected: "`true` or `false`".into(),
                                    found: c.describe(),
                                },
                                args[0].value.span,
                                "the condition of `if`",
                            ),
                        );
                        return None;
                    };
                    return self.eval_out(g, &args[if c { 1 } else { 2 }].value, ctx);
                }
                // A parameter holding a parameter-free module (`act = relu`).
                if let Some(V::Module(m)) = ctx.inst.env.get(n) {
                    let m = m.clone();
                    let nodes = tensor_args(self, g)?;
                    return self.apply(g, &m, &join_path(ctx.path, n), &nodes, e.span, src);
                }
                if n == "cat" {
                    let nodes = tensor_args(self, g)?;
                    return self.join(
                        g,
                        Layer::Concat,
                        "cat",
                        &join_path(ctx.path, "cat"),
                        &nodes,
                        callee.span,
                        src,
                    );
                }
                if super::ctor::ctor_params(n).is_some() && !args.is_empty() {
                    return self.functional(g, e, n, ctx);
                }
                self.out_error(e, n, ctx, "not a member of this block");
                None
            }
            _ => {
                self.error_in(
                    src,
                    Diagnostic::new(
                        ErrorKind::Invalid {
                            message: "`out` applies members to its inputs".into(),
                        },
                        e.span,
                        "not a module application",
                    )
                    .hint("write e.g. `out(x) = relu(bn(conv(x)) + x)`; joins are `+` and `cat(a, b)`"),
                );
                None
            }
        }
    }

    /// A parameter-free constructor applied directly: `flatten(x)`,
    /// `maxpool2d(x, 2)` (the first argument is the tensor).
    fn functional(
        &mut self,
        g: &mut Graph,
        e: &'a Expr,
        n: &str,
        ctx: &OutCtx<'_, 'a>,
    ) -> Option<Node> {
        let ExprKind::Call { callee, args } = &e.kind else {
            return None;
        };
        let src = ctx.inst.src;
        let x = self.eval_out(g, &args[0].value, ctx)?;
        let frame = Frame {
            src,
            vars: ctx.inst.env.clone(),
            ..Frame::default()
        };
        // The options are evaluated like a member's constructor call.
        let vals = self.eval_args(&args[1..], &frame)?;
        let v = self.eval_ctor(e.span, callee, vals, &frame)?;
        match v {
            V::Module(m) => match &*m {
                Module::Layer(l) if l.num_params() > 0 => {
                    self.error_in(
                        src,
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: format!("`{n}` has parameters: declare it as a member"),
                            },
                            callee.span,
                            "parameters need a module name",
                        )
                        .hint(format!("e.g. `fc = {n}(...)` and `fc(x)` in `out`")),
                    );
                    None
                }
                _ => self.apply(g, &m, &join_path(ctx.path, n), &[x], e.span, src),
            },
            _ => Some(x),
        }
    }

    fn out_error(&mut self, e: &'a Expr, n: &str, ctx: &OutCtx<'_, 'a>, label: &str) {
        let mut cands: Vec<&str> = ctx.inputs.keys().copied().collect();
        cands.extend(ctx.inst.modules.iter().map(|(m, _, _)| m.as_str()));
        let d = Diagnostic::new(
            ErrorKind::Unknown {
                what: "member".into(),
                name: n.into(),
            },
            e.span,
            label,
        )
        .hint_opt(did_you_mean(n, cands.iter().copied()))
        .hint(format!(
            "`{}` has: {}",
            ctx.inst.block,
            ctx.inst
                .modules
                .iter()
                .map(|(m, _, _)| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        self.error_in(ctx.inst.src, d);
    }

    /// A join of branches; differing shapes are an error at the operator.
    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        g: &mut Graph,
        layer: Layer,
        op: &str,
        path: &str,
        nodes: &[Node],
        at: Span,
        src: SrcId,
    ) -> Option<Node> {
        let shapes: Vec<&[usize]> = nodes.iter().map(|&n| g.shape(n)).collect();
        if let Err(detail) = layer.output_shape(&shapes) {
            let shown: Vec<String> = shapes.iter().map(|s| fmt_shape(s)).collect();
            self.error_in(
                src,
                Diagnostic::new(
                    ErrorKind::BranchMismatch {
                        op: op.into(),
                        shapes: shown.join(" and "),
                    },
                    at,
                    format!("joins {}", shown.join(" and ")),
                )
                .hint_opt((op == "cat").then_some(detail)),
            );
            return None;
        }
        let from = nodes.to_vec();
        match LayerSpec::node(path, layer, &shapes, from) {
            Ok(spec) => {
                g.layers.push(spec);
                Some(g.layers.len())
            }
            Err(_) => None,
        }
    }

    /// The first `op` character between two operands (the `+` of `a + b`).
    fn operator_span(&self, src: SrcId, between: (Span, Span), op: char) -> Option<Span> {
        let text = if src == 0 {
            self.src
        } else {
            self.sources[src].text
        };
        let gap = text.get(between.0.end..between.1.start)?;
        let i = gap.find(op)?;
        let at = between.0.end + i;
        Some(Span::new(at, at + 1))
    }

    /// Applies a model's root module to its input: the layers.
    pub(super) fn build_graph(
        &mut self,
        root: &Rc<Module<'a>>,
        root_path: &str,
        input: Vec<usize>,
        span: Span,
    ) -> Option<(Vec<LayerSpec>, Vec<usize>)> {
        let mut g = Graph::new(input);
        // Errors in other sources are shown at the model's call.
        let saved = self.anchor.replace(span);
        let result = match self.apply(&mut g, root, root_path, &[0], span, 0) {
            Some(out) => self.finish_graph(g, out, root, root_path, span),
            None => None,
        };
        self.anchor = saved;
        result
    }

    fn finish_graph(
        &mut self,
        g: Graph,
        out: Node,
        root: &Rc<Module<'a>>,
        root_path: &str,
        span: Span,
    ) -> Option<(Vec<LayerSpec>, Vec<usize>)> {
        if out != g.layers.len() || out == 0 {
            self.error(Diagnostic::new(
                ErrorKind::Invalid {
                    message: "the model's output is not computed by its last layer".into(),
                },
                span,
                "`out` returns its input",
            ));
            return None;
        }
        let mut decl = Vec::new();
        declared(root, root_path, span, 0, &mut decl);
        if let Some(d) = decl.iter().find(|d| !g.applied.contains_key(&d.path)) {
            let diag = Diagnostic::new(
                ErrorKind::Invalid {
                    message: format!("`{}` is declared but `out` never applies it", d.path),
                },
                d.span,
                "unused module",
            )
            .hint("apply it in `out(x) = ...`, or remove it (its weights would be in the state_dict but never used)");
            self.error_in(d.src, diag);
            return None;
        }
        let order = g.param_order(&decl);
        Some((g.layers, order))
    }
}

/// The terms of `a + b + c` and the operand pairs around each `+`.
fn flatten_sum<'e>(e: &'e Expr, terms: &mut Vec<&'e Expr>, ops: &mut Vec<(Span, Span)>) {
    match &e.kind {
        ExprKind::Binary {
            op: BinOp::Add,
            lhs,
            rhs,
        } => {
            flatten_sum(lhs, terms, ops);
            ops.push((lhs.span, rhs.span));
            terms.push(rhs);
        }
        _ => terms.push(e),
    }
}
