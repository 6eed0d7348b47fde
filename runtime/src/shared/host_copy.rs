//! A shared array on a host other than the kernel's: one copy per host and launch, made
//! and filled once from the kernel's channel by the first rank of the launch that asks on
//! this host, and mapped by the launch's other ranks there.
//!
//! The copy is `/dev/shm/ranch-<maker pid>-hostarray-<launch>-<name>` (the launch named by a
//! hash of its token, which is secret; in a pool, of the cell's). Ranks find it by scanning `/dev/shm` while holding
//! `flock` on the directory, so two ranks never both make one (the lock goes with the
//! process, however it ends). Its header's magic is written last: a rank that finds the copy
//! still being filled waits for it, and gives up if the maker died. The maker removes the
//! name when its `Array` is dropped (mappings stay valid); what a maker killed with SIGKILL
//! leaves is removed by the next ranch launch on the host (its name starts with the pid).
//! Writes to a host's copy stay on that host: the session never sees them.

use super::{Array, HEADER, MAGIC, Plain, SharedError, error};
use crate::comm::shm::ffi;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SHM: &str = "/dev/shm";
/// How long a rank waits for the lock on `/dev/shm` (anyone can take it: a stranger holding
/// it makes the attach fail, never hang).
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// How long a rank waits for another to fill this host's copy, at most: it stops waiting
/// sooner when the maker dies, and the maker's own reads from the kernel are bounded.
const FILL_WAIT: Duration = Duration::from_secs(3600);
/// Largest array a host copy takes (the kernel's are bounded by its memory anyway).
const MAX_BYTES: u64 = 1 << 40;
const O_NONBLOCK: i32 = 0o4000;

/// What the scan under the lock found: a copy to wait for, or the one this rank made.
enum Found {
    Made(File, PathBuf),
    Theirs(PathBuf, u32),
}

pub(super) fn attach<T: Plain>(name: &str) -> Result<Array<T>, SharedError> {
    let addr = crate::channel::address().ok_or_else(|| error("no kernel channel"))?;
    let suffix = format!("-hostarray-{}-{name}", launch_tag());
    let found = {
        let dir = File::open(SHM).map_err(|e| error(format!("cannot open {SHM}: {e}")))?;
        lock(&dir)?;
        // Copies whose maker was killed (by the MPI watchdog, a parent's death) go first.
        crate::stale::remove_stale(Path::new(SHM), "ranch-");
        match find(&suffix) {
            Some((path, maker)) => Found::Theirs(path, maker),
            None => {
                let path = PathBuf::from(SHM).join(format!("ranch-{}{suffix}", std::process::id()));
                let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path);
                let file = file.map_err(|e| error(format!("cannot make this host's copy of the shared array `{name}` in {SHM}: {e}")))?;
                Found::Made(file, path)
            }
        }
    };
    match found {
        Found::Made(file, path) => {
            let array = fill(&file, &addr, name).and_then(|()| Array::open(file, name, &path.to_string_lossy()));
            match array {
                Ok(mut array) => {
                    array.owner = Some(path);
                    Ok(array)
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    Err(e)
                }
            }
        }
        Found::Theirs(path, maker) => {
            // Opened once, never a link or a FIFO; then watched through the descriptor.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(super::O_NOFOLLOW | O_NONBLOCK)
                .open(&path)
                .map_err(|e| error(format!("this host's copy of the shared array `{name}` went away: {e}")))?;
            wait_filled(&file, maker, name)?;
            Array::open(file, name, &path.to_string_lossy())
        }
    }
}

/// Names this launch's copies on this host: a hash of the launch's token, which is secret.
/// A pool's ranks live across cells, so there it is the cell's group token: each cell
/// makes its own copies, and an array the session made again is never read stale.
fn launch_tag() -> String {
    use std::hash::{Hash, Hasher};
    let cell = std::env::var_os(crate::comm::POOL_GROUP_ENV).and_then(|p| crate::comm::PoolGroup::read(Path::new(&p)).ok());
    let secret = cell.map(|g| g.token).or_else(|| std::env::var(crate::comm::TOKEN_ENV).ok()).unwrap_or_default();
    let mut h = std::hash::DefaultHasher::new();
    secret.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// This launch's copy on this host, made by a live process of this user: its path and maker.
fn find(suffix: &str) -> Option<(PathBuf, u32)> {
    let me = ffi::euid();
    std::fs::read_dir(SHM).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid: u32 = name.strip_prefix("ranch-")?.strip_suffix(suffix)?.parse().ok()?;
        let meta = entry.metadata().ok()?; // not followed: a link is not a copy
        (meta.is_file() && meta.uid() == me && Path::new("/proc").join(pid.to_string()).exists()).then(|| (entry.path(), pid))
    })
}

/// Streams the kernel's array file into `file`, its magic last.
fn fill(file: &File, addr: &str, name: &str) -> Result<(), SharedError> {
    crate::channel::fetch_streamed(addr, &format!("ARRAY {name}"), MAX_BYTES, |len, body| {
        if len < HEADER as u64 {
            return Err(format!("the kernel sent {len} bytes for the shared array `{name}`, less than a header"));
        }
        crate::comm::shm::reserve(file, len)
            .map_err(|e| format!("cannot reserve {} MiB in {SHM} for this host's copy of the shared array `{name}`: {e}", len >> 20))?;
        let mut header = vec![0u8; HEADER];
        body.read_exact(&mut header).map_err(|e| format!("the shared array `{name}` did not arrive: {e}"))?;
        let mut chunk = vec![0u8; 1 << 20];
        let mut at = HEADER as u64;
        while at < len {
            let n = body.read(&mut chunk).map_err(|e| format!("the shared array `{name}` did not arrive: {e}"))?;
            if n == 0 {
                return Err(format!("the shared array `{name}`: {at} of {len} bytes came"));
            }
            file.write_all_at(&chunk[..n], at).map_err(|e| format!("cannot write this host's copy of `{name}`: {e}"))?;
            at += n as u64;
        }
        // The magic last: until then other ranks wait.
        file.write_all_at(&header[8..], 8).and_then(|()| file.write_all_at(&header[..8], 0)).map_err(|e| e.to_string())
    })
    .map_err(|e| error(format!("cannot copy the shared array `{name}` to this host: {e}")))
}

/// Takes the lock on `/dev/shm`, waiting at most [`LOCK_WAIT`].
fn lock(dir: &File) -> Result<(), SharedError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: a plain system call on a descriptor we own; the lock goes with it.
        if unsafe { ffi::flock(dir.as_raw_fd(), ffi::LOCK_EX | ffi::LOCK_NB) } == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(error(format!(
                "{SHM} stayed locked by another process for {} s ({}): cannot make this host's copy of a shared array",
                LOCK_WAIT.as_secs(),
                std::io::Error::last_os_error()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the copy open as `file` has its magic; fails when its maker died first, or
/// it was removed, or it is not a copy of this user's.
fn wait_filled(file: &File, maker: u32, name: &str) -> Result<(), SharedError> {
    let deadline = Instant::now() + FILL_WAIT;
    loop {
        let meta = file.metadata().map_err(|e| error(format!("this host's copy of the shared array `{name}`: {e}")))?;
        if !meta.is_file() || meta.uid() != ffi::euid() {
            return Err(error(format!("this host's copy of the shared array `{name}` is not a file of this user's: not used")));
        }
        let mut magic = [0u8; 8];
        if file.read_exact_at(&mut magic, 0).is_ok() && u64::from_ne_bytes(magic) == MAGIC {
            return Ok(());
        }
        if meta.nlink() == 0 || !Path::new("/proc").join(maker.to_string()).exists() {
            return Err(error(format!("the rank (pid {maker}) copying the shared array `{name}` to this host failed")));
        }
        if Instant::now() >= deadline {
            return Err(error(format!("this host's copy of the shared array `{name}` was not filled within {} s", FILL_WAIT.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
