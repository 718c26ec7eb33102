//! Representations sharded over data in the executor: a part task
//! computes one part and writes it; the process that owns the step reduces
//! the parts it finds in the run folder's `parts/STEP`, or, without that
//! folder, computes them itself one after another (see
//! [`crate::plan::parts`] and [`crate::geometry::parts`]).

use super::part_file::{self, Expect};
use super::*;
use crate::geometry::parts::{self, FimShape, Part};
use crate::plan::parts::{self as plan_parts, PartRequest, Stage};
use std::path::PathBuf;

/// A top-level sharded step: where its parts are and what they must be.
pub(super) struct PartsAt {
    pub step: StepId,
    pub plan_hash: String,
    pub stages: Vec<Stage>,
    /// Set in a part task.
    pub request: Option<PartRequest>,
}

impl PartsAt {
    /// For a top-level step with `sharded(k)` (hook steps shard in-process).
    pub fn of(plan: &Plan, step: &Step) -> Option<PartsAt> {
        if step.hook.is_some() {
            return None;
        }
        let sh = plan_parts::of_step(step)?;
        Some(PartsAt {
            step: step.id,
            // The plan without the part request: what every task runs.
            plan_hash: plan.hash(),
            stages: sh.stages,
            request: plan_parts::request_of(step),
        })
    }
}

/// What a sharded builder gives: the whole representation, or, in a part
/// task, nothing (the part went to its file).
pub(super) enum Built<T> {
    Whole(T),
    PartWritten,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl<O: Ops> Engine<O> {
    fn parts_dir(&self, at: &PartsAt) -> PathBuf {
        plan_parts::step_dir(&plan_parts::run_root(&self.ctx.out_dir), at.step)
    }

    fn stage_of(at: &PartsAt, stage: usize) -> Result<&Stage, String> {
        at.stages
            .get(stage.wrapping_sub(1))
            .ok_or_else(|| format!("step #{} has no stage {stage}", at.step.0))
    }

    fn part_path(&self, at: &PartsAt, stage: &Stage, j: usize) -> PathBuf {
        let run = plan_parts::run_root(&self.ctx.out_dir);
        plan_parts::part_file(&run, at.step, stage.name, j, stage.parts)
    }

    /// Every part of stage `stage`, read from the run folder; refuses,
    /// naming them, when some are missing.
    fn read_stage(&self, at: &PartsAt, stage: usize) -> Result<Vec<Part>, String> {
        let st = Self::stage_of(at, stage)?;
        let paths: Vec<PathBuf> = (0..st.parts).map(|j| self.part_path(at, st, j)).collect();
        let missing: Vec<usize> = (0..st.parts).filter(|&j| !paths[j].exists()).collect();
        if !missing.is_empty() {
            return Err(format!(
                "`{}` lacks part(s) {} of the {} of stage `{}` of this sharded step; `nngeo exec PLAN --part {}:{}/J/{} --out {}` computes part J (the step reduces only complete stages)",
                self.parts_dir(at).display(),
                parts::list(&missing),
                st.parts,
                st.name,
                at.step.0,
                st.name,
                st.parts,
                plan_parts::run_root(&self.ctx.out_dir).display()
            ));
        }
        paths
            .iter()
            .enumerate()
            .map(|(j, path)| {
                part_file::read(
                    path,
                    &Expect {
                        plan: &at.plan_hash,
                        step: at.step.0,
                        stage: st.name,
                        index: j,
                        count: st.parts,
                    },
                )
            })
            .collect()
    }

    fn write_part(&self, at: &PartsAt, stage: usize, part: &Part) -> Result<(), String> {
        let st = Self::stage_of(at, stage)?;
        let path = self.part_path(at, st, part.index);
        part_file::write(
            &path,
            &Expect {
                plan: &at.plan_hash,
                step: at.step.0,
                stage: st.name,
                index: part.index,
                count: st.parts,
            },
            part,
        )?;
        eprintln!(
            "part {} of {} of stage `{}` of step #{} written to {}",
            part.index,
            st.parts,
            st.name,
            at.step.0,
            path.display()
        );
        Ok(())
    }

    /// Whether this step's parts come from the run folder.
    fn parts_on_disk(&self, at: Option<&PartsAt>) -> bool {
        at.is_some_and(|a| self.parts_dir(a).is_dir())
    }

    /// A Fisher, sharded when `shards` is set: computed or reduced here, or
    /// (part task) one part written.
    pub(super) fn fim_full(
        &self,
        p: &Problem<'_, O>,
        target: &Target,
        shape: FimShape,
        shards: Option<usize>,
        at: Option<&PartsAt>,
    ) -> Result<Built<Fim>, String> {
        let Some(k) = shards else {
            return Ok(Built::Whole(
                match &shape {
                    FimShape::Dense => p.fim_dense(target),
                    FimShape::Blocks(kinds) => p.fim_blocks(target, kinds),
                }
                .map_err(err)?,
            ));
        };
        if let Some(at) = at {
            if let Some(req) = at.request {
                let part = match req.stage {
                    1 => parts::fim_part(p, target, &shape, req.index, k).map_err(err)?,
                    _ => {
                        let first = self.read_stage(at, 1)?;
                        let f = parts::reduce_fim(p, &shape, &first, k).map_err(err)?;
                        parts::diag_part(p, target, &shape, &f, req.index, k).map_err(err)?
                    }
                };
                self.write_part(at, req.stage, &part)?;
                return Ok(Built::PartWritten);
            }
        }
        if !self.parts_on_disk(at) {
            return Ok(Built::Whole(
                parts::fim_sharded(p, target, &shape, k).map_err(err)?,
            ));
        }
        let at = at.expect("from_files");
        let first = self.read_stage(at, 1)?;
        let mut f = parts::reduce_fim(p, &shape, &first, k).map_err(err)?;
        if shape.stages() == 2 {
            let second = self.read_stage(at, 2)?;
            parts::reduce_diagonals(&mut f, &shape, &second, k).map_err(err)?;
        }
        Ok(Built::Whole(f))
    }

    /// The dense NTK, sharded into row blocks when `shards` is set.
    pub(super) fn ntk_full(
        &self,
        p: &Problem<'_, O>,
        shards: Option<usize>,
        at: Option<&PartsAt>,
        keep: Keep,
    ) -> Result<Built<Stored>, String> {
        let Some(k) = shards else {
            return Ok(Built::Whole(p.ntk_dense_in(false, keep).map_err(err)?));
        };
        if let Some(req) = at.and_then(|a| a.request) {
            let at = at.expect("a request comes with its step");
            let part = parts::kernel_part(p, k, req.index).map_err(err)?;
            self.write_part(at, 1, &part)?;
            return Ok(Built::PartWritten);
        }
        if !self.parts_on_disk(at) {
            return Ok(Built::Whole(Stored::from(
                parts::ntk_sharded(p, k).map_err(err)?,
            )));
        }
        let blocks = self.read_stage(at.expect("from_files"), 1)?;
        Ok(Built::Whole(Stored::from(
            parts::reduce_kernel(p.net.outputs(), p.n, &blocks, k).map_err(err)?,
        )))
    }

    /// The gradient of the mean loss, sharded into `k` example ranges
    /// when `shards` is set: computed or reduced here, or (part task) one
    /// part written.
    pub(super) fn grad_full(
        &self,
        p: &Problem<'_, O>,
        mse: bool,
        shards: Option<usize>,
        at: Option<&PartsAt>,
    ) -> Result<Built<Vec<f64>>, String> {
        let Some(k) = shards else {
            return Ok(Built::Whole(p.loss_gradient(mse).map_err(err)?));
        };
        if let Some(req) = at.and_then(|a| a.request) {
            let at = at.expect("a request comes with its step");
            let part = parts::loss_gradient_part(p, mse, req.index, k).map_err(err)?;
            self.write_part(at, 1, &part)?;
            return Ok(Built::PartWritten);
        }
        if !self.parts_on_disk(at) {
            return Ok(Built::Whole(
                parts::loss_gradient_sharded(p, mse, k).map_err(err)?,
            ));
        }
        let sums = self.read_stage(at.expect("from_files"), 1)?;
        Ok(Built::Whole(
            parts::reduce_vector(p.n, &sums, k).map_err(err)?,
        ))
    }
}
