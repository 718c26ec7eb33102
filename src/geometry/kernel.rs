//! The NTK as a kernel over (output, example) pairs, and the kernel
//! measurements: centring, kernel–target alignment, effective rank.
//!
//! Layout: a dense NTK over `n` examples and `C` outputs is a `[C·n, C·n]`
//! matrix whose row `c·n + i` is output `c` of example `i` (NNGeometry's
//! `[C, n, C, n]` reshaped).

use crate::linalg::{eigvalsh, HostElem, HostMatrix, LinalgError, Mat, Stored};
use rayon::prelude::*;

#[derive(Clone, Debug, PartialEq)]
pub enum NtkBody {
    /// In the run's precision where it was built whole (see
    /// [`crate::linalg::Stored`]); f64 where it was derived on the host.
    Dense(Stored),
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

    /// The dense kernel on the host, borrowed when it is stored dense in
    /// f64 there (no copy).
    pub fn dense_view(&self) -> Result<std::borrow::Cow<'_, Mat>, LinalgError> {
        match &self.body {
            NtkBody::Dense(m) => m.as_f64(),
            _ => self.to_dense().map(std::borrow::Cow::Owned),
        }
    }

    pub fn to_dense(&self) -> Result<Mat, LinalgError> {
        let (c, n) = (self.c, self.n);
        Ok(match &self.body {
            NtkBody::Dense(m) => m.as_f64()?.into_owned(),
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
        })
    }

    pub fn trace(&self) -> Result<f64, LinalgError> {
        Ok(match &self.body {
            NtkBody::Dense(m) => m.trace()?,
            NtkBody::BlockDiag(b) => b.iter().map(Mat::trace).sum(),
            NtkBody::Diag(d) => d.iter().sum(),
        })
    }

    pub fn frobenius(&self) -> Result<f64, LinalgError> {
        Ok(match &self.body {
            NtkBody::Dense(m) => m.frobenius()?,
            NtkBody::BlockDiag(b) => b.iter().map(|m| m.frobenius().powi(2)).sum::<f64>().sqrt(),
            NtkBody::Diag(d) => d.iter().map(|x| x * x).sum::<f64>().sqrt(),
        })
    }

    pub fn diag(&self) -> Result<Vec<f64>, LinalgError> {
        match &self.body {
            NtkBody::Diag(d) => Ok(d.clone()),
            NtkBody::Dense(m) => m.diag(),
            // Read from the blocks: the dense kernel is never made.
            NtkBody::BlockDiag(b) => {
                let (c, n) = (self.c, self.n);
                let mut d = vec![0.0; c * n];
                for (i, m) in b.iter().enumerate() {
                    for a in 0..c {
                        d[a * n + i] = m.get(a, a);
                    }
                }
                Ok(d)
            }
        }
    }

    pub fn mv(&self, v: &[f64]) -> Result<Vec<f64>, LinalgError> {
        match &self.body {
            NtkBody::Dense(m) => m.matvec(v),
            NtkBody::Diag(d) => Ok(d.iter().zip(v).map(|(a, b)| a * b).collect()),
            NtkBody::BlockDiag(b) => {
                let (c, n) = (self.c, self.n);
                if v.len() != c * n {
                    return Ok(self.to_dense()?.matvec(v));
                }
                // Block `i` couples the rows `a·n + i` of example `i`.
                let mut out = vec![0.0; c * n];
                for (i, m) in b.iter().enumerate() {
                    for a in 0..c {
                        out[a * n + i] = (0..c).map(|d| m.get(a, d) * v[d * n + i]).sum();
                    }
                }
                Ok(out)
            }
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
            NtkBody::Dense(m) => m.eigvalsh()?,
        };
        ev.sort_by(|a, b| b.total_cmp(a));
        Ok(ev)
    }

    /// `H K H` with `H = (I_n − 11ᵀ/n) ⊗ I_C`: every per-example Jacobian
    /// centred over examples, output by output.
    pub fn centered(&self) -> Result<Ntk, LinalgError> {
        Ok(Ntk {
            c: self.c,
            n: self.n,
            // In f64: the centred values are new sums, which f32 would round.
            body: NtkBody::Dense(Stored::from(center_examples(
                &*self.dense_view()?,
                self.c,
                self.n,
            ))),
        })
    }

    /// Bytes the kernel holds.
    pub fn bytes(&self) -> usize {
        match &self.body {
            NtkBody::Dense(m) => m.bytes(),
            _ => self.stored() * std::mem::size_of::<f64>(),
        }
    }

    pub fn stored(&self) -> usize {
        match &self.body {
            NtkBody::Dense(m) => m.len(),
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
    align(&k.data, y, c, n, centered)
}

/// [`alignment`] of a stored kernel, read in its own precision where it
/// lives (a device-held kernel is reduced on its device).
pub fn alignment_stored(
    k: &Stored,
    y: &[f64],
    c: usize,
    n: usize,
    centered: bool,
) -> Result<f64, LinalgError> {
    let y = target_for(y, c, n, centered);
    let (num, sq) = match k {
        Stored::Host(HostMatrix::F64(m)) => align_terms(&m.data, &y, c, n, centered),
        Stored::Host(HostMatrix::F32 { data, .. }) => align_terms(data, &y, c, n, centered),
        Stored::Device(d) => {
            d.0.alignment_terms(&y, c, n, centered)
                .map_err(LinalgError::Backend)?
        }
    };
    Ok(finish_alignment(num, sq, &y, c * n))
}

/// [`alignment`] from its two reductions (see [`align_terms`]).
fn finish_alignment(num: f64, sq: f64, y: &[f64], m: usize) -> f64 {
    if m == 0 {
        return f64::NAN;
    }
    let yy: f64 = y.iter().map(|x| x * x).sum();
    num / (sq.sqrt() * yy)
}

/// The targets as alignment reads them: each output's column minus its
/// mean over examples where `centered`.
fn target_for(y: &[f64], c: usize, n: usize, centered: bool) -> Vec<f64> {
    let mut y = y.to_vec();
    if centered {
        for a in 0..c {
            let mean: f64 = y[a * n..(a + 1) * n].iter().sum::<f64>() / n as f64;
            y[a * n..(a + 1) * n].iter_mut().for_each(|x| *x -= mean);
        }
    }
    y
}

/// [`alignment`] without a copy of the kernel (the whole kernel is the
/// largest object of a run, read once or twice here).
fn align<T: HostElem>(k: &[T], y: &[f64], c: usize, n: usize, centered: bool) -> f64 {
    let y = target_for(y, c, n, centered);
    let (num, sq) = align_terms(k, &y, c, n, centered);
    finish_alignment(num, sq, &y, c * n)
}

/// `yᵀ K y` and `‖K‖²_F`, or centred (`y` already centred by the caller):
/// the numerator is `(Hy)ᵀ K (Hy)`, since `H` is a projector; `‖HKH‖²_F`
/// comes from the kernel's means over examples within each output pair of
/// blocks, `(HKH)[(a,i),(b,j)] = K − r[(a,i), b] − s[a, (b,j)] + t[a, b]`,
/// accumulated entry by entry.
fn align_terms<T: HostElem>(k: &[T], y: &[f64], c: usize, n: usize, centered: bool) -> (f64, f64) {
    let m = c * n;
    if m == 0 {
        return (0.0, 0.0);
    }
    let rows = || k.par_chunks(m);
    let num: f64 = rows()
        .zip(y)
        .map(|(row, yi)| yi * row.iter().zip(y).map(|(a, b)| a.to_f64() * b).sum::<f64>())
        .sum();
    let sq: f64 = if centered {
        let nf = n as f64;
        // r[row·c + b]: the row's mean over the examples of output b.
        let r: Vec<f64> = rows()
            .flat_map_iter(|row| {
                row.chunks(n)
                    .map(|blk| blk.iter().map(|x| x.to_f64()).sum::<f64>() / nf)
                    .collect::<Vec<_>>()
            })
            .collect();
        // s[a·m + col]: the column's mean over the examples of output a.
        let s: Vec<f64> = (0..c)
            .into_par_iter()
            .flat_map_iter(|a| {
                let mut acc = vec![0.0f64; m];
                for row in k[a * n * m..(a + 1) * n * m].chunks(m) {
                    acc.iter_mut().zip(row).for_each(|(x, v)| *x += v.to_f64());
                }
                acc.into_iter().map(move |x| x / nf)
            })
            .collect();
        // t[a·c + b]: the mean of block (a, b).
        let t: Vec<f64> = (0..c * c)
            .map(|ab| {
                let (a, b) = (ab / c, ab % c);
                (0..n).map(|i| r[(a * n + i) * c + b]).sum::<f64>() / nf
            })
            .collect();
        rows()
            .enumerate()
            .map(|(row, kr)| {
                let a = row / n;
                (0..m)
                    .map(|col| {
                        let b = col / n;
                        let v = kr[col].to_f64() - r[row * c + b] - s[a * m + col] + t[a * c + b];
                        v * v
                    })
                    .sum::<f64>()
            })
            .sum()
    } else {
        k.par_iter().map(|x| x.to_f64() * x.to_f64()).sum()
    };
    (num, sq)
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
    sum_diagonal_blocks(c, n, |r, col| k.get(r, col))
}

/// [`trace_kernel`] of a stored kernel, read in its own precision where
/// it lives.
pub fn trace_kernel_of(k: &Stored, c: usize, n: usize) -> Result<Mat, LinalgError> {
    k.diagonal_block_sum(c, n)
}

fn sum_diagonal_blocks(c: usize, n: usize, get: impl Fn(usize, usize) -> f64) -> Mat {
    let mut t = Mat::zeros(n, n);
    for a in 0..c {
        for i in 0..n {
            for j in 0..n {
                t.data[i * n + j] += get(a * n + i, a * n + j);
            }
        }
    }
    t
}
