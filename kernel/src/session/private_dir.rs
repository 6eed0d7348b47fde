//! This kernel's private directory, `$TMPDIR/ranch-session-<pid>-<random>` (mode 0700):
//! the output socket of evcxr's child, `%%ranch` runs (shipped variables, results), built
//! rank programs, a temporary build directory. Removed when the kernel ends; one left by a
//! killed kernel is removed by the next kernel that starts ([`remove_stale`]).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub const PREFIX: &str = "ranch-session-";

pub struct PrivateDir(PathBuf);

impl PrivateDir {
    pub fn create() -> std::io::Result<PrivateDir> {
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
        make(&dir)?;
        Ok(PrivateDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates `dir` (and missing parents) for the owner only.
pub fn make(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Removes what kernels that were killed left behind: private directories and group
/// segments (`/dev/shm/ranch-<pid>-*`) whose kernel process is gone.
pub fn remove_stale() {
    ranch::__rt::remove_stale(&std::env::temp_dir(), PREFIX);
    ranch::__rt::remove_stale(Path::new("/dev/shm"), "ranch-");
}
