//! `ranch-kernel doctor`: what this machine lacks for ranch, each with the command that fixes
//! it. The checks are `install/doctor.sh`, which `install/setup.sh` runs before it builds;
//! the binary carries that same script, so an installed kernel can run it anywhere.

use std::process::{Command, Stdio};
use std::time::Duration;

const SCRIPT: &str = include_str!("../../install/doctor.sh");
/// The checks run a few short commands (`rustc --version`, `df`); a hung one is not waited for.
const LIMIT: Duration = Duration::from_secs(20);

fn command() -> Command {
    // Found on this process's PATH, not the one the checks run with.
    let bash = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("bash")).find(|b| b.is_file()))
        .unwrap_or_else(|| "/bin/bash".into());
    let mut c = Command::new(bash);
    c.arg("-c").arg(SCRIPT).arg("ranch-doctor").stdin(Stdio::null());
    c
}

/// Runs the checks, printing to this process's stdout; returns the exit status (1: something
/// required is missing).
pub fn run() -> std::io::Result<i32> {
    Ok(command().status()?.code().unwrap_or(1))
}

/// The checks' report, when something required is missing (for a cell that failed in a way
/// the machine may be the cause of); `None` when all is there or the checks could not run.
pub fn findings() -> Option<String> {
    let mut command = command();
    command.stderr(Stdio::null());
    let (status, text) = ranch_magics::bounded_output::output_within(&mut command, LIMIT, 64 << 10).ok()??;
    (status.code() == Some(1)).then_some(text)
}

/// What evcxr, cargo and rustc say when the machine, not the cell, is at fault.
const ENVIRONMENTAL: [&str; 8] = [
    "Failed to run rustc",
    "Error running 'cargo",
    "error: linker `",
    "No space left on device",
    "can't find crate for `std`",
    "can't find crate for `core`",
    "error: toolchain '",
    "could not execute process",
];

/// Whether an error's text says the machine lacks something.
pub fn is_environmental(text: &str) -> bool {
    ENVIRONMENTAL.iter().any(|p| text.contains(p))
}

/// A cell's error, with what the checks find missing added to its traceback when the error
/// looks environmental (a missing toolchain, linker or disk space): said where the user
/// looks, with the command that fixes it.
pub fn explain(error: crate::interpreter::CellError) -> crate::interpreter::CellError {
    let environmental = is_environmental(&error.evalue) || error.traceback.iter().any(|l| is_environmental(l));
    if !environmental {
        return error;
    }
    with_findings(error, findings())
}

fn with_findings(mut error: crate::interpreter::CellError, report: Option<String>) -> crate::interpreter::CellError {
    let missing: Vec<String> = report.iter().flat_map(|r| r.lines()).filter(|l| l.contains("MISSING")).map(str::to_string).collect();
    if !missing.is_empty() {
        error.traceback.push(String::new());
        error.traceback.push("This looks like the machine, not the cell; `ranch-kernel doctor` finds:".into());
        error.traceback.extend(missing);
    }
    error
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_of_the_machine_are_told_from_errors_of_the_cell() {
        assert!(super::is_environmental("error: linker `cc` not found\n  = note: No such file or directory"));
        assert!(super::is_environmental("Error running 'cargo check': No such file or directory (os error 2)"));
        assert!(!super::is_environmental("error[E0308]: mismatched types"));
    }

    #[test]
    fn a_machine_error_gets_what_is_missing_and_its_fix() {
        let error = crate::interpreter::CellError::new("CompilationError", "error: linker `cc` not found");
        let report =
            "ranch doctor: ...\n  ok       Rust 1.95.0\n  MISSING  a C compiler and linker (cc): sudo apt-get install build-essential\n";
        let explained = super::with_findings(error.clone(), Some(report.into()));
        assert_eq!(explained.traceback.last().unwrap(), "  MISSING  a C compiler and linker (cc): sudo apt-get install build-essential");
        assert!(!explained.traceback.iter().any(|l| l.contains("ok       Rust")));
        assert_eq!(
            super::with_findings(error.clone(), Some("  ok  all\n".into())).traceback,
            error.traceback,
            "nothing missing: unchanged"
        );
    }

    #[test]
    fn the_script_names_what_is_missing_and_how_to_fix_it() {
        // A PATH without Rust: the report says so, with rustup's installer.
        let out = super::command().env("PATH", "/nonexistent").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains("MISSING  Rust (cargo, rustc) is not on PATH") && text.contains("sh.rustup.rs"), "{text}");
    }
}
