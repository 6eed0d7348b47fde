//! Where ranch keeps what outlives a kernel: the unpacked runtime crate and the kernels'
//! persistent work directories.

use std::path::PathBuf;

/// `RANCH_CACHE_DIR`, else `$XDG_CACHE_HOME/ranch`, else `~/.cache/ranch`.
pub fn root() -> PathBuf {
    if let Some(d) = std::env::var_os("RANCH_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("ranch"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/ranch"),
    }
}
