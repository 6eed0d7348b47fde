//! The binary's roles (`ranch_magics::role`), told once at start from how it was started.
//!
//! Nothing of ours changes the process-wide environment (issue 23): `set_var` while another
//! thread reads the environment through libc (rust-analyzer, cargo's spawns, a cell's code)
//! is undefined behaviour, and a change meant for one child reaches every child started
//! meanwhile. What a child needs is given to its `Command`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel binary started with `RANCH_ROLE=role`: its exit status and stderr.
fn start_as(role: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ranch-kernel")).env("RANCH_ROLE", role).output().expect("the binary starts");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_role_that_is_not_one_says_so_and_runs_nothing() {
    let (code, stderr) = start_as("fanout");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("RANCH_ROLE=\"fanout\" names no role of this binary"), "{stderr}");
}

#[test]
fn a_role_without_its_configuration_says_which_descriptor_is_missing() {
    let (code, stderr) = start_as("pool-fanout:57");
    assert_eq!(code, Some(97), "{stderr}");
    assert!(stderr.contains("the pool-fanout process cannot read its configuration from descriptor 57: it is not open"), "{stderr}");
    let (code, stderr) = start_as("janitor:57");
    assert_eq!(code, Some(97), "{stderr}");
    assert!(stderr.contains("the janitor process cannot read its configuration from descriptor 57"), "{stderr}");
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn no_code_of_ours_changes_the_process_environment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
    let mut files = Vec::new();
    for src in ["kernel/src", "magics/src", "runtime/src"] {
        rust_files(&root.join(src), &mut files);
    }
    assert!(files.len() > 50, "only {} files found under {}", files.len(), root.display());
    let mut changes = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if ["set_var(", "remove_var("].iter().any(|call| code.contains(call)) {
                changes.push(format!("{}:{}: {}", file.strip_prefix(root).unwrap().display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        changes.is_empty(),
        "these change the process's environment; give the child's Command what it needs instead:\n{}",
        changes.join("\n")
    );
}
