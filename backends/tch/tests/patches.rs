//! `TchOps`'s own `unfold_patches`, `fold_patches` and `conv_input_grad`
//! against nngeo's generic defaults (`*_default` in
//! `nngeo::geometry::ops`) run on the same `TchOps`, in f64, on random
//! inputs: convolution index maps with padding, stride, dilation and
//! non-square kernels, a transposed convolution's, and arbitrary maps
//! (pixels read by many taps, repeated padding); both patch layouts and a
//! padding value other than zero. Its native `conv2d` and
//! `conv2d_input_grad` against the patch product and the default input
//! gradient, group by group. On CUDA too where libtorch sees a device.

use nngeo::geometry::net::unfold_index;
use nngeo::geometry::ops::{
    conv_input_grad_default, fold_patches_default, unfold_patches_default, ConvGeom, Ops,
};
use nngeo::plan::Dtype;
use nngeo::rng::Rng;
use nngeo_backend_tch::TchOps;

/// Relative to the largest magnitude of the default's result. The
/// overrides sum a pixel's contributions in another order than
/// `index_add`, so folds may differ in the last bits.
const TOL: f64 = 1e-12;

/// One index map: what it is, the image `h × w`, the taps `K` and the
/// map itself (`K·L` entries, tap-major, `h·w` for the padding).
struct Map {
    what: String,
    s: usize,
    k: usize,
    idx: Vec<u32>,
}

/// nngeo's own convolution unfold map.
fn conv_map(
    h: usize,
    w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
) -> Map {
    let (idx, _, _) = unfold_index(h, w, kernel, stride, padding, dilation);
    Map {
        what: format!(
            "conv {h}×{w}, kernel {kernel:?}, stride {stride:?}, padding {padding:?}, dilation {dilation:?}"
        ),
        s: h * w,
        k: kernel[0] * kernel[1],
        idx,
    }
}

/// A transposed convolution's map (`h × w` → `oh × ow`): output position
/// `o` reads input `(o + padding - k) / stride` where that divides.
fn transposed_map(h: usize, w: usize, kernel: usize, stride: usize, padding: usize) -> Map {
    let (oh, ow) = (
        (h - 1) * stride + kernel - 2 * padding,
        (w - 1) * stride + kernel - 2 * padding,
    );
    let src = |o: usize, k: usize, size: usize| -> Option<usize> {
        let t = (o + padding).checked_sub(k)?;
        (t % stride == 0 && t / stride < size).then_some(t / stride)
    };
    let mut idx = Vec::new();
    for ki in 0..kernel {
        for kj in 0..kernel {
            for oi in 0..oh {
                for oj in 0..ow {
                    idx.push(match (src(oi, ki, h), src(oj, kj, w)) {
                        (Some(r), Some(c)) => (r * w + c) as u32,
                        _ => (h * w) as u32,
                    });
                }
            }
        }
    }
    Map {
        what: format!("transposed conv {h}×{w} → {oh}×{ow}, kernel {kernel}, stride {stride}, padding {padding}"),
        s: h * w,
        k: kernel * kernel,
        idx,
    }
}

/// Any map: each entry a random pixel or the padding.
fn random_map(s: usize, k: usize, l: usize, seed: u64) -> Map {
    let mut rng = Rng::new(seed);
    Map {
        what: format!("random map s = {s}, K = {k}, L = {l}"),
        s,
        k,
        idx: (0..k * l).map(|_| rng.below(s + 1) as u32).collect(),
    }
}

fn maps() -> Vec<Map> {
    vec![
        conv_map(5, 5, [3, 3], [1, 1], [1, 1], [1, 1]),
        conv_map(6, 7, [3, 3], [2, 2], [1, 1], [1, 1]),
        conv_map(7, 6, [3, 2], [2, 1], [1, 0], [1, 1]),
        conv_map(8, 8, [1, 1], [2, 2], [0, 0], [1, 1]),
        conv_map(9, 9, [3, 3], [1, 2], [2, 2], [2, 2]),
        conv_map(4, 4, [4, 4], [1, 1], [0, 0], [1, 1]),
        conv_map(8, 8, [2, 2], [2, 2], [0, 0], [1, 1]),
        conv_map(1, 1, [3, 3], [1, 1], [1, 1], [1, 1]),
        transposed_map(4, 3, 3, 2, 1),
        random_map(10, 4, 7, 11),
        random_map(3, 5, 9, 12),
    ]
}

fn random(o: &TchOps, shape: &[usize], rng: &mut Rng) -> <TchOps as Ops>::T {
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    o.upload(shape, &data).unwrap()
}

/// Same shape and values within [`TOL`] of the largest magnitude of the
/// default's result `want`; the message says which case and element.
fn same(o: &TchOps, what: &str, want: &<TchOps as Ops>::T, got: &<TchOps as Ops>::T) {
    assert_eq!(o.shape(want), o.shape(got), "{what}: shapes");
    let (x, y) = (o.download(want).unwrap(), o.download(got).unwrap());
    let scale = x.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    for (n, (p, q)) in x.iter().zip(&y).enumerate() {
        assert!(
            (p - q).abs() <= TOL * scale,
            "{what}: element {n}: default {p} vs override {q}"
        );
    }
}

fn devices() -> Vec<&'static str> {
    let mut d = vec!["cpu"];
    if nngeo_backend_tch::cuda_status().is_ok() {
        d.push("cuda");
    }
    d
}

#[test]
fn unfold_patches_matches_the_default() {
    for dev in devices() {
        let o = TchOps::new(dev, Dtype::F64).unwrap();
        let mut rng = Rng::new(1);
        for m in maps() {
            let idx = o.upload_index(&m.idx).unwrap();
            for (b, c) in [(1, 1), (3, 2), (2, 5)] {
                // `[b, c, s]` and the 4-d `[b, c, s, 1]` a layer may pass.
                for shape in [vec![b, c, m.s], vec![b, c, m.s, 1]] {
                    let x = random(&o, &shape, &mut rng);
                    for lk in [false, true] {
                        for fill in [0.0, -1.5, f64::MIN] {
                            let what = format!(
                                "{dev}: unfold {}, x {shape:?}, lk {lk}, fill {fill}",
                                m.what
                            );
                            let want =
                                unfold_patches_default(&o, &x, &idx, c, m.k, fill, lk).unwrap();
                            let got = o.unfold_patches(&x, &idx, c, m.k, fill, lk).unwrap();
                            same(&o, &what, &want, &got);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn fold_patches_matches_the_default() {
    for dev in devices() {
        let o = TchOps::new(dev, Dtype::F64).unwrap();
        let mut rng = Rng::new(2);
        for m in maps() {
            let idx = o.upload_index(&m.idx).unwrap();
            let l = m.idx.len() / m.k;
            for (b, c) in [(1, 1), (3, 2), (2, 5)] {
                for lk in [false, true] {
                    let shape = if lk { [b, l, c * m.k] } else { [b, c * m.k, l] };
                    let p = random(&o, &shape, &mut rng);
                    let what = format!("{dev}: fold {}, p {shape:?}, lk {lk}", m.what);
                    let want = fold_patches_default(&o, &p, &idx, c, m.k, m.s, lk).unwrap();
                    let got = o.fold_patches(&p, &idx, c, m.k, m.s, lk).unwrap();
                    same(&o, &what, &want, &got);
                }
            }
        }
    }
}

#[test]
fn conv_input_grad_matches_the_default() {
    for dev in devices() {
        let o = TchOps::new(dev, Dtype::F64).unwrap();
        let mut rng = Rng::new(3);
        for m in maps() {
            let idx = o.upload_index(&m.idx).unwrap();
            let l = m.idx.len() / m.k;
            for (b, c, cout) in [(1, 1, 1), (3, 2, 4), (4, 5, 3)] {
                let g = random(&o, &[b, cout, l], &mut rng);
                let w = random(&o, &[cout, c * m.k], &mut rng);
                let what = format!(
                    "{dev}: conv_input_grad {}, b {b}, c {c}, cout {cout}",
                    m.what
                );
                let want = conv_input_grad_default(&o, &g, &w, &idx, c, m.k, m.s).unwrap();
                let got = o.conv_input_grad(&g, &w, &idx, c, m.k, m.s).unwrap();
                same(&o, &what, &want, &got);
            }
        }
    }
}

/// Several chunks of `gᵀ w` (the override forms 1 M values at a time):
/// each example still lands on its own rows.
#[test]
fn conv_input_grad_in_chunks_matches_the_default() {
    let o = TchOps::new("cpu", Dtype::F64).unwrap();
    let mut rng = Rng::new(4);
    let m = conv_map(32, 32, [3, 3], [1, 1], [1, 1], [1, 1]);
    let idx = o.upload_index(&m.idx).unwrap();
    let (b, c, cout, l) = (13, 16, 8, 1024);
    // 16·9·1024 = 147 456 values an example: 7 a chunk, 2 chunks.
    let g = random(&o, &[b, cout, l], &mut rng);
    let w = random(&o, &[cout, c * m.k], &mut rng);
    let want = conv_input_grad_default(&o, &g, &w, &idx, c, m.k, m.s).unwrap();
    let got = o.conv_input_grad(&g, &w, &idx, c, m.k, m.s).unwrap();
    same(&o, "conv_input_grad in chunks", &want, &got);
}

/// The overrides' results are plain contiguous tensors of the working
/// dtype, in f32 too.
#[test]
fn results_are_contiguous_in_the_working_dtype() {
    let o = TchOps::new("cpu", Dtype::F32).unwrap();
    let mut rng = Rng::new(5);
    let m = conv_map(6, 7, [3, 3], [2, 2], [1, 1], [1, 1]);
    let idx = o.upload_index(&m.idx).unwrap();
    let l = m.idx.len() / m.k;
    let x = random(&o, &[2, 3, m.s], &mut rng);
    let p = o.unfold_patches(&x, &idx, 3, m.k, 0.5, true).unwrap();
    let f = o.fold_patches(&p, &idx, 3, m.k, m.s, true).unwrap();
    let g = random(&o, &[2, 4, l], &mut rng);
    let w = random(&o, &[4, 3 * m.k], &mut rng);
    let d = o.conv_input_grad(&g, &w, &idx, 3, m.k, m.s).unwrap();
    for (t, shape) in [
        (&p, vec![2, l, 3 * m.k]),
        (&f, vec![2, 3, m.s]),
        (&d, vec![2, 3, m.s]),
    ] {
        assert!(t.is_contiguous());
        assert_eq!(t.kind(), tch::Kind::Float);
        assert_eq!(o.shape(t), shape);
    }
}

/// Convolution shapes for the native kernels: padding, strides whose
/// last window leaves a remainder (the input gradient's output padding),
/// dilation, non-square kernels, groups and a Conv1d's 1-pixel-high image.
fn geoms() -> Vec<ConvGeom> {
    type Pair = [usize; 2];
    let g = |cin,
             cout,
             groups,
             input: Pair,
             kernel: Pair,
             stride: Pair,
             padding: Pair,
             dilation: Pair| {
        let out = |d: usize| {
            (input[d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1) / stride[d] + 1
        };
        ConvGeom {
            cin,
            cout,
            groups,
            input,
            output: [out(0), out(1)],
            kernel,
            stride,
            padding,
            dilation,
        }
    };
    vec![
        g(3, 4, 1, [6, 6], [3, 3], [1, 1], [1, 1], [1, 1]),
        g(2, 5, 1, [8, 8], [3, 3], [2, 2], [1, 1], [1, 1]),
        g(2, 3, 1, [7, 9], [3, 3], [2, 2], [1, 1], [1, 1]),
        g(4, 2, 1, [9, 7], [2, 3], [3, 2], [0, 2], [1, 1]),
        g(3, 3, 1, [9, 9], [3, 3], [1, 1], [2, 2], [2, 2]),
        g(4, 6, 2, [6, 5], [3, 3], [1, 2], [1, 1], [1, 1]),
        g(6, 6, 6, [5, 5], [3, 3], [1, 1], [1, 1], [1, 1]),
        g(3, 2, 1, [1, 12], [1, 4], [1, 3], [0, 2], [1, 1]),
        g(5, 4, 1, [4, 4], [1, 1], [2, 2], [0, 0], [1, 1]),
    ]
}

/// The convolution's unfold map, uploaded.
fn conv_idx(o: &TchOps, c: &ConvGeom) -> <TchOps as Ops>::T {
    let (idx, _, _) = unfold_index(
        c.input[0], c.input[1], c.kernel, c.stride, c.padding, c.dilation,
    );
    o.upload_index(&idx).unwrap()
}

/// The engine's generic convolution of one group: patches times weight.
fn patches_conv(
    o: &TchOps,
    x: &<TchOps as Ops>::T,
    w: &<TchOps as Ops>::T,
    c: ConvGeom,
) -> <TchOps as Ops>::T {
    let idx = conv_idx(o, &c);
    let k = c.kernel[0] * c.kernel[1];
    let b = o.shape(x)[0];
    let x = o.reshape(x, &[b, c.cin, c.input[0] * c.input[1]]).unwrap();
    let p = unfold_patches_default(o, &x, &idx, c.cin, k, 0.0, false).unwrap(); // [b, cin·K, L]
    o.matmul(w, &p).unwrap() // [b, cout, L]
}

/// One group of a grouped convolution: its input channels, output
/// channels and weight rows.
fn group(
    o: &TchOps,
    c: ConvGeom,
    x: &<TchOps as Ops>::T,
    w: &<TchOps as Ops>::T,
    j: usize,
) -> (ConvGeom, <TchOps as Ops>::T, <TchOps as Ops>::T) {
    let (ci, co) = (c.cin / c.groups, c.cout / c.groups);
    let one = ConvGeom {
        cin: ci,
        cout: co,
        groups: 1,
        ..c
    };
    (
        one,
        o.narrow(x, 1, j * ci, ci).unwrap(),
        o.narrow(w, 0, j * co, co).unwrap(),
    )
}

#[test]
fn native_conv2d_matches_the_patch_product() {
    for dev in devices() {
        let o = TchOps::new(dev, Dtype::F64).unwrap();
        let mut rng = Rng::new(6);
        for c in geoms() {
            let k = c.kernel[0] * c.kernel[1];
            let b = 3;
            let x = random(&o, &[b, c.cin, c.input[0], c.input[1]], &mut rng);
            let w = random(&o, &[c.cout, c.cin / c.groups * k], &mut rng);
            let parts: Vec<_> = (0..c.groups)
                .map(|j| {
                    let (one, xj, wj) = group(&o, c, &x, &w, j);
                    patches_conv(&o, &xj, &wj, one)
                })
                .collect();
            let want = o.cat(&parts, 1).unwrap();
            let got = o
                .conv2d(&x, &w, &c)
                .unwrap()
                .expect("tch has a native convolution");
            assert_eq!(
                o.shape(&got),
                vec![b, c.cout, c.output[0], c.output[1]],
                "{dev}: {c:?}"
            );
            let got = o
                .reshape(&got, &[b, c.cout, c.output[0] * c.output[1]])
                .unwrap();
            same(&o, &format!("{dev}: conv2d {c:?}"), &want, &got);
        }
    }
}

#[test]
fn native_conv2d_input_grad_matches_the_default() {
    for dev in devices() {
        let o = TchOps::new(dev, Dtype::F64).unwrap();
        let mut rng = Rng::new(7);
        for c in geoms() {
            let k = c.kernel[0] * c.kernel[1];
            let b = 3;
            let l = c.output[0] * c.output[1];
            let s = c.input[0] * c.input[1];
            let g = random(&o, &[b, c.cout, c.output[0], c.output[1]], &mut rng);
            let w = random(&o, &[c.cout, c.cin / c.groups * k], &mut rng);
            let g3 = o.reshape(&g, &[b, c.cout, l]).unwrap();
            let idx = conv_idx(&o, &c);
            let (ci, co) = (c.cin / c.groups, c.cout / c.groups);
            let parts: Vec<_> = (0..c.groups)
                .map(|j| {
                    let gj = o.narrow(&g3, 1, j * co, co).unwrap();
                    let wj = o.narrow(&w, 0, j * co, co).unwrap();
                    conv_input_grad_default(&o, &gj, &wj, &idx, ci, k, s).unwrap()
                })
                .collect();
            let want = o.cat(&parts, 1).unwrap();
            let got = o
                .conv2d_input_grad(&g, &w, &c)
                .unwrap()
                .expect("tch has a native input gradient");
            assert_eq!(
                o.shape(&got),
                vec![b, c.cin, c.input[0], c.input[1]],
                "{dev}: {c:?}"
            );
            let got = o.reshape(&got, &[b, c.cin, s]).unwrap();
            same(&o, &format!("{dev}: conv2d_input_grad {c:?}"), &want, &got);
        }
    }
}

#[test]
fn native_conv2d_weight_grad_matches_the_patch_product() {
    for dev in devices() {
        let o = TchOps::new(dev, Dtype::F64).unwrap();
        let mut rng = Rng::new(8);
        for c in geoms() {
            let k = c.kernel[0] * c.kernel[1];
            let b = 3;
            let l = c.output[0] * c.output[1];
            let x = random(&o, &[b, c.cin, c.input[0], c.input[1]], &mut rng);
            let g = random(&o, &[b, c.cout, c.output[0], c.output[1]], &mut rng);
            let g3 = o.reshape(&g, &[b, c.cout, l]).unwrap();
            let (ci, co) = (c.cin / c.groups, c.cout / c.groups);
            let idx = conv_idx(&o, &c);
            // Per group, Σ_b g_b p_bᵀ with the patches p_b [ci·K, L].
            let parts: Vec<_> = (0..c.groups)
                .map(|j| {
                    let xj = o.narrow(&x, 1, j * ci, ci).unwrap();
                    let xj = o.reshape(&xj, &[b, ci, c.input[0] * c.input[1]]).unwrap();
                    let p = unfold_patches_default(&o, &xj, &idx, ci, k, 0.0, false).unwrap();
                    let gj = o.narrow(&g3, 1, j * co, co).unwrap();
                    let per = o.matmul(&gj, &o.transpose(&p, 1, 2).unwrap()).unwrap();
                    o.reshape(&o.sum_dim(&per, 0).unwrap(), &[co, ci * k])
                        .unwrap()
                })
                .collect();
            let want = o.cat(&parts, 0).unwrap();
            let got = o
                .conv2d_weight_grad(&x, &g, &c)
                .unwrap()
                .expect("tch has a native weight gradient");
            same(&o, &format!("{dev}: conv2d_weight_grad {c:?}"), &want, &got);
        }
    }
}

/// A libtorch exception in the shim comes back as an error, not a crash.
#[test]
fn native_conv2d_weight_grad_refuses_mismatched_shapes() {
    let o = TchOps::new("cpu", Dtype::F64).unwrap();
    let mut rng = Rng::new(9);
    let c = geoms()[0];
    let x = random(&o, &[2, c.cin, c.input[0], c.input[1]], &mut rng);
    let g = random(&o, &[2, c.cout + 1, c.output[0], c.output[1]], &mut rng);
    let err = o.conv2d_weight_grad(&x, &g, &c).expect_err("an error");
    assert!(err.0.starts_with("tch: ") && err.0.len() > 10, "{}", err.0);
}
