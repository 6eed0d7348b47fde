//! Running the rank program from the user's shared directory (`RANCH_SHARED_DIR`, a scratch
//! directory the hosts share, often with other users). The directory is the user's: ranch
//! works only in its own subdirectory `ranch-<uid>` ([`crate::owned_dir`]: made 0700, or
//! used only when it is this user's and no one else can write it), names its programs by
//! their content (`rank-<sha256>`), and evicts nothing but those ([`crate::artifacts`]).
//! Each rank checks the program before running it: a small bash script opens it, compares
//! its SHA-256 with the one the kernel computed, and runs the very file it checked (from the
//! open descriptor), so a file put or changed there by anyone else is never run.

use crate::artifacts;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where the rank script finds the program, and the SHA-256 it must have.
pub const PROGRAM_ENV: &str = "RANCH_PROGRAM";
pub const SHA256_ENV: &str = "RANCH_PROGRAM_SHA256";

/// A rank program copied into the shared directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedProgram {
    pub path: PathBuf,
    /// Lowercase hex, as `sha256sum` prints it.
    pub sha256: String,
}

/// ranch's subdirectory of the user's directory `user_dir`: `ranch-<uid>`.
pub fn subdir(user_dir: &Path) -> PathBuf {
    user_dir.join(format!("ranch-{}", nix::unistd::geteuid()))
}

/// Copies `exe` into ranch's subdirectory of `user_dir` (unless the same program is there),
/// then evicts ranch's least recently used programs there beyond the bounds.
pub fn publish(exe: &Path, user_dir: &Path) -> Result<SharedProgram, String> {
    use std::os::unix::fs::DirBuilderExt;
    let hint = "; set RANCH_SHARED_DIR to a directory of yours that the hosts share";
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(user_dir)
        .map_err(|e| format!("RANCH_SHARED_DIR: cannot create {}: {e}{hint}", user_dir.display()))?;
    let dir = subdir(user_dir);
    crate::owned_dir::make_or_check(&dir).map_err(|e| format!("RANCH_SHARED_DIR: ranch will not use it: {e}. Remove it{hint}"))?;
    let sha256 = sha256_of(exe).map_err(|e| format!("cannot read the rank program {}: {e}", exe.display()))?;
    let path = dir.join(artifacts::file_name(&sha256));
    if holds(&path, &sha256) {
        artifacts::touch(&path);
    } else {
        // A copy under a name of this process's, then renamed over: a rank never sees half a
        // program, and a wrong file under the program's name (a crash's leftover) is replaced.
        let tmp = dir.join(format!(".{}.{}.tmp", artifacts::file_name(&sha256), std::process::id()));
        copy_new(exe, &tmp).and_then(|_| std::fs::rename(&tmp, &path)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot copy the rank program to {} for the other hosts: {e}", dir.display())
        })?;
    }
    artifacts::bound_artifacts(&dir, artifacts::ARTIFACTS_MAX, artifacts::ARTIFACTS_MAX_BYTES);
    Ok(SharedProgram { path, sha256 })
}

/// Whether `path` is a regular file of this user's (not followed if a link) with this content.
fn holds(path: &Path, sha256: &str) -> bool {
    let Ok(file) = std::fs::File::options().read(true).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits()).open(path) else { return false };
    let mine = file.metadata().is_ok_and(|m| m.is_file() && m.uid() == nix::unistd::geteuid().as_raw());
    mine && sha256_of_reader(file).is_ok_and(|s| s == sha256)
}

/// Copies `from` to `to`, a file this call creates (mode 0700).
fn copy_new(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut src = std::fs::File::open(from)?;
    let mut dst = std::fs::File::options().write(true).create_new(true).mode(0o700).open(to)?;
    std::io::copy(&mut src, &mut dst)?;
    dst.flush()?;
    dst.sync_all()
}

pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    sha256_of_reader(std::fs::File::open(path)?)
}

fn sha256_of_reader(mut r: impl Read) -> std::io::Result<String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match r.read(&mut buf)? {
            0 => break,
            n => ctx.update(&buf[..n]),
        }
    }
    Ok(ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// What a launcher runs on each rank in place of the program: `bash -c SCRIPT ranch-rank`,
/// with [`PROGRAM_ENV`] and [`SHA256_ENV`] in the ranks' environment.
pub fn command() -> Vec<String> {
    vec!["bash".into(), "-c".into(), SCRIPT.into(), "ranch-rank".into()]
}

/// The check before the run: the program is opened once, hashed through that descriptor and
/// run from it, so what runs is what was checked.
const SCRIPT: &str = r#"
fail() { echo "ranch: this rank will not run the program ${RANCH_PROGRAM:-?} from RANCH_SHARED_DIR: $1" >&2; exit 127; }
[ -n "${RANCH_PROGRAM:-}" ] && [ -n "${RANCH_PROGRAM_SHA256:-}" ] || fail "RANCH_PROGRAM and RANCH_PROGRAM_SHA256 must be set"
exec 4<"$RANCH_PROGRAM" || fail "it cannot be read on this host (does this host share RANCH_SHARED_DIR with the kernel's?)"
sum=$(sha256sum <&4) || fail "sha256sum (coreutils) is needed on this host"
sum=${sum%% *}
[ "$sum" = "$RANCH_PROGRAM_SHA256" ] \
  || fail "its content is not the program the kernel wrote (SHA-256 $sum, expected $RANCH_PROGRAM_SHA256): something else changed it"
shopt -s execfail
exec -a ranch-rank /proc/self/fd/4 "$@"
fail "it cannot run from there (is RANCH_SHARED_DIR mounted noexec?)"
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ranch-shared-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn run_script(program: &Path, sha256: &str) -> std::process::Output {
        let argv = command();
        Command::new(&argv[0]).args(&argv[1..]).arg("checked and run").env(PROGRAM_ENV, program).env(SHA256_ENV, sha256).output().unwrap()
    }

    #[test]
    fn the_program_runs_only_with_the_content_the_kernel_wrote() {
        let d = scratch("check");
        let shared = publish(Path::new("/bin/echo"), &d).unwrap();
        assert_eq!(shared.path.parent().unwrap(), subdir(&d));
        let out = run_script(&shared.path, &shared.sha256);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "checked and run\n", "{}", String::from_utf8_lossy(&out.stderr));

        // Another file under the program's name is refused, and said.
        std::fs::write(&shared.path, "#!/bin/sh\necho planted\n").unwrap();
        let out = run_script(&shared.path, &shared.sha256);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(127));
        assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
        assert!(err.contains("its content is not the program the kernel wrote"), "{err}");

        // Publishing again puts the program back.
        assert_eq!(publish(Path::new("/bin/echo"), &d).unwrap(), shared);
        assert!(run_script(&shared.path, &shared.sha256).status.success());
        let missing = run_script(&d.join("nothing"), &shared.sha256);
        assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot be read on this host"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn the_users_files_stay_and_a_subdirectory_of_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("users");
        for i in 0..(artifacts::ARTIFACTS_MAX + 6) {
            std::fs::write(d.join(format!("data-{i}")), [1u8; 10]).unwrap();
        }
        std::fs::write(d.join(artifacts::file_name("ab")), "the user's, under a name like ranch's").unwrap();
        publish(Path::new("/bin/echo"), &d).unwrap();
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), artifacts::ARTIFACTS_MAX + 8, "all the user's files, and ranch's directory");
        assert_eq!(std::fs::metadata(subdir(&d)).unwrap().mode() & 0o777, 0o700);

        std::fs::set_permissions(subdir(&d), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = publish(Path::new("/bin/echo"), &d).unwrap_err();
        assert!(e.contains("can be written by other users") && e.contains("RANCH_SHARED_DIR"), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
