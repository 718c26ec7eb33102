//! Representations sharded over data (`Fim(EKFAC) of net on train
//! sharded(8)`): which steps are, their stages, and the part tasks that
//! compute them in separate processes (`nngeo exec PLAN --part
//! STEP[:STAGE]/J/K --out RUN`).
//!
//! A stage is a set of parts that can run at once; the next stage needs
//! every part of the one before. A Fisher that is a sum over examples has
//! one stage (`sums`); EKFAC with its refit two (`factors`, then
//! `diagonal` in the eigenbases of the reduced factors); the dense NTK one
//! (`kernel`, the `k(k+1)/2` row blocks `K[I_i, I_j]`, `j ≥ i`). Part `J`
//! of stage `S` of step `STEP` is written atomically to
//! `RUN/parts/STEP/S-J-of-K.safetensors`; the process that owns the step
//! (a shard, or the whole run) reduces the parts it finds there and
//! refuses when some are missing. Without a `parts/STEP` folder it
//! computes the parts itself, one after another. The implicit
//! representation has no stage: each of its products is computed over the
//! ranges in the process that measures it.

use super::{Object, Op, Plan, Step, StepId, Structure, VectorOp};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const PARTS_DIR: &str = "parts";

/// What a part task computes: part `index` of stage `stage` (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRequest {
    pub stage: usize,
    pub index: usize,
}

/// One stage of a sharded step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    pub name: &'static str,
    pub parts: usize,
}

/// A top-level step sharded over data, with its stages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharded {
    pub step: StepId,
    pub shards: usize,
    pub stages: Vec<Stage>,
}

/// Whether a structure refits an EKFAC diagonal somewhere.
fn refits(s: &Structure) -> bool {
    match s {
        Structure::Ekfac { refit, .. } => *refit,
        Structure::Mix { families, layers } => families.values().chain(layers.values()).any(refits),
        _ => false,
    }
}

/// The stages of a representation sharded into `k` ranges (none for the
/// implicit one, whose products are sharded where they are measured).
pub fn stages(object: Object, structure: &Structure, k: usize) -> Vec<Stage> {
    match (object, structure) {
        (Object::Ntk, _) => vec![Stage {
            name: "kernel",
            parts: k * (k + 1) / 2,
        }],
        (Object::Fim, Structure::Implicit) | (Object::Hessian, _) => vec![],
        (Object::Fim, s) if refits(s) => vec![
            Stage {
                name: "factors",
                parts: k,
            },
            Stage {
                name: "diagonal",
                parts: k,
            },
        ],
        (Object::Fim, _) => vec![Stage {
            name: "sums",
            parts: k,
        }],
    }
}

/// The step's sharding, if it is a representation with `sharded(k)` or a
/// gradient `grad(net, data sharded(k))` (one stage, `sums`).
pub fn of_step(step: &Step) -> Option<Sharded> {
    let (k, stages) = match &step.op {
        Op::Repr {
            object,
            structure,
            options,
            ..
        } => {
            let k = options.shards?;
            (k, stages(*object, structure, k))
        }
        Op::Vector {
            vector: VectorOp::Grad {
                shards: Some(k), ..
            },
            ..
        } => (
            *k,
            vec![Stage {
                name: "sums",
                parts: *k,
            }],
        ),
        _ => return None,
    };
    Some(Sharded {
        step: step.id,
        shards: k,
        stages,
    })
}

/// The part a part task asks of this step, if any.
pub fn request_of(step: &Step) -> Option<PartRequest> {
    match &step.op {
        Op::Repr { options, .. } => options.part,
        Op::Vector {
            vector: VectorOp::Grad { part, .. },
            ..
        } => *part,
        _ => None,
    }
}

/// The step as a part task runs it: asked for part `req` only.
pub fn with_request(step: &Step, req: PartRequest) -> Step {
    let mut task = step.clone();
    match &mut task.op {
        Op::Repr { options, .. } => options.part = Some(req),
        Op::Vector {
            vector: VectorOp::Grad { part, .. },
            ..
        } => *part = Some(req),
        _ => {}
    }
    task
}

/// `` `F` = Fim(EKFAC) `` or `` `g` = grad ``: how a sharded step is named.
pub fn describe(step: &Step) -> String {
    match &step.op {
        Op::Repr {
            name,
            object,
            structure,
            ..
        } => format!("`{name}` = {object:?}({})", structure.name()),
        Op::Vector { name, .. } => format!("`{name}` = grad"),
        _ => String::new(),
    }
}

/// Top-level sharded steps whose parts can run as separate tasks (inside
/// a training hook, a step's parts run in the training process).
pub fn sharded_steps(plan: &Plan) -> Vec<Sharded> {
    plan.steps
        .iter()
        .filter(|s| s.hook.is_none())
        .filter_map(of_step)
        .filter(|s| !s.stages.is_empty())
        .collect()
}

/// What one task of a stage costs, at most: the steps it recomputes (what
/// the sharded step depends on, training included), then its part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartCost {
    /// Examples the largest part of the stage is computed over (a kernel
    /// block off the diagonal: those of both its ranges).
    pub examples: usize,
    /// Estimated peak memory of the task's process.
    pub peak_memory: u64,
    /// FLOPs of everything the task runs.
    pub flops: u64,
}

/// The examples the sharded step is computed over.
fn examples_of(plan: &Plan, step: &Step) -> usize {
    match &step.op {
        Op::Repr { options, .. } => options.examples,
        Op::Vector {
            vector: VectorOp::Grad { data, .. },
            ..
        } => super::compile::data_info(&plan.steps, *data).map_or(0, |i| i.n),
        _ => 0,
    }
}

/// The estimate of one task of stage `stage` (1-based) of `sh`: the
/// step's own estimate ([`super::cost`]) made for the examples of its
/// largest part, after the steps it depends on.
pub fn part_cost(plan: &Plan, sh: &Sharded, stage: usize) -> PartCost {
    let step = plan.step(sh.step);
    let n = examples_of(plan, step);
    let k = sh.shards.max(1);
    let kernel = sh.stages.get(stage.wrapping_sub(1)).map(|s| s.name) == Some("kernel");
    // Ranges differ by at most one example; a kernel block off the
    // diagonal is computed from both its ranges together.
    let largest = n.div_ceil(k);
    let m = if kernel && k > 1 {
        (2 * largest).min(n)
    } else {
        largest
    };
    let mut part = match &step.op {
        Op::Repr { .. } => {
            let mut op = step.op.clone();
            if let Op::Repr { options, .. } = &mut op {
                options.examples = m;
                options.shards = None;
                options.part = None;
            }
            super::compile::estimate(&op, &plan.steps, plan.experiment.dtype)
        }
        // A gradient's FLOPs grow with its examples; what it holds is the
        // model and the dataset, which a part task loads whole.
        _ => super::cost::Cost {
            flops: (u128::from(step.cost.flops) * m as u128 / n.max(1) as u128) as u64,
            ..step.cost
        },
    };
    // EKFAC's diagonal stage first reads and reduces every factor part.
    if stage == 2 {
        part.peak = part
            .peak
            .saturating_add((k as u64 + 1).saturating_mul(part.memory));
    }
    let deps: std::collections::BTreeSet<u32> = step.deps.iter().map(|d| d.0).collect();
    let runs = super::shard::needed(plan, &deps);
    let flops = runs
        .iter()
        .map(|&i| plan.step(StepId(i)).cost.flops)
        .fold(part.flops, u64::saturating_add);
    PartCost {
        examples: m,
        peak_memory: plan.peak_memory_then(&runs, part),
        flops,
    }
}

/// `--part STEP[:STAGE]/J/K`, resolved against the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartSpec {
    pub step: StepId,
    pub stage: usize,
    pub index: usize,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PartError {
    #[error("`--part {given}`: expected STEP[:STAGE]/J/K (step id, stage name or number, part J of K), e.g. `--part 5/0/8` or `--part 5:diagonal/0/8`")]
    Syntax { given: String },
    #[error("`--part {given}`: step #{step} is not a top-level representation or gradient with `sharded(k)`{}", if list.is_empty() { String::from("; this plan has none") } else { format!("; sharded steps: {list}") })]
    NotSharded {
        given: String,
        step: u32,
        list: String,
    },
    #[error("`--part {given}`: step #{step} has stage(s) {list}, not `{stage}`")]
    NoStage {
        given: String,
        step: u32,
        stage: String,
        list: String,
    },
    #[error("`--part {given}`: stage `{stage}` of step #{step} has {parts} part(s), so J/K must be J/{parts} with 0 ≤ J < {parts}")]
    Count {
        given: String,
        step: u32,
        stage: String,
        parts: usize,
    },
}

/// Parses and checks `STEP[:STAGE]/J/K` against the plan.
pub fn parse(plan: &Plan, given: &str) -> Result<PartSpec, PartError> {
    let syntax = || PartError::Syntax {
        given: given.into(),
    };
    let mut it = given.split('/');
    let (Some(head), Some(j), Some(k), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(syntax());
    };
    let (step, stage) = head.split_once(':').unwrap_or((head, "1"));
    let step: u32 = step.trim().parse().map_err(|_| syntax())?;
    let j: usize = j.trim().parse().map_err(|_| syntax())?;
    let k: usize = k.trim().parse().map_err(|_| syntax())?;
    let all = sharded_steps(plan);
    let Some(sh) = all.iter().find(|s| s.step.0 == step) else {
        return Err(PartError::NotSharded {
            given: given.into(),
            step,
            list: all
                .iter()
                .map(|s| format!("#{}", s.step.0))
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let stage_ix = match stage.trim().parse::<usize>() {
        Ok(n) if (1..=sh.stages.len()).contains(&n) => Some(n),
        Ok(_) => None,
        Err(_) => sh
            .stages
            .iter()
            .position(|s| s.name == stage.trim())
            .map(|i| i + 1),
    };
    let Some(stage_ix) = stage_ix else {
        return Err(PartError::NoStage {
            given: given.into(),
            step,
            stage: stage.into(),
            list: stage_list(sh),
        });
    };
    let st = &sh.stages[stage_ix - 1];
    if k != st.parts || j >= k {
        return Err(PartError::Count {
            given: given.into(),
            step,
            stage: st.name.into(),
            parts: st.parts,
        });
    }
    Ok(PartSpec {
        step: StepId(step),
        stage: stage_ix,
        index: j,
        count: k,
    })
}

/// `1 = factors (8 parts), 2 = diagonal (8 parts)`.
pub fn stage_list(sh: &Sharded) -> String {
    sh.stages
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{} = {} ({} parts)", i + 1, s.name, s.parts))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The run folder a process writing into `out` belongs to: `RUN` for a
/// shard's folder `RUN/shards/I` and for a part task's scratch folder
/// `RUN/parts/STEP/.task-S-J`, else `out` itself.
pub fn run_root(out: &Path) -> PathBuf {
    let up = |p: &Path, n: usize| -> Option<PathBuf> {
        let mut p = p;
        for _ in 0..n {
            p = p.parent()?;
        }
        Some(p.to_path_buf())
    };
    let named = |p: Option<PathBuf>, name: &str| {
        p.is_some_and(|p| p.file_name().is_some_and(|n| n == name))
    };
    if named(up(out, 1), "shards") {
        if let Some(r) = up(out, 2) {
            return r;
        }
    }
    if named(up(out, 2), PARTS_DIR) {
        if let Some(r) = up(out, 3) {
            return r;
        }
    }
    out.to_path_buf()
}

/// `RUN/parts/STEP`.
pub fn step_dir(run: &Path, step: StepId) -> PathBuf {
    run.join(PARTS_DIR).join(step.0.to_string())
}

/// `RUN/parts/STEP/NAME-J-of-K.safetensors`.
pub fn part_file(run: &Path, step: StepId, stage: &str, index: usize, count: usize) -> PathBuf {
    step_dir(run, step).join(format!("{stage}-{index}-of-{count}.safetensors"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(src: &str) -> Plan {
        crate::compile_source(src, &Default::default()).unwrap()
    }

    const SRC: &str = "experiment p { seed = 0 }
data d = blobs(n = 20, classes = 3, dim = 4, seed = 1)
model net = mlp(in = 4, hidden = [5], out = 3)
let F = Fim(EKFAC) of net on d sharded(4)
let G = Fim(KFAC) of net on d sharded(2)
let K = Ntk(Dense) of net on d sharded(3)
let I = Fim(Implicit) of net on d sharded(2)
let g = grad(net, d sharded(3))
let h = grad(net, d)
measure trace(F), trace(G), trace(K), trace(I), norm(g), norm(h)
";

    #[test]
    fn stages_of_each_sharded_step() {
        let p = plan(SRC);
        let all = sharded_steps(&p);
        let shown: Vec<(usize, Vec<(&str, usize)>)> = all
            .iter()
            .map(|s| {
                (
                    s.shards,
                    s.stages.iter().map(|st| (st.name, st.parts)).collect(),
                )
            })
            .collect();
        // The implicit representation has no stage of its own; the
        // gradient one, and only when sharded.
        assert_eq!(
            shown,
            vec![
                (4, vec![("factors", 4), ("diagonal", 4)]),
                (2, vec![("sums", 2)]),
                (3, vec![("kernel", 6)]),
                (3, vec![("sums", 3)]),
            ]
        );
        let g = all[3].step;
        let spec = parse(&p, &format!("{}:sums/2/3", g.0)).unwrap();
        assert_eq!((spec.stage, spec.index, spec.count), (1, 2, 3));
        let req = PartRequest { stage: 1, index: 2 };
        let task = with_request(p.step(g), req);
        assert_eq!(request_of(&task), Some(req));
        assert_eq!(request_of(p.step(g)), None);
        assert_eq!(describe(p.step(g)), "`g` = grad");
        let f = all[0].step.0;
        let ok = parse(&p, &format!("{f}:diagonal/3/4")).unwrap();
        assert_eq!((ok.stage, ok.index, ok.count), (2, 3, 4));
        assert_eq!(parse(&p, &format!("{f}/0/4")).unwrap().stage, 1);
        assert_eq!(parse(&p, &format!("{f}:2/0/4")).unwrap().stage, 2);
        for bad in [
            format!("{f}:3/0/4"),
            format!("{f}/4/4"),
            format!("{f}/0/3"),
            "x".into(),
            "0/0/1".into(),
        ] {
            assert!(parse(&p, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parts_live_in_the_run_folder() {
        let run = Path::new("runs/a");
        assert_eq!(run_root(run), run);
        assert_eq!(run_root(&run.join("shards/3")), run);
        assert_eq!(run_root(&run.join("parts/5/.task-1-0")), run);
        assert_eq!(
            part_file(run, StepId(5), "kernel", 2, 6),
            Path::new("runs/a/parts/5/kernel-2-of-6.safetensors")
        );
    }
}
