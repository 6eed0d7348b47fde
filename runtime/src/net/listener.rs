//! The one way ranch listens for its peers (the launch channel, the rendezvous service, a
//! pool's hub and address book, the TCP mesh between ranks): a TCP listener that admits a
//! connection only once it has said, in its first bytes (its hello), the greeting and the
//! secret token of the service, and hands admitted connections to its owner.
//!
//! Anyone who can reach the port can connect, so nothing a stranger does may cost a peer
//! its wait or the host its memory:
//! - accepting never waits on a peer: each connection's hello is read by a thread of its
//!   own, at most [`Rules::max_pending`] at once; a new connection evicts the oldest pending
//!   one (peers send their hello at once, strangers that dribble are the old ones);
//! - each hello has one *total* deadline ([`Rules::hello_deadline`]): bytes that trickle in
//!   do not extend it;
//! - a hello is read exactly as far as its framing says, at most [`Rules::max_hello`] bytes,
//!   growing its buffer as bytes arrive, never past its end (what follows is the owner's);
//! - the token is compared in constant time ([`same_secret`]); a stranger is closed on
//!   without a byte;
//! - running out of descriptors makes accepting back off instead of spinning;
//! - the owner waits on a queue that holds admitted connections only ([`Listener::next`]).

use std::collections::VecDeque;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How far a hello is, given its bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// It needs exactly this many more bytes before it can tell.
    Need(usize),
    /// It is complete; its text (greeting, token, then the words for the owner) is this range.
    Complete(Range<usize>),
    /// Not a hello of this service.
    Bad,
}

/// A hello that is one line ending in `\n` (read a byte at a time: nothing after it).
pub fn line(bytes: &[u8]) -> Progress {
    match bytes.last() {
        Some(b'\n') => Progress::Complete(0..bytes.len() - 1),
        _ => Progress::Need(1),
    }
}

/// What a listener admits, and its bounds against strangers (not `Debug`: it holds the token).
#[derive(Clone)]
pub struct Rules {
    /// First word of every hello.
    pub greeting: &'static str,
    /// Second word: the service's secret, compared in constant time.
    pub token: String,
    /// How a hello ends (default: [`line`]).
    pub framing: fn(&[u8]) -> Progress,
    /// Most bytes of a hello, framing included.
    pub max_hello: usize,
    /// Time a connection has, in all, from its accept to the end of its hello.
    pub hello_deadline: Duration,
    /// Connections whose hello is being read at once; a new one evicts the oldest.
    pub max_pending: usize,
}

/// Default bounds: peers send their hello right after connecting.
pub const MAX_HELLO: usize = 512;
pub const HELLO_DEADLINE: Duration = Duration::from_secs(5);
pub const MAX_PENDING: usize = 64;

impl Rules {
    /// A one-line hello `<greeting> <token> <words...>\n` with the default bounds.
    pub fn line(greeting: &'static str, token: &str) -> Rules {
        Rules {
            greeting,
            token: token.to_string(),
            framing: line,
            max_hello: MAX_HELLO,
            hello_deadline: HELLO_DEADLINE,
            max_pending: MAX_PENDING,
        }
    }
}

/// A connection that said the greeting and the token.
#[derive(Debug)]
pub struct Admitted {
    /// Blocking, no timeouts set, positioned right after the hello.
    pub stream: TcpStream,
    /// The hello's words after the greeting and the token.
    pub words: Vec<String>,
    /// Where it came from, for messages.
    pub peer: SocketAddr,
}

/// Compares two secrets in time that does not depend on where they differ (their lengths
/// are not secret).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A listening socket, the thread that accepts on it and the threads that read hellos;
/// stopped (pending connections closed) when dropped or by its [`Stopper`].
pub struct Listener {
    shared: Arc<Shared>,
    admitted: Receiver<Admitted>,
    accepter: Option<std::thread::JoinHandle<()>>,
    local: SocketAddr,
}

/// Stops a [`Listener`] from another thread (its owner's [`Listener::next`] then ends).
#[derive(Clone)]
pub struct Stopper(Arc<Shared>);

struct Shared {
    listener: TcpListener,
    rules: Rules,
    stopped: AtomicBool,
    pending: Mutex<Pending>,
}

/// Connections whose hello is being read, oldest first (shared with the thread that reads
/// each, to evict it: no second descriptor, which could be missing when they run out).
#[derive(Default)]
struct Pending {
    next_id: u64,
    conns: VecDeque<(u64, Arc<TcpStream>)>,
}

/// A hello thread needs little: a few locals and a buffer on the heap.
const HELLO_STACK: usize = 64 << 10;
/// Longest pause of the accept loop when accepting fails (out of descriptors, say).
const MAX_BACKOFF: Duration = Duration::from_millis(200);

impl Listener {
    /// Listens on `addr` (port 0: a free one) for peers that follow `rules`.
    pub fn bind(addr: impl ToSocketAddrs, rules: Rules) -> std::io::Result<Listener> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared { listener, rules, stopped: AtomicBool::new(false), pending: Mutex::default() });
        let (tx, admitted) = std::sync::mpsc::sync_channel(shared.rules.max_pending.max(1));
        let s = shared.clone();
        let accepter = std::thread::Builder::new().name("ranch-accept".into()).spawn(move || accept_loop(&s, &tx))?;
        Ok(Listener { shared, admitted, accepter: Some(accepter), local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next admitted connection; `None` once the listener is stopped.
    pub fn next(&self) -> Option<Admitted> {
        self.admitted.recv().ok()
    }

    /// The next admitted connection before `deadline`; `None` when it passed or the listener
    /// is stopped.
    pub fn next_before(&self, deadline: Instant) -> Option<Admitted> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.admitted.recv_timeout(left) {
                Ok(a) => return Some(a),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) if Instant::now() >= deadline => return None,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }
}

impl Stopper {
    /// Stops accepting and closes every pending connection; admitted ones are the owner's.
    pub fn stop(&self) {
        let shared = &self.0;
        shared.stopped.store(true, Ordering::SeqCst);
        // Shutting a listening socket down wakes its blocked accept (Linux: EINVAL).
        shutdown_listener(&shared.listener);
        let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (_, conn) in pending.conns.drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stopper().stop();
        if let Some(t) = self.accepter.take() {
            let _ = t.join();
        }
    }
}

fn shutdown_listener(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    unsafe extern "C" {
        // The C library's (std links it already).
        fn shutdown(fd: std::ffi::c_int, how: std::ffi::c_int) -> std::ffi::c_int;
    }
    const SHUT_RDWR: std::ffi::c_int = 2;
    // SAFETY: the descriptor is the listener's, open while it is borrowed.
    unsafe {
        shutdown(listener.as_raw_fd(), SHUT_RDWR);
    }
}

fn accept_loop(shared: &Arc<Shared>, admitted: &SyncSender<Admitted>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = shared.listener.accept();
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                start_hello(shared, stream, peer, admitted.clone());
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionAborted) => {}
            Err(_) => {
                // Out of descriptors or memory: the connection waits in the kernel's queue;
                // pending hellos end by their deadline and give theirs back.
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Reads the hello of a new connection on a thread of its own, evicting the oldest pending
/// connection when the pending set is full.
fn start_hello(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr, admitted: SyncSender<Admitted>) {
    let deadline = Instant::now() + shared.rules.hello_deadline;
    let stream = Arc::new(stream);
    let id = {
        let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        while pending.conns.len() >= shared.rules.max_pending.max(1) {
            if let Some((_, oldest)) = pending.conns.pop_front() {
                let _ = oldest.shutdown(std::net::Shutdown::Both);
            }
        }
        pending.next_id += 1;
        let id = pending.next_id;
        pending.conns.push_back((id, stream.clone()));
        id
    };
    let s = shared.clone();
    let spawned = std::thread::Builder::new().name("ranch-hello".into()).stack_size(HELLO_STACK).spawn(move || {
        let words = read_hello(&stream, &s.rules, deadline);
        // Evicted meanwhile: its socket is shut down, whatever it said.
        if !s.forget(id) {
            return;
        }
        let Some(words) = words else { return }; // a stranger: closed without a byte
        // No longer pending: this thread holds the only reference.
        let Ok(stream) = Arc::try_unwrap(stream) else { return };
        if stream.set_read_timeout(None).is_ok() {
            let _ = stream.set_nodelay(true);
            let _ = admitted.send(Admitted { stream, words, peer });
        }
    });
    if spawned.is_err() {
        shared.forget(id);
    }
}

impl Shared {
    /// Removes a connection from the pending set; `false` when it was evicted already.
    fn forget(&self, id: u64) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.conns.iter().position(|(i, _)| *i == id) {
            Some(at) => {
                pending.conns.remove(at);
                true
            }
            None => false,
        }
    }
}

/// The words after greeting and token of a hello that follows `rules`, read by `deadline`.
fn read_hello(mut stream: &TcpStream, rules: &Rules, deadline: Instant) -> Option<Vec<String>> {
    let mut bytes = Vec::new();
    let text = loop {
        match (rules.framing)(&bytes) {
            Progress::Bad => return None,
            Progress::Complete(range) => break bytes.get(range)?,
            Progress::Need(n) => {
                let want = bytes.len().checked_add(n).filter(|&w| n > 0 && w <= rules.max_hello)?;
                while bytes.len() < want {
                    let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
                    stream.set_read_timeout(Some(left)).ok()?;
                    let mut chunk = [0u8; 256];
                    let room = (want - bytes.len()).min(chunk.len());
                    match stream.read(&mut chunk[..room]) {
                        Ok(0) => return None,
                        Ok(k) => bytes.extend_from_slice(&chunk[..k]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return None,
                    }
                }
            }
        }
    };
    let mut words = std::str::from_utf8(text).ok()?.split_whitespace();
    let greeting_ok = words.next()? == rules.greeting;
    let token_ok = same_secret(words.next()?.as_bytes(), rules.token.as_bytes());
    (greeting_ok && token_ok).then(|| words.map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn rules() -> Rules {
        Rules { hello_deadline: Duration::from_millis(800), max_pending: 4, ..Rules::line("HI", "sesame") }
    }

    fn connect(l: &Listener) -> TcpStream {
        let s = TcpStream::connect(l.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Whether the listener closed `s` (it reads end of stream or a reset, and no byte).
    fn closed(mut s: &TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(0) | Err(_)) && !matches!(s.read(&mut b), Ok(1..))
    }

    #[test]
    fn admits_the_token_and_leaves_what_follows_the_hello_to_the_owner() {
        let l = Listener::bind("127.0.0.1:0", rules()).unwrap();
        let mut s = connect(&l);
        s.write_all(b"HI sesame 3 host\nafter").unwrap();
        let mut a = l.next_before(Instant::now() + Duration::from_secs(5)).expect("admitted");
        assert_eq!(a.words, ["3", "host"]);
        let mut rest = [0u8; 5];
        a.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"after");
    }

    #[test]
    fn strangers_are_closed_on_without_a_byte() {
        let l = Listener::bind("127.0.0.1:0", rules()).unwrap();
        for hello in
            [&b"HI wrong 0\n"[..], b"HI sesamE 0\n", b"HI sesame_longer 0\n", b"HO sesame 0\n", b"\xff\xfe sesame\n", b"HI\n", b"\n"]
        {
            let mut s = connect(&l);
            s.write_all(hello).unwrap();
            assert!(closed(&s), "{hello:?}");
        }
        let mut long = connect(&l);
        let _ = long.write_all(&[b'x'; 4 * MAX_HELLO]);
        assert!(closed(&long), "a line longer than a hello");
        assert!(l.next_before(Instant::now() + Duration::from_millis(100)).is_none());
    }

    #[test]
    fn a_dribbling_stranger_has_one_deadline_in_all_and_peers_do_not_wait_for_it() {
        let l = Listener::bind("127.0.0.1:0", rules()).unwrap();
        let start = Instant::now();
        let dribbler = connect(&l);
        let d = dribbler.try_clone().unwrap();
        let dribbling = std::thread::spawn(move || {
            // A byte every 200 ms, more often than any per-read timeout would allow.
            for _ in 0..20 {
                if (&d).write_all(b"H").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let mut peer = connect(&l);
        peer.write_all(b"HI sesame 1\n").unwrap();
        let asked = Instant::now();
        assert!(l.next_before(Instant::now() + Duration::from_secs(5)).is_some());
        assert!(asked.elapsed() < Duration::from_millis(300), "the peer waited {:?}", asked.elapsed());
        assert!(closed(&dribbler));
        let lived = start.elapsed();
        assert!(lived >= Duration::from_millis(700) && lived < Duration::from_millis(2000), "the dribbler lived {lived:?}");
        dribbling.join().unwrap();
    }

    #[test]
    fn a_full_pending_set_evicts_its_oldest_and_still_admits_a_peer() {
        let l = Listener::bind("127.0.0.1:0", Rules { hello_deadline: Duration::from_secs(30), ..rules() }).unwrap();
        let silent: Vec<TcpStream> = (0..10).map(|_| connect(&l)).collect();
        let mut peer = connect(&l);
        peer.write_all(b"HI sesame 1\n").unwrap();
        let asked = Instant::now();
        assert!(l.next_before(Instant::now() + Duration::from_secs(5)).is_some());
        assert!(asked.elapsed() < Duration::from_millis(500), "the peer waited {:?}", asked.elapsed());
        // The oldest silent ones were evicted long before their 30 s deadline.
        for s in &silent[..6] {
            assert!(closed(s));
        }
    }

    #[test]
    fn a_framed_hello_is_read_exactly_and_a_huge_length_is_refused_before_reading_it() {
        fn framed(b: &[u8]) -> Progress {
            if b.len() < 3 {
                return Progress::Need(3 - b.len());
            }
            let len = u16::from_be_bytes([b[1], b[2]]) as usize;
            if b[0] != b'H' {
                Progress::Bad
            } else if b.len() < 3 + len {
                Progress::Need(3 + len - b.len())
            } else {
                Progress::Complete(3..3 + len)
            }
        }
        let l = Listener::bind("127.0.0.1:0", Rules { framing: framed, ..rules() }).unwrap();
        let mut s = connect(&l);
        s.write_all(b"H\x00\x0bHI sesame 7\x01\x02").unwrap();
        let mut a = l.next_before(Instant::now() + Duration::from_secs(5)).expect("admitted");
        assert_eq!(a.words, ["7"]);
        let mut rest = [0u8; 2];
        a.stream.read_exact(&mut rest).unwrap();
        assert_eq!(rest, [1, 2]);
        let mut huge = connect(&l);
        huge.write_all(b"H\xff\xff").unwrap();
        assert!(closed(&huge), "65 KiB announced, {MAX_HELLO} allowed");
    }

    #[test]
    fn stopping_closes_pending_connections_and_ends_the_owners_wait() {
        let l = Listener::bind("127.0.0.1:0", Rules { hello_deadline: Duration::from_secs(30), ..rules() }).unwrap();
        let silent = connect(&l);
        let addr = l.local_addr();
        let stopper = l.stopper();
        let owner = std::thread::spawn(move || l.next().is_none());
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        stopper.stop();
        assert!(owner.join().unwrap(), "the owner's wait ends with nothing");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(closed(&silent));
        assert!(TcpStream::connect(addr).is_err(), "nothing listens any more");
    }

    /// CPU time this process has used (user and system), from its /proc/self/stat (opened
    /// before descriptors run out).
    fn cpu_time(file: &mut std::fs::File) -> Duration {
        use std::io::Seek;
        let mut stat = String::new();
        file.rewind().unwrap();
        file.read_to_string(&mut stat).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }

    #[test]
    fn out_of_descriptors_accepting_backs_off_and_recovers() {
        const CHILD: &str = "RANCH_LISTENER_TEST_EMFILE";
        // The descriptor limit is the process's: run alone, in a child.
        if std::env::var_os(CHILD).is_none() {
            let name = "net::listener::tests::out_of_descriptors_accepting_backs_off_and_recovers";
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--test-threads=1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            assert!(child.status.success(), "{}{}", String::from_utf8_lossy(&child.stdout), String::from_utf8_lossy(&child.stderr));
            return;
        }
        #[repr(C)]
        struct Rlimit {
            cur: u64,
            max: u64,
        }
        unsafe extern "C" {
            fn setrlimit(resource: std::ffi::c_int, limit: *const Rlimit) -> std::ffi::c_int;
        }
        const RLIMIT_NOFILE: std::ffi::c_int = 7;
        // SAFETY: a valid struct for the call's duration.
        assert_eq!(unsafe { setrlimit(RLIMIT_NOFILE, &Rlimit { cur: 256, max: 256 }) }, 0);
        let l = Listener::bind("127.0.0.1:0", rules()).unwrap();
        let mut peer = connect(&l);
        peer.write_all(b"HI sesame 1\n").unwrap();
        let mut stat = std::fs::File::open("/proc/self/stat").unwrap();
        let mut hogs = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            hogs.push(f);
        }
        let (cpu, wall) = (cpu_time(&mut stat), Instant::now());
        std::thread::sleep(Duration::from_secs(1));
        let used = cpu_time(&mut stat) - cpu;
        assert!(used < Duration::from_millis(300), "accepting used {used:?} of CPU in {:?}", wall.elapsed());
        drop(hogs);
        assert!(l.next_before(Instant::now() + Duration::from_secs(5)).is_some(), "the waiting peer is admitted");
    }

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd") && !same_secret(b"abc", b"ab") && !same_secret(b"", b"a"));
    }
}
