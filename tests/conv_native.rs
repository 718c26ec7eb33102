//! The candle backend's one-pass im2col / col2im (`Ops::unfold_patches`,
//! `Ops::fold_patches`) against the trait's default (`index_select` /
//! `index_add`, the path every convolution took before), in float64:
//! the operations alone on strided, padded, dilated and transposed index
//! maps, then whole forward and backward passes through strided, padded,
//! grouped and dilated convolutions, a transposed convolution, a Conv1d
//! and pooling; the input gradient of a convolution (`Ops::conv_input_grad`,
//! fused per example on candle) is compared with the default, which forms
//! the patches' gradient a few examples at a time. A batch large enough to
//! be cut into several such pieces must give, example by example, what
//! each example gives alone.

use nngeo::backend::candle::CandleOps;
use nngeo::geometry::init::init_params;
use nngeo::geometry::net::{Net, Phase};
use nngeo::geometry::ops::{Binary, Ops, OpsResult, Reduce, Unary};
use nngeo::plan::{Dtype, ModelSpec};

#[path = "conformance/common.rs"]
mod common;
use common::{compile_model, rel_err};

/// The candle backend with the trait's default unfold and fold.
#[derive(Clone)]
struct DefaultFold(CandleOps);

type T = candle_core::Tensor;

impl Ops for DefaultFold {
    type T = T;
    fn name(&self) -> String {
        "candle-default-fold".into()
    }
    fn device(&self) -> String {
        self.0.device()
    }
    fn dtype(&self) -> Dtype {
        self.0.dtype()
    }
    fn upload(&self, shape: &[usize], data: &[f64]) -> OpsResult<T> {
        self.0.upload(shape, data)
    }
    fn upload_index(&self, idx: &[u32]) -> OpsResult<T> {
        self.0.upload_index(idx)
    }
    fn download(&self, t: &T) -> OpsResult<Vec<f64>> {
        self.0.download(t)
    }
    fn shape(&self, t: &T) -> Vec<usize> {
        self.0.shape(t)
    }
    fn zeros(&self, shape: &[usize]) -> OpsResult<T> {
        self.0.zeros(shape)
    }
    fn reshape(&self, t: &T, shape: &[usize]) -> OpsResult<T> {
        self.0.reshape(t, shape)
    }
    fn transpose(&self, t: &T, d0: usize, d1: usize) -> OpsResult<T> {
        self.0.transpose(t, d0, d1)
    }
    fn narrow(&self, t: &T, dim: usize, start: usize, len: usize) -> OpsResult<T> {
        self.0.narrow(t, dim, start, len)
    }
    fn cat(&self, ts: &[T], dim: usize) -> OpsResult<T> {
        self.0.cat(ts, dim)
    }
    fn matmul(&self, a: &T, b: &T) -> OpsResult<T> {
        self.0.matmul(a, b)
    }
    fn unary(&self, op: Unary, t: &T) -> OpsResult<T> {
        self.0.unary(op, t)
    }
    fn binary(&self, op: Binary, a: &T, b: &T) -> OpsResult<T> {
        self.0.binary(op, a, b)
    }
    fn affine(&self, t: &T, mul: f64, add: f64) -> OpsResult<T> {
        self.0.affine(t, mul, add)
    }
    fn reduce(&self, op: Reduce, t: &T, dim: usize) -> OpsResult<T> {
        self.0.reduce(op, t, dim)
    }
    fn index_select(&self, t: &T, idx: &T, dim: usize) -> OpsResult<T> {
        self.0.index_select(t, idx, dim)
    }
    fn index_add(&self, base: &T, idx: &T, src: &T, dim: usize) -> OpsResult<T> {
        self.0.index_add(base, idx, src, dim)
    }
}

fn native() -> CandleOps {
    CandleOps::new("cpu", Dtype::F64).unwrap()
}

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// Index map of a `kernel` window (`stride`, `padding`, `dilation`) over
/// an `h × w` image, written independently of the engine's: tap-major,
/// `h·w` for the padding.
fn conv_index(
    h: usize,
    w: usize,
    k: [usize; 2],
    st: [usize; 2],
    p: [usize; 2],
    d: [usize; 2],
) -> Vec<u32> {
    let oh = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) / st[0] + 1;
    let ow = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) / st[1] + 1;
    let mut idx = Vec::new();
    for ki in 0..k[0] {
        for kj in 0..k[1] {
            for oi in 0..oh {
                for oj in 0..ow {
                    let r = (oi * st[0] + ki * d[0]) as isize - p[0] as isize;
                    let c = (oj * st[1] + kj * d[1]) as isize - p[1] as isize;
                    let inside = r >= 0 && c >= 0 && (r as usize) < h && (c as usize) < w;
                    idx.push(if inside {
                        (r as usize * w + c as usize) as u32
                    } else {
                        (h * w) as u32
                    });
                }
            }
        }
    }
    idx
}

/// (h, w, kernel, stride, padding, dilation)
type Window = (usize, usize, [usize; 2], [usize; 2], [usize; 2], [usize; 2]);

#[test]
fn unfold_and_fold_match_the_index_select_path() {
    let (a, b) = (native(), DefaultFold(native()));
    let cases: &[Window] = &[
        (8, 8, [3, 3], [1, 1], [1, 1], [1, 1]),
        (9, 7, [3, 2], [2, 3], [1, 2], [1, 1]),
        (10, 11, [3, 3], [1, 2], [2, 3], [2, 3]),
        (1, 12, [1, 3], [1, 2], [0, 1], [1, 1]),
        (6, 6, [2, 2], [2, 2], [0, 0], [1, 1]),
    ];
    for (case, &(h, w, k, st, p, d)) in cases.iter().enumerate() {
        let idx = conv_index(h, w, k, st, p, d);
        let kk = k[0] * k[1];
        let l = idx.len() / kk;
        let (n, c) = (3, 4);
        let x = values(n * c * h * w, case as u64);
        let (ia, ib) = (a.upload_index(&idx).unwrap(), b.upload_index(&idx).unwrap());
        let (xa, xb) = (
            a.upload(&[n, c, h * w], &x).unwrap(),
            b.upload(&[n, c, h * w], &x).unwrap(),
        );
        for lk in [false, true] {
            for fill in [0.0, -3.5] {
                let ua = a.unfold_patches(&xa, &ia, c, kk, fill, lk).unwrap();
                let ub = b.unfold_patches(&xb, &ib, c, kk, fill, lk).unwrap();
                assert_eq!(a.shape(&ua), b.shape(&ub));
                let want = if lk {
                    vec![n, l, c * kk]
                } else {
                    vec![n, c * kk, l]
                };
                assert_eq!(a.shape(&ua), want);
                assert_eq!(
                    a.download(&ua).unwrap(),
                    b.download(&ub).unwrap(),
                    "case {case}, lk {lk}"
                );
            }
            let shape = if lk { [n, l, c * kk] } else { [n, c * kk, l] };
            let pv = values(n * c * kk * l, 100 + case as u64);
            let (pa, pb) = (
                a.upload(&shape, &pv).unwrap(),
                b.upload(&shape, &pv).unwrap(),
            );
            let fa = a.fold_patches(&pa, &ia, c, kk, h * w, lk).unwrap();
            let fb = b.fold_patches(&pb, &ib, c, kk, h * w, lk).unwrap();
            assert_eq!(a.shape(&fa), vec![n, c, h * w]);
            let e = rel_err(&a.download(&fa).unwrap(), &b.download(&fb).unwrap());
            assert!(e <= 1e-14, "case {case}, lk {lk}: fold differs by {e:e}");
            // The fold is the unfold's adjoint: ⟨unfold x, p⟩ = ⟨x, fold p⟩.
            let ux = a
                .download(&a.unfold_patches(&xa, &ia, c, kk, 0.0, lk).unwrap())
                .unwrap();
            let lhs: f64 = ux.iter().zip(&pv).map(|(u, v)| u * v).sum();
            let rhs: f64 = x
                .iter()
                .zip(&a.download(&fa).unwrap())
                .map(|(u, v)| u * v)
                .sum();
            assert!(
                (lhs - rhs).abs() <= 1e-12 * lhs.abs().max(1.0),
                "case {case}: adjoint {lhs} vs {rhs}"
            );
        }
    }
}

const MODELS: &[&str] = &[
    // Strided, padded, non-square, dilated and grouped convolutions, a
    // transposed convolution and pooling, on 32×32 so that the backward
    // pass cuts the patch gradient into pieces.
    "sequential(conv2d(4, 6, kernel = 3, padding = 1), tanh, \
     conv2d(6, 6, kernel = [3, 2], stride = [2, 1], padding = [1, 2], dilation = [1, 2], groups = 3), gelu, \
     conv_transpose2d(6, 4, kernel = 3, stride = 2, padding = 1, output_padding = 1, dilation = 1), tanh, \
     conv2d(4, 5, kernel = 3, stride = 2, padding = 2, dilation = 2, bias = false), tanh, \
     maxpool2d(kernel = 2), avgpool2d(kernel = 2, stride = 1), flatten, linear(560, 7), input = [4, 32, 32], init = pytorch(seed = 5))",
    "sequential(conv_transpose2d(4, 6, kernel = [2, 3], stride = [1, 2], padding = [0, 1], dilation = [2, 1], groups = 2), tanh, \
     conv2d(6, 3, kernel = 5, stride = 3, padding = 1), flatten, linear(330, 4), input = [4, 32, 16], init = pytorch(seed = 6))",
    "sequential(conv1d(3, 5, kernel = 3, stride = 2, padding = 1), tanh, conv1d(5, 4, kernel = 2), flatten, linear(124, 3), \
     input = [3, 64], init = pytorch(seed = 7))",
];

/// Outputs and every capture (`a`, `g`) of a forward pass on `n`
/// examples and a backward pass of `m` output functions.
fn pass<O: Ops>(
    o: &O,
    spec: &ModelSpec,
    x: &[f64],
    seed: &[f64],
    n: usize,
    m: usize,
) -> Vec<Vec<f64>> {
    let net = Net::new(o, spec, init_params(spec, &spec.init)).unwrap();
    let mut shape = vec![n];
    shape.extend(&spec.input);
    let xt = o.upload(&shape, x).unwrap();
    let fwd = net.forward_in(o, &xt, true, Phase::Eval).unwrap();
    let c = net.outputs();
    let st = o.upload(&[m, n, c], seed).unwrap();
    let mut out = vec![o.download(&fwd.output).unwrap()];
    for cap in net.backward(o, &fwd, &st).unwrap() {
        out.push(o.download(&cap.a).unwrap());
        out.push(o.download(&cap.g).unwrap());
    }
    out
}

#[test]
fn forward_and_backward_match_the_index_select_path() {
    let (a, b) = (native(), DefaultFold(native()));
    for (i, model) in MODELS.iter().enumerate() {
        let spec = compile_model(model);
        let (n, m) = (40, 3);
        let numel: usize = spec.input.iter().product();
        let c = Net::new(&a, &spec, init_params(&spec, &spec.init))
            .unwrap()
            .outputs();
        let x = values(n * numel, 10 + i as u64);
        let seed = values(m * n * c, 20 + i as u64);
        let (pa, pb) = (
            pass(&a, &spec, &x, &seed, n, m),
            pass(&b, &spec, &x, &seed, n, m),
        );
        assert_eq!(pa.len(), pb.len());
        for (j, (u, v)) in pa.iter().zip(&pb).enumerate() {
            let e = rel_err(u, v);
            assert!(e <= 1e-12, "model {i}, tensor {j}: {e:e}");
        }
    }
}

#[test]
fn a_large_batch_gives_each_example_what_it_gives_alone() {
    let o = native();
    for (i, model) in MODELS.iter().enumerate() {
        let spec = compile_model(model);
        let (n, m) = (40, 3);
        let numel: usize = spec.input.iter().product();
        let c = Net::new(&o, &spec, init_params(&spec, &spec.init))
            .unwrap()
            .outputs();
        let x = values(n * numel, 30 + i as u64);
        let seed = values(m * n * c, 40 + i as u64);
        let all = pass(&o, &spec, &x, &seed, n, m);
        for ex in [0, 17, n - 1] {
            let xe = &x[ex * numel..(ex + 1) * numel];
            // seed [m, n, c] → this example's [m, 1, c].
            let se: Vec<f64> = (0..m)
                .flat_map(|k| seed[(k * n + ex) * c..(k * n + ex + 1) * c].to_vec())
                .collect();
            let one = pass(&o, &spec, xe, &se, 1, m);
            for (j, (full, alone)) in all.iter().zip(&one).enumerate() {
                // Tensors are [n, ...] (outputs, a) or [m, n, ...] (g).
                let per = alone.len() / if j > 0 && j % 2 == 0 { m } else { 1 };
                let slice: Vec<f64> = if j > 0 && j % 2 == 0 {
                    (0..m)
                        .flat_map(|k| full[(k * n + ex) * per..(k * n + ex + 1) * per].to_vec())
                        .collect()
                } else {
                    full[ex * per..(ex + 1) * per].to_vec()
                };
                let e = rel_err(&slice, alone);
                assert!(e <= 1e-12, "model {i}, example {ex}, tensor {j}: {e:e}");
            }
        }
    }
}
