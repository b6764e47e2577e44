//! RFC 5322 address lists: the recipients of `To:`/`Cc:`/`Bcc:` headers and of argv operands.
//!
//! This is a tolerant tokenizer, not a validator. It understands what real mailers put into
//! headers: display names (quoted or not, with commas inside quotes), comments (nested), angle
//! addresses with obsolete source routes, groups (`Team: a@x, b@y;`, `undisclosed-recipients:;`)
//! and domain literals (`a@[IPv6:::1]`). It returns the bare addr-specs in order.

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

/// `<@relay1,@relay2:user@x>` names `user@x`.
fn strip_source_route(angle: &str) -> &str {
    if angle.starts_with('@')
        && let Some(colon) = angle.find(':')
    {
        return &angle[colon + 1..];
    }
    angle
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
            Some(angle) => angle,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Vec<String> {
        parse_list(s)
    }

    #[test]
    fn plain_and_named_addresses() {
        assert_eq!(list("a@x, B <b@x>"), ["a@x", "b@x"]);
        assert_eq!(list("\"Doe, John\" <j@x>, k@y"), ["j@x", "k@y"]);
        assert_eq!(list("j@x (John, Doe)"), ["j@x"]);
        assert_eq!(list("John (the (nested) one) <j@x>"), ["j@x"]);
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

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = parse_list(&s);
            let _ = parse_single(&s);
        }

        #[test]
        fn simple_lists_round_trip(addrs in proptest::collection::vec("[a-z0-9.]{1,10}@[a-z0-9]{1,10}\\.[a-z]{2,4}", 0..8)) {
            let joined = addrs.join(", ");
            proptest::prop_assert_eq!(parse_list(&joined), addrs);
        }
    }
}
