//! Geometry as values (issue 15), through the whole pipeline (text → plan
//! → backend → results.jsonl): the vector results of `mv`, `solve` and
//! `diag` bound with `let` and combined, one layer's part `v[layer]`.
//! Each is checked in float64 against the same quantity computed another
//! way (the measurement itself, the dense matrix, the defining equation),
//! ≤ 1e-10 relative. `NNGEO_BACKEND=tch` runs it on the libtorch plugin.

mod run_ngx;

use run_ngx::{num, rel, run_in, run_source, vec_of, STORED};
use serde_json::Value;
use std::collections::HashMap;

const HEADER: &str = "experiment t { dtype = f64 }\n\
    data train = digits(split = train) |> normalize\n\
    data probe = train |> take(3, per_class, seed = 1)\n\
    model net = sequential(conv2d(1, 2, kernel = 3, stride = 2, padding = 1), tanh, flatten, \
    linear(32, 8), relu, linear(8, 10), input = [1, 8, 8], init = pytorch(seed = 3))\n\
    let v = random_vector(net, seed = 5)\n";

const LAYERS: [(&str, usize); 3] = [("layers.0", 20), ("layers.3", 264), ("layers.5", 90)];

fn run(body: &str) -> HashMap<String, Value> {
    run_source(&format!("{HEADER}{body}\n"))
}

/// Worst relative error seen, printed so a run shows its margins.
fn check(what: &str, err: f64) {
    println!("{what}: {err:.3e}");
    assert!(err <= 1e-10, "{what}: {err:e}");
}

/// The measured `norm` under `key` against `v`'s.
fn check_norm(r: &HashMap<String, Value>, key: &str, v: &[f64]) {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    check(key, (num(r, key) - norm).abs() / norm);
}

#[test]
fn vector_results_are_values() {
    let mut body = String::from("let g = grad(net, train)\n");
    for (i, s) in STORED.iter().chain(["Implicit"].iter()).enumerate() {
        body += &format!(
            "let F{i} = Fim({s}) of net on probe\n\
             let u{i} = solve(F{i}, g, damping = 1e-3)\n\
             let w{i} = mv(F{i}, u{i})\n\
             let d{i} = diag(F{i})\n\
             measure u{i} as \"u/{s}\", solve(F{i}, g, damping = 1e-3) as \"solve/{s}\"\n\
             measure w{i} as \"w/{s}\", mv(F{i}, u{i}) as \"mv/{s}\"\n\
             measure d{i} as \"d/{s}\", diag(F{i}) as \"diag/{s}\"\n\
             measure norm(u{i}) as \"norm/{s}\", dot(u{i}, g) as \"dot/{s}\"\n\
             measure w{i} + 1e-3 * u{i} as \"lhs/{s}\"\n"
        );
    }
    body += "measure g as \"g\"\n";
    let r = run(&body);
    let g = vec_of(&r, "g");
    for s in STORED.iter().chain(["Implicit"].iter()) {
        let u = vec_of(&r, &format!("u/{s}"));
        // A stored value is the measurement, bit for bit.
        assert_eq!(u, vec_of(&r, &format!("solve/{s}")), "{s}");
        assert_eq!(
            vec_of(&r, &format!("w/{s}")),
            vec_of(&r, &format!("mv/{s}"))
        );
        assert_eq!(
            vec_of(&r, &format!("d/{s}")),
            vec_of(&r, &format!("diag/{s}"))
        );
        check_norm(&r, &format!("norm/{s}"), &u);
        let dot: f64 = u.iter().zip(&g).map(|(a, b)| a * b).sum();
        check(
            &format!("dot/{s}"),
            (num(&r, &format!("dot/{s}")) - dot).abs() / dot.abs(),
        );
        // (F + λ) u = g, where `solve` damps by λ I (KFAC damps its
        // factors; LowRank solves in its row space, as NNGeometry).
        if *s != "KFAC" && *s != "LowRank" {
            check(
                &format!("(F + λ) solve(F, g) = g, {s}"),
                rel(&vec_of(&r, &format!("lhs/{s}")), &g),
            );
        }
    }
}

#[test]
fn a_layer_part_is_that_layer_of_the_vector() {
    let mut body = String::from(
        "let F = Fim(BlockDiag) of net on probe\n\
         let w = mv(F, v)\n\
         measure v as \"v\", w as \"w\"\n",
    );
    for (l, _) in LAYERS {
        body += &format!(
            "measure v[\"{l}\"] as \"v/{l}\", w[\"{l}\"] as \"w/{l}\"\n\
             measure mv(F[\"{l}\"], v[\"{l}\"]) as \"mv/{l}\", mv(F[\"{l}\"], v) as \"mvfull/{l}\"\n\
             measure norm(v[\"{l}\"]) as \"norm/{l}\"\n"
        );
    }
    body += "for layer in layers(net) { measure 2 * v[layer] - v[layer] as \"loop/{layer}\" }\n";
    let r = run(&body);
    let (v, w) = (vec_of(&r, "v"), vec_of(&r, "w"));
    let mut at = 0;
    for (l, n) in LAYERS {
        let (vl, wl) = (&v[at..at + n], &w[at..at + n]);
        assert_eq!(vec_of(&r, &format!("v/{l}")), vl, "{l}");
        assert_eq!(vec_of(&r, &format!("loop/{l}")), vl, "{l}");
        assert_eq!(vec_of(&r, &format!("w/{l}")), wl, "{l}");
        check(
            &format!("mv(F[{l}], v[{l}])"),
            rel(&vec_of(&r, &format!("mv/{l}")), wl),
        );
        assert_eq!(
            vec_of(&r, &format!("mv/{l}")),
            vec_of(&r, &format!("mvfull/{l}"))
        );
        check_norm(&r, &format!("norm/{l}"), vl);
        at += n;
    }
}

#[test]
fn elementwise_operations() {
    let r = run("let u = random_vector(net, seed = 6)\n\
         measure v as \"v\", u as \"u\", v * u as \"mul\", v / u as \"div\"\n\
         measure v / 4 as \"quarter\", -v as \"neg\", v - u as \"sub\"\n");
    let (v, u) = (vec_of(&r, "v"), vec_of(&r, "u"));
    let mul: Vec<f64> = v.iter().zip(&u).map(|(a, b)| a * b).collect();
    let div: Vec<f64> = v.iter().zip(&u).map(|(a, b)| a / b).collect();
    let sub: Vec<f64> = v.iter().zip(&u).map(|(a, b)| a - b).collect();
    assert_eq!(vec_of(&r, "mul"), mul);
    assert_eq!(vec_of(&r, "div"), div);
    assert_eq!(vec_of(&r, "sub"), sub);
    assert_eq!(
        vec_of(&r, "quarter"),
        v.iter().map(|x| x * 0.25).collect::<Vec<_>>()
    );
    assert_eq!(vec_of(&r, "neg"), v.iter().map(|x| -x).collect::<Vec<_>>());
}

/// `eigenvector(F, k)` for every structure: unit, orthogonal, largest entry
/// positive, `F u_k = λ_k u_k` with `λ_k` the k-th of `eigenvalues(F)`
/// (≤ 1e-10 relative to the largest eigenvalue), for the top three and for
/// one layer's block; `eigenvectors(F, top = 3)` holds the same vectors.
#[test]
fn eigenvectors_are_eigenvectors() {
    let mut body = String::new();
    for (i, s) in STORED.iter().chain(["Implicit"].iter()).enumerate() {
        body += &format!(
            "let F{i} = Fim({s}) of net on probe\n\
             measure eigenvalues(F{i}, top = 3) as \"ev/{s}\", eigenvectors(F{i}, top = 3) as \"evs/{s}\"\n\
             measure eigenvalues(F{i}[\"layers.3\"], top = 1) as \"evl/{s}\"\n\
             let l{i} = eigenvector(F{i}[\"layers.3\"], 1)\n\
             measure l{i} as \"l/{s}\", mv(F{i}[\"layers.3\"], l{i}) as \"Fl/{s}\"\n"
        );
        for k in 1..=3 {
            body += &format!(
                "let u{i}_{k} = eigenvector(F{i}, {k})\n\
                 measure u{i}_{k} as \"u{k}/{s}\", mv(F{i}, u{i}_{k}) as \"Fu{k}/{s}\"\n"
            );
        }
    }
    let r = run(&body);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let pair = |s: &str, u: &[f64], fu: &[f64], lambda: f64, top: f64| {
        let res = fu
            .iter()
            .zip(u)
            .map(|(a, b)| (a - lambda * b).abs())
            .fold(0.0f64, f64::max);
        check(&format!("{s}: F u = λ u"), res / top);
        check(&format!("{s}: |u| = 1"), (dot(u, u) - 1.0).abs());
        let big = u
            .iter()
            .fold(0.0f64, |m, x| if x.abs() > m.abs() { *x } else { m });
        assert!(big > 0.0, "{s}: sign");
    };
    for s in STORED.iter().chain(["Implicit"].iter()) {
        let ev = vec_of(&r, &format!("ev/{s}"));
        let us: Vec<Vec<f64>> = (1..=3).map(|k| vec_of(&r, &format!("u{k}/{s}"))).collect();
        for k in 0..3 {
            let fu = vec_of(&r, &format!("Fu{}/{s}", k + 1));
            pair(&format!("{s} {}", k + 1), &us[k], &fu, ev[k], ev[0]);
            for j in 0..k {
                check(
                    &format!("{s}: u{} · u{}", j + 1, k + 1),
                    dot(&us[j], &us[k]).abs(),
                );
            }
        }
        // `eigenvectors(F, top = 3)`: the same vectors as rows (bit for bit
        // where stored; Implicit's Lanczos runs to another length for one
        // vector than for three, so there within its convergence).
        assert_eq!(
            r[&format!("evs/{s}")]["shape"],
            serde_json::json!([3, us[0].len()])
        );
        let rows = vec_of(&r, &format!("evs/{s}"));
        if *s == "Implicit" {
            let err = rel(&rows, &us.concat());
            println!("{s}: eigenvectors vs eigenvector: {err:.3e}");
            assert!(err <= 1e-8, "{s}: {err:e}");
        } else {
            assert!(
                rows == us.concat(),
                "{s}: eigenvectors differ from eigenvector"
            );
        }
        let evl = vec_of(&r, &format!("evl/{s}"))[0];
        let (l, fl) = (
            vec_of(&r, &format!("l/{s}")),
            vec_of(&r, &format!("Fl/{s}")),
        );
        assert_eq!(l.len(), LAYERS[1].1);
        pair(&format!("{s} layers.3"), &l, &fl, evl, evl);
    }
}

/// `with_weights(net, v)`: a model whose weights are the vector's, whole or
/// on the layers it covers; its initial weights are those; the same
/// weights give the same model.
#[test]
fn vectors_write_into_weights() {
    let r = run("model moved = with_weights(net, weights(net) + 0.01 * v)
         model part = with_weights(net, 0.5 * weights(net)[\"layers.3\"])
         model same = with_weights(net, weights(net))
         measure weights(net) as \"w\", weights(moved) as \"moved\", initial_weights(moved) as \"moved0\"
         measure weights(part) as \"part\", v as \"v\"
         measure loss(same, probe) as \"loss_same\", loss(net, probe) as \"loss\"
         measure accuracy(same, probe) as \"acc_same\", accuracy(net, probe) as \"acc\"
");
    let (w, v) = (vec_of(&r, "w"), vec_of(&r, "v"));
    let moved: Vec<f64> = w.iter().zip(&v).map(|(a, b)| a + 0.01 * b).collect();
    assert_eq!(vec_of(&r, "moved"), moved);
    assert_eq!(vec_of(&r, "moved0"), moved);
    let part = vec_of(&r, "part");
    let (a, b) = (LAYERS[0].1, LAYERS[0].1 + LAYERS[1].1);
    assert_eq!(part[..a], w[..a]);
    assert_eq!(
        part[a..b],
        w[a..b].iter().map(|x| x * 0.5).collect::<Vec<_>>()[..]
    );
    assert_eq!(part[b..], w[b..]);
    assert_eq!(num(&r, "loss_same"), num(&r, "loss"));
    assert_eq!(num(&r, "acc_same"), num(&r, "acc"));
}

/// `A + B`, `A - B`, `c * A`, `A + λ`, `inverse` and `power` of every
/// structure against the same operation on its dense form (`dense(M)`),
/// and the measurements of the results against the dense ones.
#[test]
fn matrix_algebra_matches_the_dense_operation() {
    let mut body = String::from("data other = train |> take(2, per_class, seed = 2)\n");
    let all = STORED;
    for (i, s) in all.iter().enumerate() {
        body += &format!(
            "let F{i} = Fim({s}) of net on probe\n\
             let G{i} = Fim({s}) of net on other\n\
             let D{i} = dense(F{i})\n\
             let E{i} = dense(G{i})\n\
             let I{i} = inverse(F{i} + 1e-3)\n\
             let J{i} = inverse(D{i} + 1e-3)\n\
             measure rel_error(F{i} + G{i}, D{i} + E{i}) as \"add/{s}\"\n\
             measure rel_error(F{i} - G{i}, D{i} - E{i}) as \"sub/{s}\"\n\
             measure rel_error(-2.5 * F{i}, -2.5 * D{i}) as \"scale/{s}\"\n\
             measure rel_error(F{i} / 4, D{i} / 4) as \"div/{s}\"\n\
             measure rel_error(F{i} + 1e-3, D{i} + 1e-3) as \"damp/{s}\"\n\
             measure rel_error(I{i}, J{i}) as \"inverse/{s}\"\n\
             measure rel_error(power(F{i} + 1e-3, 0.5), power(D{i} + 1e-3, 0.5)) as \"sqrt/{s}\"\n\
             measure rel_error(power(F{i}, 2), power(D{i}, 2)) as \"square/{s}\"\n\
             measure rel_error(inverse(F{i} + G{i} + 1e-2), inverse(D{i} + E{i} + 1e-2)) as \"ewc/{s}\"\n\
             measure trace(I{i}) as \"trace/{s}\", trace(J{i}) as \"trace/dense/{s}\"\n\
             measure frobenius(I{i}) as \"frob/{s}\", frobenius(J{i}) as \"frob/dense/{s}\"\n\
             measure eigenvalues(I{i}, top = 5) as \"ev/{s}\", eigenvalues(J{i}, top = 5) as \"ev/dense/{s}\"\n\
             measure mv(I{i}, v) as \"mv/{s}\", mv(J{i}, v) as \"mv/dense/{s}\"\n\
             measure diag(I{i}) as \"diag/{s}\", diag(J{i}) as \"diag/dense/{s}\"\n\
             measure solve(I{i}, v, damping = 0.5) as \"solve/{s}\", solve(J{i}, v, damping = 0.5) as \"solve/dense/{s}\"\n\
             measure solve(F{i}, v, damping = 1e-3) as \"solve1/{s}\"\n\
             measure rel_error(I{i}[\"layers.5\"], J{i}[\"layers.5\"]) as \"layer/{s}\"\n"
        );
    }
    // Implicit: `+ λ` stays matrix-free, `inverse` multiplies by conjugate
    // gradients (to 1e-14), `dense(M)` materialises either.
    body += "let FI = Fim(Implicit) of net on probe\n\
             let DI = dense(FI)\n\
             let II = inverse(FI + 1e-2)\n\
             let JI = inverse(DI + 1e-2)\n\
             measure rel_error(dense(FI + 1e-2), DI + 1e-2) as \"damp/Implicit\"\n\
             measure rel_error(dense(II), JI) as \"inverse/Implicit\"\n\
             measure trace(II) as \"trace/Implicit\", trace(JI) as \"trace/dense/Implicit\"\n\
             measure frobenius(II) as \"frob/Implicit\", frobenius(JI) as \"frob/dense/Implicit\"\n\
             measure eigenvalues(II, top = 5) as \"ev/Implicit\", eigenvalues(JI, top = 5) as \"ev/dense/Implicit\"\n\
             measure mv(II, v) as \"mv/Implicit\", mv(JI, v) as \"mv/dense/Implicit\"\n\
             measure diag(II) as \"diag/Implicit\", diag(JI) as \"diag/dense/Implicit\"\n\
             measure solve(II, v, damping = 0.5) as \"solve/Implicit\", solve(JI, v, damping = 0.5) as \"solve/dense/Implicit\"\n\
             measure solve(FI, v, damping = 1e-2) as \"solve1/Implicit\"\n";
    let r = run(&body);
    let mut worst = 0.0f64;

    let mut see = |what: String, e: f64| {
        check(&what, e);
        worst = worst.max(e);
    };
    let every = [
        "add", "sub", "scale", "div", "damp", "inverse", "sqrt", "square", "ewc", "layer",
    ];
    for s in all.into_iter().chain(["Implicit"]) {
        let ops: &[&str] = if s == "Implicit" {
            &["damp", "inverse"]
        } else {
            &every
        };
        for op in ops {
            see(format!("{op}/{s}"), num(&r, &format!("{op}/{s}")));
        }
        for m in ["trace", "frob"] {
            let (a, b) = (
                num(&r, &format!("{m}/{s}")),
                num(&r, &format!("{m}/dense/{s}")),
            );
            see(format!("{m}/{s}"), (a - b).abs() / b.abs());
        }
        for m in ["ev", "mv", "diag", "solve"] {
            let a = vec_of(&r, &format!("{m}/{s}"));
            let b = vec_of(&r, &format!("{m}/dense/{s}"));
            see(format!("{m}/{s}"), rel(&a, &b));
        }
        // inverse(F + λ) v is solve(F, v, damping = λ) where `solve`
        // damps by λI (KFAC damps its factors, LowRank solves in its rows).
        if s != "KFAC" && s != "LowRank" {
            let a = vec_of(&r, &format!("mv/{s}"));
            see(
                format!("inverse·v = solve/{s}"),
                rel(&a, &vec_of(&r, &format!("solve1/{s}"))),
            );
        }
    }
    println!("worst relative error over every operation and structure: {worst:.3e}");
}

/// Vectors over different layers, algebra on different structures, on
/// an NTK or on an implicit Fisher: refused by the checker, saying why.
#[test]
fn errors_are_located() {
    let cases = [
        ("measure v[\"layers.0\"] + v[\"layers.5\"]", "Mismatch"),
        ("let F = Fim(Dense) of net on probe\nmeasure mv(F, v[\"layers.5\"])", "missing: layers.0"),
        ("measure v[\"layers.9\"]", "layers.9"),
        ("let K = Ntk(Dense) of net on probe\nlet d = diag(K)", "NTK"),
        (
            "let A = Fim(KFAC) of net on probe\nlet B = Fim(Diag) of net on probe\nmeasure trace(A + B)",
            "StructureMismatch { op: \"+\", a: \"Fim(KFAC)\", b: \"Fim(Diag)\" }",
        ),
        ("let K = Ntk(Dense) of net on probe\nmeasure trace(inverse(K))", "Fisher"),
        ("let I = Fim(Implicit) of net on probe\nmeasure trace(power(I, 2))", "takes `+ λ`"),
        ("let K = Ntk(Dense) of net on probe\nsave K to \"k.safetensors\"", "only Fisher"),
        ("let K = Ntk(Dense) of net on probe\nlet u = eigenvector(K, 1)", "NTK's eigenvectors"),
        ("let F = Fim(KFAC) of net on probe\nlet u = eigenvector(F[\"layers.5\"], 91)", "OutOfRange"),
        (
            "model small = mlp(in = 64, hidden = [4], out = 10)\nmodel m = with_weights(net, weights(small))",
            "layer `layers.0` of `net` has 20 parameters, the vector 260 entries",
        ),
        (
            "model small = mlp(in = 64, hidden = [4], out = 10)\nmodel m = with_weights(net, random_vector(small, seed = 1)[\"layers.2\"])",
            "the vector's layer `layers.2` is not a layer of `net`",
        ),
    ];
    for (body, needle) in cases {
        let src = format!("{HEADER}{body}\n");
        let Err(e) = nngeo::compile_source(&src, &Default::default()) else {
            panic!("accepted:\n{body}");
        };
        let e = format!("{e:?}");
        assert!(e.contains(needle), "{body}: {e}");
    }
}

/// `save F to "f.safetensors"` then `fim("f.safetensors", model = net)`
/// in another run: the same matrix, bit for bit, for every stored
/// structure and an algebra result; the file holds what the README says.
#[test]
fn a_saved_representation_loads_and_agrees_exactly() {
    let first = tempfile::tempdir().unwrap();
    let all = STORED;
    let mut body = String::new();
    for (i, s) in all.iter().enumerate() {
        body += &format!(
            "let F{i} = Fim({s}) of net on probe\nsave F{i} to \"f{i}.safetensors\"\n\
             measure mv(F{i}, v) as \"mv/{s}\", trace(F{i}) as \"trace/{s}\"\n"
        );
    }
    body += "let I = inverse(F0 + 1e-3)\nsave I to \"inv.safetensors\"\n\
             measure mv(I, v) as \"mv/inv\"\n";
    let a = run_in(&format!("{HEADER}{body}"), first.path());
    let second = tempfile::tempdir().unwrap();
    let at = |f: &str| first.path().join(f).to_str().unwrap().replace('\\', "/");
    let mut body = String::new();
    for (i, s) in all.iter().enumerate() {
        body += &format!(
            "let L{i} = fim(\"{}\", model = net)\n\
             measure mv(L{i}, v) as \"mv/{s}\", trace(L{i}) as \"trace/{s}\"\n\
             measure rel_error(L{i}, Fim({s}) of net on probe) as \"same/{s}\"\n",
            at(&format!("f{i}.safetensors"))
        );
    }
    body += &format!(
        "let J = fim(\"{}\", model = net)\nmeasure mv(J, v) as \"mv/inv\"\n",
        at("inv.safetensors")
    );
    let b = run_in(&format!("{HEADER}{body}"), second.path());
    for s in all {
        assert_eq!(
            vec_of(&a, &format!("mv/{s}")),
            vec_of(&b, &format!("mv/{s}")),
            "{s}"
        );
        assert_eq!(
            num(&a, &format!("trace/{s}")),
            num(&b, &format!("trace/{s}")),
            "{s}"
        );
        assert_eq!(num(&b, &format!("same/{s}")), 0.0, "{s}");
    }
    assert_eq!(vec_of(&a, "mv/inv"), vec_of(&b, "mv/inv"));
    // The KFAC file as Python's `safetensors` sees it.
    let bytes = std::fs::read(first.path().join("f0.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["format"], "nngeo.fim/1");
    assert_eq!(meta["structure"], "KFAC");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (k, shape) in [
        ("layers.0.A", [10, 10]),
        ("layers.0.G", [2, 2]),
        ("layers.3.A", [33, 33]),
        ("layers.3.G", [8, 8]),
        ("layers.5.A", [9, 9]),
        ("layers.5.G", [10, 10]),
    ] {
        let t = st.tensor(k).unwrap();
        assert_eq!(t.shape(), shape, "{k}");
        assert_eq!(t.dtype(), safetensors::Dtype::F64);
    }
}
