//! A rank's stdout or stderr, read into lines and display blocks.
//!
//! Bounded whatever the rank does: lines are split as bytes arrive (each byte looked at
//! once), a line longer than [`MAX_LINE`] is cut into pieces, a display block larger than
//! [`MAX_BLOCK`] is shown as text, and the channel to the supervisor is bounded, so a rank
//! that writes faster than the notebook can take waits on its own pipe. Once the rank has
//! exited, what still arrives comes from something it left running that holds the pipe;
//! it is read for [`DRAIN_AFTER_EXIT`] at most, so such a process cannot keep a cell open.

use crate::display_op::{self, DisplayOp};
use serde_json::{Map, Value};
use std::io::Read;
use std::os::fd::AsFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What a reader reports.
pub enum Output {
    Lines(usize, Stream, Vec<String>),
    Display(usize, Map<String, Value>),
    /// A `ranch::display` request (progress, a display updated in place, clearing).
    Control(usize, DisplayOp),
}

/// Longest line passed on in one piece.
pub const MAX_LINE: usize = 1 << 20;
/// Largest display block (`EVCXR_BEGIN_CONTENT` ... `EVCXR_END_CONTENT`).
pub const MAX_BLOCK: usize = 32 << 20;
/// How long output is waited for after the rank exited.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);
/// What is read after that, of what is already in the pipe (more than a pipe holds).
const BUFFERED_AFTER_DRAIN: usize = 1 << 20;

/// Where output goes; false when nobody listens any more. It may block (back pressure).
pub type Deliver<'a> = &'a dyn Fn(Output) -> bool;

/// Reads `pipe` of `rank` until it closes, or until [`DRAIN_AFTER_EXIT`] after `exited` is
/// set. Delivers whole lines (a last unterminated one too).
pub fn read(pipe: impl Read + AsFd, rank: usize, stream: Stream, deliver: Deliver, exited: &OnceLock<Instant>) {
    let mut text = RankText::new(rank, stream);
    read_with(pipe, exited, |bytes| text.feed(bytes, deliver));
    text.finish(deliver);
}

/// The output's reader has gone (the cell ended): there is no one to pass output to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NobodyListens;

/// Passes what `pipe` gives to `take` until the pipe closes, `take` fails (nobody listens),
/// or [`DRAIN_AFTER_EXIT`] has passed since `exited` was set.
pub fn read_with(pipe: impl Read + AsFd, exited: &OnceLock<Instant>, mut take: impl FnMut(&[u8]) -> Result<(), NobodyListens>) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut pipe = pipe;
    let mut buf = vec![0u8; 64 * 1024];
    let mut late_bytes = 0;
    loop {
        // Past the drain time nothing more is waited for, but what is already in the pipe is
        // read: all the process wrote before it exited is there (a reader slowed down by a
        // busy machine or a full channel must not lose a launcher's last report).
        let late = exited.get().is_some_and(|t| t.elapsed() > DRAIN_AFTER_EXIT);
        let readable = {
            let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
            let wait = if late { PollTimeout::ZERO } else { PollTimeout::from(250u16) };
            matches!(poll(&mut fds, wait), Ok(n) if n > 0)
        };
        if !readable {
            if late {
                return;
            }
            continue;
        }
        let n = match pipe.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if take(&buf[..n]).is_err() {
            return;
        }
        if late {
            // A process left running that keeps writing gets no more than a pipe's worth.
            late_bytes += n;
            if late_bytes >= BUFFERED_AFTER_DRAIN {
                return;
            }
        }
    }
}

/// One rank's stream turned into lines and displays as its bytes come, from a pipe of its
/// own or from a launcher's tagged output.
pub struct RankText {
    rank: usize,
    stream: Stream,
    lines: LineSplitter,
    display: DisplayParser,
}

impl RankText {
    pub fn new(rank: usize, stream: Stream) -> RankText {
        RankText { rank, stream, lines: LineSplitter::default(), display: DisplayParser::default() }
    }

    /// Delivers the complete lines `bytes` end. Err: nobody listens any more.
    pub fn feed(&mut self, bytes: &[u8], deliver: Deliver) -> Result<(), NobodyListens> {
        let complete = self.lines.push(bytes);
        if complete.is_empty() {
            return Ok(());
        }
        send(complete, self.rank, self.stream, &mut self.display, deliver)
    }

    /// Delivers what is left: a last unterminated line, an unfinished display block as text.
    pub fn finish(mut self, deliver: Deliver) {
        let mut rest = self.lines.finish();
        rest.extend(self.display.abandon());
        if !rest.is_empty() {
            let _ = send(rest, self.rank, self.stream, &mut DisplayParser::default(), deliver);
        }
    }
}

/// Splits bytes into lines as they come.
#[derive(Default)]
struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        while !bytes.is_empty() {
            let room = MAX_LINE - self.partial.len();
            let (take, newline) = match bytes.iter().take(room).position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (bytes.len().min(room), false),
            };
            let (piece, rest) = bytes.split_at(take);
            bytes = rest;
            self.partial.extend_from_slice(if newline { &piece[..piece.len() - 1] } else { piece });
            if newline || self.partial.len() >= MAX_LINE {
                lines.push(String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned());
            }
        }
        lines
    }

    fn finish(&mut self) -> Vec<String> {
        if self.partial.is_empty() { vec![] } else { vec![String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned()] }
    }
}

/// Sends lines, turning display blocks on stdout into displays. Err: nobody listens.
fn send(lines: Vec<String>, rank: usize, stream: Stream, display: &mut DisplayParser, deliver: Deliver) -> Result<(), NobodyListens> {
    let tx = |o| if deliver(o) { Ok(()) } else { Err(NobodyListens) };
    if stream == Stream::Stderr {
        return tx(Output::Lines(rank, stream, lines));
    }
    let mut text = Vec::new();
    for line in lines {
        match display.feed(line) {
            Fed::Text(t) => text.extend(t),
            Fed::Consumed => {}
            Fed::Control(op) => {
                if !text.is_empty() {
                    tx(Output::Lines(rank, stream, std::mem::take(&mut text)))?;
                }
                tx(Output::Control(rank, op))?;
            }
            Fed::Block(data) => {
                if !text.is_empty() {
                    tx(Output::Lines(rank, stream, std::mem::take(&mut text)))?;
                }
                tx(Output::Display(rank, data))?;
            }
        }
    }
    if !text.is_empty() {
        tx(Output::Lines(rank, stream, text))?;
    }
    Ok(())
}

#[derive(Default)]
struct DisplayParser {
    /// (mime, the block's lines, their size)
    block: Option<(String, Vec<String>, usize)>,
}

enum Fed {
    Text(Vec<String>),
    Consumed,
    Block(Map<String, Value>),
    Control(DisplayOp),
}

use ranch::__rt::evcxr_lines::{BEGIN_CONTENT as BEGIN, END_CONTENT as END};

impl DisplayParser {
    fn feed(&mut self, line: String) -> Fed {
        if let Some((mime, mut body, size)) = self.block.take() {
            if line == END {
                if mime == display_op::CONTROL_MIME {
                    return display_op::parse(&body.join("\n")).map_or(Fed::Consumed, Fed::Control);
                }
                let mut data = Map::new();
                data.insert(mime, Value::String(body.join("\n")));
                return Fed::Block(data);
            }
            let size = size + line.len() + 1;
            body.push(line);
            if size > MAX_BLOCK {
                // Too big to be a display: what it was is shown as text.
                self.block = Some((mime, body, size));
                return Fed::Text(self.abandon());
            }
            self.block = Some((mime, body, size));
            return Fed::Consumed;
        }
        match line.strip_prefix(BEGIN) {
            Some(mime) => {
                self.block = Some((mime.trim().to_string(), Vec::new(), 0));
                Fed::Consumed
            }
            None => Fed::Text(vec![line]),
        }
    }

    /// An unfinished block's lines, as text.
    fn abandon(&mut self) -> Vec<String> {
        match self.block.take() {
            Some((mime, body, _)) => std::iter::once(format!("{BEGIN}{mime}")).chain(body).collect(),
            None => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_in_the_pipe_is_read_even_when_the_reader_comes_late() {
        // The writer exited long ago, but something it left holds the pipe open: what was
        // written is read, then the reader stops instead of waiting.
        let (read, write) = nix::unistd::pipe().unwrap();
        let mut writer = std::fs::File::from(write);
        std::io::Write::write_all(&mut writer, b"Process name: [[1,1],1]\nExit code: 3\n").unwrap();
        let exited = OnceLock::new();
        exited.set(Instant::now() - DRAIN_AFTER_EXIT * 4).unwrap();
        let mut got = Vec::new();
        let started = Instant::now();
        read_with(std::fs::File::from(read), &exited, |b| {
            got.extend_from_slice(b);
            Ok(())
        });
        assert_eq!(got, b"Process name: [[1,1],1]\nExit code: 3\n");
        assert!(started.elapsed() < Duration::from_millis(200), "{:?}", started.elapsed());
        drop(writer);
    }

    #[test]
    fn lines_are_split_as_bytes_arrive_and_long_ones_are_cut() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"ab"), Vec::<String>::new());
        assert_eq!(s.push(b"c\nd\n\ne"), vec!["abc", "d", ""]);
        assert_eq!(s.finish(), vec!["e"]);
        let long = vec![b'x'; MAX_LINE + 10];
        let pieces = s.push(&long);
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0].len(), MAX_LINE);
        assert_eq!(s.finish(), vec!["x".repeat(10)]);
    }

    #[test]
    fn a_long_line_costs_linear_time() {
        let mut s = LineSplitter::default();
        let t = Instant::now();
        for _ in 0..(MAX_LINE / 16) {
            s.push(&[b'y'; 16]);
        }
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[test]
    fn display_blocks_and_oversized_ones() {
        let mut p = DisplayParser::default();
        assert!(matches!(p.feed(format!("{BEGIN}text/html")), Fed::Consumed));
        assert!(matches!(p.feed("<b>".into()), Fed::Consumed));
        match p.feed(END.into()) {
            Fed::Block(d) => assert_eq!(d["text/html"], "<b>"),
            _ => panic!("a block"),
        }
        assert!(matches!(p.feed(format!("{BEGIN}text/plain")), Fed::Consumed));
        let line = "z".repeat(MAX_LINE);
        let mut shown = None;
        for _ in 0..(MAX_BLOCK / MAX_LINE + 1) {
            if let Fed::Text(t) = p.feed(line.clone()) {
                shown = Some(t);
                break;
            }
        }
        let shown = shown.expect("shown as text once too big");
        assert_eq!(shown[0], format!("{BEGIN}text/plain"));
        assert!(p.block.is_none());
    }
}
