//! SVG charts with plotters: the user's p99 and error rate against the
//! request rate (one line per mode and fault), and async mode's end-to-end
//! notification delay.

use std::path::Path;

use plotters::prelude::*;

use crate::report::fault_label;
use crate::run::Cell;

const PALETTE: [RGBColor; 6] = [
    RGBColor(79, 70, 229),
    RGBColor(14, 159, 110),
    RGBColor(217, 119, 6),
    RGBColor(220, 38, 38),
    RGBColor(8, 145, 178),
    RGBColor(124, 58, 237),
];

type Series = Vec<(String, Vec<(f64, f64)>)>;

fn series(cells: &[Cell], only_async: bool, y: impl Fn(&Cell) -> f64) -> Series {
    let mut out: Series = Vec::new();
    for c in cells {
        if only_async && c.mode != "async" {
            continue;
        }
        let name = format!("{} · {}", c.mode, fault_label(&c.fault));
        let point = (c.rate as f64, y(c));
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, points)) => points.push(point),
            None => out.push((name, vec![point])),
        }
    }
    out
}

pub fn write(dir: &Path, cells: &[Cell]) -> anyhow::Result<()> {
    chart(
        &dir.join("experiment-latency.svg"),
        "User-facing p99 latency (ms) vs requests/s",
        &series(cells, false, |c| c.p99_ms.max(0.1)),
        true,
    )?;
    chart(
        &dir.join("experiment-errors.svg"),
        "User-facing error rate (%) vs requests/s",
        &series(cells, false, |c| 100.0 * c.error_rate),
        false,
    )?;
    chart(
        &dir.join("experiment-e2e.svg"),
        "Async: reaction accepted → notification stored, p99 (ms)",
        &series(cells, true, |c| c.e2e_p99_ms.max(0.1)),
        true,
    )?;
    Ok(())
}

fn chart(path: &Path, title: &str, data: &Series, log_y: bool) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (860, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let xs = data.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x));
    let ys = data.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
    let x_max = xs.fold(1.0_f64, f64::max) * 1.5;
    let y_max = ys.fold(1.0_f64, f64::max) * 1.5;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("requests per second (log)")
                .light_line_style(RGBColor(235, 235, 240))
                .draw()?;
            for (i, (name, points)) in data.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                let style = ShapeStyle::from(&color).stroke_width(2);
                chart
                    .draw_series(LineSeries::new(points.clone(), style))?
                    .label(name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.9))
                .border_style(RGBColor(200, 200, 210))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()?;
        }};
    }
    if log_y {
        draw!(builder
            .build_cartesian_2d((0.8_f64..x_max).log_scale(), (0.1_f64..y_max).log_scale())?);
    } else {
        draw!(builder.build_cartesian_2d((0.8_f64..x_max).log_scale(), 0.0_f64..y_max.max(5.0))?);
    }
    root.present()?;
    Ok(())
}
