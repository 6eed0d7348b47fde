//! Sleeping on a 32-bit word in shared memory until another process changes it (Linux's
//! futex, without a private flag: the word is shared between processes), so that waiting
//! ranks leave their core to the ranks they wait for.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

#[cfg(target_arch = "x86_64")]
const SYS_FUTEX: i64 = 202;
#[cfg(any(target_arch = "aarch64", target_arch = "riscv64"))]
const SYS_FUTEX: i64 = 98;
const FUTEX_WAIT: i32 = 0;
const FUTEX_WAKE: i32 = 1;

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

unsafe extern "C" {
    // The C library's generic system call entry (std links the C library already).
    fn syscall(number: i64, ...) -> i64;
}

/// Sleeps while `word` holds `expected`, for `timeout` at most (a wake, a signal or a
/// change of the word end it sooner; the caller checks what it waits for again).
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: timeout.subsec_nanos() as i64 };
    // SAFETY: the word is a live, aligned u32 (in a mapping that outlives the call); the
    // timespec lives on this stack for the call.
    unsafe {
        syscall(SYS_FUTEX, word.as_ptr(), FUTEX_WAIT, expected, &ts as *const Timespec, std::ptr::null::<u32>(), 0u32);
    }
}

/// Wakes every process sleeping on `word`.
pub fn wake_all(word: &AtomicU32) {
    // SAFETY: as above; FUTEX_WAKE only reads the address.
    unsafe {
        syscall(SYS_FUTEX, word.as_ptr(), FUTEX_WAKE, i32::MAX, std::ptr::null::<Timespec>(), std::ptr::null::<u32>(), 0u32);
    }
}
