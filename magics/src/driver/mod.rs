//! One driver for `%%ranch` (and `%in_ddp`) and the pool's `%%px`: plan the launch, ship
//! the session's variables and items, build or dispatch the cell, supervise the ranks, merge
//! what they report and bind results back into the session.
//!
//! The driver knows neither Jupyter nor evcxr. It reaches the notebook's session through
//! [`Session`] (list variables, export them, snapshot items, bind results, the pool), and
//! the cell's output and interrupts through [`Host`]; the kernel implements both over evcxr
//! and its Jupyter connection, and the tests here over fakes.
//!
//! - [`ranch_cell`]: `%%ranch N` and `%in_ddp`: a rank program built once, N fresh processes;
//! - [`px`]: `%%px`, `%px`, `%px_push`, `%px_pull` on a pool whose ranks keep their state.

pub mod jobs;
pub mod px;
pub mod ranch_cell;
pub mod share;
#[cfg(test)]
mod tests;

use crate::build::{BuildHandle, Toolchain};
use crate::display_op::{self, DisplayOp};
use crate::program::{SessionSnapshot, Shipped};
use crate::ranks::supervise::{self, Cancel, RankSink};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// A MIME bundle: what a cell shows.
pub type Bundle = Map<String, Value>;

/// Why a magic's cell failed: the magics' one error type. The kernel turns it into
/// Jupyter's `ename`, `evalue` and traceback in one place ([`Failure::ename`], its `Display`,
/// [`Failure::traceback`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    /// The magic's line is wrong; nothing was done.
    #[error("{0}")]
    Usage(String),
    /// ranch could not do what the magic asks (its own fault or the machine's).
    #[error("{0}")]
    Ranch(String),
    /// An interrupt stopped the magic before anything ran, or stopped its ranks.
    #[error("{evalue}")]
    Interrupted { evalue: String, traceback: Vec<String> },
    /// Ranks failed (`traceback`: what each did, in short).
    #[error("{evalue}")]
    RankFailed { evalue: String, traceback: Vec<String> },
    /// The rank program does not compile (`traceback`: each diagnostic, drawn on the cell).
    #[error("{evalue}")]
    Compilation { evalue: String, traceback: Vec<String> },
    /// A session variable the ranks need cannot be serialised.
    #[error("{0}")]
    Unshippable(String),
    /// Values could not come back from the ranks into the session.
    #[error("{0}")]
    Pull(String),
    /// A background job is still running where the user waited for its end.
    #[error("{0}")]
    StillRunning(String),
    /// The session failed (evcxr, its build, the machine), already in Jupyter's terms.
    #[error("{evalue}")]
    Session { ename: String, evalue: String, traceback: Vec<String> },
}

impl Failure {
    /// Jupyter's `ename`: the kind of failure, as notebooks and tests read it.
    pub fn ename(&self) -> &str {
        match self {
            Failure::Usage(_) => "UsageError",
            Failure::Ranch(_) => "RanchError",
            Failure::Interrupted { .. } => "Interrupted",
            Failure::RankFailed { .. } => "RankFailed",
            Failure::Compilation { .. } => "CompilationError",
            Failure::Unshippable(_) => "UnshippableVariable",
            Failure::Pull(_) => "PullError",
            Failure::StillRunning(_) => "JobRunning",
            Failure::Session { ename, .. } => ename,
        }
    }

    /// The traceback lines a notebook shows (the value alone when there is no more to say).
    pub fn traceback(&self) -> Vec<String> {
        match self {
            Failure::Interrupted { traceback, .. }
            | Failure::RankFailed { traceback, .. }
            | Failure::Compilation { traceback, .. }
            | Failure::Session { traceback, .. }
                if !traceback.is_empty() =>
            {
                traceback.clone()
            }
            _ => vec![self.to_string()],
        }
    }

    /// An interrupt stopped it before anything ran: `evalue` says where.
    pub fn interrupted(evalue: impl Into<String>) -> Failure {
        Failure::Interrupted { evalue: evalue.into(), traceback: Vec::new() }
    }
}

/// What a magic's cell gives: the value it shows, if any.
pub type Outcome = Result<Option<Bundle>, Failure>;

pub(crate) fn usage(msg: impl Into<String>) -> Failure {
    Failure::Usage(msg.into())
}

/// The magic's own failures (not the cell's).
pub(crate) fn ranch_error(msg: impl Into<String>) -> Failure {
    Failure::Ranch(msg.into())
}

/// Advice for a value whose type is not Serialize + Deserialize.
pub const SERDE_HINT: &str =
    "Derive serde's Serialize and Deserialize for the type (`:dep serde = { version = \"1\", features = [\"derive\"] }`)";

/// What the driver needs of the notebook's session.
pub trait Session {
    /// The session's variables and their types, as the session writes them.
    fn variables(&mut self) -> Result<Vec<(String, String)>, Failure>;
    /// Writes each of `vars` to `<dir>/<name>.bin` (the runtime's codec). Returns those that
    /// cannot be serialised, as `` `name: T` (why) ``.
    fn export(&mut self, vars: &[Shipped], dir: &Path) -> Result<Vec<String>, Failure>;
    /// The session's items, dependencies and build profile, as rank programs need them.
    fn snapshot(&mut self) -> Result<SessionSnapshot, Failure>;
    /// Runs `code` in the session (ranch's own code: a binding it makes).
    fn execute(&mut self, code: &str) -> Result<(), Failure>;
    /// `let name: Vec<ty>` in the session, from the values ranks `ranks` wrote to `dir`.
    fn bind(&mut self, name: &str, ty: &str, dir: &Path, ranks: &[usize]) -> Result<(), Failure>;
    /// Makes the `ranch` runtime crate a dependency of the session (cells may call it).
    fn add_runtime(&mut self) -> Result<(), Failure>;
    /// How to build a rank program the way the session builds its cells.
    fn toolchain(&mut self) -> Result<BuildTools, Failure>;
    /// A directory only this kernel's user can read, for launches and transfers.
    fn private_dir(&self) -> PathBuf;
    /// Where rank programs' crates are written and built.
    fn rank_crate_dir(&self) -> PathBuf;
    /// The session's pool, once it is up: a usage error when none runs.
    fn pool(&mut self) -> Result<Box<dyn px::PoolRanks + '_>, Failure>;
    /// Hands the pool to the background job `job`, which runs `code` on its ranks `ranks` as
    /// `how` says (the session's items are in already); the pool is the job's until it ends.
    fn pool_job(&mut self, job: &str, code: String, ranks: Vec<usize>, how: px::PxRun) -> Result<jobs::Work, Failure> {
        let _ = (job, code, ranks, how);
        Err(usage("--bg: this session cannot run pool cells in the background"))
    }
}

/// A toolchain and the library path its programs run with.
#[derive(Debug, Clone)]
pub struct BuildTools {
    pub toolchain: Toolchain,
    /// `LD_LIBRARY_PATH` for rank programs (the toolchain's libstd: they link it dynamically).
    pub library_path: String,
}

/// What an interrupt should stop while the driver waits.
pub enum Stoppable {
    Nothing,
    Build(BuildHandle),
    Ranks(Cancel),
}

/// What the driver needs of whoever runs the cell: its output, its interrupts, and the
/// processes it may leave.
pub trait Host: Sync {
    fn stream(&self, stream: supervise::Stream, text: &str);
    /// Shows `data` as a display; `rank` goes in its metadata (`{"ranch": {"rank": r}}`).
    fn display(&self, data: Bundle, rank: Option<usize>);
    /// Whether the user interrupted the cell.
    fn interrupted(&self) -> bool;
    /// What an interrupt stops from now on.
    fn stoppable(&self, what: Stoppable);
    /// A process group to kill if the kernel dies while it runs (`false`: it ended).
    fn watch(&self, pgid: i32, running: bool);
    /// The kernel's child processes now.
    fn children(&self) -> HashSet<i32>;
    /// Ends the kernel's children that were not in `before` (what ranks left running);
    /// returns how many.
    fn end_new_orphans(&self, before: &HashSet<i32>) -> usize;
    /// A line for the kernel's log.
    fn log(&self, line: &str);
    /// The machine's GPUs (`crate::gpus::discover`, asked once per process).
    fn gpus(&self) -> &crate::gpus::Discovery;
    /// Shows `data` with `metadata` under the Jupyter display id `id` (`update`: replaces
    /// what was shown under it).
    fn display_in_place(&self, data: Bundle, metadata: Bundle, id: &str, update: bool) {
        let _ = (metadata, id);
        if !update {
            self.display(data, None);
        }
    }
    /// Clears the cell's output when the next output arrives.
    fn clear_output(&self) {}
    /// What a background job of this cell needs to outlive it, and the cell's execution
    /// count (`None`: this host runs nothing in the background).
    fn background(&self) -> Option<(std::sync::Arc<dyn jobs::Outlet>, usize)> {
        None
    }
}

impl<H: Host + ?Sized> RankSink for HostSink<'_, H> {
    fn output(&self, stream: supervise::Stream, text: &str) {
        self.host.stream(stream, text);
    }
    fn display(&self, rank: usize, data: Map<String, Value>) {
        self.host.display(data, Some(rank));
    }
    fn status(&self, data: Map<String, Value>, first: bool) {
        let mut meta = Bundle::new();
        meta.insert("ranch".into(), serde_json::json!({ "status": true }));
        self.host.display_in_place(data, meta, &self.status_id, !first);
    }
    fn control(&self, rank: usize, op: DisplayOp) {
        show_display_op(self.host, op, Some(rank));
    }
}

/// A rank's or a cell's `ranch::display` request, carried out (progress has no place here).
pub fn show_display_op<H: Host + ?Sized>(host: &H, op: DisplayOp, rank: Option<usize>) {
    let mut meta = Bundle::new();
    if let Some(rank) = rank {
        meta.insert("ranch".into(), serde_json::json!({ "rank": rank }));
    }
    match op {
        DisplayOp::Show { data, id } => host.display_in_place(data, meta, &display_op::jupyter_id(&id), false),
        DisplayOp::Update { data, id } => host.display_in_place(data, meta, &display_op::jupyter_id(&id), true),
        DisplayOp::Clear => host.clear_output(),
        DisplayOp::Progress { .. } => {}
    }
}

/// A host as the supervisor's sink; `status_id` is the launch's status table's display id.
struct HostSink<'a, H: ?Sized> {
    host: &'a H,
    status_id: String,
}

impl<'a, H: ?Sized> HostSink<'a, H> {
    fn new(host: &'a H) -> Self {
        HostSink { host, status_id: display_op::own_id("status") }
    }
}

/// Per-session state of the driver.
#[derive(Default)]
pub struct Driver {
    launches: u64,
    /// Background cells (`--bg`).
    pub jobs: jobs::Jobs,
    /// What the ranks of the last cell in front wrote (`%ranch_output`).
    last_output: Option<crate::transcript::Transcript>,
    /// The "more ranks than cores" note was given (once per session).
    warned_cores: bool,
}

impl Driver {
    /// What every launch checks before anything is built: the GPU plan `plan` makes from the
    /// machine's GPUs and the kernel's `CUDA_VISIBLE_DEVICES` (a GPU that is not there is a
    /// usage error), its warning, and the once-per-session note when `n` ranks outnumber the
    /// cores.
    pub fn plan_launch<P>(
        &mut self,
        n: usize,
        host: &dyn Host,
        plan: impl FnOnce(&crate::gpus::Discovery, Option<&str>) -> Result<(Option<String>, P), String>,
    ) -> Result<P, Failure> {
        let found = host.gpus();
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let (warning, planned) = plan(found, visible.as_deref()).map_err(|e| {
            usage(match &found.note {
                Some(note) => format!("{e} ({note})"),
                None => e,
            })
        })?;
        if let Some(warning) = warning {
            host.stream(supervise::Stream::Stderr, &format!("ranch: {warning}\n"));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(warning) = crate::threads::oversubscribed(cores, n).filter(|_| !self.warned_cores) {
            self.warned_cores = true;
            host.stream(supervise::Stream::Stderr, &format!("{warning}\n"));
        }
        Ok(planned)
    }
}

/// `%ranch_gpus`: the machine's GPUs, and what `--gpus` numbers mean in this kernel.
pub fn ranch_gpus() -> Outcome {
    let found = crate::gpus::discover();
    Ok(Some(crate::gpus::listing(found, std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref())))
}

/// A directory removed when the cell is done with it.
pub struct RunDir(pub PathBuf);

impl RunDir {
    /// A fresh directory only this user can read, under `parent`.
    pub fn make(parent: &Path, name: &str) -> Result<RunDir, Failure> {
        let dir = parent.join(name);
        make_private(&dir)?;
        Ok(RunDir(dir))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes `dir` (and missing parents) for the owner only.
fn make_private(dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ranch_error(format!("cannot create {}: {e}", dir.display())))
}
