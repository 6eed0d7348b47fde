//! The process plumbing of a pool of persistent ranks (the evcxr context and the cells
//! are the kernel's): a fan-out process ([`fanout`]) that evcxr takes for its child and
//! that repeats evcxr's protocol to N rank processes, spawned on this host or, through a
//! launcher, on other hosts, where a relay ([`relay`]) starts each host's ranks and speaks
//! to the fan-out's hub ([`hub`]) over an authenticated link ([`link`]). Each `%%px` cell
//! gets its own process group ([`group`]); across hosts its ranks find each other through
//! an address book ([`address_book`]).

mod address_book;
pub mod fanout;
pub mod group;
pub mod hub;
mod link;
pub mod relay;

pub use fanout::{Config as FanoutConfig, run as run_fanout};
pub use group::CellGroup;
pub use hub::RemoteSpec;
pub use relay::run as run_relay;
