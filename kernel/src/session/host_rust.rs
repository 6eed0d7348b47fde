//! The Rust toolchain the session builds with (`rustc` on PATH, as evcxr finds it):
//! its host target and the directory holding its `libstd-*.so`.
//!
//! Cells and rank programs link libstd dynamically (evcxr's `-Cprefer-dynamic`), and rustc
//! finds it through an `$ORIGIN`-relative RUNPATH computed for `target/.../deps/`. evcxr
//! then moves each cell's library up one directory, so the path is one `..` too long:
//! harmless from `/tmp` (the extra step stops at `/`), wrong from a directory that shares
//! a prefix with the toolchain (`~/.cache` and `~/.rustup`). Processes that load or run
//! such code get the directory in `LD_LIBRARY_PATH`, which is searched first.

use std::sync::OnceLock;

#[derive(Debug, Clone)]
pub struct HostRust {
    /// e.g. `x86_64-unknown-linux-gnu`.
    pub triple: String,
    /// `<sysroot>/lib/rustlib/<triple>/lib`.
    pub libdir: String,
}

pub fn host_rust() -> Result<&'static HostRust, String> {
    static HOST: OnceLock<Result<HostRust, String>> = OnceLock::new();
    HOST.get_or_init(ask_rustc).as_ref().map_err(Clone::clone)
}

fn ask_rustc() -> Result<HostRust, String> {
    let out = std::process::Command::new("rustc")
        .args(["--print", "sysroot", "--print", "host-tuple"])
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(str::trim);
    match (out.status.success(), lines.next(), lines.next()) {
        (true, Some(sysroot), Some(triple)) if !sysroot.is_empty() && !triple.is_empty() => {
            Ok(HostRust { triple: triple.to_string(), libdir: format!("{sysroot}/lib/rustlib/{triple}/lib") })
        }
        _ => Err(format!(
            "`rustc --print sysroot --print host-tuple` failed ({}): Rust 1.84 or newer is needed",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// `LD_LIBRARY_PATH` with `dir` first.
pub fn library_path_with(dir: &str) -> String {
    match std::env::var("LD_LIBRARY_PATH") {
        Ok(rest) if !rest.is_empty() => format!("{dir}:{rest}"),
        _ => dir.to_string(),
    }
}
