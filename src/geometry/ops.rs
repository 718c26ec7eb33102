//! The small tensor-operations trait every backend implements.
//!
//! The geometry engine (layers, backward passes, per-layer statistics, every
//! representation) is written once against this trait. A backend supplies
//! storage and these primitive operations; it gets every FIM and NTK
//! structure for free, and may still override a hot path natively.
//!
//! Conventions: shapes are row-major; elementwise binary operations
//! broadcast like NumPy; `matmul` broadcasts its batch dimensions.

use crate::plan::Dtype;

/// Why a tensor operation failed (shape mismatch, device error…).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OpsError(pub String);

pub type OpsResult<T> = Result<T, OpsError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    Relu,
    /// 1 where x > 0, else 0: the derivative of ReLU.
    Step,
    Tanh,
    Sigmoid,
    /// GELU with the exact erf form (PyTorch's default).
    GeluErf,
    Erf,
    Exp,
    Log,
    Sqrt,
    Sqr,
    Recip,
    Neg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    /// 1.0 where a ≥ b, else 0.0.
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Max,
}

/// Tensor operations on one device in one dtype.
pub trait Ops: Clone {
    type T: Clone;

    /// e.g. `candle`, used in messages.
    fn name(&self) -> String;
    /// e.g. `cpu`, `cuda:0`.
    fn device(&self) -> String;
    fn dtype(&self) -> Dtype;

    /// A tensor of the working dtype from row-major f64 data.
    fn upload(&self, shape: &[usize], data: &[f64]) -> OpsResult<Self::T>;
    /// An index tensor for `index_select` / `index_add`.
    fn upload_index(&self, idx: &[u32]) -> OpsResult<Self::T>;
    /// Row-major f64 copy of a tensor.
    fn download(&self, t: &Self::T) -> OpsResult<Vec<f64>>;
    fn shape(&self, t: &Self::T) -> Vec<usize>;

    fn zeros(&self, shape: &[usize]) -> OpsResult<Self::T>;
    fn reshape(&self, t: &Self::T, shape: &[usize]) -> OpsResult<Self::T>;
    /// Swaps two dimensions; the result is contiguous.
    fn transpose(&self, t: &Self::T, d0: usize, d1: usize) -> OpsResult<Self::T>;
    fn narrow(&self, t: &Self::T, dim: usize, start: usize, len: usize) -> OpsResult<Self::T>;
    fn cat(&self, ts: &[Self::T], dim: usize) -> OpsResult<Self::T>;
    /// `[..., m, k] × [..., k, n]`, batch dimensions broadcast.
    fn matmul(&self, a: &Self::T, b: &Self::T) -> OpsResult<Self::T>;
    fn unary(&self, op: Unary, t: &Self::T) -> OpsResult<Self::T>;
    fn binary(&self, op: Binary, a: &Self::T, b: &Self::T) -> OpsResult<Self::T>;
    /// `t * mul + add`.
    fn affine(&self, t: &Self::T, mul: f64, add: f64) -> OpsResult<Self::T>;
    /// Reduction over `dim`, which is kept with size 1.
    fn reduce(&self, op: Reduce, t: &Self::T, dim: usize) -> OpsResult<Self::T>;
    /// Sum of every element, as a host number (default: on the host).
    fn sum_all(&self, t: &Self::T) -> OpsResult<f64> {
        Ok(self.download(t)?.iter().sum())
    }
    /// `t.index_select(dim, idx)`.
    fn index_select(&self, t: &Self::T, idx: &Self::T, dim: usize) -> OpsResult<Self::T>;
    /// `base` with `src` slices added at positions `idx` along `dim`.
    fn index_add(
        &self,
        base: &Self::T,
        idx: &Self::T,
        src: &Self::T,
        dim: usize,
    ) -> OpsResult<Self::T>;

    // ---- conveniences with default implementations

    fn add(&self, a: &Self::T, b: &Self::T) -> OpsResult<Self::T> {
        self.binary(Binary::Add, a, b)
    }
    fn sub(&self, a: &Self::T, b: &Self::T) -> OpsResult<Self::T> {
        self.binary(Binary::Sub, a, b)
    }
    fn mul(&self, a: &Self::T, b: &Self::T) -> OpsResult<Self::T> {
        self.binary(Binary::Mul, a, b)
    }
    fn scale(&self, t: &Self::T, f: f64) -> OpsResult<Self::T> {
        self.affine(t, f, 0.0)
    }
    fn sum_dim(&self, t: &Self::T, dim: usize) -> OpsResult<Self::T> {
        self.reduce(Reduce::Sum, t, dim)
    }
    /// `aᵀ b` for 2-d `a [k, m]`, `b [k, n]`.
    fn t_matmul(&self, a: &Self::T, b: &Self::T) -> OpsResult<Self::T> {
        let at = self.transpose(a, 0, 1)?;
        self.matmul(&at, b)
    }
    fn numel(&self, t: &Self::T) -> usize {
        self.shape(t).iter().product()
    }
}
