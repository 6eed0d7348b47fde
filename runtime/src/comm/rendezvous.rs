//! Joining the launch's group through the kernel's rendezvous service at
//! `MASTER_ADDR:MASTER_PORT`: present the launch's token, get the shared-memory segment.
//! The connection stays open for the life of the rank: when it closes, the service marks
//! the rank as gone, so ranks waiting for it fail instead of hanging.

use super::shm::Group;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// First line a rank sends: `RANCH1 <token> <rank>`.
pub const HELLO: &str = "RANCH1";

pub fn join(token: &str, rank: usize, world: usize) -> Result<Group, String> {
    let addr = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("MASTER_PORT").map_err(|_| "MASTER_PORT is not set".to_string())?;
    let target = format!("{addr}:{port}");
    // The service may belong to another kernel that is still starting its ranks.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        match TcpStream::connect(&target) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("rank {rank} cannot reach the rendezvous service at {target}: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    writeln!(writer, "{HELLO} {token} {rank}").map_err(|e| format!("rendezvous at {target}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(|e| format!("rendezvous at {target}: {e}"))?;
    let _ = stream.set_read_timeout(None);
    let mut parts = reply.split_whitespace();
    match parts.next() {
        Some("OK") => {
            let path = parts.next().ok_or("rendezvous reply without a segment")?;
            let group_world: usize = parts.next().and_then(|w| w.parse().ok()).ok_or("rendezvous reply without a world size")?;
            if group_world != world {
                return Err(format!("this rank was told WORLD_SIZE={world} but the group has {group_world} ranks"));
            }
            Group::open(path, rank, world, stream)
        }
        _ => Err(format!("the rendezvous service at {target} refused rank {rank}: {}", reply.trim())),
    }
}
