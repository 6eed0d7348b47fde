use std::fmt;

/// Why a collective or message did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommError {
    /// The operation, e.g. `all_reduce`.
    pub op: &'static str,
    /// The ranks concerned (the ones that died, skipped, disagreed, or timed out).
    pub ranks: Vec<usize>,
    pub message: String,
}

impl CommError {
    pub fn new(op: &'static str, ranks: Vec<usize>, message: String) -> Self {
        CommError { op, ranks, message }
    }
}

impl fmt::Display for CommError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed", self.op)?;
        if !self.ranks.is_empty() {
            let ranks: Vec<String> = self.ranks.iter().map(|r| r.to_string()).collect();
            write!(f, " (rank{} {})", if self.ranks.len() == 1 { "" } else { "s" }, ranks.join(", "))?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for CommError {}
