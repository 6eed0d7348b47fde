//! Background cells: `%%ranch --bg` and `%in_ddp --bg` return once their ranks start, and
//! the ranks run on as a job while the notebook goes on.
//!
//! A job's ranks are supervised on a thread of their own through a [`JobHost`]: the live
//! status table goes on updating in the cell that started the job (by its display id, with
//! that cell as parent), and everything else the cell would have shown (rank output,
//! displays, values, failures) is kept, bounded, for `%ranch_wait`, which shows it as the
//! cell would have and binds `--out`. So a job's output never lands in another cell.
//! `%ranch_cancel` stops a job's ranks as an interrupt stops a cell's; an interrupt of
//! the cell in front never reaches a job.

use super::{Bundle, Failure, Host, Outcome, Session, Stoppable, usage};
use crate::grid::{Cell, Grid};
use crate::ranks::supervise::{Cancel, Stream};
use crate::transcript::Transcript;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// `%ranch_wait`'s arguments.
#[derive(clap::Parser, Debug, Clone, PartialEq)]
#[command(
    name = "%ranch_wait",
    no_binary_name = true,
    disable_version_flag = true,
    about = "Wait for a background job to end; show its output, values and failures as its cell would have, and bind its --out",
    after_help = "Example:\n  %%ranch 4 --bg --out losses\n  train()\n\n  %ranch_wait job-1 --timeout 60"
)]
pub struct WaitArgs {
    /// The job (default: the last one started).
    pub job: Option<String>,
    /// Give up waiting after this many seconds (the job runs on).
    #[arg(long, value_name = "SECS", value_parser = crate::args::parse_timeout)]
    pub timeout: Option<f64>,
}

/// `%ranch_cancel`'s arguments.
#[derive(clap::Parser, Debug, Clone, PartialEq)]
#[command(
    name = "%ranch_cancel",
    no_binary_name = true,
    disable_version_flag = true,
    about = "Stop a background job's ranks, as an interrupt stops a cell's (`%ranch_wait JOB` then shows what they gave)",
    after_help = "Example:\n  %ranch_cancel job-1"
)]
pub struct CancelArgs {
    /// The job.
    pub job: String,
}

/// `%ranch_output`'s arguments.
#[derive(clap::Parser, Debug, Clone, PartialEq)]
#[command(
    name = "%ranch_output",
    no_binary_name = true,
    disable_version_flag = true,
    about = "Show again what the ranks of the last cell (or of a background job) wrote, grouped another way",
    after_help = "Example:\n  %ranch_output --group-outputs rank\n  %ranch_output job-2 --group-outputs type --see 0"
)]
pub struct OutputArgs {
    /// A background job (default: the last cell that ran ranks in front).
    pub job: Option<String>,
    /// `order`: as it came; `rank` (or `engine`): rank by rank; `type`: every rank's stdout, then every rank's stderr.
    #[arg(long, value_enum, default_value = "rank")]
    pub group_outputs: crate::args::GroupOutputs,
    /// Only these ranks' output.
    #[arg(long, value_name = "R,R", value_delimiter = ',')]
    pub see: Option<Vec<usize>>,
}

pub fn parse_output(args: &str) -> Result<crate::pool::Parsed<OutputArgs>, String> {
    crate::pool::parse_magic("%ranch_output", args, |t| t)
}

pub fn parse_wait(args: &str) -> Result<crate::pool::Parsed<WaitArgs>, String> {
    crate::pool::parse_magic("%ranch_wait", args, |t| t)
}

pub fn parse_cancel(args: &str) -> Result<crate::pool::Parsed<CancelArgs>, String> {
    crate::pool::parse_magic("%ranch_cancel", args, |t| t)
}

/// How much of a job's output is kept for `%ranch_wait` (text and displays together); what
/// comes after is counted and said, not kept.
pub const KEPT_BYTES: usize = 16 << 20;

/// Jobs a kernel keeps at once; finished ones go first to make room.
pub const JOBS_MAX: usize = 32;

/// What the kernel gives a job so it can outlive the cell that started it: the way to that
/// cell's output (for the live table) and to the kernel's processes.
pub trait Outlet: Send + Sync {
    /// Shows or replaces (`update`) the job's status table, under `id`, in the cell that
    /// started the job.
    fn status(&self, data: Bundle, metadata: Bundle, id: &str, update: bool);
    /// A process group to kill if the kernel dies while it runs (`false`: it ended).
    fn watch(&self, pgid: i32, running: bool);
    /// The kernel's child processes now.
    fn children(&self) -> HashSet<i32>;
    /// Ends the kernel's children not in `before` whose process group is one of `groups`
    /// (what the job's ranks left running; never another cell's or job's); returns how many.
    fn end_orphans_in(&self, before: &HashSet<i32>, groups: &[i32]) -> usize;
    /// A line for the kernel's log.
    fn log(&self, line: &str);
}

/// One output of a job, as the cell would have shown it.
enum Kept {
    Stream(Stream, String),
    Display(Bundle, Option<usize>),
    InPlace { data: Bundle, metadata: Bundle, id: String, update: bool },
    Clear,
}

/// A job's outputs, kept up to [`KEPT_BYTES`].
#[derive(Default)]
struct Record {
    kept: Vec<Kept>,
    bytes: usize,
    dropped: usize,
    dropped_bytes: usize,
    /// The status table's display id and its latest state.
    status: Option<(String, Bundle, Bundle)>,
}

/// What each kept output costs besides its text (so that many empty ones are bounded too).
const ITEM_COST: usize = 64;

impl Record {
    fn keep(&mut self, item: Kept, bytes: usize) {
        let bytes = bytes + ITEM_COST;
        match &item {
            // What came before is cleared when the cell is shown again: not kept.
            Kept::Clear => {
                self.kept.clear();
                self.bytes = 0;
            }
            // A display updated in place: only its latest state is shown again.
            Kept::InPlace { id, update: true, .. } => {
                let earlier = self.kept.iter().position(|k| matches!(k, Kept::InPlace { id: i, .. } if i == id));
                if let Some(at) = earlier {
                    let Kept::InPlace { data, metadata, .. } = item else { unreachable!() };
                    if let Kept::InPlace { data: d, metadata: m, .. } = &mut self.kept[at] {
                        let old = size_of(d) + size_of(m) + ITEM_COST;
                        self.bytes = self.bytes.saturating_sub(old) + bytes;
                        (*d, *m) = (data, metadata);
                    }
                    return;
                }
            }
            _ => {}
        }
        if self.bytes + bytes > KEPT_BYTES {
            self.dropped += 1;
            self.dropped_bytes += bytes;
            return;
        }
        self.bytes += bytes;
        self.kept.push(item);
    }
}

/// About how many bytes a bundle holds (its strings), without serialising it.
fn size_of(bundle: &Bundle) -> usize {
    fn of(v: &Value) -> usize {
        match v {
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(of).sum::<usize>() + 8,
            Value::Object(o) => o.iter().map(|(k, v)| k.len() + of(v)).sum::<usize>() + 8,
            _ => 8,
        }
    }
    bundle.iter().map(|(k, v)| k.len() + of(v)).sum()
}

fn is_status(metadata: &Bundle) -> bool {
    metadata.get("ranch").and_then(|r| r.get("status")) == Some(&Value::Bool(true))
}

/// The host a job's ranks run under.
pub struct JobHost {
    outlet: Arc<dyn Outlet>,
    record: Mutex<Record>,
    cancelled: AtomicBool,
    cancel: Mutex<Option<Cancel>>,
    /// Every process group the job's ranks led (their orphans keep it).
    groups: Mutex<Vec<i32>>,
    /// How far the job got: its status table shown, its processes started, or its end.
    progress: (Mutex<Started>, Condvar),
    /// What the job's thread does once the job's end is recorded (see [`JobHost::linger`]).
    after: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// What the job's ranks wrote, once they are done (`%ranch_output JOB`).
    transcript: Mutex<Option<Transcript>>,
}

/// How far a job has got, for the cell that starts it to return once its ranks run.
#[derive(Default, Clone, Copy)]
struct Started {
    table_shown: bool,
    processes: usize,
    ended: bool,
}

impl JobHost {
    fn new(outlet: Arc<dyn Outlet>) -> JobHost {
        JobHost {
            outlet,
            record: Default::default(),
            cancelled: AtomicBool::new(false),
            cancel: Mutex::new(None),
            groups: Mutex::new(Vec::new()),
            progress: Default::default(),
            after: Mutex::new(None),
            transcript: Mutex::new(None),
        }
    }

    /// Keeps what the job's ranks wrote, for `%ranch_output JOB`.
    pub fn keep_transcript(&self, transcript: Transcript) {
        *self.transcript.lock().unwrap() = Some(transcript);
    }

    /// Keeps the job's thread for `f` after the job ended: a process the thread started
    /// (a pool's fan-out, restarted during the job) gets its parent-death signal when that
    /// thread ends, so the thread must live as long as the process.
    pub fn linger(&self, f: Box<dyn FnOnce() + Send>) {
        *self.after.lock().unwrap() = Some(f);
    }

    /// Stops the job's ranks, as an interrupt stops a cell's.
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(cancel) = &*self.cancel.lock().unwrap() {
            cancel.cancel();
        }
    }

    fn advance(&self, step: impl FnOnce(&mut Started)) {
        step(&mut self.progress.0.lock().unwrap());
        self.progress.1.notify_all();
    }

    /// Waits (at most `limit`, or until `stop` says so) until the job's `processes`
    /// processes (its ranks, or the launcher that starts them) run and, with `table`, its
    /// status table is shown; or it ended.
    fn wait_started(&self, processes: usize, table: bool, limit: Duration, stop: &dyn Fn() -> bool) {
        let deadline = Instant::now() + limit;
        let mut started = self.progress.0.lock().unwrap();
        while !started.ended && (started.processes < processes || (table && !started.table_shown)) {
            let now = Instant::now();
            if stop() || now >= deadline {
                return;
            }
            started = self.progress.1.wait_timeout(started, (deadline - now).min(Duration::from_millis(100))).unwrap().0;
        }
    }
}

impl Host for JobHost {
    fn stream(&self, stream: Stream, text: &str) {
        self.record.lock().unwrap().keep(Kept::Stream(stream, text.to_string()), text.len());
    }

    fn display(&self, data: Bundle, rank: Option<usize>) {
        let bytes = size_of(&data);
        self.record.lock().unwrap().keep(Kept::Display(data, rank), bytes);
    }

    fn display_in_place(&self, data: Bundle, metadata: Bundle, id: &str, update: bool) {
        if is_status(&metadata) {
            self.outlet.status(data.clone(), metadata.clone(), id, update);
            self.record.lock().unwrap().status = Some((id.to_string(), data, metadata));
            self.advance(|s| s.table_shown = true);
            return;
        }
        let bytes = size_of(&data) + size_of(&metadata);
        self.record.lock().unwrap().keep(Kept::InPlace { data, metadata, id: id.to_string(), update }, bytes);
    }

    fn clear_output(&self) {
        self.record.lock().unwrap().keep(Kept::Clear, 0);
    }

    fn interrupted(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn stoppable(&self, what: Stoppable) {
        // A job's program was built before it went to the background: only ranks run here.
        let cancel = match what {
            Stoppable::Ranks(cancel) => Some(cancel),
            Stoppable::Nothing | Stoppable::Build(_) => None,
        };
        if let Some(cancel) = &cancel
            && self.interrupted()
        {
            cancel.cancel();
        }
        *self.cancel.lock().unwrap() = cancel;
    }

    fn watch(&self, pgid: i32, running: bool) {
        self.outlet.watch(pgid, running);
        if running {
            self.groups.lock().unwrap().push(pgid);
            self.advance(|s| s.processes += 1);
        }
    }

    fn children(&self) -> HashSet<i32> {
        self.outlet.children()
    }

    fn end_new_orphans(&self, before: &HashSet<i32>) -> usize {
        let groups = self.groups.lock().unwrap().clone();
        self.outlet.end_orphans_in(before, &groups)
    }

    fn log(&self, line: &str) {
        self.outlet.log(line);
    }

    fn gpus(&self) -> &crate::gpus::Discovery {
        crate::gpus::discover()
    }
}

/// What a job's cell gave: what it shows and its values' types, or why it failed.
pub type Given = Result<(Option<Bundle>, Vec<String>), Failure>;

/// A job's end, once its thread is done.
struct Ended {
    given: Given,
    took: Duration,
}

/// Binds a finished job's `--out` in the session, given its ranks' values' types (what
/// `%ranch_wait` does besides showing the outputs); it owns where the values are.
pub type Bind = Box<dyn Fn(&mut dyn Session, &[String]) -> Result<(), Failure> + Send>;

/// One background cell.
struct Job {
    name: String,
    /// The execution count of the cell that started it.
    cell: usize,
    ranks: usize,
    started: Instant,
    host: Arc<JobHost>,
    end: Arc<(Mutex<Option<Ended>>, Condvar)>,
    /// `%ranch_wait` showed what it gave (it goes first when room is made).
    waited: AtomicBool,
    /// Not joined: it may linger after the job (see [`JobHost::linger`]).
    _thread: std::thread::JoinHandle<()>,
    bind: Option<Bind>,
}

impl Job {
    fn ended(&self) -> bool {
        self.end.0.lock().unwrap().is_some()
    }

    /// Waits for the job's end up to `limit`, or until `stop` says so; whether it ended.
    fn wait(&self, limit: Option<Duration>, stop: &dyn Fn() -> bool) -> bool {
        let deadline = limit.map(|l| Instant::now() + l);
        let mut ended = self.end.0.lock().unwrap();
        loop {
            if ended.is_some() {
                return true;
            }
            let now = Instant::now();
            if stop() || deadline.is_some_and(|d| now >= d) {
                return false;
            }
            let slice = deadline.map_or(Duration::from_millis(100), |d| (d - now).min(Duration::from_millis(100)));
            ended = self.end.1.wait_timeout(ended, slice).unwrap().0;
        }
    }

    fn state(&self) -> (&'static str, Duration) {
        match &*self.end.0.lock().unwrap() {
            None if self.host.interrupted() => ("stopping", self.started.elapsed()),
            None => ("running", self.started.elapsed()),
            Some(Ended { given: Ok(_), took }) => ("done", *took),
            Some(Ended { given: Err(Failure::Interrupted { .. }), took }) => ("cancelled", *took),
            Some(Ended { given: Err(_), took }) => ("failed", *took),
        }
    }
}

/// The session's background jobs.
#[derive(Default)]
pub struct Jobs {
    list: Vec<Job>,
    started: u64,
}

/// What a job runs on its thread, given its host.
pub type Work = Box<dyn FnOnce(Arc<JobHost>) -> Given + Send>;

/// The stack of a job's thread: a pool cell compiles on it, and evcxr's analysis of a
/// cell's code recurses as deep as the code nests (the interpreter's thread has as much).
const JOB_STACK: usize = 256 << 20;

impl Jobs {
    /// The name the next job started gets.
    pub fn next_name(&self) -> String {
        format!("job-{}", self.started + 1)
    }

    /// Checks that a job can start now (a usage error when too many run), making room
    /// by forgetting the oldest finished job if need be.
    pub fn make_room(&mut self) -> Result<(), Failure> {
        if self.list.len() < JOBS_MAX {
            return Ok(());
        }
        let waited = self.list.iter().position(|j| j.ended() && j.waited.load(Ordering::Relaxed));
        match waited.or_else(|| self.list.iter().position(Job::ended)) {
            Some(oldest) => {
                drop(self.list.remove(oldest));
                Ok(())
            }
            None => Err(usage(format!(
                "{JOBS_MAX} background jobs are running: wait for one (`%ranch_wait`) or stop one \
                 (`%ranch_cancel JOB`) first. Nothing was launched."
            ))),
        }
    }

    /// Starts `work` as the job [`next_name`](Self::next_name) of `ranks` ranks for the cell
    /// numbered `cell`; returns once its `processes` processes run and (`live_table`) its
    /// status table is up, or it ended, or `stop` says so (an interrupt: the job runs on).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        outlet: Arc<dyn Outlet>,
        cell: usize,
        ranks: usize,
        processes: usize,
        live_table: bool,
        bind: Option<Bind>,
        work: Work,
        stop: &dyn Fn() -> bool,
    ) -> Result<String, Failure> {
        self.make_room()?;
        self.started += 1;
        let name = format!("job-{}", self.started);
        let host = Arc::new(JobHost::new(outlet));
        let end: Arc<(Mutex<Option<Ended>>, Condvar)> = Arc::new((Mutex::new(None), Condvar::new()));
        let (job_host, job_end) = (host.clone(), end.clone());
        let started = Instant::now();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .stack_size(JOB_STACK)
            .spawn(move || {
                // A panic in the job is its failure, not a job that never ends.
                let given = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(job_host.clone()))).unwrap_or_else(|panic| {
                    let why = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                    Err(super::ranch_error(format!("the job failed inside ranch: {}", why.unwrap_or_else(|| "a panic".into()))))
                });
                *job_end.0.lock().unwrap() = Some(Ended { given, took: started.elapsed() });
                job_end.1.notify_all();
                job_host.advance(|s| s.ended = true);
                let after = job_host.after.lock().unwrap().take();
                if let Some(after) = after {
                    after();
                }
            })
            .map_err(|e| super::ranch_error(format!("cannot start a thread for the job: {e}")))?;
        let job = Job { name: name.clone(), cell, ranks, started, host, end, waited: AtomicBool::new(false), _thread: thread, bind };
        job.host.wait_started(processes, live_table, Duration::from_secs(30), stop);
        self.list.push(job);
        Ok(name)
    }

    fn find(&self, name: Option<&str>) -> Result<&Job, Failure> {
        match name {
            Some(name) => self.list.iter().find(|j| j.name == name).ok_or_else(|| {
                let names: Vec<&str> = self.list.iter().map(|j| j.name.as_str()).collect();
                usage(if names.is_empty() {
                    format!("no job `{name}`: no background job was started (`%%ranch N --bg`)")
                } else {
                    format!("no job `{name}`; the jobs are {}", names.join(", "))
                })
            }),
            None => self.list.last().ok_or_else(|| usage("no background job was started (`%%ranch N --bg` starts one)")),
        }
    }

    /// `%ranch_jobs`: each job's name, cell, ranks, state and time.
    pub fn listing(&self) -> Bundle {
        let mut bundle = Bundle::new();
        if self.list.is_empty() {
            bundle.insert("text/plain".into(), Value::String("no background jobs (`%%ranch N --bg` starts one)".into()));
            return bundle;
        }
        let mut grid = Grid::new(&["job", "cell", "ranks", "state", "elapsed"]).class("ranch-jobs").left(&[0, 3]);
        for job in &self.list {
            let (state, took) = job.state();
            grid.row([
                Cell::text(&job.name),
                Cell::text(format!("[{}]", job.cell)),
                Cell::text(job.ranks.to_string()),
                Cell::text(state),
                Cell::text(crate::status::short_duration(took.as_secs_f64())),
            ]);
        }
        bundle.insert("text/plain".into(), Value::String(grid.text()));
        bundle.insert("text/html".into(), Value::String(grid.html()));
        bundle
    }

    /// `%ranch_wait`: waits for the job (the last one started when `name` is `None`), then
    /// shows on `host` what its cell would have shown and binds its `--out`.
    pub fn wait(&self, session: &mut dyn Session, host: &dyn Host, args: &WaitArgs) -> Outcome {
        let (name, timeout) = (args.job.as_deref(), args.timeout.map(Duration::from_secs_f64));
        let job = self.find(name)?;
        if !job.wait(timeout, &|| host.interrupted()) {
            let how = if host.interrupted() { "Interrupted while waiting" } else { "Waited" };
            return Err(Failure::StillRunning(format!(
                "{how} {}; {} is still running (its ranks go on). `%ranch_wait {}` waits again, `%ranch_cancel {}` stops it.",
                timeout.filter(|_| !host.interrupted()).map(|t| format!("{} s", t.as_secs_f64())).unwrap_or_else(|| "for it".into()),
                job.name,
                job.name,
                job.name
            )));
        }
        self.replay(job, host);
        job.waited.store(true, Ordering::Relaxed);
        let ended = job.end.0.lock().unwrap();
        let Some(Ended { given, .. }) = &*ended else { unreachable!("waited for its end") };
        let (shown, types) = given.clone()?;
        if let Some(bind) = &job.bind {
            bind(session, &types)?;
        }
        Ok(shown)
    }

    /// Shows a finished job's outputs on `host`, in order; its status table, in its final
    /// state, replaces the one in the job's cell (for a frontend that stopped listening to it).
    fn replay(&self, job: &Job, host: &dyn Host) {
        let record = job.host.record.lock().unwrap();
        if let Some((id, data, metadata)) = &record.status {
            host.display_in_place(data.clone(), metadata.clone(), id, true);
        }
        for item in &record.kept {
            match item {
                Kept::Stream(stream, text) => host.stream(*stream, text),
                Kept::Display(data, rank) => host.display(data.clone(), *rank),
                Kept::InPlace { data, metadata, id, update } => host.display_in_place(data.clone(), metadata.clone(), id, *update),
                Kept::Clear => host.clear_output(),
            }
        }
        if record.dropped > 0 {
            host.stream(
                Stream::Stderr,
                &format!(
                    "ranch: {} later outputs of {} ({}) were not kept: a job keeps {} of output\n",
                    record.dropped,
                    job.name,
                    crate::ranks::death::bytes(record.dropped_bytes as u64),
                    crate::ranks::death::bytes(KEPT_BYTES as u64)
                ),
            );
        }
    }

    /// `%ranch_cancel`: stops the job's ranks and waits (a bounded time) until they ended.
    pub fn cancel(&self, name: &str) -> Outcome {
        let job = self.find(Some(name))?;
        if job.ended() {
            return Ok(Some(text(&format!("{} had already ended", job.name))));
        }
        job.host.cancel();
        if !job.wait(Some(Duration::from_secs(30)), &|| false) {
            return Err(super::ranch_error(format!("{}'s ranks did not stop within 30 s", job.name)));
        }
        Ok(Some(text(&format!("{} was cancelled: its ranks were stopped (`%ranch_wait {}` shows what they gave)", job.name, job.name))))
    }

    /// Ends every job (kernel shutdown or restart): their ranks are stopped and waited for.
    pub fn end_all(&mut self) {
        for job in &self.list {
            job.host.cancel();
        }
        for job in &self.list {
            job.wait(Some(Duration::from_secs(10)), &|| false);
        }
    }
}

impl super::Driver {
    /// Keeps what the ranks of a cell in front wrote, for `%ranch_output`.
    pub(super) fn keep_output(&mut self, transcript: Option<Transcript>) {
        if transcript.is_some() {
            self.last_output = transcript;
        }
    }

    /// `%ranch_output`: what the last cell's (or a job's) ranks wrote, grouped as asked.
    pub fn ranch_output(&self, host: &dyn Host, args: &OutputArgs) -> Outcome {
        let transcript = match &args.job {
            Some(name) => {
                let job = self.jobs.find(Some(name))?;
                if !job.ended() {
                    return Err(Failure::StillRunning(format!(
                        "{name} is still running: `%ranch_wait {name}` waits for it, then its output can be shown again"
                    )));
                }
                job.host.transcript.lock().unwrap().clone()
            }
            None => self.last_output.clone(),
        };
        let Some(transcript) = transcript else {
            return Err(usage("no cell has run ranks yet (`%ranch_output` shows again what a cell's ranks wrote)"));
        };
        if transcript.is_empty() {
            host.stream(Stream::Stdout, "(the ranks wrote nothing)\n");
        }
        transcript.show(args.group_outputs, args.see.as_deref(), |stream, text| host.stream(stream, text));
        Ok(None)
    }

    /// What a background cell needs of its host, checked before anything runs (a cell that
    /// cannot go to the background changes nothing).
    pub(super) fn background(&mut self, host: &dyn Host) -> Result<(Arc<dyn Outlet>, usize), Failure> {
        self.jobs.make_room()?;
        host.background().ok_or_else(|| usage("--bg: this kernel cannot run cells in the background"))
    }
}

/// What the cell that started job `name` of `n` ranks says.
pub(super) fn started_line(name: &str, n: usize) -> String {
    format!(
        "{name}: {n} ranks run in the background. `%ranch_wait {name}` shows their output and values \
         (and binds --out), `%ranch_cancel {name}` stops them, `%ranch_jobs` lists the jobs.\n"
    )
}

fn text(s: &str) -> Bundle {
    let mut b = Bundle::new();
    b.insert("text/plain".into(), Value::String(s.into()));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clears_and_updates_in_place_keep_a_jobs_record_small() {
        let mut r = Record::default();
        let shown = |i: usize| Kept::InPlace { data: text(&i.to_string()), metadata: Bundle::new(), id: "bar".into(), update: i > 0 };
        for i in 0..100_000 {
            r.keep(shown(i), 8);
        }
        assert_eq!(r.kept.len(), 1, "one display, in its latest state");
        let Kept::InPlace { data, .. } = &r.kept[0] else { panic!() };
        assert_eq!(data["text/plain"], "99999");
        for i in 0..100_000 {
            r.keep(Kept::Clear, 0);
            r.keep(Kept::Stream(Stream::Stdout, format!("{i}\n")), 6);
        }
        assert!(r.kept.len() <= 2 && r.bytes < 1000 && r.dropped == 0, "{} kept, {} bytes", r.kept.len(), r.bytes);
    }
}
