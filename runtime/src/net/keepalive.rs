//! Noticing a peer whose host vanished without a word (power lost, a link dropped: no reset
//! ever comes). A connection watched by [`watch`] fails its reads and writes once the peer
//! has acknowledged nothing for the given time: the kernel probes it when it is idle (TCP
//! keepalive) and gives up on data it sent that is never acknowledged (TCP_USER_TIMEOUT),
//! so a blocked read or write ends with `TimedOut` instead of hanging.

use std::ffi::c_int;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

// Linux's values (the same on every architecture ranch builds for).
const SOL_SOCKET: c_int = 1;
const SO_KEEPALIVE: c_int = 9;
const IPPROTO_TCP: c_int = 6;
const TCP_KEEPIDLE: c_int = 4;
const TCP_KEEPINTVL: c_int = 5;
const TCP_KEEPCNT: c_int = 6;
const TCP_USER_TIMEOUT: c_int = 18;

unsafe extern "C" {
    // The C library's (std links it already).
    fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const std::ffi::c_void, len: u32) -> c_int;
}

fn set(stream: &TcpStream, level: c_int, name: c_int, value: c_int) -> std::io::Result<()> {
    // SAFETY: the descriptor is the stream's, open while it is borrowed; the value is an int
    // that lives for the call, with its size given.
    let done = unsafe { setsockopt(stream.as_raw_fd(), level, name, (&value as *const c_int).cast(), size_of::<c_int>() as u32) };
    if done == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Makes `stream` fail within `within` of its peer's host going silent: once nothing came
/// for half of it (idle, probed after a quarter, then every eighth; or with data it sent not
/// acknowledged), reads and writes fail with `TimedOut`.
pub fn watch(stream: &TcpStream, within: Duration) -> std::io::Result<()> {
    let secs = |d: Duration| d.as_secs().clamp(1, i32::MAX as u64 / 1000) as c_int;
    set(stream, SOL_SOCKET, SO_KEEPALIVE, 1)?;
    set(stream, IPPROTO_TCP, TCP_KEEPIDLE, secs(within / 4))?;
    set(stream, IPPROTO_TCP, TCP_KEEPINTVL, secs(within / 8))?;
    set(stream, IPPROTO_TCP, TCP_KEEPCNT, 4)?;
    set(stream, IPPROTO_TCP, TCP_USER_TIMEOUT, secs(within / 2) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(stream: &TcpStream, level: c_int, name: c_int) -> c_int {
        unsafe extern "C" {
            fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut std::ffi::c_void, len: *mut u32) -> c_int;
        }
        let (mut value, mut len): (c_int, u32) = (0, size_of::<c_int>() as u32);
        // SAFETY: as for setsockopt, with room for an int.
        assert_eq!(unsafe { getsockopt(stream.as_raw_fd(), level, name, (&mut value as *mut c_int).cast(), &mut len) }, 0);
        value
    }

    #[test]
    fn a_watched_stream_is_probed_and_gives_up_within_the_time() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        watch(&s, Duration::from_secs(16)).unwrap();
        assert_eq!(get(&s, SOL_SOCKET, SO_KEEPALIVE), 1);
        assert_eq!([get(&s, IPPROTO_TCP, TCP_KEEPIDLE), get(&s, IPPROTO_TCP, TCP_KEEPINTVL), get(&s, IPPROTO_TCP, TCP_KEEPCNT)], [4, 2, 4]);
        assert_eq!(get(&s, IPPROTO_TCP, TCP_USER_TIMEOUT), 8000);
        watch(&s, Duration::from_millis(10)).unwrap();
        assert_eq!(get(&s, IPPROTO_TCP, TCP_KEEPIDLE), 1, "at least a second");
    }
}
