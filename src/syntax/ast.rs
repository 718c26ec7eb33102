//! The abstract syntax tree of a `.ngx` file.
//!
//! Every node carries the byte span it came from so that the checker can point
//! at the exact text. The AST is what the snapshot tests record (not pest's
//! parse tree), so the parser can change without touching them.

use serde::{Deserialize, Serialize};

/// A byte range `start..end` in the source text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

// Spans serialise as "start..end": compact in snapshots, still exact.
impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}..{}", self.start, self.end))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let (a, b) = text
            .split_once("..")
            .ok_or_else(|| serde::de::Error::custom("span must be `start..end`"))?;
        let parse = |x: &str| x.parse::<usize>().map_err(serde::de::Error::custom);
        Ok(Span::new(parse(a)?, parse(b)?))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StrLit {
    pub value: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct File {
    pub stmts: Vec<Stmt>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StmtKind {
    /// `experiment NAME { key = value ... }`
    Experiment { name: Ident, settings: Vec<Setting> },
    /// `data a, b = expr`
    Data { names: Vec<Ident>, value: Expr },
    /// `model m = expr`
    Model { name: Ident, value: Expr },
    /// `let x = expr`
    Let { name: Ident, value: Expr },
    /// `measure e1 as "n1", e2`
    Measure { items: Vec<MeasureItem> },
    /// `train net on data [as result] { settings and hooks }`
    Train {
        model: Ident,
        data: Expr,
        result: Option<Ident>,
        settings: Vec<Setting>,
        hooks: Vec<Hook>,
    },
    /// `for x in expr { ... }`, or `replicate x in 0..5 { ... }` (a sweep
    /// over repetitions, which reports average over).
    For {
        var: Ident,
        iter: Expr,
        body: Vec<Stmt>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        replicate: bool,
    },
    /// `plot "pattern" against x [by a, b] [with flags] [as "file"]`
    Plot {
        pattern: StrLit,
        x: Ident,
        by: Vec<Ident>,
        flags: Vec<Ident>,
        file: Option<StrLit>,
    },
    /// `save model to "path"`
    Save { model: Ident, path: StrLit },
    /// `expect "text" : claim`: a claim checked on the run's results.
    Expect { text: StrLit, claim: Expr },
    /// `import "blocks.ngx"`: the blocks and defs of another file.
    Import { path: StrLit },
    /// `block NAME(params) { members }`: a reusable, parametrised module.
    Block {
        name: Ident,
        params: Vec<Param>,
        members: Vec<Member>,
    },
    /// `def NAME(params) = expr`: a named value (e.g. a list of modules).
    Def {
        name: Ident,
        params: Vec<Param>,
        value: Expr,
    },
}

/// A parameter of a block or def, with its default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Param {
    pub name: Ident,
    pub default: Option<Expr>,
    pub span: Span,
}

/// `name = expr` inside a block, or `out(x) = expr` (with `inputs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub name: Ident,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<Ident>>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub key: Ident,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasureItem {
    pub expr: Expr,
    pub name: Option<StrLit>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hook {
    pub schedule: Schedule,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    /// `every 10 steps`, `every 1 epoch`
    Every { count: u64, unit: Ident, span: Span },
    /// `at log_steps(...)`, `at [0, 10, 100]`, `at end`
    At(Expr),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }

    /// The operation on numbers.
    pub fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
        }
    }
}

/// Comparisons (`==`, `!=`, `<`, ...) of block parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogicOp {
    And,
    Or,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    /// A memory size such as `8GiB`, in bytes.
    Size(u64),
    Str(String),
    Bool(bool),
    Ident(String),
    List(Vec<ListItem>),
    Call {
        callee: Ident,
        args: Vec<Arg>,
    },
    Index {
        base: Box<Expr>,
        index: Box<Expr>,
    },
    /// `"rel_error"[S = KFAC, opt = "sgd"]`: results selected by sweep tags
    /// (in claims).
    Select {
        base: Box<Expr>,
        filters: Vec<Arg>,
    },
    Field {
        base: Box<Expr>,
        field: Ident,
    },
    /// `input |> stage`
    Pipe {
        input: Box<Expr>,
        stage: Box<Expr>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Neg(Box<Expr>),
    /// `a == b`, `a < b`, ...
    Compare {
        op: CmpOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `a and b`, `a or b`
    Logic {
        op: LogicOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `Fim(KFAC) of net on probe`, `... on probe sharded(8)`
    Repr {
        structure: Box<Expr>,
        model: Box<Expr>,
        data: Option<Box<Expr>>,
        /// `sharded(k)`: computed over `k` example ranges and reduced.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shards: Option<Box<Expr>>,
    },
    /// `train sharded(8)`: a dataset whose examples a gradient is summed
    /// over in `k` ranges (`grad(net, train sharded(8))`).
    Sharded {
        data: Box<Expr>,
        shards: Box<Expr>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListItem {
    pub value: Expr,
    pub label: Option<StrLit>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Arg {
    pub name: Option<Ident>,
    /// The name was written as a string (`"layer4.*" = Diag`): a layer
    /// name or pattern, not an option.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quoted: bool,
    pub value: Expr,
    pub span: Span,
}

impl Expr {
    /// The identifier this expression is, if it is a bare identifier.
    pub fn as_ident(&self) -> Option<&str> {
        match &self.kind {
            ExprKind::Ident(n) => Some(n),
            _ => None,
        }
    }
}
