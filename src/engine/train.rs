//! Training, generic over [`Ops`]: SGD (momentum, Nesterov, weight decay),
//! Adam and natural gradient (KFAC, EKFAC, Diag, BlockDiag, Dense Fisher);
//! constant, step and cosine schedules; seeded shuffling; the plain,
//! α-scaled and linearised models of [`Reparam`](crate::geometry::net::Reparam).
//!
//! Each step computes the mini-batch gradient on the device. Where the
//! backend trains on its device ([`UpdateAt`]), SGD, Adam and natural
//! gradient step the layers' tensors there ([`super::device_update`];
//! penalty terms keep the host update); otherwise the
//! parameters live on the host as one flat f64 vector in NNGeometry's
//! order, updated there and re-uploaded. Hooks run at their firing steps,
//! before that step's update (step 0 is the initial model).

use super::device_update::{refresh_buffers, DeviceUpdate, UpdateAt};
use super::preconditioner::{ngd_target, Preconditioner};
use crate::geometry::build::Problem;
use crate::geometry::inverse::{download_flat, upload_natural, Inverse};
use crate::geometry::net::{BatchStats, HostParams, Net, Phase};
use crate::geometry::ops::{linalg_of, Ops, OpsError, OpsResult};
use crate::geometry::repr::Fim;
use crate::plan::{
    Augment, BatchNormStats, Group, LossKind, LrSchedule, ModelSpec, Optimizer, TrainConfig,
};
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

impl<'a, T> TrainData<'a, T> {
    /// All of these examples as one problem for `net`, evaluated in
    /// batches of at most 4096.
    fn problem<'p, O: Ops<T = T>>(&'p self, o: &'p O, net: &'p Net<O>) -> Problem<'p, O> {
        Problem {
            o,
            net,
            x: self.x,
            y: self.y,
            target_dim: self.target_dim,
            n: self.n,
            slots: (0..net.slots.len()).collect(),
            batch: self.n.clamp(1, 4096),
        }
    }
}

/// What the training loop reports as it goes; every report is ignored
/// unless the observer takes it.
pub trait TrainObserver<O: Ops> {
    /// Runs hook `hook` at optimiser step `step` on the live model.
    fn hook(&mut self, _hook: usize, _step: u64, _net: &Net<O>) -> Result<(), String> {
        Ok(())
    }
    /// A scalar such as `train/loss` at `step`, with extra tags.
    fn log(&mut self, _key: &str, _step: u64, _value: f64, _tags: &[(&str, String)]) {}
    /// Every training example's loss and correctness at `step`.
    fn examples(&mut self, _step: u64, _loss: &[f64], _correct: &[bool]) -> Result<(), String> {
        Ok(())
    }
    /// Seconds spent on optimiser steps so far (called before each step's
    /// hooks and logs).
    fn clock(&mut self, _seconds: f64) {}
    /// Every training example's difficulty score and bin (0 = easiest of
    /// `k`), once, before training.
    fn difficulty(&mut self, _score: &[f64], _bin: &[usize], _k: usize) -> Result<(), String> {
        Ok(())
    }
    /// The loss's penalty terms at the flat weights `w` (the config's
    /// [`crate::plan::Penalty`] list, which only the executor can resolve):
    /// their sum and its gradient, or `None` when there are none.
    fn penalty(&mut self, _w: &[f64]) -> Result<Option<(f64, Vec<f64>)>, String> {
        Ok(None)
    }
}

enum State<T> {
    Sgd {
        buf: Option<Vec<f64>>,
    },
    Adam {
        m: Vec<f64>,
        v: Vec<f64>,
        t: i32,
    },
    Ngd {
        pre: Option<Preconditioner>,
        buf: Option<Vec<f64>>,
        /// The preconditioner's damped inverse, prepared on the device
        /// when it serves a second step unchanged (see `Inverse`).
        ready: Option<Box<Inverse<T>>>,
    },
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
    train_binned(o, spec, params, data, eval, cfg, firing, obs, None)
}

/// How many difficulty bins the run's tracking asks for, if any.
pub fn difficulty_bins_wanted(cfg: &TrainConfig) -> Option<usize> {
    cfg.track.as_ref().and_then(|t| {
        t.groups.iter().find_map(|g| match g {
            Group::Difficulty { bins } => Some(*bins),
            _ => None,
        })
    })
}

/// [`train`] with each example's difficulty bin (and the number of bins)
/// for per-example tracking by difficulty; they come from
/// `engine::difficulty`, which trains models of its own.
#[allow(clippy::too_many_arguments)]
pub fn train_binned<O: Ops>(
    o: &O,
    spec: &ModelSpec,
    params: HostParams,
    data: &TrainData<O::T>,
    eval: Option<&TrainData<O::T>>,
    cfg: &TrainConfig,
    firing: &[Vec<u64>],
    obs: &mut dyn TrainObserver<O>,
    difficulty: Option<(Vec<usize>, usize)>,
) -> Result<HostParams, String> {
    let at = UpdateAt::of(o);
    train_at(
        o, spec, params, data, eval, cfg, firing, obs, difficulty, at,
    )
}

/// [`train_binned`] with the update where `at` says: on the device unless
/// the loss has penalty terms, else on the host.
#[allow(clippy::too_many_arguments)]
pub fn train_at<O: Ops>(
    o: &O,
    spec: &ModelSpec,
    params: HostParams,
    data: &TrainData<O::T>,
    eval: Option<&TrainData<O::T>>,
    cfg: &TrainConfig,
    firing: &[Vec<u64>],
    obs: &mut dyn TrainObserver<O>,
    difficulty: Option<(Vec<usize>, usize)>,
    at: UpdateAt,
) -> Result<HostParams, String> {
    let mse = cfg.loss == LossKind::Mse;
    let mut params = params;
    // Penalty terms read the weights on the host every step: a loss that
    // has any (asked once, at the initial weights) keeps the host update.
    let on_device = at == UpdateAt::Device && obs.penalty(&params.flat())?.is_none();
    let mut device = on_device.then(DeviceUpdate::<O>::new);
    // The device update leaves `net.params` behind until it is read.
    let mut stale = false;
    let base_lr = match &cfg.optimizer {
        Optimizer::Sgd { lr, .. } | Optimizer::Adam { lr, .. } | Optimizer::Ngd { lr, .. } => *lr,
    };
    // The host update's flat f64 weights (and Adam's moments below);
    // nothing for the device's.
    let mut w = if on_device { Vec::new() } else { params.flat() };
    let mut state = match &cfg.optimizer {
        Optimizer::Adam { .. } => State::Adam {
            m: vec![0.0; w.len()],
            v: vec![0.0; w.len()],
            t: 0,
        },
        Optimizer::Ngd { .. } => State::Ngd {
            pre: None,
            buf: None,
            ready: None,
        },
        Optimizer::Sgd { .. } => State::Sgd { buf: None },
    };
    let n = data.n;
    let batch = cfg.batch.clamp(1, n.max(1));
    let per_epoch = n.div_ceil(batch) as u64;
    let mut rng = Rng::new(cfg.seed);
    let mut perm: Vec<usize> = (0..n).collect();
    let mut net = Net::new(o, spec, params.clone())
        .and_then(|net| net.reparam(o, &cfg.mode, &params))
        .map_err(|e| e.to_string())?;
    if difficulty.is_none() && difficulty_bins_wanted(cfg).is_some() {
        return Err("tracking by difficulty needs the difficulty bins: compute them first (engine::difficulty::tracking_bins)".into());
    }
    let mut epoch_loss = (0.0, 0usize);
    let mut clock = std::time::Duration::ZERO;
    for step in 0..=cfg.total_steps {
        obs.clock(clock.as_secs_f64());
        for (h, steps) in firing.iter().enumerate() {
            if steps.binary_search(&step).is_ok() {
                if stale {
                    net.download_params(o).map_err(|e| e.to_string())?;
                    stale = false;
                }
                obs.hook(h, step, &net)?;
            }
        }
        if let Some(t) = &cfg.track {
            if step % t.every.max(1) == 0 || step == cfg.total_steps {
                track(
                    o,
                    &net,
                    data,
                    mse,
                    step,
                    &t.groups,
                    difficulty.as_ref(),
                    obs,
                )?;
            }
        }
        if step == cfg.total_steps {
            break;
        }
        let started = std::time::Instant::now();
        let pos = (step % per_epoch) as usize;
        if pos == 0 {
            rng.shuffle(&mut perm);
        }
        let idx = &perm[pos * batch..((pos + 1) * batch).min(n)];
        let nb = idx.len();
        let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        let mut xb = o
            .index_select(data.x, &o.upload_index(&ids).map_err(|e| e.to_string())?, 0)
            .map_err(|e| e.to_string())?;
        if let Some(a) = &cfg.augment {
            xb = augment(o, &xb, a, step).map_err(|e| e.to_string())?;
        }
        let yb: Vec<f64> = idx
            .iter()
            .flat_map(|&i| {
                data.y[i * data.target_dim..(i + 1) * data.target_dim]
                    .iter()
                    .copied()
            })
            .collect();
        let p = batch_problem(o, &net, &xb, &yb, data.target_dim, nb);
        // This step's training pass (its dropout masks).
        let phase = Phase::Train {
            seed: cfg.seed ^ (step + 1).wrapping_mul(0x2545_F491_4F6C_DD1D),
        };
        if let Some(dev) = device.as_mut() {
            let (loss, grads, stats) = p
                .loss_gradient_natural_in(mse, phase)
                .map_err(|e| e.to_string())?;
            if !loss.is_finite() {
                return Err(format!(
                    "training diverged at step {}: the mini-batch loss is {loss}; lower the learning rate",
                    step + 1
                ));
            }
            let lr = learning_rate(cfg, base_lr, step, per_epoch);
            let (steps, raw, scale) = match (&cfg.optimizer, &mut state) {
                (
                    Optimizer::Ngd {
                        fim,
                        fisher,
                        damping,
                        refresh,
                        refit,
                        decay,
                        batchnorm,
                        ..
                    },
                    State::Ngd { pre, ready, .. },
                ) => {
                    let target = ngd_target(fisher, mse, net.outputs());
                    // The running statistics come back with the update's
                    // `refresh_buffers` below.
                    with_batch_norm(o, &mut net, *batchnorm, &stats, &xb, phase)?;
                    let p = batch_problem(o, &net, &xb, &yb, data.target_dim, nb);
                    let changed = Preconditioner::update(
                        pre, &p, fim, &target, step, *refresh, *refit, *decay,
                    )?;
                    let f = &pre.as_ref().expect("made at the first step").fim;
                    let d = natural_direction(o, f, &grads, *damping, changed, ready)
                        .map_err(|e| e.to_string())?;
                    let slots = grads.iter().map(|(s, _)| *s);
                    let raw = grads.iter().map(|(_, g)| g.clone()).collect();
                    (slots.zip(d).collect(), raw, 1.0)
                }
                _ => (grads, Vec::new(), net.loss_scale()),
            };
            dev.apply(
                o,
                &cfg.optimizer,
                &mut net,
                steps,
                &raw,
                scale,
                lr,
                step,
                loss,
            )?;
            refresh_buffers(o, &mut net, spec, &stats).map_err(|e| e.to_string())?;
            stale = true;
            epoch_loss.0 += loss;
            epoch_loss.1 += 1;
            clock += started.elapsed();
            after_step(
                o,
                &net,
                step,
                loss,
                None,
                per_epoch,
                &mut epoch_loss,
                eval,
                mse,
                obs,
                clock,
            )?;
            continue;
        }
        let (loss, mut g, stats) = p.loss_gradient_in(mse, phase).map_err(|e| e.to_string())?;
        if !loss.is_finite() || g.iter().any(|x| !x.is_finite()) {
            return Err(format!(
                "training diverged at step {}: the mini-batch loss is {loss}; lower the learning rate",
                step + 1
            ));
        }
        // The scaled model minimises ℓ/α²; `train/loss` reports ℓ itself,
        // comparable across α.
        // The natural gradient needs no such factor: the scaled model's
        // Fisher grows as α², which already makes its function steps
        // independent of α.
        let scale = match cfg.optimizer {
            Optimizer::Ngd { .. } => 1.0,
            _ => net.loss_scale(),
        };
        if scale != 1.0 {
            g.iter_mut().for_each(|x| *x *= scale);
        }
        // Penalties act on the weights themselves, whatever the model's
        // scale or linearisation.
        let penalty = obs.penalty(&w)?;
        if let Some((_, pg)) = &penalty {
            g.iter_mut().zip(pg).for_each(|(gi, pi)| *gi += pi);
        }
        epoch_loss.0 += loss;
        epoch_loss.1 += 1;
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
            (
                Optimizer::Ngd {
                    fim,
                    fisher,
                    damping,
                    refresh,
                    refit,
                    momentum,
                    decay,
                    batchnorm,
                    ..
                },
                State::Ngd { pre, buf, ready },
            ) => {
                let target = ngd_target(fisher, mse, net.outputs());
                // The network is rebuilt from the weights after the update,
                // running statistics included.
                with_batch_norm(o, &mut net, *batchnorm, &stats, &xb, phase)?;
                let p = batch_problem(o, &net, &xb, &yb, data.target_dim, nb);
                let changed =
                    Preconditioner::update(pre, &p, fim, &target, step, *refresh, *refit, *decay)?;
                let f = &pre.as_ref().expect("made at the first step").fim;
                let la = linalg_of(o);
                if changed {
                    *ready = None;
                } else if ready.is_none() {
                    // Unchanged since the last step: it serves several, so
                    // its inverse is prepared once rather than the matrices
                    // factorised at every step.
                    let inv = Inverse::new(o, f, *damping, &*la).map_err(|e| e.to_string())?;
                    *ready = Some(Box::new(inv));
                }
                let mut d = match ready {
                    Some(inv) => inv.apply(o, &g, &*la).map_err(|e| e.to_string())?,
                    None => f.solve_in(&g, *damping, &*la).map_err(|e| e.to_string())?,
                };
                if *momentum != 0.0 {
                    if let Some(b) = buf.as_ref() {
                        d.iter_mut()
                            .zip(b)
                            .for_each(|(di, bi)| *di += momentum * bi);
                    }
                    *buf = Some(d.clone());
                }
                w.iter_mut().zip(&d).for_each(|(wi, di)| *wi -= lr * di);
            }
            _ => unreachable!("optimizer and state are created together"),
        }
        if let Some(i) = w.iter().position(|x| !x.is_finite()) {
            return Err(format!(
                "training diverged at step {}: weight {i} became {} after the update; lower the learning rate or raise the damping",
                step + 1,
                w[i]
            ));
        }
        params.set_flat(&w).map_err(|e| e.to_string())?;
        params.fold_batch_stats(spec, &stats);
        net = net
            .with_params(o, params.clone())
            .map_err(|e| e.to_string())?;
        clock += started.elapsed();
        let penalty = penalty.map(|(value, _)| value);
        after_step(
            o,
            &net,
            step,
            loss,
            penalty,
            per_epoch,
            &mut epoch_loss,
            eval,
            mse,
            obs,
            clock,
        )?;
    }
    if device.is_some() {
        if stale {
            net.download_params(o).map_err(|e| e.to_string())?;
        }
        return Ok(net.params);
    }
    Ok(params)
}

/// The mini-batch `x` (`n` examples) over every layer of `net`, in one batch.
fn batch_problem<'p, O: Ops>(
    o: &'p O,
    net: &'p Net<O>,
    x: &'p O::T,
    y: &'p [f64],
    target_dim: usize,
    n: usize,
) -> Problem<'p, O> {
    Problem {
        o,
        net,
        x,
        y,
        target_dim,
        n,
        slots: (0..net.slots.len()).collect(),
        batch: n,
    }
}

/// Makes `net` normalise as the training step did when the natural
/// gradient asks for batch statistics (the caller restores the running
/// ones).
fn with_batch_norm<O: Ops>(
    o: &O,
    net: &mut Net<O>,
    which: BatchNormStats,
    stats: &[BatchStats],
    x: &O::T,
    phase: Phase,
) -> Result<(), String> {
    match which {
        BatchNormStats::Running => Ok(()),
        BatchNormStats::Batch => net
            .normalise_with(o, stats, x, phase)
            .map_err(|e| e.to_string()),
    }
}

/// The natural-gradient direction `(F + λI)⁻¹ ∇L` on the device, layer by
/// layer in the natural layout. Right after a refresh the Fisher serves
/// one step: it is solved once on the host (the gradient's one round
/// trip); unchanged, its inverse is prepared once and applied where the
/// gradient is (see `Inverse::apply_natural`).
fn natural_direction<O: Ops>(
    o: &O,
    f: &Fim,
    grads: &[(usize, O::T)],
    damping: f64,
    changed: bool,
    ready: &mut Option<Box<Inverse<O::T>>>,
) -> OpsResult<Vec<O::T>> {
    let la = linalg_of(o);
    if grads.len() != f.layers.len() {
        return Err(OpsError(format!(
            "natural gradient: {} layers' gradients for a Fisher over {}",
            grads.len(),
            f.layers.len()
        )));
    }
    let g: Vec<O::T> = grads.iter().map(|(_, g)| g.clone()).collect();
    if changed {
        *ready = None;
        let flat = download_flat(o, &g, &f.layers)?;
        let d = f
            .solve_in(&flat, damping, &*la)
            .map_err(|e| OpsError(e.to_string()))?;
        return upload_natural(o, &d, &f.layers);
    }
    if ready.is_none() {
        *ready = Some(Box::new(Inverse::new(o, f, damping, &*la)?));
    }
    ready
        .as_ref()
        .expect("prepared above")
        .apply_natural(o, &g, &*la)
}

/// What follows each optimiser step: the clock, `train/loss` (and the
/// penalty's value), and at each epoch's end its mean loss and the
/// evaluation set's loss and accuracy.
#[allow(clippy::too_many_arguments)]
fn after_step<O: Ops>(
    o: &O,
    net: &Net<O>,
    step: u64,
    loss: f64,
    penalty: Option<f64>,
    per_epoch: u64,
    epoch_loss: &mut (f64, usize),
    eval: Option<&TrainData<O::T>>,
    mse: bool,
    obs: &mut dyn TrainObserver<O>,
    clock: std::time::Duration,
) -> Result<(), String> {
    obs.clock(clock.as_secs_f64());
    obs.log("train/loss", step + 1, loss, &[]);
    if let Some(value) = penalty {
        obs.log("train/penalty", step + 1, value, &[]);
    }
    if (step + 1).is_multiple_of(per_epoch) {
        obs.log(
            "train/epoch_loss",
            step + 1,
            epoch_loss.0 / epoch_loss.1.max(1) as f64,
            &[],
        );
        *epoch_loss = (0.0, 0);
        if let Some(ev) = eval {
            let (l, acc) = ev
                .problem(o, net)
                .loss_accuracy(mse)
                .map_err(|e| e.to_string())?;
            obs.log("eval/loss", step + 1, l, &[]);
            if let Some(a) = acc {
                obs.log("eval/accuracy", step + 1, a, &[]);
            }
        }
    }
    Ok(())
}

/// The batch `x [nb, C, H, W]` randomly cropped after zero padding and
/// flipped left–right, each example on its own draw (from the seed and
/// the step, so a rerun sees the same batches). One gather on the device:
/// every output pixel reads one input pixel or an appended zero.
pub fn augment<O: Ops>(o: &O, x: &O::T, a: &Augment, step: u64) -> OpsResult<O::T> {
    let shape = o.shape(x);
    let [nb, c, h, w] = shape[..] else {
        return Err(OpsError(format!(
            "augmentation needs image batches [n, C, H, W], found {shape:?}"
        )));
    };
    let hw = h * w;
    let mut rng = Rng::new(a.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let p = a.padding as isize;
    let mut idx = Vec::with_capacity(nb * c * hw);
    for b in 0..nb {
        let dy = rng.below(2 * a.padding + 1) as isize - p;
        let dx = rng.below(2 * a.padding + 1) as isize - p;
        let flip = a.flip && rng.uniform() < 0.5;
        for ch in 0..c {
            let base = ((b * c + ch) * (hw + 1)) as u32;
            for r in 0..h {
                for col in 0..w {
                    let col = if flip { w - 1 - col } else { col };
                    let (sr, sc) = (r as isize + dy, col as isize + dx);
                    let inside = sr >= 0 && sc >= 0 && (sr as usize) < h && (sc as usize) < w;
                    let src = if inside {
                        sr as usize * w + sc as usize
                    } else {
                        hw
                    };
                    idx.push(base + src as u32);
                }
            }
        }
    }
    let flat = o.cat(&[o.reshape(x, &[nb * c, hw])?, o.zeros(&[nb * c, 1])?], 1)?;
    let flat = o.reshape(&flat, &[nb * c * (hw + 1)])?;
    let out = o.index_select(&flat, &o.upload_index(&idx)?, 0)?;
    o.reshape(&out, &shape)
}

/// Per-example tracking: every example's loss and correctness (written
/// compactly by the observer), and their means per group as
/// `examples/loss` and `examples/accuracy` tagged `group = …`
/// (difficulty bins are `difficulty 1/k`, the easiest, to `difficulty k/k`).
#[allow(clippy::too_many_arguments)]
fn track<O: Ops>(
    o: &O,
    net: &Net<O>,
    data: &TrainData<O::T>,
    mse: bool,
    step: u64,
    groups: &[Group],
    difficulty: Option<&(Vec<usize>, usize)>,
    obs: &mut dyn TrainObserver<O>,
) -> Result<(), String> {
    let (loss, correct) = data
        .problem(o, net)
        .per_example_loss(mse)
        .map_err(|e| e.to_string())?;
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
                if let Some((bin, k)) = difficulty {
                    for b in 0..*k {
                        report(format!("difficulty {}/{k}", b + 1), &|i| bin[i] == b);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::candle::CandleOps;
    use crate::plan::Dtype;

    /// Every augmented example is its original shifted by at most the
    /// padding (zeros where the shift leaves the image), mirrored or not;
    /// without padding and flips it is the identity.
    #[test]
    fn crop_flip_is_a_shift_and_mirror_of_each_example() {
        let o = CandleOps::new("cpu", Dtype::F64).unwrap();
        let (nb, c, h, w) = (6, 2, 5, 4);
        let data: Vec<f64> = (0..nb * c * h * w).map(|i| i as f64 + 1.0).collect();
        let x = o.upload(&[nb, c, h, w], &data).unwrap();
        let none = Augment {
            padding: 0,
            flip: false,
            seed: 1,
        };
        assert_eq!(
            o.download(&augment(&o, &x, &none, 3).unwrap()).unwrap(),
            data
        );
        let a = Augment {
            padding: 2,
            flip: true,
            seed: 7,
        };
        let mut flips = 0;
        for step in 0..4 {
            let y = o.download(&augment(&o, &x, &a, step).unwrap()).unwrap();
            let again = o.download(&augment(&o, &x, &a, step).unwrap()).unwrap();
            assert_eq!(y, again, "the same seed and step give the same batch");
            for b in 0..nb {
                let at = |v: &[f64], ch: usize, r: isize, col: isize| -> f64 {
                    if r < 0 || col < 0 || r >= h as isize || col >= w as isize {
                        0.0
                    } else {
                        v[((b * c + ch) * h + r as usize) * w + col as usize]
                    }
                };
                let fits = |flip: bool, dy: isize, dx: isize| {
                    (0..c).all(|ch| {
                        (0..h as isize).all(|r| {
                            (0..w as isize).all(|col| {
                                let sc = if flip { w as isize - 1 - col } else { col } + dx;
                                at(&y, ch, r, col) == at(&data, ch, r + dy, sc)
                            })
                        })
                    })
                };
                let found = [false, true]
                    .into_iter()
                    .find(|&f| (-2..=2).any(|dy| (-2..=2).any(|dx| fits(f, dy, dx))));
                assert!(
                    found.is_some(),
                    "example {b} at step {step} is no crop/flip"
                );
                flips += (found == Some(true)) as usize;
            }
        }
        assert!(
            flips > 0 && flips < 4 * nb,
            "{flips} of {} examples flipped",
            4 * nb
        );
    }
}
