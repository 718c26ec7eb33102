//! What each layer type is, independent of any front end: its output shape
//! for given input shapes, its parameter count and the `state_dict` tensors
//! it owns in PyTorch's layout. The checker (`.ngx` models), the oracle's
//! graph descriptions and model importers all build `ModelSpec`s through
//! these, so a layer means the same thing whichever way it was written.

use super::ops::{Layer, LayerSpec, ModelSpec, Pooling};

/// Output length of a convolution or pooling window along one axis, or
/// `None` when the (padded) input is shorter than the (dilated) kernel.
pub fn conv_len(
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Option<usize> {
    let padded = size + 2 * padding;
    let reach = dilation * (kernel - 1) + 1;
    (padded >= reach && stride > 0).then(|| (padded - reach) / stride + 1)
}

/// Output length of a pooling window along one axis, PyTorch's
/// `pooling_output_shape`: with `ceil_mode` the last window may hang over
/// the end, as long as it starts inside the image or its left padding.
pub fn pool_len(
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    ceil: bool,
) -> Option<usize> {
    let padded = size + 2 * padding;
    let reach = dilation * (kernel.max(1) - 1) + 1;
    if padded < reach || stride == 0 {
        return None;
    }
    let span = padded - reach;
    if !ceil {
        return Some(span / stride + 1);
    }
    let out = span.div_ceil(stride) + 1;
    Some(if (out - 1) * stride >= size + padding {
        out - 1
    } else {
        out
    })
}

/// Window `i` of `out` adaptive windows over `size` positions, PyTorch's
/// `[floor(i·size/out), ceil((i+1)·size/out))`.
pub fn adaptive_window(i: usize, size: usize, out: usize) -> (usize, usize) {
    (i * size / out, ((i + 1) * size).div_ceil(out))
}

/// The widest of `out` adaptive windows over `size` positions.
pub fn adaptive_taps(size: usize, out: usize) -> usize {
    (0..out)
        .map(|i| {
            let (a, b) = adaptive_window(i, size, out);
            b - a
        })
        .max()
        .unwrap_or(1)
}

/// Output length of a transposed convolution along one axis, PyTorch's
/// `(size−1)·stride − 2·padding + dilation·(kernel−1) + output_padding + 1`,
/// or `None` when that is not positive.
pub fn conv_transpose_len(
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    output_padding: usize,
    dilation: usize,
) -> Option<usize> {
    let full = (size.checked_sub(1)?) * stride + dilation * (kernel - 1) + output_padding + 1;
    full.checked_sub(2 * padding).filter(|&l| l > 0)
}

fn fmt(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

impl Layer {
    /// Number of trainable parameters (weights and bias; γ and β of norms),
    /// `u64::MAX` where it would not fit (the checker refuses such layers:
    /// [`MAX_NODE_SIZE`]).
    pub fn num_params(&self) -> u64 {
        u64::try_from(self.params_wide()).unwrap_or(u64::MAX)
    }

    /// The parameter count without overflow: every factor is a checked size
    /// of at most 2³¹, but a kernel may be as large as its padded input.
    fn params_wide(&self) -> u128 {
        let w = |x: usize| x as u128;
        match self {
            Layer::Linear {
                in_features,
                out_features,
                bias,
            } => (w(*in_features) + w(*bias as usize)) * w(*out_features),
            Layer::ConvTranspose2d {
                in_channels,
                out_channels,
                kernel,
                bias,
                groups,
                ..
            } => {
                (w(in_channels / (*groups).max(1)) * w(kernel[0]) * w(kernel[1])
                    + w(*bias as usize))
                    * w(*out_channels)
            }
            Layer::Embedding {
                num_embeddings,
                dim,
            } => w(*num_embeddings) * w(*dim),
            Layer::Conv2d { .. } | Layer::Conv1d { .. } => {
                let c = self.conv().expect("a convolution");
                // Wide products: the sizes are not validated yet.
                (w(c.in_channels / c.groups.max(1)) * w(c.kernel[0]) * w(c.kernel[1])
                    + w(c.bias as usize))
                    * w(c.out_channels)
            }
            // A norm's scale and shift.
            _ => self
                .norm_scale_shape()
                .map_or(0, |s| 2 * s.iter().map(|&d| w(d)).product::<u128>()),
        }
    }

    /// Whether the layer reads more than one input.
    pub fn is_join(&self) -> bool {
        matches!(self, Layer::Add | Layer::Concat)
    }

    /// The per-example output shape for these per-example input shapes,
    /// or what was expected instead.
    pub fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        if self.is_join() {
            if inputs.len() < 2 {
                return Err(format!("{} joins at least two inputs", self.type_name()));
            }
        } else if inputs.len() != 1 {
            return Err(format!("{} takes one input", self.type_name()));
        }
        let x = inputs[0];
        let bad = |expected: String| Err(format!("expected {expected}, found {}", fmt(x)));
        match self {
            Layer::Linear {
                in_features,
                out_features,
                ..
            } => {
                if x != [*in_features] {
                    return bad(format!("[{in_features}]"));
                }
                Ok(vec![*out_features])
            }
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                dilation,
                groups,
                ..
            } => {
                check_groups(*in_channels, *out_channels, *groups)?;
                if x.len() != 3 || x[0] != *in_channels {
                    return bad(format!("[{in_channels}, H, W]"));
                }
                let h = conv_len(x[1], kernel[0], stride[0], padding[0], dilation[0]);
                let w = conv_len(x[2], kernel[1], stride[1], padding[1], dilation[1]);
                match (h, w) {
                    (Some(h), Some(w)) => Ok(vec![*out_channels, h, w]),
                    _ => bad(format!(
                        "an image of at least {}×{} after padding",
                        dilation[0] * (kernel[0] - 1) + 1,
                        dilation[1] * (kernel[1] - 1) + 1
                    )),
                }
            }
            Layer::ConvTranspose2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                output_padding,
                dilation,
                groups,
                ..
            } => {
                check_groups(*in_channels, *out_channels, *groups)?;
                for a in 0..2 {
                    if output_padding[a] >= stride[a] && output_padding[a] >= dilation[a] {
                        return Err(format!(
                            "output_padding {output_padding:?} must be smaller than the stride {stride:?} or the dilation {dilation:?}"
                        ));
                    }
                }
                if x.len() != 3 || x[0] != *in_channels {
                    return bad(format!("[{in_channels}, H, W]"));
                }
                let len = |a: usize| {
                    conv_transpose_len(
                        x[1 + a],
                        kernel[a],
                        stride[a],
                        padding[a],
                        output_padding[a],
                        dilation[a],
                    )
                };
                match (len(0), len(1)) {
                    (Some(h), Some(w)) => Ok(vec![*out_channels, h, w]),
                    _ => Err(format!(
                        "padding {padding:?} leaves no output for an input of {}",
                        fmt(x)
                    )),
                }
            }
            Layer::Embedding { dim, .. } => {
                let mut out = x.to_vec();
                out.push(*dim);
                Ok(out)
            }
            Layer::Conv1d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                dilation,
                groups,
                ..
            } => {
                if x.len() != 2 || x[0] != *in_channels {
                    return bad(format!("[{in_channels}, L]"));
                }
                if *groups == 0 || in_channels % groups != 0 || out_channels % groups != 0 {
                    return Err(format!(
                        "{groups} groups must divide both {in_channels} input and {out_channels} output channels"
                    ));
                }
                match conv_len(x[1], *kernel, *stride, *padding, *dilation) {
                    Some(l) => Ok(vec![*out_channels, l]),
                    None => bad(format!(
                        "a length of at least {}",
                        (dilation * (kernel - 1) + 1)
                            .saturating_sub(2 * padding)
                            .max(1)
                    )),
                }
            }
            Layer::Relu
            | Layer::Tanh
            | Layer::Sigmoid
            | Layer::Gelu
            | Layer::LeakyRelu { .. }
            | Layer::Elu { .. }
            | Layer::Silu
            | Layer::Hardsigmoid
            | Layer::Hardswish => Ok(x.to_vec()),
            Layer::Hardtanh { min, max } => {
                if min >= max || !min.is_finite() || !max.is_finite() {
                    return Err(format!(
                        "hardtanh needs finite bounds with min < max, found [{min}, {max}]"
                    ));
                }
                Ok(x.to_vec())
            }
            Layer::Dropout { p } => {
                if !(0.0..1.0).contains(p) {
                    return Err(format!(
                        "a dropout probability must be in [0, 1), found {p}"
                    ));
                }
                Ok(x.to_vec())
            }
            Layer::Flatten => Ok(vec![x.iter().product()]),
            Layer::MaxPool2d { .. }
            | Layer::AvgPool2d { .. }
            | Layer::MaxPool1d { .. }
            | Layer::AvgPool1d { .. }
            | Layer::AdaptiveAvgPool2d { .. }
            | Layer::AdaptiveAvgPool1d { .. }
            | Layer::AdaptiveMaxPool2d { .. }
            | Layer::AdaptiveMaxPool1d { .. } => {
                let (pooling, rank) = self.pooling().expect("a pooling layer");
                let wanted = if rank == 2 { "[C, L]" } else { "[C, H, W]" };
                if x.len() != rank || x[1..].contains(&0) {
                    return bad(wanted.into());
                }
                let [c, h, w] = super::ops::image_dims(x);
                // 1-D layers speak of their own axis only.
                let axes = |a: [usize; 2]| -> String {
                    if rank == 2 {
                        a[1].to_string()
                    } else {
                        format!("{a:?}")
                    }
                };
                let (oh, ow) = match pooling {
                    Pooling::Adaptive { output, .. } => (output[0], output[1]),
                    Pooling::Window {
                        kernel,
                        stride,
                        padding,
                        dilation,
                        ceil_mode,
                        ..
                    } => {
                        // PyTorch: at most half the effective (dilated) kernel.
                        let reach = |a: usize| dilation[a] * (kernel[a].max(1) - 1) + 1;
                        if padding[0] * 2 > reach(0) || padding[1] * 2 > reach(1) {
                            return Err(format!(
                                "pooling padding {} is more than half the kernel {}",
                                axes(padding),
                                axes(kernel)
                            ));
                        }
                        let len = |a: usize, size| {
                            pool_len(
                                size,
                                kernel[a],
                                stride[a],
                                padding[a],
                                dilation[a],
                                ceil_mode,
                            )
                        };
                        match (len(0, h), len(1, w)) {
                            (Some(oh), Some(ow)) => (oh, ow),
                            _ => {
                                let least =
                                    |a: usize| reach(a).saturating_sub(2 * padding[a]).max(1);
                                return bad(if rank == 2 {
                                    format!("a length of at least {}", least(1))
                                } else {
                                    format!("an image of at least {}×{}", least(0), least(1))
                                });
                            }
                        }
                    }
                };
                Ok(if rank == 2 {
                    vec![c, ow]
                } else {
                    vec![c, oh, ow]
                })
            }
            Layer::BatchNorm1d { features: f, .. } => {
                if x.is_empty() || x.len() > 2 || x[0] != *f {
                    return bad(format!("[{f}] or [{f}, L]"));
                }
                Ok(x.to_vec())
            }
            Layer::BatchNorm2d { channels: c, .. } => {
                if x.len() != 3 || x[0] != *c {
                    return bad(format!("[{c}, H, W]"));
                }
                Ok(x.to_vec())
            }
            Layer::GroupNorm {
                groups, channels, ..
            } => {
                if x.len() < 2 || x[0] != *channels {
                    return bad(format!("[{channels}, ...]"));
                }
                if *groups == 0 || channels % groups != 0 {
                    return Err(format!(
                        "{channels} channels do not split into {groups} groups"
                    ));
                }
                Ok(x.to_vec())
            }
            Layer::LayerNorm { shape, .. } => {
                if shape.len() > x.len() || x[x.len() - shape.len()..] != shape[..] {
                    return bad(format!("[..., {}]", fmt(shape).trim_matches(['[', ']'])));
                }
                Ok(x.to_vec())
            }
            Layer::Add => {
                for y in &inputs[1..] {
                    if *y != x {
                        return Err(format!(
                            "the branches of an addition differ in shape: {} and {}",
                            fmt(x),
                            fmt(y)
                        ));
                    }
                }
                Ok(x.to_vec())
            }
            Layer::Concat => {
                let mut out = x.to_vec();
                for y in &inputs[1..] {
                    if y.is_empty() || x.is_empty() || y[1..] != x[1..] {
                        return Err(format!(
                            "concatenation along channels needs equal trailing shapes: {} and {}",
                            fmt(x),
                            fmt(y)
                        ));
                    }
                    out[0] += y[0];
                }
                Ok(out)
            }
        }
    }

    /// The `state_dict` tensors of a layer named `name`: `(key, shape,
    /// trainable)` in PyTorch's order.
    pub fn state_tensors(&self, name: &str) -> Vec<(String, Vec<usize>, bool)> {
        let k = |t: &str| format!("{name}.{t}");
        let mut out = Vec::new();
        let (weight, bias): (Option<Vec<usize>>, bool) = match self {
            Layer::Linear {
                in_features,
                out_features,
                bias,
            } => (Some(vec![*out_features, *in_features]), *bias),
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel,
                bias,
                groups,
                ..
            } => (
                Some(vec![
                    *out_channels,
                    in_channels / groups,
                    kernel[0],
                    kernel[1],
                ]),
                *bias,
            ),
            Layer::ConvTranspose2d {
                in_channels,
                out_channels,
                kernel,
                bias,
                groups,
                ..
            } => {
                // The bias has one entry per output channel, not per row.
                let w = vec![*in_channels, out_channels / groups, kernel[0], kernel[1]];
                out.push((k("weight"), w, true));
                if *bias {
                    out.push((k("bias"), vec![*out_channels], true));
                }
                return out;
            }
            Layer::Embedding {
                num_embeddings,
                dim,
            } => (Some(vec![*num_embeddings, *dim]), false),
            Layer::Conv1d {
                in_channels,
                out_channels,
                kernel,
                bias,
                groups,
                ..
            } => (
                Some(vec![*out_channels, in_channels / (*groups).max(1), *kernel]),
                *bias,
            ),
            _ => match self.norm_scale_shape() {
                Some(s) => (Some(s), true),
                None => (None, false),
            },
        };
        if let Some(w) = weight {
            let b = if self.family() == Some(super::ops::LayerFamily::Norm) {
                w.clone()
            } else {
                vec![w[0]]
            };
            out.push((k("weight"), w, true));
            if bias {
                out.push((k("bias"), b, true));
            }
        }
        if let Layer::BatchNorm1d { features: c, .. } | Layer::BatchNorm2d { channels: c, .. } =
            self
        {
            out.push((k("running_mean"), vec![*c], false));
            out.push((k("running_var"), vec![*c], false));
            out.push((k("num_batches_tracked"), vec![], false));
        }
        out
    }
}

/// Channels split evenly into `groups`, in and out.
fn check_groups(cin: usize, cout: usize, groups: usize) -> Result<(), String> {
    if groups == 0 || !cin.is_multiple_of(groups) || !cout.is_multiple_of(groups) {
        return Err(format!(
            "{cin} input and {cout} output channels do not both split into {groups} groups"
        ));
    }
    Ok(())
}

/// The most values one layer may hold or produce per example, and the most
/// parameters a model may have: 2³¹, beyond any network whose curvature fits
/// a machine, and small enough that the plan's sizes and costs stay exact
/// in 64 bits.
pub const MAX_NODE_SIZE: u64 = 1 << 31;

/// Refuses a per-example shape of more than [`MAX_NODE_SIZE`] values.
pub fn within_limit(shape: &[usize], what: &str) -> Result<(), String> {
    let values = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    match values {
        Some(v) if v <= MAX_NODE_SIZE => Ok(()),
        _ => Err(format!(
            "an {what} of shape {} per example is beyond nngeo's limit of {MAX_NODE_SIZE} (2³¹) values",
            fmt(shape)
        )),
    }
}

impl LayerSpec {
    /// A pool that spreads its input over windows: the taps per window
    /// (the widest, for adaptive windows) and whether it takes their
    /// maximum. Adaptive average pooling is a product with a fixed matrix
    /// and spreads nothing.
    pub fn pool_taps(&self) -> Option<(usize, bool)> {
        let (pooling, _) = self.layer.pooling()?;
        match pooling {
            Pooling::Window { max, kernel, .. } => Some((kernel[0] * kernel[1], max)),
            Pooling::Adaptive { max: true, output } => {
                let [_, h, w] = super::ops::image_dims(&self.input);
                Some((
                    adaptive_taps(h, output[0]) * adaptive_taps(w, output[1]),
                    true,
                ))
            }
            Pooling::Adaptive { max: false, .. } => None,
        }
    }

    /// A layer of a graph: shapes and parameter count from its inputs.
    pub fn node(
        name: &str,
        layer: Layer,
        inputs: &[&[usize]],
        from: Vec<usize>,
    ) -> Result<Self, String> {
        for x in inputs {
            within_limit(x, "input")?;
        }
        let output = layer.output_shape(inputs)?;
        within_limit(&output, "output")?;
        let params = layer.num_params();
        if params > MAX_NODE_SIZE {
            return Err(format!(
                "{params} parameters in one layer are beyond nngeo's limit of {MAX_NODE_SIZE} (2³¹)"
            ));
        }
        Ok(LayerSpec {
            name: name.to_string(),
            params,
            input: inputs[0].to_vec(),
            output,
            layer,
            from,
        })
    }
}

impl ModelSpec {
    /// Every `state_dict` tensor the model has, in `state_dict` order.
    pub fn state_tensors(&self) -> Vec<(String, Vec<usize>, bool)> {
        self.stateful_layers()
            .flat_map(|l| l.layer.state_tensors(&l.name))
            .collect()
    }

    /// Structural checks a graph must pass before it is run: sources
    /// precede their readers, shapes agree, parameterised layers have unique
    /// names and `param_order` lists each of them once.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, l) in self.layers.iter().enumerate() {
            let src = self.sources(i);
            if let Some(bad) = src.iter().find(|&&s| s > i) {
                return Err(format!(
                    "layer {i} (`{}`) reads node {bad}, which comes after it",
                    l.name
                ));
            }
            let shapes: Vec<&[usize]> = src.iter().map(|&s| self.node_shape(s)).collect();
            let out = l
                .layer
                .output_shape(&shapes)
                .map_err(|e| format!("layer `{}`: {e}", l.name))?;
            if matches!(l.layer, Layer::Embedding { .. }) && src != [0] {
                return Err(format!(
                    "embedding `{}` must read the model input (token ids): its input is not differentiable",
                    l.name
                ));
            }
            if out != l.output || shapes[0] != l.input.as_slice() {
                return Err(format!("layer `{}`: recorded shapes disagree", l.name));
            }
            if l.params > 0 && !seen.insert(l.name.clone()) {
                return Err(format!(
                    "two parameterised layers are named `{}` (weight sharing is not supported)",
                    l.name
                ));
            }
        }
        if !self.param_order.is_empty() {
            let mut order = self.param_order.clone();
            order.sort_unstable();
            let expect: Vec<usize> = (0..self.layers.len())
                .filter(|&i| self.layers[i].params > 0)
                .collect();
            if order != expect {
                return Err("param_order must list every parameterised layer once".into());
            }
        }
        match self.layers.last() {
            Some(l) if l.output == self.output => Ok(()),
            _ => Err("the last layer's output is not the model's output".into()),
        }
    }
}
