//! Example difficulty for per-example tracking: a cross-validated
//! consistency score in the spirit of the c-scores of Jiang et al. (2021),
//! which George et al. (2022, "lazy vs hasty") use to group training
//! examples by difficulty.
//!
//! The score of an example measures how well models trained **without** it
//! predict its (possibly noisy) label. It depends only on the model, its
//! initial parameters, the data and the run's loss, batch size, optimiser
//! and seed — not on the trajectory of the run being analysed — so several
//! training regimes on the same data (e.g. lazy and hasty) get the same
//! difficulty bins.
//!
//! What [`consistency_scores`] computes, for `n` examples:
//!
//! 1. For each repeat `r = 0 … repeats−1`, the examples are split into
//!    `folds` folds by a seeded random partition: a Fisher–Yates shuffle of
//!    `0..n` by [`crate::rng::Rng`] seeded with the `r`-th output (from 0)
//!    of `Rng::new(cfg.seed ^ 0x6373_636f_7265)`; the example at shuffled
//!    position `p` goes to fold `p mod folds` (fold sizes differ by at most
//!    one).
//! 2. For each fold `f`, a fresh copy of the model, starting from the run's
//!    initial parameters, is trained with
//!    [`crate::engine::train::train`] on the other folds' examples (in index
//!    order). Training uses the run's loss and batch size, plain
//!    parametrisation (no scaling or linearisation), a constant learning
//!    rate, no per-example tracking, no hooks and no evaluation set, for
//!    `epochs × ⌈n_train / batch⌉` optimiser steps, with the run's optimiser
//!    when it is SGD or Adam and otherwise (natural gradient) SGD with
//!    `lr = 0.05`, momentum 0.9, no Nesterov, no weight decay. Its
//!    mini-batch shuffling seed is the next output of the repeat's
//!    partition generator after the shuffle (one per fold, in fold order).
//! 3. Each held-out example `i` of fold `f` gets the score of that model:
//!    - classification (`cfg.loss` is cross-entropy): the probability the
//!      model gives to the example's label `y[i · target_dim]` — the softmax
//!      of the outputs for `C ≥ 2` outputs, `σ(z)` (label 1) or `1 − σ(z)`
//!      (label 0) for a single logit;
//!    - regression (`cfg.loss` is MSE): minus the example's loss, PyTorch's
//!      MSE averaged over the outputs (as in training).
//! 4. An example's consistency score is the mean of its `repeats` held-out
//!    scores (each example is held out exactly once per repeat).
//!
//! Higher means easier. [`bins`] turns scores into `k` quantile bins,
//! 0 = easiest … k−1 = hardest.
//!
//! Cost: `folds × repeats` trainings of `epochs` epochs on `(folds−1)/folds`
//! of the data (with the defaults, 8 trainings of 10 epochs).

/// One line on what the scores are, written next to them.
pub const METHOD: &str = "cross-validated consistency (c-score-like): mean over 2 random 4-fold partitions of the probability that a model trained from the run's initial weights for 10 epochs without the example gives its (possibly noisy) label; higher = easier; bin 0 = easiest";

use crate::engine::train::{difficulty_bins_wanted, train, TrainData, TrainObserver};
use crate::geometry::build::Problem;
use crate::geometry::net::{HostParams, Net};
use crate::geometry::ops::Ops;
use crate::plan::{Length, LossKind, LrSchedule, ModelSpec, Optimizer, TrainConfig, TrainMode};
use crate::rng::Rng;

/// Mixed into the run's seed so that the partitions do not reuse the
/// run's own shuffling stream.
const SALT: u64 = 0x6373_636f_7265; // "cscore"

/// How the consistency scores are estimated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsistencyOptions {
    /// Number of folds of each partition (at least 2).
    pub folds: usize,
    /// Number of independent random partitions (at least 1).
    pub repeats: usize,
    /// Training epochs of each held-out model.
    pub epochs: u64,
}

impl Default for ConsistencyOptions {
    fn default() -> Self {
        ConsistencyOptions {
            folds: 4,
            repeats: 2,
            epochs: 10,
        }
    }
}

/// The optimiser of the held-out trainings: the run's when it is SGD or
/// Adam, otherwise SGD (lr 0.05, momentum 0.9).
fn fold_optimizer(run: &Optimizer) -> Optimizer {
    match run {
        Optimizer::Sgd { .. } | Optimizer::Adam { .. } => run.clone(),
        Optimizer::Ngd { .. } => Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
    }
}

/// The configuration of one held-out training on `n_train` examples.
fn fold_config(cfg: &TrainConfig, n_train: usize, epochs: u64, seed: u64) -> TrainConfig {
    let batch = cfg.batch.clamp(1, n_train.max(1));
    TrainConfig {
        augment: None,
        penalties: vec![],
        loss: cfg.loss,
        optimizer: fold_optimizer(&cfg.optimizer),
        length: Length::Epochs(epochs),
        batch: cfg.batch,
        schedule: LrSchedule::Constant,
        mode: TrainMode::Plain,
        seed,
        eval: None,
        track: None,
        total_steps: epochs * n_train.div_ceil(batch) as u64,
    }
}

/// Ignores everything training reports.
struct Quiet;

impl<O: Ops> TrainObserver<O> for Quiet {}

/// Per-example consistency: higher = easier (see the module documentation
/// for exactly what is computed).
pub fn consistency_scores<O: Ops>(
    o: &O,
    spec: &ModelSpec,
    init: &HostParams,
    data: &TrainData<O::T>,
    cfg: &TrainConfig,
    opts: &ConsistencyOptions,
) -> Result<Vec<f64>, String> {
    let n = data.n;
    let td = data.target_dim;
    if opts.folds < 2 {
        return Err(format!(
            "consistency scores need at least 2 folds (got {})",
            opts.folds
        ));
    }
    if opts.repeats == 0 {
        return Err("consistency scores need at least 1 repeat".into());
    }
    if n < opts.folds {
        return Err(format!(
            "consistency scores with {} folds need at least {} examples (got {n})",
            opts.folds, opts.folds
        ));
    }
    if td == 0 || data.y.len() != n * td {
        return Err(format!(
            "{} targets for {n} examples of target dimension {td}",
            data.y.len()
        ));
    }
    let mse = cfg.loss == LossKind::Mse;
    let c = spec.outputs();
    let index = |ids: &[usize]| -> Result<(O::T, Vec<f64>), String> {
        let idx: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        let x = o
            .index_select(data.x, &o.upload_index(&idx).map_err(|e| e.to_string())?, 0)
            .map_err(|e| e.to_string())?;
        let y = ids
            .iter()
            .flat_map(|&i| data.y[i * td..(i + 1) * td].iter().copied())
            .collect();
        Ok((x, y))
    };
    let mut sum = vec![0.0; n];
    let mut master = Rng::new(cfg.seed ^ SALT);
    for r in 0..opts.repeats {
        let mut rng = Rng::new(master.next_u64());
        let mut perm: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut perm);
        let mut fold_of = vec![0usize; n];
        for (p, &i) in perm.iter().enumerate() {
            fold_of[i] = p % opts.folds;
        }
        for f in 0..opts.folds {
            let context = |e: String| format!("consistency scores, repeat {r}, fold {f}: {e}");
            let (held, kept): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| fold_of[i] == f);
            let (xt, yt) = index(&kept).map_err(context)?;
            let train_data = TrainData {
                x: &xt,
                y: &yt,
                n: kept.len(),
                target_dim: td,
                flipped: &[],
            };
            let fcfg = fold_config(cfg, kept.len(), opts.epochs, rng.next_u64());
            let params = train(
                o,
                spec,
                init.clone(),
                &train_data,
                None,
                &fcfg,
                &[],
                &mut Quiet,
            )
            .map_err(context)?;
            let net = Net::new(o, spec, params).map_err(|e| context(e.to_string()))?;
            let (xh, yh) = index(&held).map_err(context)?;
            let scores = if mse {
                let p = Problem {
                    o,
                    net: &net,
                    x: &xh,
                    y: &yh,
                    target_dim: td,
                    n: held.len(),
                    slots: (0..net.slots.len()).collect(),
                    batch: held.len().clamp(1, 4096),
                };
                let (loss, _) = p
                    .per_example_loss(true)
                    .map_err(|e| context(e.to_string()))?;
                loss.into_iter().map(|l| -l).collect::<Vec<_>>()
            } else {
                label_probabilities(o, &net, &xh, &yh, held.len(), td, c).map_err(context)?
            };
            for (&i, s) in held.iter().zip(scores) {
                sum[i] += s;
            }
        }
    }
    Ok(sum.into_iter().map(|s| s / opts.repeats as f64).collect())
}

/// The probability the model gives to each example's label, forward in
/// batches of at most 4096.
fn label_probabilities<O: Ops>(
    o: &O,
    net: &Net<O>,
    x: &O::T,
    y: &[f64],
    n: usize,
    td: usize,
    c: usize,
) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let nb = (n - start).min(4096);
        let xb = o.narrow(x, 0, start, nb).map_err(|e| e.to_string())?;
        let z = net
            .forward(o, &xb, false)
            .and_then(|f| o.download(&f.output))
            .map_err(|e| e.to_string())?;
        for i in 0..nb {
            let zi = &z[i * c..(i + 1) * c];
            let label = y[(start + i) * td];
            out.push(if c == 1 {
                let p = 1.0 / (1.0 + (-zi[0]).exp());
                if label > 0.5 {
                    p
                } else {
                    1.0 - p
                }
            } else {
                let k = label as usize;
                if label < 0.0 || k >= c {
                    return Err(format!(
                        "label {label} of example {} is not a class of a model with {c} outputs",
                        start + i
                    ));
                }
                let mx = zi.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v));
                let s: f64 = zi.iter().map(|v| (v - mx).exp()).sum();
                (zi[k] - mx).exp() / s
            });
        }
        start += nb;
    }
    Ok(out)
}

/// Quantile bins of difficulty: examples sorted by decreasing score (ties
/// broken by increasing index; NaN counts as the lowest score), and the
/// example at sorted position `p` of `n` goes to bin `⌊p·k/n⌋`. So 0 holds
/// the easiest (highest scores) and `k−1` the hardest, and bin sizes differ
/// by at most one. `k = 0` is treated as 1.
pub fn bins(scores: &[f64], k: usize) -> Vec<usize> {
    let n = scores.len();
    let k = k.max(1);
    let key = |i: usize| {
        if scores[i].is_nan() {
            f64::NEG_INFINITY
        } else {
            scores[i]
        }
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    let mut out = vec![0; n];
    for (p, &i) in order.iter().enumerate() {
        out[i] = p * k / n;
    }
    out
}

/// The difficulty bins a run's per-example tracking asks for (`None`
/// when it does not): consistency scores from held-out trainings that do
/// not depend on the run's mode or optimiser, so every regime gets the
/// same bins. The scores go to `obs` as well.
pub fn tracking_bins<O: Ops>(
    o: &O,
    spec: &ModelSpec,
    params: &HostParams,
    data: &TrainData<O::T>,
    cfg: &TrainConfig,
    obs: &mut dyn TrainObserver<O>,
) -> Result<Option<(Vec<usize>, usize)>, String> {
    let Some(k) = difficulty_bins_wanted(cfg) else {
        return Ok(None);
    };
    let opts = ConsistencyOptions::default();
    let score = consistency_scores(o, spec, params, data, cfg, &opts)?;
    let bin = bins(&score, k);
    obs.difficulty(&score, &bin, k)?;
    Ok(Some((bin, k)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::candle::CandleOps;
    use crate::geometry::init::init_params;
    use crate::plan::{Dtype, FisherVariant, Group, Op, Structure, Tracking};

    fn mlp_spec(src: &str) -> ModelSpec {
        let src = format!("experiment d {{ dtype = f64 }}\nmodel net = {src}\n");
        let plan = crate::compile_source(&src, &Default::default()).expect("model compiles");
        plan.steps
            .iter()
            .find_map(|s| match &s.op {
                Op::Model { spec, .. } => Some(spec.clone()),
                _ => None,
            })
            .expect("a model step")
    }

    /// Two Gaussian blobs in 2-d around (±2, 0), class = i mod 2, with the
    /// labels of `flip` examples changed.
    fn blobs(n: usize, flip: usize) -> (Vec<f64>, Vec<f64>, Vec<bool>) {
        let mut rng = Rng::new(17);
        let mut x = Vec::with_capacity(2 * n);
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % 2;
            let cx = if c == 0 { -2.0 } else { 2.0 };
            x.push(cx + 0.5 * rng.normal());
            x.push(0.5 * rng.normal());
            y.push(c as f64);
        }
        let mut flipped = vec![false; n];
        for i in rng.sample_without_replacement(n, flip) {
            flipped[i] = true;
            y[i] = 1.0 - y[i];
        }
        (x, y, flipped)
    }

    fn config(optimizer: Optimizer) -> TrainConfig {
        TrainConfig {
            loss: LossKind::CrossEntropy,
            optimizer,
            penalties: vec![],
            length: Length::Epochs(3),
            batch: 10,
            schedule: LrSchedule::Cosine,
            mode: TrainMode::Linearized { center: false },
            seed: 5,
            eval: None,
            track: Some(Tracking {
                every: 1,
                groups: vec![Group::All],
            }),
            total_steps: 12,
            augment: None,
        }
    }

    fn sgd() -> Optimizer {
        Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        }
    }

    /// Scores of the noisy blobs with the default options.
    fn noisy_scores() -> (Vec<f64>, Vec<bool>) {
        let o = CandleOps::new("cpu", Dtype::F64).unwrap();
        let spec = mlp_spec("mlp(in = 2, hidden = [8], out = 2, init = pytorch(seed = 3))");
        let init = init_params(&spec, &spec.init);
        let n = 40;
        let (x, y, flipped) = blobs(n, 5);
        let xt = o.upload(&[n, 2], &x).unwrap();
        let data = TrainData {
            x: &xt,
            y: &y,
            n,
            target_dim: 1,
            flipped: &flipped,
        };
        let s = consistency_scores(
            &o,
            &spec,
            &init,
            &data,
            &config(sgd()),
            &ConsistencyOptions::default(),
        )
        .unwrap();
        (s, flipped)
    }

    #[test]
    fn bins_are_balanced_ordered_and_easiest_first() {
        let scores = [0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2];
        let b = bins(&scores, 3);
        // Sorted by decreasing score: 1, 5, 3, 0, 4, 6, 2 → positions
        // 0..7 → bins ⌊3p/7⌋ = 0 0 0 1 1 2 2.
        assert_eq!(b, vec![1, 0, 2, 0, 1, 0, 2]);
        for n in 0..30 {
            for k in 1..8 {
                let s: Vec<f64> = (0..n).map(|i| ((i * 7919) % 13) as f64).collect();
                let b = bins(&s, k);
                let mut sizes = vec![0usize; k];
                b.iter().for_each(|&j| sizes[j] += 1);
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "n {n} k {k}: {sizes:?}");
                // A higher score never lands in a harder bin.
                for i in 0..n {
                    for j in 0..n {
                        if s[i] > s[j] {
                            assert!(b[i] <= b[j], "n {n} k {k}");
                        }
                    }
                }
            }
        }
        // Ties by index: the earlier example is the easier; NaN is hardest.
        assert_eq!(bins(&[1.0, 1.0, 1.0, 1.0], 2), vec![0, 0, 1, 1]);
        assert_eq!(bins(&[f64::NAN, 0.0, -1.0], 3), vec![2, 0, 1]);
        assert_eq!(bins(&[0.3, 0.1], 0), vec![0, 0]);
    }

    #[test]
    fn flipped_labels_score_low_and_land_in_the_hardest_bin() {
        let (s, flipped) = noisy_scores();
        assert!(s.iter().all(|v| (0.0..=1.0).contains(v)), "{s:?}");
        let mean = |want: bool| {
            let v: Vec<f64> = (0..s.len())
                .filter(|&i| flipped[i] == want)
                .map(|i| s[i])
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let (noisy, clean) = (mean(true), mean(false));
        assert!(noisy < clean - 0.5, "flipped {noisy}, clean {clean}");
        // 5 of 40 flipped; bins of 8: most of them are the hardest.
        let b = bins(&s, 5);
        let hardest = (0..s.len()).filter(|&i| flipped[i] && b[i] == 4).count();
        assert!(hardest >= 4, "{hardest} of 5 flipped in the hardest bin");
    }

    #[test]
    fn scores_are_deterministic() {
        let (a, _) = noisy_scores();
        let (b, _) = noisy_scores();
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn held_out_trainings_are_plain_constant_and_untracked() {
        let c = fold_config(&config(sgd()), 30, 10, 99);
        assert_eq!(c.mode, TrainMode::Plain);
        assert_eq!(c.schedule, LrSchedule::Constant);
        assert_eq!((c.track, c.eval), (None, None));
        assert_eq!((c.total_steps, c.seed, c.batch), (30, 99, 10));
        assert_eq!(c.optimizer, sgd());
        let adam = Optimizer::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        assert_eq!(fold_config(&config(adam.clone()), 7, 2, 0).optimizer, adam);
        // Batch larger than the data: one step per epoch.
        assert_eq!(fold_config(&config(adam), 7, 2, 0).total_steps, 2);
        let ngd = Optimizer::Ngd {
            fim: Structure::Diag,
            fisher: FisherVariant::True,
            lr: 1.0,
            damping: 1e-3,
            refresh: 1,
            refit: None,
            momentum: 0.0,
            decay: 0.95,
            batchnorm: crate::plan::BatchNormStats::Running,
        };
        assert_eq!(
            fold_config(&config(ngd), 30, 1, 0).optimizer,
            Optimizer::Sgd {
                lr: 0.05,
                momentum: 0.9,
                nesterov: false,
                weight_decay: 0.0
            }
        );
    }

    #[test]
    fn regression_scores_are_minus_losses_and_bad_options_are_refused() {
        let o = CandleOps::new("cpu", Dtype::F64).unwrap();
        let spec = mlp_spec("mlp(in = 2, hidden = [4], out = 1, init = pytorch(seed = 1))");
        let init = init_params(&spec, &spec.init);
        let n = 12;
        let (x, _, _) = blobs(n, 0);
        // y = x₀, with one outlier.
        let mut y: Vec<f64> = (0..n).map(|i| x[2 * i]).collect();
        y[3] += 20.0;
        let xt = o.upload(&[n, 2], &x).unwrap();
        let data = TrainData {
            x: &xt,
            y: &y,
            n,
            target_dim: 1,
            flipped: &[],
        };
        let mut cfg = config(sgd());
        cfg.loss = LossKind::Mse;
        cfg.optimizer = Optimizer::Sgd {
            lr: 0.02,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        };
        let opts = ConsistencyOptions {
            folds: 3,
            repeats: 1,
            epochs: 5,
        };
        let s = consistency_scores(&o, &spec, &init, &data, &cfg, &opts).unwrap();
        assert!(s.iter().all(|v| *v <= 0.0 && v.is_finite()), "{s:?}");
        assert_eq!(bins(&s, n)[3], n - 1, "the outlier is the hardest: {s:?}");
        let bad = |folds, repeats| {
            consistency_scores(
                &o,
                &spec,
                &init,
                &data,
                &cfg,
                &ConsistencyOptions {
                    folds,
                    repeats,
                    epochs: 1,
                },
            )
            .unwrap_err()
        };
        assert!(bad(1, 1).contains("at least 2 folds"));
        assert!(bad(2, 0).contains("at least 1 repeat"));
        assert!(bad(13, 1).contains("at least 13 examples"));
    }
}
