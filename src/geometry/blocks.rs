//! One layer's block of a Fisher ([`Block`]): its products, reductions,
//! solves, dense form and spectrum, each in the block's own structure.

use super::repr::{
    flat, natural, nonsingular, nonsingular_spectrum, nonsingular_values, Block, LayerInfo,
    ReprError, R,
};
use super::stats::flat_pos;
use crate::linalg::{eigh, Linalg, LinalgError, Mat, Stored};

/// Index in the layer's flat order of natural position `(g, a)`.
fn flat_index(l: &LayerInfo, g: usize, a: usize) -> usize {
    flat_pos(g, a, l.sg, l.sa, l.bias, l.order)
}

/// One block's eigenpairs: values in a fixed order and each vector on demand.
pub(crate) enum BlockEigen {
    /// Eigenvalues and eigenvectors as columns (natural = flat order).
    Columns(Vec<f64>, Mat),
    /// A diagonal: the eigenvectors are coordinates.
    Unit(Vec<f64>),
    /// `val[i·sa + j]` pairs column i of `ug` with column j of `ua`.
    Kron { val: Vec<f64>, ug: Mat, ua: Mat },
}

impl BlockEigen {
    pub(crate) fn values(&self) -> &[f64] {
        match self {
            BlockEigen::Columns(v, _) | BlockEigen::Unit(v) | BlockEigen::Kron { val: v, .. } => v,
        }
    }

    /// Eigenvector `i` in the layer's flat order.
    pub(crate) fn vector(&self, l: &LayerInfo, i: usize) -> Vec<f64> {
        match self {
            BlockEigen::Columns(_, m) => (0..m.rows).map(|r| m.get(r, i)).collect(),
            BlockEigen::Unit(d) => {
                let mut v = vec![0.0; d.len()];
                v[i] = 1.0;
                v
            }
            BlockEigen::Kron { ug, ua, .. } => {
                let (gi, aj) = (i / ua.cols, i % ua.cols);
                let natural: Vec<f64> = (0..ug.rows)
                    .flat_map(|r| (0..ua.rows).map(move |c| ug.get(r, gi) * ua.get(c, aj)))
                    .collect();
                flat(&Mat::from_vec(ug.rows, ua.rows, natural), l)
            }
        }
    }
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `(K, damping)` → the π of NNGeometry's KFAC damping.
pub(crate) fn kfac_pi(a: &Stored, g: &Stored) -> R<f64> {
    let ta = a.trace()? / a.rows() as f64;
    let tg = g.trace()? / g.rows() as f64;
    Ok(if ta > 0.0 && tg > 0.0 {
        (ta / tg).sqrt()
    } else {
        1.0
    })
}

/// The eigenvalues of `G ⊗ A` from those of its factors, `G`'s major.
fn kron_values(eg: &[f64], ea: &[f64]) -> Vec<f64> {
    eg.iter()
        .flat_map(|x| ea.iter().map(move |y| x * y))
        .collect()
}

/// `U_G ((U_Gᵀ V U_A) ⊙ s(D)) U_Aᵀ` with `s` applied to each eigenvalue:
/// EKFAC's product (`s(d) = d`) and solve (`1/(d + λ)`), the rotations
/// where the bases live.
fn ekfac_apply(ug: &Stored, ua: &Stored, d: &Mat, v: &Mat, s: impl Fn(f64) -> f64) -> R<Mat> {
    let mut r = ug.sandwich(v, ua, true, false)?;
    for (x, e) in r.data.iter_mut().zip(&d.data) {
        *x *= s(*e);
    }
    Ok(ug.sandwich(&r, ua, false, true)?)
}

impl Block {
    /// `B v` (on the device for a device-held Dense block).
    pub fn mv(&self, l: &LayerInfo, v: &[f64]) -> R<Vec<f64>> {
        Ok(match self {
            Block::Dense(m) => m.matvec(v)?,
            Block::Diag(d) => d.iter().zip(v).map(|(a, b)| a * b).collect(),
            Block::Kfac { a, g } => flat(&g.sandwich(&natural(v, l), a, false, false)?, l),
            Block::Ekfac { ua, ug, d } => flat(&ekfac_apply(ug, ua, d, &natural(v, l), |e| e)?, l),
            Block::QuasiDiag { diag, cross } => {
                let mut out: Vec<f64> = diag.iter().zip(v).map(|(a, b)| a * b).collect();
                if l.bias {
                    for gi in 0..l.sg {
                        let b = flat_index(l, gi, l.sa - 1);
                        for ai in 0..l.sa - 1 {
                            let w = flat_index(l, gi, ai);
                            let c = cross.get(gi, ai);
                            out[w] += c * v[b];
                            out[b] += c * v[w];
                        }
                    }
                }
                out
            }
        })
    }

    pub fn trace(&self) -> R<f64> {
        Ok(match self {
            Block::Dense(m) => m.trace()?,
            Block::Diag(d) | Block::QuasiDiag { diag: d, .. } => d.iter().sum(),
            Block::Kfac { a, g } => a.trace()? * g.trace()?,
            Block::Ekfac { d, .. } => d.data.iter().sum(),
        })
    }

    /// Squared Frobenius norm.
    pub fn frobenius2(&self) -> R<f64> {
        Ok(match self {
            Block::Dense(m) => m.frobenius2()?,
            Block::Diag(d) => d.iter().map(|x| x * x).sum(),
            Block::QuasiDiag { diag, cross } => {
                diag.iter().map(|x| x * x).sum::<f64>()
                    + 2.0 * cross.data.iter().map(|x| x * x).sum::<f64>()
            }
            Block::Kfac { a, g } => a.frobenius2()? * g.frobenius2()?,
            Block::Ekfac { d, .. } => d.data.iter().map(|x| x * x).sum(),
        })
    }

    pub fn diag(&self, l: &LayerInfo) -> R<Vec<f64>> {
        Ok(match self {
            Block::Dense(m) => m.diag()?,
            Block::Diag(d) | Block::QuasiDiag { diag: d, .. } => d.clone(),
            Block::Kfac { a, g } => {
                let (da, dg) = (a.diag()?, g.diag()?);
                flat(&Mat::from_vec(l.sg, l.sa, kron_values(&dg, &da)), l)
            }
            // A result with every value: from host copies of the bases.
            Block::Ekfac { ua, ug, d } => {
                let ug2 = square(&*ug.as_f64()?);
                let ua2 = square(&*ua.as_f64()?);
                flat(&ug2.matmul(d).matmul(&ua2.transpose()), l)
            }
        })
    }

    /// `(B + λI)⁻¹ v`; KFAC uses NNGeometry's π-damping
    /// `(G + √λ/π I)⁻¹ V (A + π√λ I)⁻¹`.
    /// The dense factorisations run where `la` says (on its device for a
    /// device-held block).
    pub fn solve(&self, l: &LayerInfo, v: &[f64], damping: f64, la: &dyn Linalg) -> R<Vec<f64>> {
        // Undamped, a singular block is refused as a dense one is (its
        // spectrum: the factors', EKFAC's diagonal to the precision of the
        // factors' eigenvalues, Diag's exact zeros), not divided through.
        if damping == 0.0 {
            match self {
                Block::Diag(d) => nonsingular_values(d, 0)?,
                Block::Ekfac { d, .. } => nonsingular_values(&d.data, l.sg.max(l.sa))?,
                Block::Kfac { a, g } => {
                    nonsingular_spectrum(&a.eigvalsh_in(la)?)?;
                    nonsingular_spectrum(&g.eigvalsh_in(la)?)?;
                }
                // QuasiDiag: its pivots, below; Dense: `dense_solve`.
                Block::Dense(_) | Block::QuasiDiag { .. } => {}
            }
        }
        Ok(match self {
            Block::Dense(m) => dense_solve(m, v, damping, la)?,
            Block::Diag(d) => d.iter().zip(v).map(|(a, b)| b / (a + damping)).collect(),
            Block::Kfac { a, g } => {
                let pi = kfac_pi(a, g)?;
                let s = damping.sqrt();
                let x1 = g.solve_many(&natural(v, l), s / pi, la)?; // [sg, sa]
                let x = a.solve_many(&x1.transpose(), pi * s, la)?.transpose();
                flat(&x, l)
            }
            Block::Ekfac { ua, ug, d } => flat(
                &ekfac_apply(ug, ua, d, &natural(v, l), |e| 1.0 / (e + damping))?,
                l,
            ),
            Block::QuasiDiag { diag, cross } => {
                let mut x = vec![0.0; v.len()];
                if damping == 0.0 {
                    // The weights' pivots are their diagonal as summed (a
                    // zero one is a zero row of a PSD matrix).
                    let w = if l.bias { l.sa - 1 } else { l.sa };
                    let pivots: Vec<f64> = (0..l.sg)
                        .flat_map(|gi| (0..w).map(move |ai| diag[flat_index(l, gi, ai)]))
                        .collect();
                    nonsingular_values(&pivots, 0)?;
                }
                if !l.bias {
                    return Ok(diag.iter().zip(v).map(|(a, b)| b / (a + damping)).collect());
                }
                // Per output unit an arrowhead system: eliminate the weights.
                for gi in 0..l.sg {
                    let b = flat_index(l, gi, l.sa - 1);
                    let mut schur = diag[b] + damping;
                    let mut rhs = v[b];
                    for ai in 0..l.sa - 1 {
                        let w = flat_index(l, gi, ai);
                        let c = cross.get(gi, ai);
                        let dw = diag[w] + damping;
                        schur -= c * c / dw;
                        rhs -= c * v[w] / dw;
                    }
                    // The bias's pivot, to the precision of its elimination.
                    let scale = (diag[b] + damping).abs();
                    if damping == 0.0 && schur.abs() <= scale * l.sa as f64 * f64::EPSILON {
                        return Err(ReprError::Unsupported(format!(
                            "solve with damping = 0: the matrix is singular (its pivot for output unit {gi} of layer `{}` is {schur:e}, its diagonal {scale:e}); use damping > 0",
                            l.name
                        )));
                    }
                    x[b] = rhs / schur;
                    for ai in 0..l.sa - 1 {
                        let w = flat_index(l, gi, ai);
                        x[w] = (v[w] - cross.get(gi, ai) * x[b]) / (diag[w] + damping);
                    }
                }
                x
            }
        })
    }

    /// The block in f64 on the host (a device-held one downloaded).
    pub fn to_dense(&self, l: &LayerInfo) -> R<Mat> {
        let p = l.numel;
        Ok(match self {
            Block::Dense(m) => m.as_f64()?.into_owned(),
            Block::Diag(d) => {
                let mut m = Mat::zeros(p, p);
                for (i, x) in d.iter().enumerate() {
                    m.set(i, i, *x);
                }
                m
            }
            Block::Kfac { a, g } => {
                let (a, g) = (a.as_f64()?, g.as_f64()?);
                let mut m = Mat::zeros(p, p);
                for g1 in 0..l.sg {
                    for a1 in 0..l.sa {
                        let r = flat_index(l, g1, a1);
                        for g2 in 0..l.sg {
                            let gv = g.get(g1, g2);
                            for a2 in 0..l.sa {
                                m.set(r, flat_index(l, g2, a2), gv * a.get(a1, a2));
                            }
                        }
                    }
                }
                m
            }
            _ => {
                // Column by column through `mv`: exact, and these blocks are small.
                let mut m = Mat::zeros(p, p);
                let mut e = vec![0.0; p];
                for c in 0..p {
                    e[c] = 1.0;
                    let col = self.mv(l, &e)?;
                    e[c] = 0.0;
                    for (r, x) in col.iter().enumerate() {
                        m.set(r, c, *x);
                    }
                }
                m
            }
        })
    }

    /// All eigenvalues, in no particular order.
    /// The spectra of dense matrices are computed where `la` runs them.
    pub fn eigenvalues(&self, l: &LayerInfo, la: &dyn Linalg) -> R<Vec<f64>> {
        Ok(match self {
            // On the device where it is held there.
            Block::Dense(m @ Stored::Device(_)) => m.eigvalsh()?,
            Block::Dense(m) => la.eigvalsh(&*m.as_f64()?)?,
            Block::Diag(d) => d.clone(),
            Block::Kfac { a, g } => kron_values(&g.eigvalsh_in(la)?, &a.eigvalsh_in(la)?),
            Block::Ekfac { d, .. } => d.data.clone(),
            Block::QuasiDiag { .. } => la.eigvalsh(&self.to_dense(l)?)?,
        })
    }

    /// Every eigenpair as a value and the means to build its vector (in the
    /// layer's flat order) on demand: a block's P eigenvectors are never all
    /// materialised when only the top few are wanted.
    pub(crate) fn eigen_parts(&self, l: &LayerInfo) -> R<BlockEigen> {
        Ok(match self {
            Block::Dense(m) => {
                let (val, vec) = eigh(&*m.as_f64()?)?;
                BlockEigen::Columns(val, vec)
            }
            Block::QuasiDiag { .. } => {
                let (val, vec) = eigh(&self.to_dense(l)?)?;
                BlockEigen::Columns(val, vec)
            }
            Block::Diag(d) => BlockEigen::Unit(d.clone()),
            // The vectors are built on the host from copies of the bases.
            Block::Kfac { a, g } => {
                let (ea, ua) = a.eigh()?;
                let (eg, ug) = g.eigh()?;
                BlockEigen::Kron {
                    val: kron_values(&eg, &ea),
                    ug: ug.into_f64()?,
                    ua: ua.into_f64()?,
                }
            }
            Block::Ekfac { ua, ug, d } => BlockEigen::Kron {
                val: d.data.clone(),
                ug: ug.as_f64()?.into_owned(),
                ua: ua.as_f64()?.into_owned(),
            },
        })
    }

    /// `B^p` (eigenvalues raised to `p`, with `damping` added first), in the
    /// same structure where it has one.
    pub fn power(&self, l: &LayerInfo, p: f64, damping: f64) -> R<Block> {
        let f = |x: f64| (x.max(0.0) + damping).powf(p);
        Ok(match self {
            // A derived matrix: on the host, in the block's precision.
            Block::Dense(m) => {
                let mut md = m.as_f64()?.into_owned();
                md.add_diag(damping);
                Block::Dense(Stored::from_mat(
                    crate::linalg::sym_fn(&md, |x| x.max(0.0).powf(p))?,
                    m.dtype(),
                ))
            }
            Block::Diag(d) => Block::Diag(d.iter().map(|x| f(*x)).collect()),
            // In the factors' eigenbases, kept where the factors are.
            Block::Kfac { a, g } => {
                let (ea, ua) = a.eigh()?;
                let (eg, ug) = g.eigh()?;
                let mut d = Mat::zeros(l.sg, l.sa);
                for k in 0..l.sg {
                    for j in 0..l.sa {
                        d.set(k, j, f(eg[k].max(0.0) * ea[j].max(0.0)));
                    }
                }
                Block::Ekfac { ua, ug, d }
            }
            Block::Ekfac { ua, ug, d } => {
                let mut d2 = d.clone();
                d2.data.iter_mut().for_each(|x| *x = f(*x));
                Block::Ekfac {
                    ua: ua.clone(),
                    ug: ug.clone(),
                    d: d2,
                }
            }
            Block::QuasiDiag { .. } => {
                let mut md = self.to_dense(l)?;
                md.add_diag(damping);
                Block::Dense(Stored::from(crate::linalg::sym_fn(&md, |x| {
                    x.max(0.0).powf(p)
                })?))
            }
        })
    }

    /// Stored numbers.
    pub fn stored(&self) -> usize {
        match self {
            Block::Dense(m) => m.len(),
            Block::Diag(d) => d.len(),
            Block::Kfac { a, g } => a.len() + g.len(),
            Block::Ekfac { ua, ug, d } => ua.len() + ug.len() + d.data.len(),
            Block::QuasiDiag { diag, cross } => diag.len() + cross.data.len(),
        }
    }
}

impl Block {
    /// Bytes its values take.
    pub fn bytes(&self) -> usize {
        match self {
            Block::Dense(m) => m.bytes(),
            other => other.stored() * std::mem::size_of::<f64>(),
        }
    }
}

/// `(M + λI)⁻¹ v`, refusing an undamped singular `M`; the factorisation in
/// f64 on the device for a device-held `M` (no host copy of it), else
/// where `la` runs it.
pub(crate) fn dense_solve(m: &Stored, v: &[f64], damping: f64, la: &dyn Linalg) -> R<Vec<f64>> {
    if let Stored::Device(d) = m {
        if damping == 0.0 {
            nonsingular_spectrum(&m.eigvalsh()?)?;
        }
        return Ok(d.0.solve(v, damping).map_err(LinalgError::Backend)?);
    }
    let mut md = m.as_f64()?.into_owned();
    if damping == 0.0 {
        nonsingular(&md, la)?;
    }
    md.add_diag(damping);
    Ok(la
        .solve_sym(&md, &Mat::from_vec(v.len(), 1, v.to_vec()))?
        .data)
}

fn square(a: &Mat) -> Mat {
    Mat::from_vec(a.rows, a.cols, a.data.iter().map(|x| x * x).collect())
}
