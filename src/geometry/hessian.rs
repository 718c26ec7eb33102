//! The Hessian of the mean loss w.r.t. the parameters, in the
//! representations a Fisher has: built column by column from exact
//! Hessian–vector products ([`super::net::hessian`]), or left matrix-free.
//!
//! `H = 1/n Σᵢ ∇²_w ℓ(f(xᵢ; w), yᵢ)` with ℓ the cross-entropy (binary
//! cross-entropy on one logit) or PyTorch's MSE (mean over outputs), the
//! losses `train` minimises. Its Gauss–Newton part `1/n Σ Jᵢᵀ H_ℓ Jᵢ` is,
//! for the cross-entropy, the true Fisher.

use super::build::{example_loss, softmax, BlockKind, Problem};
use super::net::hessian::Parts;
use super::net::Net;
use super::ops::{Ops, OpsError, OpsResult};
use super::repr::{Block, Fim, FimBody, LayerInfo};
use super::stats;
use crate::linalg::{top_eigpairs_op, with_fallible_op, HostMatrix, Mat, Stored};
use crate::plan::{HessianPart, Task};

/// Relative residual at which Lanczos accepts LowRank's eigenpairs.
const LANCZOS_TOL: f64 = 1e-10;

fn parts(part: HessianPart) -> Parts {
    Parts {
        gauss_newton: part != HessianPart::Residual,
        residual: part != HessianPart::GaussNewton,
    }
}

impl<O: Ops> Problem<'_, O> {
    fn mse(task: &Task) -> bool {
        matches!(task, Task::Regression { .. })
    }

    /// The network holding the representation-order vector `v` as its
    /// parameters (zero outside the included layers).
    fn direction(&self, layers: &[LayerInfo], v: &[f64]) -> OpsResult<Net<O>> {
        let mut full = vec![0.0; self.net.num_params()];
        for l in layers {
            full[l.full_offset..l.full_offset + l.numel]
                .copy_from_slice(&v[l.offset..l.offset + l.numel]);
        }
        let mut params = self.net.params.clone();
        params.set_flat(&full)?;
        Net::new(self.o, &self.net.spec, params)
    }

    /// `H v` (in parts) for `count` directions `dir(k)`, batch by batch:
    /// `f(k, share)` receives each batch's share of `H dir(k)` in the
    /// representation's order. Each batch's passes are made once for all
    /// directions.
    fn hessian_products(
        &self,
        task: &Task,
        part: HessianPart,
        count: usize,
        dir: &dyn Fn(usize) -> Vec<f64>,
        f: &mut dyn FnMut(usize, Vec<f64>),
    ) -> OpsResult<()> {
        let o = self.o;
        let mse = Self::mse(task);
        let layers = self.layer_infos();
        let order = self.ordered_slots();
        let dim: usize = layers.iter().map(|l| l.numel).sum();
        let c = self.net.outputs();
        let scale = 1.0 / self.n as f64;
        let mut start = 0;
        while start < self.n {
            let nb = self.batch.min(self.n - start);
            let xb = o.narrow(self.x, 0, start, nb)?;
            let ys = &self.y[start * self.target_dim..(start + nb) * self.target_dim];
            let mut probs = Vec::new();
            let cv = self.net.curvature(o, &xb, |out| {
                let z = o.download(out)?;
                let mut s = vec![0.0; nb * c];
                for i in 0..nb {
                    let zi = &z[i * c..(i + 1) * c];
                    let yi = &ys[i * self.target_dim..(i + 1) * self.target_dim];
                    let (_, g, _) = example_loss(zi, yi, mse);
                    for k in 0..c {
                        s[i * c + k] = g[k] * scale;
                    }
                    probs.push(if mse {
                        vec![]
                    } else if c == 1 {
                        vec![1.0 / (1.0 + (-zi[0]).exp())]
                    } else {
                        softmax(zi)
                    });
                }
                o.upload(&[1, nb, c], &s)
            })?;
            for k in 0..count {
                let t = self.direction(&layers, &dir(k))?;
                let mut share = vec![0.0; dim];
                let mut sink = |slot: usize, s: O::T| -> OpsResult<()> {
                    let Ok(at) = order.binary_search(&slot) else {
                        return Ok(());
                    };
                    let l = &layers[at];
                    let nat = o.download(&s)?;
                    let flat = stats::to_flat_host(&nat, l.sg, l.sa, l.bias, l.order);
                    share[l.offset..l.offset + l.numel]
                        .iter_mut()
                        .zip(flat)
                        .for_each(|(a, b)| *a += b);
                    Ok(())
                };
                let seed = |fdot: &O::T| -> OpsResult<O::T> {
                    let fd = o.download(fdot)?;
                    let mut s = vec![0.0; nb * c];
                    for i in 0..nb {
                        let d = &fd[i * c..(i + 1) * c];
                        let out = &mut s[i * c..(i + 1) * c];
                        if mse {
                            // ℓ = Σ r²/C: H_ℓ = 2/C·I.
                            for k in 0..c {
                                out[k] = 2.0 / c as f64 * d[k] * scale;
                            }
                        } else if c == 1 {
                            let p = probs[i][0];
                            out[0] = p * (1.0 - p) * d[0] * scale;
                        } else {
                            // H_ℓ = diag p − p pᵀ.
                            let p = &probs[i];
                            let pd: f64 = p.iter().zip(d).map(|(a, b)| a * b).sum();
                            for k in 0..c {
                                out[k] = p[k] * (d[k] - pd) * scale;
                            }
                        }
                    }
                    o.upload(&[1, nb, c], &s)
                };
                self.net
                    .gradient_tangent(o, &cv, &t, parts(part), seed, &mut sink)?;
                f(k, share);
            }
            start += nb;
        }
        Ok(())
    }

    /// `H v`, matrix-free.
    pub fn hvp(&self, task: &Task, part: HessianPart, v: &[f64]) -> OpsResult<Vec<f64>> {
        let mut out = vec![0.0; v.len()];
        self.hessian_products(task, part, 1, &|_| v.to_vec(), &mut |_, s| {
            out.iter_mut().zip(s).for_each(|(a, b)| *a += b)
        })?;
        Ok(out)
    }

    fn unit(dim: usize, j: usize) -> Vec<f64> {
        let mut e = vec![0.0; dim];
        e[j] = 1.0;
        e
    }

    /// The dense Hessian, one product per column, symmetrised.
    pub fn hessian_dense(&self, task: &Task, part: HessianPart) -> OpsResult<Fim> {
        let layers = self.layer_infos();
        let p: usize = layers.iter().map(|l| l.numel).sum();
        let mut h = Mat::zeros(p, p);
        self.hessian_products(task, part, p, &|j| Self::unit(p, j), &mut |j, s| {
            for (r, x) in s.into_iter().enumerate() {
                h.data[r * p + j] += x;
            }
        })?;
        h.symmetrize();
        Ok(Fim {
            layers,
            body: FimBody::Dense(h.into()),
            n: self.n,
            refit: false,
        })
    }

    /// Each included layer's diagonal block (`BlockKind::Dense`) or its
    /// diagonal (`BlockKind::Diag`); one product per parameter.
    pub fn hessian_blocks(
        &self,
        task: &Task,
        part: HessianPart,
        kinds: &[BlockKind],
    ) -> OpsResult<Fim> {
        let layers = self.layer_infos();
        let p: usize = layers.iter().map(|l| l.numel).sum();
        if let Some(k) = kinds
            .iter()
            .find(|k| !matches!(k, BlockKind::Dense | BlockKind::Diag))
        {
            return Err(OpsError(format!(
                "a Hessian has no {k:?} blocks (Dense, BlockDiag, Diag, LowRank or Implicit)"
            )));
        }
        // Column j of H, restricted to j's own layer.
        let owner: Vec<usize> = layers
            .iter()
            .enumerate()
            .flat_map(|(b, l)| std::iter::repeat_n(b, l.numel))
            .collect();
        let mut blocks: Vec<Block> = layers
            .iter()
            .zip(kinds)
            .map(|(l, kind)| match kind {
                BlockKind::Diag => Block::Diag(vec![0.0; l.numel]),
                _ => Block::Dense(Stored::from(Mat::zeros(l.numel, l.numel))),
            })
            .collect();
        self.hessian_products(task, part, p, &|j| Self::unit(p, j), &mut |j, s| {
            let b = owner[j];
            let l = &layers[b];
            let (o0, k) = (l.offset, l.numel);
            match &mut blocks[b] {
                Block::Diag(d) => d[j - o0] += s[j],
                // Built here in f64 (a Hessian is kept in f64).
                Block::Dense(Stored::Host(HostMatrix::F64(m))) => {
                    for r in 0..k {
                        m.data[r * k + (j - o0)] += s[o0 + r];
                    }
                }
                _ => {}
            }
        })?;
        for b in &mut blocks {
            if let Block::Dense(Stored::Host(HostMatrix::F64(m))) = b {
                m.symmetrize();
            }
        }
        Ok(Fim {
            layers,
            body: FimBody::Blocks(blocks),
            n: self.n,
            refit: false,
        })
    }

    /// The best rank-`rank` approximation from the top eigenpairs (Lanczos
    /// on products), stored as `LᵀL`: only a positive semi-definite part
    /// can be, so the top `rank` eigenvalues must be positive.
    pub fn hessian_lowrank(&self, task: &Task, part: HessianPart, rank: usize) -> OpsResult<Fim> {
        let layers = self.layer_infos();
        let p: usize = layers.iter().map(|l| l.numel).sum();
        let found = with_fallible_op(&mut |v| self.hvp(task, part, v), |op| {
            top_eigpairs_op(p, rank, op, LANCZOS_TOL)
        })?;
        let (values, vectors) =
            found.ok_or_else(|| OpsError("Lanczos on the Hessian did not converge".into()))?;
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| **v < 0.0) {
            return Err(OpsError(format!(
                "the Hessian's eigenvalue {} of the top {rank} is negative ({v:e}): LowRank keeps a positive semi-definite part; use rank ≤ {i}, Dense or Implicit",
                i + 1
            )));
        }
        let mut l = Mat::zeros(values.len(), p);
        for (r, (val, vec)) in values.iter().zip(&vectors).enumerate() {
            let s = val.sqrt();
            for (c, x) in vec.iter().enumerate() {
                l.data[r * p + c] = s * x;
            }
        }
        Ok(Fim {
            layers,
            body: FimBody::LowRank(l),
            n: self.n,
            refit: false,
        })
    }
}
