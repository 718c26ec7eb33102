//! Datasets: `data` statements and dataset expressions; the sources are
//! checked in `sources.rs` (file headers read there, so that a missing
//! file, a wrong key or a bad column is reported before anything runs) and
//! the `|>` operations in `transforms.rs`.

use super::args::Call;
use super::env::{Binding, DataV, Val};
use super::Checker;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::{Op, Transform};
use crate::syntax::{Expr, ExprKind, Ident, Span};
use std::path::PathBuf;

pub const SOURCES: [&str; 10] = [
    "digits",
    "diabetes",
    "idx",
    "cifar10",
    "mnist",
    "csv",
    "tensors",
    "blobs",
    "teacher",
    "noisy_linear",
];
pub const TRANSFORMS: [&str; 11] = [
    "autoencode",
    "drop",
    "only",
    "permute",
    "take",
    "split",
    "normalize",
    "scale",
    "label_noise",
    "onehot",
    "subset",
];

impl<'a> Checker<'a> {
    pub(super) fn data_stmt(&mut self, names: &'a [Ident], value: &'a Expr, span: Span) {
        let before = self.diags.len();
        self.data_stmt_inner(names, value, span);
        if self.diags.len() > before {
            for n in names {
                if self.scopes.local(&n.name).is_none() {
                    self.definition_failed(&n.name);
                }
            }
        }
    }

    fn data_stmt_inner(&mut self, names: &'a [Ident], value: &'a Expr, span: Span) {
        for n in names {
            if !self.define_check(&n.name, n.span) {
                return;
            }
        }
        let split_stage = match &value.kind {
            ExprKind::Pipe { input, stage } => match &stage.kind {
                ExprKind::Call { callee, args } if callee.name == "split" => {
                    Some((input.as_ref(), callee, args.as_slice(), stage.span))
                }
                _ => None,
            },
            _ => None,
        };
        match (names.len(), split_stage) {
            (2, Some((input, callee, args, sspan))) => {
                let Some(src) = self.data_expr(input, "") else {
                    return;
                };
                let Some(call) = self.bind(callee, sspan, args, &["fraction", "seed"]) else {
                    return;
                };
                let Some(fe) = self.req(&call, "fraction") else {
                    return;
                };
                let Some(fraction) = self.float_in(fe, "fraction", 0.0, 1.0) else {
                    return;
                };
                let Some(seed) = self.seed(&call) else {
                    return;
                };
                let first_n = ((src.info.n as f64) * fraction).round() as usize;
                if first_n == 0 || first_n == src.info.n {
                    self.error(Diagnostic::new(
                        ErrorKind::OutOfRange {
                            name: "fraction".into(),
                            value: super::args::fmt_num(fraction),
                            range: format!("leaves an empty part of {} examples", src.info.n),
                        },
                        fe.span,
                        "one side of the split would be empty",
                    ));
                    return;
                }
                for (i, n) in names.iter().enumerate() {
                    let mut info = src.info.clone();
                    info.n = if i == 0 { first_n } else { src.info.n - first_n };
                    let step = self.emit(
                        Op::Transform {
                            name: n.name.clone(),
                            input: src.step,
                            transform: Transform::Split {
                                fraction,
                                seed,
                                first: i == 0,
                            },
                            info: info.clone(),
                        },
                        span,
                    );
                    let v = DataV {
                        step,
                        name: n.name.clone(),
                        info,
                        noisy: src.noisy,
                        flipped: None,
                    };
                    self.scopes
                        .insert(n.name.clone(), Binding::Val(Val::Data(v), n.span));
                }
            }
            (1, None) => {
                if let Some(v) = self.data_expr(value, &names[0].name) {
                    self.scopes.insert(
                        names[0].name.clone(),
                        Binding::Val(Val::Data(v), names[0].span),
                    );
                }
            }
            (1, Some((_, _, _, sspan))) => self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: "`split` gives two datasets".into(),
                    },
                    sspan,
                    "two parts, one name",
                )
                .hint(format!(
                    "name both parts: `data {0}_train, {0}_test = ... |> split(0.8)`",
                    names[0].name
                )),
            ),
            (n, Some((_, _, _, sspan))) => self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: format!("`split` gives two datasets, not {n}"),
                    },
                    sspan,
                    format!("two parts, {n} names"),
                )
                .hint("split twice for three parts: `data a, rest = d |> split(0.6)` then `data b, c = rest |> split(0.5)`"),
            ),
            (_, None) => self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: format!("{} names but one dataset", names.len()),
                    },
                    names[1].span.to(names[names.len() - 1].span),
                    "only `split` gives two datasets",
                )
                .hint("end the pipeline with `|> split(0.8, seed = 0)` or keep one name"),
            ),
        }
    }

    /// Checks a dataset expression; `name` names its last step.
    pub(super) fn data_expr(&mut self, e: &'a Expr, name: &str) -> Option<DataV> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Ident(n) => match self.lookup_val(n) {
                Some(Val::Data(v)) => Some(v),
                Some(other) => {
                    self.error(Diagnostic::new(
                        ErrorKind::WrongKind {
                            name: n.clone(),
                            expected: "dataset".into(),
                            found: other.kind().into(),
                        },
                        d.span,
                        format!("this is a {}", other.kind()),
                    ));
                    None
                }
                None if n == "diabetes" => self.data_source(d, n, &[], name),
                None => {
                    let names = self
                        .scopes
                        .names_where(|b| matches!(b, Binding::Val(Val::Data(_), _)));
                    let mut diag = Diagnostic::new(
                        ErrorKind::Undefined {
                            what: "dataset".into(),
                            name: n.clone(),
                        },
                        d.span,
                        "no dataset of this name",
                    )
                    .hint_opt(did_you_mean(n, names.iter().map(|s| s.as_str())));
                    if SOURCES.contains(&n.as_str()) {
                        diag =
                            diag.hint(format!("`{n}` is a data source: call it, e.g. `{n}(...)`"));
                    } else if !names.is_empty() {
                        diag = diag.hint(format!("datasets defined so far: {}", names.join(", ")));
                    } else {
                        diag = diag.hint("define it first: `data NAME = digits(split = train)`");
                    }
                    self.error(diag);
                    None
                }
            },
            ExprKind::Call { callee, args } => self.data_source(d, &callee.name, args, name),
            ExprKind::Pipe { input, stage } => {
                let src = self.data_expr(input, "")?;
                self.transform(src, stage, name)
            }
            _ => {
                let found = self.describe(d);
                let mut diag = Diagnostic::new(
                    ErrorKind::TypeMismatch {
                        expected: "a dataset".into(),
                        found,
                    },
                    d.span,
                    "not a dataset",
                );
                if matches!(d.kind, ExprKind::Sharded { .. }) {
                    diag = diag.hint("`sharded(k)` splits the examples of what is computed on them: `Fim(KFAC) of net on train sharded(8)`, `grad(net, train sharded(8))`");
                }
                self.error(diag);
                None
            }
        }
    }

    pub(super) fn path(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            self.opts.base_dir.join(p)
        }
    }

    pub(super) fn file_error(&mut self, e: &'a Expr, path: &str, err: impl std::fmt::Display) {
        self.error(
            Diagnostic::new(
                ErrorKind::File {
                    path: path.into(),
                    reason: file_reason(&err.to_string()),
                },
                e.span,
                "this file",
            )
            .hint("relative paths start at the directory of the .ngx file"),
        );
    }

    pub(super) fn task_classification(&mut self, call: &Call<'a>, default: bool) -> Option<bool> {
        match call.get("task") {
            None => Some(default),
            Some(t) => self
                .symbol(t, "task", &["classification", "regression"])
                .map(|s| s == "classification"),
        }
    }

    /// The stated class count (`classes = N`, for classification data
    /// only): `Some(None)` when absent, `None` after an error.
    pub(super) fn declared_classes(
        &mut self,
        call: &Call<'a>,
        classification: bool,
    ) -> Option<Option<usize>> {
        let Some(c) = call.get("classes") else {
            return Some(None);
        };
        if !classification {
            self.error(Diagnostic::new(
                ErrorKind::Invalid {
                    message: "`classes` is for classification data".into(),
                },
                c.span,
                "this dataset is a regression",
            ));
            return None;
        }
        self.int(c, "classes", 2, 1 << 20).map(|k| Some(k as usize))
    }
}

pub(super) fn callee_span(e: &Expr) -> Span {
    match &e.kind {
        ExprKind::Call { callee, .. } => callee.span,
        _ => e.span,
    }
}

pub fn fmt_shape(s: &[usize]) -> String {
    let inner: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", inner.join(", "))
}

/// The reason a file could not be read, without a leading "cannot read
/// `path`: " that the readers add (the message already names the path).
pub fn file_reason(err: &str) -> String {
    match err.strip_prefix("cannot read `") {
        Some(rest) => match rest.find("`: ") {
            Some(i) => rest[i + 3..].to_string(),
            None => err.to_string(),
        },
        None => err.to_string(),
    }
}

/// The first folder `dir/sub` (in order) that holds every one of `files`
/// (each possibly gzipped, `NAME.gz`), with the paths found.
pub(super) fn find_standard(
    dirs: &[PathBuf],
    subdirs: &[&str],
    files: &[String],
) -> Option<Vec<PathBuf>> {
    dirs.iter()
        .flat_map(|d| subdirs.iter().map(move |s| d.join(s)))
        .find_map(|dir| {
            files
                .iter()
                .map(|f| {
                    let plain = dir.join(f);
                    let gz = dir.join(format!("{f}.gz"));
                    if plain.is_file() {
                        Some(plain)
                    } else if gz.is_file() {
                        Some(gz)
                    } else {
                        None
                    }
                })
                .collect()
        })
}
