//! Geometry sharded over data: statistics that are sums over examples,
//! computed over contiguous example ranges ("parts") and reduced exactly.
//!
//! A part is the representation's builder run on the examples
//! `start..end` only, so it is that range's own mean (normalised by its
//! `n_j` examples). The reduce adds the parts in part order, each weighted
//! by `n_j / n`: `Σ_j (n_j/n) · (1/n_j) Σ_{i∈j} x_i = (1/n) Σ_i x_i`. With one
//! part the weight is exactly 1 and the result is bit for bit the unsharded
//! one; with more, only the association of the sum changes (≤ 1e-12
//! relative in f64, a few ulps in practice).
//!
//! - Dense / BlockDiag / Diag / QuasiDiag Fisher, KFAC factors `A` and `G`
//!   (each factor is a mean over examples, so each is averaged on its
//!   own): one stage of `k` parts.
//! - EKFAC: stage 1 is KFAC's factors; the reduce takes the eigenbases of
//!   the reduced factors; stage 2 refits the diagonal in those bases over
//!   each range, and its reduce replaces the diagonal. Each stage-2 part
//!   carries a fingerprint of the bases it used: parts made against other
//!   bases are refused.
//! - NTK (Dense): row blocks `K[I_i, I_j]` for range pairs `j ≥ i`
//!   (`k(k+1)/2` parts), assembled with their mirror images.
//! - The implicit mv and the loss gradient: `k` parts, reduced the same way.
//!
//! Monte-Carlo Fishers draw their samples from one stream over the
//! examples, which a part cannot reproduce: they are refused.

use super::build::{factors_to_device, to_eigenbases, BlockKind, Problem, Target};
use super::ops::{Ops, OpsError};
use super::repr::{Block, Fim, FimBody};
use crate::linalg::{HostMatrix, Mat, Stored};
use crate::plan::{Dtype, FisherVariant};

/// A part's payload.
#[derive(Clone, Debug, PartialEq)]
pub enum PartData {
    /// A Fisher body over the part's examples (EKFAC's stage 1 holds KFAC
    /// blocks).
    Fim(FimBody),
    /// EKFAC's stage 2: the refitted diagonal `[sg, sa]` of each refitted
    /// layer, in layer order.
    Diagonals(Vec<Mat>),
    /// The kernel block `K[rows, cols]`, `[C·n_rows, C·n_cols]` with rows
    /// `c·n_rows + i`.
    Kernel(Mat),
    Vector(Vec<f64>),
}

/// Part `index` of `count` of one stage of a sharded representation.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub index: usize,
    pub count: usize,
    /// Example range of the rows (and of everything but a kernel block).
    pub rows: (usize, usize),
    /// Example range of a kernel block's columns.
    pub cols: Option<(usize, usize)>,
    /// Stage 2: fingerprint of the eigenbases the part was refitted in.
    pub basis: Option<String>,
    pub data: PartData,
}

#[derive(Debug, thiserror::Error)]
pub enum PartsError {
    #[error("{0}")]
    Ops(#[from] OpsError),
    #[error("cannot split {n} example(s) into {k} part(s): 1 ≤ k ≤ n")]
    Count { n: usize, k: usize },
    #[error("part {index} of {count} does not exist")]
    NoSuchPart { index: usize, count: usize },
    #[error("missing part(s) {} of {count}", list(missing))]
    Missing { missing: Vec<usize>, count: usize },
    #[error("parts do not fit together: {0}")]
    Mismatch(String),
    #[error("{0}")]
    Unsupported(String),
}

type R<T> = Result<T, PartsError>;

/// `0, 2-4, 7`: a short list of indices.
pub fn list(ix: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ix.len() {
        let mut j = i;
        while j + 1 < ix.len() && ix[j + 1] == ix[j] + 1 {
            j += 1;
        }
        out.push(if j > i {
            format!("{}-{}", ix[i], ix[j])
        } else {
            ix[i].to_string()
        });
        i = j + 1;
    }
    out.join(", ")
}

/// The `k` contiguous example ranges of `n` examples, sizes differing by
/// at most one.
pub fn ranges(n: usize, k: usize) -> R<Vec<(usize, usize)>> {
    if k == 0 || k > n {
        return Err(PartsError::Count { n, k });
    }
    Ok((0..k).map(|j| (j * n / k, (j + 1) * n / k)).collect())
}

/// The range pairs `(i, j)`, `j ≥ i`, of a kernel split into `k` ranges,
/// row by row: part `t` is the `t`-th pair.
pub fn kernel_pairs(k: usize) -> Vec<(usize, usize)> {
    (0..k).flat_map(|i| (i..k).map(move |j| (i, j))).collect()
}

/// Whether a Fisher target can be sharded.
pub fn shardable(target: &Target) -> R<()> {
    match target {
        Target::Fim {
            variant: FisherVariant::Mc { .. },
            ..
        } => Err(PartsError::Unsupported(
            "a Monte-Carlo Fisher draws its samples from one stream over all examples and cannot be sharded".into(),
        )),
        _ => Ok(()),
    }
}

/// Runs `f` on the problem restricted to the examples `start..end`.
pub fn on_range<O: Ops, T>(
    p: &Problem<'_, O>,
    (start, end): (usize, usize),
    f: impl FnOnce(&Problem<'_, O>) -> Result<T, OpsError>,
) -> R<T> {
    on_ranges(p, &[(start, end)], f)
}

/// Runs `f` on the problem restricted to the examples of `rs`, in order.
fn on_ranges<O: Ops, T>(
    p: &Problem<'_, O>,
    rs: &[(usize, usize)],
    f: impl FnOnce(&Problem<'_, O>) -> Result<T, OpsError>,
) -> R<T> {
    let o = p.o;
    let td = p.target_dim;
    let xs = rs
        .iter()
        .map(|&(s, e)| o.narrow(p.x, 0, s, e - s))
        .collect::<Result<Vec<_>, _>>()?;
    let x = if xs.len() == 1 {
        xs.into_iter().next().expect("one range")
    } else {
        o.cat(&xs, 0)?
    };
    let y: Vec<f64> = rs
        .iter()
        .flat_map(|&(s, e)| p.y[s * td..e * td].iter().copied())
        .collect();
    let n = rs.iter().map(|(s, e)| e - s).sum();
    let sub = Problem {
        o,
        net: p.net,
        x: &x,
        y: &y,
        target_dim: td,
        n,
        slots: p.slots.clone(),
        batch: p.batch.min(n.max(1)),
    };
    Ok(f(&sub)?)
}

/// How a sharded Fisher is built: densely, or block by block.
#[derive(Clone, Debug, PartialEq)]
pub enum FimShape {
    Dense,
    Blocks(Vec<BlockKind>),
}

impl FimShape {
    /// Layers whose EKFAC diagonal is refitted (stage 2).
    pub fn refitted(&self) -> Vec<usize> {
        match self {
            FimShape::Dense => vec![],
            FimShape::Blocks(kinds) => kinds
                .iter()
                .enumerate()
                .filter(|(_, k)| matches!(k, BlockKind::Ekfac { refit: true }))
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// Number of stages: 2 when a diagonal is refitted.
    pub fn stages(&self) -> usize {
        if self.refitted().is_empty() {
            1
        } else {
            2
        }
    }
}

/// Stage 1, part `j` of `k`: the Fisher over range `j` (EKFAC layers as
/// their KFAC factors).
pub fn fim_part<O: Ops>(
    p: &Problem<'_, O>,
    target: &Target,
    shape: &FimShape,
    j: usize,
    k: usize,
) -> R<Part> {
    shardable(target)?;
    let rs = ranges(p.n, k)?;
    let rows = *rs
        .get(j)
        .ok_or(PartsError::NoSuchPart { index: j, count: k })?;
    let body = on_range(p, rows, |sub| match shape {
        FimShape::Dense => Ok(sub.fim_dense(target)?.body),
        FimShape::Blocks(kinds) => {
            let first: Vec<BlockKind> = kinds
                .iter()
                .map(|b| match b {
                    BlockKind::Ekfac { .. } => BlockKind::Kfac,
                    other => *other,
                })
                .collect();
            Ok(sub.fim_blocks(target, &first)?.body)
        }
    })?;
    Ok(Part {
        index: j,
        count: k,
        rows,
        cols: None,
        basis: None,
        data: PartData::Fim(body),
    })
}

/// Checks that `parts` are exactly parts `0..k` of `k`, in order, over
/// `ranges(n, k)`; names the missing ones.
fn complete(parts: &[Part], n: usize, k: usize) -> R<Vec<&Part>> {
    let rs = ranges(n, k)?;
    let by = present(parts, k)?;
    for (j, part) in by.iter().enumerate() {
        if part.rows != rs[j] {
            return Err(PartsError::Mismatch(format!(
                "part {j} covers examples {}..{}, expected {}..{}",
                part.rows.0, part.rows.1, rs[j].0, rs[j].1
            )));
        }
    }
    Ok(by)
}

/// Parts `0..k` of `k`, each once, in order; names the missing ones.
fn present(parts: &[Part], k: usize) -> R<Vec<&Part>> {
    let mut by: Vec<Option<&Part>> = vec![None; k];
    for part in parts {
        if part.count != k {
            return Err(PartsError::Mismatch(format!(
                "part {} is one of {}, not of {k}",
                part.index, part.count
            )));
        }
        let slot = by.get_mut(part.index).ok_or(PartsError::NoSuchPart {
            index: part.index,
            count: k,
        })?;
        if slot.is_some() {
            return Err(PartsError::Mismatch(format!(
                "part {} appears twice",
                part.index
            )));
        }
        *slot = Some(part);
    }
    let missing: Vec<usize> = (0..k).filter(|&j| by[j].is_none()).collect();
    if !missing.is_empty() {
        return Err(PartsError::Missing { missing, count: k });
    }
    Ok(by.into_iter().flatten().collect())
}

fn axpy(acc: &mut [f64], w: f64, x: &[f64]) -> R<()> {
    if acc.len() != x.len() {
        return Err(PartsError::Mismatch(format!(
            "{} entries against {}",
            x.len(),
            acc.len()
        )));
    }
    acc.iter_mut().zip(x).for_each(|(a, b)| *a += w * b);
    Ok(())
}

fn axpy_mat(acc: &mut Mat, w: f64, x: &Mat) -> R<()> {
    if (acc.rows, acc.cols) != (x.rows, x.cols) {
        return Err(PartsError::Mismatch(format!(
            "a {}×{} matrix against {}×{}",
            x.rows, x.cols, acc.rows, acc.cols
        )));
    }
    axpy(&mut acc.data, w, &x.data)
}

/// `acc += w · x` on host matrices of the same shape, in `acc`'s precision.
fn axpy_host(acc: &mut HostMatrix, w: f64, x: &HostMatrix) -> R<()> {
    if (acc.rows(), acc.cols()) != (x.rows(), x.cols()) {
        return Err(PartsError::Mismatch(format!(
            "a {}×{} matrix against {}×{}",
            x.rows(),
            x.cols(),
            acc.rows(),
            acc.cols()
        )));
    }
    acc.zip_in_place(x, |a, b| a + w * b);
    Ok(())
}

/// [`axpy_host`] on the host (a device-held operand comes there once).
fn axpy_stored(acc: &mut Stored, w: f64, x: &Stored) -> R<()> {
    let err = |e: crate::linalg::LinalgError| PartsError::Ops(OpsError(e.to_string()));
    axpy_host(acc.host_mut().map_err(err)?, w, &*x.host().map_err(err)?)
}

fn zero_like(b: &FimBody) -> R<FimBody> {
    let z = |m: &Mat| Mat::zeros(m.rows, m.cols);
    Ok(match b {
        // Parts are summed in f64 (as the plan counts a sharded result).
        FimBody::Dense(m) => FimBody::Dense(Stored::zeros(m.rows(), m.cols(), Dtype::F64)),
        FimBody::Blocks(bs) => FimBody::Blocks(
            bs.iter()
                .map(|b| match b {
                    Block::Dense(m) => {
                        Ok(Block::Dense(Stored::zeros(m.rows(), m.cols(), Dtype::F64)))
                    }
                    Block::Diag(d) => Ok(Block::Diag(vec![0.0; d.len()])),
                    Block::Kfac { a, g } => Ok(Block::Kfac {
                        a: Stored::zeros(a.rows(), a.cols(), Dtype::F64),
                        g: Stored::zeros(g.rows(), g.cols(), Dtype::F64),
                    }),
                    Block::QuasiDiag { diag, cross } => Ok(Block::QuasiDiag {
                        diag: vec![0.0; diag.len()],
                        cross: z(cross),
                    }),
                    Block::Ekfac { .. } => Err(PartsError::Unsupported(
                        "an EKFAC block is not a sum over examples (its factors are)".into(),
                    )),
                })
                .collect::<R<Vec<_>>>()?,
        ),
        FimBody::LowRank(_) => {
            return Err(PartsError::Unsupported(
                "a low-rank Fisher is not a sum over examples".into(),
            ))
        }
    })
}

fn axpy_body(acc: &mut FimBody, w: f64, x: &FimBody) -> R<()> {
    match (acc, x) {
        (FimBody::Dense(a), FimBody::Dense(b)) => axpy_stored(a, w, b),
        (FimBody::Blocks(a), FimBody::Blocks(b)) if a.len() == b.len() => {
            for (a, b) in a.iter_mut().zip(b) {
                match (a, b) {
                    (Block::Dense(a), Block::Dense(b)) => axpy_stored(a, w, b)?,
                    (Block::Diag(a), Block::Diag(b)) => axpy(a, w, b)?,
                    (Block::Kfac { a, g }, Block::Kfac { a: pa, g: pg }) => {
                        axpy_stored(a, w, pa)?;
                        axpy_stored(g, w, pg)?;
                    }
                    (Block::QuasiDiag { diag, cross }, Block::QuasiDiag { diag: d, cross: c }) => {
                        axpy(diag, w, d)?;
                        axpy_mat(cross, w, c)?;
                    }
                    _ => return Err(PartsError::Mismatch("blocks of different kinds".into())),
                }
            }
            Ok(())
        }
        _ => Err(PartsError::Mismatch(
            "representations of different structures".into(),
        )),
    }
}

/// `Σ_j (n_j / n) · part_j`, in part order.
fn weighted<'p, T>(
    parts: &[&'p Part],
    n: usize,
    zero: impl FnOnce(&'p PartData) -> R<T>,
    mut add: impl FnMut(&mut T, f64, &'p PartData) -> R<()>,
) -> R<T> {
    let first = parts.first().ok_or(PartsError::Missing {
        missing: vec![0],
        count: 0,
    })?;
    let mut acc = zero(&first.data)?;
    for part in parts {
        let w = (part.rows.1 - part.rows.0) as f64 / n as f64;
        add(&mut acc, w, &part.data)?;
    }
    Ok(acc)
}

/// Stage 1's reduce: the Fisher over all `n` examples, EKFAC layers with
/// the eigenbases of their reduced factors (and the products of the
/// factors' eigenvalues until stage 2 refits them).
pub fn reduce_fim<O: Ops>(
    p: &Problem<'_, O>,
    shape: &FimShape,
    parts: &[Part],
    k: usize,
) -> R<Fim> {
    let parts = complete(parts, p.n, k)?;
    let mut body = weighted(
        &parts,
        p.n,
        |d| match d {
            PartData::Fim(b) => zero_like(b),
            _ => Err(PartsError::Mismatch("not a Fisher part".into())),
        },
        |acc, w, d| match d {
            PartData::Fim(b) => axpy_body(acc, w, b),
            _ => Err(PartsError::Mismatch("not a Fisher part".into())),
        },
    )?;
    let layers = p.layer_infos();
    if let (FimShape::Blocks(kinds), FimBody::Blocks(blocks)) = (shape, &mut body) {
        if kinds.len() != blocks.len() {
            return Err(PartsError::Mismatch(format!(
                "{} blocks for {} layers",
                blocks.len(),
                kinds.len()
            )));
        }
        let which: Vec<usize> = (kinds.iter().enumerate())
            .filter(|(_, kind)| matches!(kind, BlockKind::Ekfac { .. }))
            .map(|(k, _)| k)
            .collect();
        // The factors (summed on the host in f64) go where a whole build
        // keeps them, and are decomposed there.
        if p.o.holds_on_device() {
            factors_to_device(p.o, blocks)?;
        }
        to_eigenbases(p.o, blocks, &which)?;
    }
    Ok(Fim {
        layers,
        body,
        n: p.n,
        refit: !shape.refitted().is_empty(),
    })
}

/// SHA-256 of the eigenbases of the refitted layers: what stage 2's parts
/// must agree on.
pub fn basis_fingerprint(f: &Fim, which: &[usize]) -> R<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    if let FimBody::Blocks(blocks) = &f.body {
        for &k in which {
            if let Some(Block::Ekfac { ua, ug, .. }) = blocks.get(k) {
                for m in [ua, ug] {
                    // The values themselves (a held basis downloaded).
                    let m = m
                        .as_f64()
                        .map_err(|e| PartsError::Ops(OpsError(e.to_string())))?;
                    h.update((m.rows as u64).to_le_bytes());
                    h.update((m.cols as u64).to_le_bytes());
                    for x in &m.data {
                        h.update(x.to_le_bytes());
                    }
                }
            }
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Stage 2, part `j` of `k`: EKFAC's diagonals refitted over range `j` in
/// the bases of `f` (stage 1's reduce).
pub fn diag_part<O: Ops>(
    p: &Problem<'_, O>,
    target: &Target,
    shape: &FimShape,
    f: &Fim,
    j: usize,
    k: usize,
) -> R<Part> {
    shardable(target)?;
    let which = shape.refitted();
    let rs = ranges(p.n, k)?;
    let rows = *rs
        .get(j)
        .ok_or(PartsError::NoSuchPart { index: j, count: k })?;
    let FimBody::Blocks(blocks) = &f.body else {
        return Err(PartsError::Mismatch("EKFAC is block-diagonal".into()));
    };
    let mut blocks = blocks.clone();
    on_range(p, rows, |sub| {
        sub.refit(target, &f.layers, &mut blocks, &which, None)
    })?;
    let diags = which
        .iter()
        .map(|&l| match &blocks[l] {
            Block::Ekfac { d, .. } => Ok(d.clone()),
            _ => Err(PartsError::Mismatch(format!("layer {l} is not EKFAC"))),
        })
        .collect::<R<Vec<_>>>()?;
    Ok(Part {
        index: j,
        count: k,
        rows,
        cols: None,
        basis: Some(basis_fingerprint(f, &which)?),
        data: PartData::Diagonals(diags),
    })
}

/// Stage 2's reduce: replaces the diagonals of `f`'s refitted layers.
pub fn reduce_diagonals(f: &mut Fim, shape: &FimShape, parts: &[Part], k: usize) -> R<()> {
    let which = shape.refitted();
    let parts = complete(parts, f.n, k)?;
    let want = basis_fingerprint(f, &which)?;
    if let Some(bad) = parts.iter().find(|p| p.basis.as_deref() != Some(&want)) {
        return Err(PartsError::Mismatch(format!(
            "part {} of the diagonal was refitted in other eigenbases than those of the reduced factors",
            bad.index
        )));
    }
    let diags = weighted(
        &parts,
        f.n,
        |d| match d {
            PartData::Diagonals(ds) => Ok(ds.iter().map(|m| Mat::zeros(m.rows, m.cols)).collect()),
            _ => Err(PartsError::Mismatch("not an EKFAC diagonal part".into())),
        },
        |acc: &mut Vec<Mat>, w, d| match d {
            PartData::Diagonals(ds) if ds.len() == acc.len() => {
                for (a, x) in acc.iter_mut().zip(ds) {
                    axpy_mat(a, w, x)?;
                }
                Ok(())
            }
            _ => Err(PartsError::Mismatch("not an EKFAC diagonal part".into())),
        },
    )?;
    let FimBody::Blocks(blocks) = &mut f.body else {
        return Err(PartsError::Mismatch("EKFAC is block-diagonal".into()));
    };
    for (&l, dj) in which.iter().zip(diags) {
        if let Some(Block::Ekfac { d, .. }) = blocks.get_mut(l) {
            *d = dj;
        }
    }
    f.refit = true;
    Ok(())
}

/// A Fisher sharded into `k` parts, computed here one part after another
/// and reduced: the same as one process's [`Problem::fim_blocks`] /
/// [`Problem::fim_dense`] (see the module documentation).
pub fn fim_sharded<O: Ops>(
    p: &Problem<'_, O>,
    target: &Target,
    shape: &FimShape,
    k: usize,
) -> R<Fim> {
    let first = (0..k)
        .map(|j| fim_part(p, target, shape, j, k))
        .collect::<R<Vec<_>>>()?;
    let mut f = reduce_fim(p, shape, &first, k)?;
    if shape.stages() == 2 {
        let second = (0..k)
            .map(|j| diag_part(p, target, shape, &f, j, k))
            .collect::<R<Vec<_>>>()?;
        reduce_diagonals(&mut f, shape, &second, k)?;
    }
    Ok(f)
}

/// Part `t` of the kernel split into `k` ranges: the block
/// `K[I_i, I_j]` of pair `t` of [`kernel_pairs`].
pub fn kernel_part<O: Ops>(p: &Problem<'_, O>, k: usize, t: usize) -> R<Part> {
    let rs = ranges(p.n, k)?;
    let pairs = kernel_pairs(k);
    let count = pairs.len();
    let &(i, j) = pairs
        .get(t)
        .ok_or(PartsError::NoSuchPart { index: t, count })?;
    let c = p.net.outputs();
    let (ri, rj) = (rs[i], rs[j]);
    let (ni, nj) = (ri.1 - ri.0, rj.1 - rj.0);
    let block = if i == j {
        on_range(p, ri, |sub| sub.ntk_dense(false))?
    } else {
        // The kernel of both ranges together; its off-diagonal block.
        let both = on_ranges(p, &[ri, rj], |sub| sub.ntk_dense(false))?;
        let m = c * (ni + nj);
        let mut b = Mat::zeros(c * ni, c * nj);
        for a in 0..c {
            for r in 0..ni {
                let src = &both.data[(a * (ni + nj) + r) * m..][..m];
                for d in 0..c {
                    let dst = (a * ni + r) * b.cols + d * nj;
                    let from = d * (ni + nj) + ni;
                    b.data[dst..dst + nj].copy_from_slice(&src[from..from + nj]);
                }
            }
        }
        b
    };
    Ok(Part {
        index: t,
        count,
        rows: ri,
        cols: Some(rj),
        basis: None,
        data: PartData::Kernel(block),
    })
}

/// Assembles the kernel `[C·n, C·n]` (rows `c·n + i`) from its blocks and
/// their mirror images.
pub fn reduce_kernel(c: usize, n: usize, parts: &[Part], k: usize) -> R<Mat> {
    let rs = ranges(n, k)?;
    let pairs = kernel_pairs(k);
    let parts = present(parts, pairs.len())?;
    let m = c * n;
    let mut out = Mat::zeros(m, m);
    for (part, &(i, j)) in parts.iter().zip(&pairs) {
        let (ri, rj) = (rs[i], rs[j]);
        if part.rows != ri || part.cols != Some(rj) {
            return Err(PartsError::Mismatch(format!(
                "kernel part {} is not the block of example ranges {}..{} × {}..{}",
                part.index, ri.0, ri.1, rj.0, rj.1
            )));
        }
        let (ni, nj) = (ri.1 - ri.0, rj.1 - rj.0);
        let PartData::Kernel(b) = &part.data else {
            return Err(PartsError::Mismatch("not a kernel part".into()));
        };
        if (b.rows, b.cols) != (c * ni, c * nj) {
            return Err(PartsError::Mismatch(format!(
                "kernel part {} is {}×{}, expected {}×{}",
                part.index,
                b.rows,
                b.cols,
                c * ni,
                c * nj
            )));
        }
        for a in 0..c {
            for r in 0..ni {
                for d in 0..c {
                    for q in 0..nj {
                        let v = b.data[(a * ni + r) * b.cols + d * nj + q];
                        let (row, col) = (a * n + ri.0 + r, d * n + rj.0 + q);
                        out.data[row * m + col] = v;
                        out.data[col * m + row] = v;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The NTK `[C·n, C·n]` computed as `k(k+1)/2` row blocks and assembled.
pub fn ntk_sharded<O: Ops>(p: &Problem<'_, O>, k: usize) -> R<Mat> {
    let parts = (0..kernel_pairs(k).len())
        .map(|t| kernel_part(p, k, t))
        .collect::<R<Vec<_>>>()?;
    reduce_kernel(p.net.outputs(), p.n, &parts, k)
}

/// Part `j` of `k` of a vector that is a mean over examples.
fn vector_part<O: Ops>(
    p: &Problem<'_, O>,
    j: usize,
    k: usize,
    f: impl FnOnce(&Problem<'_, O>) -> Result<Vec<f64>, OpsError>,
) -> R<Part> {
    let rs = ranges(p.n, k)?;
    let rows = *rs
        .get(j)
        .ok_or(PartsError::NoSuchPart { index: j, count: k })?;
    Ok(Part {
        index: j,
        count: k,
        rows,
        cols: None,
        basis: None,
        data: PartData::Vector(on_range(p, rows, f)?),
    })
}

/// `Σ_j (n_j/n) v_j`.
pub fn reduce_vector(n: usize, parts: &[Part], k: usize) -> R<Vec<f64>> {
    let parts = complete(parts, n, k)?;
    weighted(
        &parts,
        n,
        |d| match d {
            PartData::Vector(v) => Ok(vec![0.0; v.len()]),
            _ => Err(PartsError::Mismatch("not a vector part".into())),
        },
        |acc, w, d| match d {
            PartData::Vector(v) => axpy(acc, w, v),
            _ => Err(PartsError::Mismatch("not a vector part".into())),
        },
    )
}

/// The implicit Fisher's `F v`, as `k` parts reduced.
pub fn implicit_mv_sharded<O: Ops>(
    p: &Problem<'_, O>,
    target: &Target,
    v: &[f64],
    k: usize,
) -> R<Vec<f64>> {
    shardable(target)?;
    let parts = (0..k)
        .map(|j| vector_part(p, j, k, |sub| sub.implicit_mv(target, v)))
        .collect::<R<Vec<_>>>()?;
    reduce_vector(p.n, &parts, k)
}

/// Part `j` of `k` of the gradient of the mean loss: the gradient of the
/// mean loss over range `j`.
pub fn loss_gradient_part<O: Ops>(p: &Problem<'_, O>, mse: bool, j: usize, k: usize) -> R<Part> {
    vector_part(p, j, k, |sub| sub.loss_gradient(mse))
}

/// The gradient of the mean loss, as `k` parts reduced.
pub fn loss_gradient_sharded<O: Ops>(p: &Problem<'_, O>, mse: bool, k: usize) -> R<Vec<f64>> {
    let parts = (0..k)
        .map(|j| loss_gradient_part(p, mse, j, k))
        .collect::<R<Vec<_>>>()?;
    reduce_vector(p.n, &parts, k)
}
