//! The admin's spool commands: `hold`, `queue`, `mailq`, `sendmail -q`, and the listings.

use super::access::{Viewer, log_admin, not_yours, require_admin};
use super::{admin_runtime, report};
use crate::admin::cli::{HoldAction, QueueAction};
use crate::exit::{Exit, Failure};
use crate::limits;
use crate::queue;
use crate::runtime::Runtime;
use crate::spool::{Kind, Meta, Spool};
use serde::Serialize;

pub(super) fn hold(
    rt: &Runtime,
    spool: &Spool<'_>,
    action: HoldAction,
    viewer: &Viewer<'_>,
) -> Result<(), Failure> {
    // A customer names only their own accounts and messages; someone else's id is "not
    // yours", exactly like an account.
    let own_account = |account: &Option<String>| match account {
        Some(a) if !viewer.may_see(a) => Err(not_yours(&format!("account {a:?}"))),
        _ => Ok(()),
    };
    let own_ids = |ids: &[String]| {
        for id in ids {
            match spool.read_meta(Kind::Hold, id) {
                Ok(m) if !viewer.may_see(&m.account) => {
                    return Err(not_yours(&format!("message {id}")));
                }
                Err(_) if !viewer.admin => {
                    // Whether an id exists elsewhere is none of a customer's business.
                    return Err(Failure::new(Exit::Usage, format!("{id}: not held")));
                }
                _ => {}
            }
        }
        Ok(())
    };
    match action {
        HoldAction::List { account, json } => {
            own_account(&account)?;
            let entries: Vec<Meta> = spool
                .list(Kind::Hold)?
                .into_iter()
                .filter(|m| account.as_ref().is_none_or(|a| &m.account == a))
                .filter(|m| viewer.may_see(&m.account))
                .collect();
            print_list(&[(Kind::Hold, entries)], json)
        }
        HoldAction::Show { id, body } => {
            own_ids(std::slice::from_ref(&id))?;
            show(spool, Kind::Hold, &id, body)
        }
        HoldAction::Release { ids, account, all } => {
            if !viewer.may_release() {
                return Err(Failure::new(
                    Exit::NoPerm,
                    "releasing held mail needs the administrator (or `customer_release = true` in [spool])",
                ));
            }
            own_account(&account)?;
            own_ids(&ids)?;
            let ids = select(spool, Kind::Hold, ids, account.as_deref(), all, viewer)?;
            let mut failed = None;
            for id in ids {
                match queue::release(rt, &id, !viewer.admin) {
                    Ok(line) => out!("{line}"),
                    Err(f) => {
                        err!("mailgate: {}", f.message);
                        failed = Some(f);
                    }
                }
                log_admin(rt, "release", &id, "");
            }
            failed.map_or(Ok(()), Err)
        }
        HoldAction::Delete { ids, account } => {
            own_account(&account)?;
            own_ids(&ids)?;
            let mut busy = None;
            for id in select(spool, Kind::Hold, ids, account.as_deref(), false, viewer)? {
                if spool.delete(Kind::Hold, &id)? {
                    out!("{id}: deleted");
                    log_admin(rt, "delete", &id, "hold");
                } else {
                    busy = Some(busy_or_gone(&id));
                }
            }
            busy.map_or(Ok(()), Err)
        }
    }
}

/// `mailq` and `sendmail -bp`: queued, deferred and held mail in Postfix's layout. The admin
/// sees every entry, a customer only the ones they sent.
pub fn mailq(config_option: Option<&str>) -> Exit {
    report((|| {
        let (rt, privileged) = admin_runtime(config_option)?;
        let everyone = require_admin(&rt.caller, privileged).is_ok();
        let spool = Spool::new(rt.state()?);
        let mut lists = Vec::new();
        for kind in [Kind::Queue, Kind::Defer, Kind::Hold] {
            lists.push((kind, spool.list(kind)?));
        }
        let mut entries: Vec<(Kind, &Meta)> = lists
            .iter()
            .flat_map(|(k, l)| l.iter().map(move |m| (*k, m)))
            .filter(|(_, m)| everyone || m.uid == rt.caller.uid)
            .collect();
        entries.sort_by(|a, b| (a.1.time, &a.1.id).cmp(&(b.1.time, &b.1.id)));
        let asctime = |t: i64| {
            chrono::DateTime::from_timestamp(t, 0)
                .map(|at| {
                    at.with_timezone(&chrono::Local)
                        .format("%a %b %e %H:%M:%S %Y")
                        .to_string()
                })
                .unwrap_or_default()
        };
        let text = crate::admin::mailq::render(&entries, &asctime);
        use std::io::Write as _;
        let _ = std::io::stdout().write_all(text.as_bytes());
        Ok(())
    })())
}

/// `sendmail -q`: `mailgate queue flush`.
pub fn flush(config_option: Option<&str>) -> Exit {
    report((|| {
        let (rt, privileged) = admin_runtime(config_option)?;
        require_admin(&rt.caller, privileged)?;
        queue_run(&rt, queue::Backoff::Ignore)
    })())
}

pub(super) fn queue_run(rt: &Runtime, backoff: queue::Backoff) -> Result<(), Failure> {
    match queue::run(rt, backoff)? {
        Some(summary) => {
            out!("queue run: {summary}");
            let metrics = super::traffic::write_textfile(rt);
            run_result(&summary).and(metrics)
        }
        None => {
            out!("queue run: another queue run is active; nothing done");
            Ok(())
        }
    }
}

/// `queue run --follow`: the relay's log, learnt within a tick until the span is over.
fn follow_log(
    rt: &Runtime,
    started: std::time::Instant,
    span: std::time::Duration,
) -> Result<(), Failure> {
    match crate::delivery::follow::follow(rt, started, span)? {
        Some(f) => out!(
            "follow: learnt {} recipient outcomes in {} reads of the relay's log{}",
            f.counted,
            f.passes,
            if f.config_changed {
                "; the configuration changed, the next run follows with it"
            } else {
                ""
            }
        ),
        None => out!("follow: another process follows the relay's log; nothing done"),
    }
    Ok(())
}

/// An entry another process is delivering (or that went meanwhile) is left alone.
pub(super) fn busy_or_gone(id: &str) -> Failure {
    let f = Failure::new(
        Exit::Unavailable,
        format!("{id}: another process is handling it, or it is gone; nothing done"),
    );
    err!("mailgate: {}", f.message);
    f
}

/// A run that could not handle some entries says so in its exit code (74), after it went
/// on with the others.
pub(super) fn run_result(summary: &queue::Summary) -> Result<(), Failure> {
    if summary.errors > 0 {
        return Err(Failure::new(
            Exit::IoErr,
            format!(
                "{} entries could not be handled (see the log)",
                summary.errors
            ),
        ));
    }
    Ok(())
}

/// The ids named, or all of an account's, or all (all the caller may see).
pub(super) fn select(
    spool: &Spool<'_>,
    kind: Kind,
    ids: Vec<String>,
    account: Option<&str>,
    all: bool,
    viewer: &Viewer<'_>,
) -> Result<Vec<String>, Failure> {
    if !ids.is_empty() {
        return Ok(ids);
    }
    if account.is_none() && !all {
        return Err(Failure::new(
            Exit::Usage,
            "name message ids, --account ACCOUNT or --all",
        ));
    }
    Ok(spool
        .list(kind)?
        .into_iter()
        .filter(|m| account.is_none_or(|a| m.account == a))
        .filter(|m| viewer.may_see(&m.account))
        .map(|m| m.id)
        .collect())
}

pub(super) fn queue(rt: &Runtime, spool: &Spool<'_>, action: QueueAction) -> Result<(), Failure> {
    match action {
        QueueAction::List { json } => print_list(
            &[
                (Kind::Queue, spool.list(Kind::Queue)?),
                (Kind::Defer, spool.list(Kind::Defer)?),
            ],
            json,
        ),
        QueueAction::Run { follow } => {
            let started = std::time::Instant::now();
            let span = follow
                .as_deref()
                .map(|s| {
                    crate::config::TimeSpan::parse(s)
                        .map_err(|why| Failure::new(Exit::Usage, format!("--follow {s:?}: {why}")))
                })
                .transpose()?;
            let ran = queue_run(rt, queue::Backoff::Honour);
            if let Some(span) = span {
                follow_log(rt, started, std::time::Duration::from_secs(span.secs()))?;
            }
            ran
        }
        QueueAction::Flush => queue_run(rt, queue::Backoff::Ignore),
        QueueAction::Show { id, body } => show(spool, queued_kind(spool, &id)?, &id, body),
        QueueAction::Delete { ids } => {
            let mut busy = None;
            for id in ids {
                let kind = queued_kind(spool, &id)?;
                if spool.delete(kind, &id)? {
                    out!("{id}: deleted");
                    log_admin(rt, "delete", &id, kind.dir());
                } else {
                    busy = Some(busy_or_gone(&id));
                }
            }
            busy.map_or(Ok(()), Err)
        }
    }
}

/// The spool (queue or defer) that holds `id`.
pub(super) fn queued_kind(spool: &Spool<'_>, id: &str) -> Result<Kind, Failure> {
    spool
        .find(id)
        .filter(|k| matches!(k, Kind::Queue | Kind::Defer))
        .ok_or_else(|| Failure::new(Exit::Usage, format!("{id}: not in the queue")))
}

pub(super) fn print_list(lists: &[(Kind, Vec<Meta>)], json: bool) -> Result<(), Failure> {
    if json {
        #[derive(Serialize)]
        struct Entry<'a> {
            spool: &'static str,
            #[serde(flatten)]
            meta: &'a Meta,
        }
        let all: Vec<Entry<'_>> = lists
            .iter()
            .flat_map(|(k, l)| {
                l.iter().map(move |m| Entry {
                    spool: k.dir(),
                    meta: m,
                })
            })
            .collect();
        out!(
            "{}",
            serde_json::to_string_pretty(&all)
                .map_err(|e| Failure::new(Exit::Software, e.to_string()))?
        );
        return Ok(());
    }
    for (kind, list) in lists {
        for m in list.iter().cloned().map(terminal_safe) {
            let m = &m;
            out!(
                "{:<26} {:<6} {:<20} {:<16} {:>7}  {} -> {}  \"{}\"\n    {}",
                m.id,
                kind.dir(),
                limits::format_time(m.time),
                m.account,
                m.size,
                m.sender.as_deref().unwrap_or("<>"),
                m.recipients.join(","),
                m.subject,
                m.reason
            );
            if *kind == Kind::Queue {
                out!(
                    "    attempts: {}, next attempt: {}, last error: {}",
                    m.attempts,
                    limits::format_time(m.next_attempt),
                    if m.last_error.is_empty() {
                        "-"
                    } else {
                        &m.last_error
                    }
                );
            }
        }
    }
    Ok(())
}

pub(super) fn show(spool: &Spool<'_>, kind: Kind, id: &str, body: bool) -> Result<(), Failure> {
    let meta = terminal_safe(spool.read_meta(kind, id)?);
    out!(
        "id:         {}\nspool:      {}\naccount:    {}\nuser:       {} (uid {})",
        meta.id,
        kind.dir(),
        meta.account,
        meta.user,
        meta.uid
    );
    if !meta.script.is_empty() {
        out!("script:     {}", meta.script);
    }
    out!(
        "sender:     <{}>\nrecipients: {}\ntime:       {}\nreason:     {}\nattempts:   {}",
        meta.sender.as_deref().unwrap_or(""),
        meta.recipients.join(", "),
        limits::format_time(meta.time),
        meta.reason,
        meta.attempts
    );
    if !meta.last_error.is_empty() {
        out!("last error: {}", meta.last_error);
    }
    out!();
    let raw = spool.raw(kind, id)?;
    let end = if body {
        raw.len()
    } else {
        raw.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(raw.len(), |p| p + 2)
    };
    use std::io::Write;
    // The message is the customer's: no ESC, BEL or other control byte reaches the terminal.
    let text: Vec<u8> = raw[..end]
        .iter()
        .copied()
        .filter(|&b| b != b'\r')
        .map(|b| {
            if b.is_ascii_control() && b != b'\n' && b != b'\t' {
                b'?'
            } else {
                b
            }
        })
        .collect();
    std::io::stdout()
        .write_all(&text)
        .map_err(|e| Failure::io(Exit::IoErr, "cannot write to stdout", &e))
}

/// A spool entry's fields as the admin's terminal may show them: every field a customer
/// controls, with control characters escaped and its length capped.
pub(super) fn terminal_safe(mut m: Meta) -> Meta {
    let clean = |s: &str| crate::log::printable(s, 512);
    m.account = clean(&m.account);
    m.user = clean(&m.user);
    m.script = clean(&m.script);
    m.sender = m.sender.as_deref().map(clean);
    m.recipients = m.recipients.iter().map(|r| clean(r)).collect();
    m.subject = clean(&m.subject);
    m.reason = clean(&m.reason);
    m.last_error = clean(&m.last_error);
    m
}
