//! The inputs of this kernel session, for `history_request`. Bounded: the oldest inputs go
//! first, and a search does a bounded amount of work whatever the pattern.

use jupyter_protocol::HistoryRequest;
use serde_json::{Value, json};
use std::collections::VecDeque;

/// Inputs kept, at most (count, and bytes of code).
const MAX_ENTRIES: usize = 10_000;
const MAX_BYTES: usize = 32 << 20;
/// Longest search pattern.
pub const MAX_PATTERN: usize = 1024;
/// Character comparisons one search may make; past it, the matches found so far are the
/// answer.
const SEARCH_BUDGET: u64 = 50_000_000;

#[derive(Default)]
pub struct History {
    /// (execution count, code)
    entries: VecDeque<(usize, String)>,
    bytes: usize,
}

impl History {
    pub fn record(&mut self, n: usize, code: &str) {
        self.entries.push_back((n, code.to_string()));
        self.bytes += code.len();
        while self.entries.len() > MAX_ENTRIES || self.bytes > MAX_BYTES {
            let Some((_, old)) = self.entries.pop_front() else { break };
            self.bytes -= old.len();
        }
    }

    /// The `history` list of a `history_reply`: `[session, line, input]` triples, or
    /// `[session, line, [input, output]]` when output was asked for (outputs are not kept).
    /// Err: the request cannot be served (a search pattern over [`MAX_PATTERN`] chars).
    pub fn answer(&self, req: &HistoryRequest) -> Result<Vec<Value>, String> {
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
                let glob = Glob::new(pattern)?;
                let mut budget = SEARCH_BUDGET;
                let mut hits: Vec<&(usize, String)> = self.entries.iter().filter(|(_, code)| glob.matches(code, &mut budget)).collect();
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
        Ok(picked.into_iter().map(|(n, code)| if output { json!([0, n, [code, null]]) } else { json!([0, n, code]) }).collect())
    }
}

/// A shell-style glob (`*`, `?`), as IPython's history search uses.
struct Glob(Vec<char>);

impl Glob {
    fn new(pattern: &str) -> Result<Glob, String> {
        // Runs of `*` mean one `*`.
        let mut p: Vec<char> = Vec::new();
        for c in pattern.chars() {
            if !(c == '*' && p.last() == Some(&'*')) {
                p.push(c);
            }
            if p.len() > MAX_PATTERN {
                return Err(format!("the search pattern is longer than {MAX_PATTERN} characters"));
            }
        }
        Ok(Glob(p))
    }

    /// Iterative matching (no recursion), backtracking only to the last `*`: at most
    /// text x pattern steps, each taken from `budget`; false once it is spent.
    fn matches(&self, text: &str, budget: &mut u64) -> bool {
        let (p, t): (&[char], Vec<char>) = (&self.0, text.chars().collect());
        let (mut pi, mut ti) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if *budget == 0 {
                return false;
            }
            *budget -= 1;
            match p.get(pi) {
                Some('*') => {
                    star = Some((pi + 1, ti));
                    pi += 1;
                }
                Some(&c) if c == '?' || c == t[ti] => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((after, from)) => {
                        pi = after;
                        ti = from + 1;
                        star = Some((after, from + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

#[cfg(test)]
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut budget = u64::MAX;
    Glob::new(pattern).unwrap().matches(text, &mut budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*rank*", "let r = ranch::rank();"));
        assert!(glob_match("l?t*", "let x"));
        assert!(!glob_match("fn*", "let x"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("6 * *", "6 * 7"));
        assert!(glob_match("??", "ab") && !glob_match("??", "abc"));
    }

    #[test]
    fn pathological_patterns_are_bounded() {
        let long_cell = "a".repeat(100_000);
        let t = std::time::Instant::now();
        assert!(!glob_match("*a*a*a*a*a*a*a*a*a*a*b", &long_cell));
        assert!(glob_match(&"*".repeat(100_000), &long_cell), "runs of * are one *");
        assert!(Glob::new(&"a*".repeat(1000)).is_err());
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn history_is_bounded() {
        let mut h = History::default();
        for i in 0..(MAX_ENTRIES + 5) {
            h.record(i, "x");
        }
        assert_eq!(h.entries.len(), MAX_ENTRIES);
        assert_eq!(h.entries.front().unwrap().0, 5);
    }

    #[test]
    fn tail_returns_the_last_n() {
        let mut h = History::default();
        for i in 1..=5 {
            h.record(i, &format!("cell {i}"));
        }
        let req: HistoryRequest =
            serde_json::from_value(json!({"hist_access_type": "tail", "n": 2, "output": false, "raw": true})).unwrap();
        assert_eq!(h.answer(&req).unwrap(), vec![json!([0, 4, "cell 4"]), json!([0, 5, "cell 5"])]);
    }
}
