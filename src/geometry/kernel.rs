//! The NTK as a kernel over (output, example) pairs, and the kernel
//! measurements: centring, kernel–target alignment, effective rank.
//!
//! Layout: a dense NTK over `n` examples and `C` outputs is a `[C·n, C·n]`
//! matrix whose row `c·n + i` is output `c` of example `i` (NNGeometry's
//! `[C, n, C, n]` reshaped).

use crate::linalg::{eigvalsh, LinalgError, Mat};

#[derive(Clone, Debug, PartialEq)]
pub enum NtkBody {
    Dense(Mat),
    /// Per example, the `C × C` block `J_i J_iᵀ`.
    BlockDiag(Vec<Mat>),
    /// `K[(c,i),(c,i)]`, in row order.
    Diag(Vec<f64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ntk {
    pub c: usize,
    pub n: usize,
    pub body: NtkBody,
}

impl Ntk {
    pub fn dim(&self) -> usize {
        self.c * self.n
    }

    /// The dense kernel, borrowed when it is stored dense (no copy).
    pub fn dense_view(&self) -> std::borrow::Cow<'_, Mat> {
        match &self.body {
            NtkBody::Dense(m) => std::borrow::Cow::Borrowed(m),
            _ => std::borrow::Cow::Owned(self.to_dense()),
        }
    }

    pub fn to_dense(&self) -> Mat {
        let (c, n) = (self.c, self.n);
        match &self.body {
            NtkBody::Dense(m) => m.clone(),
            NtkBody::BlockDiag(blocks) => {
                let mut m = Mat::zeros(c * n, c * n);
                for (i, b) in blocks.iter().enumerate() {
                    for a in 0..c {
                        for d in 0..c {
                            m.set(a * n + i, d * n + i, b.get(a, d));
                        }
                    }
                }
                m
            }
            NtkBody::Diag(d) => {
                let mut m = Mat::zeros(c * n, c * n);
                for (i, x) in d.iter().enumerate() {
                    m.set(i, i, *x);
                }
                m
            }
        }
    }

    pub fn trace(&self) -> f64 {
        match &self.body {
            NtkBody::Dense(m) => m.trace(),
            NtkBody::BlockDiag(b) => b.iter().map(Mat::trace).sum(),
            NtkBody::Diag(d) => d.iter().sum(),
        }
    }

    pub fn frobenius(&self) -> f64 {
        match &self.body {
            NtkBody::Dense(m) => m.frobenius(),
            NtkBody::BlockDiag(b) => b.iter().map(|m| m.frobenius().powi(2)).sum::<f64>().sqrt(),
            NtkBody::Diag(d) => d.iter().map(|x| x * x).sum::<f64>().sqrt(),
        }
    }

    pub fn diag(&self) -> Vec<f64> {
        match &self.body {
            NtkBody::Diag(d) => d.clone(),
            _ => self.to_dense().diag(),
        }
    }

    pub fn mv(&self, v: &[f64]) -> Vec<f64> {
        match &self.body {
            NtkBody::Dense(m) => m.matvec(v),
            NtkBody::Diag(d) => d.iter().zip(v).map(|(a, b)| a * b).collect(),
            NtkBody::BlockDiag(_) => self.to_dense().matvec(v),
        }
    }

    /// Every eigenvalue, descending.
    pub fn eigenvalues(&self) -> Result<Vec<f64>, LinalgError> {
        let mut ev = match &self.body {
            NtkBody::Diag(d) => d.clone(),
            NtkBody::BlockDiag(b) => {
                let mut all = Vec::new();
                for m in b {
                    all.extend(eigvalsh(m)?);
                }
                all
            }
            NtkBody::Dense(m) => eigvalsh(m)?,
        };
        ev.sort_by(|a, b| b.total_cmp(a));
        Ok(ev)
    }

    /// `H K H` with `H = (I_n − 11ᵀ/n) ⊗ I_C`: every per-example Jacobian
    /// centred over examples, output by output.
    pub fn centered(&self) -> Ntk {
        Ntk {
            c: self.c,
            n: self.n,
            body: NtkBody::Dense(center_examples(&self.to_dense(), self.c, self.n)),
        }
    }

    pub fn stored(&self) -> usize {
        match &self.body {
            NtkBody::Dense(m) => m.data.len(),
            NtkBody::BlockDiag(b) => b.iter().map(|m| m.data.len()).sum(),
            NtkBody::Diag(d) => d.len(),
        }
    }
}

/// `H K H` with `H = (I_n − 11ᵀ/n) ⊗ I_C` on the `[C·n, C·n]` layout.
pub fn center_examples(k: &Mat, c: usize, n: usize) -> Mat {
    let m = c * n;
    let mut out = k.clone();
    // Rows: for each column, subtract the mean over i within each output block a.
    for a in 0..c {
        for col in 0..m {
            let mean: f64 = (0..n).map(|i| k.get(a * n + i, col)).sum::<f64>() / n as f64;
            for i in 0..n {
                out.data[(a * n + i) * m + col] -= mean;
            }
        }
    }
    let rows = out.clone();
    for row in 0..m {
        for b in 0..c {
            let mean: f64 = (0..n).map(|j| rows.get(row, b * n + j)).sum::<f64>() / n as f64;
            for j in 0..n {
                out.data[row * m + b * n + j] -= mean;
            }
        }
    }
    out
}

/// One-hot (or regression) targets `Y [n, C]` as the vector `y[c·n + i] = Y[i, c]`.
pub fn target_vector(y: &[f64], n: usize, c: usize) -> Vec<f64> {
    let mut v = vec![0.0; c * n];
    for i in 0..n {
        for k in 0..c {
            v[k * n + i] = y[i * c + k];
        }
    }
    v
}

/// Kernel–target alignment `⟨K, yyᵀ⟩_F / (‖K‖_F ‖yyᵀ‖_F)` on the full
/// `[C·n, C·n]` kernel; `centered` applies `H = (I_n − 11ᵀ/n) ⊗ I_C` to both
/// sides (as the NTK-alignment paper's code does: each class column of the
/// targets minus its mean, each per-example Jacobian centred).
pub fn alignment(k: &Mat, y: &[f64], c: usize, n: usize, centered: bool) -> f64 {
    let (k, y) = if centered {
        let kc = center_examples(k, c, n);
        let mut yc = y.to_vec();
        for a in 0..c {
            let mean: f64 = y[a * n..(a + 1) * n].iter().sum::<f64>() / n as f64;
            yc[a * n..(a + 1) * n].iter_mut().for_each(|x| *x -= mean);
        }
        (kc, yc)
    } else {
        (k.clone(), y.to_vec())
    };
    let ky = k.matvec(&y);
    let num: f64 = y.iter().zip(&ky).map(|(a, b)| a * b).sum();
    let yy: f64 = y.iter().map(|x| x * x).sum();
    num / (k.frobenius() * yy)
}

/// `A(K, T)` for two square matrices, optionally centred with
/// `H = I − 11ᵀ/m` on both (the oracle's convention for the trace kernel).
pub fn alignment_matrices(k: &Mat, t: &Mat, centered: bool) -> f64 {
    let (k, t) = if centered {
        (center_full(k), center_full(t))
    } else {
        (k.clone(), t.clone())
    };
    let num: f64 = k.data.iter().zip(&t.data).map(|(a, b)| a * b).sum();
    num / (k.frobenius() * t.frobenius())
}

/// `H M H` with `H = I − 11ᵀ/m`.
pub fn center_full(k: &Mat) -> Mat {
    let m = k.rows;
    let row_mean: Vec<f64> = (0..m)
        .map(|r| (0..m).map(|c| k.get(r, c)).sum::<f64>() / m as f64)
        .collect();
    let col_mean: Vec<f64> = (0..m)
        .map(|c| (0..m).map(|r| k.get(r, c)).sum::<f64>() / m as f64)
        .collect();
    let all: f64 = row_mean.iter().sum::<f64>() / m as f64;
    let mut out = k.clone();
    for r in 0..m {
        for c in 0..m {
            out.data[r * m + c] = k.get(r, c) - row_mean[r] - col_mean[c] + all;
        }
    }
    out
}

/// `Σ_c K[(c,i),(c,j)]`, `[n, n]`.
pub fn trace_kernel(k: &Mat, c: usize, n: usize) -> Mat {
    let mut t = Mat::zeros(n, n);
    for a in 0..c {
        for i in 0..n {
            for j in 0..n {
                t.data[i * n + j] += k.get(a * n + i, a * n + j);
            }
        }
    }
    t
}
