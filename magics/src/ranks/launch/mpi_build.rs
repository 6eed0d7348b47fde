//! What building a rank program with the runtime's `mpi` feature needs on this host: an
//! MPI's compiler wrapper (`mpicc`, which rsmpi's build asks for MPI's flags; Debian:
//! libopenmpi-dev) and libclang (bindgen reads `mpi.h` with it; Debian: libclang-dev).
//! Checked before the build, so that a missing package is one clear message rather than
//! a page of build-script output.

use std::path::Path;

/// Where clang-sys looks for libclang when `LIBCLANG_PATH` is not set (the usual places).
const LIBCLANG_DIRS: &[&str] = &["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"];

/// Ok, or what to install.
pub fn check() -> Result<(), String> {
    let env = |k: &str| std::env::var(k).ok();
    let mut missing = Vec::new();
    let mpicc = env("MPICC").unwrap_or_else(|| "mpicc".into());
    if !on_path(&mpicc, env("PATH").as_deref().unwrap_or("")) {
        missing.push(format!("MPI's compiler wrapper `{mpicc}` (Debian: libopenmpi-dev)"));
    }
    let mut dirs: Vec<String> = env("LIBCLANG_PATH").into_iter().collect();
    dirs.extend(LIBCLANG_DIRS.iter().map(|d| d.to_string()));
    dirs.extend(llvm_dirs());
    if !dirs.iter().any(|d| has_libclang(Path::new(d))) {
        missing.push("libclang (Debian: libclang-dev; or set LIBCLANG_PATH)".into());
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the MPI backend builds the rank program against MPI, which needs {} on this host (install/mpi.sh installs them); \
         or use --backend shm with every rank on this host",
        missing.join(" and ")
    ))
}

fn on_path(program: &str, path: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::split_paths(path).any(|dir| dir.join(program).is_file())
}

/// `/usr/lib/llvm-*/lib`, where Debian keeps each LLVM version's libclang.
fn llvm_dirs() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/usr/lib") else { return vec![] };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
        .map(|e| e.path().join("lib").to_string_lossy().into_owned())
        .collect()
}

/// Whether `dir` has libclang's shared library (`libclang.so*`, `libclang-14.so*`), not
/// only the C++ one (`libclang-cpp`).
fn has_libclang(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| is_libclang(&e.file_name().to_string_lossy()))
}

fn is_libclang(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("libclang") else { return false };
    rest.starts_with(".so") || rest.strip_prefix('-').is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()) && v.contains(".so"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libclang_is_told_from_its_cpp_sibling() {
        for yes in ["libclang.so", "libclang.so.1", "libclang-14.so.1", "libclang-14.0.6.so"] {
            assert!(is_libclang(yes), "{yes}");
        }
        for no in ["libclang-cpp.so.14", "libclangAST.a", "libclang-14.a", "libclan.so"] {
            assert!(!is_libclang(no), "{no}");
        }
    }

    #[test]
    fn programs_are_found_on_the_path() {
        assert!(on_path("sh", "/nonexistent:/bin:/usr/bin"));
        assert!(!on_path("sh", "/nonexistent"));
        assert!(on_path("/bin/sh", ""));
    }
}
