//! Reading an ONNX file: the protobuf decoded by `prost` into
//! [`super::proto`], then the graph the importer walks (nodes with their
//! attributes, initializers as f64 or i64 values, the input's shape).

use super::error::{At, OnnxError};
use super::proto::{self, dtype, AttributeProto, ModelProto, NodeProto, TensorProto};
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;

/// A decoded model: the graph and the default domain's opset.
pub struct OnnxFile {
    pub opset: i64,
    pub nodes: Vec<NodeProto>,
    /// Initializers by name, and their order in the file (PyTorch writes
    /// them in `state_dict` order).
    pub inits: BTreeMap<String, Tensor>,
    pub init_order: Vec<String>,
    pub input: Input,
    pub outputs: Vec<String>,
}

/// The graph's one data input.
pub struct Input {
    pub name: String,
    /// `None` where the dimension is symbolic (`"n"`).
    pub dims: Vec<Option<usize>>,
    pub elem_type: i32,
}

/// A constant tensor, its values as f64 (floats) or i64 (integers).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dims: Vec<usize>,
    pub data: Data,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// float32 (`f32`: true) or float64 values.
    Float {
        values: Vec<f64>,
        f32: bool,
    },
    Int(Vec<i64>),
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
    /// The values as integers, if they are integers.
    pub fn ints(&self) -> Option<&[i64]> {
        match &self.data {
            Data::Int(v) => Some(v),
            Data::Float { .. } => None,
        }
    }
    /// The values as f64 (integers converted).
    pub fn floats(&self) -> Vec<f64> {
        match &self.data {
            Data::Float { values, .. } => values.clone(),
            Data::Int(v) => v.iter().map(|&i| i as f64).collect(),
        }
    }
    pub fn is_float(&self) -> bool {
        matches!(self.data, Data::Float { .. })
    }
}

/// Reads and decodes `path`.
pub fn read_file(path: &Path) -> Result<OnnxFile, OnnxError> {
    let bytes = std::fs::read(path).map_err(|e| OnnxError::Read {
        reason: e.to_string(),
    })?;
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| OnnxError::Decode {
        reason: e.to_string(),
    })?;
    let Some(graph) = model.graph else {
        return Err(OnnxError::Decode {
            reason: "the file has no graph".into(),
        });
    };
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| OnnxError::Decode {
            reason: "the file imports no version of the standard (ai.onnx) operator set".into(),
        })?;
    let mut inits = BTreeMap::new();
    let mut init_order = Vec::new();
    for t in &graph.initializer {
        inits.insert(t.name.clone(), tensor(t)?);
        init_order.push(t.name.clone());
    }
    // Old IR versions also list the initializers as graph inputs.
    let data_inputs: Vec<&proto::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !inits.contains_key(&i.name))
        .collect();
    let [input] = data_inputs.as_slice() else {
        return Err(OnnxError::Graph {
            what: format!(
                "the graph has {} data inputs ({}); nngeo models read exactly one",
                data_inputs.len(),
                data_inputs
                    .iter()
                    .map(|i| format!("`{}`", i.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    };
    let tt = input
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| OnnxError::Graph {
            what: format!("input `{}` is not a tensor", input.name),
        })?;
    let dims = tt
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| d.dim_value.filter(|&v| v > 0).map(|v| v as usize))
                .collect()
        })
        .unwrap_or_default();
    Ok(OnnxFile {
        opset,
        nodes: graph.node,
        inits,
        init_order,
        input: Input {
            name: input.name.clone(),
            dims,
            elem_type: tt.elem_type,
        },
        outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
    })
}

/// A `TensorProto`'s values.
pub fn tensor(t: &TensorProto) -> Result<Tensor, OnnxError> {
    let bad = |what: String| OnnxError::Initializer {
        name: t.name.clone(),
        what,
    };
    if t.data_location == 1 {
        return Err(bad(
            "its data is stored in an external file; export the model below 2 GB so that the weights are inside the .onnx file".into(),
        ));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}"))))
        .collect::<Result<_, _>>()?;
    let numel = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= 1 << 40)
        .ok_or_else(|| bad(format!("dimensions {dims:?} are too large")))?;
    let raw = &t.raw_data;
    let data = match t.data_type {
        dtype::FLOAT => Data::Float {
            values: if raw.is_empty() {
                t.float_data.iter().map(|&v| v as f64).collect()
            } else {
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect()
            },
            f32: true,
        },
        dtype::DOUBLE => Data::Float {
            values: if raw.is_empty() {
                t.double_data.clone()
            } else {
                raw.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            },
            f32: false,
        },
        dtype::INT64 => Data::Int(if raw.is_empty() {
            t.int64_data.clone()
        } else {
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }),
        dtype::INT32 | dtype::BOOL => Data::Int(if raw.is_empty() {
            t.int32_data.iter().map(|&v| v as i64).collect()
        } else if t.data_type == dtype::BOOL {
            raw.iter().map(|&b| b as i64).collect()
        } else {
            raw.chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect()
        }),
        other => {
            return Err(bad(format!(
                "element type {other} is not supported (float32, float64 and integers are)"
            )))
        }
    };
    let len = match &data {
        Data::Float { values, .. } => values.len(),
        Data::Int(v) => v.len(),
    };
    if len != numel {
        return Err(bad(format!(
            "holds {len} values for dimensions {dims:?} ({numel})"
        )));
    }
    if let Data::Float { values, .. } = &data {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "holds {} at flat index {i}; weights must be finite",
                values[i]
            )));
        }
    }
    Ok(Tensor { dims, data })
}

/// A node's attributes by name, read with the node's location for errors.
pub struct Attrs<'n> {
    pub at: At,
    map: BTreeMap<&'n str, &'n AttributeProto>,
}

impl<'n> Attrs<'n> {
    pub fn new(node: &'n NodeProto, opset: i64) -> Self {
        Attrs {
            at: At {
                node: node.name.clone(),
                op: node.op_type.clone(),
                opset,
            },
            map: node
                .attribute
                .iter()
                .map(|a| (a.name.as_str(), a))
                .collect(),
        }
    }
    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.map.get(name).map_or(default, |a| a.i)
    }
    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.map.get(name).map_or(default, |a| a.f)
    }
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.map.get(name).map(|a| a.ints.clone())
    }
    pub fn string(&self, name: &str) -> Option<String> {
        self.map
            .get(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
    pub fn tensor(&self, name: &str) -> Option<&'n TensorProto> {
        self.map.get(name).and_then(|a| a.t.as_ref())
    }
    /// The value of a `Constant` node.
    pub fn constant(&self) -> Result<Tensor, OnnxError> {
        if let Some(t) = self.tensor("value") {
            return tensor(t);
        }
        if let Some(a) = self.map.get("value_float") {
            return Ok(scalar(Data::Float {
                values: vec![a.f as f64],
                f32: true,
            }));
        }
        if let Some(a) = self.map.get("value_int") {
            return Ok(scalar(Data::Int(vec![a.i])));
        }
        if let Some(a) = self.map.get("value_ints") {
            return Ok(Tensor {
                dims: vec![a.ints.len()],
                data: Data::Int(a.ints.clone()),
            });
        }
        if let Some(a) = self.map.get("value_floats") {
            return Ok(Tensor {
                dims: vec![a.floats.len()],
                data: Data::Float {
                    values: a.floats.iter().map(|&v| v as f64).collect(),
                    f32: true,
                },
            });
        }
        Err(OnnxError::Unsupported {
            at: self.at.clone(),
            what: "a constant of this kind (sparse or string) is not supported".into(),
        })
    }
    pub fn unsupported(&self, what: impl Into<String>) -> OnnxError {
        OnnxError::Unsupported {
            at: self.at.clone(),
            what: what.into(),
        }
    }
}

fn scalar(data: Data) -> Tensor {
    Tensor { dims: vec![], data }
}

/// An attribute stored as float32 (epsilon, dropout ratio) as the decimal
/// it was written as in Python: the shortest decimal that rounds to the
/// same float32 (`1e-5` is stored as 9.99999974737875e-06 and read back
/// as 1e-5), so that a float64 run uses PyTorch's own constant.
pub fn f32_decimal(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(v as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float32_attributes_read_back_as_their_decimal() {
        assert_eq!(f32_decimal(1e-5), 1e-5);
        assert_eq!(f32_decimal(0.1), 0.1);
        assert_eq!(f32_decimal(1e-3), 1e-3);
        assert_eq!(f32_decimal(0.3), 0.3);
    }
}
