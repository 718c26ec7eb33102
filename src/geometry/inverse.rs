//! A Fisher's damped inverse, prepared once and applied to many vectors:
//! the natural gradient between two refreshes of its statistics solves
//! with the same matrix at every step. [`Fim::solve_in`] factorises the
//! damped matrices on each call (KFAC: two Cholesky factorisations and
//! triangular solves per layer, in f64 where the factors are); prepared, each step
//! is a few products on the backend's device in the run's precision, where
//! the gradient was computed (on a GPU, no host work at all).
//!
//! The inverses themselves are computed in f64 (on the device for a
//! matrix held there, else where [`Linalg`] says) and then held in the
//! run's precision: an f64 run's steps agree with
//! [`Fim::solve_in`] to round-off.

use super::ops::{stored_tensor, Ops, OpsError, OpsResult};
use super::repr::{flat, kfac_pi, natural, Block, Fim, FimBody, LayerInfo};
use super::stats;
use crate::linalg::{Linalg, Mat, Stored};

/// How one layer's block (or the whole matrix) is applied.
enum Part<T> {
    /// `(M + λI)⁻¹` as one matrix, in the layer's flat order.
    Matrix(T),
    /// KFAC with π-damping: `(G + √λ/π I)⁻¹ V (A + π√λ I)⁻¹` on the
    /// natural layout `V [sg, sa]`.
    Kron { ginv: T, ainv: T },
    /// EKFAC: `U_G ((U_Gᵀ V U_A) ⊘ (D + λ)) U_Aᵀ`.
    Eigen { ug: T, ua: T, inv: T },
    /// Solved on the host as [`Block::solve`] does (diagonals: already a
    /// division per entry).
    Host(Block),
}

/// `(F + λI)⁻¹` of a Fisher for one damping, ready to apply.
pub struct Inverse<T> {
    layers: Vec<LayerInfo>,
    damping: f64,
    how: How<T>,
}

enum How<T> {
    /// A dense Fisher: one matrix over every layer.
    Dense(T),
    /// Block-diagonal: one part per layer.
    Blocks(Vec<Part<T>>),
    /// A low-rank Fisher, solved as [`Fim::solve_in`] does.
    Solve(Fim),
}

fn err(e: impl std::fmt::Display) -> OpsError {
    OpsError(e.to_string())
}

/// Per-layer tensors in the natural layout `[sg, sa]` → one host vector
/// in the layers' flat order.
pub fn download_flat<O: Ops>(o: &O, v: &[O::T], layers: &[LayerInfo]) -> OpsResult<Vec<f64>> {
    if v.len() != layers.len() {
        return Err(OpsError(format!(
            "{} layers' tensors for {} layers",
            v.len(),
            layers.len()
        )));
    }
    let mut flat = Vec::with_capacity(layers.iter().map(|l| l.numel).sum());
    for (x, l) in v.iter().zip(layers) {
        let nat = o.download(x)?;
        flat.extend(stats::to_flat_host(&nat, l.sg, l.sa, l.bias, l.order));
    }
    Ok(flat)
}

/// The inverse of [`download_flat`]: a flat host vector uploaded layer
/// by layer in the natural layout.
pub fn upload_natural<O: Ops>(o: &O, v: &[f64], layers: &[LayerInfo]) -> OpsResult<Vec<O::T>> {
    layers
        .iter()
        .map(|l| {
            let vl = &v[l.offset..l.offset + l.numel];
            let nat = stats::from_flat_host(vl, l.sg, l.sa, l.bias, l.order);
            o.upload(&[l.sg, l.sa], &nat)
        })
        .collect()
}

fn up<O: Ops>(o: &O, m: &Mat) -> OpsResult<O::T> {
    o.upload(&[m.rows, m.cols], &m.data)
}

/// `(m + shift·I)⁻¹` in f64 (factored on the device for a device-held
/// `m`, with no host copy; else where `la` solves), as a tensor of the run
/// on `o`'s device.
fn stored_inverse<O: Ops>(o: &O, m: &Stored, shift: f64, la: &dyn Linalg) -> OpsResult<O::T> {
    stored_tensor(o, &m.damped_inverse(shift, la).map_err(err)?)
}

impl<T> Inverse<T> {
    /// Prepares `(f + damping·I)⁻¹` on `o`'s device. The caller has solved
    /// with it once already (a singular undamped matrix was refused there).
    pub fn new<O: Ops<T = T>>(
        o: &O,
        f: &Fim,
        damping: f64,
        la: &dyn Linalg,
    ) -> OpsResult<Inverse<T>> {
        let how = match &f.body {
            FimBody::Dense(m) => How::Dense(stored_inverse(o, m, damping, la)?),
            FimBody::LowRank(_) => How::Solve(f.clone()),
            FimBody::Blocks(blocks) => {
                let parts = blocks
                    .iter()
                    .map(|b| {
                        Ok(match b {
                            Block::Dense(m) => Part::Matrix(stored_inverse(o, m, damping, la)?),
                            Block::Kfac { a, g } => {
                                let pi = kfac_pi(a, g).map_err(err)?;
                                let s = damping.sqrt();
                                Part::Kron {
                                    ginv: stored_inverse(o, g, s / pi, la)?,
                                    ainv: stored_inverse(o, a, pi * s, la)?,
                                }
                            }
                            Block::Ekfac { ua, ug, d } => {
                                let inv: Vec<f64> =
                                    d.data.iter().map(|e| 1.0 / (e + damping)).collect();
                                Part::Eigen {
                                    ug: stored_tensor(o, ug)?,
                                    ua: stored_tensor(o, ua)?,
                                    inv: o.upload(&[d.rows, d.cols], &inv)?,
                                }
                            }
                            other => Part::Host(other.clone()),
                        })
                    })
                    .collect::<OpsResult<_>>()?;
                How::Blocks(parts)
            }
        };
        Ok(Inverse {
            layers: f.layers.clone(),
            damping,
            how,
        })
    }

    /// `(F + λI)⁻¹ v`, `v` in the Fisher's flat order.
    pub fn apply<O: Ops<T = T>>(&self, o: &O, v: &[f64], la: &dyn Linalg) -> OpsResult<Vec<f64>> {
        let parts = match &self.how {
            How::Solve(f) => return f.solve_in(v, self.damping, la).map_err(err),
            How::Dense(m) => return o.download(&o.matmul(m, &o.upload(&[v.len(), 1], v)?)?),
            How::Blocks(parts) => parts,
        };
        let mut out = Vec::with_capacity(v.len());
        for (part, l) in parts.iter().zip(&self.layers) {
            let vl = &v[l.offset..l.offset + l.numel];
            out.extend(match part {
                Part::Matrix(m) => o.download(&o.matmul(m, &o.upload(&[vl.len(), 1], vl)?)?)?,
                Part::Kron { ginv, ainv } => {
                    let x = up(o, &natural(vl, l))?;
                    let y = o.matmul(&o.matmul(ginv, &x)?, ainv)?;
                    flat(&Mat::from_vec(l.sg, l.sa, o.download(&y)?), l)
                }
                Part::Eigen { ug, ua, inv } => {
                    let x = up(o, &natural(vl, l))?;
                    let r = o.matmul(&o.t_matmul(ug, &x)?, ua)?;
                    let q = o.mul(&r, inv)?;
                    let y = o.matmul(&o.matmul(ug, &q)?, &o.transpose(ua, 0, 1)?)?;
                    flat(&Mat::from_vec(l.sg, l.sa, o.download(&y)?), l)
                }
                Part::Host(b) => b.solve(l, vl, self.damping, la).map_err(err)?,
            });
        }
        Ok(out)
    }

    /// [`Inverse::apply`] to a vector held on the device as each layer's
    /// natural layout `[sg, sa]` (the Fisher's layers, in order), giving
    /// the same: what a natural-gradient step on the device applies to the
    /// gradient. KFAC's and EKFAC's parts and the dense matrices never
    /// leave the device (a matrix reads its layer in flat order there);
    /// the diagonal structures, low-rank Fishers and transposed
    /// convolutions' matrices go through the host once.
    pub fn apply_natural<O: Ops<T = T>>(
        &self,
        o: &O,
        v: &[T],
        la: &dyn Linalg,
    ) -> OpsResult<Vec<T>> {
        if v.len() != self.layers.len() {
            return Err(OpsError(format!(
                "apply: {} layers given to the inverse of a Fisher over {}",
                v.len(),
                self.layers.len()
            )));
        }
        let through_host = |o: &O, v: &[T]| -> OpsResult<Vec<T>> {
            let y = self.apply(o, &download_flat(o, v, &self.layers)?, la)?;
            upload_natural(o, &y, &self.layers)
        };
        let flat_on_device = |o: &O, x: &T, l: &LayerInfo| -> OpsResult<T> {
            let f = stats::to_flat(o, x, l.sg, l.sa, l.bias, l.order)?;
            o.reshape(&f, &[l.numel, 1])
        };
        match &self.how {
            How::Solve(_) => through_host(o, v),
            How::Dense(m) => {
                if self.layers.iter().any(|l| l.order.is_some()) {
                    return through_host(o, v);
                }
                let xs = v
                    .iter()
                    .zip(&self.layers)
                    .map(|(x, l)| flat_on_device(o, x, l))
                    .collect::<OpsResult<Vec<_>>>()?;
                let y = o.matmul(m, &o.cat(&xs, 0)?)?;
                self.layers
                    .iter()
                    .map(|l| {
                        let yl = o.narrow(&y, 0, l.offset, l.numel)?;
                        stats::from_flat(o, &yl, l.sg, l.sa, l.bias)
                    })
                    .collect()
            }
            How::Blocks(parts) => parts
                .iter()
                .zip(v.iter().zip(&self.layers))
                .map(|(part, (x, l))| match part {
                    Part::Matrix(m) if l.order.is_none() => {
                        let y = o.matmul(m, &flat_on_device(o, x, l)?)?;
                        stats::from_flat(o, &y, l.sg, l.sa, l.bias)
                    }
                    Part::Kron { ginv, ainv } => o.matmul(&o.matmul(ginv, x)?, ainv),
                    Part::Eigen { ug, ua, inv } => {
                        let r = o.matmul(&o.t_matmul(ug, x)?, ua)?;
                        let q = o.mul(&r, inv)?;
                        o.matmul(&o.matmul(ug, &q)?, &o.transpose(ua, 0, 1)?)
                    }
                    Part::Matrix(_) | Part::Host(_) => {
                        let nat = o.download(x)?;
                        let vl = stats::to_flat_host(&nat, l.sg, l.sa, l.bias, l.order);
                        let yl = match part {
                            Part::Matrix(m) => {
                                o.download(&o.matmul(m, &o.upload(&[vl.len(), 1], &vl)?)?)?
                            }
                            Part::Host(b) => b.solve(l, &vl, self.damping, la).map_err(err)?,
                            _ => unreachable!("matched above"),
                        };
                        let nat = stats::from_flat_host(&yl, l.sg, l.sa, l.bias, l.order);
                        o.upload(&[l.sg, l.sa], &nat)
                    }
                })
                .collect(),
        }
    }
}
