//! The process group of a ranked launch: collectives and point-to-point messages.
//!
//! `ranch::comm()` is the group. In a ranked launch on one host its backend is shared
//! memory ([`shm`]), joined through the kernel's rendezvous service; across hosts it is MPI
//! (`mpi`, feature `mpi`: flat, or hierarchical with shared memory inside each host);
//! outside a launch it is a group of one whose collectives are identities, so the same
//! code runs in a plain cell.
//! A collective that cannot complete (a rank died, skipped it, or called another one)
//! returns a [`CommError`] naming the operation and the ranks, instead of hanging.

mod call;
mod error;
mod futex;
mod host_share;
#[cfg(feature = "mpi")]
pub(crate) mod mpi;
mod pool;
mod reduce;
mod rendezvous;
pub(crate) mod shm;
mod stream_copy;
mod tcp;

pub use error::CommError;
pub use pool::{NO_SERVICE, POOL_DDP_ENV, POOL_GROUP_ENV, PoolGroup, begin_pool_cell, end_pool_cell};
pub use rendezvous::{DONE, HELLO};
pub(crate) use rendezvous::{announce, finish};
pub use tcp::HELLO as TCP_HELLO;

/// What the kernel needs of the segment's layout.
pub mod shm_segment {
    pub use super::shm::{Header, Layout, create};
}
pub use reduce::{Op, Reduce};

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::{OnceLock, RwLock, RwLockReadGuard};

/// Environment of a launch's group (set by the kernel).
pub const TOKEN_ENV: &str = "RANCH_TOKEN";
pub const TIMEOUT_ENV: &str = "RANCH_COLLECTIVE_TIMEOUT";
/// How collectives move data, when not through the kernel's shared memory: `mpi` (flat)
/// or `hierarchical` (shared memory inside each host, MPI between hosts). Needs the
/// runtime's `mpi` feature.
pub const BACKEND_ENV: &str = "RANCH_BACKEND";
/// [`BACKEND_ENV`] of a launch whose code names no collective (the kernel looked): no group
/// is started, so its ranks skip MPI's start.
pub const NO_GROUP: &str = "none";

/// The MPI flavour this launch asks for (`Some(hierarchical)`), in a group of several.
fn mpi_flavour() -> Option<Result<bool, String>> {
    if crate::world_size() < 2 {
        return None;
    }
    match std::env::var(BACKEND_ENV).ok()?.as_str() {
        "mpi" => Some(Ok(false)),
        "hierarchical" => Some(Ok(true)),
        NO_GROUP => None,
        other => Some(Err(format!("{BACKEND_ENV}={other} is not a backend (mpi, hierarchical)"))),
    }
}

/// Starts the launch's backend as the rank starts, when it must be (MPI: every rank of the
/// job joins at once).
pub(crate) fn start_backend() {
    #[cfg(feature = "mpi")]
    if let Some(Ok(hierarchical)) = mpi_flavour() {
        mpi::init(hierarchical);
    }
}

/// Ends the backend as the rank returns.
pub(crate) fn end_backend() {
    #[cfg(feature = "mpi")]
    if let Some(Ok(_)) = mpi_flavour() {
        mpi::finalize();
    }
}

/// How long a collective waits for the other ranks ([`TIMEOUT_ENV`], default 120 s).
pub fn collective_timeout() -> std::time::Duration {
    use std::time::Duration;
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .and_then(|t| Duration::try_from_secs_f64(t).ok())
        .map_or(Duration::from_secs(120), |t| t.min(Duration::from_secs(365 * 24 * 3600)))
}

enum Backend {
    Serial,
    /// `None` once the group was retired: a pool's group lives for one cell, and its
    /// memory is unmapped when the cell ends (see [`pool`]).
    Shm(RwLock<Option<shm::Group>>),
    /// TCP between the ranks of a pool's cell on several hosts (`None` once retired).
    Tcp(RwLock<Option<tcp::Group>>),
    /// MPI, whose state lives in [`mpi`] (initialised as the rank starts).
    #[cfg(feature = "mpi")]
    Mpi,
    /// Joining the group failed; every operation reports why.
    Broken(String),
}

/// The group for one operation: its lock is held while the operation runs, so that the
/// group is not retired under it.
enum Held<'a> {
    Serial,
    Shm(RwLockReadGuard<'a, Option<shm::Group>>),
    Tcp(RwLockReadGuard<'a, Option<tcp::Group>>),
    #[cfg(feature = "mpi")]
    Mpi(mpi::Held),
}

impl Held<'_> {
    fn get(&self) -> Option<Via<'_>> {
        match self {
            Held::Serial => None,
            Held::Shm(g) => g.as_ref().map(Via::Shm),
            Held::Tcp(g) => g.as_ref().map(Via::Tcp),
            #[cfg(feature = "mpi")]
            Held::Mpi(state) => match state.as_ref() {
                Some(Ok(state)) => Some(Via::Mpi(state)),
                _ => None,
            },
        }
    }
}

/// The transport of a group of several ranks: each has the same operations.
enum Via<'a> {
    Shm(&'a shm::Group),
    Tcp(&'a tcp::Group),
    #[cfg(feature = "mpi")]
    Mpi(&'a mpi::State),
}

macro_rules! via {
    ($self:ident, $g:ident => $call:expr) => {
        match $self {
            Via::Shm($g) => $call,
            Via::Tcp($g) => $call,
            #[cfg(feature = "mpi")]
            Via::Mpi($g) => $call,
        }
    };
}

impl Via<'_> {
    fn barrier(&self) -> Result<(), CommError> {
        via!(self, g => g.barrier())
    }
    fn reduce<T: Reduce>(&self, buf: &mut [T], op: Op, root: Option<usize>) -> Result<(), CommError> {
        via!(self, g => g.reduce(buf, op, root))
    }
    fn broadcast_slice<T: Reduce>(&self, buf: &mut [T], root: usize) -> Result<(), CommError> {
        via!(self, g => g.broadcast_slice(buf, root))
    }
    fn all_gather_bytes(&self, op: &'static str, mine: &[u8], ty: &str) -> Result<Vec<Vec<u8>>, CommError> {
        via!(self, g => g.all_gather_bytes(op, mine, ty))
    }
    fn send_bytes(&self, bytes: &[u8], dest: usize) -> Result<(), CommError> {
        via!(self, g => g.send_bytes(bytes, dest))
    }
    fn recv_bytes(&self, src: usize) -> Result<Vec<u8>, CommError> {
        via!(self, g => g.recv_bytes(src))
    }
}

/// A process group. Operations are serialised: call them from one thread at a time.
pub struct Comm {
    rank: usize,
    world: usize,
    backend: Backend,
}

/// The process group of this launch (a group of one outside a ranked launch).
pub fn comm() -> &'static Comm {
    COMM.get_or_init(Comm::from_env)
}

// In a pool, every cell's library has its own copy of this (evcxr links the runtime into
// each cell), so each `%%px` cell forms its own group.
static COMM: OnceLock<Comm> = OnceLock::new();

fn encode<T: Serialize + ?Sized>(op: &'static str, value: &T) -> Result<Vec<u8>, CommError> {
    rmp_serde::to_vec(value).map_err(|e| CommError::new(op, vec![], format!("cannot serialise the value: {e}")))
}

fn decode<T: DeserializeOwned>(op: &'static str, from: usize, bytes: &[u8]) -> Result<T, CommError> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| CommError::new(op, vec![from], format!("the value from rank {from} does not decode as the requested type: {e}")))
}

impl Comm {
    fn from_env() -> Comm {
        if let Some(path) = std::env::var_os(POOL_GROUP_ENV) {
            return pool::join(std::path::Path::new(&path));
        }
        let (rank, world) = (crate::rank(), crate::world_size());
        if world > 1 && std::env::var(BACKEND_ENV).is_ok_and(|b| b == NO_GROUP) {
            let why = format!(
                "rank {rank}: this launch started no process group: ranch starts MPI only for code that names \
                 ranch::comm, map, candle or nccl, and found none in the cell or the session's items (name \
                 ranch::comm() in the cell to have one)"
            );
            return Comm { rank, world, backend: Backend::Broken(why) };
        }
        if let Some(flavour) = mpi_flavour() {
            return Comm { rank, world, backend: Self::mpi_backend(flavour) };
        }
        let token = std::env::var(TOKEN_ENV).ok();
        let backend = match token {
            None if world == 1 => Backend::Serial,
            None => Backend::Broken(format!("rank {rank} of {world} has no group to join ({TOKEN_ENV} is not set)")),
            Some(token) => match rendezvous::join(&token, rank, world) {
                Ok(group) => Backend::Shm(RwLock::new(Some(group))),
                Err(e) => Backend::Broken(e),
            },
        };
        Comm { rank, world, backend }
    }

    #[cfg(feature = "mpi")]
    fn mpi_backend(flavour: Result<bool, String>) -> Backend {
        match flavour {
            Ok(hierarchical) => {
                mpi::init(hierarchical); // already done as the rank started; here for other programs
                Backend::Mpi
            }
            Err(why) => Backend::Broken(why),
        }
    }

    #[cfg(not(feature = "mpi"))]
    fn mpi_backend(flavour: Result<bool, String>) -> Backend {
        Backend::Broken(match flavour {
            Ok(_) => {
                format!("this launch uses MPI ({BACKEND_ENV}) but the rank program was built without the ranch runtime's `mpi` feature")
            }
            Err(why) => why,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    fn group(&self, op: &'static str) -> Result<Held<'_>, CommError> {
        match &self.backend {
            Backend::Serial => Ok(Held::Serial),
            Backend::Shm(lock) => {
                let held = lock.read().unwrap_or_else(|e| e.into_inner());
                match held.as_ref() {
                    Some(g) => g.ensure_usable(op)?,
                    None => return Err(CommError::new(op, vec![self.rank], pool::RETIRED.into())),
                }
                Ok(Held::Shm(held))
            }
            Backend::Tcp(lock) => {
                let held = lock.read().unwrap_or_else(|e| e.into_inner());
                match held.as_ref() {
                    Some(g) => g.ensure_usable(op)?,
                    None => return Err(CommError::new(op, vec![self.rank], pool::RETIRED.into())),
                }
                Ok(Held::Tcp(held))
            }
            #[cfg(feature = "mpi")]
            Backend::Mpi => {
                let held = mpi::hold();
                mpi::usable(&held, op)?;
                Ok(Held::Mpi(held))
            }
            Backend::Broken(why) => Err(CommError::new(op, vec![self.rank], why.clone())),
        }
    }

    /// Unmaps the group's memory once no operation uses it (waiting at most `patience`,
    /// after which it stays mapped); later operations say the group's cell has ended.
    fn retire(&self, patience: std::time::Duration) {
        match &self.backend {
            Backend::Shm(lock) => Self::retire_group(lock, patience),
            // Closing the links tells the other ranks that this one has left the cell.
            Backend::Tcp(lock) => Self::retire_group(lock, patience),
            _ => {}
        }
    }

    /// Drops a pool cell's group once no operation holds it (waiting at most `patience`).
    fn retire_group<G>(lock: &RwLock<Option<G>>, patience: std::time::Duration) {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match lock.try_write() {
                Ok(mut g) => return *g = None,
                Err(std::sync::TryLockError::Poisoned(e)) => return *e.into_inner() = None,
                // A thread of the cell is still inside an operation.
                Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
        }
    }

    /// The other ranks that have left the cell, named as the reason `op` cannot complete
    /// (`None` while all are there, or outside a group).
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    pub(crate) fn departed(&self, op: &str) -> Option<(Vec<usize>, String)> {
        match &self.backend {
            Backend::Shm(lock) => lock.read().unwrap_or_else(|e| e.into_inner()).as_ref()?.departed(op),
            _ => None,
        }
    }

    fn check_root(&self, op: &'static str, root: usize) -> Result<(), CommError> {
        if root >= self.world {
            return Err(CommError::new(op, vec![], format!("root {root} is not a rank of this group of {}", self.world)));
        }
        Ok(())
    }

    /// Claims the next `chunk` of map `seq`'s `len` items from the counter the ranks share
    /// (across hosts: their host's, over the host's share of the chunks): its first item
    /// (`Some(None)` when all are taken), or `None` where the ranks share no memory (the
    /// caller then deals chunks out round robin).
    pub(crate) fn claim(&self, seq: u32, chunk: u32, len: u32) -> Result<Option<Option<u32>>, CommError> {
        match self.group("map")?.get() {
            Some(Via::Shm(g)) => Ok(Some(g.claim(seq, chunk, len))),
            #[cfg(feature = "mpi")]
            Some(Via::Mpi(state)) => Ok(state.claim(seq, chunk, len)),
            Some(Via::Tcp(g)) => g.claim(seq, chunk, len),
            None => Ok(None),
        }
    }

    /// Waits until every rank has called `barrier`.
    pub fn barrier(&self) -> Result<(), CommError> {
        match self.group("barrier")?.get() {
            None => Ok(()),
            Some(g) => g.barrier(),
        }
    }

    /// Combines `buf` element-wise across ranks with `op`; every rank gets the result.
    pub fn all_reduce<T: Reduce>(&self, buf: &mut [T], op: Op) -> Result<(), CommError> {
        match self.group("all_reduce")?.get() {
            None => Ok(()),
            Some(g) => g.reduce(buf, op, None),
        }
    }

    /// Like [`all_reduce`](Self::all_reduce), but only `root` gets the result (other
    /// ranks' buffers are left as they were).
    pub fn reduce<T: Reduce>(&self, buf: &mut [T], op: Op, root: usize) -> Result<(), CommError> {
        self.check_root("reduce", root)?;
        match self.group("reduce")?.get() {
            None => Ok(()),
            Some(g) => g.reduce(buf, op, Some(root)),
        }
    }

    /// `root`'s value, on every rank (`value` is only read on `root`).
    pub fn broadcast<T: Serialize + DeserializeOwned>(&self, value: Option<T>, root: usize) -> Result<T, CommError> {
        const OP: &str = "broadcast";
        self.check_root(OP, root)?;
        let mine = match (&value, self.rank == root) {
            (Some(v), true) => encode(OP, v)?,
            (None, true) => return Err(CommError::new(OP, vec![root], "the root must pass Some(value)".into())),
            (_, false) => vec![],
        };
        match self.group(OP)?.get() {
            None => value.ok_or_else(|| CommError::new(OP, vec![root], "the root must pass Some(value)".into())),
            Some(g) => {
                let all = g.all_gather_bytes(OP, &mine, std::any::type_name::<T>())?;
                decode(OP, root, &all[root])
            }
        }
    }

    /// Copies `root`'s `buf` into every rank's `buf` (lengths must match).
    pub fn broadcast_slice<T: Reduce>(&self, buf: &mut [T], root: usize) -> Result<(), CommError> {
        self.check_root("broadcast_slice", root)?;
        match self.group("broadcast_slice")?.get() {
            None => Ok(()),
            Some(g) => g.broadcast_slice(buf, root),
        }
    }

    /// Every rank's value, in rank order, on every rank.
    pub fn all_gather<T: Serialize + DeserializeOwned>(&self, value: &T) -> Result<Vec<T>, CommError> {
        const OP: &str = "all_gather";
        let mine = encode(OP, value)?;
        match self.group(OP)?.get() {
            None => Ok(vec![decode(OP, 0, &mine)?]),
            Some(g) => {
                let all = g.all_gather_bytes(OP, &mine, std::any::type_name::<T>())?;
                all.iter().enumerate().map(|(r, b)| decode(OP, r, b)).collect()
            }
        }
    }

    /// Every rank's value, in rank order, on `root` (`None` elsewhere).
    pub fn gather<T: Serialize + DeserializeOwned>(&self, value: &T, root: usize) -> Result<Option<Vec<T>>, CommError> {
        const OP: &str = "gather";
        self.check_root(OP, root)?;
        let mine = encode(OP, value)?;
        let all = match self.group(OP)?.get() {
            None => vec![mine],
            Some(g) => g.all_gather_bytes(OP, &mine, std::any::type_name::<T>())?,
        };
        if self.rank != root {
            return Ok(None);
        }
        all.iter().enumerate().map(|(r, b)| decode(OP, r, b)).collect::<Result<_, _>>().map(Some)
    }

    /// Rank i gets `values[i]` of `root` (`values` is only read on `root`, and must have one
    /// value per rank).
    pub fn scatter<T: Serialize + DeserializeOwned>(&self, values: Option<Vec<T>>, root: usize) -> Result<T, CommError> {
        const OP: &str = "scatter";
        self.check_root(OP, root)?;
        let mine = if self.rank == root {
            let values = values.ok_or_else(|| CommError::new(OP, vec![root], "the root must pass Some(values)".into()))?;
            if values.len() != self.world {
                return Err(CommError::new(OP, vec![root], format!("the root passed {} values for {} ranks", values.len(), self.world)));
            }
            let parts: Result<Vec<Vec<u8>>, _> = values.iter().map(|v| encode(OP, v)).collect();
            encode(OP, &parts?)?
        } else {
            vec![]
        };
        let from_root = match self.group(OP)?.get() {
            None => mine,
            Some(g) => g.all_gather_bytes(OP, &mine, std::any::type_name::<T>())?.swap_remove(root),
        };
        let parts: Vec<Vec<u8>> = decode(OP, root, &from_root)?;
        decode(OP, root, &parts[self.rank])
    }

    /// Sends `value` to rank `dest` (returns once it is handed over or buffered).
    pub fn send<T: Serialize>(&self, value: &T, dest: usize) -> Result<(), CommError> {
        const OP: &str = "send";
        self.check_root(OP, dest)?;
        // The type's tag first: `recv` of another type is an error, not a reinterpretation.
        let mut bytes = call::type_tag(std::any::type_name::<T>()).to_le_bytes().to_vec();
        bytes.extend(encode(OP, value)?);
        match self.group(OP)?.get() {
            None => Err(CommError::new(OP, vec![0], "a group of one has no other rank to send to".into())),
            Some(_) if dest == self.rank => Err(CommError::new(OP, vec![dest], "a rank cannot send to itself".into())),
            Some(g) => g.send_bytes(&bytes, dest),
        }
    }

    /// Receives the next value rank `src` sent to this rank.
    pub fn recv<T: DeserializeOwned>(&self, src: usize) -> Result<T, CommError> {
        const OP: &str = "recv";
        self.check_root(OP, src)?;
        match self.group(OP)?.get() {
            None => Err(CommError::new(OP, vec![0], "a group of one has no other rank to receive from".into())),
            Some(_) if src == self.rank => Err(CommError::new(OP, vec![src], "a rank cannot receive from itself".into())),
            Some(g) => {
                let bytes = g.recv_bytes(src)?;
                let want = std::any::type_name::<T>();
                match bytes.split_first_chunk::<8>() {
                    Some((tag, value)) if u64::from_le_bytes(*tag) == call::type_tag(want) => decode(OP, src, value),
                    _ => Err(CommError::new(
                        OP,
                        vec![src],
                        format!("rank {src} sent a value of another type than the `{want}` this rank receives"),
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial() -> Comm {
        Comm { rank: 0, world: 1, backend: Backend::Serial }
    }

    #[test]
    fn a_group_of_one_is_the_identity() {
        let c = serial();
        let mut v = vec![1.0f32, 2.0];
        c.all_reduce(&mut v, Op::Sum).unwrap();
        assert_eq!(v, [1.0, 2.0]);
        c.barrier().unwrap();
        assert_eq!(c.broadcast(Some("x".to_string()), 0).unwrap(), "x");
        assert_eq!(c.all_gather(&7u8).unwrap(), vec![7]);
        assert_eq!(c.gather(&7u8, 0).unwrap(), Some(vec![7]));
        assert_eq!(c.scatter(Some(vec![5u8]), 0).unwrap(), 5);
        assert!(c.send(&1u8, 0).is_err());
    }

    #[test]
    fn bad_roots_are_errors() {
        let c = serial();
        let err = c.broadcast(Some(1u8), 3).unwrap_err();
        assert!(err.to_string().contains("root 3"), "{err}");
        assert!(c.scatter(Some(vec![1u8, 2]), 0).unwrap_err().to_string().contains("2 values for 1 ranks"));
    }
}
