//! The speed figure of docs/benchmarks.md, drawn by the harness from its own
//! results (SVG, with `plotters`): `up`/`down` against raw docker, time and
//! memory per bottle at scale, and the egress latency and CPU per request
//! against concurrency (from `egress-bench --json`).

use super::measure::{Pair, Results};
use super::stats::Series;
use plotters::prelude::*;
use std::path::Path;

/// One egress row read from `egress-bench --json`.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressPoint {
    pub path: String,
    pub concurrency: u64,
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    pub proxy_cpu_per_req_us: f64,
    pub origin_cpu_per_req_us: f64,
}

/// The rows of `egress-bench --json` (an array of objects); fields a row
/// lacks read as 0.
pub fn egress_points(json: &str) -> anyhow::Result<Vec<EgressPoint>> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(json)?;
    let num = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
    Ok(rows
        .iter()
        .map(|r| EgressPoint {
            path: r
                .get("path")
                .and_then(|p| p.as_str())
                .unwrap_or_default()
                .to_string(),
            concurrency: num(r, "concurrency") as u64,
            added_p50_ms: num(r, "added_p50_ms"),
            added_p99_ms: num(r, "added_p99_ms"),
            proxy_cpu_per_req_us: num(r, "proxy_cpu_per_req_us"),
            origin_cpu_per_req_us: num(r, "origin_cpu_per_req_us"),
        })
        .collect())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the figure: {e}")
}

const BOTTLE: RGBColor = RGBColor(0x1f, 0x6f, 0xb4);
const RAW: RGBColor = RGBColor(0xa0, 0xa0, 0xa0);
const OTHER: RGBColor = RGBColor(0xd6, 0x61, 0x1e);

fn lifecycle_panel(area: &Area, r: &Results) -> anyhow::Result<()> {
    let mut groups: Vec<(&str, &Pair, bool)> = vec![("up warm", &r.warm, true)];
    if let Some(c) = &r.cold {
        groups.push(("up cold", c, true));
    }
    groups.push(("down warm", &r.warm, false));
    if let Some(c) = &r.cold {
        groups.push(("down cold", c, false));
    }
    fn pick(p: &Pair, up: bool) -> (&Series, &Series) {
        if up {
            (&p.bottle_up, &p.raw_up)
        } else {
            (&p.bottle_down, &p.raw_down)
        }
    }
    let ymax = groups
        .iter()
        .map(|(_, p, up)| {
            let (b, raw) = pick(p, *up);
            b.max_ms.max(raw.max_ms)
        })
        .fold(0.0, f64::max)
        * 1.15;
    let n = groups.len() as f64;
    let labels: Vec<String> = groups.iter().map(|(l, ..)| l.to_string()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(
            "bottle up / down vs the raw docker sequence (median, min-max)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..n, 0f64..ymax.max(1.0))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("ms")
        .draw()
        .map_err(err)?;
    for (i, (_, p, up)) in groups.iter().enumerate() {
        let (b, raw) = pick(p, *up);
        for (j, s, color) in [(0.0, b, BOTTLE), (1.0, raw, RAW)] {
            let x0 = i as f64 + 0.12 + j * 0.38;
            let x1 = x0 + 0.36;
            chart
                .draw_series([Rectangle::new(
                    [(x0, 0.0), (x1, s.median_ms)],
                    color.filled(),
                )])
                .map_err(err)?;
            let xm = (x0 + x1) / 2.0;
            chart
                .draw_series([PathElement::new(
                    vec![(xm, s.min_ms), (xm, s.max_ms)],
                    BLACK.stroke_width(2),
                )])
                .map_err(err)?;
        }
    }
    chart
        .draw_series([Rectangle::new([(0.0, 0.0), (0.0, 0.0)], BOTTLE.filled())])
        .map_err(err)?
        .label("bottle")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], BOTTLE.filled()));
    chart
        .draw_series([Rectangle::new([(0.0, 0.0), (0.0, 0.0)], RAW.filled())])
        .map_err(err)?
        .label("raw docker")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], RAW.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn scale_panel(area: &Area, r: &Results) -> anyhow::Result<()> {
    let rows = &r.scale;
    let xmax = rows.iter().map(|s| s.bottles).max().unwrap_or(1) as f64 + 1.0;
    let per = |v: u64| v as f64 / 1024.0;
    let ymax_ms = rows.iter().map(|s| s.up_per_bottle_ms).fold(1.0, f64::max) * 1.2;
    // Processes a bottle adds: its sidecar, its agent (as the engine
    // accounts it) and the two containers' shims.
    let accounted =
        |s: &super::measure::ScaleRow| per(s.sidecar_rss_kib + s.agent_mem_kib + s.shims_rss_kib);
    let ymax_mib = rows.iter().map(accounted).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "N bottles at once: up time and memory per bottle",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .right_y_label_area_size(55)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax_ms)
        .map_err(err)?
        .set_secondary_coord(0f64..xmax, 0f64..ymax_mib);
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_labels(xmax as usize + 1)
        .x_label_formatter(&|x| {
            let n = x.round();
            if (x - n).abs() < 0.01 && rows.iter().any(|s| s.bottles as f64 == n) {
                format!("{n:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc("bottles brought up at once")
        .y_desc("ms per bottle")
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("MiB per bottle")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            rows.iter().map(|s| (s.bottles as f64, s.up_per_bottle_ms)),
            BOTTLE.stroke_width(2),
        ))
        .map_err(err)?
        .label("up per bottle (ms, left)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BOTTLE.stroke_width(2)));
    chart
        .draw_series(
            rows.iter()
                .map(|s| Circle::new((s.bottles as f64, s.up_per_bottle_ms), 3, BOTTLE.filled())),
        )
        .map_err(err)?;
    chart
        .draw_secondary_series(LineSeries::new(
            rows.iter().map(|s| (s.bottles as f64, accounted(s))),
            OTHER.stroke_width(2),
        ))
        .map_err(err)?
        .label("sidecar + agent + shims (MiB, right)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], OTHER.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(
            rows.iter()
                .map(|s| (s.bottles as f64, per(s.sidecar_rss_kib))),
            RAW.stroke_width(2),
        ))
        .map_err(err)?
        .label("sidecar RSS (MiB, right)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], RAW.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The concurrencies of `points` in order, and the index of each.
fn levels(points: &[EgressPoint]) -> Vec<u64> {
    let mut c: Vec<u64> = points.iter().map(|p| p.concurrency).collect();
    c.sort_unstable();
    c.dedup();
    c
}

fn egress_panels(left: &Area, right: &Area, points: &[EgressPoint]) -> anyhow::Result<()> {
    let egress: Vec<&EgressPoint> = points
        .iter()
        .filter(|p| p.path == "bottle egress")
        .collect();
    let direct: Vec<&EgressPoint> = points.iter().filter(|p| p.path == "direct").collect();
    let levels = levels(points);
    let ymax = egress.iter().map(|p| p.added_p99_ms).fold(0.05, f64::max) * 1.2;
    let latency: [Line; 2] = [
        ("added p50", &egress, |p| p.added_p50_ms, BOTTLE),
        ("added p99", &egress, |p| p.added_p99_ms, OTHER),
    ];
    connections_chart(
        left,
        "egress: latency the sidecar adds (HTTP/1.1)",
        "ms added",
        ymax,
        &levels,
        &latency,
        SeriesLabelPosition::UpperLeft,
    )?;
    let ymax = egress
        .iter()
        .map(|p| p.proxy_cpu_per_req_us)
        .chain(direct.iter().map(|p| p.origin_cpu_per_req_us))
        .fold(1.0, f64::max)
        * 1.2;
    let cpu: [Line; 2] = [
        ("sidecar", &egress, |p| p.proxy_cpu_per_req_us, BOTTLE),
        ("origin, direct", &direct, |p| p.origin_cpu_per_req_us, RAW),
    ];
    connections_chart(
        right,
        "CPU per request: sidecar vs the origin (direct path)",
        "µs of CPU per request",
        ymax,
        &levels,
        &cpu,
        SeriesLabelPosition::UpperRight,
    )
}

/// One line of a connections chart: its label, its rows, the value drawn
/// and its colour.
type Line<'a> = (
    &'a str,
    &'a Vec<&'a EgressPoint>,
    fn(&EgressPoint) -> f64,
    RGBColor,
);

/// A chart over the connection counts in `levels` with `lines` on it.
fn connections_chart(
    area: &Area,
    caption: &str,
    y_desc: &str,
    ymax: f64,
    levels: &[u64],
    lines: &[Line],
    legend: SeriesLabelPosition,
) -> anyhow::Result<()> {
    let at = |c: u64| levels.iter().position(|l| *l == c).unwrap_or(0) as f64;
    let n = levels.len().max(1) as f64;
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 0.01 {
            levels
                .get(i as usize)
                .map(|c| c.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.3f64..n - 0.7, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_labels(levels.len().max(1))
        .x_label_formatter(&label)
        .x_desc("connections")
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for &(name, rows, f, color) in lines {
        chart
            .draw_series(LineSeries::new(
                rows.iter().map(|p| (at(p.concurrency), f(p))),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                rows.iter()
                    .map(|p| Circle::new((at(p.concurrency), f(p)), 3, color.filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Draws the figure into `out`: lifecycle and scale on top, egress below
/// (when `egress` has rows).
pub fn draw(out: &Path, r: &Results, egress: &[EgressPoint]) -> anyhow::Result<()> {
    let rows = if egress.is_empty() { 1 } else { 2 };
    let root = SVGBackend::new(out, (1200, 420 * rows)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((rows as usize, 2));
    lifecycle_panel(&areas[0], r)?;
    scale_panel(&areas[1], r)?;
    if rows == 2 {
        egress_panels(&areas[2], &areas[3], egress)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_rows_are_read_by_name_and_missing_fields_are_zero() {
        let json = r#"[
          {"path":"direct","concurrency":1,"added_p50_ms":null,"origin_cpu_per_req_us":9.5},
          {"path":"bottle egress","concurrency":16,"added_p50_ms":0.04,"added_p99_ms":0.3,"proxy_cpu_per_req_us":22.0,"extra":"kept out"}
        ]"#;
        let p = egress_points(json).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].path.as_str(), p[0].concurrency), ("direct", 1));
        assert_eq!((p[0].added_p50_ms, p[0].origin_cpu_per_req_us), (0.0, 9.5));
        assert_eq!(p[1].proxy_cpu_per_req_us, 22.0);
        assert_eq!(levels(&p), [1, 16]);
        assert!(egress_points("{}").is_err());
    }
}
