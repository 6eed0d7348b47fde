//! The evcxr-backed interpreter (evcxr itself is reached through [`adapter`] only).
//!
//! Plain cells go to one evcxr context. Its child process (this binary again)
//! streams the cell's output to the kernel through [`events`]; panics, crashes, interrupts
//! and compile errors become Jupyter errors that say what happened and what was lost.

mod adapter;
mod cache_dir;
mod child;
mod clean;
mod disk;
mod driven;
mod events;
mod help;
mod host_rust;
mod janitor;
mod kernel_stderr;
mod magic;
mod pool;
mod private_dir;
mod procs;
mod px;
mod render;
mod runtime_crate;
mod workdir;

use crate::interpreter::{
    CellContext, CellError, CellOutcome, CompletenessCheck, Completions, Interpreter, Interrupter, MimeBundle, Stream,
};
use crate::syntax;
use adapter::{Context, EvalError, Ran};
use events::{CurrentCell, Listener};
use ranch_magics::magic_table::{self, Lookup};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use adapter::serve_rustc_wrapper as run_evcxr_rustc_wrapper;
pub use child::run as run_child;
pub use janitor::run as run_janitor;

/// What the interrupter shares with the running cell.
#[derive(Default)]
struct RunState {
    running: AtomicBool,
    interrupted: AtomicBool,
    /// Whether the interrupt stopped a build (the child and its variables survive).
    stopped_build: AtomicBool,
    child: Mutex<Option<Arc<Mutex<std::process::Child>>>>,
    /// Set while a `%%ranch` cell's ranks run.
    ranch_cancel: Mutex<Option<ranch_magics::ranks::supervise::Cancel>>,
    /// Set while a `%%ranch` cell's rank program builds.
    ranch_build: Mutex<Option<ranch_magics::build::BuildHandle>>,
    /// A `%%ranch` cell is running: an interrupt must never restart evcxr's child.
    ranch_cell: AtomicBool,
    /// Set while a cell waits for the pool to start: an interrupt only ends the wait.
    waiting_for_pool: AtomicBool,
    /// Set while a pool cell runs: the pool's fan-out process, and where its cells build.
    pool_child: Mutex<Option<Arc<Mutex<std::process::Child>>>>,
    pool_build_dir: Mutex<Option<std::path::PathBuf>>,
    /// Why a pool cell was stopped by its own flags (`--timeout`, `--on-error abort`).
    pool_stop: Mutex<Option<pool::CellStop>>,
}

impl RunState {
    /// Stops the running pool cell: its build if one runs (nothing ran; every rank keeps its
    /// variables), else its ranks (evcxr restarts the pool; the cell's error says what was
    /// lost). The session is not touched.
    fn stop_pool_cell(&self, fanout: &Mutex<std::process::Child>) {
        // Only the pool's own build: a cell in front (when this one is a background job's)
        // may be building too.
        let dir = self.pool_build_dir.lock().unwrap().clone();
        if dir.is_some_and(|dir| procs::kill_cargo_builds_in(&dir)) {
            self.stopped_build.store(true, Ordering::SeqCst);
        } else {
            let _ = fanout.lock().unwrap().kill();
        }
    }
}

struct EvcxrInterrupter(Arc<RunState>);

impl Interrupter for EvcxrInterrupter {
    fn interrupt(&self) {
        let state = &self.0;
        if !state.running.load(Ordering::SeqCst) {
            return;
        }
        state.interrupted.store(true, Ordering::SeqCst);
        if state.waiting_for_pool.load(Ordering::SeqCst) {
            return;
        }
        // A `%%ranch` cell: stop its ranks or its build; the session is not touched.
        if let Some(cancel) = &*state.ranch_cancel.lock().unwrap() {
            cancel.cancel();
            return;
        }
        if let Some(build) = &*state.ranch_build.lock().unwrap() {
            build.stop();
            return;
        }
        if let Some(fanout) = &*state.pool_child.lock().unwrap() {
            state.stop_pool_cell(fanout);
            return;
        }
        if state.ranch_cell.load(Ordering::SeqCst) {
            // Exporting variables or snapshotting the session: stop evcxr's build if one
            // runs; the cell checks `interrupted` before launching anything.
            procs::kill_cargo_builds();
            return;
        }
        // evcxr has no interrupt: stop a build if one runs, else the child running the code
        // (evcxr then restarts it, and the session's variables are gone).
        if procs::kill_cargo_builds() {
            state.stopped_build.store(true, Ordering::SeqCst);
            return;
        }
        if let Some(child) = &*state.child.lock().unwrap() {
            let _ = child.lock().unwrap().kill();
        }
    }
}

pub struct EvcxrSession {
    ctx: Option<Context>,
    start_error: Option<String>,
    cell: Arc<CurrentCell>,
    run: Arc<RunState>,
    listener: Option<Listener>,
    /// What the magics' driver keeps between cells, and what the session keeps for it.
    driver: ranch_magics::driver::Driver,
    driven: driven::DrivenState,
    /// The pool of persistent ranks, once `%ranch_start` made one.
    pool: Option<pool::Pool>,
    /// A pool that `%ranch_start` is starting in the background.
    pool_starting: Option<px::Starting>,
    /// The pool, while a background job's cell has it.
    pool_away: Option<pool::PoolAway>,
    /// The arguments the running pool was started with (`%ranch_restart` reuses them).
    pool_args: Option<ranch_magics::pool::PoolArgs>,
    /// `%autopx`: plain cells run on the pool.
    autopx: bool,
    /// Bumped by every plain cell: the session's items may have changed.
    generation: u64,
    workdir: workdir::WorkDir,
    /// Dropped last: the other fields keep files in it.
    private: private_dir::PrivateDir,
}

impl EvcxrSession {
    /// Cheap: the evcxr context (rust-analyzer, the child process) starts in [`warm_up`].
    pub fn start() -> anyhow::Result<EvcxrSession> {
        private_dir::remove_stale();
        procs::adopt_orphans();
        let private = private_dir::PrivateDir::create()
            .map_err(|e| anyhow::anyhow!("cannot create the kernel's private directory in {}: {e}", std::env::temp_dir().display()))?;
        if let Err(e) = janitor::start(private.path(), ranch_magics::group::token_dir().ok()) {
            crate::log!("no janitor: what this kernel leaves when killed is cleaned by the next kernel only: {e}");
        }
        let workdir = workdir::WorkDir::claim(private.path());
        let cell = Arc::new(CurrentCell::default());
        if let Err(e) = kernel_stderr::capture_cargo_progress(cell.clone()) {
            crate::log!("cargo progress will only reach the log: {e}");
        }
        let listener = match Listener::start(cell.clone(), private.path(), "output.sock") {
            Ok(l) => Some(l),
            Err(e) => {
                crate::log!("live output disabled, cannot listen for the evcxr child: {e}");
                None
            }
        };
        Ok(EvcxrSession {
            ctx: None,
            start_error: None,
            cell,
            run: Default::default(),
            listener,
            driver: Default::default(),
            driven: Default::default(),
            pool: None,
            pool_starting: None,
            pool_away: None,
            pool_args: None,
            autopx: false,
            generation: 0,
            workdir,
            private,
        })
    }

    fn context(&mut self) -> Result<&mut Context, CellError> {
        if self.ctx.is_none() && self.start_error.is_none() {
            match self.create_context() {
                Ok(ctx) => self.ctx = Some(ctx),
                Err(e) => self.start_error = Some(e),
            }
        }
        match (&mut self.ctx, &self.start_error) {
            (Some(ctx), _) => Ok(ctx),
            (None, e) => Err(CellError::new(
                "KernelStartError",
                format!(
                    "evcxr could not start: {}. Check that cargo and rustc are on PATH, then restart the kernel.",
                    e.as_deref().unwrap_or("unknown error")
                ),
            )),
        }
    }

    /// The command evcxr starts as the session's child: this binary.
    fn child_command(&self) -> std::process::Command {
        let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        let mut child = std::process::Command::new(exe);
        if let Some(l) = &self.listener {
            child.env(events::SOCKET_ENV, l.path());
        }
        // Shared arrays are named after this kernel (its janitor removes them).
        child.env(ranch::shared::KERNEL_ENV, std::process::id().to_string());
        // The child loads each cell's library; see `host_rust` for why it needs this.
        match host_rust::host_rust() {
            Ok(host) => {
                child.env("LD_LIBRARY_PATH", host_rust::library_path_with(&host.libdir));
            }
            Err(e) => crate::log!("{e}"),
        }
        child
    }

    fn create_context(&mut self) -> Result<Context, String> {
        // Whatever evcxr itself reads from the child (normally nothing: see `child`).
        let cell = self.cell.clone();
        let deps = self.runtime_for_start();
        let forward = move |stream, line: String| cell.stream(stream, &format!("{line}\n"));
        let mut ctx = match Context::start(self.child_command(), self.workdir.evcxr_dir(), &deps, forward.clone()) {
            Ok(ctx) => ctx,
            // The runtime would not build (offline on a first use, a broken cache): the
            // session starts without it, and ranch's magics say why when they need it.
            Err(e) if !deps.is_empty() => {
                crate::log!("evcxr did not start with the ranch runtime ({e}); starting without it");
                self.runtime_not_added();
                Context::start(self.child_command(), self.workdir.evcxr_dir(), &[], forward)?
            }
            Err(e) => return Err(e),
        };
        *self.run.child.lock().unwrap() = Some(ctx.process());
        if let Err(e) = ctx.load_config() {
            crate::log!("evcxr config not loaded: {e}");
        }
        Ok(ctx)
    }

    fn run_evcxr(&mut self, code: &str, cx: &CellContext) -> (Result<Ran, EvalError>, Option<String>) {
        let cell = self.cell.clone();
        let run = self.run.clone();
        let input = cx.input.clone();
        let ctx = match self.context() {
            Ok(ctx) => ctx,
            Err(e) => return (Err(EvalError::Other(e.evalue)), None),
        };
        let read_input = |prompt: &str, password: bool| match &input {
            Some(i) => i.read_line(prompt, password).unwrap_or_default(),
            None => String::new(),
        };
        let _ = cell.take_panic();
        let seen = cell.done_count();
        run.interrupted.store(false, Ordering::SeqCst);
        run.stopped_build.store(false, Ordering::SeqCst);
        run.running.store(true, Ordering::SeqCst);
        let result = ctx.run(code, &read_input);
        run.running.store(false, Ordering::SeqCst);
        let ran = result.as_ref().is_ok_and(|r| r.executed);
        // Everything the cell wrote was sent before `Done`; wait for it so the cell's output
        // precedes its reply (on a busy machine the child's last lines can take seconds; the
        // wait ends as soon as `Done` arrives).
        cell.wait_done(seen, if ran { Duration::from_secs(10) } else { Duration::from_millis(20) });
        (result, cell.take_panic())
    }

    fn execute_cell(&mut self, code: &str, cx: &CellContext) -> CellOutcome {
        match magic_table::lookup(code) {
            Lookup::Found(magic) => return magic.parse().map_err(CellError::from).and_then(|call| self.run_magic(call, cx)),
            Lookup::Unknown(failure) => return Err(failure.into()),
            Lookup::NotMagic => {}
        }
        if let Some(outcome) = self.help(code, cx) {
            return outcome;
        }
        // With %autopx on, Rust cells (not evcxr's `:` commands) go to the pool.
        if self.autopx && !code.trim_start().starts_with(':') {
            return self.drive(cx, |d, s, _| d.autopx_cell(s, code));
        }
        if let Some(refusal) = refused_command(code) {
            return Err(refusal);
        }
        self.generation += 1;
        let prepared = syntax::with_stdout_flush(code);
        let (result, panic) = self.run_evcxr(&prepared.code, cx);
        if result.is_ok() {
            self.add_candle_to_runtime(code).map_err(CellError::from)?;
        }
        let interrupted = self.run.interrupted.load(Ordering::SeqCst);
        let stopped_build = self.run.stopped_build.load(Ordering::SeqCst);
        match result {
            Ok(ran) => {
                if let Some(message) = panic {
                    return Err(panic_error(message));
                }
                if let Some(t) = ran.took {
                    cx.sink.stream(Stream::Stdout, &format!("Took {}ms\n", t.as_millis()));
                }
                let data = ran.data;
                if prepared.shows_value {
                    return Ok(data);
                }
                // No tail expression: the last rich output was a display, not a value.
                if let Some(data) = data {
                    cx.sink.display(data, Default::default());
                }
                Ok(None)
            }
            Err(_) if interrupted && stopped_build => Err(CellError::new(
                "Interrupted",
                "Interrupted while compiling: the build was stopped and nothing ran. \
                 Session variables are unchanged.",
            )),
            Err(EvalError::ProcessDied(_)) if interrupted => Err(CellError::new(
                "Interrupted",
                "Interrupted: the process running the cell was restarted to stop it, so all \
                 session variables were lost (fns, types, `use` and `:dep` are kept). \
                 Re-run the cells that define the variables you need.",
            )),
            Err(EvalError::ProcessDied(why)) => Err(CellError::new(
                "ProcessDied",
                format!(
                    "The process running the cell died ({}). It was restarted: all session \
                     variables were lost (fns, types, `use` and `:dep` are kept).",
                    why.trim()
                ),
            )),
            Err(e) => Err(cell_error(e, code, prepared.inserted, "")),
        }
    }
}

impl Interpreter for EvcxrSession {
    fn warm_up(&mut self) {
        // The GPUs are asked for meanwhile (a driver can take seconds to start), so the first
        // `%%ranch` cell does not wait for them.
        let _ = std::thread::Builder::new().name("gpu-discovery".into()).spawn(|| {
            ranch_magics::gpus::discover();
        });
        // The context starts with the runtime crate in it (see `runtime_for_start`); the
        // persistent work directory keeps it compiled across kernels.
        if let Err(e) = ranch_magics::driver::Session::add_runtime(self) {
            crate::log!("{}", e);
        }
    }

    fn execute(&mut self, code: &str, cx: &CellContext) -> CellOutcome {
        if let Some(why) = syntax::refuse_to_parse(code) {
            return Err(CellError::new("CellRefused", format!("{why}. Nothing ran.")));
        }
        // Everything the cell causes, evcxr's own builds included, goes to this cell.
        self.cell.begin(cx.sink.clone());
        let _end = CellEnd { cell: self.cell.clone(), run: self.run.clone() };
        let outcome = self.execute_cell(code, cx);
        procs::reap_adopted(&self.run.own_children());
        outcome
    }

    fn complete(&mut self, code: &str, cursor: usize) -> Completions {
        if let Some(names) = magic::complete_name(code, cursor) {
            return names;
        }
        if syntax::refuse_to_parse(code).is_some() {
            return Completions { matches: vec![], start: cursor, end: cursor };
        }
        let Ok(ctx) = self.context() else { return Completions::default() };
        match ctx.completions(code, cursor) {
            Ok(c) => c,
            Err(e) => {
                crate::log!("completion failed: {e}");
                Completions { matches: vec![], start: cursor, end: cursor }
            }
        }
    }

    fn inspect(&mut self, code: &str, cursor: usize) -> Option<MimeBundle> {
        if syntax::refuse_to_parse(code).is_some() {
            return None;
        }
        let ctx = self.context().ok()?;
        let (plain, html) = ctx.hover(code, cursor)?;
        if !help::documented(&plain) {
            return None;
        }
        let mut data = MimeBundle::new();
        data.insert("text/plain".into(), Value::String(plain));
        if !html.trim().is_empty() {
            data.insert("text/html".into(), Value::String(html));
        }
        Some(data)
    }

    fn completeness(&self) -> CompletenessCheck {
        Arc::new(syntax::completeness)
    }

    fn interrupter(&self) -> Arc<dyn Interrupter> {
        Arc::new(EvcxrInterrupter(self.run.clone()))
    }

    fn shutdown(&mut self) {
        // Background jobs end first: their ranks are stopped and waited for (and the pool,
        // if a job had it, comes back to be ended below). Then every build goes, a job's too.
        self.driver.jobs.end_all();
        let _ = self.reclaim_pool();
        procs::spare_builds_in(None);
        procs::kill_cargo_builds();
        // The pool's ranks die with its fan-out (their parent-death signal). A start under
        // way ends soon: its build, if any, was just stopped.
        if let Some(started) = self.pool_starting.take().and_then(px::Starting::finish) {
            self.pool = Some(started);
        }
        if let Some(pool) = &self.pool {
            let fanout = pool.process();
            let mut fanout = fanout.lock().unwrap();
            let _ = fanout.kill();
            let _ = fanout.wait();
        }
        if let Some(child) = &*self.run.child.lock().unwrap() {
            let mut child = child.lock().unwrap();
            let _ = child.kill();
            let _ = child.wait();
        }
        self.listener = None;
        // The process exits without running destructors: remove what is ours now.
        let _ = std::fs::remove_dir_all(self.private.path());
        self.workdir.end();
    }
}

impl RunState {
    /// Children whose owner waits for them (evcxr's child process).
    fn own_children(&self) -> Vec<i32> {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.as_ref().map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).id() as i32).into_iter().collect()
    }
}

/// Ends a cell however `execute` leaves (a panic included): later output goes nowhere
/// near it, and an interrupt finds nothing running.
struct CellEnd {
    cell: Arc<CurrentCell>,
    run: Arc<RunState>,
}

impl Drop for CellEnd {
    fn drop(&mut self) {
        self.cell.end();
        let run = &self.run;
        run.running.store(false, Ordering::SeqCst);
        run.ranch_cell.store(false, Ordering::SeqCst);
        *run.ranch_cancel.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *run.ranch_build.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// evcxr commands that would break the session's builds.
fn refused_command(code: &str) -> Option<CellError> {
    let mut words = code.split_whitespace();
    let (Some(":cache"), Some(size)) = (words.next(), words.next()) else { return None };
    if size.parse::<u64>().is_ok_and(|s| s == 0) {
        return None;
    }
    Some(CellError::new(
        "UsageError",
        "ranch keeps evcxr's compile cache off: it copies build artifacts between directories in a way \
         that makes cargo rebuild dependencies on every cell, and mixes them with rank programs' builds. \
         Instead each kernel keeps its build directory (under ~/.cache/ranch/work), so compiled \
         dependencies are reused by the next kernel anyway. Nothing was changed.",
    ))
}

fn panic_error(message: String) -> CellError {
    let message = if message.trim().is_empty() { "the cell panicked".to_string() } else { message };
    CellError {
        ename: "panic".into(),
        traceback: vec![
            format!("\x1b[1;31mpanic\x1b[0m: {message}"),
            "Variables defined by this cell were dropped; earlier ones are kept.".into(),
        ],
        evalue: message,
    }
}

/// What an evcxr context's failure to run `cell` (a plain cell, or a pool cell: `where_`
/// says " on every rank") says to the user, for failures that mean the same in both (a
/// stopped or dead process is said by each). A missing linker or toolchain shows as a build
/// error: the doctor's checks add what to install.
pub(super) fn cell_error(e: EvalError, cell: &str, inserted: Option<syntax::Insertion>, where_: &str) -> CellError {
    match e {
        EvalError::Compilation(errors) => crate::doctor::explain(compile_errors(errors, cell, inserted)),
        EvalError::VariablesLost(vars) => CellError::new(
            "VariablesLost",
            format!("These variables were dropped{where_} because their type was redefined: {}", vars.join(", ")),
        ),
        e => crate::doctor::explain(CellError::new("Error", e.to_string().trim().to_string())),
    }
}

fn compile_errors(errors: Vec<ranch_magics::diagnostic::Diagnostic>, cell: &str, inserted: Option<syntax::Insertion>) -> CellError {
    if errors.is_empty() {
        return CellError::new("CompilationError", "the cell did not compile");
    }
    let diagnostics: Vec<_> = errors.into_iter().map(|d| render::unshift(d, inserted)).collect();
    CellError {
        ename: "CompilationError".into(),
        evalue: diagnostics[0].summary(),
        traceback: diagnostics.iter().map(|d| d.render(cell)).collect(),
    }
}
