//! The report's inline SVG charts: items per bucket, one line per series, with a legend and
//! the key timeline's marks as vertical lines. Every text is escaped ([`super::html::escape`]).
//!
//! The element structure is what the browser test reads (tests/report/check_report.py):
//! `svg.chart#<id>` holds `g.series[data-name]` (a `polyline` of one point per bucket),
//! `g.legend-series[data-name]`, and `g.mark[data-kind][data-seq]`.

use std::fmt::Write as _;

use super::html::escape;
use super::{Chart, Mark, Series};
use crate::report::utc_ms;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 28.0;
const PLOT_HEIGHT: f64 = 220.0;
const AXIS: f64 = 36.0;
const LEGEND_ROW: f64 = 20.0;

/// Line colours (Okabe–Ito, readable by colour-blind readers); after them the cycle repeats
/// dashed.
const COLOURS: [&str; 7] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000",
];

/// How each kind of mark is drawn: colour and dash pattern.
pub(super) fn mark_style(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "revoked" => ("#B00020", ""),
        "restored" => ("#2E7D32", "6 3"),
        "shredded" => ("#6A1B9A", "2 3"),
        _ => ("#37474F", "8 3 2 3"),
    }
}

/// An SVG chart of `series` on `chart`'s time axis, with `marks` overlaid.
pub(super) fn svg(
    id: &str,
    title: &str,
    chart: &Chart,
    series: &[Series],
    marks: &[Mark],
) -> String {
    let plot_width = WIDTH - LEFT - RIGHT;
    let legend_rows = series.len() + usize::from(!marks.is_empty());
    let height = TOP + PLOT_HEIGHT + AXIS + LEGEND_ROW * legend_rows as f64 + 8.0;
    let span = (chart.end() - chart.start) as f64;
    let x_of = |seconds: f64| LEFT + (seconds - chart.start as f64) / span * plot_width;
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .max()
        .unwrap_or(0);
    let (y_max, step) = nice_scale(max);
    let y_of = |v: u64| TOP + PLOT_HEIGHT - (v as f64 / y_max as f64) * PLOT_HEIGHT;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="chart" id="{id}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-labelledby="{id}-title"><title id="{id}-title">{title}</title>"#,
        id = escape(id),
        title = escape(title),
    );
    // Axes and grid.
    let bottom = TOP + PLOT_HEIGHT;
    let _ = write!(
        out,
        r##"<g class="axes"><line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="#444"/>"##,
        right = WIDTH - RIGHT,
    );
    let mut v = 0;
    while v <= y_max {
        let y = y_of(v);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end" font-size="11">{v}</text>"##,
            right = WIDTH - RIGHT,
            tx = LEFT - 6.0,
            ty = y + 4.0,
        );
        match v.checked_add(step) {
            Some(next) => v = next,
            None => break,
        }
    }
    let ticks = chart.buckets.clamp(1, 6);
    for i in 0..ticks {
        let bucket = if ticks == 1 {
            0
        } else {
            i * (chart.buckets - 1) / (ticks - 1)
        };
        let seconds = chart.start + chart.bucket_seconds * bucket as i64;
        let x = x_of(seconds as f64 + chart.bucket_seconds as f64 / 2.0);
        let _ = write!(
            out,
            r##"<text x="{x:.1}" y="{ty}" text-anchor="middle" font-size="11">{label}</text>"##,
            ty = bottom + 16.0,
            label = escape(&time_label(seconds, chart.bucket_seconds)),
        );
    }
    let _ = write!(
        out,
        r##"<text x="{LEFT}" y="{ty}" font-size="11" fill="#444">items per {bucket} (UTC)</text><text x="{LEFT}" y="16" font-size="12" font-weight="bold">{title}</text></g>"##,
        ty = bottom + 32.0,
        bucket = escape(&bucket_label(chart.bucket_seconds)),
        title = escape(title),
    );
    // Series.
    for (index, s) in series.iter().enumerate() {
        let (colour, dash) = series_style(index);
        let points: Vec<String> = s
            .points
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let seconds = chart.start as f64 + chart.bucket_seconds as f64 * (i as f64 + 0.5);
                format!("{:.1},{:.1}", x_of(seconds), y_of(*v))
            })
            .collect();
        let total: u64 = s.points.iter().sum();
        let _ = write!(
            out,
            r#"<g class="series" data-name="{name}"><title>{name}: {total} items</title><polyline fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}" points="{points}"/>"#,
            name = escape(s.name()),
            points = points.join(" "),
        );
        if s.points.len() == 1 {
            // A single point draws no line: a dot shows it.
            let _ = write!(
                out,
                r#"<circle r="3" fill="{colour}" cx="{}" cy="{}"/>"#,
                x_of(chart.start as f64 + chart.bucket_seconds as f64 / 2.0),
                y_of(s.points[0])
            );
        }
        out.push_str("</g>");
    }
    // Marks.
    for m in marks {
        let (colour, dash) = mark_style(m.kind);
        let x = x_of(m.time_ms as f64 / 1000.0);
        let _ = write!(
            out,
            r#"<g class="mark" data-kind="{kind}" data-seq="{seq}"><title>{kind} at {time} (seq {seq}): {detail}</title><line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{tx:.1}" y="{ty}" font-size="10" fill="{colour}">{kind}</text></g>"#,
            kind = escape(m.kind),
            seq = m.seq,
            time = escape(&utc_ms(m.time_ms)),
            detail = escape(&m.detail),
            tx = x + 2.0,
            ty = TOP - 4.0,
        );
    }
    // Legend.
    let mut y = bottom + AXIS + 8.0;
    for (index, s) in series.iter().enumerate() {
        let (colour, dash) = series_style(index);
        let total: u64 = s.points.iter().sum();
        let _ = write!(
            out,
            r#"<g class="legend-series" data-name="{name}"><line x1="{LEFT}" y1="{y}" x2="{lx}" y2="{y}" stroke="{colour}" stroke-width="3" stroke-dasharray="{dash}"/><text x="{tx}" y="{ty}" font-size="12">{name} ({total} items)</text></g>"#,
            name = escape(s.name()),
            lx = LEFT + 28.0,
            tx = LEFT + 34.0,
            ty = y + 4.0,
        );
        y += LEGEND_ROW;
    }
    if !marks.is_empty() {
        let mut x = LEFT;
        for kind in ["revoked", "restored", "shredded", "rekeyed"] {
            if !marks.iter().any(|m| m.kind == kind) {
                continue;
            }
            let (colour, dash) = mark_style(kind);
            let _ = write!(
                out,
                r#"<g class="legend-mark" data-kind="{kind}"><line x1="{x}" y1="{y0}" x2="{x}" y2="{y1}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{tx}" y="{ty}" font-size="12">{kind}</text></g>"#,
                y0 = y - 7.0,
                y1 = y + 7.0,
                tx = x + 6.0,
                ty = y + 4.0,
            );
            x += 110.0;
        }
    }
    out.push_str("</svg>");
    out
}

fn series_style(index: usize) -> (&'static str, &'static str) {
    let colour = COLOURS[index % COLOURS.len()];
    let dash = match index / COLOURS.len() {
        0 => "",
        1 => "6 3",
        _ => "2 2",
    };
    (colour, dash)
}

/// A y-axis top at or above `max` and a tick step: 1, 2 or 5 times a power of ten, at most
/// five steps.
pub(super) fn nice_scale(max: u64) -> (u64, u64) {
    let mut magnitude = 1u64;
    loop {
        for factor in [1, 2, 5] {
            let step = magnitude.saturating_mul(factor);
            if max.div_ceil(step) <= 5 {
                let top = max.div_ceil(step).max(1).saturating_mul(step);
                return (top, step);
            }
        }
        magnitude = magnitude.saturating_mul(10);
    }
}

/// `2026-12-06 19:10` (or the date alone for buckets of a day or more).
fn time_label(seconds: i64, bucket_seconds: i64) -> String {
    let text = utc_ms(seconds.saturating_mul(1000)).replace('T', " ");
    let keep = if bucket_seconds >= 86_400 { 10 } else { 16 };
    text.chars().take(keep).collect()
}

fn bucket_label(seconds: i64) -> String {
    match seconds {
        60 => "minute".into(),
        3600 => "hour".into(),
        86_400 => "day".into(),
        604_800 => "week".into(),
        s if s % 3600 == 0 => format!("{} hours", s / 3600),
        s => format!("{} minutes", s / 60),
    }
}
