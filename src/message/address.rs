//! RFC 5322 address lists: the recipients of `To:`/`Cc:`/`Bcc:` headers and of argv operands.
//!
//! This is a tolerant tokenizer, not a validator. It understands what real mailers put into
//! headers: display names (quoted or not, with commas inside quotes), comments (nested), angle
//! addresses with obsolete source routes, groups (`Team: a@x, b@y;`, `undisclosed-recipients:;`)
//! and domain literals (`a@[IPv6:::1]`). It returns the bare addr-specs in order.
//! Also the checks an address must pass before it goes into an SMTP command, and the glob
//! patterns of `allowed_senders`.

use crate::exit::{Exit, Failure};
use crate::glob::glob_match;

/// The addr-specs of an (unfolded) address-list header value or argv operand.
pub fn parse_list(input: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut item = Item::default();
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                item.push_text('"');
                while let Some(q) = chars.next() {
                    item.push_text(q);
                    match q {
                        '\\' => {
                            if let Some(esc) = chars.next() {
                                item.push_text(esc);
                            }
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '(' => skip_comment(&mut chars),
            '[' => {
                item.push_text('[');
                for d in chars.by_ref() {
                    item.push_text(d);
                    if d == ']' {
                        break;
                    }
                }
            }
            '<' => {
                let mut angle = String::new();
                while let Some(a) = chars.next() {
                    match a {
                        '>' => break,
                        '(' => skip_comment(&mut chars),
                        '"' => {
                            angle.push('"');
                            while let Some(q) = chars.next() {
                                angle.push(q);
                                if q == '\\' {
                                    if let Some(esc) = chars.next() {
                                        angle.push(esc);
                                    }
                                } else if q == '"' {
                                    break;
                                }
                            }
                        }
                        a if a.is_whitespace() => {}
                        a => angle.push(a),
                    }
                }
                item.angle = Some(strip_source_route(&angle).to_string());
            }
            ':' => {
                // A group's display name ends here; its members follow.
                item = Item::default();
            }
            ',' | ';' => {
                item.finish_into(&mut out);
                item = Item::default();
            }
            c => item.push_text(c),
        }
    }
    item.finish_into(&mut out);
    out
}

/// The addr-spec of a single address such as `-f 'Name <a@x>'`; `None` for the null sender
/// (`<>`, empty).
pub fn parse_single(input: &str) -> Option<String> {
    let trimmed = input.trim();
    if trimmed.is_empty() || trimmed == "<>" {
        return None;
    }
    parse_list(trimmed).into_iter().next()
}

/// `<@relay1,@relay2:user@x>` names `user@x`. The route ends at the first colon outside a
/// quoted string.
fn strip_source_route(angle: &str) -> &str {
    if !angle.starts_with('@') {
        return angle;
    }
    match find_unquoted(angle, ':') {
        Some(i) => &angle[i + 1..],
        None => angle,
    }
}

/// Where `target` first stands outside a quoted string (`"…"`, with `\\` escapes inside).
pub fn find_unquoted(text: &str, target: char) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            c if c == target && !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

fn skip_comment(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    let mut depth = 1usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
            _ => {}
        }
    }
}

/// One address between separators: either an angle address, or the text outside comments.
#[derive(Default)]
struct Item {
    text: String,
    angle: Option<String>,
}

impl Item {
    fn push_text(&mut self, c: char) {
        self.text.push(c);
    }

    fn finish_into(self, out: &mut Vec<String>) {
        let addr = match self.angle {
            Some(angle) => angle.trim().to_string(),
            None => remove_unquoted_whitespace(&self.text),
        };
        if !addr.is_empty() {
            out.push(addr);
        }
    }
}

/// `a @ example.com` (legal with CFWS) is `a@example.com`; `"john doe"@x` keeps its quoted space.
fn remove_unquoted_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_quotes = false;
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            escaped = false;
            out.push(c);
            continue;
        }
        match c {
            '\\' if in_quotes => {
                escaped = true;
                out.push(c);
            }
            '"' => {
                in_quotes = !in_quotes;
                out.push(c);
            }
            c if c.is_whitespace() && !in_quotes => {}
            c => out.push(c),
        }
    }
    out
}

/// A domain as DNS and Postfix treat it: ASCII case folded, the root's trailing dot(s)
/// dropped (`Alice.Example.` is `alice.example`).
pub fn canonical_domain(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// Every domain that mail from `addr` can reach the Internet in, canonical: the domain after
/// the last `@`, and the ones Postfix's rewriting makes of the local part where the domain is
/// local to it (`allow_percent_hack`: `ceo%alice.example@localhost`; `swap_bangpath`:
/// `alice.example!ceo@localhost`). Ownership is checked for each, so no spelling passes.
pub fn domains_reached(addr: &str) -> Vec<String> {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Vec::new();
    };
    let mut out = vec![canonical_domain(domain)];
    let local = local.trim_matches('"');
    if let Some((_, d)) = local.rsplit_once('%') {
        out.push(canonical_domain(d));
    }
    if let Some((d, _)) = local.split_once('!') {
        out.push(canonical_domain(d));
    }
    out.retain(|d| !d.is_empty());
    out.dedup();
    out
}

/// Whether the sender `addr` matches the `allowed_senders` pattern, its domain taken as DNS
/// takes it (`ceo@Alice.Example.` matches `*@alice.example`).
pub fn sender_matches(pattern: &str, addr: &str) -> bool {
    match addr.rsplit_once('@') {
        Some((local, domain)) => {
            glob_match(pattern, &format!("{local}@{}", canonical_domain(domain)))
        }
        None => glob_match(pattern, addr),
    }
}

/// The sender's address for `-f`/`-r`/`MAIL FROM`: `None` is the null sender.
pub fn parse_sender(raw: &str) -> Result<Option<String>, Failure> {
    check_raw_address(raw)
        .map_err(|why| Failure::new(Exit::NoUser, format!("invalid sender {raw:?}: {why}")))?;
    let addr = parse_single(raw);
    if let Some(a) = &addr {
        check_address(a)
            .map_err(|why| Failure::new(Exit::NoUser, format!("invalid sender {raw:?}: {why}")))?;
    }
    Ok(addr)
}

/// An address as the caller wrote it (an argv operand, `-f`, an SMTP path) must not hold
/// control characters: `a@x\r\nRCPT TO:<b@y>` is malformed, never read as a group that
/// names `b@y`. (Tabs are whitespace in a header-style list.)
pub fn check_raw_address(raw: &str) -> Result<(), String> {
    match raw.chars().find(|c| c.is_control() && *c != '\t') {
        Some(c) => Err(format!("address contains the control character {c:?}")),
        None => Ok(()),
    }
}

/// No control characters or angle brackets: an address goes verbatim into an SMTP command.
pub fn check_address(addr: &str) -> Result<(), String> {
    if addr.len() > 512 {
        return Err("address longer than 512 bytes".into());
    }
    if let Some(c) = addr
        .chars()
        .find(|c| c.is_control() || matches!(c, '<' | '>'))
    {
        return Err(format!("address contains {c:?}"));
    }
    Ok(())
}

/// Where Postfix's cleanup would append `@origin` in an address-list header value: the byte
/// offsets just after every addr-spec that has no domain (`root`, `root (Cron Daemon)`,
/// `Cron Daemon <root>`, `Team: a, b;`). Everything else of the value stays byte for byte, so
/// the caller inserts at these offsets (from the last to the first) and changes nothing more.
/// Works on raw bytes: a header may hold 8-bit text, and every RFC 5322 special is ASCII.
pub fn unqualified_ends(value: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut item = Spans::default();
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'"' => {
                let start = i;
                i = skip_quoted(value, i);
                item.text(start, i);
                continue;
            }
            b'(' => {
                i = skip_comment_bytes(value, i);
                item.gap();
                continue;
            }
            b'[' => {
                let start = i;
                i = value[i..]
                    .iter()
                    .position(|&b| b == b']')
                    .map_or(value.len(), |p| i + p + 1);
                item.text(start, i);
                continue;
            }
            b'<' => {
                let start = i + 1;
                let mut j = start;
                while j < value.len() && value[j] != b'>' {
                    j = match value[j] {
                        b'"' => skip_quoted(value, j),
                        b'(' => skip_comment_bytes(value, j),
                        _ => j + 1,
                    };
                }
                item.angle = Some((start, j.min(value.len())));
                item.gap();
                i = j + 1;
                continue;
            }
            // A group's display name ends here; its members follow.
            b':' => item = Spans::default(),
            b',' | b';' => std::mem::take(&mut item).finish(value, &mut ends),
            b if b.is_ascii_whitespace() => item.gap(),
            _ => item.text(i, i + 1),
        }
        i += 1;
    }
    item.finish(value, &mut ends);
    ends
}

/// The text runs (atoms, quoted strings, literals) and the angle address of one list member.
#[derive(Default)]
struct Spans {
    runs: Vec<(usize, usize)>,
    in_run: bool,
    angle: Option<(usize, usize)>,
}

impl Spans {
    fn text(&mut self, start: usize, end: usize) {
        match self.runs.last_mut() {
            Some(last) if self.in_run => last.1 = end,
            _ => self.runs.push((start, end)),
        }
        self.in_run = true;
    }

    fn gap(&mut self) {
        self.in_run = false;
    }

    fn finish(self, value: &[u8], ends: &mut Vec<usize>) {
        let (start, end) = match self.angle {
            Some((start, end)) => {
                // Trim whitespace inside the brackets: `< root >` becomes `< root@origin >`.
                let inner = &value[start..end];
                let lead = inner.iter().take_while(|b| b.is_ascii_whitespace()).count();
                let trail = inner[lead..]
                    .iter()
                    .rev()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
                (start + lead, end - trail)
            }
            // Without brackets only a single word is an address; `John Doe` is not.
            None if self.runs.len() == 1 => self.runs[0],
            None => return,
        };
        let spec = &value[start..end];
        if !spec.is_empty() && !matches!(spec[0], b'@' | b'[') && is_local_part(spec) {
            ends.push(end);
        }
    }
}

/// No `@`, whitespace or comment outside quotes, and every quoted string closed (an unclosed
/// one would swallow the domain we append).
fn is_local_part(spec: &[u8]) -> bool {
    let mut in_quotes = false;
    let mut escaped = false;
    for &b in spec {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            b'@' | b'(' if !in_quotes => return false,
            b if b.is_ascii_whitespace() && !in_quotes => return false,
            _ => {}
        }
    }
    !in_quotes && !escaped
}

/// Index just after the quoted string that starts at `start` (or the end of the input).
fn skip_quoted(value: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < value.len() {
        match value[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    value.len()
}

/// Index just after the (nested) comment that starts at `start` (or the end of the input).
fn skip_comment_bytes(value: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < value.len() {
        match value[i] {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    value.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_routes_end_at_the_first_colon_outside_quotes() {
        assert_eq!(strip_source_route("@a,@b:u@x"), "u@x");
        assert_eq!(strip_source_route("u@x"), "u@x");
        // A colon inside a quoted local part is not the route's end, even after \".
        assert_eq!(strip_source_route("@a:\"p:q\"@x"), "\"p:q\"@x");
        assert_eq!(strip_source_route("@a\"x:y\":u@x"), "u@x");
        assert_eq!(strip_source_route("@a\"x\\\":y\":u@x"), "u@x");
        // No colon outside quotes: not a route after all, kept whole.
        assert_eq!(strip_source_route("@a\"x:y\""), "@a\"x:y\"");
    }

    #[test]
    fn whitespace_goes_outside_quotes_only() {
        assert_eq!(
            remove_unquoted_whitespace("a @ example.com"),
            "a@example.com"
        );
        assert_eq!(
            remove_unquoted_whitespace("\"john doe\" @x"),
            "\"john doe\"@x"
        );
        // An escaped quote inside quotes does not end them.
        assert_eq!(remove_unquoted_whitespace("\"a\\\" b\"@x"), "\"a\\\" b\"@x");
        // A backslash outside quotes escapes nothing.
        assert_eq!(remove_unquoted_whitespace("a\\ b@x"), "a\\b@x");
    }

    fn list(s: &str) -> Vec<String> {
        parse_list(s)
    }

    #[test]
    fn checked_addresses_have_no_brackets_controls_or_excess() {
        assert!(check_address("a@b").is_ok());
        assert!(check_address("<a@b").is_err());
        assert!(check_address("a@b>").is_err());
        assert!(check_address("a\\b@c").is_ok(), "a backslash is text");
        assert!(check_address("a\u{7}@b").is_err());
        let long = |n: usize| format!("{}@x", "a".repeat(n - 2));
        assert!(check_address(&long(512)).is_ok());
        assert!(check_address(&long(513)).is_err());
    }

    #[test]
    fn unqualified_ends_respect_quotes_escapes_literals_and_brackets() {
        // A quoted local part may hold @, an escaped quote, a comma.
        assert_eq!(unqualified_ends(b"\"a@b\""), vec![5]);
        assert_eq!(unqualified_ends(b"\"a\\\"b\""), vec![6]);
        assert_eq!(unqualified_ends(b"\"x\\\",y\""), vec![7]);
        // A backslash outside quotes escapes nothing: `a\@b` has a domain.
        assert_eq!(unqualified_ends(b"a\\@b"), Vec::<usize>::new());
        // A domain literal is skipped whole, commas included.
        assert_eq!(unqualified_ends(b"[a,b,c]"), Vec::<usize>::new());
        assert_eq!(unqualified_ends(b"[a,]"), Vec::<usize>::new());
        // Inside brackets a quoted `>` or a commented one does not end the address.
        assert_eq!(unqualified_ends(b"<\"a>b\">"), vec![6]);
        assert_eq!(unqualified_ends(b"<root (x>y)>"), Vec::<usize>::new());
        // Whitespace inside the brackets is no local part.
        assert_eq!(unqualified_ends(b"<a b>"), Vec::<usize>::new());
        // The brackets themselves are not part of the address: a literal inside stays one.
        assert_eq!(unqualified_ends(b"<[x]>"), Vec::<usize>::new());
        // An empty pair ends where it ends.
        assert_eq!(unqualified_ends(b"<>, root"), vec![8]);
        // A comment inside the brackets may hold `>` and `,`.
        assert_eq!(unqualified_ends(b"<a(x>,root)>"), Vec::<usize>::new());
        // An escaped quote right after the opening one does not close the string.
        assert_eq!(unqualified_ends(b"\"\\\",x\""), vec![6]);
        // Comments end at their (unescaped, outermost) parenthesis; the list goes on after.
        assert_eq!(unqualified_ends(b"root (c), admin"), vec![4, 15]);
        assert_eq!(unqualified_ends(b"root (a\\) b), x"), vec![4, 15]);
        assert_eq!(unqualified_ends(b"root (a (b) c), x"), vec![4, 17]);
    }

    #[test]
    fn sender_checks() {
        assert_eq!(parse_sender("<>").unwrap(), None);
        assert_eq!(parse_sender("N <a@x>").unwrap().as_deref(), Some("a@x"));
        assert_eq!(
            parse_sender("\"a\r\nRSET\"@x").unwrap_err().exit,
            Exit::NoUser
        );
        assert!(check_raw_address("ok@example.com\r\nRCPT TO:<evil2@x.example>").is_err());
        assert!(check_raw_address("Team:\ta@x, b@y;").is_ok());
    }
    #[test]
    fn plain_and_named_addresses() {
        assert_eq!(list("a@x, B <b@x>"), ["a@x", "b@x"]);
        assert_eq!(list("\"Doe, John\" <j@x>, k@y"), ["j@x", "k@y"]);
        assert_eq!(list("j@x (John, Doe)"), ["j@x"]);
        assert_eq!(list("John (the (nested) one) <j@x>"), ["j@x"]);
    }

    #[test]
    fn comments_nest_and_escape() {
        assert_eq!(list("a@x (the (nested) one), b@y"), ["a@x", "b@y"]);
        assert_eq!(list("(comment \\) still) a@x"), ["a@x"]);
        // A backslash escapes only inside quotes; a route ends at its first colon.
        assert_eq!(list("<@a\\:b:u@x>"), ["b:u@x"]);
    }

    #[test]
    fn groups_and_empty_members() {
        assert_eq!(list("undisclosed-recipients:;"), Vec::<String>::new());
        assert_eq!(list("Team: a@x, B <b@y>;, c@z"), ["a@x", "b@y", "c@z"]);
        assert_eq!(list("a@x,, ,b@y"), ["a@x", "b@y"]);
    }

    #[test]
    fn quoted_local_parts_routes_and_literals() {
        assert_eq!(list("\"john doe\"@x"), ["\"john doe\"@x"]);
        assert_eq!(list("<@r1,@r2:u@x>"), ["u@x"]);
        assert_eq!(list("u@[IPv6:::1], v@x"), ["u@[IPv6:::1]", "v@x"]);
        assert_eq!(list("a @ example.com"), ["a@example.com"]);
        assert_eq!(list("\"a\\\"b\" <q@x>"), ["q@x"]);
    }

    #[test]
    fn single_sender_forms() {
        assert_eq!(parse_single("<>"), None);
        assert_eq!(parse_single(""), None);
        assert_eq!(parse_single("Name <a@x>").as_deref(), Some("a@x"));
        assert_eq!(parse_single("a@x").as_deref(), Some("a@x"));
        assert_eq!(parse_single("www-data").as_deref(), Some("www-data"));
    }

    fn qualified(value: &str) -> String {
        let mut out = value.as_bytes().to_vec();
        for end in unqualified_ends(value.as_bytes()).into_iter().rev() {
            out.splice(end..end, b"@vm.localdomain".iter().copied());
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn bare_local_parts_are_found_where_postfix_qualifies_them() {
        // cron's and logwatch's headers, verbatim.
        assert_eq!(qualified(" root"), " root@vm.localdomain");
        assert_eq!(
            qualified(" root (Cron Daemon)"),
            " root@vm.localdomain (Cron Daemon)"
        );
        assert_eq!(qualified(" Logwatch"), " Logwatch@vm.localdomain");
        assert_eq!(
            qualified(" Cron Daemon <root>"),
            " Cron Daemon <root@vm.localdomain>"
        );
        assert_eq!(qualified("< root >"), "< root@vm.localdomain >");
        assert_eq!(
            qualified("Team: a, \"Doe, J\" <b>;, c@x"),
            "Team: a@vm.localdomain, \"Doe, J\" <b@vm.localdomain>;, c@x"
        );
        assert_eq!(qualified("\"john doe\""), "\"john doe\"@vm.localdomain");
    }

    #[test]
    fn qualified_and_odd_values_stay_byte_for_byte() {
        for v in [
            " a@x, B <b@y>",
            " undisclosed-recipients:;",
            " <>",
            " John Doe",
            " \"a@b\"@x",
            " <@r1:u@x>",
            " u@[IPv6:::1]",
            " a @ example.com",
            " Jörg <j@x>",
            "",
        ] {
            assert_eq!(qualified(v), v);
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = parse_list(&s);
            let _ = parse_single(&s);
            let ends = unqualified_ends(s.as_bytes());
            // Offsets are inside the value and ascending, so inserting from the last is safe.
            proptest::prop_assert!(ends.windows(2).all(|w| w[0] < w[1]));
            proptest::prop_assert!(ends.iter().all(|&e| e <= s.len()));
        }

        /// Every special character of RFC 5322 and line breaks: no panic, no empty member, no
        /// whitespace outside quotes in what comes out.
        #[test]
        fn hostile_lists_give_clean_members(s in "[a-z@<>()\",:;\\[\\]\\\\ \r\n\t.]{0,60}") {
            for addr in parse_list(&s) {
                proptest::prop_assert!(!addr.is_empty());
                let mut in_quotes = false;
                let mut escaped = false;
                for c in addr.chars() {
                    if escaped { escaped = false; continue; }
                    match c {
                        '\\' if in_quotes => escaped = true,
                        '"' => in_quotes = !in_quotes,
                        c if c.is_whitespace() && !in_quotes => {
                            proptest::prop_assert!(false, "unquoted whitespace in {:?}", addr);
                        }
                        _ => {}
                    }
                }
            }
        }

        #[test]
        fn qualifying_is_idempotent(s in "[a-z <>\"(),:;@.]{0,40}") {
            let once = qualified(&s);
            proptest::prop_assert_eq!(qualified(&once), once.clone());
            // Qualifying never adds or removes a member of the list.
            proptest::prop_assert_eq!(parse_list(&once).len(), parse_list(&s).len());
        }

        #[test]
        fn simple_lists_round_trip(addrs in proptest::collection::vec("[a-z0-9.]{1,10}@[a-z0-9]{1,10}\\.[a-z]{2,4}", 0..8)) {
            let joined = addrs.join(", ");
            proptest::prop_assert_eq!(parse_list(&joined), addrs);
        }
    }

    #[test]
    fn every_spelling_of_a_domain_is_the_same_domain() {
        assert_eq!(canonical_domain("Alice.Example."), "alice.example");
        assert_eq!(canonical_domain("alice.example.."), "alice.example");
        assert_eq!(domains_reached("ceo@alice.example."), ["alice.example"]);
        assert_eq!(
            domains_reached("ceo%Alice.Example.@localhost"),
            ["localhost", "alice.example"]
        );
        assert_eq!(
            domains_reached("alice.example!ceo@localhost"),
            ["localhost", "alice.example"]
        );
        assert!(domains_reached("no-domain").is_empty());
        assert!(sender_matches("*@alice.example", "ceo@Alice.Example."));
        assert!(!sender_matches("*@alice.example", "ceo@alice.example.evil"));
    }
}
