//! Compile errors as users read them, in rustc's layout, pointing at the cell's own lines.
//! Used for plain cells (from evcxr's errors) and rank programs (from cargo's JSON).

const RED: &str = "\x1b[1;31m";
const BLUE: &str = "\x1b[1;34m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// A place in the cell: 1-based line, 1-based columns (end exclusive), in chars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub line: usize,
    pub start_column: usize,
    pub end_column: usize,
    pub text: String,
    pub primary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// "error", "warning", ...
    pub level: String,
    pub code: Option<String>,
    pub message: String,
    /// Labels inside the cell; empty when the problem is elsewhere.
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
    /// rustc's own text, shown when no label is in the cell.
    pub fallback: Option<String>,
}

impl Diagnostic {
    /// One line for an error reply's `evalue`.
    pub fn summary(&self) -> String {
        match self.labels.iter().find(|l| l.primary).or(self.labels.first()) {
            Some(l) => format!("{} (cell line {})", self.message, l.line),
            None => self.message.clone(),
        }
    }

    /// The full report, with the cell's lines and carets.
    pub fn render(&self, cell: &str) -> String {
        if self.labels.is_empty()
            && let Some(text) = &self.fallback
        {
            return text.clone();
        }
        let lines: Vec<&str> = cell.lines().collect();
        let head = match &self.code {
            Some(code) => format!("{}[{code}]", self.level),
            None => self.level.clone(),
        };
        let mut out = format!("{RED}{head}{RESET}{BOLD}: {}{RESET}\n", self.message);
        let gutter = lines.len().max(1).to_string().len();
        let pad = " ".repeat(gutter);
        for label in &self.labels {
            let Some(text) = lines.get(label.line.wrapping_sub(1)) else { continue };
            let end = label.end_column.min(text.chars().count() + 1);
            let width = end.saturating_sub(label.start_column).max(1);
            let mark = if label.primary { "^" } else { "-" };
            out.push_str(&format!("{pad}{BLUE}-->{RESET} cell:{}:{}\n", label.line, label.start_column));
            out.push_str(&format!("{pad} {BLUE}|{RESET}\n"));
            out.push_str(&format!("{BLUE}{:>gutter$} |{RESET} {text}\n", label.line));
            out.push_str(&format!(
                "{pad} {BLUE}|{RESET} {}{RED}{}{RESET} {}\n",
                " ".repeat(label.start_column.saturating_sub(1)),
                mark.repeat(width),
                label.text
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("{pad} {BLUE}={RESET} {note}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_carets_under_the_cells_line() {
        let d = Diagnostic {
            level: "error".into(),
            code: Some("E0308".into()),
            message: "mismatched types".into(),
            labels: vec![Label { line: 2, start_column: 14, end_column: 20, text: "expected `i32`".into(), primary: true }],
            notes: vec!["help: use a number".into()],
            fallback: None,
        };
        let out = d.render("let a = 1;\nlet b: i32 = \"text\";");
        let plain: String = out.replace(RED, "").replace(BLUE, "").replace(BOLD, "").replace(RESET, "");
        assert!(plain.contains("error[E0308]: mismatched types"));
        assert!(plain.contains("--> cell:2:14"));
        assert!(plain.contains("2 | let b: i32 = \"text\";"));
        assert!(plain.contains(&format!("  | {}^^^^^^ expected `i32`", " ".repeat(13))));
        assert_eq!(d.summary(), "mismatched types (cell line 2)");
    }
}
