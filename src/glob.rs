//! The one wildcard match of the configuration: sender patterns (`*@example.com`) and script
//! paths (`*/contact.php`, `*/wp-content/uploads/*`). Pure.

/// `*@example.com`, `*/wp-content/uploads/*`: case-insensitive; `*` matches any run of
/// characters, `/` included.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.to_ascii_lowercase();
    let t = text.to_ascii_lowercase();
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == t;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !t.starts_with(first)
        || !t[first.len()..].ends_with(last)
        || t.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &t[first.len()..t.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_an_empty_star_and_middle_parts_in_order() {
        assert!(glob_match("a*b", "ab"), "a star may match nothing");
        assert!(glob_match("*@x.org", "@x.org"));
        assert!(glob_match("a*x*x*c", "axxc"));
        assert!(
            !glob_match("a*x*x*c", "axc"),
            "each middle part needs its own place"
        );
        assert!(
            !glob_match("ab*ba", "aba"),
            "prefix and suffix may not overlap"
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("*@example.com", "info@EXAMPLE.com"));
        assert!(!glob_match("*@example.com", "info@example.com.evil"));
        assert!(glob_match("news-*@example.com", "news-2026@example.com"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(glob_match("exact@x", "exact@x"));
    }
}
