//! A rank's end of its launch's channel to the kernel (`RANCH_CHANNEL=host:port`): shipped
//! variables are fetched from it and the result and panic report sent to it, so the rank
//! needs no directory shared with the kernel. One request per connection, named by the
//! launch's token (see the kernel's side for the protocol and its bounds).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Where the kernel's channel listens.
pub const CHANNEL_ENV: &str = "RANCH_CHANNEL";
/// The channel's token where it is not the launch's ([`crate::comm::TOKEN_ENV`]): a
/// pool's ranks on other hosts have a channel of their own, for shared arrays.
pub const CHANNEL_TOKEN_ENV: &str = "RANCH_CHANNEL_TOKEN";
/// First word of every request.
pub const CHANNEL_HELLO: &str = "RANCH-CHANNEL1";

/// Largest variable a rank accepts (the kernel never sends more than it was given).
const MAX_VARIABLE: u64 = 1 << 40;

/// The channel's address when this launch has one.
pub(crate) fn address() -> Option<String> {
    std::env::var(CHANNEL_ENV).ok().filter(|a| !a.is_empty())
}

/// Why a request failed: `Unanswered` ones are tried again (the kernel closes connections
/// beyond its limit at once, and strangers may hold its slots for a few seconds).
enum Failed {
    Unanswered(String),
    Final(String),
}

/// How long a request is tried again when the kernel does not answer.
const RETRY_FOR: Duration = Duration::from_secs(30);

fn retrying<T>(mut attempt: impl FnMut() -> Result<T, Failed>) -> Result<T, String> {
    let deadline = std::time::Instant::now() + RETRY_FOR;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(Failed::Final(why)) => return Err(why),
            Err(Failed::Unanswered(why)) if std::time::Instant::now() >= deadline => return Err(why),
            Err(Failed::Unanswered(_)) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn open(addr: &str, request: &str) -> Result<TcpStream, Failed> {
    let token = std::env::var(CHANNEL_TOKEN_ENV)
        .or_else(|_| std::env::var(crate::comm::TOKEN_ENV))
        .map_err(|_| Failed::Final(format!("{} is not set", crate::comm::TOKEN_ENV)))?;
    let targets: Vec<_> = addr.to_socket_addrs().map_err(|e| Failed::Final(format!("channel address {addr}: {e}")))?.collect();
    let mut last = format!("channel address {addr} resolves to nothing");
    for t in targets {
        match TcpStream::connect_timeout(&t, Duration::from_secs(10)) {
            Ok(mut s) => {
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
                s.write_all(format!("{CHANNEL_HELLO} {token} {request}\n").as_bytes())
                    .map_err(|e| Failed::Unanswered(format!("the kernel's channel at {addr}: {e}")))?;
                return Ok(s);
            }
            Err(e) => last = format!("cannot reach the kernel's channel at {addr}: {e}"),
        }
    }
    Err(Failed::Unanswered(last))
}

/// The kernel's answer: `OK ...` lines, or why not.
fn reply_line(reader: &mut impl BufRead, addr: &str) -> Result<String, Failed> {
    let mut line = String::new();
    reader.take(512).read_line(&mut line).map_err(|e| Failed::Unanswered(format!("the kernel's channel at {addr}: {e}")))?;
    if line.is_empty() {
        return Err(Failed::Unanswered(format!("the kernel's channel at {addr} closed without an answer")));
    }
    let line = line.trim_end().to_string();
    match line.strip_prefix("ERR ") {
        Some(why) => Err(Failed::Final(why.to_string())),
        None => Ok(line),
    }
}

/// The bytes of shipped variable `name`.
pub(crate) fn fetch(addr: &str, name: &str) -> Result<Vec<u8>, String> {
    fetch_streamed(addr, &format!("GET {name}"), MAX_VARIABLE, |len, body| {
        let mut bytes = Vec::with_capacity(len.min(1 << 30) as usize);
        body.read_to_end(&mut bytes).map_err(|e| format!("reading variable `{name}`: {e}"))?;
        if bytes.len() as u64 != len {
            return Err(format!("variable `{name}`: {} of {len} bytes came", bytes.len()));
        }
        Ok(bytes)
    })
}

/// Answers `request` (`OK <len>` and the bytes) by handing the announced length, at most
/// `max`, and the body to `take`; asked again while the kernel does not answer.
pub(crate) fn fetch_streamed<T>(
    addr: &str,
    request: &str,
    max: u64,
    mut take: impl FnMut(u64, &mut dyn Read) -> Result<T, String>,
) -> Result<T, String> {
    retrying(|| {
        let stream = open(addr, request)?;
        let mut reader = BufReader::new(stream);
        let line = reply_line(&mut reader, addr)?;
        let len: u64 = line
            .strip_prefix("OK ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Failed::Final(format!("the kernel's channel answered {line:?}")))?;
        if len > max {
            return Err(Failed::Final(format!("the kernel's channel announced {len} bytes, more than {max}")));
        }
        take(len, &mut reader.take(len)).map_err(Failed::Final)
    })
}

/// Sends this rank's `kind` ("result", "panic" or "exit") and waits until the kernel has it.
pub(crate) fn put(addr: &str, kind: &str, index: usize, bytes: &[u8]) -> Result<(), String> {
    retrying(|| put_attempt(addr, kind, index, bytes))
}

/// [`put`], tried once: for what a rank says as its process exits, which must not wait.
pub(crate) fn put_once(addr: &str, kind: &str, index: usize, bytes: &[u8]) -> Result<(), String> {
    put_attempt(addr, kind, index, bytes).map_err(|(Failed::Unanswered(why) | Failed::Final(why))| why)
}

fn put_attempt(addr: &str, kind: &str, index: usize, bytes: &[u8]) -> Result<(), Failed> {
    let mut stream = open(addr, &format!("PUT {kind} {index} {}", bytes.len()))?;
    stream.write_all(bytes).map_err(|e| Failed::Unanswered(format!("sending the {kind}: {e}")))?;
    match reply_line(&mut BufReader::new(stream), addr)?.as_str() {
        "OK" => Ok(()),
        other => Err(Failed::Final(format!("the kernel's channel answered {other:?}"))),
    }
}
