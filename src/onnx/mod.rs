//! Networks exported from PyTorch as ONNX: `model net = onnx("net.onnx")`.
//!
//! [`import`] reads the file (the protobuf is decoded by `prost` against
//! the schema subset in [`proto`]) and maps its graph onto nngeo's graph of
//! layers, the same `LayerSpec`s a model written in `.ngx` gives, so every
//! representation, training mode and estimate works on it. Parameterised
//! layers are named after their weight's initializer, which PyTorch names
//! by `state_dict` key (`layer2.0.downsample.0.weight` gives the layer
//! `layer2.0.downsample.0`); [`load_params`] reads their values from the
//! initializers.

mod error;
mod import;
mod layers;
mod ops;
mod order;
pub mod proto;
mod read;

pub use error::{sorted_ops, At, OnnxError, SUPPORTED_OPS};
pub use import::{import, scope_path, Imported, Source};

use crate::geometry::init::init_params;
use crate::geometry::net::HostParams;
use crate::plan::ModelSpec;
use std::path::Path;

/// Whether a weights file is an ONNX model (by its extension).
pub fn is_onnx(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// The parameters and buffers of `spec` from the initializers of the ONNX
/// file it was imported from, in the order [`init_params`] produces.
/// Counters the file does not hold (`num_batches_tracked`) start at zero.
pub fn load_params(spec: &ModelSpec, path: &Path) -> Result<HostParams, String> {
    let shown = || path.display().to_string();
    let file = read::read_file(path).map_err(|e| format!("`{}`: {e}", shown()))?;
    let imported = import::import_file(&file).map_err(|e| format!("`{}`: {e}", shown()))?;
    let mut params = init_params(spec, &spec.init);
    for t in &mut params.tensors {
        let Some(src) = imported.sources.get(&t.key) else {
            if t.trainable {
                return Err(format!(
                    "`{}` gives no tensor `{}` (the model does not match this file)",
                    shown(),
                    t.key
                ));
            }
            continue;
        };
        let init = &file.inits[&src.data];
        if init.numel() != t.shape.iter().product::<usize>() {
            return Err(format!(
                "`{}`: initializer `{}` has shape {:?}, expected {:?}",
                shown(),
                src.data,
                init.dims,
                t.shape
            ));
        }
        let v = init.floats();
        t.data = if src.transpose {
            let (r, c) = (init.dims[0], init.dims[1]);
            (0..r * c).map(|k| v[(k % r) * c + k / r]).collect()
        } else {
            v
        };
    }
    Ok(params)
}

/// The model in an ONNX file as a `ModelSpec` whose weights are the
/// file's initializers (`weights` = `path` as given), for callers outside
/// the language (tests, tools). Warnings are dropped.
pub fn model_spec(path: &Path) -> Result<ModelSpec, OnnxError> {
    let m = import(path)?;
    Ok(ModelSpec {
        params: m.layers.iter().map(|l| l.params).sum(),
        input: m.input,
        output: m.output,
        layers: m.layers,
        init: crate::plan::Init::Pytorch { seed: 0 },
        weights: Some(path.display().to_string()),
        param_order: m.param_order,
    })
}
