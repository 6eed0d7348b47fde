//! Jupyter counts cursor positions in Unicode code points; Rust strings index bytes.

/// Byte offset of the `chars`-th code point (clamped to the end).
pub fn byte_offset(s: &str, chars: usize) -> usize {
    s.char_indices().nth(chars).map_or(s.len(), |(i, _)| i)
}

/// Number of code points before byte offset `bytes` (clamped, rounded down to a boundary).
pub fn char_offset(s: &str, bytes: usize) -> usize {
    let mut b = bytes.min(s.len());
    while !s.is_char_boundary(b) {
        b -= 1;
    }
    s[..b].chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_multibyte_text() {
        let s = "let é = \"🦀\"; x";
        for chars in 0..=s.chars().count() {
            assert_eq!(char_offset(s, byte_offset(s, chars)), chars);
        }
        assert_eq!(byte_offset(s, 5), "let é".len());
        assert_eq!(byte_offset(s, 1000), s.len());
    }
}
