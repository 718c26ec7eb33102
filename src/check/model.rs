//! Models: `sequential(...)`, `mlp(...)`, initialisation, weights (one
//! layer call is checked in `layers.rs`).
//! Shapes are propagated layer by layer from the input shape; a layer that
//! does not fit its input is reported at that layer.

use super::data::fmt_shape;
use super::env::{Binding, ModelV, Val};
use super::Checker;
use crate::data;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::{within_limit, Init, Layer, LayerSpec, ModelSpec, Op, MAX_NODE_SIZE};
use crate::syntax::{Arg, Expr, ExprKind, Ident, Span};
use std::rc::Rc;

pub const LAYERS: [&str; 13] = [
    "linear",
    "conv2d",
    "conv1d",
    "relu",
    "tanh",
    "sigmoid",
    "gelu",
    "flatten",
    "maxpool2d",
    "avgpool2d",
    "batchnorm1d",
    "batchnorm2d",
    "layernorm",
];
const ACTIVATIONS: [&str; 10] = [
    "relu",
    "tanh",
    "sigmoid",
    "gelu",
    "leaky_relu",
    "elu",
    "silu",
    "relu6",
    "hardsigmoid",
    "hardswish",
];
const INITS: [&str; 4] = ["pytorch", "kaiming", "xavier", "normal"];

impl<'a> Checker<'a> {
    /// A name that must refer to a model.
    pub(super) fn model_ref(&mut self, id: &Ident) -> Option<ModelV> {
        let m = self.model_ref_any(id)?;
        let trained = self
            .trained_unnamed
            .iter()
            .find(|t| t.0 == id.name && t.1 == m.step)
            .map(|t| t.2);
        if let Some(head) = trained {
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: format!(
                            "`{0}` is the untrained model here: `train {0} on ...` without `as` keeps no trained model",
                            id.name
                        ),
                    },
                    id.span,
                    "this would measure the weights before training",
                )
                .related(head, "trained here, without a name")
                .hint(format!(
                    "name the trained model: `train {0} on ... as {0}_trained {{ ... }}` and use `{0}_trained`; `initial({0})` means the declared weights",
                    id.name
                )),
            );
            return None;
        }
        Some(m)
    }

    /// A model by name, trained in this scope or not.
    fn model_ref_any(&mut self, id: &Ident) -> Option<ModelV> {
        match self.lookup_val(&id.name) {
            Some(Val::Model(m)) => Some(m),
            Some(other) => {
                self.error(Diagnostic::new(
                    ErrorKind::WrongKind {
                        name: id.name.clone(),
                        expected: "model".into(),
                        found: other.kind().into(),
                    },
                    id.span,
                    format!("this is a {}", other.kind()),
                ));
                None
            }
            None => {
                let models = self
                    .scopes
                    .names_where(|b| matches!(b, Binding::Val(Val::Model(_), _)));
                self.error(
                    Diagnostic::new(
                        ErrorKind::Undefined {
                            what: "model".into(),
                            name: id.name.clone(),
                        },
                        id.span,
                        "no model of this name",
                    )
                    .hint_opt(did_you_mean(&id.name, models.iter().map(|s| s.as_str())))
                    .hint(if models.is_empty() {
                        "define it first: `model net = mlp(in = 64, hidden = [128], out = 10)`"
                            .to_string()
                    } else {
                        format!("models defined so far: {}", models.join(", "))
                    }),
                );
                None
            }
        }
    }

    /// Checks a model expression: a model name or a constructor call.
    pub(super) fn model_expr(&mut self, e: &'a Expr, name: &str) -> Option<ModelV> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Ident(n) => self.model_ref(&Ident {
                name: n.clone(),
                span: d.span,
            }),
            ExprKind::Call { callee, args } if callee.name == "initial" => {
                let call = self.bind(callee, d.span, args, &["model"])?;
                let me = self.req(&call, "model")?;
                // `initial(net)` is the declared weights even after `net`
                // was trained without a name.
                let m = match &self.deref(me).kind {
                    ExprKind::Ident(n) => self.model_ref_any(&Ident {
                        name: n.clone(),
                        span: me.span,
                    })?,
                    _ => self.model_expr(me, "")?,
                };
                // The model as declared: its initial weights.
                let base = self.base_model_step(m.step);
                Some(ModelV {
                    step: base,
                    name: m.name,
                    spec: m.spec,
                })
            }
            ExprKind::Call { callee, args } if callee.name == "with_weights" => {
                self.with_weights(callee, args, d.span, name)
            }
            ExprKind::Call { callee, args } => {
                let spec = match callee.name.as_str() {
                    "sequential" => self.sequential(callee, d.span, args)?,
                    "mlp" => self.mlp(callee, d.span, args)?,
                    "onnx" => self.onnx_model(callee, d.span, args)?,
                    other if self.defs.contains_key(other) => {
                        self.block_model(callee, d.span, args)?
                    }
                    other => {
                        let mut diag = Diagnostic::new(
                            ErrorKind::Unknown {
                                what: "model".into(),
                                name: other.into(),
                            },
                            callee.span,
                            "not a model constructor",
                        )
                        .hint_opt(did_you_mean(
                            other,
                            ["sequential", "mlp", "onnx", "with_weights"]
                                .into_iter()
                                .chain(self.defs.keys().map(|k| k.as_str())),
                        ));
                        if LAYERS.contains(&other) {
                            diag = diag.hint(format!(
                                "`{other}` is a layer: wrap layers in `sequential(...)`"
                            ));
                        }
                        self.error(
                            diag.hint("models: sequential(...), mlp(...), onnx(\"net.onnx\")"),
                        );
                        return None;
                    }
                };
                let name = if name.is_empty() {
                    self.anon_name()
                } else {
                    name.to_string()
                };
                let spec = Rc::new(spec);
                let step = self.emit(
                    Op::Model {
                        name: name.clone(),
                        spec: (*spec).clone(),
                    },
                    d.span,
                );
                Some(ModelV { step, name, spec })
            }
            _ => {
                let found = self.describe(d);
                self.error(Diagnostic::new(
                    ErrorKind::TypeMismatch {
                        expected: "a model".into(),
                        found,
                    },
                    d.span,
                    "not a model",
                ));
                None
            }
        }
    }

    /// `with_weights(net, v)`: `net` with the layers the vector `v` covers
    /// set to `v` (every layer of `v` must be one of `net`'s, same size).
    fn with_weights(
        &mut self,
        callee: &'a Ident,
        args: &'a [Arg],
        span: crate::syntax::Span,
        name: &str,
    ) -> Option<ModelV> {
        let call = self.bind(callee, span, args, &["model", "weights"])?;
        let me = self.req(&call, "model");
        let ve = self.req(&call, "weights");
        let m = self.model_expr(me?, "")?;
        let ve = ve?;
        let v = self.vector_expr(ve, "")?;
        let layers: Vec<(String, u64)> = m
            .spec
            .param_layers()
            .map(|l| (l.name.clone(), l.params))
            .collect();
        if let Some((layer, n)) = v.layers.iter().find(|l| !layers.contains(l)) {
            let why = match layers.iter().find(|l| &l.0 == layer) {
                Some((_, p)) => format!(
                    "layer `{layer}` of {} has {p} parameters, the vector {n} entries",
                    m.shown()
                ),
                None => format!(
                    "the vector's layer `{layer}` is not a layer of {}",
                    m.shown()
                ),
            };
            self.error(Diagnostic::new(
                ErrorKind::Invalid { message: why },
                ve.span,
                "these weights do not fit the model",
            ));
            return None;
        }
        let name = self.name_or_anon(name);
        let step = self.emit(
            Op::WithWeights {
                name: name.clone(),
                model: m.step,
                weights: v.step,
            },
            span,
        );
        Some(ModelV {
            step,
            name,
            spec: m.spec,
        })
    }

    /// The `model` step a (possibly live, trained) model descends from.
    pub(super) fn base_model_step(&self, mut step: crate::plan::StepId) -> crate::plan::StepId {
        loop {
            match &self.items[step.0 as usize].op {
                Op::Train { model, .. } => step = *model,
                _ => return step,
            }
        }
    }

    fn init(&mut self, call: &super::args::Call<'a>) -> Option<Init> {
        let seed0 = self.header.seed;
        let Some(e) = call.get("init") else {
            return Some(Init::Pytorch { seed: seed0 });
        };
        let d = self.deref(e);
        let (name, args): (String, &'a [Arg]) = match &d.kind {
            ExprKind::Ident(n) => (n.clone(), &[]),
            ExprKind::Call { callee, args } => (callee.name.clone(), args.as_slice()),
            _ => {
                self.symbol(d, "initialisation", &INITS);
                return None;
            }
        };
        if !INITS.contains(&name.as_str()) {
            self.symbol(d, "initialisation", &INITS);
            return None;
        }
        let callee = Ident {
            name: name.clone(),
            span: d.span,
        };
        let params: &[&'static str] = if name == "normal" {
            &["std", "seed"]
        } else {
            &["seed"]
        };
        let c = self.bind(&callee, d.span, args, params)?;
        let seed = self.seed(&c)?;
        Some(match name.as_str() {
            "kaiming" => Init::Kaiming { seed },
            "xavier" => Init::Xavier { seed },
            "normal" => {
                let std = match c.get("std") {
                    Some(s) => self.positive(s, "std")?,
                    None => 0.01,
                };
                Init::Normal { std, seed }
            }
            _ => Init::Pytorch { seed },
        })
    }

    fn weights(
        &mut self,
        call: &super::args::Call<'a>,
        spec: &ModelSpec,
    ) -> Option<Option<String>> {
        let Some(e) = call.get("weights") else {
            return Some(None);
        };
        let path = self.string(e, "weights")?;
        let full = if std::path::Path::new(&path).is_absolute() {
            std::path::PathBuf::from(&path)
        } else {
            self.opts.base_dir.join(&path)
        };
        let unreadable = |err: data::DataError| {
            Diagnostic::new(
                ErrorKind::File {
                    path: path.clone(),
                    reason: super::data::file_reason(&err.to_string()),
                },
                e.span,
                "weights file",
            )
        };
        let onnx = crate::onnx::is_onnx(&full);
        let keys = if onnx {
            // A PyTorch export's parameters by `state_dict` key.
            self.onnx_state_keys(&full, &path, e.span)?
        } else {
            match data::safetensors_keys(&full) {
                Ok(k) => k,
                Err(err) => {
                    self.error(unreadable(err));
                    return None;
                }
            }
        };
        for (key, shape) in expected_tensors(spec) {
            match keys.iter().find(|(k, _, _)| *k == key) {
                None => {
                    let names: Vec<&str> = keys.iter().map(|(k, _, _)| k.as_str()).collect();
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Mismatch {
                                what: "weights do not match the model".into(),
                                detail: format!("`{path}` has no tensor `{key}`"),
                            },
                            e.span,
                            format!("`{key}` missing"),
                        )
                        .hint_opt(did_you_mean(&key, names.iter().copied()))
                        .hint(format!(
                            "the file has: {}",
                            names
                                .iter()
                                .take(10)
                                .copied()
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    );
                    return None;
                }
                Some((_, found, _)) if *found != shape => {
                    self.error(Diagnostic::new(
                        ErrorKind::ShapeMismatch {
                            layer: key.clone(),
                            expected: fmt_shape(&shape),
                            found: fmt_shape(found),
                        },
                        e.span,
                        format!("`{key}` has another shape in this file"),
                    ));
                    return None;
                }
                _ => {}
            }
            // A model with NaN weights would still report a loss and an
            // accuracy; refuse it here (ONNX initializers are checked when
            // read).
            if onnx {
                continue;
            }
            match data::first_nonfinite(&full, &key) {
                Ok(None) => {}
                Ok(Some(i)) => {
                    self.error(Diagnostic::new(
                        ErrorKind::Invalid {
                            message: format!(
                                "`{path}`: tensor `{key}` holds NaN or infinity at flat index {i}"
                            ),
                        },
                        e.span,
                        "weights must be finite",
                    ));
                    return None;
                }
                Err(err) => {
                    self.error(unreadable(err));
                    return None;
                }
            }
        }
        // Tensors the model does not read: PyTorch's strict
        // `load_state_dict` refuses them; here they are named, as a
        // checkpoint of another model usually has some.
        if !onnx {
            let known: Vec<String> = spec.state_tensors().into_iter().map(|t| t.0).collect();
            let extra: Vec<&str> = keys
                .iter()
                .map(|(k, _, _)| k.as_str())
                .filter(|k| !known.iter().any(|n| n == k))
                .collect();
            if !extra.is_empty() {
                const SHOWN: usize = 8;
                let more = extra.len().saturating_sub(SHOWN);
                self.warn(Diagnostic::new(
                    ErrorKind::Suspicious {
                        message: format!(
                            "`{path}` holds {} tensor{} the model does not read: {}{}",
                            extra.len(),
                            if extra.len() == 1 { "" } else { "s" },
                            extra[..extra.len().min(SHOWN)].join(", "),
                            if more > 0 {
                                format!(" and {more} more")
                            } else {
                                String::new()
                            }
                        ),
                    },
                    e.span,
                    "PyTorch's strict load_state_dict would refuse this file",
                ));
            }
        }
        Some(Some(path))
    }

    fn sequential(&mut self, callee: &Ident, span: Span, args: &'a [Arg]) -> Option<ModelSpec> {
        let call = self.bind_variadic(callee, span, args, &["input", "init", "weights"])?;
        if call.rest.is_empty() {
            self.error(Diagnostic::new(
                ErrorKind::Invalid {
                    message: "a sequential model needs at least one layer".into(),
                },
                span,
                "no layers",
            ));
            return None;
        }
        let input = match call.get("input") {
            Some(i) => self.int_list(i, "input", 1)?,
            None => {
                // Infer from a leading linear / conv layer.
                let first = self.deref(call.rest[0]);
                let guess = match &first.kind {
                    ExprKind::Call { callee, args } if callee.name == "linear" => args
                        .first()
                        .filter(|a| a.name.is_none() || a.name.as_ref().unwrap().name == "in")
                        .and_then(|a| match self.deref(&a.value).kind {
                            ExprKind::Int(i) if i > 0 => Some(vec![i as usize]),
                            _ => None,
                        }),
                    _ => None,
                };
                match guess {
                    Some(g) => g,
                    None => {
                        self.error(
                            Diagnostic::new(
                                ErrorKind::MissingOption {
                                    func: "sequential".into(),
                                    name: "input".into(),
                                },
                                callee.span,
                                "cannot infer the input shape",
                            )
                            .related(
                                first.span,
                                "only a leading `linear(in, out)` gives the input shape",
                            )
                            .hint("give the per-example input shape, e.g. `input = [1, 8, 8]`"),
                        );
                        return None;
                    }
                }
            }
        };
        if call.rest.iter().any(|e| self.needs_blocks(e)) {
            return self.block_sequential(&call, input);
        }
        self.within_limit(&input, "input", callee.span)?;
        let mut layers = Vec::new();
        let mut shape = input.clone();
        for (i, le) in call.rest.iter().enumerate() {
            let (layer, out) = self.layer(le, &shape, &format!("layers.{i}"))?;
            self.within_limit(&out, "output", le.span)?;
            let params = layer_params(&layer);
            layers.push(LayerSpec {
                name: format!("layers.{i}"),
                layer,
                input: shape.clone(),
                output: out.clone(),
                params,
                from: vec![],
            });
            shape = out;
        }
        self.finish_model(&call, input, shape, layers, vec![])
    }

    /// Refuses a per-example shape beyond [`MAX_NODE_SIZE`] values at
    /// `span` (the graph path checks each node as it is built).
    fn within_limit(&mut self, shape: &[usize], what: &str, span: Span) -> Option<()> {
        match within_limit(shape, what) {
            Ok(()) => Some(()),
            Err(message) => {
                self.error(Diagnostic::new(
                    ErrorKind::Invalid { message },
                    span,
                    "too large",
                ));
                None
            }
        }
    }

    pub(super) fn finish_model(
        &mut self,
        call: &super::args::Call<'a>,
        input: Vec<usize>,
        output: Vec<usize>,
        layers: Vec<LayerSpec>,
        param_order: Vec<usize>,
    ) -> Option<ModelSpec> {
        let init = self.init(call)?;
        let params = layers.iter().fold(0u64, |a, l| a.saturating_add(l.params));
        let mut spec = ModelSpec {
            input,
            output,
            layers,
            params,
            init,
            weights: None,
            param_order,
        };
        if params == 0 {
            self.error(Diagnostic::new(
                ErrorKind::Invalid {
                    message: "this model has no parameters".into(),
                },
                call.span,
                "no linear, conv or norm layer",
            ));
            return None;
        }
        if params > MAX_NODE_SIZE {
            self.error(Diagnostic::new(
                ErrorKind::Invalid {
                    message: format!(
                        "this model has {params} parameters, beyond nngeo's limit of {MAX_NODE_SIZE} (2³¹)"
                    ),
                },
                call.span,
                "too many parameters",
            ));
            return None;
        }
        spec.weights = self.weights(call, &spec)?;
        Some(spec)
    }

    fn mlp(&mut self, callee: &Ident, span: Span, args: &'a [Arg]) -> Option<ModelSpec> {
        let call = self.bind(
            callee,
            span,
            args,
            &[
                "in", "hidden", "out", "act", "bias", "init", "weights", "data",
            ],
        )?;
        // `data = train` sizes the input and output layers from a dataset, so
        // that an experiment moves to another dataset by changing its data
        // line only.
        let from = match call.get("data") {
            Some(d) => Some(self.data_expr(d, "")?),
            None => None,
        };
        let inp = match (call.get("in"), &from) {
            (Some(ie), _) => self.count(ie, "in")?,
            (None, Some(dv)) => dv.info.shape.iter().product(),
            (None, None) => {
                self.missing(
                    &call,
                    "in",
                    "add `in = ...`, or `data = DATASET` to size the network from a dataset".into(),
                );
                return None;
            }
        };
        let out = match (call.get("out"), &from) {
            (Some(oe), _) => self.count(oe, "out")?,
            (None, Some(dv)) => dv.info.classes.unwrap_or(dv.info.target_dim),
            (None, None) => {
                self.missing(
                    &call,
                    "out",
                    "add `out = ...`, or `data = DATASET` to size the network from a dataset"
                        .into(),
                );
                return None;
            }
        };
        let hidden = match call.get("hidden") {
            Some(h) => self.int_list(h, "hidden", 1)?,
            None => vec![],
        };
        let act = match call.get("act") {
            Some(a) => self.symbol(a, "activation", &ACTIVATIONS)?,
            None => "relu".into(),
        };
        let bias = match call.get("bias") {
            Some(b) => self.boolean(b, "bias")?,
            None => true,
        };
        let act_layer = match act.as_str() {
            "tanh" => Layer::Tanh,
            "sigmoid" => Layer::Sigmoid,
            "gelu" => Layer::Gelu,
            // PyTorch's defaults.
            "leaky_relu" => Layer::LeakyRelu { slope: 0.01 },
            "elu" => Layer::Elu { alpha: 1.0 },
            "silu" => Layer::Silu,
            "relu6" => Layer::Hardtanh { min: 0.0, max: 6.0 },
            "hardsigmoid" => Layer::Hardsigmoid,
            "hardswish" => Layer::Hardswish,
            _ => Layer::Relu,
        };
        let mut layers = Vec::new();
        let mut width = inp;
        let widths: Vec<usize> = hidden.iter().copied().chain([out]).collect();
        for (k, w) in widths.iter().enumerate() {
            let layer = Layer::Linear {
                in_features: width,
                out_features: *w,
                bias,
            };
            let params = layer_params(&layer);
            layers.push(LayerSpec {
                name: format!("layers.{}", layers.len()),
                layer,
                input: vec![width],
                output: vec![*w],
                params,
                from: vec![],
            });
            if k + 1 < widths.len() {
                layers.push(LayerSpec {
                    name: format!("layers.{}", layers.len()),
                    layer: act_layer.clone(),
                    input: vec![*w],
                    output: vec![*w],
                    params: 0,
                    from: vec![],
                });
            }
            width = *w;
        }
        self.finish_model(&call, vec![inp], vec![out], layers, vec![])
    }
}

/// Number of parameters of a layer (weights + bias; γ, β for norms).
pub fn layer_params(l: &Layer) -> u64 {
    l.num_params()
}

/// The `state_dict` tensors a model needs, with their PyTorch shapes
/// (`num_batches_tracked` is optional, as in PyTorch's own loader).
pub fn expected_tensors(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    spec.state_tensors()
        .into_iter()
        .filter(|(k, _, _)| !k.ends_with(".num_batches_tracked"))
        .map(|(k, s, _)| (k, s))
        .collect()
}
