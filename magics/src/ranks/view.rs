//! What a cell shows while its ranks run, the same for both engines (a `%%ranch` cell's rank
//! programs, a `%%px` cell's pool ranks): each rank's output labelled `[rank]` and filtered
//! by `--see`, shown as it comes or kept for the end (`--group-outputs rank`); its displays
//! and `ranch::display` requests; and the live status table, redrawn in place. Each
//! engine's supervisor tells the view what its ranks do; the view decides what the cell shows.

use crate::args::{GroupOutputs, See};
use crate::display_op::DisplayOp;
use crate::ranks::rank_output::Stream;
use crate::report::Ending;
use crate::status::{Board, StatusSetup};
use crate::timing::Span;
use crate::transcript::Transcript;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Where what the ranks show goes (the kernel publishes it in the cell).
pub trait RankSink: Sync {
    /// Text made of whole lines, each already prefixed with its rank.
    fn output(&self, stream: Stream, text: &str);
    /// A rich output block of one rank.
    fn display(&self, rank: usize, data: Map<String, Value>);
    /// The cell's status table: `first` shows it, later calls replace it in place.
    fn status(&self, _data: Map<String, Value>, _first: bool) {}
    /// A rank's `ranch::display` request (a display to update in place, clearing output).
    fn control(&self, _rank: usize, _op: DisplayOp) {}
}

/// Lines of each rank's output kept for the failure table.
pub const LAST_LINES: usize = 10;

/// What a cell's view is made with.
#[derive(Debug, Clone)]
pub struct ViewSetup {
    /// Each row's rank as the user knows it, in row order.
    pub ranks: Vec<usize>,
    pub see: See,
    pub group_outputs: GroupOutputs,
    /// The status table (`None`: none, not even for `--timing`).
    pub status: Option<StatusSetup>,
    /// Whether the table is drawn in the cell (else it is kept for `--timing` only).
    pub live: bool,
    /// How long the ranks run before the table appears, unless they report progress or one
    /// ends badly: a pool's cells are often quick steps, and a table for each would bury
    /// their output. Zero for `%%ranch`, whose table shows at once.
    pub show_after: Duration,
}

#[derive(Default)]
struct Row {
    last_lines: VecDeque<String>,
    /// The size of the last allocation Rust said failed (before it aborts; a backtrace may
    /// follow, so it is not always among the last lines).
    failed_allocation: Option<u64>,
    /// Whether the next stdout / stderr text starts a line (labels go at line starts).
    mid_line: [bool; 2],
}

/// The view of one cell's ranks.
pub struct RankView {
    setup: ViewSetup,
    rows: Vec<Row>,
    /// Each row's process id, for the table.
    pids: Vec<Option<u32>>,
    /// Made when the ranks start running the cell (its clock starts then).
    board: Option<Board>,
    shown: bool,
    /// A rank reported progress, or ended badly: the table is worth showing now.
    worth_showing: bool,
    /// Line starts of ranks outside the cell that still write (a pool rank's thread).
    others: BTreeMap<usize, [bool; 2]>,
    /// What the ranks wrote (that `--see` shows), for `--group-outputs` and `%ranch_output`.
    transcript: Transcript,
}

impl RankView {
    pub fn new(setup: ViewSetup) -> RankView {
        let n = setup.ranks.len();
        RankView {
            rows: (0..n).map(|_| Row::default()).collect(),
            pids: vec![None; n],
            transcript: Transcript::new(setup.ranks.clone()),
            setup,
            board: None,
            shown: false,
            worth_showing: false,
            others: BTreeMap::new(),
        }
    }

    /// Each row's rank, as the user knows it.
    pub fn ranks(&self) -> &[usize] {
        &self.setup.ranks
    }

    /// Whether the status table is drawn in the cell (else nothing needs redrawing).
    pub fn draws(&self) -> bool {
        self.setup.live && self.setup.status.is_some()
    }

    /// The row of rank `rank` (as the user knows it), if it runs the cell.
    pub fn row_of(&self, rank: usize) -> Option<usize> {
        self.setup.ranks.iter().position(|&r| r == rank)
    }

    /// The ranks started running the cell: the table's clock starts.
    pub fn running(&mut self) {
        self.board();
    }

    fn board(&mut self) -> Option<&mut Board> {
        let setup = self.setup.status.as_ref()?;
        let pids = &self.pids;
        let ranks = &self.setup.ranks;
        Some(self.board.get_or_insert_with(|| {
            let mut b = Board::new(ranks.clone(), setup.clone());
            for (row, pid) in pids.iter().enumerate() {
                b.pid(row, *pid);
            }
            b
        }))
    }

    pub fn pid(&mut self, row: usize, pid: Option<u32>) {
        self.pids[row] = pid;
        if let Some(b) = self.board.as_mut() {
            b.pid(row, pid);
        }
    }

    /// Whole lines (without their newlines) that row `row` wrote.
    pub fn lines(&mut self, row: usize, stream: Stream, lines: &[String], sink: &dyn RankSink) {
        if let Some(b) = self.board() {
            b.lines(row, lines);
        }
        let r = &mut self.rows[row];
        for l in lines {
            if r.last_lines.len() == LAST_LINES {
                r.last_lines.pop_front();
            }
            r.last_lines.push_back(l.clone());
            if let Some(bytes) = crate::ranks::death::failed_allocation([l]) {
                r.failed_allocation = Some(bytes);
            }
        }
        let rank = self.setup.ranks[row];
        if self.setup.see.shows(rank) {
            let text: String = lines.iter().map(|l| format!("[{rank}] {l}\n")).collect();
            self.emit(row, stream, text, lines.len(), sink);
        }
    }

    /// Output of rank `rank` that arrives in pieces rather than lines; a rank outside the
    /// cell is labelled and shown as `--see` says, outside the table.
    pub fn text(&mut self, rank: usize, stream: Stream, text: &str, sink: &dyn RankSink) {
        let row = self.row_of(rank);
        if let Some(b) = row.and_then(|row| self.board().map(|b| (b, row))) {
            b.0.text(b.1, text);
        }
        if !self.setup.see.shows(rank) {
            return;
        }
        let mid_line = match row {
            Some(row) => &mut self.rows[row].mid_line[stream as usize],
            None => &mut self.others.entry(rank).or_default()[stream as usize],
        };
        let mut labelled = String::with_capacity(text.len() + 8);
        for piece in text.split_inclusive('\n') {
            if !*mid_line {
                labelled.push_str(&format!("[{rank}] "));
            }
            labelled.push_str(piece);
            *mid_line = !piece.ends_with('\n');
        }
        match row {
            Some(row) => {
                let lines = text.matches('\n').count();
                self.emit(row, stream, labelled, lines, sink)
            }
            None => sink.output(stream, &labelled),
        }
    }

    /// Labelled output of a row: to the cell now (`--group-outputs order`), and kept.
    fn emit(&mut self, row: usize, stream: Stream, text: String, lines: usize, sink: &dyn RankSink) {
        if self.setup.group_outputs == GroupOutputs::Order {
            sink.output(stream, &text);
        }
        self.transcript.keep(row, stream, text, lines);
    }

    /// What the ranks wrote, once the cell is over (for `%ranch_output`).
    pub fn take_transcript(&mut self) -> Transcript {
        std::mem::take(&mut self.transcript)
    }

    /// A rich output block of rank `rank`.
    pub fn display(&mut self, rank: usize, data: Map<String, Value>, sink: &dyn RankSink) {
        if self.setup.see.shows(rank) {
            sink.display(rank, data);
        }
    }

    /// A `ranch::display` request of rank `rank`: progress goes to the table.
    pub fn control(&mut self, rank: usize, op: DisplayOp, sink: &dyn RankSink) {
        match op {
            DisplayOp::Progress { done, total } => {
                if let Some((b, row)) = self.row_of(rank).and_then(|row| self.board().map(|b| (b, row))) {
                    b.progress(row, done, total);
                    self.worth_showing = true;
                }
            }
            op if self.setup.see.shows(rank) => sink.control(rank, op),
            _ => {}
        }
    }

    /// Row `row` ended the cell (the first word stands).
    pub fn ended(&mut self, row: usize, ending: &Ending) {
        let Some(b) = self.board() else { return };
        if !b.has_ended(row) {
            b.ended(row, ending);
            self.worth_showing |= *ending != Ending::Success;
        }
    }

    /// The size of the allocation row `row` last said failed, if any.
    pub fn failed_allocation(&self, row: usize) -> Option<u64> {
        self.rows[row].failed_allocation
    }

    /// The last lines row `row` wrote, for the failure table.
    pub fn take_last_lines(&mut self, row: usize) -> VecDeque<String> {
        std::mem::take(&mut self.rows[row].last_lines)
    }

    /// Redraws the table if it is due.
    pub fn tick(&mut self, now: Instant, sink: &dyn RankSink) {
        let show_after = self.setup.show_after;
        let Some(b) = self.board.as_ref() else { return };
        let long = b.running_for(now) >= show_after;
        if (self.shown || self.worth_showing || long) && b.due(now) {
            self.draw(false, sink);
        }
    }

    /// Leaves the table in its final state (rows that did not say how they ended get
    /// `rest(row)`), and shows the output kept for `--group-outputs`: rank by rank, or every
    /// rank's stdout then every rank's stderr (`type`).
    pub fn finish(&mut self, rest: impl Fn(usize) -> Ending, sink: &dyn RankSink) {
        if let Some(b) = self.board.as_mut() {
            for row in 0..self.setup.ranks.len() {
                if !b.has_ended(row) {
                    b.ended(row, &rest(row));
                    self.worth_showing = true;
                }
            }
            if self.shown || self.worth_showing || self.setup.show_after.is_zero() {
                self.draw(true, sink);
            }
        }
        if self.setup.group_outputs != GroupOutputs::Order {
            self.transcript.show(self.setup.group_outputs, None, |stream, text| sink.output(stream, text));
        }
    }

    /// Each rank's time in the cell, once the ranks started it.
    pub fn spans(&self) -> Option<Vec<Span>> {
        self.board.as_ref().map(Board::spans)
    }

    fn draw(&mut self, finished: bool, sink: &dyn RankSink) {
        let Some(b) = self.board.as_mut().filter(|_| self.setup.live) else { return };
        sink.status(b.render(finished), !self.shown);
        self.shown = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl RankSink for Seen {
        fn output(&self, stream: Stream, text: &str) {
            self.0.lock().unwrap().push(format!("{stream:?}: {text}"));
        }
        fn display(&self, rank: usize, _data: Map<String, Value>) {
            self.0.lock().unwrap().push(format!("display of {rank}"));
        }
        fn status(&self, _data: Map<String, Value>, first: bool) {
            self.0.lock().unwrap().push(format!("status (first: {first})"));
        }
    }

    fn view(see: See, group_outputs: GroupOutputs, show_after: Duration) -> RankView {
        RankView::new(ViewSetup { ranks: vec![2, 5], see, group_outputs, status: Some(StatusSetup::default()), live: true, show_after })
    }

    #[test]
    fn pieces_are_labelled_at_line_starts_per_rank_and_stream_and_see_filters() {
        let (mut v, sink) = (view(See::Ranks(vec![5, 7]), GroupOutputs::Order, Duration::ZERO), Seen::default());
        v.text(5, Stream::Stdout, "a", &sink);
        v.text(5, Stream::Stderr, "e\n", &sink);
        v.text(5, Stream::Stdout, "b\nc\n", &sink);
        v.text(2, Stream::Stdout, "hidden\n", &sink);
        v.text(7, Stream::Stdout, "outside the cell\n", &sink);
        assert_eq!(*sink.0.lock().unwrap(), ["Stdout: [5] a", "Stderr: [5] e\n", "Stdout: b\n[5] c\n", "Stdout: [7] outside the cell\n"]);
    }

    #[test]
    fn grouped_output_and_the_final_table_come_at_the_end() {
        let (mut v, sink) = (view(See::All, GroupOutputs::Rank, Duration::ZERO), Seen::default());
        v.running();
        v.lines(1, Stream::Stdout, &["x".into()], &sink);
        v.lines(0, Stream::Stdout, &["y".into()], &sink);
        assert!(sink.0.lock().unwrap().is_empty(), "kept for the end");
        v.ended(0, &Ending::Success);
        v.finish(|_| Ending::Stopped, &sink);
        assert_eq!(*sink.0.lock().unwrap(), ["status (first: true)", "Stdout: [2] y\n", "Stdout: [5] x\n"]);
        assert_eq!(v.take_last_lines(1), ["x"]);
        let spans = v.spans().unwrap();
        assert_eq!((spans[0].ending.clone(), spans[1].ending.clone()), (Ending::Success, Ending::Stopped));
    }

    #[test]
    fn grouped_by_type_is_every_ranks_stdout_then_every_ranks_stderr() {
        let (mut v, sink) = (view(See::All, GroupOutputs::Type, Duration::ZERO), Seen::default());
        v.lines(1, Stream::Stderr, &["e5".into()], &sink);
        v.lines(1, Stream::Stdout, &["o5".into()], &sink);
        v.text(2, Stream::Stderr, "e2\n", &sink);
        v.text(2, Stream::Stdout, "o2\n", &sink);
        assert!(sink.0.lock().unwrap().is_empty(), "kept for the end");
        v.finish(|_| Ending::Success, &sink);
        let out: Vec<_> = sink.0.lock().unwrap().iter().filter(|l| !l.starts_with("status")).cloned().collect();
        assert_eq!(out, ["Stdout: [2] o2\n[5] o5\n", "Stderr: [2] e2\n[5] e5\n"], "rank by rank in each stream");
    }

    #[test]
    fn a_quick_cells_table_is_drawn_only_when_worth_it() {
        let (mut v, sink) = (view(See::All, GroupOutputs::Order, Duration::from_secs(3600)), Seen::default());
        v.running();
        v.tick(Instant::now(), &sink);
        v.ended(0, &Ending::Success);
        v.ended(1, &Ending::Success);
        v.finish(|_| Ending::Stopped, &sink);
        assert!(sink.0.lock().unwrap().is_empty(), "no table for a quick cell that went well");
        let (mut v, sink) = (view(See::All, GroupOutputs::Order, Duration::from_secs(3600)), Seen::default());
        v.running();
        v.control(5, DisplayOp::Progress { done: 1, total: 4 }, &sink);
        v.tick(Instant::now(), &sink);
        v.finish(|_| Ending::Lost("gone".into()), &sink);
        assert_eq!(*sink.0.lock().unwrap(), ["status (first: true)", "status (first: false)"], "progress makes it worth showing");
    }
}
