//! What the ranks of a group on one host share when the group spans several hosts: a
//! shared-memory group of the host's ranks (its own segment), and the host's place among the
//! hosts. `ranch::map` takes its chunks from the host group's counter ([`HostShare::claim`]);
//! the hierarchical MPI backend also reduces through it.
//!
//! A TCP group (a pool's cell across hosts) forms it when it first needs it (`tcp::hosts`).

use super::shm;

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
pub(super) fn host_key() -> String {
    use std::os::unix::fs::MetadataExt;
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    let shm = std::fs::metadata("/dev/shm").map(|m| format!("{}:{}", m.dev(), m.ino())).unwrap_or_default();
    format!("{} {} {shm}", read("/proc/sys/kernel/random/boot_id"), read("/proc/sys/kernel/hostname"))
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
