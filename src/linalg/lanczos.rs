//! Matrix-free symmetric eigensolvers: the operator is a closure (a
//! representation's product, an implicit Fisher's Jacobian passes), so
//! nothing of size n² is formed. Lanczos with full reorthogonalisation for
//! the top eigenvalues and their Ritz vectors, restarted Lanczos for the
//! spectral norm.

use super::{axpy, dot, eigh, eigvalsh, norm, Mat};

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

/// Runs an eigensolver `solve` on an operator that may fail (a
/// matrix-free product): the first failure is returned instead of the
/// result, the solver having seen NaNs (on which it stops) from then on.
pub fn with_fallible_op<T, E>(
    op: &mut impl FnMut(&[f64]) -> Result<Vec<f64>, E>,
    solve: impl FnOnce(&mut dyn FnMut(&[f64]) -> Vec<f64>) -> T,
) -> Result<T, E> {
    let mut err = None;
    let out = solve(&mut |v: &[f64]| match op(v) {
        Ok(x) => x,
        Err(e) => {
            err.get_or_insert(e);
            vec![f64::NAN; v.len()]
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(out),
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
