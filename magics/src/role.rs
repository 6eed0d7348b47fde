//! What this binary is, told once at the top of `main` ([`Role::from_env`]): the Jupyter
//! kernel, or one of the processes the kernel (or a tool it runs) starts from the same binary.
//!
//! Processes ranch starts itself are named in one variable, [`ROLE_ENV`] (`NAME` or
//! `NAME:ARG`). Their configuration does not travel in the environment, where every process
//! below them would inherit it and `/proc/PID/environ` would show it: it is written to a
//! sealed memory file whose descriptor the child inherits ([`pass_config`]; `ARG` is the
//! descriptor's number), read once at start ([`ConfigFd::read`]). A relay on another host
//! cannot inherit a descriptor: its `ARG` is the hub's address, and it fetches the rest over
//! its authenticated connection (see the kernel's `pool::relay`).
//!
//! Two roles are named by others' contracts, and parsed here too: evcxr's child
//! (`EVCXR_IS_RUNTIME`, set by evcxr on the command it is given) and evcxr's own rustc
//! wrapper (`EVCXR_RUSTC_WRAPPER`, set by evcxr on cargo).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Names the role of a process ranch starts.
pub const ROLE_ENV: &str = "RANCH_ROLE";
/// cargo's `RUSTC_WRAPPER` for rank builds (see [`crate::build::rustc_wrapper`]).
pub const RUSTC_WRAPPER: &str = "rustc-wrapper";
/// The GPU discovery helper (see [`crate::gpus`]).
pub const GPU_PROBE: &str = "gpu-probe";
/// The kernel's janitor; `janitor:FD`.
pub const JANITOR: &str = "janitor";
/// A pool's fan-out (evcxr's child for the pool's context); `pool-fanout:FD`.
pub const POOL_FANOUT: &str = "pool-fanout";
/// A pool rank's relay on another host; `pool-relay:HOST:PORT` (the hub).
pub const POOL_RELAY: &str = "pool-relay";
/// evcxr's contract: set on its child process.
pub use ranch::__rt::evcxr_lines::CHILD_ENV as EVCXR_CHILD_ENV;
/// evcxr's contract: set on cargo when evcxr wraps rustc itself.
const EVCXR_WRAPPER_ENV: &str = "EVCXR_RUSTC_WRAPPER";
/// The most a role's configuration holds (a pool's plan: every rank's environment).
const MAX_CONFIG: u64 = 64 << 20;
/// The memory file's name, as `/proc/PID/fd/N` shows it (`/memfd:ranch-role (deleted)`).
const MEMFD_NAME: &std::ffi::CStr = c"ranch-role";

#[derive(Debug, PartialEq, Eq)]
pub enum Role {
    /// Jupyter's kernel, or the command line (`install`, `uninstall`).
    Kernel,
    RustcWrapper,
    EvcxrRustcWrapper,
    /// evcxr's child: the session's, or a pool rank (this binary serves evcxr's protocol).
    EvcxrChild,
    Janitor(ConfigFd),
    GpuProbe,
    PoolFanout(ConfigFd),
    PoolRelay {
        hub: String,
    },
}

/// An inherited descriptor holding a role's configuration.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigFd(RawFd);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error(
        "{ROLE_ENV}={0:?} names no role of this binary ({RUSTC_WRAPPER}, {GPU_PROBE}, {JANITOR}:FD, {POOL_FANOUT}:FD, \
         {POOL_RELAY}:HOST:PORT); was it started by another version of ranch? Unset {ROLE_ENV} to run the kernel."
    )]
    Unknown(String),
    #[error("the {role} process cannot read its configuration from descriptor {fd}: {why}")]
    Config { role: &'static str, fd: RawFd, why: String },
}

impl Role {
    /// This process's role, from the environment it was started with.
    pub fn from_env() -> Result<Role, RoleError> {
        Role::parse(|k| std::env::var(k).ok())
    }

    /// The role that the variables `var` gives say. Ranch's own [`ROLE_ENV`] comes first: a
    /// pool's fan-out is evcxr's child too, and a relay may inherit evcxr's variable.
    pub fn parse(var: impl Fn(&str) -> Option<String>) -> Result<Role, RoleError> {
        if let Some(value) = var(ROLE_ENV).filter(|v| !v.is_empty()) {
            let fd = |arg: &str| arg.parse::<RawFd>().ok().filter(|&fd| fd > 2).map(ConfigFd);
            let unknown = || RoleError::Unknown(value.clone());
            return match value.split_once(':') {
                None if value == RUSTC_WRAPPER => Ok(Role::RustcWrapper),
                None if value == GPU_PROBE => Ok(Role::GpuProbe),
                Some((JANITOR, arg)) => fd(arg).map(Role::Janitor).ok_or_else(unknown),
                Some((POOL_FANOUT, arg)) => fd(arg).map(Role::PoolFanout).ok_or_else(unknown),
                Some((POOL_RELAY, hub)) if hub.contains(':') => Ok(Role::PoolRelay { hub: hub.to_string() }),
                _ => Err(unknown()),
            };
        }
        if var(EVCXR_WRAPPER_ENV).is_some() {
            return Ok(Role::EvcxrRustcWrapper);
        }
        if var(EVCXR_CHILD_ENV).is_some() {
            return Ok(Role::EvcxrChild);
        }
        Ok(Role::Kernel)
    }
}

impl ConfigFd {
    /// Reads the configuration (once: the descriptor is closed, so that nothing this process
    /// starts inherits it). Call it before any other thread exists. `role` names the role in
    /// errors.
    pub fn read(self, role: &'static str) -> Result<Vec<u8>, RoleError> {
        let fd = self.0;
        let err = |why: String| RoleError::Config { role, fd, why };
        // Only a memory file of ours is taken over (and closed): a number in a stale or
        // copied variable must not make this process read or close someone else's file.
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(|e| err(format!("it is not open ({e})")))?;
        if !target.to_string_lossy().starts_with(&format!("/memfd:{}", MEMFD_NAME.to_string_lossy())) {
            return Err(err(format!("it is {}, not a configuration from ranch", target.display())));
        }
        // SAFETY: the descriptor is open (above), was inherited for this process alone to read
        // once, and nothing else in this single-threaded process refers to it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let len = file.metadata().map_err(|e| err(e.to_string()))?.len();
        if len > MAX_CONFIG {
            return Err(err(format!("it holds {len} bytes, more than {MAX_CONFIG}")));
        }
        let mut bytes = vec![0; len as usize];
        // From the start, whatever the shared offset: evcxr starts a fan-out again from the
        // same command (and descriptor) after the previous one died.
        file.read_exact_at(&mut bytes, 0).map_err(|e| err(e.to_string()))?;
        Ok(bytes)
    }
}

/// Makes `command` start the role `name` with `config`: a sealed memory file that only the
/// processes `command` starts inherit (every time it is spawned, which evcxr does again after
/// its child died). The kernel keeps nothing open: the file lives as long as `command`.
pub fn pass_config(command: &mut Command, name: &str, config: &[u8]) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let file = sealed(config)?;
    command.env(ROLE_ENV, format!("{name}:{}", file.as_raw_fd()));
    let fd = OwnedFd::from(file);
    // SAFETY: fcntl is async-signal-safe and allocates nothing. It clears close-on-exec in
    // the new process only (after fork), so no other child of the kernel inherits the file.
    unsafe {
        command.pre_exec(move || fcntl(&fd, FcntlArg::F_SETFD(FdFlag::empty())).map(drop).map_err(std::io::Error::from));
    }
    Ok(())
}

/// A memory file holding `config`, which no one can change (close-on-exec).
fn sealed(config: &[u8]) -> std::io::Result<File> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let mut file = File::from(memfd_create(MEMFD_NAME, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?);
    file.write_all(config)?;
    let seals = SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(file)
}

/// The [`ROLE_ENV`] value that makes a relay of the hub at `hub` (`host:port`).
pub fn relay_value(hub: &str) -> String {
    format!("{POOL_RELAY}:{hub}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Role, RoleError> {
        Role::parse(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn each_role_is_told_by_how_the_process_was_started() {
        assert_eq!(parse(&[]), Ok(Role::Kernel));
        assert_eq!(parse(&[(ROLE_ENV, "")]), Ok(Role::Kernel));
        assert_eq!(parse(&[(ROLE_ENV, "rustc-wrapper")]), Ok(Role::RustcWrapper));
        assert_eq!(parse(&[(ROLE_ENV, "gpu-probe")]), Ok(Role::GpuProbe));
        assert_eq!(parse(&[(ROLE_ENV, "janitor:5")]), Ok(Role::Janitor(ConfigFd(5))));
        assert_eq!(parse(&[(ROLE_ENV, "pool-relay:10.0.0.2:4000")]), Ok(Role::PoolRelay { hub: "10.0.0.2:4000".into() }));
        assert_eq!(parse(&[(ROLE_ENV, &relay_value("[::1]:9"))]), Ok(Role::PoolRelay { hub: "[::1]:9".into() }));
        assert_eq!(parse(&[(EVCXR_CHILD_ENV, "1")]), Ok(Role::EvcxrChild));
        assert_eq!(parse(&[(EVCXR_WRAPPER_ENV, "1")]), Ok(Role::EvcxrRustcWrapper));
    }

    #[test]
    fn ranchs_role_comes_before_evcxrs() {
        // evcxr starts the pool's fan-out as its child, and a relay may inherit its variable.
        let vars = [(EVCXR_CHILD_ENV, "1"), (ROLE_ENV, "pool-fanout:7")];
        assert_eq!(parse(&vars), Ok(Role::PoolFanout(ConfigFd(7))));
    }

    #[test]
    fn a_role_that_is_not_one_is_an_error_not_the_kernel() {
        for bad in ["fanout", "janitor", "janitor:", "janitor:x", "janitor:1", "pool-fanout:-3", "pool-relay:nohost", "gpu-probe:1"] {
            assert_eq!(parse(&[(ROLE_ENV, bad)]), Err(RoleError::Unknown(bad.into())), "{bad}");
        }
        let message = RoleError::Unknown("x".into()).to_string();
        assert!(message.contains("Unset RANCH_ROLE"), "{message}");
    }

    #[test]
    fn a_configuration_reaches_the_child_on_its_descriptor_and_not_in_its_environment() {
        let config = br#"{"secret":"s3cr3t"}"#;
        let mut command = Command::new("/bin/sh");
        // The child reads the descriptor named in RANCH_ROLE, and shows its environment;
        // started twice, as evcxr starts its child again.
        command.arg("-c").arg(r#"cat /proc/self/fd/${RANCH_ROLE#*:}; echo; env"#);
        pass_config(&mut command, POOL_FANOUT, config).unwrap();
        for _ in 0..2 {
            let out = String::from_utf8(command.output().unwrap().stdout).unwrap();
            let mut lines = out.lines();
            assert_eq!(lines.next(), Some(r#"{"secret":"s3cr3t"}"#));
            let env: Vec<&str> = lines.collect();
            assert!(env.iter().any(|l| l.starts_with("RANCH_ROLE=pool-fanout:")), "{env:?}");
            assert!(!env.iter().any(|l| l.contains("s3cr3t")), "{env:?}");
        }
        // Not inherited by a command that was not given it.
        let fd = Role::parse(|k| command.get_envs().find(|(n, _)| *n == k).and_then(|(_, v)| v?.to_str().map(str::to_string)));
        let Ok(Role::PoolFanout(ConfigFd(fd))) = fd else { panic!("{fd:?}") };
        let other = Command::new("/bin/sh").arg("-c").arg(format!("test -e /proc/self/fd/{fd} && echo open || echo closed")).output();
        assert_eq!(String::from_utf8(other.unwrap().stdout).unwrap().trim(), "closed");
    }

    #[test]
    fn a_configuration_is_read_whole_wherever_its_offset_is_and_cannot_be_changed() {
        use std::io::Read;
        let mut file = sealed(b"plan").unwrap();
        assert!(file.write_all(b"x").is_err(), "sealed against writes");
        // The offset, shared with every copy of the descriptor, is at the end (as a previous
        // fan-out that read it would leave it).
        let mut rest = String::new();
        file.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "");
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        assert_eq!(ConfigFd(fd).read(POOL_FANOUT).unwrap(), b"plan");
    }

    #[test]
    fn only_a_descriptor_of_ours_is_read() {
        let file = File::open("/dev/null").unwrap();
        let err = ConfigFd(file.as_raw_fd()).read(JANITOR).unwrap_err();
        assert!(err.to_string().contains("/dev/null, not a configuration from ranch"), "{err}");
        assert!(ConfigFd(1 << 20).read(JANITOR).unwrap_err().to_string().contains("it is not open"));
    }
}
