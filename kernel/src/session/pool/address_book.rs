//! The address book of one `%%px` cell whose ranks run on several hosts: each rank that
//! joins the cell's group (`ranch::comm()`) says where it listens, and once every rank of
//! the cell has, each gets everyone's address and they connect to each other (the runtime's
//! TCP group). A rank that finishes the cell without joining ends the wait for the others
//! with a reason instead of a timeout.
//!
//! Bounds: connections are read one at a time, each within 5 s: one line of at most 512
//! bytes with the cell's token (checked in constant time); strangers are closed on. Only
//! the cell's ranks' connections are held, one each.

use ranch::__rt::TCP_HELLO;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;

pub(super) struct AddressBook {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Group ranks that finished the cell.
    finished: Arc<Mutex<Vec<usize>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AddressBook {
    pub(super) fn start(ip: &str, world: usize, token: &str) -> Result<AddressBook, String> {
        let listener = TcpListener::bind((ip, 0)).map_err(|e| format!("cannot listen on {ip} for the cell's group: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(Mutex::new(Vec::new()));
        let (s, f, token) = (stop.clone(), finished.clone(), token.to_string());
        let thread = std::thread::Builder::new()
            .name("ranch-address-book".into())
            .spawn(move || serve(listener, world, &token, &s, &f))
            .map_err(|e| e.to_string())?;
        Ok(AddressBook { port, stop, finished, thread: Some(thread) })
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// Group rank `rank` returned from the cell.
    pub(super) fn mark_finished(&self, rank: usize) {
        self.finished.lock().unwrap_or_else(|e| e.into_inner()).push(rank);
    }
}

impl Drop for AddressBook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, world: usize, token: &str, stop: &AtomicBool, finished: &Mutex<Vec<usize>>) {
    let mut joined: Vec<Option<(SocketAddr, TcpStream)>> = (0..world).map(|_| None).collect();
    // Once a rank finished without joining, every rank that joins (then or later: its
    // connection may still wait to be accepted) is told so, until the cell ends.
    let mut refusal: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        if refusal.is_none() && joined.iter().all(Option::is_some) {
            let addrs: Vec<String> = joined.iter().flatten().map(|(a, _)| a.to_string()).collect();
            let reply = format!("OK {}\n", addrs.join(" "));
            for (_, s) in joined.iter_mut().flatten() {
                let _ = s.write_all(reply.as_bytes());
            }
            return;
        }
        if refusal.is_none() {
            let gone: Vec<usize> =
                finished.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().filter(|&r| r < world && joined[r].is_none()).collect();
            if !gone.is_empty() {
                let ranks: Vec<String> = gone.iter().map(usize::to_string).collect();
                let why = format!("ERR ranks {} of this cell's group finished the cell without joining it (without ranch::comm())\n", ranks.join(", "));
                for (_, s) in joined.iter_mut().flatten() {
                    let _ = s.write_all(why.as_bytes());
                }
                refusal = Some(why);
            }
        }
        match listener.accept() {
            Ok((mut s, _)) => {
                if let Some((rank, addr)) = hello(&s, token, world) {
                    match &refusal {
                        Some(why) => {
                            let _ = s.write_all(why.as_bytes());
                            // Kept open until the cell ends: closing at once could reset the reply.
                            joined.push(Some((addr, s)));
                        }
                        None if joined[rank].is_none() => joined[rank] = Some((addr, s)),
                        None => {}
                    }
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// `RANCH-TCP1 <token> <rank> <ip:port>`, read within 5 s.
fn hello(s: &TcpStream, token: &str, world: usize) -> Option<(usize, SocketAddr)> {
    s.set_nonblocking(false).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut line = String::new();
    BufReader::new(s.take(512)).read_line(&mut line).ok()?;
    let mut w = line.split_whitespace();
    if w.next()? != TCP_HELLO || !bool::from(w.next()?.as_bytes().ct_eq(token.as_bytes())) {
        return None;
    }
    let rank = w.next()?.parse().ok().filter(|&r: &usize| r < world)?;
    let addr = w.next()?.parse().ok()?;
    Some((rank, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(port: u16, line: &str) -> std::thread::JoinHandle<String> {
        let line = line.to_string();
        std::thread::spawn(move || {
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            (&s).write_all(line.as_bytes()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut reply = String::new();
            let _ = BufReader::new(&s).read_line(&mut reply);
            reply
        })
    }

    #[test]
    fn every_rank_gets_every_address_and_strangers_get_nothing() {
        let book = AddressBook::start("127.0.0.1", 2, "tok").unwrap();
        let stranger = ask(book.port(), "RANCH-TCP1 wrong 0 10.0.0.9:1\n");
        let one = ask(book.port(), "RANCH-TCP1 tok 1 10.0.0.2:7\n");
        let zero = ask(book.port(), "RANCH-TCP1 tok 0 10.0.0.1:5\n");
        assert_eq!(zero.join().unwrap(), "OK 10.0.0.1:5 10.0.0.2:7\n");
        assert_eq!(one.join().unwrap(), "OK 10.0.0.1:5 10.0.0.2:7\n");
        assert_eq!(stranger.join().unwrap(), "");
    }

    #[test]
    fn a_rank_that_finished_without_joining_ends_the_wait() {
        let book = AddressBook::start("127.0.0.1", 3, "tok").unwrap();
        let zero = ask(book.port(), "RANCH-TCP1 tok 0 10.0.0.1:5\n");
        std::thread::sleep(Duration::from_millis(100));
        book.mark_finished(2);
        assert!(zero.join().unwrap().starts_with("ERR ranks 2 of this cell's group finished the cell without joining it"));
        // A rank that joins later hears the same.
        assert!(ask(book.port(), "RANCH-TCP1 tok 1 10.0.0.2:7\n").join().unwrap().starts_with("ERR ranks 2"));
    }
}
