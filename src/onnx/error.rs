//! What can go wrong importing an ONNX file. Each error names the node
//! (its name and op type) and the opset, so that the place in the PyTorch
//! model can be found; the checker shows it at the `onnx("...")` call with
//! [`OnnxError::hint`].

use serde::Serialize;

/// The operators the importer maps onto nngeo's layers (some only inside
/// the patterns PyTorch exports: GELU's erf form, GroupNorm's
/// InstanceNormalization, `x.view(x.size(0), -1)`).
pub const SUPPORTED_OPS: [&str; 39] = [
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "ConvTranspose",
    "Div",
    "Dropout",
    "Elu",
    "Erf",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "HardSigmoid",
    "HardSwish",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Identity",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "LogSoftmax",
    "MatMul",
    "MaxPool",
    "Mul",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Softmax",
    "Squeeze",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Cast",
];

/// Where in the graph: a node's name, op type, and the file's opset.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct At {
    pub node: String,
    pub op: String,
    pub opset: i64,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.node.is_empty() {
            "(unnamed)"
        } else {
            &self.node
        };
        write!(f, "node `{name}` ({}, opset {})", self.op, self.opset)
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize)]
pub enum OnnxError {
    #[error("cannot read the file: {reason}")]
    Read { reason: String },
    #[error("not an ONNX model: {reason}")]
    Decode { reason: String },
    #[error("{what}")]
    Graph { what: String },
    #[error("{at}: operator `{}` is not supported", at.op)]
    UnsupportedOp { at: At },
    #[error("{at}: {what}")]
    Unsupported { at: At, what: String },
    #[error("{at}: parameter `{param}` is used outside a layer nngeo recognises")]
    LooseParameter { at: At, param: String },
    #[error("{at}: the model was exported in training mode")]
    TrainingMode { at: At },
    #[error("{at}: {what}")]
    Shape { at: At, what: String },
    #[error("initializer `{name}`: {what}")]
    Initializer { name: String, what: String },
}

impl OnnxError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            OnnxError::UnsupportedOp { .. } => {
                Some(format!("supported operators: {}", sorted_ops().join(", ")))
            }
            OnnxError::LooseParameter { .. } => Some(
                "nngeo groups parameters by layer (Conv, ConvTranspose, Gemm/MatMul(+Add), \
                 BatchNormalization, GroupNorm, LayerNormalization, Gather as Embedding); a \
                 parameter in another expression has no layer to belong to, so no FIM or NTK \
                 structure (not even Dense) can be built for it: make it a module (e.g. an \
                 `nn.Linear`) or a buffer"
                    .into(),
            ),
            OnnxError::TrainingMode { .. } => Some(
                "export in evaluation mode: `model.eval()` and \
                 `torch.onnx.export(..., training=torch.onnx.TrainingMode.EVAL, \
                 do_constant_folding=False, dynamo=False)`"
                    .into(),
            ),
            OnnxError::Decode { .. } => Some(
                "write it with `torch.onnx.export(model, x, \"net.onnx\", dynamo=False)`".into(),
            ),
            _ => None,
        }
    }
}

/// [`SUPPORTED_OPS`] in alphabetical order.
pub fn sorted_ops() -> Vec<&'static str> {
    let mut ops = SUPPORTED_OPS.to_vec();
    ops.sort_unstable();
    ops
}
