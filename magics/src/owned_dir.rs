//! Directories ranch makes where other users can write too (the user's shared scratch
//! directory, the temporary directory): made for this user only, or, when one is already
//! there, used only if it is a directory (not a link) this user owns and no one else can
//! write. Otherwise another user could put files where ranch runs or loads them.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

/// Makes `dir` (mode 0700; its parent must exist) or checks the one already there.
/// The error says what is wrong with it; the caller says what to do.
pub fn make_or_check(dir: &Path) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    check(dir)
}

/// Whether `dir` is a directory (not a link) of this user's that only this user can write.
pub fn check(dir: &Path) -> Result<(), String> {
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if m.file_type().is_symlink() {
        Err(format!("{} is a symbolic link, not a directory ranch made", dir.display()))
    } else if !m.is_dir() {
        Err(format!("{} is not a directory", dir.display()))
    } else if m.uid() != me {
        Err(format!("{} belongs to another user (uid {}, you are uid {me})", dir.display(), m.uid()))
    } else if m.mode() & 0o022 != 0 {
        Err(format!("{} can be written by other users (mode {:o})", dir.display(), m.mode() & 0o7777))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_is_made_private_and_one_of_others_is_refused() {
        let base = std::env::temp_dir().join(format!("ranch-owned-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        let fresh = base.join("fresh");
        make_or_check(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        make_or_check(&fresh).expect("its own directory, again");

        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = make_or_check(&open).unwrap_err();
        assert!(e.contains("can be written by other users (mode 777)"), "{e}");

        let link = base.join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(make_or_check(&link).unwrap_err().contains("is a symbolic link"));

        let file = base.join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(make_or_check(&file).unwrap_err().contains("is not a directory"));

        if nix::unistd::geteuid().is_root() {
            let theirs = base.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            assert!(make_or_check(&theirs).unwrap_err().contains("belongs to another user (uid 65534"));
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
