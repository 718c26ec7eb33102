//! The Fisher structures built from a [`Problem`]'s captures: the blocks
//! of each layer (Dense, Diag, QuasiDiag, KFAC, EKFAC with its refit), the
//! dense Fisher from per-example Jacobians, the low-rank factor and the
//! matrix-free product.

use super::build::{Problem, Target};
use super::gram::GramSum;
use super::hostcopy::{self, BlockAt};
use super::net::Capture;
use super::ops::{write_host, Ops, OpsError, OpsResult};
use super::repr::{Block, Fim, FimBody, LayerInfo};
use super::stats;
use crate::linalg::{eigh, HostMatrix, Keep, Mat, Stored};
use crate::plan::{LayerFamily, Structure};
use rayon::prelude::*;

/// Structure of one layer's block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Dense,
    Diag,
    Kfac,
    Ekfac { refit: bool },
    QuasiDiag,
}

impl BlockKind {
    /// The block a (per-layer) structure gives layer `name` of `family`; a
    /// `mix` picks by the layer's name, else by its family.
    pub fn for_structure(
        s: &Structure,
        name: &str,
        family: Option<LayerFamily>,
    ) -> Result<BlockKind, String> {
        Ok(match s {
            Structure::BlockDiag => BlockKind::Dense,
            Structure::Diag => BlockKind::Diag,
            Structure::Kfac => BlockKind::Kfac,
            Structure::Ekfac { refit, .. } => BlockKind::Ekfac { refit: *refit },
            Structure::QuasiDiag => BlockKind::QuasiDiag,
            Structure::Mix { .. } => {
                let inner = s
                    .for_layer(name, family)
                    .ok_or_else(|| format!("this mix gives no structure for layer `{name}`"))?;
                if matches!(inner, Structure::Mix { .. }) {
                    return Err("a mix inside a mix".into());
                }
                BlockKind::for_structure(inner, name, family)?
            }
            other => return Err(format!("{} cannot be one block of a mix", other.name())),
        })
    }
}

/// EKFAC's starting point from a KFAC block `A ⊗ G`: the Kronecker
/// eigenbasis `U_G ⊗ U_A` with the products of the factors' eigenvalues as
/// its diagonal (a refit then replaces them). `eig` decomposes one factor.
pub fn kfac_eigenbasis(block: &Block, eig: &Eigh<'_>) -> OpsResult<Block> {
    let Block::Kfac { a, g } = block else {
        return Err(OpsError("EKFAC starts from a KFAC block".into()));
    };
    let (ea, ua) = eig(a)?;
    let (eg, ug) = eig(g)?;
    let mut d = Mat::zeros(g.rows(), a.rows());
    for kk in 0..g.rows() {
        for j in 0..a.rows() {
            d.set(kk, j, eg[kk] * ea[j]);
        }
    }
    Ok(Block::Ekfac { ua, ug, d })
}

/// A symmetric eigendecomposition of a KFAC factor: eigenvalues and the
/// basis, kept where the factor was.
pub type Eigh<'a> = dyn Fn(&Stored) -> OpsResult<(Vec<f64>, Stored)> + 'a;

fn host_eigh(m: &Stored) -> OpsResult<(Vec<f64>, Stored)> {
    m.eigh().map_err(|e| OpsError(e.to_string()))
}

/// Replaces the KFAC blocks `which` by their EKFAC bases. A factor held on
/// the device is decomposed there and its basis stays there; where the
/// backend decomposes on its device ([`Ops::device_linalg`]) a host
/// factor goes there and its basis comes back; either way one factor
/// after another, each using the whole device. Otherwise the host
/// decomposes several at once on its threads.
pub fn to_eigenbases<O: Ops>(o: &O, blocks: &mut [Block], which: &[usize]) -> OpsResult<()> {
    let held = which.iter().any(|&k| {
        matches!(&blocks[k], Block::Kfac { a, g } if a.device().is_some() || g.device().is_some())
    });
    let bases: Vec<(usize, Block)> = if o.device_linalg() || held {
        let eig = |m: &Stored| -> OpsResult<(Vec<f64>, Stored)> {
            match m {
                Stored::Host(h) if o.device_linalg() => {
                    let (v, u) = o.eigh(&h.as_f64())?;
                    Ok((v, Stored::from(u)))
                }
                _ => host_eigh(m),
            }
        };
        which
            .iter()
            .map(|&k| Ok((k, kfac_eigenbasis(&blocks[k], &eig)?)))
            .collect::<OpsResult<_>>()?
    } else {
        let shared: &[Block] = blocks;
        which
            .par_iter()
            .map(|&k| Ok((k, kfac_eigenbasis(&shared[k], &host_eigh)?)))
            .collect::<OpsResult<_>>()?
    };
    for (k, b) in bases {
        blocks[k] = b;
    }
    Ok(())
}

/// Moves KFAC's factors and EKFAC's bases of `blocks` to `o`'s device
/// (in f64, as a run that holds results there builds them): a Fisher
/// loaded from a file or reduced from parts then computes where the run's
/// own do.
pub fn factors_to_device<O: Ops>(o: &O, blocks: &mut [Block]) -> OpsResult<()> {
    let up = |m: &mut Stored| -> OpsResult<()> {
        if let Stored::Host(h) = m {
            *m = Stored::Device(o.hold_host(&h.as_f64())?);
        }
        Ok(())
    };
    for b in blocks {
        match b {
            Block::Kfac { a: x, g: y } | Block::Ekfac { ua: x, ug: y, .. } => {
                up(x)?;
                up(y)?;
            }
            Block::Dense(_) | Block::Diag(_) | Block::QuasiDiag { .. } => {}
        }
    }
    Ok(())
}

/// Most bytes of captures EKFAC's refit keeps from the KFAC pass to
/// avoid a second pass over a single batch; beyond it, it runs the second
/// pass (memory, not time, is then the limit).
const KEEP_BYTES: usize = 256 << 20;

impl<'a, O: Ops> Problem<'a, O> {
    /// A block-diagonal representation with `kinds[k]` for the k-th
    /// included layer; its Dense blocks kept where the backend keeps
    /// results ([`super::ops::keep_of`]).
    pub fn fim_blocks(&self, target: &Target, kinds: &[BlockKind]) -> OpsResult<Fim> {
        self.fim_blocks_in(target, kinds, super::ops::keep_of(self.o))
    }

    /// [`Problem::fim_blocks`] with its Dense blocks, KFAC's factors and
    /// EKFAC's bases kept where `store` says (the per-parameter ones, Diag,
    /// QuasiDiag and EKFAC's diagonal, on the host).
    pub fn fim_blocks_in(
        &self,
        target: &Target,
        kinds: &[BlockKind],
        store: Keep,
    ) -> OpsResult<Fim> {
        if let Target::Hessian { task, part } = target {
            return self.hessian_blocks(task, *part, kinds);
        }
        let o = self.o;
        let layers = self.layer_infos();
        let (_, n_out) = self.outputs_of(target);
        let mut acc: Vec<Vec<Option<O::T>>> = vec![vec![None, None]; kinds.len()];
        // Symmetric sums (a Dense block; KFAC's A and G) as upper panel blocks.
        let mut grams: Vec<[Option<GramSum<O::T>>; 2]> =
            (0..kinds.len()).map(|_| [None, None]).collect();
        let gram = |sum: &mut Option<GramSum<O::T>>, t: &O::T| -> OpsResult<()> {
            sum.get_or_insert_with(|| GramSum::new(o.shape(t)[1]))
                .add(o, t)
        };
        let mut positions = vec![1usize; kinds.len()];
        let add = |slot: &mut Option<O::T>, t: O::T| -> OpsResult<()> {
            *slot = Some(match slot.take() {
                Some(s) => o.add(&s, &t)?,
                None => t,
            });
            Ok(())
        };
        // With a single batch, EKFAC's refit reuses this pass's captures
        // of its layers instead of running the network again, unless they
        // would take more than KEEP_BYTES.
        let mut keep = self.batch >= self.n
            && kinds
                .iter()
                .any(|k| matches!(k, BlockKind::Ekfac { refit: true }));
        let mut kept: Vec<Option<Capture<O::T>>> = vec![None; kinds.len()];
        let mut kept_bytes = 0;
        self.for_each_capture(target, |k, cap, _, _| {
            let slot = self.slot_of(&cap);
            {
                let cap = &cap;
                match kinds[k] {
                    BlockKind::Dense => {
                        gram(&mut grams[k][0], &stats::jacobian(o, slot, cap)?)?;
                    }
                    BlockKind::Diag => add(&mut acc[k][0], stats::diag_sum(o, slot, cap)?)?,
                    BlockKind::QuasiDiag => {
                        add(&mut acc[k][0], stats::diag_sum(o, slot, cap)?)?;
                        add(&mut acc[k][1], stats::cross_sum(o, slot, cap)?)?;
                    }
                    BlockKind::Kfac | BlockKind::Ekfac { .. } => {
                        positions[k] = o.shape(&cap.g)[2];
                        let (a, g) = stats::kfac_rows(o, slot, cap)?;
                        gram(&mut grams[k][0], &a)?;
                        gram(&mut grams[k][1], &g)?;
                    }
                }
            }
            if keep && matches!(kinds[k], BlockKind::Ekfac { refit: true }) {
                kept_bytes += (o.numel(&cap.a) + o.numel(&cap.g)) * self.dtype_bytes();
                if kept_bytes > KEEP_BYTES {
                    keep = false;
                    kept.iter_mut().for_each(|c| *c = None);
                } else {
                    kept[k] = Some(cap);
                }
            }
            Ok(())
        })?;
        let kept = keep.then_some(kept);
        let n = self.n as f64;
        let mut blocks = Vec::with_capacity(kinds.len());
        let mut bases = Vec::new();
        for (k, l) in layers.iter().enumerate() {
            // Each accumulator is freed on the device as it comes to the host.
            let get = |t: &mut Option<O::T>| -> OpsResult<Vec<f64>> {
                o.download(&t.take().ok_or_else(|| OpsError("no examples".into()))?)
            };
            let scale =
                |v: Vec<f64>, f: f64| -> Vec<f64> { v.into_iter().map(|x| x * f).collect() };
            let factor = |sum: &mut Option<GramSum<O::T>>, f: f64| -> OpsResult<Stored> {
                sum.take()
                    .ok_or_else(|| OpsError("no examples".into()))?
                    .into_factor(o, f, store)
            };
            let block = match kinds[k] {
                // In the run's precision: the values the device summed,
                // kept on the device where the backend holds results there.
                BlockKind::Dense => Block::Dense(
                    grams[k][0]
                        .take()
                        .ok_or_else(|| OpsError("no examples".into()))?
                        .into_stored(o, 1.0 / n, store)?,
                ),
                BlockKind::Diag => Block::Diag(stats::to_flat_host(
                    &scale(get(&mut acc[k][0])?, 1.0 / n),
                    l.sg,
                    l.sa,
                    l.bias,
                    l.order,
                )),
                BlockKind::QuasiDiag => {
                    let d = scale(get(&mut acc[k][0])?, 1.0 / n);
                    let c = scale(get(&mut acc[k][1])?, 1.0 / n);
                    let w = if l.bias { l.sa - 1 } else { l.sa };
                    let mut cross = Mat::zeros(l.sg, if l.bias { w } else { 0 });
                    if l.bias {
                        for g in 0..l.sg {
                            for a in 0..w {
                                cross.set(g, a, c[g * l.sa + a]);
                            }
                        }
                    }
                    Block::QuasiDiag {
                        diag: stats::to_flat_host(&d, l.sg, l.sa, l.bias, l.order),
                        cross,
                    }
                }
                BlockKind::Kfac | BlockKind::Ekfac { .. } => {
                    let r = (n_out as f64).sqrt();
                    let a = factor(&mut grams[k][0], r / n)?;
                    let g = factor(&mut grams[k][1], 1.0 / (r * n * positions[k] as f64))?;
                    if let BlockKind::Ekfac { .. } = kinds[k] {
                        bases.push(k);
                    }
                    Block::Kfac { a, g }
                }
            };
            blocks.push(block);
        }
        // EKFAC: eigenbases of every factor, the decompositions in parallel.
        to_eigenbases(o, &mut blocks, &bases)?;
        let refit_layers: Vec<usize> = bases
            .into_iter()
            .filter(|&k| matches!(kinds[k], BlockKind::Ekfac { refit: true }))
            .collect();
        if !refit_layers.is_empty() {
            self.refit(target, &layers, &mut blocks, &refit_layers, kept)?;
        }
        Ok(Fim {
            layers,
            body: FimBody::Blocks(blocks),
            n: self.n,
            refit: kinds
                .iter()
                .any(|k| matches!(k, BlockKind::Ekfac { refit: true })),
        })
    }

    /// EKFAC's second pass: the diagonal in the Kronecker-factored
    /// eigenbasis becomes the second moment of the per-example gradients
    /// projected on it (George et al. 2018).
    pub fn refit(
        &self,
        target: &Target,
        layers: &[LayerInfo],
        blocks: &mut [Block],
        which: &[usize],
        kept: Option<Vec<Option<Capture<O::T>>>>,
    ) -> OpsResult<()> {
        let o = self.o;
        let mut bases = Vec::new();
        for &k in which {
            let Block::Ekfac { ua, ug, .. } = &blocks[k] else {
                continue;
            };
            bases.push((
                k,
                super::ops::stored_tensor(o, ug)?,
                super::ops::stored_tensor(o, ua)?,
            ));
        }
        let mut sums: Vec<Option<O::T>> = vec![None; bases.len()];
        let mut accumulate = |k: usize, cap: &Capture<O::T>| -> OpsResult<()> {
            let Some(b) = bases.iter().position(|(bk, _, _)| *bk == k) else {
                return Ok(());
            };
            let (_, ug, ua) = &bases[b];
            let s = stats::kfe_sum(o, self.slot_of(cap), cap, ug, ua)?;
            sums[b] = Some(match sums[b].take() {
                Some(t) => o.add(&t, &s)?,
                None => s,
            });
            Ok(())
        };
        match kept {
            Some(caps) => {
                for (k, cap) in caps.iter().enumerate() {
                    if let Some(cap) = cap {
                        accumulate(k, cap)?;
                    }
                }
            }
            None => self.for_each_capture(target, |k, cap, _, _| accumulate(k, &cap))?,
        }
        for (b, (k, _, _)) in bases.iter().enumerate() {
            let l = &layers[*k];
            let v = o.download(sums[b].as_ref().unwrap())?;
            if let Block::Ekfac { d, .. } = &mut blocks[*k] {
                *d = Mat::from_vec(
                    l.sg,
                    l.sa,
                    v.into_iter().map(|x| x / self.n as f64).collect(),
                );
            }
        }
        Ok(())
    }

    /// Per-batch Jacobian of the output functions, `[m·nb, P]` (rows `o·nb + i`).
    fn batch_jacobian(&self, caps: &[Capture<O::T>]) -> OpsResult<O::T> {
        let parts = caps
            .iter()
            .map(|cap| stats::jacobian(self.o, self.slot_of(cap), cap))
            .collect::<OpsResult<Vec<_>>>()?;
        if parts.len() == 1 {
            Ok(parts.into_iter().next().unwrap())
        } else {
            self.o.cat(&parts, 1)
        }
    }

    /// The dense Fisher `1/n Σ Jᵀ J`.
    ///
    /// `JᵀJ` is symmetric: it is computed in column panels of `J`, only the
    /// panels on and above the diagonal (about half the arithmetic), each
    /// added into the upper triangle of the host matrix as soon as it is
    /// made; one tiled pass at the end scales it and mirrors it below.
    /// Kept in the run's precision: a float32 run holds half the bytes; a
    /// backend that keeps results on its device ([`Ops::holds_on_device`])
    /// assembles it there, and the host gets its values only when a result
    /// needs them all.
    pub fn fim_dense(&self, target: &Target) -> OpsResult<Fim> {
        self.fim_dense_in(target, super::ops::keep_of(self.o))
    }

    /// [`Problem::fim_dense`] kept where `keep` says.
    pub fn fim_dense_in(&self, target: &Target, keep: Keep) -> OpsResult<Fim> {
        if let Target::Hessian { task, part } = target {
            return self.hessian_dense(task, *part);
        }
        const PANEL: usize = 2048;
        let o = self.o;
        let layers = self.layer_infos();
        let p: usize = layers.iter().map(|l| l.numel).sum();
        let scale = 1.0 / self.n as f64;
        enum Acc<T> {
            Host(HostMatrix),
            Device(T),
        }
        let mut acc = match keep {
            Keep::Host(dtype) => Acc::Host(HostMatrix::zeros(p, p, dtype)),
            Keep::Device => Acc::Device(o.zeros(&[p, p])?),
        };
        let bounds: Vec<(usize, usize)> = (0..p)
            .step_by(PANEL)
            .map(|s| (s, PANEL.min(p - s)))
            .collect();
        self.for_each_batch(target, |caps, _, _| {
            let j = self.batch_jacobian(caps)?;
            for (a, &(sa, wa)) in bounds.iter().enumerate() {
                for &(sb, wb) in &bounds[a..] {
                    let blk = if bounds.len() == 1 {
                        o.t_matmul(&j, &j)?
                    } else {
                        o.t_matmul_cols(&j, (sa, wa), &j, (sb, wb))?
                    };
                    let at = BlockAt {
                        rows: wa,
                        cols: wb,
                        ld: p,
                        r0: sa,
                        c0: sb,
                        mirror: false,
                        accumulate: true,
                    };
                    match &mut acc {
                        // Added straight from the device block (converted
                        // on the way); the lower triangle is filled once at
                        // the end.
                        Acc::Host(acc) => write_host(o, &blk, acc, at)?,
                        // On the device: scaled, with its mirror (a diagonal
                        // panel product is already whole).
                        Acc::Device(dst) => o.write_device_block(
                            &o.scale(&blk, scale)?,
                            dst,
                            BlockAt {
                                mirror: sa != sb,
                                ..at
                            },
                        )?,
                    }
                }
            }
            Ok(())
        })?;
        let body = match acc {
            Acc::Host(mut acc) => {
                match &mut acc {
                    HostMatrix::F64(m) => hostcopy::mirror_upper(&mut m.data, p, scale),
                    HostMatrix::F32 { data, .. } => hostcopy::mirror_upper(data, p, scale),
                }
                Stored::Host(acc)
            }
            Acc::Device(dst) => Stored::Device(o.hold(dst)?),
        };
        Ok(Fim {
            layers,
            body: FimBody::Dense(body),
            n: self.n,
            refit: false,
        })
    }

    /// All rows of the Jacobian of the output functions over every batch,
    /// `[Σ m·nb, P]`, on the host.
    pub fn jacobian_rows(&self, target: &Target) -> OpsResult<Mat> {
        // Sized once: growing it would hold the old and the new buffer at once.
        let (m, _) = self.outputs_of(target);
        let p: usize = self.layer_infos().iter().map(|l| l.numel).sum();
        let mut rows = Vec::with_capacity(m * self.n * p);
        let mut count = 0;
        self.for_each_batch(target, |caps, _, _| {
            let j = self.batch_jacobian(caps)?;
            count += self.o.shape(&j)[0];
            rows.extend(self.o.download(&j)?);
            Ok(())
        })?;
        let p = rows.len().checked_div(count).unwrap_or(0);
        Ok(Mat::from_vec(count, p, rows))
    }

    /// `F = Lᵀ L` with `L = J/√n`, truncated to the top `rank` directions.
    pub fn fim_lowrank(&self, target: &Target, rank: Option<usize>) -> OpsResult<Fim> {
        let mut l = self.jacobian_rows(target)?;
        let s = 1.0 / (self.n as f64).sqrt();
        l.data.iter_mut().for_each(|x| *x *= s);
        if let Some(k) = rank.filter(|k| *k < l.rows) {
            // Top-k right singular directions: L' = U_kᵀ L.
            let (_, u) = eigh(&l.matmul(&l.transpose())).map_err(|e| OpsError(e.to_string()))?;
            let r = l.rows;
            let mut uk = Mat::zeros(k, r);
            for i in 0..k {
                for j in 0..r {
                    uk.set(i, j, u.get(j, r - 1 - i));
                }
            }
            l = uk.matmul(&l);
        }
        Ok(Fim {
            layers: self.layer_infos(),
            body: FimBody::LowRank(l),
            n: self.n,
            refit: false,
        })
    }

    /// Matrix-free `F v = 1/n Jᵀ (J v)`, layer by layer, with no per-example
    /// gradient ever formed.
    pub fn implicit_mv(&self, target: &Target, v: &[f64]) -> OpsResult<Vec<f64>> {
        if let Target::Hessian { task, part } = target {
            return self.hvp(task, *part, v);
        }
        let o = self.o;
        let layers = self.layer_infos();
        let vs = self.upload_natural(&layers, v)?;
        let mut out: Vec<Option<O::T>> = vec![None; layers.len()];
        self.for_each_batch(target, |caps, _, _| {
            let mut u: Option<O::T> = None;
            for (k, cap) in caps.iter().enumerate() {
                let j = stats::jv(o, self.slot_of(cap), cap, &vs[k])?;
                u = Some(match u.take() {
                    Some(t) => o.add(&t, &j)?,
                    None => j,
                });
            }
            let u = u.ok_or_else(|| OpsError("no layers".into()))?;
            for (k, cap) in caps.iter().enumerate() {
                let t = stats::jtu(o, self.slot_of(cap), cap, &u)?;
                out[k] = Some(match out[k].take() {
                    Some(a) => o.add(&a, &t)?,
                    None => t,
                });
            }
            Ok(())
        })?;
        let mut res = Vec::with_capacity(v.len());
        for (k, l) in layers.iter().enumerate() {
            let nat = o.download(out[k].as_ref().unwrap())?;
            res.extend(
                stats::to_flat_host(&nat, l.sg, l.sa, l.bias, l.order)
                    .into_iter()
                    .map(|x| x / self.n as f64),
            );
        }
        Ok(res)
    }
}
