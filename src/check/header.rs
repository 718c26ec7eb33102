//! The `experiment { ... }` header: seed, device, dtype, output folder,
//! memory budget and the other run-wide options.

use super::*;

impl<'a> Checker<'a> {
    pub(super) fn header(&mut self, file: &'a File) {
        let headers: Vec<&Stmt> = file
            .stmts
            .iter()
            .filter(|s| matches!(s.kind, StmtKind::Experiment { .. }))
            .collect();
        let Some(first) = headers.first() else {
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: "missing `experiment` header".into(),
                    },
                    Span::new(0, 0),
                    "the file should start with the experiment header",
                )
                .hint("start the file with `experiment NAME { seed = 0 }`"),
            );
            return;
        };
        let name_span = |s: &Stmt| match &s.kind {
            StmtKind::Experiment { name, .. } => name.span,
            _ => s.span,
        };
        for extra in &headers[1..] {
            self.error(
                Diagnostic::new(
                    ErrorKind::Invalid {
                        message: "a file declares one experiment".into(),
                    },
                    name_span(extra),
                    "second `experiment` header",
                )
                .related(name_span(first), "first declared here"),
            );
        }
        let StmtKind::Experiment { name, settings } = &first.kind else {
            return;
        };
        self.header.name = name.name.clone();
        self.header.out = format!("runs/{}", name.name);
        let mut seen: std::collections::BTreeMap<&str, Span> = std::collections::BTreeMap::new();
        const KEYS: [&str; 6] = ["seed", "backend", "device", "dtype", "out", "memory_budget"];
        for s in settings {
            let key = s.key.name.as_str();
            if let Some(first) = seen.get(key).filter(|_| KEYS.contains(&key)) {
                self.error(
                    Diagnostic::new(
                        ErrorKind::Duplicate { name: key.into() },
                        s.key.span,
                        "set again here",
                    )
                    .related(*first, "first set here"),
                );
                continue;
            }
            seen.insert(key, s.key.span);
            match key {
                "seed" => {
                    if let Some(v) = self.int(&s.value, "seed", 0, u32::MAX as i64) {
                        self.header.seed = v as u64;
                    }
                }
                "backend" => {
                    if let Some(v) = self.word(&s.value, "backend") {
                        self.header.backend = v;
                    }
                }
                "device" => {
                    if let Some(v) = self.device(&s.value) {
                        self.header.device = v;
                    }
                }
                "dtype" => {
                    if let Some(v) = self.symbol(&s.value, "dtype", &["f32", "f64"]) {
                        self.header.dtype = if v == "f64" { Dtype::F64 } else { Dtype::F32 };
                    }
                }
                "out" => {
                    if let Some(v) = self.string(&s.value, "out") {
                        self.header.out = v;
                    }
                }
                "memory_budget" => {
                    if let Some(v) = self.size(&s.value, "memory_budget") {
                        self.header.memory_budget = Some(v);
                    }
                }
                other => {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::Unknown {
                                what: "experiment setting".into(),
                                name: other.into(),
                            },
                            s.key.span,
                            "not an experiment setting",
                        )
                        .hint_opt(did_you_mean(other, KEYS))
                        .hint(format!("settings are: {}", KEYS.join(", "))),
                    );
                }
            }
        }
        self.budget = self
            .opts
            .memory_budget
            .or(self.header.memory_budget)
            .unwrap_or(self.opts.default_budget);
    }

    fn device(&mut self, e: &'a Expr) -> Option<String> {
        let e = self.deref(e);
        let text = match &e.kind {
            ExprKind::Ident(n) => n.clone(),
            ExprKind::Str(s) => s.clone(),
            ExprKind::Call { callee, args } if callee.name == "cuda" && args.len() == 1 => {
                let n = self.int(&args[0].value, "cuda device", 0, 1023)?;
                format!("cuda:{n}")
            }
            _ => String::new(),
        };
        let ok = text == "cpu"
            || text == "cuda"
            || text
                .strip_prefix("cuda:")
                .is_some_and(|n| !n.is_empty() && n.parse::<u32>().is_ok());
        if ok {
            Some(text)
        } else {
            self.error(
                Diagnostic::new(
                    ErrorKind::BadChoice {
                        what: "device".into(),
                        value: if text.is_empty() { "this".into() } else { text },
                    },
                    e.span,
                    "expected `cpu`, `cuda` or `\"cuda:N\"`",
                )
                .hint("write `device = cpu`, `device = cuda` or `device = \"cuda:1\"`"),
            );
            None
        }
    }
}
