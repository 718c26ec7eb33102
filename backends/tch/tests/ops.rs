//! `TchOps` method by method against the candle backend (the reference
//! semantics of `nngeo::geometry::ops::Ops`), its errors, and what the
//! crate says about libtorch and CUDA.

use nngeo::backend::candle::CandleOps;
use nngeo::geometry::ops::{Binary, Ops, Reduce, Unary};
use nngeo::plan::Dtype;
use nngeo::rng::Rng;
use nngeo_backend_tch::TchOps;

struct Pair {
    c: CandleOps,
    t: TchOps,
}

type CT = <CandleOps as Ops>::T;
type TT = <TchOps as Ops>::T;

impl Pair {
    fn new(dtype: Dtype) -> Pair {
        Pair {
            c: CandleOps::new("cpu", dtype).unwrap(),
            t: TchOps::new("cpu", dtype).unwrap(),
        }
    }
    fn up(&self, shape: &[usize], data: &[f64]) -> (CT, TT) {
        (
            self.c.upload(shape, data).unwrap(),
            self.t.upload(shape, data).unwrap(),
        )
    }
    fn random(&self, shape: &[usize], seed: u64) -> (CT, TT) {
        let mut rng = Rng::new(seed);
        let n: usize = shape.iter().product();
        let data: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        self.up(shape, &data)
    }
    fn idx(&self, idx: &[u32]) -> (CT, TT) {
        (
            self.c.upload_index(idx).unwrap(),
            self.t.upload_index(idx).unwrap(),
        )
    }
    /// Same shape, values within `tol` relative to the largest.
    fn same(&self, what: &str, a: &CT, b: &TT, tol: f64) {
        assert_eq!(self.c.shape(a), self.t.shape(b), "{what}: shapes");
        let (x, y) = (self.c.download(a).unwrap(), self.t.download(b).unwrap());
        assert_eq!(x.len(), y.len(), "{what}: lengths");
        let scale = x.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
        for (k, (p, q)) in x.iter().zip(&y).enumerate() {
            let ok = (p - q).abs() <= tol * scale || (p.is_nan() && q.is_nan());
            assert!(ok, "{what}: element {k}: candle {p} vs tch {q}");
        }
    }
}

const EXACT: f64 = 0.0;
/// Transcendental functions: libm against libtorch's vectorised kernels.
const ULPS: f64 = 1e-14;

#[test]
fn upload_download_shape_and_zeros() {
    for dtype in [Dtype::F64, Dtype::F32] {
        let p = Pair::new(dtype);
        let (c, t) = p.random(&[2, 3, 4], 1);
        p.same("round trip", &c, &t, EXACT);
        assert_eq!(p.t.shape(&t), vec![2, 3, 4]);
        assert_eq!(p.t.numel(&t), 24);
        let (c, t) = p.up(&[], &[2.5]);
        p.same("scalar", &c, &t, EXACT);
        let (c, t) = p.up(&[0, 3], &[]);
        p.same("empty", &c, &t, EXACT);
        p.same(
            "zeros",
            &p.c.zeros(&[3, 2]).unwrap(),
            &p.t.zeros(&[3, 2]).unwrap(),
            EXACT,
        );
        assert_eq!(p.t.dtype(), dtype);
    }
    let t = TchOps::new("cpu", Dtype::F32).unwrap();
    // f32 rounding, then back to f64.
    let x = t.upload(&[1], &[0.1]).unwrap();
    assert_eq!(t.download(&x).unwrap(), vec![f64::from(0.1f32)]);
    assert_eq!(t.name(), "tch");
    assert_eq!(t.device(), "cpu");
}

#[test]
fn layout_operations() {
    let p = Pair::new(Dtype::F64);
    let (c, t) = p.random(&[2, 3, 4], 2);
    for (d0, d1) in [(0, 1), (0, 2), (1, 2), (2, 0)] {
        let (a, b) = (
            p.c.transpose(&c, d0, d1).unwrap(),
            p.t.transpose(&t, d0, d1).unwrap(),
        );
        // A strided view on tch: it must still read as the transposed
        // tensor, and a reshape of it row-major.
        p.same("transpose", &a, &b, EXACT);
        p.same(
            "reshape",
            &p.c.reshape(&a, &[6, 4]).unwrap(),
            &p.t.reshape(&b, &[6, 4]).unwrap(),
            EXACT,
        );
    }
    for (dim, start, len) in [(0, 1, 1), (1, 1, 2), (2, 0, 3), (2, 3, 1)] {
        let b = p.t.narrow(&t, dim, start, len).unwrap();
        assert!(b.is_contiguous(), "narrow is contiguous");
        p.same(
            "narrow",
            &p.c.narrow(&c, dim, start, len).unwrap(),
            &b,
            EXACT,
        );
    }
    let (c2, t2) = p.random(&[2, 1, 4], 3);
    p.same(
        "cat dim 1",
        &p.c.cat(&[c.clone(), c2.clone()], 1).unwrap(),
        &p.t.cat(&[t.clone(), t2.clone()], 1).unwrap(),
        EXACT,
    );
    p.same(
        "cat dim 0",
        &p.c.cat(&[c.clone(), c.clone()], 0).unwrap(),
        &p.t.cat(&[t.clone(), t.clone()], 0).unwrap(),
        EXACT,
    );
}

#[test]
fn matmul_broadcasts_batch_dimensions() {
    for dtype in [Dtype::F64, Dtype::F32] {
        let p = Pair::new(dtype);
        let tol = if dtype == Dtype::F64 { 1e-13 } else { 1e-5 };
        for (sa, sb) in [
            (vec![3, 4], vec![4, 5]),
            (vec![2, 3, 4], vec![4, 5]),
            (vec![2, 3, 4], vec![2, 4, 5]),
            (vec![2, 1, 3, 4], vec![5, 4, 2]),
            (vec![3, 4], vec![2, 4, 5]),
            (vec![1, 3, 4], vec![6, 4, 1]),
            (vec![7, 40], vec![40, 33]),
        ] {
            let (ca, ta) = p.random(&sa, 4);
            let (cb, tb) = p.random(&sb, 5);
            p.same(
                &format!("matmul {sa:?} × {sb:?}"),
                &p.c.matmul(&ca, &cb).unwrap(),
                &p.t.matmul(&ta, &tb).unwrap(),
                tol,
            );
        }
        let (ca, ta) = p.random(&[6, 3], 6);
        let (cb, tb) = p.random(&[6, 4], 7);
        p.same(
            "t_matmul",
            &p.c.t_matmul(&ca, &cb).unwrap(),
            &p.t.t_matmul(&ta, &tb).unwrap(),
            tol,
        );
        // Column panels read in place (both backends override the
        // default): against candle's, and against the narrowed product.
        let (ca, ta) = p.random(&[37, 300], 8);
        let (cb, tb) = p.random(&[37, 41], 9);
        for (ra, rb) in [
            ((0, 160), (0, 41)),
            ((160, 140), (3, 30)),
            ((299, 1), (40, 1)),
        ] {
            let what = format!("t_matmul_cols {ra:?} {rb:?}");
            let t = p.t.t_matmul_cols(&ta, ra, &tb, rb).unwrap();
            p.same(
                &what,
                &p.c.t_matmul_cols(&ca, ra, &cb, rb).unwrap(),
                &t,
                tol,
            );
            let narrowed =
                p.c.t_matmul(
                    &p.c.narrow(&ca, 1, ra.0, ra.1).unwrap(),
                    &p.c.narrow(&cb, 1, rb.0, rb.1).unwrap(),
                )
                .unwrap();
            p.same(&what, &narrowed, &t, tol);
        }
        assert!(
            p.t.t_matmul_cols(&ta, (290, 20), &tb, (0, 1)).is_err(),
            "past the end"
        );
        assert!(p.t.t_matmul_cols(&ta, (0, 2), &ta, (0, 2)).is_ok());
    }
}

#[test]
fn unary_operations() {
    for dtype in [Dtype::F64, Dtype::F32] {
        let p = Pair::new(dtype);
        let tol = if dtype == Dtype::F64 { ULPS } else { 1e-6 };
        let mut rng = Rng::new(8);
        let mut data: Vec<f64> = (0..60).map(|_| 3.0 * rng.normal()).collect();
        data.extend([0.0, -0.0, 1.0, -1.0]);
        let positive: Vec<f64> = data.iter().map(|x| x.abs() + 0.1).collect();
        let (c, t) = p.up(&[4, 16], &data);
        let (cp, tp) = p.up(&[4, 16], &positive);
        for op in [
            Unary::Relu,
            Unary::Step,
            Unary::Tanh,
            Unary::Sigmoid,
            Unary::GeluErf,
            Unary::Erf,
            Unary::Exp,
            Unary::Sqr,
            Unary::Neg,
        ] {
            let b = p.t.unary(op, &t).unwrap();
            assert_eq!(b.kind(), p.t.upload(&[1], &[0.0]).unwrap().kind());
            p.same(&format!("{op:?}"), &p.c.unary(op, &c).unwrap(), &b, tol);
        }
        for op in [Unary::Log, Unary::Sqrt, Unary::Recip] {
            p.same(
                &format!("{op:?}"),
                &p.c.unary(op, &cp).unwrap(),
                &p.t.unary(op, &tp).unwrap(),
                tol,
            );
        }
    }
    // Step is (x > 0): 0 at 0; GeluErf is the erf form, not tanh.
    let t = TchOps::new("cpu", Dtype::F64).unwrap();
    let x = t.upload(&[4], &[-1.0, 0.0, 1e-300, 2.0]).unwrap();
    let step = t.download(&t.unary(Unary::Step, &x).unwrap()).unwrap();
    assert_eq!(step, vec![0.0, 0.0, 1.0, 1.0]);
    let g = t
        .download(
            &t.unary(Unary::GeluErf, &t.upload(&[1], &[1.0]).unwrap())
                .unwrap(),
        )
        .unwrap();
    assert!(
        (g[0] - 0.841_344_746_068_542_9).abs() < 1e-15,
        "gelu(1) = {}",
        g[0]
    );
}

#[test]
fn binary_operations_broadcast() {
    for dtype in [Dtype::F64, Dtype::F32] {
        let p = Pair::new(dtype);
        let (ca, ta) = p.random(&[2, 3, 4], 9);
        let shapes: [&[usize]; 5] = [&[2, 3, 4], &[3, 1], &[4], &[2, 1, 4], &[1]];
        for (k, sb) in shapes.iter().enumerate() {
            let (cb, tb) = p.random(sb, 10 + k as u64);
            for op in [
                Binary::Add,
                Binary::Sub,
                Binary::Mul,
                Binary::Div,
                Binary::Max,
                Binary::Ge,
            ] {
                p.same(
                    &format!("{op:?} {sb:?}"),
                    &p.c.binary(op, &ca, &cb).unwrap(),
                    &p.t.binary(op, &ta, &tb).unwrap(),
                    EXACT,
                );
            }
        }
        // Ge is ≥: 1 on ties.
        let (ca, ta) = p.up(&[3], &[1.0, 2.0, 3.0]);
        let (cb, tb) = p.up(&[3], &[2.0, 2.0, 2.0]);
        let ge = p.t.binary(Binary::Ge, &ta, &tb).unwrap();
        assert_eq!(p.t.download(&ge).unwrap(), vec![0.0, 1.0, 1.0]);
        p.same(
            "ge ties",
            &p.c.binary(Binary::Ge, &ca, &cb).unwrap(),
            &ge,
            EXACT,
        );
    }
}

#[test]
fn affine_and_reductions() {
    for dtype in [Dtype::F64, Dtype::F32] {
        let p = Pair::new(dtype);
        let tol = if dtype == Dtype::F64 { 1e-14 } else { 1e-6 };
        let (c, t) = p.random(&[3, 5, 7], 11);
        for (mul, add) in [(2.5, -1.0), (1.0, 0.0), (0.0, 3.0), (-0.3, 0.0)] {
            p.same(
                "affine",
                &p.c.affine(&c, mul, add).unwrap(),
                &p.t.affine(&t, mul, add).unwrap(),
                EXACT,
            );
        }
        for dim in 0..3 {
            // Sums: libtorch adds pairwise, candle in order.
            p.same(
                "sum",
                &p.c.reduce(Reduce::Sum, &c, dim).unwrap(),
                &p.t.reduce(Reduce::Sum, &t, dim).unwrap(),
                tol,
            );
            let m = p.t.reduce(Reduce::Max, &t, dim).unwrap();
            assert_eq!(p.t.shape(&m)[dim], 1, "the reduced dimension is kept");
            p.same("max", &p.c.reduce(Reduce::Max, &c, dim).unwrap(), &m, EXACT);
        }
        let (a, b) = (p.c.sum_all(&c).unwrap(), p.t.sum_all(&t).unwrap());
        assert!((a - b).abs() <= tol * 105.0, "sum_all {a} vs {b}");
    }
}

#[test]
fn index_select_and_index_add() {
    for dtype in [Dtype::F64, Dtype::F32] {
        let p = Pair::new(dtype);
        let (c, t) = p.random(&[4, 3, 5], 12);
        let (ci, ti) = p.idx(&[2, 0, 2, 1, 1, 1]);
        for dim in 0..3 {
            p.same(
                &format!("index_select {dim}"),
                &p.c.index_select(&c, &ci, dim).unwrap(),
                &p.t.index_select(&t, &ti, dim).unwrap(),
                EXACT,
            );
        }
        // Repeated positions accumulate.
        let (cb, tb) = p.random(&[5, 3], 13);
        let (cs, ts) = p.random(&[6, 3], 14);
        p.same(
            "index_add dim 0",
            &p.c.index_add(&cb, &ci, &cs, 0).unwrap(),
            &p.t.index_add(&tb, &ti, &ts, 0).unwrap(),
            1e-6,
        );
        let (cs, ts) = p.random(&[5, 6], 15);
        let (cb, tb) = p.random(&[5, 4], 16);
        p.same(
            "index_add dim 1",
            &p.c.index_add(&cb, &ci, &cs, 1).unwrap(),
            &p.t.index_add(&tb, &ti, &ts, 1).unwrap(),
            1e-6,
        );
        // The base is not modified (shallow clones share storage).
        p.same("base intact", &cb, &tb, EXACT);
    }
}

#[test]
fn errors_are_errors_not_panics() {
    let t = TchOps::new("cpu", Dtype::F64).unwrap();
    let a = t.upload(&[2, 3], &[0.0; 6]).unwrap();
    let b = t.upload(&[4, 5], &[0.0; 20]).unwrap();
    let v = t.upload(&[3], &[0.0; 3]).unwrap();
    let idx = t.upload_index(&[7]).unwrap();
    let errors = [
        t.upload(&[2, 2], &[1.0; 3]).err(),
        t.binary(Binary::Add, &a, &b).err(),
        t.matmul(&a, &b).err(),
        t.matmul(&a, &v).err(),
        t.narrow(&a, 1, 2, 5).err(),
        t.narrow(&a, 4, 0, 1).err(),
        t.transpose(&a, 0, 3).err(),
        t.reshape(&a, &[4]).err(),
        t.cat(&[a.clone(), b.clone()], 1).err(),
        t.cat(&[], 0).err(),
        t.index_select(&a, &idx, 0).err(),
        t.index_add(&a, &idx, &b, 0).err(),
        t.reduce(Reduce::Sum, &a, 5).err(),
    ];
    for (k, err) in errors.into_iter().enumerate() {
        let err = err.unwrap_or_else(|| panic!("case {k} should fail"));
        let msg = err.0;
        eprintln!("case {k}: {msg}");
        assert!(msg.starts_with("tch: "), "case {k}: {msg}");
        assert!(
            !msg.contains("Exception raised from"),
            "case {k}: the C++ backtrace is cut: {msg}"
        );
    }
    for bad in ["tpu", "cuda:x", "cuda:", "CPU", ""] {
        let err = TchOps::new(bad, Dtype::F64).unwrap_err().0;
        assert!(err.contains("does not know device"), "{bad}: {err}");
    }
}

/// CUDA either works (a GPU machine with libtorch's CUDA libraries) or
/// fails with a reason, never a panic or an abort. On a machine without a
/// GPU or without cuBLAS & co. (this repository's CI), the second.
#[test]
fn cuda_is_usable_or_refused_with_a_reason() {
    match nngeo_backend_tch::cuda_status() {
        Err(why) => {
            assert!(
                why.starts_with("CUDA is not available to libtorch: ")
                    || why.starts_with("no CUDA device visible ("),
                "{why}"
            );
            for dev in ["cuda", "cuda:0", "cuda:3"] {
                let err = TchOps::new(dev, Dtype::F64).unwrap_err().0;
                assert_eq!(err, why, "{dev}");
            }
            assert_eq!(nngeo_backend_tch::devices(), vec!["cpu".to_string()]);
            eprintln!("CUDA refused: {why}");
        }
        Ok(n) => {
            assert!(n > 0);
            let err = TchOps::new(&format!("cuda:{n}"), Dtype::F64).unwrap_err().0;
            assert!(err.contains("does not exist"), "{err}");
            let o = TchOps::new("cuda", Dtype::F64).unwrap();
            assert_eq!(o.device(), "cuda:0");
            let cpu = TchOps::new("cpu", Dtype::F64).unwrap();
            let data: Vec<f64> = (0..12).map(|i| i as f64 * 0.25 - 1.0).collect();
            let (a, b) = (
                o.upload(&[3, 4], &data).unwrap(),
                cpu.upload(&[3, 4], &data).unwrap(),
            );
            let (at, bt) = (
                o.transpose(&a, 0, 1).unwrap(),
                cpu.transpose(&b, 0, 1).unwrap(),
            );
            let x = o.download(&o.matmul(&a, &at).unwrap()).unwrap();
            let y = cpu.download(&cpu.matmul(&b, &bt).unwrap()).unwrap();
            for (p, q) in x.iter().zip(&y) {
                assert!((p - q).abs() < 1e-12, "cuda {p} vs cpu {q}");
            }
            assert_eq!(nngeo_backend_tch::devices().len(), n + 1);
        }
    }
}

/// This machine has no GPU: CUDA must be refused with the loader's or the
/// driver's reason (set NNGEO_EXPECT_CUDA=1 on a GPU machine to skip).
#[test]
fn cuda_is_refused_here() {
    if std::env::var_os("NNGEO_EXPECT_CUDA").is_some() {
        return;
    }
    let err = TchOps::new("cuda", Dtype::F32).unwrap_err().0;
    let loader = "CUDA is not available to libtorch: libtorch_cuda.so could not be loaded: ";
    let driver = "no CUDA device visible (";
    assert!(err.starts_with(loader) || err.starts_with(driver), "{err}");
    // The reason itself is there: a library the loader did not find, or
    // what the driver library said.
    let reason = err
        .strip_prefix(loader)
        .or_else(|| err.strip_prefix(driver))
        .unwrap();
    assert!(reason.len() > 10, "{err}");
}

#[test]
fn versions_and_backend_info() {
    assert_eq!(nngeo_backend_tch::libtorch_version(), "2.11.0");
    let b = nngeo_backend_tch::backend();
    let info = b.info();
    assert_eq!(info.name, "tch");
    assert!(
        info.version.starts_with("nngeo-backend-tch ")
            && info.version.ends_with(", libtorch 2.11.0"),
        "{}",
        info.version
    );
    assert_eq!(info.devices[0], "cpu");
    assert_eq!(info.devices, nngeo_backend_tch::devices());
    assert!(info.dtypes.contains(&Dtype::F32) && info.dtypes.contains(&Dtype::F64));
}

/// `torch.linalg.eigh` (the EKFAC bases on tch) against the host's faer:
/// the same eigenvalues, an orthonormal basis that rebuilds the matrix,
/// in f64 whatever the run's dtype; rank-deficient factors (fewer examples
/// than inputs, as KFAC's `A` often is) included; bad input refused.
#[test]
fn eigh_on_the_device_agrees_with_the_host() {
    use nngeo::linalg::Mat;
    let mut rng = Rng::new(21);
    let mut cases = vec![Mat::zeros(0, 0), Mat::from_vec(1, 1, vec![2.5])];
    for (rows, dim) in [(40, 7), (3, 12), (60, 60)] {
        let x: Vec<f64> = (0..rows * dim).map(|_| rng.normal()).collect();
        let x = Mat::from_vec(rows, dim, x);
        cases.push(x.transpose().matmul(&x));
    }
    let mut devices = vec!["cpu"];
    if nngeo_backend_tch::cuda_status().is_ok() {
        devices.push("cuda");
    }
    for (dev, dtype) in devices
        .iter()
        .flat_map(|d| [(*d, Dtype::F64), (*d, Dtype::F32)])
    {
        let t = TchOps::new(dev, dtype).unwrap();
        // By default the host decomposes for a CPU run, CUDA for a CUDA one.
        assert_eq!(t.device_linalg(), dev != "cpu", "{dev}");
        for a in &cases {
            let n = a.rows;
            let (want, _) = nngeo::linalg::eigh(a).unwrap();
            let (val, vec) = t.eigh(a).unwrap();
            assert_eq!((vec.rows, vec.cols, val.len()), (n, n, n));
            let scale = want.iter().fold(1e-300f64, |m, v| m.max(v.abs()));
            for (p, q) in want.iter().zip(&val) {
                assert!(
                    (p - q).abs() <= 1e-12 * scale,
                    "{dev} {n}×{n} {dtype:?}: {p} vs {q}"
                );
            }
            for r in 0..n {
                for c in 0..n {
                    let (mut rebuilt, mut gram) = (0.0, 0.0);
                    for (k, v) in val.iter().enumerate() {
                        rebuilt += vec.get(r, k) * v * vec.get(c, k);
                        gram += vec.get(k, r) * vec.get(k, c);
                    }
                    let id = if r == c { 1.0 } else { 0.0 };
                    assert!(
                        (rebuilt - a.get(r, c)).abs() <= 1e-12 * scale,
                        "{n}×{n}: rebuilt ({r}, {c})"
                    );
                    assert!(
                        (gram - id).abs() <= 1e-12,
                        "{n}×{n}: VᵀV ({r}, {c}) = {gram}"
                    );
                }
            }
        }
        assert!(t.eigh(&Mat::zeros(2, 3)).is_err(), "non-square");
        assert!(t.eigh(&Mat::from_vec(1, 1, vec![f64::NAN])).is_err(), "NaN");
    }
}

/// Solves and spectra in libtorch (forced on the CPU as a CUDA run has
/// them) against the host's: a positive definite system with several
/// right-hand sides, an indefinite one (Cholesky breaks down, both fall
/// back to LU), the empty system, f32 runs too (the decompositions stay in
/// f64), and the host's refusals of bad input.
#[test]
fn solves_and_spectra_on_the_device_agree_with_the_host() {
    use nngeo::linalg::Mat;
    let mut rng = Rng::new(5);
    let mut spd = {
        let x: Vec<f64> = (0..50 * 30).map(|_| rng.normal()).collect();
        let x = Mat::from_vec(50, 30, x);
        x.transpose().matmul(&x)
    };
    spd.add_diag(1e-3);
    let mut indefinite = spd.clone();
    indefinite.add_diag(-indefinite.get(0, 0) - 5.0);
    let rhs = Mat::from_vec(30, 3, (0..90).map(|_| rng.normal()).collect());
    for dtype in [Dtype::F64, Dtype::F32] {
        let t = TchOps::new("cpu", dtype).unwrap().with_device_linalg(true);
        assert!(t.device_linalg());
        for a in [&spd, &indefinite] {
            let want = nngeo::linalg::solve_sym(a, &rhs).unwrap();
            let got = t.solve_sym(a, &rhs).unwrap();
            assert_eq!((got.rows, got.cols), (30, 3));
            let scale = want.data.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            for (p, q) in want.data.iter().zip(&got.data) {
                assert!((p - q).abs() <= 1e-10 * scale, "{dtype:?}: {p} vs {q}");
            }
            let want = nngeo::linalg::eigvalsh(a).unwrap();
            let got = t.eigvalsh(a).unwrap();
            let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert_eq!(want.len(), got.len());
            for (p, q) in want.iter().zip(&got) {
                assert!((p - q).abs() <= 1e-12 * scale, "{dtype:?}: {p} vs {q}");
            }
        }
        let empty = t.solve_sym(&Mat::zeros(0, 0), &Mat::zeros(0, 2)).unwrap();
        assert_eq!((empty.rows, empty.cols), (0, 2));
        assert!(t.eigvalsh(&Mat::zeros(0, 0)).unwrap().is_empty());
        for (a, b, why) in [
            (Mat::zeros(2, 3), Mat::zeros(2, 1), "non-square"),
            (Mat::identity(3), Mat::zeros(2, 1), "rows"),
            (Mat::from_vec(1, 1, vec![f64::NAN]), Mat::zeros(1, 1), "NaN"),
        ] {
            let host = nngeo::linalg::solve_sym(&a, &b).unwrap_err().to_string();
            let dev = t.solve_sym(&a, &b).unwrap_err().0;
            assert_eq!(dev, host, "{why}");
        }
        assert!(t.eigvalsh(&Mat::zeros(2, 3)).is_err(), "non-square");
    }
}

/// ReLU's backward pass in one libtorch kernel against candle's default
/// (the gradient times the step of the input), a zero input included,
/// with the gradient broadcasting over a leading output axis.
#[test]
fn relu_grad_matches_the_default() {
    for dtype in [Dtype::F64, Dtype::F32] {
        let p = Pair::new(dtype);
        let mut x: Vec<f64> = (0..24).map(|i| i as f64 * 0.37 - 4.0).collect();
        x[5] = 0.0;
        let (cx, tx) = p.up(&[2, 3, 4], &x);
        for shape in [&[2, 3, 4][..], &[1, 2, 3, 4], &[3, 2, 3, 4]] {
            let (cg, tg) = p.random(shape, 31);
            let want = p.c.relu_grad(&cg, &cx).unwrap();
            let got = p.t.relu_grad(&tg, &tx).unwrap();
            p.same(&format!("relu_grad {shape:?}"), &want, &got, EXACT);
        }
    }
}
