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
    add_hook_costs(&mut steps);
    Plan {
        format: PLAN_FORMAT,
        experiment: program.header.clone(),
        steps,
    }
}

/// A training run costs its own steps plus its hooks times their firings.
fn add_hook_costs(steps: &mut [Step]) {
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
            // Every hook's results stay while it fires again, but a step's
            // own earlier result goes before it runs again: the worst hook
            // step runs next to all the others' results.
            let hook_steps = hooks.iter().flat_map(|h| h.steps.iter());
            let held: u64 = hook_steps
                .clone()
                .map(|s| steps[s.0 as usize].cost.memory)
                .sum();
            let worst = hook_steps
                .map(|s| {
                    let c = steps[s.0 as usize].cost;
                    c.peak.max(c.memory) - c.memory
                })
                .max()
                .unwrap_or(0);
            steps[i].cost.peak = steps[i].cost.peak.saturating_add(held + worst);
        }
    }
}

impl Plan {
    /// Recomputes every step's cost for the header's dtype (after a
    /// `--dtype` override, say).
    pub fn reestimate(&mut self) {
        let dtype = self.experiment.dtype;
        let steps = std::mem::take(&mut self.steps);
        for mut step in steps {
            step.cost = estimate(&step.op, &self.steps, dtype);
            self.steps.push(step);
        }
        add_hook_costs(&mut self.steps);
    }
}

impl Op {
    /// Steps this one reads.
    pub fn refs(&self) -> Vec<StepId> {
        match self {
            Op::Data { .. } | Op::Model { .. } | Op::Plot { .. } | Op::Expect { .. } => vec![],
            Op::Transform {
                input, transform, ..
            } => {
                let mut v = vec![*input];
                if let Transform::Normalize { like: Some(l), .. } = transform {
                    v.push(*l);
                }
                v
            }
            // A saved representation reads only its file and model.
            Op::Repr { model, options, .. } if options.file.is_some() => vec![*model],
            Op::Repr { model, data, .. } => vec![*model, *data],
            Op::Vector { vector, .. } => match vector {
                VectorOp::Grad { model, data, .. } => vec![*model, *data],
                VectorOp::Jvp { model, data, v: x } | VectorOp::Vjp { model, data, u: x } => {
                    vec![*model, *data, *x]
                }
                VectorOp::Eigenvector { m, .. } => vec![m.repr],
                VectorOp::Random { model, .. }
                | VectorOp::Weights { model }
                | VectorOp::InitialWeights { model } => vec![*model],
                VectorOp::Add { a, b } | VectorOp::Sub { a, b } => vec![*a, *b],
                VectorOp::Scale { v, .. } | VectorOp::Part { v, .. } => vec![*v],
                VectorOp::Mul { a, b } | VectorOp::Div { a, b } => vec![*a, *b],
                VectorOp::Measured { measurement } => Op::Measure {
                    key: String::new(),
                    measurement: measurement.clone(),
                }
                .refs(),
            },
            Op::Measure { measurement, .. } => match measurement {
                Measurement::Trace { m }
                | Measurement::Frobenius { m }
                | Measurement::SpectralNorm { m }
                | Measurement::Diagonal { m }
                | Measurement::Eigenvalues { m, .. }
                | Measurement::Eigenvectors { m, .. }
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
                Measurement::Norm { v } | Measurement::Vector { v } => vec![*v],
                Measurement::Dot { a, b } => vec![*a, *b],
                Measurement::Influence {
                    m,
                    model,
                    data,
                    test,
                    ..
                } => vec![m.repr, *model, *data, *test],
            },
            Op::Train {
                model,
                data,
                config,
                ..
            } => {
                let mut v = vec![*model, *data];
                v.extend(config.eval);
                v.extend(config.penalties.iter().flat_map(|p| p.refs()));
                v
            }
            Op::Save { model, .. } => vec![*model],
            Op::WithWeights { model, weights, .. } => vec![*model, *weights],
            Op::Matrix { matrix, .. } => matrix.operands().iter().map(|o| o.repr).collect(),
        }
    }
}

fn model_of(steps: &[Step], mut id: StepId) -> Option<&ModelSpec> {
    loop {
        match &steps.get(id.0 as usize)?.op {
            Op::Model { spec, .. } => return Some(spec),
            Op::Train { model, .. } | Op::WithWeights { model, .. } => id = *model,
            _ => return None,
        }
    }
}

/// What a measurement reads when `id` is a representation step (a matrix
/// step is estimated as the representation it is computed from).
/// Values a representation step holds (what its products and
/// reductions read), from its bytes counted as if all were f64: a float32
/// run holds some of them in 4 bytes.
fn stored_entries(steps: &[Step], id: StepId) -> u64 {
    let held = steps.get(id.0 as usize).map_or(0, |s| s.cost.memory);
    let wide = measured_repr(steps, id).map_or(0, |r| {
        cost::repr_held(r.object, &r.structure, r.model, r.options, Dtype::F64)
    });
    held.max(wide) / 8
}

fn measured_repr(steps: &[Step], id: StepId) -> Option<cost::MeasuredRepr<'_>> {
    match &steps.get(id.0 as usize)?.op {
        Op::Matrix { matrix, .. } => {
            let mut r = measured_repr(steps, matrix.operands()[0].repr)?;
            r.structure = std::borrow::Cow::Owned(matrix.result_structure(&r.structure));
            Some(r)
        }
        Op::Repr {
            object,
            structure,
            model,
            options,
            ..
        } => Some(cost::MeasuredRepr {
            object: *object,
            structure: std::borrow::Cow::Borrowed(structure),
            model: model_of(steps, *model)?,
            options,
        }),
        _ => None,
    }
}

pub(super) fn data_info(steps: &[Step], id: StepId) -> Option<&DataInfo> {
    match &steps.get(id.0 as usize)?.op {
        Op::Data { info, .. } | Op::Transform { info, .. } => Some(info),
        _ => None,
    }
}

/// The cost of `op` among the plan's `steps`.
pub(super) fn estimate(op: &Op, steps: &[Step], dtype: Dtype) -> Cost {
    let size = dtype.size();
    match op {
        Op::Data { info, .. } | Op::Transform { info, .. } => {
            let per: u64 =
                info.shape.iter().map(|&d| d as u64).product::<u64>() + info.target_dim as u64;
            let memory = cost::data_bytes(info, dtype);
            Cost {
                memory,
                peak: 2 * memory,
                flops: (info.n as u64).saturating_mul(per),
            }
        }
        Op::Model { spec, .. } => {
            let memory = cost::model_bytes(spec, dtype);
            Cost {
                memory,
                peak: memory + spec.params * 8,
                flops: spec.params,
            }
        }
        Op::Repr {
            object,
            structure,
            model,
            options,
            ..
        } => match model_of(steps, *model) {
            Some(spec) => Cost {
                memory: cost::repr_held(*object, structure, spec, options, dtype),
                peak: cost::repr_peak(*object, structure, spec, options, dtype),
                flops: cost::repr_flops(*object, structure, spec, options),
            },
            None => Cost::default(),
        },
        Op::Vector {
            vector: VectorOp::Measured { measurement },
            ..
        } => estimate(
            &Op::Measure {
                key: String::new(),
                measurement: measurement.clone(),
            },
            steps,
            dtype,
        ),
        // The structure's own eigenpairs, the vectors built.
        Op::Vector {
            vector: VectorOp::Eigenvector { m, rank },
            ..
        } => match measured_repr(steps, m.repr) {
            Some(r) => {
                let p: u64 = cost::covered_layers(r.model, r.options)
                    .iter()
                    .map(|l| l.params)
                    .sum();
                let (peak, flops) = cost::eigenvectors_cost(&r, *rank as u64, dtype);
                Cost {
                    memory: p * 8,
                    peak: p * 8 + peak,
                    flops,
                }
            }
            None => Cost::default(),
        },
        Op::Vector {
            vector: VectorOp::Jvp { model, data, .. } | VectorOp::Vjp { model, data, .. },
            ..
        } => match (model_of(steps, *model), data_info(steps, *data)) {
            (Some(m), Some(d)) => {
                let out = match op {
                    Op::Vector {
                        vector: VectorOp::Jvp { .. },
                        ..
                    } => (d.n * m.outputs()) as u64,
                    _ => m.params,
                };
                let (peak, flops) = cost::jacobian_product_cost(m, d.n, dtype);
                Cost {
                    memory: out * 8,
                    peak: out * 8 + peak,
                    flops,
                }
            }
            _ => Cost::default(),
        },
        Op::Vector { vector, .. } => {
            let p = op
                .refs()
                .iter()
                .find_map(|r| model_of(steps, *r).map(|m| m.params))
                .unwrap_or_else(|| match vector {
                    VectorOp::Add { a, .. }
                    | VectorOp::Sub { a, .. }
                    | VectorOp::Mul { a, .. }
                    | VectorOp::Div { a, .. }
                    | VectorOp::Part { v: a, .. }
                    | VectorOp::Scale { v: a, .. } => steps[a.0 as usize].cost.memory / 8,
                    _ => 0,
                });
            let (flops, peak) = match vector {
                VectorOp::Grad { model, data, .. } => {
                    let n = data_info(steps, *data).map_or(0, |i| i.n as u64);
                    let m = model_of(steps, *model);
                    (
                        m.map_or(0, |m| 3 * n * cost::forward_flops(m)),
                        // Device gradients, their download, a batch's pass.
                        m.map_or(0, |m| cost::model_bytes(m, dtype))
                            + data_info(steps, *data).map_or(0, |d| cost::data_bytes(d, dtype)),
                    )
                }
                _ => (p, 0),
            };
            Cost {
                memory: p * 8,
                peak: p * 8 * 2 + peak,
                flops,
            }
        }
        Op::Measure { measurement, .. } => {
            let repr = op.refs().first().copied();
            let mut on = None;
            // `rel_error` of two whole block-structured Fishers compares
            // them block by block (one dense copy of each block at a time).
            let blockwise = match measurement {
                Measurement::RelError { a, b } if a.layer.is_none() && b.layer.is_none() => {
                    match (measured_repr(steps, a.repr), measured_repr(steps, b.repr)) {
                        (Some(ra), Some(rb)) => cost::blockwise_rel_error_peak(&ra, &rb),
                        _ => None,
                    }
                }
                _ => None,
            };
            let (dim, stored) = match repr.and_then(|r| Some((r, measured_repr(steps, r)?))) {
                Some((id, r)) => {
                    let dim = match r.object {
                        Object::Fim | Object::Hessian => r.model.params,
                        Object::Ntk => (r.options.examples * r.options.outputs) as u64,
                    };
                    let stored = stored_entries(steps, id);
                    on = Some(r);
                    (dim, stored)
                }
                None => (0, 0),
            };
            if let (Measurement::Eigenvectors { top, .. }, Some(r)) = (measurement, &on) {
                let (peak, flops) = cost::eigenvectors_cost(r, *top as u64, dtype);
                let memory = *top as u64 * dim * 8;
                return Cost {
                    memory,
                    peak: memory + peak + cost::streamed_bytes(memory),
                    flops,
                };
            }
            if let Measurement::Influence {
                m,
                model,
                data,
                test,
                damping,
                example,
                mean,
            } = measurement
            {
                // The test gradient, one solve with M, one Jacobian
                // product over the examples.
                let (Some(spec), Some(d), Some(t)) = (
                    model_of(steps, *model),
                    data_info(steps, *data),
                    data_info(steps, *test),
                ) else {
                    return Cost::default();
                };
                let solve = Measurement::Solve {
                    m: m.clone(),
                    v: *test,
                    damping: *damping,
                };
                let (jac_peak, jac_flops) = cost::jacobian_product_cost(spec, d.n, dtype);
                let grad = cost::model_bytes(spec, dtype) + spec.params * 8 * 4;
                let memory = if example.is_some() || *mean {
                    8
                } else {
                    d.n as u64 * 8
                };
                let flops = cost::measure_flops_on(&solve, on.as_ref(), dim, stored);
                return Cost {
                    memory,
                    peak: memory
                        + cost::streamed_bytes(memory)
                        + grad
                        + jac_peak.max(cost::measure_peak(&solve, on, dtype)),
                    flops: flops + jac_flops + 3 * t.n as u64 * cost::forward_flops(spec),
                };
            }
            let (flops, pass) = match measurement {
                Measurement::Loss { model, data } | Measurement::Accuracy { model, data } => {
                    let n = data_info(steps, *data).map_or(0, |i| i.n as u64);
                    (
                        model_of(steps, *model).map_or(0, |m| n * cost::forward_flops(m)),
                        model_of(steps, *model).map_or(0, |m| m.params * 8),
                    )
                }
                m => (cost::measure_flops_on(m, on.as_ref(), dim, stored), 0),
            };
            let memory = match measurement {
                Measurement::Vector { v } => steps[v.0 as usize].cost.memory,
                Measurement::Diagonal { .. }
                | Measurement::Mv { .. }
                | Measurement::Solve { .. } => dim * 8,
                Measurement::Eigenvalues { top, .. } => *top as u64 * 8,
                Measurement::Eigenvectors { top, .. } => *top as u64 * dim * 8,
                _ => 8,
            };
            Cost {
                memory,
                peak: memory
                    + cost::streamed_bytes(memory)
                    + pass
                    + blockwise.unwrap_or_else(|| cost::measure_peak(measurement, on, dtype)),
                flops,
            }
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
            let fwd = cost::forward_flops(spec);
            let batch = config.batch as u64;
            let per_step = 3 * batch * fwd
                + match &config.optimizer {
                    Optimizer::Ngd { .. } => 10 * spec.params,
                    _ => 4 * spec.params,
                };
            let _ = size;
            // Each penalty term: the difference, its product with the
            // matrix and the gradient (f64 vectors of the parameters), plus
            // what that product needs beyond the stored matrix (an
            // Implicit Fisher's passes over its data).
            let penalty: u64 = config
                .penalties
                .iter()
                .map(|p| {
                    let mv = p.m.as_ref().map_or(0, |m| {
                        let on = measured_repr(steps, m.repr);
                        let product = Measurement::Mv {
                            m: m.clone(),
                            v: StepId(0),
                        };
                        cost::measure_peak(&product, on, dtype)
                    });
                    3 * 8 * spec.params + mv
                })
                .max()
                .unwrap_or(0);
            let penalty_flops: u64 = config
                .penalties
                .iter()
                .map(|p| {
                    let stored = p.m.as_ref().map_or(0, |m| stored_entries(steps, m.repr));
                    4 * spec.params + 2 * stored
                })
                .sum();
            Cost {
                memory: cost::model_bytes(spec, dtype),
                peak: cost::train_peak(spec, data_info(steps, *data), config, dtype) + penalty,
                flops: (per_step + penalty_flops).saturating_mul(config.total_steps),
            }
        }
        // What the result's structure holds; at the peak, its operands and
        // a dense copy of the largest block an eigendecomposition takes.
        Op::Matrix { matrix, .. } => {
            let operands: u64 = matrix
                .operands()
                .iter()
                .map(|o| steps[o.repr.0 as usize].cost.memory)
                .sum();
            let Some(r) = measured_repr(steps, matrix.operands()[0].repr) else {
                return Cost::default();
            };
            let s = matrix.result_structure(&r.structure);
            let memory = cost::repr_held(Object::Fim, &s, r.model, r.options, Dtype::F64);
            // The largest matrix an eigendecomposition takes (factors and
            // diagonals are no larger than what is held).
            let layers = cost::covered_layers(r.model, r.options);
            let block: u64 = match s {
                Structure::Dense | Structure::LowRank { .. } => {
                    layers.iter().map(|l| l.params).sum::<u64>().pow(2)
                }
                Structure::BlockDiag | Structure::QuasiDiag | Structure::Mix { .. } => layers
                    .iter()
                    .map(|l| l.params * l.params)
                    .max()
                    .unwrap_or(0),
                _ => 0,
            };
            Cost {
                memory,
                peak: memory + operands + 3 * 8 * block,
                flops: (10 * memory).max(10 * block.saturating_mul(block.isqrt())),
            }
        }
        // A second copy of the model, built through two f64 copies of its
        // flat weights.
        Op::WithWeights { model, .. } => match model_of(steps, *model) {
            Some(m) => Cost {
                memory: cost::model_bytes(m, dtype),
                peak: cost::model_bytes(m, dtype) + 3 * 8 * m.params,
                flops: 2 * m.params,
            },
            None => Cost::default(),
        },
        Op::Save { model, .. } => Cost {
            memory: 0,
            peak: model_of(steps, *model).map_or(0, |m| m.params * 16),
            flops: model_of(steps, *model).map_or(0, |m| m.params),
        },
        // Evaluated with the report, on results already read.
        Op::Expect { .. } => Cost {
            memory: 0,
            peak: 0,
            flops: 0,
        },
        Op::Plot { .. } => Cost {
            memory: 0,
            // Rendering a bitmap and reading the results back.
            peak: 64 << 20,
            flops: 0,
        },
    }
}
