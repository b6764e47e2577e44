//! Postfix's queue ids as a relay names them in its 250 reply (`queued as 4Xyz12`): the key
//! that ties a hand-over to the relay's log. Pure.

/// The relay's queue id in its 250 reply: "2.0.0 Ok: queued as 4Xyz12" → "4Xyz12".
pub fn queued_as(reply: &str) -> Option<&str> {
    let rest = &reply[reply.find("queued as ")? + "queued as ".len()..];
    rest.split_whitespace().next().filter(|id| is_queue_id(id))
}

/// Postfix's short (hexadecimal) and long (`enable_long_queue_ids`) queue ids; also what makes
/// a record's file name safe (no path, no dot).
pub fn is_queue_id(s: &str) -> bool {
    (3..=24).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_id_in_a_250_reply() {
        assert_eq!(queued_as("250 2.0.0 Ok: queued as 4Xyz12"), Some("4Xyz12"));
        assert_eq!(queued_as("2.0.0 Ok: queued as ../x"), None);
        assert_eq!(queued_as("250 2.0.0 Ok"), None);
    }
}
