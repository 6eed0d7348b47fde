//! A compile error's columns on a line where the kernel inserted text (see
//! [`crate::syntax`]), moved back to where the user wrote them.

use crate::syntax::Insertion;
use ranch_magics::diagnostic::Diagnostic;

pub fn unshift(mut diagnostic: Diagnostic, inserted: Option<Insertion>) -> Diagnostic {
    let Some(ins) = inserted else { return diagnostic };
    for label in diagnostic.labels.iter_mut().filter(|l| l.line == ins.line && l.start_column >= ins.column + ins.len) {
        label.start_column -= ins.len;
        label.end_column = label.end_column.saturating_sub(ins.len);
    }
    diagnostic
}
