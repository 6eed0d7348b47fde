//! Building a rank program once, with cargo, reusing the session's compiled dependencies.

use crate::diagnostic::{Diagnostic, Label};
use crate::program::RankProgram;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// Runs as cargo's `RUSTC_WRAPPER` for rank builds: the rank crate itself is linked with a
/// static libstd (dependencies keep evcxr's `-Cprefer-dynamic` and stay fresh), so a rank
/// starts without loading libstd.so and runs wherever it is copied. Never returns.
pub fn rustc_wrapper() -> ! {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os().skip(1);
    let rustc = args.next().expect("cargo passes rustc's path to RUSTC_WRAPPER");
    let primary = std::env::var_os("CARGO_PRIMARY_PACKAGE").is_some();
    let mut out: Vec<std::ffi::OsString> = Vec::new();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        if primary && a == "-Cprefer-dynamic" {
            continue;
        }
        if primary && a == "-C" && args.peek().is_some_and(|n| n == "prefer-dynamic") {
            args.next();
            continue;
        }
        out.push(a);
    }
    let err = Command::new(&rustc).args(out).exec();
    eprintln!("ranch: cannot run {}: {err}", rustc.to_string_lossy());
    std::process::exit(127)
}

/// How evcxr builds, so that cargo considers the session's dependencies fresh.
#[derive(Debug, Clone)]
pub struct Toolchain {
    pub cargo: PathBuf,
    /// evcxr's target dir (`<tmpdir>/target`).
    pub target_dir: PathBuf,
    pub target_triple: String,
    pub rustflags: String,
    /// evcxr's `Cargo.lock`, copied so dependency versions match.
    pub lockfile: Option<PathBuf>,
    /// This binary, run as `RUSTC_WRAPPER` in the role [`crate::role::RUSTC_WRAPPER`].
    pub wrapper: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the cell does not compile")]
    Compile(Vec<Diagnostic>),
    #[error("the build was stopped")]
    Stopped,
    #[error("{0}")]
    Failed(String),
}

/// A running build's process group, so an interrupt can stop it.
#[derive(Default, Clone)]
pub struct BuildHandle(Arc<Mutex<Option<i32>>>);

impl BuildHandle {
    pub fn stop(&self) {
        if let Some(pgid) = *self.0.lock().unwrap() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Writes the crate into `dir` and builds it; returns the executable. `progress` gets
/// cargo's human-readable lines (`Compiling ...`); `group` is told the build's process
/// group when it starts (`true`) and ends (`false`), so that it never outlives the caller.
pub fn build(
    program: &RankProgram,
    dir: &Path,
    tools: &Toolchain,
    handle: &BuildHandle,
    progress: &(dyn Fn(&str) + Sync),
    group: &dyn Fn(i32, bool),
) -> Result<PathBuf, BuildError> {
    let io = |e: std::io::Error| BuildError::Failed(format!("cannot write the rank program in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir.join("src")).map_err(io)?;
    write_if_changed(&dir.join("Cargo.toml"), &program.cargo_toml).map_err(io)?;
    write_if_changed(&dir.join("src/main.rs"), &program.main_rs).map_err(io)?;
    if let Some(lock) = &tools.lockfile
        && let Ok(text) = std::fs::read_to_string(lock)
    {
        write_if_changed(&dir.join("Cargo.lock"), &text).map_err(io)?;
    }
    let mut cmd = Command::new(&tools.cargo);
    cmd.current_dir(dir)
        .args(["build", "--message-format=json-diagnostic-rendered-ansi", "--target", &tools.target_triple])
        .env("CARGO_TARGET_DIR", &tools.target_dir)
        .env("CARGO_BUILD_BUILD_DIR", &tools.target_dir)
        .env("RUSTFLAGS", &tools.rustflags)
        .env_remove("RUSTC_WRAPPER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(wrapper) = &tools.wrapper {
        cmd.env("RUSTC_WRAPPER", wrapper).env(crate::role::ROLE_ENV, crate::role::RUSTC_WRAPPER);
    }
    let mut child = cmd.spawn().map_err(|e| BuildError::Failed(format!("cannot run cargo ({}): {e}", tools.cargo.display())))?;
    *handle.0.lock().unwrap() = Some(child.id() as i32);
    group(child.id() as i32, true);
    let stderr = child.stderr.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let mut executable = None;
    let mut diagnostics = Vec::new();
    let stderr_lines = std::thread::scope(|scope| {
        // cargo's progress streams to the cell while it builds.
        let errs = scope.spawn(|| {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let t = line.trim_start();
                let ours = t.contains(crate::program::PACKAGE);
                if (t.starts_with("Compiling ") && !ours) || t.starts_with("Downloaded ") {
                    progress(t);
                }
                lines.push(line);
            }
            lines
        });
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(msg) = serde_json::from_str::<Value>(&line) else { continue };
            let ours = msg["target"]["name"] == crate::program::PACKAGE;
            match msg["reason"].as_str() {
                Some("compiler-artifact") if ours => executable = msg["executable"].as_str().map(PathBuf::from),
                Some("compiler-message") if ours && msg["message"]["level"] == "error" => {
                    diagnostics.push(diagnostic(&msg["message"], program));
                }
                _ => {}
            }
        }
        errs.join().unwrap_or_default()
    });
    let status = child.wait().map_err(|e| BuildError::Failed(e.to_string()));
    *handle.0.lock().unwrap() = None;
    // Whatever the build started is gone with it.
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL);
    group(child.id() as i32, false);
    let status = status?;
    use std::os::unix::process::ExitStatusExt;
    if status.signal().is_some() {
        return Err(BuildError::Stopped);
    }
    if !diagnostics.is_empty() {
        return Err(BuildError::Compile(diagnostics));
    }
    match (status.success(), executable) {
        (true, Some(exe)) => Ok(exe),
        _ => Err(BuildError::Failed(format!("cargo failed to build the rank program:\n{}", stderr_lines.join("\n")))),
    }
}

/// Leaves unchanged files alone so cargo's fingerprints stay fresh.
fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    std::fs::write(path, text)
}

/// A rustc JSON diagnostic, with spans in the body mapped to cell lines.
fn diagnostic(msg: &Value, program: &RankProgram) -> Diagnostic {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let labels = msg["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["file_name"].as_str().is_some_and(|f| f.ends_with("main.rs")))
        .filter_map(|s| {
            let line = program.cell_line(s["line_start"].as_u64()? as usize)?;
            let same_line = s["line_start"] == s["line_end"];
            Some(Label {
                line,
                start_column: s["column_start"].as_u64()? as usize,
                end_column: if same_line { s["column_end"].as_u64()? as usize } else { usize::MAX },
                text: text(&s["label"]),
                primary: s["is_primary"].as_bool().unwrap_or(false),
            })
        })
        .collect();
    let notes = msg["children"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some(format!("{}: {}", c["level"].as_str()?, c["message"].as_str()?)))
        .collect();
    Diagnostic {
        level: text(&msg["level"]),
        code: msg["code"]["code"].as_str().map(str::to_string),
        message: text(&msg["message"]),
        labels,
        notes,
        fallback: msg["rendered"].as_str().map(str::to_string),
    }
}
