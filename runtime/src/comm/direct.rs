//! Reading another rank's memory in one copy (Linux's cross-memory attach,
//! `process_vm_readv`), for large broadcasts: each receiver copies the root's buffer
//! straight into its own, so the data is copied once per receiver, with two barriers in
//! all, instead of going through the shared segment in pipelined chunks (a copy in, a copy
//! out, and a barrier per chunk). It is what Open MPI's shared-memory transport does.
//!
//! The kernel allows it between processes of one user that may trace each other: under
//! Yama's `ptrace_scope` 1 a process must name who may, so a rank that serves a direct
//! read allows any process of its user ([`allow_readers`], as Open MPI's ranks do). Where
//! it is refused all the same (scope 2 or 3, a container without the capability), the
//! caller falls back to the pipelined copy.

use std::ffi::c_void;

#[repr(C)]
struct IoVec {
    base: *mut c_void,
    len: usize,
}

unsafe extern "C" {
    fn process_vm_readv(pid: i32, local: *const IoVec, local_count: u64, remote: *const IoVec, remote_count: u64, flags: u64) -> isize;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}

const PR_SET_PTRACER: i32 = 0x5961_6d61;
const PR_SET_PTRACER_ANY: u64 = u64::MAX;

/// Lets other processes of this user read this one (once per process; harmless without Yama).
pub fn allow_readers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: a plain system call; failure (no Yama) leaves things as they were.
    ONCE.call_once(|| unsafe {
        prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
    });
}

/// Copies `dst.len()` bytes from address `src` of process `pid` into `dst`. False when the
/// kernel refuses or the process is gone.
pub fn read(pid: u32, src: u64, dst: &mut [u8]) -> bool {
    #[cfg(test)]
    if REFUSED.with(|r| r.get()) {
        return false;
    }
    let mut done = 0usize;
    while done < dst.len() {
        let local = IoVec { base: dst[done..].as_mut_ptr().cast(), len: dst.len() - done };
        let remote = IoVec { base: (src as usize + done) as *mut c_void, len: dst.len() - done };
        // SAFETY: `local` is inside `dst`, which we hold mutably; the kernel checks `remote`.
        let n = unsafe { process_vm_readv(pid as i32, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            return false;
        }
        done += n as usize;
    }
    true
}

#[cfg(test)]
thread_local! {
    /// Makes this thread's reads fail, as a kernel that refuses them would.
    pub static REFUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_process_reads_memory_of_its_own_user() {
        let src: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        super::allow_readers();
        assert!(super::read(std::process::id(), src.as_ptr() as u64, &mut dst));
        assert_eq!(src, dst);
        assert!(!super::read(std::process::id(), 8, &mut dst[..16]), "an unmapped address is refused, not a crash");
    }
}
