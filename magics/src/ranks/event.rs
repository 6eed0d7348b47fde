//! The one stream of events from running ranks and from evcxr's child: what the kernel's
//! listener reads (one JSON object per line on a Unix socket in the kernel's private
//! directory), from the session's own child, a pool's fan-out, and each pool rank.
//!
//! evcxr itself reads the child's stdout line by line and keeps only the last rich output
//! of each MIME type; this side channel carries partial lines as they are written, every
//! display block, panic messages, and how each pool rank ended.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader};

/// Environment variable telling a pool rank its rank (set by the fan-out or a relay); the
/// evcxr child that reads it is a pool rank rather than the session's own child.
pub const RANK_ENV: &str = "RANCH_POOL_RANK";

/// Environment variable naming the socket for the child.
pub const SOCKET_ENV: &str = "RANCH_OUTPUT_SOCKET";

/// Most bytes of one line read from evcxr's child or a pool rank (an event, a protocol
/// line): a display may be large, but nothing a cell writes is held without bound.
pub const MAX_LINE: u64 = 60 << 20;

/// Calls `each` with every line of `reader` (without its newline) until it returns false or
/// the input ends; a line longer than [`MAX_LINE`] is read to its end but not kept, and
/// `too_long` is told instead.
pub fn for_each_line(reader: impl std::io::Read, mut each: impl FnMut(Vec<u8>) -> bool, mut too_long: impl FnMut()) {
    use std::io::Read;
    let mut reader = BufReader::new(reader);
    loop {
        let mut line = Vec::new();
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line.ends_with(b"\n") || (line.len() as u64) < MAX_LINE => {
                if line.ends_with(b"\n") {
                    line.pop();
                }
                if !each(line) {
                    return;
                }
            }
            Ok(_) => {
                // Over the limit: the rest of the line goes, a buffer at a time.
                drop(line);
                loop {
                    let buf = match reader.fill_buf() {
                        Ok([]) | Err(_) => return,
                        Ok(buf) => buf,
                    };
                    let (used, end) = match buf.iter().position(|&b| b == b'\n') {
                        Some(i) => (i + 1, true),
                        None => (buf.len(), false),
                    };
                    reader.consume(used);
                    if end {
                        break;
                    }
                }
                too_long();
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Stdout(String),
    Stderr(String),
    Display(Map<String, Value>),
    /// A panic caught by evcxr's wrapper, with the panic message.
    Panic(String),
    /// The cell's code returned; everything it wrote was sent before this.
    Done,
    /// First event of a pool rank's connection: what follows is that rank's.
    Rank(usize),
    /// From a pool's fan-out process: its ranks' process ids, in rank order.
    PoolPids(Vec<u32>),
    /// From a pool's fan-out process whose ranks run on other hosts: each rank's host.
    PoolHosts(Vec<String>),
    /// From a pool's fan-out process: a rank's process ended in the middle of a cell.
    RankExited {
        rank: usize,
        how: String,
    },
    /// From a pool's fan-out process: a rank whose process ended was started again alone
    /// (process `pid`), without the variables it had.
    RankRestarted {
        rank: usize,
        pid: u32,
    },
    /// From a pool's fan-out process: the cell's ranks start running it now.
    Running,
    /// From a pool's fan-out process: microseconds from evcxr's `LOAD_AND_RUN` to the last
    /// rank's end of the cell (for benchmarks: the kernel logs it).
    Dispatched {
        ranks: usize,
        micros: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_with_a_bound_and_a_longer_one_is_skipped_whole() {
        let mut input = b"first\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE as usize + 5));
        input.extend(b"\nlast\nunfinished");
        let (mut lines, mut dropped) = (Vec::new(), 0);
        for_each_line(
            &input[..],
            |l| {
                lines.push(String::from_utf8(l).unwrap());
                true
            },
            || dropped += 1,
        );
        assert_eq!(lines, ["first", "last", "unfinished"]);
        assert_eq!(dropped, 1);
        let mut first = Vec::new();
        for_each_line(
            &b"a\nb\n"[..],
            |l| {
                first.push(l);
                false
            },
            || {},
        );
        assert_eq!(first, [b"a".to_vec()], "stops when told");
    }
}
