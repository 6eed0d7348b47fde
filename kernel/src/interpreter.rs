//! The seam between the Jupyter protocol core and whatever runs cells.
//!
//! The core (`server`) knows messages, sockets and ordering; an [`Interpreter`] knows how
//! code runs. Outputs flow back through an [`OutputSink`] while a cell runs, so the core can
//! publish them on IOPub before the cell's reply and `idle`.

use serde_json::{Map, Value};
use std::sync::Arc;

/// A MIME bundle: `{"text/plain": "...", "text/html": "..."}`.
pub type MimeBundle = Map<String, Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Where a running cell's output goes. Implementations must be cheap and non-blocking:
/// they are called from reader threads.
pub trait OutputSink: Send + Sync {
    fn stream(&self, stream: Stream, text: &str);
    fn display(&self, data: MimeBundle, metadata: MimeBundle);
    /// A help page: sent with the cell's reply as its `page` payload, which Jupyter shows in
    /// its pager or help panel (ipykernel's `obj?`). The last page of a cell wins.
    fn page(&self, _data: MimeBundle) {}
    /// Shows `data` under the display id `id`, or (`update`) replaces what was shown under
    /// it wherever it is (Jupyter's `update_display_data`).
    fn display_in_place(&self, data: MimeBundle, metadata: MimeBundle, id: &str, update: bool) {
        let _ = id;
        if !update {
            self.display(data, metadata);
        }
    }
    /// Clears the cell's output when the next output arrives (`clear_output`, `wait: true`).
    fn clear_output(&self) {}
}

/// Asks the frontend for a line of input (Jupyter's stdin channel).
pub trait InputProvider: Send + Sync {
    /// `None` when the frontend does not allow input or did not answer.
    fn read_line(&self, prompt: &str, password: bool) -> Option<String>;
}

/// Everything a cell needs from the kernel while it runs.
#[derive(Clone)]
pub struct CellContext {
    pub sink: Arc<dyn OutputSink>,
    pub input: Option<Arc<dyn InputProvider>>,
    pub execution_count: usize,
}

/// A failed cell, in Jupyter's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct CellError {
    pub ename: String,
    pub evalue: String,
    pub traceback: Vec<String>,
}

impl CellError {
    pub fn new(ename: impl Into<String>, evalue: impl Into<String>) -> Self {
        let evalue = evalue.into();
        CellError { ename: ename.into(), traceback: vec![evalue.clone()], evalue }
    }
}

/// `Ok(Some(bundle))` becomes an `execute_result`; `Ok(None)` shows nothing.
pub type CellOutcome = Result<Option<MimeBundle>, CellError>;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Completions {
    pub matches: Vec<String>,
    /// Byte offsets into the code.
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completeness {
    Complete,
    Incomplete {
        indent: String,
    },
    Invalid,
    /// Not decided (the code is too big to parse safely).
    Unknown,
}

pub type CompletenessCheck = Arc<dyn Fn(&str) -> Completeness + Send + Sync>;

/// Stops whatever the interpreter is running. Called from the control channel (or a
/// SIGINT handler) while `execute` blocks on another thread.
pub trait Interrupter: Send + Sync {
    fn interrupt(&self);
}

pub trait Interpreter: Send + 'static {
    /// Called once on the interpreter thread before the first request: slow start-up
    /// work goes here so the kernel answers `kernel_info` at once.
    fn warm_up(&mut self) {}
    fn execute(&mut self, code: &str, cx: &CellContext) -> CellOutcome;
    /// `cursor` is a byte offset into `code`.
    fn complete(&mut self, code: &str, cursor: usize) -> Completions;
    /// Documentation for the item under `cursor` (byte offset), if any.
    fn inspect(&mut self, code: &str, cursor: usize) -> Option<MimeBundle>;
    /// Answers `is_complete` on the caller's thread, even while a cell runs or the
    /// interpreter starts: consoles give up on the answer after about a second.
    fn completeness(&self) -> CompletenessCheck;
    fn interrupter(&self) -> Arc<dyn Interrupter>;
    /// Called once before the kernel exits: stop every child process.
    fn shutdown(&mut self);
}
