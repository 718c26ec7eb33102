//! Weight initialisation on the host, so that every backend starts from
//! bit-identical parameters for the same seed.

use super::net::{HostParam, HostParams};
use crate::plan::{Init, Layer, ModelSpec};
use crate::rng::Rng;

/// `(fan_in, fan_out)` of a weight tensor of PyTorch shape `[out, in, k…]`.
fn fans(shape: &[usize]) -> (usize, usize) {
    let k: usize = shape[2..].iter().product();
    (shape[1] * k, shape[0] * k)
}

/// Parameters of `spec` drawn according to `init`. PyTorch's default is
/// reproduced in distribution (U(±1/√fan_in) for weights and biases of
/// Linear and Conv, ones and zeros for norm layers), not in its random
/// stream.
pub fn init_params(spec: &ModelSpec, init: &Init) -> HostParams {
    let seed = match init {
        Init::Pytorch { seed }
        | Init::Kaiming { seed }
        | Init::Xavier { seed }
        | Init::Normal { seed, .. } => *seed,
    };
    let mut rng = Rng::new(seed);
    let mut tensors = Vec::new();
    for l in spec.stateful_layers() {
        let name = &l.name;
        let mut push = |key: &str, shape: Vec<usize>, data: Vec<f64>, trainable: bool| {
            tensors.push(HostParam {
                key: format!("{name}.{key}"),
                shape,
                data,
                trainable,
            })
        };
        // Weight and bias shapes in PyTorch's layout.
        let affine = matches!(
            l.layer,
            Layer::Linear { .. }
                | Layer::Conv2d { .. }
                | Layer::Conv1d { .. }
                | Layer::ConvTranspose2d { .. }
        );
        let shapes = l.layer.state_tensors(name);
        if let Layer::Embedding {
            num_embeddings,
            dim,
        } = &l.layer
        {
            // PyTorch's default is N(0, 1); a normal init keeps its std.
            let numel = num_embeddings * dim;
            let std = match init {
                Init::Normal { std, .. } => *std,
                _ => 1.0,
            };
            let w = (0..numel).map(|_| std * rng.normal()).collect();
            push("weight", vec![*num_embeddings, *dim], w, true);
        }
        if affine {
            let shape = shapes[0].1.clone();
            let has_bias = shapes.len() > 1;
            // PyTorch takes a transposed convolution's fans from its
            // weight `[in, out/groups, K]` as if it were `[out, in, K]`.
            let (fan_in, fan_out) = fans(&shape);
            let numel: usize = shape.iter().product();
            let out = shapes.get(1).map_or(shape[0], |b| b.1[0]);
            let bound = 1.0 / (fan_in as f64).sqrt();
            let (w, b): (Vec<f64>, Vec<f64>) = match init {
                Init::Pytorch { .. } => (
                    (0..numel)
                        .map(|_| rng.uniform_range(-bound, bound))
                        .collect(),
                    (0..out).map(|_| rng.uniform_range(-bound, bound)).collect(),
                ),
                Init::Kaiming { .. } => {
                    let std = (2.0 / fan_in as f64).sqrt();
                    (
                        (0..numel).map(|_| std * rng.normal()).collect(),
                        vec![0.0; out],
                    )
                }
                Init::Xavier { .. } => {
                    let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
                    (
                        (0..numel).map(|_| rng.uniform_range(-a, a)).collect(),
                        vec![0.0; out],
                    )
                }
                Init::Normal { std, .. } => (
                    (0..numel).map(|_| std * rng.normal()).collect(),
                    vec![0.0; out],
                ),
            };
            push("weight", shape, w, true);
            if has_bias {
                push("bias", vec![out], b, true);
            }
        }
        // A norm layer's scale and shift start at 1 and 0 (none without
        // `affine`); a BatchNorm's running statistics at 0 and 1.
        match &l.layer {
            Layer::BatchNorm1d {
                features: c,
                affine,
                ..
            }
            | Layer::BatchNorm2d {
                channels: c,
                affine,
                ..
            } => {
                if *affine {
                    push("weight", vec![*c], vec![1.0; *c], true);
                    push("bias", vec![*c], vec![0.0; *c], true);
                }
                push("running_mean", vec![*c], vec![0.0; *c], false);
                push("running_var", vec![*c], vec![1.0; *c], false);
                push("num_batches_tracked", vec![], vec![0.0], false);
            }
            Layer::GroupNorm {
                channels: c,
                affine: true,
                ..
            } => {
                push("weight", vec![*c], vec![1.0; *c], true);
                push("bias", vec![*c], vec![0.0; *c], true);
            }
            Layer::LayerNorm {
                shape,
                affine: true,
                ..
            } => {
                let d: usize = shape.iter().product();
                push("weight", shape.clone(), vec![1.0; d], true);
                push("bias", shape.clone(), vec![0.0; d], true);
            }
            _ => {}
        }
    }
    HostParams { tensors }
}

/// Reads weights with PyTorch `state_dict` names from a safetensors file,
/// in the order [`init_params`] produces (the checker has already matched
/// names and shapes). Float tensors of any width are converted to f64.
/// An `.onnx` file's initializers are read by [`crate::onnx::load_params`].
pub fn load_params(spec: &ModelSpec, path: &std::path::Path) -> Result<HostParams, String> {
    if crate::onnx::is_onnx(path) {
        return crate::onnx::load_params(spec, path);
    }
    // Our reader's layout check names the tensors at fault where the
    // safetensors crate's error would not.
    crate::data::safetensors_keys(path).map_err(|e| e.to_string())?;
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("`{}` is not a safetensors file: {e}", path.display()))?;
    let mut params = init_params(spec, &spec.init);
    for t in &mut params.tensors {
        let view = match st.tensor(&t.key) {
            Ok(v) => v,
            // Like PyTorch's loader: checkpoints written before BatchNorm
            // counted its batches start the count at zero.
            Err(_) if t.key.ends_with(".num_batches_tracked") => continue,
            Err(_) => return Err(format!("`{}` has no tensor `{}`", path.display(), t.key)),
        };
        if view.shape() != t.shape.as_slice() {
            return Err(format!(
                "`{}`: tensor `{}` has shape {:?}, expected {:?}",
                path.display(),
                t.key,
                view.shape(),
                t.shape
            ));
        }
        t.data = to_f64(view.dtype(), view.data()).ok_or_else(|| {
            format!(
                "`{}`: tensor `{}` is not a float tensor",
                path.display(),
                t.key
            )
        })?;
        if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "`{}`: tensor `{}` holds {} at flat index {i}; weights must be finite",
                path.display(),
                t.key,
                t.data[i]
            ));
        }
    }
    Ok(params)
}

fn to_f64(dtype: safetensors::Dtype, bytes: &[u8]) -> Option<Vec<f64>> {
    use safetensors::Dtype as D;
    Some(match dtype {
        D::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        D::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        D::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        _ => return None,
    })
}
