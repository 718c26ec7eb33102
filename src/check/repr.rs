//! Representations: `Fim(KFAC) of net on probe`, their structures
//! (with `mix(...)` and layer selections), tasks and Fisher variants.

use super::args::Extra;
use super::env::{ModelV, ReprV};
use super::geometry::{NTK_STRUCTURES, STRUCTURES};
use super::Checker;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::cost;
use crate::plan::{
    FisherVariant, HessianPart, LayerFamily, LayerSpec, Object, Op, ReprOptions, Structure, Task,
};
use crate::syntax::{Arg, Expr, ExprKind, Ident, Span};
use std::collections::BTreeMap;

impl<'a> Checker<'a> {
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
    pub(super) fn structure(
        &mut self,
        e: &'a Expr,
        layers: Option<(&[&str], &str)>,
    ) -> Option<Structure> {
        let d = self.deref(e);
        let (callee, args) = self.named(d, "structure", &STRUCTURES)?;
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

    /// Whether `structure` (a mix: what it gives each layer) can represent
    /// every layer of `layers`, each refusal an error at `span` naming the
    /// layer: a mix that gives a family nothing, a Kronecker-factored
    /// structure on a layer without factors.
    pub(super) fn layers_supported(
        &mut self,
        structure: &Structure,
        layers: &[&LayerSpec],
        span: Span,
        can_leave_out: bool,
    ) -> Option<()> {
        for l in layers {
            let (st, family) = match (structure, l.layer.family()) {
                (Structure::Mix { .. }, Some(f)) => match structure.for_layer(&l.name, Some(f)) {
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
                                span,
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
                let mut hint = if family == LayerFamily::Conv {
                    format!("use `mix(linear = {0}, conv = BlockDiag)`", st.name())
                } else {
                    format!(
                        "use `mix(linear = {0}, conv = {0}, {1} = BlockDiag)`",
                        st.name(),
                        family.key()
                    )
                };
                if can_leave_out {
                    hint += &format!(", or leave `{}` out with `layers = [...]`", l.name);
                }
                self.error(
                    Diagnostic::new(
                        ErrorKind::UnsupportedLayer {
                            structure: st.name(),
                            layer: l.name.clone(),
                            layer_type: l.layer.type_name().into(),
                        },
                        span,
                        format!("{} {why}", st.name()),
                    )
                    .hint(hint),
                );
                return None;
            }
        }
        Some(())
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
                if names.is_empty() {
                    // An empty list would silently mean every layer.
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Invalid {
                                message: "`layers = []` selects no layer".into(),
                            },
                            l.span,
                            "empty list",
                        )
                        .hint(
                            "leave `layers` out for every layer, or name some: `layers = [\"fc\"]`",
                        ),
                    );
                    return None;
                }
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
            let layers = cost::covered_layers(&m.spec, &options);
            self.layers_supported(&structure, &layers, se?.span, true)?;
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
}
