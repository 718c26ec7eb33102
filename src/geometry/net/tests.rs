//! The network's own conventions checked against PyTorch's.

use super::*;
use crate::backend::candle::CandleOps;
use crate::plan::{Dtype, Init};

/// Padded max pooling never picks the padding (PyTorch pads with −∞),
/// and padded average pooling counts the padded zeros.
#[test]
fn padded_pooling_matches_pytorch_conventions() {
    let o = CandleOps::new("cpu", Dtype::F64).unwrap();
    let x: Vec<f64> = (0..9).map(|i| -1.0 - i as f64).collect(); // all negative
    for (max, want) in [
        // 3×3 windows at stride 2 with padding 1 over a 3×3 image: the
        // four corners' windows.
        (true, vec![-1.0, -2.0, -4.0, -5.0]),
        (
            false,
            vec![
                (-1.0 - 2.0 - 4.0 - 5.0) / 9.0,
                (-2.0 - 3.0 - 5.0 - 6.0) / 9.0,
                (-4.0 - 5.0 - 7.0 - 8.0) / 9.0,
                (-5.0 - 6.0 - 8.0 - 9.0) / 9.0,
            ],
        ),
    ] {
        let (kernel, stride, padding) = ([3, 3], [2, 2], [1, 1]);
        let pool = if max {
            Layer::MaxPool2d {
                kernel,
                stride,
                padding,
            }
        } else {
            Layer::AvgPool2d {
                kernel,
                stride,
                padding,
            }
        };
        let l = LayerSpec::node("pool", pool, &[&[1, 3, 3]], vec![]).unwrap();
        let f = LayerSpec::node("flatten", Layer::Flatten, &[&[1, 2, 2]], vec![]).unwrap();
        let fc = Layer::Linear {
            in_features: 4,
            out_features: 1,
            bias: false,
        };
        let fc = LayerSpec::node("fc", fc, &[&[4]], vec![]).unwrap();
        let spec = ModelSpec {
            input: vec![1, 3, 3],
            output: vec![1],
            params: 4,
            layers: vec![l, f, fc],
            init: Init::Pytorch { seed: 0 },
            weights: None,
            param_order: vec![],
        };
        let params = crate::geometry::init::init_params(&spec, &spec.init);
        let net = Net::new(&o, &spec, params).unwrap();
        let xt = o.upload(&[1, 1, 3, 3], &x).unwrap();
        let cache = net.forward(&o, &xt, true).unwrap();
        let Cache::Pool { out, .. } = &cache.caches[0] else {
            panic!("no pool cache")
        };
        let got = o.download(out).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "max = {max}: {got:?} vs {want:?}");
        }
    }
}
