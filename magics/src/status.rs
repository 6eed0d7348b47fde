//! The live status table of a launch: one row per rank (rank, host, pid, GPU, state, elapsed,
//! lines written, last line, progress with its rate and the time left while it runs), shown when the ranks start, redrawn in place at most
//! every [`REFRESH`] while anything changes, and left in its final state (how each rank
//! ended, its wall time, stragglers) when the cell ends. HTML for notebooks, a text table
//! for console clients.

use crate::grid::{Cell, Grid};
use crate::report::Ending;
use serde_json::{Map, Value};
use std::time::{Duration, Instant};

/// Least time between two redraws.
pub const REFRESH: Duration = Duration::from_millis(250);
/// Longest last line shown (characters).
const LAST_LINE: usize = 60;
/// A rank that succeeded is a straggler when it took this much longer than the median rank,
/// and at least [`STRAGGLER_MIN`] more. (One that failed, or was stopped because another
/// did, ran as long as the failure let it: it is not slow.)
const STRAGGLER_RATIO: f64 = 1.25;
const STRAGGLER_MIN: Duration = Duration::from_millis(500);

/// What is known of each rank before it starts.
#[derive(Debug, Clone, Default)]
pub struct StatusSetup {
    /// Each rank's host (empty: this host, named once).
    pub hosts: Vec<String>,
    /// Each rank's GPU, when pinned.
    pub gpus: Vec<Option<String>>,
}

#[derive(Debug, Clone)]
struct Row {
    pid: Option<u32>,
    ended: Option<(Instant, Ending)>,
    lines: u64,
    last_line: String,
    /// The line being written, for output that arrives in pieces.
    partial: String,
    progress: Option<(u64, u64)>,
    /// When the last progress was reported.
    progress_at: Option<Instant>,
}

/// The table of one launch.
#[derive(Debug)]
pub struct Board {
    setup: StatusSetup,
    this_host: String,
    /// Each row's rank, as the user knows it.
    labels: Vec<usize>,
    started: Instant,
    rows: Vec<Row>,
    changed: bool,
    drawn: Option<Instant>,
}

impl Board {
    /// A table with one row for each of `ranks` (in that order).
    pub fn new(ranks: Vec<usize>, setup: StatusSetup) -> Board {
        let this_host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "this host".into());
        let row =
            Row { pid: None, ended: None, lines: 0, last_line: String::new(), partial: String::new(), progress: None, progress_at: None };
        Board { setup, this_host, started: Instant::now(), rows: vec![row; ranks.len()], labels: ranks, changed: true, drawn: None }
    }

    pub fn pid(&mut self, rank: usize, pid: Option<u32>) {
        if self.rows[rank].pid != pid {
            self.rows[rank].pid = pid;
            self.changed = true;
        }
    }

    pub fn lines(&mut self, rank: usize, lines: &[String]) {
        let row = &mut self.rows[rank];
        row.lines += lines.len() as u64;
        if let Some(last) = lines.iter().rev().find(|l| !l.trim().is_empty()) {
            row.last_line = last.chars().take(LAST_LINE).collect();
        }
        self.changed = true;
    }

    /// Output that arrives in pieces rather than lines: each newline ends a line, and the
    /// last non-blank piece is the last line.
    pub fn text(&mut self, rank: usize, text: &str) {
        let row = &mut self.rows[rank];
        for piece in text.split_inclusive('\n') {
            let body = piece.trim_end_matches(['\n', '\r']);
            // Only the first LAST_LINE characters of a line are ever shown.
            let room = LAST_LINE.saturating_sub(row.partial.chars().count());
            row.partial.extend(body.chars().take(room));
            if !row.partial.trim().is_empty() {
                row.last_line.clone_from(&row.partial);
            }
            if piece.ends_with('\n') {
                row.lines += 1;
                row.partial.clear();
            }
        }
        self.changed = true;
    }

    /// How long since the table was made (the launch's start).
    pub fn running_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Each row's time for `--timing`, from the table's start; a row whose end is not known
    /// counts as stopped now.
    pub fn spans(&self) -> Vec<crate::timing::Span> {
        let now = Instant::now();
        self.rows
            .iter()
            .zip(&self.labels)
            .map(|(row, &rank)| {
                let (at, ending) = row.ended.clone().unwrap_or((now, Ending::Stopped));
                crate::timing::Span { rank, started: Duration::ZERO, ended: at.saturating_duration_since(self.started), ending }
            })
            .collect()
    }

    /// Whether rank `rank`'s end is known.
    pub fn has_ended(&self, rank: usize) -> bool {
        self.rows[rank].ended.is_some()
    }

    pub fn progress(&mut self, rank: usize, done: u64, total: u64) {
        self.progress_at(rank, done, total, Instant::now());
    }

    fn progress_at(&mut self, rank: usize, done: u64, total: u64, at: Instant) {
        self.rows[rank].progress = Some((done.min(total), total));
        self.rows[rank].progress_at = Some(at);
        self.changed = true;
    }

    /// A running row's pace: its steps per second since the table started, as of its last
    /// report, and the time left at that pace (`12.5/s ETA 8 s`); `None` before the first
    /// step, once it is complete, or once the rank ended.
    fn pace(&self, row: &Row) -> Option<String> {
        let ((done, total), at) = (row.progress?, row.progress_at?);
        let secs = at.saturating_duration_since(self.started).as_secs_f64();
        if row.ended.is_some() || done == 0 || done >= total || secs <= 0.0 {
            return None;
        }
        let rate = done as f64 / secs;
        let rate_text = if rate >= 10.0 {
            format!("{rate:.0}/s")
        } else if rate >= 0.1 {
            format!("{rate:.1}/s")
        } else {
            format!("{:.1}/min", rate * 60.0)
        };
        Some(format!("{rate_text} ETA {}", short_duration((total - done) as f64 / rate)))
    }

    pub fn ended(&mut self, rank: usize, ending: &Ending) {
        self.rows[rank].ended = Some((Instant::now(), ending.clone()));
        self.changed = true;
    }

    /// Whether a redraw is due: something changed (or the clock of a running rank moved)
    /// and [`REFRESH`] has passed since the last.
    pub fn due(&self, now: Instant) -> bool {
        let running = self.rows.iter().any(|r| r.ended.is_none());
        (self.changed || running) && self.drawn.is_none_or(|d| now.duration_since(d) >= REFRESH)
    }

    /// The table as a display bundle (`text/html`, `text/plain`); marks it drawn.
    pub fn render(&mut self, finished: bool) -> Map<String, Value> {
        let now = Instant::now();
        self.drawn = Some(now);
        self.changed = false;
        let rows = self.view(now, finished);
        let table = table(&rows);
        let mut html = table.html();
        if !finished {
            html.push_str("<div class=\"ranch-status-live\" style=\"font-size:11px;color:#888\">running...</div>");
        }
        let mut data = Map::new();
        data.insert("text/html".into(), Value::String(html));
        data.insert("text/plain".into(), Value::String(table.text()));
        data
    }

    fn view(&self, now: Instant, finished: bool) -> Vec<RowView> {
        let walls: Vec<Option<Duration>> =
            self.rows.iter().map(|r| r.ended.as_ref().map(|(at, _)| at.duration_since(self.started))).collect();
        let median = median(walls.iter().flatten().copied().collect());
        self.rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let elapsed = walls[i].unwrap_or_else(|| now.duration_since(self.started));
                let straggler = finished
                    && matches!(r.ended, Some((_, Ending::Success)))
                    && median.is_some_and(|m| {
                        walls[i].is_some_and(|w| w.as_secs_f64() > m.as_secs_f64() * STRAGGLER_RATIO && w > m + STRAGGLER_MIN)
                    });
                let (state, ok) = match &r.ended {
                    None if r.pid.is_none() && r.lines == 0 && r.progress.is_none() => ("starting".to_string(), None),
                    None => ("running".to_string(), None),
                    Some((_, e)) => (ending_text(e), Some(matches!(e, Ending::Success))),
                };
                RowView {
                    rank: self.labels[i],
                    host: self.setup.hosts.get(i).filter(|h| !h.is_empty()).cloned().unwrap_or_else(|| self.this_host.clone()),
                    pid: r.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                    gpu: self.setup.gpus.get(i).cloned().flatten().unwrap_or_else(|| "-".into()),
                    state: if straggler { format!("{state} (straggler)") } else { state },
                    ok,
                    elapsed: format!("{:.1} s", elapsed.as_secs_f64()),
                    lines: r.lines,
                    last_line: r.last_line.clone(),
                    progress: r.progress,
                    pace: self.pace(r),
                }
            })
            .collect()
    }
}

struct RowView {
    rank: usize,
    host: String,
    pid: String,
    gpu: String,
    state: String,
    /// Some(true) succeeded, Some(false) failed, None still running.
    ok: Option<bool>,
    elapsed: String,
    lines: u64,
    last_line: String,
    progress: Option<(u64, u64)>,
    pace: Option<String>,
}

/// Seconds as a person reads them: `8 s`, `3 min 20 s`, `2 h 5 min`.
pub fn short_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

fn ending_text(e: &Ending) -> String {
    match e {
        Ending::Success => "done".into(),
        Ending::Panicked { .. } => "panicked".into(),
        Ending::ExitCode(c) => format!("exit {c}"),
        Ending::Signal(s) => format!("killed (signal {s})"),
        Ending::OomKilled { .. } => "killed (out of memory)".into(),
        Ending::OutOfMemory { .. } => "out of memory".into(),
        Ending::Stopped => "stopped".into(),
        Ending::NotStarted(_) => "not started".into(),
        Ending::Lost(_) => "lost".into(),
    }
}

fn percent(done: u64, total: u64) -> f64 {
    if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 }
}

/// A progress bar, `done` of `total`, as HTML.
pub fn bar_html(done: u64, total: u64) -> String {
    format!(
        "<div style=\"display:inline-block;width:100px;height:8px;background:#ddd;vertical-align:middle\">\
         <div style=\"width:{p:.0}%;height:8px;background:#2f81f7\"></div></div> {done}/{total}",
        p = percent(done, total)
    )
}

/// A progress bar, `done` of `total`, as text: `[###.......] 30/120`.
pub fn bar_text(done: u64, total: u64) -> String {
    let filled = ((percent(done, total) / 10.0).round() as usize).min(10);
    format!("[{}{}] {done}/{total}", "#".repeat(filled), ".".repeat(10 - filled))
}

/// A cell's own progress (`ranch::progress` in a plain cell) as a display bundle.
pub fn progress_bundle(done: u64, total: u64) -> Map<String, Value> {
    let done = done.min(total);
    let mut data = Map::new();
    data.insert("text/html".into(), Value::String(format!("<div class=\"ranch-progress\">{}</div>", bar_html(done, total))));
    data.insert("text/plain".into(), Value::String(bar_text(done, total)));
    data
}

/// The board's columns: the progress bar before the last line, which is the widest.
fn table(rows: &[RowView]) -> Grid {
    let mut table = Grid::new(&["rank", "host", "pid", "GPU", "state", "elapsed", "lines", "progress", "last line"])
        .class("ranch-status")
        .style("font-family:monospace;font-size:12px;border-collapse:collapse")
        .left(&[8]);
    for r in rows {
        let color = match r.ok {
            Some(true) => "#1a7f37",
            Some(false) => "#cf222e",
            None => "#9a6700",
        };
        let pace = r.pace.as_ref().map_or(String::new(), |p| format!(" {p}"));
        let progress = r.progress.map_or(Cell::text(""), |(d, t)| {
            Cell::markup(format!("{}{pace}", bar_text(d, t)), format!("{}{}", bar_html(d, t), crate::grid::escape(&pace)))
        });
        table.row([
            Cell::text(r.rank.to_string()),
            Cell::text(r.host.as_str()),
            Cell::text(r.pid.as_str()),
            Cell::text(r.gpu.as_str()),
            Cell::text(r.state.as_str()).style(&format!("color:{color}")),
            Cell::text(r.elapsed.as_str()),
            Cell::text(r.lines.to_string()),
            progress,
            Cell::text(r.last_line.as_str()),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_ranks_and_the_end_is_final() {
        let mut b = Board::new(vec![4, 5, 6], StatusSetup { hosts: vec![], gpus: vec![Some("0".into()), Some("1".into()), None] });
        assert!(b.due(Instant::now()));
        let first = b.render(false);
        assert!(first["text/plain"].as_str().unwrap().contains("starting"));
        assert!(!b.due(Instant::now()), "not again within the refresh time");
        b.pid(0, Some(42));
        b.lines(0, &["one".into(), "two <b>".into(), "   ".into()]);
        b.progress(1, 30, 120);
        b.ended(2, &Ending::ExitCode(3));
        let t = b.render(false);
        let plain = t["text/plain"].as_str().unwrap();
        assert!(plain.lines().nth(1).unwrap().starts_with("4 ") && plain.contains("42") && plain.contains("running"), "{plain}");
        assert!(plain.contains("[###.......] 30/120") && plain.contains("exit 3"), "{plain}");
        let html = t["text/html"].as_str().unwrap();
        assert!(html.contains("two &lt;b&gt;") && html.contains("width:25%") && html.contains("running..."), "{html}");
        b.ended(0, &Ending::Success);
        b.ended(1, &Ending::Panicked { message: "x".into(), line: None });
        let last = b.render(true);
        assert!(!last["text/html"].as_str().unwrap().contains("running..."));
        assert!(last["text/plain"].as_str().unwrap().contains("panicked"));
        assert!(!b.due(Instant::now() + REFRESH), "nothing runs, nothing changed");
    }

    #[test]
    fn a_running_ranks_pace_and_time_left_follow_its_progress() {
        let mut b = Board::new(vec![0, 1], StatusSetup::default());
        let started = b.started;
        b.progress_at(0, 20, 100, started + Duration::from_secs(2));
        b.progress_at(1, 3, 1000, started + Duration::from_secs(60));
        let plain = b.render(false)["text/plain"].as_str().unwrap().to_string();
        assert!(plain.contains("[##........] 20/100 10/s ETA 8 s"), "{plain}");
        assert!(plain.contains("3/1000 3.0/min ETA 5 h 32 min"), "{plain}");
        b.progress_at(0, 100, 100, started + Duration::from_secs(10));
        b.ended(1, &Ending::Success);
        let plain = b.render(true)["text/plain"].as_str().unwrap().to_string();
        assert!(!plain.contains("ETA") && !plain.contains("/s"), "no pace once complete or ended: {plain}");
        assert_eq!((short_duration(59.4), short_duration(200.0)), ("59 s".to_string(), "3 min 20 s".to_string()));
    }

    #[test]
    fn a_cell_progress_bar() {
        let b = progress_bundle(7, 10);
        assert_eq!(b["text/plain"], "[#######...] 7/10");
        assert!(b["text/html"].as_str().unwrap().contains("width:70%"));
        assert_eq!(progress_bundle(12, 10)["text/plain"], "[##########] 10/10");
        assert_eq!(progress_bundle(0, 0)["text/plain"], "[##########] 0/0");
    }

    #[test]
    fn output_in_pieces_counts_lines_and_keeps_the_last() {
        let mut b = Board::new(vec![2, 5], StatusSetup::default());
        b.text(1, "step 1\nstep");
        b.text(1, " 2\n\n");
        assert!(!b.has_ended(1));
        b.ended(1, &Ending::Success);
        assert!(b.has_ended(1) && !b.has_ended(0));
        let plain = b.render(true)["text/plain"].as_str().unwrap().to_string();
        let row = plain.lines().find(|l| l.starts_with("5 ")).unwrap_or_else(|| panic!("{plain}"));
        assert!(row.contains(" 3 ") && row.ends_with(" step 2"), "{row}");
    }

    #[test]
    fn a_rank_much_slower_than_the_others_is_a_straggler() {
        let mut b = Board::new(vec![0, 1, 2], StatusSetup::default());
        let t0 = b.started;
        for (r, secs) in [(0, 1.0), (1, 1.1), (2, 3.0)] {
            b.rows[r].ended = Some((t0 + Duration::from_secs_f64(secs), Ending::Success));
        }
        let plain = b.render(true)["text/plain"].as_str().unwrap().to_string();
        let straggling: Vec<&str> = plain.lines().filter(|l| l.contains("straggler")).collect();
        assert_eq!(straggling.len(), 1, "{plain}");
        assert!(straggling[0].starts_with("2 "), "{plain}");
    }

    #[test]
    fn ranks_stopped_after_a_failure_are_not_stragglers() {
        let mut b = Board::new(vec![0, 1, 2, 3, 4], StatusSetup::default());
        let t0 = b.started;
        b.rows[0].ended = Some((t0 + Duration::from_secs_f64(0.2), Ending::Panicked { message: "boom".into(), line: None }));
        for r in [1, 2, 3] {
            b.rows[r].ended = Some((t0 + Duration::from_secs_f64(0.3), Ending::Success));
        }
        b.rows[4].ended = Some((t0 + Duration::from_secs_f64(2.0), Ending::Stopped));
        let plain = b.render(true)["text/plain"].as_str().unwrap().to_string();
        assert!(!plain.contains("straggler"), "{plain}");
    }
}
