//! Line charts as SVG made here (no chart library, no script): one line per server over the
//! last hour, the axis labelled with the largest value. Colours come from attributes, not
//! style (the Content-Security-Policy forbids inline style).

use maud::{Markup, html};

use crate::sampler::Point;

const W: f64 = 400.0;
const H: f64 = 120.0;
/// Line colours per server (3 at most), distinguishable for common colour blindness.
const COLOURS: [&str; 3] = ["#0b5cad", "#c4540d", "#2e7d32"];

/// One chart: `title`, each server's (name, values by time), the unit for the axis label.
pub fn chart(
    title: &str,
    series: &[(String, Vec<(u64, f64)>)],
    format: impl Fn(f64) -> String,
) -> Markup {
    let now = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(t, _)| *t))
        .max()
        .unwrap_or(0);
    let start = now.saturating_sub(3600);
    let max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
        .fold(0.0f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let x = |t: u64| (t.saturating_sub(start)) as f64 / 3600.0 * W;
    let y = |v: f64| H - (v / top) * H;
    let empty = series.iter().all(|(_, p)| p.len() < 2);
    let summary = series
        .iter()
        .map(|(name, p)| match p.last() {
            Some((_, v)) => format!("{name}: {}", format(*v)),
            None => format!("{name}: no data yet"),
        })
        .collect::<Vec<_>>()
        .join("; ");
    html! {
        figure.chart {
            figcaption { (title) }
            svg viewBox=(format!("0 0 {W} {}", H + 16.0)) role="img"
                aria-label=(format!("{title}, last hour. Latest: {summary}")) {
                line x1="0" y1=(H) x2=(W) y2=(H) stroke="#8c959f" stroke-width="1" {}
                text x="2" y="11" font-size="11" fill="#4d5661" { (format(top)) }
                text x="2" y=(H + 13.0) font-size="11" fill="#4d5661" { "−60 min" }
                text x=(W - 30.0) y=(H + 13.0) font-size="11" fill="#4d5661" { "now" }
                @if empty {
                    text x=(W / 2.0 - 60.0) y=(H / 2.0) font-size="12" fill="#4d5661" {
                        "collecting (every 10 s)"
                    }
                }
                @for (i, (_, points)) in series.iter().enumerate() {
                    @if points.len() >= 2 {
                        polyline fill="none" stroke=(COLOURS[i % 3]) stroke-width="2"
                            points=(points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect::<Vec<_>>().join(" ")) {}
                    }
                }
            }
            p.muted { (summary) }
        }
    }
}

/// The overview's three charts from the sampler's series.
pub fn overview(series: &[(String, Vec<Point>, Option<String>)]) -> Markup {
    let pick = |f: &dyn Fn(&Point) -> Option<f64>| -> Vec<(String, Vec<(u64, f64)>)> {
        series
            .iter()
            .map(|(name, pts, _)| {
                (
                    name.clone(),
                    pts.iter().filter_map(|p| f(p).map(|v| (p.at, v))).collect(),
                )
            })
            .collect()
    };
    html! {
        div.charts {
            (chart("Requests per second", &pick(&|p| Some(p.rps)), |v| format!("{v:.1}/s")))
            (chart("Error rate (5xx)", &pick(&|p| Some(p.error_rate * 100.0)), |v| format!("{v:.2} %")))
            (chart("p99 latency", &pick(&|p| p.p99.map(|s| s * 1000.0)), |v| format!("{v:.1} ms")))
        }
        @for (name, _, err) in series {
            @if let Some(e) = err {
                p.muted { "Figures of " (name) ": " (e) }
            }
        }
    }
}
