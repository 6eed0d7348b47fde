//! Watching ranks run: live, rank-labelled output; failure policy; timeout; interrupt;
//! and what each rank ended with.

use crate::args::{GroupOutputs, OnError, See};
use crate::ranks::launch::kill_group;
pub use crate::ranks::rank_output::Stream;
use crate::ranks::rank_output::{self, Output};
pub use crate::ranks::view::RankSink;
use crate::ranks::view::{RankView, ViewSetup};
use crate::report::{Ending, RankReport, RunReport, StopReason};
use crate::status::StatusSetup;
use nix::sys::signal::Signal;
use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// Set by an interrupt; the supervisor stops every rank when it sees it.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub on_error: OnError,
    pub timeout: Option<Duration>,
    pub group_outputs: GroupOutputs,
    pub see: See,
    /// Global rank of local rank 0 (labels and `--see` use global ranks).
    pub first_rank: usize,
    /// The live status table (`None`: `--quiet`).
    pub status: Option<StatusSetup>,
}

enum Event {
    /// A rank's process started, with its id.
    Spawned(usize, u32, Instant),
    Output(Output),
    /// A rank's process exited, with its peak memory in bytes when known.
    Exit(usize, std::io::Result<ExitStatus>, Option<u64>),
    /// A rank started by a launcher ended as its launcher's report says.
    Ended(usize, Ending, Option<String>),
    /// A line the launcher wrote itself.
    Launcher(String),
}

/// Who the supervisor signals to stop ranks.
enum Targets<'a> {
    /// Each rank leads its own process group.
    Ranks(&'a std::sync::Mutex<Vec<Option<u32>>>),
    /// One launcher (its process group) stops every rank it started.
    Launcher { pid: &'a std::sync::Mutex<Option<u32>>, name: &'static str },
}

/// Events in flight between the ranks' readers and the supervisor: a rank writing faster
/// than the notebook takes its output waits on its own pipe.
const CHANNEL: usize = 1024;
/// What a rank program returns when the cell panicked (see `program::generate`).
pub const PANIC_EXIT_CODE: i32 = 101;
/// Between the polite signal and SIGKILL.
const GRACE: Duration = Duration::from_millis(500);
/// Between SIGTERM to a launcher and SIGKILL: it stops its ranks on every host first.
const LAUNCHER_GRACE: Duration = Duration::from_secs(5);
/// The launcher's own last lines kept for reading its report.
const LAUNCHER_LINES: usize = 200;

/// Starts `n` ranks with `spawn(rank)` and supervises them until all have exited.
/// `panic_line` maps a rank's panic location (line in its main.rs) to a cell line.
///
/// Each rank is spawned by its own thread: starting a process waits for its `exec`, and
/// doing that for all ranks at once overlaps those waits.
pub fn supervise(
    n: usize,
    spawn: &(dyn Fn(usize) -> std::io::Result<Child> + Sync),
    run_dir: &Path,
    policy: &Policy,
    sink: &dyn RankSink,
    cancel: &Cancel,
    panic_line: &dyn Fn(u32) -> Option<usize>,
) -> RunReport {
    let started = Instant::now();
    let pids: std::sync::Mutex<Vec<Option<u32>>> = std::sync::Mutex::new(vec![None; n]);
    let (tx, rx) = mpsc::sync_channel::<Event>(CHANNEL);
    std::thread::scope(|scope| {
        for rank in 0..n {
            let tx = tx.clone();
            let pids = &pids;
            scope.spawn(move || {
                let mut child = match spawn(rank) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Event::Exit(rank, Err(e), None));
                        return;
                    }
                };
                pids.lock().unwrap()[rank] = Some(child.id());
                let _ = tx.send(Event::Spawned(rank, child.id(), Instant::now()));
                let (out, err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
                let exited: Arc<OnceLock<Instant>> = Arc::default();
                let reader = |pipe, stream| {
                    let (tx, exited) = (tx.clone(), exited.clone());
                    let deliver = move |o| tx.send(Event::Output(o)).is_ok();
                    move || rank_output::read(pipe, rank, stream, &deliver, &exited)
                };
                let file = |fd: std::os::fd::OwnedFd| std::fs::File::from(fd);
                let r1 = std::thread::spawn(reader(file(out.into()), Stream::Stdout));
                let r2 = std::thread::spawn(reader(file(err.into()), Stream::Stderr));
                let (status, peak) = crate::ranks::death::reap(&mut child);
                let _ = exited.set(Instant::now());
                // Every line the rank wrote is delivered before its exit (what something it
                // left running writes is read for a moment only).
                let _ = (r1.join(), r2.join());
                let _ = tx.send(Event::Exit(rank, status, peak));
            });
        }
        drop(tx);
        Watch { targets: Targets::Ranks(&pids), started, run_dir, policy, sink, cancel, panic_line }.run(n, &rx)
    })
}

/// Runs `command`, a launcher that starts all `n` ranks itself, and supervises them until
/// it exits: each rank's output is split from the launcher's tagged output, the
/// launcher's own lines are shown as `[mpirun] ...`, and each rank's ending comes from
/// its result or panic report and the launcher's account of the rank that failed.
/// `rank_hosts` names each rank's host when hosts were named; `watch_pid` is told the
/// launcher's process group when it starts.
#[allow(clippy::too_many_arguments)]
pub fn supervise_launcher(
    n: usize,
    command: &crate::ranks::launch::LauncherCommand,
    rank_hosts: &[String],
    run_dir: &Path,
    policy: &Policy,
    sink: &dyn RankSink,
    cancel: &Cancel,
    panic_line: &(dyn Fn(u32) -> Option<usize> + Sync),
    watch_pid: &dyn Fn(u32),
) -> RunReport {
    let started = Instant::now();
    let pid: std::sync::Mutex<Option<u32>> = std::sync::Mutex::new(None);
    let (tx, rx) = mpsc::sync_channel::<Event>(CHANNEL);
    let own_lines: std::sync::Mutex<VecDeque<String>> = std::sync::Mutex::default();
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cannot run `{}`: {e} (is {} installed and on the PATH?)", command.program, command.name);
            for rank in 0..n {
                let _ = tx.send(Event::Ended(rank, Ending::NotStarted(why.clone()), None));
            }
            drop(tx);
            return Watch {
                targets: Targets::Launcher { pid: &pid, name: command.name },
                started,
                run_dir,
                policy,
                sink,
                cancel,
                panic_line,
            }
            .run(n, &rx);
        }
    };
    *pid.lock().unwrap() = Some(child.id());
    watch_pid(child.id());
    let (out, err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    std::thread::scope(|scope| {
        let exited: Arc<OnceLock<Instant>> = Arc::default();
        let reader = |pipe: std::fs::File, stream: Stream| {
            let (tx, exited, own_lines) = (tx.clone(), exited.clone(), &own_lines);
            move || {
                let deliver = |o| tx.send(Event::Output(o)).is_ok();
                let launcher_line = |line: &str| {
                    let mut kept = own_lines.lock().unwrap();
                    if kept.len() == LAUNCHER_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line.to_string());
                    if !(command.harmless)(line) {
                        let _ = tx.send(Event::Launcher(line.to_string()));
                    }
                };
                let mut demux = crate::ranks::launch::tagged::Demux::new(command.tags, n, stream, &deliver, &launcher_line);
                rank_output::read_with(pipe, &exited, |bytes| demux.feed(bytes));
                demux.finish();
            }
        };
        let r1 = scope.spawn(reader(std::fs::File::from(std::os::fd::OwnedFd::from(out)), Stream::Stdout));
        let r2 = scope.spawn(reader(std::fs::File::from(std::os::fd::OwnedFd::from(err)), Stream::Stderr));
        let tx_end = tx.clone();
        let (own_lines, pid) = (&own_lines, &pid);
        scope.spawn(move || {
            let status = child.wait();
            let _ = exited.set(Instant::now());
            let _ = (r1.join(), r2.join());
            let lines: Vec<String> = own_lines.lock().unwrap().iter().cloned().collect();
            let endings = launcher_endings(n, command, &status, &lines, rank_hosts, run_dir, panic_line);
            *pid.lock().unwrap() = None;
            for (rank, ending, host) in endings {
                let _ = tx_end.send(Event::Ended(rank, ending, host));
            }
        });
        drop(tx);
        Watch { targets: Targets::Launcher { pid, name: command.name }, started, run_dir, policy, sink, cancel, panic_line }.run(n, &rx)
    })
}

/// How each rank of a launcher's job ended: a rank that wrote its result succeeded; the
/// rank the launcher blames ended as it says (a panic as its report says); a rank that
/// panicked otherwise panicked; the rest were stopped with the job when some rank's failure
/// is known, and are lost when the launcher failed without a known cause. Failures come
/// first, so the first is the one that stopped the job.
fn launcher_endings(
    n: usize,
    command: &crate::ranks::launch::LauncherCommand,
    status: &std::io::Result<ExitStatus>,
    lines: &[String],
    rank_hosts: &[String],
    run_dir: &Path,
    panic_line: &dyn Fn(u32) -> Option<usize>,
) -> Vec<(usize, Ending, Option<String>)> {
    let mut culprits = (command.report)(lines);
    // mpirun may say only that one process returned a non-zero code (its own status is that
    // code) without naming it: the one rank that exited before its cell returned is it.
    if let (true, Ok(Some(code))) = (culprits.is_empty(), status.as_ref().map(|s| s.code().filter(|&c| c != 0))) {
        let exited: Vec<usize> =
            (0..n).filter(|&r| ranch::__rt::exit_path(run_dir, r).exists() && !ranch::__rt::panic_path(run_dir, r).exists()).collect();
        if let [rank] = exited[..] {
            culprits.push(crate::ranks::launch::Culprit { rank, host: None, end: crate::ranks::launch::RankEnd::Code(code) });
        }
    }
    // Ranks the launcher terminated because another failed are reported too (srun): they
    // were stopped, not the cause.
    let terminated = crate::ranks::launch::RankEnd::Signal(Signal::SIGTERM as i32);
    if culprits.iter().any(|c| c.end != terminated) {
        culprits.retain(|c| c.end != terminated);
    }
    let mut known: Vec<(usize, Option<Ending>, Option<String>)> = (0..n)
        .map(|rank| {
            let culprit = culprits.iter().find(|c| c.rank == rank);
            let host = culprit.and_then(|c| c.host.clone()).or_else(|| rank_hosts.get(rank).cloned());
            let ending = if ranch::__rt::result_path(run_dir, rank).exists() {
                Some(Ending::Success)
            } else if let Some(c) = culprit {
                let raw = match c.end {
                    crate::ranks::launch::RankEnd::Code(code) => (code & 0xff) << 8,
                    crate::ranks::launch::RankEnd::Signal(sig) => sig & 0x7f,
                };
                Some(ending_of(Ok(ExitStatus::from_raw(raw)), run_dir, rank, panic_line, false))
            } else {
                read_panic(run_dir, rank, panic_line)
            };
            (rank, ending, host)
        })
        .collect();
    let cause_known = known.iter().any(|(_, e, _)| e.as_ref().is_some_and(|e| *e != Ending::Success));
    let lost = match status {
        Ok(s) if s.success() => format!("{} ended without this rank's result", command.name),
        Ok(s) if lines.iter().any(|l| !l.trim().is_empty()) => {
            format!("{} failed ({s}) before this rank finished; its messages are above", command.name)
        }
        Ok(s) => silent_failure(command, *s, rank_hosts),
        Err(e) => format!("{} could not be waited for: {e}", command.name),
    };
    // Failures first, then the rest in rank order.
    known.sort_by_key(|(rank, e, _)| (!e.as_ref().is_some_and(|e| *e != Ending::Success), *rank));
    known
        .into_iter()
        .map(|(rank, e, host)| {
            let ending = e.unwrap_or_else(|| if cause_known { Ending::Stopped } else { Ending::Lost(lost.clone()) });
            (rank, ending, host)
        })
        .collect()
}

/// Why ranks were lost when their launcher failed without a word: what it returned, where
/// its ranks were, and what to check there.
fn silent_failure(command: &crate::ranks::launch::LauncherCommand, status: ExitStatus, rank_hosts: &[String]) -> String {
    // mpirun's exit status is its own error code, not a signal's number.
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| format!("killed by {}", s.as_str())),
        (None, None) => status.to_string(),
    };
    let mut hosts: Vec<&str> = Vec::new();
    for h in rank_hosts {
        if !hosts.contains(&h.as_str()) {
            hosts.push(h);
        }
    }
    let place = if hosts.is_empty() { "this host".to_string() } else { format!("the hosts ({})", hosts.join(", ")) };
    format!(
        "{} failed ({how}) before this rank finished and printed nothing. Check that it can start its ranks on {place}: \
         the remote shell it uses, the same installation of {} there, and that the home and working directories exist \
         there; its command line is in the kernel's log",
        command.name, command.name
    )
}

/// What the supervisor is given: how to stop the ranks, where their files are, the cell's
/// policy, where output goes, and how to read a panic's line.
struct Watch<'a> {
    targets: Targets<'a>,
    started: Instant,
    run_dir: &'a Path,
    policy: &'a Policy,
    sink: &'a dyn RankSink,
    cancel: &'a Cancel,
    panic_line: &'a dyn Fn(u32) -> Option<usize>,
}

/// What the supervisor learns while the ranks run.
struct Watched {
    /// Each rank's report, once it ended.
    ranks: Vec<Option<RankReport>>,
    /// What the cell shows: output, displays, the status table.
    view: RankView,
    stopped: Option<StopReason>,
    kill_at: Option<Instant>,
    /// The signals each rank was sent: a rank only counts as stopped by the supervisor if
    /// one of them ended it (a rank that died of its own SIGKILL while the others were being
    /// stopped is the cause, and is named as such).
    sent: Vec<Vec<Signal>>,
    spawned: Vec<Duration>,
    /// The OOM killer's count when the ranks started (a rank it killed is named so).
    oom: crate::ranks::death::OomWatch,
}

/// A rank that ended: how, and on which host.
type Ended = (usize, Ending, Option<String>);

impl Watch<'_> {
    fn run(&self, n: usize, rx: &mpsc::Receiver<Event>) -> RunReport {
        let policy = self.policy;
        let mut w = Watched {
            ranks: vec![None; n],
            view: RankView::new(ViewSetup {
                ranks: (policy.first_rank..policy.first_rank + n).collect(),
                see: policy.see.clone(),
                group_outputs: policy.group_outputs,
                live: policy.status.is_some(),
                status: policy.status.clone(),
                show_after: Duration::ZERO,
            }),
            stopped: None,
            kill_at: None,
            sent: vec![Vec::new(); n],
            spawned: vec![Duration::ZERO; n],
            oom: crate::ranks::death::OomWatch::start(),
        };
        // The table's clock starts with the launch.
        w.view.running();
        while w.ranks.iter().any(Option::is_none) {
            let ended = match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(event) => self.on_event(&mut w, event),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if let Some(ended) = ended {
                self.on_end(&mut w, ended);
            }
            let now = Instant::now();
            self.enforce(&mut w, now);
            w.view.tick(now, self.sink);
        }
        self.finish(w)
    }

    /// Feeds the view; a rank's end is returned.
    fn on_event(&self, w: &mut Watched, event: Event) -> Option<Ended> {
        let (first, sink) = (self.policy.first_rank, self.sink);
        match event {
            Event::Spawned(rank, pid, at) => {
                w.spawned[rank] = at.saturating_duration_since(self.started);
                w.view.pid(rank, Some(pid));
                None
            }
            Event::Output(Output::Lines(rank, stream, lines)) => {
                w.view.lines(rank, stream, &lines, sink);
                None
            }
            Event::Output(Output::Display(rank, data)) => {
                w.view.display(first + rank, data, sink);
                None
            }
            Event::Output(Output::Control(rank, op)) => {
                w.view.control(first + rank, op, sink);
                None
            }
            Event::Exit(rank, status, peak) => {
                let by_us = ended_by(&status, &w.sent[rank]);
                let ending = match ending_of(status, self.run_dir, rank, self.panic_line, by_us) {
                    Ending::Signal(sig) if sig == Signal::SIGKILL as i32 && w.oom.struck() => Ending::OomKilled { peak },
                    ending => ending,
                };
                Some((rank, ending, None))
            }
            Event::Ended(rank, ending, host) => {
                // A rank the launcher ended after an interrupt or the timeout was stopped by us.
                let by_us = matches!(w.stopped, Some(StopReason::Interrupted | StopReason::Timeout { .. }));
                let ending = match ending {
                    Ending::Lost(_) | Ending::Signal(_) | Ending::ExitCode(_) if by_us && !w.sent[rank].is_empty() => Ending::Stopped,
                    e => e,
                };
                Some((rank, ending, host))
            }
            Event::Launcher(line) => {
                if let Targets::Launcher { name, .. } = self.targets {
                    sink.output(Stream::Stderr, &format!("[{name}] {line}\n"));
                }
                None
            }
        }
    }

    /// Records a rank's end; under `--on-error abort`, a failure stops the others.
    fn on_end(&self, w: &mut Watched, (rank, ending, host): Ended) {
        // Rust says which allocation failed before it aborts: the rank ran out of memory.
        let ending = match (ending, w.view.failed_allocation(rank)) {
            (Ending::Signal(sig), Some(bytes)) if sig == Signal::SIGABRT as i32 => Ending::OutOfMemory { bytes },
            (ending, _) => ending,
        };
        w.view.ended(rank, &ending);
        let failed = ending != Ending::Success && ending != Ending::Stopped;
        let backtrace =
            if matches!(ending, Ending::Panicked { .. }) { read_backtrace(self.run_dir, rank, self.panic_line) } else { String::new() };
        w.ranks[rank] = Some(RankReport {
            ending,
            last_lines: w.view.take_last_lines(rank),
            host,
            started: w.spawned[rank],
            ended: self.started.elapsed(),
            backtrace,
        });
        if failed && self.policy.on_error == OnError::Abort && w.stopped.is_none() {
            w.stopped = Some(StopReason::RankFailed(rank));
            self.stop_all(w, Signal::SIGTERM);
            w.kill_at = Some(Instant::now() + self.grace());
        }
    }

    /// Interrupt and timeout stop every rank; those still running after the grace are killed.
    fn enforce(&self, w: &mut Watched, now: Instant) {
        if w.stopped.is_none() && self.cancel.is_cancelled() {
            w.stopped = Some(StopReason::Interrupted);
            self.stop_all(w, Signal::SIGINT);
            w.kill_at = Some(now + self.grace());
        }
        let deadline = self.policy.timeout.map(|t| self.started + t);
        if w.stopped.is_none() && deadline.is_some_and(|d| now >= d) {
            let running = (0..w.ranks.len()).filter(|&r| w.ranks[r].is_none()).collect();
            w.stopped = Some(StopReason::Timeout { running, limit: self.policy.timeout.unwrap_or_default() });
            self.stop_all(w, Signal::SIGTERM);
            w.kill_at = Some(now + self.grace());
        }
        if w.kill_at.is_some_and(|k| now >= k) {
            self.stop_all(w, Signal::SIGKILL);
            w.kill_at = None;
        }
    }

    /// Sends `sig` to every rank still running (or to the launcher, which stops its ranks).
    fn stop_all(&self, w: &mut Watched, sig: Signal) {
        match &self.targets {
            Targets::Ranks(pids) => {
                for (r, pid) in pids.lock().unwrap().iter().enumerate() {
                    if let (Some(pid), None) = (pid, &w.ranks[r]) {
                        w.sent[r].push(sig);
                        kill_group(*pid, sig);
                    }
                }
            }
            Targets::Launcher { pid, .. } => {
                // The launcher stops its ranks on every host; SIGINT would only be forwarded.
                let sig = if sig == Signal::SIGINT { Signal::SIGTERM } else { sig };
                for s in w.sent.iter_mut() {
                    s.push(sig);
                }
                if let Some(pid) = *pid.lock().unwrap() {
                    kill_group(pid, sig);
                }
            }
        }
    }

    fn grace(&self) -> Duration {
        match self.targets {
            Targets::Ranks(_) => GRACE,
            Targets::Launcher { .. } => LAUNCHER_GRACE,
        }
    }

    /// The board's final state, whatever the ranks left running killed, output kept for
    /// `--group-outputs rank` shown, and the report.
    fn finish(&self, mut w: Watched) -> RunReport {
        let (policy, n) = (self.policy, w.ranks.len());
        w.view.finish(|_| Ending::Stopped, self.sink);
        // Whatever a rank started is gone with it.
        let pids: Vec<Option<u32>> = match &self.targets {
            Targets::Ranks(pids) => pids.lock().unwrap().clone(),
            Targets::Launcher { .. } => vec![None; n],
        };
        for pid in pids.iter().flatten() {
            kill_group(*pid, Signal::SIGKILL);
        }
        RunReport {
            ranks: w.ranks.into_iter().map(|r| r.expect("every rank exited")).collect(),
            stopped: w.stopped,
            elapsed: self.started.elapsed(),
            first_rank: policy.first_rank,
            pids,
            transcript: w.view.take_transcript(),
        }
    }
}

/// Whether a rank's end came from the signals the supervisor sent it: killed by one of
/// them, or (it handled one) exiting unsuccessfully after one was sent.
fn ended_by(status: &std::io::Result<ExitStatus>, sent: &[Signal]) -> bool {
    match status {
        Ok(s) => match s.signal() {
            Some(sig) => sent.iter().any(|x| *x as i32 == sig),
            None => !s.success() && !sent.is_empty(),
        },
        Err(_) => false,
    }
}

fn ending_of(
    status: std::io::Result<ExitStatus>,
    run_dir: &Path,
    rank: usize,
    panic_line: &dyn Fn(u32) -> Option<usize>,
    stopped_by_us: bool,
) -> Ending {
    // The panic hook records every panic, caught ones too (`catch_unwind`, a joined thread
    // that panicked). A panic only ended the rank when the rank program's catch-all saw
    // it (exit status 101) or a panic while panicking aborted it (SIGABRT).
    let ended_by_panic = match &status {
        Ok(s) => s.code() == Some(PANIC_EXIT_CODE) || s.signal() == Some(Signal::SIGABRT as i32),
        Err(_) => false,
    };
    if ended_by_panic && let Some(p) = read_panic(run_dir, rank, panic_line) {
        return p;
    }
    match status {
        Ok(s) if s.success() => Ending::Success,
        _ if stopped_by_us => Ending::Stopped,
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => Ending::ExitCode(code),
            (None, Some(sig)) => Ending::Signal(sig),
            _ => Ending::ExitCode(-1),
        },
        Err(e) => Ending::NotStarted(e.to_string()),
    }
}

/// The panic rank `rank` reported, if it did.
fn read_panic(run_dir: &Path, rank: usize, panic_line: &dyn Fn(u32) -> Option<usize>) -> Option<Ending> {
    let bytes = std::fs::read(ranch::__rt::panic_path(run_dir, rank)).ok()?;
    let p = ranch::__rt::PanicReport::decode(&bytes).ok()?;
    Some(Ending::Panicked { message: p.message, line: panic_line(p.line) })
}

/// The backtrace rank `rank` sent with its panic report, if any.
fn read_backtrace(run_dir: &Path, rank: usize, panic_line: &dyn Fn(u32) -> Option<usize>) -> String {
    let report = std::fs::read(ranch::__rt::panic_path(run_dir, rank)).ok().and_then(|b| ranch::__rt::PanicReport::decode(&b).ok());
    report.map(|p| in_cell_lines(&p.backtrace, panic_line)).unwrap_or_default()
}

/// A backtrace as the cell's author reads it: its frames down to the cell itself (what
/// ranch runs the cell in is cut), `at .../src/main.rs:L:C` lines (the rank program's line
/// tables) said as the cell's lines (`at cell line N`), and the toolchain's sources from
/// `library/` on: no path of the build directory or the toolchain is shown.
fn in_cell_lines(backtrace: &str, panic_line: &dyn Fn(u32) -> Option<usize>) -> String {
    const MAIN: &str = "src/main.rs:";
    let said = |line: &str| {
        let at = line.find(" at ").filter(|_| line.trim_start().starts_with("at "))?;
        if let Some(i) = line.find("/lib/rustlib/src/rust/library/") {
            return Some(format!("{}at {}", &line[..=at], &line[i + "/lib/rustlib/src/rust/".len()..]));
        }
        let rest = &line[line.find(MAIN)? + MAIN.len()..];
        let number: u32 = rest.split(':').next()?.parse().ok()?;
        Some(match panic_line(number) {
            Some(cell) => format!("{}at cell line {cell}", &line[..=at]),
            None => format!("{}at ranch's rank program (main.rs line {number})", &line[..=at]),
        })
    };
    let mut out = Vec::new();
    let mut in_cell_frame = false;
    for line in backtrace.lines() {
        let is_at = line.trim_start().starts_with("at ");
        if !is_at && in_cell_frame {
            break; // the frames below the cell are ranch's
        }
        let name = line.trim_start().split_once(": ").map(|(_, n)| n);
        in_cell_frame |= name.is_some_and(|n| n == "__ranch_cell" || n.ends_with("::__ranch_cell"));
        out.push(said(line).unwrap_or_else(|| line.to_string()));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn only_the_supervisors_own_signals_make_a_rank_stopped() {
        let killed = |sig: i32| Ok(ExitStatus::from_raw(sig));
        let exited = |code: i32| Ok(ExitStatus::from_raw(code << 8));
        // It killed itself (or was killed by someone else) while the others were stopped.
        assert!(!ended_by(&killed(9), &[Signal::SIGTERM]));
        assert!(ended_by(&killed(9), &[Signal::SIGTERM, Signal::SIGKILL]));
        assert!(ended_by(&killed(15), &[Signal::SIGTERM]));
        assert!(ended_by(&killed(2), &[Signal::SIGINT]));
        assert!(!ended_by(&exited(3), &[]));
        assert!(ended_by(&exited(3), &[Signal::SIGTERM]), "it handled SIGTERM and exited");
        assert!(!ended_by(&exited(0), &[Signal::SIGTERM]));
    }

    /// The rank layer in-process, with a fake rank set: each rank is a shell script, in its
    /// own process group as a rank program is.
    mod fake_ranks {
        use super::super::*;
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        use std::sync::Mutex;

        #[derive(Default)]
        struct Seen {
            out: Mutex<Vec<(Stream, String)>>,
            tables: Mutex<usize>,
            /// Interrupts the cell when a rank's output arrives (as a user who saw it would).
            interrupt_on_output: Option<Cancel>,
        }

        impl RankSink for Seen {
            fn output(&self, stream: Stream, text: &str) {
                self.out.lock().unwrap().push((stream, text.to_string()));
                if let Some(cancel) = &self.interrupt_on_output {
                    cancel.cancel();
                }
            }
            fn display(&self, _rank: usize, _data: serde_json::Map<String, serde_json::Value>) {}
            fn status(&self, _data: serde_json::Map<String, serde_json::Value>, _first: bool) {
                *self.tables.lock().unwrap() += 1;
            }
        }

        fn policy(on_error: OnError, timeout: Option<Duration>) -> Policy {
            Policy {
                on_error,
                timeout,
                group_outputs: GroupOutputs::Order,
                see: See::All,
                first_rank: 0,
                status: Some(StatusSetup::default()),
            }
        }

        /// Runs `scripts[rank]` as rank `rank` under `policy`.
        fn run(scripts: &[&str], policy: &Policy, interrupt: bool) -> (RunReport, Seen) {
            let cancel = &Cancel::default();
            let dir = std::env::temp_dir().join(format!("ranch-fake-ranks-{}-{:?}", std::process::id(), std::thread::current().id()));
            std::fs::create_dir_all(&dir).unwrap();
            let spawn = |rank: usize| {
                let mut command = Command::new("sh");
                command.args(["-c", scripts[rank]]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
                command.spawn()
            };
            let seen = Seen { interrupt_on_output: Some(cancel.clone()).filter(|_| interrupt), ..Default::default() };
            let report = supervise(scripts.len(), &spawn, &dir, policy, &seen, cancel, &|_| None);
            let _ = std::fs::remove_dir_all(&dir);
            (report, seen)
        }

        fn endings(report: &RunReport) -> Vec<Ending> {
            report.ranks.iter().map(|r| r.ending.clone()).collect()
        }

        #[test]
        fn output_is_labelled_and_each_ranks_ending_and_last_lines_are_reported() {
            let (report, seen) =
                run(&["echo a; echo b", "echo oops >&2; exit 3", "kill -SEGV $$"], &policy(OnError::Continue, None), false);
            assert_eq!(endings(&report), [Ending::Success, Ending::ExitCode(3), Ending::Signal(11)]);
            assert_eq!(report.ranks[1].last_lines, ["oops"]);
            assert_eq!(report.stopped, None);
            let out = seen.out.lock().unwrap();
            let stdout: String = out.iter().filter(|(s, _)| *s == Stream::Stdout).map(|(_, t)| t.as_str()).collect();
            assert_eq!(stdout, "[0] a\n[0] b\n");
            assert!(out.contains(&(Stream::Stderr, "[1] oops\n".to_string())), "{out:?}");
            assert!(*seen.tables.lock().unwrap() >= 1, "the status table was shown");
        }

        #[test]
        fn a_timeout_stops_every_rank_still_running() {
            let t = Instant::now();
            let (report, _) = run(&["exit 0", "sleep 30", "sleep 30"], &policy(OnError::Continue, Some(Duration::from_millis(300))), false);
            assert!(t.elapsed() < Duration::from_secs(10), "stopped, not waited for: {:?}", t.elapsed());
            assert_eq!(endings(&report), [Ending::Success, Ending::Stopped, Ending::Stopped]);
            assert!(matches!(&report.stopped, Some(StopReason::Timeout { running, .. }) if running == &[1, 2]), "{:?}", report.stopped);
        }

        #[test]
        fn on_error_abort_stops_the_others_once_one_fails() {
            let (report, _) = run(&["sleep 30", "exit 2"], &policy(OnError::Abort, None), false);
            assert_eq!(endings(&report), [Ending::Stopped, Ending::ExitCode(2)]);
            assert_eq!(report.stopped, Some(StopReason::RankFailed(1)));
        }

        #[test]
        fn an_interrupt_stops_the_ranks_and_one_that_ignores_sigint_is_killed() {
            let (report, _) = run(&["echo started; sleep 30", "trap '' INT; sleep 30"], &policy(OnError::Continue, None), true);
            assert_eq!(endings(&report), [Ending::Stopped, Ending::Stopped]);
            assert_eq!(report.stopped, Some(StopReason::Interrupted));
        }
    }

    #[test]
    fn backtrace_lines_of_the_rank_program_are_said_as_cell_lines() {
        let bt = "   3: ranch_rank::find_bad_record\n             at /root/.cache/ranch/work/k1/ranch-rank/src/main.rs:12:9\n\
                  \x20  4: ranch_rank::__ranch_cell\n             at ./src/main.rs:40:5\n\
                  \x20  5: core::ops::function::FnOnce::call_once\n             at /rustc/abc/library/core/src/ops/function.rs:250:5";
        let cell = |line: u32| (line == 12).then_some(3);
        let said = in_cell_lines(bt, &cell);
        assert!(said.contains("find_bad_record\n             at cell line 3\n"), "{said}");
        assert!(said.ends_with("__ranch_cell\n             at ranch's rank program (main.rs line 40)"), "cut below the cell: {said}");
        let std_frame = "   2: core::panicking::panic\n             at /root/.rustup/toolchains/stable/lib/rustlib/src/rust/library/core/src/panicking.rs:5:1";
        let said = in_cell_lines(std_frame, &cell);
        assert!(said.ends_with("             at library/core/src/panicking.rs:5:1") && !said.contains("/root/"), "{said}");
    }

    #[test]
    fn a_launcher_that_fails_silently_is_described_with_its_hosts() {
        let command = crate::ranks::launch::mpirun::command(&crate::ranks::launch::mpirun::tests::plan(), &Default::default());
        let run_dir = std::env::temp_dir().join(format!("ranch-silent-launcher-{}", std::process::id()));
        let hosts = ["simhost1".to_string(), "simhost1".into(), "simhost2".into()];
        let status = Ok(ExitStatus::from_raw(135 << 8));
        let lost = |lines: &[String]| match &launcher_endings(3, &command, &status, lines, &hosts, &run_dir, &|_| None)[0].1 {
            Ending::Lost(why) => why.clone(),
            other => panic!("{other:?}"),
        };
        let silent = lost(&[]);
        assert!(silent.starts_with("mpirun failed (exit status 135) before this rank finished and printed nothing"), "{silent}");
        assert!(silent.contains("printed nothing") && silent.contains("(simhost1, simhost2)"), "{silent}");
        assert!(silent.contains("home and working directories") && !silent.contains("above"), "{silent}");
        assert_eq!(lost(&[" ".into()]), silent, "blank lines say nothing either");
        assert!(lost(&["ORTE was unable to start".into()]).ends_with("its messages are above"));
    }

    #[test]
    fn the_rank_that_exited_is_named_where_mpirun_names_none() {
        let command = crate::ranks::launch::mpirun::command(&crate::ranks::launch::mpirun::tests::plan(), &Default::default());
        let run_dir = std::env::temp_dir().join(format!("ranch-exited-rank-{}", std::process::id()));
        std::fs::create_dir_all(&run_dir).unwrap();
        let said = ["Primary job  terminated normally, but 1 process returned".to_string()];
        let endings = |code: i32| launcher_endings(3, &command, &Ok(ExitStatus::from_raw(code << 8)), &said, &[], &run_dir, &|_| None);
        assert!(matches!(endings(3)[0].1, Ending::Lost(_)), "no rank exited early: none is blamed");
        std::fs::write(ranch::__rt::exit_path(&run_dir, 1), b"").unwrap();
        let e = endings(3);
        assert_eq!(e[0].0, 1);
        assert_eq!(e[0].1, Ending::ExitCode(3));
        assert!(matches!(e[1].1, Ending::Stopped), "{:?}", e[1].1);
        std::fs::remove_dir_all(&run_dir).unwrap();
    }
}
