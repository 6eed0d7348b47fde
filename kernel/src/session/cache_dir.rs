//! Where ranch keeps what outlives a kernel: the unpacked runtime crate and the kernels'
//! persistent work directories.

use std::path::{Path, PathBuf};

/// `RANCH_CACHE_DIR`, else `$XDG_CACHE_HOME/ranch`, else `~/.cache/ranch` (the home
/// directory from the password database when `HOME` is unset), else a directory of this
/// user's own in the temporary directory ([`in_temp`]): never a place other users share.
pub fn root() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("RANCH_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("ranch"));
    }
    match ranch_magics::group::home_dir() {
        Some(home) => Ok(home.join(".cache/ranch")),
        None => in_temp(&std::env::temp_dir()),
    }
}

/// `ranch-cache-<uid>` in `tmp`, made for this user only. Anyone can make that name first in
/// a shared temporary directory, and what is there (the runtime crate, build scripts) is
/// compiled and run as this user: one already there is used only if it is this user's
/// directory that no one else can write.
fn in_temp(tmp: &Path) -> Result<PathBuf, String> {
    let dir = tmp.join(format!("ranch-cache-{}", nix::unistd::geteuid()));
    ranch_magics::owned_dir::make_or_check(&dir)
        .map_err(|e| format!("ranch will not use its cache directory: {e}. Set RANCH_CACHE_DIR to a directory of yours"))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn the_cache_in_the_temporary_directory_is_the_users_own() {
        let tmp = std::env::temp_dir().join(format!("ranch-cache-dir-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).unwrap();
        let dir = in_temp(&tmp).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(in_temp(&tmp).unwrap(), dir, "its own, again");

        // Planted by someone else, or open to everyone: refused, and nothing in it is used.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = in_temp(&tmp).unwrap_err();
        assert!(e.contains("can be written by other users") && e.contains("RANCH_CACHE_DIR"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
            assert!(in_temp(&tmp).unwrap_err().contains("belongs to another user"));
        }
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
