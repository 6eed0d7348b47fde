//! `ranch`: what a cell run by `%%ranch N` calls.
//!
//! Inside a ranked launch every process knows its place from the environment the launcher
//! sets (`RANK`, `WORLD_SIZE`, ...). Outside one, the same code describes a world of one
//! process, so a cell can be tried as a plain cell first.
//!
//! ```
//! let data: Vec<u32> = (0..10).collect();
//! // In a plain cell: rank 0 of 1, and the shard is everything.
//! assert_eq!(ranch::rank(), 0);
//! assert_eq!(ranch::shard(&data), &data[..]);
//! ```

#[cfg(feature = "candle")]
pub mod candle;
mod channel;
mod comm;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod display;
mod info;
mod map;
mod net;
mod shard;
pub mod shared;
mod stale;

#[doc(hidden)]
pub mod __rt;

/// MPI's own all-reduce in a rank started with `--backend mpi|hierarchical`, for
/// `bench/hosts.py` (see its docs).
#[cfg(feature = "mpi")]
#[doc(hidden)]
pub use comm::mpi::raw_all_reduce_sum as __mpi_all_reduce_sum;
pub use comm::{Comm, CommError, Op, Reduce, comm};
pub use display::progress;
pub use info::{gpu, local_rank, local_world_size, rank, seed, world_size};
pub use map::map;
pub use shard::{shard, shard_range};
