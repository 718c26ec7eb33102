//! Models: their layers (PyTorch's parameter layout), graph sources and
//! initialisation.

use super::*;

/// A model as a directed acyclic graph of named layers.
///
/// `layers` is in execution (topological) order and the last layer's output
/// is the model's output. A chain leaves every `from` empty. Names are
/// PyTorch module paths (`layer2.0.downsample.0`), so a `state_dict` loads
/// unchanged; a parameter-free module applied twice (a block's `relu`) is
/// two layers of the same name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Per-example input shape; inputs are reshaped to it (row-major).
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub layers: Vec<LayerSpec>,
    /// Total number of parameters.
    pub params: u64,
    pub init: Init,
    /// safetensors file with PyTorch `state_dict` names to load.
    pub weights: Option<String>,
    /// Indices into `layers` of the parameterised layers in parameter
    /// order (PyTorch's `named_modules()` order, which NNGeometry's flat
    /// vectors follow), when that differs from execution order. Empty:
    /// execution order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub param_order: Vec<usize>,
}

impl ModelSpec {
    pub fn outputs(&self) -> usize {
        self.output.iter().product()
    }
    /// The parameterised layer of this name (parameter-free names may
    /// repeat; the first is returned).
    pub fn layer(&self, name: &str) -> Option<&LayerSpec> {
        self.layers.iter().find(|l| l.name == name)
    }
    /// Indices of the layers that own parameters, in parameter order.
    pub fn param_indices(&self) -> Vec<usize> {
        if self.param_order.is_empty() {
            (0..self.layers.len())
                .filter(|&i| self.layers[i].params > 0)
                .collect()
        } else {
            self.param_order.clone()
        }
    }
    /// Layers that own parameters, in parameter order.
    pub fn param_layers(&self) -> impl Iterator<Item = &LayerSpec> {
        self.param_indices().into_iter().map(|i| &self.layers[i])
    }
    /// Layers that carry `state_dict` tensors (parameters or buffers), in
    /// `state_dict` order: the parameterised ones, then those with buffers
    /// only (a BatchNorm without affine parameters).
    pub fn stateful_layers(&self) -> impl Iterator<Item = &LayerSpec> + '_ {
        let buffers_only = self.layers.iter().filter(|l| {
            l.params == 0
                && matches!(
                    l.layer,
                    Layer::BatchNorm1d { .. } | Layer::BatchNorm2d { .. }
                )
        });
        self.param_layers().chain(buffers_only)
    }
    /// The graph nodes layer `i` reads: `0` is the model input, `k` the
    /// output of `layers[k − 1]`.
    pub fn sources(&self, i: usize) -> Vec<usize> {
        let f = &self.layers[i].from;
        if f.is_empty() {
            vec![i]
        } else {
            f.clone()
        }
    }
    /// Whether any layer reads something other than its predecessor.
    pub fn is_graph(&self) -> bool {
        self.layers
            .iter()
            .enumerate()
            .any(|(i, l)| !l.from.is_empty() && l.from != [i])
    }
    /// The shape of graph node `node` (see [`Self::sources`]).
    pub fn node_shape(&self, node: usize) -> &[usize] {
        if node == 0 {
            &self.input
        } else {
            &self.layers[node - 1].output
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// The PyTorch module path (`layers.{i}` in an `nn.Sequential`).
    pub name: String,
    pub layer: Layer,
    /// Shape of the (first) input, per example.
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub params: u64,
    /// Graph models: the nodes this layer reads (`0` the model input, `k`
    /// the output of layer `k − 1`); empty reads the previous layer's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Layer {
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
    },
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        bias: bool,
        #[serde(default = "ones2", skip_serializing_if = "is_ones2")]
        dilation: [usize; 2],
        /// Weight `[out, in/groups, kh, kw]`.
        #[serde(default = "one", skip_serializing_if = "is_one")]
        groups: usize,
    },
    /// PyTorch's `ConvTranspose2d`: weight `[in, out/groups, kh, kw]`,
    /// output `(H−1)·stride − 2·padding + dilation·(k−1) + output_padding + 1`.
    ConvTranspose2d {
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        #[serde(default, skip_serializing_if = "is_zero2")]
        output_padding: [usize; 2],
        #[serde(default = "ones2", skip_serializing_if = "is_ones2")]
        dilation: [usize; 2],
        #[serde(default = "one", skip_serializing_if = "is_one")]
        groups: usize,
        bias: bool,
    },
    /// PyTorch's `Embedding`: weight `[num_embeddings, dim]`; reads the
    /// model input, whose values are integer token ids.
    Embedding {
        num_embeddings: usize,
        dim: usize,
    },
    /// Weight `[out, in/groups, k]`.
    Conv1d {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        dilation: usize,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        groups: usize,
    },
    Relu,
    Tanh,
    Sigmoid,
    Gelu,
    /// PyTorch's `LeakyReLU`: `x` for x > 0, else `slope·x`.
    LeakyRelu {
        slope: f64,
    },
    /// PyTorch's `ELU`: `x` for x > 0, else `alpha·(eˣ − 1)`.
    Elu {
        alpha: f64,
    },
    /// PyTorch's `SiLU` (swish): `x·σ(x)`.
    Silu,
    /// PyTorch's `Hardtanh`: `x` clamped to `[min, max]` (`ReLU6` is
    /// `min = 0, max = 6`).
    Hardtanh {
        min: f64,
        max: f64,
    },
    /// PyTorch's `Hardsigmoid`: `relu6(x + 3) / 6`.
    Hardsigmoid,
    /// PyTorch's `Hardswish`: `x · relu6(x + 3) / 6`.
    Hardswish,
    Flatten,
    /// Max pooling; padded positions never win (PyTorch pads with −∞).
    /// With `ceil_mode` a last window may hang over the input's end.
    MaxPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        #[serde(default, skip_serializing_if = "is_zero2")]
        padding: [usize; 2],
        #[serde(default = "ones2", skip_serializing_if = "is_ones2")]
        dilation: [usize; 2],
        #[serde(default, skip_serializing_if = "is_false")]
        ceil_mode: bool,
    },
    /// Average pooling. PyTorch's divisor: with `count_include_pad` (its
    /// default) the window clipped to the padded image, else the number
    /// of the window's positions inside the image.
    AvgPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        #[serde(default, skip_serializing_if = "is_zero2")]
        padding: [usize; 2],
        #[serde(default, skip_serializing_if = "is_false")]
        ceil_mode: bool,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        count_include_pad: bool,
    },
    /// PyTorch's `MaxPool1d` over `[C, L]`: [`Layer::MaxPool2d`] over a
    /// one-pixel-high image.
    MaxPool1d {
        kernel: usize,
        stride: usize,
        #[serde(default, skip_serializing_if = "is_zero")]
        padding: usize,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        dilation: usize,
        #[serde(default, skip_serializing_if = "is_false")]
        ceil_mode: bool,
    },
    /// PyTorch's `AvgPool1d` over `[C, L]`, with [`Layer::AvgPool2d`]'s
    /// divisors.
    AvgPool1d {
        kernel: usize,
        stride: usize,
        #[serde(default, skip_serializing_if = "is_zero")]
        padding: usize,
        #[serde(default, skip_serializing_if = "is_false")]
        ceil_mode: bool,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        count_include_pad: bool,
    },
    /// Evaluation mode (running statistics) for curvature. A norm layer
    /// without `affine` has no scale and shift (PyTorch's `affine=False`,
    /// `elementwise_affine=False`): no parameters, only the normalisation
    /// (and a BatchNorm's running statistics).
    BatchNorm1d {
        features: usize,
        eps: f64,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        affine: bool,
    },
    BatchNorm2d {
        channels: usize,
        eps: f64,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        affine: bool,
    },
    LayerNorm {
        shape: Vec<usize>,
        eps: f64,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        affine: bool,
    },
    /// Per-channel affine over `groups` normalised channel groups
    /// (`groups = channels`: PyTorch's InstanceNorm without running
    /// statistics).
    GroupNorm {
        groups: usize,
        channels: usize,
        eps: f64,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        affine: bool,
    },
    /// Average over windows `[floor(i·H/oh), ceil((i+1)·H/oh))`, as
    /// PyTorch's `AdaptiveAvgPool2d` (global average pooling at 1×1).
    AdaptiveAvgPool2d {
        output: [usize; 2],
    },
    /// PyTorch's `AdaptiveAvgPool1d` over `[C, L]`.
    AdaptiveAvgPool1d {
        output: usize,
    },
    /// The maximum over [`Layer::AdaptiveAvgPool2d`]'s windows, the first
    /// one in row-major order where several are equal (PyTorch's
    /// `AdaptiveMaxPool2d`).
    AdaptiveMaxPool2d {
        output: [usize; 2],
    },
    /// PyTorch's `AdaptiveMaxPool1d` over `[C, L]`.
    AdaptiveMaxPool1d {
        output: usize,
    },
    /// Zeroes each value with probability `p` and scales the rest by
    /// 1/(1−p) in training (seeded per step); the identity in evaluation,
    /// so every measurement sees the deterministic network.
    Dropout {
        p: f64,
    },
    /// Elementwise sum of its inputs (a skip connection).
    Add,
    /// Concatenation of its inputs along the channel (first per-example)
    /// dimension.
    Concat,
}

fn one() -> usize {
    1
}
fn is_one(g: &usize) -> bool {
    *g == 1
}
fn ones2() -> [usize; 2] {
    [1, 1]
}
fn is_ones2(d: &[usize; 2]) -> bool {
    *d == [1, 1]
}
fn is_zero(d: &usize) -> bool {
    *d == 0
}
fn is_zero2(d: &[usize; 2]) -> bool {
    *d == [0, 0]
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_true(b: &bool) -> bool {
    *b
}
fn yes() -> bool {
    true
}

impl Layer {
    pub fn type_name(&self) -> &'static str {
        match self {
            Layer::Linear { .. } => "Linear",
            Layer::Conv2d { .. } => "Conv2d",
            Layer::Conv1d { .. } => "Conv1d",
            Layer::ConvTranspose2d { .. } => "ConvTranspose2d",
            Layer::Embedding { .. } => "Embedding",
            Layer::Relu => "ReLU",
            Layer::Tanh => "Tanh",
            Layer::Sigmoid => "Sigmoid",
            Layer::Gelu => "GELU",
            Layer::LeakyRelu { .. } => "LeakyReLU",
            Layer::Elu { .. } => "ELU",
            Layer::Silu => "SiLU",
            Layer::Hardtanh { min, max } if *min == 0.0 && *max == 6.0 => "ReLU6",
            Layer::Hardtanh { .. } => "Hardtanh",
            Layer::Hardsigmoid => "Hardsigmoid",
            Layer::Hardswish => "Hardswish",
            Layer::Flatten => "Flatten",
            Layer::MaxPool2d { .. } => "MaxPool2d",
            Layer::AvgPool2d { .. } => "AvgPool2d",
            Layer::BatchNorm1d { .. } => "BatchNorm1d",
            Layer::BatchNorm2d { .. } => "BatchNorm2d",
            Layer::LayerNorm { .. } => "LayerNorm",
            Layer::GroupNorm { .. } => "GroupNorm",
            Layer::AdaptiveAvgPool2d { .. } => "AdaptiveAvgPool2d",
            Layer::MaxPool1d { .. } => "MaxPool1d",
            Layer::AvgPool1d { .. } => "AvgPool1d",
            Layer::AdaptiveAvgPool1d { .. } => "AdaptiveAvgPool1d",
            Layer::AdaptiveMaxPool2d { .. } => "AdaptiveMaxPool2d",
            Layer::AdaptiveMaxPool1d { .. } => "AdaptiveMaxPool1d",
            Layer::Dropout { .. } => "Dropout",
            Layer::Add => "Add",
            Layer::Concat => "Concat",
        }
    }
    /// Which group of a per-layer-type `mix(...)` this layer falls in.
    pub fn family(&self) -> Option<LayerFamily> {
        match self {
            Layer::Linear { .. } => Some(LayerFamily::Linear),
            Layer::Conv2d { .. } | Layer::Conv1d { .. } | Layer::ConvTranspose2d { .. } => {
                Some(LayerFamily::Conv)
            }
            Layer::Embedding { .. } => Some(LayerFamily::Embedding),
            Layer::BatchNorm1d { .. }
            | Layer::BatchNorm2d { .. }
            | Layer::LayerNorm { .. }
            | Layer::GroupNorm { .. } => Some(LayerFamily::Norm),
            _ => None,
        }
    }

    /// A convolution (not transposed) in two dimensions: a Conv1d is a
    /// Conv2d over a one-pixel-high image (`[C, L]` as `[C, 1, L]`, see
    /// [`image_dims`]), so that one implementation serves both.
    pub fn conv(&self) -> Option<Conv> {
        Some(match *self {
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                dilation,
                bias,
                groups,
            } => Conv {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                dilation,
                bias,
                groups,
            },
            Layer::Conv1d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                dilation,
                bias,
                groups,
            } => Conv {
                in_channels,
                out_channels,
                kernel: [1, kernel],
                stride: [1, stride],
                padding: [0, padding],
                dilation: [1, dilation],
                bias,
                groups,
            },
            _ => return None,
        })
    }

    /// A pooling layer as a two-dimensional pool and the rank of the
    /// per-example input it takes (2: `[C, L]`, pooled as `[C, 1, L]`;
    /// 3: `[C, H, W]`), so that one implementation serves both.
    pub fn pooling(&self) -> Option<(Pooling, usize)> {
        let window = |max, kernel, stride, padding, dilation, ceil_mode, count_include_pad| {
            Pooling::Window {
                max,
                kernel,
                stride,
                padding,
                dilation,
                ceil_mode,
                count_include_pad,
            }
        };
        Some(match *self {
            Layer::MaxPool2d {
                kernel,
                stride,
                padding,
                dilation,
                ceil_mode,
            } => (
                window(true, kernel, stride, padding, dilation, ceil_mode, true),
                3,
            ),
            Layer::AvgPool2d {
                kernel,
                stride,
                padding,
                ceil_mode,
                count_include_pad,
            } => (
                window(
                    false,
                    kernel,
                    stride,
                    padding,
                    [1, 1],
                    ceil_mode,
                    count_include_pad,
                ),
                3,
            ),
            Layer::MaxPool1d {
                kernel,
                stride,
                padding,
                dilation,
                ceil_mode,
            } => (
                window(
                    true,
                    [1, kernel],
                    [1, stride],
                    [0, padding],
                    [1, dilation],
                    ceil_mode,
                    true,
                ),
                2,
            ),
            Layer::AvgPool1d {
                kernel,
                stride,
                padding,
                ceil_mode,
                count_include_pad,
            } => (
                window(
                    false,
                    [1, kernel],
                    [1, stride],
                    [0, padding],
                    [1, 1],
                    ceil_mode,
                    count_include_pad,
                ),
                2,
            ),
            Layer::AdaptiveAvgPool2d { output } => (Pooling::Adaptive { max: false, output }, 3),
            Layer::AdaptiveMaxPool2d { output } => (Pooling::Adaptive { max: true, output }, 3),
            Layer::AdaptiveAvgPool1d { output } => (
                Pooling::Adaptive {
                    max: false,
                    output: [1, output],
                },
                2,
            ),
            Layer::AdaptiveMaxPool1d { output } => (
                Pooling::Adaptive {
                    max: true,
                    output: [1, output],
                },
                2,
            ),
            _ => return None,
        })
    }

    /// The shape of a norm layer's scale (and shift), where it has them
    /// (`affine`).
    pub fn norm_scale_shape(&self) -> Option<Vec<usize>> {
        match self {
            Layer::BatchNorm1d {
                features: c,
                affine: true,
                ..
            }
            | Layer::BatchNorm2d {
                channels: c,
                affine: true,
                ..
            }
            | Layer::GroupNorm {
                channels: c,
                affine: true,
                ..
            } => Some(vec![*c]),
            Layer::LayerNorm {
                shape,
                affine: true,
                ..
            } => Some(shape.clone()),
            _ => None,
        }
    }

    /// Why KFAC, EKFAC and QuasiDiag (Kronecker-factored structures) cannot
    /// represent this layer's block, if they cannot. As NNGeometry: Linear,
    /// Conv1d/2d without groups and ConvTranspose2d have factors.
    pub fn kron_refusal(&self) -> Option<&'static str> {
        match self {
            Layer::Conv2d { groups, .. } | Layer::ConvTranspose2d { groups, .. } if *groups > 1 => {
                Some("has no Kronecker factors for grouped convolutions (NNGeometry has none either)")
            }
            Layer::Embedding { .. } => Some("has no Kronecker factors for embeddings"),
            l if l.family() == Some(LayerFamily::Norm) => {
                Some("has no Kronecker factors for normalisation layers")
            }
            _ => None,
        }
    }
}

/// A convolution in two dimensions ([`Layer::conv`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub bias: bool,
    pub groups: usize,
}

impl Conv {
    /// Taps of one output channel's filter over one input channel.
    pub fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }
}

/// A pooling layer in two dimensions ([`Layer::pooling`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pooling {
    /// Fixed windows: `kernel` taps `dilation` apart every `stride`, over
    /// an image padded by `padding` (a maximum never takes a padded value;
    /// an average divides as [`Layer::AvgPool2d`] says).
    Window {
        max: bool,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        ceil_mode: bool,
        count_include_pad: bool,
    },
    /// Windows `[floor(i·H/oh), ceil((i+1)·H/oh))` for an `output` grid.
    Adaptive { max: bool, output: [usize; 2] },
}

impl Pooling {
    pub fn is_max(&self) -> bool {
        match self {
            Pooling::Window { max, .. } | Pooling::Adaptive { max, .. } => *max,
        }
    }
}

/// `[C, H, W]` of a pooling layer's per-example shape, `[C, L]` seen as
/// `[C, 1, L]`.
pub fn image_dims(shape: &[usize]) -> [usize; 3] {
    match shape {
        [c, l] => [*c, 1, *l],
        [c, h, w, ..] => [*c, *h, *w],
        [c] => [*c, 1, 1],
        [] => [1, 1, 1],
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case")]
pub enum Init {
    /// PyTorch's default initialisation of each layer type.
    Pytorch {
        seed: u64,
    },
    Kaiming {
        seed: u64,
    },
    Xavier {
        seed: u64,
    },
    Normal {
        std: f64,
        seed: u64,
    },
}
