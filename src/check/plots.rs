//! `plot` statements: which results a chart draws, checked once every
//! measurement is known.

use super::*;

impl<'a> Checker<'a> {
    pub(super) fn plot_stmt(
        &mut self,
        pattern: &'a crate::syntax::StrLit,
        x: &'a crate::syntax::Ident,
        by: &'a [crate::syntax::Ident],
        flags: &'a [crate::syntax::Ident],
        file: Option<&'a crate::syntax::StrLit>,
        span: Span,
    ) {
        const FLAGS: [&str; 5] = ["log_x", "log_y", "linear_y", "points", "lines"];
        for f in flags {
            if !FLAGS.contains(&f.name.as_str()) {
                self.error(
                    Diagnostic::new(
                        ErrorKind::Unknown {
                            what: "plot option".into(),
                            name: f.name.clone(),
                        },
                        f.span,
                        "not a plot option",
                    )
                    .hint_opt(did_you_mean(&f.name, FLAGS))
                    .hint(format!("plot options are: {}", FLAGS.join(", "))),
                );
            }
        }
        self.plots.push(PlotCheck {
            pattern: pattern.value.clone(),
            span: pattern.span,
            x: (x.name.clone(), x.span),
            by: by.iter().map(|b| (b.name.clone(), b.span)).collect(),
        });
        let file = file.map(|f| f.value.clone()).unwrap_or_else(|| {
            let mut f: String = pattern
                .value
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            f = f.trim_matches('_').to_string();
            format!("{f}_vs_{}", x.name)
        });
        self.emit(
            Op::Plot {
                pattern: pattern.value.clone(),
                x: x.name.clone(),
                by: by.iter().map(|b| b.name.clone()).collect(),
                flags: flags.iter().map(|b| b.name.clone()).collect(),
                file,
            },
            span,
        );
    }

    /// Plots are checked last: their patterns may match keys defined later.
    pub(super) fn check_plots(&mut self) {
        let plots = std::mem::take(&mut self.plots);
        // After another error some measurements were never checked, so a
        // pattern matching nothing may be a consequence: do not report it.
        let keys_complete = self.diags.is_empty();
        for p in plots {
            let matches = self.keys.iter().any(|k| glob(&p.pattern, k));
            if !matches && keys_complete {
                let keys: Vec<&str> = self.keys.iter().map(|s| s.as_str()).collect();
                self.error(
                    Diagnostic::new(
                        ErrorKind::Invalid {
                            message: format!("no measurement matches `{}`", p.pattern),
                        },
                        p.span,
                        "matches nothing this file measures",
                    )
                    .hint_opt(did_you_mean(&p.pattern, keys.iter().copied()))
                    .hint(if keys.is_empty() {
                        "this file measures nothing".to_string()
                    } else {
                        format!(
                            "measured: {}",
                            keys.iter().take(8).copied().collect::<Vec<_>>().join(", ")
                        )
                    }),
                );
            }
            const AXES: [&str; 5] = ["step", "epoch", "time", "memory", "index"];
            if !AXES.contains(&p.x.0.as_str()) && !self.sweep_vars.contains(&p.x.0) {
                let mut cands: Vec<String> = AXES.iter().map(|s| s.to_string()).collect();
                cands.extend(self.sweep_vars.iter().cloned());
                self.error(
                    Diagnostic::new(
                        ErrorKind::Unknown {
                            what: "plot axis".into(),
                            name: p.x.0.clone(),
                        },
                        p.x.1,
                        "not an axis",
                    )
                    .hint_opt(did_you_mean(&p.x.0, cands.iter().map(|s| s.as_str())))
                    .hint(format!("plot against: {}", cands.join(", "))),
                );
            }
            for (b, span) in &p.by {
                if b != "group" && b != "layer" && !self.sweep_vars.contains(b) {
                    let mut cands: Vec<String> = vec!["group".into(), "layer".into()];
                    cands.extend(self.sweep_vars.iter().cloned());
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Undefined {
                                what: "sweep variable".into(),
                                name: b.clone(),
                            },
                            *span,
                            "not a sweep variable of this file",
                        )
                        .hint_opt(did_you_mean(b, cands.iter().map(|s| s.as_str())))
                        .hint(format!("group by: {}", cands.join(", "))),
                    );
                }
            }
        }
    }
}
