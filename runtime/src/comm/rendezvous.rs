//! A rank's link to the kernel's rendezvous service at `MASTER_ADDR:MASTER_PORT`.
//!
//! The rank announces itself as soon as it starts ([`announce`]), whether or not the cell
//! ever uses the group, and keeps the connection for its whole life: when it closes, the
//! service marks the rank as gone, so collectives waiting for it fail at once instead of
//! waiting for the timeout. A rank that returns from the cell says so first ([`finish`]),
//! so a waiting rank learns that it finished without joining rather than that it died.
//! [`join`] reads the service's answer (the shared-memory segment) when the cell first
//! uses the group.

use super::shm::Group;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// First line a rank sends: `RANCH1 <token> <rank>`.
pub const HELLO: &str = "RANCH1";
/// Line a rank sends when it returns from the cell.
pub const DONE: &str = "DONE";

/// The connection, once open; `replied` once the service's answer was read.
struct Link {
    stream: TcpStream,
    replied: bool,
}

static LINK: Mutex<Option<Link>> = Mutex::new(None);

/// `MASTER_ADDR:MASTER_PORT` for messages, and every address it resolves to (an IPv6
/// literal such as `::1`, a host name).
fn target() -> Result<(String, Vec<SocketAddr>), String> {
    let addr = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
    let port: u16 = std::env::var("MASTER_PORT")
        .map_err(|_| "MASTER_PORT is not set".to_string())?
        .parse()
        .map_err(|_| "MASTER_PORT is not a port number".to_string())?;
    let shown = format!("{addr}:{port}");
    let addrs = (addr.as_str(), port).to_socket_addrs().map_err(|e| format!("rendezvous address {shown}: {e}"))?;
    Ok((shown, addrs.collect()))
}

/// The first of `addrs` that accepts a connection.
fn connect_any(addrs: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the address resolves to nothing");
    for a in addrs {
        match TcpStream::connect_timeout(a, Duration::from_secs(2)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn hello(stream: &TcpStream, token: &str, rank: usize) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut w = stream;
    writeln!(w, "{HELLO} {token} {rank}")
}

/// Opens the link at rank start, without waiting for the answer. Best effort: if the
/// service cannot be reached yet (another kernel hosts it and has not started), [`join`]
/// tries again, for longer.
pub fn announce(token: &str, rank: usize) {
    let Ok((_, addrs)) = target() else { return };
    let Ok(stream) = connect_any(&addrs) else { return };
    if hello(&stream, token, rank).is_ok() {
        *LINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(Link { stream, replied: false });
    }
}

/// Tells the service this rank returned from the cell (it is about to exit normally).
pub fn finish() {
    let mut guard = LINK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(link) = guard.as_mut() else { return };
    if !link.replied {
        // Read the answer first: closing a socket with unread data resets the connection,
        // and the reset could overtake `DONE`.
        let _ = link.stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = String::new();
        let _ = BufReader::new((&link.stream).take(4096)).read_line(&mut reply);
        link.replied = true;
    }
    let _ = writeln!(link.stream, "{DONE}");
    let _ = link.stream.shutdown(std::net::Shutdown::Write);
}

/// Says [`finish`] and closes the link: the cell that opened it has ended (a pool's).
pub fn close() {
    finish();
    *LINK.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Joins the group: the service's answer names the shared-memory segment. A connection
/// closed without an answer is tried again (the service drops the oldest unannounced
/// connections when strangers crowd it), until the deadline.
pub fn join(token: &str, rank: usize, world: usize) -> Result<Group, String> {
    join_at(target()?, token, rank, world)
}

/// [`join`] with the service at `target` (its name for messages, and its addresses).
pub fn join_at((target, addrs): (String, Vec<SocketAddr>), token: &str, rank: usize, world: usize) -> Result<Group, String> {
    // The service may belong to another kernel that is still starting its ranks.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut guard = LINK.lock().unwrap_or_else(|e| e.into_inner());
    let reply = loop {
        if guard.as_ref().is_none_or(|l| l.replied) {
            let stream = match connect_any(&addrs) {
                Ok(s) => s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("rank {rank} cannot reach the rendezvous service at {target}: {e}"));
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            hello(&stream, token, rank).map_err(|e| format!("rendezvous at {target}: {e}"))?;
            *guard = Some(Link { stream, replied: false });
        }
        let link = guard.as_mut().expect("set above");
        link.replied = true;
        let reader = link.stream.try_clone().map_err(|e| e.to_string())?;
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        reader.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        // The answer is one short line; a longer one is not from a ranch service.
        let mut reply = String::new();
        let read = BufReader::new(reader.take(4096)).read_line(&mut reply);
        let _ = link.stream.set_read_timeout(None);
        match read {
            Ok(_) if !reply.is_empty() => break reply,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(_) => break reply,
            Err(e) => return Err(format!("rendezvous at {target}: {e}")),
        }
    };
    let mut parts = reply.split_whitespace();
    match parts.next() {
        Some("OK") => {
            let path = parts.next().ok_or("rendezvous reply without a segment")?;
            let group_world: usize = parts.next().and_then(|w| w.parse().ok()).ok_or("rendezvous reply without a world size")?;
            if group_world != world {
                return Err(format!("this rank was told WORLD_SIZE={world} but the group has {group_world} ranks"));
            }
            Group::open(path, rank, world)
        }
        _ => Err(format!("the rendezvous service at {target} refused rank {rank}: {}", reply.trim())),
    }
}
