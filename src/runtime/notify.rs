//! mailgate's own mail. To the admin: an account exceeded a limit (once per account per
//! window), an account was locked, a queued message was given up. To an account's `notify`
//! addresses: the customer's notice (once per window). Pure: builds the message, the caller
//! relays it.

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
        (_, Some(r)) if alert.observed => format!(
            "mailgate: account {} would have exceeded {} {} per {} on {hostname} (observe mode: the mail went)",
            meta.account, r.max, r.what, r.limit.window
        ),
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
    if !meta.script_path.is_empty() {
        let _ = writeln!(text, "Path:     {}", meta.script_path);
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
        if alert.observed {
            let _ = writeln!(
                text,
                "\nThis limit is in observe mode: the message was sent, nothing was stopped.\n\
                 Log lines with observed= show every message over it; set observe = false to\n\
                 enforce it. This alert comes once per window."
            );
        }
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

/// Why a customer hears from mailgate: a limit or a lock stopped a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The line the sending program got (the refusal or the lock).
    pub what: String,
    /// The limit that stopped it; `None` for a locked account.
    pub limit: Option<crate::config::Limit>,
    /// No second notice before this much time has passed.
    pub window_secs: u64,
}

/// Where a notice goes.
pub struct Envelope<'a> {
    pub hostname: &'a str,
    pub to: &'a str,
    pub origin: &'a str,
}

/// The headers of a notice to a customer: an alert's, with a Message-ID of its own kind.
fn notice_headers(subject: &str, env: &Envelope<'_>) -> Vec<Header> {
    let mut headers = envelope_headers(subject, env.hostname, env.to, env.origin);
    headers.retain(|h| !h.is("Message-ID"));
    headers.push(Header::new(
        "Message-ID",
        &format!("<{}.notice@{}>", crate::spool::new_id(), env.hostname),
    ));
    headers
}

/// The customer's notice: what happened, the limit, where the mail came from, what to do.
pub fn notice_message(
    account: &str,
    notice: &Notice,
    rows: &[crate::stats::Row],
    env: &Envelope<'_>,
    customer_release: bool,
) -> Message {
    use crate::config::Action;
    let fate = match notice.limit.as_ref().map(|l| l.action) {
        Some(Action::Reject) => "refused: the program that sent it got an error",
        Some(Action::Defer) => "deferred: it is sent automatically once the account has room",
        Some(Action::Hold) | None => "held: it waits for you or the administrator to release it",
    };
    let subject = format!(
        "Mail from your account {account} is being stopped on {}",
        env.hostname
    );
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Mail sent through your hosting account {account} on {} has reached a limit.\n",
        env.hostname
    );
    let _ = writeln!(text, "What happened:  {}", notice.what);
    if let Some(l) = &notice.limit {
        let mut parts = Vec::new();
        if let Some(m) = l.messages {
            parts.push(format!("{m} messages"));
        }
        if let Some(r) = l.recipients {
            parts.push(format!("{r} recipients"));
        }
        let _ = writeln!(
            text,
            "The limit:      {} per {}",
            parts.join(" and "),
            l.window
        );
    }
    let _ = writeln!(text, "The message:    {fate}");
    let _ = writeln!(
        text,
        "\nYou get this notice once per {}; more mail stopped meanwhile is not announced again.",
        crate::config::TimeSpan(notice.window_secs)
    );
    let _ = writeln!(
        text,
        "\nWhere the mail came from (last {}):\n",
        crate::config::TimeSpan(notice.window_secs)
    );
    let _ = writeln!(text, "{}", crate::stats::render_rows(rows, 10));
    let _ = writeln!(
        text,
        "What to do:\n\
         - If you did not send this much mail, a script of your site is probably being misused\n\
         \x20 (a contact form, an outdated plugin, a hacked CMS): check the scripts above, update\n\
         \x20 or remove them, and change the site's passwords.\n\
         - If the mail is wanted, ask your hosting provider to raise the limit.\n\
         - `mailgate hold list` shows your held messages; `mailgate hold delete ID` removes one{}.\n\
         - `mailgate top` shows which scripts send how much.",
        if customer_release {
            ", `mailgate hold release ID` sends it"
        } else {
            " (the administrator releases them)"
        }
    );
    Message {
        headers: notice_headers(&subject, env),
        body: body(&text),
    }
}

/// What a failure-rate trigger found, for the admin's alert and the customer's notice.
#[derive(Debug, Clone)]
pub struct Bounces {
    pub account: String,
    /// "8 of 20 recipients bounced (40 %) within 1h".
    pub tally: String,
    /// The rule: "at least 5 bounces that are 20 % of the recipients within 1h".
    pub threshold: String,
    /// What was done: "new mail is held", "locked", "nothing (notify only)", or what observe
    /// mode would have done.
    pub action: String,
    /// How it ends.
    pub ends: String,
    /// The window's worst sources: (source, bounced, delivered, sample replies).
    pub worst: Vec<(String, u64, u64, Vec<String>)>,
}

/// The admin's alert (`to_admin`) or the customer's notice about a bounce rate.
pub fn bounces_message(b: &Bounces, to_admin: bool, env: &Envelope<'_>) -> Message {
    let subject = if to_admin {
        format!(
            "mailgate: account {} bounces too much on {}: {}",
            b.account, env.hostname, b.action
        )
    } else {
        format!("Mail from your account {} bounces: {}", b.account, b.action)
    };
    let mut text = String::new();
    if !to_admin {
        let _ = writeln!(
            text,
            "Many messages sent through your hosting account {} on {} are refused by the\n\
             receiving mail servers (unknown recipients, spam blocks). Servers that keep sending\n\
             such mail get blacklisted, so the account's mail is watched.\n",
            b.account, env.hostname
        );
    }
    let _ = writeln!(text, "Account:     {}", b.account);
    let _ = writeln!(text, "Found:       {}", b.tally);
    let _ = writeln!(text, "Threshold:   {}", b.threshold);
    let _ = writeln!(text, "Action:      {}", b.action);
    let _ = writeln!(text, "Ends:        {}", b.ends);
    let _ = writeln!(text, "\nThe scripts that bounced most in the window:");
    for (source, bounced, delivered, samples) in b.worst.iter().take(5) {
        let _ = writeln!(
            text,
            "\n  {source}\n    {bounced} bounced, {delivered} delivered"
        );
        for s in samples.iter().take(3) {
            let _ = writeln!(text, "    reply: {}", crate::log::printable(s, 300));
        }
    }
    let _ = writeln!(
        text,
        "\n`mailgate top` shows delivered, bounced and delayed mail per script; `mailgate trace ID`\n\
         one message's way from the script to the receiving server."
    );
    if !to_admin {
        let _ = writeln!(
            text,
            "\nWhat to do: check the scripts above (a contact form abused for spam, a newsletter\n\
             to an old address list, a hacked plugin), fix or remove them, and tell your hosting\n\
             provider."
        );
    }
    let headers = if to_admin {
        envelope_headers(&subject, env.hostname, env.to, env.origin)
    } else {
        notice_headers(&subject, env)
    };
    Message {
        headers,
        body: body(&text),
    }
}

/// The relay's log cannot be read: outcomes are not learnt and the triggers are blind.
pub fn blind_message(why: &str, env: &Envelope<'_>) -> Message {
    let subject = format!(
        "mailgate: delivery outcomes unknown on {}: the relay's log cannot be read",
        env.hostname
    );
    let text = format!(
        "{}\n\nUntil it can be read again, mailgate does not learn what became of the mail it\n\
         handed to the relay: `mailgate top` shows no delivered or bounced counts, and the\n\
         failure-rate triggers are blind (the limits work as before). `mailgate status` says\n\
         so as long as it lasts; this mail is sent once.\n\n\
         Check [outcomes] relay_log in mailgate.toml and the relay's maillog_file.",
        crate::log::printable(why, 500)
    );
    Message {
        headers: envelope_headers(&subject, env.hostname, env.to, env.origin),
        body: body(&text),
    }
}

/// The admin's mail about a script that shows signs of a dropper (once per script and sign).
pub fn script_message(
    account: &str,
    path: &str,
    signs: &str,
    held: bool,
    env: &Envelope<'_>,
) -> Message {
    let subject = format!(
        "mailgate: script {} of account {account} on {} {}",
        crate::log::printable(path, 200),
        env.hostname,
        if held {
            "is held: signs of a dropper"
        } else {
            "shows signs of a dropper"
        }
    );
    let what = if held {
        "Its mail is HELD for you to look at: `mailgate hold list --account ACCOUNT`, then\n\
         `mailgate hold release ID` or `mailgate hold delete ID`. If the script is honest,\n\
         `mailgate scripts approve ACCOUNT PATH` lets it send."
    } else {
        "Its mail went. `mailgate scripts block ACCOUNT PATH` holds everything it sends from\n\
         now on; `mailgate scripts approve ACCOUNT PATH` says it is honest."
    };
    let text = format!(
        "Account: {account}\nScript:  {}\nSigns:   {signs}\n\n{what}\n\n\
         What the signs mean (README \"Scripts\"): suspicious-dir: the script or the caller's\n\
         directory is an upload, cache, temporary or hidden directory; eval: mail() ran in\n\
         eval()'d code; missing: the script file is gone; foreign-owner: another uid owns\n\
         the file; writable-by-others: anyone may change it; recent: it was changed lately.\n\
         You hear about each sign of a script once.",
        crate::log::printable(path, 500),
    );
    Message {
        headers: envelope_headers(&subject, env.hostname, env.to, env.origin),
        body: body(&text),
    }
}
