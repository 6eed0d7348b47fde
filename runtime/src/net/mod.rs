//! What every TCP service and link of ranch shares: how it listens ([`listener`]) and how a
//! link notices a peer whose host went silent ([`keepalive`]).

pub mod keepalive;
pub mod listener;
