//! A small process that cleans up after the kernel, however the kernel ends (`kill -9`
//! included, when the kernel itself can run no code).
//!
//! It is this binary started in the role [`ranch_magics::role::JANITOR`], in a process group
//! of its own (so a signal to the kernel's group does not reach it), with its configuration
//! ([`Config`]) on an inherited descriptor, reading a pipe whose other end only the kernel
//! holds. The kernel writes `+<pgid>` when it starts a process group it must not
//! leave behind (a rank build, a rank) and `-<pgid>` when that group has ended. When the
//! pipe closes, the kernel is gone: the janitor kills the groups still listed, removes the
//! kernel's shared-memory segments, its private directory and the group tokens it
//! published, and exits.

use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What the janitor cleans up after.
#[derive(serde::Serialize, serde::Deserialize)]
struct Config {
    /// The kernel's pid (it names the kernel's shared-memory segments and group tokens).
    kernel: i32,
    /// The kernel's private directory.
    private: PathBuf,
    /// Where the kernel publishes group tokens.
    token_dir: Option<PathBuf>,
}

/// The kernel's end of the pipe.
static PIPE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Starts the janitor for this kernel. `private` is the kernel's private directory;
/// `token_dir` where it publishes group tokens.
pub fn start(private: &Path, token_dir: Option<PathBuf>) -> std::io::Result<()> {
    let (read, write) = nix::unistd::pipe()?;
    // The kernel's end must not leak into its children (they would keep the pipe open).
    nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    let config = Config { kernel: std::process::id() as i32, private: private.to_path_buf(), token_dir };
    ranch_magics::role::pass_config(&mut cmd, ranch_magics::role::JANITOR, &serde_json::to_vec(&config).expect("serialises"))?;
    cmd.stdin(std::process::Stdio::from(read)).stdout(std::process::Stdio::null()).process_group(0);
    let child = cmd.spawn()?;
    // Not waited for: it outlives the kernel by design, and exits on its own.
    std::mem::forget(child);
    *PIPE.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::fs::File::from(write));
    Ok(())
}

fn tell(line: &str) {
    if let Some(pipe) = PIPE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        let _ = writeln!(pipe, "{line}");
    }
}

/// The process groups watched now: launches (a cell's or a background job's) still own
/// them, so no other launch's clean-up may touch what is in them.
static WATCHED: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// The process group `pgid` must not outlive the kernel.
pub fn watch(pgid: i32) {
    WATCHED.lock().unwrap_or_else(|e| e.into_inner()).push(pgid);
    tell(&format!("+{pgid}"));
}

/// The process group `pgid` has ended.
pub fn forget(pgid: i32) {
    let mut watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(at) = watched.iter().position(|&g| g == pgid) {
        watched.swap_remove(at);
    }
    drop(watched);
    tell(&format!("-{pgid}"));
}

/// The process groups a launch still owns (see [`watch`]).
pub fn watched() -> Vec<i32> {
    WATCHED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The janitor itself, with its configuration on `config`; never returns.
pub fn run(config: ranch_magics::role::ConfigFd) -> ! {
    let role = ranch_magics::role::JANITOR;
    let config: Config = match config.read(role).map(|c| serde_json::from_slice(&c)) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => fail(&format!("a bad configuration: {e}")),
        Err(e) => fail(&e.to_string()),
    };
    let Config { kernel, private, token_dir } = config;
    // Signals meant for the kernel's terminal or session are not for us.
    for sig in [nix::sys::signal::Signal::SIGINT, nix::sys::signal::Signal::SIGHUP] {
        // SAFETY: ignoring a signal installs no handler.
        unsafe {
            let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn);
        }
    }
    let mut groups: Vec<i32> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match (line.get(..1), line.get(1..).and_then(|n| n.parse::<i32>().ok())) {
            (Some("+"), Some(g)) if g > 1 => groups.push(g),
            (Some("-"), Some(g)) => groups.retain(|&x| x != g),
            _ => {}
        }
    }
    // The kernel is gone.
    for g in groups {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(g), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = std::fs::remove_dir_all(private);
    remove_segments(kernel);
    if let Some(dir) = token_dir {
        remove_tokens(&dir, kernel);
    }
    std::process::exit(0)
}

fn fail(message: &str) -> ! {
    eprintln!("ranch-kernel janitor: {message}");
    std::process::exit(97)
}

/// `/dev/shm/ranch-<kernel>-*`.
fn remove_segments(kernel: i32) {
    let prefix = format!("ranch-{kernel}-");
    let Ok(entries) = std::fs::read_dir("/dev/shm") else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Published tokens of `kernel`'s groups (their files name the kernel's pid).
fn remove_tokens(dir: &Path, kernel: i32) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        if ranch_magics::group::Published::parse(&text).is_some_and(|p| p.host_pid == kernel) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
