//! Claims declared in an experiment (`expect "text" : expression`), in the
//! form the checker gives them: keys resolved, sweep tags and their values
//! canonical, every reducer known. They are evaluated on a run's results
//! by `report::claims`, so a claim is re-checked whenever a report is
//! rebuilt, also for a run that crashed part-way.
//!
//! The values a claim computes with are *series*: measurements indexed by
//! their sweep tags and training step. A series from a key pattern such as
//! `"align/train/*"` also carries the matched key as the tag `key`.

use serde::{Deserialize, Serialize};

/// Whether a tag's value is spelled out as a whole `/`-segment of the key
/// (as `{S}` in `rel_error/{S}`): claims and summaries leave such a tag out
/// of the key's index, so `"rel_error/EKFAC"` and `"rel_error/KFAC"` line up.
pub fn rendered(key: &str, value: &str) -> bool {
    !value.is_empty() && key.split('/').any(|s| s == value)
}

/// A claim's expression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClaimExpr {
    /// A number written in the claim.
    Number {
        value: f64,
    },
    /// The measurements of one key, or of every key matching a `*` pattern.
    Key {
        pattern: String,
    },
    /// `series[tag = value, ...]`: the entries whose tags have these values
    /// (the tags are then dropped, so series with different values of them
    /// line up).
    Select {
        base: Box<ClaimExpr>,
        filters: Vec<TagFilter>,
    },
    Arith {
        op: ArithOp,
        lhs: Box<ClaimExpr>,
        rhs: Box<ClaimExpr>,
    },
    Neg {
        value: Box<ClaimExpr>,
    },
    Compare {
        op: Cmp,
        lhs: Box<ClaimExpr>,
        rhs: Box<ClaimExpr>,
    },
    Logic {
        op: Logic,
        lhs: Box<ClaimExpr>,
        rhs: Box<ClaimExpr>,
    },
    /// A reducer applied to its arguments; `by` keeps those tags (one result
    /// per combination of their values) instead of reducing over them.
    Reduce {
        reducer: Reducer,
        args: Vec<ClaimExpr>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        by: Vec<String>,
    },
}

/// `tag = value` in a selection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TagFilter {
    pub tag: String,
    /// The value as results record it (a sweep item's label).
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl ArithOp {
    pub fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            ArithOp::Add => a + b,
            ArithOp::Sub => a - b,
            ArithOp::Mul => a * b,
            ArithOp::Div => a / b,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    /// The comparison on numbers; NaN compares false (a missing or
    /// non-finite value never supports a claim).
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b && !a.is_nan() && !b.is_nan(),
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Logic {
    And,
    Or,
}

/// What a claim can reduce series with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reducer {
    /// Every comparison holds.
    All,
    /// At least one comparison holds.
    Any,
    /// Fraction of comparisons that hold.
    Fraction,
    Mean,
    Median,
    Min,
    Max,
    /// (max − min) / |mean|: how much the values differ.
    Spread,
    /// The value at the first / last training step (per other tags).
    First,
    Last,
    /// The first training step at which a comparison holds (∞ if never).
    FirstStep,
    /// Spearman's rank correlation of two series over their common entries.
    Spearman,
    /// `a / b` entry by entry.
    Ratio,
}

/// Reducers by the name a claim calls them with, and what each takes.
pub const REDUCERS: [(&str, Reducer, &str); 13] = [
    ("all", Reducer::All, "comparisons"),
    ("any", Reducer::Any, "comparisons"),
    ("fraction", Reducer::Fraction, "comparisons"),
    ("mean", Reducer::Mean, "a series"),
    ("median", Reducer::Median, "a series"),
    ("min", Reducer::Min, "a series"),
    ("max", Reducer::Max, "a series"),
    ("spread", Reducer::Spread, "a series"),
    ("first", Reducer::First, "a series"),
    ("last", Reducer::Last, "a series"),
    ("first_step", Reducer::FirstStep, "comparisons"),
    ("spearman", Reducer::Spearman, "two series"),
    ("ratio", Reducer::Ratio, "two series"),
];

impl Reducer {
    pub fn name(self) -> &'static str {
        REDUCERS.iter().find(|r| r.1 == self).map_or("?", |r| r.0)
    }

    pub fn by_name(name: &str) -> Option<Reducer> {
        REDUCERS.iter().find(|r| r.0 == name).map(|r| r.1)
    }
}
