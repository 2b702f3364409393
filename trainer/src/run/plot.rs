//! Training curves as PNG: one panel per metric, against the step.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One panel: a y-axis label and its (step, value) points.
pub struct Panel<'a> {
    /// Axis label.
    pub label: &'a str,
    /// Points, x ascending.
    pub points: Vec<(f64, f64)>,
    /// Draw y on a log scale (losses).
    pub log_y: bool,
}

/// Draw the panels stacked vertically into a PNG.
pub fn curves(png: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    reckon::eval::plot::ensure_font();
    let height = 60 + 260 * panels.len() as u32;
    let root = BitMapBackend::new(png, (900, height)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting {}: {e}", png.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root.titled(title, ("sans-serif", 24)).map_err(|e| err(&e))?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (panel, area) in panels.iter().zip(areas) {
        let pts: Vec<(f64, f64)> = panel.points.iter().copied().filter(|(_, y)| y.is_finite() && (!panel.log_y || *y > 0.0)).collect();
        if pts.is_empty() {
            continue;
        }
        let x_max = pts.iter().map(|p| p.0).fold(1.0, f64::max);
        let x_min = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min).min(x_max - 1.0);
        let y_min = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let y_max = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let pad = ((y_max - y_min) * 0.05).max(1e-9);
        let mut builder = ChartBuilder::on(&area);
        builder.margin(12).x_label_area_size(40).y_label_area_size(70);
        let color = RGBColor(31, 119, 180);
        if panel.log_y {
            let mut chart = builder
                .build_cartesian_2d(x_min..x_max, (y_min * 0.9..y_max * 1.1).log_scale())
                .map_err(|e| err(&e))?;
            chart.configure_mesh().x_desc("step").y_desc(panel.label).label_style(("sans-serif", 14)).draw().map_err(|e| err(&e))?;
            chart.draw_series(LineSeries::new(pts, color.stroke_width(2))).map_err(|e| err(&e))?;
        } else {
            let mut chart = builder.build_cartesian_2d(x_min..x_max, y_min - pad..y_max + pad).map_err(|e| err(&e))?;
            chart.configure_mesh().x_desc("step").y_desc(panel.label).label_style(("sans-serif", 14)).draw().map_err(|e| err(&e))?;
            chart.draw_series(LineSeries::new(pts, color.stroke_width(2))).map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
