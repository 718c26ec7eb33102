//! `model net = onnx("net.onnx")`: a network exported from PyTorch, its
//! layers and shapes from the ONNX graph (see [`crate::onnx`]), its
//! weights from the file's initializers unless `weights = ...` or
//! `init = ...` says otherwise.

use super::Checker;
use crate::diag::{Diagnostic, ErrorKind};
use crate::plan::ModelSpec;
use crate::syntax::{Arg, Ident, Span};

impl<'a> Checker<'a> {
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
        let imported = match crate::onnx::import(&full) {
            Ok(m) => m,
            Err(error) => {
                let hint = error.hint();
                let label = match &error {
                    crate::onnx::OnnxError::Read { .. } => "cannot be read",
                    _ => "cannot be imported",
                };
                self.error(
                    Diagnostic::new(ErrorKind::Onnx { path, error }, pe.span, label).hint_opt(hint),
                );
                return None;
            }
        };
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
