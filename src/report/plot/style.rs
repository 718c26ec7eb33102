//! How series look: colours, dashes and markers, and the units of a
//! memory axis.

use super::*;

/// Tableau 10.
pub(super) const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// How a line is stroked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dash {
    Solid,
    Dashed,
    Dotted,
    Long,
}

impl Dash {
    const ALL: [Dash; 4] = [Dash::Solid, Dash::Dashed, Dash::Dotted, Dash::Long];

    /// Dash length and gap in pixels (`None` for a solid line).
    pub(super) fn pattern(self) -> Option<(i32, i32)> {
        match self {
            Dash::Solid => None,
            Dash::Dashed => Some((8, 5)),
            Dash::Dotted => Some((2, 4)),
            Dash::Long => Some((16, 6)),
        }
    }
}

/// How a point is marked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Marker {
    Circle,
    Square,
    Triangle,
    Cross,
}

impl Marker {
    const ALL: [Marker; 4] = [
        Marker::Circle,
        Marker::Square,
        Marker::Triangle,
        Marker::Cross,
    ];
}

/// The look of one series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SeriesStyle {
    pub color: RGBColor,
    pub dash: Dash,
    pub marker: Marker,
}

/// More series than this get the legend outside the data area.
pub(crate) const MANY_SERIES: usize = 10;

/// The style of series `i` of `n`. Up to [`MANY_SERIES`]: the palette's
/// colours, solid lines, round markers. More: the colour cycles fastest,
/// then the dash, then the marker, so that every series has its own
/// (colour, dash) pair up to 40 series and its own (colour, dash, marker)
/// up to 160.
pub(crate) fn series_style(i: usize, n: usize) -> SeriesStyle {
    let color = PALETTE[i % PALETTE.len()];
    if n <= MANY_SERIES {
        return SeriesStyle {
            color,
            dash: Dash::Solid,
            marker: Marker::Circle,
        };
    }
    let round = i / PALETTE.len();
    SeriesStyle {
        color,
        dash: Dash::ALL[round % Dash::ALL.len()],
        marker: Marker::ALL[(round / Dash::ALL.len()) % Marker::ALL.len()],
    }
}

/// Whether a key is a number of bytes (`memory(F)`, `…/bytes`).
pub(crate) fn is_memory_key(key: &str) -> bool {
    let k = key.to_lowercase();
    k.contains("memory") || k.contains("bytes")
}

/// A byte count as a tick label: `512 B`, `1 KiB`, `256 MiB`, `1.5 GiB`
/// (at most three significant digits).
pub(crate) fn format_bytes_tick(v: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if v == 0.0 || !v.is_finite() {
        return "0 B".into();
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let mut x = v.abs();
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    let decimals = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{x:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    format!("{sign}{s} {}", UNITS[u])
}
