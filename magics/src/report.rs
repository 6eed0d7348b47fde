//! What a run of ranks ended as: each rank's ending, its last lines and times, and why the
//! supervisor stopped the rest. The supervisor writes it; the status board, the failure
//! table, the timing chart and the merge read it.

use std::collections::VecDeque;
use std::time::Duration;

/// How one rank ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    Success,
    Panicked {
        message: String,
        line: Option<usize>,
    },
    ExitCode(i32),
    Signal(i32),
    /// Killed by the kernel's OOM killer (its count went up when the rank got SIGKILL), with
    /// the rank's peak resident memory in bytes when known.
    OomKilled {
        peak: Option<u64>,
    },
    /// An allocation of `bytes` failed (a memory limit such as `ulimit -v`, or the machine),
    /// and the rank aborted.
    OutOfMemory {
        bytes: u64,
    },
    /// Stopped by the supervisor (another rank failed, timeout, interrupt).
    Stopped,
    /// The process could not be started.
    NotStarted(String),
    /// Its launcher ended without saying how the rank did (the message says what is known).
    Lost(String),
}

#[derive(Debug, Clone)]
pub struct RankReport {
    pub ending: Ending,
    /// The last lines it wrote (stdout and stderr), for error reports.
    pub last_lines: VecDeque<String>,
    /// The host it ran on, when a launcher placed it on named hosts.
    pub host: Option<String>,
    /// When its process started and when its end was known, from the launch's start (a
    /// launcher's ranks start with the launcher).
    pub started: Duration,
    pub ended: Duration,
    /// Its backtrace, when it panicked and `RUST_BACKTRACE` asked for one (else empty).
    pub backtrace: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    Timeout {
        running: Vec<usize>,
        limit: Duration,
    },
    Interrupted,
    /// `--on-error abort`: this rank failed first.
    RankFailed(usize),
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub ranks: Vec<RankReport>,
    pub stopped: Option<StopReason>,
    /// From first spawn to last exit.
    pub elapsed: Duration,
    /// Global rank of `ranks[0]`.
    pub first_rank: usize,
    /// The ranks' process ids (each leads its process group), `None` if not started.
    pub pids: Vec<Option<u32>>,
    /// What the ranks wrote, for `%ranch_output`.
    pub transcript: crate::transcript::Transcript,
}
