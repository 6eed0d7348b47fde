//! Turning what the ranks reported into what the notebook shows.

use crate::grid::{Cell, Grid};
use crate::report::{Ending, RunReport, StopReason};
use ranch::__rt::RankResult;
use serde_json::{Map, Value};
use std::path::Path;

/// Most bytes of all the ranks' values together that the kernel reads into memory: the
/// channel bounds each rank's ([`crate::channel::MAX_RESULT`], streamed to disk), this
/// bounds what every rank sending its most at once would add up to.
pub const MAX_RESULTS: u64 = crate::channel::MAX_RESULT;

/// Reads every rank's result file (rank order; `first_rank` names local rank 0), unless
/// together they are over [`MAX_RESULTS`] (or a larger `RANCH_MAX_RESULT_MIB`).
pub fn read_results(run_dir: &Path, local_ranks: usize, first_rank: usize) -> Result<Vec<RankResult>, String> {
    let limit =
        std::env::var("RANCH_MAX_RESULT_MIB").ok().and_then(|m| m.parse::<u64>().ok()).map_or(MAX_RESULTS, |m| (m << 20).max(MAX_RESULTS));
    let sizes: Vec<u64> =
        (0..local_ranks).map(|r| std::fs::metadata(ranch::__rt::result_path(run_dir, r)).map_or(0, |m| m.len())).collect();
    let total: u64 = sizes.iter().sum();
    if total > limit {
        let (largest, size) = sizes.iter().enumerate().max_by_key(|(r, s)| (**s, std::cmp::Reverse(*r))).map_or((0, 0), |(r, s)| (r, *s));
        return Err(format!(
            "the ranks' values are {} MiB together, more than the {} MiB the kernel reads (RANCH_MAX_RESULT_MIB); rank {}'s \
             alone is {} MiB. Return less from the cell (a summary), or have the ranks write large data to files",
            total.div_ceil(1 << 20),
            limit >> 20,
            largest + first_rank,
            size >> 20
        ));
    }
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
    let shown: Vec<String> = results.iter().map(|r| r.debug.clone().unwrap_or_else(|| format!("<{}>", r.type_name))).collect();
    let plain = format!("[{}]", shown.join(", "));
    let mut table = Grid::new(&["rank", "value"]).left(&[1]);
    for (i, v) in shown.iter().enumerate() {
        table.row([Cell::text((first_rank + i).to_string()), Cell::pre(v.as_str())]);
    }
    let html = table.html();
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

/// Failed ranks grouped by what happened to them: many ranks failing the same way are one
/// group. Groups come in the order of their first rank.
fn groups(report: &RunReport) -> Vec<(Vec<usize>, String)> {
    let mut groups: Vec<(Vec<usize>, String)> = Vec::new();
    for (i, r) in report.ranks.iter().enumerate() {
        if matches!(r.ending, Ending::Success | Ending::Stopped) {
            continue;
        }
        let what = match &r.host {
            Some(host) => format!("{} (host {host})", describe(&r.ending)),
            None => describe(&r.ending),
        };
        match groups.iter_mut().find(|(_, w)| *w == what) {
            Some((ranks, _)) => ranks.push(i + report.first_rank),
            None => groups.push((vec![i + report.first_rank], what)),
        }
    }
    groups
}

/// "rank 2", "ranks 0, 1", "ranks 0-7, 9".
/// `rank 3`, `ranks 0-6, 9` (ranks sorted).
pub fn ranks_label(ranks: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        parts.push(if j >= i + 2 {
            format!("{}-{}", ranks[i], ranks[j])
        } else {
            (i..=j).map(|k| ranks[k].to_string()).collect::<Vec<_>>().join(", ")
        });
        i = j + 1;
    }
    format!("rank{} {}", if ranks.len() == 1 { "" } else { "s" }, parts.join(", "))
}

/// Pool ranks that panicked in a `%%px` cell (each keeps its earlier variables), as
/// (`evalue`, traceback lines); ranks failing alike are said once. `None` when none did.
pub fn panics_failure(panics: &[(usize, String)]) -> Option<(String, Vec<String>)> {
    let mut groups: Vec<(Vec<usize>, &str)> = Vec::new();
    for (rank, message) in panics {
        let message = if message.trim().is_empty() { "the cell panicked" } else { message.as_str() };
        match groups.iter_mut().find(|(_, m)| *m == message) {
            Some((ranks, _)) => ranks.push(*rank),
            None => groups.push((vec![*rank], message)),
        }
    }
    let said: Vec<String> = groups
        .iter_mut()
        .map(|(ranks, message)| {
            ranks.sort_unstable();
            format!("{} panicked: {message}", ranks_label(ranks))
        })
        .collect();
    let evalue = said.first()?.clone();
    let traceback = said
        .iter()
        .map(|s| format!("\x1b[1;31m%%px failed\x1b[0m: {s}"))
        .chain(["Variables defined by this cell were dropped on every rank; earlier ones are kept.".to_string()])
        .collect();
    Some((evalue, traceback))
}

/// A failed run, as (`evalue`, traceback lines); `None` when every rank succeeded. The
/// traceback is short: the headline, one line per way of failing when the headline does not
/// already say each, a rank's backtrace when it shows the cell's own code, and who was
/// stopped. What the failing ranks wrote last is in the failure table ([`failure_bundle`]),
/// which the cell shows before the error, so it is not said twice.
pub fn failure(report: &RunReport) -> Option<(String, Vec<String>)> {
    let groups = groups(report);
    let stopped: Vec<usize> =
        report.ranks.iter().enumerate().filter(|(_, r)| r.ending == Ending::Stopped).map(|(i, _)| i + report.first_rank).collect();
    let said = |(ranks, what): &(Vec<usize>, String)| {
        // "rank 1 was lost", "ranks 0, 1 were lost".
        let what = match what.strip_prefix("was ") {
            Some(rest) if ranks.len() > 1 => format!("were {rest}"),
            _ => what.clone(),
        };
        format!("{} {what}", ranks_label(ranks))
    };
    // The traceback's first line; then each way of failing, unless that line said the only one.
    let (headline, first, each) = match &report.stopped {
        Some(StopReason::Interrupted) => {
            let h = format!("interrupted: stopped all {} ranks", report.ranks.len());
            (h.clone(), h, true)
        }
        Some(StopReason::Timeout { running, limit }) => {
            let running: Vec<usize> = running.iter().map(|r| r + report.first_rank).collect();
            let h =
                format!("timed out after {:.1}s (--timeout); ranks still running were stopped: {}", limit.as_secs_f64(), list(&running));
            (h.clone(), h, true)
        }
        _ if groups.is_empty() => return None,
        _ if groups.len() == 1 => (said(&groups[0]), said(&groups[0]), false),
        _ => (groups.iter().map(said).collect::<Vec<_>>().join("; "), format!("ranks failed in {} ways:", groups.len()), true),
    };
    let mut tb = vec![format!("\x1b[1;31m%%ranch failed\x1b[0m: {first}")];
    for group in &groups {
        if each {
            tb.push(format!("  {}", said(group)));
        }
        let rank = group.0[0];
        let backtrace = &report.ranks[rank - report.first_rank].backtrace;
        if has_cell_frames(backtrace) {
            tb.push(format!("  backtrace of rank {rank} (RUST_BACKTRACE):"));
            tb.extend(backtrace.lines().map(|l| format!("  {l}")));
        }
    }
    if !stopped.is_empty() && !matches!(report.stopped, Some(StopReason::Timeout { .. }) | Some(StopReason::Interrupted)) {
        tb.push(format!("stopped because of the failure (--on-error abort): ranks {}", list(&stopped)));
    }
    tb.push("The session is unchanged.".into());
    Some((headline, tb))
}

/// Whether a backtrace shows frames of the cell (the rank program's crate, other than the
/// `main` it is called from); one made of the runtime's and std's frames alone says nothing.
fn has_cell_frames(backtrace: &str) -> bool {
    let own = format!("{}::", crate::program::PACKAGE);
    backtrace.lines().any(|l| l.contains(&own) && !l.contains("__ranch_main"))
}

/// The failure as a table, shown before the error: one row per way of failing, with the
/// ranks, the outcome (and host), its message and cell line, and the last lines the first
/// of them wrote. `text/plain` (consoles) has the table and those lines below it.
pub fn failure_bundle(report: &RunReport) -> Option<Map<String, Value>> {
    let groups = groups(report);
    if groups.is_empty() {
        return None;
    }
    let head = ["ranks", "outcome", "message", "cell line", "last output"];
    let mut html = Grid::new(&head).class("ranch-failure").all_left();
    let mut text = Grid::new(&head[..4]);
    let mut last_output = Vec::new();
    for (ranks, _) in &groups {
        let first = &report.ranks[ranks[0] - report.first_rank];
        let (mut outcome, message, line) = columns(&first.ending);
        if let Some(host) = &first.host {
            outcome.push_str(&format!(" (host {host})"));
        }
        let row = [ranks_label(ranks), outcome, message, line.map_or(String::new(), |l| l.to_string())];
        text.row(row.clone().map(Cell::text));
        let last: Vec<&str> = first.last_lines.iter().map(String::as_str).collect();
        html.row(row.into_iter().map(Cell::text).chain([Cell::pre(last.join("\n"))]));
        if !last.is_empty() {
            last_output.push(format!("last output of rank {}:", ranks[0]));
            last_output.extend(last.iter().map(|l| format!("    [{}] {l}", ranks[0])));
        }
    }
    let plain = std::iter::once(text.text()).chain(last_output).collect::<Vec<_>>().join("\n");
    let mut data = Map::new();
    data.insert("text/plain".into(), Value::String(plain));
    data.insert("text/html".into(), Value::String(html.html()));
    Some(data)
}

/// How a rank failed, as the failure table's outcome, message and cell line.
fn columns(e: &Ending) -> (String, String, Option<usize>) {
    match e {
        Ending::Panicked { message, line } => ("panicked".into(), message.clone(), *line),
        Ending::NotStarted(why) => ("not started".into(), why.clone(), None),
        Ending::Lost(why) => ("lost".into(), why.clone(), None),
        other => (describe(other), String::new(), None),
    }
}

fn describe(e: &Ending) -> String {
    match e {
        Ending::Panicked { message, line: Some(l) } => format!("panicked at cell line {l}: {message}"),
        Ending::Panicked { message, line: None } => format!("panicked: {message}"),
        Ending::ExitCode(c) => format!("exited with status {c}"),
        Ending::Signal(s) => crate::ranks::death::killed_by(*s),
        Ending::OomKilled { peak } => crate::ranks::death::oom_killed(*peak),
        Ending::OutOfMemory { bytes } => crate::ranks::death::allocation_failed(*bytes),
        Ending::NotStarted(why) => format!("could not be started: {why}"),
        Ending::Lost(why) => format!("was lost: {why}"),
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

    #[test]
    fn identical_pool_panics_are_said_once() {
        let (evalue, tb) = panics_failure(&[(2, "boom".into()), (0, "boom".into()), (1, "other".into())]).unwrap();
        assert_eq!(evalue, "ranks 0, 2 panicked: boom");
        assert!(tb[1].contains("rank 1 panicked: other"));
        assert_eq!(panics_failure(&[]), None);
    }
    use crate::report::RankReport;

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
    fn the_values_of_all_ranks_together_are_bounded() {
        let dir = std::env::temp_dir().join(format!("ranch-merge-bound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = RankResult { type_name: "u8".into(), debug: Some("1".into()), value: None }.encode();
        std::fs::write(ranch::__rt::result_path(&dir, 0), &small).unwrap();
        std::fs::write(ranch::__rt::result_path(&dir, 1), &small).unwrap();
        assert_eq!(read_results(&dir, 2, 0).unwrap().len(), 2);
        // Each under the channel's limit, both over what the kernel reads (sparse files: no disk).
        for r in 0..2 {
            std::fs::File::options().write(true).open(ranch::__rt::result_path(&dir, r)).unwrap().set_len(MAX_RESULTS / 2 + 1).unwrap();
        }
        let e = read_results(&dir, 2, 4).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "the ranks' values are {} MiB together, more than the {} MiB",
                (MAX_RESULTS >> 20) + 1,
                MAX_RESULTS >> 20
            )),
            "{e}"
        );
        assert!(e.contains("rank 4's alone is 2048 MiB"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failures_name_ranks_messages_and_last_lines() {
        let ok = RankReport {
            ending: Ending::Success,
            last_lines: Default::default(),
            host: None,
            started: Default::default(),
            ended: Default::default(),
            backtrace: String::new(),
        };
        let bad = RankReport {
            ending: Ending::Panicked { message: "boom".into(), line: Some(3) },
            last_lines: ["step 1".to_string()].into(),
            backtrace: "   3: cell::inner\n   4: cell::main".into(),
            ..ok.clone()
        };
        let report = RunReport {
            ranks: vec![ok.clone(), bad, RankReport { ending: Ending::Stopped, ..ok }],
            stopped: Some(StopReason::RankFailed(1)),
            elapsed: Default::default(),
            first_rank: 0,
            pids: vec![],
            transcript: Default::default(),
        };
        let (evalue, tb) = failure(&report).unwrap();
        assert_eq!(evalue, "rank 1 panicked at cell line 3: boom");
        let all = tb.join("\n");
        assert!(all.contains("ranks 2") && all.contains("session is unchanged"), "{all}");
        assert!(!all.contains("step 1"), "the last output is the table's, not said again: {all}");
        assert_eq!(all.matches("boom").count(), 1, "{all}");
        // A backtrace without the cell's own frames says nothing; one with them is shown.
        assert!(!all.contains("backtrace"), "{all}");
        let mut with_frames = report.clone();
        with_frames.ranks[1].backtrace = "   3: ranch_rank::find_bad_record\n   4: ranch_rank::__ranch_cell\n   5: main".into();
        let all = failure(&with_frames).unwrap().1.join("\n");
        assert!(all.contains("backtrace of rank 1 (RUST_BACKTRACE):\n     3: ranch_rank::find_bad_record"), "{all}");
        let table = failure_bundle(&report).unwrap();
        let plain = table["text/plain"].as_str().unwrap();
        assert!(plain.starts_with("ranks   outcome   message  cell line\nrank 1  panicked  boom     3"), "{plain}");
        assert!(plain.ends_with("last output of rank 1:\n    [1] step 1"), "{plain}");
    }

    #[test]
    fn ranks_failing_the_same_way_are_said_once() {
        let panic = |m: &str| RankReport {
            ending: Ending::Panicked { message: m.into(), line: Some(2) },
            last_lines: [format!("<{m}>")].into(),
            host: None,
            started: Default::default(),
            ended: Default::default(),
            backtrace: String::new(),
        };
        let mut ranks: Vec<RankReport> = (0..8).map(|_| panic("out of memory")).collect();
        ranks[5] = RankReport {
            ending: Ending::ExitCode(3),
            last_lines: Default::default(),
            host: None,
            started: Default::default(),
            ended: Default::default(),
            backtrace: String::new(),
        };
        ranks[9 - 2] = panic("bad shard");
        let lost = |why: &str| RankReport { ending: Ending::Lost(why.into()), ..ranks[5].clone() };
        let two_lost = RunReport {
            ranks: vec![lost("mpirun failed"), lost("mpirun failed")],
            stopped: None,
            elapsed: Default::default(),
            first_rank: 0,
            pids: vec![],
            transcript: Default::default(),
        };
        assert_eq!(failure(&two_lost).unwrap().0, "ranks 0, 1 were lost: mpirun failed");
        let report =
            RunReport { ranks, stopped: None, elapsed: Default::default(), first_rank: 10, pids: vec![], transcript: Default::default() };
        let (evalue, tb) = failure(&report).unwrap();
        assert_eq!(
            evalue,
            "ranks 10-14, 16 panicked at cell line 2: out of memory; rank 15 exited with status 3; rank 17 panicked at cell line 2: bad shard"
        );
        assert_eq!(tb[0], "\x1b[1;31m%%ranch failed\x1b[0m: ranks failed in 3 ways:");
        assert_eq!(tb[1], "  ranks 10-14, 16 panicked at cell line 2: out of memory", "{tb:?}");
        assert_eq!(tb.len(), 5, "three ways, then the session: {tb:?}");
        let html = failure_bundle(&report).unwrap()["text/html"].as_str().unwrap().to_string();
        assert_eq!(html.matches("<tr>").count(), 4);
        assert!(html.contains(">ranks 10-14, 16</td>") && html.contains("&lt;bad shard&gt;"));
        // The first row: who, how, what the panic said and where.
        let row = html.split("<tr>").nth(2).unwrap();
        let cells: Vec<&str> = row.split("</td>").map(|c| c.rsplit('>').next().unwrap()).collect();
        assert_eq!(cells[..4], ["ranks 10-14, 16", "panicked", "out of memory", "2"], "{row}");
        assert!(html.contains(">exited with status 3</td>"), "{html}");
        assert_eq!(ranks_label(&[0, 1]), "ranks 0, 1");
        assert_eq!(ranks_label(&[4]), "rank 4");
    }
}
