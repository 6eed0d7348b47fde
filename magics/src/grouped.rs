//! `--group-outputs rank|type`: each rank's output kept while the ranks run and shown when
//! they end, rank by rank or stream by stream; bounded per rank, with what did not fit
//! counted and said.

use crate::ranks::rank_output::Stream;

/// Most bytes of one rank's output kept for `--group-outputs rank`.
pub const GROUPED_LIMIT: usize = 16 << 20;

/// One rank's output kept for `--group-outputs rank`, up to [`GROUPED_LIMIT`].
#[derive(Debug, Default)]
pub struct Grouped {
    text: [String; 2],
    dropped_lines: usize,
    dropped_bytes: usize,
}

impl Grouped {
    /// Keeps `text` (already labelled with its rank), of `lines` lines, if it fits.
    pub fn keep(&mut self, stream: Stream, text: String, lines: usize) {
        if self.text[0].len() + self.text[1].len() + text.len() > GROUPED_LIMIT {
            self.dropped_lines += lines;
            self.dropped_bytes += text.len();
        } else {
            self.text[stream as usize].push_str(&text);
        }
    }

    /// Hands what was kept of rank `rank` to `emit`: its stdout, its stderr, then a note of
    /// what did not fit.
    pub fn show(&self, rank: usize, mut emit: impl FnMut(Stream, &str)) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            self.show_stream(stream, &mut emit);
        }
        self.show_dropped(rank, emit);
    }

    /// Hands what was kept of one stream to `emit`.
    pub fn show_stream(&self, stream: Stream, mut emit: impl FnMut(Stream, &str)) {
        let text = &self.text[stream as usize];
        if !text.is_empty() {
            emit(stream, text);
        }
    }

    /// Hands a note of what did not fit of rank `rank`, if anything, to `emit`.
    pub fn show_dropped(&self, rank: usize, mut emit: impl FnMut(Stream, &str)) {
        if self.dropped_lines > 0 {
            let note = format!(
                "[{rank}] ... {} more lines ({} bytes) not shown: --group-outputs keeps {} MiB per rank\n",
                self.dropped_lines,
                self.dropped_bytes,
                GROUPED_LIMIT >> 20
            );
            emit(Stream::Stderr, &note);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_output_comes_back_by_stream_then_what_did_not_fit() {
        let mut g = Grouped::default();
        g.keep(Stream::Stderr, "[3] warn\n".into(), 1);
        g.keep(Stream::Stdout, "[3] a\n".into(), 1);
        g.keep(Stream::Stdout, "x".repeat(GROUPED_LIMIT), 7);
        let mut shown = Vec::new();
        g.show(3, |s, t| shown.push((s, t.to_string())));
        assert_eq!(shown[0], (Stream::Stdout, "[3] a\n".to_string()));
        assert_eq!(shown[1], (Stream::Stderr, "[3] warn\n".to_string()));
        assert!(shown[2].1.starts_with("[3] ... 7 more lines (16777216 bytes) not shown"), "{shown:?}");
    }
}
