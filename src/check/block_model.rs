//! Models built from blocks: a top-level `sequential(...)` or a block call
//! that the layer-by-layer path cannot build is evaluated as module
//! descriptions and applied as a graph (`graph.rs`).

use super::args::Call;
use super::block::{ArgV, Frame, V};
use super::Checker;
use crate::diag::{Diagnostic, ErrorKind};
use crate::plan::ModelSpec;
use crate::syntax::{Arg, Expr, ExprKind, Ident, Span};
use std::collections::BTreeMap;

/// Parameter-free constructors and helpers that only the block evaluator
/// knows: a top-level `sequential(...)` using them is built as a graph.
const BLOCK_ONLY: [&str; 25] = [
    "instancenorm2d",
    "instancenorm1d",
    "maxpool1d",
    "avgpool1d",
    "adaptive_maxpool2d",
    "adaptive_avgpool1d",
    "adaptive_maxpool1d",
    "embedding",
    "leaky_relu",
    "elu",
    "silu",
    "relu6",
    "hardtanh",
    "hardsigmoid",
    "hardswish",
    "conv_transpose2d",
    "adaptive_avgpool2d",
    "groupnorm",
    "dropout",
    "identity",
    "sequential",
    "when",
    "if",
    "repeat",
    "require",
];

/// The options of a layer that the layer-by-layer path does not take.
fn block_options(layer: &str) -> Option<&'static [&'static str]> {
    Some(match layer {
        "conv2d" => &["groups"],
        "conv1d" => &["groups", "dilation"],
        "maxpool2d" | "avgpool2d" => &["dilation", "ceil_mode", "count_include_pad"],
        "batchnorm1d" | "batchnorm2d" | "layernorm" => &["affine"],
        _ => return None,
    })
}

impl<'a> Checker<'a> {
    /// Whether an item of a top-level `sequential(...)` is a block, a def,
    /// a list or a constructor the layer-by-layer path does not know.
    pub(super) fn needs_blocks(&self, e: &'a Expr) -> bool {
        let d = self.deref(e);
        let name = match &d.kind {
            ExprKind::List(_) => return true,
            ExprKind::Ident(n) => n,
            // Options only the block constructors know (grouped and dilated
            // convolutions, PyTorch's pooling options, norms without affine
            // parameters): the layer is built by them.
            ExprKind::Call { callee, args } if block_options(&callee.name).is_some() => {
                let block_opts = block_options(&callee.name).unwrap_or(&[]);
                return args.iter().any(|a| {
                    a.name
                        .as_ref()
                        .is_some_and(|n| block_opts.contains(&n.name.as_str()))
                });
            }
            ExprKind::Call { callee, .. } => &callee.name,
            _ => return false,
        };
        self.defs.contains_key(name) || BLOCK_ONLY.contains(&name.as_str())
    }

    /// `model m = resnet18(classes = 10, input = [3, 32, 32], init = ...)`:
    /// a block (or a def giving a module) as a whole model, its members
    /// named from the root (`conv1`, `layer1.0.conv1`, `fc`).
    pub(super) fn block_model(
        &mut self,
        callee: &'a Ident,
        span: Span,
        args: &'a [Arg],
    ) -> Option<ModelSpec> {
        let def = self.defs[&callee.name];
        let declares_input = def.params().iter().any(|p| p.name.name == "input");
        let mut opts = Call {
            func: callee.name.clone(),
            span,
            args: BTreeMap::new(),
            rest: vec![],
            keyed: vec![],
        };
        let mut rest = Vec::new();
        for a in args {
            match a
                .name
                .as_ref()
                .filter(|_| !a.quoted)
                .map(|n| n.name.as_str())
            {
                Some("init") => {
                    opts.args.insert("init", &a.value);
                }
                Some("weights") => {
                    opts.args.insert("weights", &a.value);
                }
                Some("input") if !declares_input => {
                    opts.args.insert("input", &a.value);
                }
                _ => rest.push(a),
            }
        }
        // The arguments are written in the checked file.
        let frame = Frame {
            top: true,
            ..Frame::default()
        };
        let vals = self.eval_args(rest, &frame)?;
        let v = self.call_def(def, callee, span, vals, &frame)?;
        let V::Module(root) = v else {
            self.error(Diagnostic::new(
                ErrorKind::TypeMismatch {
                    expected: "a model (a module)".into(),
                    found: v.describe(),
                },
                span,
                format!("`{}` gives no module", callee.name),
            ));
            return None;
        };
        let input = if declares_input {
            let v = self.top_params.get("input").cloned();
            match v.as_ref().and_then(shape_of) {
                Some(s) => s,
                None => {
                    self.error(Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: "an input shape such as `[3, 32, 32]` or `784`".into(),
                            found: v.map_or("nothing".into(), |v| v.describe()),
                        },
                        self.origins.get("input").copied().unwrap_or(span),
                        "`input` is the per-example input shape",
                    ));
                    return None;
                }
            }
        } else {
            match opts.get("input") {
                Some(i) => self.int_list(i, "input", 1)?,
                None => {
                    self.missing(
                        &opts,
                        "input",
                        "give the per-example input shape, e.g. `input = [3, 32, 32]`".into(),
                    );
                    return None;
                }
            }
        };
        let (layers, order) = self.build_graph(&root, "", input.clone(), span)?;
        let output = layers.last().map(|l| l.output.clone()).unwrap_or_default();
        self.finish_model(&opts, input, output, layers, order)
    }

    /// A top-level `sequential(...)` with blocks in it: `layers.{i}` as
    /// before, a block's members below it (`layers.1.conv1`).
    pub(super) fn block_sequential(
        &mut self,
        call: &Call<'a>,
        input: Vec<usize>,
    ) -> Option<ModelSpec> {
        let frame = Frame {
            top: true,
            ..Frame::default()
        };
        let mut vals = Vec::new();
        for e in &call.rest {
            let value = self.eval_v(e, &frame)?;
            vals.push(ArgV {
                name: None,
                value,
                span: e.span,
            });
        }
        let seq = Ident {
            name: "sequential".into(),
            span: call.span,
        };
        let V::Module(root) = self.eval_ctor(call.span, &seq, vals, &frame)? else {
            return None;
        };
        let (layers, order) = self.build_graph(&root, "layers", input.clone(), call.span)?;
        let output = layers.last().map(|l| l.output.clone()).unwrap_or_default();
        self.finish_model(call, input, output, layers, order)
    }
}

/// `784` or `[3, 32, 32]` as a shape.
fn shape_of(v: &V) -> Option<Vec<usize>> {
    match v {
        V::Int(i) if *i > 0 => Some(vec![*i as usize]),
        V::List(items) if !items.is_empty() => items
            .iter()
            .map(|i| match i {
                V::Int(k) if *k > 0 => Some(*k as usize),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}
