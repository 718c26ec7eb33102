//! Products with the Jacobian (src/geometry/jacobian.rs): `J v` against
//! the dense Jacobian and central differences of the outputs, `Jᵀ u`
//! against the dense Jacobian, restricted to one layer as the dense
//! Jacobian's columns. Float64.
//!
//! A child of `engine_properties` (its models and fixture `Fx`).

use super::*;

fn cases() -> Vec<(String, Fx)> {
    vec![
        (MLP.to_string(), Fx::new(MLP, 7, 61)),
        (CNN.to_string(), Fx::new(CNN, 4, 62)),
        (RESNET.to_string(), Fx::new(RESNET, 3, 63)),
        (BRANCHES.to_string(), Fx::new(BRANCHES, 3, 64)),
        (EMBED.to_string(), Fx::new(EMBED, 4, 65)),
        (GROUPED.to_string(), Fx::new(GROUPED, 3, 66)),
    ]
}

/// `jacobian_rows` holds row `c·n + i` for output c of example i.
fn dense_jv(j: &Mat, v: &[f64], n: usize, c: usize) -> Vec<f64> {
    let jv = j.matvec(v);
    (0..n * c).map(|r| jv[(r % c) * n + r / c]).collect()
}

/// `J v` and `Jᵀ u` equal the dense Jacobian's products to 1e-12, in two
/// batches; `J v` equals central differences of the outputs along `v`
/// (h = 1e-6) to 1e-6; over one layer, the products of that layer's
/// columns.
#[test]
fn jacobian_products_match_the_dense_jacobian() {
    for (name, fx) in cases() {
        let (n, c) = (fx.n, fx.c);
        let p = fx.problem(n.div_ceil(2));
        let j = fx.problem(n).jacobian_rows(&Target::Outputs).unwrap();
        let v = fx.random_vector(3);
        let jv = p.jvp_outputs(&v).unwrap();
        assert_close(&format!("{name}: J v"), &jv, &dense_jv(&j, &v, n, c), 1e-12);
        let mut rng = Rng::new(5);
        let u: Vec<f64> = (0..n * c).map(|_| rng.normal()).collect();
        // Row c·n + i of J pairs with u[i·C + c].
        let u_rows: Vec<f64> = (0..n * c).map(|r| u[(r % n) * c + r / n]).collect();
        assert_close(
            &format!("{name}: Jᵀ u"),
            &p.vjp_params(&u).unwrap(),
            &j.transpose().matvec(&u_rows),
            1e-12,
        );
        let h = 1e-6;
        let w0 = fx.params.flat();
        let at = |s: f64| -> Vec<f64> {
            let w: Vec<f64> = w0.iter().zip(&v).map(|(a, b)| a + s * b).collect();
            fx.outputs_at(&w)
        };
        let (zp, zm) = (at(h), at(-h));
        let fd: Vec<f64> = zp
            .iter()
            .zip(&zm)
            .map(|(a, b)| (a - b) / (2.0 * h))
            .collect();
        assert_close(&format!("{name}: J v vs differences"), &jv, &fd, 1e-6);
        // One layer: the Jacobian's columns of that layer.
        let last = fx.net.slots.len() - 1;
        let s = &fx.net.slots[last];
        let one = Problem {
            slots: vec![last],
            ..fx.problem(n)
        };
        let vl = &v[s.offset..s.offset + s.numel];
        let mut masked = vec![0.0; v.len()];
        masked[s.offset..s.offset + s.numel].copy_from_slice(vl);
        assert_close(
            &format!("{name}: J v over one layer"),
            &one.jvp_outputs(vl).unwrap(),
            &dense_jv(&j, &masked, n, c),
            1e-12,
        );
    }
}
