//! The `|>` operations on datasets ([`Transform`] in a plan).
//!
//! [`apply`] computes a transform step from its input, giving data whose
//! `info` is the one the checker put in the plan. Conventions:
//!
//! - Subsets (`take`, `split`) keep the examples' original relative order;
//!   `take(n, per_class)` groups them by class (class 0 first).
//! - Random choices use [`Rng`] seeded with the transform's `seed`, so the
//!   same seed picks the same examples everywhere.
//! - `flipped` (which labels `label_noise` changed) follows the examples
//!   through every transform.

use super::{DataError, DataInfo, HostData};
use crate::plan::Transform;
use crate::rng::Rng;

/// Applies `t` to `input`. `like` is the dataset of a `normalize(like = ...)`
/// step (whose statistics are used); it is required for such a step and
/// ignored by every other transform.
pub fn apply(
    t: &Transform,
    input: &HostData,
    like: Option<&HostData>,
) -> Result<HostData, DataError> {
    validate(input, op_name(t))?;
    match *t {
        Transform::TakeFirst { n } => {
            check_take(input, n)?;
            let idx: Vec<usize> = (0..n).collect();
            Ok(subset(input, &idx))
        }
        Transform::TakeRandom { n, seed } => {
            check_take(input, n)?;
            let mut idx = Rng::new(seed).sample_without_replacement(input.info.n, n);
            idx.sort_unstable();
            Ok(subset(input, &idx))
        }
        Transform::TakePerClass { n, seed } => take_per_class(input, n, seed),
        Transform::Split {
            fraction,
            seed,
            first,
        } => split(input, fraction, seed, first),
        Transform::Normalize {
            like: like_step,
            per_channel,
        } => {
            let stats_from = match (like_step, like) {
                (Some(_), Some(l)) => {
                    validate(l, "normalize")?;
                    l
                }
                (Some(step), None) => {
                    return Err(err(
                        "normalize",
                        format!("the statistics dataset (step {}) was not given", step.0),
                    ))
                }
                (None, _) => input,
            };
            if per_channel {
                normalize_channels(input, stats_from)
            } else {
                normalize(input, stats_from)
            }
        }
        Transform::ChannelNormalize { ref mean, ref std } => {
            let c = input.info.shape.first().copied().unwrap_or(1);
            if mean.len() != c || std.len() != c {
                return Err(err(
                    "normalize",
                    format!(
                        "{} means and {} stds for {c} channels",
                        mean.len(),
                        std.len()
                    ),
                ));
            }
            Ok(channel_affine(input, mean, std))
        }
        Transform::Scale { factor } => {
            let mut out = input.clone();
            for v in &mut out.x {
                *v = (f64::from(*v) * factor) as f32;
            }
            Ok(out)
        }
        Transform::Only { flipped } => {
            if input.flipped.is_empty() {
                return Err(err("only", "the dataset has no label noise"));
            }
            let idx: Vec<usize> = (0..input.info.n)
                .filter(|&i| input.flipped[i] == flipped)
                .collect();
            Ok(subset(input, &idx))
        }
        Transform::Drop { index } => {
            if index >= input.info.n {
                return Err(err(
                    "drop",
                    format!("example {index} of a dataset of {}", input.info.n),
                ));
            }
            let idx: Vec<usize> = (0..input.info.n).filter(|&i| i != index).collect();
            Ok(subset(input, &idx))
        }
        Transform::Permute { seed } => Ok(permute(input, seed)),
        Transform::LabelNoise { fraction, seed } => label_noise(input, fraction, seed),
        Transform::OneHot => one_hot(input),
        Transform::Autoencode => Ok(autoencode(input)),
    }
}

/// The transform's name in `.ngx` files, for error messages.
fn op_name(t: &Transform) -> &'static str {
    match t {
        Transform::TakeFirst { .. } | Transform::TakeRandom { .. } => "take",
        Transform::TakePerClass { .. } => "take(per_class)",
        Transform::Split { .. } => "split",
        Transform::Normalize { .. } | Transform::ChannelNormalize { .. } => "normalize",
        Transform::Scale { .. } => "scale",
        Transform::Permute { .. } => "permute",
        Transform::Drop { .. } => "drop",
        Transform::Only { .. } => "only",
        Transform::LabelNoise { .. } => "label_noise",
        Transform::OneHot => "onehot",
        Transform::Autoencode => "autoencode",
    }
}

/// The permutation of `d` features that `permute(seed)` applies: feature
/// `j` of the result is feature `perm[j]` of the input. It depends only on
/// the seed and `d`, so a task's training and test sets agree.
pub fn feature_permutation(d: usize, seed: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..d).collect();
    crate::rng::Rng::new(seed).shuffle(&mut perm);
    perm
}

fn permute(input: &HostData, seed: u64) -> HostData {
    let d: usize = input.info.shape.iter().product();
    let perm = feature_permutation(d, seed);
    let mut out = input.clone();
    if d > 0 {
        for (o, x) in out.x.chunks_exact_mut(d).zip(input.x.chunks_exact(d)) {
            for (oj, &pj) in o.iter_mut().zip(&perm) {
                *oj = x[pj];
            }
        }
    }
    out
}

fn err(op: &str, detail: impl Into<String>) -> DataError {
    DataError::Transform {
        op: op.to_string(),
        detail: detail.into(),
    }
}

/// The array lengths agree with `info`.
fn validate(d: &HostData, op: &str) -> Result<(), DataError> {
    let n = d.info.n;
    if d.x.len() != n * d.features()
        || d.y.len() != n * d.info.target_dim
        || !(d.flipped.is_empty() || d.flipped.len() == n)
    {
        return Err(err(
            op,
            format!(
                "inconsistent dataset: {n} examples of shape {:?} and {} targets each, but {} values, {} targets and {} flags",
                d.info.shape,
                d.info.target_dim,
                d.x.len(),
                d.y.len(),
                d.flipped.len()
            ),
        ));
    }
    Ok(())
}

fn check_take(input: &HostData, n: usize) -> Result<(), DataError> {
    if n > input.info.n {
        return Err(err(
            "take",
            format!("cannot take {n} examples of a dataset of {}", input.info.n),
        ));
    }
    Ok(())
}

/// The examples at `idx`, in that order (with their `flipped` flags).
fn subset(input: &HostData, idx: &[usize]) -> HostData {
    let f = input.features();
    let t = input.info.target_dim;
    let mut x = Vec::with_capacity(idx.len() * f);
    let mut y = Vec::with_capacity(idx.len() * t);
    for &i in idx {
        x.extend_from_slice(&input.x[i * f..(i + 1) * f]);
        y.extend_from_slice(&input.y[i * t..(i + 1) * t]);
    }
    let flipped = if input.flipped.is_empty() {
        Vec::new()
    } else {
        idx.iter().map(|&i| input.flipped[i]).collect()
    };
    HostData {
        info: DataInfo {
            n: idx.len(),
            ..input.info.clone()
        },
        x,
        y,
        flipped,
    }
}

/// Number of classes, which must be known.
fn classes(input: &HostData, op: &str) -> Result<usize, DataError> {
    input
        .info
        .classes
        .ok_or_else(|| err(op, "needs class labels; this is a regression dataset"))
}

/// Class of every example: the label (`target_dim` 1) or the position of the
/// largest value of a one-hot row (`target_dim` = classes).
fn labels(input: &HostData, op: &str) -> Result<Vec<usize>, DataError> {
    let c = classes(input, op)?;
    let t = input.info.target_dim;
    if t == 1 {
        input
            .y
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if v.fract() == 0.0 && v >= 0.0 && (v as usize) < c {
                    Ok(v as usize)
                } else {
                    Err(err(
                        op,
                        format!("example {i} has label {v}, not a class id in 0..{c}"),
                    ))
                }
            })
            .collect()
    } else if t == c {
        Ok(input
            .y
            .chunks_exact(t)
            .map(|row| {
                let mut best = 0;
                for (j, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = j;
                    }
                }
                best
            })
            .collect())
    } else {
        Err(err(
            op,
            format!("targets have {t} columns, neither class ids nor one-hot rows of {c}"),
        ))
    }
}

/// `n` examples of each class, drawn at random (without replacement) within
/// the class. The result holds class 0's examples, then class 1's, ...; within
/// a class, in their original order. One generator serves all classes, in
/// class order.
fn take_per_class(input: &HostData, n: usize, seed: u64) -> Result<HostData, DataError> {
    let op = "take(per_class)";
    let c = classes(input, op)?;
    let labels = labels(input, op)?;
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); c];
    for (i, &l) in labels.iter().enumerate() {
        members[l].push(i);
    }
    let mut rng = Rng::new(seed);
    let mut idx = Vec::with_capacity(n * c);
    for (class, m) in members.iter().enumerate() {
        if m.len() < n {
            return Err(err(
                op,
                format!(
                    "class {class} has {} example{}, fewer than {n}",
                    m.len(),
                    if m.len() == 1 { "" } else { "s" }
                ),
            ));
        }
        let mut pick = rng.sample_without_replacement(m.len(), n);
        pick.sort_unstable();
        idx.extend(pick.iter().map(|&p| m[p]));
    }
    Ok(subset(input, &idx))
}

/// A seeded random split: the examples are shuffled (Fisher–Yates on
/// `0..n`), the first `round(n · fraction)` of the shuffle form the first
/// part and the rest the second; each part keeps the original order. The two
/// parts of one seed are complementary.
fn split(input: &HostData, fraction: f64, seed: u64, first: bool) -> Result<HostData, DataError> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(err(
            "split",
            format!("the fraction must be in [0, 1], not {fraction}"),
        ));
    }
    let n = input.info.n;
    let k = (n as f64 * fraction).round() as usize;
    let mut perm: Vec<usize> = (0..n).collect();
    Rng::new(seed).shuffle(&mut perm);
    let mut part = if first {
        perm[..k].to_vec()
    } else {
        perm[k..].to_vec()
    };
    part.sort_unstable();
    Ok(subset(input, &part))
}

/// Per-feature standardisation with statistics (in `f64`) from `stats`:
/// `(x - mean) / std` with the population standard deviation. A feature that
/// is constant in `stats` is only centred (like scikit-learn's
/// `StandardScaler`).
fn normalize(input: &HostData, stats: &HostData) -> Result<HostData, DataError> {
    let f = input.features();
    if stats.features() != f {
        return Err(err(
            "normalize",
            format!(
                "statistics from data of shape {:?} for data of shape {:?}",
                stats.info.shape, input.info.shape
            ),
        ));
    }
    let m = stats.info.n;
    if m == 0 {
        return Err(err(
            "normalize",
            "cannot compute statistics of an empty dataset",
        ));
    }
    let mut mean = vec![0.0f64; f];
    let mut min = vec![f32::INFINITY; f];
    let mut max = vec![f32::NEG_INFINITY; f];
    for row in stats.x.chunks_exact(f) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += f64::from(v);
            min[j] = min[j].min(v);
            max[j] = max[j].max(v);
        }
    }
    for s in &mut mean {
        *s /= m as f64;
    }
    let mut var = vec![0.0f64; f];
    for row in stats.x.chunks_exact(f) {
        for (j, &v) in row.iter().enumerate() {
            let d = f64::from(v) - mean[j];
            var[j] += d * d;
        }
    }
    let scale: Vec<f64> = (0..f)
        .map(|j| {
            if min[j] == max[j] {
                1.0
            } else {
                (var[j] / m as f64).sqrt()
            }
        })
        .collect();
    let mut out = input.clone();
    for row in out.x.chunks_exact_mut(f) {
        for (j, v) in row.iter_mut().enumerate() {
            *v = ((f64::from(*v) - mean[j]) / scale[j]) as f32;
        }
    }
    Ok(out)
}

/// Per-channel standardisation: channel `c` (the first per-example
/// dimension) shifted and scaled by one mean and one population std over
/// all examples and positions of `stats`; a constant channel is only
/// centred.
fn normalize_channels(input: &HostData, stats: &HostData) -> Result<HostData, DataError> {
    let op = "normalize";
    if stats.info.shape != input.info.shape {
        return Err(err(
            op,
            format!(
                "statistics from data of shape {:?} for data of shape {:?}",
                stats.info.shape, input.info.shape
            ),
        ));
    }
    let c = input.info.shape.first().copied().unwrap_or(1).max(1);
    let per = input.features() / c;
    if stats.info.n == 0 || per == 0 {
        return Err(err(op, "cannot compute statistics of an empty dataset"));
    }
    let count = (stats.info.n * per) as f64;
    let mut mean = vec![0.0f64; c];
    for row in stats.x.chunks_exact(c * per) {
        for (ch, plane) in row.chunks_exact(per).enumerate() {
            mean[ch] += plane.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
    }
    mean.iter_mut().for_each(|m| *m /= count);
    let mut var = vec![0.0f64; c];
    for row in stats.x.chunks_exact(c * per) {
        for (ch, plane) in row.chunks_exact(per).enumerate() {
            var[ch] += plane
                .iter()
                .map(|&v| (f64::from(v) - mean[ch]).powi(2))
                .sum::<f64>();
        }
    }
    let std: Vec<f64> = var
        .iter()
        .map(|v| {
            let s = (v / count).sqrt();
            if s > 0.0 {
                s
            } else {
                1.0
            }
        })
        .collect();
    Ok(channel_affine(input, &mean, &std))
}

/// `(x − mean[c]) / std[c]` for every value of channel `c`.
fn channel_affine(input: &HostData, mean: &[f64], std: &[f64]) -> HostData {
    let c = mean.len().max(1);
    let per = input.features() / c;
    let mut out = input.clone();
    for row in out.x.chunks_exact_mut(c * per.max(1)) {
        for (ch, plane) in row.chunks_exact_mut(per.max(1)).enumerate() {
            for v in plane {
                *v = ((f64::from(*v) - mean[ch]) / std[ch]) as f32;
            }
        }
    }
    out
}

/// Replaces the labels of exactly `round(n · fraction)` examples, chosen at
/// random without replacement, by a different class drawn uniformly from the
/// other `classes - 1`. Draws, in order: the examples, then one class per
/// chosen example in the order they were chosen.
///
/// `flipped` marks the changed examples; when the input already has flags
/// (label noise applied twice) they are kept, so an example is flagged if
/// either application changed it (even if the second one happened to restore
/// its original label). One-hot targets are flipped as one-hot rows.
fn label_noise(input: &HostData, fraction: f64, seed: u64) -> Result<HostData, DataError> {
    let op = "label_noise";
    if !(0.0..=1.0).contains(&fraction) {
        return Err(err(
            op,
            format!("the fraction must be in [0, 1], not {fraction}"),
        ));
    }
    let c = classes(input, op)?;
    let labels = labels(input, op)?;
    let n = input.info.n;
    let k = (n as f64 * fraction).round() as usize;
    if k > 0 && c < 2 {
        return Err(err(
            op,
            format!("needs at least two classes to change a label, the dataset has {c}"),
        ));
    }
    let mut rng = Rng::new(seed);
    let chosen = rng.sample_without_replacement(n, k);
    let mut out = input.clone();
    if out.flipped.is_empty() {
        out.flipped = vec![false; n];
    }
    let t = input.info.target_dim;
    for i in chosen {
        let old = labels[i];
        let r = rng.below(c - 1);
        let new = if r >= old { r + 1 } else { r };
        if t == 1 {
            out.y[i] = new as f32;
        } else {
            let row = &mut out.y[i * t..(i + 1) * t];
            row.fill(0.0);
            row[new] = 1.0;
        }
        out.flipped[i] = true;
    }
    Ok(out)
}

/// Class ids become one-hot rows of `classes` values (`target_dim` =
/// `classes`; `classes` is kept). Data that is already one-hot is returned
/// unchanged.
/// Targets = inputs, flattened: a regression dataset with one target per
/// feature (labels and label-noise flags are dropped).
fn autoencode(input: &HostData) -> HostData {
    HostData {
        info: DataInfo {
            classes: None,
            target_dim: input.features(),
            ..input.info.clone()
        },
        x: input.x.clone(),
        y: input.x.clone(),
        flipped: Vec::new(),
    }
}

fn one_hot(input: &HostData) -> Result<HostData, DataError> {
    let op = "onehot";
    let c = classes(input, op)?;
    if input.info.target_dim == c && c != 1 {
        return Ok(input.clone());
    }
    let labels = labels(input, op)?;
    let mut y = vec![0.0f32; labels.len() * c];
    for (i, &l) in labels.iter().enumerate() {
        y[i * c + l] = 1.0;
    }
    Ok(HostData {
        info: DataInfo {
            target_dim: c,
            ..input.info.clone()
        },
        x: input.x.clone(),
        y,
        flipped: input.flipped.clone(),
    })
}

#[cfg(test)]
mod tests {
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
}
