//! The single-host backend: every rank maps one shared-memory segment (a file in
//! `/dev/shm` that the kernel creates, and removes after the launch).
//!
//! Layout (offsets in bytes):
//! - header: magic, world, slot size, mailbox size, abort word (who broke the group, in
//!   which operation), the wake-up word (a futex) and the count of sleeping waiters; then
//!   one `u32` "exited" flag per rank, set by the kernel's rendezvous service when the rank
//!   returns from the cell or its connection closes;
//! - reason: the first failure's ranks and message, so every later error names the cause;
//! - control: one cache line pair per rank: the barrier count it reached, and the
//!   description of the collective it is in (two alternating copies);
//! - inline buffers: two alternating ones per rank, for the data of small collectives,
//!   written before the collective's first barrier so that one barrier is all they need;
//! - mailboxes: one per (sender, receiver) pair, for `send`/`recv`;
//! - slots: one per rank plus a result slot, for collectives' data.
//!
//! Collectives are made of phases separated by barriers. A barrier is each rank publishing
//! how many it has reached and waiting for every other rank to reach it too: no central
//! counter, and a rank that died or skipped is visible by name.
//!
//! Waiting spins briefly (not at all when ranks outnumber cores), yields its core for a
//! moment, then sleeps on the wake-up word: whoever changes something others may wait for
//! (a barrier count, a mailbox, the abort word, an exited flag) bumps it and wakes the
//! sleepers, if there are any.

use super::call::{Desc, KINDS, Kind, kind_of, mismatch, type_code, type_tag};
use super::error::CommError;
use super::reduce::{Op, Reduce};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MAGIC: u64 = 0x3153_4843_4e41_5252; // "RRANCHS1"
const EXITED_OFF: usize = 64;
/// Header words (u32 in the low half of a u64 word): the wake-up word, sleeping waiters.
const EPOCH_WORD: usize = 5;
const SLEEPERS_WORD: usize = 6;
/// `ranch::map`'s shared counter: the map's number (high half) and its next item (low half).
const MAP_WORD: usize = 7;
/// How long a sleeping waiter sleeps before it looks again at what a wake-up would have
/// told it (a safety net: every change wakes it).
const RECHECK: Duration = Duration::from_millis(50);
/// How long a waiter spins when every rank has a core.
const SPIN: Duration = Duration::from_micros(50);
/// After spinning, how long a waiter yields its core (to the ranks it waits for, when they
/// share cores) before it sleeps: short waits stay fast, long ones cost no CPU.
const YIELD: Duration = Duration::from_millis(2);
/// The reason area: a lock word, the text length + 1 (0 until written), the number of
/// ranks, the ranks, the text.
const REASON_RANKS: usize = 32;
const REASON_TEXT: usize = 400;
const REASON_RANKS_OFF: usize = 20;
const REASON_TEXT_OFF: usize = REASON_RANKS_OFF + 4 * REASON_RANKS;
const REASON_BYTES: usize = REASON_TEXT_OFF + REASON_TEXT;
const CTRL_BYTES: usize = 128;
const MAILBOX_HEADER: usize = 64;
/// The size of an inline buffer: collectives on at most this many bytes take one barrier.
const INLINE_BYTES: usize = 16 << 10;
/// The bytes per chunk of a large collective: small enough that the slots' working set
/// stays in cache (256 KiB measured best for 2 and 4 ranks, against 64 KiB to 2 MiB).
const PIPELINE_CHUNK: usize = 256 << 10;
/// The bytes per chunk of a large broadcast (at most half a slot): 2 MiB took 64 MiB to 2
/// ranks in 4.7-5.2 ms against 8.2 ms with 256 KiB chunks, to 4 in 11.5-14.3 ms against
/// 13.9-15.7 ms (`bench/collectives.py`).
const BROADCAST_CHUNK: usize = 2 << 20;
const PAGE: usize = 4096;

/// Where everything is in a segment for `world` ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub world: usize,
    pub reason: usize,
    pub ctrl: usize,
    pub inline: usize,
    pub mailboxes: usize,
    pub mailbox_bytes: usize,
    pub slots: usize,
    pub slot_bytes: usize,
    pub total: usize,
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// The smallest slot and mailbox a segment gets when memory is short (slower large
/// collectives and messages, in more rounds).
const MIN_SLOT_BYTES: usize = 64 << 10;
const MIN_MAILBOX_BYTES: usize = 1024;

impl Layout {
    /// The layout for `world` ranks at full speed.
    pub fn new(world: usize) -> Layout {
        let mailbox_bytes = round_up((16 << 20) / (world * world), 64).clamp(MIN_MAILBOX_BYTES, 64 << 10);
        // Big enough slots move data at memory speed.
        let slot_bytes = round_up((256 << 20) / (world + 1), PAGE).clamp(MIN_SLOT_BYTES, 4 << 20);
        Layout::sized(world, slot_bytes, mailbox_bytes)
    }

    /// With slots of `slot_bytes` (a multiple of a page) and mailboxes of `mailbox_bytes` (a
    /// multiple of 64).
    fn sized(world: usize, slot_bytes: usize, mailbox_bytes: usize) -> Layout {
        let reason = round_up(EXITED_OFF + 4 * world, 64);
        let ctrl = round_up(reason + REASON_BYTES, 128);
        let inline = round_up(ctrl + CTRL_BYTES * world, PAGE);
        let mailboxes = round_up(inline + 2 * world * INLINE_BYTES, PAGE);
        let slots = round_up(mailboxes + world * world * (MAILBOX_HEADER + mailbox_bytes), PAGE);
        let total = slots + (world + 1) * slot_bytes;
        Layout { world, reason, ctrl, inline, mailboxes, mailbox_bytes, slots, slot_bytes, total }
    }

    /// The smallest layout for `world` ranks.
    fn smallest(world: usize) -> Layout {
        Layout::sized(world, MIN_SLOT_BYTES, MIN_MAILBOX_BYTES)
    }

    /// The full-speed layout if it fits in `room` bytes; else one with smaller slots and
    /// mailboxes (large collectives in more rounds) that takes at most half of `room`, the
    /// rest staying for other programs and launches; `None` if even the smallest does not.
    fn fitting(world: usize, room: u64) -> Option<Layout> {
        let mut lay = Layout::new(world);
        if lay.total as u64 <= room {
            return Some(lay);
        }
        let budget = room / 2;
        while lay.total as u64 > budget && (lay.slot_bytes > MIN_SLOT_BYTES || lay.mailbox_bytes > MIN_MAILBOX_BYTES) {
            let slot_bytes = round_up(lay.slot_bytes / 2, PAGE).max(MIN_SLOT_BYTES);
            let mailbox_bytes = round_up(lay.mailbox_bytes / 2, 64).max(MIN_MAILBOX_BYTES);
            lay = Layout::sized(world, slot_bytes, mailbox_bytes);
        }
        (lay.total as u64 <= budget).then_some(lay)
    }
}

/// A new segment for `world` ranks in /dev/shm, named so that no one can guess it, and by
/// this process: one left by a rank killed before every rank of its host mapped it is
/// removed by the next (as the kernel's are). For a host's own group (see `host_share`).
pub(super) fn create_unique(world: usize) -> std::io::Result<String> {
    use std::io::Read;
    crate::stale::remove_stale(std::path::Path::new("/dev/shm"), "ranch-");
    let mut random = [0u8; 12];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let path = format!("/dev/shm/ranch-{}-host-{hex}", std::process::id());
    create(&path, world)?;
    Ok(path)
}

/// Creates the segment of a launch (kernel side), its memory reserved: `/dev/shm` is a
/// tmpfs whose pages exist only once touched, so a sparse segment in a full one would kill
/// the ranks with SIGBUS in the middle of a collective. When the full-speed layout does not
/// fit in what is free, a smaller one that does is used; when none does, the error names the
/// directory, what is needed and what is free, and nothing is left behind.
pub fn create(path: &str, world: usize) -> std::io::Result<()> {
    // The owner's alone: `/dev/shm` is world-listable, and the data is the launch's.
    let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(path)?;
    let made = (|| {
        let lay = match free_bytes(&file) {
            Some(room) => Layout::fitting(world, room).ok_or_else(|| no_room(path, world, room))?,
            None => Layout::new(world),
        };
        reserve(&file, lay.total as u64).map_err(|e| match e.raw_os_error() {
            Some(ffi::ENOSPC) => no_room(path, world, free_bytes(&file).unwrap_or(0)),
            _ => e,
        })?;
        let mut header = Vec::with_capacity(32);
        for word in [MAGIC, world as u64, lay.slot_bytes as u64, lay.mailbox_bytes as u64] {
            header.extend_from_slice(&word.to_ne_bytes());
        }
        file.write_all_at(&header, 0)
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Bytes free (for this user) on the filesystem of `file`; `None` if it cannot say.
fn free_bytes(file: &File) -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<ffi::Statvfs>::zeroed();
    // SAFETY: `st` is at least as large as `struct statvfs` on 64-bit Linux (glibc, musl).
    let rc = unsafe { ffi::fstatvfs(file.as_raw_fd(), st.as_mut_ptr()) };
    // SAFETY: filled in by the successful call.
    let st = (rc == 0).then(|| unsafe { st.assume_init() })?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Gives `file` its `len` bytes of memory now (`fallocate`); on a filesystem that cannot
/// reserve, the file is sparse, as it always was.
pub(crate) fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    // SAFETY: a plain system call on a descriptor we own.
    if unsafe { ffi::fallocate(file.as_raw_fd(), 0, 0, len as i64) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(ffi::EOPNOTSUPP | ffi::ENOSYS) => file.set_len(len),
        _ => Err(e),
    }
}

fn no_room(path: &str, world: usize, free: u64) -> std::io::Error {
    let dir = std::path::Path::new(path).parent().map_or("/dev/shm".into(), |d| d.display().to_string());
    // `fitting` takes at most half of what is free unless the full-speed layout fits.
    let least = (2 * Layout::smallest(world).total as u64).min(Layout::new(world).total as u64);
    std::io::Error::new(
        std::io::ErrorKind::StorageFull,
        format!(
            "{dir} has {} free, and the shared memory of {world} ranks on this host needs {}. Free space in {dir} \
             (other programs' files count), make it larger (a container's: `docker run --shm-size=1g`), or run \
             fewer ranks on this host",
            size_text(free),
            size_text(least),
        ),
    )
}

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{} KiB", b.div_ceil(1024)),
    }
}

/// Values of a rank's "exited" flag.
const EXITED: u32 = 1;
const FINISHED: u32 = 2;

/// The header of a segment as the kernel sees it: enough to mark ranks as gone and wake
/// the ranks waiting for them.
pub struct Header {
    base: *mut u8,
    len: usize,
    world: usize,
}

// SAFETY: only atomics in the mapping are touched, and the mapping lives as long as this.
unsafe impl Send for Header {}
unsafe impl Sync for Header {}

impl Header {
    pub fn map(file: &File, world: usize) -> std::io::Result<Header> {
        let len = round_up(EXITED_OFF + 4 * world, PAGE);
        // SAFETY: a shared mapping of the file's first pages, which `create` sized.
        let base = unsafe { ffi::mmap(std::ptr::null_mut(), len, ffi::PROT_READ_WRITE, ffi::MAP_SHARED, file.as_raw_fd(), 0) };
        if base as isize == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Header { base: base.cast(), len, world })
    }

    /// Marks a rank as gone: ranks waiting for it stop waiting at once. `finished`: it
    /// returned from the cell normally (rather than dying).
    pub fn mark_exited(&self, rank: usize, finished: bool) {
        if rank >= self.world {
            return;
        }
        let flag = if finished { FINISHED } else { EXITED };
        // SAFETY: in bounds of the mapping (checked rank), aligned words.
        unsafe {
            (*self.base.add(EXITED_OFF + 4 * rank).cast::<AtomicU32>()).store(flag, Ordering::SeqCst);
            let epoch = &*self.base.add(8 * EPOCH_WORD).cast::<AtomicU32>();
            epoch.fetch_add(1, Ordering::SeqCst);
            super::futex::wake_all(epoch);
        }
    }
}

impl Drop for Header {
    fn drop(&mut self) {
        // SAFETY: base/len come from a successful mmap.
        unsafe { ffi::munmap(self.base.cast(), self.len) };
    }
}

pub(crate) mod ffi {
    use std::ffi::c_void;
    // From the C library std already links; the libc crate would be one more dependency
    // for every notebook session.
    unsafe extern "C" {
        pub fn mmap(addr: *mut c_void, len: usize, prot: i32, flags: i32, fd: i32, offset: i64) -> *mut c_void;
        pub fn munmap(addr: *mut c_void, len: usize) -> i32;
    }
    pub const PROT_READ_WRITE: i32 = 0x1 | 0x2;
    pub const MAP_SHARED: i32 = 0x01;

    unsafe extern "C" {
        fn geteuid() -> u32;
        pub fn flock(fd: i32, operation: i32) -> i32;
    }
    pub const LOCK_EX: i32 = 2;
    pub const LOCK_NB: i32 = 4;

    pub fn euid() -> u32 {
        // SAFETY: a plain system call without arguments.
        unsafe { geteuid() }
    }

    unsafe extern "C" {
        pub fn fallocate(fd: i32, mode: i32, offset: i64, len: i64) -> i32;
        pub fn fstatvfs(fd: i32, buf: *mut Statvfs) -> i32;
    }
    pub const ENOSPC: i32 = 28;
    pub const ENOSYS: i32 = 38;
    pub const EOPNOTSUPP: i32 = 95;

    /// `struct statvfs` of 64-bit Linux (glibc and musl), with room to spare.
    #[repr(C)]
    pub struct Statvfs {
        pub f_bsize: u64,
        pub f_frsize: u64,
        pub f_blocks: u64,
        pub f_bfree: u64,
        pub f_bavail: u64,
        pub f_files: u64,
        pub f_ffree: u64,
        pub f_favail: u64,
        pub f_fsid: u64,
        pub f_flag: u64,
        pub f_namemax: u64,
        pub spare: [u64; 8],
    }
}

#[derive(Default)]
struct Progress {
    /// Barriers this rank has passed.
    barriers: u64,
    /// Collectives this rank has started.
    collectives: u64,
}

pub struct Group {
    base: *mut u8,
    lay: Layout,
    rank: usize,
    world: usize,
    timeout: Duration,
    progress: Mutex<Progress>,
    /// Spin this long before sleeping (none when ranks outnumber cores).
    spin: Duration,
    /// One thread of this rank at a time per mailbox: `Comm` is `Sync`, and two threads
    /// sending to (or receiving from) one rank at once would mix their chunks.
    send_locks: Vec<Mutex<()>>,
    recv_locks: Vec<Mutex<()>>,
}

// SAFETY: the mapping lives as long as the Group; cross-process access is synchronised by
// the atomics in the segment, and in-process use by `progress`.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: base/len come from a successful mmap.
        unsafe { ffi::munmap(self.base.cast(), self.lay.total) };
    }
}

/// The layout `create` chose for the segment in `file`, from its header.
fn layout_of(file: &File, path: &str, world: usize) -> Result<Layout, String> {
    let mut header = [0u8; 32];
    file.read_exact_at(&mut header, 0).map_err(|e| format!("cannot read the group's segment {path}: {e}"))?;
    let word = |i: usize| u64::from_ne_bytes(header[8 * i..8 * i + 8].try_into().unwrap());
    let (slot_bytes, mailbox_bytes) = (word(2) as usize, word(3) as usize);
    let sane = slot_bytes >= MIN_SLOT_BYTES && slot_bytes % PAGE == 0 && mailbox_bytes >= MIN_MAILBOX_BYTES && mailbox_bytes % 64 == 0;
    if word(0) != MAGIC || word(1) != world as u64 || !sane {
        return Err(format!("{path} is not a ranch group segment for {world} ranks"));
    }
    Ok(Layout::sized(world, slot_bytes, mailbox_bytes))
}

impl Group {
    pub fn open(path: &str, rank: usize, world: usize) -> Result<Group, String> {
        let file =
            OpenOptions::new().read(true).write(true).open(path).map_err(|e| format!("cannot open the group's segment {path}: {e}"))?;
        let lay = layout_of(&file, path, world)?;
        let len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
        if len != lay.total {
            return Err(format!("the group's segment {path} has {len} bytes, expected {}", lay.total));
        }
        // SAFETY: mapping a file we opened read-write, of the length it has.
        let base = unsafe { ffi::mmap(std::ptr::null_mut(), len, ffi::PROT_READ_WRITE, ffi::MAP_SHARED, file.as_raw_fd(), 0) };
        if base as isize == -1 {
            return Err(format!("cannot map the group's segment: {}", std::io::Error::last_os_error()));
        }
        let timeout = super::collective_timeout();
        let locks = || (0..world).map(|_| Mutex::new(())).collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spin = if crate::local_world_size() > cores { Duration::ZERO } else { SPIN };
        let g = Group {
            base: base.cast(),
            lay,
            rank,
            world,
            timeout,
            progress: Mutex::default(),
            spin,
            send_locks: locks(),
            recv_locks: locks(),
        };
        if g.word(0).load(Ordering::Acquire) != MAGIC || g.word(1).load(Ordering::Acquire) != world as u64 {
            return Err(format!("{path} is not a ranch group segment for {world} ranks"));
        }
        Ok(g)
    }

    fn at<T>(&self, offset: usize) -> &T {
        debug_assert!(offset + std::mem::size_of::<T>() <= self.lay.total);
        // SAFETY: in bounds of the mapping, aligned by the layout, and only used for atomics.
        unsafe { &*self.base.add(offset).cast::<T>() }
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        self.at(8 * i)
    }

    /// 0 while the group works; then (rank + 1) | (kind << 32) of the first failure.
    fn abort_word(&self) -> &AtomicU64 {
        self.word(4)
    }

    fn epoch(&self) -> &AtomicU32 {
        self.at(8 * EPOCH_WORD)
    }

    fn sleepers(&self) -> &AtomicU32 {
        self.at(8 * SLEEPERS_WORD)
    }

    /// Claims the next `chunk` of the `len` items of map number `seq` (see `crate::map`): its
    /// first item, or `None` when all are taken. The first claim of a map starts it at 0: a
    /// map starts only after the one before has ended on every rank (its results are
    /// gathered), so the counter never holds a later map's position.
    pub fn claim(&self, seq: u32, chunk: u32, len: u32) -> Option<u32> {
        let word = self.word(MAP_WORD);
        let mut seen = word.load(Ordering::Acquire);
        loop {
            let start = if (seen >> 32) as u32 == seq { seen as u32 } else { 0 };
            if start >= len {
                return None;
            }
            let next = (u64::from(seq) << 32) | u64::from(start.saturating_add(chunk).min(len));
            match word.compare_exchange_weak(seen, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(start),
                Err(now) => seen = now,
            }
        }
    }

    /// After a change others may wait for: wakes the sleepers, if any. (The fence pairs
    /// with the one a waiter makes between counting itself and looking: either it sees the
    /// change, or this sees it counted.)
    fn notify(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleepers().load(Ordering::Relaxed) > 0 {
            self.epoch().fetch_add(1, Ordering::Release);
            super::futex::wake_all(self.epoch());
        }
    }

    /// Marks this rank as finished, in a segment no kernel watches (a host's own, see
    /// `mpi`): ranks waiting for it learn that it returned without joining.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub fn mark_finished(&self) {
        self.at::<AtomicU32>(EXITED_OFF + 4 * self.rank).store(FINISHED, Ordering::SeqCst);
        self.epoch().fetch_add(1, Ordering::SeqCst);
        super::futex::wake_all(self.epoch());
    }

    fn exited(&self, rank: usize) -> u32 {
        self.at::<AtomicU32>(EXITED_OFF + 4 * rank).load(Ordering::Acquire)
    }

    /// Which of `ranks` have left the cell, and how, said as the reason `op` cannot complete.
    fn departed_among(&self, ranks: &[usize], op: &str) -> Option<(Vec<usize>, String)> {
        let finished: Vec<usize> = ranks.iter().copied().filter(|&r| self.exited(r) == FINISHED).collect();
        let died: Vec<usize> = ranks.iter().copied().filter(|&r| self.exited(r) == EXITED).collect();
        if finished.is_empty() && died.is_empty() {
            return None;
        }
        let mut why = Vec::new();
        if !finished.is_empty() {
            why.push(format!("{} finished without joining {op}", ranks_text(&finished)));
        }
        if !died.is_empty() {
            why.push(format!("{} exited before joining {op}", ranks_text(&died)));
        }
        let mut gone = [finished, died].concat();
        gone.sort_unstable();
        Some((gone, why.join("; ")))
    }

    /// The other ranks that have left the cell (for watchdogs of other transports).
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    pub fn departed(&self, op: &str) -> Option<(Vec<usize>, String)> {
        let others: Vec<usize> = (0..self.lay.world).filter(|&r| r != self.rank).collect();
        self.departed_among(&others, op)
    }

    /// Fails at once once any rank's operation failed: the ranks are no longer in step,
    /// so no later collective of the cell could complete.
    pub fn ensure_usable(&self, op: &'static str) -> Result<(), CommError> {
        match self.abort_word().load(Ordering::Acquire) {
            0 => Ok(()),
            word => Err(self.broken(op, word)),
        }
    }

    /// The error of an operation on a group that an earlier failure broke: it names the
    /// ranks that caused that failure, and says what it was.
    fn broken(&self, op: &'static str, word: u64) -> CommError {
        // The segment is shared with other processes: nothing read from it is trusted.
        let rank = ((word & 0xffff_ffff) as usize).checked_sub(1).filter(|&r| r < self.world);
        let first = KINDS.iter().find(|(k, _)| *k as u64 == word >> 32).map_or("operation", |(_, n)| n);
        let (ranks, why) = self.reason();
        let why = if why.is_empty() { String::new() } else { format!(" ({why})") };
        let who = rank.map_or("a rank".to_string(), |r| format!("rank {r}"));
        CommError::new(
            op,
            if ranks.is_empty() { rank.into_iter().collect() } else { ranks },
            format!(
                "the group is broken: {who}'s {first} failed earlier in this cell{why}, so no collective can complete until the cell ends"
            ),
        )
    }

    fn reason(&self) -> (Vec<usize>, String) {
        let base = self.lay.reason;
        let len = self.at::<AtomicU64>(base + 8).load(Ordering::Acquire);
        if len == 0 {
            return (vec![], String::new());
        }
        let count = (self.at::<AtomicU32>(base + 16).load(Ordering::Relaxed) as usize).min(REASON_RANKS);
        let ranks = (0..count)
            .map(|i| self.at::<AtomicU32>(base + REASON_RANKS_OFF + 4 * i).load(Ordering::Relaxed) as usize)
            .filter(|&r| r < self.world)
            .collect();
        let len = (len.saturating_sub(1) as usize).min(REASON_TEXT);
        // SAFETY: inside the reason area, written before `len` was published.
        let bytes = unsafe { std::slice::from_raw_parts(self.base.add(base + REASON_TEXT_OFF), len) };
        (ranks, String::from_utf8_lossy(bytes).into_owned())
    }

    /// Publishes the first failure (only the first writer gets to) and then breaks the group.
    fn record_failure(&self, op: &'static str, ranks: &[usize], message: &str) {
        let base = self.lay.reason;
        if self.at::<AtomicU64>(base).compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return;
        }
        let count = ranks.len().min(REASON_RANKS);
        self.at::<AtomicU32>(base + 16).store(count as u32, Ordering::Relaxed);
        for (i, r) in ranks.iter().take(count).enumerate() {
            self.at::<AtomicU32>(base + REASON_RANKS_OFF + 4 * i).store(*r as u32, Ordering::Relaxed);
        }
        let mut len = message.len().min(REASON_TEXT);
        while !message.is_char_boundary(len) {
            len -= 1;
        }
        // SAFETY: inside the reason area, which only the lock's winner writes.
        unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), self.base.add(base + REASON_TEXT_OFF), len) };
        self.at::<AtomicU64>(base + 8).store(len as u64 + 1, Ordering::Release);
        let word = (self.rank as u64 + 1) | ((kind_of(op) as u64) << 32);
        self.abort_word().store(word, Ordering::Release);
        self.notify();
    }

    fn reached(&self, rank: usize) -> &AtomicU64 {
        self.at(self.lay.ctrl + CTRL_BYTES * rank)
    }

    fn desc(&self, rank: usize, copy: usize, i: usize) -> &AtomicU64 {
        self.at(self.lay.ctrl + CTRL_BYTES * rank + 8 + 32 * copy + 8 * i)
    }

    fn slot(&self, i: usize) -> *mut u8 {
        // SAFETY: slot i < world + 1 is inside the mapping.
        unsafe { self.base.add(self.lay.slots + i * self.lay.slot_bytes) }
    }

    /// Rank `rank`'s inline buffer `copy` (0 or 1).
    fn inline(&self, rank: usize, copy: usize) -> *mut u8 {
        // SAFETY: rank < world and copy < 2 are inside the inline area.
        unsafe { self.base.add(self.lay.inline + (2 * rank + copy) * INLINE_BYTES) }
    }

    /// The inline buffer the next collective uses. Collective k writes copy k % 2 before its
    /// first barrier; a rank can only be writing copy k % 2 again in collective k + 2 after
    /// every rank reached collective k + 1, that is, after every rank read collective k's.
    fn next_copy(p: &Progress) -> usize {
        (p.collectives % 2) as usize
    }

    fn result_slot(&self) -> *mut u8 {
        self.slot(self.world)
    }

    fn mailbox(&self, src: usize, dst: usize) -> usize {
        self.lay.mailboxes + (src * self.world + dst) * (MAILBOX_HEADER + self.lay.mailbox_bytes)
    }

    /// Spins briefly, then sleeps, until `ready`; fails when a rank it waits for is gone,
    /// another rank aborted, or the collective timeout passes.
    fn wait(&self, op: &'static str, mut ready: impl FnMut() -> bool, waiting_for: impl Fn() -> Vec<usize>) -> Result<(), CommError> {
        let start = Instant::now();
        let mut spins: u32 = 0;
        loop {
            if ready() {
                return Ok(());
            }
            spins += 1;
            // No spinning at all when ranks share cores: a spin only delays the rank this
            // one waits for.
            if !self.spin.is_zero() && (spins < 64 || (spins % 64 != 0 && start.elapsed() < self.spin)) {
                std::hint::spin_loop();
                continue;
            }
            if spins % 16 != 0 && start.elapsed() < self.spin + YIELD {
                std::thread::yield_now();
                continue;
            }
            // A rank this one waits for and that left is the cause to name; the broken
            // group is only the consequence.
            let missing = waiting_for();
            if let Some((gone, why)) = self.departed_among(&missing, op) {
                return Err(self.fail(op, gone, why));
            }
            let aborted = self.abort_word().load(Ordering::Acquire);
            if aborted != 0 {
                return Err(self.broken(op, aborted));
            }
            let elapsed = start.elapsed();
            if elapsed > self.timeout {
                return Err(self.fail(
                    op,
                    missing.clone(),
                    format!(
                        "timed out after {:.0}s waiting for {} to join {op} (set {} to wait longer)",
                        self.timeout.as_secs_f64(),
                        ranks_text(&missing),
                        super::TIMEOUT_ENV
                    ),
                ));
            }
            if elapsed < self.spin + YIELD {
                std::thread::yield_now();
            } else {
                self.sleep_until_changed(&mut ready, (self.timeout - elapsed).min(RECHECK));
            }
        }
    }

    /// Sleeps until something changes (or `limit` passes), unless `ready` already.
    fn sleep_until_changed(&self, ready: &mut impl FnMut() -> bool, limit: Duration) {
        let seen = self.epoch().load(Ordering::Acquire);
        self.sleepers().fetch_add(1, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::SeqCst);
        if !ready() {
            super::futex::wait(self.epoch(), seen, limit);
        }
        self.sleepers().fetch_sub(1, Ordering::Relaxed);
    }

    /// Records the failure so the other ranks stop at once instead of waiting too, and so
    /// every later operation fails at once.
    fn fail(&self, op: &'static str, ranks: Vec<usize>, message: String) -> CommError {
        self.record_failure(op, &ranks, &message);
        CommError::new(op, ranks, message)
    }

    fn barrier_phase(&self, p: &mut Progress, op: &'static str) -> Result<(), CommError> {
        p.barriers += 1;
        let target = p.barriers;
        self.reached(self.rank).store(target, Ordering::Release);
        self.notify();
        self.wait(
            op,
            || (0..self.world).all(|r| self.reached(r).load(Ordering::Acquire) >= target),
            || (0..self.world).filter(|&r| self.reached(r).load(Ordering::Acquire) < target).collect(),
        )
    }

    /// Starts a collective: publishes what this rank is doing, waits for every rank, and
    /// checks they all do the same thing.
    fn begin(&self, p: &mut Progress, op: &'static str, desc: Desc) -> Result<(), CommError> {
        self.begin_typed(p, op, desc, None)
    }

    /// [`begin`](Self::begin) for a collective of values of type `ty` (whose tag is in
    /// `desc[1]`): ranks passing another type are named.
    fn begin_typed(&self, p: &mut Progress, op: &'static str, desc: Desc, ty: Option<&str>) -> Result<(), CommError> {
        let copy = Self::next_copy(p);
        p.collectives += 1;
        for (i, w) in desc.iter().enumerate() {
            self.desc(self.rank, copy, i).store(*w, Ordering::Relaxed);
        }
        self.barrier_phase(p, op)?;
        let theirs: Vec<Desc> = (0..self.world).map(|r| std::array::from_fn(|i| self.desc(r, copy, i).load(Ordering::Relaxed))).collect();
        match mismatch(op, self.rank, &desc, &theirs, ty) {
            Some((odd, message)) => Err(self.fail(op, odd, message)),
            None => Ok(()),
        }
    }

    pub fn barrier(&self) -> Result<(), CommError> {
        let mut p = self.progress.lock().unwrap();
        self.begin(&mut p, "barrier", [Kind::Barrier as u64, 0, 0, 0])
    }

    /// `all_reduce` (root `None`) or `reduce`.
    ///
    /// Large buffers go through the slots in chunks, pipelined over two halves of every
    /// slot so that each chunk costs one barrier: in phase j a rank copies the result of
    /// chunk j - 2 out, combines its share of chunk j - 1 across all slots into the result
    /// slot, and copies chunk j in; then the barrier. Each half is written only in a phase
    /// after the barrier that ended its last reads. Chunks are small enough for the slots
    /// to stay in cache, where copying is cheap; only the ranks' own buffers stream
    /// through memory.
    pub fn reduce<T: Reduce>(&self, buf: &mut [T], op: Op, root: Option<usize>) -> Result<(), CommError> {
        let name = if root.is_some() { "reduce" } else { "all_reduce" };
        let mut p = self.progress.lock().unwrap();
        let desc = [kind_of(name) as u64, type_code(T::NAME, Some(op)), buf.len() as u64, root.map_or(0, |r| r as u64 + 1)];
        let wants_result = root.is_none_or(|r| r == self.rank);
        if std::mem::size_of_val(buf) <= INLINE_BYTES {
            // Small: every rank's data goes in with the description, and each rank that
            // wants the result combines all of them itself, in rank order (so every rank
            // gets the same bits, as from the large path).
            let copy = Self::next_copy(&p);
            // SAFETY: the buffer fits an inline buffer (checked above), which is this rank's
            // to write until the barrier in `begin` (see `next_copy`); after it, the others'
            // hold what they wrote, and nobody writes them until the next collective's barrier.
            unsafe {
                std::ptr::copy_nonoverlapping(buf.as_ptr(), self.inline(self.rank, copy).cast::<T>(), buf.len());
                self.begin(&mut p, name, desc)?;
                if wants_result {
                    buf.copy_from_slice(std::slice::from_raw_parts(self.inline(0, copy).cast::<T>(), buf.len()));
                    for r in 1..self.world {
                        T::combine_slice(buf, std::slice::from_raw_parts(self.inline(r, copy).cast::<T>(), buf.len()), op);
                    }
                }
            }
            return Ok(());
        }
        self.begin(&mut p, name, desc)?;
        let cut = self.pipeline::<T>(buf.len(), PIPELINE_CHUNK);
        let (chunks, range, at) = (cut.count(), |k| cut.range(k), |slot, k| cut.at::<T>(slot, k));

        // A rank's own share of each chunk never goes through its slot: only this rank
        // combines it, straight from its buffer, and writes its result back there itself.
        let mine = |k: usize| crate::shard_range(range(k).len(), self.rank, self.world);
        let data = buf.as_mut_ptr();
        // Copies chunk k between the buffer and a slot, all but this rank's share.
        let others = |k: usize, slot: *mut T, into_buf: bool| {
            let (r, own) = (range(k), mine(k));
            for part in [0..own.start, own.end..r.len()] {
                let (b, s) = (data.wrapping_add(r.start + part.start), slot.wrapping_add(part.start));
                // SAFETY: inside chunk k of the buffer and of the slot's half; see below.
                unsafe {
                    if into_buf {
                        std::ptr::copy_nonoverlapping(s, b, part.len());
                    } else {
                        std::ptr::copy_nonoverlapping(b, s, part.len());
                    }
                }
            }
        };
        for j in 0..chunks + 2 {
            // SAFETY: a chunk fits half a slot; slots are page aligned; each half is written
            // only after the barrier that ended every read of it (see above), and read only
            // after the barrier that ended its writes. The buffer is touched through `data`
            // only, in chunks that do not overlap within a phase.
            unsafe {
                if wants_result && j >= 2 {
                    // Plain stores: the buffer's lines of chunk j - 2 were read (by copying
                    // chunk j - 2 in) two phases ago and are still in cache, so streaming
                    // would gain nothing here (it measured slower).
                    others(j - 2, at(self.result_slot(), j - 2), true);
                }
                if j >= 1 && j <= chunks {
                    let k = j - 1;
                    let share = mine(k);
                    let own = data.add(range(k).start + share.start);
                    let from = |r: usize| if r == self.rank { own.cast_const() } else { at(self.slot(r), k).add(share.start).cast_const() };
                    let out = std::slice::from_raw_parts_mut(at(self.result_slot(), k).add(share.start), share.len());
                    out.copy_from_slice(std::slice::from_raw_parts(from(0), share.len()));
                    for r in 1..self.world {
                        T::combine_slice(out, std::slice::from_raw_parts(from(r), share.len()), op);
                    }
                    if wants_result {
                        std::ptr::copy_nonoverlapping(out.as_ptr(), own, share.len());
                    }
                }
                if j < chunks {
                    others(j, at(self.slot(self.rank), j), false);
                }
            }
            // The last phase only copies out: the next collective's first barrier orders it
            // before anyone writes the result slot again.
            if j <= chunks {
                self.barrier_phase(&mut p, name)?;
            }
        }
        Ok(())
    }

    /// How a buffer of `len` values of `T` is cut into pipelined chunks of at most
    /// `chunk_bytes` (and half a slot).
    fn pipeline<T>(&self, len: usize, chunk_bytes: usize) -> Pipeline {
        let half = self.lay.slot_bytes / 2;
        let per_chunk = (chunk_bytes.min(half) / std::mem::size_of::<T>().max(1)).max(1);
        Pipeline { per_chunk, len, half }
    }

    pub fn broadcast_slice<T: Reduce>(&self, buf: &mut [T], root: usize) -> Result<(), CommError> {
        const OP: &str = "broadcast_slice";
        let mut p = self.progress.lock().unwrap();
        let desc = [Kind::BroadcastSlice as u64, type_code(T::NAME, None), buf.len() as u64, root as u64 + 1];
        if std::mem::size_of_val(buf) <= INLINE_BYTES {
            // Small: the root's data goes in with the description; one barrier.
            let copy = Self::next_copy(&p);
            // SAFETY: as in `reduce`'s small path.
            unsafe {
                if self.rank == root {
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), self.inline(root, copy).cast::<T>(), buf.len());
                }
                self.begin(&mut p, OP, desc)?;
                if self.rank != root {
                    std::ptr::copy_nonoverlapping(self.inline(root, copy).cast::<T>(), buf.as_mut_ptr(), buf.len());
                }
            }
            return Ok(());
        }
        self.begin(&mut p, OP, desc)?;
        // Pipelined as in `reduce`: in phase j the others copy chunk j - 1 out while the
        // root copies chunk j into the other half of slot 0. Chunks of half a slot: nothing
        // is combined, so a working set in cache gains less than fewer barriers do.
        let cut = self.pipeline::<T>(buf.len(), BROADCAST_CHUNK);
        let (chunks, range, at) = (cut.count(), |k| cut.range(k), |k| cut.at::<T>(self.slot(0), k));
        // Streaming stores: the ranks other than the root never read their buffer, so plain
        // stores would first read every line of it from memory.
        let stream = std::mem::size_of_val(buf) >= super::stream_copy::STREAM_MIN_BYTES;
        for j in 0..chunks + 1 {
            // SAFETY: as in `reduce`.
            unsafe {
                if self.rank != root && j >= 1 {
                    copy_out(at(j - 1), &mut buf[range(j - 1)], stream);
                }
                if self.rank == root && j < chunks {
                    let r = range(j);
                    std::ptr::copy_nonoverlapping(buf[r.clone()].as_ptr(), at(j), r.len());
                }
            }
            if j < chunks {
                self.barrier_phase(&mut p, OP)?;
            }
        }
        Ok(())
    }

    /// Every rank's bytes, on every rank, in rounds of at most a slot each. `ty` names the
    /// values' type (its tag is compared across ranks). What other ranks wrote is checked
    /// against what the protocol allows: a rank writing garbage gets a CommError.
    pub fn all_gather_bytes(&self, op: &'static str, mine: &[u8], ty: &str) -> Result<Vec<Vec<u8>>, CommError> {
        let mut p = self.progress.lock().unwrap();
        self.begin_typed(&mut p, op, [kind_of(op) as u64, type_tag(ty), 0, 0], Some(ty))?;
        let payload = self.lay.slot_bytes - 16;
        let mut out: Vec<Vec<u8>> = vec![Vec::new(); self.world];
        let mut totals = vec![0usize; self.world];
        let mut rounds = 1usize;
        let mut round = 0usize;
        while round < rounds {
            let start = (round * payload).min(mine.len());
            let part = &mine[start..(start + payload).min(mine.len())];
            // SAFETY: header + part fit in the slot; barriers order writes before reads;
            // lengths read back are checked before use.
            unsafe {
                let slot = self.slot(self.rank);
                std::ptr::copy_nonoverlapping((mine.len() as u64).to_ne_bytes().as_ptr(), slot, 8);
                std::ptr::copy_nonoverlapping((part.len() as u64).to_ne_bytes().as_ptr(), slot.add(8), 8);
                std::ptr::copy_nonoverlapping(part.as_ptr(), slot.add(16), part.len());
                self.barrier_phase(&mut p, op)?;
                for (r, o) in out.iter_mut().enumerate() {
                    let slot = self.slot(r);
                    let mut word = [0u8; 8];
                    std::ptr::copy_nonoverlapping(slot, word.as_mut_ptr(), 8);
                    let total = u64::from_ne_bytes(word);
                    std::ptr::copy_nonoverlapping(slot.add(8), word.as_mut_ptr(), 8);
                    let n = u64::from_ne_bytes(word);
                    if round == 0 {
                        totals[r] = usize::try_from(total).unwrap_or(usize::MAX);
                    }
                    let expected = (totals[r] - o.len()).min(payload);
                    if total != totals[r] as u64 || n != expected as u64 {
                        return Err(self.fail(op, vec![r], format!("rank {r} wrote a malformed {op} message into the shared segment")));
                    }
                    o.extend_from_slice(std::slice::from_raw_parts(slot.add(16), expected));
                }
                self.barrier_phase(&mut p, op)?;
            }
            if round == 0 {
                rounds = totals.iter().map(|t| t.div_ceil(payload)).max().unwrap_or(0).max(1);
            }
            round += 1;
        }
        Ok(out)
    }

    /// Point-to-point: chunks through the (me, dest) mailbox, each handed over when the
    /// receiver has emptied the previous one.
    pub fn send_bytes(&self, bytes: &[u8], dest: usize) -> Result<(), CommError> {
        let _one_at_a_time = self.send_locks[dest].lock().unwrap_or_else(|e| e.into_inner());
        let mb = self.mailbox(self.rank, dest);
        let full: &AtomicU64 = self.at(mb);
        let mut sent = 0usize;
        loop {
            self.wait("send", || full.load(Ordering::Acquire) == 0, || vec![dest])?;
            let n = (bytes.len() - sent).min(self.lay.mailbox_bytes);
            // SAFETY: the mailbox is ours to write while `full` is 0.
            unsafe { std::ptr::copy_nonoverlapping(bytes[sent..].as_ptr(), self.base.add(mb + MAILBOX_HEADER), n) };
            self.at::<AtomicU64>(mb + 8).store(n as u64, Ordering::Relaxed);
            self.at::<AtomicU64>(mb + 16).store(bytes.len() as u64, Ordering::Relaxed);
            full.store(1, Ordering::Release);
            self.notify();
            sent += n;
            if sent >= bytes.len() {
                return Ok(());
            }
        }
    }

    pub fn recv_bytes(&self, src: usize) -> Result<Vec<u8>, CommError> {
        let _one_at_a_time = self.recv_locks[src].lock().unwrap_or_else(|e| e.into_inner());
        let mb = self.mailbox(src, self.rank);
        let full: &AtomicU64 = self.at(mb);
        let mut out = Vec::new();
        let mut total = None;
        loop {
            self.wait("recv", || full.load(Ordering::Acquire) == 1, || vec![src])?;
            let n = self.at::<AtomicU64>(mb + 8).load(Ordering::Relaxed);
            let said = self.at::<AtomicU64>(mb + 16).load(Ordering::Relaxed);
            let whole = *total.get_or_insert(said);
            // A chunk fits the mailbox, the message's size never changes, and the chunks add
            // up to it exactly: anything else is garbage, never read past the mailbox.
            let expected = (whole - out.len() as u64).min(self.lay.mailbox_bytes as u64);
            if said != whole || n != expected || (n == 0 && whole != 0) {
                return Err(self.fail("recv", vec![src], format!("rank {src} wrote a malformed message into its mailbox")));
            }
            // SAFETY: n <= the mailbox's size (checked above); the sender filled it before `full`.
            unsafe { out.extend_from_slice(std::slice::from_raw_parts(self.base.add(mb + MAILBOX_HEADER), n as usize)) };
            full.store(0, Ordering::Release);
            self.notify();
            if out.len() as u64 >= whole {
                return Ok(out);
            }
        }
    }
}

/// A large buffer cut into chunks that alternate between the two halves of a slot.
#[derive(Clone, Copy)]
struct Pipeline {
    /// Values per chunk (the last may be shorter).
    per_chunk: usize,
    len: usize,
    /// Bytes from a slot's start to its second half.
    half: usize,
}

impl Pipeline {
    fn count(&self) -> usize {
        self.len.div_ceil(self.per_chunk)
    }

    /// The values of chunk k.
    fn range(&self, k: usize) -> std::ops::Range<usize> {
        k * self.per_chunk..((k + 1) * self.per_chunk).min(self.len)
    }

    /// Where chunk k lives in `slot` (a slot's start).
    fn at<T>(&self, slot: *mut u8, k: usize) -> *mut T {
        slot.wrapping_add((k % 2) * self.half).cast::<T>()
    }
}

/// Copies a chunk of a result out of a slot into a rank's buffer; `stream`: with streaming
/// stores (for buffers much larger than the cache), fenced so the barrier after it orders it.
///
/// # Safety
/// `src` holds `dst.len()` values and does not overlap `dst`.
unsafe fn copy_out<T>(src: *const T, dst: &mut [T], stream: bool) {
    // SAFETY: the caller's contract.
    unsafe {
        if stream {
            super::stream_copy::copy(src.cast(), dst.as_mut_ptr().cast(), std::mem::size_of_val(dst));
            super::stream_copy::fence();
        } else {
            std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len());
        }
    }
}

fn ranks_text(ranks: &[usize]) -> String {
    let list: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
    format!("rank{} {}", if ranks.len() == 1 { "" } else { "s" }, list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_bounded() {
        for world in [1, 2, 4, 8, 64, 256] {
            let l = Layout::new(world);
            assert_eq!(l.slots % PAGE, 0);
            assert_eq!(l.slot_bytes % PAGE, 0);
            assert!(l.inline >= l.ctrl + CTRL_BYTES * world && l.inline % PAGE == 0);
            assert!(l.mailboxes >= l.inline + 2 * world * INLINE_BYTES);
            assert!(l.reason >= EXITED_OFF + 4 * world && l.ctrl >= l.reason + REASON_BYTES);
            assert!(l.total < (1 << 30), "world {world}: {} bytes", l.total);
        }
    }

    #[test]
    fn a_layout_shrinks_to_fit_what_is_free() {
        for world in [1, 2, 16, 64] {
            let full = Layout::new(world);
            assert_eq!(Layout::fitting(world, full.total as u64), Some(full));
            let short = Layout::fitting(world, full.total as u64 - 1).unwrap_or_else(|| panic!("world {world}"));
            assert!(short.total as u64 <= (full.total as u64 - 1) / 2 && short.slot_bytes >= MIN_SLOT_BYTES);
            assert_eq!(short.slot_bytes % PAGE, 0);
            assert_eq!(short.mailbox_bytes % 64, 0);
            let least = Layout::smallest(world).total as u64;
            assert_eq!(Layout::fitting(world, 2 * least), Some(Layout::smallest(world)));
            assert_eq!(Layout::fitting(world, 2 * least - 1), None);
        }
        // A container's default /dev/shm (64 MiB) holds 16 ranks, at a lower speed.
        assert!(Layout::new(16).total > 64 << 20 && Layout::fitting(16, 64 << 20).is_some());
    }

    /// A segment in /dev/shm for `world` ranks, removed when dropped; `smallest`: with the
    /// smallest slots and mailboxes `create` falls back to, so that messages take many rounds.
    struct Segment(String);

    impl Segment {
        fn new(tag: &str, world: usize, smallest: bool) -> Segment {
            let path = format!("/dev/shm/ranch-test-{}-{tag}", std::process::id());
            create(&path, world).unwrap();
            if smallest {
                let file = OpenOptions::new().write(true).open(&path).unwrap();
                file.set_len(Layout::smallest(world).total as u64).unwrap();
                file.write_all_at(&(MIN_SLOT_BYTES as u64).to_ne_bytes(), 16).unwrap();
                file.write_all_at(&(MIN_MAILBOX_BYTES as u64).to_ne_bytes(), 24).unwrap();
            }
            Segment(path)
        }
    }

    impl Drop for Segment {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Rank `rank`'s element `i` in the tests' buffers: exact in f64 when summed.
    fn element(rank: usize, i: usize) -> f64 {
        (rank * 1000 + i % 997) as f64
    }

    /// Every rank a thread of this process, each with its own mapping of one segment, running
    /// the same sequence of collectives on sizes at the edges of the segment's inline area
    /// (16 KiB), the smallest slot (64 KiB) and the pipeline's chunk (256 KiB), and beyond
    /// one slot; every result is checked exactly, on every rank.
    fn run_ranks(world: usize, smallest: bool) {
        let tag = format!("collectives-{world}-{smallest}");
        let segment = Segment::new(&tag, world, smallest);
        let sizes = [0usize, 1, 2047, 2048, 2049, 8191, 8193, 32_771, 300_001];
        std::thread::scope(|scope| {
            for rank in 0..world {
                let path = &segment.0;
                scope.spawn(move || {
                    let g = Group::open(path, rank, world).unwrap();
                    for (round, &n) in sizes.iter().enumerate() {
                        let mut buf: Vec<f64> = (0..n).map(|i| element(rank, i)).collect();
                        g.reduce(&mut buf, Op::Sum, None).unwrap();
                        let offset = 1000 * world * (world - 1) / 2;
                        for (i, v) in buf.iter().enumerate() {
                            assert_eq!(*v, (world * (i % 997) + offset) as f64, "all-reduce of {n}: rank {rank}, element {i}");
                        }
                        let root = round % world;
                        let mut buf: Vec<f64> = if rank == root { (0..n).map(|i| element(root, i)).collect() } else { vec![-1.0; n] };
                        g.broadcast_slice(&mut buf, root).unwrap();
                        assert!(buf.iter().enumerate().all(|(i, v)| *v == element(root, i)), "broadcast of {n} from {root}: rank {rank}");
                        let mine = vec![rank as u8; n / 7 + rank];
                        let all = g.all_gather_bytes("all_gather", &mine, "u8").unwrap();
                        for (r, got) in all.iter().enumerate() {
                            assert!(got.len() == n / 7 + r && got.iter().all(|b| *b == r as u8), "all-gather of {n}: rank {rank} from {r}");
                        }
                        // Pairs exchange (0 with 1, 2 with 3): the lower sends first.
                        let partner = rank ^ 1;
                        if partner < world {
                            let bytes: Vec<u8> = (0..n).map(|i| (i + rank) as u8).collect();
                            let got = if rank < partner {
                                g.send_bytes(&bytes, partner).unwrap();
                                g.recv_bytes(partner).unwrap()
                            } else {
                                let got = g.recv_bytes(partner).unwrap();
                                g.send_bytes(&bytes, partner).unwrap();
                                got
                            };
                            assert!(got.len() == n && got.iter().enumerate().all(|(i, b)| *b == (i + partner) as u8), "send of {n}");
                        }
                        g.barrier().unwrap();
                    }
                });
            }
        });
    }

    #[test]
    fn collectives_are_exact_at_every_size_edge_between_threads() {
        for world in [2, 3, 4] {
            run_ranks(world, false);
        }
    }

    #[test]
    fn collectives_are_exact_through_the_smallest_slots() {
        for world in [2, 3, 4] {
            run_ranks(world, true);
        }
    }

    #[test]
    fn a_maps_items_are_each_claimed_once_across_ranks_and_maps() {
        let segment = Segment::new("map", 3, false);
        let claimed: Vec<Vec<(u32, u32)>> = std::thread::scope(|scope| {
            let ranks: Vec<_> = (0..3)
                .map(|rank| {
                    let path = &segment.0;
                    scope.spawn(move || {
                        let g = Group::open(path, rank, 3).unwrap();
                        let mut mine = Vec::new();
                        for (seq, len) in [(1u32, 1000u32), (2, 7)] {
                            while let Some(start) = g.claim(seq, 3, len) {
                                mine.push((seq, start));
                            }
                            g.barrier().unwrap(); // a map ends on every rank before the next
                        }
                        mine
                    })
                })
                .collect();
            ranks.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (seq, len) in [(1u32, 1000u32), (2, 7)] {
            let mut starts: Vec<u32> = claimed.iter().flatten().filter(|(s, _)| *s == seq).map(|(_, start)| *start).collect();
            starts.sort_unstable();
            assert_eq!(starts, (0..len).step_by(3).collect::<Vec<_>>(), "map {seq}: every chunk once");
        }
    }

    #[test]
    fn ranks_that_disagree_get_an_error_on_every_rank_not_a_hang() {
        let segment = Segment::new("mismatch", 2, false);
        let errors: Vec<String> = std::thread::scope(|scope| {
            let ranks: Vec<_> = (0..2)
                .map(|rank| {
                    let path = &segment.0;
                    scope.spawn(move || {
                        let g = Group::open(path, rank, 2).unwrap();
                        // The same collective with different lengths.
                        let mut a = vec![1.0f64; 10 + 10 * rank];
                        g.reduce(&mut a, Op::Sum, None).unwrap_err().to_string()
                    })
                })
                .collect();
            ranks.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (rank, e) in errors.iter().enumerate() {
            assert!(e.contains("10") && e.contains("20"), "rank {rank}: {e}");
        }
    }

    #[test]
    fn a_segment_has_its_memory_when_created_and_opens_with_its_layout() {
        use std::os::unix::fs::MetadataExt;
        let path = format!("/dev/shm/ranch-test-{}", std::process::id());
        create(&path, 2).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.len(), Layout::new(2).total as u64);
        assert!(m.blocks() * 512 >= m.len(), "reserved, not sparse: {} of {} bytes", m.blocks() * 512, m.len());
        let g = Group::open(&path, 0, 2).unwrap();
        assert_eq!(g.lay, Layout::new(2));
        drop(g);
        // A segment made smaller (as `create` does when memory is short) opens with its sizes.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let small = Layout::smallest(2);
        file.set_len(small.total as u64).unwrap();
        file.write_all_at(&(MIN_SLOT_BYTES as u64).to_ne_bytes(), 16).unwrap();
        file.write_all_at(&(MIN_MAILBOX_BYTES as u64).to_ne_bytes(), 24).unwrap();
        assert_eq!(Group::open(&path, 1, 2).unwrap().lay, small);
        file.write_all_at(&1u64.to_ne_bytes(), 16).unwrap();
        assert!(Group::open(&path, 1, 2).is_err_and(|e| e.contains("is not a ranch group segment")));
        std::fs::remove_file(&path).unwrap();
        assert!(create(&format!("/nonexistent-dir/ranch-{}", std::process::id()), 2).is_err());
    }
}
