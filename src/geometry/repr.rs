//! Stored representations of a Fisher matrix and the operations on them.
//!
//! The dense ones (a Dense Fisher, BlockDiag's blocks: `P²` and `Σ p_l²`
//! values) are kept in the run's precision, so a float32 run holds half
//! the bytes; every reduction and product over them accumulates in f64,
//! and a decomposition reads an f64 copy of one block at a time. KFAC's
//! factors and EKFAC's bases are small next to the per-example data they
//! are built from and are kept in f64: EKFAC's float64 bases are what
//! keeps a float32 EKFAC's trace equal to KFAC's. Where the backend holds
//! results on its device (`Ops::holds_on_device`: libtorch on CUDA) both
//! kinds stay there, so that products, solves and spectra run where they
//! were built; the host gets a copy when a result needs every value (a
//! saved Fisher, a dense form, a diagonal, eigenvectors) and for the
//! algebra that derives a new dense matrix or new KFAC factors (EKFAC's
//! scaling, damping and powers keep their bases where they are). The per-parameter ones
//! (Diag, QuasiDiag, EKFAC's diagonal) live on the host: every operation
//! on them is elementwise with a vector that is on the host anyway. Every
//! vector is in NNGeometry's flat order restricted to the representation's
//! layers. One layer's block and its operations are in [`super::blocks`].

pub(crate) use super::blocks::kfac_pi;
use super::blocks::{dense_solve, dot, BlockEigen};
use super::stats::{from_flat_host, to_flat_host, Order};
use crate::linalg::{eigh, Host, Linalg, LinalgError, Mat, Stored};

/// One parameterised layer of a representation.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerInfo {
    pub name: String,
    /// Offset in the representation's own vector.
    pub offset: usize,
    /// Offset in the model's full parameter vector.
    pub full_offset: usize,
    pub numel: usize,
    /// Natural layout `[sg, sa]`, the last column being the bias if `bias`.
    pub sg: usize,
    pub sa: usize,
    pub bias: bool,
    /// Transposed convolutions: how the weight's columns map to PyTorch's
    /// order (see [`Order`]).
    pub order: Order,
}

/// One layer's diagonal block.
#[derive(Clone, Debug, PartialEq)]
pub enum Block {
    /// In the run's precision, on the host or on the backend's device.
    Dense(Stored),
    /// Flat order.
    Diag(Vec<f64>),
    /// `F_l ≈ G ⊗ A` on the natural layout; the factors in f64, on the
    /// host or where the backend holds results.
    Kfac { a: Stored, g: Stored },
    /// Eigenbases of the KFAC factors (in f64, where the factors were)
    /// with a diagonal `d [sg, sa]` in that basis on the host (`d[k, j]`
    /// pairs column k of `ug` with column j of `ua`).
    Ekfac { ua: Stored, ug: Stored, d: Mat },
    /// Diagonal (flat) plus, per output unit, the weight–bias cross terms
    /// `cross [sg, sa−1]`.
    QuasiDiag { diag: Vec<f64>, cross: Mat },
}

#[derive(Clone, Debug, PartialEq)]
pub enum FimBody {
    /// In the run's precision, on the host or on the backend's device.
    Dense(Stored),
    Blocks(Vec<Block>),
    /// `F = Lᵀ L` with `L [r, P]`.
    LowRank(Mat),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fim {
    pub layers: Vec<LayerInfo>,
    pub body: FimBody,
    /// Examples it was computed on.
    pub n: usize,
    /// Whether EKFAC blocks were refitted on data.
    pub refit: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReprError {
    #[error(transparent)]
    Linalg(#[from] LinalgError),
    #[error("{0}")]
    Unsupported(String),
}

pub(crate) type R<T> = Result<T, ReprError>;

/// Refuses an undamped solve with a matrix that is singular to working
/// precision, saying how small its smallest eigenvalue is, instead of
/// returning the round-off of a pivoted solve.
pub(crate) fn nonsingular(m: &Mat, la: &dyn Linalg) -> R<()> {
    nonsingular_spectrum(&la.eigvalsh(m)?)
}

/// [`nonsingular`] from the matrix's eigenvalues.
pub(crate) fn nonsingular_spectrum(ev: &[f64]) -> R<()> {
    nonsingular_values(ev, ev.len())
}

/// [`nonsingular_spectrum`] with the values taken as zero below
/// `precision · ε` of the largest: the size of the matrix whose computed
/// eigenvalues they are (their working precision), or 0 for values that
/// are exact (a diagonal as summed: only an exact zero is singular).
pub(crate) fn nonsingular_values(ev: &[f64], precision: usize) -> R<()> {
    let rows = ev.len();
    let top = ev.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    let tol = top * precision as f64 * f64::EPSILON;
    let zero = ev.iter().filter(|x| x.abs() <= tol).count();
    match ev.iter().copied().min_by(|a, b| a.abs().total_cmp(&b.abs())) {
        Some(min) if zero > 0 => Err(ReprError::Unsupported(format!(
            "solve with damping = 0: the matrix is singular ({zero} of {} eigenvalues are zero to working precision; the smallest is {min:e}, the largest {top:e}); use damping > 0",
            rows
        ))),
        _ => Ok(()),
    }
}

pub(crate) fn natural(v: &[f64], l: &LayerInfo) -> Mat {
    Mat::from_vec(l.sg, l.sa, from_flat_host(v, l.sg, l.sa, l.bias, l.order))
}

pub(crate) fn flat(m: &Mat, l: &LayerInfo) -> Vec<f64> {
    to_flat_host(&m.data, l.sg, l.sa, l.bias, l.order)
}

impl Fim {
    /// Size of the representation's vectors.
    pub fn dim(&self) -> usize {
        self.layers.iter().map(|l| l.numel).sum()
    }

    pub(crate) fn slice<'a>(&self, v: &'a [f64], l: &LayerInfo) -> &'a [f64] {
        &v[l.offset..l.offset + l.numel]
    }

    /// The one-layer representation of `name`'s diagonal block (a
    /// device-held one comes to the host).
    pub fn layer(&self, name: &str) -> R<Option<Fim>> {
        let Some((i, l)) = self.layers.iter().enumerate().find(|(_, l)| l.name == name) else {
            return Ok(None);
        };
        let mut one = l.clone();
        one.offset = 0;
        let body = match &self.body {
            FimBody::Dense(m) => {
                FimBody::Dense(Stored::Host(m.host()?.sub_block(l.offset, l.numel)))
            }
            FimBody::Blocks(b) => FimBody::Blocks(vec![b[i].clone()]),
            FimBody::LowRank(f) => {
                let mut s = Mat::zeros(f.rows, l.numel);
                for r in 0..f.rows {
                    s.data[r * l.numel..(r + 1) * l.numel].copy_from_slice(
                        &f.data[r * f.cols + l.offset..r * f.cols + l.offset + l.numel],
                    );
                }
                FimBody::LowRank(s)
            }
        };
        Ok(Some(Fim {
            layers: vec![one],
            body,
            n: self.n,
            refit: self.refit,
        }))
    }

    /// `F v` (on the device for a device-held Dense body).
    pub fn mv(&self, v: &[f64]) -> R<Vec<f64>> {
        Ok(match &self.body {
            FimBody::Dense(m) => m.matvec(v)?,
            FimBody::Blocks(blocks) => {
                let mut out = Vec::with_capacity(v.len());
                for (b, l) in blocks.iter().zip(&self.layers) {
                    out.extend(b.mv(l, self.slice(v, l))?);
                }
                out
            }
            FimBody::LowRank(f) => {
                let u = f.matvec(v);
                f.transpose().matvec(&u)
            }
        })
    }

    pub fn vtmv(&self, v: &[f64]) -> R<f64> {
        Ok(match &self.body {
            FimBody::LowRank(f) => f.matvec(v).iter().map(|x| x * x).sum(),
            _ => dot(v, &self.mv(v)?),
        })
    }

    pub fn trace(&self) -> R<f64> {
        Ok(match &self.body {
            FimBody::Dense(m) => m.trace()?,
            FimBody::Blocks(b) => b.iter().map(Block::trace).sum::<R<f64>>()?,
            FimBody::LowRank(f) => f.data.iter().map(|x| x * x).sum(),
        })
    }

    pub fn frobenius(&self) -> R<f64> {
        Ok(match &self.body {
            FimBody::Dense(m) => m.frobenius()?,
            FimBody::Blocks(b) => b.iter().map(Block::frobenius2).sum::<R<f64>>()?.sqrt(),
            FimBody::LowRank(f) => f.matmul(&f.transpose()).frobenius(),
        })
    }

    pub fn diag(&self) -> R<Vec<f64>> {
        Ok(match &self.body {
            FimBody::Dense(m) => m.diag()?,
            FimBody::Blocks(b) => {
                let mut out = Vec::with_capacity(self.dim());
                for (b, l) in b.iter().zip(&self.layers) {
                    out.extend(b.diag(l)?);
                }
                out
            }
            FimBody::LowRank(f) => {
                let mut d = vec![0.0; f.cols];
                for r in 0..f.rows {
                    for (c, x) in d.iter_mut().enumerate() {
                        *x += f.data[r * f.cols + c].powi(2);
                    }
                }
                d
            }
        })
    }

    /// `(F + λI)⁻¹ v` (KFAC: π-damped factors; LowRank: NNGeometry's
    /// row-space solve `V (Vᵀv)/(S² + λ)`).
    pub fn solve(&self, v: &[f64], damping: f64) -> R<Vec<f64>> {
        self.solve_in(v, damping, &Host)
    }

    /// [`Fim::solve`] with its dense factorisations (Cholesky/LU, the
    /// singularity check's spectrum) where `la` runs them, or on its
    /// device for a device-held matrix.
    pub fn solve_in(&self, v: &[f64], damping: f64, la: &dyn Linalg) -> R<Vec<f64>> {
        // One rule for every structure (a diagonal would otherwise divide
        // NaN through silently where a dense solve refuses it).
        const OP: &str = "solve";
        if v.len() != self.dim() {
            return Err(LinalgError::DimensionMismatch {
                op: OP,
                n: self.dim(),
                rhs_rows: v.len(),
            }
            .into());
        }
        if !damping.is_finite() || v.iter().any(|x| !x.is_finite()) {
            return Err(LinalgError::NonFiniteInput { op: OP }.into());
        }
        match &self.body {
            FimBody::Dense(m) => dense_solve(m, v, damping, la),
            FimBody::Blocks(blocks) => {
                let mut out = Vec::with_capacity(v.len());
                for (b, l) in blocks.iter().zip(&self.layers) {
                    out.extend(b.solve(l, self.slice(v, l), damping, la)?);
                }
                Ok(out)
            }
            FimBody::LowRank(f) if f.rows >= f.cols => {
                // The right singular vectors span the whole space: this is
                // the dense solve.
                let mut md = f.transpose().matmul(f);
                md.add_diag(damping);
                Ok(la
                    .solve_sym(&md, &Mat::from_vec(v.len(), 1, v.to_vec()))?
                    .data)
            }
            FimBody::LowRank(f) => {
                let (s2, u) = eigh(&f.matmul(&f.transpose()))?;
                let tol = s2.iter().fold(0.0f64, |m, x| m.max(*x)) * 1e-15;
                let fv = f.matvec(v);
                let mut coef = vec![0.0; f.rows];
                for (k, s) in s2.iter().enumerate() {
                    if *s > tol {
                        // v_k = Fᵀ u_k / s_k; x += v_k (v_kᵀ v) / (s_k² + λ)
                        let ukfv: f64 = (0..f.rows).map(|r| u.get(r, k) * fv[r]).sum();
                        let w = ukfv / (s * (s + damping));
                        for (r, c) in coef.iter_mut().enumerate() {
                            *c += u.get(r, k) * w;
                        }
                    }
                }
                Ok(f.transpose().matvec(&coef))
            }
        }
    }

    pub fn to_dense(&self) -> R<Mat> {
        Ok(match &self.body {
            FimBody::Dense(m) => m.as_f64()?.into_owned(),
            FimBody::Blocks(blocks) => {
                let p = self.dim();
                let mut out = Mat::zeros(p, p);
                for (b, l) in blocks.iter().zip(&self.layers) {
                    let d = b.to_dense(l)?;
                    for r in 0..l.numel {
                        out.data[(l.offset + r) * p + l.offset
                            ..(l.offset + r) * p + l.offset + l.numel]
                            .copy_from_slice(&d.data[r * l.numel..(r + 1) * l.numel]);
                    }
                }
                out
            }
            FimBody::LowRank(f) => f.transpose().matmul(f),
        })
    }

    /// Every eigenvalue, descending.
    pub fn eigenvalues(&self) -> R<Vec<f64>> {
        self.eigenvalues_in(&Host)
    }

    /// [`Fim::eigenvalues`] with the dense spectra computed where `la`
    /// runs them.
    pub fn eigenvalues_in(&self, la: &dyn Linalg) -> R<Vec<f64>> {
        let mut ev = match &self.body {
            // On the device where it is held there.
            FimBody::Dense(m @ Stored::Device(_)) => m.eigvalsh()?,
            FimBody::Dense(m) => la.eigvalsh(&*m.as_f64()?)?,
            FimBody::Blocks(blocks) => {
                let mut all = Vec::new();
                for (b, l) in blocks.iter().zip(&self.layers) {
                    all.extend(b.eigenvalues(l, la)?);
                }
                all
            }
            FimBody::LowRank(f) => la.eigvalsh(&f.matmul(&f.transpose()))?,
        };
        ev.sort_by(|a, b| b.total_cmp(a));
        // LᵀL has the nonzero eigenvalues of LLᵀ and zeros elsewhere.
        ev.resize(self.dim(), 0.0);
        Ok(ev)
    }

    /// The top `k` eigenpairs, eigenvalues descending, unit eigenvectors in
    /// the representation's flat order, each in its structure: the layer
    /// blocks' own (a Kronecker pair for KFAC and EKFAC, a coordinate for
    /// Diag), zero outside their layer; LowRank's from the small r × r
    /// problem. A vector's sign makes its largest entry positive.
    pub fn eigenpairs(&self, k: usize) -> R<(Vec<f64>, Vec<Vec<f64>>)> {
        let dim = self.dim();
        let (values, mut vectors): (Vec<f64>, Vec<Vec<f64>>) = match &self.body {
            FimBody::Dense(m) => {
                let (val, vec) = eigh(&*m.as_f64()?)?;
                let top: Vec<usize> = (0..val.len()).rev().take(k).collect();
                (
                    top.iter().map(|&i| val[i]).collect(),
                    top.iter()
                        .map(|&i| (0..dim).map(|r| vec.get(r, i)).collect())
                        .collect(),
                )
            }
            FimBody::Blocks(blocks) => {
                let parts: Vec<BlockEigen> = blocks
                    .iter()
                    .zip(&self.layers)
                    .map(|(b, l)| b.eigen_parts(l))
                    .collect::<R<_>>()?;
                // (value, block, index within it), largest first.
                let mut all: Vec<(f64, usize, usize)> = parts
                    .iter()
                    .enumerate()
                    .flat_map(|(b, p)| p.values().iter().enumerate().map(move |(i, v)| (*v, b, i)))
                    .collect();
                all.sort_by(|x, y| y.0.total_cmp(&x.0));
                all.truncate(k);
                let vectors = all
                    .iter()
                    .map(|&(_, b, i)| {
                        let l = &self.layers[b];
                        let mut v = vec![0.0; dim];
                        v[l.offset..l.offset + l.numel].copy_from_slice(&parts[b].vector(l, i));
                        v
                    })
                    .collect();
                (all.iter().map(|x| x.0).collect(), vectors)
            }
            FimBody::LowRank(f) => {
                // F = LᵀL: with L Lᵀ = U Σ² Uᵀ, F's eigenvectors are Lᵀu/σ.
                let (val, u) = eigh(&f.matmul(&f.transpose()))?;
                let top: Vec<usize> = (0..val.len())
                    .rev()
                    .filter(|&i| val[i] > 0.0)
                    .take(k)
                    .collect();
                if top.len() < k.min(dim) {
                    return Err(ReprError::Unsupported(format!(
                        "this LowRank Fisher has {} nonzero eigenvalues; eigenvectors of its zero eigenvalue are not unique",
                        top.len()
                    )));
                }
                let vectors = top
                    .iter()
                    .map(|&i| {
                        let ui: Vec<f64> = (0..f.rows).map(|r| u.get(r, i)).collect();
                        let sigma = val[i].sqrt();
                        (0..dim)
                            .map(|c| (0..f.rows).map(|r| f.get(r, c) * ui[r]).sum::<f64>() / sigma)
                            .collect()
                    })
                    .collect();
                (top.iter().map(|&i| val[i]).collect(), vectors)
            }
        };
        vectors.iter_mut().for_each(|v| crate::linalg::fix_sign(v));
        Ok((values, vectors))
    }

    /// `(F + λI)^p` in the same structure where it has one (Dense, blocks,
    /// EKFAC); LowRank is densified.
    pub fn power(&self, p: f64, damping: f64) -> R<Fim> {
        let body = match &self.body {
            FimBody::Blocks(blocks) => FimBody::Blocks(
                blocks
                    .iter()
                    .zip(&self.layers)
                    .map(|(b, l)| b.power(l, p, damping))
                    .collect::<R<_>>()?,
            ),
            _ => {
                let mut m = self.to_dense()?;
                m.add_diag(damping);
                FimBody::Dense(Stored::from_mat(
                    crate::linalg::sym_fn(&m, |x| x.max(0.0).powf(p))?,
                    self.dense_dtype(),
                ))
            }
        };
        Ok(Fim {
            layers: self.layers.clone(),
            body,
            n: self.n,
            refit: self.refit,
        })
    }

    /// Stored numbers.
    pub fn stored(&self) -> usize {
        match &self.body {
            FimBody::Dense(m) => m.len(),
            FimBody::LowRank(m) => m.data.len(),
            FimBody::Blocks(b) => b.iter().map(Block::stored).sum(),
        }
    }

    /// Bytes its values take.
    pub fn bytes(&self) -> usize {
        match &self.body {
            FimBody::Dense(m) => m.bytes(),
            FimBody::LowRank(m) => m.data.len() * std::mem::size_of::<f64>(),
            FimBody::Blocks(b) => b.iter().map(Block::bytes).sum(),
        }
    }

    /// The precision a dense result derived from this one is kept in: a
    /// Dense body's own; f64 for anything else, whose dense form holds
    /// products of factors that the run's precision would round.
    pub(crate) fn dense_dtype(&self) -> crate::plan::Dtype {
        match &self.body {
            FimBody::Dense(m) => m.dtype(),
            _ => crate::plan::Dtype::F64,
        }
    }
}
