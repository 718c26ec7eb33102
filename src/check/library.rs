//! Where blocks come from: the checked file, the files it imports
//! (`import "blocks.ngx"`, relative to the importing file) and the model
//! library shipped in the binary (`src/models/*.ngx`). The checked file
//! shadows its imports, which shadow the library.

use super::block::{Def, Source, SrcId};
use super::Checker;
use crate::diag::{line_col, render, Diagnostic, ErrorKind};
use crate::syntax::{self, File, Span, StmtKind};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// The model library: (file name, text).
const LIBRARY_SOURCES: [(&str, &str); 6] = [
    ("resnet.ngx", include_str!("../models/resnet.ngx")),
    ("vgg.ngx", include_str!("../models/vgg.ngx")),
    ("wide_resnet.ngx", include_str!("../models/wide_resnet.ngx")),
    ("lenet.ngx", include_str!("../models/lenet.ngx")),
    ("autoencoder.ngx", include_str!("../models/autoencoder.ngx")),
    ("mobilenet.ngx", include_str!("../models/mobilenet.ngx")),
];

pub struct LibFile {
    pub name: String,
    pub text: &'static str,
    pub ast: File,
}

/// The library, parsed once. It is part of the program: a syntax error in
/// it is a bug (the tests parse and check every model).
pub static LIBRARY: LazyLock<Vec<LibFile>> = LazyLock::new(|| {
    LIBRARY_SOURCES
        .iter()
        .map(|(name, text)| {
            let ast = syntax::parse(text)
                .unwrap_or_else(|d| panic!("model library {name}:\n{}", render(name, text, &d)));
            LibFile {
                name: format!("<library>/{name}"),
                text,
                ast,
            }
        })
        .collect()
});

/// A library model: a block or def with an `input` parameter.
#[derive(Clone, Debug)]
pub struct LibraryModel {
    pub name: String,
    /// `(name, default as written)`.
    pub params: Vec<(String, Option<String>)>,
    /// The `//` comment above the block.
    pub doc: String,
}

/// The models of the library, in file order.
pub fn library_models() -> Vec<LibraryModel> {
    let mut out = Vec::new();
    for f in LIBRARY.iter() {
        for st in &f.ast.stmts {
            let (StmtKind::Block { name, params, .. } | StmtKind::Def { name, params, .. }) =
                &st.kind
            else {
                continue;
            };
            if !params.iter().any(|p| p.name.name == "input") {
                continue;
            }
            let text = |s: Span| f.text[s.start..s.end].to_string();
            let before = &f.text[..st.span.start];
            let doc: Vec<&str> = before
                .lines()
                .rev()
                .take_while(|l| l.trim_start().starts_with("//"))
                .map(|l| l.trim_start().trim_start_matches('/').trim())
                .collect();
            out.push(LibraryModel {
                name: name.name.clone(),
                params: params
                    .iter()
                    .map(|p| {
                        (
                            p.name.name.clone(),
                            p.default.as_ref().map(|d| text(d.span)),
                        )
                    })
                    .collect(),
                doc: doc.into_iter().rev().collect::<Vec<_>>().join(" "),
            });
        }
    }
    out
}

/// A file read through `import`.
pub struct Imported {
    pub name: String,
    pub text: String,
    pub ast: File,
}

/// Reads the imports of `file` (and theirs), each once. Errors are located
/// at the `import` of the checked file that leads to them.
pub fn load_imports(file: &File, base: &Path) -> (Vec<Imported>, Vec<Diagnostic>) {
    let mut out: Vec<Imported> = Vec::new();
    let mut diags = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    for st in &file.stmts {
        if let StmtKind::Import { path } = &st.kind {
            let full = base.join(&path.value);
            load_one(
                &full,
                &path.value,
                path.span,
                &mut seen,
                &mut out,
                &mut diags,
                0,
            );
        }
    }
    (out, diags)
}

fn load_one(
    full: &Path,
    shown: &str,
    at: Span,
    seen: &mut Vec<PathBuf>,
    out: &mut Vec<Imported>,
    diags: &mut Vec<Diagnostic>,
    depth: usize,
) {
    let key = full.canonicalize().unwrap_or_else(|_| full.to_path_buf());
    if seen.contains(&key) || depth > 16 {
        return;
    }
    seen.push(key);
    // An imported library is a file on disk: a FIFO or a device would block
    // or stream forever.
    let special = std::fs::metadata(full).is_ok_and(|m| !m.is_file() && !m.is_dir());
    let read = if special {
        Err("not a regular file".to_string())
    } else {
        crate::diag::read_source(full)
    };
    let text = match read {
        Ok(t) => t,
        Err(e) => {
            diags.push(Diagnostic::new(
                ErrorKind::File {
                    path: shown.into(),
                    reason: super::data::file_reason(&e),
                },
                at,
                "imported here",
            ));
            return;
        }
    };
    let ast = match syntax::parse(&text) {
        Ok(a) => a,
        Err(errs) => {
            for d in errs {
                let (l, c) = line_col(&text, d.span.start);
                let mut m = Diagnostic::new(d.kind, at, format!("in `{shown}`"));
                m.hints.push(format!("at {shown}:{l}:{c}: {}", d.label));
                m.hints.extend(d.hints);
                diags.push(m);
            }
            return;
        }
    };
    // An imported file contributes blocks and defs only.
    for st in &ast.stmts {
        match &st.kind {
            StmtKind::Block { .. } | StmtKind::Def { .. } => {}
            StmtKind::Import { path } => {
                let dir = full.parent().unwrap_or(Path::new("."));
                load_one(
                    &dir.join(&path.value),
                    &path.value,
                    at,
                    seen,
                    out,
                    diags,
                    depth + 1,
                );
            }
            _ => {
                let (l, c) = line_col(&text, st.span.start);
                diags.push(
                    Diagnostic::new(
                        ErrorKind::Invalid {
                            message: format!("`{shown}` is imported, so it may only hold blocks, defs and imports"),
                        },
                        at,
                        "imported here",
                    )
                    .hint(format!("{shown}:{l}:{c} is another statement")),
                );
            }
        }
    }
    out.push(Imported {
        name: shown.to_string(),
        text,
        ast,
    });
}

impl<'a> Checker<'a> {
    /// Makes the blocks and defs of the checked file, its imports and the
    /// library visible, in that order of precedence.
    pub(super) fn register_defs(&mut self, file: &'a File, imports: &'a [Imported]) {
        self.sources.push(Source {
            name: String::new(),
            text: self.src,
        });
        self.register_file(file, 0, true);
        for imp in imports {
            let id = self.sources.len();
            self.sources.push(Source {
                name: imp.name.clone(),
                text: &imp.text,
            });
            self.register_file(&imp.ast, id, false);
        }
        for lib in LIBRARY.iter() {
            let id = self.sources.len();
            self.sources.push(Source {
                name: lib.name.clone(),
                text: lib.text,
            });
            self.register_file(&lib.ast, id, false);
        }
    }

    fn register_file(&mut self, file: &'a File, src: SrcId, report: bool) {
        let mut mine: std::collections::BTreeMap<&str, Span> = Default::default();
        for st in &file.stmts {
            let def = match &st.kind {
                StmtKind::Block {
                    name,
                    params,
                    members,
                } => Def::Block {
                    name,
                    params,
                    members,
                    src,
                },
                StmtKind::Def {
                    name,
                    params,
                    value,
                } => Def::Value {
                    name,
                    params,
                    value,
                    src,
                },
                _ => continue,
            };
            let name = def.name();
            // A layer constructor is looked up before the defs: a block of
            // the same name would never be used.
            if report && super::ctor::ctor_params(&name.name).is_some() {
                self.error(
                    Diagnostic::new(
                        ErrorKind::Invalid {
                            message: format!(
                                "`{}` is a built-in layer: a block or def of that name would never be used",
                                name.name
                            ),
                        },
                        name.span,
                        "the name of a built-in layer",
                    )
                    .hint(format!("rename it, e.g. `my_{}`", name.name)),
                );
                continue;
            }
            if let Some(first) = mine.insert(&name.name, name.span) {
                if report {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Redefined {
                                name: name.name.clone(),
                            },
                            name.span,
                            "defined again here",
                        )
                        .related(first, "first defined here"),
                    );
                }
                continue;
            }
            self.defs.entry(name.name.clone()).or_insert(def);
        }
    }
}
