//! Penalty terms in the training loss (issue 15):
//! `loss = cross_entropy + c * vTMv(F, weights(net) - a)` and
//! `c * l2(weights(net) - a)`, through the whole pipeline, in float64, for
//! every Fisher structure. Three checks per structure:
//! - the gradient formula `2c·M(w − a)` against central finite differences
//!   of the measured `vTMv` along a random direction (exact for a quadratic
//!   up to rounding: ≤ 1e-8 relative);
//! - one full-batch SGD step equals `w₀ − η (∇L + 2c·M(w₀ − a))`, with `∇L`
//!   from `grad(net, data)` and `M(w₀ − a)` from `mv` (≤ 1e-10 relative to
//!   the step);
//! - the logged `train/penalty` equals `c · vTMv(M, w₀ − a)` (≤ 1e-10).
//!
//! `NNGEO_BACKEND=tch` runs it on the libtorch plugin.

mod run_ngx;

use run_ngx::{num, run_source, vec_of, STORED};

const HEADER: &str = "experiment t { dtype = f64 }\n\
    data train = digits(split = train) |> normalize\n\
    data probe = train |> take(3, per_class, seed = 1)\n\
    model net = sequential(conv2d(1, 2, kernel = 3, stride = 2, padding = 1), tanh, flatten, \
    linear(32, 8), relu, linear(8, 10), input = [1, 8, 8], init = pytorch(seed = 3))\n\
    let v = random_vector(net, seed = 5)\n\
    let a = weights(net) + 0.1 * random_vector(net, seed = 6)\n\
    let g = grad(net, probe)\n";

const LR: f64 = 0.05;

fn worst(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn check(what: &str, err: f64, tol: f64) {
    println!("{what}: {err:.3e}");
    assert!(err <= tol, "{what}: {err:e} > {tol:e}");
}

/// One SGD step on `probe` with `penalty` added to the cross-entropy; the
/// step's weights against `w₀ − η (∇L + grad)`, `grad` given.
fn one_step(body: &str, penalty: &str) -> std::collections::HashMap<String, serde_json::Value> {
    run_source(&format!(
        "{HEADER}{body}\
         train net on probe as net1 {{\n\
           loss = cross_entropy + {penalty}\n\
           optimizer = sgd(lr = {LR})\n\
           steps = 1\n\
           batch = 30\n\
         }}\n\
         measure weights(net1) as \"w1\", weights(net) as \"w0\", g as \"g\"\n"
    ))
}

#[test]
fn a_fisher_penalty_follows_its_gradient_on_every_structure() {
    let c = 0.7;
    for s in STORED.iter().chain(&["Implicit"]) {
        let body = format!(
            "let F = Fim({s}) of net on probe\n\
             let d = weights(net) - a\n\
             let Md = mv(F, d)\n\
             measure Md as \"Md\", vTMv(F, d) as \"vTMv\", dot(Md, v) as \"Mdv\"\n\
             measure vTMv(F, d + 1e-3 * v) as \"plus\", vTMv(F, d - 1e-3 * v) as \"minus\"\n"
        );
        let r = one_step(&body, &format!("{c} * vTMv(F, weights(net) - a)"));
        // Central differences of the quadratic along v: 2·⟨M d, v⟩.
        let fd = (num(&r, "plus") - num(&r, "minus")) / 2e-3;
        let mdv = num(&r, "Mdv");
        check(
            &format!("{s}: finite differences"),
            (fd - 2.0 * mdv).abs() / (2.0 * mdv).abs(),
            1e-8,
        );
        let (w0, w1, g, md) = (
            vec_of(&r, "w0"),
            vec_of(&r, "w1"),
            vec_of(&r, "g"),
            vec_of(&r, "Md"),
        );
        let step: Vec<f64> = g
            .iter()
            .zip(&md)
            .map(|(g, m)| LR * (g + 2.0 * c * m))
            .collect();
        let taken: Vec<f64> = w0.iter().zip(&w1).map(|(a, b)| a - b).collect();
        check(&format!("{s}: SGD step"), worst(&taken, &step), 1e-10);
        let logged = num(&r, "train/penalty");
        let want = c * num(&r, "vTMv");
        check(
            &format!("{s}: train/penalty"),
            (logged - want).abs() / want.abs(),
            1e-10,
        );
    }
}

#[test]
fn an_l2_penalty_pulls_towards_its_anchor() {
    let c = 0.3;
    let r = one_step(
        "let d = weights(net) - a\nmeasure d as \"d\", dot(d, d) as \"dd\"\n",
        &format!("{c} * l2(weights(net) - a) + 0.2 * l2(weights(net))"),
    );
    let (w0, w1, g, d) = (
        vec_of(&r, "w0"),
        vec_of(&r, "w1"),
        vec_of(&r, "g"),
        vec_of(&r, "d"),
    );
    let step: Vec<f64> = g
        .iter()
        .zip(&d)
        .zip(&w0)
        .map(|((g, d), w)| LR * (g + 2.0 * c * d + 2.0 * 0.2 * w))
        .collect();
    let taken: Vec<f64> = w0.iter().zip(&w1).map(|(a, b)| a - b).collect();
    check("l2: SGD step", worst(&taken, &step), 1e-10);
    let ww: f64 = w0.iter().map(|x| x * x).sum();
    let want = c * num(&r, "dd") + 0.2 * ww;
    check(
        "l2: train/penalty",
        (num(&r, "train/penalty") - want).abs() / want,
        1e-10,
    );
}

#[test]
fn a_penalty_on_one_layer_block_moves_only_that_layer() {
    // `F["layers.5"]`: the penalty covers the last layer only; the other
    // layers take the plain gradient step.
    let r = one_step(
        "let F = Fim(KFAC) of net on probe\n\
         let d = weights(net) - a\n\
         let Md = mv(F[\"layers.5\"], d[\"layers.5\"])\n\
         measure Md as \"Md\"\n",
        "2 * vTMv(F[\"layers.5\"], weights(net) - a)",
    );
    let (w0, w1, g, md) = (
        vec_of(&r, "w0"),
        vec_of(&r, "w1"),
        vec_of(&r, "g"),
        vec_of(&r, "Md"),
    );
    // layers.5 is the model's last 90 parameters (linear(8, 10)).
    let p = w0.len();
    assert_eq!(md.len(), 90);
    let mut step: Vec<f64> = g.iter().map(|g| LR * g).collect();
    for (s, m) in step[p - 90..].iter_mut().zip(&md) {
        *s += LR * 4.0 * m;
    }
    let taken: Vec<f64> = w0.iter().zip(&w1).map(|(a, b)| a - b).collect();
    check("layer block: SGD step", worst(&taken, &step), 1e-10);
}
