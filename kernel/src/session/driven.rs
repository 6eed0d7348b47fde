//! The evcxr session as `ranch_magics::driver` sees it: its variables, exporting them,
//! its items and dependencies, binding results, the pool; and the running cell as the
//! driver's host (output, interrupts, processes left behind).

use super::pool::{CellSignal, CellStop, Pool};
use super::{EvcxrSession, RunState};
use crate::interpreter::{CellContext, CellError, CellOutcome, MimeBundle, Stream};
use ranch_magics::args::OnError;
use ranch_magics::build::Toolchain;
use ranch_magics::driver::px::{PoolRanks, PxRun};
use ranch_magics::driver::{self, BuildTools, Failure, Host, Outcome, Stoppable, jobs};
use ranch_magics::program::{SessionSnapshot, Shipped};
use ranch_magics::ranks::supervise;
use ranch_magics::source;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What the session keeps for the driver.
#[derive(Default)]
pub(super) struct DrivenState {
    /// `ranch` is a dependency of the session.
    runtime_added: bool,
    /// The session's `ranch` has its `candle` feature.
    runtime_candle: bool,
    /// Held while this kernel uses its runtime version (see `disk`).
    runtime_in_use: Option<super::disk::RuntimeInUse>,
    /// The session's items and deps, with the session generation they were read at.
    snapshot: Option<(u64, SessionSnapshot)>,
    /// The generation at which the session last compiled an export (its source is current).
    exported_at: Option<u64>,
    toolchain: Option<BuildTools>,
}

/// The one place a magic's failure becomes Jupyter's error.
impl From<Failure> for CellError {
    fn from(f: Failure) -> CellError {
        CellError { ename: f.ename().to_string(), evalue: f.to_string(), traceback: f.traceback() }
    }
}

/// The session's own errors pass through the magics as they are.
impl From<CellError> for Failure {
    fn from(e: CellError) -> Failure {
        Failure::Session { ename: e.ename, evalue: e.evalue, traceback: e.traceback }
    }
}

fn ranch_error(msg: impl Into<String>) -> Failure {
    Failure::Ranch(msg.into())
}

impl EvcxrSession {
    /// The directory evcxr builds the session's crate in.
    fn evcxr_dir(&mut self) -> Result<PathBuf, Failure> {
        self.context()?.build_dir().map_err(|e| ranch_error(e.to_string()))
    }

    /// The dependency line that adds the runtime crate to an evcxr context.
    pub(super) fn runtime_dep(&self) -> Result<String, Failure> {
        let dir = super::runtime_crate::dir().map_err(ranch_error)?;
        Ok(format!("ranch = {{ path = {:?} }}", dir.to_string_lossy()))
    }

    /// Unpacks this version's runtime crate (locked first: a kernel of another ranch
    /// version, tidying, then leaves it alone), removes versions no kernel uses, and gives
    /// the dependency line that adds it.
    fn unpack_runtime(&mut self) -> Result<String, Failure> {
        let dir = super::runtime_crate::dir().map_err(ranch_error)?;
        if self.driven.runtime_in_use.is_none() {
            let _ = std::fs::create_dir_all(dir.parent().expect("has parent"));
            self.driven.runtime_in_use = super::disk::use_runtime(&dir).ok();
        }
        let dir = super::runtime_crate::unpack().map_err(|e| ranch_error(format!("cannot unpack the ranch runtime crate: {e}")))?;
        let target = self.workdir.target_dir();
        let old = super::disk::remove_unused_runtimes(dir.parent().expect("in the cache directory"), &dir, &[target]);
        if old > 0 {
            crate::log!("removed {old} runtime crates of other ranch versions that no kernel uses");
        }
        self.runtime_dep()
    }

    /// The dependencies the session's context starts with: the runtime crate, added before
    /// the user defines anything (adding a dependency later changes the identity of every
    /// session type, and evcxr then drops the variables of those types) and built by
    /// evcxr's own start-up build, so the first cell waits for one build, not two.
    pub(super) fn runtime_for_start(&mut self) -> Vec<String> {
        match self.unpack_runtime() {
            Ok(dep) => {
                self.driven.runtime_added = true;
                vec![dep]
            }
            Err(e) => {
                crate::log!("{e}");
                vec![]
            }
        }
    }

    /// The context started without the runtime after all (see `create_context`).
    pub(super) fn runtime_not_added(&mut self) {
        self.driven.runtime_added = false;
    }

    /// After a plain cell that added candle (`:dep candle-core`), the session runtime gets
    /// its `candle` feature, so session fns (for `%in_ddp`) and pool cells can name
    /// `ranch::candle`. Changing a dependency drops the variables of the session's own
    /// types, as the cell's `:dep` just did; a struct the cell defined after it is dropped too.
    pub(super) fn add_candle_to_runtime(&mut self, code: &str) -> Result<(), Failure> {
        if self.driven.runtime_candle || !self.driven.runtime_added || !super::adapter::adds_dependency(code, "candle-core") {
            return Ok(());
        }
        let dep = ranch_magics::program::with_ranch_features(&self.runtime_dep()?, &["candle"]);
        self.context()?.add_dependency(&dep).map_err(|e| {
            ranch_error(format!("candle was added, but the ranch runtime's `candle` feature could not be: {}", e.to_string().trim()))
        })?;
        self.driven.runtime_candle = true;
        self.generation += 1;
        Ok(())
    }

    /// Runs a magic of the driver on this session, as the cell `cx`. An interrupt meanwhile
    /// never restarts evcxr's child: it stops what the driver said is stoppable.
    pub(super) fn drive(
        &mut self,
        cx: &CellContext,
        work: impl FnOnce(&mut driver::Driver, &mut Self, &CellHost) -> Outcome,
    ) -> Result<Option<MimeBundle>, CellError> {
        let run = self.run.clone();
        run.interrupted.store(false, Ordering::SeqCst);
        run.ranch_cell.store(true, Ordering::SeqCst);
        run.running.store(true, Ordering::SeqCst);
        let host = CellHost { cx, run: &run };
        let mut driver = std::mem::take(&mut self.driver);
        let outcome = work(&mut driver, self, &host);
        self.driver = driver;
        run.running.store(false, Ordering::SeqCst);
        run.ranch_cell.store(false, Ordering::SeqCst);
        Ok(outcome?)
    }
}

impl driver::Session for EvcxrSession {
    fn variables(&mut self) -> Result<Vec<(String, String)>, Failure> {
        Ok(self.context()?.variables())
    }

    fn export(&mut self, vars: &[Shipped], dir: &Path) -> Result<Vec<String>, Failure> {
        // One evcxr compile for all; it also makes `last_source` current.
        let mut export = String::from("{ use ranch::__rt::{ViaNothing as _, ViaSerialize as _};\n");
        for v in vars {
            export.push_str(&format!(
                "ranch::__rt::export({:?}, {:?}, (&ranch::__rt::Ship(&{})).ranch_encode());\n",
                dir.to_string_lossy(),
                v.name,
                v.name
            ));
        }
        export.push_str("};");
        self.context()?
            .execute(&export)
            .map_err(|e| ranch_error(format!("could not export the variables from the session: {}", e.to_string().trim())))?;
        self.driven.exported_at = Some(self.generation);
        Ok(vars
            .iter()
            .filter_map(|v| {
                let why = std::fs::read_to_string(dir.join(format!("{}.err", v.name))).ok()?;
                Some(format!("`{}: {}` ({why})", v.name, v.ty))
            })
            .collect())
    }

    fn snapshot(&mut self) -> Result<SessionSnapshot, Failure> {
        let generation = self.generation;
        if let Some((g, snap)) = &self.driven.snapshot
            && *g == generation
        {
            return Ok(snap.clone());
        }
        // The last compile may have been a cell that failed: an empty export makes evcxr's
        // source the session's.
        if self.driven.exported_at != Some(generation) {
            let private = self.private.path().to_path_buf();
            self.export(&[], &private)?;
        }
        let ctx = self.context()?;
        let user_crate = ctx.user_crate().map_err(|e| ranch_error(format!("cannot read the session's source: {e}")))?;
        let deps = ctx.dependencies();
        let tmpdir = self.evcxr_dir()?;
        let profile = std::fs::read_to_string(tmpdir.join("Cargo.toml")).map(|t| source::profile_section(&t)).unwrap_or_default();
        let snap = SessionSnapshot { items: source::session_items(&user_crate), deps, profile };
        self.driven.snapshot = Some((generation, snap.clone()));
        Ok(snap)
    }

    fn execute(&mut self, code: &str) -> Result<(), Failure> {
        self.context()?.execute(code).map_err(|e| ranch_error(e.to_string().trim().to_string()))?;
        self.generation += 1;
        Ok(())
    }

    fn bind(&mut self, name: &str, ty: &str, dir: &Path, ranks: &[usize]) -> Result<(), Failure> {
        let list: Vec<String> = ranks.iter().map(usize::to_string).collect();
        let code = format!(
            "let {name}: Vec<{ty}> = ranch::__rt::collect_ranks::<{ty}>({dir:?}, &[{list}]);",
            dir = dir.to_string_lossy(),
            list = list.join(", ")
        );
        self.context()?.execute(&code).map_err(|e| ranch_error(e.to_string().trim().to_string()))?;
        self.generation += 1;
        Ok(())
    }

    /// Adds the embedded `ranch` crate to the session once (normally it is there from the
    /// context's start: see [`EvcxrSession::runtime_for_start`]).
    fn add_runtime(&mut self) -> Result<(), Failure> {
        self.context()?;
        if self.driven.runtime_added {
            return Ok(());
        }
        let dep = self.unpack_runtime()?;
        self.context()?.add_dependency(&dep).map_err(|e| ranch_error(format!("cannot add the ranch runtime crate to the session: {e}")))?;
        self.driven.runtime_added = true;
        Ok(())
    }

    fn toolchain(&mut self) -> Result<BuildTools, Failure> {
        if let Some(t) = &self.driven.toolchain {
            return Ok(t.clone());
        }
        let tmpdir = self.evcxr_dir()?;
        let host = super::host_rust::host_rust().map_err(ranch_error)?;
        let linker = self.context()?.linker();
        let mut rustflags = String::from("-Cprefer-dynamic");
        if linker.contains("lld") {
            rustflags.push_str(" -Clink-arg=-fuse-ld=lld");
        }
        let tools = BuildTools {
            toolchain: Toolchain {
                cargo: PathBuf::from("cargo"),
                target_dir: tmpdir.join("target"),
                target_triple: host.triple.clone(),
                rustflags,
                lockfile: Some(tmpdir.join("Cargo.lock")),
                wrapper: std::env::current_exe().ok(),
            },
            // Rank programs link the toolchain's libstd dynamically, as evcxr's cells do.
            library_path: super::host_rust::library_path_with(&host.libdir),
        };
        self.driven.toolchain = Some(tools.clone());
        Ok(tools)
    }

    fn private_dir(&self) -> PathBuf {
        self.private.path().to_path_buf()
    }

    fn rank_crate_dir(&self) -> PathBuf {
        self.workdir.rank_crate_dir().to_path_buf()
    }

    fn pool_job(&mut self, job: &str, code: String, ranks: Vec<usize>, how: PxRun) -> Result<jobs::Work, Failure> {
        self.pool_to_job(job, code, ranks, how)
    }

    fn pool(&mut self) -> Result<Box<dyn PoolRanks + '_>, Failure> {
        self.await_pool()?;
        let run = self.run.clone();
        let pool = self.pool.as_mut().ok_or_else(super::pool::no_pool)?;
        Ok(Box::new(RunningPool { pool, run }))
    }
}

/// The pool, while a cell uses it: an interrupt stops its build or its ranks.
struct RunningPool<'a> {
    pool: &'a mut Pool,
    run: std::sync::Arc<RunState>,
}

impl PoolRanks for RunningPool<'_> {
    fn size(&self) -> usize {
        self.pool.size()
    }

    fn variables(&mut self) -> Vec<(String, String)> {
        self.pool.variables()
    }

    fn bring_session_items(&mut self, snapshot: &SessionSnapshot) -> Result<(), Failure> {
        Ok(self.pool.bring_session_items(snapshot)?)
    }

    fn run(&mut self, code: &str, ranks: &[usize], how: &PxRun) -> Outcome {
        Ok(run_pool_cell(self.pool, &self.run, code, ranks, how)?)
    }

    fn take_transcript(&mut self) -> Option<ranch_magics::transcript::Transcript> {
        self.pool.take_transcript()
    }

    fn sitting_out(&mut self) -> Vec<usize> {
        self.pool.sitting_out()
    }
}

/// Runs a pool cell, stoppable through `run` (the session's, or a background job's own): an
/// interrupt, its `--timeout` and `--on-error abort`.
fn run_pool_cell(pool: &mut Pool, run: &std::sync::Arc<RunState>, code: &str, ranks: &[usize], how: &PxRun) -> CellOutcome {
    run.interrupted.store(false, Ordering::SeqCst);
    run.stopped_build.store(false, Ordering::SeqCst);
    *run.pool_stop.lock().unwrap() = None;
    *run.pool_build_dir.lock().unwrap() = Some(pool.build_dir().to_path_buf());
    *run.pool_child.lock().unwrap() = Some(pool.process());
    run.running.store(true, Ordering::SeqCst);
    let (tell, told) = std::sync::mpsc::channel();
    pool.watch_cell(Some(tell));
    let watch = CellWatch::start(run.clone(), pool.process(), how.timeout, how.on_error == OnError::Abort, told);
    let stopped = || {
        let own = *run.pool_stop.lock().unwrap();
        own.or_else(|| run.interrupted.load(Ordering::SeqCst).then_some(CellStop::Interrupt))
    };
    let stopped_build = || run.stopped_build.load(Ordering::SeqCst);
    let outcome = pool.run(code, ranks, how, &stopped, &stopped_build);
    pool.watch_cell(None);
    watch.end();
    *run.pool_child.lock().unwrap() = None;
    outcome
}

/// A pool cell's output, kept by the background job that runs it.
struct JobSink(std::sync::Arc<jobs::JobHost>);

impl crate::interpreter::OutputSink for JobSink {
    fn stream(&self, stream: Stream, text: &str) {
        let s = if stream == Stream::Stderr { supervise::Stream::Stderr } else { supervise::Stream::Stdout };
        self.0.stream(s, text);
    }

    fn display(&self, data: MimeBundle, metadata: MimeBundle) {
        let rank = metadata.get("ranch").and_then(|r| r.get("rank")).and_then(serde_json::Value::as_u64).map(|r| r as usize);
        self.0.display(data, rank);
    }

    fn display_in_place(&self, data: MimeBundle, metadata: MimeBundle, id: &str, update: bool) {
        self.0.display_in_place(data, metadata, id, update);
    }

    fn clear_output(&self) {
        self.0.clear_output();
    }
}

impl EvcxrSession {
    /// The pool's cells run as the background job `job`: the pool goes to the job's
    /// thread, and comes back (to [`EvcxrSession::await_pool`]) when the cell is over.
    fn pool_to_job(&mut self, job: &str, code: String, ranks: Vec<usize>, how: PxRun) -> Result<jobs::Work, Failure> {
        self.await_pool()?;
        let mut pool = self.pool.take().ok_or_else(super::pool::no_pool)?;
        super::procs::spare_builds_in(Some(pool.build_dir()));
        let (back, returned) = std::sync::mpsc::channel();
        self.pool_away = Some(super::pool::PoolAway { job: job.to_string(), returned });
        Ok(Box::new(move |host: std::sync::Arc<jobs::JobHost>| {
            let cell = std::sync::Arc::new(super::events::CurrentCell::default());
            cell.begin(std::sync::Arc::new(JobSink(host.clone())));
            pool.output_to(Some(cell));
            let run = std::sync::Arc::new(RunState::default());
            let fanout = pool.process().lock().unwrap().id();
            let cancel = JobCancel::start(host.clone(), run.clone());
            let outcome = run_pool_cell(&mut pool, &run, &code, &ranks, &how);
            cancel.end();
            pool.output_to(None);
            if let Some(transcript) = pool.take_transcript() {
                host.keep_transcript(transcript);
            }
            // A fan-out evcxr restarted on this thread dies when the thread ends: the thread
            // then lives as long as the pool.
            if pool.process().lock().unwrap().id() != fanout {
                let (alive, pool_dropped) = std::sync::mpsc::channel::<()>();
                pool.keep_spawner(alive);
                host.linger(Box::new(move || {
                    let _ = pool_dropped.recv();
                }));
            }
            let _ = back.send(pool);
            outcome.map(|shown| (shown, Vec::new())).map_err(Failure::from)
        }))
    }
}

/// Stops a background pool cell when its job is cancelled, as an interrupt stops one in
/// front (the fan-out is ended; a build of the session or of another job is not touched).
struct JobCancel {
    over: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl JobCancel {
    fn start(host: std::sync::Arc<jobs::JobHost>, run: std::sync::Arc<RunState>) -> JobCancel {
        let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = over.clone();
        let thread = std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                // Once the cell runs (its fan-out known, its flags reset): its build, or its
                // ranks, are stopped as an interrupt stops a cell in front.
                if host.interrupted() {
                    let fanout = run.pool_child.lock().unwrap().clone();
                    if let Some(fanout) = fanout {
                        run.interrupted.store(true, Ordering::SeqCst);
                        run.stop_pool_cell(&fanout);
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        JobCancel { over, thread }
    }

    fn end(self) {
        self.over.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

/// Stops a pool cell from within, as an interrupt does: once its `--timeout` has passed
/// since the ranks started it (its build does not count, as with `%%ranch`), or when a rank
/// panics while others still run it under `--on-error abort`.
struct CellWatch {
    /// Set (under its lock) once the cell is over, so a late stop touches nothing.
    over: std::sync::Arc<Mutex<bool>>,
    thread: std::thread::JoinHandle<()>,
}

impl CellWatch {
    fn start(
        run: std::sync::Arc<RunState>,
        fanout: std::sync::Arc<Mutex<std::process::Child>>,
        timeout: Option<Duration>,
        abort: bool,
        told: std::sync::mpsc::Receiver<CellSignal>,
    ) -> CellWatch {
        use std::sync::mpsc::RecvTimeoutError;
        let over = std::sync::Arc::new(Mutex::new(false));
        let done = over.clone();
        let thread = std::thread::spawn(move || {
            let mut deadline: Option<std::time::Instant> = None;
            let cause = loop {
                let got = match deadline {
                    Some(d) => told.recv_timeout(d.saturating_duration_since(std::time::Instant::now())),
                    None => told.recv().map_err(|_| RecvTimeoutError::Disconnected),
                };
                match (got, timeout) {
                    (Ok(CellSignal::Running), Some(t)) => {
                        deadline.get_or_insert_with(|| std::time::Instant::now() + t);
                    }
                    (Ok(CellSignal::Panicked), _) if abort => break CellStop::Abort,
                    (Ok(_), _) => {}
                    (Err(RecvTimeoutError::Timeout), Some(t)) => break CellStop::Timeout(t),
                    (Err(_), _) => return,
                }
            };
            let over = done.lock().unwrap();
            if !*over {
                *run.pool_stop.lock().unwrap() = Some(cause);
                run.stop_pool_cell(&fanout);
            }
        });
        CellWatch { over, thread }
    }

    /// The cell is over: nothing is stopped after this returns.
    fn end(self) {
        *self.over.lock().unwrap() = true;
        // The watcher wakes when the pool lets go of its sender, or at its deadline.
        drop(self.over);
        let _ = self.thread.join();
    }
}

/// The running cell, as the driver's host.
pub(super) struct CellHost<'a> {
    cx: &'a CellContext,
    run: &'a RunState,
}

impl<'a> CellHost<'a> {
    pub(super) fn new(cx: &'a CellContext, run: &'a RunState) -> CellHost<'a> {
        CellHost { cx, run }
    }
}

impl Host for CellHost<'_> {
    fn stream(&self, stream: supervise::Stream, text: &str) {
        let s = match stream {
            supervise::Stream::Stdout => Stream::Stdout,
            supervise::Stream::Stderr => Stream::Stderr,
        };
        self.cx.sink.stream(s, text);
    }

    fn display(&self, data: MimeBundle, rank: Option<usize>) {
        let mut meta = MimeBundle::new();
        if let Some(rank) = rank {
            meta.insert("ranch".into(), serde_json::json!({ "rank": rank }));
        }
        self.cx.sink.display(data, meta);
    }

    fn display_in_place(&self, data: MimeBundle, metadata: MimeBundle, id: &str, update: bool) {
        self.cx.sink.display_in_place(data, metadata, id, update);
    }

    fn clear_output(&self) {
        self.cx.sink.clear_output();
    }

    fn interrupted(&self) -> bool {
        self.run.interrupted.load(Ordering::SeqCst)
    }

    fn stoppable(&self, what: Stoppable) {
        let (build, cancel) = match what {
            Stoppable::Nothing => (None, None),
            Stoppable::Build(b) => (Some(b), None),
            Stoppable::Ranks(c) => (None, Some(c)),
        };
        *self.run.ranch_build.lock().unwrap() = build;
        *self.run.ranch_cancel.lock().unwrap() = cancel;
    }

    fn watch(&self, pgid: i32, running: bool) {
        if running { super::janitor::watch(pgid) } else { super::janitor::forget(pgid) }
    }

    fn children(&self) -> HashSet<i32> {
        super::procs::children()
    }

    fn end_new_orphans(&self, before: &HashSet<i32>) -> usize {
        super::procs::end_new_orphans(before, &self.run.own_children())
    }

    fn log(&self, line: &str) {
        crate::log!("{line}");
    }

    fn gpus(&self) -> &ranch_magics::gpus::Discovery {
        ranch_magics::gpus::discover()
    }

    fn background(&self) -> Option<(std::sync::Arc<dyn jobs::Outlet>, usize)> {
        Some((std::sync::Arc::new(JobOutlet { sink: self.cx.sink.clone() }), self.cx.execution_count))
    }
}

/// What a background job keeps of the kernel once its cell is over: that cell's output (its
/// status table goes on updating there, with that cell as parent) and the kernel's processes.
struct JobOutlet {
    sink: std::sync::Arc<dyn crate::interpreter::OutputSink>,
}

impl jobs::Outlet for JobOutlet {
    fn status(&self, data: MimeBundle, metadata: MimeBundle, id: &str, update: bool) {
        self.sink.display_in_place(data, metadata, id, update);
    }

    fn watch(&self, pgid: i32, running: bool) {
        if running { super::janitor::watch(pgid) } else { super::janitor::forget(pgid) }
    }

    fn children(&self) -> HashSet<i32> {
        super::procs::children()
    }

    fn end_orphans_in(&self, before: &HashSet<i32>, groups: &[i32]) -> usize {
        super::procs::end_orphans_in(before, groups)
    }

    fn log(&self, line: &str) {
        crate::log!("{line}");
    }
}
