//! The rank layer: starting a set of ranks, hearing what they do, supervising them, and
//! saying how each ended. Both ways ranch runs ranks stand on it:
//! - a `%%ranch` / `%in_ddp` cell starts a fresh set of rank programs per cell ([`launch`]:
//!   spawned here, or through `mpirun`/`srun`), supervised by [`supervise`], whose output
//!   is read by [`rank_output`];
//! - a pool keeps one set alive across cells ([`pool`]: a fan-out in front of evcxr-child
//!   ranks, spawned here or through relays on other hosts), supervised by the kernel's pool.
//!
//! Both feed one [`view::RankView`] per cell: what the cell shows while its ranks run
//! (labelled output, `--see`, `--group-outputs`, displays, the live status table, and the
//! ranks' times for `--timing`). What pool ranks tell the kernel arrives as one typed
//! [`event::Event`] stream; how a rank died is worded once ([`death`]).

pub mod death;
pub mod event;
pub mod launch;
pub mod pool;
pub mod rank_output;
pub mod supervise;
pub mod view;
