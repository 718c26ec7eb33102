//! One layer call (`conv2d(1, 8, kernel = 3)`, `batchnorm2d(8)`, ...): its
//! arguments, the layer it makes and the shape it gives its input.

use super::data::fmt_shape;
use super::model::LAYERS;
use super::Checker;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::conv_len;
use crate::plan::Layer;
use crate::syntax::Expr;

impl<'a> Checker<'a> {
    /// One layer applied to `shape`: the layer and its output shape.
    pub(super) fn layer(
        &mut self,
        e: &'a Expr,
        shape: &[usize],
        name: &str,
    ) -> Option<(Layer, Vec<usize>)> {
        let d = self.deref(e);
        let (callee, args) = self.named(d, "layer", &LAYERS)?;
        let span = d.span;
        let mismatch = |c: &mut Self, expected: String, hint: Option<String>| {
            c.error(
                Diagnostic::new(
                    ErrorKind::ShapeMismatch {
                        layer: format!("{name} ({})", callee.name),
                        expected,
                        found: fmt_shape(shape),
                    },
                    span,
                    format!("input of shape {}", fmt_shape(shape)),
                )
                .hint_opt(hint),
            );
        };
        match callee.name.as_str() {
            "linear" => {
                let c = self.bind(&callee, span, args, &["in", "out", "bias"])?;
                let ie = self.req(&c, "in");
                let oe = self.req(&c, "out");
                let (ie, oe) = (ie?, oe?);
                let i = self.count(ie, "in")?;
                let o = self.count(oe, "out")?;
                let bias = match c.get("bias") {
                    Some(b) => self.boolean(b, "bias")?,
                    None => true,
                };
                if shape.len() != 1 || shape[0] != i {
                    let n: usize = shape.iter().product();
                    let hint = if shape.len() > 1 && n == i {
                        Some("add `flatten` before this layer".to_string())
                    } else if shape.len() > 1 {
                        Some(format!(
                            "after `flatten` it would get [{n}]: use `linear({n}, {o})`"
                        ))
                    } else {
                        Some(format!("use `linear({}, {o})`", shape[0]))
                    };
                    mismatch(self, format!("[{i}]"), hint);
                    return None;
                }
                Some((
                    Layer::Linear {
                        in_features: i,
                        out_features: o,
                        bias,
                    },
                    vec![o],
                ))
            }
            "conv2d" => {
                let c = self.bind(
                    &callee,
                    span,
                    args,
                    &[
                        "in", "out", "kernel", "stride", "padding", "bias", "dilation",
                    ],
                )?;
                let ie = self.req(&c, "in");
                let oe = self.req(&c, "out");
                let ke = self.req(&c, "kernel");
                let (ie, oe, ke) = (ie?, oe?, ke?);
                let i = self.count(ie, "in")?;
                let o = self.count(oe, "out")?;
                let kernel = self.pair(ke, "kernel", 1)?;
                let stride = match c.get("stride") {
                    Some(s) => self.pair(s, "stride", 1)?,
                    None => [1, 1],
                };
                let padding = match c.get("padding") {
                    Some(p) => self.pair(p, "padding", 0)?,
                    None => [0, 0],
                };
                let dilation = match c.get("dilation") {
                    Some(d) => self.pair(d, "dilation", 1)?,
                    None => [1, 1],
                };
                let bias = match c.get("bias") {
                    Some(b) => self.boolean(b, "bias")?,
                    None => true,
                };
                if shape.len() != 3 || shape[0] != i {
                    let hint =
                        (shape.len() == 3).then(|| format!("use `conv2d({}, {o}, ...)`", shape[0]));
                    mismatch(self, format!("[{i}, H, W]"), hint);
                    return None;
                }
                let h = conv_len(shape[1], kernel[0], stride[0], padding[0], dilation[0]);
                let w = conv_len(shape[2], kernel[1], stride[1], padding[1], dilation[1]);
                let (Some(h), Some(w)) = (h, w) else {
                    mismatch(
                        self,
                        format!(
                            "an image of at least {}×{} after padding",
                            dilation[0] * (kernel[0] - 1) + 1,
                            dilation[1] * (kernel[1] - 1) + 1
                        ),
                        Some("use a smaller kernel or more padding".into()),
                    );
                    return None;
                };
                Some((
                    Layer::Conv2d {
                        in_channels: i,
                        out_channels: o,
                        kernel,
                        stride,
                        padding,
                        bias,
                        dilation,
                        groups: 1,
                    },
                    vec![o, h, w],
                ))
            }
            "conv1d" => {
                let c = self.bind(
                    &callee,
                    span,
                    args,
                    &["in", "out", "kernel", "stride", "padding", "bias"],
                )?;
                let ie = self.req(&c, "in");
                let oe = self.req(&c, "out");
                let ke = self.req(&c, "kernel");
                let (ie, oe, ke) = (ie?, oe?, ke?);
                let i = self.count(ie, "in")?;
                let o = self.count(oe, "out")?;
                let kernel = self.count(ke, "kernel")?;
                let stride = match c.get("stride") {
                    Some(s) => self.count(s, "stride")?,
                    None => 1,
                };
                let padding = match c.get("padding") {
                    Some(p) => self.int(p, "padding", 0, 1 << 20)? as usize,
                    None => 0,
                };
                let bias = match c.get("bias") {
                    Some(b) => self.boolean(b, "bias")?,
                    None => true,
                };
                if shape.len() != 2 || shape[0] != i {
                    mismatch(self, format!("[{i}, L]"), None);
                    return None;
                }
                let Some(l) = spatial(shape[1], kernel, stride, padding) else {
                    mismatch(self, format!("a length of at least {kernel}"), None);
                    return None;
                };
                Some((
                    Layer::Conv1d {
                        in_channels: i,
                        out_channels: o,
                        kernel,
                        stride,
                        padding,
                        bias,
                        dilation: 1,
                        groups: 1,
                    },
                    vec![o, l],
                ))
            }
            "relu" | "tanh" | "sigmoid" | "gelu" | "flatten" => {
                self.bind(&callee, span, args, &[])?;
                let layer = match callee.name.as_str() {
                    "relu" => Layer::Relu,
                    "tanh" => Layer::Tanh,
                    "sigmoid" => Layer::Sigmoid,
                    "gelu" => Layer::Gelu,
                    _ => Layer::Flatten,
                };
                let out = if layer == Layer::Flatten {
                    vec![shape.iter().product()]
                } else {
                    shape.to_vec()
                };
                Some((layer, out))
            }
            "maxpool2d" | "avgpool2d" => {
                let c = self.bind(&callee, span, args, &["kernel", "stride", "padding"])?;
                let ke = self.req(&c, "kernel")?;
                let kernel = self.pair(ke, "kernel", 1)?;
                let stride = match c.get("stride") {
                    Some(s) => self.pair(s, "stride", 1)?,
                    None => kernel,
                };
                let padding = match c.get("padding") {
                    Some(p) => self.pair(p, "padding", 0)?,
                    None => [0, 0],
                };
                let layer = if callee.name == "maxpool2d" {
                    Layer::MaxPool2d {
                        kernel,
                        stride,
                        padding,
                        dilation: [1, 1],
                        ceil_mode: false,
                    }
                } else {
                    Layer::AvgPool2d {
                        kernel,
                        stride,
                        padding,
                        ceil_mode: false,
                        count_include_pad: true,
                    }
                };
                // The graph's shape rule (padding at most half the kernel,
                // as PyTorch).
                match layer.output_shape(&[shape]) {
                    Ok(out) => Some((layer, out)),
                    Err(e) => {
                        match e
                            .strip_prefix("expected ")
                            .and_then(|e| e.split(", found ").next())
                        {
                            Some(expected) => mismatch(self, expected.to_string(), None),
                            None => self.error(Diagnostic::new(
                                ErrorKind::Invalid { message: e },
                                span,
                                "padding too large",
                            )),
                        }
                        None
                    }
                }
            }
            "batchnorm1d" | "batchnorm2d" => {
                let c = self.bind(&callee, span, args, &["features", "eps"])?;
                let fe = self.req(&c, "features")?;
                let f = self.count(fe, "features")?;
                let eps = match c.get("eps") {
                    Some(x) => self.positive(x, "eps")?,
                    None => 1e-5,
                };
                if callee.name == "batchnorm1d" {
                    if shape.is_empty() || shape.len() > 2 || shape[0] != f {
                        mismatch(self, format!("[{f}] or [{f}, L]"), None);
                        return None;
                    }
                    Some((
                        Layer::BatchNorm1d {
                            features: f,
                            eps,
                            affine: true,
                        },
                        shape.to_vec(),
                    ))
                } else {
                    if shape.len() != 3 || shape[0] != f {
                        mismatch(self, format!("[{f}, H, W]"), None);
                        return None;
                    }
                    Some((
                        Layer::BatchNorm2d {
                            channels: f,
                            eps,
                            affine: true,
                        },
                        shape.to_vec(),
                    ))
                }
            }
            "layernorm" => {
                let c = self.bind(&callee, span, args, &["shape", "eps"])?;
                let se = self.req(&c, "shape")?;
                let s = self.int_list(se, "shape", 1)?;
                let eps = match c.get("eps") {
                    Some(x) => self.positive(x, "eps")?,
                    None => 1e-5,
                };
                if s.len() > shape.len() || shape[shape.len() - s.len()..] != s[..] {
                    mismatch(
                        self,
                        format!("[..., {}]", fmt_shape(&s).trim_matches(['[', ']'])),
                        None,
                    );
                    return None;
                }
                Some((
                    Layer::LayerNorm {
                        shape: s,
                        eps,
                        affine: true,
                    },
                    shape.to_vec(),
                ))
            }
            other => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::Unknown {
                            what: "layer".into(),
                            name: other.into(),
                        },
                        callee.span,
                        "not a layer",
                    )
                    .hint_opt(did_you_mean(other, LAYERS))
                    .hint(format!("layers: {}", LAYERS.join(", "))),
                );
                None
            }
        }
    }

    /// `3` or `[3, 5]` → [h, w].
    fn pair(&mut self, e: &'a Expr, what: &str, min: i64) -> Option<[usize; 2]> {
        let v = self.int_list(e, what, min)?;
        match v.as_slice() {
            [a] => Some([*a, *a]),
            [a, b] => Some([*a, *b]),
            _ => {
                self.error(Diagnostic::new(
                    ErrorKind::TypeMismatch {
                        expected: "one or two integers".into(),
                        found: format!("{} integers", v.len()),
                    },
                    e.span,
                    format!("`{what}` is `k` or `[kh, kw]`"),
                ));
                None
            }
        }
    }
}

fn spatial(size: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = size + 2 * padding;
    (padded >= kernel).then(|| (padded - kernel) / stride + 1)
}
