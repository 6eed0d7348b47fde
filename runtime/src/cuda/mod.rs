//! The rank's GPU through `cudarc` (feature `cuda`), and NCCL collectives on device
//! buffers (feature `nccl`). In a `%%ranch` cell that mentions `ranch::cuda`, ranch turns
//! the feature on by itself.
//!
//! ```ignore
//! let gpu = ranch::cuda::context()?;          // this rank's GPU, a context and a stream
//! let x = gpu.stream.clone_htod(&vec![1.0f32; 1024])?;
//! ```
//!
//! Driver calls go through cudarc with the driver loaded at run time: a rank on a machine
//! without CUDA gets an error, never a crash.

#[cfg(feature = "nccl")]
pub(crate) mod nccl;

#[cfg(feature = "nccl")]
pub use nccl::{Nccl, nccl};

pub use cudarc;
use cudarc::driver::{CudaContext, CudaStream};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// The rank's GPU: its primary context (current on the thread that asked first) and a
/// stream on it.
#[derive(Debug, Clone)]
pub struct Gpu {
    /// The CUDA ordinal in this rank (what [`crate::gpu`] says).
    pub ordinal: usize,
    pub context: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
}

/// Why the rank has no usable GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaError {
    pub rank: usize,
    pub message: String,
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {}: {}", self.rank, self.message)
    }
}

impl std::error::Error for CudaError {}

fn error(message: impl Into<String>) -> CudaError {
    CudaError { rank: crate::rank(), message: message.into() }
}

/// This rank's GPU, set up on first use (and bound to the calling thread: call
/// `gpu.context.bind_to_thread()` on other threads).
pub fn context() -> Result<&'static Gpu, CudaError> {
    static GPU: OnceLock<Result<Gpu, CudaError>> = OnceLock::new();
    GPU.get_or_init(open).as_ref().map_err(Clone::clone)
}

fn open() -> Result<Gpu, CudaError> {
    let Some(ordinal) = crate::gpu() else {
        return Err(error("this rank has no GPU (ranch::gpu() is None: the machine has none, or the launch used --gpus none)"));
    };
    // cudarc panics when the driver library is missing: ask first.
    // SAFETY: only tries to open the library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(error("the CUDA driver (libcuda.so.1) cannot be loaded"));
    }
    let context = CudaContext::new(ordinal).map_err(|e| error(format!("cannot open GPU {ordinal}: {e}")))?;
    let stream = context.default_stream();
    Ok(Gpu { ordinal, context, stream })
}

/// The UUID (`GPU-…`) this rank's GPU has, as the launch named it.
#[cfg(feature = "nccl")]
pub(crate) fn gpu_uuid() -> Option<String> {
    let ordinal = crate::gpu()?;
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok()?;
    visible.split(',').nth(ordinal).map(|s| s.trim().to_string())
}
