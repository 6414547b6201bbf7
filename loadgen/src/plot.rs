//! `--plot FILE.svg`: latency by percentile, the chart HdrHistogram's plotter draws, as plain SVG.
//!
//! The x axis is logarithmic in 1/(1-percentile), so 90%, 99%, 99.9%... are evenly spaced and the
//! tail gets the room it deserves; the y axis is linear latency.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// The x axis ends at 99.999%.
const NINES_MAX: f64 = 5.0;
const COLOURS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"];

/// The chart of `series` (name, histogram of nanoseconds), titled `title`.
pub fn svg(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let plotted: Vec<(&str, Vec<(f64, f64)>)> =
        series.iter().filter(|(_, h)| !h.is_empty()).map(|(name, h)| (*name, points(h))).collect();
    let y_max_ms = plotted
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.05;
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x_of = |nines: f64| LEFT + nines.min(NINES_MAX) / NINES_MAX * plot_w;
    let y_of = |ms: f64| TOP + plot_h - ms / y_max_ms * plot_h;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"].iter().enumerate() {
        let x = x_of(i as f64);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            TOP + plot_h + 18.0
        );
    }
    for i in 0..=5 {
        let ms = y_max_ms * f64::from(i) / 5.0;
        let y = y_of(ms);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            format_ms(ms)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 16.0
    );
    let _ = writeln!(
        out,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency (ms)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    for (index, (name, points)) in plotted.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let path: Vec<String> =
            points.iter().map(|(x, y)| format!("{:.1},{:.1}", x_of(*x), y_of(*y))).collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let legend_y = TOP + 10.0 + index as f64 * 20.0;
        let legend_x = LEFT + plot_w + 16.0;
        let _ = writeln!(
            out,
            r#"<rect x="{legend_x:.1}" y="{:.1}" width="14" height="4" fill="{colour}"/>"#,
            legend_y - 4.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{legend_y:.1}">{}</text>"#,
            legend_x + 20.0,
            escape(name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// (nines, latency in ms) along the histogram, as HdrHistogram's percentile iterator walks it.
fn points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = h
        .iter_quantiles(5)
        .map(|v| {
            let q = v.quantile_iterated_to();
            let nines = if q >= 1.0 { NINES_MAX } else { (1.0 / (1.0 - q)).log10() };
            (nines, v.value_iterated_to() as f64 / 1e6)
        })
        .collect();
    points.push((NINES_MAX, h.max() as f64 / 1e6));
    points
}

fn format_ms(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_line_per_non_empty_series() {
        let mut a = spate::metrics::new_histogram();
        let mut b = spate::metrics::new_histogram();
        for i in 1..10_000u64 {
            a.record(i * 1000).unwrap();
            b.record(i * 2000).unwrap();
        }
        let empty = spate::metrics::new_histogram();
        let svg = svg("run <1>", &[("ack", &a), ("end-to-end", &b), ("nothing", &empty)]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("99.999%") && svg.contains("run &lt;1&gt;"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
