//! The inputs of this kernel session, for `history_request`.

use jupyter_protocol::HistoryRequest;
use serde_json::{Value, json};

#[derive(Default)]
pub struct History {
    /// (execution count, code)
    entries: Vec<(usize, String)>,
}

impl History {
    pub fn record(&mut self, n: usize, code: &str) {
        self.entries.push((n, code.to_string()));
    }

    /// The `history` list of a `history_reply`: `[session, line, input]` triples, or
    /// `[session, line, [input, output]]` when output was asked for (outputs are not kept).
    pub fn answer(&self, req: &HistoryRequest) -> Vec<Value> {
        let (output, picked): (bool, Vec<&(usize, String)>) = match req {
            HistoryRequest::Tail { n, output, .. } => {
                let n = (*n).max(0) as usize;
                (*output, self.entries.iter().skip(self.entries.len().saturating_sub(n)).collect())
            }
            HistoryRequest::Range { start, stop, output, .. } => {
                let (start, stop) = (*start as i64, *stop as i64);
                let inside = |n: usize| (n as i64) >= start && (stop <= 0 || (n as i64) < stop);
                (*output, self.entries.iter().filter(|(n, _)| inside(*n)).collect())
            }
            HistoryRequest::Search { pattern, unique, output, n, .. } => {
                let mut hits: Vec<&(usize, String)> =
                    self.entries.iter().filter(|(_, code)| glob_match(pattern, code)).collect();
                if *unique {
                    let mut seen = std::collections::HashSet::new();
                    hits.retain(|(_, code)| seen.insert(code.clone()));
                }
                let n = (*n).max(0) as usize;
                if n > 0 && hits.len() > n {
                    hits.drain(..hits.len() - n);
                }
                (*output, hits)
            }
        };
        picked
            .into_iter()
            .map(|(n, code)| if output { json!([0, n, [code, null]]) } else { json!([0, n, code]) })
            .collect()
    }
}

/// IPython's history search uses shell-style globs (`*`, `?`).
fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
            Some(('?', rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*rank*", "let r = ranch::rank();"));
        assert!(glob_match("l?t*", "let x"));
        assert!(!glob_match("fn*", "let x"));
    }

    #[test]
    fn tail_returns_the_last_n() {
        let mut h = History::default();
        for i in 1..=5 {
            h.record(i, &format!("cell {i}"));
        }
        let req: HistoryRequest =
            serde_json::from_value(json!({"hist_access_type": "tail", "n": 2, "output": false, "raw": true}))
                .unwrap();
        assert_eq!(h.answer(&req), vec![json!([0, 4, "cell 4"]), json!([0, 5, "cell 5"])]);
    }
}
