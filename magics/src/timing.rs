//! `--timing`: where a launch's time went, as a small timeline chart (SVG) and a text
//! summary: exporting the variables, building, then each rank from its start to its end.

use crate::report::{Ending, RunReport};
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::time::Duration;

const WIDTH: f64 = 640.0;
const LABEL: f64 = 70.0;
const ROW: f64 = 16.0;

/// One rank's time: its rank as the user knows it, when it started and when its end was
/// known (from the start of the ranks' run), and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub rank: usize,
    pub started: Duration,
    pub ended: Duration,
    pub ending: Ending,
}

/// The chart and the summary of a launch that exported for `export`, built for `build`, then
/// ran as `report` says.
pub fn bundle(export: Duration, build: Duration, report: &RunReport) -> Map<String, Value> {
    let spans: Vec<Span> = report
        .ranks
        .iter()
        .enumerate()
        .map(|(i, r)| Span { rank: report.first_rank + i, started: r.started, ended: r.ended, ending: r.ending.clone() })
        .collect();
    bundle_spans(export, build, &spans)
}

/// The chart and the summary of ranks that ran as `spans` say, after `export` and `build`.
pub fn bundle_spans(export: Duration, build: Duration, spans: &[Span]) -> Map<String, Value> {
    let mut data = Map::new();
    data.insert("image/svg+xml".into(), Value::String(svg(export, build, spans)));
    data.insert("text/plain".into(), Value::String(summary(export, build, spans)));
    data
}

/// Bars on one time axis: (label, from, to, colour), seconds from the start of the export.
fn bars(export: Duration, build: Duration, spans: &[Span]) -> Vec<(String, f64, f64, &'static str)> {
    let (e, b) = (export.as_secs_f64(), build.as_secs_f64());
    let launch = e + b;
    let mut bars = vec![("export".to_string(), 0.0, e, "#8c959f"), ("build".to_string(), e, launch, "#bf8700")];
    for r in spans {
        let colour = match r.ending {
            Ending::Success => "#1a7f37",
            Ending::Stopped => "#8c959f",
            _ => "#cf222e",
        };
        let start = launch + r.started.as_secs_f64();
        bars.push((format!("rank {}", r.rank), start, launch + r.ended.as_secs_f64().max(r.started.as_secs_f64()), colour));
    }
    bars
}

fn svg(export: Duration, build: Duration, spans: &[Span]) -> String {
    let bars = bars(export, build, spans);
    let total = bars.iter().map(|b| b.2).fold(0.0f64, f64::max).max(1e-3);
    let scale = (WIDTH - LABEL - 60.0) / total;
    let height = ROW * (bars.len() as f64 + 2.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-family=\"monospace\" font-size=\"11\">"
    );
    for (i, (label, from, to, colour)) in bars.iter().enumerate() {
        let y = ROW * (i as f64 + 0.5);
        let w = ((to - from) * scale).max(1.0);
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{:.1}\">{label}</text><rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{colour}\">\
             <title>{label}: {from:.3} s to {to:.3} s</title></rect><text x=\"{:.1}\" y=\"{:.1}\">{:.2} s</text>",
            y + ROW * 0.7,
            LABEL + from * scale,
            ROW * 0.8,
            LABEL + from * scale + w + 4.0,
            y + ROW * 0.7,
            to - from
        );
    }
    let axis_y = ROW * (bars.len() as f64 + 0.8);
    let _ = write!(
        s,
        "<line x1=\"{LABEL}\" y1=\"{axis_y:.1}\" x2=\"{:.1}\" y2=\"{axis_y:.1}\" stroke=\"#888\"/>\
         <text x=\"{LABEL}\" y=\"{:.1}\">0 s</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{total:.2} s</text></svg>",
        LABEL + total * scale,
        axis_y + 12.0,
        LABEL + total * scale,
        axis_y + 12.0
    );
    s
}

fn summary(export: Duration, build: Duration, spans: &[Span]) -> String {
    let secs = |d: Duration| d.as_secs_f64();
    let mut out = format!("export {:.3} s, build {:.3} s", secs(export), secs(build));
    if spans.is_empty() {
        return out;
    }
    let starts = spans.iter().map(|r| secs(r.started));
    let ends: Vec<f64> = spans.iter().map(|r| secs(r.ended)).collect();
    let (first, last) = (starts.clone().fold(f64::MAX, f64::min), starts.fold(0.0, f64::max));
    let (slowest, end) = ends.iter().enumerate().fold((0, 0.0), |acc, (i, &e)| if e > acc.1 { (i, e) } else { acc });
    let fastest = ends.iter().copied().fold(f64::MAX, f64::min);
    let _ = write!(
        out,
        "; ranks started {first:.3}-{last:.3} s after the launch and ended {fastest:.3}-{end:.3} s after it \
         (last: rank {}); total {:.3} s",
        spans[slowest].rank,
        secs(export) + secs(build) + end
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::RankReport;

    #[test]
    fn every_phase_and_rank_is_a_bar_on_one_axis() {
        let rank = |start: u64, end: u64, ending| RankReport {
            ending,
            last_lines: Default::default(),
            host: None,
            started: Duration::from_millis(start),
            ended: Duration::from_millis(end),
            backtrace: String::new(),
        };
        let report = RunReport {
            ranks: vec![rank(0, 1000, Ending::Success), rank(10, 3000, Ending::ExitCode(2))],
            stopped: None,
            elapsed: Duration::from_secs(3),
            first_rank: 4,
            pids: vec![],
            transcript: Default::default(),
        };
        let b = bundle(Duration::from_millis(100), Duration::from_millis(900), &report);
        let svg = b["image/svg+xml"].as_str().unwrap();
        assert_eq!(svg.matches("<rect").count(), 4);
        assert!(svg.contains("rank 5: 1.010 s to 4.000 s") && svg.contains("#cf222e"), "{svg}");
        let text = b["text/plain"].as_str().unwrap();
        assert!(text.starts_with("export 0.100 s, build 0.900 s; ranks started 0.000-0.010 s"), "{text}");
        assert!(text.contains("ended 1.000-3.000 s after it (last: rank 5); total 4.000 s"), "{text}");
    }
}
