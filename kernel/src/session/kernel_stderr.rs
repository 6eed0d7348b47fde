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
                    cell.try_stream(Stream::Stderr, &format!("{}\n", line.trim_start()));
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

#[cfg(test)]
mod tests {
    #[test]
    fn recognises_cargo_progress() {
        assert!(super::is_cargo_progress("   Compiling serde v1.0.0"));
        assert!(!super::is_cargo_progress("[ranch-kernel] Compiling nothing"));
    }
}
