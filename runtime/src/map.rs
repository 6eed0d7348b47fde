//! `ranch::map`: items handed out to the ranks as they are free, results in item order on
//! every rank.
//!
//! `shard` splits evenly and in advance: when items cost unevenly, a rank with the costly
//! ones works on while the others wait. `map` hands the items out in chunks from a counter
//! the ranks share (a word of the group's shared memory on one host), so a rank takes the
//! next chunk as soon as it is free; then every rank's results are gathered in item order.
//! Across hosts (the hierarchical MPI group, `%%ranch` on several hosts), the chunks are
//! dealt to the hosts in advance, interleaved, and each host's ranks take its chunks from
//! their host's counter. Where ranks share no memory (a pool across hosts over TCP, flat
//! MPI), chunks are dealt out round robin: the results are the same, the balance is static.
//! In a plain cell it is a serial `map`.

use crate::comm::{Comm, CommError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicU32, Ordering};

/// Maps this process has started: every rank calls `map` alike, so the count names the
/// same map on every rank (the shared counter says which map its position belongs to).
static MAPS: AtomicU32 = AtomicU32::new(0);

/// How many items a rank takes at a time: small enough to balance (about 8 chunks per rank),
/// never zero.
pub(crate) fn chunk_size(len: usize, world: usize) -> usize {
    (len / (world * 8)).max(1)
}

/// `f` of every item, computed across the ranks of the group (each item once, by whichever
/// rank is free), returned on every rank in item order. A collective: every rank calls it
/// with the same items. In a plain cell, `items.iter().map(f).collect()`.
///
/// ```
/// // In a plain cell: every item, in order.
/// let squares = ranch::map(&[1u64, 2, 3], |x| x * x).unwrap();
/// assert_eq!(squares, [1, 4, 9]);
/// ```
pub fn map<T, R, F>(items: &[T], f: F) -> Result<Vec<R>, CommError>
where
    T: Sync,
    R: Serialize + DeserializeOwned,
    F: Fn(&T) -> R,
{
    let comm = crate::comm();
    map_in(comm, items, f)
}

fn map_in<T, R, F>(comm: &Comm, items: &[T], f: F) -> Result<Vec<R>, CommError>
where
    R: Serialize + DeserializeOwned,
    F: Fn(&T) -> R,
{
    let (rank, world) = (comm.rank(), comm.world_size());
    if world == 1 {
        return Ok(items.iter().map(f).collect());
    }
    let len = u32::try_from(items.len())
        .map_err(|_| CommError::new("map", vec![], format!("{} items are too many for one map (at most {})", items.len(), u32::MAX)))?;
    let seq = MAPS.fetch_add(1, Ordering::Relaxed) + 1;
    let chunk = chunk_size(items.len(), world) as u32;
    let mut mine: Vec<(u32, R)> = Vec::new();
    let run = |start: u32, mine: &mut Vec<(u32, R)>| {
        for i in start..(start + chunk).min(len) {
            mine.push((i, f(&items[i as usize])));
        }
    };
    match comm.claim(seq, chunk, len)? {
        Some(mut claimed) => {
            while let Some(start) = claimed {
                run(start, &mut mine);
                claimed = comm.claim(seq, chunk, len)?.flatten();
            }
        }
        // No shared counter: chunk k is rank k % world's.
        None => {
            let chunks = len.div_ceil(chunk) as usize;
            for k in (rank..chunks).step_by(world) {
                run(k as u32 * chunk, &mut mine);
            }
        }
    }
    let all: Vec<(u32, Vec<(u32, R)>)> = comm.all_gather(&(len, mine))?;
    assemble(len, all)
}

/// Every rank's results, put in item order; an error when the ranks mapped different
/// numbers of items or an item has no result.
fn assemble<R>(len: u32, all: Vec<(u32, Vec<(u32, R)>)>) -> Result<Vec<R>, CommError> {
    let lens: Vec<u32> = all.iter().map(|(l, _)| *l).collect();
    if lens.iter().any(|&l| l != len) {
        let differ: Vec<usize> = lens.iter().enumerate().filter(|(_, l)| **l != len).map(|(r, _)| r).collect();
        return Err(CommError::new("map", differ, format!("the ranks mapped different numbers of items: {lens:?}")));
    }
    let mut slots: Vec<Option<R>> = (0..len).map(|_| None).collect();
    for (_, results) in all {
        for (i, r) in results {
            if let Some(slot) = slots.get_mut(i as usize) {
                *slot = Some(r);
            }
        }
    }
    slots.into_iter().enumerate().map(|(i, r)| r.ok_or_else(|| CommError::new("map", vec![], format!("item {i} has no result")))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_balance_and_are_never_empty() {
        assert_eq!(chunk_size(0, 4), 1);
        assert_eq!(chunk_size(10, 4), 1);
        assert_eq!(chunk_size(320, 4), 10);
    }

    #[test]
    fn results_come_back_in_item_order_whoever_computed_them() {
        let all = vec![(4, vec![(3, "d"), (0, "a")]), (4, vec![(1, "b"), (2, "c")])];
        assert_eq!(assemble(4, all).unwrap(), ["a", "b", "c", "d"]);
        let e = assemble(4, vec![(4, vec![(0, "a")]), (3, vec![])]).unwrap_err();
        assert!(e.to_string().contains("different numbers of items"), "{e}");
        assert!(assemble(2, vec![(2, vec![(0, "a")])]).unwrap_err().to_string().contains("item 1 has no result"));
    }

    #[test]
    fn outside_a_launch_it_is_a_serial_map() {
        assert_eq!(map(&[1, 2, 3], |x| x * 10).unwrap(), [10, 20, 30]);
    }
}
