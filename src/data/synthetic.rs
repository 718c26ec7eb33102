//! Seeded synthetic datasets: `blobs`, `teacher` and `noisy_linear`.
//!
//! Each generator draws everything from one [`Rng`] seeded with `seed`, in a
//! fixed order documented on the function, and computes in `f64` with only
//! platform-independent arithmetic (its `tanh` is computed here), so a seed
//! gives the same dataset everywhere. Values are stored as `f32`.

use super::{DataInfo, HostData};
use crate::rng::Rng;

/// Gaussian clusters, one per class (like scikit-learn's `make_blobs`).
///
/// Draws, in order: the class centres (`classes × dim` uniforms in
/// `[-10, 10)`, class by class); a shuffle of the labels, which are balanced
/// (each class has `n / classes` examples, the first `n % classes` classes one
/// more); then for each example its `dim` coordinates, `centre + std · z` with
/// `z` standard normal.
///
/// Info: shape `[dim]`, `classes` classes, class ids as targets.
pub fn blobs(n: usize, classes: usize, dim: usize, std: f64, seed: u64) -> HostData {
    assert!(classes > 0, "blobs need at least one class");
    let mut rng = Rng::new(seed);
    let centres: Vec<f64> = (0..classes * dim)
        .map(|_| rng.uniform_range(-10.0, 10.0))
        .collect();
    let mut labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
    labels.sort_unstable();
    rng.shuffle(&mut labels);
    let mut x = Vec::with_capacity(n * dim);
    for &c in &labels {
        let centre = &centres[c * dim..(c + 1) * dim];
        x.extend(centre.iter().map(|&m| (m + std * rng.normal()) as f32));
    }
    HostData {
        info: DataInfo {
            n,
            shape: vec![dim],
            classes: Some(classes),
            target_dim: 1,
        },
        x,
        y: labels.iter().map(|&c| c as f32).collect(),
        flipped: Vec::new(),
    }
}

/// Regression targets of a random teacher network: a `tanh` MLP
/// `dim → hidden[0] → … → out` (linear output layer) applied to standard
/// normal inputs, plus Gaussian noise of standard deviation `noise` on every
/// target.
///
/// Draws, in order: the teacher's layers, each as its weight matrix
/// (`out × in`, row-major, entries `z / sqrt(in)`) then its biases
/// (`0.1 · z`); then for each example its `dim` inputs `z` followed by its
/// `out` noise values. (`z` is a standard normal draw; the noise is drawn
/// even when `noise` is 0, so the inputs and the clean targets do not depend
/// on the noise level.)
///
/// Info: shape `[dim]`, regression, `target_dim = out`.
pub fn teacher(
    n: usize,
    dim: usize,
    out: usize,
    hidden: &[usize],
    noise: f64,
    seed: u64,
) -> HostData {
    let mut rng = Rng::new(seed);
    let sizes: Vec<usize> = std::iter::once(dim)
        .chain(hidden.iter().copied())
        .chain(std::iter::once(out))
        .collect();
    // (weights, biases, fan_in, fan_out) per layer.
    let layers: Vec<(Vec<f64>, Vec<f64>, usize, usize)> = sizes
        .windows(2)
        .map(|w| {
            let (fan_in, fan_out) = (w[0], w[1]);
            let scale = 1.0 / (fan_in as f64).sqrt();
            let weights = (0..fan_in * fan_out)
                .map(|_| scale * rng.normal())
                .collect();
            let biases = (0..fan_out).map(|_| 0.1 * rng.normal()).collect();
            (weights, biases, fan_in, fan_out)
        })
        .collect();
    let mut x = Vec::with_capacity(n * dim);
    let mut y = Vec::with_capacity(n * out);
    let last = layers.len() - 1;
    for _ in 0..n {
        let input: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
        let mut h = input.clone();
        for (l, (weights, biases, fan_in, fan_out)) in layers.iter().enumerate() {
            h = (0..*fan_out)
                .map(|o| {
                    let row = &weights[o * fan_in..(o + 1) * fan_in];
                    let z = row.iter().zip(&h).map(|(w, v)| w * v).sum::<f64>() + biases[o];
                    if l == last {
                        z
                    } else {
                        tanh(z)
                    }
                })
                .collect();
        }
        x.extend(input.iter().map(|&v| v as f32));
        y.extend(h.iter().map(|&v| (v + noise * rng.normal()) as f32));
    }
    HostData {
        info: DataInfo {
            n,
            shape: vec![dim],
            classes: None,
            target_dim: out,
        },
        x,
        y,
        flipped: Vec::new(),
    }
}

/// A noisy linear model: `y = x · w + noise · ε` with standard normal inputs
/// `x` and noise `ε`, and weights `w` with entries `z / sqrt(dim)` (so the
/// clean signal has variance about 1 and `noise` is roughly the noise-to-
/// signal ratio of standard deviations).
///
/// Draws, in order: `w` (`dim` values); then for each example its `dim`
/// inputs followed by its noise value (drawn even when `noise` is 0).
///
/// Info: shape `[dim]`, regression, scalar target.
pub fn noisy_linear(n: usize, dim: usize, noise: f64, seed: u64) -> HostData {
    let mut rng = Rng::new(seed);
    let scale = 1.0 / (dim.max(1) as f64).sqrt();
    let w: Vec<f64> = (0..dim).map(|_| scale * rng.normal()).collect();
    let mut x = Vec::with_capacity(n * dim);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let input: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
        let clean: f64 = input.iter().zip(&w).map(|(a, b)| a * b).sum();
        x.extend(input.iter().map(|&v| v as f32));
        y.push((clean + noise * rng.normal()) as f32);
    }
    HostData {
        info: DataInfo {
            n,
            shape: vec![dim],
            classes: None,
            target_dim: 1,
        },
        x,
        y,
        flipped: Vec::new(),
    }
}

/// `tanh` from `+ - * /` only (bit-identical on every platform, within a few
/// ulp): `tanh(|x|) = -m / (2 + m)` with `m = expm1(-2|x|)`.
fn tanh(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    if a > 20.0 {
        // 1 - tanh(20) < 1e-17: rounds to 1.
        return 1.0f64.copysign(x);
    }
    let m = expm1(-2.0 * a);
    (-m / (2.0 + m)).copysign(x)
}

/// `e^y - 1` for `y` in `[-40, 0]`, without cancellation for small `|y|`.
fn expm1(y: f64) -> f64 {
    debug_assert!((-40.0..=0.0).contains(&y));
    const LN_2: f64 = std::f64::consts::LN_2;
    // y = k ln2 + r with |r| <= ln2 / 2; e^y - 1 = 2^k (expm1(r) + 1) - 1.
    let k = (y / LN_2).round();
    let r = y - k * LN_2;
    // Taylor series of expm1(r): r (1 + r/2 (1 + r/3 (1 + ...))).
    let mut poly = 1.0;
    let mut j = 18.0;
    while j > 1.0 {
        poly = 1.0 + r / j * poly;
        j -= 1.0;
    }
    let em_r = r * poly;
    if k == 0.0 {
        em_r
    } else {
        // 2^k is exact (k >= -58).
        let p = 2f64.powi(k as i32);
        p * (em_r + 1.0) - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_std(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
        (m, var.sqrt())
    }

    #[test]
    fn tanh_matches_std() {
        let mut x = -25.0;
        while x < 25.0 {
            let (got, want) = (tanh(x), x.tanh());
            assert!(
                (got - want).abs() <= 4.0 * f64::EPSILON * want.abs(),
                "tanh({x}) = {got}, std {want}"
            );
            x += 0.0137;
        }
        for x in [1e-300, 1e-12, 1e-5, 0.1, 0.3465, 0.35] {
            assert!((tanh(x) - x.tanh()).abs() <= 2.0 * f64::EPSILON * x.tanh());
            assert_eq!(tanh(-x), -tanh(x));
        }
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!(tanh(100.0), 1.0);
        assert_eq!(tanh(-100.0), -1.0);
    }

    #[test]
    fn blobs_are_balanced_clusters() {
        let d = blobs(403, 4, 3, 0.5, 7);
        assert_eq!(
            d.info,
            DataInfo {
                n: 403,
                shape: vec![3],
                classes: Some(4),
                target_dim: 1
            }
        );
        assert_eq!((d.x.len(), d.y.len()), (403 * 3, 403));
        assert!(d.flipped.is_empty());
        let mut counts = [0usize; 4];
        for &l in &d.y {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [101, 101, 101, 100]);
        // Labels are shuffled, not sorted.
        assert!(d.y.windows(2).any(|w| w[0] > w[1]));
        // Each class: coordinates have std ~0.5 around a centre in [-10, 10).
        for c in 0..4 {
            for j in 0..3 {
                let v: Vec<f64> = (0..403)
                    .filter(|&i| d.y[i] as usize == c)
                    .map(|i| f64::from(d.x[i * 3 + j]))
                    .collect();
                let (m, s) = mean_std(&v);
                assert!((-10.5..10.5).contains(&m), "centre {m}");
                assert!((s - 0.5).abs() < 0.1, "class {c} feature {j} std {s}");
            }
        }
        // Deterministic in the seed.
        assert_eq!(d, blobs(403, 4, 3, 0.5, 7));
        assert_ne!(d.x, blobs(403, 4, 3, 0.5, 8).x);
    }

    #[test]
    fn teacher_targets_are_a_smooth_function_plus_noise() {
        let clean = teacher(300, 4, 2, &[8, 8], 0.0, 5);
        let noisy = teacher(300, 4, 2, &[8, 8], 0.3, 5);
        assert_eq!(
            clean.info,
            DataInfo {
                n: 300,
                shape: vec![4],
                classes: None,
                target_dim: 2
            }
        );
        assert_eq!((clean.x.len(), clean.y.len()), (1200, 600));
        // Same inputs, targets differ by the noise only.
        assert_eq!(clean.x, noisy.x);
        let diff: Vec<f64> = clean
            .y
            .iter()
            .zip(&noisy.y)
            .map(|(a, b)| f64::from(b - a))
            .collect();
        let (m, s) = mean_std(&diff);
        assert!(m.abs() < 0.06 && (s - 0.3).abs() < 0.04, "noise {m} {s}");
        // Inputs are standard normal.
        let xs: Vec<f64> = clean.x.iter().map(|&v| f64::from(v)).collect();
        let (m, s) = mean_std(&xs);
        assert!(m.abs() < 0.1 && (s - 1.0).abs() < 0.1, "inputs {m} {s}");
        // The clean targets vary and are not constant across outputs.
        let y0: Vec<f64> = clean.y.iter().step_by(2).map(|&v| f64::from(v)).collect();
        let y1: Vec<f64> = clean
            .y
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&v| f64::from(v))
            .collect();
        assert!(mean_std(&y0).1 > 0.05 && mean_std(&y1).1 > 0.05);
        assert_ne!(y0, y1);
    }

    /// Solves the 3×3 system `m · v = r` (Cramer's rule).
    fn solve3(m: [[f64; 3]; 3], r: [f64; 3]) -> [f64; 3] {
        let det = |m: [[f64; 3]; 3]| {
            m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
                - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
        };
        let d = det(m);
        [0, 1, 2].map(|col| {
            let mut mm = m;
            for row in 0..3 {
                mm[row][col] = r[row];
            }
            det(mm) / d
        })
    }

    #[test]
    fn teacher_with_no_hidden_layer_is_affine() {
        // Noise-free, no hidden layer: y = w · x + b for every example.
        let d = teacher(20, 2, 1, &[], 0.0, 4);
        let x = |i: usize| [f64::from(d.x[2 * i]), f64::from(d.x[2 * i + 1]), 1.0];
        let [w1, w2, b] = solve3([x(0), x(1), x(2)], [0, 1, 2].map(|i| f64::from(d.y[i])));
        for i in 3..20 {
            let [x1, x2, _] = x(i);
            assert!(
                (w1 * x1 + w2 * x2 + b - f64::from(d.y[i])).abs() < 1e-4,
                "example {i}"
            );
        }
        assert!(b != 0.0, "the teacher has biases");
    }

    #[test]
    fn noisy_linear_is_linear_plus_noise() {
        let d = noisy_linear(2000, 3, 0.1, 9);
        assert_eq!(
            d.info,
            DataInfo {
                n: 2000,
                shape: vec![3],
                classes: None,
                target_dim: 1
            }
        );
        let clean = noisy_linear(2000, 3, 0.0, 9);
        assert_eq!(d.x, clean.x);
        // Residuals against the noise-free targets: std 0.1.
        let r: Vec<f64> =
            d.y.iter()
                .zip(&clean.y)
                .map(|(a, b)| f64::from(a - b))
                .collect();
        let (m, s) = mean_std(&r);
        assert!(m.abs() < 0.01 && (s - 0.1).abs() < 0.01, "{m} {s}");
        // The noise-free targets are x · w (no intercept) for one w.
        let x = |i: usize| [0, 1, 2].map(|j| f64::from(clean.x[3 * i + j]));
        let w = solve3([x(0), x(1), x(2)], [0, 1, 2].map(|i| f64::from(clean.y[i])));
        for i in 3..2000 {
            let pred: f64 = x(i).iter().zip(&w).map(|(a, b)| a * b).sum();
            assert!((pred - f64::from(clean.y[i])).abs() < 1e-4, "example {i}");
        }
        // ... namely the documented w: the first draws of the generator.
        let mut rng = Rng::new(9);
        for wj in w {
            let want = rng.normal() / 3f64.sqrt();
            assert!((wj - want).abs() < 1e-4, "w {wj} vs {want}");
        }
    }

    #[test]
    fn pinned_first_values() {
        // Changes here mean every synthetic experiment changes.
        let b = blobs(6, 3, 2, 1.0, 0);
        let t = teacher(2, 2, 1, &[3], 0.1, 0);
        let l = noisy_linear(2, 2, 0.1, 0);
        assert_eq!(b.y, PINNED_BLOBS_Y);
        assert_eq!(b.x[..2], PINNED_BLOBS_X);
        assert_eq!(t.y, PINNED_TEACHER_Y);
        assert_eq!(l.y, PINNED_LINEAR_Y);
    }

    // Computed independently (a Python transcription of the generators and of
    // Rng); they agree bit for bit.
    const PINNED_BLOBS_Y: [f32; 6] = [0.0, 0.0, 2.0, 1.0, 2.0, 1.0];
    const PINNED_BLOBS_X: [f32; 2] = [2.3176377, 5.1872416];
    const PINNED_TEACHER_Y: [f32; 2] = [-0.06057975, 0.6853671];
    const PINNED_LINEAR_Y: [f32; 2] = [-0.055808984, 0.95592576];
}
