//! `%ranch_start`: the pool's arguments, and each pool rank's environment; `%%px`'s.

use crate::args::{
    Backend, GpuVisibility, Gpus, OnError, RunFlags, See, join_out_type, parse_gpus, parse_ident, parse_list, parse_ranks, parse_see,
    parse_timeout,
};
use crate::gpus::{Device, plan};
use crate::hosts::{Placement, PlacementFlags};
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
    /// Ranks whose output to show in every pool cell: `all` or a list such as `0,2`.
    #[arg(long, value_name = "all|R,R", default_value = "all", value_parser = parse_see)]
    pub see: See,
    /// Form each cell's group before the cell's body runs (every rank of the cell joins
    /// first), as `%%ranch --ddp` does; otherwise a cell's first `ranch::comm()` forms it.
    #[arg(long)]
    pub ddp: bool,
    /// How collectives move data.
    #[arg(long, value_enum, default_value = "shm")]
    pub backend: Backend,
    /// Seconds a collective waits for the other ranks before failing (default 120).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub collective_timeout: Option<f64>,
    #[command(flatten)]
    pub place: PlacementFlags,
    /// The launcher and hosts, from the three flags above (filled by `parse`).
    #[arg(skip)]
    pub placement: Placement,
}

/// A pool magic's arguments, or its help (`--help`, shown as normal output).
#[derive(Debug)]
pub enum Parsed<T> {
    Run(T),
    Help(String),
}

/// Parses a magic's arguments with clap. `prepare` adjusts the shell-split tokens.
pub(crate) fn parse_magic<T: Parser>(magic: &str, args: &str, prepare: fn(Vec<String>) -> Vec<String>) -> Result<Parsed<T>, String> {
    let tokens = shlex::split(args).ok_or_else(|| format!("unbalanced quotes in `{magic} {args}`"))?;
    match T::try_parse_from(prepare(tokens)) {
        Ok(a) => Ok(Parsed::Run(a)),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Ok(Parsed::Help(e.render().to_string())),
        Err(e) => Err(e.render().to_string().trim_end().to_string()),
    }
}

/// Parses what follows `%ranch_start`.
pub fn parse(args: &str) -> Result<Parsed<PoolArgs>, String> {
    let mut parsed = parse_magic::<PoolArgs>("%ranch_start", args, |t| t)?;
    if let Parsed::Run(a) = &mut parsed {
        if let Some(name) = a.backend.mpi_name() {
            return Err(format!(
                "--backend {name}: a pool's collectives use shared memory (--backend shm); for MPI collectives run the \
                 cell with `%%ranch N --backend {name}` or `%in_ddp`"
            ));
        }
        a.placement = a.place.resolve(a.n)?;
        if a.placement.elsewhere() && a.gpus != Gpus::Auto && a.gpus != Gpus::None {
            return Err("--gpus with ranks on other hosts: a pool pins GPUs on this host only; leave --gpus out \
                        (each rank then sees its host's GPUs)"
                .into());
        }
    }
    Ok(parsed)
}

/// Each rank's environment: its place in the pool, its GPU, its share of the cores, and
/// the file that says where each cell's group is.
pub struct RankPlan {
    pub env: Vec<Vec<(String, String)>>,
    pub warning: Option<String>,
}

/// `--see` names pool ranks: each must be one.
pub fn check_see(args: &PoolArgs) -> Result<(), String> {
    match &args.see {
        See::Ranks(r) => check_ranks("--see", r, args.n),
        See::All => Ok(()),
    }
}

/// Each of `ranks` (given with `flag`) is a rank of a pool of `n`.
fn check_ranks(flag: &str, ranks: &[usize], n: usize) -> Result<(), String> {
    match ranks.iter().find(|&&r| r >= n) {
        Some(r) => Err(format!("{flag}: the pool has ranks 0-{} (no rank {r})", n - 1)),
        None => Ok(()),
    }
}

pub fn rank_plan(
    args: &PoolArgs,
    devices: &[Device],
    cuda_visible: Option<&str>,
    cores: usize,
    group_file: &std::path::Path,
    user_env: impl Fn(&str) -> Option<String>,
) -> Result<RankPlan, String> {
    // This host's GPUs mean nothing to ranks elsewhere.
    let elsewhere = args.placement.elsewhere();
    let gpus = if elsewhere {
        plan(&[], None, &Gpus::None, args.gpu_visibility, args.n)?
    } else {
        plan(devices, cuda_visible, &args.gpus, args.gpu_visibility, args.n)?
    };
    let threads = crate::threads::thread_env(cores, args.placement.most_on_one_host(args.n), user_env);
    let n = args.n.to_string();
    // Each rank's host and its place on it (every rank is here unless hosts are named).
    let hosts = args.placement.rank_hosts();
    let local = |rank: usize| -> (usize, usize) {
        match hosts.get(rank) {
            Some(h) => (hosts[..rank].iter().filter(|x| *x == h).count(), hosts.iter().filter(|x| *x == h).count()),
            None => (rank, args.n),
        }
    };
    let env = (0..args.n)
        .map(|rank| {
            let (local_rank, local_size) = local(rank);
            let mut env = vec![
                ("RANK".to_string(), rank.to_string()),
                ("LOCAL_RANK".to_string(), local_rank.to_string()),
                ("WORLD_SIZE".to_string(), n.clone()),
                ("LOCAL_WORLD_SIZE".to_string(), local_size.to_string()),
                (ranch::__rt::POOL_GROUP_ENV.to_string(), group_file.to_string_lossy().into_owned()),
            ];
            if args.ddp {
                env.push((ranch::__rt::POOL_DDP_ENV.to_string(), "1".to_string()));
            }
            if let Some(t) = args.collective_timeout {
                env.push((ranch::__rt::TIMEOUT_ENV.to_string(), t.to_string()));
            }
            env.extend(threads.iter().cloned());
            env.extend(gpus.ranks.get(rank).into_iter().flatten().cloned());
            env
        })
        .collect();
    Ok(RankPlan { env, warning: gpus.warning })
}

#[derive(Parser, Debug, Clone, PartialEq, Default)]
#[command(
    name = "%%px",
    no_binary_name = true,
    disable_version_flag = true,
    about = "Run the cell on the pool's ranks (every rank, or --targets); each rank keeps its variables",
    after_help = "`ranch::rank()` is the pool rank; `ranch::comm()` is a group of the cell's ranks, formed for \
this cell (in a --targets cell its ranks are numbered 0.. in target order).\n\nExample:\n  %%px --targets 0,2\n  x.len()"
)]
pub struct PxArgs {
    /// Pool ranks to run on, e.g. `0,2` (default: all). A --targets cell cannot define variables with `let`.
    #[arg(long, value_name = "R,R", value_parser = parse_targets)]
    pub targets: Option<Targets>,
    #[command(flatten)]
    pub run: RunFlags,
}

impl PxArgs {
    /// `--on-error`: continue unless the cell says otherwise (pool ranks are independent,
    /// and stopping them costs their variables).
    pub fn on_error(&self) -> OnError {
        self.run.on_error_or(OnError::Continue)
    }
}

/// `--targets`: pool ranks, sorted, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(pub Vec<usize>);

fn parse_targets(s: &str) -> Result<Targets, String> {
    let mut v = parse_list(s, "rank")?;
    v.sort_unstable();
    v.dedup();
    Ok(Targets(v))
}

/// Parses what follows `%%px` on its line.
pub fn parse_px(args: &str) -> Result<Parsed<PxArgs>, String> {
    parse_magic("%%px", args, join_out_type)
}

/// `%px [--targets R,R] EXPR`: the flags, and the expression after them.
pub fn split_px_line(line: &str) -> (&str, &str) {
    let mut rest = line.trim_start();
    loop {
        let words = match rest.split_whitespace().next().unwrap_or("") {
            "--targets" => 2,
            w if w.starts_with("--targets=") || w == "--help" || w == "--quiet" => 1,
            _ => break,
        };
        for _ in 0..words {
            rest = rest.trim_start();
            rest = &rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..];
        }
    }
    (line[..line.len() - rest.len()].trim(), rest.trim())
}

#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "%px_pull",
    no_binary_name = true,
    disable_version_flag = true,
    about = "Gather a variable of the pool's ranks into the session as a Vec, in rank order (its type must be Serialize + Deserialize)",
    after_help = "Example:\n  %px_pull weights --out all_weights"
)]
pub struct PullArgs {
    /// The ranks' variable.
    #[arg(value_parser = parse_ident)]
    pub name: String,
    /// The session variable to bind (default: NAME).
    #[arg(long, value_name = "NAME", value_parser = parse_ident)]
    pub out: Option<String>,
    /// Pool ranks to gather from, e.g. `0,2` (default: all).
    #[arg(long, value_name = "R,R", value_parser = parse_targets)]
    pub targets: Option<Targets>,
}

#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "%px_push",
    no_binary_name = true,
    disable_version_flag = true,
    about = "Copy session variables to every rank of the pool (their types must be Serialize + Deserialize)",
    after_help = "Example:\n  %px_push config, data"
)]
pub struct PushArgs {
    /// The session's variables (space- or comma-separated).
    #[arg(required = true, value_parser = parse_ident)]
    pub names: Vec<String>,
}

/// `%ranch_restart`'s arguments.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "%ranch_restart",
    no_binary_name = true,
    disable_version_flag = true,
    about = "Restart the pool's ranks: all of them as %ranch_start started them (every rank's variables are lost), \
             or --targets alone (the others keep their variables)",
    after_help = "A rank restarted alone has none of the pool's variables; it sits out the pool's cells while the pool \
                  holds variables (evcxr loads every variable in every cell).\n\nExample:\n  %ranch_restart --targets 2"
)]
pub struct RestartArgs {
    /// Pool ranks to restart alone, e.g. `2` or `0,3` (default: the whole pool).
    #[arg(long, value_name = "R,R", value_parser = parse_targets)]
    pub targets: Option<Targets>,
}

pub fn parse_restart(args: &str) -> Result<Parsed<RestartArgs>, String> {
    parse_magic("%ranch_restart", args, |t| t)
}

pub fn parse_pull(args: &str) -> Result<Parsed<PullArgs>, String> {
    parse_magic("%px_pull", args, |t| t)
}

pub fn parse_push(args: &str) -> Result<Parsed<PushArgs>, String> {
    // `a, b` and `a,b` as well as `a b`.
    parse_magic("%px_push", args, |t| t.iter().flat_map(|t| t.split(',')).filter(|t| !t.is_empty()).map(str::to_string).collect())
}

/// A type as the pool's cells name it (`ctx::Shard`), as the session's cells do (`Shard`).
pub fn session_type(pool_type: &str) -> String {
    let mut out = String::with_capacity(pool_type.len());
    let mut rest = pool_type;
    while let Some(at) = rest.find("ctx::") {
        out.push_str(&rest[..at]);
        // `ctx::` at the start of a path is the pool's crate; `myctx::` is not.
        if out.chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            out.push_str("ctx::");
        }
        rest = &rest[at + "ctx::".len()..];
    }
    out.push_str(rest);
    crate::program::session_type_name(&out)
}

/// The pool ranks a cell runs on: `--targets`, checked against the pool's size, or all.
pub fn cell_ranks(targets: Option<&Targets>, n: usize) -> Result<Vec<usize>, String> {
    match targets {
        None => Ok((0..n).collect()),
        Some(Targets(t)) => check_ranks("--targets", t, n).map(|_| t.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::LauncherKind;

    fn start(args: &str) -> PoolArgs {
        match parse(args) {
            Ok(Parsed::Run(a)) => a,
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
        assert!(matches!(parse("--help"), Ok(Parsed::Help(_))));
        assert_eq!(start("4 --see 0,2").see, See::Ranks(vec![0, 2]));
        assert!(check_see(&start("4 --see 0,2")).is_ok());
        assert!(check_see(&start("2 --see 2")).unwrap_err().contains("ranks 0-1"));
    }

    #[test]
    fn each_rank_knows_its_place_and_that_it_has_no_group() {
        let p = rank_plan(&start("3"), &[], None, 6, std::path::Path::new("/p/group"), |_| None).unwrap();
        assert_eq!(p.env.len(), 3);
        let get = |r: usize, k: &str| p.env[r].iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get(2, "RANK").as_deref(), Some("2"));
        assert_eq!(get(2, "WORLD_SIZE").as_deref(), Some("3"));
        assert_eq!(get(0, "OMP_NUM_THREADS").as_deref(), Some("2"));
        assert_eq!(get(1, ranch::__rt::POOL_GROUP_ENV).as_deref(), Some("/p/group"));
        assert_eq!(get(1, ranch::__rt::POOL_DDP_ENV), None);
        assert_eq!(get(1, ranch::__rt::TIMEOUT_ENV), None);
        let p = rank_plan(&start("2 --ddp --backend shm --collective-timeout 0.5"), &[], None, 6, std::path::Path::new("/g"), |_| None)
            .unwrap();
        let get = |r: usize, k: &str| p.env[r].iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get(1, ranch::__rt::POOL_DDP_ENV).as_deref(), Some("1"));
        assert_eq!(get(0, ranch::__rt::TIMEOUT_ENV).as_deref(), Some("0.5"));
        assert!(parse("2 --backend tcp").unwrap_err().contains("tcp"));
        assert!(parse("2 --backend mpi").unwrap_err().contains("%%ranch N --backend mpi"));
    }

    #[test]
    fn hosts_place_the_ranks_and_number_them_on_each_host() {
        let a = start("3 --hosts a:1,b:2");
        assert_eq!(a.placement.launcher, LauncherKind::Mpirun);
        assert!(a.placement.elsewhere());
        let p = rank_plan(&a, &[], Some("0,1"), 6, std::path::Path::new("/g"), |_| None).unwrap();
        let get = |r: usize, k: &str| p.env[r].iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!([get(0, "LOCAL_RANK"), get(1, "LOCAL_RANK"), get(2, "LOCAL_RANK")].map(Option::unwrap), ["0", "0", "1"]);
        assert_eq!([get(0, "LOCAL_WORLD_SIZE"), get(2, "LOCAL_WORLD_SIZE")].map(Option::unwrap), ["1", "2"]);
        assert_eq!(get(0, "CUDA_VISIBLE_DEVICES"), None, "this host's GPUs are not pinned on others");
        // Threads share the busiest host's cores: two ranks there.
        assert_eq!(get(0, "OMP_NUM_THREADS").as_deref(), Some("3"));
        assert_eq!(start("2 --launcher mpirun").placement.hosts, vec![]);
        assert!(!start("2 --launcher mpirun").placement.elsewhere());
        assert!(start("2 --launcher srun").placement.elsewhere());
        assert!(parse("3 --hosts a:1,b:1").unwrap_err().contains("2 slots"));
        assert!(parse("2 --hosts a:1,b:1 --launcher local").unwrap_err().contains("not local"));
        assert!(parse("2 --hosts a:1,b:1 --gpus 0").unwrap_err().contains("--gpus with ranks on other hosts"));
        assert!(parse("2 --hostfile /nonexistent/h").unwrap_err().contains("/nonexistent/h"));
    }

    #[test]
    fn px_flags() {
        let run = |a: &str| match parse_px(a) {
            Ok(Parsed::Run(a)) => a,
            other => panic!("{a}: {other:?}"),
        };
        assert_eq!(run(""), PxArgs::default());
        assert_eq!(run("--targets 2,0,2").targets, Some(Targets(vec![0, 2])));
        assert!(run("--quiet").run.quiet && !run("").run.quiet);
        let a = run("--timeout 2.5 --on-error abort --see 1,3 --timing");
        assert_eq!((a.run.timeout, a.on_error(), a.run.timing), (Some(2.5), OnError::Abort, true));
        assert_eq!(a.run.see, Some(See::Ranks(vec![1, 3])));
        assert_eq!(run("").on_error(), OnError::Continue, "pool ranks are independent unless the cell says so");
        assert_eq!(run("--out w: Vec<f64>").run.out, Some(crate::args::Out { name: "w".into(), ty: Some("Vec<f64>".into()) }));
        assert!(parse_px("--targets x").unwrap_err().contains("rank numbers"));
        assert!(parse_px("--bogus").is_err());
        assert!(matches!(parse_px("--help"), Ok(Parsed::Help(_))));
        assert_eq!(cell_ranks(Some(&Targets(vec![0, 2])), 4).unwrap(), vec![0, 2]);
        assert!(cell_ranks(Some(&Targets(vec![4])), 4).unwrap_err().contains("no rank 4"));
        assert_eq!(cell_ranks(None, 2).unwrap(), vec![0, 1]);
    }

    #[test]
    fn data_magics_parse() {
        let Ok(Parsed::Run(p)) = parse_pull("w --out all --targets 0,2") else { panic!() };
        assert_eq!((p.name.as_str(), p.out.as_deref(), p.targets), ("w", Some("all"), Some(Targets(vec![0, 2]))));
        assert!(parse_pull("").is_err());
        assert!(parse_pull("a b").is_err());
        let Ok(Parsed::Run(p)) = parse_push("a, b c") else { panic!() };
        assert_eq!(p.names, ["a", "b", "c"]);
        assert!(parse_push("").is_err());
        assert!(parse_push("1x").unwrap_err().contains("not a variable name"));
        assert!(matches!(parse_push("--help"), Ok(Parsed::Help(_))));
    }

    #[test]
    fn pool_types_read_as_session_types() {
        assert_eq!(session_type("alloc::vec::Vec<ctx::Shard>"), "Vec<Shard>");
        assert_eq!(session_type("ctx::Shard"), "Shard");
        assert_eq!(session_type("myctx::A"), "myctx::A");
        assert_eq!(session_type("(f64, ctx::B)"), "(f64, B)");
    }

    #[test]
    fn px_lines_split_flags_from_the_expression() {
        assert_eq!(split_px_line("ranch::rank()"), ("", "ranch::rank()"));
        assert_eq!(split_px_line(" --targets 0,2  x.len() "), ("--targets 0,2", "x.len()"));
        assert_eq!(split_px_line("--targets=1 --x"), ("--targets=1", "--x"));
        assert_eq!(split_px_line("-x"), ("", "-x"));
        assert_eq!(split_px_line("--quiet --targets 1 x"), ("--quiet --targets 1", "x"));
    }
}
