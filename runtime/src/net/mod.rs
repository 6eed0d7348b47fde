//! What every TCP service of ranch shares: how it listens ([`listener`]).

pub mod listener;
