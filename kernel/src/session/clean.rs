//! `%ranch_clean [--all]`: frees the disk ranch uses, and says how much.

use super::EvcxrSession;
use crate::interpreter::{CellContext, CellOutcome, Stream};

impl EvcxrSession {
    /// `%ranch_clean [--all]`: frees the disk ranch uses, and says how much.
    pub(super) fn ranch_clean(&mut self, all: bool, cx: &CellContext) -> CellOutcome {
        use super::disk::{self, mib};
        use ranch_magics::artifacts::bound_artifacts;
        let mut said = Vec::new();
        let artifacts = self.private.path().join("artifacts");
        let (programs, bytes) = bound_artifacts(&artifacts, 0, 0);
        said.push(format!("{programs} built rank programs of this session ({})", mib(bytes)));
        let target = self.workdir.target_dir();
        // No cache directory of this user's: nothing of it to remove.
        let cache = super::cache_dir::root().ok();
        if let (Some(root), Ok(runtime)) = (&cache, super::runtime_crate::dir()) {
            let versions = disk::remove_unused_runtimes(root, &runtime, std::slice::from_ref(&target));
            said.push(format!("{versions} runtime crates of other ranch versions"));
        }
        if all {
            if let Some(root) = &cache {
                let (dirs, bytes) = super::workdir::remove_unused(&root.join("work"));
                said.push(format!("{dirs} build directories no running kernel uses ({})", mib(bytes)));
            }
            let own = disk::disk_usage(&target);
            let _ = std::fs::remove_dir_all(&target);
            said.push(format!("this kernel's build directory ({}; dependencies are compiled again when next needed)", mib(own)));
            // Rank programs are built again too: their toolchain facts stay valid.
        }
        cx.sink.stream(Stream::Stdout, &format!("Removed {}.\n", said.join(", ")));
        Ok(None)
    }
}
