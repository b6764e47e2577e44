//! The admin's command line: `status`, `hold`, `queue`, `reset`, `lock`, `unlock`,
//! `check-config`.

use crate::cli::{Cli, Command, HoldAction, QueueAction};
use crate::config::{Config, Limit};
use crate::exit::{Exit, Failure};
use crate::identity::{self, Caller};
use crate::limits::{
    self, reconcile,
    store::{self, Counter, Record},
    window::Window,
};
use crate::log::{Fields, Severity};
use crate::pipeline::Context;
use crate::queue;
use crate::spool::{Kind, Meta, Spool};
use clap::{CommandFactory, Parser};
use serde::Serialize;
use std::ffi::OsString;

/// The subcommand names (and aliases), from the clap definition itself, so that dispatch
/// and the command line cannot drift apart.
pub fn subcommand_names() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .flat_map(|c| std::iter::once(c.get_name()).chain(c.get_all_aliases()))
        .map(str::to_string)
        .collect()
}

pub fn run(argv: &[OsString]) -> Exit {
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let exit = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let _ = e.print();
            return exit;
        }
    };
    match execute(cli) {
        Ok(()) => Exit::Ok,
        Err(f) => {
            err!("mailgate: {}", f.message);
            f.exit
        }
    }
}

fn execute(cli: Cli) -> Result<(), Failure> {
    let privileged = identity::is_privileged();
    if let Command::CheckConfig { path } = &cli.command {
        return check_config(&cli, path.as_deref(), privileged);
    }
    let (path, is_default) = crate::config::path_for(cli.config.as_deref(), privileged);
    let config = Config::load(&path, is_default).map_err(|e| Failure::new(Exit::Config, e.0))?;
    let caller = Caller::current();
    if !matches!(cli.command, Command::Status { .. }) {
        require_admin(&caller, privileged)?;
    }
    let account = identity::Account {
        name: caller.login.clone(),
        source: identity::AccountSource::Login,
    };
    let fixed_now = crate::pipeline::test_clock(privileged);
    let ctx = Context::new(config, caller.clone(), account, fixed_now);
    let state = ctx.state()?;
    let spool = Spool::new(state);
    match cli.command {
        Command::Status { account, json } => status(&ctx, &caller, account.as_deref(), json),
        Command::Reset { account } => {
            let counter = if account == "server" {
                Counter::Server
            } else {
                Counter::Account(checked(&account)?)
            };
            let store = ctx.store()?;
            store.reset(&ctx.config, counter)?;
            out!("{}: counters reset", store.counter_name(counter));
            log_admin(&ctx, "reset", &account, "");
            Ok(())
        }
        Command::Lock { account, reason } => {
            let lock = store::AccountLock {
                since: ctx.now(),
                reason: reason.clone(),
            };
            let changed = ctx
                .store()?
                .set_lock(&ctx.config, checked(&account)?, Some(lock))?;
            out!(
                "{account}: {}",
                if changed {
                    "locked; everything it sends is held"
                } else {
                    "lock reason updated"
                }
            );
            log_admin(&ctx, "lock", &account, &reason);
            Ok(())
        }
        Command::Unlock { account } => {
            let changed = ctx
                .store()?
                .set_lock(&ctx.config, checked(&account)?, None)?;
            out!(
                "{account}: {}",
                if changed {
                    "unlocked"
                } else {
                    "was not locked"
                }
            );
            log_admin(&ctx, "unlock", &account, "");
            Ok(())
        }
        Command::Hold { action } => hold(&ctx, &spool, action),
        Command::Queue { action } => queue(&ctx, &spool, action),
        Command::CheckConfig { .. } => unreachable!("handled above"),
    }
}

fn checked(account: &str) -> Result<&str, Failure> {
    crate::config::validate_account_name(account).map_err(|why| Failure::new(Exit::Usage, why))?;
    Ok(account)
}

fn log_admin(ctx: &Context, what: &str, target: &str, detail: &str) {
    let mut f = Fields::default();
    f.add("admin", what)
        .add("target", target)
        .add("by", &ctx.caller.login)
        .add("uid", ctx.caller.uid);
    if !detail.is_empty() {
        f.add("detail", detail);
    }
    ctx.logger.log(Severity::Info, f.as_str());
}

fn hold(ctx: &Context, spool: &Spool<'_>, action: HoldAction) -> Result<(), Failure> {
    match action {
        HoldAction::List { account, json } => {
            let entries: Vec<Meta> = spool
                .list(Kind::Hold)?
                .into_iter()
                .filter(|m| account.as_ref().is_none_or(|a| &m.account == a))
                .collect();
            print_list(&[(Kind::Hold, entries)], json)
        }
        HoldAction::Show { id, body } => show(spool, Kind::Hold, &id, body),
        HoldAction::Release { ids, account, all } => {
            let ids = select(spool, Kind::Hold, ids, account.as_deref(), all)?;
            let mut failed = None;
            for id in ids {
                match queue::release(ctx, &id) {
                    Ok(line) => out!("{line}"),
                    Err(f) => {
                        err!("mailgate: {}", f.message);
                        failed = Some(f);
                    }
                }
                log_admin(ctx, "release", &id, "");
            }
            failed.map_or(Ok(()), Err)
        }
        HoldAction::Delete { ids, account } => {
            let mut busy = None;
            for id in select(spool, Kind::Hold, ids, account.as_deref(), false)? {
                if spool.delete(Kind::Hold, &id)? {
                    out!("{id}: deleted");
                    log_admin(ctx, "delete", &id, "hold");
                } else {
                    busy = Some(busy_or_gone(&id));
                }
            }
            busy.map_or(Ok(()), Err)
        }
    }
}

/// The context for an admin operation outside clap's commands (`mailq`, `sendmail -q`).
fn admin_context(config_option: Option<&str>) -> Result<(Context, bool), Failure> {
    let privileged = identity::is_privileged();
    let (path, is_default) = crate::config::path_for(config_option, privileged);
    let config = Config::load(&path, is_default).map_err(|e| Failure::new(Exit::Config, e.0))?;
    let caller = Caller::current();
    let account = identity::Account {
        name: caller.login.clone(),
        source: identity::AccountSource::Login,
    };
    let fixed_now = crate::pipeline::test_clock(privileged);
    Ok((Context::new(config, caller, account, fixed_now), privileged))
}

fn report(result: Result<(), Failure>) -> Exit {
    match result {
        Ok(()) => Exit::Ok,
        Err(f) => {
            err!("mailgate: {}", f.message);
            f.exit
        }
    }
}

/// `mailq` and `sendmail -bp`: queued, deferred and held mail in Postfix's layout. The admin
/// sees every entry, a customer only the ones they sent.
pub fn mailq(config_option: Option<&str>) -> Exit {
    report((|| {
        let (ctx, privileged) = admin_context(config_option)?;
        let everyone = require_admin(&ctx.caller, privileged).is_ok();
        let spool = Spool::new(ctx.state()?);
        let mut lists = Vec::new();
        for kind in [Kind::Queue, Kind::Defer, Kind::Hold] {
            lists.push((kind, spool.list(kind)?));
        }
        let mut entries: Vec<(Kind, &Meta)> = lists
            .iter()
            .flat_map(|(k, l)| l.iter().map(move |m| (*k, m)))
            .filter(|(_, m)| everyone || m.uid == ctx.caller.uid)
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
        let text = crate::mailq::render(&entries, &asctime);
        use std::io::Write as _;
        let _ = std::io::stdout().write_all(text.as_bytes());
        Ok(())
    })())
}

/// `sendmail -q`: `mailgate queue flush`.
pub fn flush(config_option: Option<&str>) -> Exit {
    report((|| {
        let (ctx, privileged) = admin_context(config_option)?;
        require_admin(&ctx.caller, privileged)?;
        queue_run(&ctx, queue::Backoff::Ignore)
    })())
}

/// `newaliases`, `sendmail -bi`: there is no alias database here.
pub fn newaliases() -> Exit {
    out!(
        "mailgate: no alias database here: aliases are the relay's business (edit /etc/aliases and run newaliases there)"
    );
    Exit::Ok
}

/// `check-config [PATH]`: every finding with its line; 78 if any. Customers may not probe
/// files with the setgid binary (77); root and group mailgate check PATH as given.
fn check_config(cli: &Cli, path: Option<&str>, privileged: bool) -> Result<(), Failure> {
    require_admin(&Caller::current(), privileged)?;
    let path = match path {
        Some(p) => std::path::PathBuf::from(p),
        None => crate::config::path_for(cli.config.as_deref(), privileged).0,
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Failure::io(Exit::Config, format!("cannot read {}", path.display()), &e))?;
    let file = path.display().to_string();
    let findings = crate::config_check::check(
        &text,
        &file,
        &crate::config_check::System {
            is_login: &identity::is_login,
        },
    );
    if findings.is_empty() {
        let config = Config::parse(&text, &file).map_err(|e| Failure::new(Exit::Config, e.0))?;
        out!(
            "{file}: ok ({} accounts, {} default limits, {} server limits)",
            config.accounts.len(),
            config.defaults.limits.len(),
            config.server.limits.len()
        );
        return Ok(());
    }
    for f in &findings {
        err!("{}", crate::log::printable(f, 1024));
    }
    Err(Failure::new(
        Exit::Config,
        format!("{file}: {} problem(s)", findings.len()),
    ))
}

fn queue_run(ctx: &Context, backoff: queue::Backoff) -> Result<(), Failure> {
    match queue::run(ctx, backoff)? {
        Some(summary) => {
            out!("queue run: {summary}");
            run_result(&summary)
        }
        None => {
            out!("queue run: another queue run is active; nothing done");
            Ok(())
        }
    }
}

/// An entry another process is delivering (or that went meanwhile) is left alone.
fn busy_or_gone(id: &str) -> Failure {
    let f = Failure::new(
        Exit::Unavailable,
        format!("{id}: another process is handling it, or it is gone; nothing done"),
    );
    err!("mailgate: {}", f.message);
    f
}

/// A run that could not handle some entries says so in its exit code (74), after it went
/// on with the others.
fn run_result(summary: &queue::Summary) -> Result<(), Failure> {
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

/// The ids an admin named, or all of an account's, or all.
fn select(
    spool: &Spool<'_>,
    kind: Kind,
    ids: Vec<String>,
    account: Option<&str>,
    all: bool,
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
        .map(|m| m.id)
        .collect())
}

fn queue(ctx: &Context, spool: &Spool<'_>, action: QueueAction) -> Result<(), Failure> {
    match action {
        QueueAction::List { json } => print_list(
            &[
                (Kind::Queue, spool.list(Kind::Queue)?),
                (Kind::Defer, spool.list(Kind::Defer)?),
            ],
            json,
        ),
        QueueAction::Run => queue_run(ctx, queue::Backoff::Honour),
        QueueAction::Flush => queue_run(ctx, queue::Backoff::Ignore),
        QueueAction::Show { id, body } => show(spool, queued_kind(spool, &id)?, &id, body),
        QueueAction::Delete { ids } => {
            let mut busy = None;
            for id in ids {
                let kind = queued_kind(spool, &id)?;
                if spool.delete(kind, &id)? {
                    out!("{id}: deleted");
                    log_admin(ctx, "delete", &id, kind.dir());
                } else {
                    busy = Some(busy_or_gone(&id));
                }
            }
            busy.map_or(Ok(()), Err)
        }
    }
}

/// The spool (queue or defer) that holds `id`.
fn queued_kind(spool: &Spool<'_>, id: &str) -> Result<Kind, Failure> {
    spool
        .find(id)
        .filter(|k| matches!(k, Kind::Queue | Kind::Defer))
        .ok_or_else(|| Failure::new(Exit::Usage, format!("{id}: not in the queue")))
}

fn print_list(lists: &[(Kind, Vec<Meta>)], json: bool) -> Result<(), Failure> {
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

fn show(spool: &Spool<'_>, kind: Kind, id: &str, body: bool) -> Result<(), Failure> {
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
fn terminal_safe(mut m: Meta) -> Meta {
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

/// Changing state needs root or membership in the group the binary runs setgid to.
fn require_admin(caller: &Caller, privileged: bool) -> Result<(), Failure> {
    // SAFETY: getegid cannot fail; getgroups writes at most groups.len() entries.
    let egid = unsafe { libc::getegid() };
    if !privileged || caller.uid == 0 {
        return Ok(());
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    if n > 0 && groups[..n as usize].contains(&egid) {
        return Ok(());
    }
    Err(Failure::new(
        Exit::NoPerm,
        "this command needs root or membership in group mailgate",
    ))
}

#[derive(Serialize)]
struct Status {
    accounts: Vec<CounterStatus>,
    server: Option<CounterStatus>,
}

#[derive(Serialize)]
struct CounterStatus {
    name: String,
    exempt: bool,
    /// Why the account is locked, if it is.
    locked: Option<String>,
    /// Why its counter cannot be read (`mailgate reset` repairs it).
    #[serde(skip_serializing_if = "Option::is_none")]
    broken: Option<String>,
    held: usize,
    deferred: usize,
    queued: usize,
    windows: Vec<WindowStatus>,
}

#[derive(Serialize)]
struct WindowStatus {
    window: String,
    messages: u64,
    recipients: u64,
    refused: u64,
    max_messages: Option<u32>,
    max_recipients: Option<u32>,
    remaining_messages: Option<u64>,
    /// Unix time of the next possible message when the window is full.
    next_possible: Option<i64>,
}

fn status(ctx: &Context, caller: &Caller, only: Option<&str>, json: bool) -> Result<(), Failure> {
    let (config, state, now) = (&ctx.config, ctx.state()?, ctx.now());
    let spool = Spool::new(state);
    let kept: Vec<(Kind, Vec<Meta>)> = [Kind::Hold, Kind::Defer, Kind::Queue]
        .into_iter()
        .map(|k| Ok((k, spool.list(k)?)))
        .collect::<Result<_, Failure>>()?;
    let count = |kind: Kind, account: &str| {
        kept.iter()
            .filter(|(k, _)| *k == kind)
            .flat_map(|(_, l)| l)
            .filter(|m| m.account == account)
            .count()
    };
    let mut names: Vec<String> = match only {
        Some(a) => vec![a.to_string()],
        None => ctx.store()?.accounts()?,
    };
    names.sort();
    if identity::is_privileged() && caller.uid != 0 {
        // A customer sees only the accounts they may send as.
        names.retain(|n| {
            n == &caller.login || identity::resolve_account(caller, Some(n), None, config).is_ok()
        });
    }
    let mut out = Status {
        accounts: Vec::new(),
        server: None,
    };
    let mut broken = 0;
    for name in &names {
        crate::config::validate_account_name(name).map_err(|why| Failure::new(Exit::Usage, why))?;
        // One damaged counter must not hide the others: it is listed as broken.
        let mut c = match ctx.store()?.read(config, Counter::Account(name), now) {
            Ok(rec) => counter_status(
                name,
                config.is_exempt(name),
                &rec,
                config.limits_for(name),
                now,
            ),
            Err(f) => {
                // Busy (a stopped sender holds it) is news for the admin, not damage.
                if !f.message.contains(limits::store::BUSY) {
                    broken += 1;
                }
                let mut c =
                    counter_status(name, config.is_exempt(name), &Record::default(), &[], now);
                c.broken = Some(f.message);
                c
            }
        };
        c.held = count(Kind::Hold, name);
        c.deferred = count(Kind::Defer, name);
        c.queued = count(Kind::Queue, name);
        out.accounts.push(c);
    }
    if let (Some(a), true) = (only, names.is_empty()) {
        return Err(Failure::new(
            Exit::NoPerm,
            format!("account {a:?}: you may not see it (it is not yours)"),
        ));
    }
    if !config.server.limits.is_empty() && (caller.uid == 0 || !identity::is_privileged()) {
        out.server = Some(match ctx.store()?.read(config, Counter::Server, now) {
            Ok(rec) => counter_status("server", false, &rec, &config.server.limits, now),
            Err(f) => {
                if !f.message.contains(limits::store::BUSY) {
                    broken += 1;
                }
                let mut c = counter_status("server", false, &Record::default(), &[], now);
                c.broken = Some(f.message);
                c
            }
        });
    }
    let result = if broken > 0 {
        Err(Failure::new(
            Exit::OsErr,
            format!(
                "{broken} account counter(s) cannot be read; `mailgate reset ACCOUNT` repairs them"
            ),
        ))
    } else {
        Ok(())
    };
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&out)
                .map_err(|e| Failure::new(Exit::Software, e.to_string()))?
        );
        return result;
    }
    for c in out.accounts.iter().chain(out.server.as_ref()) {
        let mut flags = Vec::new();
        if c.exempt {
            flags.push("exempt".to_string());
        }
        if let Some(why) = &c.locked {
            flags.push(format!("LOCKED: {why}"));
        }
        match &c.broken {
            Some(why) if why.contains(limits::store::BUSY) => flags.push(why.clone()),
            Some(why) => flags.push(format!("BROKEN: {why}")),
            None => {}
        }
        for (n, what) in [
            (c.held, "held"),
            (c.deferred, "deferred"),
            (c.queued, "queued"),
        ] {
            if n > 0 {
                flags.push(format!("{n} {what}"));
            }
        }
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!(" ({})", flags.join(", "))
        };
        out!("{}{flags}", c.name);
        for w in &c.windows {
            let limit = match (w.max_messages, w.max_recipients) {
                (Some(m), Some(r)) => format!("{m} msgs / {r} rcpts"),
                (Some(m), None) => format!("{m} msgs"),
                (None, Some(r)) => format!("{r} rcpts"),
                (None, None) => "-".into(),
            };
            let next = w
                .next_possible
                .map(limits::format_time)
                .unwrap_or_else(|| "now".into());
            out!(
                "  {:>5}  used {:>6} msgs {:>7} rcpts  limit {:<22} refused {:>5}  next {next}",
                w.window,
                w.messages,
                w.recipients,
                limit,
                w.refused
            );
        }
    }
    result
}

fn counter_status(
    name: &str,
    exempt: bool,
    rec: &Record,
    limits: &[Limit],
    now: i64,
) -> CounterStatus {
    let mut windows: Vec<Window> = reconcile(rec, limits, now);
    let windows = windows
        .iter_mut()
        .zip(limits)
        .map(|(w, l)| {
            let t = w.advance(now);
            let u = w.usage(t);
            let next = w
                .next_room(t, (1, 1), (l.messages, l.recipients))
                .filter(|&n| n > t);
            WindowStatus {
                window: l.window.to_string(),
                messages: u.messages,
                recipients: u.recipients,
                refused: u.refused,
                max_messages: l.messages,
                max_recipients: l.recipients,
                remaining_messages: l.messages.map(|m| u64::from(m).saturating_sub(u.messages)),
                next_possible: if exempt { None } else { next },
            }
        })
        .collect();
    CounterStatus {
        name: name.to_string(),
        exempt,
        locked: rec.lock.as_ref().map(|l| l.reason.clone()),
        broken: None,
        held: 0,
        deferred: 0,
        queued: 0,
        windows,
    }
}
