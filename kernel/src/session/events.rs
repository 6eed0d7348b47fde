//! What the evcxr child process tells the kernel about a running cell, over a Unix socket
//! the kernel listens on (one JSON object per line).
//!
//! evcxr itself reads the child's stdout line by line and keeps only the last rich output
//! of each MIME type; this side channel carries partial lines as they are written, every
//! display block, and panic messages.

use crate::interpreter::{MimeBundle, OutputSink, Stream};
use ranch_magics::display_op::{self, DisplayOp};
pub use ranch_magics::ranks::event::{Event, MAX_LINE, SOCKET_ENV, for_each_line};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Who is on the other end of one connection, as far as its events said.
#[derive(Default)]
pub struct Connection {
    /// Set by an [`Event::Rank`].
    pub rank: Option<usize>,
}

/// What applies a connection's events (the plain session's cell, or a pool's).
pub trait EventHandler: Send + Sync + 'static {
    fn apply(&self, conn: &mut Connection, event: Event);
}

/// The sink of the cell that is running now, if any, shared by every output reader.
#[derive(Default)]
pub struct CurrentCell {
    sink: Mutex<Option<Arc<dyn OutputSink>>>,
    /// The display id of the running cell's own progress bar, once shown.
    progress_id: Mutex<Option<String>>,
    panic: Mutex<Option<String>>,
    done: (Mutex<u64>, Condvar),
}

impl CurrentCell {
    /// Routes output to `sink` until [`end`](Self::end).
    pub fn begin(&self, sink: Arc<dyn OutputSink>) {
        *self.progress_id.lock().unwrap() = None;
        *self.sink.lock().unwrap() = Some(sink);
    }

    pub fn end(&self) {
        *self.sink.lock().unwrap() = None;
    }

    /// How many runs the child has finished so far (see [`wait_done`](Self::wait_done)).
    pub fn done_count(&self) -> u64 {
        *self.done.0.lock().unwrap()
    }

    /// The message of the panic reported since the last call, if any.
    pub fn take_panic(&self) -> Option<String> {
        self.panic.lock().unwrap().take()
    }

    /// Waits (up to `limit`) until the child has reported `Done` more often than `seen`.
    pub fn wait_done(&self, seen: u64, limit: Duration) -> bool {
        self.wait_done_n(seen, 1, limit)
    }

    /// Waits (up to `limit`) until `Done` came `n` more times than `seen` (one per rank).
    pub fn wait_done_n(&self, seen: u64, n: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut count = self.done.0.lock().unwrap();
        while *count < seen + n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            count = self.done.1.wait_timeout(count, left).unwrap().0;
        }
        true
    }

    /// Sends to the running cell, if there is one; returns whether there was.
    pub fn try_stream(&self, stream: Stream, text: &str) -> bool {
        match &*self.sink.lock().unwrap() {
            Some(sink) => {
                sink.stream(stream, text);
                true
            }
            None => false,
        }
    }

    /// Output outside any cell (a background thread, kernel start-up) goes to the log.
    pub fn stream(&self, stream: Stream, text: &str) {
        match &*self.sink.lock().unwrap() {
            Some(sink) => sink.stream(stream, text),
            None => crate::log!("output outside a cell ({}): {}", stream.name(), text.trim_end()),
        }
    }

    /// Applies an event as the plain session's child sends it.
    pub fn apply_plain(&self, event: Event) {
        match event {
            Event::Stdout(t) => self.stream(Stream::Stdout, &t),
            Event::Stderr(t) => self.stream(Stream::Stderr, &t),
            Event::Display(data) => self.display(data, Default::default()),
            Event::Panic(msg) => *self.panic.lock().unwrap() = Some(msg),
            Event::Done => self.count_done(),
            Event::Rank(_)
            | Event::PoolPids(_)
            | Event::PoolHosts(_)
            | Event::RankExited { .. }
            | Event::RankRestarted { .. }
            | Event::Running
            | Event::Dispatched { .. } => {}
        }
    }

    pub fn count_done(&self) {
        *self.done.0.lock().unwrap() += 1;
        self.done.1.notify_all();
    }

    /// Shows `data` in the running cell under display id `id`, or replaces what it shows
    /// there (`update`).
    pub fn display_in_place(&self, data: MimeBundle, meta: MimeBundle, id: &str, update: bool) {
        if let Some(sink) = &*self.sink.lock().unwrap() {
            sink.display_in_place(data, meta, id, update);
        }
    }

    /// Shows rich output in the running cell, with metadata (a rank's, say), or does what a
    /// `ranch::display` block asks (the cell's own `ranch::progress`: one bar, redrawn in place).
    pub fn display(&self, data: MimeBundle, meta: MimeBundle) {
        let Some(sink) = &*self.sink.lock().unwrap() else { return };
        let Some(body) = data.get(display_op::CONTROL_MIME) else {
            sink.display(data, meta);
            return;
        };
        match body.as_str().and_then(display_op::parse) {
            Some(DisplayOp::Show { data, id }) => sink.display_in_place(data, meta, &display_op::jupyter_id(&id), false),
            Some(DisplayOp::Update { data, id }) => sink.display_in_place(data, meta, &display_op::jupyter_id(&id), true),
            Some(DisplayOp::Clear) => sink.clear_output(),
            Some(DisplayOp::Progress { done, total }) => {
                let mut id = self.progress_id.lock().unwrap();
                let update = id.is_some();
                let id = id.get_or_insert_with(|| display_op::own_id("progress"));
                let mut meta = meta;
                meta.insert("ranch".into(), serde_json::json!({ "progress": true }));
                sink.display_in_place(ranch_magics::status::progress_bundle(done, total), meta, id, update);
            }
            None => {}
        }
    }
}

impl EventHandler for CurrentCell {
    fn apply(&self, _conn: &mut Connection, event: Event) {
        self.apply_plain(event)
    }
}

/// Listens for evcxr child processes (a new one after every restart, or a pool's ranks)
/// and applies their events.
pub struct Listener {
    path: PathBuf,
}

impl Listener {
    /// Listens in `private_dir` (the kernel's, mode 0700): no other user can connect and
    /// write into cells.
    pub fn start(cell: Arc<dyn EventHandler>, private_dir: &Path, name: &str) -> std::io::Result<Listener> {
        let path = private_dir.join(name);
        let listener = UnixListener::bind(&path)?;
        std::thread::Builder::new().name("child-output".into()).spawn(move || {
            for conn in listener.incoming().flatten() {
                let cell = cell.clone();
                let _ = std::thread::Builder::new().name("child-output-conn".into()).spawn(move || read_events(conn, &cell));
            }
        })?;
        Ok(Listener { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_events(conn: UnixStream, cell: &Arc<dyn EventHandler>) {
    let mut from = Connection::default();
    let each = |line: Vec<u8>| {
        match serde_json::from_slice::<Event>(&line) {
            Ok(event) => cell.apply(&mut from, event),
            Err(e) => crate::log!("bad event from the evcxr child: {e}"),
        }
        true
    };
    for_each_line(conn, each, || crate::log!("an event of more than {} MiB from the evcxr child was dropped", MAX_LINE >> 20));
}
