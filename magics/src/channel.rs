//! The channel between the kernel and the ranks of one launch, over TCP: shipped variables
//! go out, results and panic reports come in, so a launch needs no directory that the
//! ranks' hosts share with the kernel. Received files land in the launch's run directory
//! under the names the rest of the driver reads (`rank-<i>.result`, `rank-<i>.panic`).
//!
//! One request per connection, started by a line `RANCH-CHANNEL1 <token> <request>`:
//! - `GET <name>`: answered `OK <len>\n` and the bytes of `vars/<name>.bin`, or `ERR <why>\n`;
//! - `PROGRAM`: the same with the rank program, when the launch ships it (`crate::ranks::launch::ship`);
//! - `ARRAY <name>`: the same with the file of this kernel's shared array `name`, for ranks
//!   on other hosts to make their host's copy (the runtime's `shared::host_copy`);
//! - `PUT result|panic|exit <index> <len>`, then the bytes: answered `OK\n` once on disk
//!   (`exit`: the rank's process exited before its cell returned).
//!
//! A pool on other hosts has a channel of its own that serves only `ARRAY`
//! ([`Channel::arrays_only`]), under a token its ranks get in [`CHANNEL_TOKEN_ENV`].
//!
//! A stranger gets nothing: the request line is the hello of a
//! [`Listener`](ranch::__rt::listener::Listener), which closes on a wrong token without a
//! reply and bounds what strangers hold (one deadline of [`HELLO_TIMEOUT`] in all for the
//! request line of at most [`MAX_LINE`] bytes, a bounded set of pending connections).
//! Admitted requests: [`MAX_CONNECTIONS`] served at once (more are closed at once, and the
//! rank asks again), [`IDLE_TIMEOUT`] between bytes of a body, a body of at most
//! [`MAX_RESULT`] bytes (streamed to disk, never held in memory), one result per rank (a
//! later panic report replaces an earlier one).

use ranch::__rt::listener::{Admitted, Listener, Rules, Stopper};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use ranch::__rt::{CHANNEL_ENV, CHANNEL_HELLO, CHANNEL_TOKEN_ENV};

pub const MAX_CONNECTIONS: usize = 64;
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_LINE: usize = 256;
/// Largest result a rank may send (`RANCH_MAX_RESULT_MIB` changes it).
pub const MAX_RESULT: u64 = 4 << 30;

/// The kernel's end of the channel of one launch; stops when dropped.
pub struct Channel {
    addr: String,
    stop: Stopper,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    /// Where shipped variables are and results land (`None`: a channel that serves only
    /// the session's shared arrays, see [`Channel::arrays_only`]).
    run_dir: Option<PathBuf>,
    /// The rank program, for ranks on hosts that cannot read it here.
    program: Option<PathBuf>,
    ranks: usize,
    max_body: u64,
    open: AtomicUsize,
    /// (kind, index) already received.
    received: Mutex<std::collections::HashSet<(String, usize)>>,
}

impl Channel {
    /// Listens on `ip` (a free port) for the `ranks` ranks of the launch whose run
    /// directory is `run_dir`, serving `program` to ranks that ask for it.
    pub fn start(ip: &str, token: &str, run_dir: &Path, ranks: usize, program: Option<&Path>) -> Result<Channel, String> {
        Channel::listen(ip, token, Some(run_dir), ranks, program)
    }

    /// A channel that serves only the session's shared arrays (`ARRAY`): a pool's ranks on
    /// other hosts make their host's copies from it. Its token is not the pool's, which
    /// the ranks never see.
    pub fn arrays_only(ip: &str, token: &str) -> Result<Channel, String> {
        Channel::listen(ip, token, None, 0, None)
    }

    fn listen(ip: &str, token: &str, run_dir: Option<&Path>, ranks: usize, program: Option<&Path>) -> Result<Channel, String> {
        let rules = Rules { max_hello: MAX_LINE, hello_deadline: HELLO_TIMEOUT, ..Rules::line(CHANNEL_HELLO, token) };
        let listener = Listener::bind((ip, 0), rules).map_err(|e| format!("cannot listen on {ip} for the ranks' channel: {e}"))?;
        let addr = match listener.local_addr() {
            std::net::SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            a => a.to_string(),
        };
        let max_body = std::env::var("RANCH_MAX_RESULT_MIB").ok().and_then(|m| m.parse::<u64>().ok()).map_or(MAX_RESULT, |m| m << 20);
        let shared = Arc::new(Shared {
            run_dir: run_dir.map(Path::to_path_buf),
            program: program.map(Path::to_path_buf),
            ranks,
            max_body,
            open: AtomicUsize::new(0),
            received: Mutex::default(),
        });
        let stop = listener.stopper();
        let thread = std::thread::Builder::new()
            .name("ranch-channel".into())
            .spawn(move || dispatch(&listener, &shared))
            .map_err(|e| format!("cannot start the ranks' channel: {e}"))?;
        Ok(Channel { addr, stop, thread: Some(thread) })
    }

    /// `host:port`, for [`CHANNEL_ENV`].
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves each admitted request on a thread of its own, at most [`MAX_CONNECTIONS`] at once
/// (more are closed at once), until the listener stops.
fn dispatch(listener: &Listener, shared: &Arc<Shared>) {
    while let Some(request) = listener.next() {
        if shared.open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.open.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped: closed at once
        }
        let counted = shared.clone();
        let spawned = std::thread::Builder::new().name("ranch-channel-conn".into()).spawn(move || {
            serve(&counted, request);
            counted.open.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            shared.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn serve(shared: &Shared, Admitted { stream, words, .. }: Admitted) {
    let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
    let out = &stream;
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let reply = match words.as_slice() {
        ["GET", name] => return send_variable(shared, name, out),
        ["PROGRAM"] => {
            let file = shared.program.as_ref().map(std::fs::File::open);
            return send_file(file, "this launch ships no program", out);
        }
        ["ARRAY", name] => {
            let missing =
                format!("no shared array `{name}` in the session (make it with `%ranch_share {name}` or `ranch::shared::Array::create`)");
            return send_file(Some(shared_array(name)), &missing, out);
        }
        ["PUT", kind @ ("result" | "panic" | "exit"), index, len] => {
            let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
            receive(shared, kind, index, len, &stream)
        }
        _ => Err("unknown request".to_string()),
    };
    let mut out = out;
    let _ = match reply {
        Ok(()) => out.write_all(b"OK\n"),
        Err(why) => out.write_all(format!("ERR {why}\n").as_bytes()),
    };
}

fn send_variable(shared: &Shared, name: &str, out: &TcpStream) {
    let valid = !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_alphanumeric() || c == '_');
    let file = shared.run_dir.as_ref().filter(|_| valid).map(|dir| std::fs::File::open(dir.join("vars").join(format!("{name}.bin"))));
    send_file(file, &format!("no variable {name:?} was shipped"), out);
}

/// This kernel's shared array `name`: a file of this user's own, never a link.
fn shared_array(name: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = ranch::__rt::shared_array_file(name).map_err(std::io::Error::other)?;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits()).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(std::io::Error::other("not an array of this user's"));
    }
    Ok(file)
}

/// `OK <len>` and the file's bytes, or `ERR <missing>`.
fn send_file(file: Option<std::io::Result<std::fs::File>>, missing: &str, mut out: &TcpStream) {
    match file {
        Some(Ok(mut f)) => {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if out.write_all(format!("OK {len}\n").as_bytes()).is_ok() {
                let _ = std::io::copy(&mut (&mut f).take(len), &mut out);
            }
        }
        _ => {
            let _ = out.write_all(format!("ERR {missing}\n").as_bytes());
        }
    }
}

fn receive(shared: &Shared, kind: &str, index: &str, len: &str, body: impl Read) -> Result<(), String> {
    let Some(run_dir) = &shared.run_dir else { return Err("this channel takes no results".to_string()) };
    let index: usize = index.parse().map_err(|_| "bad rank")?;
    let len: u64 = len.parse().map_err(|_| "bad length")?;
    if index >= shared.ranks {
        return Err(format!("no rank {index} in this launch"));
    }
    if len > shared.max_body {
        return Err(format!("{len} bytes is more than the {} MiB a rank may send (RANCH_MAX_RESULT_MIB)", shared.max_body >> 20));
    }
    // A rank's later panic report replaces its earlier one (a caught panic, then the one
    // that ended it); its result comes once.
    if kind == "result" && !shared.received.lock().unwrap().insert((kind.to_string(), index)) {
        return Err(format!("rank {index} sent its {kind} already"));
    }
    let path = match kind {
        "result" => ranch::__rt::result_path(run_dir, index),
        "exit" => ranch::__rt::exit_path(run_dir, index),
        _ => ranch::__rt::panic_path(run_dir, index),
    };
    // Each request its own file: two threads of a rank may panic at once.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let tmp = path.with_extension(format!("partial{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        let copied = std::io::copy(&mut body.take(len), &mut file)?;
        if copied != len {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("{copied} of {len} bytes came")));
        }
        std::fs::rename(&tmp, &path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot take rank {index}'s {kind}: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ranch-channel-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(d.join("vars")).unwrap();
        d
    }

    fn rand_suffix() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    }

    fn request(addr: &str, line: &str, body: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(line.as_bytes());
        let _ = s.write_all(body);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    }

    #[test]
    fn variables_out_results_in_strangers_nothing() {
        let d = dir();
        std::fs::write(d.join("vars/x.bin"), b"\x01\x02\x03").unwrap();
        let ch = Channel::start("127.0.0.1", "tok", &d, 2, None).unwrap();
        let a = ch.addr().to_string();
        assert_eq!(request(&a, "RANCH-CHANNEL1 tok GET x\n", b""), "OK 3\n\x01\x02\x03");
        assert!(request(&a, "RANCH-CHANNEL1 tok GET ../x\n", b"").starts_with("ERR"));
        assert_eq!(request(&a, "RANCH-CHANNEL1 wrong GET x\n", b""), "", "a stranger gets no byte");
        assert_eq!(request(&a, "RANCH-CHANNEL1 tok PUT result 1 5\n", b"hello"), "OK\n");
        assert_eq!(std::fs::read(ranch::__rt::result_path(&d, 1)).unwrap(), b"hello");
        assert!(request(&a, "RANCH-CHANNEL1 tok PUT result 1 5\n", b"again").contains("already"));
        assert!(request(&a, "RANCH-CHANNEL1 tok PUT result 2 1\n", b"x").contains("no rank 2"));
        assert!(request(&a, &format!("RANCH-CHANNEL1 tok PUT panic 0 {}\n", MAX_RESULT + 1), b"").contains("MiB"));
        // A body cut short leaves no result behind.
        assert!(request(&a, "RANCH-CHANNEL1 tok PUT panic 0 10\n", b"abc").starts_with("ERR"));
        assert!(
            !ranch::__rt::panic_path(&d, 0).exists()
                && !std::fs::read_dir(&d).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains("partial"))
        );
        assert_eq!(request(&a, "RANCH-CHANNEL1 tok PUT panic 1 5\n", b"first"), "OK\n");
        assert_eq!(request(&a, "RANCH-CHANNEL1 tok PUT panic 1 4\n", b"last"), "OK\n");
        assert_eq!(std::fs::read(ranch::__rt::panic_path(&d, 1)).unwrap(), b"last", "the last panic is the one that counts");
        let long = "x".repeat(MAX_LINE * 4);
        assert_eq!(request(&a, &long, b""), "");
        drop(ch);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn an_arrays_only_channel_serves_arrays_and_nothing_else() {
        let ch = Channel::arrays_only("127.0.0.1", "arr").unwrap();
        let a = ch.addr().to_string();
        assert!(request(&a, "RANCH-CHANNEL1 arr ARRAY nosuch\n", b"").starts_with("ERR no shared array `nosuch`"));
        assert!(request(&a, "RANCH-CHANNEL1 arr GET x\n", b"").starts_with("ERR no variable"));
        assert!(request(&a, "RANCH-CHANNEL1 arr PROGRAM\n", b"").starts_with("ERR"));
        assert_eq!(request(&a, "RANCH-CHANNEL1 arr PUT result 0 5\n", b"hello"), "ERR this channel takes no results\n");
        assert_eq!(request(&a, "RANCH-CHANNEL1 other ARRAY x\n", b""), "", "a stranger gets no byte");
    }
}
