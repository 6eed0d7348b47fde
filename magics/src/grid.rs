//! Every table ranch shows (the live status board, the failure table, values by rank, the
//! pool's status, `%ranch_gpus`): one renderer for both forms a notebook keeps, so all of
//! them escape and align alike. `text/plain` has columns padded to their widest cell;
//! `text/html` escapes every cell that is text.

use std::fmt::Write as _;

/// Text made safe inside HTML elements and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One cell: its text (for `text/plain`) and its markup (for `text/html`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    text: String,
    html: String,
    style: Option<String>,
}

impl Cell {
    /// Text, escaped for HTML.
    pub fn text(text: impl Into<String>) -> Cell {
        let text = text.into();
        Cell { html: escape(&text), text, style: None }
    }

    /// Preformatted text (values, a rank's last lines): kept as written in HTML too.
    pub fn pre(text: impl Into<String>) -> Cell {
        let text = text.into();
        Cell { html: format!("<pre>{}</pre>", escape(&text)), text, style: None }
    }

    /// `text` in `text/plain`, and markup ranch made (never a rank's text) in `text/html`.
    pub fn markup(text: impl Into<String>, html: impl Into<String>) -> Cell {
        Cell { text: text.into(), html: html.into(), style: None }
    }

    /// A CSS style for the HTML cell (a colour).
    pub fn style(mut self, css: &str) -> Cell {
        self.style = Some(css.to_string());
        self
    }
}

/// A table: a header and rows of cells.
#[derive(Debug, Clone)]
pub struct Grid {
    head: Vec<&'static str>,
    /// Columns aligned left in HTML: notebooks right-align table cells, which suits numbers,
    /// not messages.
    left: Vec<bool>,
    class: Option<&'static str>,
    style: Option<&'static str>,
    rows: Vec<Vec<Cell>>,
}

impl Grid {
    pub fn new(head: &[&'static str]) -> Grid {
        Grid { head: head.to_vec(), left: vec![false; head.len()], class: None, style: None, rows: Vec::new() }
    }

    /// The HTML table's class, by which readers and tests find it (`ranch-status`).
    pub fn class(mut self, class: &'static str) -> Grid {
        self.class = Some(class);
        self
    }

    /// The HTML table's style.
    pub fn style(mut self, css: &'static str) -> Grid {
        self.style = Some(css);
        self
    }

    /// Aligns these columns left in HTML.
    pub fn left(mut self, columns: &[usize]) -> Grid {
        for &c in columns {
            self.left[c] = true;
        }
        self
    }

    /// Aligns every column left in HTML.
    pub fn all_left(mut self) -> Grid {
        self.left.fill(true);
        self
    }

    /// Adds a row; missing cells are empty, extra ones are dropped.
    pub fn row(&mut self, cells: impl IntoIterator<Item = Cell>) {
        let mut cells: Vec<Cell> = cells.into_iter().take(self.head.len()).collect();
        cells.resize(self.head.len(), Cell::text(""));
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The header and the rows as lines of columns two spaces apart, each padded to its
    /// widest cell (in characters); no line ends in spaces.
    pub fn text(&self) -> String {
        let width = |c: usize| self.rows.iter().map(|r| r[c].text.chars().count()).chain([self.head[c].chars().count()]).max().unwrap_or(0);
        let widths: Vec<usize> = (0..self.head.len()).map(width).collect();
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let padded: Vec<String> = cells.zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            padded.join("  ").trim_end().to_string()
        };
        let mut lines = vec![line(&mut self.head.iter().copied())];
        lines.extend(self.rows.iter().map(|r| line(&mut r.iter().map(|c| c.text.as_str()))));
        lines.join("\n")
    }

    pub fn html(&self) -> String {
        let align = |c: usize| if self.left[c] { " style=\"text-align:left\"" } else { "" };
        let mut h = String::from("<table");
        if let Some(class) = self.class {
            let _ = write!(h, " class=\"{class}\"");
        }
        if let Some(style) = self.style {
            let _ = write!(h, " style=\"{style}\"");
        }
        h.push_str("><thead><tr>");
        for (c, name) in self.head.iter().enumerate() {
            let _ = write!(h, "<th{}>{}</th>", align(c), escape(name));
        }
        h.push_str("</tr></thead><tbody>");
        for row in &self.rows {
            h.push_str("<tr>");
            for (c, cell) in row.iter().enumerate() {
                let css: Vec<String> =
                    self.left[c].then(|| "text-align:left".to_string()).into_iter().chain(cell.style.as_deref().map(escape)).collect();
                let style = if css.is_empty() { String::new() } else { format!(" style=\"{}\"", css.join(";")) };
                let _ = write!(h, "<td{style}>{}</td>", cell.html);
            }
            h.push_str("</tr>");
        }
        h.push_str("</tbody></table>");
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_elements_and_both_quotes() {
        assert_eq!(escape(r#"<a href="x" title='y'>&</a>"#), "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;");
    }

    #[test]
    fn text_pads_columns_by_characters_and_trims_line_ends() {
        let mut g = Grid::new(&["rank", "state", "last"]);
        g.row([Cell::text("0"), Cell::text("é done"), Cell::text("")]);
        g.row([Cell::text("10"), Cell::text("x")]);
        assert_eq!(g.text(), "rank  state   last\n0     é done\n10    x");
    }

    #[test]
    fn html_escapes_text_keeps_markup_and_aligns_left_columns() {
        let mut g = Grid::new(&["rank", "message"]).class("ranch-failure").left(&[1]);
        g.row([Cell::text("0"), Cell::text("<b>boom</b>")]);
        g.row([Cell::markup("#", "<i>bar</i>").style("color:red"), Cell::pre("a\nb")]);
        let h = g.html();
        assert!(h.starts_with("<table class=\"ranch-failure\"><thead><tr><th>rank</th><th style=\"text-align:left\">message</th>"), "{h}");
        assert!(h.contains("<td style=\"text-align:left\">&lt;b&gt;boom&lt;/b&gt;</td>"), "{h}");
        assert!(h.contains("<td style=\"color:red\"><i>bar</i></td><td style=\"text-align:left\"><pre>a\nb</pre></td>"), "{h}");
    }
}
