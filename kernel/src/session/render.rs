//! evcxr's compile errors as [`Diagnostic`]s, with columns on a line where the kernel
//! inserted text moved back to where the user wrote them.

use crate::syntax::Insertion;
use evcxr::CompilationError;
use ranch_magics::diagnostic::{Diagnostic, Label};

pub fn diagnostic(err: &CompilationError, inserted: Option<Insertion>) -> Diagnostic {
    let labels = err
        .spanned_messages()
        .iter()
        .filter_map(|m| {
            let span = m.span?;
            let (mut start, mut end) = (span.start_column, span.end_column);
            if let Some(ins) = inserted.filter(|i| i.line == span.start_line)
                && start >= ins.column + ins.len
            {
                start -= ins.len;
                end = end.saturating_sub(ins.len);
            }
            if span.end_line != span.start_line {
                end = usize::MAX; // clipped to the line when rendered
            }
            Some(Label { line: span.start_line, start_column: start, end_column: end, text: m.label.clone(), primary: m.is_primary })
        })
        .collect();
    Diagnostic {
        level: err.level().to_string(),
        code: err.code().map(str::to_string),
        message: err.message(),
        labels,
        notes: err.help().into_iter().map(|h| format!("help: {h}")).collect(),
        fallback: Some(err.rendered()),
    }
}
