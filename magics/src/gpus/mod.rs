//! Which GPU each rank gets: the machine's devices (found by a short-lived helper process
//! through the CUDA driver, so the kernel never holds a CUDA context) and the plan that
//! maps ranks to them by UUID.

mod listing;
pub mod nccl_lib;
mod plan;
mod probe;

pub use listing::listing;
pub use plan::{Plan, kernel_visible, plan};
pub use probe::{Device, Discovery, discover, serve_probe};
