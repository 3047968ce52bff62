//! Loss curves per stage (plotters, pure Rust: bitmap backend with the committed DejaVu Sans
//! font, `data/fonts/DejaVuSans.ttf`, registered once).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::error::{io_err, CurriculumError, Result};
use crate::run::RunDir;

static FONT: &[u8] = include_bytes!("../../../data/fonts/DejaVuSans.ttf");
static REGISTERED: OnceLock<bool> = OnceLock::new();

fn register() -> bool {
    *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    })
}

/// Draws `loss.*` series (one line per task and the total) against the step into a PNG.
pub fn plot_losses(
    title: &str,
    series: &BTreeMap<String, Vec<(f64, f64)>>,
    path: &Path,
) -> Result<()> {
    plot_series(title, ("update", "loss"), series, path)
}

/// Draws named `(x, y)` series as lines with point markers (so a one-point series shows)
/// into a PNG, with the axis descriptions `axes = (x, y)`; a series named `total` is bold.
pub fn plot_series(
    title: &str,
    axes: (&str, &str),
    series: &BTreeMap<String, Vec<(f64, f64)>>,
    path: &Path,
) -> Result<()> {
    let perr = |reason: String| CurriculumError::Plot {
        path: path.to_path_buf(),
        reason,
    };
    if !register() {
        return Err(perr("the embedded font could not be registered".into()));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let pts = series.values().flatten();
    let (mut x1, mut y0, mut y1) = (1f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        if y.is_finite() {
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.png"));
    {
        let root = BitMapBackend::new(&tmp, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 28))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(0f64..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| perr(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc(axes.0)
            .y_desc(axes.1)
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()
            .map_err(|e| perr(e.to_string()))?;
        for (i, (label, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let style = if label == "total" {
                BLACK.stroke_width(3)
            } else {
                color.stroke_width(2)
            };
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))
                .map_err(|e| perr(e.to_string()))?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, style.color.filled())))
                .map_err(|e| perr(e.to_string()))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| perr(e.to_string()))?;
        root.present().map_err(|e| perr(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// `plots/<stage>.png` from the run's `metrics.jsonl`.
pub fn plot_stage(run: &RunDir, stage: &str) -> Result<()> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for l in run.read_metrics()? {
        if l.get("stage").and_then(|s| s.as_str()) != Some(stage) {
            continue;
        }
        let Some(step) = l.get("step").and_then(serde_json::Value::as_f64) else {
            continue;
        };
        if let Some(o) = l.as_object() {
            for (k, v) in o {
                if let (Some(task), Some(y)) = (k.strip_prefix("loss."), v.as_f64()) {
                    series.entry(task.to_string()).or_default().push((step, y));
                }
            }
        }
    }
    plot_losses(&format!("{stage} stage: losses"), &series, &run.plot(stage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let p = dir.path().join("plots").join("token.png");
        let mut s = BTreeMap::new();
        s.insert("MLM".to_string(), vec![(1.0, 3.0), (2.0, 2.5), (3.0, 2.0)]);
        s.insert(
            "total".to_string(),
            vec![(1.0, 5.0), (2.0, 4.0), (3.0, 3.5)],
        );
        plot_losses("token stage", &s, &p)?;
        let bytes = std::fs::read(&p).map_err(io_err(&p))?;
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 5000);
        Ok(())
    }
}
