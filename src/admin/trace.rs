//! `mailgate trace ID`: one message's whole way, from the program that called mailgate to the
//! receiving server's answer for each recipient. ID is mailgate's id, the relay's queue id, or
//! the Message-ID. Customers may trace only their own accounts' messages.

use crate::delivery::record::{self, Record};
use crate::exit::{Exit, Failure};
use crate::log::printable;
use crate::runtime::Runtime;
use crate::spool::{Kind, Meta, Spool};
use serde::Serialize;

#[derive(Serialize)]
struct Traced<'a> {
    handed: &'a record::Handed,
    steps: &'a [record::Step],
}

pub(super) fn trace(
    rt: &Runtime,
    spool: &Spool<'_>,
    id: &str,
    json: bool,
    visible: &dyn Fn(&str) -> bool,
) -> Result<(), Failure> {
    let state = rt.state()?;
    let wanted = id.trim().trim_start_matches('<').trim_end_matches('>');
    if wanted.is_empty() || wanted.len() > 998 {
        return Err(Failure::new(Exit::Usage, "trace: give a message id"));
    }
    let found = match state.top().open_dir(record::DIR) {
        Ok(dir) => find_records(&dir, wanted),
        Err(_) => Vec::new(),
    };
    if !found.is_empty() {
        // A Message-ID is the sender's choice: another customer may reuse hers. A customer
        // sees her own matches only; the admin sees every match, oldest first.
        let shown: Vec<&Record> = found
            .iter()
            .filter(|r| visible(&r.handed.account))
            .collect();
        if shown.is_empty() {
            return Err(super::access::not_yours(&format!("message {id:?}")));
        }
        if json {
            let traced: Vec<Traced<'_>> = shown
                .iter()
                .map(|rec| Traced {
                    handed: &rec.handed,
                    steps: &rec.steps,
                })
                .collect();
            let text = if traced.len() == 1 {
                serde_json::to_string_pretty(&traced[0])
            } else {
                serde_json::to_string_pretty(&traced)
            };
            out!(
                "{}",
                text.map_err(|e| Failure::new(Exit::Software, e.to_string()))?
            );
        } else {
            if shown.len() > 1 {
                out!(
                    "{} messages match {}:\n",
                    shown.len(),
                    printable(wanted, 100)
                );
            }
            let texts: Vec<String> = shown.iter().map(|rec| render(rec)).collect();
            print!("{}", texts.join("\n"));
        }
        return Ok(());
    }
    // Not handed over (yet): kept in a spool?
    if crate::state::valid_id(wanted)
        && let Some(kind) = spool.find(wanted)
    {
        let meta = spool.read_meta(kind, wanted)?;
        if !visible(&meta.account) {
            return Err(super::access::not_yours(&format!("message {id:?}")));
        }
        print!("{}", render_kept(&meta, kind));
        return Ok(());
    }
    Err(Failure::new(
        Exit::Unavailable,
        format!(
            "trace: no message {:?} in the hand-over records (kept {}) or the spools; a refused message is only in the log (its id= field)",
            printable(wanted, 100),
            rt.config.outcomes.keep
        ),
    ))
}

/// By the relay's queue id (the record's name), else every record with that mailgate id or
/// Message-ID, oldest first (every record is read: an admin's command, not the hot path).
fn find_records(dir: &crate::state::Dir, wanted: &str) -> Vec<Record> {
    if record::valid_name(wanted)
        && let Some(r) = record::read(dir, wanted)
    {
        return vec![r];
    }
    let mut found: Vec<Record> = Vec::new();
    for name in dir.names().unwrap_or_default() {
        if !record::valid_name(&name) {
            continue;
        }
        let Some(r) = record::read(dir, &name) else {
            continue;
        };
        let h = &r.handed;
        let message_id = h.message_id.trim_start_matches('<').trim_end_matches('>');
        if h.id == wanted || message_id == wanted {
            found.push(r);
        }
    }
    found.sort_by_key(|r| (r.handed.handed, r.handed.id.clone()));
    found
}

fn when(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).map_or_else(
        || format!("@{t}"),
        |d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// The text form; every field from a caller or a remote server is escaped.
fn render(rec: &Record) -> String {
    let h = &rec.handed;
    let p = |s: &str| printable(s, 500);
    let mut out = String::new();
    out.push_str(&format!(
        "message {} (Message-ID {})\n",
        p(&h.id),
        p(&h.message_id)
    ));
    out.push_str(&format!(
        "  caller     uid {} ({}), account {}{}\n",
        h.uid,
        p(&h.user),
        p(&h.account),
        h.pool
            .as_deref()
            .map_or_else(String::new, |pool| format!(", FPM pool {}", p(pool)))
    ));
    if !h.script.is_empty() {
        out.push_str(&format!("  script     {}\n", p(&h.script)));
    }
    out.push_str(&format!("  cwd        {}\n", p(&h.cwd)));
    out.push_str(&format!(
        "  envelope   <{}> to {} recipient(s), {} bytes, subject {:?}\n",
        p(h.sender.as_deref().unwrap_or("")),
        h.recipients.len(),
        h.size,
        p(&h.subject)
    ));
    out.push_str(&format!(
        "  accepted   {} (within the limits)\n",
        when(h.time)
    ));
    out.push_str(&format!("  route      {}\n", p(&h.route)));
    out.push_str(&format!(
        "  relay      {}: took it as {}: {}\n",
        when(h.handed),
        p(&h.relay_id),
        p(&h.reply)
    ));
    let mut seen: Vec<&str> = Vec::new();
    for s in &rec.steps {
        if s.status == "removed" {
            out.push_str(&format!("  {}  left the relay's queue\n", when(s.time)));
            continue;
        }
        if !seen.contains(&s.to.as_str()) {
            seen.push(&s.to);
        }
        out.push_str(&format!(
            "  {}  {:<9} <{}> {}{}\n",
            when(s.time),
            s.status,
            p(&s.to),
            if s.dsn.is_empty() {
                String::new()
            } else {
                format!("dsn={} ", p(&s.dsn))
            },
            p(&s.reply)
        ));
    }
    out.push_str("  now        ");
    if rec.steps.is_empty() {
        out.push_str("no delivery logged yet by the relay\n");
    } else {
        let finals: Vec<String> = seen
            .iter()
            .map(|to| format!("<{}> {}", p(to), rec.last_status(to).unwrap_or("?")))
            .collect();
        out.push_str(&finals.join(", "));
        out.push('\n');
    }
    out
}

/// A message mailgate still keeps (never handed over, or waiting to be).
fn render_kept(m: &Meta, kind: Kind) -> String {
    let p = |s: &str| printable(s, 500);
    format!(
        "message {}\n  caller     uid {} ({}), account {}{}\n  script     {}\n  cwd        {}\n  envelope   <{}> to {}\n  accepted   {}\n  kept in    {} ({}); attempts {}{}\n  relay      not handed over yet\n",
        p(&m.id),
        m.uid,
        p(&m.user),
        p(&m.account),
        m.pool
            .as_deref()
            .map_or_else(String::new, |pool| format!(", FPM pool {}", p(pool))),
        p(&m.script),
        p(&m.cwd),
        p(m.sender.as_deref().unwrap_or("")),
        p(&m.recipients.join(", ")),
        when(m.time),
        kind.dir(),
        p(&m.reason),
        m.attempts,
        if m.last_error.is_empty() {
            String::new()
        } else {
            format!(", last error: {}", p(&m.last_error))
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_replies_and_scripts_are_escaped() {
        let mut rec = Record {
            handed: serde_json::from_str(
                r#"{"id":"A","account":"x","uid":1,"user":"u","script":"1:/a\u001b[2J.php","cwd":"/","sender":null,"recipients":["r@x"],"message_id":"<m@x>","subject":"s","size":1,"time":0,"handed":0,"route":"direct","relay_id":"ABCDEF","reply":"250 ok"}"#,
            )
            .unwrap(),
            steps: Vec::new(),
        };
        rec.steps.push(record::Step {
            time: 0,
            to: "r@x".into(),
            status: "bounced".into(),
            dsn: "5.1.1".into(),
            reply: "550 no\r\nX-Injected: yes\u{1b}[31m".into(),
        });
        let text = render(&rec);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(!text.contains("\r\nX-Injected"), "{text}");
        let step: Vec<&str> = text.lines().filter(|l| l.contains("dsn=5.1.1")).collect();
        assert_eq!(step.len(), 1, "{text}");
        assert!(step[0].contains("550 no"), "{text}");
        assert!(text.contains("now        <r@x> bounced"), "{text}");
    }
}
