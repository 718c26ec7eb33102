//! Gathering a chart's series from the run's records: which keys match,
//! how the `by` tags and sweep values group them, the axes' kinds and
//! ranges.

use super::*;

impl Chart {
    pub(super) fn build(spec: &PlotSpec, records: &[Record]) -> Result<Chart, ReportError> {
        let nothing = || ReportError::NothingToPlot {
            pattern: spec.pattern.clone(),
        };
        let selected: Vec<(&Record, f64)> = records
            .iter()
            .filter(|r| crate::check::glob(&spec.pattern, &r.key))
            .filter_map(|r| Some((r, r.value.as_scalar()?)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        let series_id = |r: &Record| -> SeriesId {
            let tags = spec.by.iter().map(|t| r.sweep.get(t).cloned()).collect();
            (r.key.clone(), tags)
        };
        let mut ids = Order::new();
        // (series index, x, y), in file order.
        let mut pts: Vec<(usize, f64, f64)> = Vec::new();
        let x_axis;
        // `against index`: a vector or `[n, C]` result's entries by
        // position (one series per column), e.g. a function-space vector.
        let is_index = spec.x == "index";
        let is_steps = spec.x == "step" || spec.x == "time" || is_index;
        // Whether x is a number line (steps, epochs, time, a numeric sweep)
        // rather than unordered categories.
        let mut numeric_x = is_steps || spec.x == "epoch";
        // Inside training runs time is the run's optimiser-step clock
        // (hooks and tracking excluded), so optimisers compare fairly.
        let train_clock = selected.iter().all(|(r, _)| r.train_time_s.is_some());
        if is_index {
            // The last measurement of each key and sweep point.
            let mut last: BTreeMap<(String, Vec<Option<String>>), &Record> = BTreeMap::new();
            for r in records
                .iter()
                .filter(|r| crate::check::glob(&spec.pattern, &r.key))
            {
                if let crate::report::Measured::Tensor { shape, .. } = &r.value {
                    if (1..=2).contains(&shape.len()) {
                        last.insert(series_id(r), r);
                    }
                }
            }
            for r in last.values() {
                let crate::report::Measured::Tensor { shape, data } = &r.value else {
                    continue;
                };
                let cols = if shape.len() == 2 { shape[1].max(1) } else { 1 };
                for (k, v) in data.iter().enumerate().filter(|(_, v)| v.is_finite()) {
                    let mut id = series_id(r);
                    if cols > 1 {
                        id.0 = format!("{}[{}]", r.key, k % cols);
                    }
                    pts.push((ids.of(&id), (k / cols) as f64, *v));
                }
            }
            let (lo, hi) = min_max(pts.iter().map(|p| p.1)).ok_or_else(nothing)?;
            let range = if lo == hi { lo - 1.0..hi + 1.0 } else { lo..hi };
            x_axis = XAxis::Steps { range, log: false };
        } else if spec.x == "time" {
            // Otherwise seconds since each series' first point: runs that
            // follow one another in the file share the origin of their own
            // clock.
            let mut start: HashMap<SeriesId, f64> = HashMap::new();
            for (r, v) in &selected {
                let id = series_id(r);
                let t = if train_clock {
                    r.train_time_s
                } else {
                    let Some(t) = r.time_s else { continue };
                    Some(t - *start.entry(id.clone()).or_insert(t))
                };
                let Some(t) = t else { continue };
                pts.push((ids.of(&id), t, *v));
            }
            let (lo, hi) = min_max(pts.iter().map(|p| p.1)).ok_or_else(nothing)?;
            let range = if lo == hi { lo - 1.0..hi + 1.0 } else { lo..hi };
            x_axis = XAxis::Steps { range, log: false };
        } else if is_steps || spec.x == "epoch" {
            let log_x = spec.flag("log_x");
            for (r, v) in &selected {
                let x = if spec.x == "epoch" {
                    r.epoch
                } else {
                    r.step.map(|s| s as f64)
                };
                let Some(x) = x else { continue };
                if log_x && x <= 0.0 {
                    continue;
                }
                pts.push((ids.of(&series_id(r)), x, *v));
            }
            let (lo, hi) = min_max(pts.iter().map(|p| p.1)).ok_or_else(nothing)?;
            let range = if log_x {
                // From the decade below, so that there are ticks.
                let a = 10f64.powf(lo.log10().floor());
                let b = if hi > a { hi } else { a * 10.0 };
                a * 0.9999..b * 1.0001
            } else if lo == hi {
                lo - 1.0..hi + 1.0
            } else {
                lo..hi
            };
            x_axis = XAxis::Steps { range, log: log_x };
        } else {
            // Last training step of each measurement.
            type Measurement<'r> = (&'r str, u64, &'r BTreeMap<String, String>);
            let mut last: HashMap<Measurement, (Option<u64>, usize)> = HashMap::new();
            for (i, (r, _)) in selected.iter().enumerate() {
                if !r.sweep.contains_key(&spec.x) {
                    continue;
                }
                let e = last
                    .entry((&r.key, r.step_id, &r.sweep))
                    .or_insert((r.step, i));
                if r.step >= e.0 {
                    *e = (r.step, i);
                }
            }
            let mut keep: Vec<usize> = last.into_values().map(|(_, i)| i).collect();
            keep.sort_unstable();
            let mut cats = Order::new();
            for i in keep {
                let (r, v) = selected[i];
                let c = cats.of(&r.sweep[&spec.x]);
                pts.push((ids.of(&series_id(r)), c as f64, v));
            }
            if cats.items.is_empty() {
                return Err(nothing());
            }
            // A numeric sweep (`for lr in [0.01, 0.1]`) is a number line,
            // not categories.
            let values: Option<Vec<f64>> =
                cats.items.iter().map(|c| c.parse::<f64>().ok()).collect();
            match values {
                Some(v) if v.iter().all(|x| x.is_finite()) => {
                    for p in &mut pts {
                        p.1 = v[p.1 as usize];
                    }
                    let (lo, hi) = min_max(v.iter().copied()).ok_or_else(nothing)?;
                    let pad = if lo == hi { 1.0 } else { (hi - lo) * 0.05 };
                    numeric_x = true;
                    x_axis = XAxis::Steps {
                        range: lo - pad..hi + pad,
                        log: false,
                    };
                }
                _ => x_axis = XAxis::Categories(cats.items),
            }
        }

        let (y_lo, y_hi) = min_max(pts.iter().map(|p| p.2)).ok_or_else(nothing)?;
        let positive = y_lo > 0.0;
        let bytes = ids.items.iter().all(|id| is_memory_key(&id.0));
        // Losses and errors that span more than two decades are read on a
        // log axis unless `linear_y` says otherwise; other values from three.
        let lossy = ids.items.iter().all(|id| {
            let k = id.0.to_lowercase();
            k.contains("loss") || k.contains("err")
        });
        let log_y = positive
            && !spec.flag("linear_y")
            && (spec.flag("log_y")
                || bytes
                || (lossy && y_hi / y_lo > 1e2)
                || (!is_steps && y_hi / y_lo > 1e3));
        let y = if log_y && bytes {
            powers_of_two(y_lo, y_hi)
        } else if log_y {
            decades(y_lo, y_hi)
        } else if y_lo == y_hi {
            let d = if y_lo == 0.0 { 1.0 } else { y_lo.abs() * 0.1 };
            y_lo - d..y_hi + d
        } else {
            let pad = (y_hi - y_lo) * 0.05;
            y_lo - pad..y_hi + pad
        };

        // Lines join points along a number line only; categories get points.
        let (points, lines) = match (spec.flag("points"), spec.flag("lines")) {
            (false, false) => (!is_steps, numeric_x),
            (p, l) => (p, l),
        };
        let keys: std::collections::HashSet<&str> =
            ids.items.iter().map(|id| id.0.as_str()).collect();
        let show_key = keys.len() > 1;
        let mut series: Vec<Series> = ids
            .items
            .iter()
            .map(|id| Series {
                label: series_label(id, &spec.by, show_key),
                line: Vec::new(),
                points: Vec::new(),
                band: Vec::new(),
            })
            .collect();
        let replicated = !spec.replicates.is_empty();
        for &(s, x, y) in &pts {
            series[s].points.push((x, y));
        }
        for s in &mut series {
            if replicated && numeric_x {
                // Replicates: the mean per x and a ±1 s.e. band.
                let (line, band) = mean_and_band(&s.points);
                s.line = line;
                s.band = band;
            } else if is_steps || spec.x == "epoch" {
                s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
                s.line = s.points.clone();
            } else if numeric_x {
                // Mean per sweep value, in increasing order.
                let mut sums: Vec<(f64, f64, usize)> = Vec::new();
                for &(x, y) in &s.points {
                    match sums.iter_mut().find(|e| e.0 == x) {
                        Some(e) => {
                            e.1 += y;
                            e.2 += 1;
                        }
                        None => sums.push((x, y, 1)),
                    }
                }
                sums.sort_by(|a, b| a.0.total_cmp(&b.0));
                s.line = sums.iter().map(|e| (e.0, e.1 / e.2 as f64)).collect();
            } else {
                // Mean per category, in category order.
                let mut sums: BTreeMap<usize, (f64, usize)> = BTreeMap::new();
                for &(x, y) in &s.points {
                    let e = sums.entry(x as usize).or_insert((0.0, 0));
                    e.0 += y;
                    e.1 += 1;
                }
                s.line = sums
                    .into_iter()
                    .map(|(c, (sum, n))| (c as f64, sum / n as f64))
                    .collect();
            }
        }
        // The quantity: the key, or what the pattern's keys share.
        let y_desc = if keys.len() == 1 {
            ids.items[0].0.clone()
        } else {
            let stem = spec.pattern.split('*').next().unwrap_or("");
            let stem = stem.trim_end_matches(['/', '_', '.', ' ']);
            if stem.is_empty() {
                spec.pattern.clone()
            } else {
                stem.to_string()
            }
        };
        let mut chart = Chart {
            title: spec.pattern.clone(),
            x_desc: if spec.x == "time" && train_clock {
                "training time (s)".into()
            } else if spec.x == "time" {
                // Wall time of the whole run, measurement hooks included.
                "time (s, including measurements)".into()
            } else {
                spec.x.clone()
            },
            y_desc,
            x: x_axis,
            y,
            log_y,
            lines,
            points,
            legend_outside: series.len() > MANY_SERIES,
            series,
            legend: Corner::UpperRight,
            bytes,
        };
        chart.legend = chart.emptiest_corner();
        Ok(chart)
    }
}
