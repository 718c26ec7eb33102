//! Tests of the dataset transforms.

use super::*;
use crate::plan::StepId;

/// 6 examples of 2 features, x = [i, 10 i], labels [0, 1, 2, 0, 1, 2].
fn small() -> HostData {
    HostData {
        info: DataInfo {
            n: 6,
            shape: vec![2],
            classes: Some(3),
            target_dim: 1,
        },
        x: (0..6).flat_map(|i| [i as f32, 10.0 * i as f32]).collect(),
        y: vec![0.0, 1.0, 2.0, 0.0, 1.0, 2.0],
        flipped: Vec::new(),
    }
}

/// `n` examples, 3 features, `c` classes (label `i % c`), x row = i.
fn labelled(n: usize, c: usize) -> HostData {
    HostData {
        info: DataInfo {
            n,
            shape: vec![3],
            classes: Some(c),
            target_dim: 1,
        },
        x: (0..n).flat_map(|i| [i as f32; 3]).collect(),
        y: (0..n).map(|i| (i % c) as f32).collect(),
        flipped: Vec::new(),
    }
}

/// Row ids of a `labelled` dataset.
fn ids(d: &HostData) -> Vec<usize> {
    d.x.chunks_exact(d.features())
        .map(|r| r[0] as usize)
        .collect()
}

#[test]
fn take_first() {
    let out = apply(&Transform::TakeFirst { n: 2 }, &small(), None).unwrap();
    assert_eq!(
        out,
        HostData {
            info: DataInfo {
                n: 2,
                shape: vec![2],
                classes: Some(3),
                target_dim: 1
            },
            x: vec![0.0, 0.0, 1.0, 10.0],
            y: vec![0.0, 1.0],
            flipped: Vec::new(),
        }
    );
    let e = apply(&Transform::TakeFirst { n: 7 }, &small(), None).unwrap_err();
    assert!(matches!(e, DataError::Transform { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "`take`: cannot take 7 examples of a dataset of 6"
    );
}

#[test]
fn take_random_is_seeded_sorted_and_distinct() {
    let d = labelled(50, 5);
    let t = Transform::TakeRandom { n: 10, seed: 3 };
    let a = apply(&t, &d, None).unwrap();
    assert_eq!(a.info.n, 10);
    let ia = ids(&a);
    assert!(ia.windows(2).all(|w| w[0] < w[1]), "{ia:?}");
    // Rows stay intact.
    for (k, &i) in ia.iter().enumerate() {
        assert_eq!(a.y[k], (i % 5) as f32);
    }
    // Exactly the sorted first 10 draws of the seeded generator.
    let mut want = Rng::new(3).sample_without_replacement(50, 10);
    want.sort();
    assert_eq!(ia, want);
    assert_eq!(a, apply(&t, &d, None).unwrap());
    assert_ne!(
        ia,
        ids(&apply(&Transform::TakeRandom { n: 10, seed: 4 }, &d, None).unwrap())
    );
    assert!(apply(&Transform::TakeRandom { n: 51, seed: 0 }, &d, None).is_err());
}

#[test]
fn take_per_class_counts_and_order() {
    let d = labelled(40, 4);
    let out = apply(&Transform::TakePerClass { n: 3, seed: 1 }, &d, None).unwrap();
    assert_eq!(out.info.n, 12);
    assert_eq!(out.info.classes, Some(4));
    // Grouped by class, original order within a class.
    let want_y: Vec<f32> = (0..4).flat_map(|c| [c as f32; 3]).collect();
    assert_eq!(out.y, want_y);
    let i = ids(&out);
    for c in 0..4 {
        let part = &i[3 * c..3 * c + 3];
        assert!(part.windows(2).all(|w| w[0] < w[1]));
        assert!(part.iter().all(|&k| k % 4 == c));
    }
    // Exactly as documented: one generator, classes in order.
    let mut rng = Rng::new(1);
    let mut want = Vec::new();
    for c in 0..4 {
        let mut p = rng.sample_without_replacement(10, 3);
        p.sort();
        want.extend(p.iter().map(|&k| 4 * k + c));
    }
    assert_eq!(i, want);
    // A class with too few examples is an error.
    let mut short = labelled(9, 3);
    short.y[0] = 1.0; // class 0 now has 2 examples
    let e = apply(&Transform::TakePerClass { n: 3, seed: 0 }, &short, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "`take(per_class)`: class 0 has 2 examples, fewer than 3"
    );
    // Regression data has no classes.
    let mut reg = labelled(9, 3);
    reg.info.classes = None;
    assert!(apply(&Transform::TakePerClass { n: 1, seed: 0 }, &reg, None).is_err());
}

#[test]
fn split_parts_are_complementary() {
    let d = labelled(11, 2);
    let part = |first| {
        apply(
            &Transform::Split {
                fraction: 0.7,
                seed: 5,
                first,
            },
            &d,
            None,
        )
        .unwrap()
    };
    let (a, b) = (part(true), part(false));
    // round(11 · 0.7) = 8, as the checker computes it.
    assert_eq!((a.info.n, b.info.n), (8, 3));
    let (ia, ib) = (ids(&a), ids(&b));
    assert!(ia.windows(2).all(|w| w[0] < w[1]));
    assert!(ib.windows(2).all(|w| w[0] < w[1]));
    let mut all: Vec<usize> = ia.iter().chain(&ib).copied().collect();
    all.sort();
    assert_eq!(all, (0..11).collect::<Vec<_>>());
    // As documented: the first 8 of a seeded Fisher–Yates shuffle.
    let mut perm: Vec<usize> = (0..11).collect();
    Rng::new(5).shuffle(&mut perm);
    let mut want = perm[..8].to_vec();
    want.sort();
    assert_eq!(ia, want);
}

#[test]
fn normalize_gives_zero_mean_unit_std() {
    let mut d = small();
    // Feature 1 constant: only centred.
    for r in 0..6 {
        d.x[2 * r + 1] = 4.0;
    }
    let out = apply(
        &Transform::Normalize {
            like: None,
            per_channel: false,
        },
        &d,
        None,
    )
    .unwrap();
    // Feature 0: 0..5, mean 2.5, population std sqrt(35/12).
    let s = (35.0f64 / 12.0).sqrt();
    for r in 0..6 {
        assert_eq!(out.x[2 * r], ((r as f64 - 2.5) / s) as f32);
        assert_eq!(out.x[2 * r + 1], 0.0);
    }
    assert_eq!(out.y, d.y);
    assert_eq!(out.info, d.info);

    // A larger dataset: every feature ends at mean 0, std 1.
    let mut rng = Rng::new(0);
    let big = HostData {
        info: DataInfo {
            n: 500,
            shape: vec![1, 2, 2],
            classes: None,
            target_dim: 1,
        },
        x: (0..2000)
            .map(|i| (100.0 + (i % 4) as f64 * 7.0 * rng.normal()) as f32)
            .collect(),
        y: vec![0.0; 500],
        flipped: Vec::new(),
    };
    let out = apply(
        &Transform::Normalize {
            like: None,
            per_channel: false,
        },
        &big,
        None,
    )
    .unwrap();
    for j in 0..4 {
        let col: Vec<f64> = (0..500).map(|i| f64::from(out.x[4 * i + j])).collect();
        let m = col.iter().sum::<f64>() / 500.0;
        let v = col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 500.0;
        assert!(m.abs() < 1e-5, "feature {j} mean {m}");
        let want = if j == 0 { 0.0 } else { 1.0 }; // feature 0 is constant
        assert!(
            (v.sqrt() - want).abs() < 1e-5,
            "feature {j} std {}",
            v.sqrt()
        );
    }
}

#[test]
fn normalize_like_uses_the_other_statistics() {
    let train = small(); // feature 0: mean 2.5, std sqrt(35/12); feature 1: 10×
    let test = HostData {
        info: DataInfo {
            n: 1,
            shape: vec![2],
            classes: Some(3),
            target_dim: 1,
        },
        x: vec![2.5, 60.0],
        y: vec![1.0],
        flipped: Vec::new(),
    };
    let t = Transform::Normalize {
        like: Some(StepId(0)),
        per_channel: false,
    };
    let out = apply(&t, &test, Some(&train)).unwrap();
    let s1 = 10.0 * (35.0f64 / 12.0).sqrt();
    assert_eq!(out.x[0], 0.0);
    assert!(
        (f64::from(out.x[1]) - 35.0 / s1).abs() < 1e-6,
        "{}",
        out.x[1]
    );
    // The statistics dataset is required, and must have the same shape.
    assert!(apply(&t, &test, None).is_err());
    let other = labelled(4, 2);
    let e = apply(&t, &test, Some(&other)).unwrap_err();
    assert!(e.to_string().contains("shape"), "{e}");
}

#[test]
fn scale_multiplies_features_only() {
    let out = apply(&Transform::Scale { factor: -0.5 }, &small(), None).unwrap();
    assert_eq!(out.x[..4], [-0.0, -0.0, -0.5, -5.0]);
    assert_eq!(out.y, small().y);
}

#[test]
fn permute_moves_every_example_s_features_the_same_way() {
    let d = HostData {
        info: DataInfo {
            n: 3,
            shape: vec![1, 4, 4],
            classes: Some(2),
            target_dim: 1,
        },
        x: (0..48).map(|v| v as f32).collect(),
        y: vec![0.0, 1.0, 0.0],
        flipped: Vec::new(),
    };
    let out = apply(&Transform::Permute { seed: 9 }, &d, None).unwrap();
    let perm = feature_permutation(16, 9);
    let mut sorted = perm.clone();
    sorted.sort();
    assert_eq!(sorted, (0..16).collect::<Vec<_>>(), "a bijection");
    assert_ne!(perm, sorted, "not the identity");
    for i in 0..3 {
        for (j, &p) in perm.iter().enumerate() {
            assert_eq!(out.x[i * 16 + j], d.x[i * 16 + p]);
        }
    }
    assert_eq!((out.y, out.info), (d.y, d.info));
    // Another seed, another permutation; the same seed, the same one.
    assert_ne!(feature_permutation(16, 10), perm);
    assert_eq!(feature_permutation(16, 9), perm);
}

#[test]
fn label_noise_flips_exactly_round_f_n_to_other_classes() {
    for (n, c, fraction) in [(100, 10, 0.15), (37, 2, 0.5), (50, 3, 1.0), (20, 4, 0.0)] {
        let d = labelled(n, c);
        let t = Transform::LabelNoise { fraction, seed: 2 };
        let out = apply(&t, &d, None).unwrap();
        let k = (n as f64 * fraction).round() as usize;
        assert_eq!(out.flipped.len(), n);
        assert_eq!(out.flipped.iter().filter(|&&f| f).count(), k);
        for i in 0..n {
            let (old, new) = (d.y[i], out.y[i]);
            assert!(new.fract() == 0.0 && (0.0..c as f32).contains(&new));
            assert_eq!(out.flipped[i], old != new, "example {i}: {old} -> {new}");
        }
        assert_eq!(out.x, d.x);
        assert_eq!(out.info, d.info);
        assert_eq!(out, apply(&t, &d, None).unwrap());
    }
    // The new classes are spread over the other classes.
    let d = labelled(3000, 3);
    let out = apply(
        &Transform::LabelNoise {
            fraction: 1.0,
            seed: 0,
        },
        &d,
        None,
    )
    .unwrap();
    let to_next = (0..3000)
        .filter(|&i| out.y[i] as usize == (i + 1) % 3)
        .count();
    assert!((1350..1650).contains(&to_next), "{to_next}");
    // Regression data cannot be flipped.
    let mut reg = labelled(5, 2);
    reg.info.classes = None;
    assert!(apply(
        &Transform::LabelNoise {
            fraction: 0.2,
            seed: 0
        },
        &reg,
        None
    )
    .is_err());
}

#[test]
fn label_noise_on_one_hot_rows() {
    let d = apply(&Transform::OneHot, &labelled(10, 3), None).unwrap();
    let out = apply(
        &Transform::LabelNoise {
            fraction: 0.5,
            seed: 1,
        },
        &d,
        None,
    )
    .unwrap();
    assert_eq!(out.flipped.iter().filter(|&&f| f).count(), 5);
    for i in 0..10 {
        let row = &out.y[3 * i..3 * i + 3];
        assert_eq!(row.iter().sum::<f32>(), 1.0);
        assert_eq!(out.flipped[i], row != &d.y[3 * i..3 * i + 3]);
    }
}

#[test]
fn flipped_follows_the_examples() {
    let d = labelled(30, 3);
    let noisy = apply(
        &Transform::LabelNoise {
            fraction: 0.3,
            seed: 4,
        },
        &d,
        None,
    )
    .unwrap();
    for t in [
        Transform::TakeFirst { n: 12 },
        Transform::TakeRandom { n: 12, seed: 1 },
        Transform::TakePerClass { n: 4, seed: 1 },
        Transform::Split {
            fraction: 0.4,
            seed: 1,
            first: false,
        },
        Transform::Normalize {
            like: None,
            per_channel: false,
        },
        Transform::Scale { factor: 2.0 },
        Transform::OneHot,
    ] {
        let out = apply(&t, &noisy, None).unwrap();
        assert_eq!(out.flipped.len(), out.info.n, "{t:?}");
        let id = ids(&noisy);
        if !matches!(t, Transform::Normalize { .. } | Transform::Scale { .. }) {
            for (k, &i) in ids(&out).iter().enumerate() {
                assert_eq!(
                    out.flipped[k],
                    noisy.flipped[id.iter().position(|&j| j == i).unwrap()]
                );
            }
        } else {
            assert_eq!(out.flipped, noisy.flipped);
        }
        // Without label noise, no flags appear.
        assert!(apply(&t, &d, None).unwrap().flipped.is_empty(), "{t:?}");
    }
}

#[test]
fn one_hot_rows() {
    let out = apply(&Transform::OneHot, &small(), None).unwrap();
    assert_eq!(out.info.target_dim, 3);
    assert_eq!(out.info.classes, Some(3));
    assert_eq!(
        out.y,
        vec![
            1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, //
            1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0
        ]
    );
    assert_eq!(out.x, small().x);
    // Idempotent, as in the checker (target_dim stays `classes`).
    assert_eq!(apply(&Transform::OneHot, &out, None).unwrap(), out);
    // Labels out of range are reported.
    let mut bad = small();
    bad.y[2] = 3.0;
    let e = apply(&Transform::OneHot, &bad, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "`onehot`: example 2 has label 3, not a class id in 0..3"
    );
}

#[test]
fn autoencode_makes_the_inputs_the_targets() {
    let out = apply(&Transform::Autoencode, &small(), None).unwrap();
    assert_eq!(out.info.classes, None);
    assert_eq!(out.info.target_dim, small().features());
    assert_eq!(out.y, small().x);
    assert_eq!(out.x, small().x);
}

#[test]
fn inconsistent_input_is_an_error() {
    let mut d = small();
    d.x.pop();
    assert!(apply(&Transform::Scale { factor: 1.0 }, &d, None).is_err());
}

/// Per-channel statistics pool examples and positions; given
/// statistics are applied as they are.
#[test]
fn per_channel_normalisation() {
    let mut d = small();
    // 6 examples of 2 channels × 1 position: reuse as [2, 1].
    d.info.shape = vec![2, 1];
    let out = apply(
        &Transform::Normalize {
            like: None,
            per_channel: true,
        },
        &d,
        None,
    )
    .unwrap();
    for ch in 0..2 {
        let vals: Vec<f64> = out
            .x
            .iter()
            .skip(ch)
            .step_by(2)
            .map(|&v| f64::from(v))
            .collect();
        let mean = vals.iter().sum::<f64>() / 6.0;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 6.0;
        assert!(
            mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
            "channel {ch}: {mean} {var}"
        );
    }
    let given = apply(
        &Transform::ChannelNormalize {
            mean: vec![1.0, 2.0],
            std: vec![2.0, 4.0],
        },
        &d,
        None,
    )
    .unwrap();
    for (k, (a, b)) in given.x.iter().zip(&d.x).enumerate() {
        let (m, s) = if k % 2 == 0 { (1.0, 2.0) } else { (2.0, 4.0) };
        assert_eq!(f64::from(*a), ((f64::from(*b) - m) / s) as f32 as f64);
    }
}
