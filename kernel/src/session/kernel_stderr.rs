//! evcxr echoes cargo's `Compiling <crate>` lines to the kernel's own stderr, which ends up
//! in the Jupyter server's log. The kernel's stderr is re-pointed at a pipe so those lines
//! also reach the cell that caused the build (everything still reaches the log).

use super::events::CurrentCell;
use crate::interpreter::Stream;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::sync::Arc;

pub fn capture_cargo_progress(cell: Arc<CurrentCell>) -> nix::Result<()> {
    let mut log = File::from(nix::unistd::dup(std::io::stderr().as_fd())?);
    // Close-on-exec: only fd 2 (a dup2 copy, which does not inherit the flag) reaches children.
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::unistd::dup2_stderr(&write)?;
    drop(write);
    std::thread::Builder::new()
        .name("kernel-stderr".into())
        .spawn(move || {
            for line in BufReader::new(File::from(read)).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if is_cargo_progress(&line) {
                    cell.try_stream(Stream::Stderr, &format!("{}\n", without_local_path(line.trim_start())));
                }
            }
        })
        .map_err(|_| nix::Error::EAGAIN)?;
    Ok(())
}

fn is_cargo_progress(line: &str) -> bool {
    let t = line.trim_start();
    ["Compiling ", "Downloaded ", "Downloading ", "Updating ", "Blocking "].iter().any(|p| t.starts_with(p))
}

/// cargo names a path dependency by its directory (`Compiling ranch v0.1.0 (/home/me/...)`):
/// the cell shows the crate and version only, so a notebook saved with its outputs carries
/// no path of the machine it ran on. A git dependency's URL stays.
fn without_local_path(line: &str) -> &str {
    match line.find(" (/") {
        Some(at) if line.ends_with(')') => &line[..at],
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_path_dependency_is_shown_without_its_directory() {
        assert_eq!(super::without_local_path("Compiling ranch v0.1.0 (/root/.cache/ranch/runtime-71)"), "Compiling ranch v0.1.0");
        assert_eq!(super::without_local_path("Compiling serde v1.0.228"), "Compiling serde v1.0.228");
        let git = "Compiling foo v0.1.0 (https://github.com/o/foo#1a2b3c4d)";
        assert_eq!(super::without_local_path(git), git);
    }

    #[test]
    fn recognises_cargo_progress() {
        assert!(super::is_cargo_progress("   Compiling serde v1.0.0"));
        assert!(!super::is_cargo_progress("[ranch-kernel] Compiling nothing"));
    }
}
