//! Text → AST with pest. pest's types never leave this module.

use super::ast::*;
use crate::diag::{Diagnostic, ErrorKind};
use pest::iterators::Pair;
use pest::Parser as _;

mod lower;

use lower::*;

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
    let mut rest = piece.trim_start();
    loop {
        if rest.is_empty() {
            return true;
        }
        rest = if let Some(line) = rest.strip_prefix("//") {
            line.find('\n').map_or("", |i| &line[i..])
        } else if let Some(block) = rest.strip_prefix("/*") {
            match block.find("*/") {
                Some(i) => &block[i + 2..],
                None => return false,
            }
        } else {
            return false;
        }
        .trim_start();
    }
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
/// column 0) with a statement keyword outside a `/* */` comment.
fn chunks(src: &str) -> Vec<(usize, usize)> {
    let mut starts = vec![0];
    let mut offset = 0;
    let mut in_block = false;
    for line in src.split_inclusive('\n') {
        let word: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if offset > 0 && !in_block && STMT_KEYWORDS.contains(&word.as_str()) {
            starts.push(offset);
        }
        in_block = block_comment_open_after(line, in_block);
        offset += line.len();
    }
    let mut out = Vec::new();
    for (i, s) in starts.iter().enumerate() {
        let e = starts.get(i + 1).copied().unwrap_or(src.len());
        out.push((*s, e));
    }
    out
}

/// Whether a `/* */` comment is still open at the end of `line`, given
/// whether one was open at its start (strings and `//` comments are
/// skipped; the prescan has already refused unterminated ones).
fn block_comment_open_after(line: &str, mut open: bool) -> bool {
    let b = line.as_bytes();
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        match (open, in_str, b[i], b.get(i + 1)) {
            (true, _, b'*', Some(b'/')) => {
                open = false;
                i += 1;
            }
            (true, ..) => {}
            (false, true, b'\\', _) => i += 1,
            (false, _, b'"', _) => in_str = !in_str,
            (false, false, b'/', Some(b'/')) => return false,
            (false, false, b'/', Some(b'*')) => {
                open = true;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    open
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
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                match src[i + 2..].find("*/") {
                    Some(len) => i += 2 + len + 2,
                    None => {
                        errors.push(
                            Diagnostic::new(
                                ErrorKind::Unclosed { open: "/*".into() },
                                Span::new(i, i + 2),
                                "this comment is never closed",
                            )
                            .hint("close it with `*/`"),
                        );
                        return errors;
                    }
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
                    ErrorKind::Unclosed {
                        open: open.to_string(),
                    },
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
                let punct = !t.is_empty()
                    && t != "//"
                    && t != "/*"
                    && t.chars().all(|c| c.is_ascii_punctuation());
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

#[cfg(test)]
mod tests;
