//! Geometry sharded over data (src/geometry/parts.rs) on the built-in
//! candle backend, f64: every representation computed as parts over
//! example ranges and reduced equals the single-process computation
//! (bit for bit with one part, ≤ 1e-12 relative with more), and a reduce
//! that lacks a part, has one twice or mixes eigenbases is refused.

use nngeo::backend::candle::CandleOps;
use nngeo::geometry::build::{BlockKind, Problem, Target};
use nngeo::geometry::init::init_params;
use nngeo::geometry::net::Net;
use nngeo::geometry::ops::Ops;
use nngeo::geometry::parts::{self, FimShape, PartData, PartsError};
use nngeo::geometry::repr::{Block, Fim, FimBody};
use nngeo::plan::{Dtype, FisherVariant, ModelSpec, Op, Task};
use nngeo::rng::Rng;

type T = <CandleOps as Ops>::T;

/// Linear layers only.
const MLP: &str = "mlp(in = 6, hidden = [8, 7], out = 5, act = tanh, init = pytorch(seed = 1))";

/// Convolutions and Linear layers (KFAC and EKFAC apply to all).
const CNN: &str = "sequential(\
    conv2d(1, 3, kernel = 3, padding = 1), relu,\
    conv2d(3, 4, kernel = 3, stride = 2), tanh,\
    flatten, linear(36, 5),\
    input = [1, 8, 8], init = pytorch(seed = 2))";

/// With norm layers (Dense/Diag blocks, no Kronecker factors there).
const NORM_CNN: &str = "sequential(\
    conv2d(1, 3, kernel = 3, padding = 1), batchnorm2d(3), gelu,\
    conv2d(3, 4, kernel = 3, stride = 2), tanh,\
    flatten, layernorm([36]), linear(36, 5),\
    input = [1, 8, 8], init = pytorch(seed = 5))";

fn spec(model: &str) -> ModelSpec {
    let src = format!("experiment parts {{ dtype = f64 }}\nmodel net = {model}\n");
    let plan = nngeo::compile_source(&src, &Default::default()).unwrap();
    plan.steps
        .iter()
        .find_map(|s| match &s.op {
            Op::Model { spec, .. } => Some(spec.clone()),
            _ => None,
        })
        .unwrap()
}

struct Fx {
    o: CandleOps,
    net: Net<CandleOps>,
    x: T,
    labels: Vec<f64>,
    n: usize,
}

impl Fx {
    fn new(model: &str, n: usize, seed: u64) -> Fx {
        let o = CandleOps::new("cpu", Dtype::F64).unwrap();
        let spec = spec(model);
        let net = Net::new(&o, &spec, init_params(&spec, &spec.init)).unwrap();
        let mut rng = Rng::new(seed);
        let d: usize = spec.input.iter().product();
        let xs: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
        let mut shape = vec![n];
        shape.extend(&spec.input);
        let x = o.upload(&shape, &xs).unwrap();
        let c = spec.outputs();
        let labels = (0..n).map(|_| rng.below(c) as f64).collect();
        Fx {
            o,
            net,
            x,
            labels,
            n,
        }
    }

    fn problem(&self, batch: usize) -> Problem<'_, CandleOps> {
        Problem {
            o: &self.o,
            net: &self.net,
            x: &self.x,
            y: &self.labels,
            target_dim: 1,
            n: self.n,
            slots: (0..self.net.slots.len()).collect(),
            batch,
        }
    }

    fn kinds(&self, k: BlockKind) -> Vec<BlockKind> {
        self.net
            .slots
            .iter()
            .map(|s| if s.kind.kron() { k } else { BlockKind::Dense })
            .collect()
    }
}

fn fisher(variant: FisherVariant) -> Target {
    Target::Fim {
        variant,
        task: Task::Classification,
    }
}

/// Largest entry-wise difference over the largest entry.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let err = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(err.is_finite());
    err / scale.max(f64::MIN_POSITIVE)
}

/// Every number of a Fisher: its dense form for comparisons that do not
/// depend on the sign or order of eigenvectors (EKFAC), and its diagonal.
fn numbers(f: &Fim) -> Vec<f64> {
    let p: usize = f.layers.iter().map(|l| l.numel).sum();
    let mut out = Vec::new();
    match &f.body {
        FimBody::Dense(m) => out.extend(m.values_f64().unwrap().iter()),
        FimBody::Blocks(blocks) => {
            for (b, l) in blocks.iter().zip(&f.layers) {
                match b {
                    Block::Kfac { a, g } => {
                        out.extend(&a.as_f64().unwrap().data);
                        out.extend(&g.as_f64().unwrap().data);
                    }
                    Block::Ekfac { d, .. } => {
                        let mut ev = d.data.clone();
                        ev.sort_by(f64::total_cmp);
                        out.extend(ev);
                        // The block's action on unit vectors.
                        for i in 0..l.numel {
                            let mut e = vec![0.0; l.numel];
                            e[i] = 1.0;
                            out.extend(b.mv(l, &e).unwrap());
                        }
                    }
                    other => out.extend(other.diag(l).unwrap()),
                }
                if let Block::Dense(m) = b {
                    out.extend(m.values_f64().unwrap().iter());
                }
            }
        }
        FimBody::LowRank(m) => out.extend(&m.data),
    }
    assert!(out.len() >= p);
    out
}

const TOL: f64 = 1e-12;

fn check_fim(fx: &Fx, target: &Target, shape: &FimShape, what: &str) {
    for batch in [fx.n, 3] {
        let p = fx.problem(batch);
        let one = match shape {
            FimShape::Dense => p.fim_dense(target).unwrap(),
            FimShape::Blocks(k) => p.fim_blocks(target, k).unwrap(),
        };
        // One part: the same computation, bit for bit.
        let same = parts::fim_sharded(&p, target, shape, 1).unwrap();
        assert_eq!(same, one, "{what}, batch {batch}: one part");
        for k in [2, 3, 7] {
            let sharded = parts::fim_sharded(&p, target, shape, k).unwrap();
            assert_eq!(sharded.n, one.n);
            assert_eq!(sharded.refit, one.refit);
            let e = rel(&numbers(&sharded), &numbers(&one));
            println!("{what}, batch {batch}, {k} parts: relative error {e:.2e}");
            assert!(e <= TOL, "{what}, batch {batch}, {k} parts: {e:e}");
        }
    }
}

#[test]
fn sharded_fishers_equal_the_single_process_ones() {
    let t = fisher(FisherVariant::True);
    let emp = fisher(FisherVariant::Empirical);
    for model in [MLP, CNN] {
        let fx = Fx::new(model, 13, 3);
        check_fim(&fx, &t, &FimShape::Dense, "Dense");
        check_fim(&fx, &emp, &FimShape::Dense, "Dense (empirical)");
        for (name, kind) in [
            ("BlockDiag", BlockKind::Dense),
            ("Diag", BlockKind::Diag),
            ("QuasiDiag", BlockKind::QuasiDiag),
            ("KFAC", BlockKind::Kfac),
            ("EKFAC", BlockKind::Ekfac { refit: true }),
            ("EKFAC(refit = false)", BlockKind::Ekfac { refit: false }),
        ] {
            check_fim(&fx, &t, &FimShape::Blocks(fx.kinds(kind)), name);
        }
    }
    // A mix with norm layers: EKFAC for the affine ones, Dense blocks else.
    let fx = Fx::new(NORM_CNN, 11, 4);
    check_fim(
        &fx,
        &t,
        &FimShape::Blocks(fx.kinds(BlockKind::Ekfac { refit: true })),
        "mix(EKFAC, norm = BlockDiag)",
    );
}

#[test]
fn sharded_ntk_equals_the_single_process_one() {
    for model in [MLP, CNN, NORM_CNN] {
        let fx = Fx::new(model, 10, 5);
        let p = fx.problem(fx.n);
        let one = p.ntk_dense(false).unwrap();
        assert_eq!(parts::ntk_sharded(&p, 1).unwrap(), one, "{model}");
        for k in [2, 3, 10] {
            let sharded = parts::ntk_sharded(&p, k).unwrap();
            let e = rel(&sharded.data, &one.data);
            println!("NTK, {k} row ranges: relative error {e:.2e}");
            assert!(e <= TOL, "{model}, {k} ranges: {e:e}");
        }
    }
}

#[test]
fn sharded_mv_and_gradient_equal_the_single_process_ones() {
    let t = fisher(FisherVariant::True);
    for model in [MLP, NORM_CNN] {
        let fx = Fx::new(model, 12, 6);
        let mut rng = Rng::new(9);
        let v: Vec<f64> = (0..fx.net.num_params()).map(|_| rng.normal()).collect();
        for batch in [fx.n, 5] {
            let p = fx.problem(batch);
            let mv = p.implicit_mv(&t, &v).unwrap();
            let g = p.loss_gradient(false).unwrap();
            assert_eq!(parts::implicit_mv_sharded(&p, &t, &v, 1).unwrap(), mv);
            assert_eq!(parts::loss_gradient_sharded(&p, false, 1).unwrap(), g);
            for k in [2, 4, 12] {
                let e = rel(&parts::implicit_mv_sharded(&p, &t, &v, k).unwrap(), &mv);
                println!("implicit mv, {k} parts: relative error {e:.2e}");
                assert!(e <= TOL, "mv, {k}: {e:e}");
                let e = rel(&parts::loss_gradient_sharded(&p, false, k).unwrap(), &g);
                println!("gradient, {k} parts: relative error {e:.2e}");
                assert!(e <= TOL, "gradient, {k}: {e:e}");
            }
        }
    }
}

#[test]
fn a_reduce_with_a_part_missing_or_twice_is_refused() {
    let fx = Fx::new(CNN, 9, 7);
    let p = fx.problem(fx.n);
    let t = fisher(FisherVariant::True);
    let shape = FimShape::Blocks(fx.kinds(BlockKind::Ekfac { refit: true }));
    let k = 3;
    let first: Vec<_> = (0..k)
        .map(|j| parts::fim_part(&p, &t, &shape, j, k).unwrap())
        .collect();
    // Part 1 missing: refused, naming it. (Reducing the two others as if
    // they were all would give the Fisher of 6 examples, not 9.)
    let two = vec![first[0].clone(), first[2].clone()];
    match parts::reduce_fim(&p, &shape, &two, k) {
        Err(PartsError::Missing { missing, count }) => assert_eq!((missing, count), (vec![1], 3)),
        other => panic!("{other:?}"),
    }
    let dup = vec![first[0].clone(), first[1].clone(), first[1].clone()];
    assert!(matches!(
        parts::reduce_fim(&p, &shape, &dup, k),
        Err(PartsError::Mismatch(_))
    ));
    // Parts of a split into another count.
    let other: Vec<_> = (0..2)
        .map(|j| parts::fim_part(&p, &t, &shape, j, 2).unwrap())
        .collect();
    assert!(parts::reduce_fim(&p, &shape, &other, k).is_err());
    // A wrong reduce is detected numerically too: dropping a part's
    // weight changes the result.
    let f = parts::reduce_fim(&p, &shape, &first, k).unwrap();
    let mut scaled = first.clone();
    if let PartData::Fim(FimBody::Blocks(b)) = &mut scaled[2].data {
        if let Block::Kfac { a, .. } = &mut b[0] {
            a.host_mut().unwrap().map_in_place(|x| x * 0.5);
        }
    }
    assert_ne!(parts::reduce_fim(&p, &shape, &scaled, k).unwrap(), f);
    // Stage 2 against other eigenbases: refused.
    let second: Vec<_> = (0..k)
        .map(|j| parts::diag_part(&p, &t, &shape, &f, j, k).unwrap())
        .collect();
    let mut g = f.clone();
    parts::reduce_diagonals(&mut g, &shape, &second, k).unwrap();
    // Other bases: those of the first 6 examples only.
    let six = Problem {
        n: 6,
        ..fx.problem(6)
    };
    let other_bases = parts::fim_sharded(&six, &t, &shape, 1).unwrap();
    let mut h = f.clone();
    if let (FimBody::Blocks(hb), FimBody::Blocks(b6)) = (&mut h.body, &other_bases.body) {
        hb[0] = b6[0].clone();
    }
    match parts::reduce_diagonals(&mut h, &shape, &second, k) {
        Err(PartsError::Mismatch(m)) => assert!(m.contains("eigenbases"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A diagonal part missing.
    let mut g2 = f.clone();
    assert!(matches!(
        parts::reduce_diagonals(&mut g2, &shape, &second[..2], k),
        Err(PartsError::Missing { .. })
    ));
    // Kernel blocks: one missing.
    let kparts: Vec<_> = (0..6)
        .map(|t| parts::kernel_part(&p, 3, t).unwrap())
        .collect();
    let c = fx.net.outputs();
    assert!(parts::reduce_kernel(c, fx.n, &kparts, 3).is_ok());
    match parts::reduce_kernel(c, fx.n, &kparts[1..], 3) {
        Err(PartsError::Missing { missing, count }) => assert_eq!((missing, count), (vec![0], 6)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_splits_and_monte_carlo_are_refused() {
    assert!(parts::ranges(5, 0).is_err());
    assert!(parts::ranges(5, 6).is_err());
    assert_eq!(parts::ranges(7, 3).unwrap(), vec![(0, 2), (2, 4), (4, 7)]);
    assert_eq!(parts::kernel_pairs(3).len(), 6);
    let fx = Fx::new(MLP, 6, 8);
    let p = fx.problem(fx.n);
    let mc = fisher(FisherVariant::Mc {
        samples: 2,
        seed: 1,
    });
    assert!(matches!(
        parts::fim_sharded(&p, &mc, &FimShape::Dense, 2),
        Err(PartsError::Unsupported(_))
    ));
}
