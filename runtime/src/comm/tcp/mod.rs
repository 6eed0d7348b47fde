//! Collectives over TCP, for a pool's cell whose ranks run on several hosts (where the
//! kernel's shared memory is not).
//!
//! The ranks learn each other's addresses from the kernel's address book for the cell
//! ([`join`]), then connect in a full mesh: each rank connects to every lower rank and
//! accepts every higher one, each connection opened with the cell's token. Collectives go
//! through group rank 0: every rank sends it what it calls (a [`Desc`]) and its data; rank 0
//! checks that every rank called the same thing, combines in rank order (so every run gives
//! the same floating-point result) and sends the result back, or the same error to every
//! rank. `send`/`recv` go straight to the peer. Messages carry a kind, so a point-to-point
//! message that arrives while a collective is awaited is kept for the `recv` that wants it.
//!
//! Bounds: each rank's listener is ranch's [`Listener`] (a total deadline per hello, the
//! token compared in constant time, strangers never in a peer's way); every read waits at most the collective timeout; a message's length is checked
//! against what was agreed (collectives) or [`MAX_MESSAGE`]; a peer that closes its link
//! (it finished the cell, or died) fails the operation with its rank.

mod hosts;

use super::call::{Desc, Kind, kind_of, mismatch, type_code, type_tag};
use super::error::CommError;
use super::reduce::{Op, Reduce};
use crate::net::listener::{Listener, Rules};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// First word of a rank's line to the address book, and of each mesh connection.
pub const HELLO: &str = "RANCH-TCP1";
/// Largest point-to-point message.
const MAX_MESSAGE: u64 = 16 << 30;
/// Most bytes of a message set aside before they arrive.
const PREALLOCATE: usize = 64 << 20;
const COLLECTIVE: u8 = b'C';
const POINT: u8 = b'P';

struct Peer {
    stream: TcpStream,
    /// Point-to-point messages that came while a collective was awaited.
    kept: VecDeque<Vec<u8>>,
}

pub struct Group {
    rank: usize,
    world: usize,
    /// By group rank; `None` for this rank.
    peers: Vec<Option<Mutex<Peer>>>,
    /// Set once an operation failed: the links may hold half a message.
    broken: Mutex<Option<String>>,
    /// The ranks on this host and the hosts' leaders: formed at the first `map` or large
    /// collective (`None` inside: some host could not).
    hosts: OnceLock<Option<hosts::Hosts>>,
}

fn timeout() -> Duration {
    super::collective_timeout()
}

/// Joins the cell's group: tells the address book at `book` where this rank listens, reads
/// everyone's addresses, and connects the mesh.
pub fn join(book: &str, token: &str, rank: usize, world: usize) -> Result<Group, String> {
    let deadline = Instant::now() + timeout();
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(book).map_err(|e| format!("address book {book}: {e}"))?.collect();
    let connect = || {
        addrs
            .iter()
            .find_map(|a| TcpStream::connect_timeout(a, Duration::from_secs(10)).ok())
            .ok_or_else(|| format!("rank {rank} cannot reach the cell's address book at {book}"))
    };
    let mut stream = connect()?;
    // Listen on the address this host reaches the kernel by: the other hosts reach it too.
    let me = stream.local_addr().map_err(|e| e.to_string())?.ip();
    // Peers connect with `HELLO <token> <their rank>`; their first message may follow at once,
    // and the listener reads nothing past the hello.
    let listener = Listener::bind((me, 0), Rules::line(HELLO, token)).map_err(|e| format!("cannot listen on {me}: {e}"))?;
    let mine = listener.local_addr();
    let hello = format!("{HELLO} {token} {rank} {mine}\n");
    let reply = loop {
        (&stream).write_all(hello.as_bytes()).map_err(|e| format!("address book {book}: {e}"))?;
        stream
            .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        let mut reply = String::new();
        match BufReader::new((&stream).take(64 << 10)).read_line(&mut reply) {
            Ok(_) if !reply.is_empty() => break reply,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(format!("the cell's group did not form: {e}"));
            }
            // Closed without a word: strangers crowding the book's listener evicted this
            // connection before its hello was read. Said again, until the deadline.
            _ if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
                stream = connect()?;
            }
            _ => break reply,
        }
    };
    let mut words = reply.split_whitespace();
    match words.next() {
        Some("OK") => {}
        Some("ERR") => return Err(words.collect::<Vec<_>>().join(" ")),
        _ => {
            return Err(format!(
                "the cell's address book at {book} did not answer (the group did not form within {:.0} s)",
                timeout().as_secs_f64()
            ));
        }
    }
    let everyone: Vec<SocketAddr> =
        words.map(|w| w.parse().map_err(|_| format!("bad address {w:?} from the address book"))).collect::<Result<_, _>>()?;
    if everyone.len() != world {
        return Err(format!("the address book names {} ranks, not {world}", everyone.len()));
    }
    let mut peers: Vec<Option<Mutex<Peer>>> = (0..world).map(|_| None).collect();
    for (r, addr) in everyone.iter().enumerate().take(rank) {
        let s = TcpStream::connect_timeout(addr, Duration::from_secs(10)).map_err(|e| format!("cannot reach rank {r} at {addr}: {e}"))?;
        (&s).write_all(format!("{HELLO} {token} {rank}\n").as_bytes()).map_err(|e| format!("rank {r}: {e}"))?;
        peers[r] = Some(Mutex::new(ready(s)?));
    }
    while peers.iter().enumerate().any(|(r, p)| r > rank && p.is_none()) {
        let Some(admitted) = listener.next_before(deadline) else {
            let missing: Vec<String> = (rank + 1..world).filter(|&r| peers[r].is_none()).map(|r| r.to_string()).collect();
            return Err(format!("ranks {} did not connect to rank {rank}", missing.join(", ")));
        };
        match admitted.words.first().and_then(|r| r.parse::<usize>().ok()) {
            Some(r) if r > rank && r < world && peers[r].is_none() => peers[r] = Some(Mutex::new(ready(admitted.stream)?)),
            _ => {}
        }
    }
    Ok(Group { rank, world, peers, broken: Mutex::new(None), hosts: OnceLock::new() })
}

fn ready(s: TcpStream) -> Result<Peer, String> {
    let _ = s.set_nodelay(true);
    // A peer's host that vanishes without a word fails the link within the timeout too.
    let _ = crate::net::keepalive::watch(&s, timeout());
    s.set_read_timeout(Some(timeout())).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout())).map_err(|e| e.to_string())?;
    Ok(Peer { stream: s, kept: VecDeque::new() })
}

fn bytes_of<T: Reduce>(buf: &[T]) -> &[u8] {
    // SAFETY: Reduce types are plain numbers: any byte pattern is a value.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), std::mem::size_of_val(buf)) }
}

fn bytes_of_mut<T: Reduce>(buf: &mut [T]) -> &mut [u8] {
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(buf)) }
}

/// What rank 0 sends back: the result, or why the operation failed (on every rank).
enum Answer {
    Result(Vec<u8>),
    Failed(Vec<usize>, String),
}

impl Group {
    fn lock(&self, r: usize) -> std::sync::MutexGuard<'_, Peer> {
        self.peers[r].as_ref().expect("a peer").lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ensure_usable(&self, op: &'static str) -> Result<(), CommError> {
        match self.broken.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(why) => Err(CommError::new(op, vec![self.rank], format!("the group broke earlier in this cell: {why}"))),
            None => Ok(()),
        }
    }

    /// Marks the group broken by `e` and returns it.
    fn fail(&self, e: CommError) -> CommError {
        *self.broken.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        e
    }

    fn link_error(&self, op: &'static str, r: usize, e: std::io::Error) -> CommError {
        let why = match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
                "rank {r} did not answer within {:.0} s (it skipped {op}, hangs, or its host is unreachable; set {} to wait longer)",
                timeout().as_secs_f64(),
                super::TIMEOUT_ENV
            ),
            _ => format!("rank {r} closed its link: it finished the cell without {op}, or its process ended ({e})"),
        };
        self.fail(CommError::new(op, vec![r], why))
    }

    fn write_message(&self, op: &'static str, to: usize, kind: u8, parts: &[&[u8]]) -> Result<(), CommError> {
        let mut peer = self.lock(to);
        write_framed(&mut peer.stream, kind, parts).map_err(|e| self.link_error(op, to, e))
    }

    /// The next message of `kind` from `from`, at most `limit` bytes (others are kept). With
    /// `keep_head`, a longer one of `kind` is not an error: its first `keep_head` bytes are
    /// returned and the rest is read and dropped (a rank that called another collective).
    fn read_message(&self, op: &'static str, from: usize, kind: u8, limit: u64, keep_head: Option<usize>) -> Result<Vec<u8>, CommError> {
        let mut peer = self.lock(from);
        self.read_from(op, from, &mut peer, kind, limit, keep_head)
    }

    /// [`read_message`](Self::read_message) from a peer whose lock the caller holds.
    fn read_from(
        &self,
        op: &'static str,
        from: usize,
        peer: &mut Peer,
        kind: u8,
        limit: u64,
        keep_head: Option<usize>,
    ) -> Result<Vec<u8>, CommError> {
        if kind == POINT {
            if let Some(m) = peer.kept.pop_front() {
                return Ok(m);
            }
        }
        loop {
            let mut head = [0u8; 9];
            peer.stream.read_exact(&mut head).map_err(|e| self.link_error(op, from, e))?;
            let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
            let allowed = if head[0] == kind { limit } else { MAX_MESSAGE };
            if !matches!(head[0], COLLECTIVE | POINT) || len > MAX_MESSAGE || (len > allowed && (head[0] != kind || keep_head.is_none())) {
                return Err(self.fail(CommError::new(
                    op,
                    vec![from],
                    format!("rank {from} sent a message of {len} bytes where at most {allowed} fit"),
                )));
            }
            let keep = if len > allowed { keep_head.unwrap_or(0).min(len as usize) } else { len as usize };
            // Grown as the bytes arrive past what is surely needed: a length is only a claim.
            let mut body = Vec::with_capacity(keep.min(PREALLOCATE));
            let got = (&mut peer.stream).take(keep as u64).read_to_end(&mut body).map_err(|e| self.link_error(op, from, e))?;
            if got != keep {
                return Err(self.link_error(op, from, std::io::ErrorKind::UnexpectedEof.into()));
            }
            let rest = len - keep as u64;
            if rest > 0 {
                let drained =
                    std::io::copy(&mut (&mut peer.stream).take(rest), &mut std::io::sink()).map_err(|e| self.link_error(op, from, e))?;
                if drained != rest {
                    return Err(self.link_error(op, from, std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            if head[0] == kind {
                return Ok(body);
            }
            peer.kept.push_back(body);
        }
    }

    /// One collective: every rank's description and data to rank 0, which answers each.
    /// `combine` (on rank 0) makes the answer from every rank's description and data.
    // The parts of one collective, as every caller names them; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn collective(
        &self,
        op: &'static str,
        desc: Desc,
        data: &[u8],
        limit: u64,
        ty: Option<&str>,
        lengths_differ: bool,
        combine: impl FnOnce(&[Desc], Vec<Vec<u8>>) -> Vec<u8>,
    ) -> Result<Vec<u8>, CommError> {
        self.ensure_usable(op)?;
        let desc_bytes: Vec<u8> = desc.iter().flat_map(|d| d.to_le_bytes()).collect();
        if self.rank != 0 {
            self.write_message(op, 0, COLLECTIVE, &[&desc_bytes, data])?;
            let answer = self.read_message(op, 0, COLLECTIVE, 1 + limit.max(1 << 20) + 8 * self.world as u64, None)?;
            return match decode_answer(&answer) {
                Some(Answer::Result(r)) => Ok(r),
                Some(Answer::Failed(ranks, why)) => Err(self.fail(CommError::new(op, ranks, why))),
                None => Err(self.fail(CommError::new(op, vec![0], "rank 0 sent an answer that does not decode".into()))),
            };
        }
        let mut descs = vec![desc];
        let mut datas = vec![data.to_vec()];
        for r in 1..self.world {
            // A rank that called another collective may send more: its description is kept.
            let m = match self.read_message(op, r, COLLECTIVE, 32 + limit, Some(32)) {
                Ok(m) => m,
                Err(e) => {
                    self.tell_all(&encode_failed(&e.ranks, &e.message));
                    return Err(e);
                }
            };
            let (d, rest) = m.split_at(32.min(m.len()));
            let d: Vec<u64> = d.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
            descs.push(if d.len() == 4 { [d[0], d[1], d[2], d[3]] } else { [u64::MAX; 4] });
            datas.push(rest.to_vec());
        }
        let shape = |d: &Desc| if lengths_differ { [d[0], d[1], 0, d[3]] } else { *d };
        let compared: Vec<Desc> = descs.iter().map(shape).collect();
        // Data whose length is not what its rank's description says is never combined.
        let short: Vec<usize> = (0..self.world).filter(|&r| !lengths_differ && datas[r].len() != data.len()).collect();
        let odd_data = (!short.is_empty()).then(|| (short, "these ranks sent data of another length than they described".to_string()));
        if let Some((odd, why)) = mismatch(op, 0, &shape(&desc), &compared, ty).or(odd_data) {
            self.tell_all(&encode_failed(&odd, &why));
            return Err(self.fail(CommError::new(op, odd, why)));
        }
        let result = combine(&descs, datas);
        let mut answer = vec![0u8];
        answer.extend_from_slice(&result);
        for r in 1..self.world {
            self.write_message(op, r, COLLECTIVE, &[&answer])?;
        }
        Ok(result)
    }

    /// Rank 0 tells every rank that the operation failed (best effort: some may be gone).
    fn tell_all(&self, answer: &[u8]) {
        for r in 1..self.world {
            let mut peer = self.lock(r);
            let mut head = [0u8; 9];
            head[0] = COLLECTIVE;
            head[1..].copy_from_slice(&(answer.len() as u64).to_le_bytes());
            let _ = peer.stream.write_all(&head).and_then(|_| peer.stream.write_all(answer));
        }
    }

    /// `map`'s next chunk from this host's counter (see `HostShare::claim`), the hosts
    /// formed at the first call (collective); `None` where they could not be.
    pub fn claim(&self, seq: u32, chunk: u32, len: u32) -> Result<Option<Option<u32>>, CommError> {
        Ok(self.hosts("map")?.map(|h| h.share.claim(seq, chunk, len)))
    }

    pub fn barrier(&self) -> Result<(), CommError> {
        self.collective("barrier", [Kind::Barrier as u64, 0, 0, 0], &[], 0, None, false, |_, _| Vec::new()).map(drop)
    }

    pub fn reduce<T: Reduce>(&self, buf: &mut [T], op: Op, root: Option<usize>) -> Result<(), CommError> {
        let name = if root.is_some() { "reduce" } else { "all_reduce" };
        let desc = [kind_of(name) as u64, type_code(T::NAME, Some(op)), buf.len() as u64, root.map_or(0, |r| r as u64 + 1)];
        if std::mem::size_of_val(buf) >= hosts::MIN_BYTES && self.reduce_by_hosts(name, desc, buf, op, root)? {
            return Ok(());
        }
        let n = buf.len();
        let result = self.collective(name, desc, bytes_of(buf), std::mem::size_of_val(buf) as u64, None, false, |_, datas| {
            let mut acc: Vec<T> = vec_of::<T>(&datas[0], n);
            for d in &datas[1..] {
                T::combine_slice(&mut acc, &vec_of::<T>(d, n), op);
            }
            bytes_of(&acc).to_vec()
        })?;
        let size = std::mem::size_of_val(buf);
        if root.is_none_or(|r| r == self.rank) {
            bytes_of_mut(buf).copy_from_slice(&result[..size]);
        }
        Ok(())
    }

    pub fn broadcast_slice<T: Reduce>(&self, buf: &mut [T], root: usize) -> Result<(), CommError> {
        const OP: &str = "broadcast_slice";
        let desc = [Kind::BroadcastSlice as u64, type_code(T::NAME, None), buf.len() as u64, root as u64 + 1];
        if std::mem::size_of_val(buf) >= hosts::MIN_BYTES && self.broadcast_by_hosts(OP, desc, buf, root)? {
            return Ok(());
        }
        let mine: &[u8] = if self.rank == root { bytes_of(buf) } else { &[] };
        let size = std::mem::size_of_val(buf);
        let result = self.collective(OP, desc, mine, size as u64, None, true, |_, mut datas| std::mem::take(&mut datas[root]))?;
        if result.len() != size {
            return Err(self.fail(CommError::new(OP, vec![root], format!("rank {root} sent {} bytes for {size}", result.len()))));
        }
        bytes_of_mut(buf).copy_from_slice(&result);
        Ok(())
    }

    pub fn all_gather_bytes(&self, op: &'static str, mine: &[u8], ty: &str) -> Result<Vec<Vec<u8>>, CommError> {
        let desc = [kind_of(op) as u64, type_tag(ty), mine.len() as u64, 0];
        let result = self.collective(op, desc, mine, MAX_MESSAGE, Some(ty), true, |_, datas| {
            let mut out: Vec<u8> = datas.iter().flat_map(|d| (d.len() as u64).to_le_bytes()).collect();
            datas.iter().for_each(|d| out.extend_from_slice(d));
            out
        })?;
        split_gathered(&result, self.world)
            .ok_or_else(|| self.fail(CommError::new(op, vec![0], "rank 0 sent a gathered value that does not decode".into())))
    }

    pub fn send_bytes(&self, bytes: &[u8], dest: usize) -> Result<(), CommError> {
        self.ensure_usable("send")?;
        if dest == self.rank {
            return Err(to_itself("send", dest));
        }
        self.write_message("send", dest, POINT, &[bytes])
    }

    pub fn recv_bytes(&self, src: usize) -> Result<Vec<u8>, CommError> {
        self.ensure_usable("recv")?;
        if src == self.rank {
            return Err(to_itself("recv", src));
        }
        self.read_message("recv", src, POINT, MAX_MESSAGE, None)
    }
}

/// One message: its kind, its length, then its parts.
fn write_framed(stream: &mut impl Write, kind: u8, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut head = [0u8; 9];
    head[0] = kind;
    head[1..].copy_from_slice(&(len as u64).to_le_bytes());
    stream.write_all(&head)?;
    for p in parts {
        stream.write_all(p)?;
    }
    stream.flush()
}

fn to_itself(op: &'static str, rank: usize) -> CommError {
    CommError::new(op, vec![rank], "a rank cannot send to or receive from itself".into())
}

fn vec_of<T: Reduce>(bytes: &[u8], n: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    // SAFETY: `bytes` holds n values of T (checked against the agreed length), and any bytes
    // are a valid T; the copy goes into the vector's spare capacity.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast::<u8>(), n * std::mem::size_of::<T>());
        v.set_len(n);
    }
    v
}

fn encode_failed(ranks: &[usize], why: &str) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&(ranks.len() as u64).to_le_bytes());
    ranks.iter().for_each(|r| out.extend_from_slice(&(*r as u64).to_le_bytes()));
    out.extend_from_slice(why.as_bytes());
    out
}

fn decode_answer(a: &[u8]) -> Option<Answer> {
    match a.first()? {
        0 => Some(Answer::Result(a[1..].to_vec())),
        1 => {
            let n = u64::from_le_bytes(a.get(1..9)?.try_into().ok()?) as usize;
            let ranks_end = 9usize.checked_add(n.checked_mul(8)?)?;
            let ranks = a.get(9..ranks_end)?.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8")) as usize).collect();
            Some(Answer::Failed(ranks, String::from_utf8_lossy(&a[ranks_end..]).into_owned()))
        }
        _ => None,
    }
}

fn split_gathered(bytes: &[u8], world: usize) -> Option<Vec<Vec<u8>>> {
    let lengths: Vec<usize> =
        bytes.get(..8 * world)?.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8")) as usize).collect();
    let mut rest = &bytes[8 * world..];
    let mut out = Vec::with_capacity(world);
    for l in lengths {
        if rest.len() < l {
            return None;
        }
        let (one, after) = rest.split_at(l);
        out.push(one.to_vec());
        rest = after;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A group of `n` ranks on threads, joined through a tiny address book.
    pub(super) fn groups(n: usize) -> Vec<Group> {
        let book = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = book.local_addr().unwrap().to_string();
        let serve = std::thread::spawn(move || {
            let mut conns: Vec<(usize, String, TcpStream)> = (0..n)
                .map(|_| {
                    let (s, _) = book.accept().unwrap();
                    let mut line = String::new();
                    BufReader::new(&s).read_line(&mut line).unwrap();
                    let w: Vec<&str> = line.split_whitespace().collect();
                    (w[2].parse().unwrap(), w[3].to_string(), s)
                })
                .collect();
            conns.sort_by_key(|c| c.0);
            let reply = format!("OK {}\n", conns.iter().map(|c| c.1.clone()).collect::<Vec<_>>().join(" "));
            for c in &conns {
                (&c.2).write_all(reply.as_bytes()).unwrap();
            }
        });
        let joins: Vec<_> = (0..n)
            .map(|r| {
                let at = at.clone();
                std::thread::spawn(move || join(&at, "tok", r, n).unwrap())
            })
            .collect();
        let g = joins.into_iter().map(|j| j.join().unwrap()).collect();
        serve.join().unwrap();
        g
    }

    pub(super) fn on_each<R: Send + 'static>(gs: Vec<Group>, f: impl Fn(&Group) -> R + Send + Sync + Copy + 'static) -> Vec<R> {
        let hs: Vec<_> = gs.into_iter().map(|g| std::thread::spawn(move || f(&g))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn a_rank_whose_hello_the_book_dropped_says_it_again() {
        let book = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = book.local_addr().unwrap().to_string();
        let serve = std::thread::spawn(move || {
            // The first connection is closed unread, as a crowded listener evicts one.
            drop(book.accept().unwrap());
            let (s, _) = book.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(format!("OK {}\n", line.split_whitespace().nth(3).unwrap()).as_bytes()).unwrap();
            line
        });
        let g = join(&at, "tok", 0, 1).unwrap();
        assert_eq!((g.rank, g.world), (0, 1));
        assert!(serve.join().unwrap().starts_with("RANCH-TCP1 tok 0 127.0.0.1:"));
    }

    #[test]
    fn collectives_and_messages_over_the_mesh() {
        let got = on_each(groups(3), |g| {
            let r = g.rank;
            let mut v = vec![r as f64 + 1.0; 1000];
            g.reduce(&mut v, Op::Sum, None).unwrap();
            let mut m = [r as i64];
            g.reduce(&mut m, Op::Max, Some(1)).unwrap();
            let mut b = [r as u32 * 7; 2];
            g.broadcast_slice(&mut b, 2).unwrap();
            let all = g.all_gather_bytes("all_gather", &vec![r as u8; r], "Vec<u8>").unwrap();
            g.barrier().unwrap();
            if r == 0 {
                g.send_bytes(b"to two", 2).unwrap();
            }
            let got = if r == 2 { g.recv_bytes(0).unwrap() } else { vec![] };
            (v[0], v[999], m[0], b, all, got)
        });
        for (r, (first, last, max, b, all, got)) in got.into_iter().enumerate() {
            assert_eq!((first, last), (6.0, 6.0));
            assert_eq!(max, if r == 1 { 2 } else { r as i64 }, "only the root gets a reduce's result");
            assert_eq!(b, [14, 14]);
            assert_eq!(all, vec![vec![], vec![1], vec![2, 2]]);
            assert_eq!(got, if r == 2 { b"to two".to_vec() } else { vec![] });
        }
    }

    #[test]
    fn different_calls_fail_on_every_rank_and_a_gone_rank_is_named() {
        let got = on_each(groups(2), |g| {
            let e = if g.rank == 0 { g.barrier().unwrap_err() } else { g.reduce(&mut [1.0f32], Op::Sum, None).unwrap_err() };
            (e.ranks.clone(), e.message.clone(), g.barrier().unwrap_err().message)
        });
        for (ranks, why, after) in got {
            assert_eq!(ranks, [1]);
            assert!(why.contains("different collectives"), "{why}");
            assert!(after.contains("broke earlier"), "{after}");
        }
        let mut gs = groups(2);
        let one = gs.pop().unwrap();
        drop(one);
        let e = gs[0].barrier().unwrap_err();
        assert_eq!(e.ranks, [1]);
        assert!(e.message.contains("closed its link"), "{}", e.message);
    }
}
