use clap::{Parser, Subcommand};
use ranch_kernel::install::{self, Location};
use ranch_magics::role::Role;
use std::path::PathBuf;

// rust-analyzer, which evcxr runs inside the kernel, allocates heavily; with mimalloc the
// kernel's start-up and every cell's analysis take less time (evcxr_jupyter does the same).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ranch-kernel", version, about = "Jupyter kernel for Rust (evcxr) with %%ranch parallel cells")]
struct Cli {
    /// Connection file written by the Jupyter frontend; runs the kernel.
    #[arg(short = 'f', long = "connection-file", value_name = "FILE")]
    connection_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Args)]
#[group(multiple = false)]
struct Where {
    /// Install for the current user (the default).
    #[arg(long)]
    user: bool,
    /// Install into the active Python environment.
    #[arg(long)]
    sys_prefix: bool,
    /// Install under PREFIX/share/jupyter.
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<PathBuf>,
}

impl Where {
    fn location(&self) -> Location {
        match (&self.prefix, self.sys_prefix) {
            (Some(p), _) => Location::Prefix(p.clone()),
            (None, true) => Location::SysPrefix,
            _ => Location::User,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write the `ranch` kernelspec so Jupyter can start this binary.
    Install(Where),
    /// Remove the `ranch` kernelspec.
    Uninstall(Where),
    /// Check what this machine has for ranch (Rust, rust-src, a C linker, /dev/shm, MPI, GPUs)
    /// and name the command that fixes each missing thing.
    Doctor,
}

fn main() {
    // What this process is, told once from how it was started (see ranch_magics::role); every
    // role but the kernel's never returns. Each must start before any other thread exists.
    match Role::from_env() {
        Ok(Role::Kernel) => {}
        // Rank builds use this binary as cargo's RUSTC_WRAPPER.
        Ok(Role::RustcWrapper) => ranch_magics::build::rustc_wrapper(),
        // evcxr's own rustc wrapper (used if the user turns off static linking).
        Ok(Role::EvcxrRustcWrapper) => ranch_kernel::session::run_evcxr_rustc_wrapper(),
        // evcxr's child: serves evcxr's protocol (the session's child, or a pool's rank).
        Ok(Role::EvcxrChild) => ranch_kernel::session::run_child(),
        Ok(Role::Janitor(config)) => ranch_kernel::session::run_janitor(config),
        Ok(Role::GpuProbe) => ranch_magics::gpus::serve_probe(),
        // A pool's fan-out: evcxr's child, in front of the pool's ranks.
        Ok(Role::PoolFanout(config)) => ranch_magics::ranks::pool::run_fanout(config),
        // A pool's rank started by a launcher, in front of the rank itself.
        Ok(Role::PoolRelay { hub }) => ranch_magics::ranks::pool::run_relay(&hub),
        Err(e) => {
            eprintln!("ranch-kernel: {e}");
            std::process::exit(2);
        }
    }

    let cli = Cli::parse();
    let result = match (cli.command, cli.connection_file) {
        (Some(Command::Install(w)), _) => install::install(&w.location()).map(|dir| {
            println!("Installed kernelspec {} in {}", install::KERNEL_NAME, dir.display());
        }),
        (Some(Command::Uninstall(w)), _) => install::uninstall(&w.location()).map(|dir| match dir {
            Some(dir) => println!("Removed kernelspec {} from {}", install::KERNEL_NAME, dir.display()),
            None => println!("No kernelspec {} installed there", install::KERNEL_NAME),
        }),
        (Some(Command::Doctor), _) => match ranch_kernel::doctor::run() {
            Ok(code) => std::process::exit(code),
            Err(e) => Err(anyhow::anyhow!("cannot run the checks with bash: {e}")),
        },
        (None, Some(file)) => run_kernel(&file),
        (None, None) => {
            eprintln!(
                "ranch-kernel: nothing to do. Jupyter starts it with --connection-file FILE; \
                       run `ranch-kernel install` to register it (see --help)."
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("ranch-kernel: error: {e:#}");
        std::process::exit(1);
    }
}

fn run_kernel(file: &std::path::Path) -> anyhow::Result<()> {
    let info = ranch_kernel::connection::load(file)?;
    // A Jupyter started without a login shell may lack cargo on PATH: the kernel starts
    // again, as the same process, with the toolchain the kernelspec recorded at install
    // time added (the environment is given to the new image, never changed in this one).
    let recorded = std::env::var_os(install::TOOLCHAIN_PATH_ENV);
    if let Some(path) = install::path_with_toolchain(std::env::var_os("PATH").as_deref(), recorded.as_deref()) {
        use std::os::unix::process::CommandExt;
        let error = std::process::Command::new(std::env::current_exe()?).args(std::env::args_os().skip(1)).env("PATH", path).exec();
        return Err(anyhow::anyhow!("cannot start again with the recorded toolchain on PATH: {error}"));
    }
    let interp = ranch_kernel::session::EvcxrSession::start()?;
    exit_with_parent_frontend();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(ranch_kernel::server::serve(info, Box::new(interp)))?;
    // Leave without running destructors of still-running background tasks.
    std::process::exit(0)
}

/// Like ipykernel: when the frontend that started the kernel (`JPY_PARENT_PID`) dies without
/// shutting it down, the kernel exits instead of lingering (its children die with it).
fn exit_with_parent_frontend() {
    let Some(parent) = std::env::var("JPY_PARENT_PID").ok().and_then(|p| p.parse::<u32>().ok()) else { return };
    if std::os::unix::process::parent_id() != parent {
        return; // started through something else (e.g. a nanny process): not ours to watch
    }
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            if std::os::unix::process::parent_id() != parent {
                ranch_kernel::log!("the frontend (pid {parent}) is gone; exiting");
                std::process::exit(1);
            }
        }
    });
}
