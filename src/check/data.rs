//! Datasets: sources (bundled, files, synthetic) and `|>` operations. File
//! headers are read here so that a missing file, a wrong key or a bad column
//! is reported before anything runs.

use super::args::Call;
use super::env::{Binding, DataV, Val};
use super::Checker;
use crate::data::{self, ColumnRef, CsvSpec, DataInfo, DigitsSplit};
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::{DataSource, Op, Transform};
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

    fn task_classification(&mut self, call: &Call<'a>, default: bool) -> Option<bool> {
        match call.get("task") {
            None => Some(default),
            Some(t) => self
                .symbol(t, "task", &["classification", "regression"])
                .map(|s| s == "classification"),
        }
    }

    /// The stated class count (`classes = N`, for classification data
    /// only): `Some(None)` when absent, `None` after an error.
    fn declared_classes(&mut self, call: &Call<'a>, classification: bool) -> Option<Option<usize>> {
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

    fn data_source(
        &mut self,
        e: &'a Expr,
        func: &str,
        args: &'a [crate::syntax::Arg],
        name: &str,
    ) -> Option<DataV> {
        let callee = Ident {
            name: func.to_string(),
            span: e.span,
        };
        let (source, info) = match func {
            "digits" => {
                let call = self.bind(&callee, e.span, args, &["split"])?;
                let split = match call.get("split") {
                    Some(s) => self.symbol(s, "split", &["train", "test"])?,
                    None => "train".into(),
                };
                let info = data::digits_info(if split == "train" {
                    DigitsSplit::Train
                } else {
                    DigitsSplit::Test
                });
                (DataSource::Digits { split }, info)
            }
            "diabetes" => {
                self.bind(&callee, e.span, args, &[])?;
                (DataSource::Diabetes, data::diabetes_info())
            }
            "idx" => {
                let call = self.bind(&callee, e.span, args, &["images", "labels", "classes"])?;
                let ie = self.req(&call, "images");
                let le = self.req(&call, "labels");
                let (ie, le) = (ie?, le?);
                let images = self.string(ie, "images")?;
                let labels = self.string(le, "labels")?;
                let classes = self.declared_classes(&call, true)?;
                match data::idx_info(&self.path(&images), &self.path(&labels), classes) {
                    Ok(info) => (
                        DataSource::Idx {
                            images,
                            labels,
                            classes,
                        },
                        info,
                    ),
                    // Point at the file the error is about.
                    Err(err) if err.path() == Some(self.path(&labels).as_path()) => {
                        self.file_error(le, &labels, err);
                        return None;
                    }
                    Err(err) => {
                        self.file_error(ie, &images, err);
                        return None;
                    }
                }
            }
            // A standard dataset by name, found in the data folders.
            "cifar10" | "mnist"
                if func == "mnist"
                    || args
                        .iter()
                        .any(|a| a.name.as_ref().is_some_and(|n| n.name == "split")) =>
            {
                let call = self.bind(&callee, e.span, args, &["split", "dir"])?;
                let se = self.req(&call, "split")?;
                let split = self.symbol(se, "split", &["train", "test"])?;
                let dirs = match call.get("dir") {
                    Some(d) => {
                        let dir = self.string(d, "dir")?;
                        vec![self.path(&dir)]
                    }
                    None => self.opts.data_dirs.clone(),
                };
                let train = split == "train";
                let (subdirs, files): (&[&str], Vec<String>) = if func == "cifar10" {
                    (
                        &["cifar-10-batches-bin", "cifar10", ""],
                        if train {
                            (1..=5).map(|k| format!("data_batch_{k}.bin")).collect()
                        } else {
                            vec!["test_batch.bin".into()]
                        },
                    )
                } else {
                    let stem = if train { "train" } else { "t10k" };
                    (
                        &["mnist", "MNIST/raw", ""],
                        vec![
                            format!("{stem}-images-idx3-ubyte"),
                            format!("{stem}-labels-idx1-ubyte"),
                        ],
                    )
                };
                let Some(found) = find_standard(&dirs, subdirs, &files) else {
                    let looked: Vec<String> = dirs
                        .iter()
                        .flat_map(|d| subdirs.iter().map(move |s| d.join(s).display().to_string()))
                        .collect();
                    self.error(
                        Diagnostic::new(
                            ErrorKind::File {
                                path: files[0].clone(),
                                reason: if looked.is_empty() {
                                    "no data folder is configured".into()
                                } else {
                                    format!("not found in {}", looked.join(", "))
                                },
                            },
                            e.span,
                            format!("{func} {split} split"),
                        )
                        .hint("set NNGEO_DATA to the folder that holds the dataset, add it to `[data] paths` in nngeo.toml, or give `dir = \"...\"`"),
                    );
                    return None;
                };
                let strs: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
                let res = if func == "cifar10" {
                    data::cifar10_info(&found).map(|i| {
                        (
                            DataSource::Cifar10 {
                                batches: strs.clone(),
                            },
                            i,
                        )
                    })
                } else {
                    data::idx_info(&found[0], &found[1], Some(10)).map(|i| {
                        (
                            DataSource::Idx {
                                images: strs[0].clone(),
                                labels: strs[1].clone(),
                                classes: Some(10),
                            },
                            i,
                        )
                    })
                };
                match res {
                    Ok(x) => x,
                    Err(err) => {
                        self.file_error(se, &strs.join(", "), err);
                        return None;
                    }
                }
            }
            "cifar10" => {
                let call = self.bind_variadic(&callee, e.span, args, &["batches"])?;
                let mut exprs: Vec<&'a Expr> = call.rest.clone();
                let mut batches = Vec::new();
                if let Some(b) = call.get("batches") {
                    match &self.deref(b).kind {
                        ExprKind::List(items) => exprs.extend(items.iter().map(|i| &i.value)),
                        _ => exprs.push(b),
                    }
                }
                if exprs.is_empty() {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::MissingOption {
                                func: "cifar10".into(),
                                name: "batches".into(),
                            },
                            e.span,
                            "no batch files",
                        )
                        .hint("list the binary batches: `cifar10(\"data_batch_1.bin\", ...)`"),
                    );
                    return None;
                }
                for x in &exprs {
                    batches.push(self.string(x, "batches")?);
                }
                let paths: Vec<PathBuf> = batches.iter().map(|b| self.path(b)).collect();
                match data::cifar10_info(&paths) {
                    Ok(info) => (DataSource::Cifar10 { batches }, info),
                    Err(err) => {
                        self.file_error(exprs[0], &batches.join(", "), err);
                        return None;
                    }
                }
            }
            "csv" => {
                let call = self.bind(
                    &callee,
                    e.span,
                    args,
                    &[
                        "path",
                        "target",
                        "features",
                        "header",
                        "delimiter",
                        "task",
                        "classes",
                    ],
                )?;
                let pe = self.req(&call, "path");
                let te = self.req(&call, "target");
                let (pe, te) = (pe?, te?);
                let path = self.string(pe, "path")?;
                let target = self.column(te)?;
                let features = match call.get("features") {
                    Some(f) => {
                        let d = self.deref(f);
                        let items: Vec<&'a Expr> = match &d.kind {
                            ExprKind::List(items) => items.iter().map(|i| &i.value).collect(),
                            _ => vec![d],
                        };
                        let mut cols = Vec::new();
                        for it in items {
                            cols.push(self.column(it)?);
                        }
                        Some(cols)
                    }
                    None => None,
                };
                let header = match call.get("header") {
                    Some(h) => self.boolean(h, "header")?,
                    None => true,
                };
                let delimiter = match call.get("delimiter") {
                    Some(d) => {
                        let s = self.string(d, "delimiter")?;
                        let mut chars = s.chars();
                        match (chars.next(), chars.next()) {
                            (Some(c), None) => Some(c),
                            _ => {
                                self.error(Diagnostic::new(
                                    ErrorKind::Invalid {
                                        message: "a delimiter is one character".into(),
                                    },
                                    d.span,
                                    "use e.g. \",\" or \";\"",
                                ));
                                return None;
                            }
                        }
                    }
                    None => None,
                };
                let classification = self.task_classification(&call, true)?;
                let classes = self.declared_classes(&call, classification)?;
                let spec = CsvSpec {
                    path: self.path(&path),
                    target: target.clone(),
                    features: features.clone(),
                    header,
                    delimiter,
                    classification,
                    classes,
                };
                let col_name = |c: &ColumnRef| match c {
                    ColumnRef::Name(n) => n.clone(),
                    ColumnRef::Index(i) => format!("#{i}"),
                };
                match data::csv_info(&spec) {
                    Ok(info) => (
                        DataSource::Csv {
                            path,
                            target: col_name(&target),
                            features: features.map(|f| f.iter().map(col_name).collect()),
                            header,
                            delimiter,
                            classification,
                            classes,
                        },
                        info,
                    ),
                    Err(err) => {
                        self.file_error(pe, &path, err);
                        return None;
                    }
                }
            }
            "tensors" => {
                let call = self.bind(
                    &callee,
                    e.span,
                    args,
                    &["path", "x", "y", "task", "classes"],
                )?;
                let pe = self.req(&call, "path");
                let xe = self.req(&call, "x");
                let ye = self.req(&call, "y");
                let (pe, xe, ye) = (pe?, xe?, ye?);
                let path = self.string(pe, "path")?;
                let x = self.string(xe, "x")?;
                let y = self.string(ye, "y")?;
                let classification = self.task_classification(&call, true)?;
                let classes = self.declared_classes(&call, classification)?;
                match data::tensors_info(&self.path(&path), &x, &y, classification, classes) {
                    Ok(info) => (
                        DataSource::Tensors {
                            path,
                            x,
                            y,
                            classification,
                            classes,
                        },
                        info,
                    ),
                    Err(err) => {
                        self.file_error(pe, &path, err);
                        return None;
                    }
                }
            }
            "blobs" => {
                let call = self.bind(
                    &callee,
                    e.span,
                    args,
                    &["n", "classes", "dim", "std", "seed"],
                )?;
                let n = self.req(&call, "n").and_then(|x| self.count(x, "n"));
                let classes = self
                    .req(&call, "classes")
                    .and_then(|x| self.int(x, "classes", 2, 1 << 20));
                let dim = self.req(&call, "dim").and_then(|x| self.count(x, "dim"));
                let std = match call.get("std") {
                    Some(s) => self.positive(s, "std")?,
                    None => 1.0,
                };
                let seed = self.seed(&call)?;
                let (n, classes, dim) = (n?, classes? as usize, dim?);
                (
                    DataSource::Blobs {
                        n,
                        classes,
                        dim,
                        std,
                        seed,
                    },
                    DataInfo {
                        n,
                        shape: vec![dim],
                        classes: Some(classes),
                        target_dim: 1,
                    },
                )
            }
            "teacher" => {
                let call = self.bind(
                    &callee,
                    e.span,
                    args,
                    &["n", "dim", "out", "hidden", "noise", "seed"],
                )?;
                let n = self.req(&call, "n").and_then(|x| self.count(x, "n"));
                let dim = self.req(&call, "dim").and_then(|x| self.count(x, "dim"));
                let out = match call.get("out") {
                    Some(o) => self.count(o, "out")?,
                    None => 1,
                };
                let hidden = match call.get("hidden") {
                    Some(h) => self.int_list(h, "hidden", 1)?,
                    None => vec![32],
                };
                let noise = match call.get("noise") {
                    Some(x) => self.float_in(x, "noise", 0.0, f64::MAX)?,
                    None => 0.1,
                };
                let seed = self.seed(&call)?;
                let (n, dim) = (n?, dim?);
                (
                    DataSource::Teacher {
                        n,
                        dim,
                        out,
                        hidden,
                        noise,
                        seed,
                    },
                    DataInfo {
                        n,
                        shape: vec![dim],
                        classes: None,
                        target_dim: out,
                    },
                )
            }
            "noisy_linear" => {
                let call = self.bind(&callee, e.span, args, &["n", "dim", "noise", "seed"])?;
                let n = self.req(&call, "n").and_then(|x| self.count(x, "n"));
                let dim = self.req(&call, "dim").and_then(|x| self.count(x, "dim"));
                let noise = match call.get("noise") {
                    Some(x) => self.float_in(x, "noise", 0.0, f64::MAX)?,
                    None => 0.1,
                };
                let seed = self.seed(&call)?;
                let (n, dim) = (n?, dim?);
                (
                    DataSource::NoisyLinear {
                        n,
                        dim,
                        noise,
                        seed,
                    },
                    DataInfo {
                        n,
                        shape: vec![dim],
                        classes: None,
                        target_dim: 1,
                    },
                )
            }
            other => {
                let mut d = Diagnostic::new(
                    ErrorKind::Unknown {
                        what: "data source".into(),
                        name: other.into(),
                    },
                    callee_span(e),
                    "not a data source",
                )
                .hint_opt(did_you_mean(other, SOURCES));
                if TRANSFORMS.contains(&other) {
                    d = d.hint(format!(
                        "`{other}` transforms a dataset: `data |> {other}(...)`"
                    ));
                }
                self.error(d.hint(format!("sources: {}", SOURCES.join(", "))));
                return None;
            }
        };
        let name = if name.is_empty() {
            self.anon_name()
        } else {
            name.to_string()
        };
        let step = self.emit(
            Op::Data {
                name: name.clone(),
                source,
                info: info.clone(),
            },
            e.span,
        );
        Some(DataV {
            step,
            name,
            info,
            noisy: false,
            flipped: None,
        })
    }

    fn column(&mut self, e: &'a Expr) -> Option<ColumnRef> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Str(s) => Some(ColumnRef::Name(s.clone())),
            ExprKind::Int(i) if *i >= 0 => Some(ColumnRef::Index(*i as usize)),
            _ => {
                let found = self.describe(d);
                self.error(Diagnostic::new(
                    ErrorKind::TypeMismatch {
                        expected: "a column name (string) or index".into(),
                        found,
                    },
                    d.span,
                    "not a column",
                ));
                None
            }
        }
    }

    fn transform(&mut self, src: DataV, stage: &'a Expr, name: &str) -> Option<DataV> {
        let stage = self.deref(stage);
        let (callee, args): (Ident, &'a [crate::syntax::Arg]) = match &stage.kind {
            ExprKind::Ident(n) => (
                Ident {
                    name: n.clone(),
                    span: stage.span,
                },
                &[],
            ),
            ExprKind::Call { callee, args } => (callee.clone(), args.as_slice()),
            _ => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: "a data operation".into(),
                            found: self.describe(stage),
                        },
                        stage.span,
                        "cannot apply this to a dataset",
                    )
                    .hint(format!("operations: {}", TRANSFORMS.join(", "))),
                );
                return None;
            }
        };
        let mut info = src.info.clone();
        let mut noisy = src.noisy;
        let n_before = info.n;
        let transform = match callee.name.as_str() {
            "take" | "subset" => {
                let call = self.bind(&callee, stage.span, args, &["n", "mode", "seed"])?;
                let ne = self.req(&call, "n")?;
                let n = self.count(ne, "n")?;
                let mode = match call.get("mode") {
                    Some(m) => self.symbol(m, "take mode", &["first", "random", "per_class"])?,
                    None => "first".into(),
                };
                let seed = self.seed(&call)?;
                let total = if mode == "per_class" {
                    let Some(c) = info.classes else {
                        self.error(Diagnostic::new(
                            ErrorKind::Invalid {
                                message: "`per_class` needs a classification dataset".into(),
                            },
                            stage.span,
                            format!("{} has no classes", src.shown()),
                        ));
                        return None;
                    };
                    n * c
                } else {
                    n
                };
                if total > info.n {
                    self.error(Diagnostic::new(
                        ErrorKind::OutOfRange {
                            name: "n".into(),
                            value: total.to_string(),
                            range: format!("the dataset has {} examples", info.n),
                        },
                        ne.span,
                        format!("more examples than {} has ({})", src.shown(), info.n),
                    ));
                    return None;
                }
                info.n = total;
                match mode.as_str() {
                    "first" => Transform::TakeFirst { n },
                    "random" => Transform::TakeRandom { n, seed },
                    _ => Transform::TakePerClass { n, seed },
                }
            }
            "split" => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::Invalid {
                            message: "`split` must end a `data a, b = ...` statement".into(),
                        },
                        stage.span,
                        "gives two datasets",
                    )
                    .hint("write `data tr, te = d |> split(0.8, seed = 0)`"),
                );
                return None;
            }
            "normalize" => {
                let call = self.bind(&callee, stage.span, args, &["like", "per", "mean", "std"])?;
                let given = if let (Some(me), Some(se)) = (call.get("mean"), call.get("std")) {
                    let mean = self.number_list(me, "mean")?;
                    let std = self.number_list(se, "std")?;
                    let c = info.shape.first().copied().unwrap_or(1);
                    if mean.len() != c || std.len() != c || std.iter().any(|s| *s <= 0.0) {
                        self.error(Diagnostic::new(
                            ErrorKind::Invalid {
                                message: format!(
                                    "`normalize(mean, std)` needs {c} means and {c} positive stds, one per channel of {}",
                                    fmt_shape(&info.shape)
                                ),
                            },
                            stage.span,
                            format!("{} means, {} stds", mean.len(), std.len()),
                        ));
                        return None;
                    }
                    Some(Transform::ChannelNormalize { mean, std })
                } else {
                    None
                };
                let per_channel = match call.get("per") {
                    Some(p) => {
                        self.symbol(p, "normalisation", &["feature", "channel"])? == "channel"
                    }
                    None => false,
                };
                let like = match call.get("like") {
                    Some(l) => {
                        let l = self.data_expr(l, "")?;
                        if l.info.shape != info.shape {
                            self.error(Diagnostic::new(
                                ErrorKind::ShapeMismatch {
                                    layer: "normalize".into(),
                                    expected: fmt_shape(&info.shape),
                                    found: fmt_shape(&l.info.shape),
                                },
                                call.get("like").unwrap().span,
                                "statistics from data of another shape",
                            ));
                            return None;
                        }
                        Some(l.step)
                    }
                    None => None,
                };
                given.unwrap_or(Transform::Normalize { like, per_channel })
            }
            "scale" => {
                let call = self.bind(&callee, stage.span, args, &["factor"])?;
                let fe = self.req(&call, "factor")?;
                Transform::Scale {
                    factor: self.number(fe, "factor")?,
                }
            }
            "only" => {
                let call = self.bind(&callee, stage.span, args, &["group"])?;
                let ge = self.req(&call, "group")?;
                let group = self.symbol(ge, "group", &["flipped", "clean"])?;
                let Some(k) = src.flipped.filter(|_| src.noisy) else {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: format!(
                                    "`only({group})` needs the labels `label_noise` flipped, counted before the run"
                                ),
                            },
                            stage.span,
                            if src.noisy {
                                "examples were taken or dropped after the noise".to_string()
                            } else {
                                format!("{} has no label noise", src.shown())
                            },
                        )
                        .hint("apply it to the noisy dataset itself: `noisy |> only(flipped)`"),
                    );
                    return None;
                };
                let keep = if group == "flipped" { k } else { info.n - k };
                if keep == 0 {
                    self.error(Diagnostic::new(
                        ErrorKind::Invalid {
                            message: format!("`only({group})` keeps no example"),
                        },
                        stage.span,
                        format!("{k} of {} labels are flipped", info.n),
                    ));
                    return None;
                }
                info.n = keep;
                Transform::Only {
                    flipped: group == "flipped",
                }
            }
            "drop" => {
                let call = self.bind(&callee, stage.span, args, &["index"])?;
                let ie = self.req(&call, "index")?;
                if info.n < 2 {
                    self.error(Diagnostic::new(
                        ErrorKind::Invalid {
                            message: "dropping an example leaves no data".into(),
                        },
                        stage.span,
                        format!("{} has {} example(s)", src.shown(), info.n),
                    ));
                    return None;
                }
                let index = self.int(ie, "index", 0, info.n as i64 - 1)? as usize;
                info.n -= 1;
                Transform::Drop { index }
            }
            "permute" => {
                let call = self.bind(&callee, stage.span, args, &["seed"])?;
                Transform::Permute {
                    seed: self.seed(&call)?,
                }
            }
            "label_noise" => {
                let call = self.bind(&callee, stage.span, args, &["fraction", "seed"])?;
                let fe = self.req(&call, "fraction")?;
                let fraction = self.float_in(fe, "fraction", 0.0, 1.0)?;
                let seed = self.seed(&call)?;
                if info.classes.is_none() {
                    self.error(Diagnostic::new(
                        ErrorKind::Invalid {
                            message: "label noise needs class labels".into(),
                        },
                        stage.span,
                        format!("{} is a regression dataset", src.shown()),
                    ));
                    return None;
                }
                noisy = true;
                Transform::LabelNoise { fraction, seed }
            }
            "autoencode" => {
                self.bind(&callee, stage.span, args, &[])?;
                info.classes = None;
                info.target_dim = info.shape.iter().product();
                noisy = false;
                Transform::Autoencode
            }
            "onehot" => {
                self.bind(&callee, stage.span, args, &[])?;
                let Some(c) = info.classes else {
                    self.error(Diagnostic::new(
                        ErrorKind::Invalid {
                            message: "one-hot targets need class labels".into(),
                        },
                        stage.span,
                        format!("{} is a regression dataset", src.shown()),
                    ));
                    return None;
                };
                info.target_dim = c;
                Transform::OneHot
            }
            other => {
                let mut d = Diagnostic::new(
                    ErrorKind::Unknown {
                        what: "data operation".into(),
                        name: other.into(),
                    },
                    callee.span,
                    "not a data operation",
                )
                .hint_opt(did_you_mean(other, TRANSFORMS));
                if SOURCES.contains(&other) {
                    d = d.hint(format!("`{other}` is a data source, not an operation"));
                }
                self.error(d.hint(format!("operations: {}", TRANSFORMS.join(", "))));
                return None;
            }
        };
        // What `only(flipped)` would keep after this operation.
        let flipped = match &transform {
            Transform::LabelNoise { fraction, .. } if !src.noisy => {
                Some((n_before as f64 * fraction).round() as usize)
            }
            Transform::Only { flipped: true } => Some(info.n),
            Transform::Only { flipped: false } => Some(0),
            Transform::Normalize { .. }
            | Transform::ChannelNormalize { .. }
            | Transform::Scale { .. }
            | Transform::Permute { .. }
            | Transform::OneHot => src.flipped,
            _ => None,
        };
        let name = if name.is_empty() {
            self.anon_name()
        } else {
            name.to_string()
        };
        let step = self.emit(
            Op::Transform {
                name: name.clone(),
                input: src.step,
                transform,
                info: info.clone(),
            },
            stage.span,
        );
        Some(DataV {
            step,
            name,
            info,
            noisy,
            flipped,
        })
    }
}

fn callee_span(e: &Expr) -> Span {
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
fn find_standard(dirs: &[PathBuf], subdirs: &[&str], files: &[String]) -> Option<Vec<PathBuf>> {
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
