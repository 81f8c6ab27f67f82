//! SVG plots of one run (plotters, SVG backend: no system fonts needed): latency over time and
//! the latency distribution (a percentile spectrum, the usual HdrHistogram view).

use std::path::Path;

use plotters::prelude::*;

use crate::run::Results;

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e}")
}

/// A series name for one measured operation.
fn series_name(phase: &str, op: &str) -> String {
    if phase == op {
        phase.to_owned()
    } else {
        format!("{phase} {op}")
    }
}

/// The x position of percentile `q` on a "nines" axis: 0 at 0%, 1 at 90%, 2 at 99%, ...
pub fn nines(q: f64) -> f64 {
    let missing = (1.0 - q / 100.0).max(1e-5);
    -missing.log10()
}

/// p99 per second of every phase, one line each, on a log scale.
pub fn latency_over_time(results: &Results, path: &Path) -> anyhow::Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = results
        .phases
        .iter()
        .filter(|p| p.summary.ok > 0)
        .map(|p| {
            let points = p
                .summary
                .timeline
                .iter()
                .filter(|t| t.count > 0)
                .map(|t| (f64::from(t.second), t.p99_ms.max(0.01)))
                .collect();
            (series_name(&p.phase, &p.op), points)
        })
        .collect();
    let x_max = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        + 1.0;
    let y_max = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 2.0;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: p99 latency per second of each phase", results.label),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (0.01f64..y_max).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("second of the phase (by intended send time)")
        .y_desc("p99 latency (ms)")
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Latency by percentile for every phase, and post-to-feed latency per author size.
pub fn latency_distribution(results: &Results, path: &Path) -> anyhow::Result<()> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = results
        .phases
        .iter()
        .filter(|p| p.summary.ok > 0)
        .map(|p| {
            let points = p
                .summary
                .spectrum
                .iter()
                .map(|(q, ms)| (nines(*q), ms.max(0.01)))
                .collect();
            (series_name(&p.phase, &p.op), points)
        })
        .collect();
    for v in &results.visibility {
        let points = v
            .summary
            .spectrum
            .iter()
            .map(|(q, ms)| (nines(*q), ms.max(0.01)))
            .collect();
        series.push((
            format!("post→feed, {} followers", v.author_followers),
            points,
        ));
    }
    let y_max = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 2.0;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: latency by percentile", results.label),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..5.0, (0.01f64..y_max).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(6)
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "0%".into(),
            1 => "90%".into(),
            2 => "99%".into(),
            3 => "99.9%".into(),
            4 => "99.99%".into(),
            _ => "max".into(),
        })
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nines_axis_puts_each_nine_one_step_further() {
        assert!((nines(0.0) - 0.0).abs() < 1e-9);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert!(
            (nines(100.0) - 5.0).abs() < 1e-9,
            "the max sits at the right edge"
        );
    }
}
