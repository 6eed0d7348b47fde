//! The group of a `%%px` cell in a pool of persistent ranks.
//!
//! A pool's ranks live across cells, but a group lives for one cell: a `CommError` breaks
//! it for the rest of that cell only, and a `--targets` cell has a group of just its ranks.
//! Before each cell the kernel starts a rendezvous service and writes where it is to the
//! file named by [`POOL_GROUP_ENV`]; a rank reads it when the cell first calls
//! `ranch::comm()`. evcxr links this crate into every cell's library, so every cell has
//! its own `comm()`; when the cell returns, the rank calls [`end_pool_cell`] in the cell's
//! library, which unmaps the group's memory and closes its link.

use super::rendezvous;
use super::{Backend, COMM, Comm};
use std::path::Path;
use std::sync::RwLock;
use std::time::Duration;

/// The file that says where the running cell's group is (set by the pool).
pub const POOL_GROUP_ENV: &str = "RANCH_POOL_GROUP";

/// Set (to `1`) in a pool started with `--ddp`: each cell's group is formed before its body.
pub const POOL_DDP_ENV: &str = "RANCH_POOL_DDP";

/// What a group that outlived its cell says.
pub(super) const RETIRED: &str =
    "this is the group of an earlier %%px cell, which has ended: call ranch::comm() in each cell (a pool forms a group per cell)";

const MAGIC: &str = "RANCH_POOL_GROUP1";

/// The port of a group of one rank, which has no service.
pub const NO_SERVICE: u16 = 0;
/// The file is one short line; anything longer is not the pool's.
const MAX_FILE: u64 = 64 << 10;

/// Where a cell's group is: the rendezvous port on this host, the cell's token, and the
/// pool ranks of the cell, in group-rank order. With `host`, the ranks run on several hosts:
/// the port is the cell's address book on that host, and the group is TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolGroup {
    pub port: u16,
    pub token: String,
    pub targets: Vec<usize>,
    pub host: Option<String>,
}

impl PoolGroup {
    pub fn render(&self) -> String {
        let targets: Vec<String> = self.targets.iter().map(usize::to_string).collect();
        let host = self.host.as_ref().map_or(String::new(), |h| format!(" {h}"));
        format!("{MAGIC} {} {} {}{host}\n", self.port, self.token, targets.join(","))
    }

    pub fn parse(text: &str) -> Option<PoolGroup> {
        let mut parts = text.split_whitespace();
        if parts.next()? != MAGIC {
            return None;
        }
        let port = parts.next()?.parse().ok()?;
        let token = parts.next()?.to_string();
        let targets = parts.next()?.split(',').map(|t| t.parse().ok()).collect::<Option<Vec<usize>>>()?;
        let host = parts.next().map(str::to_string);
        (parts.next().is_none() && !targets.is_empty()).then_some(PoolGroup { port, token, targets, host })
    }

    /// Reads the file the pool wrote for the running cell.
    pub fn read(path: &Path) -> Result<PoolGroup, String> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE).read_to_string(&mut text))
            .map_err(|e| format!("no group for this cell ({}: {e}); collectives work inside %%px cells", path.display()))?;
        PoolGroup::parse(&text).ok_or_else(|| format!("{} does not say where this cell's group is", path.display()))
    }
}

/// The running cell's group, as this rank joins it.
pub(super) fn join(path: &Path) -> Comm {
    let me = crate::rank();
    let broken = |why: String| Comm { rank: me, world: crate::world_size(), backend: Backend::Broken(why) };
    let group = match PoolGroup::read(path) {
        Ok(g) => g,
        Err(why) => return broken(why),
    };
    let Some(rank) = group.targets.iter().position(|&t| t == me) else {
        return broken(format!("pool rank {me} is not among this cell's targets ({:?})", group.targets));
    };
    let world = group.targets.len();
    if world == 1 {
        return Comm { rank: 0, world: 1, backend: Backend::Serial };
    }
    if let Some(host) = &group.host {
        let book = if host.contains(':') { format!("[{host}]:{}", group.port) } else { format!("{host}:{}", group.port) };
        let backend = match super::tcp::join(&book, &group.token, rank, world) {
            Ok(g) => Backend::Tcp(RwLock::new(Some(g))),
            Err(why) => Backend::Broken(why),
        };
        return Comm { rank, world, backend };
    }
    let target = (format!("127.0.0.1:{}", group.port), vec![std::net::SocketAddr::from(([127, 0, 0, 1], group.port))]);
    let backend = match rendezvous::join_at(target, &group.token, rank, world) {
        Ok(g) => Backend::Shm(RwLock::new(Some(g))),
        Err(why) => Backend::Broken(why),
    };
    Comm { rank, world, backend }
}

/// Before a cell's body, in a pool started with `--ddp`: joins the cell's group now, so the
/// body starts with it formed (a failure to form it is what the body's `comm()` says).
/// Called in every cell library that links this crate: a cell that reaches `comm()` at all,
/// directly or through an earlier cell's fn, does.
pub fn begin_pool_cell() {
    if std::env::var_os(POOL_DDP_ENV).is_some() {
        super::comm();
    }
}

/// Ends this cell library's group: a `comm()` called after this says the cell has ended,
/// the group's memory is unmapped (unless a thread of the cell is still inside an
/// operation after a second: then it stays mapped), and the rendezvous link is closed.
pub fn end_pool_cell() {
    let comm = COMM.get_or_init(|| Comm { rank: crate::rank(), world: crate::world_size(), backend: Backend::Broken(RETIRED.into()) });
    #[cfg(feature = "nccl")]
    crate::cuda::nccl::end_cell();
    comm.retire(Duration::from_secs(1));
    rendezvous::close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_file_round_trips_and_rejects_junk() {
        let g = PoolGroup { port: 4000, token: "abc".into(), targets: vec![0, 2], host: None };
        assert_eq!(PoolGroup::parse(&g.render()), Some(g));
        let g = PoolGroup { port: 4000, token: "abc".into(), targets: vec![0, 2], host: Some("10.0.0.1".into()) };
        assert_eq!(PoolGroup::parse(&g.render()), Some(g));
        for junk in [
            "",
            "RANCH_POOL_GROUP1 1 t",
            "RANCH_POOL_GROUP1 x t 0",
            "RANCH_POOL_GROUP1 1 t 0,a",
            "OTHER 1 t 0",
            "RANCH_POOL_GROUP1 1 t 0 h extra",
        ] {
            assert_eq!(PoolGroup::parse(junk), None, "{junk}");
        }
    }
}
