//! Training: the linearised and the scaled model, and natural-gradient
//! steps.

use super::*;

// ---------------------------------------------------------------- training

/// `J v` with `J` in `jacobian_rows` layout (rows `a·n + i`), as `[n, C]`.
fn j_times(j: &Mat, v: &[f64], n: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * c];
    for i in 0..n {
        for a in 0..c {
            out[i * c + a] = (0..v.len()).map(|k| j.get(a * n + i, k) * v[k]).sum();
        }
    }
    out
}

/// The linearised model is `f(w₀) + J(w₀) Δw` (forward mode, to 1e-10
/// against the dense Jacobian), its directional derivative matches central
/// finite differences of the network (1e-6), it is exactly linear in Δw,
/// and its Jacobian is the network's at w₀ whatever the weights (1e-12).
/// Every layer type takes part, in chains and in graphs.
#[test]
fn linearised_model_is_the_first_order_expansion_at_w0() {
    let chains = [(ALL_2D, 31), (ALL_1D, 32), (POOL_FIRST, 33), (MLP, 34)];
    for (model, seed) in chains {
        check_linearised(model, seed);
    }
    check_linearised(RESNET, 35);
    check_linearised(BRANCHES, 36);
    check_linearised(MORE_2D, 37);
    check_linearised(HARD, 41);
    check_linearised(MORE_1D, 38);
    check_linearised(NORMS_1D, 40);
    check_linearised(PLAIN_NORMS, 39);
}

fn check_linearised(model: impl Model, seed: u64) {
    let fx = Fx::new(model, 5, seed);
    let (n, c) = (fx.n, fx.c);
    let w0 = fx.params.flat();
    let dw: Vec<f64> = fx
        .random_vector(seed + 100)
        .iter()
        .map(|x| 0.3 * x)
        .collect();
    let j0 = fx.jacobian_of(&fx.net);
    let f0 = fx.outputs_of(&fx.net);
    let lin = fx.model_at(&axpy(&w0, 1.0, &dw), &LINEARISED);
    let taylor = axpy(&f0, 1.0, &j_times(&j0, &dw, n, c));
    assert_close(
        &format!("f_lin ({model})"),
        &fx.outputs_of(&lin),
        &taylor,
        1e-10,
    );
    // Forward mode against finite differences of the network itself.
    let h = 1e-6;
    let zp = fx.outputs_at(&axpy(&w0, h, &dw));
    let zm = fx.outputs_at(&axpy(&w0, -h, &dw));
    let fd: Vec<f64> = zp
        .iter()
        .zip(&zm)
        .map(|(p, m)| (p - m) / (2.0 * h))
        .collect();
    let jv: Vec<f64> = fx
        .outputs_of(&lin)
        .iter()
        .zip(&f0)
        .map(|(a, b)| a - b)
        .collect();
    assert_close(&format!("J v by forward mode ({model})"), &jv, &fd, 1e-6);
    // Centred: J(w₀) Δw alone.
    let centred = fx.model_at(
        &axpy(&w0, 1.0, &dw),
        &TrainMode::Linearized { center: true },
    );
    assert_close(
        &format!("centred f_lin ({model})"),
        &fx.outputs_of(&centred),
        &jv,
        1e-12,
    );
    // Exactly linear: doubling Δw doubles the change.
    let lin2 = fx.model_at(&axpy(&w0, 2.0, &dw), &LINEARISED);
    let jv2: Vec<f64> = fx
        .outputs_of(&lin2)
        .iter()
        .zip(&f0)
        .map(|(a, b)| a - b)
        .collect();
    let twice: Vec<f64> = jv.iter().map(|x| 2.0 * x).collect();
    assert_close(&format!("linearity ({model})"), &jv2, &twice, 1e-12);
    assert_close(
        &format!("linearised Jacobian ({model})"),
        &fx.jacobian_of(&lin2).data,
        &j0.data,
        1e-12,
    );
}

/// The gradient of the linearised model's loss is `J(w₀)ᵀ ∇ℓ` at the
/// linearised outputs: it matches central finite differences of that loss
/// along random directions (1e-6), and is not the network's own gradient.
#[test]
fn linearised_loss_gradient_matches_finite_differences() {
    let fx = Fx::new(MLP, 7, 41);
    let w0 = fx.params.flat();
    let w = axpy(&w0, 0.5, &fx.random_vector(42));
    let lin = fx.model_at(&w, &LINEARISED);
    let (_, g) = fx.loss_grad_of(&lin);
    let h = 1e-5;
    for s in 0..3 {
        let v = fx.random_vector(50 + s);
        let lp = fx
            .loss_grad_of(&fx.model_at(&axpy(&w, h, &v), &LINEARISED))
            .0;
        let lm = fx
            .loss_grad_of(&fx.model_at(&axpy(&w, -h, &v), &LINEARISED))
            .0;
        let fd = (lp - lm) / (2.0 * h);
        assert_close("directional derivative", &[dot(&g, &v)], &[fd], 1e-6);
    }
    let (_, g_net) = fx.loss_grad_of(&fx.model_at(&w, &TrainMode::Plain));
    assert!(
        rel_err(&g, &g_net) > 1e-3,
        "the linearised gradient is the network's"
    );
}

/// `f_α = α (f(w) − f(w₀))` (1e-12), its Jacobian is `α J(w)` (1e-12), its
/// loss gradient matches finite differences (1e-6); uncentred at α = 1 it
/// is the network, bit for bit.
#[test]
fn scaled_model_is_alpha_times_the_centred_network() {
    let fx = Fx::new(MLP, 6, 43);
    let w0 = fx.params.flat();
    let w = axpy(&w0, 0.01, &fx.random_vector(44));
    let alpha = 10.0;
    let scaled = TrainMode::Scaled {
        alpha,
        center: true,
    };
    let net = fx.model_at(&w, &scaled);
    let f0 = fx.outputs_of(&fx.net);
    let f = fx.outputs_at(&w);
    let want: Vec<f64> = f.iter().zip(&f0).map(|(a, b)| alpha * (a - b)).collect();
    assert_close("f_alpha", &fx.outputs_of(&net), &want, 1e-12);
    let plain = fx.model_at(&w, &TrainMode::Plain);
    let j_alpha: Vec<f64> = fx
        .jacobian_of(&plain)
        .data
        .iter()
        .map(|x| alpha * x)
        .collect();
    assert_close(
        "Jacobian of f_alpha",
        &fx.jacobian_of(&net).data,
        &j_alpha,
        1e-12,
    );
    let (_, g) = fx.loss_grad_of(&net);
    let h = 1e-6;
    let v = fx.random_vector(45);
    let lp = fx.loss_grad_of(&fx.model_at(&axpy(&w, h, &v), &scaled)).0;
    let lm = fx.loss_grad_of(&fx.model_at(&axpy(&w, -h, &v), &scaled)).0;
    assert_close(
        "scaled gradient",
        &[dot(&g, &v)],
        &[(lp - lm) / (2.0 * h)],
        1e-6,
    );
    assert!((net.loss_scale() - 1.0 / (alpha * alpha)).abs() < 1e-18);
    let one = fx.model_at(
        &w,
        &TrainMode::Scaled {
            alpha: 1.0,
            center: false,
        },
    );
    assert_eq!(fx.outputs_of(&one), f);
    assert_eq!(fx.loss_grad_of(&one), fx.loss_grad_of(&plain));
}

struct Quiet;
impl TrainObserver<TestOps> for Quiet {}

fn config(optimizer: Optimizer, mode: TrainMode, steps: u64, batch: usize) -> TrainConfig {
    TrainConfig {
        augment: None,
        penalties: vec![],
        loss: LossKind::CrossEntropy,
        optimizer,
        length: Length::Steps(steps),
        batch,
        schedule: LrSchedule::Constant,
        mode,
        seed: 3,
        eval: None,
        track: None,
        total_steps: steps,
    }
}

impl Fx {
    /// The fixture's examples and class labels as training reads them.
    fn data(&self) -> TrainData<'_, T> {
        TrainData {
            x: &self.x,
            y: &self.labels,
            n: self.n,
            target_dim: 1,
            flipped: &[],
        }
    }

    fn train(&self, cfg: &TrainConfig) -> Vec<f64> {
        let data = self.data();
        train(
            &self.o,
            &self.spec,
            self.params.clone(),
            &data,
            None,
            cfg,
            &[],
            &mut Quiet,
        )
        .unwrap()
        .flat()
    }
}

fn ngd(fim: Structure, refresh: u64, refit: Option<u64>) -> Optimizer {
    Optimizer::Ngd {
        fim,
        fisher: FisherVariant::True,
        lr: 0.7,
        damping: 0.05,
        refresh,
        refit,
        momentum: 0.0,
        decay: 0.95,
        batchnorm: BatchNormStats::Running,
    }
}

/// [`ngd`] whose Fisher normalises BatchNorm with the mini-batch's
/// statistics.
fn with_batch_stats(mut opt: Optimizer) -> Optimizer {
    match &mut opt {
        Optimizer::Ngd { batchnorm, .. } => *batchnorm = BatchNormStats::Batch,
        other => panic!("{other:?} is no natural gradient"),
    }
    opt
}

/// One natural-gradient step on the full batch is `w − lr (F + λI)⁻¹ ∇L`
/// with F the representation built directly (Dense: the exact solve of the
/// exact Fisher; KFAC with π-damping; EKFAC refitted), to 1e-10. A second
/// step uses the running average 0.95 F(w₀) + 0.05 F(w₁).
#[test]
fn natural_gradient_steps_solve_with_the_fisher() {
    let fx = Fx::new(CNN, 10, 61);
    let w0 = fx.params.flat();
    let (lr, damping) = (0.7, 0.05);
    let (_, g0) = fx.loss_grad_of(&fx.net);
    let p = fx.problem(fx.n);
    let exact = {
        let mut f = p.fim_dense(&classification()).unwrap().to_dense().unwrap();
        f.add_diag(damping);
        nngeo::linalg::solve_sym(&f, &Mat::from_vec(g0.len(), 1, g0.clone()))
            .unwrap()
            .data
    };
    let got = fx.train(&config(
        ngd(Structure::Dense, 1, None),
        TrainMode::Plain,
        1,
        fx.n,
    ));
    assert_close("dense NGD step", &got, &axpy(&w0, -lr, &exact), 1e-10);
    for (s, kind) in [
        (Structure::BlockDiag, BlockKind::Dense),
        (Structure::Diag, BlockKind::Diag),
        (Structure::Kfac, BlockKind::Kfac),
        (
            Structure::Ekfac {
                refit: true,
                initial_basis: false,
            },
            BlockKind::Ekfac { refit: true },
        ),
    ] {
        let refit = matches!(s, Structure::Ekfac { .. }).then_some(2);
        let f = p.fim_blocks(&classification(), &fx.kinds(kind)).unwrap();
        let want = axpy(&w0, -lr, &f.solve(&g0, damping).unwrap());
        let got = fx.train(&config(ngd(s.clone(), 1, refit), TrainMode::Plain, 1, fx.n));
        assert_close(&format!("{} NGD step", s.name()), &got, &want, 1e-10);
    }
    // Two Diag steps: the second preconditions with the running average.
    let w1 = fx.train(&config(
        ngd(Structure::Diag, 1, None),
        TrainMode::Plain,
        1,
        fx.n,
    ));
    let d0 = p
        .fim_blocks(&classification(), &fx.kinds(BlockKind::Diag))
        .unwrap()
        .diag()
        .unwrap();
    let net1 = fx.model_at(&w1, &TrainMode::Plain);
    let p1 = Problem {
        net: &net1,
        ..fx.problem(fx.n)
    };
    let d1 = p1
        .fim_blocks(&classification(), &fx.kinds(BlockKind::Diag))
        .unwrap()
        .diag()
        .unwrap();
    let (_, g1) = fx.loss_grad_of(&net1);
    let step: Vec<f64> = (0..g1.len())
        .map(|k| g1[k] / (0.95 * d0[k] + 0.05 * d1[k] + damping))
        .collect();
    let got = fx.train(&config(
        ngd(Structure::Diag, 1, None),
        TrainMode::Plain,
        2,
        fx.n,
    ));
    assert_close(
        "running-average Diag step",
        &got,
        &axpy(&w1, -lr, &step),
        1e-10,
    );
}

/// A natural gradient preconditioned by a mix: one full-batch step on a
/// network with norm layers is `w − lr (F + λI)⁻¹ ∇L` with F the mix's
/// blocks built directly (EKFAC refitted for the convolutions, KFAC for the
/// Linear layer, a dense block for each norm), to 1e-10; and a mix that
/// gives every layer EKFAC (or KFAC) trains exactly as EKFAC (KFAC) does,
/// running averages, refreshes and refits included, over four steps.
#[test]
fn natural_gradient_with_a_mix_uses_each_layers_block() {
    use std::collections::BTreeMap;
    let ekfac = Structure::Ekfac {
        refit: true,
        initial_basis: false,
    };
    let mix = |parts: &[(LayerFamily, Structure)]| Structure::Mix {
        families: parts.iter().cloned().collect::<BTreeMap<_, _>>(),
        layers: BTreeMap::new(),
    };
    // Norms without running statistics: training and the Fisher see the
    // same network (a BatchNorm trains on batch statistics).
    let fx = Fx::new(
        "sequential(conv2d(1, 3, kernel = 3, padding = 1), groupnorm(1, 3), gelu,\
         conv2d(3, 4, kernel = 3, stride = 2), tanh, flatten, layernorm([36]), linear(36, 5),\
         input = [1, 8, 8], init = pytorch(seed = 5))",
        10,
        62,
    );
    let w0 = fx.params.flat();
    let (_, g0) = fx.loss_grad_of(&fx.net);
    let p = fx.problem(fx.n);
    let kinds: Vec<BlockKind> = fx
        .net
        .slots
        .iter()
        .map(|s| {
            let layer = &fx.net.spec.layers[s.index].layer;
            match layer.family() {
                Some(LayerFamily::Conv) => BlockKind::Ekfac { refit: true },
                Some(LayerFamily::Linear) => BlockKind::Kfac,
                _ => BlockKind::Dense,
            }
        })
        .collect();
    assert!(kinds.contains(&BlockKind::Dense) && kinds.contains(&BlockKind::Kfac));
    let f = p.fim_blocks(&classification(), &kinds).unwrap();
    let want = axpy(&w0, -0.7, &f.solve(&g0, 0.05).unwrap());
    let fim = mix(&[
        (LayerFamily::Conv, ekfac.clone()),
        (LayerFamily::Linear, Structure::Kfac),
        (LayerFamily::Norm, Structure::BlockDiag),
    ]);
    let got = fx.train(&config(ngd(fim, 1, Some(1)), TrainMode::Plain, 1, fx.n));
    assert_close("mixed NGD step", &got, &want, 1e-10);

    let fx = Fx::new(CNN, 10, 63);
    let all = |s: &Structure| {
        mix(&[
            (LayerFamily::Conv, s.clone()),
            (LayerFamily::Linear, s.clone()),
        ])
    };
    for (s, refit) in [(ekfac.clone(), Some(1)), (Structure::Kfac, None)] {
        let plain = fx.train(&config(ngd(s.clone(), 2, refit), TrainMode::Plain, 4, 5));
        let mixed = fx.train(&config(ngd(all(&s), 2, refit), TrainMode::Plain, 4, 5));
        assert_close(&format!("{} as a mix", s.name()), &mixed, &plain, 1e-12);
    }
}

/// `ngd(..., batchnorm = batch)`: one full-batch step on a network with
/// BatchNorm1d and BatchNorm2d is `w − lr (F_B + λI)⁻¹ ∇L`, with ∇L the
/// training-mode gradient and F_B the dense Fisher of the network whose
/// BatchNorms normalise with that batch's mean and biased variance (a copy
/// whose running buffers hold them), to 1e-10. With the running statistics
/// (the default) the step is the evaluation-mode Fisher's, and differs.
/// On a centred scaled model, whose initial copy normalises with its own
/// batch statistics in training, the second step (at w₁ ≠ w₀) uses the
/// network's statistics at w₁ and the copy's at w₀.
#[test]
fn natural_gradient_with_batch_statistics_uses_the_trained_normalisation() {
    let fx = Fx::new(
        "sequential(conv2d(1, 3, kernel = 3, padding = 1), batchnorm2d(3), relu,\
         conv2d(3, 2, kernel = 3, stride = 2), flatten, batchnorm1d(18), tanh, linear(18, 4),\
         input = [1, 8, 8], init = pytorch(seed = 5))",
        10,
        64,
    );
    let (lr, damping) = (0.7, 0.05);
    let w0 = fx.params.flat();
    let p = fx.problem(fx.n);
    let (_, g, stats) = p.loss_gradient_in(false, Phase::Train { seed: 0 }).unwrap();
    assert_eq!(stats.len(), 2, "two BatchNorm layers");
    let mut batch_params = fx.params.clone();
    for st in &stats {
        let name = &fx.spec.layers[st.layer].name;
        let n = st.count as f64;
        for (key, values) in [
            ("running_mean", st.mean.clone()),
            // The unbiased variance the running average takes, made biased.
            (
                "running_var",
                st.var.iter().map(|v| v * (n - 1.0) / n).collect(),
            ),
        ] {
            let t = batch_params
                .tensors
                .iter_mut()
                .find(|t| t.key == format!("{name}.{key}"))
                .unwrap();
            assert_ne!(t.data, values, "running statistics equal the batch's");
            t.data = values;
        }
    }
    let batch_net = Net::new(&fx.o, &fx.spec, batch_params).unwrap();
    let fisher_at = |net: &Net<TestOps>| {
        Problem {
            net,
            ..fx.problem(fx.n)
        }
        .fim_dense(&classification())
        .unwrap()
    };
    let want = axpy(&w0, -lr, &fisher_at(&batch_net).solve(&g, damping).unwrap());
    let opt = ngd(Structure::Dense, 1, None);
    let got = fx.train(&config(
        with_batch_stats(opt.clone()),
        TrainMode::Plain,
        1,
        fx.n,
    ));
    assert_close("batch-statistics NGD step", &got, &want, 1e-10);
    let running = fx.train(&config(opt, TrainMode::Plain, 1, fx.n));
    let eval = axpy(&w0, -lr, &fisher_at(&fx.net).solve(&g, damping).unwrap());
    assert_close("running-statistics NGD step", &running, &eval, 1e-10);
    assert!(
        rel_err(&running, &got) > 1e-3,
        "the two statistics gave the same step"
    );

    // A centred scaled model, two steps without running averages.
    let mode = TrainMode::Scaled {
        alpha: 2.0,
        center: true,
    };
    let mut opt = with_batch_stats(ngd(Structure::Dense, 1, None));
    if let Optimizer::Ngd { decay, .. } = &mut opt {
        *decay = 0.0;
    }
    let w1 = fx.train(&config(opt.clone(), mode.clone(), 1, fx.n));
    let w2 = fx.train(&config(opt, mode.clone(), 2, fx.n));
    // Each network's own training-pass statistics, held in a copy's
    // running buffers.
    let holding = |w: &[f64]| {
        let mut params = fx.params.clone();
        params.set_flat(w).unwrap();
        let net = Net::new(&fx.o, &fx.spec, params.clone()).unwrap();
        let p = Problem {
            net: &net,
            ..fx.problem(fx.n)
        };
        let (_, _, stats) = p.loss_gradient_in(false, Phase::Train { seed: 0 }).unwrap();
        for st in &stats {
            let name = &fx.spec.layers[st.layer].name;
            let n = st.count as f64;
            for t in params.tensors.iter_mut() {
                if t.key == format!("{name}.running_mean") {
                    t.data = st.mean.clone();
                } else if t.key == format!("{name}.running_var") {
                    t.data = st.var.iter().map(|v| v * (n - 1.0) / n).collect();
                }
            }
        }
        params
    };
    let scaled = Net::new(&fx.o, &fx.spec, holding(&w1))
        .unwrap()
        .reparam(&fx.o, &mode, &holding(&w0))
        .unwrap();
    let (_, g1, _) = Problem {
        net: &fx.model_at(&w1, &mode),
        ..fx.problem(fx.n)
    }
    .loss_gradient_in(false, Phase::Train { seed: 0 })
    .unwrap();
    let want = axpy(&w1, -lr, &fisher_at(&scaled).solve(&g1, damping).unwrap());
    assert_close("centred scaled batch-statistics step", &w2, &want, 1e-10);
}

/// α-scaled training without centring at α = 1 is plain training, bit for
/// bit (same shuffles, momentum, steps); centred α = 100 moves the weights
/// about α times less than α = 1 over the same steps.
#[test]
fn scaled_training_at_alpha_one_is_plain_training() {
    let fx = Fx::new(MLP, 12, 71);
    let sgd = Optimizer::Sgd {
        lr: 0.3,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 1e-3,
    };
    let plain = fx.train(&config(sgd.clone(), TrainMode::Plain, 7, 5));
    let one = fx.train(&config(
        sgd.clone(),
        TrainMode::Scaled {
            alpha: 1.0,
            center: false,
        },
        7,
        5,
    ));
    assert_eq!(plain, one, "α = 1 differs from plain training");
    let w0 = fx.params.flat();
    let moved = |w: &[f64]| -> f64 {
        w.iter()
            .zip(&w0)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let sgd = Optimizer::Sgd {
        lr: 0.05,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    let centred = |alpha| {
        let w = fx.train(&config(
            sgd.clone(),
            TrainMode::Scaled {
                alpha,
                center: true,
            },
            3,
            12,
        ));
        moved(&w)
    };
    let ratio = centred(1.0) / centred(100.0);
    assert!(
        (ratio / 100.0 - 1.0).abs() < 0.2,
        "weights moved {ratio:.1}× less at α = 100, expected about 100×"
    );
}

/// A Fisher's prepared damped inverse (what natural-gradient steps between
/// refreshes apply) is its solve: every structure, on convolutions and
/// transposed convolutions (whose natural layout differs from the flat
/// order), to 1e-10 in f64; in f32 the inverse and the products are in
/// single precision, to 1e-5 of the f64 solve of the same matrix.
#[test]
fn a_prepared_inverse_is_the_solve() {
    prepared_inverse_is_the_solve(CNN, Dtype::F64, 1e-10);
    prepared_inverse_is_the_solve(CONVT, Dtype::F64, 1e-10);
    prepared_inverse_is_the_solve(CNN, Dtype::F32, 1e-5);
}

fn prepared_inverse_is_the_solve(model: impl Model, dtype: Dtype, tol: f64) {
    use nngeo::geometry::inverse::Inverse;
    use nngeo::linalg::Host;
    let t = classification();
    let damping = 0.05;
    let fx = Fx::build(model, 10, 62, dtype, false);
    let p = fx.problem(fx.n);
    let mut fims = vec![
        ("Dense", p.fim_dense(&t).unwrap()),
        ("LowRank", p.fim_lowrank(&t, None).unwrap()),
    ];
    for (name, k) in [
        ("BlockDiag", BlockKind::Dense),
        ("Diag", BlockKind::Diag),
        ("QuasiDiag", BlockKind::QuasiDiag),
        ("KFAC", BlockKind::Kfac),
        ("EKFAC", BlockKind::Ekfac { refit: true }),
    ] {
        fims.push((name, p.fim_blocks(&t, &fx.kinds(k)).unwrap()));
    }
    let mut rng = Rng::new(5);
    let v: Vec<f64> = (0..fims[0].1.dim()).map(|_| rng.normal()).collect();
    for (name, f) in fims {
        let want = f.solve(&v, damping).unwrap();
        let inv = Inverse::new(&fx.o, &f, damping, &Host).unwrap();
        let got = inv.apply(&fx.o, &v, &Host).unwrap();
        assert_close(&format!("{model} {dtype:?} {name}"), &got, &want, tol);
        // The same on the device, each layer in its natural layout.
        let nat: Vec<T> = f
            .layers
            .iter()
            .map(|l| {
                let vl = &v[l.offset..l.offset + l.numel];
                let x = stats::from_flat_host(vl, l.sg, l.sa, l.bias, l.order);
                fx.o.upload(&[l.sg, l.sa], &x).unwrap()
            })
            .collect();
        let ys = inv.apply_natural(&fx.o, &nat, &Host).unwrap();
        let mut got = Vec::new();
        for (y, l) in ys.iter().zip(&f.layers) {
            assert_eq!(fx.o.shape(y), [l.sg, l.sa], "{name}: natural layout");
            let y = fx.o.download(y).unwrap();
            got.extend(stats::to_flat_host(&y, l.sg, l.sa, l.bias, l.order));
        }
        assert_close(
            &format!("{model} {dtype:?} {name}, natural"),
            &got,
            &want,
            tol,
        );
    }
}

/// EKFAC natural gradient between eigenbasis refreshes: with `refresh = 3`
/// and `refit = 1`, the second step keeps the basis of w₀ and refits the
/// diagonal at w₁ in it, averaged as 0.95 d(w₀) + 0.05 d(w₁) (1e-10).
#[test]
fn ekfac_natural_gradient_refits_between_refreshes() {
    let fx = Fx::new(MLP, 9, 81);
    let (lr, damping) = (0.7, 0.05);
    let ekfac = Structure::Ekfac {
        refit: true,
        initial_basis: false,
    };
    let w1 = fx.train(&config(
        ngd(ekfac.clone(), 3, Some(1)),
        TrainMode::Plain,
        1,
        fx.n,
    ));
    let p = fx.problem(fx.n);
    let mut f = p
        .fim_blocks(
            &classification(),
            &fx.kinds(BlockKind::Ekfac { refit: true }),
        )
        .unwrap();
    let net1 = fx.model_at(&w1, &TrainMode::Plain);
    let p1 = Problem {
        net: &net1,
        ..fx.problem(fx.n)
    };
    let FimBody::Blocks(blocks) = &mut f.body else {
        panic!("EKFAC is block-diagonal")
    };
    let mut fresh = blocks.clone();
    let which: Vec<usize> = (0..fresh.len()).collect();
    p1.refit(&classification(), &f.layers, &mut fresh, &which, None)
        .unwrap();
    for (b, x) in blocks.iter_mut().zip(&fresh) {
        let (Block::Ekfac { d, .. }, Block::Ekfac { d: dx, .. }) = (b, x) else {
            panic!("EKFAC blocks")
        };
        for (a, b) in d.data.iter_mut().zip(&dx.data) {
            *a = 0.95 * *a + 0.05 * b;
        }
    }
    let (_, g1) = fx.loss_grad_of(&net1);
    let want = axpy(&w1, -lr, &f.solve(&g1, damping).unwrap());
    let got = fx.train(&config(ngd(ekfac, 3, Some(1)), TrainMode::Plain, 2, fx.n));
    assert_close("EKFAC step in a kept basis", &got, &want, 1e-10);
}

/// Natural gradient on a scaled model uses the model's own gradient and
/// Fisher, without SGD's 1/α² loss factor: one Dense step is
/// `w − lr (F_α + λI)⁻¹ ∇L_α` (1e-10), so the function step does not shrink
/// with α.
#[test]
fn natural_gradient_on_a_scaled_model_is_not_rescaled() {
    let fx = Fx::new(MLP, 8, 91);
    let (lr, damping) = (0.7, 0.05);
    let scaled = TrainMode::Scaled {
        alpha: 10.0,
        center: true,
    };
    let w0 = fx.params.flat();
    let net = fx.model_at(&w0, &scaled);
    let (_, g) = fx.loss_grad_of(&net);
    let p = Problem {
        net: &net,
        ..fx.problem(fx.n)
    };
    let mut f = p.fim_dense(&classification()).unwrap().to_dense().unwrap();
    f.add_diag(damping);
    let step = nngeo::linalg::solve_sym(&f, &Mat::from_vec(g.len(), 1, g.clone()))
        .unwrap()
        .data;
    let got = fx.train(&config(ngd(Structure::Dense, 1, None), scaled, 1, fx.n));
    assert_close("scaled NGD step", &got, &axpy(&w0, -lr, &step), 1e-10);
}

/// For the MSE loss (PyTorch's mean over the C outputs) the natural
/// gradient's Fisher is the loss's Gauss–Newton matrix
/// `(2/C) · 1/n Σ Jᵢᵀ Jᵢ`, built here from the dense Jacobian (1e-10).
#[test]
fn natural_gradient_for_mse_uses_the_gauss_newton_matrix() {
    let fx = Fx::new(REG_MLP, 7, 93);
    let (n, c) = (fx.n, fx.c);
    let (lr, damping) = (0.4, 0.05);
    let w0 = fx.params.flat();
    let (_, g) = fx.problem_regression(n).loss_and_gradient(true).unwrap();
    let j = fx.jacobian_of(&fx.net);
    let mut gn = j.transpose().matmul(&j);
    gn.data
        .iter_mut()
        .for_each(|x| *x *= 2.0 / (c as f64 * n as f64));
    gn.add_diag(damping);
    let step = nngeo::linalg::solve_sym(&gn, &Mat::from_vec(g.len(), 1, g.clone()))
        .unwrap()
        .data;
    let mut cfg = config(ngd(Structure::Dense, 1, None), TrainMode::Plain, 1, n);
    cfg.loss = LossKind::Mse;
    if let Optimizer::Ngd { lr: l, .. } = &mut cfg.optimizer {
        *l = lr;
    }
    let data = TrainData {
        x: &fx.x,
        y: &fx.targets,
        n,
        target_dim: c,
        flipped: &[],
    };
    let got = train(
        &fx.o,
        &fx.spec,
        fx.params.clone(),
        &data,
        None,
        &cfg,
        &[],
        &mut Quiet,
    )
    .unwrap()
    .flat();
    assert_close("MSE NGD step", &got, &axpy(&w0, -lr, &step), 1e-10);
}

/// Records `train/loss`, and the weights each hook sees and the model's
/// outputs there in evaluation mode (BatchNorm's running statistics).
struct Record {
    o: TestOps,
    x: T,
    losses: Vec<f64>,
    seen: Vec<Vec<f64>>,
    outputs: Vec<Vec<f64>>,
}

impl TrainObserver<TestOps> for Record {
    fn hook(&mut self, _: usize, _: u64, net: &Net<TestOps>) -> Result<(), String> {
        self.seen.push(net.params.flat());
        let z = net
            .forward(&self.o, &self.x, false)
            .and_then(|f| self.o.download(&f.output))
            .map_err(|e| e.to_string())?;
        self.outputs.push(z);
        Ok(())
    }
    fn log(&mut self, key: &str, _: u64, value: f64, _: &[(&str, String)]) {
        if key == "train/loss" {
            self.losses.push(value);
        }
    }
}

impl Fx {
    /// Trains with the update where `at` says; the final weights and
    /// buffers and what the observer saw (a hook at steps 0, 3 and 7).
    fn train_where(&self, cfg: &TrainConfig, at: UpdateAt) -> (HostParams, Record) {
        let mut rec = Record {
            o: self.o.clone(),
            x: self.x.clone(),
            losses: vec![],
            seen: vec![],
            outputs: vec![],
        };
        let params = self
            .train_with(cfg, &[vec![0, 3, 7]], &mut rec, at)
            .unwrap_or_else(|e| panic!("{at:?}: {e}"));
        (params, rec)
    }

    /// [`train_at`] from the fixture's weights on its examples.
    fn train_with(
        &self,
        cfg: &TrainConfig,
        firing: &[Vec<u64>],
        obs: &mut dyn TrainObserver<TestOps>,
        at: UpdateAt,
    ) -> Result<HostParams, String> {
        train_at(
            &self.o,
            &self.spec,
            self.params.clone(),
            &self.data(),
            None,
            cfg,
            firing,
            obs,
            None,
            at,
        )
    }
}

/// SGD (momentum, Nesterov, weight decay), Adam (weight decay) and
/// natural gradient (Dense, BlockDiag, Diag, KFAC, EKFAC with refits;
/// momentum; fresh and prepared inverses) stepping the backend's tensors
/// in place (`UpdateAt::Device`, what a GPU run does) train the same
/// model as the host's f64 update: every
/// weight and BatchNorm buffer, every mini-batch loss, the weights each
/// hook reads and the outputs it sees in evaluation mode, on the plain, the centred α-scaled (whose initial copy
/// follows the running statistics) and the linearised model, across norm
/// layers, 1-d and 2-d convolutions, grouped and transposed convolutions,
/// embeddings and skip connections. f64 to 1e-12 (Adam and natural
/// gradient 1e-10: see below); f32 weights stay within 1e-4 of the f64 host copy's over 7
/// steps.
#[test]
fn the_device_update_is_the_host_update() {
    fn check(model: impl Model, dtype: Dtype, tol: f64) {
        check_with(model, dtype, tol, &first_order());
    }
    fn first_order() -> Vec<Optimizer> {
        vec![
            Optimizer::Sgd {
                lr: 0.2,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 1e-2,
            },
            Optimizer::Sgd {
                lr: 0.1,
                momentum: 0.5,
                nesterov: false,
                weight_decay: 0.0,
            },
            Optimizer::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 1e-3,
            },
        ]
    }
    /// Natural gradient with momentum, refreshed every third step (the
    /// steps between apply a prepared inverse; EKFAC refits at every
    /// second step, which then solves afresh).
    fn natural(structures: &[Structure]) -> Vec<Optimizer> {
        structures
            .iter()
            .map(|s| {
                let refit = matches!(s, Structure::Ekfac { .. }).then_some(2);
                Optimizer::Ngd {
                    fim: s.clone(),
                    fisher: FisherVariant::True,
                    lr: 0.3,
                    damping: 0.05,
                    refresh: 3,
                    refit,
                    momentum: 0.5,
                    decay: 0.95,
                    batchnorm: BatchNormStats::Running,
                }
            })
            .collect()
    }
    fn check_with(model: impl Model, dtype: Dtype, tol: f64, optimizers: &[Optimizer]) {
        let fx = Fx::build(model, 12, 17, dtype, false);
        let modes = [
            TrainMode::Plain,
            TrainMode::Scaled {
                alpha: 10.0,
                center: true,
            },
            LINEARISED,
        ];
        for opt in optimizers {
            for mode in &modes {
                let cfg = config(opt.clone(), mode.clone(), 7, 5);
                let (host, h) = fx.train_where(&cfg, UpdateAt::Host);
                let (dev, d) = fx.train_where(&cfg, UpdateAt::Device);
                let what = format!("{model} ({dtype:?}), {opt:?}, {mode:?}");
                // Adam divides by √v + ε: a bias that BatchNorm makes
                // gradient-free (rounding noise, 1e-17) moves by noise/ε, so
                // ulp-level differences in earlier steps reach 1e-12 there.
                // Natural gradient applies its inverse in another order
                // of products (natural layout, not flat).
                let tol = match opt {
                    Optimizer::Adam { .. } | Optimizer::Ngd { .. } => tol.max(1e-10),
                    _ => tol,
                };
                assert_ne!(host.flat(), fx.params.flat(), "{what}: nothing trained");
                for (a, b) in dev.tensors.iter().zip(&host.tensors) {
                    assert_eq!(a.key, b.key);
                    let err = rel_err(&a.data, &b.data);
                    assert!(err <= tol, "{what}: `{}` off by {err:.2e}", a.key);
                }
                let err = rel_err(&d.losses, &h.losses);
                assert!(err <= tol, "{what}: losses off by {err:.2e}");
                assert_eq!(d.seen.len(), h.seen.len(), "{what}: hooks");
                for (k, (a, b)) in d.seen.iter().zip(&h.seen).enumerate() {
                    let err = rel_err(a, b);
                    assert!(err <= tol, "{what}: hook {k} read weights off by {err:.2e}");
                    let err = rel_err(&d.outputs[k], &h.outputs[k]);
                    assert!(err <= tol, "{what}: hook {k}'s outputs off by {err:.2e}");
                }
            }
        }
    }
    for model in [ALL_2D, ALL_1D, MLP, PLAIN_NORMS, MORE_2D, HARD] {
        check(model, Dtype::F64, 1e-12);
    }
    for model in [RESNET, EMBED, GROUPED] {
        check(model, Dtype::F64, 1e-12);
    }
    check(NORM_CNN, Dtype::F32, 1e-4);
    let any = [Structure::Dense, Structure::BlockDiag, Structure::Diag];
    check_with(NORM_CNN, Dtype::F64, 1e-12, &natural(&any));
    check_with(CONVT, Dtype::F64, 1e-12, &natural(&any));
    let ekfac = |initial_basis| Structure::Ekfac {
        refit: true,
        initial_basis,
    };
    let kron = [Structure::Kfac, ekfac(false), ekfac(true)];
    check_with(CNN, Dtype::F64, 1e-12, &natural(&kron));
    check_with(MLP, Dtype::F64, 1e-12, &natural(&kron));
    // The Fisher normalised with each mini-batch's statistics (EKFAC's
    // refits between refreshes too).
    let mix = Structure::Mix {
        families: [
            (LayerFamily::Conv, ekfac(false)),
            (LayerFamily::Linear, Structure::Kfac),
            (LayerFamily::Norm, Structure::BlockDiag),
        ]
        .into_iter()
        .collect(),
        layers: Default::default(),
    };
    let batch: Vec<Optimizer> = natural(&[Structure::Dense, Structure::Diag, mix])
        .into_iter()
        .map(with_batch_stats)
        .collect();
    check_with(NORM_CNN, Dtype::F64, 1e-12, &batch);
}

/// A diverging run stops with the same message whichever side updates:
/// a non-finite loss, or the first weight the update made non-finite.
#[test]
fn a_diverging_device_update_fails_as_the_host_update_does() {
    let fx = Fx::new(NORM_CNN, 12, 5);
    // The second overflows the weights in the first update.
    for (weight_decay, says) in [
        (0.0, "the mini-batch loss is NaN"),
        (1e10, "weight 0 became"),
    ] {
        let cfg = config(
            Optimizer::Sgd {
                lr: 1e300,
                momentum: 0.0,
                nesterov: false,
                weight_decay,
            },
            TrainMode::Plain,
            4,
            6,
        );
        let fail = |at| {
            fx.train_with(&cfg, &[], &mut Quiet, at)
                .expect_err("trained at a diverging learning rate")
        };
        let (host, dev) = (fail(UpdateAt::Host), fail(UpdateAt::Device));
        assert!(host.starts_with("training diverged at step"), "{host}");
        assert!(host.contains(says), "{host}");
        assert_eq!(dev, host);
    }
}

/// An L2 penalty `λ/2 |w|²` as the executor's penalty terms come in.
struct L2(f64);
impl TrainObserver<TestOps> for L2 {
    fn penalty(&mut self, w: &[f64]) -> Result<Option<(f64, Vec<f64>)>, String> {
        let value = 0.5 * self.0 * w.iter().map(|x| x * x).sum::<f64>();
        Ok(Some((value, w.iter().map(|x| self.0 * x).collect())))
    }
}

/// Penalty terms read the weights on the host at every step, so a loss
/// with any trains on the host whatever the backend prefers: the same
/// weights, bit for bit, and not those of the loss without them.
#[test]
fn a_penalty_keeps_the_host_update() {
    let fx = Fx::new(NORM_CNN, 12, 9);
    let cfg = config(
        Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        TrainMode::Plain,
        5,
        6,
    );
    let run = |at, obs: &mut dyn TrainObserver<TestOps>| {
        fx.train_with(&cfg, &[], obs, at).unwrap().flat()
    };
    let host = run(UpdateAt::Host, &mut L2(0.3));
    assert_eq!(run(UpdateAt::Device, &mut L2(0.3)), host);
    let plain = run(UpdateAt::Device, &mut Quiet);
    assert!(rel_err(&plain, &host) > 1e-3, "the penalty changed nothing");
}
