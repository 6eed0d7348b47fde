//! What a cell's ranks wrote, labelled and in the order it came, kept (bounded) so that it
//! can be shown grouped as `--group-outputs` says (`order` as it comes, `rank` rank by
//! rank, `type` every rank's stdout then every rank's stderr) at the end of the cell, and
//! again, grouped another way, by `%ranch_output` afterwards.

use crate::args::GroupOutputs;
use crate::ranks::rank_output::Stream;

/// Most bytes of one rank's output kept.
pub const RANK_LIMIT: usize = 16 << 20;
/// Most bytes of a cell's output kept, all ranks together.
pub const CELL_LIMIT: usize = 64 << 20;

/// One piece of a rank's output: whole lines, labelled with the rank.
#[derive(Debug, Clone)]
struct Piece {
    row: usize,
    stream: Stream,
    text: String,
}

/// A cell's rank output, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    /// Each row's rank as the user knows it.
    ranks: Vec<usize>,
    pieces: Vec<Piece>,
    kept: Vec<usize>,
    total: usize,
    /// Per row: lines and bytes not kept.
    dropped: Vec<(usize, usize)>,
}

impl Transcript {
    pub fn new(ranks: Vec<usize>) -> Transcript {
        let n = ranks.len();
        Transcript { ranks, kept: vec![0; n], dropped: vec![(0, 0); n], ..Default::default() }
    }

    /// Keeps `text` (labelled, `lines` lines) of row `row`, if it fits.
    pub fn keep(&mut self, row: usize, stream: Stream, text: String, lines: usize) {
        if self.kept[row] + text.len() > RANK_LIMIT || self.total + text.len() > CELL_LIMIT {
            self.dropped[row].0 += lines;
            self.dropped[row].1 += text.len();
            return;
        }
        self.kept[row] += text.len();
        self.total += text.len();
        match self.pieces.last_mut() {
            // Consecutive pieces of one row and stream are one (fewer, larger outputs).
            Some(last) if last.row == row && last.stream == stream => last.text.push_str(&text),
            _ => self.pieces.push(Piece { row, stream, text }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty() && self.dropped.iter().all(|d| d.0 == 0)
    }

    /// Hands the output to `emit`, grouped as `how` says, then a note for each rank of what
    /// was not kept. `only`: the ranks to show (`None`: all).
    pub fn show(&self, how: GroupOutputs, only: Option<&[usize]>, mut emit: impl FnMut(Stream, &str)) {
        let shown = |row: usize| only.is_none_or(|ranks| ranks.contains(&self.ranks[row]));
        // The rows' text of one stream, each row's together, in row order.
        let mut emit_joined = |rows: &[usize], stream: Stream| {
            let mut text = String::new();
            for &row in rows.iter().filter(|&&row| shown(row)) {
                self.pieces.iter().filter(|p| p.stream == stream && p.row == row).for_each(|p| text.push_str(&p.text));
            }
            if !text.is_empty() {
                emit(stream, &text);
            }
        };
        let rows: Vec<usize> = (0..self.ranks.len()).collect();
        match how {
            GroupOutputs::Order => {
                for p in self.pieces.iter().filter(|p| shown(p.row)) {
                    emit(p.stream, &p.text);
                }
            }
            GroupOutputs::Rank => {
                for row in &rows {
                    emit_joined(std::slice::from_ref(row), Stream::Stdout);
                    emit_joined(std::slice::from_ref(row), Stream::Stderr);
                }
            }
            GroupOutputs::Type => {
                emit_joined(&rows, Stream::Stdout);
                emit_joined(&rows, Stream::Stderr);
            }
        }
        for (row, &(lines, bytes)) in self.dropped.iter().enumerate() {
            if lines > 0 && shown(row) {
                let note = format!(
                    "[{}] ... {lines} more lines ({bytes} bytes) not kept: ranch keeps {} MiB of a rank's output ({} MiB of a cell's)\n",
                    self.ranks[row],
                    RANK_LIMIT >> 20,
                    CELL_LIMIT >> 20
                );
                emit(Stream::Stderr, &note);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(t: &Transcript, how: GroupOutputs, only: Option<&[usize]>) -> Vec<(Stream, String)> {
        let mut out = Vec::new();
        t.show(how, only, |s, text| out.push((s, text.to_string())));
        out
    }

    #[test]
    fn one_transcript_shows_in_order_by_rank_or_by_stream() {
        let mut t = Transcript::new(vec![4, 5]);
        t.keep(1, Stream::Stdout, "[5] a\n".into(), 1);
        t.keep(0, Stream::Stdout, "[4] b\n".into(), 1);
        t.keep(0, Stream::Stderr, "[4] warn\n".into(), 1);
        t.keep(1, Stream::Stdout, "[5] c\n".into(), 1);
        t.keep(1, Stream::Stdout, "[5] d\n".into(), 1);
        let (out, err) = (Stream::Stdout, Stream::Stderr);
        assert_eq!(
            shown(&t, GroupOutputs::Order, None),
            [(out, "[5] a\n".into()), (out, "[4] b\n".into()), (err, "[4] warn\n".into()), (out, "[5] c\n[5] d\n".into())]
        );
        assert_eq!(
            shown(&t, GroupOutputs::Rank, None),
            [(out, "[4] b\n".into()), (err, "[4] warn\n".into()), (out, "[5] a\n[5] c\n[5] d\n".into())]
        );
        assert_eq!(shown(&t, GroupOutputs::Type, None), [(out, "[4] b\n[5] a\n[5] c\n[5] d\n".into()), (err, "[4] warn\n".into())]);
        assert_eq!(shown(&t, GroupOutputs::Rank, Some(&[5])), [(out, "[5] a\n[5] c\n[5] d\n".into())]);
    }

    #[test]
    fn what_does_not_fit_is_counted_and_said() {
        let mut t = Transcript::new(vec![3]);
        t.keep(0, Stream::Stdout, "[3] a\n".into(), 1);
        t.keep(0, Stream::Stdout, "x".repeat(RANK_LIMIT), 7);
        let out = shown(&t, GroupOutputs::Rank, None);
        assert_eq!(out[0].1, "[3] a\n");
        assert!(out[1].1.starts_with("[3] ... 7 more lines (16777216 bytes) not kept"), "{out:?}");
    }
}
