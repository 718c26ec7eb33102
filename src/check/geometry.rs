//! Representations (`Fim(KFAC) of net on probe`), vectors and measurements.

use super::args::Extra;
use super::env::{Binding, DataV, ModelV, ReprV, Val};
use super::Checker;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::cost;
use crate::plan::{
    FisherVariant, HessianPart, Layer, LayerFamily, Measurement, Object, Op, Operand, ReprOptions,
    Structure, Task, Transform,
};
use crate::syntax::{Arg, Expr, ExprKind, Ident, MeasureItem, Span};
use std::collections::BTreeMap;

pub const STRUCTURES: [&str; 9] = [
    "Dense",
    "BlockDiag",
    "Diag",
    "KFAC",
    "EKFAC",
    "LowRank",
    "QuasiDiag",
    "Implicit",
    "mix",
];
const NTK_STRUCTURES: [&str; 5] = ["Dense", "BlockDiag", "Diag", "LowRank", "Implicit"];
pub const MEASUREMENTS: [&str; 18] = [
    "trace",
    "frobenius",
    "spectral_norm",
    "diag",
    "mv",
    "vTMv",
    "solve",
    "eigenvalues",
    "eigenvectors",
    "effective_rank",
    "alignment",
    "rel_error",
    "memory",
    "loss",
    "accuracy",
    "norm",
    "dot",
    "influence",
];
use super::vectors::VECTORS;

impl<'a> Checker<'a> {
    /// The value of a `let`: a representation, dataset, model or vector.
    pub(super) fn value(&mut self, e: &'a Expr, name: &str) -> Option<Val> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Repr { .. } => self.repr_expr(d, name).map(|r| Val::Repr(Box::new(r))),
            ExprKind::Pipe { .. } => self.data_expr(d, name).map(Val::Data),
            ExprKind::Binary { .. } | ExprKind::Neg(_) if self.looks_matrix(d) => {
                self.matrix_expr(d, name).map(|r| Val::Repr(Box::new(r)))
            }
            ExprKind::Call { callee, .. }
                if super::matrices::MATRIX_FUNCTIONS.contains(&callee.name.as_str()) =>
            {
                self.matrix_expr(d, name).map(|r| Val::Repr(Box::new(r)))
            }
            ExprKind::Binary { .. } => self.vector_expr(d, name).map(Val::Vector),
            ExprKind::Index { base, .. } if self.looks_vector(base) => {
                self.vector_expr(d, name).map(Val::Vector)
            }
            ExprKind::Ident(n) => match self.lookup_val(n) {
                Some(v) => Some(v),
                None => {
                    self.error(Diagnostic::new(
                        ErrorKind::Undefined {
                            what: "name".into(),
                            name: n.clone(),
                        },
                        d.span,
                        "not defined",
                    ));
                    None
                }
            },
            ExprKind::Call { callee, .. } => {
                let f = callee.name.as_str();
                if super::data::SOURCES.contains(&f) {
                    self.data_expr(d, name).map(Val::Data)
                } else if f == "sequential"
                    || f == "mlp"
                    || f == "onnx"
                    || self.defs.contains_key(f)
                {
                    self.model_expr(d, name).map(Val::Model)
                } else if VECTORS.contains(&f) || super::vectors::VECTOR_MEASUREMENTS.contains(&f) {
                    self.vector_expr(d, name).map(Val::Vector)
                } else if f == "Fim" || f == "Ntk" {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: "a representation needs a model and data".into(),
                            },
                            d.span,
                            "of which model, on which data?",
                        )
                        .hint(format!("write `{} of MODEL on DATA`", self.expr_text(d))),
                    );
                    None
                } else if MEASUREMENTS.contains(&f) {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: format!("`{f}` is a measurement"),
                            },
                            d.span,
                            "measurements are not stored in names",
                        )
                        .hint(format!("write `measure {}`", self.expr_text(d))),
                    );
                    None
                } else {
                    let mut all: Vec<&str> = super::data::SOURCES.to_vec();
                    all.extend(VECTORS);
                    all.extend(["sequential", "mlp", "onnx", "Fim", "Ntk"]);
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Unknown {
                                what: "function".into(),
                                name: f.into(),
                            },
                            callee.span,
                            "unknown",
                        )
                        .hint_opt(did_you_mean(f, all)),
                    );
                    None
                }
            }
            _ => {
                let found = self.describe(d);
                self.error(Diagnostic::new(
                    ErrorKind::TypeMismatch {
                        expected: "a representation, dataset, model or vector".into(),
                        found,
                    },
                    d.span,
                    "cannot be named with `let`",
                ));
                None
            }
        }
    }

    /// An embedding reading the input needs integer token ids in
    /// `[0, num)`: checked on the values where the data is a file or a
    /// built-in source and its transforms keep values; a transform that
    /// rescales them is refused.
    fn tokens_fit(&mut self, model: &ModelV, data: &DataV, span: Span) -> bool {
        let Some((layer, num)) = model.spec.layers.iter().find_map(|l| match l.layer {
            Layer::Embedding { num_embeddings, .. } => Some((l.name.clone(), num_embeddings)),
            _ => None,
        }) else {
            return true;
        };
        let mut step = data.step;
        let source = loop {
            match &self.items[step.0 as usize].op {
                Op::Transform {
                    input, transform, ..
                } => match transform {
                    Transform::Normalize { .. }
                    | Transform::ChannelNormalize { .. }
                    | Transform::Scale { .. } => {
                        self.error(
                            Diagnostic::new(
                                ErrorKind::Invalid {
                                    message: format!(
                                        "embedding `{layer}` reads token ids, but {} rescales its inputs",
                                        data.shown()
                                    ),
                                },
                                span,
                                "token ids would no longer be integers",
                            )
                            .hint("drop `normalize`/`scale` from the token data's pipeline"),
                        );
                        return false;
                    }
                    _ => step = *input,
                },
                Op::Data { source, .. } => break source.clone(),
                _ => return true,
            }
        };
        let Ok(host) = crate::data::load(&source, &self.opts.base_dir) else {
            return true; // reported where the data was declared
        };
        let d: usize = host.info.shape.iter().product::<usize>().max(1);
        let bad = host
            .x
            .iter()
            .position(|&t| !(t.fract() == 0.0 && t >= 0.0 && (t as f64) < num as f64));
        if let Some(j) = bad {
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: format!(
                            "embedding `{layer}` takes token ids in [0, {num}), but example {} of {}'s source has {} at position {}",
                            j / d,
                            data.shown(),
                            host.x[j],
                            j % d
                        ),
                    },
                    span,
                    "not integer token ids for this vocabulary",
                )
                .hint(format!(
                    "token ids must be integers from 0 to {}; raise `num_embeddings` or fix the data",
                    num - 1
                )),
            );
            return false;
        }
        true
    }

    /// Checks that `model` can run on `data` (input shape, outputs vs targets).
    pub(super) fn compatible(&mut self, model: &ModelV, data: &DataV, span: Span) -> bool {
        let want: usize = model.spec.input.iter().product();
        let have: usize = data.info.shape.iter().product();
        if want == have && !self.tokens_fit(model, data, span) {
            return false;
        }
        if want != have {
            self.error(
                Diagnostic::new(
                    ErrorKind::ShapeMismatch {
                        layer: format!(
                            "{} (input)",
                            if model.name.starts_with('_') {
                                "model"
                            } else {
                                &model.name
                            }
                        ),
                        expected: super::data::fmt_shape(&model.spec.input),
                        found: super::data::fmt_shape(&data.info.shape),
                    },
                    span,
                    format!(
                        "{} has examples of {} values, the model takes {}",
                        data.shown(),
                        have,
                        want
                    ),
                )
                .hint(if model.spec.input.len() == 1 {
                    format!("give the model `in = {have}` (mlp) or a first `linear({have}, ...)`")
                } else {
                    format!(
                        "inputs are reshaped to `input = {}`, so it must have {have} values",
                        super::data::fmt_shape(&model.spec.input)
                    )
                }),
            );
            return false;
        }
        let outputs = model.spec.outputs();
        let ok = match data.info.classes {
            Some(c) => outputs == c || (outputs == 1 && c == 2),
            None => outputs == data.info.target_dim,
        };
        if !ok {
            let (what, k) = match data.info.classes {
                Some(c) => ("classes", c),
                None => ("target values per example", data.info.target_dim),
            };
            let fix = match data.info.classes {
                Some(2) => "give the model 1 output (binary) or 2 outputs".to_string(),
                _ => format!("give the model {k} outputs, e.g. `out = {k}`"),
            };
            self.error(
                Diagnostic::new(
                    ErrorKind::Mismatch {
                        what: "outputs do not match targets".into(),
                        detail: format!(
                            "{} has {outputs} outputs but {} has {k} {what}",
                            model.shown(),
                            data.shown()
                        ),
                    },
                    span,
                    format!("{k} {what}"),
                )
                .hint(fix),
            );
        }
        ok
    }

    /// One entry of a mix: a per-layer structure (not Dense, not a mix).
    fn mix_part(&mut self, e: &'a Expr) -> Option<Structure> {
        let st = self.structure(e, None)?;
        if matches!(st, Structure::Mix { .. } | Structure::Dense) {
            self.error(Diagnostic::new(
                ErrorKind::Invalid {
                    message: format!("`{}` cannot be part of a mix", st.name()),
                },
                e.span,
                "a mix combines per-layer structures",
            ));
            return None;
        }
        Some(st)
    }

    /// A structure expression; `layers` (the model's parameterised layer
    /// names and how to show the model) resolves a mix's quoted layer keys.
    fn structure(&mut self, e: &'a Expr, layers: Option<(&[&str], &str)>) -> Option<Structure> {
        let d = self.deref(e);
        let (callee, args): (Ident, &'a [Arg]) = match &d.kind {
            ExprKind::Ident(n) => (
                Ident {
                    name: n.clone(),
                    span: d.span,
                },
                &[],
            ),
            ExprKind::Call { callee, args } => (callee.clone(), args.as_slice()),
            _ => {
                let found = self.describe(d);
                self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch {
                            expected: "a structure".into(),
                            found,
                        },
                        d.span,
                        "not a structure",
                    )
                    .hint(format!("structures: {}", STRUCTURES.join(", "))),
                );
                return None;
            }
        };
        let span = d.span;
        Some(match callee.name.as_str() {
            "Dense" | "BlockDiag" | "Diag" | "KFAC" | "QuasiDiag" | "Implicit" => {
                self.bind(&callee, span, args, &[])?;
                match callee.name.as_str() {
                    "Dense" => Structure::Dense,
                    "BlockDiag" => Structure::BlockDiag,
                    "Diag" => Structure::Diag,
                    "KFAC" => Structure::Kfac,
                    "QuasiDiag" => Structure::QuasiDiag,
                    _ => Structure::Implicit,
                }
            }
            "EKFAC" => {
                let c = self.bind(&callee, span, args, &["refit", "basis"])?;
                let refit = match c.get("refit") {
                    Some(r) => self.boolean(r, "refit")?,
                    None => true,
                };
                if let (false, Some(r)) = (refit, c.get("refit")) {
                    self.warn(
                        Diagnostic::new(
                            ErrorKind::Suspicious {
                                message: "EKFAC without refit equals KFAC".into(),
                            },
                            r.span,
                            "its diagonal is then the products of KFAC's eigenvalues",
                        )
                        .hint("write `KFAC`, or `EKFAC` (refitted by default) for the eigenvalue-corrected diagonal"),
                    );
                }
                let initial_basis = match c.get("basis") {
                    Some(b) => self.symbol(b, "EKFAC basis", &["current", "initial"])? == "initial",
                    None => false,
                };
                if initial_basis && !refit {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: "a stale basis needs a refitted diagonal".into(),
                            },
                            span,
                            "`basis = initial` with `refit = false`",
                        )
                        .hint("remove `refit = false`: the initial basis is refitted on the current model"),
                    );
                    return None;
                }
                Structure::Ekfac {
                    refit,
                    initial_basis,
                }
            }
            "LowRank" => {
                let c = self.bind(&callee, span, args, &["rank"])?;
                let rank = match c.get("rank") {
                    Some(r) => Some(self.count(r, "rank")?),
                    None => None,
                };
                Structure::LowRank { rank }
            }
            "mix" => {
                let c = self.bind_as(
                    &callee,
                    span,
                    args,
                    &["linear", "conv", "norm", "embedding"],
                    Extra::Keyed,
                )?;
                let mut families = BTreeMap::new();
                for fam in [
                    LayerFamily::Linear,
                    LayerFamily::Conv,
                    LayerFamily::Norm,
                    LayerFamily::Embedding,
                ] {
                    let key = fam.key();
                    if let Some(s) = c.get(key) {
                        families.insert(fam, self.mix_part(s)?);
                    }
                }
                // Layer-keyed entries override their family's; a later
                // entry overrides an earlier one.
                let mut by_layer = BTreeMap::new();
                for (key, s) in &c.keyed {
                    let st = self.mix_part(s)?;
                    if let Some((known, owner)) = layers {
                        for hit in self.match_layers(&key.name, known, key.span, owner)? {
                            by_layer.insert(hit, st.clone());
                        }
                    }
                }
                if families.is_empty() && c.keyed.is_empty() {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::MissingOption {
                                func: "mix".into(),
                                name: "linear".into(),
                            },
                            span,
                            "an empty mix",
                        )
                        .hint("e.g. `mix(linear = EKFAC, conv = EKFAC, norm = BlockDiag, \"fc\" = Diag)`"),
                    );
                    return None;
                }
                Structure::Mix {
                    families,
                    layers: by_layer,
                }
            }
            other => {
                let upper: Vec<&str> = STRUCTURES.to_vec();
                let hint = did_you_mean(other, upper.iter().copied()).or_else(|| {
                    STRUCTURES
                        .iter()
                        .find(|s| s.eq_ignore_ascii_case(other))
                        .map(|s| format!("did you mean `{s}`?"))
                });
                self.error(
                    Diagnostic::new(
                        ErrorKind::Unknown {
                            what: "structure".into(),
                            name: other.into(),
                        },
                        callee.span,
                        "not a representation structure",
                    )
                    .hint_opt(hint)
                    .hint(format!("structures: {}", STRUCTURES.join(", "))),
                );
                return None;
            }
        })
    }

    /// `Fim(S, options) of model on data` → a representation step.
    pub(super) fn repr_expr(&mut self, e: &'a Expr, name: &str) -> Option<ReprV> {
        let ExprKind::Repr {
            structure,
            model,
            data,
            shards,
        } = &e.kind
        else {
            return None;
        };
        let head = self.deref(structure);
        let (callee, args): (Ident, &'a [Arg]) = match &head.kind {
            ExprKind::Call { callee, args } => (callee.clone(), args.as_slice()),
            ExprKind::Ident(n) => (
                Ident {
                    name: n.clone(),
                    span: head.span,
                },
                &[],
            ),
            _ => (
                Ident {
                    name: String::new(),
                    span: head.span,
                },
                &[],
            ),
        };
        let object = match callee.name.as_str() {
            "Fim" => Object::Fim,
            "Ntk" => Object::Ntk,
            "Hessian" => Object::Hessian,
            other => {
                let mut d = Diagnostic::new(
                    ErrorKind::Unknown {
                        what: "geometric object".into(),
                        name: if other.is_empty() {
                            self.expr_text(head)
                        } else {
                            other.into()
                        },
                    },
                    callee.span,
                    "expected `Fim(...)`, `Ntk(...)` or `Hessian(...)`",
                )
                .hint_opt(did_you_mean(other, ["Fim", "Ntk", "Hessian"]));
                if STRUCTURES.contains(&other) {
                    d = d.hint(format!(
                        "say which object: `Fim({other})` or `Ntk({other})`"
                    ));
                }
                self.error(d);
                return None;
            }
        };
        let params: &[&'static str] = match object {
            Object::Fim => &["structure", "fisher", "task", "layers", "centered"],
            Object::Ntk => &["structure", "layers", "centered"],
            Object::Hessian => &["structure", "loss", "part", "layers"],
        };
        let call = self.bind(&callee, head.span, args, params)?;
        let se = self.req(&call, "structure");
        let m = self.model_expr(model, "");
        let dv = match data {
            Some(d) => self.data_expr(d, ""),
            None => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::MissingOption {
                            func: callee.name.clone(),
                            name: "on".into(),
                        },
                        e.span,
                        "on which examples?",
                    )
                    .hint(format!("add the data: `{} on DATASET`", self.expr_text(e))),
                );
                None
            }
        };
        let known: Option<(Vec<&str>, String)> = m.as_ref().map(|m| {
            let names = m.spec.param_layers().map(|l| l.name.as_str()).collect();
            (names, m.shown())
        });
        let structure =
            self.structure(se?, known.as_ref().map(|(k, o)| (k.as_slice(), o.as_str())))?;
        let (m, dv) = (m?, dv?);
        let data_span = data.as_ref().map_or(e.span, |d| d.span);
        if !self.compatible(&m, &dv, data_span) {
            return None;
        }
        // Options.
        let task = match call.get("loss") {
            Some(l) => self.hessian_loss(l, &m, &dv)?,
            None => match call.get("task") {
                Some(t) => self.task(t)?,
                None if dv.info.classes.is_some() && m.spec.outputs() == 1 => Task::Binary,
                None if dv.info.classes.is_some() => Task::Classification,
                None => Task::Regression { sigma2: 1.0 },
            },
        };
        let fisher = match object {
            Object::Fim => Some(match call.get("fisher") {
                Some(f) => self.fisher(f)?,
                None => FisherVariant::True,
            }),
            Object::Ntk | Object::Hessian => None,
        };
        let hessian = match (object, call.get("part")) {
            (Object::Hessian, Some(p)) => Some(self.hessian_part(p)?),
            (Object::Hessian, None) => Some(HessianPart::Full),
            _ => None,
        };
        let layers = match call.get("layers") {
            Some(l) => {
                let names = self.str_list(l, "layers")?;
                let known: Vec<&str> = m.spec.param_layers().map(|l| l.name.as_str()).collect();
                let mut out: Vec<String> = Vec::new();
                for n in &names {
                    // Point at the offending name in the list.
                    let at = match &self.deref(l).kind {
                        ExprKind::List(items) => items
                            .iter()
                            .find(|i| matches!(&i.value.kind, ExprKind::Str(s) if s == n))
                            .map_or(l.span, |i| i.value.span),
                        _ => l.span,
                    };
                    for hit in self.match_layers(n, &known, at, &m.shown())? {
                        if !out.contains(&hit) {
                            out.push(hit);
                        }
                    }
                }
                out
            }
            None => vec![],
        };
        let centered = match call.get("centered") {
            Some(c) => self.boolean(c, "centered")?,
            None => false,
        };
        let mut options = ReprOptions {
            fisher,
            task,
            layers,
            centered,
            examples: dv.info.n,
            outputs: m.spec.outputs(),
            shards: None,
            part: None,
            file: None,
            hessian,
        };
        if object == Object::Hessian {
            self.hessian_support(&structure, se?.span, &m)?;
        }
        // Which layers each structure supports.
        if object == Object::Ntk && !NTK_STRUCTURES.contains(&structure.name().as_str()) {
            self.error(
                Diagnostic::new(
                    ErrorKind::UnsupportedStructure {
                        object: "Ntk".into(),
                        structure: structure.name(),
                    },
                    se?.span,
                    "Kronecker and quasi-diagonal structures approximate parameter-space matrices",
                )
                .hint(format!("Ntk supports: {}", NTK_STRUCTURES.join(", "))),
            );
            return None;
        }
        if object == Object::Fim {
            for l in cost::covered_layers(&m.spec, &options) {
                let (st, family) = match (&structure, l.layer.family()) {
                    (Structure::Mix { .. }, Some(f)) => match structure.for_layer(&l.name, Some(f))
                    {
                        Some(s) => (s.clone(), f),
                        None => {
                            let fname = f.key();
                            self.error(
                                Diagnostic::new(
                                    ErrorKind::UnsupportedLayer {
                                        structure: "this mix".into(),
                                        layer: l.name.clone(),
                                        layer_type: l.layer.type_name().into(),
                                    },
                                    se?.span,
                                    format!("no structure given for {fname} layers"),
                                )
                                .hint(format!("add `{fname} = BlockDiag` (or another) to the mix")),
                            );
                            return None;
                        }
                    },
                    (s, Some(f)) => (s.clone(), f),
                    (_, None) => continue,
                };
                let kron = matches!(
                    st,
                    Structure::Kfac | Structure::Ekfac { .. } | Structure::QuasiDiag
                );
                if let Some(why) = l.layer.kron_refusal().filter(|_| kron) {
                    // A mix can route the family elsewhere, except grouped
                    // convolutions, which share theirs with plain ones.
                    let hint = if family == LayerFamily::Conv {
                        format!(
                            "use `mix(linear = {0}, conv = BlockDiag)`, or leave `{1}` out with `layers = [...]`",
                            st.name(),
                            l.name
                        )
                    } else {
                        format!(
                            "use `mix(linear = {0}, conv = {0}, {1} = BlockDiag)`, or leave the layer out with `layers = [...]`",
                            st.name(),
                            family.key()
                        )
                    };
                    self.error(
                        Diagnostic::new(
                            ErrorKind::UnsupportedLayer {
                                structure: st.name(),
                                layer: l.name.clone(),
                                layer_type: l.layer.type_name().into(),
                            },
                            se?.span,
                            format!("{} {why}", st.name()),
                        )
                        .hint(hint),
                    );
                    return None;
                }
            }
        }
        if let Some(k) = shards {
            options.shards = Some(self.shard_count(k, object, &structure, &options)?);
        }
        // Memory budget.
        let bytes = cost::repr_memory(object, &structure, &m.spec, &options, self.header.dtype);
        if bytes > self.budget {
            let cheaper = self.cheaper(object, &m, &options);
            let what = format!("{:?}({})", object, structure.name());
            self.error(
                Diagnostic::new(
                    ErrorKind::OverBudget {
                        what: what.clone(),
                        needed: cost::format_bytes(bytes),
                        budget: cost::format_bytes(self.budget),
                    },
                    e.span,
                    format!(
                        "{what} of {} ({} parameters) on {} examples",
                        m.shown(),
                        m.spec.params,
                        dv.info.n
                    ),
                )
                .hint_opt(cheaper)
                .hint("raise the budget with `memory_budget = 64GiB` in the header or `--memory-budget`"),
            );
            return None;
        }
        let name = if name.is_empty() {
            self.anon_name()
        } else {
            name.to_string()
        };
        let step = self.emit(
            Op::Repr {
                name,
                object,
                structure: structure.clone(),
                model: m.step,
                data: dv.step,
                options: options.clone(),
            },
            e.span,
        );
        Some(ReprV {
            step,
            object,
            structure,
            model: m,
            data: dv.step,
            options,
        })
    }

    /// Suggests the first structure that fits in the budget.
    fn cheaper(&self, object: Object, m: &ModelV, options: &ReprOptions) -> Option<String> {
        let candidates: Vec<Structure> = match object {
            Object::Fim => vec![
                Structure::Ekfac {
                    refit: true,
                    initial_basis: false,
                },
                Structure::Kfac,
                Structure::Diag,
                Structure::Implicit,
            ],
            Object::Ntk => vec![Structure::BlockDiag, Structure::Diag, Structure::Implicit],
            Object::Hessian => vec![Structure::Diag, Structure::Implicit],
        };
        let fits_layers = |s: &Structure| {
            !matches!(s, Structure::Kfac | Structure::Ekfac { .. })
                || m.spec
                    .param_layers()
                    .all(|l| l.layer.kron_refusal().is_none())
        };
        candidates
            .into_iter()
            .filter(fits_layers)
            .map(|s| {
                let b = cost::repr_memory(object, &s, &m.spec, options, self.header.dtype);
                (s, b)
            })
            .find(|(_, b)| *b <= self.budget)
            .map(|(s, b)| {
                format!(
                    "a cheaper structure fits: `{:?}({})` needs {}",
                    object,
                    s.name(),
                    cost::format_bytes(b)
                )
            })
    }

    fn task(&mut self, e: &'a Expr) -> Option<Task> {
        let d = self.deref(e);
        let (name, args): (String, &'a [Arg]) = match &d.kind {
            ExprKind::Ident(n) => (n.clone(), &[]),
            ExprKind::Call { callee, args } => (callee.name.clone(), args.as_slice()),
            _ => (String::new(), &[]),
        };
        match name.as_str() {
            "classification" => Some(Task::Classification),
            "binary" => Some(Task::Binary),
            "regression" => {
                let callee = Ident {
                    name: name.clone(),
                    span: d.span,
                };
                let c = self.bind(&callee, d.span, args, &["sigma2"])?;
                let sigma2 = match c.get("sigma2") {
                    Some(s) => self.positive(s, "sigma2")?,
                    None => 1.0,
                };
                Some(Task::Regression { sigma2 })
            }
            _ => {
                self.symbol(d, "task", &["classification", "binary", "regression"]);
                None
            }
        }
    }

    fn fisher(&mut self, e: &'a Expr) -> Option<FisherVariant> {
        let d = self.deref(e);
        let (name, args): (String, &'a [Arg]) = match &d.kind {
            ExprKind::Bool(true) => ("true".into(), &[]),
            ExprKind::Ident(n) => (n.clone(), &[]),
            ExprKind::Call { callee, args } => (callee.name.clone(), args.as_slice()),
            _ => (self.expr_text(d), &[]),
        };
        match name.as_str() {
            "true" | "exact" => Some(FisherVariant::True),
            "empirical" => Some(FisherVariant::Empirical),
            "mc" => {
                let callee = Ident {
                    name: name.clone(),
                    span: d.span,
                };
                let c = self.bind(&callee, d.span, args, &["samples", "seed"])?;
                let samples = match c.get("samples") {
                    Some(s) => self.count(s, "samples")?,
                    None => 1,
                };
                let seed = self.seed(&c)?;
                Some(FisherVariant::Mc { samples, seed })
            }
            other => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::BadChoice {
                            what: "Fisher variant".into(),
                            value: other.into(),
                        },
                        d.span,
                        "expected `true`, `mc(samples)` or `empirical`",
                    )
                    .hint_opt(did_you_mean(other, ["true", "exact", "mc", "empirical"])),
                );
                None
            }
        }
    }

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
