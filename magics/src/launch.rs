//! Starting rank processes. [`Launcher`] is the seam for other ways of starting ranks
//! (mpirun over several hosts later); [`LocalSpawner`] spawns them on this host.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Where each rank runs and what it is told.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    pub exe: PathBuf,
    /// Ranks this launcher starts: global ranks `base_rank .. base_rank + local_ranks`.
    pub local_ranks: usize,
    /// Ranks in the whole group (several kernels may launch parts of it).
    pub world_size: usize,
    pub base_rank: usize,
    /// Directory of this launch (shipped variables, results).
    pub run_dir: PathBuf,
    pub master_addr: String,
    pub master_port: u16,
    /// Environment for every rank (e.g. where libstd lives).
    pub env: Vec<(String, String)>,
    /// Per-rank extra environment (GPU pinning), indexed by rank.
    pub rank_env: Vec<Vec<(String, String)>>,
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
                .env("WORLD_SIZE", plan.world_size.to_string())
                .env("LOCAL_WORLD_SIZE", plan.local_ranks.to_string())
                .env("MASTER_ADDR", &plan.master_addr)
                .env("MASTER_PORT", plan.master_port.to_string())
                .env(ranch::__rt::RUN_DIR_ENV, &plan.run_dir)
                .env(ranch::__rt::PARENT_PID_ENV, std::process::id().to_string())
                .envs(plan.env.iter().map(|(k, v)| (k, v)))
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
