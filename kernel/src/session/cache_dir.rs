//! Where ranch keeps what outlives a kernel: the unpacked runtime crate and the kernels'
//! persistent work directories.

use std::path::PathBuf;

/// `RANCH_CACHE_DIR`, else `$XDG_CACHE_HOME/ranch`, else `~/.cache/ranch` (the home
/// directory from the password database when `HOME` is unset), else a directory of this
/// user's own in the temporary directory: never a place other users share.
pub fn root() -> PathBuf {
    if let Some(d) = std::env::var_os("RANCH_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("ranch");
    }
    match ranch_magics::group::home_dir() {
        Some(home) => home.join(".cache/ranch"),
        None => std::env::temp_dir().join(format!("ranch-cache-{}", nix::unistd::getuid())),
    }
}
