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
mod tests;
