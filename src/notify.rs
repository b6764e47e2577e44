//! The admin's mail: an account exceeded a limit (once per account per window), an account was
//! locked, a queued message was given up. Pure: builds the message, the caller relays it.

use crate::limits::{Alert, format_time};
use crate::message::{Header, Message};
use crate::spool::Meta;
use std::fmt::Write as _;

fn envelope_headers(subject: &str, hostname: &str, admin: &str, origin: &str) -> Vec<Header> {
    let id = crate::spool::new_id();
    vec![
        Header::new("From", &format!("mailgate <MAILER-DAEMON@{origin}>")),
        Header::new("To", admin),
        Header::new("Subject", subject),
        Header::new("Date", &chrono::Local::now().to_rfc2822()),
        Header::new("Message-ID", &format!("<{id}.alert@{hostname}>")),
        Header::new("Auto-Submitted", "auto-generated"),
        Header::new("Content-Type", "text/plain; charset=utf-8"),
    ]
}

fn body(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 64);
    for line in text.lines() {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// "account example.com exceeded 50 messages per 1h" with who, what and the last messages.
pub fn alert_message(
    alert: &Alert,
    meta: &Meta,
    hostname: &str,
    admin: &str,
    origin: &str,
) -> Message {
    let subject = match (&alert.locked, &alert.refusal) {
        (Some(_), _) => format!("mailgate: account {} locked on {hostname}", meta.account),
        (None, Some(r)) => format!(
            "mailgate: account {} exceeded {} {} per {} on {hostname}",
            meta.account, r.max, r.what, r.limit.window
        ),
        (None, None) => format!("mailgate: account {} on {hostname}", meta.account),
    };
    let mut text = String::new();
    let _ = writeln!(text, "Account:  {}", meta.account);
    let _ = writeln!(text, "User:     {} (uid {})", meta.user, meta.uid);
    if !meta.script.is_empty() {
        let _ = writeln!(text, "Script:   {}", meta.script);
    }
    if let Some(r) = &alert.refusal {
        let _ = writeln!(
            text,
            "Limit:    {} {} per {} (action {:?})",
            r.max, r.what, r.limit.window, r.limit.action
        );
        let next = r.next.map_or_else(
            || "never (message larger than the limit)".to_string(),
            format_time,
        );
        let _ = writeln!(text, "Next message possible at: {next}");
    }
    if let Some(reason) = &alert.locked {
        let _ = writeln!(text, "\nThe account is now LOCKED: {reason}.");
        let _ = writeln!(
            text,
            "Everything it sends is held. After cleaning up: mailgate unlock {}",
            meta.account
        );
    }
    let _ = writeln!(text, "\nWindow   messages  recipients  refused");
    for (window, u) in &alert.usage {
        let _ = writeln!(
            text,
            "{window:<8} {:>8}  {:>10}  {:>7}",
            u.messages, u.recipients, u.refused
        );
    }
    let _ = writeln!(text, "\nLast messages:");
    for r in &alert.recent {
        let _ = writeln!(
            text,
            "  {}  {}  {}",
            format_time(r.time),
            r.sender,
            r.subject
        );
    }
    let _ = writeln!(
        text,
        "\nSee: mailgate status {}; mailgate hold list --account {}",
        meta.account, meta.account
    );
    Message {
        headers: envelope_headers(&subject, hostname, admin, origin),
        body: body(&text),
    }
}

/// A queued message that will not be delivered (too old, or refused by the relay).
pub fn failed_message(
    meta: &Meta,
    why: &str,
    hostname: &str,
    admin: &str,
    origin: &str,
) -> Message {
    let subject = format!(
        "mailgate: message {} of {} not delivered",
        meta.id, meta.account
    );
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Message {} could not be delivered and was moved to failed/.",
        meta.id
    );
    let _ = writeln!(
        text,
        "\nAccount:    {}\nUser:       {} (uid {})",
        meta.account, meta.user, meta.uid
    );
    let _ = writeln!(
        text,
        "Sender:     <{}>",
        meta.sender.as_deref().unwrap_or("")
    );
    let _ = writeln!(text, "Recipients: {}", meta.recipients.join(", "));
    let _ = writeln!(text, "Subject:    {}", meta.subject);
    let _ = writeln!(text, "Attempts:   {}\nReason:     {why}", meta.attempts);
    Message {
        headers: envelope_headers(&subject, hostname, admin, origin),
        body: body(&text),
    }
}

/// A spool entry that cannot be read (damaged on disk) was moved to failed/.
pub fn damaged_message(
    spool: &str,
    id: &str,
    why: &str,
    hostname: &str,
    admin: &str,
    origin: &str,
) -> Message {
    let subject = format!("mailgate: damaged {spool} entry {id} moved to failed/");
    let mut text = String::new();
    let _ = writeln!(
        text,
        "The {spool} entry {id} cannot be read and can never be delivered:\n{why}\n\n\
         It was moved to failed/{id}; `mailgate queue show {id} --body` may still show the\n\
         message text. Nothing else in the {spool} is affected."
    );
    Message {
        headers: envelope_headers(&subject, hostname, admin, origin),
        body: body(&text),
    }
}
