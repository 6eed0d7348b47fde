//! `%ranch_start`: the pool's arguments, and each pool rank's environment.

use crate::args::{GpuVisibility, Gpus, parse_gpus, parse_ranks};
use crate::gpus::{Device, plan};
use clap::Parser;

#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "%ranch_start",
    no_binary_name = true,
    about = "Start a pool of N persistent ranks: `%%px` cells then run on every rank, and each rank keeps its variables between cells",
    after_help = "Then: `%%px` (a cell on every rank), `%px EXPR`, `%autopx` (every following cell), `%ranch_status`, `%ranch_stop`."
)]
pub struct PoolArgs {
    /// Number of ranks.
    #[arg(value_parser = parse_ranks)]
    pub n: usize,
    /// GPUs to pin ranks to: `auto` (all visible, if any), `none`, or a list such as `0,2`.
    #[arg(long, value_name = "auto|none|D,D", default_value = "auto", value_parser = parse_gpus)]
    pub gpus: Gpus,
    /// Whether a rank sees only its own GPU (`isolate`) or every chosen one (`all`).
    #[arg(long, value_enum, default_value = "all")]
    pub gpu_visibility: GpuVisibility,
}

#[derive(Debug)]
pub enum ParsedPool {
    Start(PoolArgs),
    Help(String),
}

/// Parses what follows `%ranch_start`.
pub fn parse(args: &str) -> Result<ParsedPool, String> {
    let tokens = shlex::split(args).ok_or_else(|| format!("unbalanced quotes in `%ranch_start {args}`"))?;
    match PoolArgs::try_parse_from(tokens) {
        Ok(a) => Ok(ParsedPool::Start(a)),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Ok(ParsedPool::Help(e.render().to_string())),
        Err(e) => Err(e.render().to_string().trim_end().to_string()),
    }
}

/// Each rank's environment: its place in the pool, its GPU, its share of the cores, and
/// why it has no process group (collectives in pool cells are not there yet).
pub struct RankPlan {
    pub env: Vec<Vec<(String, String)>>,
    pub warning: Option<String>,
}

pub fn rank_plan(
    args: &PoolArgs,
    devices: &[Device],
    cuda_visible: Option<&str>,
    cores: usize,
    user_env: impl Fn(&str) -> Option<String>,
) -> Result<RankPlan, String> {
    let gpus = plan(devices, cuda_visible, &args.gpus, args.gpu_visibility, args.n)?;
    let threads = crate::threads::thread_env(cores, args.n, user_env);
    let n = args.n.to_string();
    let env = (0..args.n)
        .map(|rank| {
            let mut env = vec![
                ("RANK".to_string(), rank.to_string()),
                ("LOCAL_RANK".to_string(), rank.to_string()),
                ("WORLD_SIZE".to_string(), n.clone()),
                ("LOCAL_WORLD_SIZE".to_string(), n.clone()),
                (
                    ranch::__rt::NO_GROUP_ENV.to_string(),
                    "collectives (ranch::comm()) are not available in %%px cells yet: use %%ranch or %in_ddp for them".to_string(),
                ),
            ];
            env.extend(threads.iter().cloned());
            env.extend(gpus.ranks.get(rank).into_iter().flatten().cloned());
            env
        })
        .collect();
    Ok(RankPlan { env, warning: gpus.warning })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(args: &str) -> PoolArgs {
        match parse(args) {
            Ok(ParsedPool::Start(a)) => a,
            _ => panic!("not a start: {args}"),
        }
    }

    #[test]
    fn parses_n_and_gpu_flags() {
        assert_eq!(start("4").n, 4);
        assert_eq!(start("2 --gpus none").gpus, Gpus::None);
        assert!(parse("0").is_err());
        assert!(parse("").is_err());
        assert!(parse("2 --bogus").unwrap_err().contains("--bogus"));
        assert!(matches!(parse("--help"), Ok(ParsedPool::Help(_))));
    }

    #[test]
    fn each_rank_knows_its_place_and_that_it_has_no_group() {
        let p = rank_plan(&start("3"), &[], None, 6, |_| None).unwrap();
        assert_eq!(p.env.len(), 3);
        let get = |r: usize, k: &str| p.env[r].iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get(2, "RANK").as_deref(), Some("2"));
        assert_eq!(get(2, "WORLD_SIZE").as_deref(), Some("3"));
        assert_eq!(get(0, "OMP_NUM_THREADS").as_deref(), Some("2"));
        assert!(get(1, ranch::__rt::NO_GROUP_ENV).unwrap().contains("%%px"));
    }
}
