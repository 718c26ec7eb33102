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

/// One PyTorch module of a sidecar as an nngeo layer.
pub fn torch_layer(case: &str, m: &Value) -> Layer {
    let u = |k: &str| {
        m[k].as_u64()
            .unwrap_or_else(|| panic!("{case}: `{k}` of {m}")) as usize
    };
    let pair = |k: &str| -> [usize; 2] {
        match &m[k] {
            Value::Array(a) => [
                a[0].as_u64().unwrap() as usize,
                a[1].as_u64().unwrap() as usize,
            ],
            v => {
                let x = v.as_u64().unwrap() as usize;
                [x, x]
            }
        }
    };
    let or_zero = |k: &str| if m[k].is_null() { [0, 0] } else { pair(k) };
    let or_one = |k: &str| if m[k].is_null() { [1, 1] } else { pair(k) };
    let groups = || m["groups"].as_u64().unwrap_or(1) as usize;
    let eps = m["eps"].as_f64().unwrap_or(1e-5);
    match m["type"].as_str().unwrap() {
        "Linear" => Layer::Linear {
            in_features: u("in_features"),
            out_features: u("out_features"),
            bias: m["bias"].as_bool().unwrap_or(true),
        },
        "Conv2d" => Layer::Conv2d {
            in_channels: u("in_channels"),
            out_channels: u("out_channels"),
            kernel: pair("kernel_size"),
            stride: pair("stride"),
            padding: pair("padding"),
            dilation: or_one("dilation"),
            bias: m["bias"].as_bool().unwrap_or(true),
            groups: groups(),
        },
        "ConvTranspose2d" => Layer::ConvTranspose2d {
            in_channels: u("in_channels"),
            out_channels: u("out_channels"),
            kernel: pair("kernel_size"),
            stride: pair("stride"),
            padding: or_zero("padding"),
            output_padding: or_zero("output_padding"),
            dilation: or_one("dilation"),
            groups: groups(),
            bias: m["bias"].as_bool().unwrap_or(true),
        },
        "Embedding" => Layer::Embedding {
            num_embeddings: u("num_embeddings"),
            dim: u("embedding_dim"),
        },
        "ReLU" => Layer::Relu,
        "Tanh" => Layer::Tanh,
        "Sigmoid" => Layer::Sigmoid,
        "GELU" => Layer::Gelu,
        "Flatten" => Layer::Flatten,
        "MaxPool2d" => Layer::MaxPool2d {
            kernel: pair("kernel_size"),
            stride: pair("stride"),
            padding: or_zero("padding"),
        },
        "AvgPool2d" => Layer::AvgPool2d {
            kernel: pair("kernel_size"),
            stride: pair("stride"),
            padding: or_zero("padding"),
        },
        "AdaptiveAvgPool2d" => Layer::AdaptiveAvgPool2d {
            output: pair("output_size"),
        },
        "BatchNorm1d" => Layer::BatchNorm1d {
            features: u("num_features"),
            eps,
        },
        "BatchNorm2d" => Layer::BatchNorm2d {
            channels: u("num_features"),
            eps,
        },
        "GroupNorm" => Layer::GroupNorm {
            groups: u("num_groups"),
            channels: u("num_channels"),
            eps,
        },
        "LayerNorm" => Layer::LayerNorm {
            shape: m["normalized_shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect(),
            eps,
        },
        other => panic!("{case}: module type {other} not handled by this test"),
    }
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
                (name.to_string(), torch_layer(case, modules[name]))
            }
            "add" => (format!("add.{}", step["step"]), Layer::Add),
            "cat" | "concat" => (format!("cat.{}", step["step"]), Layer::Concat),
            "flatten" => (format!("flatten.{}", step["step"]), Layer::Flatten),
            other => panic!("{}: graph op {other} not handled by this test", case),
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
