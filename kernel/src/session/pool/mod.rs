//! A pool of persistent ranks (`%ranch_start N`, `%%px`, `%px`, `%autopx`,
//! `%ranch_status`, `%ranch_stop`).
//!
//! The pool is a second evcxr context whose child process is a fan-out ([`fanout`]) in
//! front of N rank processes. evcxr compiles each `%%px` cell once, as for a plain cell;
//! every rank loads that library and keeps its own variable store, so rank-local state
//! lives across cells with evcxr's own variable semantics. Each rank's output reaches the
//! kernel through the pool's listener, labelled with its rank.
//!
//! Why not `%%ranch`'s rank programs: those are whole programs built per cell, whose state
//! dies with the cell. Why a second context rather than the session's: the session's
//! variables stay in the kernel's own child, untouched by what ranks do.

use super::adapter::{Context, EvalError, Ran};
use super::events::{Connection, CurrentCell, Event, EventHandler, Listener};
use super::workdir::WorkDir;
use crate::interpreter::{CellError, CellOutcome, MimeBundle, Stream};
use ranch_magics::args::See;
use ranch_magics::display_op::{self, DisplayOp};
use ranch_magics::driver::px::PxRun;
use ranch_magics::grid::{Cell, Grid, escape};
use ranch_magics::hosts::{LauncherKind, Placement};
use ranch_magics::ranks::launch::LaunchPlan;
use ranch_magics::ranks::rank_output::Stream as RankStream;
use ranch_magics::ranks::view::{RankSink, RankView, ViewSetup};
use ranch_magics::report::Ending;
use ranch_magics::status::StatusSetup;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ranch_magics::ranks::pool::{CellGroup, FanoutConfig, RemoteSpec};

/// How long the ranks run a cell before its status table appears (unless they report
/// progress): pool cells are often quick steps, and a table for each would bury their output.
const SHOW_STATUS_AFTER: Duration = Duration::from_secs(1);

/// What the pool's ranks and fan-out report, applied to the running cell.
struct PoolEvents {
    /// Where the running cell's output goes: the session's current cell, or a background
    /// job's (see [`Pool::output_to`]).
    cell: Mutex<Arc<CurrentCell>>,
    /// The session's current cell.
    session_cell: Arc<CurrentCell>,
    /// `%ranch_start --see`: ranks whose output is shown, unless the cell says.
    see: See,
    /// The running cell's ranks that have not finished it yet.
    ranks_left: std::sync::atomic::AtomicUsize,
    /// Told when the ranks start the cell, and when a rank panics while others still run
    /// it (for `--timeout` and `--on-error abort`).
    watcher: Mutex<Option<mpsc::Sender<CellSignal>>>,
    /// What the running cell shows of its ranks (the same view as a `%%ranch` cell's).
    view: Mutex<Option<CellView>>,
    panics: Mutex<Vec<(usize, String)>>,
    exits: Mutex<Vec<(usize, String)>>,
    pids: Mutex<Vec<u32>>,
    /// Each rank's host, when the ranks run on other hosts.
    hosts: Mutex<Vec<String>>,
    /// The running cell's group.
    group: Mutex<Option<CellGroup>>,
    /// When the pool started, until its ranks said they run.
    starting: Mutex<Option<Instant>>,
    /// Ranks the fan-out restarted alone: they have none of the pool's variables.
    stateless: Mutex<std::collections::BTreeSet<usize>>,
    /// Ranks restarted during the running cell.
    restarted: Mutex<Vec<usize>>,
    /// Ranks that said they finished the running cell.
    done: Mutex<std::collections::BTreeSet<usize>>,
}

/// The running cell's view, and the display id of its status table.
struct CellView {
    view: RankView,
    status_id: String,
}

/// The running cell as the view's sink.
struct PoolSink<'a> {
    cell: &'a CurrentCell,
    status_id: &'a str,
}

impl RankSink for PoolSink<'_> {
    fn output(&self, stream: RankStream, text: &str) {
        self.cell.stream(if stream == RankStream::Stderr { Stream::Stderr } else { Stream::Stdout }, text);
    }

    fn display(&self, rank: usize, data: MimeBundle) {
        let mut meta = MimeBundle::new();
        meta.insert("ranch".into(), serde_json::json!({ "rank": rank }));
        // A `ranch::display` request (show, update, clear) is carried out there.
        self.cell.display(data, meta);
    }

    fn status(&self, data: MimeBundle, first: bool) {
        let mut meta = MimeBundle::new();
        meta.insert("ranch".into(), serde_json::json!({ "status": true }));
        self.cell.display_in_place(data, meta, self.status_id, !first);
    }
}

impl PoolEvents {
    /// Where the running cell's output goes.
    fn cell(&self) -> Arc<CurrentCell> {
        self.cell.lock().unwrap().clone()
    }

    /// Applies `f` to the running cell's view, if a cell runs.
    fn view(&self, f: impl FnOnce(&mut RankView, &PoolSink)) -> bool {
        let cell = self.cell();
        let mut view = self.view.lock().unwrap();
        let Some(cv) = view.as_mut() else { return false };
        f(&mut cv.view, &PoolSink { cell: &cell, status_id: &cv.status_id });
        true
    }

    /// A rank's output; the fan-out's own (no rank) goes to the cell as it is.
    fn output(&self, rank: Option<usize>, stream: RankStream, text: &str) {
        let shown = rank.is_some_and(|rank| self.view(|v, sink| v.text(rank, stream, text, sink)));
        if !shown {
            PoolSink { cell: &self.cell(), status_id: "" }.output(stream, text);
        }
    }

    /// Rank `rank` ended the cell as `ending` (a panic's word stands over its `Done`).
    fn rank_ended(&self, rank: Option<usize>, ending: Ending) {
        use std::sync::atomic::Ordering;
        let panicked = matches!(ending, Ending::Panicked { .. });
        if let Some(rank) = rank {
            self.view(|v, _| {
                if let Some(row) = v.row_of(rank) {
                    v.ended(row, &ending)
                }
            });
        }
        let before = self.ranks_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).unwrap_or(0);
        if panicked && before > 1 {
            self.tell_watcher(CellSignal::Panicked);
        }
    }

    fn tell_watcher(&self, signal: CellSignal) {
        if let Some(tx) = self.watcher.lock().unwrap().as_ref() {
            let _ = tx.send(signal);
        }
    }
}

impl EventHandler for PoolEvents {
    fn apply(&self, conn: &mut Connection, event: Event) {
        match event {
            Event::Rank(r) => conn.rank = Some(r),
            Event::Stdout(t) => self.output(conn.rank, RankStream::Stdout, &t),
            Event::Stderr(t) => self.output(conn.rank, RankStream::Stderr, &t),
            Event::Display(data) => {
                let op = data.get(display_op::CONTROL_MIME).and_then(Value::as_str).and_then(display_op::parse);
                // (Not copied: a display may be tens of MiB.)
                let cell = self.cell();
                let mut running = self.view.lock().unwrap();
                match (conn.rank, running.as_mut()) {
                    (Some(rank), Some(CellView { view, status_id })) => {
                        let sink = PoolSink { cell: &cell, status_id };
                        match op {
                            Some(op @ DisplayOp::Progress { .. }) => view.control(rank, op, &sink),
                            _ => view.display(rank, data, &sink),
                        }
                    }
                    _ => {
                        drop(running);
                        cell.display(data, MimeBundle::new());
                    }
                }
            }
            Event::Panic(message) => {
                self.panics.lock().unwrap().push((conn.rank.unwrap_or(0), message.clone()));
                self.rank_ended(conn.rank, Ending::Panicked { message, line: None });
            }
            Event::Done => {
                if let Some(rank) = conn.rank {
                    self.done.lock().unwrap().insert(rank);
                }
                self.rank_ended(conn.rank, Ending::Success);
                if let (Some(rank), Some(group)) = (conn.rank, self.group.lock().unwrap().as_ref()) {
                    group.finished(rank);
                }
                self.cell().count_done()
            }
            Event::PoolPids(pids) => {
                // The Jupyter server's log gets it (bench/pool.py reads it).
                if let Some(since) = self.starting.lock().unwrap().take() {
                    crate::log!("pool: {} ranks running after {:.3} s", pids.len(), since.elapsed().as_secs_f64());
                }
                *self.pids.lock().unwrap() = pids
            }
            Event::PoolHosts(hosts) => {
                if let Some(since) = self.starting.lock().unwrap().take() {
                    crate::log!("pool: {} ranks running on other hosts after {:.3} s", hosts.len(), since.elapsed().as_secs_f64());
                }
                *self.hosts.lock().unwrap() = hosts
            }
            Event::RankExited { rank, how } => self.exits.lock().unwrap().push((rank, how)),
            Event::RankRestarted { rank, pid } => {
                if let Some(p) = self.pids.lock().unwrap().get_mut(rank) {
                    *p = pid;
                }
                self.stateless.lock().unwrap().insert(rank);
                self.restarted.lock().unwrap().push(rank);
                // If it ran the cell: it ended it, its group stops waiting for it, and the
                // cell's wait for its `Done` is over.
                let how = self.exits.lock().unwrap().iter().rev().find(|(r, _)| *r == rank).map(|(_, how)| how.clone());
                let ran = self.view.lock().unwrap().as_ref().is_some_and(|cv| cv.view.row_of(rank).is_some());
                // (A rank that said it finished and died after is counted already.)
                if ran && !self.done.lock().unwrap().contains(&rank) {
                    self.rank_ended(Some(rank), Ending::Lost(format!("its process {}", how.unwrap_or_else(|| "ended".into()))));
                    if let Some(group) = self.group.lock().unwrap().as_ref() {
                        group.finished(rank);
                    }
                    self.cell().count_done();
                }
            }
            Event::Running => {
                self.view(|v, _| v.running());
                self.tell_watcher(CellSignal::Running);
            }
            // The Jupyter server's log gets it (bench/pool.py reads it).
            Event::Dispatched { ranks, micros } => crate::log!("%%px {ranks}: dispatch {:.3} ms", micros as f64 / 1000.0),
        }
    }
}

/// What the running cell's watcher is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum CellSignal {
    /// The ranks started the cell (its build is over): `--timeout` counts from here.
    Running,
    /// A rank panicked while others still run the cell.
    Panicked,
}

/// Why a pool cell was stopped before its ranks finished it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum CellStop {
    /// The user interrupted it.
    Interrupt,
    /// Its `--timeout` passed.
    Timeout(Duration),
    /// A rank panicked, and `--on-error abort` stopped the others.
    Abort,
}

pub(super) struct Pool {
    // Dropped first: closing its child's stdin ends the fan-out, and with it the ranks.
    ctx: Context,
    n: usize,
    events: Arc<PoolEvents>,
    /// Each rank's GPU, as its CUDA_VISIBLE_DEVICES says (for the status table).
    gpus: Vec<String>,
    started: Instant,
    cells: u64,
    /// What the ranks of the last cell wrote (`%ranch_output`).
    transcript: Mutex<Option<ranch_magics::transcript::Transcript>>,
    /// Hash of the session items last brought in.
    session_items: Option<u64>,
    /// Where each cell's group is said (the ranks' `POOL_GROUP_ENV`).
    group_file: PathBuf,
    /// The ranks run on other hosts, which reach this one at this address: a cell's group
    /// is TCP between them, not this host's shared memory.
    hosts_reach: Option<String>,
    _listener: Listener,
    /// Where its cells are built.
    _workdir: WorkDir,
    /// Dropped last: ends the thread that spawned the fan-out (see `keep_spawner`).
    _spawner: Option<std::sync::mpsc::Sender<()>>,
}

/// The pool, while a background job runs a cell on it.
pub(super) struct PoolAway {
    pub(super) job: String,
    /// The pool, once the job's cell is over.
    pub(super) returned: std::sync::mpsc::Receiver<Pool>,
}

fn pool_error(msg: impl Into<String>) -> CellError {
    CellError::new("PoolError", msg)
}

/// What a pool magic says when no pool runs.
pub(super) fn no_pool() -> CellError {
    CellError::new("UsageError", "no pool is running: start one with `%ranch_start N` (N ranks)")
}

impl Pool {
    /// Where a pool started in `private` says each cell's group is.
    pub(super) fn group_file(private: &Path) -> PathBuf {
        private.join("pool-group")
    }

    /// Starts the fan-out and its ranks, and adds the runtime crate (`ranch::rank()`).
    pub(super) fn start(
        plan: Vec<Vec<(String, String)>>,
        remote: Option<RemoteSpec>,
        see: See,
        cell: Arc<CurrentCell>,
        private: &Path,
        runtime_dep: &str,
    ) -> Result<Pool, CellError> {
        let n = plan.len();
        let hosts_reach = remote.as_ref().filter(|s| s.ship.is_some()).map(|s| s.reach.clone());
        let gpus = plan
            .iter()
            .map(|env| env.iter().find(|(k, _)| k == "CUDA_VISIBLE_DEVICES").map_or("-".to_string(), |(_, v)| v.clone()))
            .collect();
        let events = Arc::new(PoolEvents {
            cell: Mutex::new(cell.clone()),
            session_cell: cell,
            see,
            ranks_left: Default::default(),
            watcher: Mutex::default(),
            panics: Mutex::default(),
            exits: Mutex::default(),
            pids: Mutex::default(),
            hosts: Mutex::default(),
            group: Mutex::default(),
            starting: Mutex::new(Some(Instant::now())),
            view: Mutex::default(),
            stateless: Mutex::default(),
            restarted: Mutex::default(),
            done: Mutex::default(),
        });
        let listener = Listener::start(events.clone(), private, "pool.sock")
            .map_err(|e| pool_error(format!("cannot listen for the pool's ranks: {e}")))?;
        let workdir = WorkDir::claim_another(private, "pool-work");
        let exe = std::env::current_exe().map_err(|e| pool_error(e.to_string()))?;
        let mut fanout = std::process::Command::new(exe);
        let config = FanoutConfig { plan, remote, events: Some(listener.path().to_path_buf()) };
        config.pass(&mut fanout).map_err(|e| pool_error(format!("cannot hand the pool's plan to its fan-out: {e}")))?;
        // Shared arrays are named after this kernel; the ranks inherit it from the fan-out.
        fanout.env(ranch::shared::KERNEL_ENV, std::process::id().to_string());
        if let Ok(host) = super::host_rust::host_rust() {
            fanout.env("LD_LIBRARY_PATH", super::host_rust::library_path_with(&host.libdir));
        }
        // The pool's own directory, so that its builds never touch the session's.
        let forward = events.clone();
        // The runtime is in the pool's context from its start: built once, with evcxr's own start-up build.
        let deps = [runtime_dep.to_string()];
        let seen = events.cell().done_count();
        let ctx =
            Context::start(fanout, workdir.evcxr_dir(), &deps, move |stream, line| forward.cell().stream(stream, &format!("{line}\n")))
                .map_err(|e| pool_error(format!("cannot start the pool: {e}")))?;
        // evcxr's start ran code on every rank; each rank's `Done` for it travels on its own
        // (from other hosts, through the relays) and may come after evcxr has returned. Had
        // it come during the first cell, that cell would take it for its rank finishing.
        if !events.cell().wait_done_n(seen, n as u64, Duration::from_secs(30)) {
            crate::log!("pool: not every rank reported the end of evcxr's start-up run within 30 s");
        }
        Ok(Pool {
            ctx,
            n,
            events,
            gpus,
            started: Instant::now(),
            cells: 0,
            transcript: Mutex::new(None),
            session_items: None,
            group_file: Pool::group_file(private),
            hosts_reach,
            _listener: listener,
            _workdir: workdir,
            _spawner: None,
        })
    }

    /// Brings the session's dependencies and items into the pool (its `ranch` is there
    /// already, without features). Identical items leave the pool alone: evcxr keeps the variables of types
    /// that did not change.
    pub(super) fn bring_session_items(&mut self, snapshot: &ranch_magics::program::SessionSnapshot) -> Result<(), CellError> {
        // The pool's own `ranch` is the session's, unless the session's has features (candle).
        let deps: Vec<String> =
            snapshot.deps.iter().filter(|d| !d.trim_start().starts_with("ranch ") || d.contains("features")).cloned().collect();
        let code = [deps.join("\n"), snapshot.items.items.join("\n")].join("\n");
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&code, &mut hasher);
        let hash = std::hash::Hasher::finish(&hasher);
        if self.session_items == Some(hash) {
            return Ok(());
        }
        for dep in &deps {
            self.ctx.add_dependency(dep).map_err(|e| {
                pool_error(format!("the session's dependency `{dep}` could not be added to the pool: {}", e.to_string().trim()))
            })?;
        }
        if !snapshot.items.items.is_empty() {
            self.ctx
                .execute(&snapshot.items.items.join("\n"))
                .map_err(|e| pool_error(format!("the session's items could not be brought into the pool: {}", e.to_string().trim())))?;
        }
        self.session_items = Some(hash);
        Ok(())
    }

    /// Ties the life of the thread that started the pool to the pool's: the fan-out's
    /// parent-death signal fires when that thread ends.
    pub(super) fn keep_spawner(&mut self, alive: std::sync::mpsc::Sender<()>) {
        self._spawner = Some(alive);
    }

    /// The ranks' variables and their types, as evcxr writes them.
    pub(super) fn variables(&mut self) -> Vec<(String, String)> {
        self.ctx.variables()
    }

    pub(super) fn size(&self) -> usize {
        self.n
    }

    /// What the ranks of the last cell wrote, handed over once.
    pub(super) fn take_transcript(&mut self) -> Option<ranch_magics::transcript::Transcript> {
        self.transcript.lock().unwrap().take()
    }

    /// Sends what the pool's cells show to `cell` (a background job's), or (`None`) to the
    /// session's current cell again.
    pub(super) fn output_to(&self, cell: Option<Arc<CurrentCell>>) {
        *self.events.cell.lock().unwrap() = cell.unwrap_or_else(|| self.events.session_cell.clone());
    }

    /// Where the pool's cells are built.
    pub(super) fn build_dir(&self) -> &Path {
        self._workdir.evcxr_dir()
    }

    /// The fan-out process, for interrupts.
    pub(super) fn process(&self) -> Arc<Mutex<Child>> {
        self.ctx.process()
    }

    /// Tells `tx` when the ranks start the cell and when a rank panics while others still
    /// run it (`None`: nobody).
    pub(super) fn watch_cell(&self, tx: Option<mpsc::Sender<CellSignal>>) {
        *self.events.watcher.lock().unwrap() = tx;
    }

    /// Runs `code` on the pool ranks `ranks` (sorted), in a group of those ranks, as `how`
    /// says. `stopped` says whether (and why) the cell was stopped, `stopped_build` whether
    /// that stopped its build.
    pub(super) fn run(
        &mut self,
        code: &str,
        ranks: &[usize],
        how: &PxRun,
        stopped: &dyn Fn() -> Option<CellStop>,
        stopped_build: &dyn Fn() -> bool,
    ) -> CellOutcome {
        self.events.panics.lock().unwrap().clear();
        self.events.exits.lock().unwrap().clear();
        self.events.restarted.lock().unwrap().clear();
        self.events.done.lock().unwrap().clear();
        self.events.ranks_left.store(ranks.len(), std::sync::atomic::Ordering::SeqCst);
        // A rank restarted alone that the cell names runs again (the pool holds no variables).
        let mut stateless = self.events.stateless.lock().unwrap();
        ranks.iter().for_each(|r| {
            stateless.remove(r);
        });
        if !stateless.is_empty() {
            let out: Vec<String> = stateless.iter().map(usize::to_string).collect();
            self.events.cell().stream(
                Stream::Stderr,
                &format!(
                    "ranch: rank{} {} sit{} this cell out: restarted alone, without the pool's variables \
                     (`%ranch_restart` starts every rank afresh)\n",
                    if out.len() > 1 { "s" } else { "" },
                    out.join(", "),
                    if out.len() > 1 { "" } else { "s" }
                ),
            );
        }
        drop(stateless);
        let group = CellGroup::start(ranks, &self.group_file, self.hosts_reach.as_deref())
            .map_err(|e| pool_error(format!("cannot form the cell's group: {e}")))?;
        *self.events.group.lock().unwrap() = Some(group);
        *self.events.view.lock().unwrap() = Some(self.cell_view(ranks, how));
        let ticker = StatusTicker::start(&self.events);
        let prepared = crate::syntax::with_stdout_flush(code);
        let cell = self.events.cell();
        let seen = cell.done_count();
        let result = self.ctx.run(&prepared.code, &|_, _| String::new());
        let ran = result.as_ref().is_ok_and(|r| r.executed);
        // Every rank's output was sent before its `Done`.
        cell.wait_done_n(seen, ranks.len() as u64, if ran { Duration::from_secs(2) } else { Duration::from_millis(20) });
        drop(ticker);
        let stop = stopped();
        self.finish_view(&result, stop, how);
        drop(self.events.group.lock().unwrap().take());
        self.cells += 1;
        self.outcome(result, code, &prepared, stop, stopped_build)
    }

    /// What a cell on pool ranks `ranks` shows of them, as `how` says. The status table
    /// appears once the ranks have run the cell for [`SHOW_STATUS_AFTER`] (or reported
    /// progress, or one ended badly); `--timing` reads the ranks' times off it, drawn or not.
    fn cell_view(&self, ranks: &[usize], how: &PxRun) -> CellView {
        let pids = self.events.pids.lock().unwrap().clone();
        let hosts = self.events.hosts.lock().unwrap().clone();
        let status = (how.live_status || how.timing).then(|| StatusSetup {
            hosts: if hosts.is_empty() { Vec::new() } else { ranks.iter().map(|&r| hosts.get(r).cloned().unwrap_or_default()).collect() },
            gpus: ranks.iter().map(|&r| self.gpus.get(r).filter(|g| g.as_str() != "-").cloned()).collect(),
        });
        let mut view = RankView::new(ViewSetup {
            ranks: ranks.to_vec(),
            see: how.see.clone().unwrap_or_else(|| self.events.see.clone()),
            group_outputs: how.group_outputs,
            status,
            live: how.live_status,
            show_after: if how.background { Duration::ZERO } else { SHOW_STATUS_AFTER },
        });
        for (row, &rank) in ranks.iter().enumerate() {
            view.pid(row, pids.get(rank).copied());
        }
        CellView { view, status_id: display_op::own_id("px-status") }
    }

    /// Leaves the cell's status table in its final state, shows the output kept for
    /// `--group-outputs rank`, and `--timing`'s chart.
    fn finish_view(&self, result: &Result<Ran, EvalError>, stop: Option<CellStop>, how: &PxRun) {
        let Some(CellView { mut view, status_id }) = self.events.view.lock().unwrap().take() else { return };
        let exits = self.events.exits.lock().unwrap().clone();
        let died = matches!(result, Err(EvalError::ProcessDied(_)));
        let ranks = view.ranks().to_vec();
        let cell = self.events.cell();
        let sink = PoolSink { cell: &cell, status_id: &status_id };
        let rest = |row: usize| match exits.iter().find(|(r, _)| *r == ranks[row]) {
            Some((_, how)) => Ending::Lost(format!("its process {how}")),
            None if died || stop.is_some() => Ending::Stopped,
            None => Ending::Lost("it did not say that it finished the cell".into()),
        };
        view.finish(rest, &sink);
        *self.transcript.lock().unwrap() = Some(view.take_transcript());
        if how.timing
            && let Some(spans) = view.spans()
        {
            let build = result.as_ref().map_or(Duration::ZERO, |r| r.build);
            cell.display(ranch_magics::timing::bundle_spans(how.export, build, &spans), MimeBundle::new());
        }
    }

    /// What the cell's reply says: its value, or what stopped or failed it.
    fn outcome(
        &self,
        result: Result<Ran, EvalError>,
        code: &str,
        prepared: &crate::syntax::Prepared,
        stop: Option<CellStop>,
        stopped_build: &dyn Fn() -> bool,
    ) -> CellOutcome {
        let lost = |what: &str| {
            format!(
                "{what} The pool was restarted: its {} ranks are up again, but every rank's variables are lost \
                 (fns, types, `use` and `:dep` are kept). Re-run the cells that define the variables you need.",
                self.n
            )
        };
        let restarted = std::mem::take(&mut *self.events.restarted.lock().unwrap());
        if result.is_ok() && !restarted.is_empty() {
            return Err(self.restarted_alone(&restarted));
        }
        match result {
            Ok(ran) => {
                let panics = std::mem::take(&mut *self.events.panics.lock().unwrap());
                if let Some((evalue, traceback)) = ranch_magics::merge::panics_failure(&panics) {
                    return Err(CellError { ename: "RankPanicked".into(), evalue, traceback });
                }
                if prepared.shows_value {
                    return Ok(ran.data);
                }
                Ok(None)
            }
            // Only an interrupt stops a build (`--timeout` counts from when the ranks start).
            Err(_) if stop.is_some() && stopped_build() => Err(CellError::new(
                "Interrupted",
                "Interrupted while compiling: the build was stopped and nothing ran. Every rank's variables are unchanged.",
            )),
            Err(EvalError::ProcessDied(_)) if stop == Some(CellStop::Abort) => {
                let panics = std::mem::take(&mut *self.events.panics.lock().unwrap());
                let (evalue, mut traceback) =
                    ranch_magics::merge::panics_failure(&panics).unwrap_or_else(|| ("a rank panicked".into(), Vec::new()));
                traceback.truncate(traceback.len().saturating_sub(1));
                traceback.push(lost("--on-error abort stopped the other ranks."));
                Err(CellError { ename: "RankPanicked".into(), evalue, traceback })
            }
            Err(EvalError::ProcessDied(_)) if stop.is_some() => Err(match stop {
                Some(CellStop::Timeout(t)) => CellError::new(
                    "Timeout",
                    lost(&format!("Timed out after {} s (--timeout): the ranks were stopped to stop the cell.", t.as_secs_f64())),
                ),
                _ => CellError::new("Interrupted", lost("Interrupted: the ranks were stopped to stop the cell.")),
            }),
            Err(EvalError::ProcessDied(why)) => {
                let exits = std::mem::take(&mut *self.events.exits.lock().unwrap());
                let what = match exits.first() {
                    Some((rank, how)) => format!("Rank {rank} {how} during the cell."),
                    None => format!("The pool's fan-out process died ({}).", why.trim()),
                };
                Err(CellError::new("RankDied", lost(&what)))
            }
            Err(e) => Err(super::cell_error(e, code, prepared.inserted, " on every rank")),
        }
    }

    /// The cell's error when ranks' processes ended and were restarted alone: who, how,
    /// and that the others kept their variables.
    fn restarted_alone(&self, restarted: &[usize]) -> CellError {
        let exits = self.events.exits.lock().unwrap().clone();
        let mut said: Vec<String> = restarted
            .iter()
            .map(|r| {
                let how = exits.iter().rev().find(|(e, _)| e == r).map_or("ended", |(_, how)| how.as_str());
                format!("Rank {r} {how}.")
            })
            .collect();
        // Those restarted earlier have no variables to keep either.
        let stateless = self.events.stateless.lock().unwrap().clone();
        let kept: Vec<String> = (0..self.n).filter(|r| !restarted.contains(r) && !stateless.contains(r)).map(|r| r.to_string()).collect();
        let names: Vec<String> = restarted.iter().map(usize::to_string).collect();
        said.push(format!(
            "Only {} restarted: ranks {} kept their variables; {} none, and sit{} out the pool's cells while \
             the pool holds variables (`%ranch_restart` starts every rank afresh).",
            if names.len() == 1 { format!("rank {} was", names[0]) } else { format!("ranks {} were", names.join(", ")) },
            if kept.is_empty() { "(none)".to_string() } else { kept.join(", ") },
            if names.len() == 1 { "it has" } else { "they have" },
            if names.len() == 1 { "s" } else { "" },
        ));
        let evalue = said.join(" ");
        CellError { ename: "RankDied".into(), traceback: vec![evalue.clone()], evalue }
    }

    /// Ranks restarted alone, which sit the cells out while the pool holds variables.
    pub(super) fn sitting_out(&mut self) -> Vec<usize> {
        let stateless: Vec<usize> = self.events.stateless.lock().unwrap().iter().copied().collect();
        if stateless.is_empty() || self.ctx.variables().is_empty() {
            return Vec::new();
        }
        stateless
    }

    /// Restarts ranks `ranks` alone (`%ranch_restart --targets`): their processes are
    /// stopped and the fan-out starts each again, without variables (it does so before any
    /// cell: a no-op cell is run for it). Ranks on other hosts are restarted all together.
    pub(super) fn restart_ranks(&mut self, ranks: &[usize]) -> Result<(), CellError> {
        if self.hosts_reach.is_some() || !self.events.hosts.lock().unwrap().is_empty() {
            return Err(CellError::new(
                "UsageError",
                "--targets: ranks on other hosts are restarted all together (`%ranch_restart` without --targets)",
            ));
        }
        let pids = self.events.pids.lock().unwrap().clone();
        let stopped: Vec<u32> = ranks.iter().filter_map(|&r| pids.get(r).copied()).collect();
        for &pid in &stopped {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while stopped.iter().any(|&pid| process_state(pid).is_some()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let restarted = self.ctx.execute("()");
        self.events.restarted.lock().unwrap().clear();
        restarted.map_err(|e| pool_error(format!("the ranks could not be started again: {}", e.to_string().trim())))
    }

    /// `%ranch_status`: one row per rank.
    pub(super) fn status(&self) -> MimeBundle {
        let pids = self.events.pids.lock().unwrap().clone();
        let hosts = self.events.hosts.lock().unwrap().clone();
        let this_host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let rows: Vec<[String; 6]> = (0..self.n)
            .map(|rank| {
                let pid = pids.get(rank).copied();
                let (state, memory) = match (pid.and_then(process_state), hosts.get(rank)) {
                    (Some((state, rss_kib)), _) => (state, format!("{:.1} MiB", rss_kib as f64 / 1024.0)),
                    // A rank elsewhere: its relay's link says it lives (see the fan-out).
                    (None, Some(_)) => ("up".to_string(), "-".to_string()),
                    (None, None) => ("gone".to_string(), "-".to_string()),
                };
                let state = if self.events.stateless.lock().unwrap().contains(&rank) { format!("{state}, no variables") } else { state };
                let host = hosts.get(rank).cloned().unwrap_or_else(|| this_host.clone());
                [rank.to_string(), host, pid.map_or("-".into(), |p| p.to_string()), self.gpus[rank].clone(), state, memory]
            })
            .collect();
        let mut table = Grid::new(&["rank", "host", "pid", "GPU", "state", "memory"]);
        for row in rows {
            table.row(row.map(Cell::text));
        }
        let title = format!("pool of {} ranks, up {:.0} s, {} cells run", self.n, self.started.elapsed().as_secs_f64(), self.cells);
        let text = format!("{title}\n{}\n", table.text());
        let html = format!("<p>{}</p>{}", escape(&title), table.html());
        let mut data = MimeBundle::new();
        data.insert("text/plain".into(), Value::String(text));
        data.insert("text/html".into(), Value::String(html));
        data
    }
}

/// How the fan-out starts ranks through a launcher (`None`: it spawns them itself): the
/// launcher's command, whose ranks are relays that fetch this binary over a channel when
/// they run elsewhere, and connect back to the fan-out with the pool's token.
pub(super) fn remote_spec(placement: &Placement, private: &Path, n: usize) -> Result<Option<RemoteSpec>, CellError> {
    if placement.launcher == LauncherKind::Local {
        return Ok(None);
    }
    let exe = std::env::current_exe().map_err(|e| pool_error(e.to_string()))?;
    let reach = placement.reach_addr().map_err(|e| CellError::new("UsageError", e))?;
    let token = ranch_magics::group::new_token().map_err(pool_error)?;
    let ship = placement.elsewhere();
    let plan = LaunchPlan {
        exe: exe.clone(),
        delivery: if ship { ranch_magics::ranks::launch::Delivery::Channel } else { ranch_magics::ranks::launch::Delivery::Path },
        local_ranks: n,
        world_size: n,
        base_rank: 0,
        run_dir: private.to_path_buf(),
        master_addr: reach.clone(),
        master_port: 0,
        // The fan-out fills in the addresses once it listens (the hub's in the relays' role).
        env: vec![
            (ranch::__rt::TOKEN_ENV.to_string(), token.clone()),
            (ranch_magics::role::ROLE_ENV.to_string(), String::new()),
            (ranch_magics::channel::CHANNEL_ENV.to_string(), String::new()),
        ],
        rank_env: Vec::new(),
    };
    let command = match ranch_magics::ranks::launch::command_for(placement, false, &plan) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(None),
        Err(ranch_magics::ranks::launch::CommandError::Usage(m)) => return Err(CellError::new("UsageError", m)),
        Err(ranch_magics::ranks::launch::CommandError::Io(m)) => return Err(pool_error(m)),
    };
    let libstd = super::host_rust::host_rust().ok().and_then(|h| {
        std::fs::read_dir(&h.libdir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libstd-") && n.ends_with(".so")))
    });
    let start_timeout_s =
        std::env::var("RANCH_POOL_START_TIMEOUT").ok().and_then(|t| t.parse().ok()).filter(|t: &f64| *t > 0.0).unwrap_or(120.0);
    Ok(Some(RemoteSpec {
        launcher: command.name.to_string(),
        program: command.program,
        args: command.args,
        env: command.env,
        reach,
        token,
        ship: ship.then_some(exe),
        libstd,
        private: private.to_path_buf(),
        start_timeout_s,
    }))
}

/// Redraws the running cell's status table while it lives.
struct StatusTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatusTicker {
    fn start(events: &Arc<PoolEvents>) -> StatusTicker {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = events.view.lock().unwrap().as_ref().is_some_and(|cv| cv.view.draws()).then(|| {
            let (events, stop) = (events.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    events.view(|v, sink| v.tick(Instant::now(), sink));
                }
            })
        });
        StatusTicker { stop, thread }
    }
}

impl Drop for StatusTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A process's state and resident memory (KiB), from /proc; `None` when it is gone.
fn process_state(pid: u32) -> Option<(String, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let state = field("State:")?;
    if state.starts_with('Z') {
        return None;
    }
    let rss = field("VmRSS:").and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    let state = if state.starts_with('R') { "running" } else { "idle" };
    Some((state.to_string(), rss))
}
