//! Turning what the ranks reported into what the notebook shows.

use crate::supervise::{Ending, RunReport, StopReason};
use ranch::__rt::RankResult;
use serde_json::{Map, Value};
use std::path::Path;

/// Reads every rank's result file (rank order; `first_rank` names local rank 0).
pub fn read_results(run_dir: &Path, local_ranks: usize, first_rank: usize) -> Result<Vec<RankResult>, String> {
    (0..local_ranks)
        .map(|r| {
            let path = ranch::__rt::result_path(run_dir, r);
            let r = r + first_rank;
            let bytes = std::fs::read(&path)
                .map_err(|_| format!("rank {r} exited with status 0 before the end of the cell, so it has no value"))?;
            RankResult::decode(&bytes).map_err(|e| format!("rank {r}'s result is unreadable: {e}"))
        })
        .collect()
}

/// The `execute_result` of a successful run: `text/plain` is the Debug form of the gathered
/// `Vec<T>`, `text/html` a rank → value table (global ranks: `results[0]` is
/// `first_rank`). `None` for a unit tail.
pub fn result_bundle(results: &[RankResult], first_rank: usize) -> Option<Map<String, Value>> {
    if results.is_empty() || results.iter().all(|r| r.type_name == "()") {
        return None;
    }
    let shown: Vec<String> =
        results.iter().map(|r| r.debug.clone().unwrap_or_else(|| format!("<{}>", r.type_name))).collect();
    let plain = format!("[{}]", shown.join(", "));
    let rows: String = shown
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let r = first_rank + i;
            format!("<tr><td>{r}</td><td style=\"text-align:left\"><pre>{}</pre></td></tr>", html_escape(v))
        })
        .collect();
    let html = format!("<table><thead><tr><th>rank</th><th style=\"text-align:left\">value</th></tr></thead><tbody>{rows}</tbody></table>");
    let mut data = Map::new();
    data.insert("text/plain".into(), Value::String(plain));
    data.insert("text/html".into(), Value::String(html));
    Some(data)
}

/// `%in_ddp`'s result: one rank's value (the base rank's), as a plain value.
pub fn single_bundle(result: &RankResult) -> Option<Map<String, Value>> {
    if result.type_name == "()" {
        return None;
    }
    let shown = result.debug.clone().unwrap_or_else(|| format!("<{}>", result.type_name));
    let mut data = Map::new();
    data.insert("text/plain".into(), Value::String(shown));
    Some(data)
}

pub(crate) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A failed run, as (`evalue`, traceback lines). `None` when every rank succeeded.
pub fn failure(report: &RunReport) -> Option<(String, Vec<String>)> {
    let failed: Vec<(usize, &Ending)> = report
        .ranks
        .iter()
        .enumerate()
        .filter(|(_, r)| !matches!(r.ending, Ending::Success | Ending::Stopped))
        .map(|(i, r)| (i + report.first_rank, &r.ending))
        .collect();
    let stopped: Vec<usize> = report
        .ranks
        .iter()
        .enumerate()
        .filter(|(_, r)| r.ending == Ending::Stopped)
        .map(|(i, _)| i + report.first_rank)
        .collect();
    let headline = match &report.stopped {
        Some(StopReason::Interrupted) => format!("interrupted: stopped all {} ranks", report.ranks.len()),
        Some(StopReason::Timeout { running }) => {
            let running: Vec<usize> = running.iter().map(|r| r + report.first_rank).collect();
            format!("timed out after {:.1}s; ranks still running were stopped: {}", report.elapsed.as_secs_f64(), list(&running))
        }
        _ if failed.is_empty() => return None,
        _ => {
            let names: Vec<String> = failed.iter().map(|(r, e)| format!("rank {r} {}", describe(e))).collect();
            names.join("; ")
        }
    };
    let mut tb = vec![format!("\x1b[1;31m%%ranch failed\x1b[0m: {headline}")];
    for (rank, ending) in &failed {
        tb.push(format!("rank {rank} {}", describe(ending)));
        let last = &report.ranks[*rank - report.first_rank].last_lines;
        if !last.is_empty() {
            tb.push(format!("  last output of rank {rank}:"));
            tb.extend(last.iter().map(|l| format!("    [{rank}] {l}")));
        }
    }
    if !stopped.is_empty() && !matches!(report.stopped, Some(StopReason::Timeout { .. }) | Some(StopReason::Interrupted)) {
        tb.push(format!("stopped because of the failure (--on-error abort): ranks {}", list(&stopped)));
    }
    tb.push("The session is unchanged.".into());
    Some((headline, tb))
}

fn describe(e: &Ending) -> String {
    match e {
        Ending::Panicked { message, line: Some(l) } => format!("panicked at cell line {l}: {message}"),
        Ending::Panicked { message, line: None } => format!("panicked: {message}"),
        Ending::ExitCode(c) => format!("exited with status {c}"),
        Ending::Signal(s) => {
            let name = nix::sys::signal::Signal::try_from(*s).map(|s| s.as_str().to_string()).unwrap_or(s.to_string());
            format!("was killed by signal {s} ({name})")
        }
        Ending::NotStarted(why) => format!("could not be started: {why}"),
        Ending::Success => "succeeded".into(),
        Ending::Stopped => "was stopped".into(),
    }
}

fn list(ranks: &[usize]) -> String {
    ranks.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::RankReport;

    fn res(ty: &str, debug: Option<&str>) -> RankResult {
        RankResult { type_name: ty.into(), debug: debug.map(str::to_string), value: None }
    }

    #[test]
    fn gathered_values_look_like_a_vec() {
        let data = result_bundle(&[res("usize", Some("0")), res("usize", Some("1")), res("usize", Some("4"))], 0).unwrap();
        assert_eq!(data["text/plain"], "[0, 1, 4]");
        assert!(data["text/html"].as_str().unwrap().contains("<td>2</td>"));
        assert!(result_bundle(&[res("()", Some("()"))], 0).is_none());
        let opaque = result_bundle(&[res("ranch_rank::Opaque", None)], 0).unwrap();
        assert_eq!(opaque["text/plain"], "[<ranch_rank::Opaque>]");
    }

    #[test]
    fn the_table_names_global_ranks() {
        let data = result_bundle(&[res("usize", Some("5")), res("usize", Some("6"))], 2).unwrap();
        let html = data["text/html"].as_str().unwrap();
        assert!(html.contains("<td>2</td>") && html.contains("<td>3</td>") && !html.contains("<td>0</td>"), "{html}");
    }

    #[test]
    fn failures_name_ranks_messages_and_last_lines() {
        let ok = RankReport { ending: Ending::Success, last_lines: Default::default() };
        let bad = RankReport {
            ending: Ending::Panicked { message: "boom".into(), line: Some(3) },
            last_lines: ["step 1".to_string()].into(),
        };
        let report = RunReport {
            ranks: vec![ok.clone(), bad, RankReport { ending: Ending::Stopped, ..ok }],
            stopped: Some(StopReason::RankFailed(1)),
            elapsed: Default::default(),
            first_rank: 0,
            pids: vec![],
        };
        let (evalue, tb) = failure(&report).unwrap();
        assert_eq!(evalue, "rank 1 panicked at cell line 3: boom");
        let all = tb.join("\n");
        assert!(all.contains("[1] step 1") && all.contains("ranks 2") && all.contains("session is unchanged"));
    }
}
