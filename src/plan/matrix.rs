//! Matrix algebra steps: a representation computed from others.

use super::{Operand, Structure};
use serde::{Deserialize, Serialize};

/// Matrix algebra on Fisher representations (see `geometry::algebra`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MatrixOp {
    /// `ca·a + cb·b` (`A + B`, `A - B`).
    Combine {
        a: Operand,
        b: Operand,
        ca: f64,
        cb: f64,
    },
    /// `factor·m`.
    Scale { factor: f64, m: Operand },
    /// `m + damping·I`.
    Damp { m: Operand, damping: f64 },
    /// `m^power` (`inverse(m)` is power −1).
    Power { m: Operand, power: f64 },
    /// The same matrix stored Dense (`dense(m)`).
    Dense { m: Operand },
}

impl MatrixOp {
    /// The representations it reads, first the one whose model, data and
    /// layers the result keeps.
    pub fn operands(&self) -> Vec<&Operand> {
        match self {
            MatrixOp::Combine { a, b, .. } => vec![a, b],
            MatrixOp::Scale { m, .. }
            | MatrixOp::Damp { m, .. }
            | MatrixOp::Power { m, .. }
            | MatrixOp::Dense { m } => vec![m],
        }
    }
}

impl MatrixOp {
    /// The structure of the result of this operation on `s` (see
    /// `geometry::algebra` for what each operation keeps), for checks
    /// and estimates.
    pub fn result_structure(&self, s: &Structure) -> Structure {
        let ekfac = Structure::Ekfac {
            refit: true,
            initial_basis: false,
        };
        match (self, s) {
            (MatrixOp::Dense { .. }, _) => Structure::Dense,
            (MatrixOp::Combine { .. }, Structure::Kfac | Structure::Ekfac { .. }) => {
                Structure::BlockDiag
            }
            (MatrixOp::Combine { ca, cb, .. }, Structure::LowRank { .. })
                if *ca < 0.0 || *cb < 0.0 =>
            {
                Structure::Dense
            }
            (MatrixOp::Scale { factor, .. }, Structure::LowRank { .. }) if *factor < 0.0 => {
                Structure::Dense
            }
            (MatrixOp::Damp { .. }, Structure::Kfac) => ekfac,
            (MatrixOp::Damp { .. } | MatrixOp::Power { .. }, Structure::LowRank { .. }) => {
                Structure::Dense
            }
            (MatrixOp::Power { .. }, Structure::QuasiDiag) => Structure::BlockDiag,
            (_, s) => s.clone(),
        }
    }
}
