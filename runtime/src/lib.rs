//! ranch runtime
