//! Starting rank processes: [`LocalSpawner`] spawns each rank on this host; [`mpirun`] and
//! [`srun`] make the command line of a launcher that starts every rank itself, on this host
//! or others, whose output [`tagged`] splits back into the ranks' streams.

pub mod mpi_build;
pub mod mpirun;
pub mod shared;
pub mod ship;
pub mod srun;
pub mod tagged;

use crate::hosts::{LauncherKind, Placement};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Where each rank runs and what it is told.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    pub exe: PathBuf,
    pub delivery: Delivery,
    /// Ranks this launcher starts: global ranks `base_rank .. base_rank + local_ranks`.
    pub local_ranks: usize,
    /// Ranks in the whole group (several kernels may launch parts of it).
    pub world_size: usize,
    pub base_rank: usize,
    /// Directory of this launch on the kernel's host (shipped variables, results: the ranks
    /// reach them through the launch's channel).
    pub run_dir: PathBuf,
    pub master_addr: String,
    pub master_port: u16,
    /// Environment for every rank (e.g. where libstd lives).
    pub env: Vec<(String, String)>,
    /// Per-rank extra environment (GPU pinning), indexed by rank.
    pub rank_env: Vec<Vec<(String, String)>>,
}

/// How the ranks get their program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// They run `exe`, this host's file.
    Path,
    /// They fetch it over the launch's channel ([`ship`]): their hosts cannot read `exe`.
    Channel,
    /// They run `exe`, a copy in the user's shared directory, once they have checked that it
    /// has this SHA-256 ([`shared`]).
    SharedDir { sha256: String },
}

impl LaunchPlan {
    /// What every rank is told, whoever starts it (a launcher that starts every rank tells
    /// each its rank in its own variables, read by `ranch::rank()`).
    pub fn shared_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("WORLD_SIZE".to_string(), self.world_size.to_string()),
            ("MASTER_ADDR".to_string(), self.master_addr.clone()),
            ("MASTER_PORT".to_string(), self.master_port.to_string()),
            (ranch::__rt::BASE_RANK_ENV.to_string(), self.base_rank.to_string()),
        ];
        if let Delivery::SharedDir { sha256 } = &self.delivery {
            env.push((shared::PROGRAM_ENV.to_string(), self.exe.to_string_lossy().into_owned()));
            env.push((shared::SHA256_ENV.to_string(), sha256.clone()));
        }
        env.extend(self.env.iter().cloned());
        env
    }

    /// What a launcher that starts every rank runs on each: the program, or the script that
    /// fetches it or checks it.
    pub fn program_argv(&self) -> Vec<String> {
        match self.delivery {
            Delivery::Path => vec![self.exe.to_string_lossy().into_owned()],
            Delivery::Channel => ship::command(),
            Delivery::SharedDir { .. } => shared::command(),
        }
    }
}

/// A launcher that starts every rank itself (`mpirun`, `srun`): one process to run.
#[derive(Debug, Clone)]
pub struct LauncherCommand {
    /// "mpirun", "srun": for messages.
    pub name: &'static str,
    pub program: String,
    pub args: Vec<String>,
    /// Set on the launcher's process, which passes it to every rank. Secrets travel here,
    /// never in `args` (which `ps` and remote shells show).
    pub env: Vec<(String, String)>,
    pub tags: tagged::TagFormat,
    /// Reads the launcher's own messages for the ranks it says failed.
    pub report: fn(&[String]) -> Vec<Culprit>,
    /// The launcher's own lines known to be harmless, which the cell does not show (they
    /// are still read by `report`).
    pub harmless: fn(&str) -> bool,
}

impl LauncherCommand {
    /// The command as a user would type it (shown when the launcher cannot start).
    pub fn shown(&self) -> String {
        shlex::try_join(std::iter::once(self.program.as_str()).chain(self.args.iter().map(String::as_str)))
            .unwrap_or_else(|_| self.program.clone())
    }

    /// Starts the launcher in its own process group, with piped stdout and stderr.
    pub fn spawn(&self) -> std::io::Result<Child> {
        Command::new(&self.program)
            .args(&self.args)
            .current_dir(std::env::current_dir().unwrap_or_else(|_| "/".into()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
    }
}

/// Why a launcher's command could not be made.
#[derive(Debug)]
pub enum CommandError {
    /// A setting of the user's is wrong (`RANCH_MPIRUN_ARGS` with unbalanced quotes).
    Usage(String),
    /// A file the launcher needs could not be written.
    Io(String),
}

/// The command of the launcher that starts every rank of `plan` where `placement` says
/// (`None`: ranks are spawned here). `keep_going`: a failing rank does not end the others.
/// `RANCH_MPIRUN`/`RANCH_SRUN` name the launcher's program, `RANCH_MPIRUN_ARGS`/
/// `RANCH_SRUN_ARGS` add a site's arguments.
pub fn command_for(placement: &Placement, keep_going: bool, plan: &LaunchPlan) -> Result<Option<LauncherCommand>, CommandError> {
    let extra = |var: &str| -> Result<Vec<String>, CommandError> {
        match std::env::var(var) {
            Ok(v) => shlex::split(&v).ok_or_else(|| CommandError::Usage(format!("{var} has unbalanced quotes: {v}"))),
            Err(_) => Ok(Vec::new()),
        }
    };
    Ok(match placement.launcher {
        LauncherKind::Local => None,
        LauncherKind::Mpirun => {
            let extra = extra("RANCH_MPIRUN_ARGS")?;
            let reach = placement.reach_addr().unwrap_or_default();
            let network = mpirun::network_args(&placement.hosts, &reach, &|param| mpirun::user_sets(param, &extra));
            Some(mpirun::command(
                plan,
                &mpirun::MpirunOptions {
                    hosts: placement.hosts.clone(),
                    keep_going,
                    as_root: nix::unistd::geteuid().is_root(),
                    program: std::env::var("RANCH_MPIRUN").ok(),
                    extra,
                    network,
                },
            ))
        }
        LauncherKind::Srun => {
            if !placement.hosts.is_empty() {
                std::fs::write(srun::hostfile_path(plan), srun::hostfile(placement))
                    .map_err(|e| CommandError::Io(format!("cannot write the Slurm hostfile: {e}")))?;
            }
            let options = srun::SrunOptions { keep_going, program: std::env::var("RANCH_SRUN").ok(), extra: extra("RANCH_SRUN_ARGS")? };
            Some(srun::command(plan, placement, &options))
        }
    })
}

/// A rank a launcher reported as the cause of a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Culprit {
    /// The rank's place in the launch (0 for its first rank).
    pub rank: usize,
    pub host: Option<String>,
    pub end: RankEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankEnd {
    Code(i32),
    Signal(i32),
}

pub trait Launcher: Sync {
    /// Starts local rank `rank` of the plan with piped stdout and stderr.
    fn spawn_rank(&self, plan: &LaunchPlan, rank: usize) -> std::io::Result<Child>;
}

/// Spawns each rank as a fresh process in its own process group. `posix_spawn` is used
/// (no `pre_exec`): forking a process as large as the kernel costs tens of milliseconds per
/// rank. The rank program ties itself to the kernel's life (`ranch::__rt::init_rank`).
pub struct LocalSpawner;

impl Launcher for LocalSpawner {
    fn spawn_rank(&self, plan: &LaunchPlan, rank: usize) -> std::io::Result<Child> {
        {
            let mut cmd = Command::new(&plan.exe);
            cmd.current_dir(std::env::current_dir().unwrap_or_else(|_| "/".into()))
                .env("RANK", (plan.base_rank + rank).to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("LOCAL_WORLD_SIZE", plan.local_ranks.to_string())
                .env(ranch::__rt::PARENT_PID_ENV, std::process::id().to_string())
                .envs(plan.shared_env())
                .envs(plan.rank_env.get(rank).into_iter().flatten().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            cmd.spawn()
        }
    }
}

/// Signals a rank's whole process group (the rank and anything it started).
pub fn kill_group(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), signal);
}
