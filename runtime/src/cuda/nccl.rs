//! NCCL collectives on device buffers, beside [`crate::comm`] (which keeps host data).
//!
//! The communicator is formed on first use: every rank checks through `ranch::comm()` that
//! no other rank has its GPU (NCCL cannot put two ranks of one communicator on one GPU),
//! rank 0 creates NCCL's unique id, and `ranch::comm()` broadcasts it. It lives until the
//! rank exits (a cell's ranks are fresh processes).
//!
//! NCCL waits for a peer forever: a collective whose peer died never completes, and the
//! stream that carries it never drains. So a watchdog thread watches the group (the
//! rendezvous marks a rank that left, as it does for shared-memory collectives): once a
//! peer has gone, calls are refused with a [`CommError`] naming it, and if this rank still
//! has NCCL work in flight a second later, the communicator is aborted (`ncclCommAbort`,
//! as torch's watchdog does), which ends the wait; [`Nccl::synchronize`] then says why.
//! cudarc's own `Comm` aborts on drop and cannot be aborted from another thread, so this
//! module holds NCCL's handle itself and calls cudarc's `result` layer.

use super::{Gpu, context};
use crate::{CommError, Op};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use cudarc::nccl::result::{self as nccl, NcclError};
use cudarc::nccl::{Id, NcclType, sys};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a peer may have been gone, with this rank's NCCL work still in flight, before
/// the communicator is aborted: long enough for a collective the peer did complete to
/// finish here too.
const GRACE: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(100);

/// The launch's NCCL communicator, on this rank's GPU and stream.
pub struct Nccl {
    shared: Arc<Shared>,
    pub gpu: &'static Gpu,
}

/// What the communicator's user and its watchdog share.
struct Shared {
    comm: Handle,
    /// Why the communicator was aborted, once it was: it must then not be used, nor
    /// aborted again (ncclCommAbort frees it).
    aborted: Mutex<Option<String>>,
    /// NCCL work was enqueued and not yet seen complete by [`Nccl::synchronize`].
    pending: AtomicBool,
    /// The `Nccl` was dropped: the watchdog ends.
    closed: AtomicBool,
}

struct Handle(sys::ncclComm_t);
// SAFETY: an NCCL communicator may be aborted from another thread than the one using it
// (that is what ncclCommAbort is for); every other use stays on the owning thread.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl Shared {
    fn abort(&self, why: String) {
        let mut aborted = self.aborted.lock().unwrap_or_else(|e| e.into_inner());
        if aborted.is_none() {
            // SAFETY: a communicator NCCL gave us, aborted once (guarded by the lock).
            let _ = unsafe { nccl::comm_abort(self.comm.0) };
            *aborted = Some(why);
        }
    }

    fn aborted(&self) -> Option<String> {
        self.aborted.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

thread_local! {
    // NCCL communicators are not for sharing between threads: one per thread that asks.
    static NCCL: std::cell::RefCell<Option<Result<Rc<Nccl>, CommError>>> = const { std::cell::RefCell::new(None) };
}

/// The communicator, formed on first use by every rank (a collective call: every rank
/// must call it).
pub fn nccl() -> Result<Rc<Nccl>, CommError> {
    if let Some(made) = NCCL.with(|cell| cell.borrow().clone()) {
        return made;
    }
    // Formed outside the borrow: forming runs collectives, which must not find it borrowed.
    let made = form();
    NCCL.with(|cell| cell.borrow_mut().get_or_insert(made).clone())
}

/// A pool's cell has ended: its communicator goes with its group (NCCL's memory on the
/// GPU is freed unless the cell kept a handle in a variable).
pub(crate) fn end_cell() {
    let made = NCCL.with(|cell| cell.borrow_mut().take());
    drop(made);
}

fn failed(ranks: Vec<usize>, message: impl Into<String>) -> CommError {
    CommError::new("nccl", ranks, message.into())
}

fn form() -> Result<Rc<Nccl>, CommError> {
    let comm = crate::comm();
    let me = comm.rank();
    // Every rank says which GPU it has (or why none), so that all of them fail alike.
    let mine = match (context(), super::gpu_uuid()) {
        (Ok(_), Some(uuid)) => Ok(uuid),
        (Ok(_), None) => Err("its GPU has no UUID in CUDA_VISIBLE_DEVICES".to_string()),
        (Err(e), _) => Err(e.message),
    };
    let all: Vec<Result<String, String>> = comm.all_gather(&mine)?;
    let without: Vec<usize> = (0..all.len()).filter(|&r| all[r].is_err()).collect();
    if !without.is_empty() {
        let why = all[without[0]].as_ref().err().cloned().unwrap_or_default();
        return Err(failed(without, format!("NCCL needs a GPU on every rank ({why})")));
    }
    let uuids: Vec<&String> = all.iter().filter_map(|r| r.as_ref().ok()).collect();
    let shared: Vec<usize> = (0..uuids.len()).filter(|&r| uuids.iter().filter(|u| **u == uuids[r]).count() > 1).collect();
    if !shared.is_empty() {
        return Err(failed(
            shared,
            "NCCL cannot put two ranks on one GPU; launch at most as many ranks as GPUs (or use ranch::comm() for host data)",
        ));
    }
    // cudarc panics when NCCL is missing: ask first (every rank, so all fail alike).
    // SAFETY: only tries to open the library.
    if !unsafe { sys::is_culib_present() } {
        return Err(failed(
            vec![me],
            "NCCL (libnccl.so.2) cannot be loaded: install it (e.g. pip install nvidia-nccl-cu12, or the distribution's libnccl2)",
        ));
    }
    let id = if me == 0 { Some(Id::new().map_err(|e| failed(vec![0], format!("ncclGetUniqueId failed: {:?}", e.0)))?) } else { None };
    let bytes: Vec<u8> = comm.broadcast(id.as_ref().map(|id| id.internal().iter().map(|c| *c as u8).collect::<Vec<u8>>()), 0)?;
    let internal: [std::ffi::c_char; 128] = std::array::from_fn(|i| bytes.get(i).copied().unwrap_or(0) as std::ffi::c_char);
    let gpu = context().map_err(|e| failed(vec![me], e.message))?;
    // Blocks until every rank joined (rank 0's bootstrap listener, started by
    // ncclGetUniqueId, lives in its process meanwhile). A rank that dies here ends the
    // launch through the supervisor, as any failing rank does.
    let mut handle = std::mem::MaybeUninit::uninit();
    // SAFETY: NCCL writes the handle; the id is the one rank 0 created.
    let handle = unsafe {
        nccl::comm_init_rank(handle.as_mut_ptr(), comm.world_size() as i32, sys::ncclUniqueId { internal }, me as i32)
            .map_err(|e| failed(vec![me], format!("ncclCommInitRank failed: {:?}", e.0)))?;
        handle.assume_init()
    };
    let shared = Arc::new(Shared {
        comm: Handle(handle),
        aborted: Mutex::new(None),
        pending: AtomicBool::new(false),
        closed: AtomicBool::new(false),
    });
    let watched = shared.clone();
    std::thread::Builder::new()
        .name("ranch-nccl-watchdog".into())
        .spawn(move || watch(&watched))
        .map_err(|e| failed(vec![me], format!("cannot start NCCL's watchdog thread: {e}")))?;
    Ok(Rc::new(Nccl { shared, gpu }))
}

/// Aborts the communicator when a peer has gone while this rank still has NCCL work in
/// flight (which could then never complete).
fn watch(shared: &Shared) {
    let mut gone_since = None;
    while !shared.closed.load(Ordering::Acquire) && shared.aborted().is_none() {
        std::thread::sleep(TICK);
        let Some((_, why)) = crate::comm().departed("an NCCL collective") else { continue };
        let since = *gone_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= GRACE && shared.pending.load(Ordering::Acquire) {
            shared.abort(why);
        }
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.abort("the communicator was dropped".into());
    }
}

fn reduce_op(op: Op) -> sys::ncclRedOp_t {
    match op {
        Op::Sum => sys::ncclRedOp_t::ncclSum,
        Op::Min => sys::ncclRedOp_t::ncclMin,
        Op::Max => sys::ncclRedOp_t::ncclMax,
        Op::Prod => sys::ncclRedOp_t::ncclProd,
    }
}

fn aborted_error(op: &'static str, why: &str) -> CommError {
    let (ranks, _) = crate::comm().departed(op).unwrap_or_default();
    CommError::new(op, ranks, format!("NCCL was aborted so that this rank does not wait forever: {why}"))
}

impl Nccl {
    /// Refuses a call that could never complete; else runs it with the raw communicator
    /// and stream, marking NCCL work in flight.
    fn call(
        &self,
        op: &'static str,
        enqueue: impl FnOnce(sys::ncclComm_t, sys::cudaStream_t) -> Result<nccl::NcclStatus, NcclError>,
    ) -> Result<(), CommError> {
        self.usable(op)?;
        if let Some((ranks, why)) = crate::comm().departed(op) {
            return Err(CommError::new(op, ranks, why));
        }
        self.shared.pending.store(true, Ordering::Release);
        let result = enqueue(self.shared.comm.0, self.gpu.stream.cu_stream() as sys::cudaStream_t);
        self.usable(op)?;
        result.map(drop).map_err(|e| CommError::new(op, vec![crate::comm().rank()], format!("NCCL: {:?}", e.0)))
    }

    fn usable(&self, op: &'static str) -> Result<(), CommError> {
        match self.shared.aborted() {
            Some(why) => Err(aborted_error(op, &why)),
            None => Ok(()),
        }
    }

    /// Waits until this rank's NCCL work is done (its stream drains). Fails, naming the
    /// rank, when a peer's departure made NCCL abort it: the buffers then hold no result.
    pub fn synchronize(&self) -> Result<(), CommError> {
        let synced = self.gpu.stream.synchronize();
        if self.shared.pending.load(Ordering::Acquire) {
            self.usable("synchronize")?;
        }
        synced.map_err(|e| CommError::new("synchronize", vec![crate::comm().rank()], format!("CUDA: {e}")))?;
        self.shared.pending.store(false, Ordering::Release);
        Ok(())
    }

    /// Combines `buf` across ranks in place; every rank gets the result.
    pub fn all_reduce<T: NcclType, B: DevicePtrMut<T>>(&self, buf: &mut B, op: Op) -> Result<(), CommError> {
        let count = buf.len();
        let (ptr, _record) = buf.device_ptr_mut(&self.gpu.stream);
        // SAFETY: one device buffer of `count` elements of T, on this rank's stream.
        self.call("all_reduce", |comm, stream| unsafe {
            nccl::all_reduce(ptr as _, ptr as _, count, T::as_nccl_type(), reduce_op(op), comm, stream)
        })
    }

    /// Copies `root`'s `buf` into every rank's `buf`.
    pub fn broadcast<T: NcclType, B: DevicePtrMut<T>>(&self, buf: &mut B, root: usize) -> Result<(), CommError> {
        let count = buf.len();
        let (ptr, _record) = buf.device_ptr_mut(&self.gpu.stream);
        // SAFETY: as for all_reduce.
        self.call("broadcast", |comm, stream| unsafe {
            nccl::broadcast(ptr as _, ptr as _, count, T::as_nccl_type(), root as i32, comm, stream)
        })
    }

    /// Every rank's `send`, in rank order, into `recv` (world_size times its length).
    pub fn all_gather<T: NcclType, S: DevicePtr<T>, R: DevicePtrMut<T>>(&self, send: &S, recv: &mut R) -> Result<(), CommError> {
        let count = send.len();
        if recv.len() != count * crate::comm().world_size() {
            return Err(CommError::new("all_gather", vec![], format!("recv holds {} elements, expected world_size x {count}", recv.len())));
        }
        let (src, _read) = send.device_ptr(&self.gpu.stream);
        let (dst, _write) = recv.device_ptr_mut(&self.gpu.stream);
        // SAFETY: lengths checked above.
        self.call("all_gather", |comm, stream| unsafe { nccl::all_gather(src as _, dst as _, count, T::as_nccl_type(), comm, stream) })
    }

    /// Combines `send` across ranks; rank r gets block r of the result in `recv` (the
    /// send length divided by world_size).
    pub fn reduce_scatter<T: NcclType, S: DevicePtr<T>, R: DevicePtrMut<T>>(
        &self,
        send: &S,
        recv: &mut R,
        op: Op,
    ) -> Result<(), CommError> {
        let count = recv.len();
        if send.len() != count * crate::comm().world_size() {
            return Err(CommError::new(
                "reduce_scatter",
                vec![],
                format!("send holds {} elements, expected world_size x {count}", send.len()),
            ));
        }
        let (src, _read) = send.device_ptr(&self.gpu.stream);
        let (dst, _write) = recv.device_ptr_mut(&self.gpu.stream);
        // SAFETY: lengths checked above.
        self.call("reduce_scatter", |comm, stream| unsafe {
            nccl::reduce_scatter(src as _, dst as _, count, T::as_nccl_type(), reduce_op(op), comm, stream)
        })
    }
}
