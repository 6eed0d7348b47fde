//! A launcher's output, split back into its ranks' streams.
//!
//! `mpirun --tag-output` starts every piece of a rank's output with `[job,rank]<stdout>:`
//! (a piece may end without a newline, and the next rank's tag then follows on the same
//! line); `srun --label` starts every line with `rank: `. What carries no tag is the
//! launcher's own text (its error reports). Bounded as a rank's own pipe is: each rank's
//! lines go through a [`RankText`], and the launcher's lines are cut at [`MAX_LINE`].

use crate::ranks::rank_output::{Deliver, MAX_LINE, RankText, Stream};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagFormat {
    /// Open MPI's `--tag-output`: `[1,3]<stdout>:`, `<stderr>:`, `<stddiag>:`.
    OpenMpi,
    /// Slurm's `--label`: `3: ` (padded with spaces to the width of the largest rank).
    Slurm,
}

/// Longest tag looked for (`[4294967295,4294967295]<stddiag>:` fits).
const MAX_TAG: usize = 40;

enum Tag {
    /// A rank's tag of `len` bytes: what follows is that rank's, on `stream`.
    Rank { rank: usize, stream: Option<Stream>, len: usize },
    /// No tag starts here.
    None,
    /// Could be a tag: more bytes are needed to tell.
    Unfinished,
}

fn digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

fn number(b: &[u8]) -> Option<usize> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Whether `b` starts with a tag (`b` is what is buffered; `Unfinished` when it ends
/// before the tag could be told from text).
fn tag_at(format: TagFormat, b: &[u8]) -> Tag {
    let unfinished = |at: usize| if at >= b.len() && b.len() < MAX_TAG { Tag::Unfinished } else { Tag::None };
    match format {
        TagFormat::OpenMpi => {
            if b.first() != Some(&b'[') {
                return Tag::None;
            }
            let job = digits(&b[1..]);
            let mut at = 1 + job;
            if job == 0 || b.get(at) != Some(&b',') {
                return unfinished(at);
            }
            at += 1;
            let rank_len = digits(&b[at..]);
            let rank = number(&b[at..at + rank_len]);
            at += rank_len;
            if rank_len == 0 || b.get(at) != Some(&b']') {
                return unfinished(at);
            }
            at += 1;
            for (word, stream) in [("<stdout>:", Some(Stream::Stdout)), ("<stderr>:", Some(Stream::Stderr)), ("<stddiag>:", None)] {
                let rest = &b[at..];
                if rest.starts_with(word.as_bytes()) {
                    return match rank {
                        Some(rank) => Tag::Rank { rank, stream, len: at + word.len() },
                        None => Tag::None,
                    };
                }
                if word.as_bytes().starts_with(rest) {
                    return unfinished(b.len());
                }
            }
            Tag::None
        }
        TagFormat::Slurm => {
            let spaces = b.iter().take_while(|&&c| c == b' ').count();
            let n = digits(&b[spaces..]);
            let at = spaces + n;
            if n == 0 || b.get(at) != Some(&b':') {
                return unfinished(at);
            }
            if b.get(at + 1).is_none() {
                return unfinished(b.len());
            }
            let len = at + 1 + usize::from(b[at + 1] == b' ');
            match number(&b[spaces..at]) {
                Some(rank) => Tag::Rank { rank, stream: None, len },
                None => Tag::None,
            }
        }
    }
}

/// Splits one of the launcher's pipes (its stdout or its stderr) into the ranks' streams.
pub struct Demux<'a> {
    format: TagFormat,
    /// Ranks the launch started: a tag naming another is text.
    ranks: usize,
    /// The stream this pipe carries when a tag does not say.
    stream: Stream,
    deliver: Deliver<'a>,
    /// What the launcher says itself, line by line.
    launcher_line: &'a dyn Fn(&str),
    texts: HashMap<(usize, Stream), RankText>,
    /// Whose bytes these are now: `None` is the launcher's own text.
    current: Option<(usize, Stream)>,
    /// Bytes that may be the start of a tag.
    carry: Vec<u8>,
    /// The launcher's unfinished line.
    own: Vec<u8>,
    line_start: bool,
}

impl<'a> Demux<'a> {
    pub fn new(format: TagFormat, ranks: usize, stream: Stream, deliver: Deliver<'a>, launcher_line: &'a dyn Fn(&str)) -> Demux<'a> {
        Demux {
            format,
            ranks,
            stream,
            deliver,
            launcher_line,
            texts: HashMap::new(),
            current: None,
            carry: Vec::new(),
            own: Vec::new(),
            line_start: true,
        }
    }

    /// Takes bytes as they come. Err: nobody listens any more.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), crate::ranks::rank_output::NobodyListens> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(bytes);
        let mut at = 0;
        let mut run = 0; // start of the bytes not yet passed on
        while at < buf.len() {
            // Open MPI tags may follow a piece without a newline; Slurm's start lines.
            let may_tag = self.line_start || (self.format == TagFormat::OpenMpi && buf[at] == b'[');
            if may_tag {
                match tag_at(self.format, &buf[at..]) {
                    Tag::Unfinished => {
                        self.pass(&buf[run..at])?;
                        self.carry = buf[at..].to_vec();
                        return Ok(());
                    }
                    Tag::Rank { rank, stream, len } if rank < self.ranks => {
                        self.pass(&buf[run..at])?;
                        self.current = Some((rank, stream.unwrap_or(self.stream)));
                        at += len;
                        run = at;
                        self.line_start = false;
                        continue;
                    }
                    _ => {}
                }
            }
            if self.line_start {
                // A line that starts without a tag is the launcher's.
                self.pass(&buf[run..at])?;
                run = at;
                self.current = None;
                self.line_start = false;
            }
            let newline = buf[at] == b'\n';
            at += 1;
            if newline {
                // The next line says whose it is (Open MPI tags every line of a piece).
                self.pass(&buf[run..at])?;
                run = at;
                self.line_start = true;
            }
        }
        self.pass(&buf[run..])
    }

    fn pass(&mut self, bytes: &[u8]) -> Result<(), crate::ranks::rank_output::NobodyListens> {
        if bytes.is_empty() {
            return Ok(());
        }
        match self.current {
            Some(key) => {
                let text = self.texts.entry(key).or_insert_with(|| RankText::new(key.0, key.1));
                text.feed(bytes, self.deliver)
            }
            None => {
                for &b in bytes {
                    if b == b'\n' || self.own.len() >= MAX_LINE {
                        (self.launcher_line)(&String::from_utf8_lossy(&self.own));
                        self.own.clear();
                    }
                    if b != b'\n' {
                        self.own.push(b);
                    }
                }
                Ok(())
            }
        }
    }

    /// The pipe closed: what is left is delivered.
    pub fn finish(mut self) {
        let carry = std::mem::take(&mut self.carry);
        let _ = self.pass(&carry);
        if !self.own.is_empty() {
            (self.launcher_line)(&String::from_utf8_lossy(&self.own));
        }
        let mut texts: Vec<_> = self.texts.drain().collect();
        texts.sort_by_key(|(k, _)| *k);
        for (_, text) in texts {
            text.finish(self.deliver);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranks::rank_output::Output;
    use std::sync::Mutex;

    /// Feeds `input` in pieces of `step` bytes; returns each rank's lines and the launcher's.
    fn split(format: TagFormat, input: &str, step: usize) -> (Vec<(usize, Stream, String)>, Vec<String>) {
        let got = Mutex::new(Vec::new());
        let own = Mutex::new(Vec::new());
        let deliver = |o: Output| {
            if let Output::Lines(r, s, lines) = o {
                got.lock().unwrap().extend(lines.into_iter().map(|l| (r, s, l)));
            }
            true
        };
        let launcher = |l: &str| own.lock().unwrap().push(l.to_string());
        let mut d = Demux::new(format, 2, Stream::Stdout, &deliver, &launcher);
        for piece in input.as_bytes().chunks(step) {
            d.feed(piece).unwrap();
        }
        d.finish();
        (got.into_inner().unwrap(), own.into_inner().unwrap())
    }

    #[test]
    fn open_mpi_tags_in_any_piece() {
        let input = "[1,0]<stdout>:out 0\n[1,0]<stdout>:partial[1,1]<stdout>:out 1\n[1,1]<stderr>:err 1\n\
                     ------\nmpirun noticed that process rank 1 exited\n[1,5]<stdout>:not ours\n[1,0]<stdout>: [x] ok\n";
        for step in [1, 3, 7, 1000] {
            let (ranks, own) = split(TagFormat::OpenMpi, input, step);
            let want = vec![
                (0, Stream::Stdout, "out 0".to_string()),
                (1, Stream::Stdout, "out 1".to_string()),
                (1, Stream::Stderr, "err 1".to_string()),
                // Rank 0's unfinished piece is the start of its next line.
                (0, Stream::Stdout, "partial [x] ok".to_string()),
            ];
            let mut sorted = ranks.clone();
            sorted.sort();
            let mut want_sorted = want.clone();
            want_sorted.sort();
            assert_eq!(sorted, want_sorted, "step {step}");
            assert_eq!(own, ["------", "mpirun noticed that process rank 1 exited", "[1,5]<stdout>:not ours"], "step {step}");
        }
    }

    #[test]
    fn slurm_labels_start_lines() {
        let input = " 0: hello\n 1: world\nsrun: error: node2: task 1: Exited with exit code 3\n10: too big\n1:x\n";
        for step in [1, 2, 1000] {
            let (ranks, own) = split(TagFormat::Slurm, input, step);
            assert_eq!(
                ranks,
                vec![(0, Stream::Stdout, "hello".into()), (1, Stream::Stdout, "world".into()), (1, Stream::Stdout, "x".into())],
                "step {step}"
            );
            assert_eq!(own, ["srun: error: node2: task 1: Exited with exit code 3", "10: too big"], "step {step}");
        }
    }
}
