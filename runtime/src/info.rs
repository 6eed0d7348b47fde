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

    /// Reads ranch's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, as
    /// torchrun names them), else the launcher's own: Open MPI's `OMPI_COMM_WORLD_*`, MPICH's
    /// and Intel MPI's `PMI_*`/`MPI_LOCAL*`, Slurm's `SLURM_*`. A launcher numbers the ranks it
    /// started from 0; `RANCH_BASE_RANK` places them in a larger group.
    pub(crate) fn from_env(get: impl Fn(&str) -> Option<String>) -> Info {
        let num = |k: &str| get(k).and_then(|v| v.trim().parse::<usize>().ok());
        let first = |keys: &[&str]| keys.iter().find_map(|k| num(k));
        let base = num(BASE_RANK_ENV).unwrap_or(0);
        let rank = num("RANK").or_else(|| first(&LAUNCHER_RANK).and_then(|r| r.checked_add(base)));
        let world_size = num("WORLD_SIZE").or_else(|| first(&LAUNCHER_SIZE).and_then(|w| w.checked_add(base)));
        let (Some(rank), Some(world_size)) = (rank, world_size) else {
            return Info::SERIAL;
        };
        if world_size == 0 || rank >= world_size {
            return Info::SERIAL;
        }
        let local_world_size = num("LOCAL_WORLD_SIZE").or_else(|| first(&LAUNCHER_LOCAL_SIZE)).unwrap_or(world_size);
        let local_rank = num("LOCAL_RANK").or_else(|| first(&LAUNCHER_LOCAL_RANK)).unwrap_or(rank).min(local_world_size.saturating_sub(1));
        Info { rank, world_size, local_rank, local_world_size, gpu: num("RANCH_GPU") }
    }
}

/// Global rank of the first rank a launch started (a kernel launching part of a group).
pub const BASE_RANK_ENV: &str = "RANCH_BASE_RANK";
/// Where launchers put the rank they gave a process, in the order they are read.
const LAUNCHER_RANK: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"];
const LAUNCHER_SIZE: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"];
const LAUNCHER_LOCAL_RANK: [&str; 3] = ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"];
const LAUNCHER_LOCAL_SIZE: [&str; 2] = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"];

pub(crate) fn info() -> &'static Info {
    static INFO: OnceLock<Info> = OnceLock::new();
    INFO.get_or_init(|| Info::from_env(|k| std::env::var(k).ok()))
}

/// This process's global rank: 0 outside a ranked launch.
pub fn rank() -> usize {
    info().rank
}

/// This rank's place among the ranks its launch started (`rank()` less the launch's base
/// rank): results and panics are named by it.
pub(crate) fn launch_index() -> usize {
    let base = std::env::var(BASE_RANK_ENV).ok().and_then(|b| b.trim().parse::<usize>().ok()).unwrap_or(0);
    rank().saturating_sub(base)
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
    fn reads_the_launchers_own_variables_when_ranch_set_none() {
        let ompi = env(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ]);
        assert_eq!(ompi, Info { rank: 3, world_size: 4, local_rank: 1, local_world_size: 2, gpu: None });
        let pmi = env(&[("PMI_RANK", "2"), ("PMI_SIZE", "3"), ("MPI_LOCALRANKID", "0"), ("MPI_LOCALNRANKS", "1")]);
        assert_eq!(pmi, Info { rank: 2, world_size: 3, local_rank: 0, local_world_size: 1, gpu: None });
        let slurm = env(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "1")]);
        assert_eq!((slurm.rank, slurm.world_size, slurm.local_rank), (5, 8, 1));
        // ranch's own variables win; a base rank places a launcher's ranks in a larger group.
        let both = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2")]);
        assert_eq!(both.rank, 0);
        let based = env(&[("RANCH_BASE_RANK", "4"), ("WORLD_SIZE", "8"), ("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "4")]);
        assert_eq!((based.rank, based.world_size), (5, 8));
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
