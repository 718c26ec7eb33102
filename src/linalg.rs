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

fn check_system(op: &'static str, a: &Mat, b: &Mat) -> Result<(), LinalgError> {
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

/// Below this size a dense build (n operator applications) plus `eigvalsh`
/// is both cheaper and exact, so Lanczos is not worth its convergence risk.
const DENSE_CUTOFF: usize = 128;

/// Krylov dimension per cycle of the restarted Lanczos in
/// [`spectral_norm_op`]: bounds memory at this many length-n vectors, which
/// matters when n is a parameter count.
const RESTART_DIM: usize = 32;

/// Restart cycles before [`spectral_norm_op`] settles for its best estimate.
const MAX_CYCLES: usize = 200;

/// SplitMix64: deterministic starting vectors without a rand dependency,
/// so repeated runs of an experiment give bit-identical spectra.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }

    fn vector(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next_f64()).collect()
    }
}

fn apply(op: &mut dyn FnMut(&[f64]) -> Vec<f64>, n: usize, v: &[f64]) -> Vec<f64> {
    let w = op(v);
    assert_eq!(w.len(), n, "operator returned a vector of the wrong length");
    w
}

/// Column-by-column dense build for small operators; symmetrised by
/// `eigvalsh`. `None` when the operator produced non-finite values.
fn dense_eigvals(n: usize, op: &mut dyn FnMut(&[f64]) -> Vec<f64>) -> Option<Vec<f64>> {
    eigvalsh(&dense_of(n, op)?).ok()
}

/// The operator as a dense matrix, column by column.
fn dense_of(n: usize, op: &mut dyn FnMut(&[f64]) -> Vec<f64>) -> Option<Mat> {
    let mut a = Mat::zeros(n, n);
    let mut e = vec![0.0; n];
    for j in 0..n {
        e[j] = 1.0;
        let col = apply(op, n, &e);
        e[j] = 0.0;
        for (i, x) in col.into_iter().enumerate() {
            a.set(i, j, x);
        }
    }
    Some(a)
}

/// Ritz values (ascending) and the eigenvectors of the tridiagonal matrix.
struct Ritz {
    theta: Vec<f64>,
    s: Mat,
}

/// Lanczos with full reorthogonalisation. `beta[j]` couples basis vectors
/// j and j+1; a zero entry marks a restart after an invariant subspace was
/// found, which is how repeated eigenvalues (invisible to a single Krylov
/// sequence) still get their multiplicity.
struct Lanczos {
    n: usize,
    basis: Vec<Vec<f64>>,
    alpha: Vec<f64>,
    beta: Vec<f64>,
    /// Largest ‖A q‖ seen: the scale against which breakdown is judged.
    scale: f64,
    rng: SplitMix,
}

impl Lanczos {
    fn new(n: usize, start: Vec<f64>, rng: SplitMix) -> Lanczos {
        let mut l = Lanczos {
            n,
            basis: Vec::new(),
            alpha: Vec::new(),
            beta: Vec::new(),
            scale: 0.0,
            rng,
        };
        let mut q = start;
        let nq = norm(&q);
        if nq > 0.0 && nq.is_finite() {
            q.iter_mut().for_each(|x| *x /= nq);
            l.basis.push(q);
        } else if let Some(q) = l.fresh_direction() {
            l.basis.push(q);
        }
        l
    }

    /// Classical Gram–Schmidt twice ("twice is enough") against the basis;
    /// returns the coefficients so the caller can fold the correction for
    /// the current vector back into alpha.
    fn orthogonalise(&self, w: &mut [f64]) -> Vec<f64> {
        let mut coeffs = vec![0.0; self.basis.len()];
        for _ in 0..2 {
            for (q, c) in self.basis.iter().zip(coeffs.iter_mut()) {
                let h = dot(w, q);
                axpy(-h, q, w);
                *c += h;
            }
        }
        coeffs
    }

    /// A random unit vector orthogonal to the basis, or `None` once the
    /// basis spans the whole space.
    fn fresh_direction(&mut self) -> Option<Vec<f64>> {
        if self.basis.len() >= self.n {
            return None;
        }
        for _ in 0..3 {
            let mut w = self.rng.vector(self.n);
            let before = norm(&w);
            self.orthogonalise(&mut w);
            let nw = norm(&w);
            // A random vector keeps most of its norm unless the basis is
            // (numerically) complete.
            if nw > 1e-8 * before {
                w.iter_mut().for_each(|x| *x /= nw);
                return Some(w);
            }
        }
        None
    }

    /// One Lanczos step: `Some(false)`, adding nothing, once the basis spans
    /// the space; `None` if the operator produced non-finite values.
    fn step(&mut self, op: &mut dyn FnMut(&[f64]) -> Vec<f64>) -> Option<bool> {
        let j = self.alpha.len();
        if j >= self.basis.len() {
            return Some(false);
        }
        let mut w = apply(op, self.n, &self.basis[j]);
        let nw = norm(&w);
        if !nw.is_finite() {
            return None;
        }
        self.scale = self.scale.max(nw);
        let mut alpha = dot(&w, &self.basis[j]);
        axpy(-alpha, &self.basis[j], &mut w);
        if j > 0 {
            axpy(-self.beta[j - 1], &self.basis[j - 1], &mut w);
        }
        alpha += self.orthogonalise(&mut w)[j];
        self.alpha.push(alpha);
        let beta = norm(&w);
        // Round-off after full reorthogonalisation is O(ε‖A‖√n); anything
        // that small is an invariant subspace, and dropping a coupling of
        // this size perturbs the Ritz values by no more than it.
        let breakdown = 64.0 * f64::EPSILON * self.scale * (self.n as f64).sqrt();
        // Once the basis spans Rⁿ any remainder is round-off, not a direction.
        if beta > breakdown && self.basis.len() < self.n {
            w.iter_mut().for_each(|x| *x /= beta);
            self.beta.push(beta);
            self.basis.push(w);
        } else {
            self.beta.push(0.0);
            if let Some(q) = self.fresh_direction() {
                self.basis.push(q);
            }
        }
        Some(true)
    }

    fn ritz(&self) -> Option<Ritz> {
        self.ritz_range(0, self.alpha.len())
    }

    /// Ritz pairs of the tridiagonal restricted to steps `lo..hi`; with `lo`
    /// and `hi` at block boundaries these are exact eigenpairs of A.
    fn ritz_range(&self, lo: usize, hi: usize) -> Option<Ritz> {
        let m = hi - lo;
        let mut t = Mat::zeros(m, m);
        for (i, &a) in self.alpha[lo..hi].iter().enumerate() {
            t.set(i, i, a);
        }
        for i in 1..m {
            let b = self.beta[lo + i - 1];
            t.set(i, i - 1, b);
            t.set(i - 1, i, b);
        }
        let (theta, s) = eigh(&t).ok()?;
        Some(Ritz { theta, s })
    }

    /// ‖A y − θ y‖ for Ritz pair i: the trailing coupling times the last
    /// component of the tridiagonal eigenvector.
    fn residual(&self, r: &Ritz, i: usize) -> f64 {
        let m = self.alpha.len();
        self.beta[m - 1].abs() * r.s.get(m - 1, i).abs()
    }

    fn exhausted(&self) -> bool {
        self.alpha.len() >= self.basis.len()
    }

    fn ritz_vector(&self, r: &Ritz, i: usize) -> Vec<f64> {
        let mut y = vec![0.0; self.n];
        for (k, q) in self.basis.iter().take(self.alpha.len()).enumerate() {
            axpy(r.s.get(k, i), q, &mut y);
        }
        y
    }
}

/// Ritz-value checks cost O(m³); spacing them geometrically keeps their
/// total within a constant factor of one final check.
fn due_for_check(m: usize, last: usize) -> bool {
    m - last >= (m / 10).max(1)
}

/// Converged when the residual is within tol of the value itself, floored at
/// ε^{2/3}·‖T‖ (as ARPACK does) so near-zero eigenvalues can converge too.
fn converged(res: f64, theta: f64, norm_t: f64, tol: f64) -> bool {
    res <= tol * theta.abs().max(f64::EPSILON.powf(2.0 / 3.0) * norm_t)
}

/// Largest eigenvalue magnitude of a symmetric operator given only as a
/// closure v -> A v, by restarted Lanczos (full reorthogonalisation within
/// each cycle, fixed-seed start) to relative tolerance `tol`. Memory is
/// `RESTART_DIM` vectors of length n. Small operators (n ≤ 128) are built
/// densely instead. Returns NaN if the operator yields non-finite values.
pub fn spectral_norm_op(n: usize, op: &mut dyn FnMut(&[f64]) -> Vec<f64>, tol: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    if n <= DENSE_CUTOFF {
        return match dense_eigvals(n, op) {
            Some(ev) => ev.iter().fold(0.0, |m: f64, x| m.max(x.abs())),
            None => f64::NAN,
        };
    }
    let mut rng = SplitMix(0x6E6E_6765_6F00_0001);
    let mut start = rng.vector(n);
    let mut best = 0.0;
    for _ in 0..MAX_CYCLES {
        let mut l = Lanczos::new(n, start, rng);
        let mut last = 0;
        let mut done = false;
        let mut top = None;
        while l.alpha.len() < RESTART_DIM.min(n) {
            match l.step(op) {
                None => return f64::NAN,
                Some(false) => break,
                Some(true) => {}
            }
            let m = l.alpha.len();
            if !due_for_check(m, last) && !l.exhausted() && m < RESTART_DIM {
                continue;
            }
            last = m;
            let Some(r) = l.ritz() else { return f64::NAN };
            let i = argmax_abs(&r.theta);
            let norm_t = r.theta[i].abs();
            if converged(l.residual(&r, i), r.theta[i], norm_t, tol) || l.exhausted() {
                done = true;
            }
            top = Some((r, i));
            if done {
                break;
            }
        }
        let Some((r, i)) = top else { return best };
        best = r.theta[i].abs();
        if done {
            return best;
        }
        start = l.ritz_vector(&r, i);
        rng = l.rng;
    }
    best
}

fn argmax_abs(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if x.abs() > v[best].abs() {
            best = i;
        }
    }
    best
}

/// Top-k eigenvalues (algebraically largest, descending) of a symmetric
/// operator given as a closure, via Lanczos with full reorthogonalisation
/// from a fixed-seed start, until each has relative residual ≤ `tol` or n
/// steps are taken (at which point the Krylov space is complete). Memory is
/// one length-n vector per step. k is clamped to n; small operators
/// (n ≤ 128) are built densely instead. Non-finite operator output yields
/// NaNs.
pub fn top_eigs_op(
    n: usize,
    k: usize,
    op: &mut dyn FnMut(&[f64]) -> Vec<f64>,
    tol: f64,
) -> Vec<f64> {
    let k = k.min(n);
    if k == 0 {
        return Vec::new();
    }
    if n <= DENSE_CUTOFF {
        return match dense_eigvals(n, op) {
            Some(ev) => ev.into_iter().rev().take(k).collect(),
            None => vec![f64::NAN; k],
        };
    }
    lanczos_top(n, k, op, tol)
}

fn lanczos_top(n: usize, k: usize, op: &mut dyn FnMut(&[f64]) -> Vec<f64>, tol: f64) -> Vec<f64> {
    lanczos_converge(n, k, op, tol).map_or_else(|| vec![f64::NAN; k], |(_, top)| top)
}

/// Runs Lanczos until the top k Ritz values are trusted; the iteration and
/// those values, or `None` when the operator gave non-finite output.
fn lanczos_converge(
    n: usize,
    k: usize,
    op: &mut dyn FnMut(&[f64]) -> Vec<f64>,
    tol: f64,
) -> Option<(Lanczos, Vec<f64>)> {
    let mut rng = SplitMix(0x6E6E_6765_6F00_0002);
    let start = rng.vector(n);
    let mut l = Lanczos::new(n, start, rng);
    let mut last = 0;
    loop {
        let stepped = l.step(op)?;
        let m = l.alpha.len();
        if !stepped || l.exhausted() {
            // The Krylov space is all of Rⁿ: the Ritz values are the spectrum.
            let mut out: Vec<f64> = l.ritz().map(|r| r.theta).unwrap_or_default();
            out.reverse();
            out.resize(k, f64::NAN);
            return Some((l, out));
        }
        let broke = l.beta[m - 1] == 0.0;
        if m < k || !(broke || due_for_check(m, last)) {
            continue;
        }
        last = m;
        if let Some(top) = converged_top(&l, k, tol) {
            if top.iter().any(|x| !x.is_finite()) {
                return None;
            }
            return Some((l, top));
        }
    }
}

/// Flips `v` so that its largest-magnitude entry is positive (an
/// eigenvector's sign is otherwise arbitrary).
pub fn fix_sign(v: &mut [f64]) {
    let top = v
        .iter()
        .fold(0.0f64, |m, x| if x.abs() > m.abs() { *x } else { m });
    if top < 0.0 {
        v.iter_mut().for_each(|x| *x = -*x);
    }
}

/// Top-k eigenpairs (eigenvalues descending, unit eigenvectors) of a
/// symmetric operator, as [`top_eigs_op`] finds the values: the Ritz
/// vectors of the same Lanczos iteration (dense below 128 dimensions).
/// `None` when the operator gave non-finite output.
pub fn top_eigpairs_op(
    n: usize,
    k: usize,
    op: &mut dyn FnMut(&[f64]) -> Vec<f64>,
    tol: f64,
) -> Option<(Vec<f64>, Vec<Vec<f64>>)> {
    let k = k.min(n);
    if k == 0 {
        return Some((Vec::new(), Vec::new()));
    }
    if n <= DENSE_CUTOFF {
        let (theta, s) = eigh(&dense_of(n, op)?).ok()?;
        let cols = (n - k..n).rev();
        let vectors = cols
            .clone()
            .map(|i| (0..n).map(|r| s.get(r, i)).collect())
            .collect();
        return Some((cols.map(|i| theta[i]).collect(), vectors));
    }
    let (l, _) = lanczos_converge(n, k, op, tol)?;
    let full = l.ritz()?;
    let m = full.theta.len();
    let mut values = Vec::with_capacity(k);
    let mut vectors = Vec::with_capacity(k);
    for i in (m.saturating_sub(k)..m).rev() {
        let mut y = vec![0.0; n];
        for (j, q) in l.basis.iter().enumerate().take(m) {
            let c = full.s.get(j, i);
            y.iter_mut().zip(q).for_each(|(a, b)| *a += c * b);
        }
        let norm = y.iter().map(|x| x * x).sum::<f64>().sqrt();
        y.iter_mut().for_each(|x| *x /= norm);
        values.push(full.theta[i]);
        vectors.push(y);
    }
    Some((values, vectors))
}

/// The top-k Ritz values, descending, once they can be trusted; `None` to
/// keep iterating.
///
/// A single Krylov sequence sees each distinct eigenvalue once, so residuals
/// alone cannot reveal a missing copy of a repeated eigenvalue. After a
/// breakdown the iteration restarts from a random probe orthogonal to the
/// basis; the answer is accepted only once the latest block has been shown
/// to hold nothing above the current k-th value.
fn converged_top(l: &Lanczos, k: usize, tol: f64) -> Option<Vec<f64>> {
    let m = l.alpha.len();
    let failed = Some(vec![f64::NAN; k]);
    let Some(full) = l.ritz() else { return failed };
    let norm_t = full.theta.iter().fold(0.0, |a: f64, x| a.max(x.abs()));
    let top_k = |theta: &[f64]| theta[theta.len() - k..].iter().rev().copied().collect();
    // Start of the block holding the latest step; earlier blocks ended in a
    // breakdown, so their Ritz values are exact eigenvalues.
    let bs = l.beta[..m - 1]
        .iter()
        .rposition(|&b| b == 0.0)
        .map_or(0, |i| i + 1);
    let latest_max = |r: &Ritz| r.theta.len() - 1;

    if l.beta[m - 1] == 0.0 {
        if bs == 0 {
            return None;
        }
        let (Some(prev), Some(latest)) = (l.ritz_range(0, bs), l.ritz_range(bs, m)) else {
            return failed;
        };
        let p = prev.theta.len();
        let probe_max = latest.theta[latest_max(&latest)];
        return (p >= k && probe_max <= prev.theta[p - k] + tol * norm_t)
            .then(|| top_k(&prev.theta));
    }

    if bs > 0 {
        // The open block's largest Ritz value only grows towards the top of
        // the unexplored spectrum; until it converges something larger may
        // still be hiding there.
        let Some(latest) = l.ritz_range(bs, m) else {
            return failed;
        };
        let i = latest_max(&latest);
        let res = l.beta[m - 1].abs() * latest.s.get(m - 1 - bs, i).abs();
        if !converged(res, latest.theta[i], norm_t, tol) {
            return None;
        }
    }
    (m - k..m)
        .all(|i| converged(l.residual(&full, i), full.theta[i], norm_t, tol))
        .then(|| top_k(&full.theta))
}

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
