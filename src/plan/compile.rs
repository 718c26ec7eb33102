//! Checked program → plan: dependencies, source positions and cost estimates.

use super::cost::{self, Cost};
use super::*;
use crate::check::Program;
use crate::diag::line_col;

/// Compiles a checked program into a plan. Deterministic: the same program
/// gives the same plan, byte for byte.
pub fn compile(program: &Program, src: &str) -> Plan {
    let mut steps: Vec<Step> = Vec::with_capacity(program.items.len());
    for (i, item) in program.items.iter().enumerate() {
        let (line, col) = line_col(src, item.span.start);
        let mut deps = item.op.refs();
        deps.sort();
        deps.dedup();
        let cost = estimate(&item.op, &steps, program.header.dtype);
        steps.push(Step {
            id: StepId(i as u32),
            deps,
            span: SourceSpan {
                start: item.span.start,
                end: item.span.end,
                line,
                col,
            },
            sweep: item.sweep.clone(),
            hook: item.hook,
            op: item.op.clone(),
            cost,
        });
    }
    // A training run costs its own steps plus its hooks times their firings.
    for i in 0..steps.len() {
        if let Op::Train { hooks, .. } = &steps[i].op {
            let extra: u64 = hooks
                .iter()
                .map(|h| {
                    h.steps
                        .iter()
                        .map(|s| steps[s.0 as usize].cost.flops)
                        .sum::<u64>()
                        .saturating_mul(h.fires)
                })
                .sum();
            steps[i].cost.flops = steps[i].cost.flops.saturating_add(extra);
        }
    }
    Plan {
        format: PLAN_FORMAT,
        experiment: program.header.clone(),
        steps,
    }
}

impl Op {
    /// Steps this one reads.
    pub fn refs(&self) -> Vec<StepId> {
        match self {
            Op::Data { .. } | Op::Model { .. } | Op::Plot { .. } => vec![],
            Op::Transform {
                input, transform, ..
            } => {
                let mut v = vec![*input];
                if let Transform::Normalize { like: Some(l), .. } = transform {
                    v.push(*l);
                }
                v
            }
            Op::Repr { model, data, .. } => vec![*model, *data],
            Op::Vector { vector, .. } => match vector {
                VectorOp::Grad { model, data } => vec![*model, *data],
                VectorOp::Random { model, .. }
                | VectorOp::Weights { model }
                | VectorOp::InitialWeights { model } => vec![*model],
                VectorOp::Add { a, b } | VectorOp::Sub { a, b } => vec![*a, *b],
                VectorOp::Scale { v, .. } => vec![*v],
            },
            Op::Measure { measurement, .. } => match measurement {
                Measurement::Trace { m }
                | Measurement::Frobenius { m }
                | Measurement::SpectralNorm { m }
                | Measurement::Diagonal { m }
                | Measurement::Eigenvalues { m, .. }
                | Measurement::EffectiveRank { m }
                | Measurement::Memory { m } => vec![m.repr],
                Measurement::Mv { m, v }
                | Measurement::VTMv { m, v }
                | Measurement::Solve { m, v, .. } => vec![m.repr, *v],
                Measurement::Alignment { m, targets, .. } => vec![m.repr, *targets],
                Measurement::RelError { a, b } => vec![a.repr, b.repr],
                Measurement::Loss { model, data } | Measurement::Accuracy { model, data } => {
                    vec![*model, *data]
                }
                Measurement::Norm { v } => vec![*v],
                Measurement::Dot { a, b } => vec![*a, *b],
            },
            Op::Train {
                model,
                data,
                config,
                ..
            } => {
                let mut v = vec![*model, *data];
                v.extend(config.eval);
                v
            }
            Op::Save { model, .. } => vec![*model],
        }
    }
}

fn model_of(steps: &[Step], mut id: StepId) -> Option<&ModelSpec> {
    loop {
        match &steps.get(id.0 as usize)?.op {
            Op::Model { spec, .. } => return Some(spec),
            Op::Train { model, .. } => id = *model,
            _ => return None,
        }
    }
}

fn data_info(steps: &[Step], id: StepId) -> Option<&DataInfo> {
    match &steps.get(id.0 as usize)?.op {
        Op::Data { info, .. } | Op::Transform { info, .. } => Some(info),
        _ => None,
    }
}

fn estimate(op: &Op, steps: &[Step], dtype: Dtype) -> Cost {
    let size = dtype.size();
    match op {
        Op::Data { info, .. } | Op::Transform { info, .. } => {
            let per: u64 =
                info.shape.iter().map(|&d| d as u64).product::<u64>() + info.target_dim as u64;
            let bytes = (info.n as u64).saturating_mul(per).saturating_mul(size);
            Cost {
                memory: bytes,
                flops: bytes / size,
            }
        }
        Op::Model { spec, .. } => Cost {
            memory: spec.params * size,
            flops: spec.params,
        },
        Op::Repr {
            object,
            structure,
            model,
            options,
            ..
        } => match model_of(steps, *model) {
            Some(spec) => Cost {
                memory: cost::repr_memory(*object, structure, spec, options, dtype),
                flops: cost::repr_flops(*object, structure, spec, options),
            },
            None => Cost::default(),
        },
        Op::Vector { vector, .. } => {
            let p = op
                .refs()
                .iter()
                .find_map(|r| model_of(steps, *r).map(|m| m.params))
                .unwrap_or_else(|| match vector {
                    VectorOp::Add { a, .. }
                    | VectorOp::Sub { a, .. }
                    | VectorOp::Scale { v: a, .. } => steps[a.0 as usize].cost.memory / size,
                    _ => 0,
                });
            let flops = match vector {
                VectorOp::Grad { model, data } => {
                    let n = data_info(steps, *data).map_or(0, |i| i.n as u64);
                    model_of(steps, *model).map_or(0, |m| 3 * n * cost::forward_flops(m))
                }
                _ => p,
            };
            Cost {
                memory: p * size,
                flops,
            }
        }
        Op::Measure { measurement, .. } => {
            let repr = op.refs().first().copied();
            let (dim, stored) = match repr.and_then(|r| steps.get(r.0 as usize)) {
                Some(Step {
                    op:
                        Op::Repr {
                            object,
                            model,
                            options,
                            ..
                        },
                    cost,
                    ..
                }) => {
                    let dim = match object {
                        Object::Fim => model_of(steps, *model).map_or(0, |m| m.params),
                        Object::Ntk => (options.examples * options.outputs) as u64,
                    };
                    (dim, cost.memory / size)
                }
                _ => (0, 0),
            };
            let flops = match measurement {
                Measurement::Loss { model, data } | Measurement::Accuracy { model, data } => {
                    let n = data_info(steps, *data).map_or(0, |i| i.n as u64);
                    model_of(steps, *model).map_or(0, |m| n * cost::forward_flops(m))
                }
                m => cost::measure_flops(m, dim, stored),
            };
            let memory = match measurement {
                Measurement::Diagonal { .. }
                | Measurement::Mv { .. }
                | Measurement::Solve { .. } => dim * size,
                Measurement::Eigenvalues { top, .. } => *top as u64 * size,
                _ => size,
            };
            Cost { memory, flops }
        }
        Op::Train {
            model,
            data,
            config,
            ..
        } => {
            let Some(spec) = model_of(steps, *model) else {
                return Cost::default();
            };
            let _ = data;
            let fwd = cost::forward_flops(spec);
            let batch = config.batch as u64;
            let per_step = 3 * batch * fwd
                + match &config.optimizer {
                    Optimizer::Ngd { .. } => 10 * spec.params,
                    _ => 4 * spec.params,
                };
            let state = match &config.optimizer {
                Optimizer::Sgd { .. } => 2,
                Optimizer::Adam { .. } => 3,
                Optimizer::Ngd { .. } => 3,
            };
            Cost {
                memory: state * spec.params * size,
                flops: per_step.saturating_mul(config.total_steps),
            }
        }
        Op::Save { model, .. } => Cost {
            memory: 0,
            flops: model_of(steps, *model).map_or(0, |m| m.params),
        },
        Op::Plot { .. } => Cost::default(),
    }
}
