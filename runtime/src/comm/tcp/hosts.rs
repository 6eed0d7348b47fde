//! Large collectives of a TCP group (a pool's cell across hosts), by host: inside each host
//! through the host's shared memory, between hosts over TCP among one leader per host (its
//! first rank). All-reduce is a ring of the leaders (reduce-scatter, then all-gather), so
//! each leader sends and receives about twice the buffer whatever the number of hosts;
//! broadcast is a pipeline along the leaders, from the root's host. Either way one buffer
//! per host crosses the network, where the star through rank 0 moved every rank's buffer
//! through rank 0's links one after the other.
//!
//! The hosts are formed once per group, when a `map` or a large collective first needs them
//! (collective): the ranks tell each other their host, each host's first rank creates the
//! host's segment and tells its path, the others map it, and once all have, the name is
//! removed, so nothing is left in `/dev/shm` whatever then happens to the ranks.
//!
//! Every rank first says what it calls, through rank 0 without data (ranks that called
//! different collectives fail as on the star). A leader whose link to another host failed
//! tells its host's ranks so before they would wait for its data: every rank of the host
//! then fails with the rank that broke.

use super::{COLLECTIVE, Group, bytes_of, bytes_of_mut, vec_of, write_framed};
use crate::comm::call::Desc;
use crate::comm::error::CommError;
use crate::comm::host_share::{HostShare, host_key};
use crate::comm::reduce::{Op, Reduce};
use crate::comm::shm;
use std::net::Shutdown;

/// Smallest buffer that goes by host: below it the star's one round trip costs less.
pub(super) const MIN_BYTES: usize = 256 << 10;
/// A broadcast's pipeline step between leaders.
const PIPE_BYTES: usize = 4 << 20;

pub(super) struct Hosts {
    pub share: HostShare,
    /// This host's ranks (global), by their rank on the host.
    ranks: Vec<usize>,
    /// Each host's leader (global rank), by host index.
    leaders: Vec<usize>,
    /// Each rank's host index and rank on its host.
    place: Vec<(usize, usize)>,
    /// This rank's rank on its host.
    local: usize,
}

#[cfg(test)]
thread_local! {
    /// The host a test thread plays.
    pub(super) static TEST_HOST: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn this_host() -> String {
    #[cfg(test)]
    if let Some(h) = TEST_HOST.with(|h| h.borrow().clone()) {
        return h;
    }
    host_key()
}

impl Group {
    /// The group's hosts, formed at the first call (collective); `None` where some host
    /// could not form its shared-memory group.
    pub(super) fn hosts(&self, op: &'static str) -> Result<Option<&Hosts>, CommError> {
        if self.hosts.get().is_none() {
            let formed = self.form_hosts(op)?;
            let _ = self.hosts.set(formed);
        }
        Ok(self.hosts.get().and_then(Option::as_ref))
    }

    fn form_hosts(&self, op: &'static str) -> Result<Option<Hosts>, CommError> {
        let keys = self.all_gather_bytes(op, this_host().as_bytes(), "host")?;
        let mut distinct: Vec<&[u8]> = Vec::new();
        for k in &keys {
            if !distinct.contains(&k.as_slice()) {
                distinct.push(k);
            }
        }
        let host_of = |r: usize| distinct.iter().position(|k| *k == keys[r].as_slice()).unwrap_or(0);
        let place: Vec<(usize, usize)> = (0..keys.len()).map(|r| (host_of(r), (0..r).filter(|&q| keys[q] == keys[r]).count())).collect();
        let leaders: Vec<usize> = (0..distinct.len()).map(|h| place.iter().position(|p| *p == (h, 0)).unwrap_or(0)).collect();
        let (index, local) = place[self.rank];
        let ranks: Vec<usize> = (0..keys.len()).filter(|&r| place[r].0 == index).collect();
        let made = if local == 0 {
            shm::create_unique(ranks.len()).unwrap_or_else(|e| {
                eprintln!("ranch: rank {}: cannot create this host's shared-memory group: {e}", self.rank);
                String::new()
            })
        } else {
            String::new()
        };
        let paths = self.all_gather_bytes(op, made.as_bytes(), "path");
        let opened = paths.as_ref().ok().and_then(|p| {
            let path = String::from_utf8_lossy(&p[leaders[index]]).into_owned();
            (!path.is_empty()).then(|| shm::Group::open(&path, local, ranks.len()).ok()).flatten()
        });
        // Every rank of the host has mapped it (or failed to) once this returns.
        let everywhere = paths.and_then(|_| self.all_gather_bytes(op, &[opened.is_some() as u8], "formed"));
        if !made.is_empty() {
            let _ = std::fs::remove_file(&made);
        }
        if everywhere?.iter().any(|ok| ok.as_slice() != [1]) {
            return Ok(None);
        }
        let hosts = distinct.len() as u32;
        Ok(opened.map(|group| Hosts { share: HostShare { group, index: index as u32, hosts }, ranks, leaders, place, local }))
    }

    /// Every rank says what it calls (no data): a mismatch fails everywhere, as on the star.
    fn agree(&self, op: &'static str, desc: Desc) -> Result<(), CommError> {
        self.collective(op, desc, &[], 0, None, false, |_, _| Vec::new()).map(drop)
    }

    /// `all_reduce` (root `None`) or `reduce` by host; `false` where the group has no hosts
    /// (the caller uses the star).
    pub(super) fn reduce_by_hosts<T: Reduce>(
        &self,
        op_name: &'static str,
        desc: Desc,
        buf: &mut [T],
        op: Op,
        root: Option<usize>,
    ) -> Result<bool, CommError> {
        self.agree(op_name, desc)?;
        let Some(h) = self.hosts(op_name)? else { return Ok(false) };
        let keep = root.filter(|&r| r != self.rank).map(|_| buf.to_vec());
        if h.ranks.len() > 1 {
            h.share.group.reduce(buf, op, Some(0)).map_err(|e| self.on_host(h, e))?;
        }
        let between = if h.local == 0 && h.leaders.len() > 1 { self.ring_all_reduce(op_name, h, buf, op) } else { Ok(()) };
        self.share_in_host(op_name, h, buf, 0, between)?;
        if let Some(mine) = keep {
            buf.copy_from_slice(&mine);
        }
        Ok(true)
    }

    /// `broadcast_slice` by host; `false` where the group has no hosts.
    pub(super) fn broadcast_by_hosts<T: Reduce>(
        &self,
        op: &'static str,
        desc: Desc,
        buf: &mut [T],
        root: usize,
    ) -> Result<bool, CommError> {
        self.agree(op, desc)?;
        let Some(h) = self.hosts(op)? else { return Ok(false) };
        let (root_host, root_local) = h.place[root];
        let index = h.share.index as usize;
        if index == root_host {
            // The root's host has it once its ranks do; its leader passes it on.
            if h.ranks.len() > 1 {
                h.share.group.broadcast_slice(buf, root_local).map_err(|e| self.on_host(h, e))?;
            }
            if h.local == 0 {
                self.pipe_along_leaders(op, h, bytes_of_mut(buf), root_host)?;
            }
            return Ok(true);
        }
        let between = if h.local == 0 { self.pipe_along_leaders(op, h, bytes_of_mut(buf), root_host) } else { Ok(()) };
        self.share_in_host(op, h, buf, 0, between)?;
        Ok(true)
    }

    /// The host's leader shares `buf` with its host's ranks, or, when `between` failed on
    /// it, the rank that broke (every rank of the host then fails with it).
    fn share_in_host<T: Reduce>(
        &self,
        op: &'static str,
        h: &Hosts,
        buf: &mut [T],
        leader: usize,
        between: Result<(), CommError>,
    ) -> Result<(), CommError> {
        if h.ranks.len() == 1 {
            return between;
        }
        let mut broke = [between.as_ref().err().map_or(0, |e| e.ranks.first().map_or(u64::MAX, |&r| r as u64 + 1))];
        h.share.group.broadcast_slice(&mut broke, leader).map_err(|e| self.on_host(h, e))?;
        between?;
        if broke[0] != 0 {
            let who = (broke[0] - 1) as usize;
            let why = format!("the link between hosts broke at rank {who} (rank {}, this host's first, says more)", h.ranks[leader]);
            return Err(self.fail(CommError::new(op, vec![who], why)));
        }
        h.share.group.broadcast_slice(buf, leader).map_err(|e| self.on_host(h, e))
    }

    /// An error of the host's group (ranks counted on the host) with global ranks; the TCP
    /// group is broken with it.
    fn on_host(&self, h: &Hosts, e: CommError) -> CommError {
        let ranks = e.ranks.iter().filter_map(|&r| h.ranks.get(r).copied()).collect();
        self.fail(CommError::new(e.op, ranks, format!("on this host's shared memory: {}", e.message)))
    }

    /// Ring all-reduce among the leaders: `buf` in one part per host; reduce-scatter, then
    /// all-gather. Every leader ends with the same bytes.
    fn ring_all_reduce<T: Reduce>(&self, op_name: &'static str, h: &Hosts, buf: &mut [T], op: Op) -> Result<(), CommError> {
        let l = h.leaders.len();
        let me = h.share.index as usize;
        let (next, prev) = (h.leaders[(me + 1) % l], h.leaders[(me + l - 1) % l]);
        let n = buf.len();
        let part = move |k: usize| crate::shard_range(n, k % l, l);
        for s in 0..l - 1 {
            let (send, recv) = (part(me + l - s), part(me + l - s - 1));
            let got = self.send_recv(op_name, next, bytes_of(&buf[send]), prev, recv.len() * size_of::<T>())?;
            T::combine_slice(&mut buf[recv.clone()], &vec_of::<T>(&got, recv.len()), op);
        }
        for s in 0..l - 1 {
            let (send, recv) = (part(me + 1 + l - s), part(me + l - s));
            let got = self.send_recv(op_name, next, bytes_of(&buf[send]), prev, recv.len() * size_of::<T>())?;
            bytes_of_mut(&mut buf[recv]).copy_from_slice(&got);
        }
        Ok(())
    }

    /// Broadcast among the leaders from `root_host`'s: each passes every step on to the next
    /// host's as it arrives.
    fn pipe_along_leaders(&self, op: &'static str, h: &Hosts, buf: &mut [u8], root_host: usize) -> Result<(), CommError> {
        let l = h.leaders.len();
        let at = (h.share.index as usize + l - root_host) % l;
        let prev = (at > 0).then(|| h.leaders[(root_host + at - 1) % l]);
        let next = (at + 1 < l).then(|| h.leaders[(root_host + at + 1) % l]);
        for step in buf.chunks_mut(PIPE_BYTES) {
            if let Some(prev) = prev {
                let got = self.read_message(op, prev, COLLECTIVE, step.len() as u64, None)?;
                if got.len() != step.len() {
                    return Err(self.fail(CommError::new(
                        op,
                        vec![prev],
                        format!("rank {prev} sent {} bytes for {}", got.len(), step.len()),
                    )));
                }
                step.copy_from_slice(&got);
            }
            if let Some(next) = next {
                self.write_message(op, next, COLLECTIVE, &[step])?;
            }
        }
        Ok(())
    }

    /// Sends `data` to `to` while receiving `len` bytes from `from` (both at once: two
    /// leaders that sent each other a large buffer first would wait for each other forever).
    fn send_recv(&self, op: &'static str, to: usize, data: &[u8], from: usize, len: usize) -> Result<Vec<u8>, CommError> {
        let got = if to == from {
            let mut peer = self.lock(from);
            let mut writer = peer.stream.try_clone().map_err(|e| self.link_error(op, to, e))?;
            std::thread::scope(|s| {
                let sending = s.spawn(move || write_framed(&mut writer, COLLECTIVE, &[data]));
                let got = self.read_from(op, from, &mut peer, COLLECTIVE, len as u64, None);
                if got.is_err() {
                    // The send may wait for a reader that is gone: it ends now.
                    let _ = peer.stream.shutdown(Shutdown::Both);
                }
                let sent = sending.join().unwrap_or_else(|_| Err(std::io::Error::other("the sending thread panicked")));
                sent.map_err(|e| self.link_error(op, to, e)).and(got)
            })
        } else {
            std::thread::scope(|s| {
                let sending = s.spawn(|| self.write_message(op, to, COLLECTIVE, &[data]));
                let got = self.read_message(op, from, COLLECTIVE, len as u64, None);
                let sent = sending.join().unwrap_or_else(|_| Err(CommError::new(op, vec![to], "the sending thread panicked".into())));
                sent.and(got)
            })
        }?;
        if got.len() != len {
            return Err(self.fail(CommError::new(op, vec![from], format!("rank {from} sent {} bytes for {len}", got.len()))));
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{groups, on_each};
    use super::*;

    /// Runs `f` on a group whose ranks play the hosts `hosts` (by rank).
    fn on_hosts<R: Send + 'static>(hosts: &'static [&'static str], f: impl Fn(&Group) -> R + Send + Sync + Copy + 'static) -> Vec<R> {
        on_each(groups(hosts.len()), move |g| {
            TEST_HOST.with(|h| *h.borrow_mut() = Some(hosts[g.rank].to_string()));
            f(g)
        })
    }

    fn segments() -> usize {
        std::fs::read_dir("/dev/shm")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("ranch-{}-host-", std::process::id())))
            .count()
    }

    #[test]
    fn large_collectives_go_by_host_and_equal_the_star() {
        // Three hosts, one of a single rank: a ring of three leaders.
        let got = on_hosts(&["a", "a", "b", "c", "c"], |g| {
            let r = g.rank;
            let n = 100_003; // not a multiple of the hosts
            let mut v: Vec<f64> = (0..n).map(|i| (i * (r + 1)) as f64).collect();
            g.reduce(&mut v, Op::Sum, None).unwrap();
            let mut m: Vec<i64> = (0..n).map(|i| (i as i64) * if r == 2 { 3 } else { 1 }).collect();
            g.reduce(&mut m, Op::Max, Some(4)).unwrap();
            // From a rank that leads no host.
            let mut b: Vec<u32> = (0..n as u32).map(|i| if r == 4 { i } else { 0 }).collect();
            g.broadcast_slice(&mut b, 4).unwrap();
            let h = g.hosts("map").unwrap().map(|h| (h.share.index, h.share.hosts, h.local, h.leaders.clone()));
            (v, m, b, h)
        });
        for (r, (v, m, b, h)) in got.into_iter().enumerate() {
            assert!(v.iter().enumerate().all(|(i, &x)| x == (i * 15) as f64), "rank {r}: all-reduce");
            let want: Vec<i64> = (0..100_003).map(|i| if r == 4 { 3 * i } else { i * if r == 2 { 3 } else { 1 } }).collect();
            assert_eq!(m, want, "rank {r}: only the root gets a reduce's result");
            assert!(b.iter().enumerate().all(|(i, &x)| x == i as u32), "rank {r}: broadcast");
            let (index, local) = [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)][r];
            assert_eq!(h, Some((index, 3, local, vec![0, 2, 3])));
        }
        assert_eq!(segments(), 0, "the hosts' segments are unlinked once mapped");
    }

    #[test]
    fn mismatched_large_calls_fail_on_every_rank() {
        let got = on_hosts(&["a", "a", "b", "b"], |g| {
            let mut v = vec![g.rank as f32; 1 << 17];
            let e = if g.rank == 3 { g.broadcast_slice(&mut v, 0) } else { g.reduce(&mut v, Op::Sum, None) };
            e.unwrap_err().message
        });
        assert!(got.iter().all(|m| m.contains("different")), "{got:?}");
    }
}
