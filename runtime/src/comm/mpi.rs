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
use mpi::datatype::{DatatypeRef, DynBufferMut, PartitionMut};
use mpi::environment::Universe;
use mpi::raw::AsRaw;
use mpi::topology::{Color, SimpleCommunicator};
use mpi::traits::*;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Elements per MPI call: MPI counts are C ints.
const CHUNK: usize = 1 << 28;
/// The tag of `send`/`recv` messages.
const MESSAGE_TAG: i32 = 17;
/// Bytes of a rank's description in an agreement's block.
const DESC: usize = 32;
/// The most data a rank's agreement block carries (see [`State::agree`]).
const MOST_INLINE: usize = 4096;
/// What every rank's agreement blocks may add up to, with their data.
const INLINE_TOTAL: usize = 32 << 10;

/// Bytes of data each rank's agreement block carries in a flat group of `size` ranks: up
/// to 4 KiB, while the blocks of all ranks stay within 32 KiB (so that agreeing, which
/// every collective and barrier does, stays as cheap as a small all-gather at any scale).
/// None in a hierarchical group, whose small all-reduce goes through each host's shared
/// memory and costs less than an all-gather across the hosts.
fn inline_bytes(size: usize, flat: bool) -> usize {
    if !flat {
        return 0;
    }
    (INLINE_TOTAL / size.max(1)).saturating_sub(DESC).min(MOST_INLINE) / 8 * 8
}

/// What the ranks said in an agreement: their descriptions and their blocks.
struct Agreed {
    theirs: Vec<Desc>,
    blocks: Vec<u8>,
    /// Bytes of each block.
    block: usize,
}

/// A rank's block in an agreement of blocks of `DESC + inline` bytes: its description,
/// then `data` if it fits.
fn block_of(desc: Desc, data: &[u8], inline: usize) -> Vec<u8> {
    let mut block = vec![0u8; DESC + inline];
    for (at, word) in block.chunks_exact_mut(8).zip(desc) {
        at.copy_from_slice(&word.to_le_bytes());
    }
    if data.len() <= inline {
        block[DESC..DESC + data.len()].copy_from_slice(data);
    }
    block
}

impl Agreed {
    /// The ranks' blocks, in rank order.
    fn from_blocks(blocks: Vec<u8>, inline: usize) -> Agreed {
        let block = DESC + inline;
        let word = |b: &[u8], i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        let theirs = blocks.chunks_exact(block).map(|b| [word(b, 0), word(b, 1), word(b, 2), word(b, 3)]).collect();
        Agreed { theirs, blocks, block }
    }

    /// Whether every rank's data of `len` bytes came in its block.
    fn carries(&self, len: usize) -> bool {
        len <= self.block - DESC
    }

    /// The first `len` bytes of data rank `r` sent with its description.
    fn payload(&self, r: usize, len: usize) -> &[u8] {
        &self.blocks[r * self.block + DESC..r * self.block + DESC + len]
    }

    /// Rank `r`'s data, into `buf` (of the length every rank agreed on).
    fn copy_out<T: Reduce>(&self, r: usize, buf: &mut [T]) {
        let from = self.payload(r, size_of_val(buf));
        // SAFETY: `from` holds exactly `buf`'s bytes, which rank `r` took from a `[T]` of
        // this length, and every bit pattern of a Reduce type (numbers) is a value.
        unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), buf.as_mut_ptr() as *mut u8, from.len()) };
    }

    /// Every rank's data combined element-wise in rank order, into `buf`.
    fn combine<T: Reduce>(&self, buf: &mut [T], op: Op) {
        self.copy_out(0, buf);
        let mut theirs = buf.to_vec();
        for r in 1..self.theirs.len() {
            self.copy_out(r, &mut theirs);
            T::combine_slice(buf, &theirs, op);
        }
    }
}

/// A slice of numbers as its bytes.
fn bytes_of<T: Reduce>(buf: &[T]) -> &[u8] {
    // SAFETY: Reduce types are plain numbers: no padding, every byte initialised.
    unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, size_of_val(buf)) }
}

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
    /// The library's `MPI_IN_PLACE`, where it is known (see [`in_place`]).
    in_place: Option<InPlace>,
    /// Bytes of data an agreement carries (see [`inline_bytes`]).
    inline: usize,
    _universe: Universe,
}

/// `MPI_IN_PLACE`: a send buffer that says "the data is in the receive buffer".
#[derive(Clone, Copy)]
struct InPlace(*const std::ffi::c_void);

/// `MPI_IN_PLACE` of the MPI library this rank runs on. rsmpi does not export it, and it is
/// a macro, not a symbol: Open MPI's `mpi.h` defines it as `(void *) 1`, MPICH's (and its
/// derivatives': Intel MPI, MVAPICH, Cray MPICH) as `(void *) -1`; both are fixed parts of
/// their ABIs. For any other library, `None`: collectives then copy the buffer first.
fn in_place() -> Option<InPlace> {
    in_place_of(&mpi::environment::library_version().ok()?)
}

fn in_place_of(library: &str) -> Option<InPlace> {
    let known = |names: &[&str]| names.iter().any(|n| library.contains(n));
    if known(&["Open MPI"]) {
        Some(InPlace(std::ptr::without_provenance(1)))
    } else if known(&["MPICH", "Intel(R) MPI", "MVAPICH"]) {
        Some(InPlace(std::ptr::without_provenance(usize::MAX)))
    } else {
        None
    }
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
    let inline = inline_bytes(size, host.is_none());
    Ok(State { world, host, in_place: in_place(), inline, _universe: universe })
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

/// `buf` combined element-wise across `comm`'s ranks, in place: into `root` only (the
/// other ranks' buffers are left as they were), or into every rank (`root` None).
fn reduce_on<T: Reduce>(
    comm: &SimpleCommunicator,
    buf: &mut [T],
    op: Op,
    root: Option<usize>,
    dt: DatatypeRef<'static>,
    in_place: Option<InPlace>,
) {
    let mut copy: Vec<T> = Vec::new();
    let me = comm.rank() as usize;
    for chunk in buf.chunks_mut(CHUNK) {
        let n = chunk.len() as i32;
        let data = chunk.as_mut_ptr() as *mut std::ffi::c_void;
        // The send buffer: the data itself where this rank receives nothing (a reduce's
        // other ranks), else MPI_IN_PLACE, else a copy (a library whose MPI_IN_PLACE is
        // unknown).
        let send = match (root, in_place) {
            (Some(r), _) if r != me => data as *const std::ffi::c_void,
            (_, Some(InPlace(p))) => p,
            _ => {
                copy.clear();
                copy.extend_from_slice(chunk);
                copy.as_ptr() as *const std::ffi::c_void
            }
        };
        let (dt, op, raw) = (dt.as_raw(), system_op(op).as_raw(), comm.as_raw());
        // SAFETY: `data` (and `send`, unless MPI_IN_PLACE) hold `n` elements of the type
        // `dt` describes; a reduce's non-root ranks pass their data as the send buffer and
        // receive nothing into it.
        unsafe {
            match root {
                None => mpi::ffi::MPI_Allreduce(send, data, n, dt, op, raw),
                Some(r) => mpi::ffi::MPI_Reduce(send, data, n, dt, op, r as i32, raw),
            };
        }
    }
}

impl State {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    /// Checks that every rank calls what this one does (collective). `lengths_differ`: the
    /// length may differ between ranks (gathers). Every rank sends one block of the same
    /// size, whatever it calls (a different size would truncate, which aborts an MPI job):
    /// its description, then `inline` where that fits (see [`inline_bytes`]). So a small
    /// collective's data moves in this same call, one MPI collective instead of two: on
    /// MPI's latency, that halves what a small all-reduce costs.
    fn agree(&self, op: &'static str, desc: Desc, ty: Option<&str>, lengths_differ: bool, inline: &[u8]) -> Result<Agreed, CommError> {
        let mut blocks = vec![0u8; (DESC + self.inline) * self.world.size() as usize];
        self.world.all_gather_into(&block_of(desc, inline, self.inline)[..], &mut blocks[..]);
        let agreed = Agreed::from_blocks(blocks, self.inline);
        let shape = |d: &Desc| if lengths_differ { [d[0], d[1], 0, d[3]] } else { *d };
        let compared: Vec<Desc> = agreed.theirs.iter().map(shape).collect();
        match mismatch(op, self.rank(), &shape(&desc), &compared, ty) {
            Some((odd, message)) => Err(CommError::new(op, odd, message)),
            None => Ok(agreed),
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
        self.agree("barrier", [Kind::Barrier as u64, 0, 0, 0], None, false, &[]).map(drop)
    }

    /// `all_reduce` (`root` None) or `reduce` to `root` (other ranks keep their buffers).
    pub fn reduce<T: Reduce>(&self, buf: &mut [T], op: Op, root: Option<usize>) -> Result<(), CommError> {
        let name = if root.is_some() { "reduce" } else { "all_reduce" };
        let dt = datatype::<T>(name)?;
        let _flight = Flight::start(name);
        let desc = [kind_of(name) as u64, type_code(T::NAME, Some(op)), buf.len() as u64, root.map_or(0, |r| r as u64 + 1)];
        let agreed = self.agree(name, desc, None, false, bytes_of(buf))?;
        if agreed.carries(size_of_val(buf)) {
            // Every rank's data came with the agreement (the lengths agree, so every rank
            // knows it did): combined here in rank order, the same on every rank.
            if root.is_none_or(|r| r == self.rank()) {
                agreed.combine(buf, op);
            }
            return Ok(());
        }
        let Some(host) = &self.host else {
            reduce_on(&self.world, buf, op, root, dt, self.in_place);
            return Ok(());
        };
        let keep = root.filter(|&r| r != self.rank()).map(|_| buf.to_vec());
        host.all_reduce(buf, op, dt, self.in_place)?;
        if let Some(mine) = keep {
            buf.copy_from_slice(&mine);
        }
        Ok(())
    }

    pub fn broadcast_slice<T: Reduce>(&self, buf: &mut [T], root: usize) -> Result<(), CommError> {
        const OP: &str = "broadcast_slice";
        let dt = datatype::<T>(OP)?;
        let _flight = Flight::start(OP);
        let desc = [Kind::BroadcastSlice as u64, type_code(T::NAME, None), buf.len() as u64, root as u64 + 1];
        let agreed = self.agree(OP, desc, None, false, if self.rank() == root { bytes_of(buf) } else { &[] })?;
        if agreed.carries(size_of_val(buf)) {
            agreed.copy_out(root, buf);
            return Ok(());
        }
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
        let agreed = self.agree(op, [kind_of(op) as u64, type_tag(ty), mine.len() as u64, 0], Some(ty), true, mine)?;
        let lengths: Vec<usize> = agreed.theirs.iter().map(|d| d[2] as usize).collect();
        if lengths.iter().all(|&l| agreed.carries(l)) {
            return Ok(lengths.iter().enumerate().map(|(r, &l)| agreed.payload(r, l).to_vec()).collect());
        }
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

/// `MPI_Allreduce` of `buf` (sum, in place where ranch knows how) over every rank, with
/// no agreement first: what a C program calls. For `bench/hosts.py`, which times it beside
/// ranch's collectives in the same ranks: launches of four busy-polling ranks on two cores
/// vary more from one to the next than ranch differs from MPI.
pub fn raw_all_reduce_sum(buf: &mut [f32]) -> Result<(), CommError> {
    const OP: &str = "raw MPI_Allreduce";
    let held = hold();
    let state = usable(&held, OP)?;
    let _flight = Flight::start(OP);
    reduce_on(&state.world, buf, Op::Sum, None, datatype::<f32>(OP)?, state.in_place);
    Ok(())
}

impl Host {
    /// Inside the host through shared memory, between hosts through the leaders.
    fn all_reduce<T: Reduce>(&self, buf: &mut [T], op: Op, dt: DatatypeRef<'static>, in_place: Option<InPlace>) -> Result<(), CommError> {
        let alone = self.ranks.len() == 1;
        if !alone {
            self.share.group.reduce(buf, op, Some(0)).map_err(|e| self.named(e))?;
        }
        if let Some(leaders) = &self.leaders {
            reduce_on(leaders, buf, op, None, dt, in_place);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_is_known_for_open_mpi_and_mpich_only() {
        let addr = |p: Option<InPlace>| p.map(|InPlace(p)| p as usize);
        assert_eq!(addr(in_place_of("Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4")), Some(1));
        assert_eq!(addr(in_place_of("MPICH Version:\t4.0.2\nMPICH Release date: ...")), Some(usize::MAX));
        assert_eq!(addr(in_place_of("Intel(R) MPI Library 2021.10 for Linux* OS")), Some(usize::MAX));
        assert_eq!(addr(in_place_of("Microsoft MPI 10.1")), None);
    }

    /// What `agree` hands back from 3 ranks' blocks, as the all-gather concatenates them.
    fn agreed(data: &[&[u8]], inline: usize) -> Agreed {
        let blocks = data.iter().enumerate().flat_map(|(r, d)| block_of([2, 7, d.len() as u64, r as u64], d, inline)).collect();
        Agreed::from_blocks(blocks, inline)
    }

    #[test]
    fn small_data_moves_with_the_agreement_and_combines_in_rank_order() {
        let data: Vec<Vec<f64>> = (0..3).map(|r| (0..512).map(|i| (i * (r + 1)) as f64 + 0.1).collect()).collect();
        let got = agreed(&data.iter().map(|d| bytes_of(d)).collect::<Vec<_>>(), inline_bytes(3, true));
        assert!(got.carries(4096));
        assert_eq!(got.theirs[1], [2, 7, 4096, 1]);
        let mut sum = vec![0.0f64; 512];
        got.combine(&mut sum, Op::Sum);
        let serial: Vec<f64> = (0..512).map(|i| data[0][i] + data[1][i] + data[2][i]).collect();
        assert_eq!(sum, serial);
        let mut from_2 = vec![0.0f64; 512];
        got.copy_out(2, &mut from_2);
        assert_eq!(from_2, data[2]);
    }

    #[test]
    fn a_gathers_lengths_may_differ_and_data_too_large_is_left_out() {
        let big = vec![9u8; MOST_INLINE + 1];
        let got = agreed(&[b"ab", b"", &big], MOST_INLINE);
        assert_eq!(got.payload(0, 2), b"ab");
        assert_eq!(got.payload(1, 0), b"");
        assert_eq!(got.theirs[2], [2, 7, MOST_INLINE as u64 + 1, 2]);
        assert!(!got.carries(MOST_INLINE + 1));
        assert!(got.payload(2, MOST_INLINE).iter().all(|&b| b == 0), "too large: not inlined");
    }

    #[test]
    fn agreements_stay_small_at_scale_and_carry_nothing_in_a_hierarchy() {
        assert_eq!(inline_bytes(4, true), 4096);
        assert_eq!(inline_bytes(8, true), 4064);
        assert_eq!(inline_bytes(1000, true), 0);
        assert!((1..5000).all(|n| n * (DESC + inline_bytes(n, true)) <= INLINE_TOTAL.max(n * DESC)));
        assert_eq!(inline_bytes(4, false), 0);
        let got = agreed(&[b"ab", b"cd"], 0);
        assert!(got.carries(0) && !got.carries(2));
        assert_eq!(got.theirs[1], [2, 7, 2, 1]);
    }
}
