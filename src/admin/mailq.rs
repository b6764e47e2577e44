//! `mailq` / `sendmail -bp`: the spools in Postfix's `mailq` layout (`postqueue -p`, long queue
//! ids), so that scripts and monitoring that parse Postfix's output keep working. Pure: the
//! entries and the time formatting come in, the text goes out.

use crate::spool::{Kind, Meta};
use std::fmt::Write as _;

/// Postfix's `L_STRING_FORMAT` / `L_SENDER_FORMAT` (long queue ids) and headings.
const HEADINGS: [&str; 4] = [
    "----Queue ID-----",
    "--Size--",
    "---Arrival Time----",
    "--Sender/Recipient------",
];

/// The listing for `entries` (queue, defer and hold, oldest first). `arrival` formats a Unix
/// time as `asctime` does (`Sat Nov 28 06:40:12`, 19 characters are shown).
pub fn render(entries: &[(Kind, &Meta)], arrival: &dyn Fn(i64) -> String) -> String {
    if entries.is_empty() {
        return "Mail queue is empty\n".into();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<17} {:>8} {:<19} {}",
        HEADINGS[0], HEADINGS[1], HEADINGS[2], HEADINGS[3]
    );
    let mut bytes: u64 = 0;
    for (i, (kind, meta)) in entries.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        // Postfix marks held mail with '!' (and mail being delivered with '*').
        let status = if *kind == Kind::Hold { '!' } else { ' ' };
        let time: String = arrival(meta.time).chars().take(19).collect();
        let _ = writeln!(
            out,
            "{:<17} {:>8} {:<19} {}",
            format!("{}{status}", meta.id),
            meta.size,
            time,
            meta.sender.as_deref().unwrap_or("MAILER-DAEMON")
        );
        let why = match kind {
            Kind::Queue if !meta.last_error.is_empty() => meta.last_error.as_str(),
            _ => meta.reason.as_str(),
        };
        if !why.is_empty() {
            let why = format!("({})", one_line(why));
            let _ = writeln!(out, "{why:>77}");
        }
        for rcpt in &meta.recipients {
            let _ = writeln!(out, "{:<17} {:>8} {:<19} {rcpt}", "", "", "");
        }
        bytes += meta.size;
    }
    let n = entries.len();
    let _ = writeln!(
        out,
        "\n-- {} Kbytes in {n} Request{}.",
        bytes / 1024,
        if n == 1 { "" } else { "s" }
    );
    out
}

/// A reason on one line, control characters shown as `?` (it reaches a terminal).
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, size: u64, rcpts: &[&str], last_error: &str, reason: &str) -> Meta {
        let mut m = Meta::damaged(id, "");
        m.account = "web1".into();
        m.sender = Some("web1@example.org".into());
        m.recipients = rcpts.iter().map(|r| r.to_string()).collect();
        m.size = size;
        m.time = 0;
        m.last_error = last_error.into();
        m.reason = reason.into();
        m
    }

    fn at(_: i64) -> String {
        "Sat Nov 28 06:40:12 2026\n".into()
    }

    #[test]
    fn empty_queue_says_so_like_postfix() {
        assert_eq!(render(&[], &at), "Mail queue is empty\n");
    }

    #[test]
    fn entries_in_postfix_long_id_layout() {
        let q = meta(
            "692A0E1C0A1B2C3D4E",
            1536,
            &["a@example.net", "b@example.net"],
            "relay 127.0.0.1:10025: Connection refused",
            "",
        );
        let h = meta(
            "692A0E1C0A1B2C3D4F",
            600,
            &["c@example.net"],
            "",
            "over 1h limit",
        );
        let text = render(&[(Kind::Queue, &q), (Kind::Hold, &h)], &at);
        let expected = "\
----Queue ID----- --Size-- ---Arrival Time---- --Sender/Recipient------
692A0E1C0A1B2C3D4E      1536 Sat Nov 28 06:40:12 web1@example.org
                                  (relay 127.0.0.1:10025: Connection refused)
                                               a@example.net
                                               b@example.net

692A0E1C0A1B2C3D4F!      600 Sat Nov 28 06:40:12 web1@example.org
                                                              (over 1h limit)
                                               c@example.net

-- 2 Kbytes in 2 Requests.
";
        assert_eq!(text, expected);
    }

    #[test]
    fn reasons_cannot_reach_the_terminal_raw() {
        let q = meta("AB", 1, &["a@x"], "bad\x1b[2Jrelay\r\nx", "");
        let text = render(&[(Kind::Queue, &q)], &at);
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
    }
}
