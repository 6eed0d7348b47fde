//! evcxr's child process: this same binary with `EVCXR_IS_RUNTIME` set.
//!
//! The child's stdout and stderr are re-pointed at pipes read by a forwarder thread, which
//! sends the user's output to the kernel as [`Event`]s as soon as it is written (partial
//! lines included) and passes evcxr's own protocol lines through to evcxr unchanged. Rich
//! output blocks become one display each; only the last group of blocks right before the
//! cell completes is handed to evcxr, because that is the cell's value (its tail
//! expression), which the kernel shows as `execute_result`.
//!
//! The child runs evcxr's protocol itself ([`run_loop`]: one `LOAD_AND_RUN <library> <fn>`
//! line per cell) instead of evcxr's runtime loop, because that loop announces the end of a
//! cell with a line the cell itself could print (`EVCXR_EXECUTION_COMPLETE`), on the same
//! stdout: a cell printing it ended early and every later cell showed its predecessor's
//! result. Here the end is a line carrying a secret of this process ([`Marker`]), which the
//! forwarder turns into evcxr's completion line; a user's `EVCXR_EXECUTION_COMPLETE` is text.

use super::events::{Event, SOCKET_ENV};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use ranch_magics::display_op::CONTROL_MIME;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use ranch_magics::ranks::event::RANK_ENV;

use ranch::__rt::evcxr_lines::{
    BEGIN_CONTENT as BEGIN, END_CONTENT as END, ERROR_OCCURRED, EXECUTION_COMPLETE as COMPLETE, INPUT_REQUEST, PANIC_NOTIFICATION as PANIC,
    PREFIX, VARIABLE_CHANGED_TYPE,
};
const SENTINEL_PREFIX: &[u8] = PREFIX.as_bytes();
const PANIC_PREFIX: &[u8] = b"thread '";

/// The line that ends a cell: a prefix evcxr's output never starts with, and a secret
/// chosen when the child starts.
#[derive(Clone)]
struct Marker(String);

impl Marker {
    fn new() -> Marker {
        let mut bytes = [0u8; 16];
        if let Err(e) = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
            eprintln!("[ranch-kernel child] no randomness for the cell marker: {e}");
            std::process::exit(98);
        }
        Marker(format!("RANCH_CELL_DONE_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
    }
}

/// evcxr's child: sets up the output plumbing and serves evcxr's protocol; never returns.
/// Must run before any other thread exists.
pub fn run() -> ! {
    let marker = Marker::new();
    // Without the forwarder, evcxr reads stdout itself and needs its own completion line.
    let end_line = if prepare(&marker) { marker.0.clone() } else { COMPLETE.to_string() };
    run_loop(&end_line)
}

/// evcxr's child protocol: each `LOAD_AND_RUN <library> <fn>` line loads the cell's library
/// and calls `fn` with the variable store (which lives here, between cells), then reports
/// the end of the cell. Libraries are never unloaded: values and thread-locals from them
/// live on. A line that cannot be served ends the process (evcxr restarts it and reports
/// it), as evcxr's own loop does.
fn run_loop(end_line: &str) -> ! {
    use std::io::BufRead;
    type CellFn = extern "C" fn(*mut std::ffi::c_void) -> *mut std::ffi::c_void;
    let mut store: *mut std::ffi::c_void = std::ptr::null_mut();
    let mut libraries: Vec<libloading::Library> = Vec::new();
    // A pool's rank calls the runtime before each cell (`--ddp`: form its group) and after it
    // (end its group); see ranch's comm::pool. Only cells that link the runtime have them.
    let pool_rank = std::env::var_os(RANK_ENV).is_some();
    let call = |lib: &libloading::Library, symbol: &str| {
        // SAFETY: the runtime exports these as `extern "C" fn()`.
        if let Ok(f) = unsafe { lib.get::<extern "C" fn()>(symbol.as_bytes()) } {
            f();
        }
    };
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let Some((library, function)) = line.strip_prefix("LOAD_AND_RUN ").and_then(|r| r.split_once(' ')) else {
            eprintln!("[ranch-kernel child] unexpected instruction {line:?}");
            std::process::exit(99);
        };
        // SAFETY: the library is the cell evcxr just built for this process, and `function`
        // has the signature evcxr gives every cell.
        let ran = unsafe {
            libloading::Library::new(library).and_then(|lib| {
                let cell = *lib.get::<CellFn>(function.as_bytes())?;
                if pool_rank {
                    call(&lib, ranch::__rt::POOL_CELL_BEGIN);
                }
                store = cell(store);
                if pool_rank {
                    call(&lib, ranch::__rt::POOL_CELL_END);
                }
                libraries.push(lib);
                Ok(())
            })
        };
        if let Err(e) = ran {
            eprintln!("[ranch-kernel child] cannot run {function} from {library}: {e}");
            std::process::exit(99);
        }
        // After everything the cell wrote (the kernel flushes the cell's stdout at its end).
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{end_line}");
        let _ = out.flush();
    }
    std::process::exit(0)
}

/// Returns whether the output forwarder runs.
fn prepare(marker: &Marker) -> bool {
    // A child must not outlive its kernel, even in the middle of a long cell.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        std::process::exit(0);
    }
    // Interrupts are the kernel's to handle (it stops the child itself, and reports what
    // was lost); a SIGINT sent to the kernel's whole process group must not kill us first.
    // SAFETY: setting a signal to "ignore" has no handler to be unsafe in.
    unsafe {
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGINT, nix::sys::signal::SigHandler::SigIgn);
    }
    let Some(path) = std::env::var_os(SOCKET_ENV) else { return false };
    let Ok(events) = UnixStream::connect(&path) else { return false };
    match redirect(events, marker.clone()) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("[ranch-kernel child] output forwarding disabled: {e}");
            false
        }
    }
}

fn redirect(events: UnixStream, marker: Marker) -> nix::Result<()> {
    let to_evcxr = File::from(nix::unistd::dup(std::io::stdout().as_fd())?);
    let err_to_evcxr = File::from(nix::unistd::dup(std::io::stderr().as_fd())?);
    // Close-on-exec: what a cell spawns gets fds 1 and 2 (dup2 copies), not the read ends.
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::unistd::dup2_stdout(&out_w)?;
    nix::unistd::dup2_stderr(&err_w)?;
    drop((out_w, err_w));
    let mut fwd = Forwarder::new(events, to_evcxr, err_to_evcxr, marker);
    // A pool's rank says which it is, so that the kernel labels its output.
    if let Some(rank) = std::env::var(RANK_ENV).ok().and_then(|r| r.parse().ok()) {
        fwd.send(Event::Rank(rank));
    }
    std::thread::Builder::new().name("ranch-output".into()).spawn(move || fwd.run(out_r, err_r)).map_err(|_| nix::Error::EAGAIN)?;
    Ok(())
}

struct Forwarder {
    events: UnixStream,
    marker: Marker,
    to_evcxr: File,
    /// Where our own diagnostics go when the kernel is unreachable.
    err_to_evcxr: File,
    out: Vec<u8>,
    err: Vec<u8>,
    /// Stdout text collected from one read, sent as one event.
    text: String,
    /// Inside an `EVCXR_BEGIN_CONTENT` block: (mime, body so far).
    block: Option<(String, String)>,
    /// Consecutive complete blocks (one display); the last group may be the cell's value.
    group: Vec<(String, String)>,
    /// Lines of a panic message being read from stderr.
    panic_lines: Option<Vec<String>>,
    /// A complete panic message waiting for evcxr's panic notification.
    panic: Option<String>,
}

impl Forwarder {
    fn new(events: UnixStream, to_evcxr: File, err_to_evcxr: File, marker: Marker) -> Self {
        Forwarder {
            events,
            marker,
            to_evcxr,
            err_to_evcxr,
            out: Vec::new(),
            err: Vec::new(),
            text: String::new(),
            block: None,
            group: Vec::new(),
            panic_lines: None,
            panic: None,
        }
    }

    fn run(&mut self, out_r: OwnedFd, err_r: OwnedFd) {
        let (mut out_f, mut err_f) = (File::from(out_r), File::from(err_r));
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let (out_ready, err_ready) = {
                let mut fds = [PollFd::new(out_f.as_fd(), PollFlags::POLLIN), PollFd::new(err_f.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::NONE).is_err() {
                    continue;
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]))
            };
            if err_ready {
                match err_f.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => self.on_stderr(&chunk[..n]),
                }
            }
            if out_ready {
                match out_f.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => self.on_stdout(&chunk[..n], &mut err_f),
                }
            }
        }
    }

    fn send(&mut self, event: Event) {
        let mut line = serde_json::to_vec(&event).expect("events serialise");
        line.push(b'\n');
        if self.events.write_all(&line).is_err() {
            let _ = writeln!(self.err_to_evcxr, "[ranch-kernel child] lost output: {event:?}");
        }
    }

    fn pass_to_evcxr(&mut self, line: &str) {
        let _ = self.to_evcxr.write_all(line.as_bytes());
        let _ = self.to_evcxr.write_all(b"\n");
        let _ = self.to_evcxr.flush();
    }

    fn flush_text(&mut self) {
        if !self.text.is_empty() {
            let text = std::mem::take(&mut self.text);
            self.send(Event::Stdout(text));
        }
    }

    /// Sends the held block group as an ordinary display: it was not the cell's value.
    fn flush_group(&mut self) {
        if !self.group.is_empty() {
            let bundle = std::mem::take(&mut self.group).into_iter().map(|(mime, body)| (mime, serde_json::Value::String(body))).collect();
            self.send(Event::Display(bundle));
        }
    }

    fn on_stdout(&mut self, bytes: &[u8], err_f: &mut File) {
        self.out.extend_from_slice(bytes);
        while let Some(nl) = self.out.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.out.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            self.on_stdout_line(line, err_f);
        }
        // A partial line the user flushed shows now, except a tail that may be the start of
        // the end-of-cell marker, of one of evcxr's protocol lines, or of a multi-byte
        // character (a read can split any of them).
        if self.block.is_none() && !self.out.is_empty() {
            let ready = hold_from(&self.out, &[self.marker.0.as_bytes(), SENTINEL_PREFIX]);
            let valid = match std::str::from_utf8(&self.out[..ready]) {
                Ok(s) => s.len(),
                Err(e) => e.valid_up_to(),
            };
            if valid > 0 {
                let part: Vec<u8> = self.out.drain(..valid).collect();
                self.flush_group();
                self.text.push_str(std::str::from_utf8(&part).expect("checked utf8"));
            }
        }
        self.flush_text();
    }

    fn on_stdout_line(&mut self, line: String, err_f: &mut File) {
        // `print!("x")` without a newline, then the end-of-cell marker (or another protocol line):
        // both arrive as one line. The user's part is text; the rest is evcxr's.
        if self.block.is_none()
            && let Some(at) = sentinel_start(&line, &self.marker.0)
            && at > 0
        {
            self.flush_group();
            self.text.push_str(&line[..at]);
            self.on_stdout_line(line[at..].to_string(), err_f);
            return;
        }
        if let Some((mime, mut body)) = self.block.take() {
            if line == END && mime == CONTROL_MIME {
                // A `ranch::display` request: carried out now, never the cell's value.
                self.flush_text();
                self.flush_group();
                self.send(Event::Display(std::iter::once((mime, serde_json::Value::String(body))).collect()));
            } else if line == END {
                if self.group.iter().any(|(m, _)| *m == mime) {
                    self.flush_text();
                    self.flush_group();
                }
                self.group.push((mime, body));
            } else if line == PANIC {
                self.group.push((mime, body));
                self.on_panic_notification(err_f);
            } else {
                if !body.is_empty() {
                    body.push('\n');
                }
                body.push_str(&line);
                self.block = Some((mime, body));
            }
            return;
        }
        if line == self.marker.0 {
            self.flush_text();
            self.drain_stderr(err_f);
            self.finish_stderr();
            // The last group is the cell's value: evcxr turns it into the cell's result.
            for (mime, body) in std::mem::take(&mut self.group) {
                self.pass_to_evcxr(&format!("{BEGIN}{mime}"));
                self.pass_to_evcxr(&body);
                self.pass_to_evcxr(END);
            }
            self.send(Event::Done);
            self.pass_to_evcxr(COMPLETE);
        } else if line == PANIC {
            self.on_panic_notification(err_f);
        } else if let Some(mime) = line.strip_prefix(BEGIN) {
            self.block = Some((mime.trim().to_string(), String::new()));
        } else if line.as_bytes().starts_with(SENTINEL_PREFIX) && line.trim_end() != COMPLETE {
            // Input requests, `?` errors, lost variables: evcxr's business. (Its completion
            // line only ever comes from the marker; printed by a cell, it is text.)
            self.flush_text();
            self.flush_group();
            self.pass_to_evcxr(&line);
        } else {
            if !self.group.is_empty() {
                self.flush_text();
                self.flush_group();
            }
            self.text.push_str(&line);
            self.text.push('\n');
        }
    }

    fn on_panic_notification(&mut self, err_f: &mut File) {
        self.flush_text();
        self.flush_group();
        self.drain_stderr(err_f);
        let message = self.panic.take().or_else(|| self.panic_lines.take().map(|l| l.join("\n"))).unwrap_or_default();
        self.send(Event::Panic(message));
        self.pass_to_evcxr(PANIC);
    }

    /// Reads whatever stderr the cell wrote before the line being handled on stdout.
    fn drain_stderr(&mut self, err_f: &mut File) {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let mut fds = [PollFd::new(err_f.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::ZERO) {
                Ok(n) if n > 0 => match err_f.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => self.on_stderr(&chunk[..n]),
                },
                _ => return,
            }
        }
    }

    /// At the end of a cell nothing more belongs to it: a panic message nobody caught (a
    /// background thread's) and a partial line are shown as they are.
    fn finish_stderr(&mut self) {
        let mut text = String::new();
        if let Some(msg) = self.panic.take() {
            text.push_str(&format!("panic: {msg}\n"));
        }
        if let Some(lines) = self.panic_lines.take() {
            text.push_str(&lines.join("\n"));
            text.push('\n');
        }
        text.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.err)));
        if !text.is_empty() {
            self.send(Event::Stderr(text));
        }
    }

    fn on_stderr(&mut self, bytes: &[u8]) {
        self.err.extend_from_slice(bytes);
        let mut text = String::new();
        while let Some(nl) = self.err.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.err.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&raw[..raw.len() - 1]).into_owned();
            if let Some(lines) = &mut self.panic_lines {
                if line.starts_with("note: run with `RUST_BACKTRACE") || line.starts_with("stack backtrace:") {
                    self.panic = Some(lines.join("\n"));
                    self.panic_lines = None;
                } else {
                    lines.push(line);
                }
            } else if line.starts_with("thread '") && line.contains(" panicked at ") {
                // Rust's panic hook writes "\nthread 'name' (tid) panicked at file:line:col:";
                // the blank line before it belongs to the panic report too.
                if text == "\n" || text.ends_with("\n\n") {
                    text.pop();
                }
                self.panic_lines = Some(Vec::new());
            } else if self.panic.is_some() && line.trim().is_empty() {
                // The blank line some panic hooks print after the note.
            } else {
                text.push_str(&line);
                text.push('\n');
            }
        }
        if self.panic_lines.is_none() && !self.err.is_empty() && !could_start(&self.err, PANIC_PREFIX) {
            let valid = match std::str::from_utf8(&self.err) {
                Ok(s) => s.len(),
                Err(e) => e.valid_up_to(),
            };
            let part: Vec<u8> = self.err.drain(..valid).collect();
            text.push_str(&String::from_utf8_lossy(&part));
        }
        if !text.is_empty() {
            self.send(Event::Stderr(text));
        }
    }
}

/// Where the end-of-cell marker or one of evcxr's protocol lines starts inside `line`
/// (after unterminated user text).
fn sentinel_start(line: &str, marker: &str) -> Option<usize> {
    const SENTINELS: [&str; 5] = [PANIC, BEGIN, INPUT_REQUEST, ERROR_OCCURRED, VARIABLE_CHANGED_TYPE];
    if let Some(at) = line.find(marker) {
        return Some(at);
    }
    line.match_indices(PREFIX).map(|(i, _)| i).find(|&i| SENTINELS.iter().any(|s| line[i..].starts_with(s)))
}

/// Where the first place is from which the rest of `buf` could be (the start of) one of
/// `patterns`; `buf.len()` if there is none.
fn hold_from(buf: &[u8], patterns: &[&[u8]]) -> usize {
    (0..buf.len()).find(|&i| patterns.iter().any(|p| could_start(&buf[i..], p))).unwrap_or(buf.len())
}

/// Whether `buf` is a prefix of `prefix` or starts with it.
fn could_start(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_evcxr_lines_after_unterminated_user_text() {
        let m = "RANCH_CELL_DONE_00ff";
        assert_eq!(sentinel_start(" doneRANCH_CELL_DONE_00ff", m), Some(5));
        assert_eq!(sentinel_start("EVCXR_PANIC_NOTIFICATION", m), Some(0));
        assert_eq!(sentinel_start("50%EVCXR_BEGIN_CONTENT text/html", m), Some(3));
        assert_eq!(sentinel_start("EVCXR_ is just text", m), None);
        assert_eq!(sentinel_start("plain", m), None);
        // evcxr's own completion line, printed by a cell, is only text now.
        assert_eq!(sentinel_start("EVCXR_EXECUTION_COMPLETE", m), None);
        assert_eq!(sentinel_start("RANCH_CELL_DONE_0000", m), None);
    }

    #[test]
    fn a_split_marker_or_sentinel_is_held_back() {
        let pats: [&[u8]; 2] = [b"RANCH_CELL_DONE_00ff", b"EVCXR_"];
        assert_eq!(hold_from(b"progress 50%", &pats), 12);
        assert_eq!(hold_from(b"progress 50%RANCH_CE", &pats), 12);
        assert_eq!(hold_from(b"50%EVCXR_BEGIN_CON", &pats), 3);
        assert_eq!(hold_from(b"50%EVC", &pats), 3);
        assert_eq!(hold_from(b"RANCH_X", &pats), 7);
    }
}
