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

fn draw<DB: DrawingBackend>(summary: &Summary, root: DrawingArea<DB, plotters::coord::Shift>) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let rows: Vec<&ConfigSummary> = summary.rows.iter().filter(|r| r.n > 0).collect();
    let x_max = rows.iter().map(|r| r.mean_thinking_tokens).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Accuracy vs thinking tokens ({} problems)", summary.problems), ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..100f64)
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
            chart
                .draw_series(std::iter::once(Text::new(
                    r.config.clone(),
                    (x, 100.0 * r.accuracy + 2.5),
                    ("sans-serif", 13).into_font().color(&color),
                )))
                .map_err(|e| e.to_string())?;
        }
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
