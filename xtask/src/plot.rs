//! A small PNG chart renderer for `cargo xtask load` (latency against throughput) and
//! `cargo xtask bench` (latency distributions, throughput curves).
//!
//! Everything but the PNG encoding is drawn here: an anti-aliased coverage rasteriser for series
//! lines and markers, crisp rectangles for axes, grids and dashed reference lines, and a built-in
//! 5x8 bitmap font for ASCII 32..=126 (other characters draw as `?`). The only dependency is the
//! pure-Rust [`png`] encoder, so a chart renders the same on a fresh CI machine with no fonts
//! installed, and the same chart at the same size always encodes to the same bytes.
//!
//! Text, line widths and markers scale with the image: 800x500 draws 7-pixel capitals,
//! 1200x800 draws 14-pixel ones.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{ensure, Context, Result};

/// One data series: its points, drawn in the order given, in one colour.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend's text; a series with an empty label has no legend entry.
    pub label: String,
    /// `(x, y)` in data units. A point with a non-finite coordinate, or a non-positive one on a
    /// log axis, is skipped, and a line breaks there (as for a missing sample).
    pub points: Vec<(f64, f64)>,
    /// How the points are drawn.
    pub style: Style,
}

/// How a [`Series`] is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// Straight segments between consecutive points.
    #[default]
    Line,
    /// A filled round marker at each point.
    #[allow(dead_code)] // Only the tests draw markers alone so far.
    Points,
    /// Both: segments, and a marker at each point.
    LineAndPoints,
}

/// A 2-D chart: axes, series, reference lines, a title and a legend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chart {
    /// Drawn centred above the plot; empty for none.
    pub title: String,
    /// The x axis' label, e.g. `"throughput (req/s)"`; empty for none.
    pub x_label: String,
    /// The y axis' label, drawn reading upwards; empty for none.
    pub y_label: String,
    /// A log10 x axis with ticks at decades (`1k`, `10k`, `100k`...).
    pub x_log: bool,
    /// A log10 y axis with ticks at decades (`100u`, `1m`, `10m`...).
    pub y_log: bool,
    /// The data; colours are assigned in order from a 10-colour palette (which then repeats).
    pub series: Vec<Series>,
    /// Horizontal reference lines, e.g. a target "P50 <= 1 ms" (value, label).
    pub h_lines: Vec<(f64, String)>,
    /// Vertical reference lines, e.g. "the knee" or "1M req/s" (value, label).
    pub v_lines: Vec<(f64, String)>,
}

/// Renders `chart` as a `width` x `height` RGB PNG at `path`.
///
/// Axes cover every drawable point and reference line (a reference line whose value is
/// non-finite, or non-positive on a log axis, is skipped like a point). Errors when the image is
/// too small to hold a plot (under 120x90), over 4096 pixels a side, when the data's range
/// cannot be represented (e.g. `-1e308..1e308` on a linear axis), or when the file cannot be
/// written.
pub fn render_png(chart: &Chart, path: &Path, width: u32, height: u32) -> Result<()> {
    let canvas = render(chart, width, height)?;
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    encode_png(&canvas, &mut out).with_context(|| format!("writing {}", path.display()))?;
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn encode_png(canvas: &Canvas, out: &mut impl Write) -> Result<()> {
    let (w, h) = (u32::try_from(canvas.w)?, u32::try_from(canvas.h)?);
    let mut encoder = png::Encoder::new(out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&canvas.px)?;
    writer.finish()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Colours

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const TEXT: Rgb = [25, 25, 25];
const FRAME: Rgb = [60, 60, 60];
const GRID: Rgb = [222, 222, 222];
const GRID_MINOR: Rgb = [240, 240, 240];
const REFERENCE: Rgb = [105, 105, 105];
const LEGEND_BORDER: Rgb = [170, 170, 170];

/// Tableau 10: distinct, and readable on white.
const PALETTE: [Rgb; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

fn series_colour(index: usize) -> Rgb {
    PALETTE[index % PALETTE.len()]
}

// ---------------------------------------------------------------------------------------------
// Layout and drawing

const MIN_WIDTH: u32 = 120;
const MIN_HEIGHT: u32 = 90;
const MAX_SIDE: u32 = 4096;

/// The text scale (font pixels per glyph pixel) for an image size.
fn text_scale(width: u32, height: u32) -> i64 {
    (i64::from(width.min(height)) / 600 + 1).clamp(1, 4)
}

/// The blank band above the plot that holds the title: rows `0..title_band(..)`.
fn title_band(width: u32, height: u32) -> i64 {
    let s = text_scale(width, height);
    2 * pad(s) + GLYPH_H * (s + 1)
}

fn pad(s: i64) -> i64 {
    8 * s
}

/// A point in pixel space (x right, y down; pixel `(i, j)` covers `[i, i+1) x [j, j+1)`).
type Px = (f64, f64);

/// Sizes shared by the layout and the drawing, all from the text scale `s`.
#[derive(Clone, Copy)]
struct Metrics {
    /// Pixels per font pixel for ordinary text.
    s: i64,
    /// Pixels per font pixel for the title.
    ts: i64,
    pad: i64,
    text_h: i64,
    tick: i64,
    gap: i64,
    line_r: f64,
    marker_r: f64,
}

impl Metrics {
    fn new(width: u32, height: u32) -> Metrics {
        let s = text_scale(width, height);
        Metrics {
            s,
            ts: s + 1,
            pad: pad(s),
            text_h: GLYPH_H * s,
            tick: 4 * s,
            gap: 3 * s,
            line_r: 0.75 * s as f64 + 0.75,
            marker_r: 2.5 * s as f64 + 1.0,
        }
    }
}

fn render(chart: &Chart, width: u32, height: u32) -> Result<Canvas> {
    ensure!(
        (MIN_WIDTH..=MAX_SIDE).contains(&width) && (MIN_HEIGHT..=MAX_SIDE).contains(&height),
        "a {width}x{height} chart: the size must be between {MIN_WIDTH}x{MIN_HEIGHT} and \
         {MAX_SIDE}x{MAX_SIDE}"
    );
    let m = Metrics::new(width, height);

    // The legend goes in whichever inside corner of the plot covers nothing (the first of top
    // right, top left, bottom right, bottom left), else outside on the right where it fits,
    // else in the inside corner that covers least.
    let mut plot = layout(chart, width, height, &m, 0)?;
    let mut legend = None;
    if let Some((bw, bh)) = legend_size(chart, &m) {
        let (corner, covered) = best_corner(chart, &plot, &m, bw, bh);
        legend = Some(corner);
        if covered > 0 {
            if let Ok(narrower) = layout(chart, width, height, &m, bw + m.pad) {
                legend = Some((narrower.left + narrower.w + m.pad, narrower.top));
                plot = narrower;
            }
        }
    }

    let (w, h) = (i64::from(width), i64::from(height));
    let Plot {
        left,
        top,
        w: plot_w,
        h: plot_h,
        ..
    } = plot;
    let (s, pad, tick, gap) = (m.s, m.pad, m.tick, m.gap);
    let mut c = Canvas::new(width as usize, height as usize);

    // Grid, under everything else.
    for t in &plot.x.ticks {
        let x = plot.px_col(plot.x_px(t.value));
        let colour = if t.major { GRID } else { GRID_MINOR };
        c.fill_rect(x, top, x + 1, top + plot_h, colour);
    }
    for t in &plot.y.ticks {
        let y = plot.px_row(plot.y_px(t.value));
        let colour = if t.major { GRID } else { GRID_MINOR };
        c.fill_rect(left, y, left + plot_w, y + 1, colour);
    }

    // Reference lines, under the data.
    for (v, _) in chart.h_lines.iter().filter(|(v, _)| valid(*v, chart.y_log)) {
        let y = plot.px_row(plot.y_px(*v));
        c.dashed_hline(left, left + plot_w, y, s, 6 * s, 4 * s, REFERENCE);
    }
    for (v, _) in chart.v_lines.iter().filter(|(v, _)| valid(*v, chart.x_log)) {
        let x = plot.px_col(plot.x_px(*v));
        c.dashed_vline(x, top, top + plot_h, s, 6 * s, 4 * s, REFERENCE);
    }

    // The data, clipped to the plot plus a marker's radius (so markers on the frame are whole).
    let slack = m.marker_r.ceil() as i64 + 1;
    let clip = Rect {
        x0: (left - slack).max(0),
        y0: (top - slack).max(0),
        x1: (left + plot_w + slack).min(w),
        y1: (top + plot_h + slack).min(h),
    };
    let mut mask = Mask::new(width as usize, height as usize);
    mask.set_clip(clip);
    for (i, (se, pts)) in chart.series.iter().zip(project(chart, &plot)).enumerate() {
        if matches!(se.style, Style::Line | Style::LineAndPoints) {
            for pair in pts.windows(2) {
                if let [Some(a), Some(b)] = pair {
                    mask.capsule(*a, *b, m.line_r);
                }
            }
            // A lone point between gaps would vanish as a line: give it a dot.
            for (k, p) in pts.iter().enumerate() {
                let before = k > 0 && pts[k - 1].is_some();
                let after = pts.get(k + 1).is_some_and(Option::is_some);
                if let (Some(p), false, false) = (p, before, after) {
                    mask.capsule(*p, *p, m.line_r);
                }
            }
        }
        if matches!(se.style, Style::Points | Style::LineAndPoints) {
            for p in pts.iter().flatten() {
                mask.capsule(*p, *p, m.marker_r);
            }
        }
        mask.composite(&mut c, series_colour(i));
    }

    // Frame and ticks.
    c.fill_rect(left - 1, top - 1, left + plot_w + 1, top, FRAME);
    c.fill_rect(
        left - 1,
        top + plot_h,
        left + plot_w + 1,
        top + plot_h + 1,
        FRAME,
    );
    c.fill_rect(left - 1, top - 1, left, top + plot_h + 1, FRAME);
    c.fill_rect(
        left + plot_w,
        top - 1,
        left + plot_w + 1,
        top + plot_h + 1,
        FRAME,
    );
    for t in &plot.x.ticks {
        let x = plot.px_col(plot.x_px(t.value));
        let len = if t.major { tick } else { tick / 2 };
        c.fill_rect(x, top + plot_h + 1, x + 1, top + plot_h + 1 + len, FRAME);
        if let Some(label) = &t.label {
            let tw = text_width(label, s);
            c.text(x - tw / 2, top + plot_h + 1 + tick + gap, label, s, TEXT);
        }
    }
    for t in &plot.y.ticks {
        let y = plot.px_row(plot.y_px(t.value));
        let len = if t.major { tick } else { tick / 2 };
        c.fill_rect(left - 1 - len, y, left - 1, y + 1, FRAME);
        if let Some(label) = &t.label {
            let tw = text_width(label, s);
            let cap = GLYPH_CAP * s;
            c.text(left - 1 - tick - gap - tw, y - cap / 2, label, s, TEXT);
        }
    }

    // Reference line labels, over the data on a translucent backing.
    for (r, label) in reference_labels(chart, &plot, &m) {
        c.blend_rect(r.x0, r.y0, r.x1, r.y1, WHITE, 0.8);
        c.text(r.x0 + gap, r.y0 + gap, label, s, REFERENCE);
    }

    // Title and axis labels.
    if !chart.title.is_empty() {
        let tw = text_width(&chart.title, m.ts);
        let x = ((w - tw) / 2).max(pad);
        c.text(x, pad, &chart.title, m.ts, TEXT);
    }
    if !chart.x_label.is_empty() {
        let tw = text_width(&chart.x_label, s);
        let x = (left + (plot_w - tw) / 2).max(pad);
        c.text(x, h - pad - m.text_h, &chart.x_label, s, TEXT);
    }
    if !chart.y_label.is_empty() {
        let tw = text_width(&chart.y_label, s);
        let y = (top + (plot_h + tw) / 2).min(h - pad);
        c.text_up(pad, y, &chart.y_label, s, TEXT);
    }

    if let Some((x, y)) = legend {
        draw_legend(&mut c, chart, &m, x, y);
    }
    Ok(c)
}

/// The plot area and its axes.
struct Plot {
    left: i64,
    top: i64,
    w: i64,
    h: i64,
    x: Axis,
    y: Axis,
}

impl Plot {
    fn x_px(&self, v: f64) -> f64 {
        self.left as f64 + self.x.frac(v) * self.w as f64
    }

    fn y_px(&self, v: f64) -> f64 {
        self.top as f64 + (1.0 - self.y.frac(v)) * self.h as f64
    }

    /// The pixel column of a grid line at `x`, inside the plot.
    fn px_col(&self, x: f64) -> i64 {
        (x.floor() as i64).clamp(self.left, self.left + self.w - 1)
    }

    /// The pixel row of a grid line at `y`, inside the plot.
    fn px_row(&self, y: f64) -> i64 {
        (y.floor() as i64).clamp(self.top, self.top + self.h - 1)
    }
}

/// Places the plot and its axes, with `reserve_right` pixels kept free right of it.
fn layout(chart: &Chart, width: u32, height: u32, m: &Metrics, reserve_right: i64) -> Result<Plot> {
    let (w, h) = (i64::from(width), i64::from(height));
    let (s, pad, text_h) = (m.s, m.pad, m.text_h);

    // The drawable points and reference lines decide the axes' ranges.
    let drawable = |x: f64, y: f64| valid(x, chart.x_log) && valid(y, chart.y_log);
    let points = || {
        chart
            .series
            .iter()
            .flat_map(|se| se.points.iter())
            .filter(move |&&(x, y)| drawable(x, y))
    };
    let xs = points().map(|&(x, _)| x).chain(
        chart
            .v_lines
            .iter()
            .map(|(v, _)| *v)
            .filter(|&v| valid(v, chart.x_log)),
    );
    let ys = points().map(|&(_, y)| y).chain(
        chart
            .h_lines
            .iter()
            .map(|(v, _)| *v)
            .filter(|&v| valid(v, chart.y_log)),
    );

    // Vertical first: the y ticks depend on the plot's height, the left margin on the y tick
    // labels, the x ticks on the plot's width.
    let top = if chart.title.is_empty() {
        pad + text_h
    } else {
        title_band(width, height)
    };
    let x_label_h = if chart.x_label.is_empty() {
        0
    } else {
        text_h + pad
    };
    let bottom = m.tick + m.gap + text_h + pad + x_label_h;
    let plot_h = h - top - bottom;
    ensure!(
        plot_h >= 16,
        "a {width}x{height} chart is too small to hold a plot"
    );
    let y = Axis::build(chart.y_log, ys, plot_h as f64, (3 * text_h) as f64, "y")?;
    let y_labels_w = y
        .ticks
        .iter()
        .filter_map(|t| t.label.as_deref())
        .map(|l| text_width(l, s))
        .max()
        .unwrap_or(0);
    let y_label_w = if chart.y_label.is_empty() {
        0
    } else {
        text_h + pad
    };
    let left = pad + y_label_w + y_labels_w + m.gap + m.tick;
    let x_spacing = (8 * GLYPH_ADVANCE * s) as f64;
    let x_len = w - left - 2 * pad - reserve_right;
    let x = Axis::build(chart.x_log, xs, x_len as f64, x_spacing, "x")?;
    let last_x_label_w = x
        .ticks
        .iter()
        .rev()
        .find_map(|t| t.label.as_deref())
        .map_or(0, |l| text_width(l, s));
    let right = (2 * pad).max(last_x_label_w / 2 + pad) + reserve_right;
    let plot_w = w - left - right;
    ensure!(
        plot_w >= 16,
        "a {width}x{height} chart is too small to hold a plot"
    );
    Ok(Plot {
        left,
        top,
        w: plot_w,
        h: plot_h,
        x,
        y,
    })
}

/// Each series' points in pixels, `None` where a point cannot be drawn.
fn project(chart: &Chart, plot: &Plot) -> Vec<Vec<Option<Px>>> {
    chart
        .series
        .iter()
        .map(|se| {
            se.points
                .iter()
                .map(|&(x, y)| {
                    (valid(x, chart.x_log) && valid(y, chart.y_log))
                        .then(|| (plot.x_px(x), plot.y_px(y)))
                })
                .collect()
        })
        .collect()
}

/// Where each reference line's label goes (its backing rectangle; the text is inset by `gap`):
/// a horizontal line's at the plot's right end, above the line (below it at the top); a
/// vertical line's at the plot's top, right of the line (left of it at the right edge).
fn reference_labels<'c>(chart: &'c Chart, plot: &Plot, m: &Metrics) -> Vec<(Rect, &'c str)> {
    let (s, gap) = (m.s, m.gap);
    let (right, top) = (plot.left + plot.w, plot.top);
    let boxed = |x: i64, y: i64, label: &str| Rect {
        x0: x - gap,
        y0: y - gap,
        x1: x + text_width(label, s) + gap,
        y1: y + m.text_h + gap,
    };
    let mut out = Vec::new();
    for (v, label) in &chart.h_lines {
        if label.is_empty() || !valid(*v, chart.y_log) {
            continue;
        }
        let y = plot.px_row(plot.y_px(*v));
        let x = right - text_width(label, s) - 2 * gap;
        let above = y - gap - GLYPH_CAP * s;
        let ty = if above - gap >= top {
            above
        } else {
            y + 2 * gap
        };
        out.push((boxed(x, ty, label), label.as_str()));
    }
    for (v, label) in &chart.v_lines {
        if label.is_empty() || !valid(*v, chart.x_log) {
            continue;
        }
        let x = plot.px_col(plot.x_px(*v));
        let tw = text_width(label, s);
        let tx = if x + 2 * gap + tw + gap <= right {
            x + 2 * gap
        } else {
            x - 2 * gap - tw
        };
        out.push((boxed(tx, top + 2 * gap, label), label.as_str()));
    }
    out
}

fn legend_entries(chart: &Chart) -> impl Iterator<Item = (usize, &Series)> {
    chart
        .series
        .iter()
        .enumerate()
        .filter(|(_, se)| !se.label.is_empty())
}

/// The legend's box: `(width, height)`, or `None` when no series has a label.
fn legend_size(chart: &Chart, m: &Metrics) -> Option<(i64, i64)> {
    let s = m.s;
    let n = legend_entries(chart).count() as i64;
    let label_w = legend_entries(chart)
        .map(|(_, se)| text_width(&se.label, s))
        .max()?;
    let bw = 6 * s + 20 * s + 6 * s + label_w + 6 * s;
    let bh = 6 * s + (GLYPH_H * s + 4 * s) * n - 4 * s + 6 * s;
    Some((bw, bh))
}

/// The inside corner of the plot where a `bw` x `bh` legend covers least: its top-left corner,
/// and how much it covers (data sampled every 4 pixels, reference labels counting 1000 each).
fn best_corner(chart: &Chart, plot: &Plot, m: &Metrics, bw: i64, bh: i64) -> ((i64, i64), usize) {
    let margin = 8 * m.s;
    let (l, t) = (plot.left, plot.top);
    let (r, b) = (plot.left + plot.w, plot.top + plot.h);
    let corners = [
        (r - margin - bw, t + margin),
        (l + margin, t + margin),
        (r - margin - bw, b - margin - bh),
        (l + margin, b - margin - bh),
    ];
    // Enough for a marker's or line's edge to count.
    let reach = m.marker_r + 1.0;
    let samples = sample_data(&project(chart, plot), 4.0);
    let labels = reference_labels(chart, plot, m);
    let covered = |(x, y): (i64, i64)| {
        let (x0, y0) = (x as f64 - reach, y as f64 - reach);
        let (x1, y1) = ((x + bw) as f64 + reach, (y + bh) as f64 + reach);
        let data = samples
            .iter()
            .filter(|&&(px, py)| px >= x0 && px < x1 && py >= y0 && py < y1)
            .count();
        let refs = labels
            .iter()
            .filter(|(r, _)| r.x0 < x + bw && x < r.x1 && r.y0 < y + bh && y < r.y1)
            .count();
        data + 1000 * refs
    };
    corners
        .into_iter()
        .map(|corner| (corner, covered(corner)))
        // `min_by_key` keeps the first of equals.
        .min_by_key(|&(_, n)| n)
        .unwrap_or((corners[0], 0))
}

/// Draws the legend with its top-left corner at `(x0, y0)`.
fn draw_legend(c: &mut Canvas, chart: &Chart, m: &Metrics, x0: i64, y0: i64) {
    let Some((bw, bh)) = legend_size(chart, m) else {
        return;
    };
    let s = m.s;
    let (inner, swatch, row_h) = (6 * s, 20 * s, GLYPH_H * s + 4 * s);
    c.blend_rect(x0, y0, x0 + bw, y0 + bh, WHITE, 0.9);
    c.fill_rect(x0, y0, x0 + bw, y0 + 1, LEGEND_BORDER);
    c.fill_rect(x0, y0 + bh - 1, x0 + bw, y0 + bh, LEGEND_BORDER);
    c.fill_rect(x0, y0, x0 + 1, y0 + bh, LEGEND_BORDER);
    c.fill_rect(x0 + bw - 1, y0, x0 + bw, y0 + bh, LEGEND_BORDER);
    let mut mask = Mask::new(c.w, c.h);
    mask.set_clip(Rect {
        x0,
        y0,
        x1: x0 + bw,
        y1: y0 + bh,
    });
    for (row, (i, se)) in legend_entries(chart).enumerate() {
        let ty = y0 + inner + row_h * row as i64;
        let mid = (ty + GLYPH_CAP * s / 2) as f64 + 0.5;
        let (sx0, sx1) = ((x0 + inner) as f64, (x0 + inner + swatch) as f64);
        if matches!(se.style, Style::Line | Style::LineAndPoints) {
            mask.capsule((sx0 + m.line_r, mid), (sx1 - m.line_r, mid), m.line_r);
        }
        if matches!(se.style, Style::Points | Style::LineAndPoints) {
            let cx = (sx0 + sx1) / 2.0;
            mask.capsule((cx, mid), (cx, mid), m.marker_r);
        }
        mask.composite(c, series_colour(i));
        c.text(x0 + inner + swatch + inner, ty, &se.label, s, TEXT);
    }
}

/// The projected points, and points every `step` pixels along the segments between them.
fn sample_data(projected: &[Vec<Option<Px>>], step: f64) -> Vec<Px> {
    let mut out = Vec::new();
    for pts in projected {
        out.extend(pts.iter().flatten());
        for pair in pts.windows(2) {
            if let [Some(a), Some(b)] = pair {
                let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
                let n = ((len / step) as usize).min(4096);
                for k in 1..n {
                    let f = k as f64 / n as f64;
                    out.push((a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Axes and ticks

fn valid(v: f64, log: bool) -> bool {
    v.is_finite() && (!log || v > 0.0)
}

struct Tick {
    /// In data units.
    value: f64,
    label: Option<String>,
    /// Major ticks get a full grid line and tick mark; minor (log axes' 2..9) lighter, shorter.
    major: bool,
}

struct Axis {
    log: bool,
    /// The range in axis units: data units, or log10 of them on a log axis.
    lo: f64,
    hi: f64,
    ticks: Vec<Tick>,
}

impl Axis {
    /// An axis covering `values` (all valid for it), `len_px` long, with tick labels at least
    /// about `spacing_px` apart.
    fn build(
        log: bool,
        values: impl Iterator<Item = f64>,
        len_px: f64,
        spacing_px: f64,
        name: &str,
    ) -> Result<Axis> {
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values {
            min = min.min(v);
            max = max.max(v);
        }
        let empty = min > max;
        let axis = if log {
            Self::log(empty, min, max, len_px, spacing_px)
        } else {
            Self::linear(empty, min, max, len_px, spacing_px)
        };
        let axis =
            axis.with_context(|| format!("the {name} axis, for data in {min:e}..={max:e}"))?;
        Ok(axis)
    }

    fn linear(empty: bool, min: f64, max: f64, len_px: f64, spacing_px: f64) -> Result<Axis> {
        let (mut min, mut max) = if empty { (0.0, 1.0) } else { (min, max) };
        // Non-negative data mostly reads best against zero (latency, throughput), unless it sits
        // far from it.
        if min > 0.0 && min <= max / 3.0 {
            min = 0.0;
        }
        let span = max - min;
        if span <= max.abs().max(min.abs()) * 1e-12 {
            if min == 0.0 {
                max = 1.0;
            } else {
                let d = min.abs() * 0.1;
                (min, max) = (min - d, max + d);
            }
        }
        let target = (len_px / spacing_px).clamp(2.0, 10.0);
        let step = nice_step((max - min) / target);
        ensure!(
            step.is_finite() && step > 0.0,
            "the range cannot be represented"
        );
        let lo = (min / step).floor() * step;
        let hi = (max / step).ceil() * step;
        let n = ((hi - lo) / step).round();
        ensure!(
            lo.is_finite() && hi.is_finite() && hi > lo && (1.0..=100.0).contains(&n),
            "the range cannot be represented"
        );
        let max_abs = lo.abs().max(hi.abs());
        let si = !(1e-2..1e4).contains(&max_abs);
        let ticks = (0..=n as usize)
            .map(|i| {
                let mut value = lo + step * i as f64;
                if value.abs() < step * 1e-9 {
                    value = 0.0;
                }
                Tick {
                    value,
                    label: Some(linear_label(value, step, si)),
                    major: true,
                }
            })
            .collect();
        Ok(Axis {
            log: false,
            lo,
            hi,
            ticks,
        })
    }

    fn log(empty: bool, min: f64, max: f64, len_px: f64, spacing_px: f64) -> Result<Axis> {
        let (mut dlo, mut dhi) = if empty {
            (0.0, 1.0)
        } else {
            (min.log10().floor(), max.log10().ceil())
        };
        if dlo == dhi {
            (dlo, dhi) = (dlo - 1.0, dhi + 1.0);
        }
        ensure!(
            dlo.is_finite() && dhi.is_finite() && dhi - dlo <= 1000.0,
            "the range cannot be represented"
        );
        let (dlo, dhi) = (dlo as i32, dhi as i32);
        let decades = dhi - dlo;
        let per_decade = len_px / f64::from(decades);
        // Label every `every`-th decade so that labels stay `spacing_px` apart.
        let every = ((spacing_px / per_decade).ceil() as i32).max(1);
        // With room, label 2 and 5 in each decade too (log10(2) ~ 0.3 of a decade from 1).
        let label_2_5 = per_decade * 0.3 >= spacing_px;
        let minor = per_decade >= 40.0;
        let mut ticks = Vec::new();
        for d in dlo..=dhi {
            ticks.push(Tick {
                value: 10f64.powi(d),
                label: ((d - dlo) % every == 0).then(|| si_label(1, d)),
                major: true,
            });
            if d == dhi || !minor {
                continue;
            }
            for m in 2..=9 {
                ticks.push(Tick {
                    value: f64::from(m) * 10f64.powi(d),
                    label: (label_2_5 && (m == 2 || m == 5)).then(|| si_label(m, d)),
                    major: false,
                });
            }
        }
        Ok(Axis {
            log: true,
            lo: f64::from(dlo),
            hi: f64::from(dhi),
            ticks,
        })
    }

    /// Where `v` (valid for this axis) falls, from 0 at `lo` to 1 at `hi`.
    fn frac(&self, v: f64) -> f64 {
        let t = if self.log { v.log10() } else { v };
        (t - self.lo) / (self.hi - self.lo)
    }
}

/// The smallest of 1, 2, 2.5, 5 x 10^k at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return f64::NAN;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 + 1e-9 {
        1.0
    } else if f <= 2.0 + 1e-9 {
        2.0
    } else if f <= 2.5 + 1e-9 {
        2.5
    } else if f <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

const SI_PREFIXES: [&str; 11] = ["f", "p", "n", "u", "m", "", "k", "M", "G", "T", "P"];

/// `m x 10^d` (with `m` a small integer) as `100u`, `2k`, `1M`...; `1e-20` beyond the prefixes.
fn si_label(m: i32, d: i32) -> String {
    let q = d.div_euclid(3);
    let r = d.rem_euclid(3);
    match usize::try_from(q + 5).ok().and_then(|i| SI_PREFIXES.get(i)) {
        Some(prefix) => format!("{}{prefix}", i64::from(m) * 10i64.pow(r as u32)),
        None => format!("{m}e{d}"),
    }
}

/// A linear tick's label: as precise as the step needs, with an SI prefix when `si`.
fn linear_label(value: f64, step: f64, si: bool) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    // Beyond the prefixes (or the precision to tell ticks apart): scientific.
    if !(1e-15..1e18).contains(&value.abs()) || step < value.abs() * 1e-12 {
        return format!("{value:.2e}");
    }
    let q = if si {
        // Nudged up so that a tick at 1e-3 computed as 0.000999.. still reads `1m`.
        (((value.abs() * (1.0 + 1e-9)).log10() / 3.0).floor() as i32).clamp(-5, 5)
    } else {
        0
    };
    let scale = 1000f64.powi(q);
    let (v, st) = (value / scale, step / scale);
    // The fewest decimals that show the step exactly (ticks are multiples of it).
    let decimals = (0..=9)
        .find(|&d| {
            let x = st * 10f64.powi(d);
            (x - x.round()).abs() <= 1e-6 * x.max(1.0)
        })
        .unwrap_or(9) as usize;
    let mut text = format!("{v:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    if text == "-0" {
        text = "0".to_owned();
    }
    let prefix = usize::try_from(q + 5)
        .ok()
        .and_then(|i| SI_PREFIXES.get(i))
        .copied()
        .unwrap_or("");
    text + prefix
}

// ---------------------------------------------------------------------------------------------
// Raster

/// A half-open pixel rectangle `[x0, x1) x [y0, y1)`.
#[derive(Clone, Copy)]
struct Rect {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

/// An RGB8 image, white to start.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn clip(&self, r: Rect) -> Option<(usize, usize, usize, usize)> {
        let x0 = r.x0.clamp(0, self.w as i64) as usize;
        let x1 = r.x1.clamp(0, self.w as i64) as usize;
        let y0 = r.y0.clamp(0, self.h as i64) as usize;
        let y1 = r.y1.clamp(0, self.h as i64) as usize;
        (x0 < x1 && y0 < y1).then_some((x0, y0, x1, y1))
    }

    fn blend(&mut self, x: usize, y: usize, c: Rgb, a: f32) {
        let i = (y * self.w + x) * 3;
        if let Some(p) = self.px.get_mut(i..i + 3) {
            for (dst, src) in p.iter_mut().zip(c) {
                *dst = (f32::from(*dst) * (1.0 - a) + f32::from(src) * a).round() as u8;
            }
        }
    }

    fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        self.blend_rect(x0, y0, x1, y1, c, 1.0);
    }

    fn blend_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb, a: f32) {
        let Some((x0, y0, x1, y1)) = self.clip(Rect { x0, y0, x1, y1 }) else {
            return;
        };
        for y in y0..y1 {
            for x in x0..x1 {
                self.blend(x, y, c, a);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dashed_hline(&mut self, x0: i64, x1: i64, y: i64, thick: i64, on: i64, off: i64, c: Rgb) {
        let mut x = x0;
        while x < x1 {
            self.fill_rect(x, y, (x + on).min(x1), y + thick, c);
            x += on + off;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dashed_vline(&mut self, x: i64, y0: i64, y1: i64, thick: i64, on: i64, off: i64, c: Rgb) {
        // From the bottom up, so that the dashes line up with the x axis.
        let mut y = y1;
        while y > y0 {
            self.fill_rect(x, (y - on).max(y0), x + thick, y, c);
            y -= on + off;
        }
    }

    /// `text` with its top-left corner at `(x, y)`, `scale` pixels per font pixel.
    fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, c: Rgb) {
        for (i, ch) in text.chars().enumerate() {
            let gx0 = x + i as i64 * GLYPH_ADVANCE * scale;
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits & (1 << (GLYPH_W - 1 - col)) != 0 {
                        let px = gx0 + col * scale;
                        let py = y + row as i64 * scale;
                        self.fill_rect(px, py, px + scale, py + scale, c);
                    }
                }
            }
        }
    }

    /// `text` turned a quarter anticlockwise (reading upwards), starting at its bottom-left
    /// corner `(x, y)`.
    fn text_up(&mut self, x: i64, y: i64, text: &str, scale: i64, c: Rgb) {
        for (i, ch) in text.chars().enumerate() {
            let along0 = i as i64 * GLYPH_ADVANCE * scale;
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits & (1 << (GLYPH_W - 1 - col)) != 0 {
                        let px = x + row as i64 * scale;
                        let py = y - along0 - (col + 1) * scale;
                        self.fill_rect(px, py, px + scale, py + scale, c);
                    }
                }
            }
        }
    }
}

/// Anti-aliased coverage, 0..=1 per pixel, of one colour's shapes; composited once so that
/// overlapping segments and markers of a series do not darken each other. Reused from one
/// colour to the next: compositing clears what was drawn.
struct Mask {
    w: usize,
    h: usize,
    /// Where shapes may cover.
    clip: Rect,
    /// What shapes have covered since the last composite (empty when `x0 >= x1`).
    dirty: Rect,
    cov: Vec<f32>,
}

impl Mask {
    fn new(w: usize, h: usize) -> Mask {
        let all = Rect {
            x0: 0,
            y0: 0,
            x1: w as i64,
            y1: h as i64,
        };
        Mask {
            w,
            h,
            clip: all,
            dirty: Rect {
                x0: 0,
                y0: 0,
                x1: 0,
                y1: 0,
            },
            cov: vec![0.0; w * h],
        }
    }

    fn set_clip(&mut self, clip: Rect) {
        self.clip = Rect {
            x0: clip.x0.clamp(0, self.w as i64),
            y0: clip.y0.clamp(0, self.h as i64),
            x1: clip.x1.clamp(0, self.w as i64),
            y1: clip.y1.clamp(0, self.h as i64),
        };
    }

    /// Every pixel whose centre is within `r` of the segment `a..b` (a disc when `a == b`),
    /// with a one-pixel soft edge.
    fn capsule(&mut self, a: Px, b: Px, r: f64) {
        if ![a.0, a.1, b.0, b.1, r].iter().all(|v| v.is_finite()) {
            return;
        }
        let reach = r + 0.5;
        let bx0 = ((a.0.min(b.0) - reach).floor() as i64).max(self.clip.x0);
        let bx1 = ((a.0.max(b.0) + reach).ceil() as i64).min(self.clip.x1);
        let by0 = ((a.1.min(b.1) - reach).floor() as i64).max(self.clip.y0);
        let by1 = ((a.1.max(b.1) + reach).ceil() as i64).min(self.clip.y1);
        if bx0 >= bx1 || by0 >= by1 {
            return;
        }
        self.dirty = if self.dirty.x0 >= self.dirty.x1 {
            Rect {
                x0: bx0,
                y0: by0,
                x1: bx1,
                y1: by1,
            }
        } else {
            Rect {
                x0: self.dirty.x0.min(bx0),
                y0: self.dirty.y0.min(by0),
                x1: self.dirty.x1.max(bx1),
                y1: self.dirty.y1.max(by1),
            }
        };
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        for py in by0..by1 {
            let cy = py as f64 + 0.5;
            // Only the columns near the line on this row (the segment lies within `reach` of it).
            let (x0, x1) = if dy.abs() < 1e-9 {
                (bx0, bx1)
            } else {
                let xl = a.0 + (cy - a.1) * dx / dy;
                let e = reach * len2.sqrt() / dy.abs();
                (
                    ((xl - e).floor() as i64 - 1).max(bx0),
                    ((xl + e).ceil() as i64 + 1).min(bx1),
                )
            };
            for px in x0..x1 {
                let cx = px as f64 + 0.5;
                let t = if len2 > 0.0 {
                    (((cx - a.0) * dx + (cy - a.1) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (qx, qy) = (a.0 + dx * t - cx, a.1 + dy * t - cy);
                let dist = (qx * qx + qy * qy).sqrt();
                let cov = (r + 0.5 - dist).clamp(0.0, 1.0) as f32;
                if cov > 0.0 {
                    let i = py as usize * self.w + px as usize;
                    if let Some(m) = self.cov.get_mut(i) {
                        *m = m.max(cov);
                    }
                }
            }
        }
    }

    /// Blends `c` into `canvas` by the coverage, and clears the coverage.
    fn composite(&mut self, canvas: &mut Canvas, c: Rgb) {
        let dirty = std::mem::replace(
            &mut self.dirty,
            Rect {
                x0: 0,
                y0: 0,
                x1: 0,
                y1: 0,
            },
        );
        let Some((x0, y0, x1, y1)) = canvas.clip(dirty) else {
            return;
        };
        for y in y0..y1 {
            for x in x0..x1 {
                if let Some(m) = self.cov.get_mut(y * self.w + x) {
                    let a = std::mem::take(m);
                    if a > 0.0 {
                        canvas.blend(x, y, c, a);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Font

const GLYPH_W: i64 = 5;
/// Rows per glyph: 7 above the baseline, 1 for descenders.
const GLYPH_H: i64 = 8;
/// Rows above the baseline (the height of capitals and digits).
const GLYPH_CAP: i64 = 7;
/// Glyph width plus one column of spacing.
const GLYPH_ADVANCE: i64 = 6;

/// The width in pixels of `text` drawn at `scale`.
fn text_width(text: &str, scale: i64) -> i64 {
    let n = text.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (n * GLYPH_ADVANCE - 1) * scale
    }
}

fn glyph(c: char) -> &'static [u8; 8] {
    let i = (c as u32).wrapping_sub(32) as usize;
    FONT.get(i).unwrap_or(&FONT[(b'?' - 32) as usize])
}

/// ASCII 32..=126, 5 columns (bit 4 is the left one) by 8 rows (top first; row 7 is below the
/// baseline, for descenders). Drawn for this file.
#[rustfmt::skip]
const FONT: [[u8; 8]; 95] = [
    [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000], // ' '
    [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00100, 0b00000], // !
    [0b01010, 0b01010, 0b01010, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000], // "
    [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010, 0b00000], // #
    [0b00100, 0b01111, 0b10100, 0b01110, 0b00101, 0b11110, 0b00100, 0b00000], // $
    [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011, 0b00000], // %
    [0b01100, 0b10010, 0b10100, 0b01000, 0b10101, 0b10010, 0b01101, 0b00000], // &
    [0b00100, 0b00100, 0b01000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000], // '
    [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010, 0b00000], // (
    [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000, 0b00000], // )
    [0b00000, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0b00000, 0b00000], // *
    [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000, 0b00000], // +
    [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000], // ,
    [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000, 0b00000], // -
    [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100, 0b00000], // .
    [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000, 0b00000], // /
    [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110, 0b00000], // 0
    [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000], // 1
    [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000], // 2
    [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110, 0b00000], // 3
    [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010, 0b00000], // 4
    [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110, 0b00000], // 5
    [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110, 0b00000], // 6
    [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00000], // 7
    [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110, 0b00000], // 8
    [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100, 0b00000], // 9
    [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000, 0b00000], // :
    [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b00100, 0b01000, 0b00000], // ;
    [0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010, 0b00000], // <
    [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000], // =
    [0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000, 0b00000], // >
    [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100, 0b00000], // ?
    [0b01110, 0b10001, 0b00001, 0b01101, 0b10101, 0b10101, 0b01110, 0b00000], // @
    [0b01110, 0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b00000], // A
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110, 0b00000], // B
    [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000], // C
    [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100, 0b00000], // D
    [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111, 0b00000], // E
    [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000], // F
    [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111, 0b00000], // G
    [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000], // H
    [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000], // I
    [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100, 0b00000], // J
    [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001, 0b00000], // K
    [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111, 0b00000], // L
    [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001, 0b00000], // M
    [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0b00000], // N
    [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000], // O
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000], // P
    [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101, 0b00000], // Q
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001, 0b00000], // R
    [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110, 0b00000], // S
    [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000], // T
    [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000], // U
    [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000], // V
    [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010, 0b00000], // W
    [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001, 0b00000], // X
    [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00000], // Y
    [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111, 0b00000], // Z
    [0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110, 0b00000], // [
    [0b00000, 0b10000, 0b01000, 0b00100, 0b00010, 0b00001, 0b00000, 0b00000], // \
    [0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110, 0b00000], // ]
    [0b00100, 0b01010, 0b10001, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000], // ^
    [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111], // _
    [0b01000, 0b00100, 0b00010, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000], // `
    [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111, 0b00000], // a
    [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110, 0b00000], // b
    [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000], // c
    [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111, 0b00000], // d
    [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0b00000], // e
    [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000, 0b00000], // f
    [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110], // g
    [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000], // h
    [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000], // i
    [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100], // j
    [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b00000], // k
    [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000], // l
    [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001, 0b00000], // m
    [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000], // n
    [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000], // o
    [0b00000, 0b00000, 0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000], // p
    [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b00001], // q
    [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000, 0b00000], // r
    [0b00000, 0b00000, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110, 0b00000], // s
    [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110, 0b00000], // t
    [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0b00000], // u
    [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000], // v
    [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010, 0b00000], // w
    [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b00000], // x
    [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110], // y
    [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000], // z
    [0b00010, 0b00100, 0b00100, 0b01000, 0b00100, 0b00100, 0b00010, 0b00000], // {
    [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000], // |
    [0b01000, 0b00100, 0b00100, 0b00010, 0b00100, 0b00100, 0b01000, 0b00000], // }
    [0b00000, 0b00000, 0b01000, 0b10101, 0b00010, 0b00000, 0b00000, 0b00000], // ~
];

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_png(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("xtask-plot-{}-{name}.png", std::process::id()))
    }

    /// Decodes an RGB8 PNG: (width, height, pixels).
    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let file = std::io::BufReader::new(File::open(path).expect("open"));
        let mut reader = png::Decoder::new(file).read_info().expect("png header");
        let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
        let info = reader.next_frame(&mut buf).expect("png frame");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn has_colour(px: &[u8], c: Rgb) -> bool {
        px.chunks_exact(3).any(|p| p == c)
    }

    fn latency_chart() -> Chart {
        let curve = |scale: f64| -> Vec<(f64, f64)> {
            (0..12)
                .map(|i| {
                    let rps = 2e4 * 1.5f64.powi(i);
                    let load = rps / 2.2e6;
                    (rps, scale * 2e-4 / (1.0 - load))
                })
                .collect()
        };
        Chart {
            title: "gpubridge serve: latency against throughput".to_owned(),
            x_label: "throughput (req/s)".to_owned(),
            y_label: "latency (s)".to_owned(),
            x_log: true,
            y_log: true,
            series: vec![
                Series {
                    label: "P50".to_owned(),
                    points: curve(1.0),
                    style: Style::LineAndPoints,
                },
                Series {
                    label: "P99".to_owned(),
                    points: curve(4.0),
                    style: Style::Line,
                },
            ],
            h_lines: vec![(1e-3, "P50 <= 1 ms".to_owned())],
            v_lines: vec![(1e6, "1M req/s".to_owned())],
        }
    }

    #[test]
    fn two_series_on_log_axes_render_and_decode() {
        let chart = latency_chart();
        let path = temp_png("log");
        render_png(&chart, &path, 800, 500).expect("render");
        let (w, h, px) = decode(&path);
        std::fs::remove_file(&path).ok();
        assert_eq!((w, h), (800, 500));
        assert!(has_colour(&px, PALETTE[0]), "the first series' colour");
        assert!(has_colour(&px, PALETTE[1]), "the second series' colour");
        assert!(!has_colour(&px, PALETTE[2]), "no third series");

        // The title band holds dark pixels, which a blank title (same layout) does not draw.
        let band = |px: &[u8]| {
            // Less the bottom padding, where the plot's frame starts.
            let rows = (title_band(800, 500) - pad(text_scale(800, 500))) as usize;
            (0..rows).any(|y| (200..600).any(|x| px[(y * 800 + x) * 3] < 128))
        };
        assert!(band(&px), "the title is drawn");
        let blank = Chart {
            title: " ".to_owned(),
            ..chart
        };
        let c = render(&blank, 800, 500).expect("render");
        assert!(!band(&c.px), "only the title draws there");
    }

    #[test]
    fn empty_charts_render() {
        let path = temp_png("empty");
        render_png(&Chart::default(), &path, 640, 480).expect("render");
        let (w, h, px) = decode(&path);
        std::fs::remove_file(&path).ok();
        assert_eq!((w, h), (640, 480));
        assert!(px.chunks_exact(3).any(|p| p == FRAME), "the frame is drawn");
        let log = Chart {
            x_log: true,
            y_log: true,
            series: vec![Series {
                label: "nothing".to_owned(),
                points: vec![],
                style: Style::Points,
            }],
            ..Chart::default()
        };
        render(&log, 640, 480).expect("render");
    }

    #[test]
    fn undrawable_points_are_skipped() {
        let clean = latency_chart();
        let mut dirty = clean.clone();
        // Appended after the last good point, so the lines are unchanged.
        for se in &mut dirty.series {
            se.points.extend([
                (f64::NAN, 1e-3),
                (1e5, f64::INFINITY),
                (-1e5, 1e-3),
                (1e5, 0.0),
                (f64::NEG_INFINITY, f64::NAN),
            ]);
        }
        dirty.series.push(Series {
            label: String::new(),
            points: vec![(f64::NAN, f64::NAN), (0.0, 1.0), (1.0, -1.0)],
            style: Style::LineAndPoints,
        });
        dirty.h_lines.push((f64::NAN, "never".to_owned()));
        dirty.v_lines.push((-5.0, "never".to_owned()));
        let a = render(&clean, 800, 500).expect("render");
        let b = render(&dirty, 800, 500).expect("render");
        assert!(a.px == b.px, "invalid points change nothing");
        assert!(!has_colour(&b.px, PALETTE[2]));

        // On linear axes, the same points are drawable (negative, zero) or not (NaN, inf).
        let linear = Chart {
            series: vec![Series {
                label: "x".to_owned(),
                points: vec![
                    (f64::NAN, 1.0),
                    (0.0, -1.0),
                    (1.0, f64::INFINITY),
                    (2.0, 3.0),
                ],
                style: Style::Line,
            }],
            ..Chart::default()
        };
        render(&linear, 800, 500).expect("render");
    }

    #[test]
    fn output_is_deterministic() {
        let chart = latency_chart();
        let encode = || {
            let c = render(&chart, 1200, 800).expect("render");
            let mut bytes = Vec::new();
            encode_png(&c, &mut bytes).expect("encode");
            bytes
        };
        assert!(encode() == encode());
    }

    #[test]
    fn awkward_inputs_error_or_render_without_panicking() {
        let one = |x: f64, y: f64, x_log: bool, y_log: bool| Chart {
            x_log,
            y_log,
            series: vec![Series {
                label: "one".to_owned(),
                points: vec![(x, y)],
                style: Style::Line,
            }],
            ..Chart::default()
        };
        for chart in [
            one(5.0, 5.0, false, false),
            one(0.0, 0.0, false, false),
            one(1e-300, 1e300, true, true),
            one(f64::MIN_POSITIVE / 1e10, f64::MAX, true, true),
            one(-1e300, 1e300, false, false),
        ] {
            render(&chart, 400, 300).expect("render");
        }
        let huge = Chart {
            series: vec![Series {
                label: "huge".to_owned(),
                points: vec![(-f64::MAX, 0.0), (f64::MAX, 1.0)],
                style: Style::Points,
            }],
            ..Chart::default()
        };
        assert!(render(&huge, 400, 300).is_err());
        let wide = Chart {
            title: "t".repeat(300),
            series: vec![Series {
                label: "l".repeat(300),
                points: vec![(1.0, 1.0), (2.0, 2.0)],
                style: Style::LineAndPoints,
            }],
            h_lines: vec![(1.5, "h".repeat(300))],
            v_lines: vec![(1.5, "v".repeat(300))],
            ..Chart::default()
        };
        render(&wide, 400, 300).expect("render, clipped");
        assert!(render(&Chart::default(), 10, 10).is_err());
        assert!(render(&Chart::default(), 5000, 300).is_err());
        let path = std::env::temp_dir().join("xtask-plot-no-such-dir/x.png");
        assert!(render_png(&Chart::default(), &path, 400, 300).is_err());
    }

    #[test]
    fn tick_labels() {
        assert_eq!(si_label(1, -4), "100u");
        assert_eq!(si_label(1, -3), "1m");
        assert_eq!(si_label(1, 0), "1");
        assert_eq!(si_label(1, 3), "1k");
        assert_eq!(si_label(1, 4), "10k");
        assert_eq!(si_label(2, 5), "200k");
        assert_eq!(si_label(1, 6), "1M");
        assert_eq!(si_label(5, -7), "500n");
        assert_eq!(si_label(1, 20), "1e20");

        let axis = Axis::linear(false, 0.0, 1.2e6, 500.0, 100.0).expect("axis");
        let labels: Vec<_> = axis.ticks.iter().filter_map(|t| t.label.clone()).collect();
        assert_eq!(labels, ["0", "250k", "500k", "750k", "1M", "1.25M"]);
        let axis = Axis::linear(false, 0.1, 0.95, 500.0, 100.0).expect("axis");
        let labels: Vec<_> = axis.ticks.iter().filter_map(|t| t.label.clone()).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        let axis = Axis::linear(false, 2e-4, 9e-4, 500.0, 100.0).expect("axis");
        let labels: Vec<_> = axis.ticks.iter().filter_map(|t| t.label.clone()).collect();
        assert_eq!(labels, ["0", "200u", "400u", "600u", "800u", "1m"]);
        let axis = Axis::linear(false, -3.0, 7.0, 500.0, 100.0).expect("axis");
        let labels: Vec<_> = axis.ticks.iter().filter_map(|t| t.label.clone()).collect();
        assert_eq!(labels, ["-4", "-2", "0", "2", "4", "6", "8"]);

        let axis = Axis::log(false, 3e-5, 2e-2, 400.0, 40.0).expect("axis");
        let labels: Vec<_> = axis.ticks.iter().filter_map(|t| t.label.clone()).collect();
        assert_eq!(labels, ["10u", "100u", "1m", "10m", "100m"]);
    }

    #[test]
    fn every_printable_glyph_has_ink_within_five_columns() {
        for (i, g) in FONT.iter().enumerate() {
            assert!(g.iter().all(|row| row >> GLYPH_W == 0), "glyph {}", i + 32);
            assert_eq!(g.iter().any(|&row| row != 0), i != 0, "glyph {}", i + 32);
        }
        assert_eq!(glyph('\u{e9}'), glyph('?'));
    }

    /// `XTASK_PLOT_OUT=/tmp/example.png cargo test -p xtask plot::tests::example` renders the
    /// latency chart for a look.
    #[test]
    fn example() {
        if let Some(path) = std::env::var_os("XTASK_PLOT_OUT") {
            render_png(&latency_chart(), Path::new(&path), 1200, 800).expect("render");
        }
    }
}
