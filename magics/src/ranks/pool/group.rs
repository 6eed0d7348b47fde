//! The group of one `%%px` cell: a rendezvous service for the cell's ranks, and the file
//! that tells the ranks (and the fan-out) where it is and which ranks run the cell.
//!
//! Each cell gets a fresh group, so that a `CommError` breaks collectives for the rest of
//! that cell only, and a `--targets` cell has a group of just its ranks. On one host the
//! group is shared memory formed through a rendezvous service; when the ranks run on other
//! hosts it is TCP between them, formed through an [`AddressBook`].

use super::address_book::AddressBook;
use crate::group::{GroupService, new_token, write_private};
use ranch::__rt::PoolGroup;
use std::path::{Path, PathBuf};

pub struct CellGroup {
    /// `None` for a cell on one rank (its group is a group of one).
    service: Option<Service>,
    /// Pool ranks of the cell, in group-rank order.
    ranks: Vec<usize>,
    file: PathBuf,
}

impl CellGroup {
    /// Starts the cell's service and writes the file the ranks read.
    /// `hosts_reach`: the ranks run on other hosts, which reach this one at that address.
    pub fn start(ranks: &[usize], file: &Path, hosts_reach: Option<&str>) -> Result<CellGroup, String> {
        let token = new_token()?;
        let service = match (ranks.len(), hosts_reach) {
            (1, _) => None,
            (n, Some(ip)) => Some(Service::Tcp(AddressBook::start(ip, n, &token)?)),
            (n, None) => Some(Service::Shm(GroupService::start("127.0.0.1", None, n, &token, false)?)),
        };
        let port = match &service {
            None => ranch::__rt::NO_SERVICE,
            Some(Service::Shm(s)) => s.port(),
            Some(Service::Tcp(b)) => b.port(),
        };
        let host = hosts_reach.filter(|_| service.is_some()).map(str::to_string);
        let said = PoolGroup { port, token, targets: ranks.to_vec(), host };
        write_private(file, &said.render()).map_err(|e| format!("cannot write the cell's group file {}: {e}", file.display()))?;
        Ok(CellGroup { service, ranks: ranks.to_vec(), file: file.to_path_buf() })
    }

    /// Pool rank `rank` returned from the cell: ranks waiting for it stop waiting.
    pub fn finished(&self, rank: usize) {
        match (&self.service, self.ranks.iter().position(|&x| x == rank)) {
            (Some(Service::Shm(s)), Some(r)) => s.mark_finished(r),
            (Some(Service::Tcp(b)), Some(r)) => b.mark_finished(r),
            _ => {}
        }
    }
}

/// Where the cell's ranks form their group.
enum Service {
    Shm(GroupService),
    Tcp(AddressBook),
}

impl Drop for CellGroup {
    fn drop(&mut self) {
        // Without the file, a `comm()` first called after the cell finds no group.
        let _ = std::fs::remove_file(&self.file);
    }
}
