//! Plain training (SGD with momentum/Nesterov/weight decay, Adam; constant,
//! step and cosine schedules; seeded shuffling), generic over [`Ops`].
//!
//! Parameters live on the host as one flat vector in NNGeometry's order; each
//! step computes the mini-batch gradient on the device and re-uploads the
//! updated weights. Hooks run at their firing steps, before that step's
//! update (step 0 is the initial model).

use crate::geometry::build::Problem;
use crate::geometry::net::{HostParams, Net};
use crate::geometry::ops::Ops;
use crate::plan::{Group, LossKind, LrSchedule, ModelSpec, Optimizer, TrainConfig, TrainMode};
use crate::rng::Rng;

/// A dataset as training sees it.
pub struct TrainData<'a, T> {
    pub x: &'a T,
    pub y: &'a [f64],
    pub n: usize,
    pub target_dim: usize,
    /// Examples whose label was changed by `label_noise` (empty: none).
    pub flipped: &'a [bool],
}

/// What the training loop reports as it goes.
pub trait TrainObserver<O: Ops> {
    /// Runs hook `hook` at optimiser step `step` on the live model.
    fn hook(&mut self, hook: usize, step: u64, net: &Net<O>) -> Result<(), String>;
    /// A scalar such as `train/loss` at `step`, with extra tags.
    fn log(&mut self, key: &str, step: u64, value: f64, tags: &[(&str, String)]);
    /// Every training example's loss and correctness at `step`.
    fn examples(&mut self, step: u64, loss: &[f64], correct: &[bool]) -> Result<(), String>;
}

enum State {
    Sgd { buf: Option<Vec<f64>> },
    Adam { m: Vec<f64>, v: Vec<f64>, t: i32 },
}

fn learning_rate(cfg: &TrainConfig, base: f64, step: u64, per_epoch: u64) -> f64 {
    match &cfg.schedule {
        LrSchedule::Constant => base,
        LrSchedule::Step { every, gamma } => {
            let epoch = step / per_epoch.max(1);
            base * gamma.powi((epoch / (*every).max(1)) as i32)
        }
        LrSchedule::Cosine => {
            let t = step as f64 / cfg.total_steps.max(1) as f64;
            base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

/// Trains from `params`; returns the final parameters.
#[allow(clippy::too_many_arguments)]
pub fn train<O: Ops>(
    o: &O,
    spec: &ModelSpec,
    params: HostParams,
    data: &TrainData<O::T>,
    eval: Option<&TrainData<O::T>>,
    cfg: &TrainConfig,
    firing: &[Vec<u64>],
    obs: &mut dyn TrainObserver<O>,
) -> Result<HostParams, String> {
    if !matches!(cfg.mode, TrainMode::Plain) {
        return Err(
            "scaled and linearised training arrive with the training milestone (issue 4)".into(),
        );
    }
    let mse = cfg.loss == LossKind::Mse;
    let base_lr = match &cfg.optimizer {
        Optimizer::Sgd { lr, .. } | Optimizer::Adam { lr, .. } => *lr,
        Optimizer::Ngd { .. } => {
            return Err(
                "natural-gradient training arrives with the training milestone (issue 4)".into(),
            )
        }
    };
    let mut params = params;
    let mut w = params.flat();
    let mut state = match &cfg.optimizer {
        Optimizer::Adam { .. } => State::Adam {
            m: vec![0.0; w.len()],
            v: vec![0.0; w.len()],
            t: 0,
        },
        _ => State::Sgd { buf: None },
    };
    let n = data.n;
    let batch = cfg.batch.clamp(1, n.max(1));
    let per_epoch = n.div_ceil(batch) as u64;
    let mut rng = Rng::new(cfg.seed);
    let mut perm: Vec<usize> = (0..n).collect();
    let mut net = Net::new(o, spec, params.clone()).map_err(|e| e.to_string())?;
    let mut epoch_loss = (0.0, 0usize);
    for step in 0..=cfg.total_steps {
        for (h, steps) in firing.iter().enumerate() {
            if steps.binary_search(&step).is_ok() {
                obs.hook(h, step, &net)?;
            }
        }
        if let Some(t) = &cfg.track {
            if step % t.every.max(1) == 0 || step == cfg.total_steps {
                track(o, &net, data, mse, step, &t.groups, obs)?;
            }
        }
        if step == cfg.total_steps {
            break;
        }
        let pos = (step % per_epoch) as usize;
        if pos == 0 {
            rng.shuffle(&mut perm);
        }
        let idx = &perm[pos * batch..((pos + 1) * batch).min(n)];
        let nb = idx.len();
        let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        let xb = o
            .index_select(data.x, &o.upload_index(&ids).map_err(|e| e.to_string())?, 0)
            .map_err(|e| e.to_string())?;
        let yb: Vec<f64> = idx
            .iter()
            .flat_map(|&i| {
                data.y[i * data.target_dim..(i + 1) * data.target_dim]
                    .iter()
                    .copied()
            })
            .collect();
        let p = Problem {
            o,
            net: &net,
            x: &xb,
            y: &yb,
            target_dim: data.target_dim,
            n: nb,
            slots: (0..net.slots.len()).collect(),
            batch: nb,
        };
        let (loss, mut g) = p.loss_and_gradient(mse).map_err(|e| e.to_string())?;
        if !loss.is_finite() || g.iter().any(|x| !x.is_finite()) {
            return Err(format!(
                "training diverged at step {step}: the mini-batch loss is {loss}; lower the learning rate"
            ));
        }
        epoch_loss.0 += loss;
        epoch_loss.1 += 1;
        obs.log("train/loss", step + 1, loss, &[]);
        let lr = learning_rate(cfg, base_lr, step, per_epoch);
        match (&cfg.optimizer, &mut state) {
            (
                Optimizer::Sgd {
                    momentum,
                    nesterov,
                    weight_decay,
                    ..
                },
                State::Sgd { buf },
            ) => {
                if *weight_decay != 0.0 {
                    g.iter_mut()
                        .zip(&w)
                        .for_each(|(gi, wi)| *gi += weight_decay * wi);
                }
                if *momentum != 0.0 {
                    let b = match buf.take() {
                        Some(mut b) => {
                            b.iter_mut()
                                .zip(&g)
                                .for_each(|(bi, gi)| *bi = momentum * *bi + gi);
                            b
                        }
                        None => g.clone(),
                    };
                    if *nesterov {
                        g.iter_mut()
                            .zip(&b)
                            .for_each(|(gi, bi)| *gi += momentum * bi);
                    } else {
                        g.copy_from_slice(&b);
                    }
                    *buf = Some(b);
                }
                w.iter_mut().zip(&g).for_each(|(wi, gi)| *wi -= lr * gi);
            }
            (
                Optimizer::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                },
                State::Adam { m, v, t },
            ) => {
                *t += 1;
                if *weight_decay != 0.0 {
                    g.iter_mut()
                        .zip(&w)
                        .for_each(|(gi, wi)| *gi += weight_decay * wi);
                }
                let (c1, c2) = (1.0 - beta1.powi(*t), 1.0 - beta2.powi(*t));
                for i in 0..w.len() {
                    m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
                    v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
                    w[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
                }
            }
            _ => unreachable!("optimizer and state are created together"),
        }
        params.set_flat(&w).map_err(|e| e.to_string())?;
        net = Net::new(o, spec, params.clone()).map_err(|e| e.to_string())?;
        if (step + 1) % per_epoch == 0 {
            obs.log(
                "train/epoch_loss",
                step + 1,
                epoch_loss.0 / epoch_loss.1.max(1) as f64,
                &[],
            );
            epoch_loss = (0.0, 0);
            if let Some(ev) = eval {
                let p = Problem {
                    o,
                    net: &net,
                    x: ev.x,
                    y: ev.y,
                    target_dim: ev.target_dim,
                    n: ev.n,
                    slots: (0..net.slots.len()).collect(),
                    batch: ev.n.clamp(1, 4096),
                };
                let (l, acc) = p.loss_accuracy(mse).map_err(|e| e.to_string())?;
                obs.log("eval/loss", step + 1, l, &[]);
                if let Some(a) = acc {
                    obs.log("eval/accuracy", step + 1, a, &[]);
                }
            }
        }
    }
    Ok(params)
}

/// Per-example tracking: every example's loss and correctness (written
/// compactly by the observer), and their means per group as
/// `examples/loss` and `examples/accuracy` tagged `group = …`.
fn track<O: Ops>(
    o: &O,
    net: &Net<O>,
    data: &TrainData<O::T>,
    mse: bool,
    step: u64,
    groups: &[Group],
    obs: &mut dyn TrainObserver<O>,
) -> Result<(), String> {
    let p = Problem {
        o,
        net,
        x: data.x,
        y: data.y,
        target_dim: data.target_dim,
        n: data.n,
        slots: (0..net.slots.len()).collect(),
        batch: data.n.clamp(1, 4096),
    };
    let (loss, correct) = p.per_example_loss(mse).map_err(|e| e.to_string())?;
    obs.examples(step, &loss, &correct)?;
    let mut report = |name: String, members: &dyn Fn(usize) -> bool| {
        let idx: Vec<usize> = (0..data.n).filter(|&i| members(i)).collect();
        if idx.is_empty() {
            return;
        }
        let k = idx.len() as f64;
        let l = idx.iter().map(|&i| loss[i]).sum::<f64>() / k;
        let a = idx.iter().filter(|&&i| correct[i]).count() as f64 / k;
        obs.log("examples/loss", step, l, &[("group", name.clone())]);
        if !mse {
            obs.log("examples/accuracy", step, a, &[("group", name)]);
        }
    };
    for g in groups {
        match g {
            Group::All => report("all".into(), &|_| true),
            Group::Flipped => report("flipped".into(), &|i| data.flipped.get(i) == Some(&true)),
            Group::Clean => report("clean".into(), &|i| data.flipped.get(i) != Some(&true)),
            Group::PerClass => {
                let classes = data.y.iter().fold(0usize, |m, &y| m.max(y as usize + 1));
                for c in 0..classes {
                    report(format!("class {c}"), &|i| {
                        data.y[i * data.target_dim] as usize == c
                    });
                }
            }
            Group::Difficulty { .. } => {
                // Difficulty needs the learning times of a whole run: it is
                // computed from examples/*.jsonl after training (issue 4).
            }
        }
    }
    Ok(())
}
