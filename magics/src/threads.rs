//! What ranks are told about cores, as torchrun does: each rank's thread pools (OpenMP,
//! rayon) get cores / local ranks threads, so N ranks do not each start one thread per
//! core and fight over them. A value the user set in the kernel's environment wins.

/// The variables thread pools read, and their value for `local_ranks` ranks on `cores`.
pub fn thread_env(cores: usize, local_ranks: usize, get: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let per_rank = (cores / local_ranks.max(1)).max(1).to_string();
    ["OMP_NUM_THREADS", "RAYON_NUM_THREADS"].into_iter().filter(|k| get(k).is_none()).map(|k| (k.to_string(), per_rank.clone())).collect()
}

/// A warning when ranks outnumber cores (they then take turns, and timings mean little).
pub fn oversubscribed(cores: usize, local_ranks: usize) -> Option<String> {
    (local_ranks > cores).then(|| {
        format!(
            "ranch: {local_ranks} ranks share {cores} core{}: they take turns, so they run slower than {local_ranks} cores would \
             (collectives wait without spinning). Said once per session.",
            if cores == 1 { "" } else { "s" }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_are_shared_out_and_the_users_choice_wins() {
        assert_eq!(
            thread_env(16, 4, |_| None),
            [("OMP_NUM_THREADS".to_string(), "4".to_string()), ("RAYON_NUM_THREADS".to_string(), "4".to_string())]
        );
        assert_eq!(thread_env(2, 8, |_| None)[0].1, "1", "at least one");
        let set = thread_env(16, 4, |k| (k == "OMP_NUM_THREADS").then(|| "7".to_string()));
        assert_eq!(set, [("RAYON_NUM_THREADS".to_string(), "4".to_string())]);
    }

    #[test]
    fn more_ranks_than_cores_is_said() {
        assert!(oversubscribed(4, 4).is_none());
        assert!(oversubscribed(2, 8).unwrap().starts_with("ranch: 8 ranks share 2 cores"));
        assert!(oversubscribed(1, 2).unwrap().contains("share 1 core:"));
    }
}
