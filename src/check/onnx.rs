//! `model net = onnx("net.onnx")`: a network exported from PyTorch, its
//! layers and shapes from the ONNX graph (see [`crate::onnx`]), its
//! weights from the file's initializers unless `weights = ...` or
//! `init = ...` says otherwise. Any model's `weights = "x.onnx"` reads a
//! PyTorch export's parameters by `state_dict` key.

use super::Checker;
use crate::diag::{Diagnostic, ErrorKind};
use crate::plan::ModelSpec;
use crate::syntax::{Arg, Ident, Span};

impl<'a> Checker<'a> {
    /// The `state_dict` tensors an ONNX file gives (`weights = "x.onnx"`),
    /// as `(key, shape, dtype)` like a safetensors header's entries.
    pub(super) fn onnx_state_keys(
        &mut self,
        full: &std::path::Path,
        path: &str,
        span: Span,
    ) -> Option<Vec<(String, Vec<usize>, String)>> {
        let m = self.import_onnx(full, path, span)?;
        Some(
            m.layers
                .iter()
                .filter(|l| l.params > 0)
                .flat_map(|l| l.layer.state_tensors(&l.name))
                .filter(|(k, _, _)| m.sources.contains_key(k))
                .map(|(k, s, _)| (k, s, "onnx".to_string()))
                .collect(),
        )
    }

    /// Imports `full` (written `path` at `span`), reporting why not.
    fn import_onnx(
        &mut self,
        full: &std::path::Path,
        path: &str,
        span: Span,
    ) -> Option<crate::onnx::Imported> {
        match crate::onnx::import(full) {
            Ok(m) => Some(m),
            Err(error) => {
                let hint = error.hint();
                let label = match &error {
                    crate::onnx::OnnxError::Read { .. } => "cannot be read",
                    _ => "cannot be imported",
                };
                let path = path.to_string();
                self.error(
                    Diagnostic::new(ErrorKind::Onnx { path, error }, span, label).hint_opt(hint),
                );
                None
            }
        }
    }

    pub(super) fn onnx_model(
        &mut self,
        callee: &Ident,
        span: Span,
        args: &'a [Arg],
    ) -> Option<ModelSpec> {
        let call = self.bind(callee, span, args, &["path", "init", "weights"])?;
        let pe = self.req(&call, "path")?;
        let path = self.string(pe, "path")?;
        let full = if std::path::Path::new(&path).is_absolute() {
            std::path::PathBuf::from(&path)
        } else {
            self.opts.base_dir.join(&path)
        };
        let imported = self.import_onnx(&full, &path, pe.span)?;
        for w in &imported.warnings {
            self.warn(Diagnostic::new(
                ErrorKind::Suspicious {
                    message: format!("`{path}`: {w}"),
                },
                pe.span,
                "imported here",
            ));
        }
        let mut spec = self.finish_model(
            &call,
            imported.input,
            imported.output,
            imported.layers,
            imported.param_order,
        )?;
        // The file's own weights, unless the model is initialised afresh or
        // given another `state_dict`.
        if call.get("weights").is_none() && call.get("init").is_none() {
            spec.weights = Some(path);
        }
        Some(spec)
    }
}
