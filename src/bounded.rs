//! Bounds on what a caller's input can make mailgate store: every field whose size a customer
//! chooses (a script header, a subject, a Message-ID, a working directory) is cut before it
//! reaches a record, a backlog line or a counter, so that no record outgrows what its reader
//! reads and no customer fills the state filesystem with one header.

/// The longest prefix of `s` that fits `max` bytes, cut at a character boundary.
pub fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// What `marked` appends to a field it cut: a reader sees that the value is not whole.
pub const CUT_MARK: &str = "…[cut]";

/// `s` when it fits `max` bytes; else its prefix and `CUT_MARK`, `max` bytes at most in all.
pub fn marked(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut out = cut(s, max.saturating_sub(CUT_MARK.len()));
    out.push_str(CUT_MARK);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_that_fit_stay_whole_longer_ones_are_marked() {
        assert_eq!(marked("contact.php", 64), "contact.php");
        let long = "x".repeat(100);
        let m = marked(&long, 64);
        assert_eq!(m.len(), 64);
        assert!(m.ends_with(CUT_MARK));
        assert_eq!(cut("Jörg", 2), "J", "never inside a character");
    }

    proptest! {
        #[test]
        fn marked_never_exceeds_its_bound(s in ".{0,300}", max in 8usize..200) {
            let m = marked(&s, max);
            prop_assert!(m.len() <= max);
            prop_assert_eq!(m == s, s.len() <= max);
        }
    }
}
