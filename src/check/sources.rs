//! Dataset sources: bundled (digits, diabetes), standard files (MNIST,
//! CIFAR-10), the user's files (CSV, IDX, tensors) and synthetic data,
//! their headers read so that a bad file is reported before anything runs.

use super::data::{callee_span, find_standard, SOURCES, TRANSFORMS};
use super::env::DataV;
use super::Checker;
use crate::data::{self, ColumnRef, CsvSpec, DataInfo, DigitsSplit};
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::{DataSource, Op};
use crate::syntax::{Expr, ExprKind, Ident};
use std::path::PathBuf;

impl<'a> Checker<'a> {
    pub(super) fn data_source(
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
        // An empty source, or examples of no values, would pass every later
        // check and fail only when the run reaches it.
        let empty = if info.n == 0 {
            Some("has no examples".to_string())
        } else if info.shape.contains(&0) {
            Some(format!(
                "has examples of shape {}, which hold no values",
                super::data::fmt_shape(&info.shape)
            ))
        } else if info.target_dim == 0 {
            Some("has targets of no values".to_string())
        } else {
            None
        };
        if let Some(what) = empty {
            self.error(Diagnostic::new(
                ErrorKind::Invalid {
                    message: format!("this dataset {what}"),
                },
                e.span,
                "empty dataset",
            ));
            return None;
        }
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

    pub(super) fn column(&mut self, e: &'a Expr) -> Option<ColumnRef> {
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
}
