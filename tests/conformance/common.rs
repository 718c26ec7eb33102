//! Helpers of the conformance modules: `.ngx` models compiled by nngeo,
//! PyTorch models described as in the NNGeometry oracle's sidecars
//! (`modules`, each with its constructor arguments, and `forward.steps`,
//! each a module call, `add`, `cat` or `flatten` reading named tensors)
//! rebuilt as nngeo graphs, safetensors files read as f64, and the
//! relative error every comparison uses.
//!
//! Each including test crate declares it once as `mod common` and uses
//! part of it.
#![allow(dead_code)]

use nngeo::plan::{Init, Layer, LayerSpec, ModelSpec, Op};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// A model written in `.ngx` (`mlp(...)`, `sequential(...)`), compiled by
/// nngeo itself in float64.
pub fn compile_model(model: &str) -> ModelSpec {
    let src = format!("experiment conformance {{ dtype = f64 }}\nmodel net = {model}\n");
    let plan =
        nngeo::compile_source(&src, &Default::default()).unwrap_or_else(|e| panic!("{src}\n{e:?}"));
    plan.steps
        .iter()
        .find_map(|s| match &s.op {
            Op::Model { spec, .. } => Some(spec.clone()),
            _ => None,
        })
        .unwrap()
}

/// `max|a − b| / max|b|` (absolute when `b` is zero).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length {} vs {}", a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let err = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(err.is_finite(), "non-finite values");
    if scale > 0.0 {
        err / scale
    } else {
        err
    }
}

/// Every float64 and int64 tensor of a safetensors file, as f64 with its
/// shape (other dtypes are skipped).
pub fn read_tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = HashMap::new();
    for (k, v) in st.tensors() {
        let data: Vec<f64> = match v.dtype() {
            safetensors::Dtype::F64 => v
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I64 => v
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            _ => continue,
        };
        tensors.insert(k.to_string(), (v.shape().to_vec(), data));
    }
    tensors
}

/// One PyTorch module of a sidecar as an nngeo layer; `None` for
/// `nn.Identity`, which adds no node. A hyperparameter nngeo does not
/// model (a padding mode other than zeros, a divisor override, a norm
/// without affine parameters) fails the test by name rather than
/// computing something else.
/// An activation by its functional name (`relu`, `leaky_relu`, `relu6`,
/// ...), its arguments read through `number(key, default)`; `None` for
/// any other name.
fn activation(op: &str, number: &dyn Fn(&str, f64) -> f64) -> Option<Layer> {
    Some(match op {
        "relu" => Layer::Relu,
        "tanh" => Layer::Tanh,
        "sigmoid" => Layer::Sigmoid,
        "gelu" => Layer::Gelu,
        "silu" => Layer::Silu,
        "relu6" => Layer::Hardtanh { min: 0.0, max: 6.0 },
        "hardtanh" => Layer::Hardtanh {
            min: number("min_val", -1.0),
            max: number("max_val", 1.0),
        },
        "hardsigmoid" => Layer::Hardsigmoid,
        "hardswish" => Layer::Hardswish,
        "elu" => Layer::Elu {
            alpha: number("alpha", 1.0),
        },
        "leaky_relu" => Layer::LeakyRelu {
            slope: number("negative_slope", 0.01),
        },
        _ => return None,
    })
}

pub fn torch_layer(case: &str, m: &Value) -> Option<Layer> {
    let name = m["name"].as_str().unwrap_or("?");
    let refuse =
        |what: String| -> ! { panic!("{case}: module `{name}`: {what} not handled by this test") };
    let u = |k: &str| {
        m[k].as_u64()
            .unwrap_or_else(|| panic!("{case}: `{k}` of {m}")) as usize
    };
    let pair = |k: &str| -> [usize; 2] {
        match &m[k] {
            Value::Array(a) if a.len() == 1 => {
                let x = a[0].as_u64().unwrap() as usize;
                [x, x]
            }
            Value::Array(a) => [
                a[0].as_u64().unwrap() as usize,
                a[1].as_u64().unwrap() as usize,
            ],
            v => {
                let x = v.as_u64().unwrap_or_else(|| panic!("{case}: `{k}` of {m}")) as usize;
                [x, x]
            }
        }
    };
    // 1-d hyperparameters: an integer or a one-element list.
    let single = |k: &str, default: usize| -> usize {
        match &m[k] {
            Value::Null => default,
            Value::Array(a) => a[0].as_u64().unwrap() as usize,
            v => v.as_u64().unwrap() as usize,
        }
    };
    let or_zero = |k: &str| if m[k].is_null() { [0, 0] } else { pair(k) };
    let or_one = |k: &str| if m[k].is_null() { [1, 1] } else { pair(k) };
    // A pool's stride defaults to its kernel (`None` in PyTorch).
    let pool_stride = |kernel: [usize; 2]| match &m["stride"] {
        Value::Null => kernel,
        Value::Array(a) if a.is_empty() => kernel,
        _ => pair("stride"),
    };
    let flag = |k: &str, default: bool| m[k].as_bool().unwrap_or(default);
    let number = |k: &str, default: f64| m[k].as_f64().unwrap_or(default);
    let groups = || m["groups"].as_u64().unwrap_or(1) as usize;
    let eps = m["eps"].as_f64().unwrap_or(1e-5);
    if let Some(mode) = m["padding_mode"].as_str() {
        if mode != "zeros" {
            refuse(format!("padding_mode = {mode}"));
        }
    }
    // PyTorch's string paddings of a convolution: "valid" is none, "same"
    // (stride 1) pads dilation·(k−1)/2 on each side when that is whole.
    let conv_padding = |kernel: [usize; 2], dilation: [usize; 2]| -> [usize; 2] {
        match m["padding"].as_str() {
            Some("valid") => [0, 0],
            Some("same") => [0, 1].map(|a| {
                let total = dilation[a] * (kernel[a] - 1);
                if !total.is_multiple_of(2) {
                    refuse("padding = \"same\" with an asymmetric padding".into());
                }
                total / 2
            }),
            Some(other) => refuse(format!("padding = {other:?}")),
            None => or_zero("padding"),
        }
    };
    let affine = |k: &str| flag(k, true);
    let t = m["type"].as_str().unwrap();
    // An activation module is its functional form (`LeakyReLU` is
    // `leaky_relu`, `ReLU6` is `relu6`) with the same arguments; GELU's
    // approximation is checked below.
    if t != "GELU" {
        let functional = t.to_lowercase().replace("leakyrelu", "leaky_relu");
        if let Some(layer) = activation(&functional, &number) {
            return Some(layer);
        }
    }
    Some(match t {
        "Linear" => Layer::Linear {
            in_features: u("in_features"),
            out_features: u("out_features"),
            bias: flag("bias", true),
        },
        "Conv2d" => {
            let (kernel, dilation) = (pair("kernel_size"), or_one("dilation"));
            Layer::Conv2d {
                in_channels: u("in_channels"),
                out_channels: u("out_channels"),
                kernel,
                stride: or_one("stride"),
                padding: conv_padding(kernel, dilation),
                dilation,
                bias: flag("bias", true),
                groups: groups(),
            }
        }
        "Conv1d" => {
            let (kernel, dilation) = (single("kernel_size", 1), single("dilation", 1));
            Layer::Conv1d {
                in_channels: u("in_channels"),
                out_channels: u("out_channels"),
                kernel,
                stride: single("stride", 1),
                padding: match m["padding"] {
                    Value::String(_) => conv_padding([kernel, kernel], [dilation, dilation])[0],
                    _ => single("padding", 0),
                },
                bias: flag("bias", true),
                dilation,
                groups: groups(),
            }
        }
        "ConvTranspose2d" => Layer::ConvTranspose2d {
            in_channels: u("in_channels"),
            out_channels: u("out_channels"),
            kernel: pair("kernel_size"),
            stride: or_one("stride"),
            padding: or_zero("padding"),
            output_padding: or_zero("output_padding"),
            dilation: or_one("dilation"),
            groups: groups(),
            bias: flag("bias", true),
        },
        "Embedding" => Layer::Embedding {
            num_embeddings: u("num_embeddings"),
            dim: u("embedding_dim"),
        },
        "GELU" => {
            if m["approximate"].as_str().is_some_and(|a| a != "none") {
                refuse("GELU's tanh approximation".into());
            }
            Layer::Gelu
        }
        "Identity" => return None,
        "Dropout" => Layer::Dropout {
            p: number("p", 0.5),
        },
        "Flatten" => {
            if m["start_dim"].as_i64().unwrap_or(1) != 1
                || m["end_dim"].as_i64().unwrap_or(-1) != -1
            {
                refuse("a Flatten other than flatten(x, 1)".into());
            }
            Layer::Flatten
        }
        "MaxPool2d" => {
            if flag("return_indices", false) {
                refuse("return_indices".into());
            }
            let kernel = pair("kernel_size");
            Layer::MaxPool2d {
                kernel,
                stride: pool_stride(kernel),
                padding: or_zero("padding"),
                dilation: or_one("dilation"),
                ceil_mode: flag("ceil_mode", false),
            }
        }
        "AvgPool2d" => {
            if !m["divisor_override"].is_null() {
                refuse("divisor_override".into());
            }
            let kernel = pair("kernel_size");
            Layer::AvgPool2d {
                kernel,
                stride: pool_stride(kernel),
                padding: or_zero("padding"),
                ceil_mode: flag("ceil_mode", false),
                count_include_pad: flag("count_include_pad", true),
            }
        }
        "AdaptiveAvgPool2d" => Layer::AdaptiveAvgPool2d {
            output: pair("output_size"),
        },
        "AdaptiveMaxPool2d" | "AdaptiveMaxPool1d" if flag("return_indices", false) => {
            refuse("return_indices".into())
        }
        "AdaptiveMaxPool2d" => Layer::AdaptiveMaxPool2d {
            output: pair("output_size"),
        },
        "AdaptiveAvgPool1d" => Layer::AdaptiveAvgPool1d {
            output: single("output_size", 1),
        },
        "AdaptiveMaxPool1d" => Layer::AdaptiveMaxPool1d {
            output: single("output_size", 1),
        },
        "MaxPool1d" | "AvgPool1d" => {
            if flag("return_indices", false) {
                refuse("return_indices".into());
            }
            let kernel = single("kernel_size", 1);
            let stride = match &m["stride"] {
                Value::Array(a) if a.is_empty() => kernel,
                _ => single("stride", kernel),
            };
            let (padding, ceil_mode) = (single("padding", 0), flag("ceil_mode", false));
            if t == "MaxPool1d" {
                Layer::MaxPool1d {
                    kernel,
                    stride,
                    padding,
                    dilation: single("dilation", 1),
                    ceil_mode,
                }
            } else {
                Layer::AvgPool1d {
                    kernel,
                    stride,
                    padding,
                    ceil_mode,
                    count_include_pad: flag("count_include_pad", true),
                }
            }
        }
        "BatchNorm1d" | "BatchNorm2d" => {
            if !flag("track_running_stats", true) {
                refuse("track_running_stats = false".into());
            }
            if t == "BatchNorm1d" {
                Layer::BatchNorm1d {
                    features: u("num_features"),
                    eps,
                    affine: affine("affine"),
                }
            } else {
                Layer::BatchNorm2d {
                    channels: u("num_features"),
                    eps,
                    affine: affine("affine"),
                }
            }
        }
        "GroupNorm" => Layer::GroupNorm {
            groups: u("num_groups"),
            channels: u("num_channels"),
            eps,
            affine: affine("affine"),
        },
        // Statistics of each example's channel, in evaluation too.
        "InstanceNorm1d" | "InstanceNorm2d" => {
            if flag("track_running_stats", false) {
                refuse("track_running_stats = true".into());
            }
            let c = u("num_features");
            Layer::GroupNorm {
                groups: c,
                channels: c,
                eps,
                affine: flag("affine", false),
            }
        }
        "LayerNorm" => {
            if affine("elementwise_affine") && !flag("bias", true) {
                refuse("bias = false".into());
            }
            Layer::LayerNorm {
                shape: match &m["normalized_shape"] {
                    Value::Array(a) => a.iter().map(|d| d.as_u64().unwrap() as usize).collect(),
                    v => vec![v.as_u64().unwrap() as usize],
                },
                eps,
                affine: affine("elementwise_affine"),
            }
        }
        other => refuse(format!("module type {other}")),
    })
}

/// A chain sidecar (`model.layers`, an `nn.Sequential`) as a graph of its
/// layers in order, named as the sidecar names them (`layers.0`, ...),
/// parameters in layer order.
pub fn chain_spec(case: &str, model: &Value, input: &[usize]) -> ModelSpec {
    let mut spec = empty_graph(input, 0);
    let mut last = 0;
    for (i, l) in model["layers"].as_array().unwrap().iter().enumerate() {
        let name = l["name"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("layers.{i}"));
        let Some(layer) = torch_layer(case, l) else {
            continue;
        };
        push_node(&mut spec, &name, layer, vec![last])
            .unwrap_or_else(|e| panic!("{case}: layer {i} ({name}): {e}"));
        last = spec.layers.len();
        if spec.layers[last - 1].params > 0 {
            spec.param_order.push(last - 1);
        }
    }
    spec.validate().unwrap_or_else(|e| panic!("{case}: {e}"));
    spec
}

/// A graph sidecar rebuilt in general: every step of `forward.steps`
/// becomes a layer reading the nodes its `inputs` name, and the
/// parameterised modules keep `modules`' (`named_modules()`) order as the
/// parameter order.
pub fn graph_spec(case: &str, model: &Value, input: &[usize]) -> ModelSpec {
    let fwd = &model["forward"];
    let modules: HashMap<&str, &Value> = model["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m))
        .collect();
    let mut spec = empty_graph(input, 0);
    let mut node: HashMap<String, usize> = HashMap::new();
    node.insert(fwd["input"].as_str().unwrap_or("x").to_string(), 0);
    for step in fwd["steps"].as_array().unwrap() {
        let from: Vec<usize> = step["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| node[t.as_str().unwrap()])
            .collect();
        let (name, layer) = match step["op"].as_str().unwrap() {
            "module" => {
                let name = step["module"].as_str().unwrap();
                let m = modules.get(name).unwrap_or_else(|| {
                    panic!(
                        "{case}: step {} applies unknown module `{name}`",
                        step["step"]
                    )
                });
                match torch_layer(case, m) {
                    Some(layer) => (name.to_string(), layer),
                    // The identity: its output is its input's node.
                    None => {
                        node.insert(step["output"].as_str().unwrap().to_string(), from[0]);
                        continue;
                    }
                }
            }
            "add" => (format!("add.{}", step["step"]), Layer::Add),
            "cat" | "concat" => (format!("cat.{}", step["step"]), Layer::Concat),
            "flatten" => (format!("flatten.{}", step["step"]), Layer::Flatten),
            // Functional activations (`torch.relu(x)`, `F.leaky_relu(x, s)`).
            op => match activation(op, &|k, d| step[k].as_f64().unwrap_or(d)) {
                Some(layer) => (format!("{op}.{}", step["step"]), layer),
                None => panic!("{}: graph op {op} not handled by this test", case),
            },
        };
        push_node(&mut spec, &name, layer, from)
            .unwrap_or_else(|e| panic!("{}: step {}: {e}", case, step["step"]));
        if let Some(shape) = step["shape"].as_array() {
            let want: Vec<usize> = shape.iter().map(|d| d.as_u64().unwrap() as usize).collect();
            let got = &spec.layers.last().unwrap().output;
            assert_eq!(got, &want, "{}: shape of step {}", case, step["step"]);
        }
        node.insert(
            step["output"].as_str().unwrap().to_string(),
            spec.layers.len(),
        );
    }
    assert_eq!(node[fwd["output"].as_str().unwrap()], spec.layers.len());
    // Parameter order: `named_modules()` order, not execution order.
    for m in model["modules"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        if let Some(i) = spec
            .layers
            .iter()
            .position(|l| l.name == name && l.params > 0)
        {
            spec.param_order.push(i);
        }
    }
    spec.validate().unwrap_or_else(|e| panic!("{}: {e}", case));
    spec
}

/// A model without layers on inputs of shape `input`, initialised as
/// PyTorch does with `seed`.
fn empty_graph(input: &[usize], seed: u64) -> ModelSpec {
    ModelSpec {
        input: input.to_vec(),
        output: vec![],
        layers: vec![],
        params: 0,
        init: Init::Pytorch { seed },
        weights: None,
        param_order: vec![],
    }
}

/// Appends a layer reading graph nodes `from`; it becomes the model's
/// output.
fn push_node(
    spec: &mut ModelSpec,
    name: &str,
    layer: Layer,
    from: Vec<usize>,
) -> Result<(), String> {
    let shapes: Vec<Vec<usize>> = from.iter().map(|&f| spec.node_shape(f).to_vec()).collect();
    let refs: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
    let l = LayerSpec::node(name, layer, &refs, from)?;
    spec.output = l.output.clone();
    spec.params += l.params;
    spec.layers.push(l);
    Ok(())
}

/// A graph model from nodes `(name, layer, inputs)` in execution order,
/// each reading the earlier nodes its `inputs` name (`x`: the model's
/// input); the last node is the output. Parameters in execution order,
/// initialised as PyTorch does with `seed`.
pub fn graph(input: &[usize], seed: u64, nodes: &[(&str, Layer, &[&str])]) -> ModelSpec {
    let mut spec = empty_graph(input, seed);
    let mut node: HashMap<&str, usize> = HashMap::from([("x", 0)]);
    for (name, layer, inputs) in nodes {
        let from = inputs
            .iter()
            .map(|i| {
                *node
                    .get(i)
                    .unwrap_or_else(|| panic!("`{name}` reads unknown node `{i}`"))
            })
            .collect();
        push_node(&mut spec, name, layer.clone(), from)
            .unwrap_or_else(|e| panic!("layer `{name}`: {e}"));
        assert!(
            node.insert(name, spec.layers.len()).is_none(),
            "two nodes `{name}`"
        );
    }
    spec.validate().unwrap();
    spec
}

/// `Conv2d` with a square kernel and equal strides, padding and dilation
/// along both axes.
pub fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    bias: bool,
) -> Layer {
    Layer::Conv2d {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [stride, stride],
        padding: [padding, padding],
        dilation: [dilation, dilation],
        bias,
        groups: 1,
    }
}
