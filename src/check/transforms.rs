//! Dataset operations after `|>`: splits, subsets, normalisation, label
//! noise, one-hot targets and the rest, each checked against what is
//! known of its input.

use super::data::{fmt_shape, SOURCES, TRANSFORMS};
use super::env::DataV;
use super::Checker;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::{Op, Transform};
use crate::syntax::{Expr, ExprKind, Ident};

impl<'a> Checker<'a> {
    pub(super) fn transform(&mut self, src: DataV, stage: &'a Expr, name: &str) -> Option<DataV> {
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
