//! The coordination service of a launch: the shared-memory segment the ranks' collectives
//! use, and a rendezvous listener at `MASTER_ADDR:MASTER_PORT` that hands the segment to
//! ranks presenting the launch's secret token. Strangers get nothing: their connection is
//! closed without a reply. A rank's connection stays open while it lives; when the rank
//! says it finished, or the connection closes, the rank is marked as gone, so collectives
//! waiting for it fail at once.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Environment a launch gives its ranks: the group's token, the collective timeout.
pub use ranch::__rt::{TIMEOUT_ENV, TOKEN_ENV};

pub struct GroupService {
    segment: PathBuf,
    addr: String,
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
    token_file: Option<PathBuf>,
}

/// A fresh secret for one launch.
pub fn new_token() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a group hosted on `port` publishes its token for other kernels of the same user.
pub fn token_path(port: u16) -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache"));
    base.join("ranch").join("groups").join(format!("{port}.token"))
}

impl GroupService {
    /// Creates the segment for `world` ranks and starts listening on `port` (`None`: a
    /// free port, see [`port`](Self::port)). With `publish`, the token is also written
    /// (mode 0600) where other kernels of this user can read it.
    pub fn start(addr: &str, port: Option<u16>, world: usize, token: &str, publish: bool) -> Result<GroupService, String> {
        let listener = TcpListener::bind((addr, port.unwrap_or(0)))
            .map_err(|e| format!("cannot listen on {addr}:{}: {e}", port.map_or("<any port>".into(), |p| p.to_string())))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let segment = PathBuf::from(format!("/dev/shm/ranch-{}-{token}", std::process::id()));
        let seg = segment.to_string_lossy().into_owned();
        ranch::__rt::group::create(&seg, world).map_err(|e| format!("cannot create the shared-memory segment {seg}: {e}"))?;
        let file = File::options().write(true).open(&segment).map_err(|e| e.to_string())?;
        let file = Arc::new(file);
        let stop = Arc::new(AtomicBool::new(false));
        let token_file = if publish {
            let path = token_path(port);
            write_private(&path, token).map_err(|e| format!("cannot publish the group token at {}: {e}", path.display()))?;
            Some(path)
        } else {
            None
        };
        let accept = {
            let (stop, token, seg) = (stop.clone(), token.to_string(), seg.clone());
            std::thread::Builder::new()
                .name("ranch-rendezvous".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(conn) = conn else { continue };
                        let (token, seg, file) = (token.clone(), seg.clone(), file.clone());
                        std::thread::spawn(move || serve_rank(conn, &token, &seg, world, &file));
                    }
                })
                .map_err(|e| e.to_string())?
        };
        Ok(GroupService { segment, addr: addr.to_string(), port, stop, accept: Some(accept), token_file })
    }

    pub fn segment(&self) -> &Path {
        &self.segment
    }

    /// The port it listens on (`MASTER_PORT`).
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(path.parent().expect("has parent"))?;
    let mut f = File::options().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}

/// Longest line a rank sends (the hello, `DONE`); anything longer is not a rank's.
const MAX_LINE: u64 = 256;

fn serve_rank(conn: TcpStream, token: &str, segment: &str, world: usize, file: &File) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    if (&mut reader).take(MAX_LINE).read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (Some(hello), Some(theirs), Some(rank)) = (parts.next(), parts.next(), parts.next()) else { return };
    let rank = match rank.parse::<usize>() {
        Ok(r) if hello == ranch::__rt::group::HELLO && theirs == token && r < world => r,
        // A stranger, or a rank of another launch: nothing is sent back.
        _ => return,
    };
    let mut writer = &conn;
    if writeln!(writer, "OK {segment} {world}").is_err() {
        let _ = ranch::__rt::group::mark_exited(file, rank, false);
        return;
    }
    let _ = conn.set_read_timeout(None);
    // The rank keeps the connection until it exits; then it is gone for the group. It
    // says `DONE` first when it returned from the cell.
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.trim() == ranch::__rt::group::DONE => {
                let _ = ranch::__rt::group::mark_exited(file, rank, true);
                return;
            }
            Ok(_) => {}
        }
    }
    let _ = ranch::__rt::group::mark_exited(file, rank, false);
}

impl Drop for GroupService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect_timeout(
            &format!("{}:{}", self.addr, self.port).parse().unwrap_or_else(|_| ([127, 0, 0, 1], self.port).into()),
            Duration::from_millis(200),
        );
        if let Some(t) = self.accept.take() {
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

    fn hello(port: u16, line: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        writeln!(s, "{line}").unwrap();
        let mut reply = String::new();
        let _ = BufReader::new(&s).read_line(&mut reply);
        reply
    }

    #[test]
    fn only_ranks_with_the_token_get_the_segment() {
        let token = new_token();
        let svc = GroupService::start("127.0.0.1", None, 2, &token, false).unwrap();
        let port = svc.port();
        assert!(svc.segment().exists());
        assert_eq!(hello(port, "RANCH1 wrong 0"), "");
        assert_eq!(hello(port, "GET / HTTP/1.0"), "");
        assert_eq!(hello(port, &format!("RANCH1 {token} 7")), "");
        let ok = hello(port, &format!("RANCH1 {token} 1"));
        assert!(ok.starts_with("OK /dev/shm/ranch-") && ok.trim_end().ends_with(" 2"), "{ok}");
        let seg = svc.segment().to_path_buf();
        drop(svc);
        assert!(!seg.exists(), "the segment is removed with the service");
    }
}
