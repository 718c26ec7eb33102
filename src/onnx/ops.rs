//! Each supported ONNX operator: what it becomes in nngeo's graph (a
//! layer, a view of a parameter, a shape computation, or one step of a
//! pattern PyTorch exports in pieces).

use super::error::{At, OnnxError};
use super::import::{Dim, Importer, Pending, Val};
use super::read::{f32_decimal, Attrs, Tensor};
use crate::plan::Layer;

type R = Result<Val, OnnxError>;

impl<'f> Importer<'f> {
    pub(super) fn op(&mut self, node: &'f super::proto::NodeProto, a: &Attrs) -> R {
        let at = &a.at;
        let ins = &node.input;
        match node.op_type.as_str() {
            "Identity" => {
                let v = self.input(ins, 0, at)?;
                match (v, node.output.first()) {
                    // A deduplicated parameter: its own name, shared values.
                    (Val::Param { init, dims, transposed }, Some(out)) => {
                        self.alias_param(out, &init);
                        Ok(Val::Param {
                            init: out.clone(),
                            dims,
                            transposed,
                        })
                    }
                    (v, _) => Ok(v),
                }
            }
            "Constant" => Ok(Val::Const(a.constant()?)),
            "Cast" => match self.input(ins, 0, at)? {
                v @ (Val::Ints { .. } | Val::Const(_)) => Ok(v),
                v => {
                    let to = a.int("to", 0) as i32;
                    if to == super::proto::dtype::FLOAT || to == super::proto::dtype::DOUBLE {
                        Ok(Val::Node(self.tensor(v, at)?))
                    } else {
                        Err(a.unsupported(format!("a cast of activations to element type {to}")))
                    }
                }
            },
            "Relu" | "Tanh" | "Sigmoid" => {
                let x = self.input(ins, 0, at)?;
                let x = self.tensor(x, at)?;
                let layer = match node.op_type.as_str() {
                    "Relu" => Layer::Relu,
                    "Tanh" => Layer::Tanh,
                    _ => Layer::Sigmoid,
                };
                let name = self.free_name(at, None);
                Ok(Val::Node(self.push(at, &name, layer, &[x])?))
            }
            "LeakyRelu" | "Elu" => {
                let x = self.input(ins, 0, at)?;
                let x = self.tensor(x, at)?;
                // ONNX keeps the slope as a float32: read back as its
                // decimal (PyTorch's 0.01, not 0.009999999776).
                let layer = if node.op_type == "LeakyRelu" {
                    Layer::LeakyRelu {
                        slope: f32_decimal(a.float("alpha", 0.01)),
                    }
                } else {
                    Layer::Elu {
                        alpha: f32_decimal(a.float("alpha", 1.0)),
                    }
                };
                let name = self.free_name(at, None);
                Ok(Val::Node(self.push(at, &name, layer, &[x])?))
            }
            "Clip" => {
                let x = self.input(ins, 0, at)?;
                let x = self.tensor(x, at)?;
                // Bounds: optional constant inputs from opset 11, attributes
                // before.
                let bound = |k: usize, attr: &str| -> Result<Option<f64>, OnnxError> {
                    if at.opset < 11 {
                        return Ok(a.has(attr).then(|| f32_decimal(a.float(attr, 0.0))));
                    }
                    if ins.get(k).is_none_or(|n| n.is_empty()) {
                        return Ok(None);
                    }
                    let v = self.input(ins, k, at)?;
                    match self.floats(&v).as_deref() {
                        Some(&[b]) => Ok(Some(b)),
                        _ => Err(a.unsupported("a Clip bound that is not a constant scalar")),
                    }
                };
                let layer = match (bound(1, "min")?, bound(2, "max")?) {
                    (Some(min), Some(max)) if min < max => Layer::Hardtanh { min, max },
                    (Some(0.0), None) => Layer::Relu,
                    _ => {
                        return Err(a.unsupported(
                            "a Clip without both bounds (min < max), other than clamp(min = 0)",
                        ))
                    }
                };
                let name = self.free_name(at, None);
                Ok(Val::Node(self.push(at, &name, layer, &[x])?))
            }
            "HardSigmoid" | "HardSwish" => {
                let x = self.input(ins, 0, at)?;
                let x = self.tensor(x, at)?;
                // PyTorch writes its hard sigmoid as alpha = 1/6, beta = 1/2
                // (ONNX's defaults are 0.2 and 0.5).
                let (alpha, beta) = (a.float("alpha", 0.2), a.float("beta", 0.5));
                let layer = if node.op_type == "HardSwish" {
                    Layer::Hardswish
                } else if (alpha - 1.0 / 6.0).abs() < 1e-7 && beta == 0.5 {
                    Layer::Hardsigmoid
                } else {
                    return Err(a.unsupported(format!(
                        "HardSigmoid with alpha = {alpha}, beta = {beta} (PyTorch's is 1/6, 1/2)"
                    )));
                };
                let name = self.free_name(at, None);
                Ok(Val::Node(self.push(at, &name, layer, &[x])?))
            }
            "Gelu" => {
                if a.string("approximate").is_some_and(|s| s != "none") {
                    return Err(a.unsupported("GELU's tanh approximation (nngeo's GELU is the exact, erf form)"));
                }
                let x = self.input(ins, 0, at)?;
                let x = self.tensor(x, at)?;
                self.gelu(at, x)
            }
            "Softmax" | "LogSoftmax" => {
                let x = self.input(ins, 0, at)?;
                let x = self.tensor(x, at)?;
                if !node.output.iter().any(|o| self.file.outputs.contains(o)) {
                    return Err(a.unsupported(
                        "a softmax inside the network (one is only supported at the output, where nngeo leaves it out)",
                    ));
                }
                self.warnings.push(format!(
                    "{at}: the final {} is left out: nngeo's Fisher, NTK and losses take the network's logits and apply the softmax themselves",
                    node.op_type
                ));
                Ok(Val::Node(x))
            }
            "Dropout" => self.dropout(ins, a),
            "Flatten" => {
                let x = self.input(ins, 0, at)?;
                let x = self.tensor(x, at)?;
                let axis = a.int("axis", 1);
                let rank = self.shape(x).len() as i64 + 1;
                if axis != 1 && axis != 1 - rank {
                    return Err(a.unsupported(format!(
                        "Flatten with axis {axis} (only axis 1, keeping the batch dimension, is supported)"
                    )));
                }
                let name = self.free_name(at, None);
                Ok(Val::Node(self.push(at, &name, Layer::Flatten, &[x])?))
            }
            "Shape" => {
                let x = self.input(ins, 0, at)?;
                let x = self.tensor(x, at)?;
                let mut dims = vec![Dim::Batch];
                dims.extend(self.shape(x).iter().map(|&d| Dim::Known(d as i64)));
                let r = dims.len() as i64;
                let norm = |i: i64| (if i < 0 { i + r } else { i }).clamp(0, r) as usize;
                let start = norm(a.int("start", 0));
                let end = norm(a.int("end", r));
                Ok(Val::Ints {
                    vals: dims[start..end.max(start)].to_vec(),
                    scalar: false,
                })
            }
            "Gather" => self.gather(ins, a),
            "Unsqueeze" | "Squeeze" => self.unsqueeze(ins, a, node.op_type == "Unsqueeze"),
            "Transpose" => match self.input(ins, 0, at)? {
                Val::Param {
                    init,
                    dims,
                    transposed,
                } if dims.len() == 2
                    && a.ints("perm").is_none_or(|p| p == [1, 0]) =>
                {
                    Ok(Val::Param {
                        init,
                        dims: vec![dims[1], dims[0]],
                        transposed: !transposed,
                    })
                }
                _ => Err(a.unsupported(
                    "a transpose of activations (only a 2-D weight's transpose, as `x @ W.t()` exports, is supported)",
                )),
            },
            "Concat" => self.concat(ins, a),
            "Reshape" => self.reshape(ins, a),
            "Add" | "Mul" | "Div" | "Sub" => self.arith(node.op_type.as_str(), ins, a),
            "Erf" => match self.input(ins, 0, at)? {
                Val::Pending(Pending::GeluDiv(x)) => Ok(Val::Pending(Pending::GeluErf(x))),
                _ => Err(a.unsupported("Erf outside GELU's erf form 0.5·x·(1 + erf(x/√2))")),
            },
            "MatMul" => {
                let x = self.input(ins, 0, at)?;
                let w = self.input(ins, 1, at)?;
                match w {
                    Val::Param {
                        init, transposed, ..
                    } if self.init_tensor(&init).dims.len() == 2 => {
                        let x = self.tensor(x, at)?;
                        Ok(Val::Pending(Pending::Linear {
                            x,
                            init,
                            transpose: !transposed,
                            at: at.clone(),
                        }))
                    }
                    Val::Param { init, .. } => Err(OnnxError::LooseParameter {
                        at: at.clone(),
                        param: init,
                    }),
                    _ => Err(a.unsupported(
                        "a product of two activations (a MatMul is a linear layer when its right operand is a 2-D weight)",
                    )),
                }
            }
            "Gemm" => self.gemm(ins, a),
            "Conv" | "ConvTranspose" => self.conv(node, a),
            "BatchNormalization" => self.batchnorm(node, a),
            "InstanceNormalization" => self.instance_norm(ins, a),
            "LayerNormalization" => self.layernorm(node, a),
            "MaxPool" | "AveragePool" => self.pool(node, a),
            "ReduceMean" => self.reduce_mean(ins, a),
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = self.input(ins, 0, at)?;
                let x = self.tensor(x, at)?;
                let max = node.op_type == "GlobalMaxPool";
                let layer = match (self.shape(x).len(), max) {
                    (2, false) => Layer::AdaptiveAvgPool1d { output: 1 },
                    (2, true) => Layer::AdaptiveMaxPool1d { output: 1 },
                    (3, false) => Layer::AdaptiveAvgPool2d { output: [1, 1] },
                    (3, true) => Layer::AdaptiveMaxPool2d { output: [1, 1] },
                    _ => {
                        return Err(a.unsupported(
                            "global pooling of a tensor that is not [C, L] or [C, H, W]",
                        ))
                    }
                };
                let name = self.free_name(at, None);
                Ok(Val::Node(self.push(at, &name, layer, &[x])?))
            }
            _ => Err(OnnxError::UnsupportedOp { at: at.clone() }),
        }
    }

    /// `x.mean([2, 3])` of a `[C, H, W]` tensor or `x.mean(2)` of a
    /// `[C, L]` one: global average pooling (and a flatten unless
    /// `keepdims`).
    fn reduce_mean(&mut self, ins: &[String], a: &Attrs) -> R {
        let at = &a.at;
        let x = self.input(ins, 0, at)?;
        let x = self.tensor(x, at)?;
        let axes: Option<Vec<i64>> = match a.ints("axes") {
            Some(ax) => Some(ax),
            // Opset 18 gives the axes as an input.
            None => match self.val(ins.get(1).map_or("", |s| s), at)? {
                Some(v) => self.ints(&v).and_then(|(d, _)| {
                    d.iter()
                        .map(|x| match x {
                            Dim::Known(k) => Some(*k),
                            Dim::Batch => None,
                        })
                        .collect()
                }),
                None => None,
            },
        };
        let rank = self.shape(x).len() as i64 + 1;
        let mut axes: Vec<i64> = axes
            .unwrap_or_default()
            .iter()
            .map(|&k| if k < 0 { k + rank } else { k })
            .collect();
        axes.sort_unstable();
        let layer = match (rank, axes.as_slice()) {
            (4, [2, 3]) => Layer::AdaptiveAvgPool2d { output: [1, 1] },
            (3, [2]) => Layer::AdaptiveAvgPool1d { output: 1 },
            _ => {
                return Err(a.unsupported(
                    "a mean that is not over the spatial axes of a [C, H, W] or [C, L] tensor (global average pooling)",
                ))
            }
        };
        let name = self.free_name(at, None);
        let pooled = self.push(at, &name, layer, &[x])?;
        if a.int("keepdims", 1) != 0 {
            return Ok(Val::Node(pooled));
        }
        let name = self.free_name(at, Some("flatten"));
        Ok(Val::Node(self.push(
            at,
            &name,
            Layer::Flatten,
            &[pooled],
        )?))
    }

    /// A GELU layer on node `x`.
    fn gelu(&mut self, at: &At, x: usize) -> R {
        let name = self.free_name(at, Some("gelu"));
        let name = name
            .rsplit_once('.')
            .filter(|(_, last)| *last == "gelu")
            .map_or(name.clone(), |(scope, _)| scope.to_string());
        Ok(Val::Node(self.push(at, &name, Layer::Gelu, &[x])?))
    }

    fn dropout(&mut self, ins: &[String], a: &Attrs) -> R {
        let at = &a.at;
        let x = self.input(ins, 0, at)?;
        let x = self.tensor(x, at)?;
        let ratio = match self.val(ins.get(1).map_or("", |s| s), at)? {
            Some(v) => match self.floats(&v).as_deref() {
                Some([r]) => *r,
                _ => return Err(a.unsupported("a dropout ratio that is not a constant")),
            },
            None => a.float("ratio", 0.5) as f64,
        };
        // The ratio is stored in float32: read back its decimal.
        let ratio = f32_decimal(ratio as f32);
        let training = match self.val(ins.get(2).map_or("", |s| s), at)? {
            Some(v) => match self.floats(&v) {
                Some(t) => t.iter().any(|&b| b != 0.0),
                None => return Err(a.unsupported("a training_mode that is not a constant")),
            },
            None => false,
        };
        if training || a.int("is_test", 1) == 0 {
            return Err(OnnxError::TrainingMode { at: at.clone() });
        }
        if ratio == 0.0 {
            return Ok(Val::Node(x));
        }
        let name = self.free_name(at, None);
        Ok(Val::Node(self.push(
            at,
            &name,
            Layer::Dropout { p: ratio },
            &[x],
        )?))
    }

    fn gather(&mut self, ins: &[String], a: &Attrs) -> R {
        let at = &a.at;
        let data = self.input(ins, 0, at)?;
        let idx = self.input(ins, 1, at)?;
        let axis = a.int("axis", 0);
        if let Val::Param { init, dims, .. } = &data {
            if let (Val::Node(0), 0, 2) = (&idx, axis, dims.len()) {
                let layer = Layer::Embedding {
                    num_embeddings: dims[0],
                    dim: dims[1],
                };
                let init = init.clone();
                let src = self.source(&init);
                return self.param_layer(at, &init, layer, 0, &[("weight", src)]);
            }
            return Err(OnnxError::LooseParameter {
                at: at.clone(),
                param: init.clone(),
            });
        }
        if let (Some((vals, _)), Some((idx, scalar))) = (self.ints(&data), self.ints(&idx)) {
            let n = vals.len() as i64;
            let picked: Option<Vec<Dim>> = idx
                .iter()
                .map(|i| match i {
                    Dim::Known(k) => {
                        let k = if *k < 0 { k + n } else { *k };
                        vals.get(k as usize).copied()
                    }
                    Dim::Batch => None,
                })
                .collect();
            if let Some(vals) = picked.filter(|_| axis == 0) {
                return Ok(Val::Ints { vals, scalar });
            }
        }
        Err(a.unsupported(
            "a Gather that is neither an embedding (a 2-D weight indexed by the model's integer input) nor part of a shape computation",
        ))
    }

    fn unsqueeze(&mut self, ins: &[String], a: &Attrs, un: bool) -> R {
        let at = &a.at;
        let v = self.input(ins, 0, at)?;
        let axes: Vec<i64> = match a.ints("axes") {
            Some(ax) => ax,
            None => match self.val(ins.get(1).map_or("", |s| s), at)? {
                Some(ax) => match self.ints(&ax) {
                    Some((d, _)) => d
                        .iter()
                        .map(|x| match x {
                            Dim::Known(k) => Ok(*k),
                            Dim::Batch => Err(a.unsupported("axes computed from the batch size")),
                        })
                        .collect::<Result<_, _>>()?,
                    None => return Err(a.unsupported("axes that are not constant")),
                },
                None => vec![],
            },
        };
        let reshape = |dims: &[usize]| -> Option<Vec<usize>> {
            let mut d = dims.to_vec();
            if un {
                let r = (d.len() + axes.len()) as i64;
                let mut ax: Vec<usize> = axes
                    .iter()
                    .map(|&x| (if x < 0 { x + r } else { x }) as usize)
                    .collect();
                ax.sort_unstable();
                for x in ax {
                    if x > d.len() {
                        return None;
                    }
                    d.insert(x, 1);
                }
            } else {
                let r = d.len() as i64;
                let mut ax: Vec<usize> = if axes.is_empty() {
                    (0..d.len()).filter(|&i| d[i] == 1).collect()
                } else {
                    axes.iter()
                        .map(|&x| (if x < 0 { x + r } else { x }) as usize)
                        .collect()
                };
                ax.sort_unstable();
                for x in ax.into_iter().rev() {
                    if d.get(x) != Some(&1) {
                        return None;
                    }
                    d.remove(x);
                }
            }
            Some(d)
        };
        let bad = || a.unsupported("axes that do not fit the operand");
        match v {
            Val::Param {
                init,
                dims,
                transposed,
            } => Ok(Val::Param {
                init,
                dims: reshape(&dims).ok_or_else(bad)?,
                transposed,
            }),
            Val::Const(t) => Ok(Val::Const(Tensor {
                dims: reshape(&t.dims).ok_or_else(bad)?,
                data: t.data,
            })),
            Val::Ints { vals, scalar } => {
                let dims = if scalar { vec![] } else { vec![vals.len()] };
                let d = reshape(&dims).ok_or_else(bad)?;
                if d.len() > 1 {
                    return Err(bad());
                }
                Ok(Val::Ints {
                    vals,
                    scalar: d.is_empty(),
                })
            }
            _ => Err(a.unsupported(format!(
                "{} of activations (only of weights and shape computations)",
                a.at.op
            ))),
        }
    }

    fn concat(&mut self, ins: &[String], a: &Attrs) -> R {
        let at = &a.at;
        let vals: Vec<Val> = (0..ins.len())
            .map(|i| self.input(ins, i, at))
            .collect::<Result<_, _>>()?;
        let ints: Option<Vec<Dim>> = vals
            .iter()
            .map(|v| self.ints(v).map(|(d, _)| d))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat());
        if let Some(vals) = ints {
            return Ok(Val::Ints {
                vals,
                scalar: false,
            });
        }
        let mut nodes = Vec::new();
        for v in vals {
            nodes.push(self.tensor(v, at)?);
        }
        let rank = self.shape(nodes[0]).len() as i64 + 1;
        let axis = a.int("axis", 1);
        if axis != 1 && axis != 1 - rank {
            return Err(a.unsupported(format!(
                "Concat along axis {axis} (only along channels, axis 1, is supported)"
            )));
        }
        if nodes.len() == 1 {
            return Ok(Val::Node(nodes[0]));
        }
        let name = self.free_name(at, Some("cat"));
        Ok(Val::Node(self.push(at, &name, Layer::Concat, &nodes)?))
    }

    /// `Reshape(x, shape)`: a flatten, the identity, or the first step of
    /// an exported GroupNorm.
    fn reshape(&mut self, ins: &[String], a: &Attrs) -> R {
        let at = &a.at;
        let x = self.input(ins, 0, at)?;
        let target = self.input(ins, 1, at)?;
        let Some((target, _)) = self.ints(&target) else {
            return Err(a.unsupported(
                "a reshape to a shape that is neither constant nor computed from shapes",
            ));
        };
        let (src, pending) = match &x {
            Val::Pending(Pending::GnNorm { x, groups, eps }) => (*x, Some((*groups, *eps))),
            v => (self.tensor(v.clone(), at)?, None),
        };
        let per = self.shape(src).to_vec();
        let resolved = per_example(&per, &target, a.int("allowzero", 0) != 0);
        let Some(new) = resolved else {
            return Err(a.unsupported(format!(
                "a reshape of {per:?} (per example) to {} that mixes examples: nngeo needs the batch dimension kept first",
                fmt_dims(&target)
            )));
        };
        if let Some((groups, eps)) = pending {
            if new != per {
                return Err(a.unsupported(
                    "an exported GroupNorm whose second Reshape does not restore the input's shape",
                ));
            }
            return Ok(Val::Pending(Pending::GnBack {
                x: src,
                groups,
                eps,
            }));
        }
        if new == per {
            return Ok(Val::Node(src));
        }
        if new.len() == 1 {
            let name = self.free_name(at, Some("flatten"));
            return Ok(Val::Node(self.push(at, &name, Layer::Flatten, &[src])?));
        }
        if new.len() == 2 && per.len() >= 2 && per[0].is_multiple_of(new[0]) {
            return Ok(Val::Pending(Pending::GnSplit {
                x: src,
                groups: new[0],
            }));
        }
        Err(a.unsupported(format!(
            "a reshape of {per:?} to {new:?} per example (only flattening is supported)"
        )))
    }

    fn instance_norm(&mut self, ins: &[String], a: &Attrs) -> R {
        let at = &a.at;
        let x = self.input(ins, 0, at)?;
        let scale = self.input(ins, 1, at)?;
        let bias = self.input(ins, 2, at)?;
        let (Val::Pending(Pending::GnSplit { x, groups }), Some(s), Some(b)) =
            (x, self.floats(&scale), self.floats(&bias))
        else {
            return Err(a.unsupported(
                "InstanceNormalization is only supported as the core of an exported GroupNorm (Reshape to [N, G, -1], InstanceNormalization with unit scale and zero bias, Reshape back, Mul, Add)",
            ));
        };
        if s.len() != groups || s.iter().any(|&v| v != 1.0) || b.iter().any(|&v| v != 0.0) {
            return Err(a.unsupported("an InstanceNormalization with a scale or bias of its own (InstanceNorm2d(affine=True) is not supported)"));
        }
        let eps = f32_decimal(a.float("epsilon", 1e-5));
        Ok(Val::Pending(Pending::GnNorm { x, groups, eps }))
    }

    /// `Add`, `Mul`, `Div`, `Sub`: skip connections, a `MatMul`'s bias,
    /// and the steps of GELU and GroupNorm.
    fn arith(&mut self, op: &str, ins: &[String], a: &Attrs) -> R {
        let at = &a.at;
        let l = self.input(ins, 0, at)?;
        let r = self.input(ins, 1, at)?;
        let c = |imp: &Self, v: &Val, want: f64, tol: f64| {
            matches!(v, Val::Const(_))
                && imp
                    .floats(v)
                    .is_some_and(|f| f.len() == 1 && (f[0] - want).abs() <= tol)
        };
        let pair = [(&l, &r), (&r, &l)];
        match op {
            "Add" => {
                for (p, q) in pair {
                    match (p, q) {
                        (
                            Val::Pending(Pending::Linear {
                                x, init, transpose, ..
                            }),
                            Val::Param { init: b, .. },
                        ) => {
                            let (x, init, transpose, b) = (*x, init.clone(), *transpose, b.clone());
                            return Ok(Val::Node(self.linear(
                                x,
                                &init,
                                transpose,
                                Some(&b),
                                at,
                            )?));
                        }
                        (
                            Val::Pending(Pending::GnScaled {
                                x,
                                groups,
                                eps,
                                weight,
                            }),
                            Val::Param { init: b, .. },
                        ) => {
                            let (x, groups, eps, w, b) =
                                (*x, *groups, *eps, weight.clone(), b.clone());
                            return self.groupnorm(at, x, groups, eps, &w, &b);
                        }
                        (Val::Pending(Pending::GeluErf(x)), q) if c(self, q, 1.0, 0.0) => {
                            return Ok(Val::Pending(Pending::GeluOnePlus(*x)));
                        }
                        _ => {}
                    }
                }
                if let Some(Val::Param { init, .. }) = [&l, &r]
                    .into_iter()
                    .find(|v| matches!(v, Val::Param { .. }))
                {
                    return Err(OnnxError::LooseParameter {
                        at: at.clone(),
                        param: init.clone(),
                    });
                }
                let x = self.tensor(l, at)?;
                let y = self.tensor(r, at)?;
                let name = self.free_name(at, Some("add"));
                Ok(Val::Node(self.push(at, &name, Layer::Add, &[x, y])?))
            }
            "Mul" => {
                for (p, q) in pair {
                    match (p, q) {
                        (
                            Val::Pending(Pending::GnBack { x, groups, eps }),
                            Val::Param { init, .. },
                        ) => {
                            return Ok(Val::Pending(Pending::GnScaled {
                                x: *x,
                                groups: *groups,
                                eps: *eps,
                                weight: init.clone(),
                            }));
                        }
                        (Val::Pending(Pending::GeluOnePlus(x)), Val::Node(y)) if x == y => {
                            return Ok(Val::Pending(Pending::GeluProd(*x)));
                        }
                        (Val::Pending(Pending::GeluOnePlus(x)), Val::Pending(Pending::Half(y)))
                            if x == y =>
                        {
                            return self.gelu(at, *x);
                        }
                        (Val::Pending(Pending::GeluProd(x)), q) if c(self, q, 0.5, 0.0) => {
                            return self.gelu(at, *x);
                        }
                        (Val::Node(x), q) if c(self, q, 0.5, 0.0) => {
                            return Ok(Val::Pending(Pending::Half(*x)));
                        }
                        _ => {}
                    }
                }
                self.arith_refused(&l, &r, a)
            }
            "Div" => match (&l, &r) {
                (Val::Node(x), q) if c(self, q, std::f64::consts::SQRT_2, 1e-6) => {
                    Ok(Val::Pending(Pending::GeluDiv(*x)))
                }
                _ => self.arith_refused(&l, &r, a),
            },
            _ => self.arith_refused(&l, &r, a),
        }
    }

    fn arith_refused(&self, l: &Val, r: &Val, a: &Attrs) -> R {
        if let Some(Val::Param { init, .. }) =
            [l, r].into_iter().find(|v| matches!(v, Val::Param { .. }))
        {
            return Err(OnnxError::LooseParameter {
                at: a.at.clone(),
                param: init.clone(),
            });
        }
        Err(a.unsupported(format!(
            "{} of activations outside the patterns nngeo recognises (a skip connection `Add`, GELU's erf form, GroupNorm's affine step)",
            a.at.op
        )))
    }

    fn groupnorm(&mut self, at: &At, x: usize, groups: usize, eps: f64, w: &str, b: &str) -> R {
        let channels = self.shape(x)[0];
        let layer = Layer::GroupNorm {
            groups,
            channels,
            eps,
            affine: true,
        };
        let tensors = [("weight", self.source(w)), ("bias", self.source(b))];
        self.param_layer(at, w, layer, x, &tensors)
    }
}

/// The per-example shape a `Reshape` to `target` gives an input of
/// per-example shape `per`, or `None` when it does not keep the batch
/// dimension first.
fn per_example(per: &[usize], target: &[Dim], allowzero: bool) -> Option<Vec<usize>> {
    let numel: usize = per.iter().product();
    let first_ok = match target.first()? {
        Dim::Batch => true,
        Dim::Known(0) => !allowzero,
        Dim::Known(-1) => true,
        _ => false,
    };
    if !first_ok {
        return None;
    }
    let mut out = Vec::new();
    let mut infer = None;
    for (i, d) in target[1..].iter().enumerate() {
        match *d {
            Dim::Known(-1) if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            Dim::Known(0) if !allowzero => out.push(*per.get(i)?),
            Dim::Known(k) if k > 0 => out.push(k as usize),
            _ => return None,
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if target[0] == Dim::Known(-1) || known == 0 || !numel.is_multiple_of(known) {
            return None;
        }
        out[i] = numel / known;
    }
    (out.iter().product::<usize>() == numel).then_some(out)
}

fn fmt_dims(d: &[Dim]) -> String {
    let parts: Vec<String> = d
        .iter()
        .map(|x| match x {
            Dim::Batch => "N".into(),
            Dim::Known(k) => k.to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}
