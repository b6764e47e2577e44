//! One line of a Postfix log, as far as the outcome of a message goes: which queue id, which
//! recipient, which status, and the receiving server's reply. Pure: lines in, facts out.
//!
//! Accepted: syslog's traditional stamp (`Dec  3 13:20:01 host name/smtp[42]: …`, also what
//! Postfix's own `maillog_file` writes) and RFC 3339 stamps (rsyslog's default,
//! `2026-12-03T13:20:01.123456+00:00 host name/smtp[42]: …`). Only lines of the relay's
//! instance (`syslog_name`) count: the primary instance's queue ids are another namespace.

use crate::message::address::find_unquoted;
pub use crate::relay::queue_id::is_queue_id;

/// What a recipient's delivery attempt came to (Postfix's `status=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `status=sent`: delivered (to a mailbox, or taken by the next server).
    Sent,
    /// `status=bounced`: refused for good; the sender gets a bounce.
    Bounced,
    /// `status=deferred`: put off; the relay tries again.
    Deferred,
    /// `status=expired`: given up after `maximal_queue_lifetime` (per message).
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "delivered",
            Status::Bounced => "bounced",
            Status::Deferred => "deferred",
            Status::Expired => "expired",
        }
    }

    pub fn parse(word: &str) -> Option<Status> {
        match word {
            "sent" | "delivered" => Some(Status::Sent),
            "bounced" => Some(Status::Bounced),
            "deferred" => Some(Status::Deferred),
            "expired" => Some(Status::Expired),
            _ => None,
        }
    }

    /// A final outcome: the relay will not try this recipient again.
    pub fn is_final(self) -> bool {
        self != Status::Deferred
    }
}

/// What one log line says about a queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact<'a> {
    /// One recipient's delivery attempt.
    Recipient {
        to: &'a str,
        /// The address before the relay rewrote it (`orig_to=`), when it logged one.
        orig_to: Option<&'a str>,
        status: Status,
        dsn: &'a str,
        /// The text in parentheses after the status: the remote server's reply, or the
        /// relay's own reason.
        reply: &'a str,
    },
    /// `status=expired, returned to sender`: every recipient still waiting is given up.
    Expired,
    /// `removed`: the message left the relay's queue; nothing more will be logged for it.
    Removed,
}

/// One line's queue id and fact; `None` for every line that says nothing about an outcome
/// (or is not the relay instance's, or is cut short).
pub fn parse<'a>(line: &'a str, syslog_name: &str) -> Option<(&'a str, Fact<'a>)> {
    let rest = after_stamp(line)?;
    // host, then "name/service[pid]:"
    let (_host, rest) = rest.split_once(' ')?;
    let (tag, rest) = rest.split_once(": ")?;
    let program = tag.split('[').next()?;
    let (name, _service) = program.rsplit_once('/')?;
    // "postfix-postfwd/smtp", and services with a name of their own below it
    // ("postfix-postfwd/mailgate/smtpd").
    let ours = name == syslog_name
        || name
            .strip_prefix(syslog_name)
            .is_some_and(|rest| rest.starts_with('/'));
    if !ours {
        return None;
    }
    let (queue_id, text) = rest.split_once(": ")?;
    if !is_queue_id(queue_id) {
        return None;
    }
    if text == "removed" {
        return Some((queue_id, Fact::Removed));
    }
    if let Some(rest) = text.strip_prefix("to=<") {
        // The recipient is the sender's choice: it is read as Postfix quotes it, never searched
        // for field names. The fields after it are Postfix's own up to `status=`, whose text
        // (the remote server's reply) runs to the end of the line.
        // Where the address ends: the first `>` outside a quoted local part
        // (`"a>b, status=sent"@example.net` is one address).
        let end = find_unquoted(rest, '>')?;
        let to = &rest[..end];
        let mut fields = rest[end..].strip_prefix(">, ")?;
        let mut orig_to = None;
        if let Some(orig) = fields.strip_prefix("orig_to=<") {
            let end = find_unquoted(orig, '>')?;
            orig_to = Some(&orig[..end]);
            fields = orig[end..].strip_prefix(">, ")?;
        }
        let status = field(fields, "status=")?;
        let (status_word, reply) = match status.split_once(' ') {
            Some((w, r)) => (w, r),
            None => (status, ""),
        };
        let status = Status::parse(status_word.trim_end_matches(','))?;
        let reply = reply
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or(reply);
        let dsn = field(fields, "dsn=")
            .and_then(|d| d.split(',').next())
            .unwrap_or("");
        return Some((
            queue_id,
            Fact::Recipient {
                to,
                orig_to,
                status,
                dsn,
                reply,
            },
        ));
    }
    // qmgr's own line: "from=<SENDER>, status=expired, returned to sender". A sender that
    // contains those words sits inside from=<…> of a line that ends otherwise.
    if text.starts_with("from=<") && text.ends_with(", status=expired, returned to sender") {
        return Some((queue_id, Fact::Expired));
    }
    None
}

/// The text after `key` up to the end of the line when `key` starts the last field
/// (`status=` is last, its reply may hold ", "), else up to the next ", ".
fn field<'a>(fields: &'a str, key: &str) -> Option<&'a str> {
    let at = if fields.starts_with(key) {
        0
    } else {
        fields.find(&format!(", {key}"))? + 2
    };
    let value = &fields[at + key.len()..];
    if key == "status=" {
        return Some(value);
    }
    Some(value.split(", ").next().unwrap_or(value))
}

/// The line after its time stamp.
fn after_stamp(line: &str) -> Option<&str> {
    let first = line.split(' ').next()?;
    if first.len() >= 19 && first.as_bytes().get(4) == Some(&b'-') && first.contains('T') {
        // RFC 3339: one word.
        return line.get(first.len() + 1..);
    }
    // "Mmm dd hh:mm:ss " (the day padded with a space): 16 bytes.
    let stamp = line.get(..16)?;
    let b = stamp.as_bytes();
    let looks_right =
        b[3] == b' ' && b[6] == b' ' && b[9] == b':' && b[12] == b':' && b[15] == b' ';
    looks_right.then(|| &line[16..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "postfix-postfwd";

    /// Lines as Postfix 3.7 (Debian 12) writes them, with `maillog_file` and through rsyslog.
    const SMTP_SENT: &str = "Dec  3 13:20:01 vm postfix-postfwd/smtp[4711]: 4Sb7Kd1zZkz9sWr: to=<a@example.org>, relay=127.0.0.1[127.0.0.1]:2525, delay=0.05, delays=0.01/0.01/0.01/0.02, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 77F1A)";
    const LOCAL_SENT: &str = "Dec  3 13:20:01 vm postfix-postfwd/local[4712]: 4Sb7Kd1zZkz9sWr: to=<mgchain1@vm.localdomain>, orig_to=<mgchain1@vm>, relay=local, delay=0.02, delays=0.01/0.01/0/0, dsn=2.0.0, status=sent (delivered to mailbox)";
    const BOUNCED: &str = "2026-12-03T13:20:02.123456+00:00 vm postfix-postfwd/smtp[4711]: 4Sb7Kd1zZkz9sWr: to=<gone@example.org>, relay=127.0.0.1[127.0.0.1]:2525, delay=0.1, delays=0.01/0.01/0.01/0.07, dsn=5.1.1, status=bounced (host 127.0.0.1[127.0.0.1] said: 550 5.1.1 <gone@example.org>: user unknown, sorry (in reply to RCPT TO command))";
    const DEFERRED: &str = "Dec 13 13:20:03 vm postfix-postfwd/smtp[4711]: 3F2A1C0042: to=<later@example.org>, relay=127.0.0.1[127.0.0.1]:2525, delay=0.1, delays=0.01/0.01/0.01/0.07, dsn=4.2.0, status=deferred (host 127.0.0.1[127.0.0.1] said: 450 4.2.0 try again later (in reply to RCPT TO command))";
    const EXPIRED: &str = "Dec  3 13:20:04 vm postfix-postfwd/qmgr[99]: 3F2A1C0042: from=<www@vm>, status=expired, returned to sender";
    const REMOVED: &str = "Dec  3 13:20:05 vm postfix-postfwd/qmgr[99]: 3F2A1C0042: removed";

    #[test]
    fn smtp_and_local_deliveries() {
        let (id, fact) = parse(SMTP_SENT, NAME).unwrap();
        assert_eq!(id, "4Sb7Kd1zZkz9sWr");
        assert_eq!(
            fact,
            Fact::Recipient {
                to: "a@example.org",
                orig_to: None,
                status: Status::Sent,
                dsn: "2.0.0",
                reply: "250 2.0.0 Ok: queued as 77F1A",
            }
        );
        let (_, fact) = parse(LOCAL_SENT, NAME).unwrap();
        assert!(matches!(
            fact,
            Fact::Recipient {
                to: "mgchain1@vm.localdomain",
                status: Status::Sent,
                reply: "delivered to mailbox",
                ..
            }
        ));
    }

    #[test]
    fn bounce_with_commas_in_the_reply_and_an_rfc3339_stamp() {
        let (id, fact) = parse(BOUNCED, NAME).unwrap();
        assert_eq!(id, "4Sb7Kd1zZkz9sWr");
        let Fact::Recipient {
            status, dsn, reply, ..
        } = fact
        else {
            panic!("{fact:?}")
        };
        assert_eq!((status, dsn), (Status::Bounced, "5.1.1"));
        assert!(reply.starts_with("host 127.0.0.1[127.0.0.1] said: 550 5.1.1"));
        assert!(reply.contains("user unknown, sorry"), "{reply}");
    }

    #[test]
    fn defer_expire_and_removal() {
        let (id, fact) = parse(DEFERRED, NAME).unwrap();
        assert_eq!(id, "3F2A1C0042");
        assert!(matches!(
            fact,
            Fact::Recipient {
                status: Status::Deferred,
                dsn: "4.2.0",
                ..
            }
        ));
        assert_eq!(parse(EXPIRED, NAME), Some(("3F2A1C0042", Fact::Expired)));
        assert_eq!(parse(REMOVED, NAME), Some(("3F2A1C0042", Fact::Removed)));
    }

    #[test]
    fn other_instances_and_other_lines_say_nothing() {
        let primary = SMTP_SENT.replace("postfix-postfwd/", "postfix/");
        assert_eq!(parse(&primary, NAME), None);
        let lookalike = SMTP_SENT.replace("postfix-postfwd/", "postfix-postfwdx/");
        assert_eq!(parse(&lookalike, NAME), None);
        let lane = REMOVED.replace("postfix-postfwd/qmgr", "postfix-postfwd/mailgate/cleanup");
        assert!(parse(&lane, NAME).is_some());
        for line in [
            "Dec  3 13:20:01 vm postfix-postfwd/smtpd[1]: connect from localhost[127.0.0.1]",
            "Dec  3 13:20:01 vm postfix-postfwd/cleanup[2]: 3F2A1C0042: message-id=<x@vm>",
            "Dec  3 13:20:01 vm postfix-postfwd/qmgr[99]: 3F2A1C0042: from=<www@vm>, size=300, nrcpt=1 (queue active)",
            "Dec  3 13:20:01 vm postfix-postfwd/bounce[3]: 3F2A1C0042: sender non-delivery notification: 4B1",
            "",
            "garbage",
            "Dec  3 13:20:01",
        ] {
            assert_eq!(parse(line, NAME), None, "{line}");
        }
    }

    #[test]
    fn a_recipient_or_sender_that_looks_like_fields_fools_nothing() {
        // Postfix logs a local part with specials quoted.
        let forged = r#"Dec  3 13:20:02 vm postfix-postfwd/smtp[4711]: 3F2A1C0042: to=<"x>, relay=none, dsn=2.0.0, status=sent (forged)"@example.org>, relay=mx[192.0.2.1]:25, delay=0.1, delays=0/0/0/0.1, dsn=5.1.1, status=bounced (host mx said: 550 5.1.1 user unknown, status=sent)"#;
        let (_, fact) = parse(forged, NAME).unwrap();
        let Fact::Recipient {
            to, status, dsn, ..
        } = fact
        else {
            panic!("{fact:?}")
        };
        assert_eq!(
            to,
            r#""x>, relay=none, dsn=2.0.0, status=sent (forged)"@example.org"#
        );
        assert_eq!((status, dsn), (Status::Bounced, "5.1.1"));
        let escaped = r#"Dec  3 13:20:02 vm postfix-postfwd/smtp[1]: 3F2A1C0042: to=<"a\"b>, status=sent"@x.org>, orig_to=<"c>, status=sent"@x.org>, relay=mx[192.0.2.1]:25, delay=1, delays=0/0/0/1, dsn=4.2.0, status=deferred (later)"#;
        let (_, fact) = parse(escaped, NAME).unwrap();
        assert!(
            matches!(
                fact,
                Fact::Recipient {
                    status: Status::Deferred,
                    ..
                }
            ),
            "{fact:?}"
        );
        let sender = "Dec  3 13:20:04 vm postfix-postfwd/qmgr[99]: 3F2A1C0042: from=<\"x, status=expired, returned to sender\"@x.org>, size=300, nrcpt=1 (queue active)";
        assert_eq!(parse(sender, NAME), None);
    }

    #[test]
    fn only_well_formed_stamps_are_read() {
        let rest = " vm postfix-postfwd/smtp[1]: 3F2A1C0042: to=<a@x.org>, relay=mx[192.0.2.1]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (ok)";
        for good in [
            "Dec  3 13:20:01",
            "Dec 13 13:20:01",
            "2026-12-03T13:20:01.123456+00:00",
        ] {
            assert!(parse(&format!("{good}{rest}"), NAME).is_some(), "{good}");
        }
        // Each one part of a stamp wrong, the others right.
        for bad in [
            "Dec_ 3 13:20:01",
            "Dec  3_13:20:01",
            "Dec  3 13_20:01",
            "Dec  3 13:20_01",
            "Dec  3 13:20:01_",
            "2026-12-03T13:20",
            "20261203T132001.123456+00:00",
            "2026-12-03_13:20:01.123456+00:00",
            "2026-12-03",
        ] {
            assert_eq!(parse(&format!("{bad}{rest}"), NAME), None, "{bad}");
        }
    }

    #[test]
    fn a_recipient_expired_on_its_own_line_is_expired() {
        let line = DEFERRED.replace("status=deferred", "status=expired");
        assert!(matches!(
            parse(&line, NAME),
            Some((
                _,
                Fact::Recipient {
                    status: Status::Expired,
                    ..
                }
            ))
        ));
        assert!(Status::Expired.is_final() && !Status::Deferred.is_final());
    }

    #[test]
    fn a_line_cut_in_the_middle_says_nothing() {
        for cut in 0..SMTP_SENT.find("status=").unwrap() + 7 {
            if let Some(line) = SMTP_SENT.get(..cut) {
                assert_eq!(parse(line, NAME), None, "{line}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(line in "\\PC{0,300}") {
            let _ = parse(&line, NAME);
        }

        #[test]
        fn never_panics_on_near_misses(cut in 0usize..400, junk in "[ -~]{0,40}") {
            for base in [SMTP_SENT, BOUNCED, DEFERRED, EXPIRED, REMOVED] {
                let mut line = base.get(..cut.min(base.len())).unwrap_or(base).to_string();
                line.push_str(&junk);
                let _ = parse(&line, NAME);
            }
        }
    }
}
