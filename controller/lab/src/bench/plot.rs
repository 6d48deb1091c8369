//! A table as a PNG: one horizontal bar per path at its median, a whisker
//! from its fastest to its slowest run, the floor in its own colour.

use std::{path::Path, sync::OnceLock};

use plotters::{
    coord::ranged1d::SegmentValue,
    prelude::*,
    style::{register_font, FontStyle},
};

use super::{report::Table, stats::Summary};

/// Debian's `fonts-dejavu-core` (the bootstrap installs it): plotters draws
/// text only with a font it was given.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT)
                .map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
            register_font(
                "sans-serif",
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .map_err(|_| format!("{FONT} is not a font plotters can read"))
        })
        .clone()
}

pub fn bars(table: &Table, path: &Path) -> Result<(), String> {
    font()?;
    let rows: Vec<(String, Summary)> = table
        .rows
        .iter()
        .map(|r| (r.name.clone(), Summary::of(&r.samples)))
        .collect();
    let n = rows.len().max(1);
    let top = rows
        .iter()
        .filter(|(_, s)| s.runs > 0)
        .map(|(_, s)| s.max)
        .fold(0.0, f64::max);
    let top = if top > 0.0 { top * 1.18 } else { 1.0 };
    let label_width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(4) as u32 * 8 + 16;
    let height = 90 + 34 * n as u32;
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let better = match table.better {
        super::report::Better::Higher => "higher is better",
        super::report::Better::Lower => "lower is better",
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(&table.title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(label_width.min(520))
        .build_cartesian_2d(0.0..top, (0..n).into_segmented())
        .map_err(e)?;
    let names: Vec<String> = rows.iter().map(|(name, _)| name.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(format!("{} ({better})", table.unit))
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            // The first row on top, as in the table.
            SegmentValue::CenterOf(i) if *i < n => names[n - 1 - i].clone(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    for (row, (name, s)) in rows.iter().enumerate() {
        let i = n - 1 - row;
        if s.runs == 0 {
            chart
                .draw_series(std::iter::once(Text::new(
                    "failed",
                    (0.0, SegmentValue::CenterOf(i)),
                    ("sans-serif", 13).into_font(),
                )))
                .map_err(e)?;
            continue;
        }
        let colour = if table.floor.as_deref() == Some(name) {
            RGBColor(150, 150, 150)
        } else {
            RGBColor(31, 119, 180)
        };
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (s.median, SegmentValue::Exact(i + 1)),
            ],
            colour.filled(),
        );
        bar.set_margin(5, 5, 0, 0);
        chart.draw_series(std::iter::once(bar)).map_err(e)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![
                    (s.min, SegmentValue::CenterOf(i)),
                    (s.max, SegmentValue::CenterOf(i)),
                ],
                BLACK.stroke_width(2),
            )))
            .map_err(e)?;
        let label = match table.ratio(&table.rows[row]) {
            Some(r) if table.floor.as_deref() != Some(name) => {
                format!("{} (×{r:.2})", super::report::number(s.median))
            }
            _ => super::report::number(s.median),
        };
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (s.max.max(s.median) + top * 0.01, SegmentValue::CenterOf(i)),
                ("sans-serif", 13).into_font(),
            )))
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::Better;

    #[test]
    fn a_table_plots_to_a_png() {
        if font().is_err() {
            // The bootstrap installs the font; a bare `cargo test` elsewhere
            // says why it did not draw rather than failing.
            eprintln!("skipped: {FONT} missing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.png");
        let table = Table::new("t", "TCP, 1 stream", "Gbit/s", Better::Higher)
            .floor("raw veth")
            .row("raw veth", vec![14.0, 14.5, 13.9])
            .row("sluice", vec![13.0, 13.4, 12.1])
            .row("broken", vec![f64::NAN]);
        bars(&table, &path).unwrap();
        if let Ok(keep) = std::env::var("SLUICE_KEEP_PLOT") {
            std::fs::copy(&path, keep).unwrap();
        }
        let png = std::fs::read(&path).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
