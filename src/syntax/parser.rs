//! Text → AST with pest. pest's types never leave this module.

use super::ast::*;
use crate::diag::{Diagnostic, ErrorKind};
use pest::iterators::Pair;
use pest::Parser as _;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/ngx.pest"]
struct NgxParser;

/// Parses a whole file. On failure returns every syntax error found: the file
/// is cut at top-level statement keywords and each piece is parsed on its own,
/// so one typo does not hide the next.
pub fn parse(src: &str) -> Result<File, Vec<Diagnostic>> {
    let lexical = prescan(src);
    if !lexical.is_empty() {
        return Err(lexical);
    }
    match NgxParser::parse(Rule::file, src) {
        Ok(mut pairs) => {
            let file = pairs.next().expect("file rule");
            let stmts = file
                .into_inner()
                .filter(|p| p.as_rule() != Rule::EOI)
                .map(|p| stmt(p, 0))
                .collect();
            Ok(File { stmts })
        }
        Err(first) => {
            // Track literal tokens (`=`, `,`, `)`) too, so that a missing
            // `=` is reported where it is missing and not at the
            // statement's first word. Set once and never cleared: parsing
            // stays deterministic when several threads parse at once.
            pest::set_error_detail(true);
            let mut errors = Vec::new();
            for (start, end) in chunks(src) {
                let piece = &src[start..end];
                if only_comments(piece) {
                    continue;
                }
                if let Err(e) = NgxParser::parse(Rule::stmt_only, piece) {
                    errors.push(syntax_error(&e, start, piece));
                }
            }
            if errors.is_empty() {
                errors.push(syntax_error(&first, 0, src));
            }
            Err(errors)
        }
    }
}

/// A piece of the file with nothing to parse (a comment before the first
/// statement, blank lines).
fn only_comments(piece: &str) -> bool {
    piece
        .lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with("//"))
}

const STMT_KEYWORDS: &[&str] = &[
    "experiment",
    "data",
    "model",
    "let",
    "measure",
    "train",
    "for",
    "plot",
    "save",
    "import",
    "block",
    "def",
];

/// Byte ranges of the top-level statements, cut where a line starts (in
/// column 0) with a statement keyword.
fn chunks(src: &str) -> Vec<(usize, usize)> {
    let mut starts = vec![0];
    let mut offset = 0;
    for line in src.split_inclusive('\n') {
        let word: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if offset > 0 && STMT_KEYWORDS.contains(&word.as_str()) {
            starts.push(offset);
        }
        offset += line.len();
    }
    let mut out = Vec::new();
    for (i, s) in starts.iter().enumerate() {
        let e = starts.get(i + 1).copied().unwrap_or(src.len());
        out.push((*s, e));
    }
    out
}

/// Deepest bracket nesting accepted.
const MAX_NESTING: usize = 64;
/// Most arithmetic/pipe operators in one top-level statement: expression
/// trees are as deep as their operator chains.
const MAX_OPERATORS: usize = 400;

/// Finds unterminated strings and unbalanced brackets before pest does:
/// pest would only say "expected ..." at the end of the file.
fn prescan(src: &str) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    let mut stack: Vec<(char, usize)> = Vec::new();
    let mut operators = 0usize;
    let bytes = src.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                let start = i;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None | Some(b'\n') => {
                            errors.push(
                                Diagnostic::new(
                                    ErrorKind::UnterminatedString,
                                    Span::new(start, i),
                                    "this string is never closed",
                                )
                                .hint("close it with `\"` on the same line"),
                            );
                            break;
                        }
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
            }
            c @ (b'(' | b'[' | b'{') => {
                stack.push((c as char, i));
                // pest and the checker recurse on nesting: bound it so
                // that no input can exhaust the stack.
                if stack.len() > MAX_NESTING {
                    errors.push(Diagnostic::new(
                        ErrorKind::Invalid {
                            message: format!("nesting deeper than {MAX_NESTING} levels"),
                        },
                        Span::new(i, i + 1),
                        "too deep",
                    ));
                    return errors;
                }
            }
            b'+' | b'-' | b'*' | b'/' | b'|' => {
                operators += 1;
                if operators > MAX_OPERATORS {
                    errors.push(Diagnostic::new(
                        ErrorKind::Invalid {
                            message: format!(
                                "more than {MAX_OPERATORS} operators in one statement"
                            ),
                        },
                        Span::new(i, i + 1),
                        "expression too long",
                    ));
                    return errors;
                }
            }
            b'\n' if bytes.get(i + 1).is_some_and(|c| c.is_ascii_alphabetic()) => operators = 0,
            c @ (b')' | b']' | b'}') => {
                let want = match c {
                    b')' => '(',
                    b']' => '[',
                    _ => '{',
                };
                match stack.pop() {
                    Some((open, _)) if open == want => {}
                    Some((open, at)) => {
                        errors.push(
                            Diagnostic::new(
                                ErrorKind::Syntax {
                                    expected: format!("`{}`", closer(open)),
                                },
                                Span::new(i, i + 1),
                                format!("found `{}`", c as char),
                            )
                            .related(Span::new(at, at + 1), format!("`{open}` opened here")),
                        );
                        return errors;
                    }
                    None => {
                        errors.push(Diagnostic::new(
                            ErrorKind::Syntax {
                                expected: "a statement or expression".into(),
                            },
                            Span::new(i, i + 1),
                            format!("`{}` closes nothing", c as char),
                        ));
                        return errors;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    if errors.is_empty() {
        if let Some((open, at)) = stack.pop() {
            errors.push(
                Diagnostic::new(
                    ErrorKind::Unclosed { open },
                    Span::new(at, at + 1),
                    "opened here, never closed",
                )
                .hint(format!("add the matching `{}`", closer(open))),
            );
        }
    }
    errors
}

fn closer(open: char) -> char {
    match open {
        '(' => ')',
        '[' => ']',
        _ => '}',
    }
}

fn rule_name(rule: &Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::stmt_only | Rule::file => "a statement",
        Rule::experiment | Rule::kw_experiment => "`experiment`",
        Rule::data_stmt | Rule::kw_data => "`data`",
        Rule::model_stmt | Rule::kw_model => "`model`",
        Rule::let_stmt | Rule::kw_let => "`let`",
        Rule::measure_stmt | Rule::kw_measure => "`measure`",
        Rule::train_stmt | Rule::kw_train => "`train`",
        Rule::for_stmt | Rule::kw_for => "`for`",
        Rule::kw_replicate => "`replicate`",
        Rule::int_range => "a range `a..b`",
        Rule::plot_stmt | Rule::kw_plot => "`plot`",
        Rule::save_stmt | Rule::kw_save => "`save`",
        Rule::expect_stmt | Rule::kw_expect => "`expect`",
        Rule::import_stmt | Rule::kw_import => "`import`",
        Rule::block_def | Rule::kw_block => "`block`",
        Rule::def_stmt | Rule::kw_def => "`def`",
        Rule::params | Rule::member_inputs => "`(`",
        Rule::param => "a parameter",
        Rule::member => "a member `name = module`",
        Rule::setting => "a setting `name = value`",
        Rule::hook | Rule::every_hook | Rule::at_hook | Rule::kw_every | Rule::kw_at => {
            "a hook (`every N steps {..}` or `at ... {..}`)"
        }
        Rule::ident => "a name",
        Rule::int => "an integer",
        Rule::number | Rule::size => "a number",
        Rule::string | Rule::string_inner => "a string",
        Rule::expr
        | Rule::repr
        | Rule::disj
        | Rule::conj
        | Rule::cmp
        | Rule::sum
        | Rule::product
        | Rule::unary
        | Rule::postfix
        | Rule::paren
        | Rule::list
        | Rule::boolean => "an expression",
        Rule::list_item => "a list item",
        Rule::call_args => "`(`",
        Rule::arg => "an argument",
        Rule::index => "`[`",
        Rule::field => "`.`",
        Rule::block => "`{`",
        Rule::pipe_op => "`|>`",
        Rule::kw_in => "`in`",
        Rule::kw_on => "`on`",
        Rule::sharded | Rule::kw_sharded => "`sharded(k)`",
        Rule::kw_of => "`of`",
        Rule::kw_as => "`as`",
        Rule::kw_to => "`to`",
        Rule::kw_by => "`by`",
        Rule::kw_with => "`with`",
        Rule::kw_against => "`against`",
        _ => return None,
    })
}

fn syntax_error(e: &pest::error::Error<Rule>, offset: usize, piece: &str) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((a, _)) => a,
    };
    let mut expected: Vec<String> = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => positives
            .iter()
            .filter_map(rule_name)
            .map(str::to_string)
            .collect(),
        ErrorVariant::CustomError { .. } => vec![],
    };
    // With error detail on, pest also records the literal tokens it tried
    // at the furthest position, which is often past the last rule it tried.
    let mut pos = pos;
    if let Some(att) = e.parse_attempts() {
        if att.max_position >= pos && att.max_position <= piece.len() {
            let mut more: Vec<String> = att
                .call_stacks()
                .iter()
                .filter_map(|c| c.deepest.get_rule())
                .filter(|r| !is_container(**r))
                .filter_map(rule_name)
                .map(str::to_string)
                .collect();
            // Punctuation only: letters and ranges come from inside
            // identifiers, numbers and keywords, already named by rules.
            more.extend(att.expected_tokens().iter().filter_map(|t| {
                let t = t.to_string();
                let punct =
                    !t.is_empty() && t != "//" && t.chars().all(|c| c.is_ascii_punctuation());
                punct.then(|| format!("`{t}`"))
            }));
            if !more.is_empty() {
                if att.max_position > pos {
                    expected.clear();
                }
                pos = att.max_position;
                expected.extend(more);
            }
        }
    }
    tidy_expected(&mut expected);
    let expected = match expected.len() {
        0 => "something else".to_string(),
        1 => expected[0].to_string(),
        n => format!("{} or {}", expected[..n - 1].join(", "), expected[n - 1]),
    };
    let pos = pos + (piece[pos..].len() - piece[pos..].trim_start().len());
    let found = token_at(&piece[pos..]);
    let wants_eq = expected.contains("`=`");
    let wants_string = expected == "a string";
    let (label, len) = if found.is_empty() {
        ("unexpected end of statement".to_string(), 0)
    } else {
        let token: String = found.chars().take(20).collect();
        (format!("found `{token}`"), token.len())
    };
    let mut d = Diagnostic::new(
        ErrorKind::Syntax { expected },
        Span::new(
            offset + pos,
            offset + pos + len.max(1).min(piece.len() - pos),
        ),
        label,
    );
    if wants_string && found.starts_with(|c: char| c.is_ascii_alphabetic()) {
        d = d.hint(format!(
            "names of measurements and files are strings: `\"{found}\"`"
        ));
    }
    if (found == "=" && pos > 0) || wants_eq {
        d = d.hint("definitions, settings and options are written `name = value`");
    }
    d
}

/// Keeps the list of expected things short and to the point: operators that
/// could continue an expression are left out when a separator or closer
/// (`,`, `)`, `=`, ...) is also possible, since the missing separator is the
/// likely mistake.
fn tidy_expected(expected: &mut Vec<String>) {
    for e in expected.iter_mut() {
        match e.as_str() {
            "`_`" => *e = "a name".into(),
            "`\"`" => *e = "a string".into(),
            _ => {}
        }
    }
    expected.sort();
    expected.dedup();
    const STARTS: [&str; 7] = ["`(`", "`-`", "`.`", "`[`", "a name", "a string", "a number"];
    const CONTINUATIONS: [&str; 17] = [
        "`*`", "`+`", "`-`", "`/`", "`.`", "`[`", "`(`", "`|>`", "`of`", "`==`", "`!=`", "`<`",
        "`<=`", "`>`", "`>=`", "`and`", "`or`",
    ];
    let has = |x: &str| expected.iter().any(|e| e == x);
    if has("`,`") || has("`=`") {
        // After a complete operand: the separator is what is missing.
        expected.retain(|e| {
            !CONTINUATIONS.contains(&e.as_str())
                && !matches!(
                    e.as_str(),
                    "an expression" | "an argument" | "a list item" | "`sharded(k)`"
                )
        });
    } else if has("an argument") || has("a list item") {
        expected.retain(|e| !STARTS.contains(&e.as_str()) && e != "an expression");
    } else if has("an expression") {
        expected.retain(|e| !STARTS.contains(&e.as_str()));
    }
}

/// Rules that contain a failed token rather than being what was expected:
/// "expected `data`" for a `data` statement missing its `=` would mislead.
fn is_container(r: Rule) -> bool {
    matches!(
        r,
        Rule::file
            | Rule::stmt_only
            | Rule::experiment
            | Rule::data_stmt
            | Rule::model_stmt
            | Rule::let_stmt
            | Rule::measure_stmt
            | Rule::train_stmt
            | Rule::for_stmt
            | Rule::plot_stmt
            | Rule::save_stmt
            | Rule::expect_stmt
            | Rule::setting
            | Rule::measure_item
            | Rule::list_item
            | Rule::arg
            | Rule::call_args
            | Rule::list
            | Rule::paren
            | Rule::index
            | Rule::field
            | Rule::every_hook
            | Rule::at_hook
            | Rule::plot_by
            | Rule::plot_flags
            | Rule::import_stmt
            | Rule::block_def
            | Rule::def_stmt
            | Rule::params
            | Rule::param
            | Rule::member
            | Rule::member_inputs
    )
}

/// The token starting `rest`: a word or number, a string, or one symbol.
fn token_at(rest: &str) -> &str {
    let Some(c) = rest.chars().next() else {
        return "";
    };
    let end = if c.is_ascii_alphanumeric() || c == '_' {
        rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len())
    } else if c == '"' {
        rest[1..].find('"').map_or(rest.len(), |i| i + 2)
    } else if rest.starts_with("|>") || rest.starts_with("==") {
        2
    } else {
        c.len_utf8()
    };
    &rest[..end]
}

// ---------------------------------------------------------------------------
// Parse tree → AST

/// The span of a pair, without the whitespace and comments that pest's
/// implicit skipping leaves at its end when the rule ends in an optional
/// part that is absent (`expr ~ (kw_as ~ string)?`).
fn span_of(p: &Pair<Rule>, offset: usize) -> Span {
    let s = p.as_span();
    let len = if p.as_rule() == Rule::string_inner {
        p.as_str().len()
    } else {
        trimmed_len(p.as_str())
    };
    Span::new(s.start() + offset, s.start() + len + offset)
}

/// Length of `text` without trailing whitespace and `//` comments.
fn trimmed_len(text: &str) -> usize {
    let mut t = text.trim_end();
    loop {
        let line_start = t.rfind('\n').map_or(0, |i| i + 1);
        let Some(c) = comment_start(&t[line_start..]) else {
            return t.len();
        };
        t = t[..line_start + c].trim_end();
    }
}

/// Where a `//` comment starts in one line, outside strings.
fn comment_start(line: &str) -> Option<usize> {
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

fn ident(p: Pair<Rule>, off: usize) -> Ident {
    Ident {
        name: p.as_str().to_string(),
        span: span_of(&p, off),
    }
}

fn strlit(p: Pair<Rule>, off: usize) -> StrLit {
    let span = span_of(&p, off);
    let inner = p.into_inner().next().map(|i| i.as_str()).unwrap_or("");
    StrLit {
        value: unescape(inner),
        span,
    }
}

fn unescape(s: &str) -> String {
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

fn stmt(p: Pair<Rule>, off: usize) -> Stmt {
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
fn int_range(p: Pair<Rule>, off: usize) -> Expr {
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

fn param_list(p: Pair<Rule>, off: usize) -> Vec<Param> {
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

fn member(p: Pair<Rule>, off: usize) -> Member {
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

fn idents(p: Pair<Rule>, off: usize) -> Vec<Ident> {
    p.into_inner()
        .filter(|q| q.as_rule() == Rule::ident)
        .map(|q| ident(q, off))
        .collect()
}

fn is_keyword(r: Rule) -> bool {
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

fn block(p: Pair<Rule>, off: usize) -> Vec<Stmt> {
    p.into_inner().map(|s| stmt(s, off)).collect()
}

fn setting(p: Pair<Rule>, off: usize) -> Setting {
    let span = span_of(&p, off);
    let mut it = p.into_inner();
    Setting {
        key: ident(it.next().unwrap(), off),
        value: expr(it.next().unwrap(), off),
        span,
    }
}

fn hook(p: Pair<Rule>, off: usize) -> Hook {
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

fn expr(p: Pair<Rule>, off: usize) -> Expr {
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

fn arg(p: Pair<Rule>, off: usize) -> Arg {
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
