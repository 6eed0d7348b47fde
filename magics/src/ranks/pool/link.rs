//! The link between a pool's fan-out and one of its ranks on another host: one TCP
//! connection carrying framed messages both ways (see [`super::hub`] and [`super::relay`]).
//!
//! A frame is a kind byte, a 4-byte big-endian length and that many bytes; a file frame's
//! bytes are its name, and an 8-byte length and the file's bytes follow, streamed rather
//! than held. Every length is bounded by its kind, and a body's memory grows as its bytes
//! arrive: bytes from the network may be garbage.

use ranch::__rt::listener::Progress;
use std::io::{self, Read, Write};

/// First bytes of a rank's hello: `RANCH-POOL1 <token> <rank> <host> <pid>`.
pub(super) const HELLO: &str = "RANCH-POOL1";
/// Most bytes of a frame other than a file's body (a rank's event line may carry an image).
const MAX_FRAME: u32 = 64 << 20;
/// A frame's head: its kind and its length.
const HEAD: usize = 5;
/// Most bytes of a frame set aside before they arrive.
const PREALLOCATE: usize = 64 << 10;
/// Most bytes of a file's name (and of a rank's hello).
const MAX_NAME: u32 = 4096;
/// Most bytes of one file (a cell's library, libstd, a variable).
pub(super) const MAX_FILE: u64 = 4 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Frame {
    /// Rank to hub, first: who it is.
    Hello(String),
    /// Hub to rank: the rank's environment (JSON pairs).
    Env(Vec<u8>),
    /// Hub to rank: everything the rank needs was sent; start serving cells.
    Start,
    /// Both ways: a file follows (its length, then its bytes), named by a relative path.
    File(String),
    /// Both ways: one line of evcxr's child protocol.
    Line(String),
    /// Rank to hub: event lines for the kernel's pool listener.
    Events(Vec<u8>),
    /// Hub to rank: the running cell's group (empty: no group).
    Group(String),
    /// Rank to hub: the rank's process ended, and how.
    Exit(String),
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => b'H',
            Frame::Env(_) => b'V',
            Frame::Start => b'S',
            Frame::File(_) => b'F',
            Frame::Line(_) => b'L',
            Frame::Events(_) => b'E',
            Frame::Group(_) => b'G',
            Frame::Exit(_) => b'X',
        }
    }

    fn body(&self) -> &[u8] {
        match self {
            Frame::Start => &[],
            Frame::Env(b) | Frame::Events(b) => b,
            Frame::Hello(s) | Frame::File(s) | Frame::Line(s) | Frame::Group(s) | Frame::Exit(s) => s.as_bytes(),
        }
    }
}

pub(super) fn write_frame(w: &mut impl Write, frame: &Frame) -> io::Result<()> {
    let body = frame.body();
    let len = u32::try_from(body.len()).ok().filter(|&l| l <= MAX_FRAME).ok_or_else(|| invalid("frame too large"))?;
    let mut head = [0u8; HEAD];
    head[0] = frame.kind();
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head)?;
    w.write_all(body)
}

/// Writes a file frame named `name` with the contents of `from` (`len` bytes).
pub(super) fn write_file(w: &mut impl Write, name: &str, len: u64, from: &mut impl Read) -> io::Result<()> {
    if len > MAX_FILE {
        return Err(invalid(format!("{name} is larger than {} GiB", MAX_FILE >> 30)));
    }
    write_frame(w, &Frame::File(name.to_string()))?;
    w.write_all(&len.to_be_bytes())?;
    let copied = io::copy(&mut from.take(len), w)?;
    if copied != len {
        return Err(invalid(format!("{name} shrank while it was sent ({copied} of {len} bytes)")));
    }
    Ok(())
}

/// A frame's kind and length from its head, when the length is within the kind's limit.
fn parse_head(head: &[u8; HEAD]) -> io::Result<(u8, usize)> {
    let len = u32::from_be_bytes(head[1..].try_into().expect("4 bytes"));
    let limit = match head[0] {
        b'F' | b'H' => MAX_NAME,
        _ => MAX_FRAME,
    };
    if len > limit {
        return Err(invalid(format!("a frame of {len} bytes (kind {:?}) is over its limit", head[0] as char)));
    }
    Ok((head[0], len as usize))
}

/// How far a rank's hello frame is, for the hub's listener: the head, then its body.
pub(super) fn hello_progress(bytes: &[u8]) -> Progress {
    let Some(head) = bytes.first_chunk::<HEAD>() else { return Progress::Need(HEAD - bytes.len()) };
    match parse_head(head) {
        Ok((b'H', len)) if bytes.len() < HEAD + len => Progress::Need(HEAD + len - bytes.len()),
        Ok((b'H', len)) => Progress::Complete(HEAD..HEAD + len),
        _ => Progress::Bad,
    }
}

/// Most bytes of a rank's hello frame.
pub(super) const MAX_HELLO: usize = HEAD + MAX_NAME as usize;

/// Reads one frame; after a [`Frame::File`], read its body with [`read_file_body`].
pub(super) fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut head = [0u8; HEAD];
    r.read_exact(&mut head)?;
    let (kind, len) = parse_head(&head)?;
    // Grown as the bytes arrive: a length is only a claim until they do.
    let mut body = Vec::with_capacity(len.min(PREALLOCATE));
    if r.take(len as u64).read_to_end(&mut body)? != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("a frame ended before its {len} bytes")));
    }
    let text = |b: Vec<u8>| String::from_utf8(b).map_err(|_| invalid("a text frame is not UTF-8"));
    Ok(match kind {
        b'H' => Frame::Hello(text(body)?),
        b'V' => Frame::Env(body),
        b'S' => Frame::Start,
        b'F' => Frame::File(text(body)?),
        b'L' => Frame::Line(text(body)?),
        b'E' => Frame::Events(body),
        b'G' => Frame::Group(text(body)?),
        b'X' => Frame::Exit(text(body)?),
        k => return Err(invalid(format!("unknown frame kind {k}"))),
    })
}

/// Copies a file frame's body into `to`, at most [`MAX_FILE`] bytes.
pub(super) fn read_file_body(r: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_be_bytes(len);
    if len > MAX_FILE {
        return Err(invalid(format!("a file of {len} bytes is over the limit")));
    }
    let copied = io::copy(&mut r.take(len), to)?;
    if copied != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("a file ended after {copied} of {len} bytes")));
    }
    Ok(len)
}

/// Skips a file frame's body.
pub(super) fn skip_file_body(r: &mut impl Read) -> io::Result<u64> {
    read_file_body(r, &mut io::sink())
}

/// A file name from the other end as a path under a directory of ours: relative, made of
/// plain names only (no `..`, no root).
pub(super) fn safe_relative(name: &str) -> Option<&std::path::Path> {
    use std::path::Component;
    let path = std::path::Path::new(name);
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && !name.is_empty() && path.components().count() <= 4).then_some(path)
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_files_stream() {
        let mut wire = Vec::new();
        let frames = [
            Frame::Hello("RANCH-POOL1 t 0 h 1".into()),
            Frame::Start,
            Frame::Line("LOAD_AND_RUN /a f".into()),
            Frame::Events(b"{}\n".to_vec()),
        ];
        for f in &frames {
            write_frame(&mut wire, f).unwrap();
        }
        write_file(&mut wire, "cells/libcode_1.so", 5, &mut &b"hello, more"[..]).unwrap();
        write_frame(&mut wire, &Frame::Exit("exited with status 0".into())).unwrap();
        let mut r = &wire[..];
        for f in &frames {
            assert_eq!(&read_frame(&mut r).unwrap(), f);
        }
        assert_eq!(read_frame(&mut r).unwrap(), Frame::File("cells/libcode_1.so".into()));
        let mut body = Vec::new();
        assert_eq!(read_file_body(&mut r, &mut body).unwrap(), 5);
        assert_eq!(body, b"hello");
        assert_eq!(read_frame(&mut r).unwrap(), Frame::Exit("exited with status 0".into()));
        assert!(read_frame(&mut r).is_err(), "the end is an error, not a frame");
    }

    #[test]
    fn garbage_and_huge_lengths_are_refused_without_allocating() {
        let huge = [b'L', 0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut &huge[..]).unwrap_err().to_string().contains("over its limit"));
        let long_hello = [b'H', 0, 1, 0, 0];
        assert!(read_frame(&mut &long_hello[..]).is_err());
        assert!(read_frame(&mut &[b'?', 0, 0, 0, 0][..]).unwrap_err().to_string().contains("unknown"));
        let mut huge_file = vec![];
        write_frame(&mut huge_file, &Frame::File("x".into())).unwrap();
        huge_file.extend(u64::MAX.to_be_bytes());
        let mut r = &huge_file[..];
        read_frame(&mut r).unwrap();
        assert!(read_file_body(&mut r, &mut io::sink()).is_err());
    }

    #[test]
    fn a_hello_frame_is_read_to_its_end_and_nothing_else_is_a_hello() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Frame::Hello("RANCH-POOL1 t 0 h 1".into())).unwrap();
        assert_eq!(hello_progress(&wire[..2]), Progress::Need(3));
        assert_eq!(hello_progress(&wire[..HEAD]), Progress::Need(wire.len() - HEAD));
        assert_eq!(hello_progress(&wire), Progress::Complete(HEAD..wire.len()));
        assert_eq!(hello_progress(&[b'H', 0, 1, 0, 0]), Progress::Bad, "longer than a hello may be");
        assert_eq!(hello_progress(&[b'L', 0, 0, 0, 1]), Progress::Bad, "not a hello");
    }

    #[test]
    fn only_plain_relative_names_are_taken() {
        assert!(safe_relative("cells/libcode_3.so").is_some());
        assert!(safe_relative("mirror/px-push-1/a.bin").is_some());
        for bad in ["", "/etc/passwd", "../x", "cells/../../x", "./x", "a/b/c/d/e"] {
            assert!(safe_relative(bad).is_none(), "{bad}");
        }
    }
}
