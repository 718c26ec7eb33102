//! The network's own conventions checked against PyTorch's.

use super::*;
use crate::backend::candle::CandleOps;
use crate::plan::{Dtype, Init};

/// The pooled values of a 1×3×3 image `x` through `pool`.
fn pool_3x3(pool: Layer, x: &[f64]) -> Vec<f64> {
    let o = CandleOps::new("cpu", Dtype::F64).unwrap();
    let l = LayerSpec::node("pool", pool, &[&[1, 3, 3]], vec![]).unwrap();
    let out = l.output.clone();
    let numel: usize = out.iter().product();
    let f = LayerSpec::node("flatten", Layer::Flatten, &[&out], vec![]).unwrap();
    let fc = Layer::Linear {
        in_features: numel,
        out_features: 1,
        bias: false,
    };
    let fc = LayerSpec::node("fc", fc, &[&[numel]], vec![]).unwrap();
    let spec = ModelSpec {
        input: vec![1, 3, 3],
        output: vec![1],
        params: numel as u64,
        layers: vec![l, f, fc],
        init: Init::Pytorch { seed: 0 },
        weights: None,
        param_order: vec![],
    };
    let params = crate::geometry::init::init_params(&spec, &spec.init);
    let net = Net::new(&o, &spec, params).unwrap();
    let xt = o.upload(&[1, 1, 3, 3], x).unwrap();
    let cache = net.forward(&o, &xt, true).unwrap();
    let Cache::Pool { out, .. } = &cache.caches[0] else {
        panic!("no pool cache")
    };
    o.download(out).unwrap()
}

/// PyTorch's pooling conventions, values worked out by hand on the image
/// 1..9 (or its negative): padding never wins a max and counts in an
/// average's divisor by default; ceil mode keeps a last window that hangs over the image (its
/// divisor clipped to the image with `count_include_pad`), without
/// `count_include_pad` a window divides by its positions in the image, and
/// dilated max pooling reads every other pixel.
#[test]
fn pooling_options_match_pytorch_conventions() {
    let x: Vec<f64> = (1..=9).map(f64::from).collect();
    let neg: Vec<f64> = x.iter().map(|v| -v).collect();
    let avg = |kernel, stride, padding, ceil_mode, count_include_pad| Layer::AvgPool2d {
        kernel,
        stride,
        padding,
        ceil_mode,
        count_include_pad,
    };
    let max = |kernel, stride, padding, dilation, ceil_mode| Layer::MaxPool2d {
        kernel,
        stride,
        padding,
        dilation,
        ceil_mode,
    };
    let cases: Vec<(&str, Layer, &[f64], Vec<f64>)> = vec![
        (
            // PyTorch pads max pooling with −∞: the corners' windows.
            "max k3 s2 p1 on negative values",
            max([3, 3], [2, 2], [1, 1], [1, 1], false),
            &neg,
            vec![-1.0, -2.0, -4.0, -5.0],
        ),
        (
            "avg k3 s2 p1 without padded zeros",
            avg([3, 3], [2, 2], [1, 1], false, false),
            &x,
            vec![12.0 / 4.0, 16.0 / 4.0, 24.0 / 4.0, 28.0 / 4.0],
        ),
        (
            "avg k3 s2 p1 with padded zeros",
            avg([3, 3], [2, 2], [1, 1], false, true),
            &x,
            vec![12.0 / 9.0, 16.0 / 9.0, 24.0 / 9.0, 28.0 / 9.0],
        ),
        (
            "avg k2 s2 ceil mode",
            avg([2, 2], [2, 2], [0, 0], true, true),
            &x,
            vec![12.0 / 4.0, 9.0 / 2.0, 15.0 / 2.0, 9.0],
        ),
        (
            "max k2 s2 ceil mode",
            max([2, 2], [2, 2], [0, 0], [1, 1], true),
            &neg,
            vec![-1.0, -3.0, -7.0, -9.0],
        ),
        (
            "max k2 dilation 2",
            max([2, 2], [1, 1], [0, 0], [2, 2], false),
            &x,
            vec![9.0],
        ),
        (
            "max k2 s1 dilation 2 p1",
            max([2, 2], [1, 1], [1, 1], [2, 2], false),
            &x,
            // Taps at rows (and columns) {−1, 1}, {0, 2}, {1, 3}: the
            // padding never counts.
            vec![5.0, 6.0, 5.0, 8.0, 9.0, 8.0, 5.0, 6.0, 5.0],
        ),
    ];
    for (what, layer, input, want) in cases {
        let got = pool_3x3(layer, input);
        assert_eq!(got.len(), want.len(), "{what}: {got:?}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "{what}: {got:?} vs {want:?}");
        }
    }
}

/// The output of `pool` on one example `x` of per-example shape `shape`
/// (a model of the pool and a flatten).
fn pooled(pool: Layer, shape: &[usize], x: &[f64]) -> Vec<f64> {
    let o = CandleOps::new("cpu", Dtype::F64).unwrap();
    let l = LayerSpec::node("pool", pool, &[shape], vec![]).unwrap();
    let out = l.output.clone();
    let f = LayerSpec::node("flatten", Layer::Flatten, &[&out], vec![]).unwrap();
    let spec = ModelSpec {
        input: shape.to_vec(),
        output: f.output.clone(),
        params: 0,
        layers: vec![l, f],
        init: Init::Pytorch { seed: 0 },
        weights: None,
        param_order: vec![],
    };
    let params = crate::geometry::init::init_params(&spec, &spec.init);
    let net = Net::new(&o, &spec, params).unwrap();
    let mut batch = vec![1];
    batch.extend(shape);
    let xt = o.upload(&batch, x).unwrap();
    o.download(&net.forward(&o, &xt, false).unwrap().output)
        .unwrap()
}

/// 1-D pooling and adaptive max pooling against values PyTorch 2.11
/// printed for the same inputs (`nn.MaxPool1d(3, 2, 1, ceil_mode=True)`
/// and so on, float64): output lengths, windows hanging over the end,
/// dilation, divisors with and without padding, adaptive windows of
/// uneven sizes that overlap.
#[test]
fn one_d_and_adaptive_max_pooling_match_pytorch() {
    let x1 = [3., -1., 4., 1., -5., 9., 2., -6., 5., 3., -5.];
    let x2 = [
        3., -1., 4., 1., -5., 9., 2., -6., 5., 3., -5., 8., 9., -7., 9., 3., 2., -3., 8., 4.,
    ];
    let max1 = |kernel, stride, padding, dilation, ceil_mode| Layer::MaxPool1d {
        kernel,
        stride,
        padding,
        dilation,
        ceil_mode,
    };
    let avg1 = |count_include_pad| Layer::AvgPool1d {
        kernel: 4,
        stride: 3,
        padding: 2,
        ceil_mode: true,
        count_include_pad,
    };
    type Case<'a> = (&'a str, Layer, &'a [usize], &'a [f64], Vec<f64>);
    let cases: Vec<Case> = vec![
        (
            "MaxPool1d(3, 2, 1, ceil_mode=True)",
            max1(3, 2, 1, 1, true),
            &[1, 11],
            &x1,
            vec![3.0, 4.0, 9.0, 9.0, 5.0, 3.0],
        ),
        (
            "MaxPool1d(2, 1, dilation=3)",
            max1(2, 1, 0, 3, false),
            &[1, 11],
            &x1,
            vec![3.0, -1.0, 9.0, 2.0, -5.0, 9.0, 3.0, -5.0],
        ),
        (
            "AvgPool1d(4, 3, 2, ceil_mode=True, count_include_pad=False)",
            avg1(false),
            &[1, 11],
            &x1,
            vec![1.0, -0.25, 0.0, -0.75, -5.0],
        ),
        (
            "AvgPool1d(4, 3, 2, ceil_mode=True)",
            avg1(true),
            &[1, 11],
            &x1,
            vec![0.5, -0.25, 0.0, -0.75, -5.0 / 3.0],
        ),
        (
            "AdaptiveMaxPool1d(4)",
            Layer::AdaptiveMaxPool1d { output: 4 },
            &[1, 11],
            &x1,
            vec![4.0, 9.0, 9.0, 5.0],
        ),
        (
            "AdaptiveAvgPool1d(3)",
            Layer::AdaptiveAvgPool1d { output: 3 },
            &[1, 11],
            &x1,
            vec![1.75, 0.2, -0.75],
        ),
        (
            "AdaptiveMaxPool2d((3, 2))",
            Layer::AdaptiveMaxPool2d { output: [3, 2] },
            &[1, 4, 5],
            &x2,
            vec![9.0, 5.0, 9.0, 9.0, 9.0, 9.0],
        ),
        (
            "AdaptiveMaxPool2d(1)",
            Layer::AdaptiveMaxPool2d { output: [1, 1] },
            &[1, 4, 5],
            &x2,
            vec![9.0],
        ),
        (
            "AdaptiveMaxPool2d((2, 4))",
            Layer::AdaptiveMaxPool2d { output: [2, 4] },
            &[1, 4, 5],
            &x2,
            vec![9.0, 4.0, 5.0, 5.0, 8.0, 9.0, 9.0, 9.0],
        ),
    ];
    for (what, layer, shape, input, want) in cases {
        let got = pooled(layer, shape, input);
        assert_eq!(got.len(), want.len(), "{what}: {got:?}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "{what}: {got:?} vs {want:?}");
        }
    }
}

/// The clamped activations' values and gradients (`y.sum().backward()`)
/// against PyTorch 2.11's in float64, kinks included: a clamp passes no
/// gradient at its bounds, Hardswish takes 0 at −3 and 1 at 3, and
/// Hardsigmoid's slope is PyTorch's float32 1/6.
#[test]
fn hard_activations_match_pytorch() {
    let o = CandleOps::new("cpu", Dtype::F64).unwrap();
    let x = [
        -4., -3., -2.5, -0.3, -0.1, 0., 0.2, 0.4, 2.9, 3., 5., 6., 7.,
    ];
    let xt = o.upload(&[x.len()], &x).unwrap();
    let s = 0.1666666716337204; // torch.float32(1/6)
    let hsig: Vec<f64> = x
        .iter()
        .map(|v: &f64| ((v + 3.0) / 6.0).clamp(0.0, 1.0))
        .collect();
    let hswish: Vec<f64> = x.iter().zip(&hsig).map(|(v, h)| v * h).collect();
    type Case = (&'static str, Layer, Vec<f64>, Vec<f64>);
    let cases: Vec<Case> = vec![
        (
            "ReLU6",
            Layer::Hardtanh { min: 0.0, max: 6.0 },
            vec![0., 0., 0., 0., 0., 0., 0.2, 0.4, 2.9, 3., 5., 6., 6.],
            vec![0., 0., 0., 0., 0., 0., 1., 1., 1., 1., 1., 0., 0.],
        ),
        (
            "Hardtanh(-0.3, 0.4)",
            Layer::Hardtanh {
                min: -0.3,
                max: 0.4,
            },
            vec![
                -0.3, -0.3, -0.3, -0.3, -0.1, 0., 0.2, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4,
            ],
            vec![0., 0., 0., 0., 1., 1., 1., 0., 0., 0., 0., 0., 0.],
        ),
        (
            "Hardsigmoid",
            Layer::Hardsigmoid,
            hsig,
            vec![0., 0., s, s, s, s, s, s, s, 0., 0., 0., 0.],
        ),
        (
            "Hardswish",
            Layer::Hardswish,
            hswish,
            vec![
                0.,
                0.,
                -1.0 / 3.0,
                0.4,
                0.4666666666666667,
                0.5,
                0.5666666666666667,
                0.6333333333333333,
                1.4666666666666668,
                1.,
                1.,
                1.,
                1.,
            ],
        ),
    ];
    for (what, layer, y_torch, g_torch) in cases {
        let y = act_forward(&o, &layer, &xt).unwrap();
        let g = act_grad(&o, &layer, &xt, &y).unwrap();
        for (name, got, want) in [
            ("value", o.download(&y).unwrap(), y_torch),
            ("gradient", o.download(&g).unwrap(), g_torch),
        ] {
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-15,
                    "{what} {name} at x = {}: {a} against PyTorch's {b}",
                    x[i]
                );
            }
        }
    }
}
