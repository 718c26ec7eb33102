//! Optimisers (`sgd`, `adam`, `ngd(fim = KFAC, ...)`) and learning-rate
//! schedules of a `train` statement.

use super::args::Call;
use super::env::ModelV;
use super::Checker;
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::{BatchNormStats, FisherVariant, Layer, LrSchedule, Optimizer, Structure};
use crate::syntax::{Arg, Expr, ExprKind, Ident};

impl<'a> Checker<'a> {
    pub(super) fn named_call(e: &'a Expr) -> Option<(Ident, &'a [Arg])> {
        match &e.kind {
            ExprKind::Ident(n) => Some((
                Ident {
                    name: n.clone(),
                    span: e.span,
                },
                &[],
            )),
            ExprKind::Call { callee, args } => Some((callee.clone(), args.as_slice())),
            _ => None,
        }
    }

    pub(super) fn opt_f(
        &mut self,
        c: &Call<'a>,
        name: &str,
        default: f64,
        min: f64,
        max: f64,
    ) -> Option<f64> {
        match c.get(name) {
            Some(e) => self.float_in(e, name, min, max),
            None => Some(default),
        }
    }

    /// The optimiser of a `train` of model `m`.
    pub(super) fn optimizer(&mut self, e: &'a Expr, m: &ModelV) -> Option<Optimizer> {
        let d = self.deref(e);
        const OPTS: [&str; 3] = ["sgd", "adam", "ngd"];
        let Some((callee, args)) = Self::named_call(d) else {
            self.symbol(d, "optimizer", &OPTS);
            return None;
        };
        match callee.name.as_str() {
            "sgd" => {
                let c = self.bind(
                    &callee,
                    d.span,
                    args,
                    &["lr", "momentum", "nesterov", "weight_decay"],
                )?;
                let lr = self.req(&c, "lr").and_then(|x| self.positive(x, "lr"));
                let momentum = self.opt_f(&c, "momentum", 0.0, 0.0, 0.999999);
                let weight_decay = self.opt_f(&c, "weight_decay", 0.0, 0.0, f64::MAX);
                let nesterov = match c.get("nesterov") {
                    Some(n) => self.boolean(n, "nesterov"),
                    None => Some(false),
                };
                Some(Optimizer::Sgd {
                    lr: lr?,
                    momentum: momentum?,
                    nesterov: nesterov?,
                    weight_decay: weight_decay?,
                })
            }
            "adam" => {
                let c = self.bind(
                    &callee,
                    d.span,
                    args,
                    &["lr", "betas", "eps", "weight_decay"],
                )?;
                let lr = match c.get("lr") {
                    Some(x) => self.positive(x, "lr"),
                    None => Some(1e-3),
                };
                let (beta1, beta2) = match c.get("betas") {
                    Some(b) => match &self.deref(b).kind {
                        ExprKind::List(items) if items.len() == 2 => {
                            let b1 = self.float_in(&items[0].value, "beta1", 0.0, 0.999999);
                            let b2 = self.float_in(&items[1].value, "beta2", 0.0, 0.999999);
                            (b1, b2)
                        }
                        _ => {
                            self.error(Diagnostic::new(
                                ErrorKind::TypeMismatch {
                                    expected: "two numbers `[0.9, 0.999]`".into(),
                                    found: self.describe(b),
                                },
                                b.span,
                                "betas",
                            ));
                            (None, None)
                        }
                    },
                    None => (Some(0.9), Some(0.999)),
                };
                let eps = self.opt_f(&c, "eps", 1e-8, 0.0, 1.0);
                let weight_decay = self.opt_f(&c, "weight_decay", 0.0, 0.0, f64::MAX);
                Some(Optimizer::Adam {
                    lr: lr?,
                    beta1: beta1?,
                    beta2: beta2?,
                    eps: eps?,
                    weight_decay: weight_decay?,
                })
            }
            "ngd" => {
                let c = self.bind(
                    &callee,
                    d.span,
                    args,
                    &[
                        "fim",
                        "lr",
                        "damping",
                        "refresh",
                        "refit",
                        "fisher",
                        "momentum",
                        "decay",
                        "batchnorm",
                    ],
                )?;
                let fe = self.req(&c, "fim")?;
                let fim = self.ngd_structure(fe, m)?;
                let lr = self.req(&c, "lr").and_then(|x| self.positive(x, "lr"));
                let damping = match c.get("damping") {
                    Some(x) => self.positive(x, "damping"),
                    None => Some(1e-3),
                };
                let refresh = match c.get("refresh") {
                    Some(x) => self.int(x, "refresh", 1, 1 << 30).map(|v| v as u64),
                    None => Some(10),
                };
                let momentum = self.opt_f(&c, "momentum", 0.0, 0.0, 0.999999);
                let decay = self.opt_f(&c, "decay", 0.95, 0.0, 0.999999);
                let fisher = match c.get("fisher") {
                    Some(x) => self.ngd_fisher(x),
                    None => Some(FisherVariant::True),
                };
                let refit = match (c.get("refit"), &fim) {
                    (Some(x), s) if s.has_ekfac() => {
                        let r = self.int(x, "refit", 1, 1 << 30).map(|v| v as u64)?;
                        if let Some(t) = refresh {
                            if r > t {
                                self.error(
                                    Diagnostic::new(
                                        ErrorKind::OutOfRange {
                                            name: "refit".into(),
                                            value: r.to_string(),
                                            range: format!("must be ≤ refresh ({t})"),
                                        },
                                        x.span,
                                        "the diagonal is refitted within each basis",
                                    )
                                    .hint("EKFAC refits its diagonal at least as often as it recomputes its eigenbasis"),
                                );
                                return None;
                            }
                        }
                        Some(Some(r))
                    }
                    (Some(x), other) => {
                        // Point at `refit = ...`, not only at its value.
                        let at = args
                            .iter()
                            .find_map(|a| a.name.as_ref().filter(|n| n.name == "refit"))
                            .map_or(x.span, |n| n.span.to(x.span));
                        self.error(
                            Diagnostic::new(
                                ErrorKind::UnknownOption {
                                    func: format!("ngd(fim = {})", other.name()),
                                    name: "refit".into(),
                                },
                                at,
                                "only EKFAC refits a diagonal",
                            )
                            .hint("remove `refit`, or use `fim = EKFAC`"),
                        );
                        return None;
                    }
                    (None, s) if s.has_ekfac() => Some(refresh),
                    (None, _) => Some(None),
                };
                let batchnorm = match c.get("batchnorm") {
                    Some(x) => self.ngd_batchnorm(x, m),
                    None => Some(BatchNormStats::Running),
                };
                Some(Optimizer::Ngd {
                    batchnorm: batchnorm?,
                    fim,
                    fisher: fisher?,
                    lr: lr?,
                    damping: damping?,
                    refresh: refresh?,
                    refit: refit?,
                    momentum: momentum?,
                    decay: decay?,
                })
            }
            other => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::Unknown {
                            what: "optimizer".into(),
                            name: other.into(),
                        },
                        callee.span,
                        "not an optimizer",
                    )
                    .hint_opt(did_you_mean(other, OPTS))
                    .hint("optimizers: sgd(lr, momentum, nesterov, weight_decay), adam(lr, betas, eps, weight_decay), ngd(fim, lr, damping, refresh, refit)"),
                );
                None
            }
        }
    }

    /// Whether a natural-gradient optimiser's preconditioner can
    /// represent every parameterised layer of the model it trains: KFAC
    /// and EKFAC have no factors for norm layers, embeddings or grouped
    /// convolutions, a mix must give every family a structure (refused
    /// here, at `fim = ...`, rather than when the first refresh runs).
    pub(super) fn ngd_fits_model(&mut self, opt: &Optimizer, e: &'a Expr, m: &ModelV) -> bool {
        let Optimizer::Ngd { fim, .. } = opt else {
            return true;
        };
        let d = self.deref(e);
        let at = Self::named_call(d)
            .and_then(|(_, args)| {
                args.iter()
                    .find(|a| a.name.as_ref().is_some_and(|n| n.name == "fim"))
            })
            .map_or(d.span, |a| a.value.span);
        let layers: Vec<_> = m.spec.param_layers().collect();
        self.layers_supported(fim, &layers, at, false).is_some()
    }

    /// `batchnorm = running | batch`: batch statistics need a BatchNorm to
    /// apply to.
    fn ngd_batchnorm(&mut self, e: &'a Expr, m: &ModelV) -> Option<BatchNormStats> {
        let word = self.symbol(e, "`batchnorm` choice", &["running", "batch"])?;
        if word == "running" {
            return Some(BatchNormStats::Running);
        }
        let has_bn = m.spec.layers.iter().any(|l| {
            matches!(
                l.layer,
                Layer::BatchNorm1d { .. } | Layer::BatchNorm2d { .. }
            )
        });
        if !has_bn {
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: "`batchnorm = batch` needs a model with BatchNorm layers".into(),
                    },
                    self.deref(e).span,
                    "this model has no BatchNorm",
                )
                .hint("remove `batchnorm`: other norm layers have no running statistics"),
            );
            return None;
        }
        Some(BatchNormStats::Batch)
    }

    pub(super) fn ngd_structure(&mut self, e: &'a Expr, m: &ModelV) -> Option<Structure> {
        let d = self.deref(e);
        let (name, args) = Self::named_call(d)
            .map(|(c, a)| (c.name, a))
            .unwrap_or_default();
        if name == "mix" {
            return self.ngd_mix(e, m);
        }
        const OK: [&str; 5] = ["KFAC", "EKFAC", "Diag", "BlockDiag", "Dense"];
        if OK.contains(&name.as_str()) && !args.is_empty() {
            // Refit and refresh are the optimiser's options, not the
            // structure's.
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: format!("the natural gradient's `{name}` takes no options"),
                    },
                    d.span,
                    "options are given to `ngd(...)`",
                )
                .hint(format!(
                    "write `fim = {name}` and set `refresh`, `refit`, `damping` on `ngd`"
                )),
            );
            return None;
        }
        if !OK.contains(&name.as_str()) {
            self.error(
                Diagnostic::new(
                    ErrorKind::BadChoice {
                        what: "natural-gradient preconditioner".into(),
                        value: self.expr_text(d),
                    },
                    d.span,
                    "expected `KFAC`, `EKFAC`, `Diag`, `BlockDiag` or `Dense`",
                )
                .hint_opt(did_you_mean(&name, OK)),
            );
            return None;
        }
        Some(match name.as_str() {
            "KFAC" => Structure::Kfac,
            "EKFAC" => Structure::Ekfac {
                refit: true,
                initial_basis: false,
            },
            "Diag" => Structure::Diag,
            "Dense" => Structure::Dense,
            _ => Structure::BlockDiag,
        })
    }

    /// `fim = mix(linear = KFAC, conv = KFAC, norm = BlockDiag, ...)`:
    /// each part one of the natural gradient's block structures, without
    /// options (refit and refresh are the optimiser's).
    fn ngd_mix(&mut self, e: &'a Expr, m: &ModelV) -> Option<Structure> {
        let names: Vec<&str> = m.spec.param_layers().map(|l| l.name.as_str()).collect();
        let mix = self.structure(e, Some((&names, &m.name)))?;
        let Structure::Mix { families, layers } = &mix else {
            return Some(mix);
        };
        let parts = families.values().chain(layers.values());
        let plain = |s: &Structure| match s {
            Structure::Kfac | Structure::Diag | Structure::BlockDiag => true,
            Structure::Ekfac {
                refit,
                initial_basis,
            } => *refit && !*initial_basis,
            _ => false,
        };
        if let Some(bad) = parts.clone().find(|s| !plain(s)) {
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: format!(
                            "a natural gradient's mix takes `KFAC`, `EKFAC`, `Diag` and `BlockDiag` without options, found `{}`",
                            bad.name()
                        ),
                    },
                    self.deref(e).span,
                    "a part of this mix",
                )
                .hint(if matches!(bad, Structure::Ekfac { .. }) {
                    "write `EKFAC` and set `refresh`, `refit` and `damping` on `ngd(...)`"
                } else {
                    "give that family `KFAC`, `EKFAC`, `Diag` or `BlockDiag`"
                }),
            );
            return None;
        }
        Some(mix)
    }

    pub(super) fn ngd_fisher(&mut self, e: &'a Expr) -> Option<FisherVariant> {
        let d = self.deref(e);
        match &d.kind {
            ExprKind::Bool(true) => Some(FisherVariant::True),
            _ => match Self::named_call(d) {
                Some((c, args)) if c.name == "mc" => {
                    let call = self.bind(&c, d.span, args, &["samples", "seed"])?;
                    let samples = match call.get("samples") {
                        Some(s) => self.count(s, "samples")?,
                        None => 1,
                    };
                    let seed = self.seed(&call)?;
                    Some(FisherVariant::Mc { samples, seed })
                }
                _ => self
                    .symbol(d, "Fisher variant", &["true", "exact", "empirical"])
                    .map(|s| {
                        if s == "empirical" {
                            FisherVariant::Empirical
                        } else {
                            FisherVariant::True
                        }
                    }),
            },
        }
    }

    pub(super) fn lr_schedule(&mut self, e: &'a Expr) -> Option<LrSchedule> {
        let d = self.deref(e);
        match Self::named_call(d) {
            Some((c, args)) if c.name == "step" => {
                let call = self.bind(&c, d.span, args, &["every", "gamma"])?;
                let every = self
                    .req(&call, "every")
                    .and_then(|x| self.int(x, "every", 1, 1 << 30));
                let gamma = match call.get("gamma") {
                    Some(g) => self.float_in(g, "gamma", 0.0, 1.0),
                    None => Some(0.1),
                };
                Some(LrSchedule::Step {
                    every: every? as u64,
                    gamma: gamma?,
                })
            }
            _ => self
                .symbol(d, "learning-rate schedule", &["constant", "step", "cosine"])
                .map(|s| {
                    if s == "cosine" {
                        LrSchedule::Cosine
                    } else {
                        LrSchedule::Constant
                    }
                }),
        }
    }
}
