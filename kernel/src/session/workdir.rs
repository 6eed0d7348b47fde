//! The kernel's work directory: where evcxr writes and builds the session's crate
//! (`evcxr/`, with its `target/`) and where `%%ranch` builds rank programs (`rank/`) in
//! the same target directory, so rank builds reuse the session's compiled dependencies.
//!
//! It persists across kernels, so a kernel on a machine that ran ranch before finds its
//! dependencies (the runtime crate, serde, the user's `:dep`s) already compiled, and cargo's
//! own fingerprints decide what to rebuild. That is why evcxr's compile cache (`:cache`)
//! stays off: it copies artifacts between target directories keyed by rustc's arguments
//! alone, with dep-info that names the directory they were first built in. Once that
//! directory is gone cargo finds a "missing" input and rebuilds on every cell, and cached
//! artifacts mixed with ones cargo built itself under the same file names no longer fit
//! together (`can't find crate`).
//!
//! Two kernels never share a directory (evcxr's files would clash and cargo would
//! serialise their builds): each holds an exclusive lock on its numbered directory for
//! its whole life, and the lock goes with the process, however it ends.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// At most this many directories (kernels running at once); more kernels get a
/// temporary directory each.
const MAX_DIRS: usize = 8;
/// A directory whose target grew past this is emptied when a kernel takes it
/// (`RANCH_TARGET_LIMIT_MIB` overrides).
const DEFAULT_TARGET_LIMIT_MIB: u64 = 4096;
/// Directories no kernel used for this long are removed.
const UNUSED_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

pub struct WorkDir {
    evcxr: PathBuf,
    rank: PathBuf,
    /// Held for the kernel's life.
    lock: Option<Flock<File>>,
    /// Removed when the kernel ends (no persistent directory was free).
    temporary: Option<PathBuf>,
}

impl WorkDir {
    /// Takes a free persistent directory, or makes a temporary one in `private` (the
    /// kernel's private directory). When the user set `EVCXR_TMPDIR`, evcxr builds there
    /// and only rank programs get a place of ours.
    pub fn claim(private: &Path) -> WorkDir {
        Self::claim_as(private, "work", std::env::var_os("EVCXR_TMPDIR").filter(|d| !d.is_empty()))
    }

    /// A second directory, for a second evcxr context (a pool's): never the user's
    /// `EVCXR_TMPDIR`, which the first context has.
    pub fn claim_another(private: &Path, name: &str) -> WorkDir {
        Self::claim_as(private, name, None)
    }

    fn claim_as(private: &Path, name: &str, user_dir: Option<std::ffi::OsString>) -> WorkDir {
        let temporary_root = || private.join(name);
        if let Some(dir) = user_dir {
            let temp = temporary_root();
            return WorkDir { evcxr: PathBuf::from(dir), rank: temp.join("rank"), lock: None, temporary: Some(temp) };
        }
        let temporary = || {
            let temp = temporary_root();
            WorkDir { evcxr: temp.join("evcxr"), rank: temp.join("rank"), lock: None, temporary: Some(temp) }
        };
        let base = match super::cache_dir::root() {
            Ok(root) => root.join("work"),
            Err(e) => {
                crate::log!("{e}; this kernel builds from scratch");
                return temporary();
            }
        };
        match claim_persistent(&base) {
            Ok(Some((root, lock))) => WorkDir { evcxr: root.join("evcxr"), rank: root.join("rank"), lock: Some(lock), temporary: None },
            outcome => {
                if let Err(e) = outcome {
                    crate::log!("no persistent work directory in {} ({e}); this kernel builds from scratch", base.display());
                } else {
                    crate::log!("all {MAX_DIRS} work directories in {} are in use; this kernel builds from scratch", base.display());
                }
                temporary()
            }
        }
    }

    /// The build directory evcxr and rank builds share.
    pub fn target_dir(&self) -> PathBuf {
        self.evcxr.join("target")
    }

    /// evcxr's directory (`EVCXR_TMPDIR`).
    pub fn evcxr_dir(&self) -> &Path {
        &self.evcxr
    }

    /// Where rank programs are written; a fixed place, so cargo keeps one set of their
    /// artifacts per directory instead of one per kernel.
    pub fn rank_crate_dir(&self) -> &Path {
        &self.rank
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(t) = &self.temporary {
            let _ = std::fs::remove_dir_all(t);
        }
        self.end();
    }
}

impl WorkDir {
    /// Measures the target as its kernel ends (and empties it past the limit), so the next
    /// kernel's start need not walk it (tens of thousands of files: a tenth of a second).
    /// Called by the kernel's shutdown, which exits without running destructors.
    pub fn end(&self) {
        if let Some(lock) = &self.lock {
            let target = self.target_dir();
            keep_within_limit(&target, target_limit());
            record_size(lock, disk_usage(&target));
        }
    }
}

use super::private_dir::make as make_private_dir;

fn claim_persistent(base: &Path) -> std::io::Result<Option<(PathBuf, Flock<File>)>> {
    make_private_dir(base)?;
    let mut claimed = None;
    for n in 0..MAX_DIRS {
        let lock_path = base.join(format!("{n}.lock"));
        // Past the one we take, only directories that exist are looked at.
        let file = match File::options().create(claimed.is_none()).truncate(false).read(true).write(true).open(&lock_path) {
            Ok(f) => f,
            Err(_) if claimed.is_some() => continue,
            Err(e) => return Err(e),
        };
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else { continue };
        let root = base.join(n.to_string());
        if claimed.is_none() {
            // The lock file's time says when a kernel last used the directory.
            let _ = lock.set_modified(SystemTime::now());
            make_private_dir(&root)?;
            let target = root.join("evcxr").join("target");
            // The size the last kernel here recorded as it ended; measured now only when it
            // did not end cleanly. Cleared meanwhile: if this kernel is killed, the next measures.
            if recorded_size(&lock).is_none_or(|size| size > target_limit()) {
                keep_within_limit(&target, target_limit());
            }
            let _ = lock.set_len(0);
            super::disk::remove_old_cells(&target);
            claimed = Some((root, lock));
        } else if is_unused(&lock_path) {
            // Not held by anyone (we hold its lock right now) and long unused.
            let _ = std::fs::remove_dir_all(&root);
        }
    }
    Ok(claimed)
}

/// The target's size in bytes that the lock file holds (written by the kernel that last
/// held it, as it ended).
fn recorded_size(lock: &File) -> Option<u64> {
    use std::io::Read;
    let mut text = String::new();
    lock.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn record_size(lock: &File, size: u64) {
    use std::os::unix::fs::FileExt;
    let text = size.to_string();
    if lock.set_len(0).is_ok() {
        let _ = lock.write_all_at(text.as_bytes(), 0);
    }
}

/// Removes every build directory under `base` that no kernel holds. Returns how many, and
/// their size.
pub fn remove_unused(base: &Path) -> (usize, u64) {
    let (mut count, mut bytes) = (0, 0);
    for n in 0..MAX_DIRS {
        let Ok(file) = File::options().write(true).open(base.join(format!("{n}.lock"))) else { continue };
        let Ok(_unused) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else { continue };
        let root = base.join(n.to_string());
        let size = disk_usage(&root);
        if std::fs::remove_dir_all(&root).is_ok() {
            count += 1;
            bytes += size;
        }
    }
    (count, bytes)
}

fn is_unused(lock_path: &Path) -> bool {
    let modified = std::fs::metadata(lock_path).and_then(|m| m.modified());
    modified.is_ok_and(|t| t.elapsed().is_ok_and(|age| age > UNUSED_FOR))
}

fn target_limit() -> u64 {
    let mib = std::env::var("RANCH_TARGET_LIMIT_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_TARGET_LIMIT_MIB);
    mib << 20
}

/// Empties a target directory that grew past the limit: every dependency set a notebook
/// ever used stays there, and nothing else would bound it.
fn keep_within_limit(target: &Path, limit: u64) {
    let size = disk_usage(target);
    if size > limit {
        crate::log!("{} holds {} MiB (limit {} MiB): emptying it", target.display(), size >> 20, limit >> 20);
        let _ = std::fs::remove_dir_all(target);
    }
}

use super::disk::disk_usage;

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ranch-workdir-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_held_directory_is_not_given_to_another_kernel() {
        let base = scratch("held");
        let (first, _lock) = claim_persistent(&base).unwrap().unwrap();
        let (second, lock2) = claim_persistent(&base).unwrap().unwrap();
        assert_ne!(first, second);
        drop(lock2);
        let (again, _) = claim_persistent(&base).unwrap().unwrap();
        assert_eq!(again, second, "a released directory is taken again");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_kernel_that_ends_records_the_size_and_one_killed_leaves_none() {
        let base = scratch("record");
        let (root, lock) = claim_persistent(&base).unwrap().unwrap();
        let target = root.join("evcxr/target");
        std::fs::create_dir_all(target.join("deps")).unwrap();
        std::fs::write(target.join("deps/lib"), vec![0u8; 1000]).unwrap();
        assert_eq!(recorded_size(&lock), None, "cleared while a kernel holds it");
        let dir = WorkDir { evcxr: root.join("evcxr"), rank: root.join("rank"), lock: Some(lock), temporary: None };
        drop(dir);
        let lock_file = base.join("0.lock");
        assert_eq!(std::fs::read_to_string(&lock_file).unwrap(), "1000", "recorded as the kernel ended");
        let (_, lock) = claim_persistent(&base).unwrap().unwrap();
        assert_eq!(recorded_size(&lock), None, "the next kernel clears it");
        drop(lock);
        assert_eq!(std::fs::read_to_string(&lock_file).unwrap(), "", "a killed kernel records nothing");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn an_oversized_target_is_emptied() {
        let base = scratch("limit");
        let target = base.join("target");
        std::fs::create_dir_all(target.join("deps")).unwrap();
        std::fs::write(target.join("deps/big"), vec![0u8; 4096]).unwrap();
        assert_eq!(disk_usage(&target), 4096);
        keep_within_limit(&target, 4096);
        assert!(target.exists(), "within the limit: kept");
        keep_within_limit(&target, 4095);
        assert!(!target.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
