//! The `%%ranch` and `%in_ddp` magics, independent of Jupyter: parse the magic line, turn a
//! notebook session and a cell into a rank program, build it once, launch N ranks with a
//! process group, supervise them and merge what they report.
//!
//! [`driver`] runs them for `%%ranch`, `%in_ddp` and the pool's `%%px`, reaching the
//! notebook's session through a narrow trait. In the order a cell goes through them:
//! - [`args`]: the magic line (clap);
//! - [`source`], [`cell_body`]: what the session and the cell contain (rust-analyzer's parser);
//! - [`program`]: the rank program's crate;
//! - [`build`], [`artifacts`]: one cargo build, reusing the session's compiled dependencies,
//!   and the built programs kept for the same cell run again;
//! - [`gpus`], [`group`], [`hosts`]: GPU pinning, the process group's rendezvous and
//!   segment, where ranks run;
//! - [`ranks`]: the rank layer both `%%ranch` and the pool stand on: starting ranks
//!   (spawned here, by `mpirun`/`srun`, or a pool's fan-out and relays), their event
//!   stream, supervision (live output, failures, timeout, interrupt), how they ended;
//! - [`channel`]: variables to the ranks and results back, over TCP;
//! - [`status`], [`display_op`], [`timing`]: the live status table, what ranks ask to show,
//!   and `--timing`'s chart;
//! - [`merge`], [`diagnostic`]: what the notebook shows;
//! - [`magic_table`]: every magic's name, kind, summary and parser (dispatch, `:help`,
//!   completion and the unknown-magic error read it).
//!
//! [`role`] tells the processes this binary serves as apart, once, at start.

pub mod args;
pub mod artifacts;
pub mod bounded_output;
pub mod build;
pub mod cell_body;
pub mod channel;
pub mod diagnostic;
pub mod display_op;
pub mod driver;
pub mod gpus;
pub mod grid;
pub mod group;
pub mod hosts;
pub mod magic_table;
pub mod merge;
pub mod owned_dir;
pub mod pool;
pub mod program;
pub mod ranks;
pub mod report;
pub mod role;
pub mod source;
pub mod status;
pub mod threads;
pub mod timing;
pub mod transcript;
