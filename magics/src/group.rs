//! The coordination service of a launch: the shared-memory segment the ranks' collectives
//! use, and a rendezvous listener at `MASTER_ADDR:MASTER_PORT` that hands the segment to
//! ranks presenting the launch's secret token.
//!
//! Everything runs on one thread polling every socket, with bounds a stranger cannot get
//! around: at most [`MAX_PENDING`] connections that have not said who they are (the oldest
//! is dropped for a new one, and a rank says who it is in its first packet), [`HELLO_TIMEOUT`]
//! to say it, lines of at most [`MAX_LINE`] bytes, one registration per rank for the launch.
//! Strangers get nothing: their connection is closed without a reply. A rank's connection
//! stays open while it lives; when the rank says it finished, or the connection closes, the
//! rank is marked as gone in the segment, so collectives waiting for it fail at once.

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Environment a launch gives its ranks: the group's token, the collective timeout.
pub use ranch::__rt::{BACKEND_ENV, TIMEOUT_ENV, TOKEN_ENV};

/// Connections that have not yet said who they are, at most.
pub const MAX_PENDING: usize = 64;
/// How long a connection has to say who it is.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest line a rank sends (`RANCH1 <token> <rank>`, `DONE`).
pub const MAX_LINE: usize = 256;

pub struct GroupService {
    segment: PathBuf,
    port: u16,
    /// Closing it stops the service thread.
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
    token_file: Option<PathBuf>,
    /// The segment's header, shared with the service thread.
    header: Option<std::sync::Arc<ranch::__rt::group::Header>>,
}

/// A fresh secret for one launch, from the OS's random generator.
pub fn new_token() -> Result<String, String> {
    Ok(hex(&random_bytes::<16>()?))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| format!("the system's random number generator failed: {e}"))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where groups publish their tokens for other kernels of the same user:
/// `$XDG_RUNTIME_DIR/ranch/groups`, else `~/.cache/ranch/groups` (never a shared place).
pub fn token_dir() -> Result<PathBuf, String> {
    let base = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => home_dir().ok_or("neither XDG_RUNTIME_DIR nor a home directory is known")?.join(".cache"),
    };
    Ok(base.join("ranch").join("groups"))
}

/// Where a group hosted on `port` publishes its token.
pub fn token_path(port: u16) -> Result<PathBuf, String> {
    Ok(token_dir()?.join(format!("{port}.token")))
}

/// A published token: `<pid of the hosting kernel> <token>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub host_pid: i32,
    pub token: String,
}

impl Published {
    pub fn parse(text: &str) -> Option<Published> {
        let (pid, token) = text.trim().split_once(' ')?;
        Some(Published { host_pid: pid.parse().ok()?, token: token.to_string() })
    }

    /// Whether the hosting kernel still runs (a file left by a killed one is not a group).
    pub fn is_live(&self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.host_pid);
        self.host_pid > 0 && nix::sys::signal::kill(pid, None) != Err(nix::errno::Errno::ESRCH)
    }
}

/// The token of the live group hosted on `port`, if there is one.
pub fn published_token(port: u16) -> Result<Option<String>, String> {
    let text = match std::fs::read_to_string(token_path(port)?) {
        Ok(t) => t,
        Err(_) => return Ok(None),
    };
    Ok(Published::parse(&text).filter(Published::is_live).map(|p| p.token))
}

/// `$HOME`, else the home directory of the user in the password database.
pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.dir))
}

impl GroupService {
    /// Creates the segment for `world` ranks and starts listening on `port` (`None`: a
    /// free port, see [`port`](Self::port)). With `publish`, the token is also written
    /// (mode 0600) where other kernels of this user can read it.
    pub fn start(addr: &str, port: Option<u16>, world: usize, token: &str, publish: bool) -> Result<GroupService, String> {
        let listener = TcpListener::bind((addr, port.unwrap_or(0)))
            .map_err(|e| format!("cannot listen on {addr}:{}: {e}", port.map_or("<any port>".into(), |p| p.to_string())))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        // The name says nothing about the token; the file is the owner's alone.
        let segment = PathBuf::from(format!("/dev/shm/ranch-{}-{}", std::process::id(), hex(&random_bytes::<12>()?)));
        let seg = segment.to_string_lossy().into_owned();
        ranch::__rt::group::create(&seg, world).map_err(|e| format!("cannot create the shared-memory segment {seg}: {e}"))?;
        // From here on, dropping `service` removes the segment again.
        let mut service = GroupService { segment, port, stop: None, thread: None, token_file: None, header: None };
        let segment_file = File::options().read(true).write(true).open(&service.segment).map_err(|e| e.to_string())?;
        let header = std::sync::Arc::new(
            ranch::__rt::group::Header::map(&segment_file, world).map_err(|e| format!("cannot map the shared-memory segment: {e}"))?,
        );
        service.header = Some(header.clone());
        // Close-on-exec: a process spawned meanwhile (a pool restarting) must not hold the
        // write end open, or closing it here would never stop the thread.
        let (stop_rx, stop_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("cannot create a pipe: {e}"))?;
        service.stop = Some(stop_tx);
        if publish {
            let path = token_path(port)?;
            let published = format!("{} {token}", std::process::id());
            write_private(&path, &published).map_err(|e| format!("cannot publish the group token at {}: {e}", path.display()))?;
            service.token_file = Some(path);
        }
        let rendezvous = Rendezvous {
            listener,
            token: token.as_bytes().to_vec(),
            reply: format!("OK {seg} {world}\n"),
            world,
            segment: header,
            pending: VecDeque::new(),
            members: Vec::new(),
            registered: vec![false; world],
        };
        service.thread = Some(
            std::thread::Builder::new()
                .name("ranch-rendezvous".into())
                .spawn(move || rendezvous.serve(stop_rx))
                .map_err(|e| format!("cannot start the rendezvous service: {e}"))?,
        );
        Ok(service)
    }

    pub fn segment(&self) -> &Path {
        &self.segment
    }

    /// The port it listens on (`MASTER_PORT`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Marks `rank` as having returned from the cell, whether or not it ever joined: ranks
    /// waiting for it in a collective stop waiting (a pool's ranks outlive their cells, so
    /// their connections cannot say it).
    pub fn mark_finished(&self, rank: usize) {
        if let Some(h) = &self.header {
            h.mark_exited(rank, true);
        }
    }
}

/// Writes `text` to `path`, readable by this user only (its directory is made 0700 if
/// missing), in one step: a reader never sees half a file.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path.parent().expect("has parent"))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp); // left by a crash: a fresh file gets the mode
    let mut f = File::options().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)
}

/// A connection that has not said who it is yet.
struct Pending {
    stream: TcpStream,
    line: Vec<u8>,
    since: Instant,
}

/// A rank's connection, for the rank's life.
struct Member {
    stream: TcpStream,
    rank: usize,
    line: Vec<u8>,
}

struct Rendezvous {
    listener: TcpListener,
    token: Vec<u8>,
    reply: String,
    world: usize,
    segment: std::sync::Arc<ranch::__rt::group::Header>,
    pending: VecDeque<Pending>,
    members: Vec<Member>,
    registered: Vec<bool>,
}

/// What reading from a connection gave.
enum Reading {
    /// Complete lines, and whether the peer closed after them.
    Lines(Vec<Vec<u8>>, bool),
    /// Closed, failed, or sent a line too long to be ours.
    Gone,
}

/// Reads what is there (non-blocking) into `line`, returning the complete lines.
fn read_lines(stream: &mut TcpStream, line: &mut Vec<u8>) -> Reading {
    let mut chunk = [0u8; 512];
    let mut lines = Vec::new();
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Reading::Lines(lines, true),
            Ok(n) => {
                for &b in &chunk[..n] {
                    if b == b'\n' {
                        lines.push(std::mem::take(line));
                    } else if line.len() >= MAX_LINE {
                        return Reading::Gone;
                    } else {
                        line.push(b);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Reading::Lines(lines, false),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Reading::Gone,
        }
    }
}

impl Rendezvous {
    fn serve(mut self, stop: OwnedFd) {
        loop {
            let now = Instant::now();
            self.pending.retain(|p| now.duration_since(p.since) < HELLO_TIMEOUT);
            let wait = self
                .pending
                .front()
                .map(|p| HELLO_TIMEOUT.saturating_sub(now.duration_since(p.since)) + Duration::from_millis(1));
            let (stop_ready, listener_ready, pending_ready, member_ready) = {
                let mut fds = vec![PollFd::new(stop.as_fd(), PollFlags::POLLIN), PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
                fds.extend(self.pending.iter().map(|p| PollFd::new(p.stream.as_fd(), PollFlags::POLLIN)));
                fds.extend(self.members.iter().map(|m| PollFd::new(m.stream.as_fd(), PollFlags::POLLIN)));
                let timeout = wait.map_or(PollTimeout::NONE, |w| PollTimeout::try_from(w).unwrap_or(PollTimeout::MAX));
                if poll(&mut fds, timeout).is_err() {
                    continue;
                }
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let (first, rest) = fds.split_at(2);
                let (pending, members) = rest.split_at(self.pending.len());
                (ready(&first[0]), ready(&first[1]), pending.iter().map(ready).collect::<Vec<_>>(), members.iter().map(ready).collect::<Vec<_>>())
            };
            if stop_ready {
                return;
            }
            // Members first: their indices match the poll set only until it changes.
            for i in (0..self.members.len()).rev() {
                if member_ready[i] {
                    self.on_member(i);
                }
            }
            for i in (0..self.pending.len()).rev() {
                if pending_ready[i] {
                    self.on_pending(i);
                }
            }
            if listener_ready {
                self.accept();
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.pending.len() >= MAX_PENDING {
                        self.pending.pop_front(); // the oldest stranger goes
                    }
                    self.pending.push_back(Pending { stream, line: Vec::new(), since: Instant::now() });
                    // A rank says who it is right after connecting: usually it is here already.
                    let last = self.pending.len() - 1;
                    self.on_pending(last);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return, // WouldBlock, or out of descriptors: try on the next wake-up
            }
        }
    }

    fn on_pending(&mut self, i: usize) {
        let p = &mut self.pending[i];
        let (lines, closed) = match read_lines(&mut p.stream, &mut p.line) {
            Reading::Lines(lines, closed) => (lines, closed),
            Reading::Gone => {
                self.pending.remove(i);
                return;
            }
        };
        let Some(hello) = lines.first() else {
            if closed {
                self.pending.remove(i);
            }
            return;
        };
        let p = self.pending.remove(i).expect("index in range");
        let Some(rank) = self.admit(hello) else { return }; // a stranger: closed without a word
        let mut stream = p.stream;
        if stream.write_all(self.reply.as_bytes()).is_err() {
            self.gone(rank, false);
            return;
        }
        self.registered[rank] = true;
        let mut member = Member { stream, rank, line: p.line };
        // What came with the hello (a rank that finished at once says DONE right away).
        let done = lines[1..].iter().any(|l| l.trim_ascii() == ranch::__rt::group::DONE.as_bytes());
        if done || closed {
            self.gone(rank, done);
            return;
        }
        member.line.shrink_to_fit();
        self.members.push(member);
    }

    /// The rank a hello registers, if it is a rank of this launch not yet registered.
    fn admit(&self, hello: &[u8]) -> Option<usize> {
        let text = std::str::from_utf8(hello).ok()?;
        let mut parts = text.split_whitespace();
        let (greeting, theirs, rank) = (parts.next()?, parts.next()?, parts.next()?);
        let token_ok: bool = theirs.as_bytes().ct_eq(&self.token).into();
        let rank: usize = rank.parse().ok()?;
        (greeting == ranch::__rt::group::HELLO && token_ok && rank < self.world && !self.registered[rank]).then_some(rank)
    }

    fn on_member(&mut self, i: usize) {
        let m = &mut self.members[i];
        let (done, closed) = match read_lines(&mut m.stream, &mut m.line) {
            Reading::Lines(lines, closed) => {
                (lines.iter().any(|l| l.trim_ascii() == ranch::__rt::group::DONE.as_bytes()), closed)
            }
            Reading::Gone => (false, true),
        };
        if done || closed {
            let m = self.members.swap_remove(i);
            self.gone(m.rank, done);
        }
    }

    /// Marks a rank as gone for the group (`finished`: it returned from the cell).
    fn gone(&self, rank: usize, finished: bool) {
        self.segment.mark_exited(rank, finished);
    }
}

impl Drop for GroupService {
    fn drop(&mut self) {
        drop(self.stop.take()); // the thread sees the pipe close
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.segment);
        if let Some(t) = &self.token_file {
            let _ = std::fs::remove_file(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    fn hello(port: u16, line: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        writeln!(s, "{line}").unwrap();
        let mut reply = String::new();
        let _ = std::io::BufReader::new(&s).read_line(&mut reply);
        reply
    }

    #[test]
    fn only_ranks_with_the_token_get_the_segment_once() {
        let token = new_token().unwrap();
        let svc = GroupService::start("127.0.0.1", None, 2, &token, false).unwrap();
        let port = svc.port();
        assert!(svc.segment().exists());
        assert!(!svc.segment().to_string_lossy().contains(&token), "the segment's name says nothing of the token");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(svc.segment()).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(hello(port, "RANCH1 wrong 0"), "");
        assert_eq!(hello(port, "GET / HTTP/1.0"), "");
        assert_eq!(hello(port, &format!("RANCH1 {token} 7")), "");
        let mut first = TcpStream::connect(("127.0.0.1", port)).unwrap();
        writeln!(first, "RANCH1 {token} 1").unwrap();
        let mut ok = String::new();
        std::io::BufReader::new(&first).read_line(&mut ok).unwrap();
        assert!(ok.starts_with("OK /dev/shm/ranch-") && ok.trim_end().ends_with(" 2"), "{ok}");
        assert_eq!(hello(port, &format!("RANCH1 {token} 1")), "", "rank 1 is taken while its connection lives");
        first.flush().unwrap();
        let seg = svc.segment().to_path_buf();
        drop(svc);
        assert!(!seg.exists(), "the segment is removed with the service");
    }

    #[test]
    fn strangers_cannot_crowd_out_a_rank() {
        let token = new_token().unwrap();
        let svc = GroupService::start("127.0.0.1", None, 1, &token, false).unwrap();
        let port = svc.port();
        // Many silent connections and a long line: none gets an answer, none blocks a rank.
        let silent: Vec<TcpStream> = (0..3 * MAX_PENDING).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        let mut long = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = long.write_all(&vec![b'x'; 10 * MAX_LINE]);
        let reply = hello(port, &format!("RANCH1 {token} 0"));
        assert!(reply.starts_with("OK "), "{reply:?}");
        drop(silent);
    }

    #[test]
    fn a_token_left_by_a_dead_kernel_is_not_a_group() {
        let live = Published::parse(&format!("{} abc", std::process::id())).unwrap();
        assert!(live.is_live() && live.token == "abc");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id() as i32;
        child.wait().unwrap();
        assert!(!Published::parse(&format!("{dead} abc")).unwrap().is_live());
        assert_eq!(Published::parse("abc"), None);
    }

    #[test]
    fn any_address_that_works_for_ranks_works_for_shutdown() {
        for addr in ["::1", "localhost", "127.0.0.1"] {
            let Ok(svc) = GroupService::start(addr, None, 1, "t", false) else { continue }; // no IPv6 here
            let t = Instant::now();
            drop(svc);
            assert!(t.elapsed() < Duration::from_secs(2), "{addr}: {:?}", t.elapsed());
        }
    }
}
