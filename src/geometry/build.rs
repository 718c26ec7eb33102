//! Building representations from a model and a dataset, generic over the
//! backend's [`Ops`]: batches of examples go forward once, their output
//! functions (the Fisher's pseudo-outputs or the NTK's logits) backward once,
//! and each layer's statistics are accumulated on the device.

use super::gram::GramSum;
use super::hostcopy::{self, BlockAt};
use super::net::{BatchStats, Capture, Net, Phase};
use super::ops::{write_host, Ops, OpsError, OpsResult};
use super::repr::{Block, Fim, FimBody, LayerInfo};
use super::stats;
use crate::linalg::{eigh, HostMatrix, Mat};
use crate::plan::{Dtype, FisherVariant, HessianPart, LayerFamily, Structure, Task};
use crate::rng::Rng;
use rayon::prelude::*;

/// Which output functions are backpropagated.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A Fisher matrix `1/n Σ Jᵢᵀ Mᵢ Jᵢ`, through a factor of `Mᵢ`.
    Fim { variant: FisherVariant, task: Task },
    /// The model's raw outputs (NTK, Jacobians).
    Outputs,
    /// The Hessian of the mean loss of `task` (see [`super::hessian`]).
    Hessian { task: Task, part: HessianPart },
}

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
    let mut d = Mat::zeros(g.rows, a.rows);
    for kk in 0..g.rows {
        for j in 0..a.rows {
            d.set(kk, j, eg[kk] * ea[j]);
        }
    }
    Ok(Block::Ekfac { ua, ug, d })
}

/// A symmetric eigendecomposition of a KFAC factor.
pub type Eigh<'a> = dyn Fn(&Mat) -> OpsResult<(Vec<f64>, Mat)> + 'a;

/// Replaces the KFAC blocks `which` by their EKFAC bases. Where the
/// backend decomposes on its device ([`Ops::device_linalg`]) the factors go
/// there one after another, each using the whole device; otherwise the
/// host decomposes several at once on its threads.
pub fn to_eigenbases<O: Ops>(o: &O, blocks: &mut [Block], which: &[usize]) -> OpsResult<()> {
    let bases: Vec<(usize, Block)> = if o.device_linalg() {
        which
            .iter()
            .map(|&k| Ok((k, kfac_eigenbasis(&blocks[k], &|m| o.eigh(m))?)))
            .collect::<OpsResult<_>>()?
    } else {
        let host = |m: &Mat| eigh(m).map_err(|e| OpsError(e.to_string()));
        let shared: &[Block] = blocks;
        which
            .par_iter()
            .map(|&k| Ok((k, kfac_eigenbasis(&shared[k], &host)?)))
            .collect::<OpsResult<_>>()?
    };
    for (k, b) in bases {
        blocks[k] = b;
    }
    Ok(())
}

/// A model, its examples, and which layers take part.
pub struct Problem<'a, O: Ops> {
    pub o: &'a O,
    pub net: &'a Net<O>,
    /// `[n, ...input]`.
    pub x: &'a O::T,
    /// `n · target_dim` targets (class ids for classification).
    pub y: &'a [f64],
    pub target_dim: usize,
    pub n: usize,
    /// Indices into `net.slots` of the layers included.
    pub slots: Vec<usize>,
    /// Examples per batch.
    pub batch: usize,
}

impl<'a, O: Ops> Problem<'a, O> {
    /// Every layer of `net` on the `n` examples `x` with one target each
    /// (class ids), in one batch.
    pub fn whole(o: &'a O, net: &'a Net<O>, x: &'a O::T, y: &'a [f64], n: usize) -> Self {
        Problem {
            o,
            net,
            x,
            y,
            target_dim: 1,
            n,
            slots: (0..net.slots.len()).collect(),
            batch: n,
        }
    }
}

pub(super) fn softmax(z: &[f64]) -> Vec<f64> {
    let mx = z.iter().fold(f64::NEG_INFINITY, |m, x| m.max(*x));
    let e: Vec<f64> = z.iter().map(|x| (x - mx).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// One example's loss, its gradient w.r.t. the outputs, and whether it is
/// classified correctly: PyTorch's MSE (mean over outputs), softmax
/// cross-entropy, or — for a single logit on class labels — binary
/// cross-entropy with the logit.
pub(super) fn example_loss(z: &[f64], y: &[f64], mse: bool) -> (f64, Vec<f64>, bool) {
    let c = z.len();
    if mse {
        let mut g = vec![0.0; c];
        let mut loss = 0.0;
        for k in 0..c {
            let r = z[k] - y[k.min(y.len() - 1)];
            loss += r * r / c as f64;
            g[k] = 2.0 * r / c as f64;
        }
        return (loss, g, false);
    }
    if c == 1 {
        let (zz, yy) = (z[0], y[0]);
        let loss = zz.max(0.0) - yy * zz + (-zz.abs()).exp().ln_1p();
        return (loss, vec![sigmoid(zz) - yy], (zz > 0.0) == (yy > 0.5));
    }
    let label = (y[0] as usize).min(c - 1);
    let mx = z.iter().fold(f64::NEG_INFINITY, |m, x| m.max(*x));
    let lse = mx + z.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
    let p = softmax(z);
    let g = (0..c).map(|k| p[k] - (k == label) as u8 as f64).collect();
    let arg = z
        .iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (k, x)| if *x > b.1 { (k, *x) } else { b },
        )
        .0;
    (lse - z[label], g, arg == label)
}

/// Most bytes of captures EKFAC's refit keeps from the KFAC pass to
/// avoid a second pass over a single batch; beyond it, it runs the second
/// pass (memory, not time, is then the limit).
const KEEP_BYTES: usize = 256 << 20;

impl<'a, O: Ops> Problem<'a, O> {
    /// The included layers in model order, each once: captures come out
    /// of the backward pass in that order, so every representation is laid
    /// out that way whatever order `slots` lists them in.
    pub fn ordered_slots(&self) -> Vec<usize> {
        let mut s = self.slots.clone();
        s.sort_unstable();
        s.dedup();
        s
    }

    pub fn layer_infos(&self) -> Vec<LayerInfo> {
        let mut offset = 0;
        self.ordered_slots()
            .iter()
            .map(|&s| {
                let slot = &self.net.slots[s];
                let (sg, sa, bias) = stats::layout(slot);
                let info = LayerInfo {
                    name: slot.name.clone(),
                    offset,
                    full_offset: slot.offset,
                    numel: slot.numel,
                    sg,
                    sa,
                    bias,
                    order: stats::order(slot),
                };
                offset += slot.numel;
                info
            })
            .collect()
    }

    /// Number of output functions per example, and NNGeometry's `n_out`
    /// (which sets how KFAC splits its scale between A and G).
    pub fn outputs_of(&self, target: &Target) -> (usize, usize) {
        let c = self.net.outputs();
        match target {
            Target::Outputs => (c, c),
            // One function: the loss.
            Target::Hessian { .. } => (1, 1),
            Target::Fim { variant, task } => match (variant, task) {
                (FisherVariant::True, Task::Classification) => {
                    let k = c.saturating_sub(1).max(1);
                    (k, k)
                }
                (FisherVariant::True, Task::Binary) => (1, 1),
                (FisherVariant::True, Task::Regression { .. }) => (c, c),
                (FisherVariant::Empirical, _) => (1, 1),
                (FisherVariant::Mc { samples, .. }, _) => (*samples, *samples),
            },
        }
    }

    /// Output-space seeds `[m, nb, C]` for a batch with logits `z [nb, C]`.
    ///
    /// True classification Fisher: C−1 pseudo-outputs, an exact factor of
    /// `diag(p) − ppᵀ` (as many as NNGeometry's, so KFAC's scale split
    /// matches), built without NNGeometry's divisions by `1 − Σ p`, so it
    /// stays finite when p is one-hot to machine precision.
    pub(super) fn seeds(
        &self,
        target: &Target,
        z: &[f64],
        start: usize,
        nb: usize,
        rng: &mut Rng,
    ) -> Vec<f64> {
        let c = self.net.outputs();
        let (m, _) = self.outputs_of(target);
        let mut s = vec![0.0; m * nb * c];
        let at = |o: usize, i: usize, k: usize| (o * nb + i) * c + k;
        for i in 0..nb {
            let zi = &z[i * c..(i + 1) * c];
            let yi = &self.y[(start + i) * self.target_dim..(start + i + 1) * self.target_dim];
            match target {
                Target::Outputs => {
                    for k in 0..c {
                        s[at(k, i, k)] = 1.0;
                    }
                }
                // The gradient of the example's loss.
                Target::Hessian { task, .. } => {
                    let mse = matches!(task, Task::Regression { .. });
                    let (_, g, _) = example_loss(zi, yi, mse);
                    for k in 0..c {
                        s[at(0, i, k)] = g[k];
                    }
                }
                Target::Fim { variant, task } => match task {
                    Task::Classification => {
                        let p = softmax(zi);
                        match variant {
                            FisherVariant::True if c == 1 => {}
                            FisherVariant::True => {
                                // Rows R_o = √p_o (e_o − p) factor diag p − ppᵀ
                                // exactly, and √pᵀR = 0. A Householder
                                // reflection whose last row is −√pᵀ turns the
                                // last row into zeros, leaving C−1 rows:
                                // R_k − 2 w_k R_last / ‖w‖², w = √p + e_last.
                                // ‖w‖² ≥ 2, so nothing is ever divided by a
                                // small number, even for a one-hot p.
                                let last = c - 1;
                                let sp: Vec<f64> = p.iter().map(|x| x.sqrt()).collect();
                                let w2 = 2.0 + 2.0 * sp[last];
                                let row =
                                    |o: usize, k: usize| sp[o] * ((o == k) as u8 as f64 - p[k]);
                                for o in 0..last {
                                    let f = 2.0 * sp[o] / w2;
                                    for k in 0..c {
                                        s[at(o, i, k)] = row(o, k) - f * row(last, k);
                                    }
                                }
                            }
                            FisherVariant::Empirical => {
                                let y = yi[0] as usize;
                                for k in 0..c {
                                    s[at(0, i, k)] = (k == y) as u8 as f64 - p[k];
                                }
                            }
                            FisherVariant::Mc { samples, .. } => {
                                let w = 1.0 / (*samples as f64).sqrt();
                                for o in 0..*samples {
                                    let u = rng.uniform();
                                    let mut acc = 0.0;
                                    let mut y = c - 1;
                                    for (k, pk) in p.iter().enumerate() {
                                        acc += pk;
                                        if u < acc {
                                            y = k;
                                            break;
                                        }
                                    }
                                    for k in 0..c {
                                        s[at(o, i, k)] = w * ((k == y) as u8 as f64 - p[k]);
                                    }
                                }
                            }
                        }
                    }
                    Task::Binary => {
                        let p = sigmoid(zi[0]);
                        match variant {
                            FisherVariant::True => s[at(0, i, 0)] = (p * (1.0 - p)).sqrt(),
                            FisherVariant::Empirical => s[at(0, i, 0)] = yi[0] - p,
                            FisherVariant::Mc { samples, .. } => {
                                let w = 1.0 / (*samples as f64).sqrt();
                                for o in 0..*samples {
                                    let y = (rng.uniform() < p) as u8 as f64;
                                    s[at(o, i, 0)] = w * (y - p);
                                }
                            }
                        }
                    }
                    Task::Regression { sigma2 } => {
                        let sd = sigma2.sqrt();
                        match variant {
                            FisherVariant::True => {
                                for k in 0..c {
                                    s[at(k, i, k)] = 1.0 / sd;
                                }
                            }
                            FisherVariant::Empirical => {
                                for k in 0..c {
                                    s[at(0, i, k)] =
                                        (yi[k.min(self.target_dim - 1)] - zi[k]) / sigma2;
                                }
                            }
                            FisherVariant::Mc { samples, .. } => {
                                let w = 1.0 / (*samples as f64).sqrt();
                                for o in 0..*samples {
                                    for k in 0..c {
                                        s[at(o, i, k)] = w * rng.normal() / sd;
                                    }
                                }
                            }
                        }
                    }
                },
            }
        }
        s
    }

    fn rng(target: &Target) -> Rng {
        match target {
            Target::Fim {
                variant: FisherVariant::Mc { seed, .. },
                ..
            } => Rng::new(*seed),
            _ => Rng::new(0),
        }
    }

    /// Runs `f(captures of the included layers, first example, batch size)`
    /// on every batch.
    pub fn for_each_batch(
        &self,
        target: &Target,
        mut f: impl FnMut(&[Capture<O::T>], usize, usize) -> OpsResult<()>,
    ) -> OpsResult<()> {
        let o = self.o;
        let mut rng = Self::rng(target);
        let mut start = 0;
        while start < self.n {
            let nb = self.batch.min(self.n - start);
            let (fwd, seed) = self.batch_pass(target, &mut rng, start, nb)?;
            let caps = self.net.backward(o, &fwd, &seed)?;
            let chosen: Vec<Capture<O::T>> = caps
                .into_iter()
                .filter(|cap| self.slots.contains(&cap.slot))
                .collect();
            f(&chosen, start, nb)?;
            start += nb;
        }
        Ok(())
    }

    /// Runs `f(k, capture, first example, batch size)` on each included
    /// layer's capture of every batch as the backward pass makes it, from
    /// the last layer back; `k` indexes [`Self::layer_infos`]. Unlike
    /// [`Self::for_each_batch`] no batch's captures are ever all held at
    /// once, nor the forward caches of layers already passed.
    pub fn for_each_capture(
        &self,
        target: &Target,
        mut f: impl FnMut(usize, Capture<O::T>, usize, usize) -> OpsResult<()>,
    ) -> OpsResult<()> {
        let order = self.ordered_slots();
        let mut rng = Self::rng(target);
        let mut start = 0;
        while start < self.n {
            let nb = self.batch.min(self.n - start);
            let (fwd, seed) = self.batch_pass(target, &mut rng, start, nb)?;
            self.net
                .backward_each(
                    self.o,
                    fwd,
                    &seed,
                    &mut |cap| match order.binary_search(&cap.slot) {
                        Ok(k) => f(k, cap, start, nb),
                        Err(_) => Ok(()),
                    },
                )?;
            start += nb;
        }
        Ok(())
    }

    /// The forward pass of the batch `start..start + nb` and its output
    /// seeds `[m, nb, C]` for `target`.
    fn batch_pass(
        &self,
        target: &Target,
        rng: &mut Rng,
        start: usize,
        nb: usize,
    ) -> OpsResult<(super::net::Forward<O::T>, O::T)> {
        let o = self.o;
        let c = self.net.outputs();
        let (m, _) = self.outputs_of(target);
        let xb = if nb == self.n {
            self.x.clone()
        } else {
            o.narrow(self.x, 0, start, nb)?
        };
        let fwd = self.net.forward(o, &xb, true)?;
        let z = o.download(&fwd.output)?;
        let seeds = self.seeds(target, &z, start, nb, rng);
        let seed = o.upload(&[m, nb, c], &seeds)?;
        Ok((fwd, seed))
    }

    fn dtype_bytes(&self) -> usize {
        match self.o.dtype() {
            crate::plan::Dtype::F32 => 4,
            crate::plan::Dtype::F64 => 8,
        }
    }

    pub(super) fn slot_of(&self, cap: &Capture<O::T>) -> &super::net::LayerSlot {
        &self.net.slots[cap.slot]
    }

    /// A block-diagonal representation with `kinds[k]` for the k-th included layer.
    pub fn fim_blocks(&self, target: &Target, kinds: &[BlockKind]) -> OpsResult<Fim> {
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
            let sym = |sum: &mut Option<GramSum<O::T>>, f: f64| -> OpsResult<Mat> {
                sum.take()
                    .ok_or_else(|| OpsError("no examples".into()))?
                    .into_host(o, f)
            };
            let block = match kinds[k] {
                // In the run's precision: the values the device summed.
                BlockKind::Dense => Block::Dense(
                    grams[k][0]
                        .take()
                        .ok_or_else(|| OpsError("no examples".into()))?
                        .into_matrix(o, 1.0 / n, o.dtype())?,
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
                    let a = sym(&mut grams[k][0], r / n)?;
                    let g = sym(&mut grams[k][1], 1.0 / (r * n * positions[k] as f64))?;
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
                o.upload(&[ug.rows, ug.cols], &ug.data)?,
                o.upload(&[ua.rows, ua.cols], &ua.data)?,
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
    /// Kept in the run's precision: a float32 run holds half the bytes.
    pub fn fim_dense(&self, target: &Target) -> OpsResult<Fim> {
        self.fim_dense_in(target, self.o.dtype())
    }

    /// [`Problem::fim_dense`] kept in the precision of `dtype`.
    pub fn fim_dense_in(&self, target: &Target, dtype: Dtype) -> OpsResult<Fim> {
        if let Target::Hessian { task, part } = target {
            return self.hessian_dense(task, *part);
        }
        const PANEL: usize = 2048;
        let o = self.o;
        let layers = self.layer_infos();
        let p: usize = layers.iter().map(|l| l.numel).sum();
        let mut acc = HostMatrix::zeros(p, p, dtype);
        let bounds: Vec<(usize, usize)> = (0..p)
            .step_by(PANEL)
            .map(|s| (s, PANEL.min(p - s)))
            .collect();
        self.for_each_batch(target, |caps, _, _| {
            let j = self.batch_jacobian(caps)?;
            for (a, &(sa, wa)) in bounds.iter().enumerate() {
                for &(sb, wb) in &bounds[a..] {
                    // Added straight from the device block (converted on the
                    // way); the lower triangle is filled once at the end.
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
                    write_host(o, &blk, &mut acc, at)?;
                }
            }
            Ok(())
        })?;
        let scale = 1.0 / self.n as f64;
        match &mut acc {
            HostMatrix::F64(m) => hostcopy::mirror_upper(&mut m.data, p, scale),
            HostMatrix::F32 { data, .. } => hostcopy::mirror_upper(data, p, scale),
        }
        Ok(Fim {
            layers,
            body: FimBody::Dense(acc),
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

    /// Each layer's part of `v` (the representation's order over
    /// `layers`) on the device, in its natural layout `[sg, sa]`.
    pub fn upload_natural(&self, layers: &[LayerInfo], v: &[f64]) -> OpsResult<Vec<O::T>> {
        layers
            .iter()
            .map(|l| {
                let nat = stats::from_flat_host(
                    &v[l.offset..l.offset + l.numel],
                    l.sg,
                    l.sa,
                    l.bias,
                    l.order,
                );
                self.o.upload(&[l.sg, l.sa], &nat)
            })
            .collect()
    }

    /// Mean loss and accuracy (classification) of the model on the examples.
    pub fn loss_accuracy(&self, mse: bool) -> OpsResult<(f64, Option<f64>)> {
        let (losses, correct) = self.per_example_loss(mse)?;
        let n = self.n as f64;
        let loss = losses.iter().sum::<f64>() / n;
        let right = correct.iter().filter(|&&c| c).count() as f64;
        Ok((loss, (!mse).then(|| right / n)))
    }

    /// Every example's loss and whether it is classified correctly.
    pub fn per_example_loss(&self, mse: bool) -> OpsResult<(Vec<f64>, Vec<bool>)> {
        let (mut losses, mut correct) = (Vec::with_capacity(self.n), Vec::with_capacity(self.n));
        self.each_example_loss(mse, |l, _, ok| {
            losses.push(l);
            correct.push(ok);
        })?;
        Ok((losses, correct))
    }

    /// `f(loss, ∂loss/∂outputs, correct)` for every example in order, from
    /// one forward pass per batch.
    pub fn each_example_loss(
        &self,
        mse: bool,
        mut f: impl FnMut(f64, Vec<f64>, bool),
    ) -> OpsResult<()> {
        let o = self.o;
        let c = self.net.outputs();
        let mut start = 0;
        while start < self.n {
            let nb = self.batch.min(self.n - start);
            let xb = o.narrow(self.x, 0, start, nb)?;
            let z = o.download(&self.net.forward(o, &xb, false)?.output)?;
            for i in 0..nb {
                let zi = &z[i * c..(i + 1) * c];
                let yi = &self.y[(start + i) * self.target_dim..(start + i + 1) * self.target_dim];
                let (l, g, ok) = example_loss(zi, yi, mse);
                f(l, g, ok);
            }
            start += nb;
        }
        Ok(())
    }

    /// Gradient of the mean loss (cross-entropy or PyTorch's MSE), flat.
    pub fn loss_gradient(&self, mse: bool) -> OpsResult<Vec<f64>> {
        Ok(self.loss_and_gradient(mse)?.1)
    }

    /// Mean loss and its gradient (flat), from one forward and one
    /// backward pass per batch, in evaluation mode.
    pub fn loss_and_gradient(&self, mse: bool) -> OpsResult<(f64, Vec<f64>)> {
        let (loss, g, _) = self.loss_gradient_in(mse, Phase::Eval)?;
        Ok((loss, g))
    }

    /// Mean loss and gradient of a training step: BatchNorm normalises
    /// with the statistics of each batch (PyTorch's `model.train()`), which
    /// are returned for the running averages.
    pub fn loss_gradient_in(
        &self,
        mse: bool,
        phase: Phase,
    ) -> OpsResult<(f64, Vec<f64>, Vec<BatchStats>)> {
        let o = self.o;
        let mut loss = 0.0;
        let c = self.net.outputs();
        let layers = self.layer_infos();
        let order = self.ordered_slots();
        let mut acc: Vec<Option<O::T>> = vec![None; layers.len()];
        let mut stats = Vec::new();
        let mut start = 0;
        while start < self.n {
            let nb = self.batch.min(self.n - start);
            let xb = o.narrow(self.x, 0, start, nb)?;
            let mut fwd = self.net.forward_in(o, &xb, true, phase)?;
            stats.append(&mut fwd.batch_stats);
            let z = o.download(&fwd.output)?;
            let mut s = vec![0.0; nb * c];
            for i in 0..nb {
                let zi = &z[i * c..(i + 1) * c];
                let yi = &self.y[(start + i) * self.target_dim..(start + i + 1) * self.target_dim];
                let (l, g, _) = example_loss(zi, yi, mse);
                loss += l;
                for k in 0..c {
                    s[i * c + k] = g[k] / self.n as f64;
                }
            }
            let seed = o.upload(&[1, nb, c], &s)?;
            // Streamed: each layer's share is reduced to its gradient as
            // the backward pass makes it, so no batch holds every layer's
            // per-example data at once.
            self.net.gradient_each(o, fwd, &seed, &mut |slot, t| {
                let Ok(k) = order.binary_search(&slot) else {
                    return Ok(());
                };
                acc[k] = Some(match acc[k].take() {
                    Some(a) => o.add(&a, &t)?,
                    None => t,
                });
                Ok(())
            })?;
            start += nb;
        }
        let mut out = Vec::new();
        for (k, l) in layers.iter().enumerate() {
            let nat = o.download(acc[k].as_ref().unwrap())?;
            out.extend(stats::to_flat_host(&nat, l.sg, l.sa, l.bias, l.order));
        }
        Ok((loss / self.n as f64, out, stats))
    }
}
