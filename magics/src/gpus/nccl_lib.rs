//! Finding NCCL for ranks. cudarc opens `libnccl.so` and a few versioned names, but not
//! `libnccl.so.2`: NCCL's real file name, and the only one pip's `nvidia-nccl-cu12` wheel
//! and many system packages ship. The launcher finds it and gives ranks a directory with a
//! `libnccl.so` link to it, first on their `LD_LIBRARY_PATH` (the loader reads that
//! variable once, at process start, so a rank cannot arrange this for itself).

use std::path::{Path, PathBuf};

const NAMES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

/// Where NCCL is: the directories of `LD_LIBRARY_PATH`, then `extra` (a virtual
/// environment's `nvidia/nccl/lib`, CUDA's `lib64`), then the loader's cache (`ldconfig -p`
/// output).
pub fn find(ld_library_path: Option<&str>, extra: &[PathBuf], ldconfig: &str) -> Option<PathBuf> {
    let dirs = ld_library_path.unwrap_or("").split(':').filter(|d| !d.is_empty()).map(PathBuf::from).chain(extra.iter().cloned());
    for dir in dirs {
        for name in NAMES {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    // "\tlibnccl.so.2 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnccl.so.2"
    ldconfig.lines().find_map(|line| {
        let (name, path) = line.trim().split_once(" => ")?;
        let name = name.split_whitespace().next()?;
        (NAMES.contains(&name) && Path::new(path.trim()).is_file()).then(|| PathBuf::from(path.trim()))
    })
}

/// The usual places beside `LD_LIBRARY_PATH`: the active virtual environment's and the
/// user's site-packages (pip's NCCL wheel), and CUDA's own directory.
pub fn usual_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut site_packages = |root: PathBuf| {
        for lib in ["lib", "lib64"] {
            let Ok(entries) = std::fs::read_dir(root.join(lib)) else { continue };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("python3") {
                    dirs.push(e.path().join("site-packages/nvidia/nccl/lib"));
                }
            }
        }
    };
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").or_else(|| std::env::var_os("CONDA_PREFIX")) {
        site_packages(PathBuf::from(venv));
    }
    if let Some(home) = std::env::var_os("HOME") {
        site_packages(PathBuf::from(home).join(".local"));
    }
    for cuda in [std::env::var_os("CUDA_HOME").map(PathBuf::from), Some(PathBuf::from("/usr/local/cuda"))].into_iter().flatten() {
        dirs.push(cuda.join("lib64"));
    }
    dirs
}

/// Finds NCCL (see [`find`]) and makes `dir/libnccl.so` point at it; returns `dir` for the
/// front of the ranks' `LD_LIBRARY_PATH`, or `None` when there is no NCCL to find.
pub fn link_for_ranks(dir: &Path) -> Option<PathBuf> {
    let ldconfig = std::process::Command::new("ldconfig")
        .arg("-p")
        .output()
        .or_else(|_| std::process::Command::new("/sbin/ldconfig").arg("-p").output())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let found = find(std::env::var("LD_LIBRARY_PATH").ok().as_deref(), &usual_dirs(), &ldconfig)?;
    std::fs::create_dir_all(dir).ok()?;
    let link = dir.join("libnccl.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&found, &link).ok()?;
    Some(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_on_the_library_path_in_extra_dirs_or_in_the_loader_cache() {
        let root = std::env::temp_dir().join(format!("ranch-nccl-test-{}", std::process::id()));
        let (a, b) = (root.join("a"), root.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("libnccl.so.2"), b"").unwrap();
        let path = format!("{}:{}", a.display(), b.display());
        assert_eq!(find(Some(&path), &[], ""), Some(b.join("libnccl.so.2")));
        assert_eq!(find(None, &[a.clone(), b.clone()], ""), Some(b.join("libnccl.so.2")));
        let cache = format!("\tlibz.so.1 (libc6,x86-64) => /nope\n\tlibnccl.so.2 (libc6,x86-64) => {}\n", b.join("libnccl.so.2").display());
        assert_eq!(find(None, &[], &cache), Some(b.join("libnccl.so.2")));
        assert_eq!(find(Some(&a.display().to_string()), &[], "\tlibnccl.so.2 (libc6) => /nope/libnccl.so.2"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
