//! Splitting data between ranks.

/// The half-open index range of rank `rank`'s contiguous block of `len` items split over
/// `world` ranks: blocks differ in size by at most one, the first `len % world` are larger.
pub fn shard_range(len: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    assert!(world > 0 && rank < world, "rank {rank} is not in a world of {world}");
    let base = len / world;
    let extra = len % world;
    let start = rank * base + rank.min(extra);
    let size = base + usize::from(rank < extra);
    start..start + size
}

/// This rank's contiguous block of `items` (all of them outside a ranked launch).
pub fn shard<T>(items: &[T]) -> &[T] {
    &items[shard_range(items.len(), crate::rank(), crate::world_size())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_everything_once_and_differ_by_at_most_one() {
        for len in 0..40 {
            for world in 1..9 {
                let ranges: Vec<_> = (0..world).map(|r| shard_range(len, r, world)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[world - 1].end, len);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let sizes: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "not in a world")]
    fn rank_outside_the_world_panics() {
        shard_range(10, 4, 4);
    }
}
