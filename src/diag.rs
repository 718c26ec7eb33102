//! Errors as data: a typed [`ErrorKind`], where it happened, and hints.
//!
//! Diagnostics are collected (never thrown one at a time) so that a file's
//! every mistake is reported in one go, and are rendered only at the edge
//! (the CLI and the snapshot tests) with [`render`].

use crate::syntax::Span;
use ariadne::{Config, IndexType, Label, Report, ReportKind, Source};
use serde::Serialize;

/// What went wrong. Each variant is one kind of user mistake; the fields are
/// the facts the message is built from.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize)]
pub enum ErrorKind {
    #[error("syntax error: expected {expected}")]
    Syntax { expected: String },
    #[error("unterminated string")]
    UnterminatedString,
    #[error("unclosed `{open}`")]
    Unclosed { open: String },
    #[error("invalid number `{text}`")]
    BadNumber { text: String },
    #[error("undefined {what} `{name}`")]
    Undefined { what: String, name: String },
    #[error("`{name}` is a {found}, but a {expected} is needed here")]
    WrongKind {
        name: String,
        expected: String,
        found: String,
    },
    #[error("unknown {what} `{name}`")]
    Unknown { what: String, name: String },
    #[error("`{name}` is already defined")]
    Redefined { name: String },
    #[error("expected {expected}, found {found}")]
    TypeMismatch { expected: String, found: String },
    #[error("`{func}` has no option `{name}`")]
    UnknownOption { func: String, name: String },
    #[error("`{func}` needs `{name}`")]
    MissingOption { func: String, name: String },
    #[error("`{name}` is given twice")]
    Duplicate { name: String },
    #[error("`{func}` takes at most {max} positional argument(s)")]
    TooManyArguments { func: String, max: usize },
    #[error("`{name}` = {value} is out of range: {range}")]
    OutOfRange {
        name: String,
        value: String,
        range: String,
    },
    #[error("`{value}` is not a valid {what}")]
    BadChoice { what: String, value: String },
    #[error("shape mismatch in `{layer}`: expects {expected}, gets {found}")]
    ShapeMismatch {
        layer: String,
        expected: String,
        found: String,
    },
    #[error("the branches of `{op}` differ in shape: {shapes}")]
    BranchMismatch { op: String, shapes: String },
    #[error("{structure} does not support `{layer}` ({layer_type})")]
    UnsupportedLayer {
        structure: String,
        layer: String,
        layer_type: String,
    },
    #[error("`sharded({shards})`: {why}")]
    BadShards { shards: String, why: String },
    #[error("{what} cannot be sharded over data: {why}")]
    NotShardable { what: String, why: String },
    #[error("{object} has no {structure} representation")]
    UnsupportedStructure { object: String, structure: String },
    #[error("{what} needs {needed}, over the memory budget of {budget}")]
    OverBudget {
        what: String,
        needed: String,
        budget: String,
    },
    #[error("cannot read `{path}`: {reason}")]
    File { path: String, reason: String },
    #[error("{what}: {detail}")]
    Mismatch { what: String, detail: String },
    /// Matrix algebra on representations of different structures.
    #[error("`{op}` needs representations of one structure, not {a} and {b}")]
    StructureMismatch { op: String, a: String, b: String },
    /// A network exported from PyTorch that nngeo cannot import.
    #[error("ONNX model `{path}`: {error}")]
    Onnx {
        path: String,
        error: crate::onnx::OnnxError,
    },
    #[error("{message}")]
    Invalid { message: String },
    /// A warning: the file is valid but probably not what was meant.
    #[error("{message}")]
    Suspicious { message: String },
}

impl ErrorKind {
    /// A stable code users can search for.
    pub fn code(&self) -> &'static str {
        match self {
            ErrorKind::Syntax { .. } => "E001",
            ErrorKind::UnterminatedString => "E002",
            ErrorKind::Unclosed { .. } => "E003",
            ErrorKind::BadNumber { .. } => "E004",
            ErrorKind::Undefined { .. } => "E010",
            ErrorKind::WrongKind { .. } => "E011",
            ErrorKind::Unknown { .. } => "E012",
            ErrorKind::Redefined { .. } => "E013",
            ErrorKind::TypeMismatch { .. } => "E020",
            ErrorKind::UnknownOption { .. } => "E021",
            ErrorKind::MissingOption { .. } => "E022",
            ErrorKind::Duplicate { .. } => "E023",
            ErrorKind::TooManyArguments { .. } => "E024",
            ErrorKind::OutOfRange { .. } => "E025",
            ErrorKind::BadChoice { .. } => "E026",
            ErrorKind::ShapeMismatch { .. } => "E030",
            ErrorKind::UnsupportedLayer { .. } => "E031",
            ErrorKind::BranchMismatch { .. } => "E033",
            ErrorKind::UnsupportedStructure { .. } => "E032",
            ErrorKind::BadShards { .. } => "E034",
            ErrorKind::NotShardable { .. } => "E035",
            ErrorKind::OverBudget { .. } => "E040",
            ErrorKind::File { .. } => "E050",
            ErrorKind::Mismatch { .. } => "E051",
            ErrorKind::Onnx { .. } => "E052",
            ErrorKind::StructureMismatch { .. } => "E053",
            ErrorKind::Invalid { .. } => "E060",
            ErrorKind::Suspicious { .. } => "W001",
        }
    }
}

/// One error, located in the source.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnostic {
    pub kind: ErrorKind,
    pub span: Span,
    /// Text under the primary caret.
    pub label: String,
    /// Other places worth showing (e.g. the first definition of a name).
    pub related: Vec<(Span, String)>,
    pub hints: Vec<String>,
}

impl Diagnostic {
    pub fn new(kind: ErrorKind, span: Span, label: impl Into<String>) -> Self {
        Diagnostic {
            kind,
            span,
            label: label.into(),
            related: Vec::new(),
            hints: Vec::new(),
        }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }
    pub fn hint_opt(self, hint: Option<String>) -> Self {
        match hint {
            Some(h) => self.hint(h),
            None => self,
        }
    }
    pub fn related(mut self, span: Span, text: impl Into<String>) -> Self {
        self.related.push((span, text.into()));
        self
    }
}

/// 1-based line and column (in characters) of a byte offset.
/// Reads an `.ngx` source file. Invalid UTF-8 is reported with the file,
/// line, column and byte offset of the first bad byte.
pub fn read_source(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    /// Far above any experiment; a device such as `/dev/zero` would
    /// otherwise be read until memory runs out.
    const MAX_SOURCE: u64 = 16 << 20;
    let cannot = |e: std::io::Error| format!("cannot read `{}`: {e}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SOURCE + 1).read_to_end(&mut bytes))
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_SOURCE {
        return Err(format!(
            "`{}` is larger than 16 MiB: not an .ngx source",
            path.display()
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let off = e.utf8_error().valid_up_to();
        let bytes = e.into_bytes();
        let valid = std::str::from_utf8(&bytes[..off]).unwrap_or_default();
        let (line, col) = line_col(valid, off);
        format!(
            "{}:{line}:{col}: invalid UTF-8 (byte 0x{:02x} at byte offset {off}); .ngx files must be UTF-8 text",
            path.display(),
            bytes[off]
        )
    })
}

pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..floor_char_boundary(src, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn floor_char_boundary(src: &str, mut i: usize) -> usize {
    while i > 0 && !src.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Renders diagnostics like rustc: `file:line:col`, the line, a caret under
/// the span, then hints. No colour, so the output is stable for snapshots.
pub fn render(file: &str, src: &str, diags: &[Diagnostic]) -> String {
    let mut out = Vec::new();
    let config = Config::default()
        .with_color(false)
        .with_index_type(IndexType::Byte);
    for d in diags {
        let clamp = |s: Span| {
            let a = floor_char_boundary(src, s.start.min(src.len()));
            let b = floor_char_boundary(src, s.end.min(src.len())).max(a);
            a..b
        };
        let kind = match d.kind {
            ErrorKind::Suspicious { .. } => ReportKind::Warning,
            _ => ReportKind::Error,
        };
        let mut report = Report::build(kind, (file, clamp(d.span)))
            .with_config(config)
            .with_code(d.kind.code())
            .with_message(d.kind.to_string())
            .with_label(Label::new((file, clamp(d.span))).with_message(&d.label));
        for (span, text) in &d.related {
            report = report.with_label(Label::new((file, clamp(*span))).with_message(text));
        }
        for h in &d.hints {
            report = report.with_help(h);
        }
        let _ = report.finish().write((file, Source::from(src)), &mut out);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Suggests the closest of `candidates` to `name`, if one is close enough to
/// be a plausible typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let lower = name.to_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&lower, &c.to_lowercase());
        if score > best.map_or(0.0, |b| b.0) {
            best = Some((score, c));
        }
    }
    match best {
        Some((score, c)) if score >= 0.8 && c != name => Some(format!("did you mean `{c}`?")),
        _ => None,
    }
}
