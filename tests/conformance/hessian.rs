//! The loss Hessian (src/geometry/hessian.rs) against finite differences
//! of the loss gradient, its Gauss–Newton part against the true Fisher,
//! and every structure against the dense Hessian. Float64.
//!
//! A child of `engine_properties` (its models and fixture `Fx`), so it runs
//! on every backend that includes that module.

use super::*;
use nngeo::plan::HessianPart;

/// The curved models (every activation, convolutions with and without
/// bias, pools, BatchNorm in evaluation mode, residual additions,
/// transposed and grouped convolutions, an embedding) and their tasks.
const SIGMOID_MLP: &str =
    "mlp(in = 5, hidden = [6], out = 4, act = sigmoid, init = pytorch(seed = 11))";

fn hessian_cases() -> Vec<(String, Fx, Task)> {
    let cls = Task::Classification;
    vec![
        (MLP.to_string(), Fx::new(MLP, 7, 41), cls.clone()),
        (
            SIGMOID_MLP.to_string(),
            Fx::new(SIGMOID_MLP, 6, 42),
            cls.clone(),
        ),
        (CNN.to_string(), Fx::new(CNN, 4, 43), cls.clone()),
        (RESNET.to_string(), Fx::new(RESNET, 3, 44), cls.clone()),
        (EMBED.to_string(), Fx::new(EMBED, 4, 45), cls.clone()),
        (CONVT.to_string(), Fx::new(CONVT, 3, 46), cls.clone()),
        (GROUPED.to_string(), Fx::new(GROUPED, 3, 47), cls.clone()),
        (MORE_2D.to_string(), Fx::new(MORE_2D, 3, 50), cls.clone()),
        (MORE_1D.to_string(), Fx::new(MORE_1D, 3, 51), cls.clone()),
        (HARD.to_string(), Fx::new(HARD, 4, 52), cls),
        (
            BINARY_MLP.to_string(),
            Fx::new(BINARY_MLP, 8, 48),
            Task::Binary,
        ),
        (
            REG_MLP.to_string(),
            Fx::new(REG_MLP, 6, 49),
            Task::Regression { sigma2: 1.0 },
        ),
    ]
}

fn mse(task: &Task) -> bool {
    matches!(task, Task::Regression { .. })
}

/// The gradient of the mean loss with the trainable parameters at `w`.
fn gradient_at(fx: &Fx, task: &Task, w: &[f64]) -> Vec<f64> {
    let mut p = fx.params.clone();
    p.set_flat(w).unwrap();
    let net = Net::new(&fx.o, &fx.spec, p).unwrap();
    let prob = Problem {
        net: &net,
        ..fx.problem_for(task, fx.n)
    };
    prob.loss_gradient(mse(task)).unwrap()
}

fn hessian(fx: &Fx, task: &Task, part: HessianPart, batch: usize) -> Mat {
    fx.problem_for(task, batch)
        .hessian_dense(task, part)
        .unwrap()
        .to_dense()
        .unwrap()
}

/// Central differences of the gradient, h = 1e-5: each column of the
/// dense Hessian to 1e-6 of its largest entry. The network's own
/// curvature must matter on these models (the test could not tell a
/// Gauss–Newton matrix from the Hessian otherwise).
#[test]
fn hessian_matches_finite_differences_of_the_gradient() {
    for (name, fx, task) in hessian_cases() {
        let np = fx.net.num_params();
        // Two batches: the products add over them.
        let h = hessian(&fx, &task, HessianPart::Full, fx.n.div_ceil(2));
        assert_eq!((h.rows, h.cols), (np, np));
        let w0 = fx.params.flat();
        let step = 1e-5;
        let mut fd = Mat::zeros(np, np);
        let mut w = w0.clone();
        for k in 0..np {
            w[k] = w0[k] + step;
            let gp = gradient_at(&fx, &task, &w);
            w[k] = w0[k] - step;
            let gm = gradient_at(&fx, &task, &w);
            w[k] = w0[k];
            for r in 0..np {
                fd.set(r, k, (gp[r] - gm[r]) / (2.0 * step));
            }
        }
        assert_close(
            &format!("{name}: Hessian vs finite differences"),
            &h.data,
            &fd.data,
            1e-6,
        );
        let gn = hessian(&fx, &task, HessianPart::GaussNewton, fx.n);
        let apart = rel_err(&gn.data, &h.data);
        assert!(
            apart > 1e-3,
            "{name}: the Hessian equals its Gauss–Newton part ({apart:e}): no curvature tested"
        );
    }
}

/// `H = GN + residual` to 1e-12; the Gauss–Newton part is the true Fisher
/// for the cross-entropy (and the binary one) to 1e-10, and `2/C` times the
/// unit-variance Fisher for PyTorch's MSE.
#[test]
fn gauss_newton_part_is_the_fisher() {
    for (name, fx, task) in hessian_cases() {
        let full = hessian(&fx, &task, HessianPart::Full, fx.n);
        let gn = hessian(&fx, &task, HessianPart::GaussNewton, fx.n);
        let res = hessian(&fx, &task, HessianPart::Residual, fx.n);
        assert_close(
            &format!("{name}: GN + residual"),
            &add_mats(&gn, &res).data,
            &full.data,
            1e-12,
        );
        let fisher_task = match task {
            Task::Regression { .. } => Task::Regression { sigma2: 1.0 },
            ref t => t.clone(),
        };
        let mut f = fx
            .problem_for(&task, fx.n)
            .fim_dense(&true_fim(fisher_task))
            .unwrap()
            .to_dense()
            .unwrap();
        if mse(&task) {
            let s = 2.0 / fx.c as f64;
            f.data.iter_mut().for_each(|x| *x *= s);
        }
        assert_close(
            &format!("{name}: Gauss–Newton part vs the true Fisher"),
            &gn.data,
            &f.data,
            1e-10,
        );
    }
}

/// Diag and BlockDiag are the dense Hessian's diagonal and blocks, the
/// implicit product its product, LowRank its top eigenpairs, and a
/// Hessian over some layers the sub-matrix of those layers: all to 1e-10
/// (LowRank's eigenvalues 1e-8, found by Lanczos).
#[test]
fn hessian_structures_agree_with_the_dense_hessian() {
    for (name, fx, task) in hessian_cases() {
        let p = fx.problem_for(&task, fx.n);
        let part = HessianPart::Full;
        let dense = p.hessian_dense(&task, part).unwrap();
        let h = dense.to_dense().unwrap();
        let diag = p
            .hessian_blocks(&task, part, &fx.kinds(BlockKind::Diag))
            .unwrap();
        assert_close(
            &format!("{name}: Diag"),
            &diag.diag().unwrap(),
            &h.diag(),
            1e-10,
        );
        let blocks = p
            .hessian_blocks(&task, part, &fx.kinds(BlockKind::Dense))
            .unwrap();
        let mut want = Mat::zeros(h.rows, h.cols);
        for l in &dense.layers {
            for r in 0..l.numel {
                for c in 0..l.numel {
                    want.set(
                        l.offset + r,
                        l.offset + c,
                        h.get(l.offset + r, l.offset + c),
                    );
                }
            }
        }
        assert_close(
            &format!("{name}: BlockDiag"),
            &blocks.to_dense().unwrap().data,
            &want.data,
            1e-10,
        );
        let v = fx.random_vector(7);
        assert_close(
            &format!("{name}: implicit product"),
            &p.hvp(&task, part, &v).unwrap(),
            &h.matvec(&v),
            1e-10,
        );
        let ev = eigvalsh(&h).unwrap();
        let positive = ev.iter().filter(|x| **x > 1e-8).count();
        let k = positive.min(3);
        if k > 0 {
            let low = p.hessian_lowrank(&task, part, k).unwrap();
            let mut top: Vec<f64> = ev.iter().rev().take(k).copied().collect();
            let mut got = low.eigenvalues().unwrap();
            got.truncate(k);
            top.truncate(k);
            assert_close(&format!("{name}: LowRank({k})"), &got, &top, 1e-8);
        }
        // The last layer alone: its rows and columns of the whole.
        let last = fx.net.slots.len() - 1;
        let one = Problem {
            slots: vec![last],
            ..fx.problem_for(&task, fx.n)
        };
        let sub = one.hessian_dense(&task, part).unwrap().to_dense().unwrap();
        let s = &fx.net.slots[last];
        assert_close(
            &format!("{name}: one layer"),
            &sub.data,
            &sub_block(&h, s.offset, s.offset, s.numel, s.numel).data,
            1e-10,
        );
    }
}

/// GroupNorm's backward pass depends on its input through the group
/// statistics: no second-order rule, a clear error naming the layer.
#[test]
fn hessian_refuses_layers_without_a_second_order_rule() {
    let fx = Fx::new(BRANCHES, 3, 50);
    let task = Task::Classification;
    let err = fx
        .problem(fx.n)
        .hessian_dense(&task, HessianPart::Full)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("GroupNorm") && err.contains("no second-order rule"),
        "{err}"
    );
}
