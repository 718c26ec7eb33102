//! `train net on data { ... }`: loss, optimiser, length, schedule, mode
//! (plain, α-scaled, linearised), per-example tracking and hooks.

use super::env::{Binding, DataV, ModelV, Val};
use super::{Checker, HookCtx};
use crate::diag::{did_you_mean, Diagnostic, ErrorKind};
use crate::plan::{
    BatchNormStats, Group, HookSchedule, HookSpec, Length, LossKind, LrSchedule, Op, Optimizer,
    Tracking, TrainConfig, TrainMode,
};
use crate::syntax::{Expr, ExprKind, Hook, Ident, Schedule, Setting, Span};
use std::collections::BTreeMap;

const SETTINGS: [&str; 11] = [
    "loss",
    "optimizer",
    "epochs",
    "steps",
    "batch",
    "schedule",
    "mode",
    "seed",
    "eval",
    "track",
    "augment",
];

impl<'a> Checker<'a> {
    pub(super) fn train_stmt(
        &mut self,
        model: &'a Ident,
        data: &'a Expr,
        result: Option<&'a Ident>,
        settings: &'a [Setting],
        hooks: &'a [Hook],
        span: Span,
    ) {
        let defined = self.train_inner(model, data, result, settings, hooks, span);
        if let (false, Some(r)) = (defined, result) {
            self.definition_failed(&r.name);
        }
    }

    /// Returns whether the trained model (`as NAME`) was defined.
    fn train_inner(
        &mut self,
        model: &'a Ident,
        data: &'a Expr,
        result: Option<&'a Ident>,
        settings: &'a [Setting],
        hooks: &'a [Hook],
        span: Span,
    ) -> bool {
        let m = self.model_ref(model);
        let dv = self.data_expr(data, "");
        let (Some(m), Some(dv)) = (m, dv) else {
            return false;
        };
        if !self.compatible(&m, &dv, data.span) {
            return false;
        }
        if let Some(r) = result {
            if !self.define_check(&r.name, r.span) {
                return false;
            }
        }
        let mut by_key: BTreeMap<&str, &'a Setting> = BTreeMap::new();
        for s in settings {
            let k = s.key.name.as_str();
            if !SETTINGS.contains(&k) {
                self.error(
                    Diagnostic::new(
                        ErrorKind::Unknown {
                            what: "training setting".into(),
                            name: k.into(),
                        },
                        s.key.span,
                        "not a training setting",
                    )
                    .hint_opt(did_you_mean(k, SETTINGS))
                    .hint(format!("settings: {}", SETTINGS.join(", "))),
                );
                continue;
            }
            if by_key.insert(k, s).is_some() {
                self.error(Diagnostic::new(
                    ErrorKind::Duplicate { name: k.into() },
                    s.key.span,
                    "set again here",
                ));
            }
        }
        // `train net on data [as name]`: where missing settings are reported.
        let head = Span::new(span.start, result.map_or(data.span.end, |r| r.span.end));
        let Some(config) = self.train_config(&m, &dv, &by_key, head) else {
            return false;
        };
        if config.track.is_some() {
            // Per-example tracking reports these, tagged by group.
            self.record_key("examples/accuracy", &["group"]);
            self.record_key("examples/loss", &["group"]);
        }
        if config.eval.is_some() {
            self.record_key("eval/accuracy", &[]);
            self.record_key("eval/loss", &[]);
        }
        self.record_key("train/loss", &[]);
        if !config.penalties.is_empty() {
            self.record_key("train/penalty", &[]);
        }
        let name = result.map_or_else(|| format!("train_{}", m.name), |r| r.name.clone());
        let total = config.total_steps;
        let per_epoch = dv.info.n.div_ceil(config.batch) as u64;
        let train_id = self.emit(
            Op::Train {
                name,
                model: m.step,
                data: dv.step,
                config,
                hooks: Vec::new(),
            },
            span,
        );
        let mut specs = Vec::new();
        for (i, h) in hooks.iter().enumerate() {
            let Some(schedule) = self.hook_schedule(h) else {
                continue;
            };
            let fires = schedule.fire_count(total, per_epoch);
            let first = self.items.len();
            let saved = self.hook.replace(HookCtx {
                train: train_id,
                hook: i as u32,
            });
            self.scopes.push();
            // Inside the hook the model's name means its live weights.
            self.scopes.insert(
                model.name.clone(),
                Binding::Val(
                    Val::Model(ModelV {
                        step: train_id,
                        name: m.name.clone(),
                        spec: m.spec.clone(),
                    }),
                    model.span,
                ),
            );
            for s in &h.body {
                self.stmt(s, false);
            }
            self.pop_scope();
            self.hook = saved;
            let steps = (first..self.items.len())
                .map(|i| crate::plan::StepId(i as u32))
                .collect();
            specs.push(HookSpec {
                schedule,
                fires,
                steps,
            });
        }
        if let Op::Train { hooks, .. } = &mut self.items[train_id.0 as usize].op {
            *hooks = specs;
        }
        if result.is_none() {
            let depth = self.scopes.depth();
            self.trained_unnamed
                .push((model.name.clone(), m.step, head, depth));
        }
        if let Some(r) = result {
            self.scopes.insert(
                r.name.clone(),
                Binding::Val(
                    Val::Model(ModelV {
                        step: train_id,
                        name: r.name.clone(),
                        spec: m.spec.clone(),
                    }),
                    r.span,
                ),
            );
        }
        true
    }

    fn train_config(
        &mut self,
        m: &ModelV,
        dv: &DataV,
        s: &BTreeMap<&str, &'a Setting>,
        span: Span,
    ) -> Option<TrainConfig> {
        let mut ok = true;
        let (loss, penalties) = match s.get("loss") {
            Some(l) => match self.loss_setting(&l.value, m) {
                Some((k, p)) => (Some(k), p),
                None => (None, Vec::new()),
            },
            None if dv.info.classes.is_some() => (Some(LossKind::CrossEntropy), Vec::new()),
            None => (Some(LossKind::Mse), Vec::new()),
        };
        if loss == Some(LossKind::CrossEntropy) && dv.info.classes.is_none() {
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: "cross-entropy needs class labels".into(),
                    },
                    s.get("loss").map_or(span, |l| l.value.span),
                    format!("{} is a regression dataset", dv.shown()),
                )
                .hint("use `loss = mse`"),
            );
            ok = false;
        }
        let optimizer = match s.get("optimizer") {
            Some(o) => self
                .optimizer(&o.value, m)
                .filter(|opt| self.ngd_fits_model(opt, &o.value, m)),
            None => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::MissingOption {
                            func: "train".into(),
                            name: "optimizer".into(),
                        },
                        span,
                        "how should it train?",
                    )
                    .hint("add e.g. `optimizer = sgd(lr = 0.1, momentum = 0.9)`"),
                );
                None
            }
        };
        let length = match (s.get("epochs"), s.get("steps")) {
            (Some(e), None) => self
                .int(&e.value, "epochs", 1, 1 << 30)
                .map(|v| Length::Epochs(v as u64)),
            (None, Some(st)) => self
                .int(&st.value, "steps", 1, 1 << 40)
                .map(|v| Length::Steps(v as u64)),
            (Some(_), Some(st)) => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::Invalid {
                            message: "give `epochs` or `steps`, not both".into(),
                        },
                        st.span,
                        "second length",
                    )
                    .related(s["epochs"].span, "epochs given here"),
                );
                None
            }
            (None, None) => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::MissingOption {
                            func: "train".into(),
                            name: "epochs".into(),
                        },
                        span,
                        "how long?",
                    )
                    .hint("add `epochs = 10` or `steps = 1000`"),
                );
                None
            }
        };
        let batch = match s.get("batch") {
            Some(b) => self
                .int(&b.value, "batch", 1, dv.info.n as i64)
                .map(|v| v as usize),
            None => Some(64.min(dv.info.n)),
        };
        let schedule = match s.get("schedule") {
            Some(sc) => self.lr_schedule(&sc.value),
            None => Some(LrSchedule::Constant),
        };
        let mode = match s.get("mode") {
            Some(md) => self.train_mode(&md.value),
            None => Some(TrainMode::Plain),
        };
        let seed = match s.get("seed") {
            Some(x) => self
                .int(&x.value, "seed", 0, u32::MAX as i64)
                .map(|v| v as u64),
            None => Some(self.header.seed),
        };
        let eval = match s.get("eval") {
            Some(x) => match self.data_expr(&x.value, "") {
                Some(ev) if self.compatible(m, &ev, x.value.span) => Some(Some(ev.step)),
                _ => None,
            },
            None => Some(None),
        };
        let track = match s.get("track") {
            Some(x) => self.tracking(&x.value, dv).map(Some),
            None => Some(None),
        };
        let augment = match s.get("augment") {
            Some(x) => self.augment(&x.value, dv).map(Some),
            None => Some(None),
        };
        let (loss, optimizer, length, batch, schedule, mode, seed, eval, track, augment) = (
            loss?, optimizer?, length?, batch?, schedule?, mode?, seed?, eval?, track?, augment?,
        );
        if let (
            Optimizer::Ngd {
                batchnorm: BatchNormStats::Batch,
                ..
            },
            TrainMode::Linearized { .. },
        ) = (&optimizer, &mode)
        {
            // A linearised model is the network at w₀ in evaluation mode,
            // in training too: there are no batch statistics to take.
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: "a linearised model normalises with its running statistics, in training too".into(),
                    },
                    s.get("mode").map_or(span, |md| md.value.span),
                    "`batchnorm = batch` has no batch statistics to take here",
                )
                .hint("remove `batchnorm = batch` from `ngd(...)`"),
            );
            return None;
        }
        if !ok {
            return None;
        }
        let per_epoch = dv.info.n.div_ceil(batch) as u64;
        let total_steps = match length {
            Length::Epochs(e) => e * per_epoch,
            Length::Steps(st) => st,
        };
        Some(TrainConfig {
            loss,
            penalties,
            optimizer,
            length,
            batch,
            schedule,
            mode,
            seed,
            eval,
            track,
            total_steps,
            augment,
        })
    }

    /// `augment = crop_flip(padding = 4, flip = true, seed = 0)`: the
    /// standard random crop and flip of image batches.
    fn augment(&mut self, e: &'a Expr, dv: &DataV) -> Option<crate::plan::Augment> {
        let d = self.deref(e);
        let Some((c, args)) = Self::named_call(d).filter(|(c, _)| c.name == "crop_flip") else {
            self.symbol(d, "augmentation", &["crop_flip"])?;
            return None;
        };
        let call = self.bind(&c, d.span, args, &["padding", "flip", "seed"])?;
        if dv.info.shape.len() != 3 {
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: format!(
                            "crop_flip augments images [C, H, W]; this dataset's examples are {}",
                            super::data::fmt_shape(&dv.info.shape)
                        ),
                    },
                    d.span,
                    "not an image dataset",
                )
                .hint("reshape the data to [C, H, W] images, or drop `augment`"),
            );
            return None;
        }
        let padding = match call.get("padding") {
            Some(p) => self.int(p, "padding", 0, 1 << 10)? as usize,
            None => 4,
        };
        let flip = match call.get("flip") {
            Some(f) => self.boolean(f, "flip")?,
            None => true,
        };
        let seed = match call.get("seed") {
            Some(x) => self.int(x, "seed", 0, u32::MAX as i64)? as u64,
            None => self.header.seed,
        };
        Some(crate::plan::Augment {
            padding,
            flip,
            seed,
        })
    }

    fn train_mode(&mut self, e: &'a Expr) -> Option<TrainMode> {
        let d = self.deref(e);
        match Self::named_call(d) {
            Some((c, args)) if c.name == "linearized" => {
                let call = self.bind(&c, d.span, args, &["center"])?;
                let center = match call.get("center") {
                    Some(x) => self.boolean(x, "center")?,
                    None => false,
                };
                Some(TrainMode::Linearized { center })
            }
            Some((c, args)) if c.name == "scaled" => {
                let call = self.bind(&c, d.span, args, &["alpha", "center"])?;
                let ae = self.req(&call, "alpha")?;
                let alpha = self.positive(ae, "alpha");
                let center = match call.get("center") {
                    Some(x) => self.boolean(x, "center"),
                    None => Some(true),
                };
                Some(TrainMode::Scaled {
                    alpha: alpha?,
                    center: center?,
                })
            }
            _ => self
                .symbol(d, "training mode", &["plain", "scaled", "linearized"])
                .and_then(|s| match s.as_str() {
                    "plain" => Some(TrainMode::Plain),
                    "linearized" => Some(TrainMode::Linearized { center: false }),
                    _ => {
                        self.error(Diagnostic::new(
                            ErrorKind::MissingOption {
                                func: "scaled".into(),
                                name: "alpha".into(),
                            },
                            d.span,
                            "write `scaled(alpha = 100)`",
                        ));
                        None
                    }
                }),
        }
    }

    fn tracking(&mut self, e: &'a Expr, dv: &DataV) -> Option<Tracking> {
        let d = self.deref(e);
        let Some((c, args)) = Self::named_call(d).filter(|(c, _)| c.name == "per_example") else {
            self.error(Diagnostic::new(
                ErrorKind::TypeMismatch {
                    expected: "`per_example(every = N, groups = [...])`".into(),
                    found: self.describe(d),
                },
                d.span,
                "not a tracking specification",
            ));
            return None;
        };
        let call = self.bind(&c, d.span, args, &["every", "groups"])?;
        let every = match call.get("every") {
            Some(x) => self.int(x, "every", 1, 1 << 30)? as u64,
            None => 1,
        };
        let mut groups = Vec::new();
        if let Some(g) = call.get("groups") {
            let gd = self.deref(g);
            let items: Vec<&'a Expr> = match &gd.kind {
                ExprKind::List(items) => items.iter().map(|i| &i.value).collect(),
                _ => vec![gd],
            };
            for it in items {
                let it = self.deref(it);
                let group = match Self::named_call(it) {
                    Some((gc, gargs)) if gc.name == "difficulty" => {
                        let call = self.bind(&gc, it.span, gargs, &["bins"])?;
                        let bins = match call.get("bins") {
                            Some(b) => self.int(b, "bins", 2, 100)? as usize,
                            None => 4,
                        };
                        Group::Difficulty { bins }
                    }
                    _ => {
                        let s = self.symbol(
                            it,
                            "group",
                            &["all", "flipped", "clean", "per_class", "difficulty"],
                        )?;
                        match s.as_str() {
                            "all" => Group::All,
                            "flipped" | "clean" => {
                                if !dv.noisy {
                                    self.error(
                                        Diagnostic::new(
                                            ErrorKind::Invalid {
                                                message: format!("`{s}` needs labels corrupted with `label_noise`"),
                                            },
                                            it.span,
                                            format!("{} has no flipped labels", dv.shown()),
                                        )
                                        .hint("train on `data |> label_noise(0.15, seed = 0)`"),
                                    );
                                    return None;
                                }
                                if s == "flipped" {
                                    Group::Flipped
                                } else {
                                    Group::Clean
                                }
                            }
                            "per_class" => Group::PerClass,
                            _ => Group::Difficulty { bins: 4 },
                        }
                    }
                };
                groups.push(group);
            }
        } else {
            groups.push(Group::All);
        }
        Some(Tracking { every, groups })
    }

    fn hook_schedule(&mut self, h: &'a Hook) -> Option<HookSchedule> {
        match &h.schedule {
            Schedule::Every { count, unit, span } => {
                if *count == 0 || *count > (1 << 40) {
                    self.error(Diagnostic::new(
                        ErrorKind::OutOfRange {
                            name: "every".into(),
                            value: count.to_string(),
                            range: "must be ≥ 1".into(),
                        },
                        *span,
                        "how often the hook runs",
                    ));
                    return None;
                }
                match unit.name.as_str() {
                    "step" | "steps" => Some(HookSchedule::EverySteps { n: *count }),
                    "epoch" | "epochs" => Some(HookSchedule::EveryEpochs { n: *count }),
                    other => {
                        self.error(
                            Diagnostic::new(
                                ErrorKind::BadChoice {
                                    what: "hook unit".into(),
                                    value: other.into(),
                                },
                                unit.span,
                                "expected `steps` or `epochs`",
                            )
                            .hint_opt(did_you_mean(other, ["steps", "epochs"])),
                        );
                        None
                    }
                }
            }
            Schedule::At(e) => {
                let d = self.deref(e);
                match &d.kind {
                    ExprKind::List(items) => {
                        // Training steps, bounded as `steps =` is (not a size).
                        let at: Option<Vec<u64>> = items
                            .iter()
                            .map(|it| self.int(&it.value, "step", 0, 1 << 40).map(|x| x as u64))
                            .collect();
                        Some(HookSchedule::Steps { at: at? })
                    }
                    _ => match Self::named_call(d) {
                        Some((c, args)) if c.name == "log_steps" => {
                            let call = self.bind(&c, d.span, args, &["start", "factor"])?;
                            let start = match call.get("start") {
                                Some(x) => self.int(x, "start", 1, 1 << 30)? as u64,
                                None => 1,
                            };
                            let factor = match call.get("factor") {
                                Some(x) => {
                                    let f = self.number(x, "factor")?;
                                    if f <= 1.0 {
                                        self.out_of_range(x, "factor", f, "must be > 1");
                                        return None;
                                    }
                                    f
                                }
                                None => 1.15,
                            };
                            Some(HookSchedule::LogSteps { start, factor })
                        }
                        Some((c, args))
                            if (c.name == "start" || c.name == "end") && args.is_empty() =>
                        {
                            Some(if c.name == "start" {
                                HookSchedule::Start
                            } else {
                                HookSchedule::End
                            })
                        }
                        _ => {
                            self.error(
                                Diagnostic::new(
                                    ErrorKind::TypeMismatch {
                                        expected: "a schedule".into(),
                                        found: self.describe(d),
                                    },
                                    d.span,
                                    "when should this run?",
                                )
                                .hint("use `at log_steps(start = 5, factor = 1.15)`, `at [0, 100, 1000]`, `at start`, `at end` or `every 10 steps`"),
                            );
                            None
                        }
                    },
                }
            }
        }
    }
}
