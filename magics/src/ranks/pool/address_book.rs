//! The address book of one `%%px` cell whose ranks run on several hosts: each rank that
//! joins the cell's group (`ranch::comm()`) says where it listens, and once every rank of
//! the cell has, each gets everyone's address and they connect to each other (the runtime's
//! TCP group). A rank that finishes the cell without joining ends the wait for the others
//! with a reason instead of a timeout.
//!
//! Bounds: the listener is ranch's [`Listener`] (a rank's line `RANCH-TCP1 <token> <rank>
//! <ip:port>` within one deadline in all, the token checked in constant time, strangers
//! closed on and never in a rank's way). Only the cell's ranks' connections are held, one
//! each.

use ranch::__rt::TCP_HELLO;
use ranch::__rt::listener::{Listener, Rules};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the book looks at ranks that finished, and whether it should stop, while no
/// rank connects.
const TICK: Duration = Duration::from_millis(20);

pub(super) struct AddressBook {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Group ranks that finished the cell.
    finished: Arc<Mutex<Vec<usize>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AddressBook {
    pub(super) fn start(ip: &str, world: usize, token: &str) -> Result<AddressBook, String> {
        let listener = Listener::bind((ip, 0), Rules::line(TCP_HELLO, token))
            .map_err(|e| format!("cannot listen on {ip} for the cell's group: {e}"))?;
        let port = listener.local_addr().port();
        let stop = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(Mutex::new(Vec::new()));
        let (s, f) = (stop.clone(), finished.clone());
        let thread = std::thread::Builder::new()
            .name("ranch-address-book".into())
            .spawn(move || serve(&listener, world, &s, &f))
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

fn serve(listener: &Listener, world: usize, stop: &AtomicBool, finished: &Mutex<Vec<usize>>) {
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
                let why = format!(
                    "ERR ranks {} of this cell's group finished the cell without joining it (without ranch::comm())\n",
                    ranks.join(", ")
                );
                for (_, s) in joined.iter_mut().flatten() {
                    let _ = s.write_all(why.as_bytes());
                }
                refusal = Some(why);
            }
        }
        let Some(admitted) = listener.next_before(Instant::now() + TICK) else { continue };
        let Some((rank, addr)) = rank_and_address(&admitted.words, world) else { continue };
        let mut s = admitted.stream;
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

/// `<rank> <ip:port>`, after the greeting and the token.
fn rank_and_address(words: &[String], world: usize) -> Option<(usize, SocketAddr)> {
    let [rank, addr] = words else { return None };
    Some((rank.parse().ok().filter(|&r: &usize| r < world)?, addr.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    fn ask(port: u16, line: &str) -> std::thread::JoinHandle<String> {
        let line = line.to_string();
        // A connection the book refused or reset (a stranger's, once both ranks are in and
        // the book closed) reads as no reply.
        std::thread::spawn(move || {
            let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
            if (&s).write_all(line.as_bytes()).is_err() {
                return String::new();
            }
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
