//! Rank and world, read once from the launcher's environment.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Info {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_world_size: usize,
    pub gpu: Option<usize>,
}

impl Info {
    /// A world of one: what a plain (unlaunched) process is.
    const SERIAL: Info = Info { rank: 0, world_size: 1, local_rank: 0, local_world_size: 1, gpu: None };

    pub(crate) fn from_env(get: impl Fn(&str) -> Option<String>) -> Info {
        let num = |k: &str| get(k).and_then(|v| v.trim().parse::<usize>().ok());
        let (Some(rank), Some(world_size)) = (num("RANK"), num("WORLD_SIZE")) else {
            return Info::SERIAL;
        };
        if world_size == 0 || rank >= world_size {
            return Info::SERIAL;
        }
        let local_world_size = num("LOCAL_WORLD_SIZE").unwrap_or(world_size);
        let local_rank = num("LOCAL_RANK").unwrap_or(rank).min(local_world_size.saturating_sub(1));
        Info { rank, world_size, local_rank, local_world_size, gpu: num("RANCH_GPU") }
    }
}

pub(crate) fn info() -> &'static Info {
    static INFO: OnceLock<Info> = OnceLock::new();
    INFO.get_or_init(|| Info::from_env(|k| std::env::var(k).ok()))
}

/// This process's global rank: 0 outside a ranked launch.
pub fn rank() -> usize {
    info().rank
}

/// Number of ranks in the launch: 1 outside a ranked launch.
pub fn world_size() -> usize {
    info().world_size
}

/// Rank among the processes on this host.
pub fn local_rank() -> usize {
    info().local_rank
}

/// Number of ranks on this host.
pub fn local_world_size() -> usize {
    info().local_world_size
}

/// A seed for this rank's random generator: the same for the same `base` and rank on
/// every run, and different between ranks, so that ranks do not all draw the same numbers
/// (`StdRng::seed_from_u64(ranch::seed(42))`). Outside a launch it is rank 0's seed.
pub fn seed(base: u64) -> u64 {
    seed_for(base, rank())
}

fn seed_for(base: u64, rank: usize) -> u64 {
    // SplitMix64's finaliser: nearby bases and ranks give unrelated seeds.
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    mix(base.wrapping_add(mix((rank as u64).wrapping_add(0x9e37_79b9_7f4a_7c15))))
}

/// The CUDA device ordinal this rank should use, `None` when the launch pinned no GPU.
pub fn gpu() -> Option<usize> {
    info().gpu
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Info {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Info::from_env(|k| map.get(k).cloned())
    }

    #[test]
    fn plain_process_is_a_world_of_one() {
        assert_eq!(env(&[]), Info::SERIAL);
    }

    #[test]
    fn reads_the_launch_environment() {
        let i = env(&[("RANK", "2"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "2"), ("LOCAL_WORLD_SIZE", "4"), ("RANCH_GPU", "0")]);
        assert_eq!(i, Info { rank: 2, world_size: 4, local_rank: 2, local_world_size: 4, gpu: Some(0) });
    }

    #[test]
    fn nonsense_falls_back_to_serial() {
        assert_eq!(env(&[("RANK", "5"), ("WORLD_SIZE", "4")]), Info::SERIAL);
        assert_eq!(env(&[("RANK", "x"), ("WORLD_SIZE", "4")]), Info::SERIAL);
    }

    #[test]
    fn seeds_differ_between_ranks_and_repeat_between_runs() {
        let seeds: std::collections::HashSet<u64> = (0..10_000).map(|r| seed_for(42, r)).collect();
        assert_eq!(seeds.len(), 10_000);
        assert_eq!(seed_for(42, 3), seed_for(42, 3));
        assert_ne!(seed_for(42, 3), seed_for(43, 3));
        assert_ne!(seed_for(0, 1), seed_for(1, 0));
    }
}
