//! Saved representations: `save F to "fisher.safetensors"` and
//! `fim("fisher.safetensors", model = net)`, whose layers are checked
//! against the model's when the file is read here (its metadata only).

use super::env::{ReprV, Val};
use super::Checker;
use crate::diag::{Diagnostic, ErrorKind};
use crate::geometry::repr_io;
use crate::plan::{Object, Op, ReprOptions, Structure, Task};
use crate::syntax::{Arg, Ident, Span, StrLit};

/// The structure a saved file names (a mix of blocks is estimated as
/// BlockDiag, which bounds it).
fn structure_named(name: &str) -> Structure {
    match name {
        "Dense" => Structure::Dense,
        "Diag" => Structure::Diag,
        "KFAC" => Structure::Kfac,
        "EKFAC" => Structure::Ekfac {
            refit: true,
            initial_basis: false,
        },
        "LowRank" => Structure::LowRank { rank: None },
        "QuasiDiag" => Structure::QuasiDiag,
        _ => Structure::BlockDiag,
    }
}

impl<'a> Checker<'a> {
    /// `save F to "path"` for a representation `F`; `None` when `name`
    /// is not one (then it is a model).
    pub(super) fn save_repr(&mut self, name: &Ident, path: &StrLit, span: Span) -> Option<()> {
        let Some(Val::Repr(r)) = self.lookup_val(&name.name) else {
            return None;
        };
        let why = match (r.object, &r.structure) {
            (Object::Ntk | Object::Hessian, _) => Some("only Fisher representations are saved"),
            (_, Structure::Implicit) => Some("Fim(Implicit) is never stored: save `dense(M)`"),
            _ => None,
        };
        if let Some(why) = why {
            self.error(Diagnostic::new(
                ErrorKind::Invalid {
                    message: format!("cannot save `{}`", name.name),
                },
                name.span,
                why,
            ));
        } else if !path.value.ends_with(".safetensors") {
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: "representations are saved as safetensors".into(),
                    },
                    path.span,
                    "not a `.safetensors` path",
                )
                .hint("use a path ending in `.safetensors`"),
            );
        } else {
            self.emit(
                Op::Save {
                    model: r.step,
                    path: path.value.clone(),
                },
                span,
            );
        }
        Some(())
    }

    /// `fim("fisher.safetensors", model = net)`: a saved Fisher
    /// representation on `net`'s layers.
    pub(super) fn load_repr(
        &mut self,
        callee: &'a Ident,
        args: &'a [Arg],
        span: Span,
        name: &str,
    ) -> Option<ReprV> {
        let c = self.bind(callee, span, args, &["path", "model"])?;
        let pe = self.req(&c, "path");
        let me = self.req(&c, "model");
        let (pe, me) = (pe?, me?);
        let file = self.string(pe, "path")?;
        let m = self.model_expr(me, "")?;
        let h = match repr_io::read_header(&self.path(&file)) {
            Ok(h) => h,
            Err(e) => {
                self.file_error(pe, &file, e);
                return None;
            }
        };
        let params: Vec<(String, u64)> = m
            .spec
            .param_layers()
            .map(|l| (l.name.clone(), l.params))
            .collect();
        for l in &h.layers {
            if !params.contains(&(l.name.clone(), l.numel as u64)) {
                let have = params
                    .iter()
                    .map(|(n, p)| format!("{n} ({p})"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.error(
                    Diagnostic::new(
                        ErrorKind::Mismatch {
                            what: format!("`{file}` does not fit {}", m.shown()),
                            detail: format!(
                                "the file's layer `{}` has {} parameters; the model has {have}",
                                l.name, l.numel
                            ),
                        },
                        me.span,
                        "saved for another model",
                    )
                    .related(pe.span, "this file"),
                );
                return None;
            }
        }
        let layers = if h.layers.len() == params.len() {
            Vec::new()
        } else {
            h.layers.iter().map(|l| l.name.clone()).collect()
        };
        let options = ReprOptions {
            fisher: None,
            task: Task::Classification,
            layers,
            centered: false,
            examples: h.n,
            outputs: m.spec.outputs(),
            shards: None,
            part: None,
            file: Some(file),
            hessian: None,
        };
        let structure = structure_named(&h.structure);
        let name = self.name_or_anon(name);
        let step = self.emit(
            Op::Repr {
                name,
                object: Object::Fim,
                structure: structure.clone(),
                model: m.step,
                data: m.step,
                options: options.clone(),
            },
            span,
        );
        Some(ReprV {
            step,
            object: Object::Fim,
            structure,
            data: m.step,
            model: m,
            options,
        })
    }
}
