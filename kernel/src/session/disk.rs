//! Keeping ranch's disk use bounded: what earlier kernels and other ranch versions left in
//! the cache, and `%ranch_clean` (built rank programs: `ranch_magics::artifacts`).
//!
//! Runtime crates are unpacked per ranch version (`<cache>/runtime-<hash>`). A kernel holds
//! a shared lock on its version's lock file for its life; a version whose lock nobody holds
//! is unused, and is removed with its compiled copies in the build directories.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The lock a kernel holds on its runtime version while it runs.
pub struct RuntimeInUse(#[allow(dead_code)] Flock<File>);

fn lock_file(runtime_dir: &Path) -> PathBuf {
    runtime_dir.with_extension("lock")
}

/// Takes the shared lock on `runtime_dir`'s version.
pub fn use_runtime(runtime_dir: &Path) -> std::io::Result<RuntimeInUse> {
    let file = File::options().create(true).truncate(false).write(true).open(lock_file(runtime_dir))?;
    Flock::lock(file, FlockArg::LockShared).map(RuntimeInUse).map_err(|(_, e)| e.into())
}

/// Removes runtime crates of other versions that no kernel uses, and their compiled copies
/// in `target_dirs`. Returns how many versions went.
pub fn remove_unused_runtimes(cache: &Path, current: &Path, target_dirs: &[PathBuf]) -> usize {
    let Ok(entries) = std::fs::read_dir(cache) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("runtime-") || !path.is_dir() || path == current {
            continue;
        }
        let Ok(file) = File::options().create(true).truncate(false).write(true).open(lock_file(&path)) else { continue };
        let Ok(_unused) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else { continue };
        if std::fs::remove_dir_all(&path).is_ok() {
            let _ = std::fs::remove_file(lock_file(&path));
            removed += 1;
        }
    }
    if removed > 0 {
        for target in target_dirs {
            remove_orphaned_runtime_builds(target);
        }
    }
    removed
}

/// In a target directory: compiled copies of the `ranch` runtime whose sources are gone.
fn remove_orphaned_runtime_builds(target: &Path) {
    let Ok(triples) = std::fs::read_dir(target) else { return };
    for t in triples.flatten() {
        let debug = t.path().join("debug");
        let Ok(deps) = std::fs::read_dir(debug.join("deps")) else { continue };
        for d in deps.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            let Some(hash) = name.strip_prefix("ranch-").and_then(|n| n.strip_suffix(".d")) else { continue };
            // The dep-info's first line names the sources the copy was built from.
            let first = std::fs::read_to_string(d.path()).unwrap_or_default().lines().next().unwrap_or_default().to_string();
            let gone = first.split_whitespace().skip(1).any(|src| src.contains("/runtime-") && !Path::new(src).exists());
            if gone {
                for f in [format!("ranch-{hash}.d"), format!("libranch-{hash}.rlib"), format!("libranch-{hash}.rmeta")] {
                    let _ = std::fs::remove_file(debug.join("deps").join(f));
                }
                let _ = std::fs::remove_dir_all(debug.join(".fingerprint").join(format!("ranch-{hash}")));
                let _ = std::fs::remove_dir_all(debug.join("incremental").join(format!("ranch-{hash}")));
            }
        }
    }
}

/// A kernel's cells from earlier kernels in the same build directory: evcxr names them by
/// a counter that starts again in every kernel, so old ones would stay forever.
pub fn remove_old_cells(target: &Path) {
    let Ok(triples) = std::fs::read_dir(target) else { return };
    for t in triples.flatten() {
        for dir in [t.path().join("debug"), t.path().join("debug").join("deps")] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("libcode_") && name.ends_with(".so") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// The size of what is under `path`.
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries.flatten().map(|e| disk_usage(&e.path())).sum()
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ranch-disk-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_runtime_version_in_use_is_kept_and_an_unused_one_removed() {
        let cache = scratch("runtimes");
        let (current, used, unused) = (cache.join("runtime-0001"), cache.join("runtime-0002"), cache.join("runtime-0003"));
        for d in [&current, &used, &unused] {
            std::fs::create_dir_all(d).unwrap();
        }
        let _held = use_runtime(&used).unwrap();
        assert_eq!(remove_unused_runtimes(&cache, &current, &[]), 1);
        assert!(current.exists() && used.exists() && !unused.exists());
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
