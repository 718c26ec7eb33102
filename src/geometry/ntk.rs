//! The dense NTK builder: one backward pass for every logit, then the
//! kernel assembled block by block on the device and written once into the
//! host matrix.

use super::build::{Problem, Target};
use super::hostcopy::BlockAt;
use super::ops::{write_stored, Ops, OpsError, OpsResult};
use super::stats;
use crate::linalg::{Keep, Mat, Stored};
use crate::plan::Dtype;
use crate::rng::Rng;

impl<O: Ops> Problem<'_, O> {
    /// The NTK over all examples `[C·n, C·n]` (rows `c·n + i`), summed over
    /// the included layers.
    ///
    /// One backward pass gives every layer's `a` and `g`; the kernel is then
    /// assembled output pair by output pair, only for `d ≥ c` (it is
    /// symmetric): block `(c, d)` is `Σ_l (G_l[c] G_l[d]ᵀ) ⊙ (A_l A_lᵀ)` for
    /// Linear layers, or `J_l[c] J_l[d]ᵀ` from per-example gradients for the
    /// others (or all, with `force_per_example`). Each block is one
    /// [`Ops::sum_products`] (products, Hadamard and sum in one pass where
    /// the backend fuses them) and one [`Ops::write_host_block`] (the
    /// conversion to f64 and the mirrored block in one host pass), so the
    /// device never holds more than one `n × n` block beyond the factors.
    pub fn ntk_dense(&self, force_per_example: bool) -> OpsResult<Mat> {
        self.ntk_dense_in(force_per_example, Keep::Host(Dtype::F64))?
            .into_f64()
            .map_err(|e| OpsError(e.to_string()))
    }

    /// [`Problem::ntk_dense`] kept where `keep` says: on the host in the
    /// run's precision (a float32 run's values exactly as computed, in
    /// half the memory of f64), in f64 where the host goes on to derive new
    /// values from it, or on the device where the backend holds results
    /// there ([`Ops::holds_on_device`]): assembled in place, never copied.
    pub fn ntk_dense_in(&self, force_per_example: bool, keep: Keep) -> OpsResult<Stored> {
        let o = self.o;
        let c = self.net.outputs();
        let n = self.n;
        let x = o.narrow(self.x, 0, 0, n)?;
        let fwd = self.net.forward(o, &x, true)?;
        let z = o.download(&fwd.output)?;
        let mut rng = Rng::new(0);
        let seeds = self.seeds(&Target::Outputs, &z, 0, n, &mut rng);
        let seed = o.upload(&[c, n, c], &seeds)?;
        let caps = self.net.backward(o, &fwd, &seed)?;
        drop(fwd);
        // Per layer and output: (left factor [n, k], right factor [k, n], A Aᵀ).
        type Factors<T> = (Vec<T>, Vec<T>, Option<T>);
        let mut layers: Vec<Factors<O::T>> = Vec::new();
        for cap in caps.iter().filter(|cap| self.slots.contains(&cap.slot)) {
            let slot = self.slot_of(cap);
            let l = o.shape(&cap.g)[2];
            let affine = stats::factored(slot);
            let (structured, per_example) = stats::ntk_costs(slot, c, n, l);
            let cheaper = structured <= per_example;
            let (full, aa) = if affine && l == 1 && cheaper && !force_per_example {
                let (sg, sa, _) = stats::layout(slot);
                let a = o.reshape(&cap.a, &[n, sa])?;
                let aa = o.matmul(&a, &o.transpose(&a, 0, 1)?)?;
                (o.reshape(&cap.g, &[c, n, sg])?, Some(aa))
            } else {
                let j = stats::jacobian(o, slot, cap)?;
                let k = o.shape(&j)[1];
                (o.reshape(&j, &[c, n, k])?, None)
            };
            let k = o.shape(&full)[2];
            let mut left = Vec::with_capacity(c);
            let mut right = Vec::with_capacity(c);
            for a in 0..c {
                let f = o.reshape(&o.narrow(&full, 0, a, 1)?, &[n, k])?;
                right.push(o.transpose(&f, 0, 1)?);
                left.push(f);
            }
            layers.push((left, right, aa));
        }
        drop(caps);
        if layers.is_empty() {
            return Err(OpsError("no layers".into()));
        }
        let m = c * n;
        let on_device = match keep {
            Keep::Device => Some(o.zeros(&[m, m])?),
            Keep::Host(_) => None,
        };
        let mut k = match keep {
            Keep::Host(dtype) => Stored::zeros(m, m, dtype),
            Keep::Device => Stored::zeros(0, 0, Dtype::F64),
        };
        for a in 0..c {
            for d in a..c {
                // K[(a,i),(d,j)] = Σ_l P_l[i,j] · (A_l A_lᵀ)[i,j], on the device.
                let terms: Vec<_> = layers
                    .iter()
                    .map(|(left, right, aa)| (&left[a], &right[d], aa.as_ref()))
                    .collect();
                let blk = o.sum_products(&terms)?;
                let at = BlockAt {
                    rows: n,
                    cols: n,
                    ld: m,
                    r0: a * n,
                    c0: d * n,
                    mirror: d != a,
                    accumulate: false,
                };
                match &on_device {
                    Some(dst) => o.write_device_block(&blk, dst, at)?,
                    None => write_stored(o, &blk, &mut k, at)?,
                }
            }
        }
        match on_device {
            Some(dst) => Ok(Stored::Device(o.hold(dst)?)),
            None => Ok(k),
        }
    }
}

impl<O: Ops> Problem<'_, O> {
    /// The NTK's per-example blocks `K_i = J_i J_iᵀ` (`C × C`, `[n, C, C]`
    /// row-major), or with `diag_only` their diagonals in the kernel's row
    /// order (`c·n + i`): what `Ntk(BlockDiag)` and `Ntk(Diag)` keep.
    ///
    /// Summed layer by layer as the backward pass hands each capture over
    /// ([`Problem::for_each_capture`]), so no batch's whole Jacobian — and
    /// no Jacobian of all the examples — is ever formed: a Linear layer's
    /// per-example gradient is `g ⊗ a`, whose products are `(g·g')·|a|²`;
    /// every other layer forms its own per-example Jacobian (one layer's,
    /// one batch's) and reduces it on the device.
    pub fn ntk_example_blocks(&self, diag_only: bool) -> OpsResult<Vec<f64>> {
        let o = self.o;
        let c = self.net.outputs();
        let n = self.n;
        let mut out = vec![0.0; if diag_only { c * n } else { n * c * c }];
        self.for_each_capture(&Target::Outputs, |_, cap, start, nb| {
            let slot = self.slot_of(&cap);
            let gs = o.shape(&cap.g);
            let (m, l) = (gs[0], gs[2]);
            if m != c || gs[1] != nb {
                return Err(OpsError(format!(
                    "a capture of {m} outputs × {} examples for {c} × {nb}",
                    gs[1]
                )));
            }
            // `(products [nb, C, C] or squared norms [C, nb], |a_i|² per
            // example)`: the second is `None` where the first is whole.
            let (prod, scale) = if stats::factored(slot) && l == 1 {
                let (sg, sa, _) = stats::layout(slot);
                let a = o.reshape(&cap.a, &[nb, sa])?;
                let a2 = o.download(&o.sum_sqr(&a, 1)?)?;
                let g = o.reshape(&cap.g, &[c, nb, sg])?;
                let prod = if diag_only {
                    o.sum_sqr(&g, 2)?
                } else {
                    let gt = o.transpose(&g, 0, 1)?; // [nb, C, sg]
                    o.matmul(&gt, &o.transpose(&gt, 1, 2)?)?
                };
                (o.download(&prod)?, Some(a2))
            } else {
                let j = stats::jacobian(o, slot, &cap)?; // [C·nb, k], rows (c, i)
                drop(cap);
                let k = o.shape(&j)[1];
                let prod = if diag_only {
                    o.sum_sqr(&j, 1)?
                } else {
                    let jt = o.transpose(&o.reshape(&j, &[c, nb, k])?, 0, 1)?; // [nb, C, k]
                    drop(j);
                    o.matmul(&jt, &o.transpose(&jt, 1, 2)?)?
                };
                (o.download(&prod)?, None)
            };
            let s = |i: usize| scale.as_ref().map_or(1.0, |a2| a2[i]);
            if diag_only {
                for a in 0..c {
                    for i in 0..nb {
                        out[a * n + start + i] += prod[a * nb + i] * s(i);
                    }
                }
            } else {
                for i in 0..nb {
                    let (dst, src) = (
                        &mut out[(start + i) * c * c..][..c * c],
                        &prod[i * c * c..][..c * c],
                    );
                    for (d, x) in dst.iter_mut().zip(src) {
                        *d += x * s(i);
                    }
                }
            }
            Ok(())
        })?;
        Ok(out)
    }
}
