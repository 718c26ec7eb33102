//! Measurements (`measure trace(F) as "..."`) and their operands
//! (`K[layer]`).

use super::env::{Binding, ReprV, Val};
use super::geometry::{MEASUREMENTS, STRUCTURES};
use super::Checker;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::cost;
use crate::plan::{FisherVariant, Measurement, Object, Op, Operand, Structure, Task};
use crate::syntax::{Arg, Expr, ExprKind, Ident, MeasureItem, Span};

impl<'a> Checker<'a> {
    /// A representation or one layer's block of it (`K[layer]`).
    pub(super) fn operand(&mut self, e: &'a Expr) -> Option<(ReprV, Option<String>)> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Index { base, index } => {
                let (r, _) = self.operand(base)?;
                let covered: Vec<String> = cost::covered_layers(&r.model.spec, &r.options)
                    .iter()
                    .map(|l| l.name.clone())
                    .collect();
                let layer =
                    self.layer_index(index, &covered, &r.model.name, "this representation")?;
                Some((r, Some(layer)))
            }
            ExprKind::Repr { .. } => self.repr_expr(d, "").map(|r| (r, None)),
            ExprKind::Binary { .. } | ExprKind::Call { .. } | ExprKind::Neg(_)
                if self.looks_matrix(d) =>
            {
                self.matrix_expr(d, "").map(|r| (r, None))
            }
            ExprKind::Ident(n) => match self.lookup_val(n) {
                Some(Val::Repr(r)) => Some((*r, None)),
                Some(other) => {
                    self.error(Diagnostic::new(
                        ErrorKind::WrongKind {
                            name: n.clone(),
                            expected: "representation".into(),
                            found: other.kind().into(),
                        },
                        d.span,
                        format!("this is a {}", other.kind()),
                    ));
                    None
                }
                None => {
                    let names = self
                        .scopes
                        .names_where(|b| matches!(b, Binding::Val(Val::Repr(_), _)));
                    let mut diag = Diagnostic::new(
                        ErrorKind::Undefined {
                            what: "representation".into(),
                            name: n.clone(),
                        },
                        d.span,
                        "not defined",
                    )
                    .hint_opt(did_you_mean(n, names.iter().map(|s| s.as_str())));
                    if STRUCTURES.contains(&n.as_str()) {
                        diag = diag.hint(format!("write `Fim({n}) of MODEL on DATA`"));
                    }
                    self.error(diag);
                    None
                }
            },
            _ => {
                let found = self.describe(d);
                // `Fim(S) of net on d |> take(5)` reads as `(Fim(S) of net on d) |> take(5)`.
                let piped_repr = matches!(
                    &d.kind,
                    ExprKind::Pipe { input, .. } if matches!(input.kind, ExprKind::Repr { .. })
                );
                self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: "a representation".into(),
                            found,
                        },
                        d.span,
                        "not a representation",
                    )
                    .hint(if piped_repr {
                        "`|>` applies to the whole representation: write `on (data |> take(...))` or name the dataset with `data`"
                    } else {
                        "e.g. `Fim(KFAC) of net on probe`"
                    }),
                );
                None
            }
        }
    }

    pub(super) fn measure_item(&mut self, item: &'a MeasureItem) {
        let e = self.deref(&item.expr);
        let key = match &item.name {
            Some(n) => match self.interpolate(&n.value, n.span) {
                Some(k) => k,
                None => return,
            },
            None => self.expr_text(&item.expr),
        };
        let measured_call = Self::as_call(e)
            .is_some_and(|(c, _)| super::vectors::VECTOR_MEASUREMENTS.contains(&c.name.as_str()));
        if self.looks_vector(e) && !measured_call {
            let Some(v) = self.vector_expr(e, "") else {
                return;
            };
            self.record_key(&key, &[]);
            let measurement = Measurement::Vector { v: v.step };
            self.emit(Op::Measure { key, measurement }, item.span);
            return;
        }
        let Some((callee, args)) = Self::as_call(e) else {
            let found = self.describe(e);
            self.error(
                Diagnostic::new(
                    ErrorKind::TypeMismatch {
                        expected: "a measurement".into(),
                        found,
                    },
                    e.span,
                    "nothing to measure",
                )
                .hint(format!("measurements: {}", MEASUREMENTS.join(", "))),
            );
            return;
        };
        let Some(measurement) = self.measurement(callee, args, e.span) else {
            return;
        };
        self.record_key(&key, &[]);
        self.emit(Op::Measure { key, measurement }, item.span);
    }

    /// Replaces `{var}` by the sweep value of `var`.
    fn interpolate(&mut self, text: &str, span: Span) -> Option<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else {
                self.error(Diagnostic::new(
                    ErrorKind::Invalid {
                        message: "unclosed `{` in a name".into(),
                    },
                    span,
                    "write `{variable}`",
                ));
                return None;
            };
            let var = &rest[open + 1..open + close];
            match self.sweep.get(var) {
                Some(v) => out.push_str(v),
                None => {
                    let vars: Vec<&str> = self.sweep.keys().map(|s| s.as_str()).collect();
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Undefined {
                                what: "sweep variable".into(),
                                name: var.into(),
                            },
                            span,
                            "only loop variables can be interpolated",
                        )
                        .hint_opt(did_you_mean(var, vars.iter().copied()))
                        .hint(if vars.is_empty() {
                            "this measurement is not inside a `for` loop".to_string()
                        } else {
                            format!("loop variables here: {}", vars.join(", "))
                        }),
                    );
                    return None;
                }
            }
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        Some(out)
    }

    pub(super) fn measurement(
        &mut self,
        callee: &'a Ident,
        args: &'a [Arg],
        span: Span,
    ) -> Option<Measurement> {
        let f = callee.name.as_str();
        let op = |r: &ReprV, l: Option<String>| Operand {
            repr: r.step,
            layer: l,
        };
        Some(match f {
            "trace" | "frobenius" | "spectral_norm" | "diag" | "effective_rank" | "memory" => {
                let c = self.bind(callee, span, args, &["m"])?;
                let me = self.req(&c, "m")?;
                let (r, l) = self.operand(me)?;
                let m = op(&r, l);
                match f {
                    "trace" => Measurement::Trace { m },
                    "frobenius" => Measurement::Frobenius { m },
                    "spectral_norm" => Measurement::SpectralNorm { m },
                    "diag" => Measurement::Diagonal { m },
                    "effective_rank" => Measurement::EffectiveRank { m },
                    _ => Measurement::Memory { m },
                }
            }
            "mv" | "vTMv" => {
                let c = self.bind(callee, span, args, &["m", "v"])?;
                let me = self.req(&c, "m");
                let ve = self.req(&c, "v");
                let (r, l) = self.operand(me?)?;
                let v = self.fim_vector(&r, l.as_deref(), ve?, f)?;
                if f == "mv" {
                    Measurement::Mv { m: op(&r, l), v }
                } else {
                    Measurement::VTMv { m: op(&r, l), v }
                }
            }
            "solve" => {
                let c = self.bind(callee, span, args, &["m", "v", "damping"])?;
                let me = self.req(&c, "m");
                let ve = self.req(&c, "v");
                let (r, l) = self.operand(me?)?;
                let v = self.fim_vector(&r, l.as_deref(), ve?, f)?;
                let damping = match c.get("damping") {
                    Some(d) => self.float_in(d, "damping", 0.0, f64::MAX)?,
                    None => 1e-3,
                };
                if damping == 0.0 && !matches!(r.structure, Structure::Dense | Structure::BlockDiag)
                {
                    self.error(Diagnostic::new(
                        ErrorKind::OutOfRange {
                            name: "damping".into(),
                            value: "0".into(),
                            range: "must be > 0 for this structure".into(),
                        },
                        c.get("damping").unwrap().span,
                        "singular without damping",
                    ));
                    return None;
                }
                if damping == 0.0 {
                    if let Some((block, params, rank)) = provably_singular(&r, l.as_deref()) {
                        self.error(
                            Diagnostic::new(
                                ErrorKind::OutOfRange {
                                    name: "damping".into(),
                                    value: "0".into(),
                                    range: "must be > 0: the matrix is singular".into(),
                                },
                                c.get("damping").unwrap().span,
                                "singular without damping",
                            )
                            .hint(format!(
                                "{block} has {params} parameters but rank at most {rank} (examples × rank per example), so at least {} eigenvalues are zero",
                                params - rank
                            )),
                        );
                        return None;
                    }
                }
                Measurement::Solve {
                    m: op(&r, l),
                    v,
                    damping,
                }
            }
            "eigenvalues" => {
                let c = self.bind(callee, span, args, &["m", "top"])?;
                let me = self.req(&c, "m")?;
                let (r, l) = self.operand(me)?;
                let top = match c.get("top") {
                    Some(t) => self.count(t, "top")?,
                    None => 10,
                };
                Measurement::Eigenvalues { m: op(&r, l), top }
            }
            "eigenvectors" => {
                let c = self.bind(callee, span, args, &["m", "top"])?;
                let me = self.req(&c, "m")?;
                let (r, l) = self.operand(me)?;
                let dim: u64 = super::vectors::repr_layers(&r, l.as_deref())
                    .iter()
                    .map(|(_, p)| p)
                    .sum();
                let top = match c.get("top") {
                    Some(t) => self.int(t, "top", 1, dim.max(1) as i64)? as usize,
                    None => 1,
                };
                if !r.object.param_space() {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: "eigenvectors are measured for a Fisher or a Hessian"
                                    .into(),
                            },
                            me.span,
                            "an NTK",
                        )
                        .hint("its eigenvalues: `measure eigenvalues(K, top = 5)`"),
                    );
                    return None;
                }
                Measurement::Eigenvectors { m: op(&r, l), top }
            }
            "alignment" => {
                let c = self.bind(callee, span, args, &["m", "targets", "centered", "kernel"])?;
                let me = self.req(&c, "m");
                let te = self.req(&c, "targets");
                let (r, l) = self.operand(me?)?;
                if r.object != Object::Ntk {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: "kernel–target alignment needs an NTK".into(),
                            },
                            me?.span,
                            "this is a Fisher representation",
                        )
                        .hint(
                            "align the kernel on the same examples: `Ntk(Dense) of MODEL on DATA`",
                        ),
                    );
                    return None;
                }
                let te = te?;
                let td = self.deref(te);
                let target_data = match &td.kind {
                    ExprKind::Call { callee, args }
                        if callee.name == "onehot" || callee.name == "targets" =>
                    {
                        let tc = self.bind(callee, td.span, args, &["data"])?;
                        {
                            let de = self.req(&tc, "data")?;
                            self.data_expr(de, "")?
                        }
                    }
                    _ => self.data_expr(td, "")?,
                };
                if target_data.step != r.data {
                    let kname = self.items[r.data.0 as usize].op.clone();
                    let kn = match kname {
                        Op::Data { name, .. } | Op::Transform { name, .. } => name,
                        _ => String::new(),
                    };
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Mismatch {
                                what: "targets of other examples".into(),
                                detail: format!(
                                    "the kernel is on {}, the targets come from {}",
                                    shown_name(&kn),
                                    target_data.shown()
                                ),
                            },
                            te.span,
                            "must be the kernel's examples",
                        )
                        .hint(if kn.starts_with('_') || kn.is_empty() {
                            "name the kernel's dataset (`data probe = ...`) and use it on both sides".to_string()
                        } else {
                            format!("use `onehot({kn})`")
                        }),
                    );
                    return None;
                }
                let centered = match c.get("centered") {
                    Some(x) => self.boolean(x, "centered")?,
                    None => false,
                };
                let trace = match c.get("kernel") {
                    Some(x) => self.symbol(x, "aligned kernel", &["full", "trace"])? == "trace",
                    None => false,
                };
                Measurement::Alignment {
                    m: op(&r, l),
                    targets: target_data.step,
                    centered,
                    trace,
                }
            }
            "rel_error" => {
                let c = self.bind(callee, span, args, &["a", "b"])?;
                let ae = self.req(&c, "a");
                let be = self.req(&c, "b");
                let a = self.operand(ae?);
                let b = self.operand(be?);
                let ((ra, la), (rb, lb)) = (a?, b?);
                let covered = |r: &ReprV| -> Vec<String> {
                    cost::covered_layers(&r.model.spec, &r.options)
                        .iter()
                        .map(|l| l.name.clone())
                        .collect()
                };
                let shown = |r: &ReprV, l: &Option<String>| {
                    format!(
                        "{:?}({}){}",
                        r.object,
                        r.structure.name(),
                        l.as_ref().map(|l| format!("[{l}]")).unwrap_or_default()
                    )
                };
                let why = if ra.object.param_space() != rb.object.param_space() {
                    Some("a matrix on the weights and an NTK live in different spaces".to_string())
                } else if ra.model.spec.params != rb.model.spec.params {
                    Some(format!(
                        "they are of models with {} and {} parameters",
                        ra.model.spec.params, rb.model.spec.params
                    ))
                } else if la != lb {
                    Some(
                        "they cover different layers: index both sides with the same layer"
                            .to_string(),
                    )
                } else if la.is_none() && covered(&ra) != covered(&rb) {
                    Some(format!(
                        "they cover different layers ({} vs {})",
                        covered(&ra).join(", "),
                        covered(&rb).join(", ")
                    ))
                } else if ra.options.examples != rb.options.examples {
                    Some(format!(
                        "they are on {} and {} examples",
                        ra.options.examples, rb.options.examples
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Mismatch {
                                what: "cannot compare these".into(),
                                detail: format!("{} vs {}", shown(&ra, &la), shown(&rb, &lb)),
                            },
                            span,
                            why,
                        )
                        .hint("compare the same object of the same model on the same examples and layers"),
                    );
                    return None;
                }
                Measurement::RelError {
                    a: op(&ra, la),
                    b: op(&rb, lb),
                }
            }
            "loss" | "accuracy" => {
                let c = self.bind(callee, span, args, &["model", "data"])?;
                let me = self.req(&c, "model");
                let de = self.req(&c, "data");
                let m = self.model_expr(me?, "");
                let dv = self.data_expr(de?, "");
                let (m, dv) = (m?, dv?);
                if !self.compatible(&m, &dv, de?.span) {
                    return None;
                }
                if f == "accuracy" {
                    if dv.info.classes.is_none() {
                        self.error(Diagnostic::new(
                            ErrorKind::Invalid {
                                message: "accuracy needs class labels".into(),
                            },
                            de?.span,
                            format!("{} is a regression dataset", dv.shown()),
                        ));
                        return None;
                    }
                    Measurement::Accuracy {
                        model: m.step,
                        data: dv.step,
                    }
                } else {
                    Measurement::Loss {
                        model: m.step,
                        data: dv.step,
                    }
                }
            }
            "influence" => self.influence(callee, args, span)?,
            "norm" => {
                let c = self.bind(callee, span, args, &["v"])?;
                let ve = self.req(&c, "v")?;
                let v = self.vector_expr(ve, "")?;
                Measurement::Norm { v: v.step }
            }
            "dot" => {
                let c = self.bind(callee, span, args, &["a", "b"])?;
                let ae = self.req(&c, "a");
                let be = self.req(&c, "b");
                let a = self.vector_expr(ae?, "");
                let b = self.vector_expr(be?, "");
                let (a, b) = (a?, b?);
                self.same_layers(&a, &b, span)?;
                Measurement::Dot {
                    a: a.step,
                    b: b.step,
                }
            }
            other => {
                let mut d = Diagnostic::new(
                    ErrorKind::Unknown {
                        what: "measurement".into(),
                        name: other.into(),
                    },
                    callee.span,
                    "not a measurement",
                )
                .hint_opt(did_you_mean(other, MEASUREMENTS));
                if other == "Fim" || other == "Ntk" {
                    d = d.hint(
                        "measure a property of it, e.g. `measure trace(Fim(KFAC) of net on probe)`",
                    );
                } else {
                    d = d.hint(format!("measurements: {}", MEASUREMENTS.join(", ")));
                }
                self.error(d);
                return None;
            }
        })
    }
}

/// `` `name` ``, or "an unnamed dataset" for an intermediate step (`_1`).
fn shown_name(name: &str) -> String {
    if name.is_empty() || name.starts_with('_') {
        "an unnamed dataset".into()
    } else {
        format!("`{name}`")
    }
}

/// Where a Dense or BlockDiag Fisher is singular whatever the data: a block
/// (the whole matrix, or one layer's) with more parameters than the rank
/// the examples can give it. Returns (which block, parameters, rank bound).
fn provably_singular(r: &ReprV, layer: Option<&str>) -> Option<(String, u64, u64)> {
    let o = &r.options;
    let outputs = o.outputs as u64;
    let per_example = match &o.fisher {
        Some(FisherVariant::Empirical) => 1,
        Some(FisherVariant::Mc { samples, .. }) => (*samples as u64).min(outputs),
        _ => match o.task {
            // Softmax probabilities sum to one: one direction is lost.
            Task::Classification => outputs.saturating_sub(1),
            Task::Binary => 1,
            Task::Regression { .. } => outputs,
        },
    };
    let rank = o.examples as u64 * per_example;
    let layers: Vec<&crate::plan::LayerSpec> = cost::covered_layers(&r.model.spec, o)
        .into_iter()
        .filter(|l| layer.is_none_or(|n| l.name == n))
        .collect();
    let blocks: Vec<(String, u64)> = match (&r.structure, layer) {
        (Structure::Dense, None) => vec![(
            format!("the Fisher of `{}`", r.model.shown()),
            layers.iter().map(|l| l.params).sum(),
        )],
        (Structure::Dense | Structure::BlockDiag, _) => layers
            .iter()
            .map(|l| (format!("layer `{}`'s block", l.name), l.params))
            .collect(),
        _ => return None,
    };
    blocks
        .into_iter()
        .find(|(_, p)| *p > rank)
        .map(|(b, p)| (b, p, rank))
}
