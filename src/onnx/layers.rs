//! The ONNX operators that are parameterised layers or pooling windows:
//! `Gemm`, `Conv`, `ConvTranspose`, `BatchNormalization`,
//! `LayerNormalization`, `MaxPool`, `AveragePool`. Their attributes are
//! checked against what nngeo's layers compute (symmetric padding, no
//! `ceil_mode`, ...), and anything else is refused at the node.

use super::error::OnnxError;
use super::import::{Importer, Val};
use super::proto::NodeProto;
use super::read::{f32_decimal, Attrs};
use crate::plan::Layer;

type R = Result<Val, OnnxError>;

/// A parameter input's initializer name.
fn param(v: Option<Val>, what: &str, a: &Attrs) -> Result<Option<String>, OnnxError> {
    match v {
        None => Ok(None),
        Some(Val::Param {
            init,
            transposed: false,
            ..
        }) => Ok(Some(init)),
        Some(_) => Err(a.unsupported(format!(
            "its {what} is computed in the graph, not an initializer (export with `export_params=True` and `do_constant_folding=False`)"
        ))),
    }
}

/// Window attributes along `rank` spatial axes: kernel, strides, pads
/// (symmetric), dilations.
struct Window {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    pads: Vec<usize>,
    dilations: Vec<usize>,
}

fn window(a: &Attrs, kernel: Option<Vec<usize>>, rank: usize) -> Result<Window, OnnxError> {
    if a.string("auto_pad").is_some_and(|p| p != "NOTSET") {
        return Err(a.unsupported("`auto_pad` (PyTorch exports explicit `pads`)"));
    }
    let list = |name: &str, default: usize, len: usize| -> Result<Vec<usize>, OnnxError> {
        let v = a.ints(name).unwrap_or_else(|| vec![default as i64; len]);
        if v.len() != len || v.iter().any(|&x| x < 0) {
            return Err(a.unsupported(format!("`{name}` = {v:?} for {rank} spatial axes")));
        }
        Ok(v.iter().map(|&x| x as usize).collect())
    };
    let kernel = match kernel {
        Some(k) => k,
        None => list("kernel_shape", 1, rank)?,
    };
    if kernel.contains(&0) {
        return Err(a.unsupported(format!("an empty kernel {kernel:?}")));
    }
    let pads = list("pads", 0, 2 * rank)?;
    if pads[..rank] != pads[rank..] {
        return Err(a.unsupported(format!(
            "asymmetric padding {pads:?} (begin and end must be equal, as PyTorch's `padding` is)"
        )));
    }
    let strides = list("strides", 1, rank)?;
    let dilations = list("dilations", 1, rank)?;
    if strides.contains(&0) || dilations.contains(&0) {
        return Err(a.unsupported(format!(
            "strides {strides:?} and dilations {dilations:?} must be positive"
        )));
    }
    Ok(Window {
        strides,
        dilations,
        pads: pads[..rank].to_vec(),
        kernel,
    })
}

fn pair(v: &[usize]) -> [usize; 2] {
    [v[0], v[1]]
}

impl<'f> Importer<'f> {
    /// `Gemm(A, B, C)` with `alpha = beta = 1`, `transA = 0`: a linear
    /// layer (PyTorch's `nn.Linear` on a 2-D input, `transB = 1`).
    pub(super) fn gemm(&mut self, ins: &[String], a: &Attrs) -> R {
        let at = &a.at;
        if a.int("transA", 0) != 0 || a.float("alpha", 1.0) != 1.0 || a.float("beta", 1.0) != 1.0 {
            return Err(a.unsupported(
                "Gemm with transA, alpha or beta other than PyTorch's Linear (0, 1, 1)",
            ));
        }
        let x = self.input(ins, 0, at)?;
        let x = self.tensor(x, at)?;
        let (init, transposed) = match self.input(ins, 1, at)? {
            Val::Param {
                init, transposed, ..
            } => (init, transposed),
            _ => return Err(a.unsupported("its weight B is not an initializer")),
        };
        let bias = param(self.val(ins.get(2).map_or("", |s| s), at)?, "bias C", a)?;
        // B is [out, in] when transB = 1; a transposed view flips that.
        let stored_out_in = (a.int("transB", 0) != 0) != transposed;
        Ok(Val::Node(self.linear(
            x,
            &init,
            !stored_out_in,
            bias.as_deref(),
            at,
        )?))
    }

    pub(super) fn conv(&mut self, node: &NodeProto, a: &Attrs) -> R {
        let at = &a.at;
        let ins = &node.input;
        let transposed = node.op_type == "ConvTranspose";
        let x = self.input(ins, 0, at)?;
        let x = self.tensor(x, at)?;
        let Some(w) = param(self.val(ins.get(1).map_or("", |s| s), at)?, "weight", a)? else {
            return Err(a.unsupported("its weight input is missing"));
        };
        let b = param(self.val(ins.get(2).map_or("", |s| s), at)?, "bias", a)?;
        let wd = self.init_tensor(&w).dims.clone();
        if wd.len() < 3 {
            return Err(a.unsupported(format!("a weight of shape {wd:?}")));
        }
        let rank = wd.len() - 2;
        let win = window(a, Some(wd[2..].to_vec()), rank)?;
        if let Some(k) = a.ints("kernel_shape") {
            if k.iter().map(|&v| v as usize).collect::<Vec<_>>() != win.kernel {
                return Err(a.unsupported(format!(
                    "kernel_shape {k:?} differs from the weight's {wd:?}"
                )));
            }
        }
        let groups = a.int("group", 1).max(1) as usize;
        let cin = self.shape(x).first().copied().unwrap_or(0);
        let layer = match (rank, transposed) {
            (2, false) => Layer::Conv2d {
                in_channels: cin,
                out_channels: wd[0],
                kernel: pair(&win.kernel),
                stride: pair(&win.strides),
                padding: pair(&win.pads),
                bias: b.is_some(),
                dilation: pair(&win.dilations),
                groups,
            },
            (2, true) => {
                if a.has("output_shape") {
                    return Err(
                        a.unsupported("ConvTranspose with `output_shape` (give `output_padding`)")
                    );
                }
                let op = a.ints("output_padding").unwrap_or_else(|| vec![0, 0]);
                if op.len() != 2 || op.iter().any(|&v| v < 0) {
                    return Err(a.unsupported(format!("output_padding {op:?}")));
                }
                Layer::ConvTranspose2d {
                    in_channels: cin,
                    out_channels: wd[1] * groups,
                    kernel: pair(&win.kernel),
                    stride: pair(&win.strides),
                    padding: pair(&win.pads),
                    output_padding: [op[0] as usize, op[1] as usize],
                    dilation: pair(&win.dilations),
                    groups,
                    bias: b.is_some(),
                }
            }
            (1, false) => Layer::Conv1d {
                in_channels: cin,
                out_channels: wd[0],
                kernel: win.kernel[0],
                stride: win.strides[0],
                padding: win.pads[0],
                bias: b.is_some(),
                dilation: win.dilations[0],
                groups,
            },
            _ => {
                return Err(a.unsupported(format!(
                    "a {}-D {} (supported: 2-D Conv and ConvTranspose, 1-D Conv)",
                    rank, node.op_type
                )))
            }
        };
        let mut tensors = vec![("weight", self.source(&w))];
        if let Some(b) = &b {
            tensors.push(("bias", self.source(b)));
        }
        self.param_layer(at, &w, layer, x, &tensors)
    }

    pub(super) fn batchnorm(&mut self, node: &NodeProto, a: &Attrs) -> R {
        let at = &a.at;
        let ins = &node.input;
        let extra = node.output.iter().skip(1).any(|o| !o.is_empty());
        if a.int("training_mode", 0) != 0 || extra {
            return Err(OnnxError::TrainingMode { at: at.clone() });
        }
        let x = self.input(ins, 0, at)?;
        let x = self.tensor(x, at)?;
        let mut p = Vec::new();
        for (i, what) in ["scale", "bias B", "mean", "var"].iter().enumerate() {
            let v = self.val(ins.get(i + 1).map_or("", |s| s), at)?;
            match param(v, what, a)? {
                Some(init) => p.push(init),
                None => return Err(a.unsupported(format!("its {what} input is missing"))),
            }
        }
        let eps = f32_decimal(a.float("epsilon", 1e-5));
        let shape = self.shape(x);
        let layer = match shape.len() {
            3 => Layer::BatchNorm2d {
                channels: shape[0],
                eps,
                affine: true,
            },
            1 | 2 => Layer::BatchNorm1d {
                features: shape[0],
                eps,
                affine: true,
            },
            _ => return Err(a.unsupported(format!("batch normalisation of a {shape:?} tensor"))),
        };
        let tensors = [
            ("weight", self.source(&p[0])),
            ("bias", self.source(&p[1])),
            ("running_mean", self.source(&p[2])),
            ("running_var", self.source(&p[3])),
        ];
        self.param_layer(at, &p[0], layer, x, &tensors)
    }

    pub(super) fn layernorm(&mut self, node: &NodeProto, a: &Attrs) -> R {
        let at = &a.at;
        let ins = &node.input;
        if node.output.iter().skip(1).any(|o| !o.is_empty()) {
            return Err(a.unsupported("LayerNormalization's mean and inverse deviation outputs"));
        }
        let x = self.input(ins, 0, at)?;
        let x = self.tensor(x, at)?;
        let Some(w) = param(self.val(ins.get(1).map_or("", |s| s), at)?, "scale", a)? else {
            return Err(a.unsupported("its scale input is missing"));
        };
        let Some(b) = param(self.val(ins.get(2).map_or("", |s| s), at)?, "bias B", a)? else {
            return Err(
                a.unsupported("a LayerNormalization without bias (nngeo's layernorm has one)")
            );
        };
        let per = self.shape(x).to_vec();
        let rank = per.len() as i64 + 1;
        let axis = a.int("axis", -1);
        let axis = if axis < 0 { axis + rank } else { axis };
        if axis < 1 || axis >= rank {
            return Err(a.unsupported(format!(
                "normalisation from axis {axis}, which includes the batch"
            )));
        }
        let eps = f32_decimal(a.float("epsilon", 1e-5));
        let layer = Layer::LayerNorm {
            shape: per[(axis - 1) as usize..].to_vec(),
            eps,
            affine: true,
        };
        let tensors = [("weight", self.source(&w)), ("bias", self.source(&b))];
        self.param_layer(at, &w, layer, x, &tensors)
    }

    pub(super) fn pool(&mut self, node: &NodeProto, a: &Attrs) -> R {
        let at = &a.at;
        let x = self.input(&node.input, 0, at)?;
        let x = self.tensor(x, at)?;
        // [C, L] or [C, H, W] per example: PyTorch's 1-D and 2-D pools.
        let rank = self.shape(x).len().wrapping_sub(1);
        if rank != 1 && rank != 2 {
            return Err(a.unsupported("pooling of a tensor that is not [C, L] or [C, H, W]"));
        }
        if node.output.iter().skip(1).any(|o| !o.is_empty()) {
            return Err(a.unsupported("MaxPool's indices output"));
        }
        let win = window(a, None, rank)?;
        if a.int("storage_order", 0) != 0 {
            return Err(a.unsupported("MaxPool's column-major `storage_order`"));
        }
        let max = node.op_type == "MaxPool";
        if !max && win.dilations.iter().any(|&d| d != 1) {
            return Err(a.unsupported("dilated average pooling"));
        }
        // The output size of ceil mode is PyTorch's (as ONNX's since
        // opset 19): a last window starting in the right padding is dropped.
        let ceil_mode = a.int("ceil_mode", 0) != 0;
        // ONNX's default is 0, PyTorch's True (which its exporter writes);
        // without padding or ceil mode they agree.
        let count_include_pad =
            a.int("count_include_pad", 0) != 0 || (win.pads.iter().all(|&p| p == 0) && !ceil_mode);
        let layer = if rank == 1 {
            let (kernel, stride, padding) = (win.kernel[0], win.strides[0], win.pads[0]);
            if max {
                Layer::MaxPool1d {
                    kernel,
                    stride,
                    padding,
                    dilation: win.dilations[0],
                    ceil_mode,
                }
            } else {
                Layer::AvgPool1d {
                    kernel,
                    stride,
                    padding,
                    ceil_mode,
                    count_include_pad,
                }
            }
        } else {
            let (kernel, stride, padding) =
                (pair(&win.kernel), pair(&win.strides), pair(&win.pads));
            if max {
                Layer::MaxPool2d {
                    kernel,
                    stride,
                    padding,
                    dilation: pair(&win.dilations),
                    ceil_mode,
                }
            } else {
                Layer::AvgPool2d {
                    kernel,
                    stride,
                    padding,
                    ceil_mode,
                    count_include_pad,
                }
            }
        };
        let name = self.free_name(at, None);
        Ok(Val::Node(self.push(at, &name, layer, &[x])?))
    }
}
