//! The natural gradient's preconditioner in training: running averages
//! of the Fisher's statistics (for EKFAC, of the KFAC factors its bases
//! come from) over the mini-batches of refresh and refit steps.

use crate::geometry::build::{to_eigenbases, BlockKind, Problem, Target};
use crate::geometry::ops::Ops;
use crate::geometry::repr::{Block, Fim, FimBody};
use crate::linalg::Stored;
use crate::plan::{FisherVariant, Structure, Task};

/// The natural gradient's curvature: running averages of the Fisher's
/// statistics on the mini-batches seen at refresh (and refit) steps.
pub(super) struct Preconditioner {
    pub fim: Fim,
    /// EKFAC: the running KFAC factors its eigenbases come from.
    factors: Option<Vec<Block>>,
}

/// `run = decay · run + (1 − decay) · new`, entry by entry.
fn blend(run: &mut [f64], new: &[f64], decay: f64) {
    run.iter_mut()
        .zip(new)
        .for_each(|(r, x)| *r = decay * *r + (1.0 - decay) * x);
}

/// [`blend`] of stored matrices: where both are on the device, there.
fn blend_stored(run: &mut Stored, new: &Stored, decay: f64) -> Result<(), String> {
    run.combine_in_place(new, decay, 1.0 - decay)
        .map_err(|e| e.to_string())
}

fn blend_block(run: &mut Block, new: &Block, decay: f64) -> Result<(), String> {
    match (run, new) {
        (Block::Dense(r), Block::Dense(x)) => blend_stored(r, x, decay)?,
        (Block::Diag(r), Block::Diag(x)) => blend(r, x, decay),
        (Block::Kfac { a, g }, Block::Kfac { a: xa, g: xg }) => {
            blend_stored(a, xa, decay)?;
            blend_stored(g, xg, decay)?;
        }
        (Block::Ekfac { d, .. }, Block::Ekfac { d: xd, .. }) => blend(&mut d.data, &xd.data, decay),
        _ => return Err("running averages of different structures".into()),
    }
    Ok(())
}

fn blend_fim(run: &mut Fim, new: &Fim, decay: f64) -> Result<(), String> {
    match (&mut run.body, &new.body) {
        (FimBody::Dense(r), FimBody::Dense(x)) => blend_stored(r, x, decay)?,
        (FimBody::Blocks(r), FimBody::Blocks(x)) => {
            for (rb, xb) in r.iter_mut().zip(x) {
                blend_block(rb, xb, decay)?;
            }
        }
        _ => return Err("running averages of different structures".into()),
    }
    Ok(())
}

/// The Fisher the natural gradient uses, for the model's loss. The MSE loss
/// is averaged over the C outputs (PyTorch's), whose Hessian in the outputs
/// is (2/C)·I: the Gaussian Fisher with σ² = C/2 is exactly its Gauss–Newton
/// matrix, so `lr = 1` is a full Gauss–Newton step for either loss.
pub(super) fn ngd_target(fisher: &FisherVariant, mse: bool, outputs: usize) -> Target {
    let task = if mse {
        Task::Regression {
            sigma2: outputs as f64 / 2.0,
        }
    } else if outputs == 1 {
        Task::Binary
    } else {
        Task::Classification
    };
    Target::Fim {
        variant: fisher.clone(),
        task,
    }
}

impl Preconditioner {
    /// Updates the statistics from the mini-batch `p` at optimiser step
    /// `step`: everything at refresh steps (new eigenbases for EKFAC), only
    /// EKFAC's diagonal at its refit steps. Says whether anything changed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn update<O: Ops>(
        this: &mut Option<Self>,
        p: &Problem<O>,
        structure: &Structure,
        target: &Target,
        step: u64,
        refresh: u64,
        refit: Option<u64>,
        decay: f64,
    ) -> Result<bool, String> {
        let e = |e: crate::geometry::ops::OpsError| e.to_string();
        let is_refresh = this.is_none() || step.is_multiple_of(refresh.max(1));
        let ekfac = structure.has_ekfac();
        if !is_refresh {
            // Between refreshes only EKFAC refits its diagonal, in the
            // current basis, from the current mini-batch.
            let (Some(pre), Some(t)) = (this.as_mut(), refit) else {
                return Ok(false);
            };
            if !ekfac || !step.is_multiple_of(t.max(1)) {
                return Ok(false);
            }
            let FimBody::Blocks(blocks) = &pre.fim.body else {
                return Err("EKFAC is block-diagonal".into());
            };
            let mut fresh = blocks.clone();
            // EKFAC's blocks (a mix may give others their own structure).
            let which: Vec<usize> = (0..fresh.len())
                .filter(|&i| matches!(fresh[i], Block::Ekfac { .. }))
                .collect();
            p.refit(target, &pre.fim.layers, &mut fresh, &which, None)
                .map_err(e)?;
            if let FimBody::Blocks(blocks) = &mut pre.fim.body {
                for (r, x) in blocks.iter_mut().zip(&fresh) {
                    blend_block(r, x, decay)?;
                }
            }
            return Ok(true);
        }
        let slots = p.ordered_slots();
        let kinds = |s: &Structure| -> Result<Vec<BlockKind>, String> {
            slots
                .iter()
                .map(|&k| {
                    let layer = &p.net.spec.layers[p.net.slots[k].index];
                    BlockKind::for_structure(s, &layer.name, layer.layer.family())
                })
                .collect()
        };
        if ekfac {
            // Running KFAC factors, then their eigenbases, then the
            // diagonal refitted from this mini-batch in the new basis (a
            // mix's other blocks are running averages of their own).
            let kinds = kinds(structure)?;
            let which: Vec<usize> = (0..kinds.len())
                .filter(|&i| matches!(kinds[i], BlockKind::Ekfac { .. }))
                .collect();
            let factor_kinds: Vec<BlockKind> = kinds
                .iter()
                .map(|k| match k {
                    BlockKind::Ekfac { .. } => BlockKind::Kfac,
                    k => *k,
                })
                .collect();
            let kfac = p.fim_blocks(target, &factor_kinds).map_err(e)?;
            let FimBody::Blocks(new) = kfac.body else {
                return Err("KFAC is block-diagonal".into());
            };
            let factors = match this.take().and_then(|pre| pre.factors) {
                Some(mut run) => {
                    for (r, x) in run.iter_mut().zip(&new) {
                        blend_block(r, x, decay)?;
                    }
                    run
                }
                None => new,
            };
            let mut blocks = factors.clone();
            to_eigenbases(p.o, &mut blocks, &which).map_err(e)?;
            p.refit(target, &kfac.layers, &mut blocks, &which, None)
                .map_err(e)?;
            *this = Some(Preconditioner {
                fim: Fim {
                    layers: kfac.layers,
                    body: FimBody::Blocks(blocks),
                    n: p.n,
                    refit: true,
                },
                factors: Some(factors),
            });
            return Ok(true);
        }
        let fresh = match structure {
            Structure::Dense => p.fim_dense(target).map_err(e)?,
            s => p.fim_blocks(target, &kinds(s)?).map_err(e)?,
        };
        match this {
            Some(pre) => blend_fim(&mut pre.fim, &fresh, decay)?,
            None => {
                *this = Some(Preconditioner {
                    fim: fresh,
                    factors: None,
                })
            }
        }
        Ok(true)
    }
}
