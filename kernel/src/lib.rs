//! ranch-kernel: a Jupyter kernel for Rust on evcxr, with parallel cell magics.
//!
//! Layout: `server` (protocol core) serves requests through the [`interpreter::Interpreter`]
//! seam; `session` is the evcxr-backed interpreter, which reaches evcxr through its one
//! adapter (`session::adapter`).

pub mod connection;
pub mod doctor;
pub mod engine;
pub mod history;
pub mod install;
pub mod interpreter;
pub mod iopub;
pub mod server;
pub mod session;
pub mod syntax;
pub mod text;
pub mod wire;

/// Kernel diagnostics go to the kernel's stderr (the Jupyter server's log), tagged so they
/// are never mistaken for cell output.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { eprintln!("[ranch-kernel] {}", format_args!($($arg)*)) };
}
