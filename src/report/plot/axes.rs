//! Axis ranges and ticks: logarithmic decades, powers of two for bytes,
//! categories, and tick labels.

use super::*;

pub(super) fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// `lo..hi` (both positive) widened to whole decades, at least one, and
/// a hair more so that rounding cannot drop the end decades' ticks.
pub(super) fn decades(lo: f64, hi: f64) -> Range<f64> {
    let a = lo.log10().floor();
    let b = hi.log10().ceil().max(a + 1.0);
    10f64.powf(a) * 0.9999..10f64.powf(b) * 1.0001
}

/// `lo..hi` (both positive) widened to powers of two, at least one
/// doubling apart (a hair more, as [`decades`]).
pub(super) fn powers_of_two(lo: f64, hi: f64) -> Range<f64> {
    let a = lo.log2().floor();
    let b = hi.log2().ceil().max(a + 1.0);
    2f64.powf(a) * 0.9999..2f64.powf(b) * 1.0001
}

/// A logarithmic axis of byte counts with key points at powers of two
/// (every one, or every 2nd, 5th, 10th ... so that they fit: every 10th is
/// 1 KiB, 1 MiB, 1 GiB).
#[derive(Clone, Debug)]
pub(super) struct LogBytes(pub(super) Range<f64>);

impl LogBytes {
    pub(super) fn key_exponents(&self, max_points: usize) -> Vec<i32> {
        let lo = self.0.start.log2().ceil() as i32;
        let hi = self.0.end.log2().floor() as i32;
        if hi < lo {
            return Vec::new();
        }
        let count = (hi - lo + 1) as usize;
        let stride = [1, 2, 5, 10, 20, 50]
            .into_iter()
            .find(|s| count.div_ceil(*s) <= max_points.max(1))
            .unwrap_or(100) as i32;
        let first = lo.div_euclid(stride) * stride;
        (first..=hi)
            .step_by(stride as usize)
            .filter(|k| *k >= lo)
            .collect()
    }
}

impl plotters::coord::ranged1d::Ranged for LogBytes {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (a, b) = (self.0.start.ln(), self.0.end.ln());
        let frac = (value.max(f64::MIN_POSITIVE).ln() - a) / (b - a);
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        self.key_exponents(hint.max_num_points())
            .into_iter()
            .map(|k| 2f64.powi(k))
            .collect()
    }

    fn range(&self) -> Range<f64> {
        self.0.clone()
    }
}

/// `1e-3`, `2.5e4`: for log axes spanning many decades.
pub(super) fn format_sci(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let s = format!("{v:.1e}");
    s.replace(".0e", "e").replace("e0", "")
}

/// Short tick text: integers as integers, tiny or huge numbers in
/// scientific notation, others with at most four significant digits.
pub(super) fn format_tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.1e}");
        // 1.0e-3 → 1e-3
        return s.replace(".0e", "e");
    }
    if v.fract() == 0.0 {
        return format!("{v:.0}");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// A categorical axis: category `i` sits at `i`, the axis spans
/// `-0.5..n-0.5`, and there is a key point at each category.
#[derive(Clone, Debug)]
pub(super) struct Categories(pub(super) usize);

impl plotters::coord::ranged1d::Ranged for Categories {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let frac = (value + 0.5) / self.0 as f64;
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        let stride = self.0.div_ceil(hint.max_num_points().max(1)).max(1);
        (0..self.0).step_by(stride).map(|i| i as f64).collect()
    }

    fn range(&self) -> Range<f64> {
        -0.5..self.0 as f64 - 0.5
    }
}
