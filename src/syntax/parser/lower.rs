//! The parse tree → the AST: every node with its span in the whole file
//! (pieces are parsed on their own, at an offset).

use super::*;

/// The span of a pair, without the whitespace and comments that pest's
/// implicit skipping leaves at its end when the rule ends in an optional
/// part that is absent (`expr ~ (kw_as ~ string)?`).
pub(super) fn span_of(p: &Pair<Rule>, offset: usize) -> Span {
    let s = p.as_span();
    let len = if p.as_rule() == Rule::string_inner {
        p.as_str().len()
    } else {
        trimmed_len(p.as_str())
    };
    Span::new(s.start() + offset, s.start() + len + offset)
}

/// Length of `text` without trailing whitespace and comments.
pub(super) fn trimmed_len(text: &str) -> usize {
    let mut t = text.trim_end();
    loop {
        // A trailing `/* */` comment (a statement cannot end in `*/`).
        if let Some(body) = t.strip_suffix("*/") {
            if let Some(open) = body.rfind("/*") {
                t = t[..open].trim_end();
                continue;
            }
        }
        let line_start = t.rfind('\n').map_or(0, |i| i + 1);
        let Some(c) = comment_start(&t[line_start..]) else {
            return t.len();
        };
        t = t[..line_start + c].trim_end();
    }
}

/// Where a `//` comment starts in one line, outside strings.
pub(super) fn comment_start(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    let mut in_str = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'/' if !in_str && b.get(i + 1) == Some(&b'/') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

pub(super) fn ident(p: Pair<Rule>, off: usize) -> Ident {
    Ident {
        name: p.as_str().to_string(),
        span: span_of(&p, off),
    }
}

pub(super) fn strlit(p: Pair<Rule>, off: usize) -> StrLit {
    let span = span_of(&p, off);
    let inner = p.into_inner().next().map(|i| i.as_str()).unwrap_or("");
    StrLit {
        value: unescape(inner),
        span,
    }
}

pub(super) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub(super) fn stmt(p: Pair<Rule>, off: usize) -> Stmt {
    let span = span_of(&p, off);
    let rule = p.as_rule();
    let replicate = rule == Rule::for_stmt && p.as_str().starts_with("replicate");
    let mut it = p.into_inner().filter(|q| !is_keyword(q.as_rule()));
    let kind = match rule {
        Rule::experiment => {
            let name = ident(it.next().unwrap(), off);
            StmtKind::Experiment {
                name,
                settings: it.map(|s| setting(s, off)).collect(),
            }
        }
        Rule::data_stmt => {
            let mut names = Vec::new();
            let mut value = None;
            for q in it {
                match q.as_rule() {
                    Rule::ident => names.push(ident(q, off)),
                    _ => value = Some(expr(q, off)),
                }
            }
            StmtKind::Data {
                names,
                value: value.unwrap(),
            }
        }
        Rule::model_stmt => StmtKind::Model {
            name: ident(it.next().unwrap(), off),
            value: expr(it.next().unwrap(), off),
        },
        Rule::let_stmt => StmtKind::Let {
            name: ident(it.next().unwrap(), off),
            value: expr(it.next().unwrap(), off),
        },
        Rule::measure_stmt => StmtKind::Measure {
            items: it
                .map(|m| {
                    let span = span_of(&m, off);
                    let mut parts = m.into_inner().filter(|q| !is_keyword(q.as_rule()));
                    let e = expr(parts.next().unwrap(), off);
                    MeasureItem {
                        expr: e,
                        name: parts.next().map(|s| strlit(s, off)),
                        span,
                    }
                })
                .collect(),
        },
        Rule::train_stmt => {
            let model = ident(it.next().unwrap(), off);
            let data = expr(it.next().unwrap(), off);
            let mut result = None;
            let mut settings = Vec::new();
            let mut hooks = Vec::new();
            for q in it {
                match q.as_rule() {
                    Rule::ident => result = Some(ident(q, off)),
                    Rule::setting => settings.push(setting(q, off)),
                    Rule::hook => hooks.push(hook(q, off)),
                    _ => {}
                }
            }
            StmtKind::Train {
                model,
                data,
                result,
                settings,
                hooks,
            }
        }
        Rule::for_stmt => {
            let var = ident(it.next().unwrap(), off);
            let iter = it.next().unwrap();
            let iter = if iter.as_rule() == Rule::int_range {
                int_range(iter, off)
            } else {
                expr(iter, off)
            };
            StmtKind::For {
                var,
                iter,
                body: block(it.next().unwrap(), off),
                replicate,
            }
        }
        Rule::plot_stmt => {
            let pattern = strlit(it.next().unwrap(), off);
            let x = ident(it.next().unwrap(), off);
            let mut by = Vec::new();
            let mut flags = Vec::new();
            let mut file = None;
            for q in it {
                match q.as_rule() {
                    Rule::plot_by => by = idents(q, off),
                    Rule::plot_flags => flags = idents(q, off),
                    Rule::string => file = Some(strlit(q, off)),
                    _ => {}
                }
            }
            StmtKind::Plot {
                pattern,
                x,
                by,
                flags,
                file,
            }
        }
        Rule::save_stmt => StmtKind::Save {
            model: ident(it.next().unwrap(), off),
            path: strlit(it.next().unwrap(), off),
        },
        Rule::expect_stmt => StmtKind::Expect {
            text: strlit(it.next().unwrap(), off),
            claim: expr(it.next().unwrap(), off),
        },
        Rule::import_stmt => StmtKind::Import {
            path: strlit(it.next().unwrap(), off),
        },
        Rule::block_def => {
            let name = ident(it.next().unwrap(), off);
            let mut params = Vec::new();
            let mut members = Vec::new();
            for q in it {
                match q.as_rule() {
                    Rule::params => params = param_list(q, off),
                    _ => members.push(member(q, off)),
                }
            }
            StmtKind::Block {
                name,
                params,
                members,
            }
        }
        Rule::def_stmt => {
            let name = ident(it.next().unwrap(), off);
            let mut params = Vec::new();
            let mut value = None;
            for q in it {
                match q.as_rule() {
                    Rule::params => params = param_list(q, off),
                    _ => value = Some(expr(q, off)),
                }
            }
            StmtKind::Def {
                name,
                params,
                value: value.unwrap(),
            }
        }
        other => unreachable!("not a statement: {other:?}"),
    };
    Stmt { kind, span }
}

/// `a..b`: the integers a, a+1, ..., b−1, as a list.
pub(super) fn int_range(p: Pair<Rule>, off: usize) -> Expr {
    let span = span_of(&p, off);
    let mut it = p.into_inner();
    let mut bound = || {
        let q = it.next().unwrap();
        (
            q.as_str().parse::<i64>().unwrap_or(i64::MAX),
            span_of(&q, off),
        )
    };
    let ((a, _), (b, _)) = (bound(), bound());
    // A range too long to unroll is left empty; the checker refuses it.
    let items = if b.saturating_sub(a) > 10_000 {
        Vec::new()
    } else {
        (a..b)
            .map(|i| ListItem {
                value: Expr {
                    kind: ExprKind::Int(i),
                    span,
                },
                // Results are tagged with the number, not the range's text.
                label: Some(StrLit {
                    value: i.to_string(),
                    span,
                }),
            })
            .collect()
    };
    Expr {
        kind: ExprKind::List(items),
        span,
    }
}

pub(super) fn param_list(p: Pair<Rule>, off: usize) -> Vec<Param> {
    p.into_inner()
        .map(|q| {
            let span = span_of(&q, off);
            let mut it = q.into_inner();
            Param {
                name: ident(it.next().unwrap(), off),
                default: it.next().map(|d| expr(d, off)),
                span,
            }
        })
        .collect()
}

pub(super) fn member(p: Pair<Rule>, off: usize) -> Member {
    let span = span_of(&p, off);
    let mut it = p.into_inner();
    let name = ident(it.next().unwrap(), off);
    let mut inputs = None;
    let mut value = None;
    for q in it {
        match q.as_rule() {
            Rule::member_inputs => inputs = Some(idents(q, off)),
            _ => value = Some(expr(q, off)),
        }
    }
    Member {
        name,
        inputs,
        value: value.unwrap(),
        span,
    }
}

pub(super) fn idents(p: Pair<Rule>, off: usize) -> Vec<Ident> {
    p.into_inner()
        .filter(|q| q.as_rule() == Rule::ident)
        .map(|q| ident(q, off))
        .collect()
}

pub(super) fn is_keyword(r: Rule) -> bool {
    matches!(
        r,
        Rule::kw_experiment
            | Rule::kw_data
            | Rule::kw_model
            | Rule::kw_let
            | Rule::kw_measure
            | Rule::kw_train
            | Rule::kw_for
            | Rule::kw_replicate
            | Rule::kw_in
            | Rule::kw_plot
            | Rule::kw_against
            | Rule::kw_by
            | Rule::kw_with
            | Rule::kw_save
            | Rule::kw_expect
            | Rule::kw_to
            | Rule::kw_every
            | Rule::kw_at
            | Rule::kw_of
            | Rule::kw_on
            | Rule::kw_sharded
            | Rule::kw_as
            | Rule::kw_import
            | Rule::kw_block
            | Rule::kw_def
    )
}

pub(super) fn block(p: Pair<Rule>, off: usize) -> Vec<Stmt> {
    p.into_inner().map(|s| stmt(s, off)).collect()
}

pub(super) fn setting(p: Pair<Rule>, off: usize) -> Setting {
    let span = span_of(&p, off);
    let mut it = p.into_inner();
    Setting {
        key: ident(it.next().unwrap(), off),
        value: expr(it.next().unwrap(), off),
        span,
    }
}

pub(super) fn hook(p: Pair<Rule>, off: usize) -> Hook {
    let span = span_of(&p, off);
    let inner = p.into_inner().next().unwrap();
    let rule = inner.as_rule();
    let mut it = inner.into_inner().filter(|q| !is_keyword(q.as_rule()));
    match rule {
        Rule::every_hook => {
            let n = it.next().unwrap();
            let nspan = span_of(&n, off);
            let count = n.as_str().parse().unwrap_or(u64::MAX);
            let unit = ident(it.next().unwrap(), off);
            let sched_span = nspan.to(unit.span);
            Hook {
                schedule: Schedule::Every {
                    count,
                    unit,
                    span: sched_span,
                },
                body: block(it.next().unwrap(), off),
                span,
            }
        }
        _ => Hook {
            schedule: Schedule::At(expr(it.next().unwrap(), off)),
            body: block(it.next().unwrap(), off),
            span,
        },
    }
}

pub(super) fn expr(p: Pair<Rule>, off: usize) -> Expr {
    let span = span_of(&p, off);
    match p.as_rule() {
        Rule::expr => {
            let mut it = p.into_inner();
            let mut acc = expr(it.next().unwrap(), off);
            while let Some(op) = it.next() {
                debug_assert_eq!(op.as_rule(), Rule::pipe_op);
                let stage = expr(it.next().unwrap(), off);
                let s = acc.span.to(stage.span);
                acc = Expr {
                    kind: ExprKind::Pipe {
                        input: Box::new(acc),
                        stage: Box::new(stage),
                    },
                    span: s,
                };
            }
            acc
        }
        Rule::repr => {
            let mut it = p.into_inner().filter(|q| !is_keyword(q.as_rule()));
            let first = expr(it.next().unwrap(), off);
            match it.next() {
                None => first,
                // `train sharded(8)`: its one expression.
                Some(s) if s.as_rule() == Rule::sharded => {
                    let k = s
                        .into_inner()
                        .find(|q| !is_keyword(q.as_rule()))
                        .map(|k| expr(k, off))
                        .expect("sharded(k) has its expression");
                    Expr {
                        kind: ExprKind::Sharded {
                            data: Box::new(first),
                            shards: Box::new(k),
                        },
                        span,
                    }
                }
                Some(m) => {
                    let model = expr(m, off);
                    let data = it.next().map(|d| Box::new(expr(d, off)));
                    // `sharded(k)`: its one expression.
                    let shards = it.next().and_then(|s| {
                        s.into_inner()
                            .find(|q| !is_keyword(q.as_rule()))
                            .map(|k| Box::new(expr(k, off)))
                    });
                    Expr {
                        kind: ExprKind::Repr {
                            structure: Box::new(first),
                            model: Box::new(model),
                            data,
                            shards,
                        },
                        span,
                    }
                }
            }
        }
        Rule::disj | Rule::conj => {
            let op = if p.as_rule() == Rule::disj {
                LogicOp::Or
            } else {
                LogicOp::And
            };
            let mut it = p
                .into_inner()
                .filter(|q| !matches!(q.as_rule(), Rule::kw_and | Rule::kw_or));
            let mut acc = expr(it.next().unwrap(), off);
            for q in it {
                let rhs = expr(q, off);
                let s = acc.span.to(rhs.span);
                acc = Expr {
                    kind: ExprKind::Logic {
                        op,
                        lhs: Box::new(acc),
                        rhs: Box::new(rhs),
                    },
                    span: s,
                };
            }
            acc
        }
        Rule::cmp => {
            let mut it = p.into_inner();
            let lhs = expr(it.next().unwrap(), off);
            let Some(op) = it.next() else {
                return lhs;
            };
            let op = match op.as_str() {
                "==" => CmpOp::Eq,
                "!=" => CmpOp::Ne,
                "<" => CmpOp::Lt,
                "<=" => CmpOp::Le,
                ">" => CmpOp::Gt,
                _ => CmpOp::Ge,
            };
            let rhs = expr(it.next().unwrap(), off);
            Expr {
                span: lhs.span.to(rhs.span),
                kind: ExprKind::Compare {
                    op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
            }
        }
        Rule::sum | Rule::product => {
            let mut it = p.into_inner();
            let mut acc = expr(it.next().unwrap(), off);
            while let Some(op) = it.next() {
                let op = match op.as_str() {
                    "+" => BinOp::Add,
                    "-" => BinOp::Sub,
                    "*" => BinOp::Mul,
                    _ => BinOp::Div,
                };
                let rhs = expr(it.next().unwrap(), off);
                let s = acc.span.to(rhs.span);
                acc = Expr {
                    kind: ExprKind::Binary {
                        op,
                        lhs: Box::new(acc),
                        rhs: Box::new(rhs),
                    },
                    span: s,
                };
            }
            acc
        }
        Rule::unary => {
            let parts: Vec<_> = p.into_inner().collect();
            let (negs, rest) = parts.split_at(parts.len() - 1);
            let mut e = expr(rest[0].clone(), off);
            for n in negs.iter().rev() {
                let s = span_of(n, off).to(e.span);
                e = Expr {
                    kind: ExprKind::Neg(Box::new(e)),
                    span: s,
                };
            }
            e
        }
        Rule::postfix => {
            let mut it = p.into_inner();
            let head = it.next().unwrap();
            let mut acc = expr(head, off);
            for post in it {
                let pspan = span_of(&post, off);
                let s = acc.span.to(pspan);
                match post.as_rule() {
                    Rule::call_args => {
                        let args = post.into_inner().map(|a| arg(a, off)).collect();
                        let callee = match &acc.kind {
                            ExprKind::Ident(n) => Ident {
                                name: n.clone(),
                                span: acc.span,
                            },
                            // Calling something that is not a name: keep the
                            // text so the checker can say it is not callable.
                            _ => Ident {
                                name: String::new(),
                                span: acc.span,
                            },
                        };
                        acc = Expr {
                            kind: ExprKind::Call { callee, args },
                            span: s,
                        };
                    }
                    Rule::index => {
                        let mut args: Vec<Arg> = post.into_inner().map(|a| arg(a, off)).collect();
                        // `x[i]` indexes; `x[tag = v, ...]` selects results.
                        let kind = if args.len() == 1 && args[0].name.is_none() {
                            ExprKind::Index {
                                base: Box::new(acc),
                                index: Box::new(args.pop().unwrap().value),
                            }
                        } else {
                            ExprKind::Select {
                                base: Box::new(acc),
                                filters: args,
                            }
                        };
                        acc = Expr { kind, span: s };
                    }
                    _ => {
                        let field = ident(post.into_inner().next().unwrap(), off);
                        acc = Expr {
                            kind: ExprKind::Field {
                                base: Box::new(acc),
                                field,
                            },
                            span: s,
                        };
                    }
                }
            }
            acc
        }
        Rule::paren => {
            let inner = expr(p.into_inner().next().unwrap(), off);
            Expr {
                kind: inner.kind,
                span,
            }
        }
        Rule::list => Expr {
            kind: ExprKind::List(
                p.into_inner()
                    .map(|item| {
                        let mut parts = item.into_inner().filter(|q| !is_keyword(q.as_rule()));
                        let value = expr(parts.next().unwrap(), off);
                        ListItem {
                            value,
                            label: parts.next().map(|s| strlit(s, off)),
                        }
                    })
                    .collect(),
            ),
            span,
        },
        Rule::number | Rule::int => {
            let text = p.as_str();
            let kind = if text.contains(['.', 'e', 'E']) {
                ExprKind::Float(text.parse().unwrap_or(f64::NAN))
            } else {
                match text.parse::<i64>() {
                    Ok(i) => ExprKind::Int(i),
                    Err(_) => ExprKind::Float(text.parse().unwrap_or(f64::INFINITY)),
                }
            };
            Expr { kind, span }
        }
        Rule::size => {
            let text = p.as_str();
            let split = text
                .find(|c: char| c.is_ascii_alphabetic())
                .unwrap_or(text.len());
            let (num, unit) = text.split_at(split);
            let mult: f64 = match unit {
                "KiB" => 1024.0,
                "MiB" => 1024.0 * 1024.0,
                "GiB" => 1024.0 * 1024.0 * 1024.0,
                "TiB" => 1024f64.powi(4),
                "kB" | "KB" => 1e3,
                "MB" => 1e6,
                "GB" => 1e9,
                "TB" => 1e12,
                _ => 1.0,
            };
            let bytes = num.parse::<f64>().unwrap_or(0.0) * mult;
            Expr {
                kind: ExprKind::Size(bytes.min(u64::MAX as f64) as u64),
                span,
            }
        }
        Rule::string => {
            let s = strlit(p, off);
            Expr {
                kind: ExprKind::Str(s.value),
                span,
            }
        }
        Rule::boolean => Expr {
            kind: ExprKind::Bool(p.as_str() == "true"),
            span,
        },
        Rule::ident => Expr {
            kind: ExprKind::Ident(p.as_str().to_string()),
            span,
        },
        other => unreachable!("not an expression: {other:?}"),
    }
}

pub(super) fn arg(p: Pair<Rule>, off: usize) -> Arg {
    let span = span_of(&p, off);
    let mut parts: Vec<_> = p.into_inner().collect();
    let value = expr(parts.pop().unwrap(), off);
    let key = parts.pop();
    let quoted = key.as_ref().is_some_and(|k| k.as_rule() == Rule::string);
    let name = key.map(|k| {
        if quoted {
            let s = strlit(k, off);
            Ident {
                name: s.value,
                span: s.span,
            }
        } else {
            ident(k, off)
        }
    });
    Arg {
        name,
        quoted,
        value,
        span,
    }
}
