//! The coordination service of a launch: the shared-memory segment the ranks' collectives
//! use, and a rendezvous listener at `MASTER_ADDR:MASTER_PORT` that hands the segment to
//! ranks presenting the launch's secret token.
//!
//! The listener is ranch's [`Listener`]: a rank's hello `RANCH1 <token> <rank>` is read with
//! one deadline of [`HELLO_TIMEOUT`] in all, at most [`MAX_LINE`] bytes, at most
//! [`MAX_PENDING`] connections at once that have not said who they are (the oldest goes for
//! a new one), the token compared in constant time. Strangers get nothing: their connection
//! is closed without a reply. One registration per rank for the launch. A rank's connection
//! stays open while it lives, watched by a thread of its own; when the rank says it
//! finished, or the connection closes, the rank is marked as gone in the segment, so
//! collectives waiting for it fail at once.

use ranch::__rt::listener::{Admitted, Listener, Rules, Stopper};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Environment a launch gives its ranks: the group's token, the collective timeout.
pub use ranch::__rt::{BACKEND_ENV, NO_GROUP, TIMEOUT_ENV, TOKEN_ENV};

/// Connections that have not yet said who they are, at most.
pub const MAX_PENDING: usize = 64;
/// How long a connection has to say who it is.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest line a rank sends (`RANCH1 <token> <rank>`, `DONE`).
pub const MAX_LINE: usize = 256;

pub struct GroupService {
    segment: PathBuf,
    port: u16,
    /// Stops the service thread's listener.
    stop: Option<Stopper>,
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
        let rules = Rules {
            max_hello: MAX_LINE,
            hello_deadline: HELLO_TIMEOUT,
            max_pending: MAX_PENDING,
            ..Rules::line(ranch::__rt::group::HELLO, token)
        };
        let listener = Listener::bind((addr, port.unwrap_or(0)), rules)
            .map_err(|e| format!("cannot listen on {addr}:{}: {e}", port.map_or("<any port>".into(), |p| p.to_string())))?;
        let port = listener.local_addr().port();
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
        service.stop = Some(listener.stopper());
        if publish {
            let path = token_path(port)?;
            let published = format!("{} {token}", std::process::id());
            write_private(&path, &published).map_err(|e| format!("cannot publish the group token at {}: {e}", path.display()))?;
            service.token_file = Some(path);
        }
        let rendezvous = Rendezvous {
            listener,
            reply: format!("OK {seg} {world}\n"),
            world,
            segment: header,
            members: Vec::new(),
            registered: vec![false; world],
            stopping: Arc::default(),
        };
        service.thread = Some(
            std::thread::Builder::new()
                .name("ranch-rendezvous".into())
                .spawn(move || rendezvous.serve())
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

struct Rendezvous {
    listener: Listener,
    reply: String,
    world: usize,
    segment: Arc<ranch::__rt::group::Header>,
    /// Each registered rank's connection (to close it when the service stops) and the
    /// thread that watches it.
    members: Vec<(TcpStream, std::thread::JoinHandle<()>)>,
    registered: Vec<bool>,
    /// Set when the service stops: closing the members' connections then says nothing of
    /// the ranks.
    stopping: Arc<AtomicBool>,
}

impl Rendezvous {
    fn serve(mut self) {
        while let Some(admitted) = self.listener.next() {
            self.register(admitted);
        }
        self.stopping.store(true, Ordering::SeqCst);
        for (stream, thread) in self.members.drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            let _ = thread.join();
        }
    }

    /// Answers a rank of this launch not yet registered with the segment, and watches its
    /// connection; anything else is closed without a word.
    fn register(&mut self, Admitted { stream, words, .. }: Admitted) {
        let Some(rank) = words.first().and_then(|r| r.parse::<usize>().ok()).filter(|&r| r < self.world && !self.registered[r]) else {
            return;
        };
        self.registered[rank] = true;
        let handle = stream.try_clone();
        let (Ok(handle), Ok(())) = (handle, (&stream).write_all(self.reply.as_bytes())) else {
            self.segment.mark_exited(rank, false);
            return;
        };
        let (segment, stopping) = (self.segment.clone(), self.stopping.clone());
        match std::thread::Builder::new().name("ranch-rendezvous-rank".into()).spawn(move || watch(stream, rank, &segment, &stopping)) {
            Ok(thread) => self.members.push((handle, thread)),
            Err(_) => self.segment.mark_exited(rank, false),
        }
    }
}

/// Reads rank `rank`'s connection until it says `DONE` (it returned from the cell) or
/// closes (it died, or sent a line too long to be ours), then marks it gone in the segment.
fn watch(stream: TcpStream, rank: usize, segment: &ranch::__rt::group::Header, stopping: &AtomicBool) {
    let mut reader = BufReader::new(stream);
    let finished = loop {
        let mut line = Vec::new();
        match (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut line) {
            Ok(_) if line.trim_ascii() == ranch::__rt::group::DONE.as_bytes() => break true,
            Ok(_) if line.ends_with(b"\n") => {}
            _ => break false,
        }
    };
    if !stopping.load(Ordering::SeqCst) {
        segment.mark_exited(rank, finished);
    }
}

impl Drop for GroupService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.stop();
        }
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
    use std::time::Instant;

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
