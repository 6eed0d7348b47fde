//! The group of one `%%px` cell: a rendezvous service for the cell's ranks, and the file
//! that tells the ranks (and the fan-out) where it is and which ranks run the cell.
//!
//! Each cell gets a fresh group, so that a `CommError` breaks collectives for the rest of
//! that cell only, and a `--targets` cell has a group of just its ranks.

use ranch::__rt::PoolGroup;
use ranch_magics::group::{GroupService, new_token, write_private};
use std::path::{Path, PathBuf};

pub(super) struct CellGroup {
    /// `None` for a cell on one rank (its group is a group of one).
    service: Option<GroupService>,
    /// Pool ranks of the cell, in group-rank order.
    ranks: Vec<usize>,
    file: PathBuf,
}

impl CellGroup {
    /// Starts the cell's service and writes the file the ranks read.
    /// `across_hosts`: the ranks run on other hosts, where this host's shared memory is not:
    /// the group says it has no service, and its ranks' `comm()` says why.
    pub(super) fn start(ranks: &[usize], file: &Path, across_hosts: bool) -> Result<CellGroup, String> {
        let token = new_token()?;
        let service = match ranks.len() {
            1 => None,
            _ if across_hosts => None,
            n => Some(GroupService::start("127.0.0.1", None, n, &token, false)?),
        };
        let said = PoolGroup { port: service.as_ref().map_or(ranch::__rt::NO_SERVICE, GroupService::port), token, targets: ranks.to_vec() };
        write_private(file, &said.render()).map_err(|e| format!("cannot write the cell's group file {}: {e}", file.display()))?;
        Ok(CellGroup { service, ranks: ranks.to_vec(), file: file.to_path_buf() })
    }

    /// Pool rank `rank` returned from the cell: ranks waiting for it stop waiting.
    pub(super) fn finished(&self, rank: usize) {
        if let (Some(s), Some(r)) = (&self.service, self.ranks.iter().position(|&x| x == rank)) {
            s.mark_finished(r);
        }
    }
}

impl Drop for CellGroup {
    fn drop(&mut self) {
        // Without the file, a `comm()` first called after the cell finds no group.
        let _ = std::fs::remove_file(&self.file);
    }
}
