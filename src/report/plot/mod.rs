//! `plot "pattern" vs x by tags`: PNG and SVG charts of scalar results.
//!
//! Two kinds of chart:
//! - `x = step`: a line chart over the training step, one line per matching
//!   key and per combination of the `by` tags' values;
//! - `x = <sweep tag>`: a categorical chart with the tag's values on the x
//!   axis (in the order they first appear in the results), one series per
//!   key × `by` values. When a measurement was taken at several training
//!   steps only its last one is used; several values in one category (from
//!   sweep tags that are neither `x` nor in `by`) are all drawn as points,
//!   with the line through their mean.
//!
//! A sweep whose values are all numbers is drawn on a number line (lines
//! through the mean per value); other sweeps are categories, drawn as
//! points, never joined by lines.
//!
//! The y axis is logarithmic when `log_y` is given; by default when the
//! values are all positive and are losses or errors spanning more than two
//! orders of magnitude, or, on sweep charts, anything spanning more than
//! three (`linear_y` keeps it linear; a log axis is never used for
//! non-positive values). `log_x` applies to step charts only and leaves out
//! step 0. `points` and `lines` choose the marks.
//!
//! Memory (keys naming `memory` or `bytes`) is drawn on a log axis with
//! ticks at powers of two labelled in B/KiB/MiB/GiB (`linear_y` keeps it
//! linear, still in those units).
//!
//! Up to ten series get the ten palette colours, solid lines and round
//! markers, with the legend in the emptiest corner of the data area. More
//! series get distinct colour × dash (× marker) combinations
//! ([`series_style`]) and the legend outside, to the right of the data.
//!
//! Text is drawn with an embedded DejaVu Sans subset, so plots render on
//! machines with no fonts installed.

mod axes;
mod series;
mod style;

use axes::*;
pub(crate) use style::*;

use super::{read_results, Record, ReportError, RESULTS_JSONL};
use plotters::coord::ranged1d::{AsRangedCoord, DefaultFormatting, KeyPointHint, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A plot step of a plan (its `op: "plot"` fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlotSpec {
    /// Measurement key, `*` matching any run of characters.
    pub pattern: String,
    /// `"step"` or the name of a sweep tag.
    pub x: String,
    /// Sweep tags whose values split the series.
    #[serde(default)]
    pub by: Vec<String>,
    /// `log_x`, `log_y`, `points`, `lines`.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Output file stem relative to the run directory (`.png` and `.svg`
    /// are added).
    pub file: String,
    /// Sweep tags that repeat a run (the plan's `replicates`): their values
    /// are averaged, drawn as the mean with a ±1 standard error band.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicates: Vec<String>,
}

impl PlotSpec {
    /// The spec of a plan step (as JSON) whose `op` is `"plot"`.
    pub fn from_plan_step(step: &serde_json::Value) -> Option<PlotSpec> {
        if step.get("op")?.as_str()? != "plot" {
            return None;
        }
        serde_json::from_value(step.clone()).ok()
    }

    fn flag(&self, f: &str) -> bool {
        self.flags.iter().any(|g| g == f)
    }
}

/// Draws `spec` from `dir/results.jsonl` into `dir/<file>.png` and
/// `dir/<file>.svg`; returns those two paths.
pub fn plot(dir: &Path, spec: &PlotSpec) -> Result<Vec<PathBuf>, ReportError> {
    let results = read_results(&dir.join(RESULTS_JSONL))?;
    plot_records(dir, spec, &results.records)
}

/// [`plot`] from records already read.
pub fn plot_records(
    dir: &Path,
    spec: &PlotSpec,
    records: &[Record],
) -> Result<Vec<PathBuf>, ReportError> {
    let chart = Chart::build(spec, records)?;
    let stem = spec
        .file
        .strip_suffix(".png")
        .or_else(|| spec.file.strip_suffix(".svg"))
        .unwrap_or(&spec.file);
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    if let Some(parent) = png.parent() {
        std::fs::create_dir_all(parent).map_err(super::write_err(parent))?;
    }
    register_font().map_err(|message| ReportError::Draw {
        path: png.clone(),
        message,
    })?;
    let draw_err = |path: &Path| {
        let path = path.to_path_buf();
        move |message: String| ReportError::Draw { path, message }
    };
    {
        let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
        chart.render(&root).map_err(draw_err(&png))?;
    }
    {
        let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        chart.render(&root).map_err(draw_err(&svg))?;
    }
    Ok(vec![png, svg])
}

const SIZE: (u32, u32) = (1024, 640);
const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// Registers the embedded font as plotters' `sans-serif` (once).
fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
            .map_err(|_| "the embedded font is not a valid TrueType font".to_string())
    })
    .clone()
}

// ---------------------------------------------------------------- data

#[derive(Debug, PartialEq)]
enum XAxis {
    Steps { range: Range<f64>, log: bool },
    Categories(Vec<String>),
}

#[derive(Debug, PartialEq)]
struct Series {
    label: String,
    /// Drawn as a line, in order.
    line: Vec<(f64, f64)>,
    /// Drawn as markers.
    points: Vec<(f64, f64)>,
    /// Over replicates: `(x, mean − s.e., mean + s.e.)`, drawn shaded.
    band: Vec<(f64, f64, f64)>,
}

/// Everything needed to draw, independent of the backend.
#[derive(Debug, PartialEq)]
struct Chart {
    title: String,
    x_desc: String,
    y_desc: String,
    x: XAxis,
    y: Range<f64>,
    log_y: bool,
    lines: bool,
    points: bool,
    series: Vec<Series>,
    /// Where the legend covers the least data.
    legend: Corner,
    /// More than [`MANY_SERIES`] series: the legend goes to the right of
    /// the data area.
    legend_outside: bool,
    /// The values are bytes: ticks in B/KiB/MiB/GiB, powers of two on a
    /// log axis.
    bytes: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Corner {
    UpperRight,
    UpperLeft,
    LowerRight,
    LowerLeft,
}

/// Identifies a series: key and the values of the `by` tags.
type SeriesId = (String, Vec<Option<String>>);

fn series_label(id: &SeriesId, by: &[String], show_key: bool) -> String {
    let tags: Vec<String> = by
        .iter()
        .zip(&id.1)
        .filter_map(|(t, v)| v.as_ref().map(|v| format!("{t}={v}")))
        .collect();
    match (show_key, tags.is_empty()) {
        (_, true) => id.0.clone(),
        (false, false) => tags.join(", "),
        (true, false) => format!("{} [{}]", id.0, tags.join(", ")),
    }
}

/// Positions of first appearance.
struct Order<T> {
    index: HashMap<T, usize>,
    items: Vec<T>,
}

impl<T: Clone + Eq + std::hash::Hash> Order<T> {
    fn new() -> Self {
        Order {
            index: HashMap::new(),
            items: Vec::new(),
        }
    }
    fn of(&mut self, t: &T) -> usize {
        if let Some(&i) = self.index.get(t) {
            return i;
        }
        self.items.push(t.clone());
        self.index.insert(t.clone(), self.items.len() - 1);
        self.items.len() - 1
    }
}

impl Chart {
    /// `(x, y)` as fractions of the plotting area, `(0, 0)` bottom left.
    fn unit(&self, (x, y): (f64, f64)) -> (f64, f64) {
        fn frac(v: f64, r: &Range<f64>, log: bool) -> f64 {
            if log {
                (v.ln() - r.start.ln()) / (r.end.ln() - r.start.ln())
            } else {
                (v - r.start) / (r.end - r.start)
            }
        }
        let ux = match &self.x {
            XAxis::Steps { range, log } => frac(x, range, *log),
            XAxis::Categories(c) => (x + 0.5) / c.len() as f64,
        };
        (ux, frac(y, &self.y, self.log_y))
    }

    /// The corner whose legend-sized box holds the fewest drawn points
    /// (upper right on ties).
    fn emptiest_corner(&self) -> Corner {
        // Plot area about 860 × 470 px; legend rows 16 px text + spacing.
        let longest = self.longest_label();
        let w = (40.0 + 9.5 * longest as f64) / 860.0;
        let h = (12.0 + 22.0 * self.series.len() as f64) / 470.0;
        let mut samples = Vec::new();
        for s in &self.series {
            samples.extend(s.points.iter().map(|&p| self.unit(p)));
            if self.lines {
                for seg in s.line.windows(2) {
                    let (a, b) = (self.unit(seg[0]), self.unit(seg[1]));
                    for k in 1..20 {
                        let t = f64::from(k) / 20.0;
                        samples.push((a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1)));
                    }
                }
            }
        }
        let count = |right: bool, upper: bool| {
            samples
                .iter()
                .filter(|(x, y)| {
                    let in_x = if right { *x >= 1.0 - w } else { *x <= w };
                    let in_y = if upper { *y >= 1.0 - h } else { *y <= h };
                    in_x && in_y
                })
                .count()
        };
        [
            (Corner::UpperRight, count(true, true)),
            (Corner::UpperLeft, count(false, true)),
            (Corner::LowerRight, count(true, false)),
            (Corner::LowerLeft, count(false, false)),
        ]
        .into_iter()
        .min_by_key(|&(_, n)| n)
        .map(|(c, _)| c)
        .unwrap_or(Corner::UpperRight)
    }

    fn render<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (area, legend) = if self.legend_outside {
            let (w, _) = root.dim_in_pixel();
            let (a, l) = root.split_horizontally(w.saturating_sub(self.legend_width()));
            (a, Some(l))
        } else {
            (root.clone(), None)
        };
        let y = self.y.clone();
        let r = match (self.log_y, self.bytes) {
            (true, true) => self.render_x(&area, LogBytes(y)),
            (true, false) => self.render_x(&area, y.log_scale()),
            (false, _) => self.render_x(&area, y),
        };
        r.map_err(|e| e.to_string())?;
        if let Some(l) = legend {
            self.draw_legend(&l).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())
    }

    fn render_x<DB, Y>(
        &self,
        root: &DrawingArea<DB, Shift>,
        y: Y,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB: DrawingBackend,
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        match &self.x {
            XAxis::Steps { range, log: false } => self.draw(root, range.clone(), y),
            XAxis::Steps { range, log: true } => self.draw(root, range.clone().log_scale(), y),
            XAxis::Categories(c) => self.draw(root, Categories(c.len()), y),
        }
    }

    /// Characters in the longest series label.
    fn longest_label(&self) -> usize {
        self.series
            .iter()
            .map(|s| s.label.chars().count())
            .max()
            .unwrap_or(0)
    }

    /// Width in pixels of the legend outside the data area.
    fn legend_width(&self) -> u32 {
        (56 + 8 * self.longest_label() as u32).clamp(140, 420)
    }

    /// The legend to the right of the data: one row per series, its line
    /// (with its dash), its marker where points are drawn, then its label.
    fn draw_legend<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let (_, h) = area.dim_in_pixel();
        let n = self.series.len().max(1) as i32;
        let top = 60;
        let row = ((h as i32 - top - 20) / n).clamp(8, 22);
        let font = (row - 4).clamp(8, 15);
        for (i, s) in self.series.iter().enumerate() {
            let st = series_style(i, self.series.len());
            let y = top + i as i32 * row + row / 2;
            let line = vec![(6, y), (40, y)];
            match st.dash.pattern() {
                None => area.draw(&PathElement::new(line, st.color.stroke_width(2)))?,
                Some((d, g)) => area.draw(&plotters::element::DashedPathElement::new(
                    line,
                    d,
                    g,
                    st.color.stroke_width(2),
                ))?,
            }
            if self.points || s.line.len() < 2 {
                draw_marker(area, (23, y), st, 4)?;
            }
            area.draw(&Text::new(
                s.label.clone(),
                (48, y - font / 2 - 1),
                (FONT, font).into_font().color(&BLACK),
            ))?;
        }
        Ok(())
    }

    fn x_label(&self, v: f64) -> String {
        match &self.x {
            XAxis::Categories(c) => {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < c.len() {
                    c[i as usize].clone()
                } else {
                    String::new()
                }
            }
            XAxis::Steps { .. } => format_tick(v),
        }
    }

    fn draw<DB, X, Y>(
        &self,
        root: &DrawingArea<DB, Shift>,
        x: X,
        y: Y,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB: DrawingBackend,
        X: AsRangedCoord<Value = f64>,
        Y: AsRangedCoord<Value = f64>,
        X::CoordDescType: ValueFormatter<f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, 26))
            .margin(18)
            .x_label_area_size(56)
            .y_label_area_size(84)
            .build_cartesian_2d(x, y)?;
        let x_fmt = |v: &f64| self.x_label(*v);
        let sci = self.log_y && (self.y.start < 1e-3 || self.y.end > 1e5);
        let y_fmt = |v: &f64| {
            if self.bytes {
                format_bytes_tick(*v)
            } else if sci {
                format_sci(*v)
            } else {
                format_tick(*v)
            }
        };
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(&self.x_desc)
            .y_desc(&self.y_desc)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 18));
        if let XAxis::Categories(c) = &self.x {
            mesh.x_labels(c.len()).disable_x_mesh();
        }
        mesh.draw()?;

        let n = self.series.len();
        for (i, s) in self.series.iter().enumerate() {
            let st = series_style(i, n);
            let color = st.color;
            // A lone point has no line: always mark it.
            let points = self.points || s.line.len() < 2;
            if s.band.len() > 1 {
                // Upper edge left to right, lower edge back.
                let mut outline: Vec<(f64, f64)> = s.band.iter().map(|b| (b.0, b.2)).collect();
                outline.extend(s.band.iter().rev().map(|b| (b.0, b.1)));
                if self.log_y {
                    let floor = self.y.start;
                    for p in &mut outline {
                        p.1 = p.1.max(floor);
                    }
                }
                chart.draw_series(std::iter::once(Polygon::new(
                    outline,
                    color.mix(0.2).filled(),
                )))?;
            }
            if self.lines && s.line.len() > 1 {
                let line = s.line.iter().copied();
                match st.dash.pattern() {
                    None => {
                        chart.draw_series(LineSeries::new(line, color.stroke_width(2)))?;
                    }
                    Some((d, g)) => {
                        chart.draw_series(DashedLineSeries::new(
                            line,
                            d,
                            g,
                            color.stroke_width(2),
                        ))?;
                    }
                }
            }
            if points {
                let plotting = chart.plotting_area();
                for &p in &s.points {
                    draw_marker(plotting, p, st, 4)?;
                }
            }
            if !self.legend_outside {
                // An empty series carries the label into the inside legend.
                chart
                    .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
                    .label(s.label.as_str())
                    .legend(move |(x, y): (i32, i32)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                    });
            }
        }
        if self.legend_outside {
            return Ok(());
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(match self.legend {
                Corner::UpperRight => SeriesLabelPosition::UpperRight,
                Corner::UpperLeft => SeriesLabelPosition::UpperLeft,
                Corner::LowerRight => SeriesLabelPosition::LowerRight,
                Corner::LowerLeft => SeriesLabelPosition::LowerLeft,
            })
            .draw()?;
        Ok(())
    }
}

/// One marker of style `st`, `r` pixels across half, at `at` (in the
/// area's own coordinates).
fn draw_marker<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    at: CT::From,
    st: SeriesStyle,
    r: i32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    CT::From: Clone,
{
    let fill = st.color.filled();
    let stroke = st.color.stroke_width(2);
    let e = || EmptyElement::at(at.clone());
    match st.marker {
        Marker::Circle => area.draw(&(e() + Circle::new((0, 0), r, fill))),
        Marker::Square => area.draw(&(e() + Rectangle::new([(-r, -r), (r, r)], fill))),
        Marker::Triangle => {
            area.draw(&(e() + Polygon::new(vec![(0, -r - 1), (-r - 1, r), (r + 1, r)], fill)))
        }
        Marker::Cross => area.draw(
            &(e()
                + PathElement::new(vec![(-r, -r), (r, r)], stroke)
                + PathElement::new(vec![(-r, r), (r, -r)], stroke)),
        ),
    }
}

/// `(x, mean − s.e., mean + s.e.)` at each x with two or more values.
pub(crate) type Band = Vec<(f64, f64, f64)>;

/// The mean of the values at each x (in increasing x) and, where there are
/// two or more, the band mean ± one standard error of the mean.
pub(crate) fn mean_and_band(points: &[(f64, f64)]) -> (Vec<(f64, f64)>, Band) {
    let mut at: BTreeMap<u64, (f64, Vec<f64>)> = BTreeMap::new();
    for &(x, y) in points {
        // Keyed by the bits of a total order on x (x is finite here).
        let k = x.to_bits()
            ^ if x.is_sign_negative() {
                u64::MAX
            } else {
                1 << 63
            };
        at.entry(k).or_insert((x, Vec::new())).1.push(y);
    }
    let mut line = Vec::new();
    let mut band = Vec::new();
    for (x, ys) in at.into_values() {
        let n = ys.len() as f64;
        let mean = ys.iter().sum::<f64>() / n;
        line.push((x, mean));
        if ys.len() >= 2 {
            let var = ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / (n - 1.0);
            let se = (var / n).sqrt();
            band.push((x, mean - se, mean + se));
        }
    }
    (line, band)
}

#[cfg(test)]
pub(super) mod tests_support {
    use super::*;

    /// What a test wants to know of a built chart.
    pub struct Built {
        pub categories: Vec<String>,
        pub log_y: bool,
        pub lines: bool,
        pub y_desc: String,
        pub labels: Vec<String>,
        pub points: Vec<Vec<(f64, f64)>>,
        pub legend_outside: bool,
        pub bytes: bool,
        /// The y axis's key points (ticks), for a byte axis.
        pub byte_ticks: Vec<f64>,
    }

    pub fn build(spec: &PlotSpec, records: &[Record]) -> Result<Built, ReportError> {
        let c = Chart::build(spec, records)?;
        Ok(Built {
            categories: match &c.x {
                XAxis::Categories(c) => c.clone(),
                XAxis::Steps { .. } => vec![],
            },
            log_y: c.log_y,
            lines: c.lines,
            y_desc: c.y_desc.clone(),
            labels: c.series.iter().map(|s| s.label.clone()).collect(),
            points: c.series.iter().map(|s| s.points.clone()).collect(),
            legend_outside: c.legend_outside,
            bytes: c.bytes,
            byte_ticks: LogBytes(c.y.clone())
                .key_exponents(10)
                .into_iter()
                .map(|k| 2f64.powi(k))
                .collect(),
        })
    }
}
