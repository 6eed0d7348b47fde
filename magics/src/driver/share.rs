//! `%ranch_share NAME`: a session `Vec<T>` of plain numbers becomes a shared array
//! (`ranch::shared::Array<T>`, see the runtime's `shared`), which ranks on this host map
//! without copying: a cell that names it sends its name.

use super::{Driver, Host, Outcome, Session, usage};
use crate::ranks::supervise::Stream;
// Element types an array may hold: the runtime's `Plain` numbers.
use ranch::shared::PLAIN_TYPES as PLAIN;

/// The element type of `Vec<T>` when T is plain data (a number, or an array of numbers).
fn plain_element(ty: &str) -> Option<&str> {
    let inner = ty.trim().strip_prefix("Vec<")?.strip_suffix('>')?.trim();
    let element = match inner.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        Some(array) => array.split(';').next()?.trim(),
        None => inner,
    };
    PLAIN.contains(&element).then_some(inner)
}

impl Driver {
    /// `%ranch_share NAME`: the session's `NAME: Vec<T>` as a shared array of the same name.
    pub fn ranch_share(&mut self, session: &mut dyn Session, host: &dyn Host, name: &str) -> Outcome {
        session.add_runtime()?;
        let vars = session.variables()?;
        let Some((_, ty)) = vars.iter().find(|(n, _)| n == name) else {
            return Err(usage(format!("the session has no variable `{name}` to share")));
        };
        let Some(element) = plain_element(ty) else {
            return Err(usage(format!(
                "`{name}: {ty}` cannot be shared: a shared array holds plain numbers (a `Vec` of u8..u128, i8..i128, \
                 f32, f64, usize, isize, or arrays of them). Nothing was changed."
            )));
        };
        session.execute(&format!(
            "let {name} = ranch::shared::Array::<{element}>::from_slice({name:?}, &{name}).unwrap_or_else(|e| panic!(\"{{e}}\"));"
        ))?;
        host.stream(
            Stream::Stdout,
            &format!(
                "`{name}` is now a `ranch::shared::Array<{element}>` in shared memory (it derefs to `&[{element}]`): \
                 ranks on this host map it without copying (a cell naming `{name}` sends its name), and what they \
                 write is seen here.\n"
            ),
        );
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_vecs_of_plain_numbers_are_shared() {
        assert_eq!(plain_element("Vec<f64>"), Some("f64"));
        assert_eq!(plain_element("Vec<[f32; 3]>"), Some("[f32; 3]"));
        assert_eq!(plain_element("Vec<String>"), None);
        assert_eq!(plain_element("Vec<Vec<f64>>"), None);
        assert_eq!(plain_element("f64"), None);
    }
}
