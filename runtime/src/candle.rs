//! Collectives on candle tensors that autodiff sees through (feature `candle`; in a
//! `%%ranch` cell that names `ranch::candle`, ranch turns it on by itself).
//!
//! Each collective is a candle custom op, so `loss.backward()` runs the matching collective
//! in every rank: all-reduce-sum's backward is an all-reduce-sum, broadcast's is a reduce
//! to the root, all-gather's is a reduce-scatter. The convention is mpi4torch's: **the
//! loss being differentiated is the sum of every rank's loss**. [`replicate`] adds the
//! piece data-parallel training needs: a value every rank holds alike, whose gradient is
//! summed over ranks, so an optimiser step in each rank keeps the copies equal.
//!
//! ```ignore
//! use candle_core::{Tensor, Var};
//! let w = Var::from_tensor(&w0)?;                       // the same start on every rank
//! let w_all = ranch::candle::replicate(w.as_tensor())?;  // gradient summed over ranks
//! let loss = (x_shard.matmul(&w_all)? - y_shard)?.sqr()?.sum_all()? / n_total;
//! let grads = loss?.backward()?;                        // = the serial gradient, every rank
//! ```
//!
//! Every rank must call the same collectives in the same order, forward and backward (the
//! same program on every rank does); a rank whose input tracks no gradient while another's
//! does would leave the others waiting for its backward (they fail after the collective
//! timeout). Tensors on a GPU go through host memory. f32 and f64 tensors only.

pub use candle_core;

use crate::{CommError, Op, Reduce, comm};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// The element-wise sum of `t` over every rank, on every rank (same shape everywhere).
/// Backward: the gradients, summed over ranks.
pub fn all_reduce_sum(t: &Tensor) -> Result<Tensor> {
    agree("ranch::candle::all_reduce_sum", t)?;
    on_host(t, |t| t.apply_op1(Collective::AllReduceSum))
}

/// `root`'s `t` on every rank (same shape everywhere). Backward: the gradients summed
/// over ranks, at `root`; zero elsewhere.
pub fn broadcast(t: &Tensor, root: usize) -> Result<Tensor> {
    agree("ranch::candle::broadcast", t)?;
    on_host(t, |t| t.apply_op1(Collective::Broadcast { root }))
}

/// Every rank's `t`, concatenated in rank order along `dim` (same shape everywhere).
/// Backward: each rank gets its own part of the gradients, summed over ranks.
pub fn all_gather(t: &Tensor, dim: usize) -> Result<Tensor> {
    let rank_dims = t.dims().len();
    if dim >= rank_dims.max(1) {
        candle_core::bail!("ranch::candle::all_gather: dim {dim} is out of range for a tensor of {rank_dims} dimension(s)");
    }
    let t = if rank_dims == 0 { t.reshape(1)? } else { t.clone() };
    agree("ranch::candle::all_gather", &t)?;
    // The op stacks the ranks' tensors on a new leading axis; moving that axis next to `dim`
    // and merging the two is candle's own (differentiable) work.
    let stacked = on_host(&t, |t| t.apply_op1(Collective::AllGather))?;
    let mut order: Vec<usize> = (1..=dim).collect();
    order.push(0);
    order.extend(dim + 1..=t.dims().len());
    let mut dims = t.dims().to_vec();
    dims[dim] *= comm().world_size();
    stacked.permute(order)?.reshape(dims)
}

/// `t` unchanged (every rank must hold the same values); backward: the gradients summed
/// over ranks. For parameters replicated on every rank (data parallelism): each rank's
/// gradient is then the gradient of the sum of the ranks' losses.
pub fn replicate(t: &Tensor) -> Result<Tensor> {
    agree("ranch::candle::replicate", t)?;
    on_host(t, |t| t.apply_op1(Collective::Replicate))
}

/// Runs `op` on a contiguous host copy of `t` (both copies are differentiable in candle, and
/// free when `t` is already so) and brings the result back to `t`'s device.
fn on_host(t: &Tensor, op: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let t = t.contiguous()?;
    if t.device().is_cpu() {
        return op(&t);
    }
    op(&t.to_device(&candle_core::Device::Cpu)?)?.to_device(t.device())
}

fn comm_error(e: CommError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

#[derive(Debug, Clone, Copy)]
enum Collective {
    AllReduceSum,
    Broadcast {
        root: usize,
    },
    AllGather,
    Replicate,
    /// Broadcast's backward: the sum at `root`, zeros elsewhere.
    ReduceTo {
        root: usize,
    },
}

impl Collective {
    fn op_name(self) -> &'static str {
        match self {
            Collective::AllReduceSum => "ranch::candle::all_reduce_sum",
            Collective::Broadcast { .. } => "ranch::candle::broadcast",
            Collective::AllGather => "ranch::candle::all_gather",
            Collective::Replicate => "ranch::candle::replicate",
            Collective::ReduceTo { .. } => "ranch::candle::broadcast (backward)",
        }
    }

    /// The collective on this rank's elements (in row-major order); the result's elements
    /// and shape.
    fn run<T: Reduce + Default>(self, mine: Vec<T>, shape: &Shape) -> std::result::Result<(Vec<T>, Shape), CommError> {
        let comm = comm();
        match self {
            Collective::AllReduceSum => {
                let mut buf = mine;
                comm.all_reduce(&mut buf, Op::Sum).map(|()| (buf, shape.clone()))
            }
            Collective::Replicate => Ok((mine, shape.clone())),
            Collective::Broadcast { root } => {
                let mut buf = mine;
                comm.broadcast_slice(&mut buf, root).map(|()| (buf, shape.clone()))
            }
            Collective::ReduceTo { root } => {
                let mut buf = mine;
                comm.reduce(&mut buf, Op::Sum, root).map(|()| {
                    if comm.rank() != root {
                        buf.iter_mut().for_each(|x| *x = T::default());
                    }
                    (buf, shape.clone())
                })
            }
            Collective::AllGather => {
                // Each rank's part in its own slot, zeros elsewhere: one all-reduce fills
                // every slot (adding zeros changes no value).
                let (n, world) = (mine.len(), comm.world_size());
                let mut buf = vec![T::default(); n * world];
                buf[comm.rank() * n..][..n].copy_from_slice(&mine);
                let mut dims = vec![world];
                dims.extend_from_slice(shape.dims());
                comm.all_reduce(&mut buf, Op::Sum).map(|()| (buf, Shape::from(dims)))
            }
        }
    }

    /// The gradient of this op's input, from the gradient of its result.
    fn backward(self, grad: &Tensor) -> Result<Tensor> {
        let grad = &grad.contiguous()?;
        match self {
            Collective::AllReduceSum | Collective::Replicate => grad.apply_op1_no_bwd(&Collective::AllReduceSum),
            Collective::Broadcast { root } => grad.apply_op1_no_bwd(&Collective::ReduceTo { root }),
            Collective::AllGather => {
                let summed = grad.apply_op1_no_bwd(&Collective::AllReduceSum)?;
                summed.get(comm().rank())
            }
            Collective::ReduceTo { .. } => candle_core::bail!("{} has no backward", self.op_name()),
        }
    }
}

/// Fails on every rank when the ranks' tensors differ in shape (their element counts alone
/// can agree while the shapes do not) or in whether they track gradients (a rank whose
/// input tracks none would skip the backward collective that the others wait in).
fn agree(op: &'static str, t: &Tensor) -> Result<()> {
    const WORDS: usize = 11;
    let comm = comm();
    if comm.world_size() == 1 {
        return Ok(());
    }
    // [tracks, rank count, the first 8 dims, a hash of the rest]; the max of x and of -x
    // give the max and the min at once.
    let dims = t.dims();
    let mut mine = vec![i64::from(t.track_op()), dims.len() as i64];
    mine.extend(dims.iter().take(8).map(|&d| d as i64));
    mine.resize(WORDS - 1, -1);
    mine.push({
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        dims.get(8..).unwrap_or(&[]).hash(&mut h);
        (h.finish() >> 2) as i64
    });
    let mut both: Vec<i64> = mine.iter().copied().chain(mine.iter().map(|x| -x)).collect();
    comm.all_reduce(&mut both, Op::Max).map_err(comm_error)?;
    let (max, neg_min) = both.split_at(WORDS);
    if max.iter().zip(neg_min).all(|(a, b)| *a == -*b) {
        return Ok(());
    }
    let all: Vec<(Vec<usize>, bool)> = comm.all_gather(&(dims.to_vec(), t.track_op())).map_err(comm_error)?;
    let what = if all.iter().any(|(d, _)| d != &all[0].0) {
        let shapes: Vec<String> = all.iter().enumerate().map(|(r, (d, _))| format!("rank {r}: {d:?}")).collect();
        format!("the ranks' tensors have different shapes ({}); every rank must pass the same shape", shapes.join(", "))
    } else {
        let tracking: Vec<String> = all.iter().enumerate().filter(|(_, (_, g))| *g).map(|(r, _)| r.to_string()).collect();
        format!(
            "the tensor tracks gradients on ranks {} only: every rank must pass a tensor that tracks them (e.g. from a `Var`), \
             or none, or the backward pass would wait for ranks that skip it",
            tracking.join(", ")
        )
    };
    Err(comm_error(CommError::new(op, vec![], what)))
}

/// The elements of a contiguous layout ([`on_host`] makes every input contiguous).
fn elements<T: Copy>(op: &'static str, data: &[T], layout: &Layout) -> Result<Vec<T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(data[start..end].to_vec()),
        None => candle_core::bail!("{op}: the tensor is not contiguous (call .contiguous() first)"),
    }
}

impl CustomOp1 for Collective {
    fn name(&self) -> &'static str {
        self.op_name()
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = layout.shape();
        match storage {
            CpuStorage::F32(v) => {
                let (v, s) = self.run(elements(self.op_name(), v, layout)?, shape).map_err(comm_error)?;
                Ok((CpuStorage::F32(v), s))
            }
            CpuStorage::F64(v) => {
                let (v, s) = self.run(elements(self.op_name(), v, layout)?, shape).map_err(comm_error)?;
                Ok((CpuStorage::F64(v), s))
            }
            other => {
                let dtype = other.dtype();
                candle_core::bail!("{}: {dtype:?} tensors are not supported; convert with .to_dtype(DType::F32) or F64", self.op_name())
            }
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        self.backward(grad_res).map(Some)
    }
}
