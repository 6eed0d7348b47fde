//! Collectives over MPI (feature `mpi`), for ranks that mpirun or srun started, on one host
//! or several.
//!
//! The kernel picks the flavour ([`BACKEND_ENV`](super::BACKEND_ENV)):
//! - `mpi`: every operation is MPI calls on the world communicator (flat);
//! - `hierarchical`, the default across hosts: `all_reduce` and `reduce` combine inside
//!   each host through shared memory (a ranch segment that the host's first rank creates),
//!   then between one leader per host over MPI, and each leader shares the result inside
//!   its host: one buffer per host crosses the network, not one per rank (as Horovod and
//!   NCCL do). The other operations are flat MPI.
//!
//! Before each collective the ranks exchange what they are calling ([`super::call`]), so
//! that different calls, shapes or types fail on every rank with one error naming the odd
//! ranks, instead of truncating messages (which aborts an MPI job) or mixing data.
//!
//! MPI is initialised as the rank starts: `MPI_Init` waits for every rank of the job, so a
//! rank that initialised only when it first used the group would leave the others waiting
//! if it never did. It is finalised when the rank returns. An MPI call cannot be
//! interrupted, so a watchdog ends a rank whose call has waited longer than the collective
//! timeout, saying which call; where mpirun aborts the job (the default), its report names
//! the rank and host that failed first.

use super::call::{Desc, Kind, kind_of, mismatch, type_code, type_tag};
use super::error::CommError;
use super::host_share::HostShare;
use super::reduce::{Op, Reduce};
use super::shm;
use mpi::collective::SystemOperation;
use mpi::datatype::{DatatypeRef, DynBuffer, DynBufferMut, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::{Color, SimpleCommunicator};
use mpi::traits::*;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Elements per MPI call: MPI counts are C ints.
const CHUNK: usize = 1 << 28;
/// The tag of `send`/`recv` messages.
const MESSAGE_TAG: i32 = 17;

/// This host's ranks, in a hierarchical group.
struct Host {
    /// The host's shared-memory group and its place among the hosts.
    share: HostShare,
    /// The global rank of each of the host's ranks, by their rank on the host.
    ranks: Vec<usize>,
    name: String,
    /// The leaders' communicator, on a host's first rank when there are several hosts.
    leaders: Option<SimpleCommunicator>,
}

/// MPI, once initialised. Fields drop in order: the communicators before the universe,
/// whose drop finalises MPI.
pub struct State {
    world: SimpleCommunicator,
    host: Option<Host>,
    _universe: Universe,
}

// SAFETY: MPI handles are plain values; MPI is initialised for serialised use from any
// thread, and every use holds `STATE`'s lock.
unsafe impl Send for State {}

/// `None` until [`init`]; then the state, or why MPI cannot be used in this rank.
static STATE: Mutex<Option<Result<State, String>>> = Mutex::new(None);

/// The MPI call in progress and since when, for the watchdog.
static IN_FLIGHT: Mutex<Option<(&'static str, Instant)>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Initialises MPI and forms the group (collective: every rank of the job calls it as it
/// starts). `hierarchical`: form each host's shared-memory group too.
pub fn init(hierarchical: bool) {
    let mut state = lock(&STATE);
    if state.is_some() {
        return;
    }
    let started = start(hierarchical);
    if started.is_ok() {
        start_watchdog(super::collective_timeout());
    }
    *state = Some(started);
}

/// Held while an operation runs: the group, or why there is none.
pub type Held = MutexGuard<'static, Option<Result<State, String>>>;

pub fn hold() -> Held {
    lock(&STATE)
}

/// The group in `held`, or the error `op` fails with.
pub fn usable<'a>(held: &'a Held, op: &'static str) -> Result<&'a State, CommError> {
    match held.as_ref() {
        Some(Ok(state)) => Ok(state),
        Some(Err(why)) => Err(CommError::new(op, vec![crate::rank()], why.clone())),
        None => Err(CommError::new(op, vec![crate::rank()], "MPI was not initialised in this rank".into())),
    }
}

/// Finalises MPI as the rank returns (collective: MPI waits for every rank here).
pub fn finalize() {
    let mut held = lock(&STATE);
    if let Some(Ok(state)) = held.take() {
        if let Some(host) = &state.host {
            host.share.group.mark_finished();
        }
        let _flight = Flight::start("MPI_Finalize");
        drop(state);
    }
    *held = Some(Err("the rank has returned from the cell, and MPI is finalised".into()));
}

fn start(hierarchical: bool) -> Result<State, String> {
    let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Serialized)
        .ok_or("MPI was initialised already in this process (by other code of the cell?)")?;
    let world = universe.world();
    let (size, rank) = (world.size() as usize, world.rank() as usize);
    if size != crate::world_size() || rank != crate::rank() {
        return Err(format!(
            "MPI says this is rank {rank} of {size} but ranch says rank {} of {}: the MPI backend needs one launch \
             of the whole group by mpirun or srun",
            crate::rank(),
            crate::world_size()
        ));
    }
    let host = if hierarchical { host_group(&world) } else { None };
    Ok(State { world, host, _universe: universe })
}

/// Forms this host's shared-memory group and the leaders' communicator (collective). `None`
/// on every rank when any host could not (the group is then flat MPI).
fn host_group(world: &SimpleCommunicator) -> Option<Host> {
    let node = world.split_shared(world.rank());
    let (local, size) = (node.rank() as usize, node.size() as usize);
    let mut ranks = vec![0i32; size];
    node.all_gather_into(&world.rank(), &mut ranks[..]);
    let mut path = [0u8; 96];
    if local == 0 {
        match shm::create_unique(size) {
            Ok(p) if p.len() <= path.len() => path[..p.len()].copy_from_slice(p.as_bytes()),
            Ok(_) => {}
            Err(e) => eprintln!("ranch: rank {}: cannot create this host's shared-memory group: {e}", crate::rank()),
        }
    }
    node.process_at_rank(0).broadcast_into(&mut path[..]);
    let path = String::from_utf8_lossy(&path[..path.iter().position(|&b| b == 0).unwrap_or(path.len())]).into_owned();
    let group = if path.is_empty() { Err("no segment".to_string()) } else { shm::Group::open(&path, local, size) };
    // Every rank of the host has mapped it: the name is no longer needed, and nothing is
    // left in /dev/shm whatever happens to the ranks.
    node.barrier();
    if local == 0 && !path.is_empty() {
        let _ = std::fs::remove_file(&path);
    }
    let mut everywhere = 0i32;
    world.all_reduce_into(&(group.is_ok() as i32), &mut everywhere, SystemOperation::min());
    let leaders = world.split_by_color(if local == 0 { Color::with_value(0) } else { Color::undefined() });
    let mut place = leaders.as_ref().map_or([0u32, 1], |l| [l.rank() as u32, l.size() as u32]);
    node.process_at_rank(0).broadcast_into(&mut place[..]);
    if everywhere == 0 {
        if world.rank() == 0 {
            eprintln!("ranch: a host could not form its shared-memory group; collectives use flat MPI");
        }
        return None;
    }
    Some(Host {
        share: HostShare { group: group.ok()?, index: place[0], hosts: place[1].max(1) },
        ranks: ranks.into_iter().map(|r| r as usize).collect(),
        name: mpi::environment::processor_name().unwrap_or_default(),
        leaders: leaders.filter(|l| l.size() > 1),
    })
}

/// Marks an MPI call as in progress while it lives.
struct Flight;

impl Flight {
    fn start(op: &'static str) -> Flight {
        *lock(&IN_FLIGHT) = Some((op, Instant::now()));
        Flight
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        *lock(&IN_FLIGHT) = None;
    }
}

fn start_watchdog(limit: Duration) {
    let watch = move || {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let Some((op, since)) = *lock(&IN_FLIGHT) else { continue };
            if since.elapsed() <= limit {
                continue;
            }
            if op == "MPI_Finalize" {
                // The rank's value was handed over already: only MPI's farewell is stuck
                // (a rank that died left it waiting).
                exit_now(0);
            }
            let message = format!(
                "{op} did not complete within {:.0} s over MPI: a rank it waits for died, hangs or skipped it. \
                 MPI calls cannot be interrupted, so this rank exits (set {} to wait longer)",
                limit.as_secs_f64(),
                super::TIMEOUT_ENV
            );
            crate::__rt::report_failure(&message);
            // The status of a rank whose cell panicked: the kernel shows the report.
            exit_now(101);
        }
    };
    let _ = std::thread::Builder::new().name("ranch-mpi-watchdog".into()).spawn(watch);
}

/// Ends the process at once: MPI's exit handlers could wait for the stuck call.
fn exit_now(code: i32) -> ! {
    unsafe extern "C" {
        fn _exit(code: i32) -> !;
    }
    // SAFETY: _exit ends the process; nothing runs afterwards.
    unsafe { _exit(code) }
}

fn system_op(op: Op) -> SystemOperation {
    match op {
        Op::Sum => SystemOperation::sum(),
        Op::Min => SystemOperation::min(),
        Op::Max => SystemOperation::max(),
        Op::Prod => SystemOperation::product(),
    }
}

fn datatype<T: Reduce>(op: &'static str) -> Result<DatatypeRef<'static>, CommError> {
    T::mpi_datatype()
        .ok_or_else(|| CommError::new(op, vec![], format!("`{}` has no MPI datatype: use one of ranch's Reduce types", T::NAME)))
}

/// `buf` combined element-wise across `comm`'s ranks, in place.
fn all_reduce_on<T: Reduce>(comm: &SimpleCommunicator, buf: &mut [T], op: Op, dt: DatatypeRef<'static>) {
    let mut send: Vec<T> = Vec::with_capacity(buf.len().min(CHUNK));
    for chunk in buf.chunks_mut(CHUNK) {
        send.clear();
        send.extend_from_slice(chunk);
        let n = chunk.len() as i32;
        // SAFETY: both buffers hold `n` elements of the type `dt` describes.
        let (from, mut into) = unsafe { (DynBuffer::from_raw(send.as_ptr(), n, dt), DynBufferMut::from_raw(chunk.as_mut_ptr(), n, dt)) };
        comm.all_reduce_into(&from, &mut into, system_op(op));
    }
}

impl State {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    /// Checks that every rank calls what this one does (collective). `lengths_differ`: the
    /// length may differ between ranks (gathers); the descriptions are returned.
    fn agree(&self, op: &'static str, desc: Desc, ty: Option<&str>, lengths_differ: bool) -> Result<Vec<Desc>, CommError> {
        let mut all = vec![0u64; 4 * self.world.size() as usize];
        self.world.all_gather_into(&desc[..], &mut all[..]);
        let theirs: Vec<Desc> = all.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
        let shape = |d: &Desc| if lengths_differ { [d[0], d[1], 0, d[3]] } else { *d };
        let compared: Vec<Desc> = theirs.iter().map(shape).collect();
        match mismatch(op, self.rank(), &shape(&desc), &compared, ty) {
            Some((odd, message)) => Err(CommError::new(op, odd, message)),
            None => Ok(theirs),
        }
    }

    /// `map`'s next chunk in a hierarchical group (see [`HostShare::claim`]); `None` in a
    /// flat group (the caller deals round robin).
    pub fn claim(&self, seq: u32, chunk: u32, len: u32) -> Option<Option<u32>> {
        Some(self.host.as_ref()?.share.claim(seq, chunk, len))
    }

    pub fn barrier(&self) -> Result<(), CommError> {
        let _flight = Flight::start("barrier");
        // Agreeing on the call is a barrier already.
        self.agree("barrier", [Kind::Barrier as u64, 0, 0, 0], None, false).map(drop)
    }

    /// `all_reduce` (`root` None) or `reduce` to `root` (other ranks keep their buffers).
    pub fn reduce<T: Reduce>(&self, buf: &mut [T], op: Op, root: Option<usize>) -> Result<(), CommError> {
        let name = if root.is_some() { "reduce" } else { "all_reduce" };
        let dt = datatype::<T>(name)?;
        let _flight = Flight::start(name);
        let desc = [kind_of(name) as u64, type_code(T::NAME, Some(op)), buf.len() as u64, root.map_or(0, |r| r as u64 + 1)];
        self.agree(name, desc, None, false)?;
        let keep = root.filter(|&r| r != self.rank()).map(|_| buf.to_vec());
        match &self.host {
            Some(host) => host.all_reduce(buf, op, dt)?,
            None => all_reduce_on(&self.world, buf, op, dt),
        }
        if let Some(mine) = keep {
            buf.copy_from_slice(&mine);
        }
        Ok(())
    }

    pub fn broadcast_slice<T: Reduce>(&self, buf: &mut [T], root: usize) -> Result<(), CommError> {
        const OP: &str = "broadcast_slice";
        let dt = datatype::<T>(OP)?;
        let _flight = Flight::start(OP);
        self.agree(OP, [Kind::BroadcastSlice as u64, type_code(T::NAME, None), buf.len() as u64, root as u64 + 1], None, false)?;
        let from = self.world.process_at_rank(root as i32);
        for chunk in buf.chunks_mut(CHUNK) {
            // SAFETY: the chunk holds `len` elements of the type `dt` describes.
            let mut into = unsafe { DynBufferMut::from_raw(chunk.as_mut_ptr(), chunk.len() as i32, dt) };
            from.broadcast_into(&mut into);
        }
        Ok(())
    }

    /// Every rank's bytes, in rank order (`ty`: the Rust type they encode).
    pub fn all_gather_bytes(&self, op: &'static str, mine: &[u8], ty: &str) -> Result<Vec<Vec<u8>>, CommError> {
        let _flight = Flight::start(op);
        let theirs = self.agree(op, [kind_of(op) as u64, type_tag(ty), mine.len() as u64, 0], Some(ty), true)?;
        let lengths: Vec<usize> = theirs.iter().map(|d| d[2] as usize).collect();
        let total: usize = lengths.iter().sum();
        if total > i32::MAX as usize {
            // Every rank knows every length: they all fail alike.
            return Err(CommError::new(
                op,
                vec![],
                format!("the ranks' values add up to {total} bytes; over MPI at most 2 GiB move in one {op}"),
            ));
        }
        let counts: Vec<i32> = lengths.iter().map(|&l| l as i32).collect();
        let displs: Vec<i32> = counts.iter().scan(0, |at, &c| Some(std::mem::replace(at, *at + c))).collect();
        let mut out = vec![0u8; total];
        self.world.all_gather_varcount_into(mine, &mut PartitionMut::new(&mut out[..], &counts[..], &displs[..]));
        let mut rest = &out[..];
        Ok(lengths
            .iter()
            .map(|&l| {
                let (one, after) = rest.split_at(l);
                rest = after;
                one.to_vec()
            })
            .collect())
    }

    pub fn send_bytes(&self, bytes: &[u8], dest: usize) -> Result<(), CommError> {
        if bytes.len() > i32::MAX as usize {
            return Err(CommError::new("send", vec![dest], format!("{} bytes: over MPI at most 2 GiB go in one message", bytes.len())));
        }
        let _flight = Flight::start("send");
        self.world.process_at_rank(dest as i32).send_with_tag(bytes, MESSAGE_TAG);
        Ok(())
    }

    pub fn recv_bytes(&self, src: usize) -> Result<Vec<u8>, CommError> {
        let _flight = Flight::start("recv");
        let (message, status) = self.world.process_at_rank(src as i32).matched_probe_with_tag(MESSAGE_TAG);
        let mut bytes = vec![0u8; status.count(u8::equivalent_datatype()).max(0) as usize];
        message.matched_receive_into(&mut bytes[..]);
        Ok(bytes)
    }
}

impl Host {
    /// Inside the host through shared memory, between hosts through the leaders.
    fn all_reduce<T: Reduce>(&self, buf: &mut [T], op: Op, dt: DatatypeRef<'static>) -> Result<(), CommError> {
        let alone = self.ranks.len() == 1;
        if !alone {
            self.share.group.reduce(buf, op, Some(0)).map_err(|e| self.named(e))?;
        }
        if let Some(leaders) = &self.leaders {
            all_reduce_on(leaders, buf, op, dt);
        }
        if !alone {
            self.share.group.broadcast_slice(buf, 0).map_err(|e| self.named(e))?;
        }
        Ok(())
    }

    /// An error of the host's group, whose ranks count from 0 on each host, with global ranks.
    fn named(&self, e: CommError) -> CommError {
        let ranks = e.ranks.iter().filter_map(|&r| self.ranks.get(r).copied()).collect();
        let numbering: Vec<String> = self.ranks.iter().enumerate().map(|(l, g)| format!("{l}={g}")).collect();
        CommError::new(e.op, ranks, format!("on host {} (ranks counted on the host: {}): {}", self.name, numbering.join(" "), e.message))
    }
}
