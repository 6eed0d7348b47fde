//! What the ranks of a group on one host share when the group spans several hosts: a
//! shared-memory group of the host's ranks (its own segment), and the host's place among the
//! hosts. `ranch::map` takes its chunks from the host group's counter ([`HostShare::claim`]);
//! the hierarchical MPI backend also reduces through it.
//!
//! A TCP group (a pool's cell across hosts) forms it at its first `map` ([`form_over_tcp`]):
//! the ranks tell each other their host, each host's first rank creates the segment and
//! tells its path, the others map it, and once all have, the name is removed (so nothing is
//! left in `/dev/shm` whatever then happens to the ranks).

use super::error::CommError;
use super::shm;
use super::tcp;

pub(super) struct HostShare {
    pub group: shm::Group,
    /// This host's place among the hosts, and how many there are.
    pub index: u32,
    pub hosts: u32,
}

impl HostShare {
    /// `map`'s next chunk: chunk `k` of the map belongs to host `k % hosts` (dealt out in
    /// advance, interleaved so that costly runs of items spread over the hosts), and the
    /// host's ranks take its chunks from their counter as they are free. The first item of
    /// the chunk, or `None` when the host's chunks are all taken.
    pub fn claim(&self, seq: u32, chunk: u32, len: u32) -> Option<u32> {
        let chunks = len.div_ceil(chunk.max(1));
        let ours = chunks.saturating_sub(self.index).div_ceil(self.hosts);
        let j = self.group.claim(seq, 1, ours)?;
        Some((j * self.hosts + self.index) * chunk)
    }
}

/// Which host this process runs on, as ranks that share `/dev/shm` see it: the machine (its
/// boot), the name, and `/dev/shm` itself (containers and namespaces may have their own).
fn host_key() -> String {
    use std::os::unix::fs::MetadataExt;
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    let shm = std::fs::metadata("/dev/shm").map(|m| format!("{}:{}", m.dev(), m.ino())).unwrap_or_default();
    format!("{} {} {shm}", read("/proc/sys/kernel/random/boot_id"), read("/proc/sys/kernel/hostname"))
}

/// Forms each host's share over the TCP group `g` (collective). `Ok(None)` on every rank
/// when some host could not (the caller then deals chunks out round robin).
pub(super) fn form_over_tcp(g: &tcp::Group, rank: usize) -> Result<Option<HostShare>, CommError> {
    const OP: &str = "map";
    let keys = g.all_gather_bytes(OP, host_key().as_bytes(), "host")?;
    let mut distinct: Vec<&[u8]> = Vec::new();
    for k in &keys {
        if !distinct.contains(&k.as_slice()) {
            distinct.push(k);
        }
    }
    let mine = keys[rank].as_slice();
    let index = distinct.iter().position(|k| *k == mine).unwrap_or(0);
    let here: Vec<usize> = (0..keys.len()).filter(|&r| keys[r] == mine).collect();
    let local = here.iter().position(|&r| r == rank).unwrap_or(0);
    let made = if local == 0 {
        shm::create_unique(here.len()).unwrap_or_else(|e| {
            eprintln!("ranch: rank {}: cannot create this host's shared-memory group: {e}", crate::rank());
            String::new()
        })
    } else {
        String::new()
    };
    let paths = g.all_gather_bytes(OP, made.as_bytes(), "path");
    let opened = paths.as_ref().ok().and_then(|p| {
        let path = String::from_utf8_lossy(&p[here[0]]).into_owned();
        (!path.is_empty()).then(|| shm::Group::open(&path, local, here.len()).ok()).flatten()
    });
    // Every rank of the host has mapped it (or failed to) once this returns.
    let everywhere = paths.and_then(|_| g.all_gather_bytes(OP, &[opened.is_some() as u8], "formed"));
    if !made.is_empty() {
        let _ = std::fs::remove_file(&made);
    }
    if everywhere?.iter().any(|ok| ok.as_slice() != [1]) {
        return Ok(None);
    }
    Ok(opened.map(|group| HostShare { group, index: index as u32, hosts: distinct.len() as u32 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_takes_its_interleaved_chunks_then_none() {
        let path = shm::create_unique(1).unwrap();
        let group = shm::Group::open(&path, 0, 1).unwrap();
        std::fs::remove_file(&path).unwrap();
        // 3 hosts, 10 items in chunks of 2 (chunks 0..5): the second host's are 1 and 4.
        let share = HostShare { group, index: 1, hosts: 3 };
        assert_eq!((share.claim(7, 2, 10), share.claim(7, 2, 10), share.claim(7, 2, 10)), (Some(2), Some(8), None));
        // The next map starts over.
        assert_eq!(share.claim(8, 2, 10), Some(2));
    }

    #[test]
    fn ranks_that_share_dev_shm_name_the_same_host() {
        assert_eq!(host_key(), host_key());
        assert!(host_key().split_whitespace().count() >= 2, "{}", host_key());
    }
}
