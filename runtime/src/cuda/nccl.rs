//! NCCL collectives on device buffers, beside [`crate::comm`] (which keeps host data).
//!
//! The communicator is formed on first use: every rank checks through `ranch::comm()` that
//! no other rank has its GPU (NCCL cannot put two ranks of one communicator on one GPU),
//! rank 0 creates NCCL's unique id, and `ranch::comm()` broadcasts it. It lives until the
//! rank exits (a cell's ranks are fresh processes).

use super::{Gpu, context};
use crate::{CommError, Op};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};
use std::rc::Rc;

/// The launch's NCCL communicator, on this rank's GPU and stream.
pub struct Nccl {
    comm: Comm,
    pub gpu: &'static Gpu,
}

thread_local! {
    // NCCL communicators are neither Send nor Sync: one per thread that asks.
    static NCCL: std::cell::OnceCell<Result<Rc<Nccl>, CommError>> = const { std::cell::OnceCell::new() };
}

/// The communicator, formed on first use by every rank (a collective call: every rank
/// must call it).
pub fn nccl() -> Result<Rc<Nccl>, CommError> {
    NCCL.with(|cell| cell.get_or_init(form).clone())
}

fn failed(ranks: Vec<usize>, message: impl Into<String>) -> CommError {
    CommError::new("nccl", ranks, message.into())
}

fn form() -> Result<Rc<Nccl>, CommError> {
    let comm = crate::comm();
    let me = crate::rank();
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
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Err(failed(vec![me], "NCCL (libnccl.so.2) cannot be loaded: install it (e.g. pip install nvidia-nccl-cu12, or the distribution's libnccl2)"));
    }
    let id = if me == 0 { Some(Id::new().map_err(|e| failed(vec![0], format!("ncclGetUniqueId failed: {:?}", e.0)))?) } else { None };
    let bytes: Vec<u8> = comm.broadcast(id.as_ref().map(|id| id.internal().iter().map(|c| *c as u8).collect::<Vec<u8>>()), 0)?;
    let raw: [std::ffi::c_char; 128] = std::array::from_fn(|i| bytes.get(i).copied().unwrap_or(0) as std::ffi::c_char);
    let gpu = context().map_err(|e| failed(vec![me], e.message))?;
    // Blocks until every rank joined (rank 0's bootstrap listener, started by
    // ncclGetUniqueId, lives in its process meanwhile). A rank that dies here ends the
    // launch through the supervisor, as any failing rank does.
    let nccl = Comm::from_rank(gpu.stream.clone(), me, crate::world_size(), Id::uninit(raw))
        .map_err(|e| failed(vec![me], format!("ncclCommInitRank failed: {:?}", e.0)))?;
    Ok(Rc::new(Nccl { comm: nccl, gpu }))
}

fn reduce_op(op: Op) -> ReduceOp {
    match op {
        Op::Sum => ReduceOp::Sum,
        Op::Min => ReduceOp::Min,
        Op::Max => ReduceOp::Max,
        Op::Prod => ReduceOp::Prod,
    }
}

fn nccl_error(op: &'static str, e: cudarc::nccl::result::NcclError) -> CommError {
    CommError::new(op, vec![crate::rank()], format!("NCCL: {:?}", e.0))
}

impl Nccl {
    /// Combines `buf` across ranks in place; every rank gets the result.
    pub fn all_reduce<T: NcclType, B: DevicePtrMut<T>>(&self, buf: &mut B, op: Op) -> Result<(), CommError> {
        self.comm.all_reduce_in_place(buf, &reduce_op(op)).map(drop).map_err(|e| nccl_error("all_reduce", e))
    }

    /// Copies `root`'s `buf` into every rank's `buf`.
    pub fn broadcast<T: NcclType, B: DevicePtrMut<T>>(&self, buf: &mut B, root: usize) -> Result<(), CommError> {
        self.comm.broadcast_in_place(buf, root as i32).map(drop).map_err(|e| nccl_error("broadcast", e))
    }

    /// Every rank's `send`, in rank order, into `recv` (world_size times its length).
    pub fn all_gather<T: NcclType, S: DevicePtr<T>, R: DevicePtrMut<T>>(&self, send: &S, recv: &mut R) -> Result<(), CommError> {
        self.comm.all_gather(send, recv).map(drop).map_err(|e| nccl_error("all_gather", e))
    }

    /// Combines `send` across ranks; rank r gets block r of the result in `recv` (the
    /// send length divided by world_size).
    pub fn reduce_scatter<T: NcclType, S: DevicePtr<T>, R: DevicePtrMut<T>>(&self, send: &S, recv: &mut R, op: Op) -> Result<(), CommError> {
        self.comm.reduce_scatter(send, recv, &reduce_op(op)).map(drop).map_err(|e| nccl_error("reduce_scatter", e))
    }
}
