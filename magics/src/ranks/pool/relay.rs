//! A pool rank on another host: what the launcher (mpirun, srun) starts there. It connects
//! to the fan-out's hub ([`super::hub`]) with the pool's token, receives its environment
//! and the toolchain's libstd, and starts the rank itself (this binary as evcxr's child,
//! exactly as a local pool rank) in a private directory, then relays:
//! - from the hub: evcxr's protocol lines to the rank's stdin, each cell's library before
//!   its `LOAD_AND_RUN` (whose path is rewritten to the copy here), the cell's group, and
//!   the session's variables being pushed (`%px_push`), into a mirror of the kernel's
//!   private directory;
//! - to the hub: the rank's protocol lines, its events (output, displays), the values it
//!   wrote for `%px_pull` (before the line that ends the cell), and how its process ended.
//!
//! The directory and everything in it are removed when the relay ends; the rank dies with
//! the relay (its parent-death signal), and the relay ends when the hub's connection does.

use super::link::{self, Frame, HELLO};
use crate::ranks::death::OomWatch;
use crate::ranks::event::RANK_ENV;
use crate::ranks::event::{MAX_LINE, SOCKET_ENV, for_each_line};
use std::collections::HashSet;
use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The line evcxr's child ends a cell with.
use ranch::__rt::evcxr_lines::EXECUTION_COMPLETE as COMPLETE;

/// A relay of the hub at `hub` (`host:port`): serves it and never returns. Must run before
/// any other thread exists.
///
/// Its role and the hub's address come in the environment ([`crate::role::ROLE_ENV`]),
/// with the pool's token: the launcher starts it, on another host, where no descriptor of the
/// fan-out's reaches. Everything else (the rank's environment, libstd, the cells) it fetches
/// over its connection to the hub, once the hub has checked the token.
pub fn run(hub: &str) -> ! {
    // The launcher stops ranks with SIGTERM (or SIGINT, SIGHUP): the relay then ends its rank
    // and removes its directory before it goes, instead of dying with files left on the host.
    // Blocked here, before any thread exists, and waited for by one thread.
    let stops = stop_signals();
    if stops.thread_block().is_ok() {
        std::thread::spawn(move || {
            let _ = stops.wait();
            let (pid, dir) = (CHILD_PID.get().copied(), DIR.get().cloned());
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
            if let Some(dir) = dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            std::process::exit(143)
        });
    }
    let code = match Relay::start(hub) {
        Ok(relay) => relay.serve(),
        Err(e) => {
            eprintln!("ranch pool relay (rank {}, host {}): {e}", ranch::rank(), hostname());
            97
        }
    };
    std::process::exit(code)
}

/// The rank's process and the relay's directory, for the signal thread.
static CHILD_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "?".into())
}

type Writer = Arc<Mutex<TcpStream>>;

fn send(to: &Writer, frame: &Frame) -> bool {
    let mut s = to.lock().unwrap_or_else(|e| e.into_inner());
    link::write_frame(&mut *s, frame).is_ok()
}

struct Relay {
    reader: BufReader<TcpStream>,
    writer: Writer,
    dir: TempDir,
    child: Arc<Mutex<Child>>,
    stdin: ChildStdin,
}

/// The relay's private directory, removed when it ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Relay {
    fn start(hub: &str) -> Result<Relay, String> {
        let token = std::env::var(ranch::__rt::TOKEN_ENV).map_err(|_| format!("{} is not set", ranch::__rt::TOKEN_ENV))?;
        let stream = connect(hub)?;
        let _ = stream.set_nodelay(true);
        // The kernel's host may vanish without a word: the relay (and its rank) then end.
        let _ = ranch::__rt::keepalive::watch(&stream, ranch::__rt::collective_timeout());
        let writer: Writer = Arc::new(Mutex::new(stream.try_clone().map_err(|e| e.to_string())?));
        let hello = format!("{HELLO} {token} {} {} {}", ranch::rank(), hostname(), std::process::id());
        if !send(&writer, &Frame::Hello(hello)) {
            return Err(format!("the pool's hub at {hub} closed the connection"));
        }
        let mut reader = BufReader::new(stream);
        let base = std::env::var_os("TMPDIR").filter(|d| !d.is_empty()).unwrap_or_else(|| "/tmp".into());
        // Named by this process: a relay killed with SIGKILL leaves its directory, which the
        // next relay on this host removes.
        ranch::__rt::remove_stale(Path::new(&base), "ranch-pool-");
        let dir = nix::unistd::mkdtemp(&Path::new(&base).join(format!("ranch-pool-{}-XXXXXX", std::process::id())))
            .map_err(|e| format!("cannot make a directory in {} (set TMPDIR): {e}", base.to_string_lossy()))?;
        let _ = DIR.set(dir.clone());
        let dir = TempDir(dir);
        // Setting up: the rank's environment and files, then `Start`.
        let _ = reader.get_ref().set_read_timeout(Some(Duration::from_secs(120)));
        let mut env: Vec<(String, String)> = Vec::new();
        loop {
            match link::read_frame(&mut reader).map_err(|e| format!("the pool's hub at {hub}: {e}"))? {
                Frame::Env(bytes) => env = serde_json::from_slice(&bytes).map_err(|e| format!("bad environment from the hub: {e}"))?,
                Frame::File(name) => receive_file(&mut reader, &dir.0, &name)?,
                Frame::Start => break,
                other => return Err(format!("unexpected {other:?} from the hub while starting")),
            }
        }
        let _ = reader.get_ref().set_read_timeout(None);
        let events = dir.0.join("events.sock");
        let listener =
            std::os::unix::net::UnixListener::bind(&events).map_err(|e| format!("cannot listen at {}: {e}", events.display()))?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = Command::new(if exe.exists() { exe } else { PathBuf::from("/proc/self/exe") });
        // SAFETY: pthread_sigmask is async-signal-safe. The rank starts with no signal
        // blocked: the relay's stop signals are its own (see `run`).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || stop_signals().thread_unblock().map_err(std::io::Error::from));
        }
        let mut child = command
            .env_remove(crate::role::ROLE_ENV)
            .env_remove(ranch::__rt::TOKEN_ENV)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(ranch::__rt::evcxr_lines::CHILD_ENV, "1")
            .env(RANK_ENV, ranch::rank().to_string())
            .env(SOCKET_ENV, &events)
            .env(ranch::__rt::POOL_GROUP_ENV, dir.0.join("group"))
            .env(ranch::__rt::MIRROR_DIR_ENV, dir.0.join("mirror"))
            .env("LD_LIBRARY_PATH", dir.0.join("lib"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the rank: {e}"))?;
        let _ = CHILD_PID.set(child.id());
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let child = Arc::new(Mutex::new(child));
        forward_events(listener, writer.clone());
        forward_protocol(stdout, writer.clone(), dir.0.clone(), child.clone(), OomWatch::start());
        Ok(Relay { reader, writer, dir, child, stdin })
    }

    /// Serves the hub until it goes away; returns the exit status.
    fn serve(mut self) -> i32 {
        let cells = self.dir.0.join("cells");
        // Until the hub is gone (the pool stopped, or its host did): then so is the rank.
        while let Ok(frame) = link::read_frame(&mut self.reader) {
            let ok = match frame {
                Frame::File(name) => {
                    receive_file(&mut self.reader, &self.dir.0, &name).map_err(|e| eprintln!("ranch pool relay: {e}")).is_ok()
                }
                Frame::Group(text) => {
                    let path = self.dir.0.join("group");
                    if text.is_empty() {
                        let _ = std::fs::remove_file(&path);
                        true
                    } else {
                        std::fs::write(&path, text).is_ok()
                    }
                }
                Frame::Line(line) => {
                    let line = match line.strip_prefix("LOAD_AND_RUN ").and_then(|r| r.split_once(' ')) {
                        Some((library, function)) => {
                            let name = Path::new(library).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                            format!("LOAD_AND_RUN {} {function}", cells.join(name).display())
                        }
                        None => line,
                    };
                    writeln!(self.stdin, "{line}").and_then(|_| self.stdin.flush()).is_ok()
                }
                _ => true,
            };
            if !ok {
                break;
            }
        }
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        drop(self.writer);
        0
    }
}

/// Connects to the hub, trying for 30 s (it may still be accepting other ranks).
fn connect(hub: &str) -> Result<TcpStream, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let addrs: Vec<_> = hub.to_socket_addrs().map_err(|e| format!("hub address {hub}: {e}"))?.collect();
        let mut last = format!("{hub} resolves to nothing");
        for a in &addrs {
            match TcpStream::connect_timeout(a, Duration::from_secs(5)) {
                Ok(s) => return Ok(s),
                Err(e) => last = format!("cannot reach the pool's hub at {hub}: {e}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stores a file the hub sends under `dir` (names are checked: nothing lands outside it).
fn receive_file(reader: &mut impl Read, dir: &Path, name: &str) -> Result<(), String> {
    let Some(relative) = link::safe_relative(name) else {
        link::skip_file_body(reader).map_err(|e| e.to_string())?;
        return Err(format!("refused a file named {name:?} from the hub"));
    };
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
    }
    let mut file = std::fs::File::create(&path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    link::read_file_body(reader, &mut file).map_err(|e| format!("receiving {name}: {e}"))?;
    Ok(())
}

/// The rank's events (a line each) go to the hub as they come.
fn forward_events(listener: std::os::unix::net::UnixListener, writer: Writer) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let writer = writer.clone();
            std::thread::spawn(move || {
                let each = |mut line: Vec<u8>| {
                    line.push(b'\n');
                    send(&writer, &Frame::Events(line))
                };
                for_each_line(conn, each, || eprintln!("ranch pool relay: an event of more than {} MiB was dropped", MAX_LINE >> 20));
            });
        }
    });
}

/// The rank's protocol lines go to the hub; before the line that ends a cell, the values
/// the cell wrote for the kernel (`%px_pull`) do, and the files the cell has loaded or read
/// are removed (a long session would fill the host's `/tmp`). When the rank's output
/// closes, how it ended goes last.
fn forward_protocol(stdout: std::process::ChildStdout, writer: Writer, dir: PathBuf, child: Arc<Mutex<Child>>, oom: OomWatch) {
    std::thread::spawn(move || {
        let mirror = dir.join("mirror");
        let mut sent: HashSet<PathBuf> = HashSet::new();
        let mut sending = true;
        let each = |line: Vec<u8>| {
            let line = String::from_utf8_lossy(&line).into_owned();
            if line == COMPLETE {
                send_pulled(&mirror, &writer, &mut sent);
                remove_used(&dir);
            }
            sending = send(&writer, &Frame::Line(line));
            sending
        };
        for_each_line(stdout, each, || eprintln!("ranch pool relay: a line of more than {} MiB from the rank was dropped", MAX_LINE >> 20));
        if !sending {
            return;
        }
        let how = {
            let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
            let mut oom = oom;
            crate::ranks::death::how_it_ended(&mut child, &mut oom)
        };
        send(&writer, &Frame::Exit(how));
        // The hub closes the link once it knows; the relay then ends.
    });
}

/// Removes the cells' libraries (loaded: the rank keeps them mapped) and pushed variables
/// (read by the cell that pushed them).
fn remove_used(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.join("cells"));
    for pushed in std::fs::read_dir(dir.join("mirror")).into_iter().flatten().flatten() {
        if pushed.file_name().to_string_lossy().starts_with("px-push-") {
            let _ = std::fs::remove_dir_all(pushed.path());
        }
    }
}

/// Sends the values written under the mirror's `px-pull-*` directories, once each, and
/// removes them here.
fn send_pulled(mirror: &Path, writer: &Writer, sent: &mut HashSet<PathBuf>) {
    let Ok(dirs) = std::fs::read_dir(mirror) else { return };
    for dir in dirs.flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        if !name.starts_with("px-pull-") {
            continue;
        }
        let Ok(files) = std::fs::read_dir(dir.path()) else { continue };
        for file in files.flatten() {
            let path = file.path();
            if sent.contains(&path) {
                continue;
            }
            let relative = format!("{name}/{}", file.file_name().to_string_lossy());
            if let Ok(mut f) = std::fs::File::open(&path) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                let mut s = writer.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = link::write_file(&mut *s, &relative, len, &mut f) {
                    eprintln!("ranch pool relay: cannot send {relative}: {e}");
                }
            }
            let _ = std::fs::remove_file(&path);
            sent.insert(path);
        }
    }
}
