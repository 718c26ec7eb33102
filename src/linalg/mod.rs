//! Host-side dense linear algebra on row-major `f64` matrices.
//!
//! Geometry quantities (Fisher matrices, NTK Gram matrices) end up on the
//! host as plain row-major buffers; this module keeps that simple layout as
//! its public type and hands the numerically delicate work (matmul,
//! eigendecompositions, factorisations) to `faer`, viewing the buffers in
//! place rather than copying them into faer's column-major storage.

use faer::prelude::Solve;
use faer::{Accum, MatMut, MatRef, Par, Side};
use thiserror::Error;

/// Errors from the dense routines. `op` names the public function that
/// failed, so a message that surfaces far from the call site stays legible.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum LinalgError {
    #[error("{op}: matrix must be square, got {rows}×{cols}")]
    NotSquare {
        op: &'static str,
        rows: usize,
        cols: usize,
    },
    #[error("{op}: dimension mismatch: matrix is {n}×{n} but right-hand side has {rhs_rows} rows")]
    DimensionMismatch {
        op: &'static str,
        n: usize,
        rhs_rows: usize,
    },
    #[error("{op}: input contains NaN or infinite entries")]
    NonFiniteInput { op: &'static str },
    #[error("{op}: symmetric eigendecomposition did not converge")]
    NoConvergence { op: &'static str },
    #[error("{op}: matrix is singular to working precision (solution is not finite)")]
    Singular { op: &'static str },
    /// A backend's solver (the device side of [`Linalg`]) failed.
    #[error("{0}")]
    Backend(String),
    #[error("sym_fn: f({lambda:e}) = {value} is not finite")]
    NonFiniteFn { lambda: f64, value: f64 },
}

/// Row-major dense matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Mat {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn identity(n: usize) -> Mat {
        let mut m = Mat::zeros(n, n);
        m.add_diag(1.0);
        m
    }

    /// `data` is row-major and must hold `rows * cols` entries (checked in
    /// debug builds only, so release callers on hot paths pay nothing).
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f64>) -> Mat {
        debug_assert_eq!(data.len(), rows * cols, "Mat::from_vec: wrong length");
        Mat { rows, cols, data }
    }

    #[inline]
    pub fn get(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }

    #[inline]
    pub fn set(&mut self, r: usize, c: usize, v: f64) {
        self.data[r * self.cols + c] = v;
    }

    pub fn transpose(&self) -> Mat {
        let mut out = Mat::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                out.data[c * self.rows + r] = self.data[r * self.cols + c];
            }
        }
        out
    }

    /// Panics if the inner dimensions differ: that is a caller bug, not a
    /// numerical condition.
    pub fn matmul(&self, other: &Mat) -> Mat {
        assert_eq!(
            self.cols, other.rows,
            "Mat::matmul: inner dimensions differ ({}×{} · {}×{})",
            self.rows, self.cols, other.rows, other.cols
        );
        let mut out = Mat::zeros(self.rows, other.cols);
        faer::linalg::matmul::matmul(
            MatMut::from_row_major_slice_mut(&mut out.data, self.rows, other.cols),
            Accum::Replace,
            self.view(),
            other.view(),
            1.0,
            Par::Seq,
        );
        out
    }

    pub fn matvec(&self, v: &[f64]) -> Vec<f64> {
        assert_eq!(
            v.len(),
            self.cols,
            "Mat::matvec: vector length differs from cols"
        );
        if self.cols == 0 {
            // chunks_exact(0) panics; an empty row dots to zero.
            return vec![0.0; self.rows];
        }
        self.data
            .chunks_exact(self.cols)
            .map(|row| dot(row, v))
            .collect()
    }

    pub fn trace(&self) -> f64 {
        self.diag().iter().sum()
    }

    pub fn frobenius(&self) -> f64 {
        self.data.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    pub fn diag(&self) -> Vec<f64> {
        (0..self.rows.min(self.cols))
            .map(|i| self.get(i, i))
            .collect()
    }

    pub fn add_diag(&mut self, lambda: f64) {
        let step = self.cols + 1;
        for x in self
            .data
            .iter_mut()
            .step_by(step)
            .take(self.rows.min(self.cols))
        {
            *x += lambda;
        }
    }

    /// (A + Aᵀ)/2, removing the round-off asymmetry that accumulated sums
    /// (e.g. JᵀJ built in blocks) leave behind before a symmetric routine.
    pub fn symmetrize(&mut self) {
        debug_assert_eq!(self.rows, self.cols, "Mat::symmetrize: not square");
        let n = self.rows.min(self.cols);
        for i in 0..n {
            for j in (i + 1)..n {
                let m = 0.5 * (self.get(i, j) + self.get(j, i));
                self.set(i, j, m);
                self.set(j, i, m);
            }
        }
    }

    fn view(&self) -> MatRef<'_, f64> {
        MatRef::from_row_major_slice(&self.data, self.rows, self.cols)
    }

    fn from_faer(m: MatRef<'_, f64>) -> Mat {
        let mut out = Mat::zeros(m.nrows(), m.ncols());
        MatMut::from_row_major_slice_mut(&mut out.data, m.nrows(), m.ncols()).copy_from(m);
        out
    }

    fn is_finite(&self) -> bool {
        self.data.iter().all(|x| x.is_finite())
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

fn check_square(op: &'static str, a: &Mat) -> Result<usize, LinalgError> {
    if a.rows != a.cols {
        return Err(LinalgError::NotSquare {
            op,
            rows: a.rows,
            cols: a.cols,
        });
    }
    Ok(a.rows)
}

/// Shared preconditions of the symmetric routines. The input is averaged with
/// its transpose because faer reads only one triangle, and a matrix that is
/// symmetric only up to round-off should not have its answer depend on which.
fn symmetric_input(op: &'static str, a: &Mat) -> Result<Mat, LinalgError> {
    check_square(op, a)?;
    if !a.is_finite() {
        return Err(LinalgError::NonFiniteInput { op });
    }
    let mut s = a.clone();
    s.symmetrize();
    Ok(s)
}

/// What [`eigh`] decomposes: `a` checked square and finite, symmetrised
/// (for a backend's own solver, which must see the same matrix).
pub fn eigh_input(a: &Mat) -> Result<Mat, LinalgError> {
    symmetric_input("eigh", a)
}

/// Symmetric eigendecomposition: eigenvalues ascending, eigenvectors as the
/// COLUMNS of the returned Mat (n×n), matching numpy/torch eigh.
pub fn eigh(a: &Mat) -> Result<(Vec<f64>, Mat), LinalgError> {
    const OP: &str = "eigh";
    let s = symmetric_input(OP, a)?;
    if s.rows == 0 {
        return Ok((Vec::new(), Mat::zeros(0, 0)));
    }
    let evd = s
        .view()
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| LinalgError::NoConvergence { op: OP })?;
    let evals: Vec<f64> = evd.S().column_vector().iter().copied().collect();
    Ok((evals, Mat::from_faer(evd.U())))
}

/// The top `k` eigenpairs of a symmetric matrix that the caller gives up:
/// the eigenvalues ascending and their eigenvectors as the columns of an
/// `n × k` matrix, the values [`eigh`] gives for its last `k` columns.
/// `a` is symmetrised in place (no copy) and dropped once decomposed, and
/// only `k` columns of the eigenvectors are copied out: beside the
/// decomposition's own `n × n` copy, eigenvectors and workspace, no other
/// `n × n` matrix is held.
pub fn eigh_top(mut a: Mat, k: usize) -> Result<(Vec<f64>, Mat), LinalgError> {
    const OP: &str = "eigh";
    check_square(OP, &a)?;
    if !a.is_finite() {
        return Err(LinalgError::NonFiniteInput { op: OP });
    }
    a.symmetrize();
    let n = a.rows;
    let k = k.min(n);
    if n == 0 {
        return Ok((Vec::new(), Mat::zeros(0, 0)));
    }
    let evd = a
        .view()
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| LinalgError::NoConvergence { op: OP })?;
    drop(a);
    let s = evd.S().column_vector();
    let u = evd.U();
    let evals: Vec<f64> = (n - k..n).map(|e| s[e]).collect();
    let mut top = Mat::zeros(n, k);
    for r in 0..n {
        for (j, e) in (n - k..n).enumerate() {
            top.data[r * k + j] = u[(r, e)];
        }
    }
    Ok((evals, top))
}

/// Eigenvalues only, ascending.
pub fn eigvalsh(a: &Mat) -> Result<Vec<f64>, LinalgError> {
    const OP: &str = "eigvalsh";
    let s = symmetric_input(OP, a)?;
    if s.rows == 0 {
        return Ok(Vec::new());
    }
    s.view()
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|_| LinalgError::NoConvergence { op: OP })
}

/// Checks a system `A X = B` (square `A`, matching rows, finite entries)
/// as every solver here does first: for a backend's solver to refuse the
/// same inputs with the same errors.
pub fn check_system(op: &'static str, a: &Mat, b: &Mat) -> Result<(), LinalgError> {
    let n = check_square(op, a)?;
    if b.rows != n {
        return Err(LinalgError::DimensionMismatch {
            op,
            n,
            rhs_rows: b.rows,
        });
    }
    if !a.is_finite() || !b.is_finite() {
        return Err(LinalgError::NonFiniteInput { op });
    }
    Ok(())
}

/// LU never reports failure itself: a zero pivot shows up as inf/NaN in the
/// solution, so finiteness of the result is the singularity test.
fn lu_solve(op: &'static str, a: &Mat, b: &Mat) -> Result<Mat, LinalgError> {
    let x = Mat::from_faer(a.view().partial_piv_lu().solve(b.view()).as_ref());
    if x.is_finite() {
        Ok(x)
    } else {
        Err(LinalgError::Singular { op })
    }
}

/// Solves A X = B for symmetric positive definite A (Cholesky on the lower
/// triangle); B is n×k. Falls back to LU with partial pivoting when Cholesky
/// meets a non-positive pivot (A only semidefinite numerically); errors only
/// if both fail or the result is not finite.
pub fn solve_sym(a: &Mat, b: &Mat) -> Result<Mat, LinalgError> {
    const OP: &str = "solve_sym";
    check_system(OP, a, b)?;
    if a.rows == 0 {
        return Ok(Mat::zeros(0, b.cols));
    }
    if let Ok(llt) = a.view().llt(Side::Lower) {
        let x = Mat::from_faer(llt.solve(b.view()).as_ref());
        if x.is_finite() {
            return Ok(x);
        }
    }
    lu_solve(OP, a, b)
}

/// Where a representation's dense solves and spectra run: the host's
/// cores (faer, [`Host`]) or a backend's device (the executor's adapter
/// over `Ops`, where the backend says it decomposes there), so that a GPU
/// run does not factor a large matrix on the host. Both give the same
/// results to round-off.
pub trait Linalg {
    /// As [`solve_sym`]: Cholesky, LU where Cholesky breaks down.
    fn solve_sym(&self, a: &Mat, b: &Mat) -> Result<Mat, LinalgError>;
    /// As [`eigvalsh`]: ascending.
    fn eigvalsh(&self, a: &Mat) -> Result<Vec<f64>, LinalgError>;
}

/// The host's solvers (faer).
pub struct Host;

impl Linalg for Host {
    fn solve_sym(&self, a: &Mat, b: &Mat) -> Result<Mat, LinalgError> {
        solve_sym(a, b)
    }
    fn eigvalsh(&self, a: &Mat) -> Result<Vec<f64>, LinalgError> {
        eigvalsh(a)
    }
}

/// General square solve (LU with partial pivoting).
pub fn solve(a: &Mat, b: &Mat) -> Result<Mat, LinalgError> {
    const OP: &str = "solve";
    check_system(OP, a, b)?;
    if a.rows == 0 {
        return Ok(Mat::zeros(0, b.cols));
    }
    lu_solve(OP, a, b)
}

/// Inverse of a symmetric positive definite matrix (same fallback as
/// [`solve_sym`]).
pub fn inv_sym(a: &Mat) -> Result<Mat, LinalgError> {
    let n = check_square("inv_sym", a)?;
    let mut x = solve_sym(a, &Mat::identity(n))?;
    // The exact inverse is symmetric; the solve's round-off is not.
    x.symmetrize();
    Ok(x)
}

/// f(A) = V diag(f(λ)) Vᵀ for symmetric A (used for matrix powers and inverse
/// square roots). Errors if f yields a non-finite value, e.g. a negative
/// power of a zero eigenvalue, rather than returning a NaN-filled matrix.
pub fn sym_fn(a: &Mat, f: impl Fn(f64) -> f64) -> Result<Mat, LinalgError> {
    let (evals, v) = eigh(a)?;
    let n = evals.len();
    let mut fl = Vec::with_capacity(n);
    for &lambda in &evals {
        let value = f(lambda);
        if !value.is_finite() {
            return Err(LinalgError::NonFiniteFn { lambda, value });
        }
        fl.push(value);
    }
    let mut vf = v.clone();
    if n > 0 {
        for row in vf.data.chunks_exact_mut(n) {
            for (x, s) in row.iter_mut().zip(&fl) {
                *x *= s;
            }
        }
    }
    let mut out = vf.matmul(&v.transpose());
    out.symmetrize();
    Ok(out)
}

/// Effective rank exp(H(p)) with p = λ/Σλ over the positive eigenvalues (Roy
/// & Vetterli 2007) of a symmetric PSD matrix given its eigenvalues; negative
/// round-off values are clamped to 0. Returns 0 for an all-zero spectrum and
/// NaN if any eigenvalue is NaN or infinite.
pub fn effective_rank(evals: &[f64]) -> f64 {
    if evals.iter().any(|x| !x.is_finite()) {
        return f64::NAN;
    }
    let total: f64 = evals.iter().map(|&x| x.max(0.0)).sum();
    if total <= 0.0 {
        return 0.0;
    }
    let entropy: f64 = evals
        .iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| {
            let p = x / total;
            -p * p.ln()
        })
        .sum();
    entropy.exp()
}

pub mod gemm;
mod lanczos;
mod stored;
pub use lanczos::{fix_sign, spectral_norm_op, top_eigpairs_op, top_eigs_op, with_fallible_op};
pub use stored::{
    combine_host, sandwich_host, wider, DeviceMatrix, Held, HostElem, HostMatrix, Keep, Stored,
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny LCG so tests are deterministic without a rand dependency.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        }
        fn mat(&mut self, r: usize, c: usize) -> Mat {
            Mat::from_vec(r, c, (0..r * c).map(|_| self.next()).collect())
        }
    }

    fn random_spd(n: usize, seed: u64) -> Mat {
        let b = Lcg(seed).mat(n, n);
        let mut a = b.matmul(&b.transpose());
        a.add_diag(0.1);
        a
    }

    fn random_sym(n: usize, seed: u64) -> Mat {
        let mut a = Lcg(seed).mat(n, n);
        a.symmetrize();
        a
    }

    fn max_abs_diff(a: &Mat, b: &Mat) -> f64 {
        assert_eq!((a.rows, a.cols), (b.rows, b.cols));
        a.data
            .iter()
            .zip(&b.data)
            .fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    #[test]
    fn basic_ops() {
        let a = Mat::from_vec(2, 3, vec![1., 2., 3., 4., 5., 6.]);
        let at = a.transpose();
        assert_eq!(at.data, vec![1., 4., 2., 5., 3., 6.]);
        let p = a.matmul(&at);
        assert_eq!(p.data, vec![14., 32., 32., 77.]);
        assert_eq!(a.matvec(&[1., 1., 1.]), vec![6., 15.]);
        assert_eq!(p.trace(), 91.0);
        assert_eq!(a.diag(), vec![1., 5.]);
        assert!((Mat::identity(4).frobenius() - 2.0).abs() < 1e-15);
        let mut s = Mat::from_vec(2, 2, vec![1., 2., 4., 3.]);
        s.symmetrize();
        s.add_diag(1.0);
        assert_eq!(s.data, vec![2., 3., 3., 4.]);
        assert_eq!(Mat::zeros(0, 0).matmul(&Mat::zeros(0, 3)), Mat::zeros(0, 3));
        assert_eq!(Mat::zeros(2, 0).matvec(&[]), vec![0.0, 0.0]);
    }

    #[test]
    fn matmul_matches_naive() {
        let mut g = Lcg(7);
        let a = g.mat(13, 17);
        let b = g.mat(17, 5);
        let c = a.matmul(&b);
        let mut naive = Mat::zeros(13, 5);
        for i in 0..13 {
            for j in 0..5 {
                naive.set(i, j, (0..17).map(|k| a.get(i, k) * b.get(k, j)).sum());
            }
        }
        assert!(max_abs_diff(&c, &naive) < 1e-13);
    }

    #[test]
    fn eigh_reconstructs_and_is_orthonormal() {
        let n = 50;
        let a = random_spd(n, 1);
        let (evals, v) = eigh(&a).unwrap();
        assert_eq!(evals.len(), n);
        assert!(evals.windows(2).all(|w| w[0] <= w[1]), "not ascending");
        assert!(evals[0] > 0.0);

        let mut vl = v.clone();
        for row in vl.data.chunks_exact_mut(n) {
            for (x, l) in row.iter_mut().zip(&evals) {
                *x *= l;
            }
        }
        let recon = vl.matmul(&v.transpose());
        let scale = a.frobenius();
        assert!(max_abs_diff(&recon, &a) < 1e-12 * scale, "VΛVᵀ ≠ A");
        let vtv = v.transpose().matmul(&v);
        assert!(
            max_abs_diff(&vtv, &Mat::identity(n)) < 1e-12,
            "V not orthonormal"
        );

        // Columns, not rows, are the eigenvectors: A v_i = λ_i v_i.
        let col: Vec<f64> = (0..n).map(|r| v.get(r, n - 1)).collect();
        let av = a.matvec(&col);
        for (x, y) in av.iter().zip(&col) {
            assert!((x - evals[n - 1] * y).abs() < 1e-10 * evals[n - 1]);
        }

        let vals = eigvalsh(&a).unwrap();
        for (x, y) in vals.iter().zip(&evals) {
            assert!((x - y).abs() < 1e-11 * evals[n - 1]);
        }
    }

    #[test]
    fn eigh_rejects_bad_input() {
        assert!(matches!(
            eigh(&Mat::zeros(2, 3)),
            Err(LinalgError::NotSquare { .. })
        ));
        let mut a = Mat::identity(3);
        a.set(1, 1, f64::NAN);
        assert!(matches!(eigh(&a), Err(LinalgError::NonFiniteInput { .. })));
        assert_eq!(eigvalsh(&Mat::zeros(0, 0)).unwrap(), Vec::<f64>::new());
    }

    #[test]
    fn solve_sym_residual() {
        let n = 40;
        let a = random_spd(n, 2);
        let b = Lcg(3).mat(n, 3);
        let x = solve_sym(&a, &b).unwrap();
        let r = max_abs_diff(&a.matmul(&x), &b);
        assert!(r < 1e-10, "residual {r}");
    }

    #[test]
    fn solve_sym_falls_back_to_lu() {
        // Symmetric indefinite: Cholesky must fail, LU must still solve it.
        let a = Mat::from_vec(2, 2, vec![0., 1., 1., 0.]);
        let b = Mat::from_vec(2, 1, vec![2., 3.]);
        let x = solve_sym(&a, &b).unwrap();
        assert!(max_abs_diff(&x, &Mat::from_vec(2, 1, vec![3., 2.])) < 1e-15);

        let singular = Mat::from_vec(2, 2, vec![1., 1., 1., 1.]);
        assert!(matches!(
            solve_sym(&singular, &b),
            Err(LinalgError::Singular { .. })
        ));
        assert!(matches!(
            solve_sym(&a, &Mat::zeros(3, 1)),
            Err(LinalgError::DimensionMismatch { .. })
        ));
    }

    #[test]
    fn solve_nonsymmetric() {
        let n = 30;
        let mut a = Lcg(4).mat(n, n);
        a.add_diag(2.0);
        let b = Lcg(5).mat(n, 4);
        let x = solve(&a, &b).unwrap();
        let r = max_abs_diff(&a.matmul(&x), &b);
        assert!(r < 1e-10, "residual {r}");
        assert!(matches!(
            solve(&Mat::zeros(2, 2), &Mat::zeros(2, 1)),
            Err(LinalgError::Singular { .. })
        ));
    }

    #[test]
    fn inv_sym_times_a_is_identity() {
        let n = 30;
        let a = random_spd(n, 6);
        let ai = inv_sym(&a).unwrap();
        assert!(max_abs_diff(&ai.matmul(&a), &Mat::identity(n)) < 1e-9);
        assert_eq!(ai, ai.transpose());
    }

    #[test]
    fn sym_fn_sqrt_squares_back() {
        let n = 25;
        let a = random_spd(n, 8);
        let r = sym_fn(&a, f64::sqrt).unwrap();
        assert!(max_abs_diff(&r.matmul(&r), &a) < 1e-11 * a.frobenius());
        let isq = sym_fn(&a, |x| x.powf(-0.5)).unwrap();
        let should_be_i = isq.matmul(&a).matmul(&isq);
        assert!(max_abs_diff(&should_be_i, &Mat::identity(n)) < 1e-8);
        assert!(matches!(
            sym_fn(&Mat::zeros(2, 2), |x| 1.0 / x),
            Err(LinalgError::NonFiniteFn { .. })
        ));
    }

    #[test]
    fn effective_rank_values() {
        assert!((effective_rank(&[1., 1., 1., 1.]) - 4.0).abs() < 1e-12);
        assert!((effective_rank(&[1., 0., 0.]) - 1.0).abs() < 1e-12);
        assert!((effective_rank(&[-1e-17, 2., 2.]) - 2.0).abs() < 1e-12);
        let r = effective_rank(&[3., 1.]);
        assert!(r > 1.0 && r < 2.0);
        assert_eq!(effective_rank(&[0., 0.]), 0.0);
        assert!(effective_rank(&[1., f64::NAN]).is_nan());
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs()
    }

    #[test]
    fn spectral_norm_op_matches_eigh() {
        for (a, label) in [
            (random_spd(200, 9), "spd"),
            (random_sym(200, 10), "indefinite"),
        ] {
            let ev = eigvalsh(&a).unwrap();
            let want = ev[0].abs().max(ev[ev.len() - 1].abs());
            let mut calls = 0;
            let got = spectral_norm_op(
                200,
                &mut |v| {
                    calls += 1;
                    a.matvec(v)
                },
                1e-10,
            );
            assert!(rel(got, want) < 1e-8, "{label}: {got} vs {want}");
            // Cheaper than the n applications a dense build would take.
            assert!(calls < 200, "{label}: {calls} calls");
        }
        // Largest magnitude may be a negative eigenvalue.
        let mut d = Mat::identity(150);
        d.set(3, 3, -7.0);
        let got = spectral_norm_op(150, &mut |v| d.matvec(v), 1e-10);
        assert!(rel(got, 7.0) < 1e-8, "{got}");
    }

    #[test]
    fn top_eigs_op_matches_eigh() {
        for (a, label) in [
            (random_spd(200, 11), "spd"),
            (random_sym(200, 13), "indefinite"),
        ] {
            let ev = eigvalsh(&a).unwrap();
            let mut calls = 0;
            let got = top_eigs_op(
                200,
                6,
                &mut |v| {
                    calls += 1;
                    a.matvec(v)
                },
                1e-10,
            );
            assert_eq!(got.len(), 6);
            for (g, w) in got.iter().zip(ev.iter().rev()) {
                assert!(rel(*g, *w) < 1e-8, "{label}: {g} vs {w}");
            }
            eprintln!("{label}: {calls} calls");
        }

        // Repeated eigenvalues are only found through breakdown restarts.
        let mut d = Mat::identity(200);
        for i in 0..3 {
            d.set(i * 50, i * 50, 5.0);
        }
        let mut calls = 0;
        let got = top_eigs_op(
            200,
            4,
            &mut |v| {
                calls += 1;
                d.matvec(v)
            },
            1e-10,
        );
        eprintln!("repeated: {calls} calls");
        for (g, w) in got.iter().zip([5.0, 5.0, 5.0, 1.0]) {
            assert!(rel(*g, w) < 1e-8, "{got:?}");
        }

        // Dense path for small n.
        let s = random_sym(20, 12);
        let ev = eigvalsh(&s).unwrap();
        let got = top_eigs_op(20, 3, &mut |v| s.matvec(v), 1e-10);
        for (g, w) in got.iter().zip(ev.iter().rev()) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
        assert!(top_eigs_op(5, 0, &mut |v| v.to_vec(), 1e-10).is_empty());
        assert_eq!(spectral_norm_op(0, &mut |v| v.to_vec(), 1e-10), 0.0);
    }
}
