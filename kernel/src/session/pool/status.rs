//! The live status table of a `%%px` cell: the same table as a launch's
//! ([`ranch_magics::status::Board`]), fed by the pool's events and redrawn in place while
//! the cell's ranks run. Pool cells are often quick steps, so a table for each would bury
//! their output: it appears once the ranks have run the cell for [`SHOW_AFTER`], or reported
//! progress, and at the end when a rank did not finish well. Its clock starts when the
//! ranks start the cell (not while evcxr compiles it: a cell that does not compile shows none).

use super::super::events::CurrentCell;
use crate::interpreter::MimeBundle;
use ranch_magics::report::Ending;
use ranch_magics::status::{Board, StatusSetup};
use std::time::{Duration, Instant};

/// How long the ranks run a cell before its table appears (unless they report progress).
pub(super) const SHOW_AFTER: Duration = Duration::from_secs(1);

pub(super) struct CellStatus {
    /// The cell's pool ranks, in row order.
    ranks: Vec<usize>,
    setup: StatusSetup,
    /// Every pool rank's process id.
    pids: Vec<u32>,
    /// Made when the ranks start the cell.
    board: Option<Board>,
    /// A rank reported progress, or did not finish well: the table is worth showing.
    worth_showing: bool,
    id: String,
    shown: bool,
    /// Drawn in the cell (`false`: kept only for `--timing`).
    live: bool,
}

impl CellStatus {
    /// The table of a cell that runs on pool ranks `ranks`; `gpus` and `pids` are every pool
    /// rank's. `live`: drawn in the cell (else only kept for `--timing`).
    pub(super) fn new(ranks: &[usize], gpus: &[String], pids: Vec<u32>, hosts: &[String], live: bool) -> CellStatus {
        let gpus = ranks.iter().map(|&r| gpus.get(r).filter(|g| g.as_str() != "-").cloned()).collect();
        let hosts = if hosts.is_empty() { Vec::new() } else { ranks.iter().map(|&r| hosts.get(r).cloned().unwrap_or_default()).collect() };
        CellStatus {
            ranks: ranks.to_vec(),
            setup: StatusSetup { hosts, gpus },
            pids,
            board: None,
            worth_showing: false,
            id: ranch_magics::display_op::own_id("px-status"),
            shown: false,
            live,
        }
    }

    /// The ranks started the cell (the table's clock starts).
    pub(super) fn running(&mut self) {
        self.board();
    }

    /// The board, and the row of pool rank `rank` (`None`: not one of the cell's ranks).
    fn row(&mut self, rank: usize) -> Option<(&mut Board, usize)> {
        let row = self.ranks.iter().position(|&r| r == rank)?;
        Some((self.board(), row))
    }

    fn board(&mut self) -> &mut Board {
        self.board.get_or_insert_with(|| {
            let mut b = Board::new(self.ranks.clone(), self.setup.clone());
            for (row, &rank) in self.ranks.iter().enumerate() {
                b.pid(row, self.pids.get(rank).copied());
            }
            b
        })
    }

    pub(super) fn text(&mut self, rank: usize, text: &str) {
        if let Some((b, row)) = self.row(rank) {
            b.text(row, text);
        }
    }

    pub(super) fn progress(&mut self, rank: usize, done: u64, total: u64) {
        if let Some((b, row)) = self.row(rank) {
            b.progress(row, done, total);
            self.worth_showing = true;
        }
    }

    /// Rank `rank` finished the cell, or panicked in it (the first word stands).
    pub(super) fn ended(&mut self, rank: usize, ending: Ending) {
        if let Some((b, row)) = self.row(rank)
            && !b.has_ended(row)
        {
            b.ended(row, &ending);
            self.worth_showing |= ending != Ending::Success;
        }
    }

    /// Redraws the table if it is due.
    pub(super) fn tick(&mut self, cell: &CurrentCell) {
        let now = Instant::now();
        let long = self.board.as_ref().is_some_and(|b| b.running_for(now) >= SHOW_AFTER);
        if (self.shown || self.worth_showing || long) && self.board.as_ref().is_some_and(|b| b.due(now)) {
            self.draw(cell, false);
        }
    }

    /// Leaves the table in its final state: ranks that did not say how they ended get
    /// `rest(rank)`. Nothing is drawn when no rank started the cell.
    pub(super) fn finish(&mut self, cell: &CurrentCell, rest: impl Fn(usize) -> Ending) {
        let Some(b) = self.board.as_mut() else { return };
        for (row, &rank) in self.ranks.iter().enumerate() {
            if !b.has_ended(row) {
                b.ended(row, &rest(rank));
                self.worth_showing = true;
            }
        }
        if self.shown || self.worth_showing {
            self.draw(cell, true);
        }
    }

    /// Whether it is drawn in the cell (else nothing needs redrawing).
    pub(super) fn is_live(&self) -> bool {
        self.live
    }

    /// Each rank's time in the cell, once the ranks started it.
    pub(super) fn spans(&self) -> Option<Vec<ranch_magics::timing::Span>> {
        self.board.as_ref().map(Board::spans)
    }

    fn draw(&mut self, cell: &CurrentCell, finished: bool) {
        if !self.live {
            return;
        }
        let Some(b) = self.board.as_mut() else { return };
        let mut meta = MimeBundle::new();
        meta.insert("ranch".into(), serde_json::json!({ "status": true }));
        cell.display_in_place(b.render(finished), meta, &self.id, self.shown);
        self.shown = true;
    }
}
