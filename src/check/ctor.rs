//! Layer constructors in blocks: `conv2d(in, out, kernel = 3, ...)` and the
//! others applied to evaluated arguments, giving module descriptions, and
//! `sequential(...)` with its lists spliced.

use super::block::{ArgV, Frame, Module, SeqItem, SrcId, V};
use super::Checker;
use crate::diag::ErrorKind;
use crate::plan::{Layer, MAX_NODE_SIZE};
use crate::syntax::{Ident, Span};
use std::collections::BTreeMap;
use std::rc::Rc;

/// Layer constructors and their options.
pub const CTORS: [(&str, &[&str]); 34] = [
    ("linear", &["in", "out", "bias"]),
    (
        "conv2d",
        &[
            "in", "out", "kernel", "stride", "padding", "bias", "dilation", "groups",
        ],
    ),
    (
        "conv_transpose2d",
        &[
            "in",
            "out",
            "kernel",
            "stride",
            "padding",
            "output_padding",
            "bias",
            "dilation",
            "groups",
        ],
    ),
    ("embedding", &["num_embeddings", "dim"]),
    (
        "conv1d",
        &[
            "in", "out", "kernel", "stride", "padding", "bias", "dilation", "groups",
        ],
    ),
    ("relu", &[]),
    ("tanh", &[]),
    ("sigmoid", &[]),
    ("gelu", &[]),
    ("leaky_relu", &["slope"]),
    ("elu", &["alpha"]),
    ("silu", &[]),
    ("relu6", &[]),
    ("hardtanh", &["min", "max"]),
    ("hardsigmoid", &[]),
    ("hardswish", &[]),
    ("flatten", &[]),
    (
        "maxpool2d",
        &["kernel", "stride", "padding", "dilation", "ceil_mode"],
    ),
    (
        "avgpool2d",
        &[
            "kernel",
            "stride",
            "padding",
            "ceil_mode",
            "count_include_pad",
        ],
    ),
    (
        "maxpool1d",
        &["kernel", "stride", "padding", "dilation", "ceil_mode"],
    ),
    (
        "avgpool1d",
        &[
            "kernel",
            "stride",
            "padding",
            "ceil_mode",
            "count_include_pad",
        ],
    ),
    ("adaptive_avgpool2d", &["output"]),
    ("adaptive_maxpool2d", &["output"]),
    ("adaptive_avgpool1d", &["output"]),
    ("adaptive_maxpool1d", &["output"]),
    ("batchnorm1d", &["features", "eps", "affine"]),
    ("batchnorm2d", &["features", "eps", "affine"]),
    ("layernorm", &["shape", "eps", "affine"]),
    ("groupnorm", &["groups", "channels", "eps", "affine"]),
    ("instancenorm2d", &["features", "eps", "affine"]),
    ("instancenorm1d", &["features", "eps", "affine"]),
    ("dropout", &["p"]),
    ("identity", &[]),
    ("sequential", &[]),
];

/// Constructors whose options all have defaults: the bare name is a layer.
pub const ALL_OPTIONAL: [&str; 3] = ["dropout", "leaky_relu", "elu"];

pub fn ctor_params(name: &str) -> Option<&'static [&'static str]> {
    CTORS.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

impl<'a> Checker<'a> {
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
                groups: g.int_or("groups", 1, 1)?,
            },
            "conv_transpose2d" => Layer::ConvTranspose2d {
                in_channels: g.count("in")?,
                out_channels: g.count("out")?,
                kernel: g.pair("kernel", None, 1)?,
                stride: g.pair("stride", Some([1, 1]), 1)?,
                padding: g.pair("padding", Some([0, 0]), 0)?,
                output_padding: g.pair("output_padding", Some([0, 0]), 0)?,
                dilation: g.pair("dilation", Some([1, 1]), 1)?,
                groups: g.int_or("groups", 1, 1)?,
                bias: g.bool_or("bias", true)?,
            },
            "embedding" => Layer::Embedding {
                num_embeddings: g.count("num_embeddings")?,
                dim: g.count("dim")?,
            },
            "conv1d" => Layer::Conv1d {
                in_channels: g.count("in")?,
                out_channels: g.count("out")?,
                kernel: g.count("kernel")?,
                stride: g.int_or("stride", 1, 1)?,
                padding: g.int_or("padding", 0, 0)?,
                bias: g.bool_or("bias", true)?,
                dilation: g.int_or("dilation", 1, 1)?,
                groups: g.int_or("groups", 1, 1)?,
            },
            "relu" => Layer::Relu,
            "tanh" => Layer::Tanh,
            "sigmoid" => Layer::Sigmoid,
            "gelu" => Layer::Gelu,
            // PyTorch's defaults: negative_slope 0.01, alpha 1.
            "leaky_relu" => Layer::LeakyRelu {
                slope: if a.contains_key("slope") {
                    g.number_in("slope", -1e6, 1e6)?
                } else {
                    0.01
                },
            },
            "elu" => Layer::Elu {
                alpha: if a.contains_key("alpha") {
                    g.number_in("alpha", 0.0, 1e6)?
                } else {
                    1.0
                },
            },
            "silu" => Layer::Silu,
            "relu6" => Layer::Hardtanh { min: 0.0, max: 6.0 },
            // PyTorch's defaults: min_val −1, max_val 1.
            "hardtanh" => Layer::Hardtanh {
                min: if a.contains_key("min") {
                    g.number_in("min", -1e6, 1e6)?
                } else {
                    -1.0
                },
                max: if a.contains_key("max") {
                    g.number_in("max", -1e6, 1e6)?
                } else {
                    1.0
                },
            },
            "hardsigmoid" => Layer::Hardsigmoid,
            "hardswish" => Layer::Hardswish,
            "flatten" => Layer::Flatten,
            "maxpool2d" | "avgpool2d" => {
                let kernel = g.pair("kernel", None, 1)?;
                let stride = g.pair("stride", Some(kernel), 1)?;
                let padding = g.pair("padding", Some([0, 0]), 0)?;
                let ceil_mode = g.bool_or("ceil_mode", false)?;
                if name == "maxpool2d" {
                    Layer::MaxPool2d {
                        kernel,
                        stride,
                        padding,
                        dilation: g.pair("dilation", Some([1, 1]), 1)?,
                        ceil_mode,
                    }
                } else {
                    Layer::AvgPool2d {
                        kernel,
                        stride,
                        padding,
                        ceil_mode,
                        count_include_pad: g.bool_or("count_include_pad", true)?,
                    }
                }
            }
            "maxpool1d" | "avgpool1d" => {
                let kernel = g.count("kernel")?;
                let stride = g.int_or("stride", kernel, 1)?;
                let padding = g.int_or("padding", 0, 0)?;
                let ceil_mode = g.bool_or("ceil_mode", false)?;
                if name == "maxpool1d" {
                    Layer::MaxPool1d {
                        kernel,
                        stride,
                        padding,
                        dilation: g.int_or("dilation", 1, 1)?,
                        ceil_mode,
                    }
                } else {
                    Layer::AvgPool1d {
                        kernel,
                        stride,
                        padding,
                        ceil_mode,
                        count_include_pad: g.bool_or("count_include_pad", true)?,
                    }
                }
            }
            "adaptive_avgpool2d" => Layer::AdaptiveAvgPool2d {
                output: g.pair("output", Some([1, 1]), 1)?,
            },
            "adaptive_maxpool2d" => Layer::AdaptiveMaxPool2d {
                output: g.pair("output", Some([1, 1]), 1)?,
            },
            "adaptive_avgpool1d" => Layer::AdaptiveAvgPool1d {
                output: g.int_or("output", 1, 1)?,
            },
            "adaptive_maxpool1d" => Layer::AdaptiveMaxPool1d {
                output: g.int_or("output", 1, 1)?,
            },
            "batchnorm1d" => Layer::BatchNorm1d {
                features: g.count("features")?,
                eps: g.eps()?,
                affine: g.bool_or("affine", true)?,
            },
            "batchnorm2d" => Layer::BatchNorm2d {
                channels: g.count("features")?,
                eps: g.eps()?,
                affine: g.bool_or("affine", true)?,
            },
            "layernorm" => Layer::LayerNorm {
                shape: g.shape("shape")?,
                eps: g.eps()?,
                affine: g.bool_or("affine", true)?,
            },
            // PyTorch's InstanceNorm2d (no running statistics): one group
            // per channel, without affine parameters unless asked.
            "instancenorm2d" | "instancenorm1d" => {
                let channels = g.count("features")?;
                Layer::GroupNorm {
                    groups: channels,
                    channels,
                    eps: g.eps()?,
                    affine: g.bool_or("affine", false)?,
                }
            }
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
                    affine: g.bool_or("affine", true)?,
                }
            }
            // Dropout acts in training only (seeded per step); every
            // measurement sees the identity.
            "dropout" => Layer::Dropout {
                p: if a.contains_key("p") {
                    g.number_in("p", 0.0, 1.0)?
                } else {
                    0.5
                },
            },
            _ => return Some(V::Module(Rc::new(Module::Identity))),
        };
        Some(V::Module(Rc::new(Module::Layer(layer))))
    }

    /// `sequential(a, [b, c], when(x, d), ...)`: lists are spliced and
    /// absent modules dropped before numbering, as a PyTorch
    /// `nn.Sequential(*layers)` built in a loop would be.
    fn eval_sequential(&mut self, span: Span, args: Vec<ArgV<'a>>, f: &Frame<'a>) -> Option<V<'a>> {
        fn splice<'a>(
            v: V<'a>,
            at: (Span, SrcId),
            out: &mut Vec<SeqItem<'a>>,
            bad: &mut Option<String>,
        ) {
            match v {
                V::Module(module) => out.push(SeqItem {
                    module,
                    span: at.0,
                    src: at.1,
                }),
                V::Absent => {}
                V::List(items) => items.into_iter().for_each(|i| splice(i, at, out, bad)),
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
            splice(a.value, (a.span, f.src), &mut items, &mut bad);
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
            V::Int(i) if *i >= min && *i <= MAX_NODE_SIZE as i64 => Some(*i as usize),
            V::Int(i) => {
                let range = if *i < min {
                    format!("must be ≥ {min}")
                } else {
                    format!("must be ≤ {MAX_NODE_SIZE} (2³¹)")
                };
                self.c.err_at(
                    self.src,
                    ErrorKind::OutOfRange {
                        name: key.into(),
                        value: i.to_string(),
                        range: range.clone(),
                    },
                    span,
                    range,
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
