//! Accuracy against mean thinking tokens: one curve per model, one point per
//! budget, with 95% intervals, as PNG and SVG.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::report::{ConfigSummary, Summary};
use crate::error::{ReckonError, Result};

/// DejaVu Sans, shipped with the source (see assets/fonts/DejaVu-LICENSE):
/// text in plots must not depend on the fonts a machine happens to have.
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Register the shipped font as "sans-serif" (once per process); every
/// plot of the project, the trainer's too, draws with it.
pub fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            log::warn!("could not register the plot font");
        }
    });
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// A point label's size in pixels, per character and in height (13 px text).
const LABEL_CHAR_W: i32 = 8;
const LABEL_H: i32 = 15;

/// Top-left corners for point labels of `sizes` (w, h) next to `points`
/// (pixels): for each in turn, the first spot around its point (above,
/// below, right, left, then further out) whose box overlaps no label placed
/// before it and no point's marker; the spot above when every one does.
pub(crate) fn place_labels(points: &[(i32, i32)], sizes: &[(i32, i32)]) -> Vec<(i32, i32)> {
    type Rect = (i32, i32, i32, i32);
    let overlaps = |a: Rect, b: Rect| a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3;
    let markers: Vec<Rect> = points.iter().map(|&(x, y)| (x - 6, y - 6, x + 6, y + 6)).collect();
    let mut placed: Vec<Rect> = Vec::new();
    let mut out = Vec::new();
    for (&(px, py), &(w, h)) in points.iter().zip(sizes) {
        let mut spots = Vec::new();
        for ring in 0..8 {
            let d = 8 + ring * (h + 2);
            spots.extend([(px - w / 2, py - h - d), (px - w / 2, py + d), (px + d, py - h / 2), (px - w - d, py - h / 2)]);
            spots.extend([(px + d, py - h - d), (px - w - d, py - h - d), (px + d, py + d), (px - w - d, py + d)]);
        }
        let free = |&(x, y): &(i32, i32)| {
            let r = (x, y, x + w, y + h);
            !placed.iter().chain(&markers).any(|&o| overlaps(r, o))
        };
        let (x, y) = spots.iter().copied().find(free).unwrap_or(spots[0]);
        placed.push((x, y, x + w, y + h));
        out.push((x, y));
    }
    out
}

/// Plot size in pixels.
pub const SIZE: (u32, u32) = (900, 600);

/// Draw the plot to both files.
pub fn accuracy_vs_tokens(summary: &Summary, png: &Path, svg: &Path) -> Result<()> {
    ensure_font();
    draw(summary, BitMapBackend::new(png, SIZE).into_drawing_area())
        .map_err(|e| ReckonError::Internal(format!("plotting {}: {e}", png.display())))?;
    draw(summary, SVGBackend::new(svg, SIZE).into_drawing_area())
        .map_err(|e| ReckonError::Internal(format!("plotting {}: {e}", svg.display())))?;
    Ok(())
}

/// The accuracy axis in percent: whole tens around every CI, with a band
/// of ten below the lowest for the legend, so models a few points apart
/// are told apart (a fixed 0–100 squeezes 20–30% into a sliver).
fn y_range(cis: &[(f64, f64)]) -> (f64, f64) {
    let low = cis.iter().map(|c| 100.0 * c.0).fold(100.0, f64::min);
    let high = cis.iter().map(|c| 100.0 * c.1).fold(0.0, f64::max);
    if low > high {
        return (0.0, 100.0);
    }
    let lo = ((low / 10.0).floor() * 10.0 - 10.0).max(0.0);
    let hi = ((high / 10.0).ceil() * 10.0).clamp(lo + 10.0, 100.0);
    (lo, hi)
}

fn draw<DB: DrawingBackend>(summary: &Summary, root: DrawingArea<DB, plotters::coord::Shift>) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let rows: Vec<&ConfigSummary> = summary.rows.iter().filter(|r| r.n > 0).collect();
    let x_max = rows.iter().map(|r| r.mean_thinking_tokens).fold(1.0, f64::max) * 1.15;
    let (y_min, y_max) = y_range(&rows.iter().map(|r| (r.ci95_low, r.ci95_high)).collect::<Vec<_>>());
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Accuracy vs thinking tokens ({} problems)", summary.problems), ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, y_min..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("mean thinking tokens per problem (injected included)")
        .y_desc("accuracy (%)")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())?;
    let mut models: Vec<&str> = Vec::new();
    for r in &rows {
        if !models.contains(&r.model.as_str()) {
            models.push(&r.model);
        }
    }
    let mut labels: Vec<((i32, i32), String, RGBColor)> = Vec::new();
    for (i, model) in models.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts: Vec<&&ConfigSummary> = rows.iter().filter(|r| r.model == *model).collect();
        pts.sort_by(|a, b| a.mean_thinking_tokens.total_cmp(&b.mean_thinking_tokens));
        let line: Vec<(f64, f64)> = pts.iter().map(|r| (r.mean_thinking_tokens, 100.0 * r.accuracy)).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(model.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(line.iter().map(|&p| Circle::new(p, 5, color.filled())))
            .map_err(|e| e.to_string())?;
        for r in &pts {
            let x = r.mean_thinking_tokens;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, 100.0 * r.ci95_low), (x, 100.0 * r.ci95_high)],
                    color.mix(0.5).stroke_width(1),
                )))
                .map_err(|e| e.to_string())?;
            labels.push((chart.backend_coord(&(x, 100.0 * r.accuracy)), r.config.clone(), color));
        }
    }
    // Point labels, placed where they overlap no other label or point.
    let points: Vec<(i32, i32)> = labels.iter().map(|(p, _, _)| *p).collect();
    let sizes: Vec<(i32, i32)> = labels.iter().map(|(_, text, _)| (LABEL_CHAR_W * text.chars().count() as i32, LABEL_H)).collect();
    for ((_, text, color), (lx, ly)) in labels.iter().zip(place_labels(&points, &sizes)) {
        root.draw(&Text::new(text.clone(), (lx, ly), ("sans-serif", 13).into_font().color(color)))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_axis_spans_every_interval_in_whole_tens() {
        // The claim's rows: 15.5–34.1%.
        assert_eq!(y_range(&[(0.155, 0.266), (0.218, 0.341)]), (0.0, 40.0));
        assert_eq!(y_range(&[(0.62, 0.81), (0.70, 0.88)]), (50.0, 90.0));
        assert_eq!(y_range(&[(0.91, 1.0)]), (80.0, 100.0));
        assert_eq!(y_range(&[(0.0, 0.0)]), (0.0, 10.0));
        assert_eq!(y_range(&[]), (0.0, 100.0));
    }

    #[test]
    fn labels_of_crowded_points_do_not_overlap_each_other_or_the_points() {
        // Three curves whose points nearly coincide (as base, SFT and RL do
        // at a low cap), plus a spread-out one.
        let points = vec![(100, 300), (103, 302), (98, 297), (101, 301), (400, 200), (402, 204), (700, 100)];
        let sizes: Vec<(i32, i32)> = ["cap256", "cap256", "cap256", "cap512+1w", "cap512", "cap512", "cap1024"]
            .iter()
            .map(|t| (LABEL_CHAR_W * t.len() as i32, LABEL_H))
            .collect();
        let at = place_labels(&points, &sizes);
        let rect = |i: usize| (at[i].0, at[i].1, at[i].0 + sizes[i].0, at[i].1 + sizes[i].1);
        for i in 0..points.len() {
            for j in 0..i {
                let (a, b) = (rect(i), rect(j));
                assert!(!(a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3), "labels {i} and {j} overlap: {a:?} {b:?}");
            }
            for &(x, y) in &points {
                let a = rect(i);
                assert!(!(a.0 < x + 6 && x - 6 < a.2 && a.1 < y + 6 && y - 6 < a.3), "label {i} covers the point at {x},{y}");
            }
            // Each label stays near its point.
            let (cx, cy) = (at[i].0 + sizes[i].0 / 2, at[i].1 + sizes[i].1 / 2);
            assert!((cx - points[i].0).abs() < 200 && (cy - points[i].1).abs() < 200, "label {i} strayed to {cx},{cy}");
        }
    }
}
