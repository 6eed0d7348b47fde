//! What the evcxr child process tells the kernel about a running cell, over a Unix socket
//! the kernel listens on (one JSON object per line).
//!
//! evcxr itself reads the child's stdout line by line and keeps only the last rich output
//! of each MIME type; this side channel carries partial lines as they are written, every
//! display block, and panic messages.

use crate::interpreter::{MimeBundle, OutputSink, Stream};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Environment variable naming the socket for the child.
pub const SOCKET_ENV: &str = "RANCH_OUTPUT_SOCKET";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Stdout(String),
    Stderr(String),
    Display(MimeBundle),
    /// A panic caught by evcxr's wrapper, with the panic message.
    Panic(String),
    /// The cell's code returned; everything it wrote was sent before this.
    Done,
}

/// The sink of the cell that is running now, if any, shared by every output reader.
#[derive(Default)]
pub struct CurrentCell {
    sink: Mutex<Option<Arc<dyn OutputSink>>>,
    panic: Mutex<Option<String>>,
    done: (Mutex<u64>, Condvar),
}

impl CurrentCell {
    /// Routes output to `sink` until [`end`](Self::end).
    pub fn begin(&self, sink: Arc<dyn OutputSink>) {
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
        let deadline = Instant::now() + limit;
        let mut count = self.done.0.lock().unwrap();
        while *count <= seen {
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

    fn apply(&self, event: Event) {
        match event {
            Event::Stdout(t) => self.stream(Stream::Stdout, &t),
            Event::Stderr(t) => self.stream(Stream::Stderr, &t),
            Event::Display(data) => {
                if let Some(sink) = &*self.sink.lock().unwrap() {
                    sink.display(data, Default::default());
                }
            }
            Event::Panic(msg) => *self.panic.lock().unwrap() = Some(msg),
            Event::Done => {
                *self.done.0.lock().unwrap() += 1;
                self.done.1.notify_all();
            }
        }
    }
}

/// Listens for evcxr child processes (a new one after every restart) and applies their
/// events to the current cell.
pub struct Listener {
    path: PathBuf,
}

impl Listener {
    /// Listens in `private_dir` (the kernel's, mode 0700): no other user can connect and
    /// write into cells.
    pub fn start(cell: Arc<CurrentCell>, private_dir: &Path) -> std::io::Result<Listener> {
        let path = private_dir.join("output.sock");
        let listener = UnixListener::bind(&path)?;
        std::thread::Builder::new().name("child-output".into()).spawn(move || {
            for conn in listener.incoming().flatten() {
                let cell = cell.clone();
                let _ = std::thread::Builder::new()
                    .name("child-output-conn".into())
                    .spawn(move || read_events(conn, &cell));
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

fn read_events(conn: UnixStream, cell: &CurrentCell) {
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Event>(&line) {
            Ok(event) => cell.apply(event),
            Err(e) => crate::log!("bad event from the evcxr child: {e}"),
        }
    }
}
