//! The Monte-Carlo and empirical Fishers, and loss gradients against
//! finite differences.

use super::*;

// ---------------------------------------------------------------- 11. MC

/// Monte-Carlo Fisher with 2000 samples: within 10% (Frobenius, relative)
/// of the true FIM for every task; another seed gives another matrix; the
/// same seed the same matrix, bit for bit.
#[test]
fn monte_carlo_fisher_converges_and_is_reproducible() {
    for (k, (model, n, task)) in task_models().into_iter().enumerate() {
        if model == NORM_CNN {
            continue;
        }
        let fx = Fx::new(model, n, 121 + k as u64);
        let p = fx.problem_for(&task, n);
        let exact = p
            .fim_dense(&true_fim(task.clone()))
            .unwrap()
            .to_dense()
            .unwrap();
        let mc = |samples: usize, seed: u64| {
            p.fim_dense(&Target::Fim {
                variant: FisherVariant::Mc { samples, seed },
                task: task.clone(),
            })
            .unwrap()
            .to_dense()
            .unwrap()
        };
        let a = mc(2000, 1);
        let rel = frob_dist(&a, &exact) / exact.frobenius();
        assert!(
            rel < 0.1,
            "{model} {task:?}: MC Fisher off by {rel:.3} (Frobenius, relative)"
        );
        let again = mc(2000, 1);
        assert!(
            a.data == again.data,
            "{model}: same seed, different matrices"
        );
        let b = mc(2000, 2);
        let diff = frob_dist(&a, &b) / exact.frobenius();
        assert!(
            diff > 1e-4,
            "{model}: seeds 1 and 2 give the same matrix ({diff:e})"
        );
        // One sample per example: much noisier.
        assert!(frob_dist(&mc(1, 1), &exact) > frob_dist(&a, &exact));
    }
}

// ---------------------------------------------------------------- 12. empirical

/// Gradients of each example's negative log-likelihood, rows `[n, P]`,
/// by central differences with h = 1e-6.
fn nll_gradients_fd(fx: &Fx, task: &Task) -> Mat {
    let (n, c, np) = (fx.n, fx.c, fx.net.num_params());
    let losses = |w: &[f64]| -> Vec<f64> {
        fx.outputs_at(w)
            .chunks(c)
            .enumerate()
            .map(|(i, z)| nll(task, z, &fx.target(task, i)))
            .collect()
    };
    let w0 = fx.params.flat();
    let h = 1e-6;
    let mut g = Mat::zeros(n, np);
    let mut w = w0.clone();
    for k in 0..np {
        w[k] = w0[k] + h;
        let lp = losses(&w);
        w[k] = w0[k] - h;
        let lm = losses(&w);
        w[k] = w0[k];
        for i in 0..n {
            g.set(i, k, (lp[i] - lm[i]) / (2.0 * h));
        }
    }
    g
}

/// Empirical Fisher = 1/n Σ gᵢ gᵢᵀ with gᵢ the gradient of example i's
/// negative log-likelihood (cross-entropy, Bernoulli, Gaussian with
/// σ² = 0.5) by central differences (h = 1e-6); 1e-6.
#[test]
fn empirical_fisher_is_the_mean_outer_product_of_gradients() {
    for (k, (model, n, task)) in task_models().into_iter().enumerate() {
        let n = n.min(6);
        let fx = Fx::new(model, n, 131 + k as u64);
        let g = nll_gradients_fd(&fx, &task);
        let mut expect = g.transpose().matmul(&g);
        expect.data.iter_mut().for_each(|x| *x /= n as f64);
        let p = fx.problem_for(&task, n);
        let efim = p
            .fim_dense(&Target::Fim {
                variant: FisherVariant::Empirical,
                task: task.clone(),
            })
            .unwrap();
        assert_close(
            &format!("{model} {task:?}: empirical Fisher"),
            &efim.to_dense().unwrap().data,
            &expect.data,
            1e-6,
        );
    }
}

/// `loss_gradient` is the gradient of the mean loss — cross-entropy
/// (classification) or PyTorch's MSE (regression) — by central
/// differences (h = 1e-6); 1e-6.
#[test]
fn loss_gradient_matches_finite_differences() {
    for (model, n, seed) in [(MLP, 6, 181), (NORM_CNN, 5, 182)] {
        let fx = Fx::new(model, n, seed);
        let g = nll_gradients_fd(&fx, &Task::Classification);
        let mean: Vec<f64> = (0..g.cols)
            .map(|k| (0..n).map(|i| g.get(i, k)).sum::<f64>() / n as f64)
            .collect();
        assert_close(
            &format!("{model}: cross-entropy gradient"),
            &fx.problem(n).loss_gradient(false).unwrap(),
            &mean,
            1e-6,
        );
    }
    // MSE = 1/(nC) Σ (z − y)² is the Gaussian NLL with σ² = nC/2, summed.
    let (n, c) = (6, 3);
    let fx = Fx::new(REG_MLP, n, 183);
    let g = nll_gradients_fd(
        &fx,
        &Task::Regression {
            sigma2: (n * c) as f64 / 2.0,
        },
    );
    let sum: Vec<f64> = (0..g.cols)
        .map(|k| (0..n).map(|i| g.get(i, k)).sum::<f64>())
        .collect();
    assert_close(
        "MSE gradient",
        &fx.problem_regression(n).loss_gradient(true).unwrap(),
        &sum,
        1e-6,
    );
}

/// In training mode (BatchNorm normalising with the statistics of the
/// batch, which couples the examples) the loss gradient is that of the
/// training-mode loss: central differences (h = 1e-6) along random
/// directions, 1e-6; chains and graphs with both BatchNorms. The batch
/// statistics are the mean and unbiased variance of each channel's inputs
/// (1e-12 against an evaluation-mode pass with those as running
/// statistics, which must then give the same outputs).
#[test]
fn train_mode_gradient_matches_finite_differences() {
    check_train_mode_gradient(NORM_CNN, 6, 191);
    check_train_mode_gradient(ALL_2D, 5, 192);
    check_train_mode_gradient(PLAIN_NORMS, 5, 193);
    check_train_mode_gradient(RESNET, 5, 193);
}

fn check_train_mode_gradient(model: impl Model, n: usize, seed: u64) {
    let fx = Fx::new(model, n, seed);
    let w0 = fx.params.flat();
    let train_loss = |w: &[f64]| {
        let net = fx.model_at(w, &TrainMode::Plain);
        let p = Problem {
            net: &net,
            ..fx.problem(n)
        };
        p.loss_gradient_in(false, Phase::Train { seed: 0 }).unwrap()
    };
    let (_, g, stats) = train_loss(&w0);
    assert!(!stats.is_empty(), "{model}: no batch statistics");
    let h = 1e-6;
    for s in 0..3 {
        let v = fx.random_vector(200 + s);
        let fd = (train_loss(&axpy(&w0, h, &v)).0 - train_loss(&axpy(&w0, -h, &v)).0) / (2.0 * h);
        assert_close(
            &format!("{model}: train-mode directional derivative"),
            &[dot(&g, &v)],
            &[fd],
            1e-6,
        );
    }
    // Outputs with the batch statistics as running statistics (var + eps
    // from the unbiased variance back to the biased one) are the
    // training-mode outputs.
    let mut p = fx.params.clone();
    for st in &stats {
        let name = &fx.spec.layers[st.layer].name;
        let l: usize = fx.spec.layers[st.layer].input[1..].iter().product();
        let count = (n * l) as f64;
        let set = |p: &mut HostParams, key: &str, v: Vec<f64>| {
            let t = p
                .tensors
                .iter_mut()
                .find(|t| t.key == format!("{name}.{key}"))
                .unwrap();
            t.data = v;
        };
        set(&mut p, "running_mean", st.mean.clone());
        set(
            &mut p,
            "running_var",
            st.var.iter().map(|v| v * (count - 1.0) / count).collect(),
        );
    }
    let eval = Net::new(&fx.o, &fx.spec, p).unwrap();
    let train = fx
        .net
        .forward_in(&fx.o, &fx.x, false, Phase::Train { seed: 0 })
        .unwrap();
    assert_close(
        &format!("{model}: batch statistics"),
        &fx.outputs_of(&eval),
        &fx.o.download(&train.output).unwrap(),
        1e-12,
    );
}

/// A one-logit model on two classes is a binary classifier (the checker
/// accepts it and the FIM uses a Bernoulli output): its loss must be the
/// binary cross-entropy, its gradient that loss's, and its accuracy that
/// of `z > 0` (1e-6).
#[test]
fn binary_classifier_loss_and_gradient() {
    let n = 8;
    let fx = Fx::new(BINARY_MLP, n, 191);
    let task = Task::Binary;
    let z = fx.outputs_at(&fx.params.flat());
    let bce: f64 = (0..n)
        .map(|i| nll(&task, &z[i..i + 1], &[fx.labels[i]]))
        .sum::<f64>()
        / n as f64;
    let acc = (0..n)
        .filter(|&i| (z[i] > 0.0) == (fx.labels[i] == 1.0))
        .count() as f64
        / n as f64;
    let (loss, accuracy) = fx.problem(n).loss_accuracy(false).unwrap();
    assert_close("binary loss", &[loss], &[bce], 1e-6);
    assert_close("binary accuracy", &[accuracy.unwrap()], &[acc], 1e-12);
    let g = nll_gradients_fd(&fx, &task);
    let mean: Vec<f64> = (0..g.cols)
        .map(|k| (0..n).map(|i| g.get(i, k)).sum::<f64>() / n as f64)
        .collect();
    assert_close(
        "binary gradient",
        &fx.problem(n).loss_gradient(false).unwrap(),
        &mean,
        1e-6,
    );
}
