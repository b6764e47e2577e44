//! `mailgate status`: each account's windows, spools and state, as text or JSON.

use crate::config::Limit;
use crate::exit::{Exit, Failure, FailureKind};
use crate::identity::{self, Caller};
use crate::limits::{
    self, reconcile,
    store::{Counter, CounterRecord},
    window::Window,
};
use crate::runtime::Runtime;
use crate::spool::{Kind, Meta, Spool};
use serde::Serialize;

#[derive(Serialize)]
struct Status {
    /// Why delivery outcomes are not learnt (the failure-rate triggers are blind), if so.
    outcomes_blind: Option<String>,
    accounts: Vec<CounterStatus>,
    server: Option<CounterStatus>,
}

/// An account's failure-rate trigger: the window's counts and the rule.
#[derive(Serialize)]
struct BounceStatus {
    window: String,
    delivered: u64,
    bounced: u64,
    percent: f64,
    threshold: String,
    action: &'static str,
    observe: bool,
    /// The trigger holds the account's new mail until the rate falls.
    held: bool,
}

#[derive(Serialize)]
struct CounterStatus {
    name: String,
    exempt: bool,
    /// Why the account is locked, if it is.
    locked: Option<String>,
    /// The lock is a bounce trigger's hold, which ends by itself.
    #[serde(skip)]
    held_by_trigger: bool,
    /// Why its counter cannot be read (`mailgate reset` repairs it).
    #[serde(skip_serializing_if = "Option::is_none")]
    broken: Option<String>,
    /// The counter is only busy (a stopped sender holds its lock), not damaged.
    #[serde(skip)]
    busy: bool,
    held: usize,
    deferred: usize,
    queued: usize,
    windows: Vec<WindowStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bounces: Option<BounceStatus>,
}

impl CounterStatus {
    /// Note why the counter cannot be read, and whether it is only busy.
    fn unreadable(&mut self, f: Failure) {
        self.busy = f.kind == FailureKind::Busy;
        self.broken = Some(f.message);
    }
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
    /// The limit only watches (observe mode): over it, mail still goes.
    observe: bool,
}

pub(super) fn status(
    rt: &Runtime,
    caller: &Caller,
    only: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let (config, state) = (&rt.config, rt.state()?);
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
    let names = visible_accounts(rt, caller, only)?;
    let mut out = Status {
        outcomes_blind: crate::delivery::learn::blindness(rt),
        accounts: Vec::new(),
        server: None,
    };
    let mut broken = 0;
    for name in &names {
        crate::config::validate_account_name(name).map_err(|why| Failure::new(Exit::Usage, why))?;
        let limits = config.limits_for(name);
        let mut c = read_counter(rt, Counter::Account(name), config.is_exempt(name), limits)?;
        broken += usize::from(c.broken.is_some() && !c.busy);
        c.held = count(Kind::Hold, name);
        c.deferred = count(Kind::Defer, name);
        c.queued = count(Kind::Queue, name);
        c.bounces = bounce_status(rt, name, c.held_by_trigger);
        out.accounts.push(c);
    }
    if let (Some(a), true) = (only, names.is_empty()) {
        return Err(super::access::not_yours(&format!("account {a:?}")));
    }
    if !config.server.limits.is_empty() && (caller.uid == 0 || !identity::is_privileged()) {
        let c = read_counter(rt, Counter::Server, false, &config.server.limits)?;
        broken += usize::from(c.broken.is_some() && !c.busy);
        out.server = Some(c);
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
    } else {
        if let Some(why) = &out.outcomes_blind {
            out!("delivery outcomes: BLIND: {why}");
        }
        for c in out.accounts.iter().chain(out.server.as_ref()) {
            print_counter(c);
        }
    }
    result
}

/// The account's trigger and where its window stands (from its statistics); `None` without a
/// trigger. `held`: its counter, read already, carries the trigger's hold.
fn bounce_status(rt: &Runtime, account: &str, held: bool) -> Option<BounceStatus> {
    use crate::delivery::rate;
    let t = rt.config.trigger_for(account)?;
    let stats = crate::stats::file::read(rt.state().ok()?, account).unwrap_or_default();
    let (tally, _) = rate::tally(&stats, rt.now(), t.window.secs() as i64);
    Some(BounceStatus {
        window: t.window.to_string(),
        delivered: tally.delivered,
        bounced: tally.bounced,
        percent: (tally.percent() * 10.0).round() / 10.0,
        threshold: rate::threshold(t),
        action: t.action.as_str(),
        observe: t.observe,
        held,
    })
}

/// The accounts `status` shows: the one asked for, or every account with counters; a
/// customer sees only the accounts they may send as.
fn visible_accounts(
    rt: &Runtime,
    caller: &Caller,
    only: Option<&str>,
) -> Result<Vec<String>, Failure> {
    let mut names: Vec<String> = match only {
        Some(a) => vec![a.to_string()],
        None => rt.store()?.accounts()?,
    };
    names.sort();
    if identity::is_privileged() && caller.uid != 0 {
        names.retain(|n| {
            n == &caller.login
                || identity::resolve_account(caller, Some(n), None, &rt.config).is_ok()
        });
    }
    Ok(names)
}

/// One counter's status. One damaged counter must not hide the others: it is listed as
/// broken (or busy, when a stopped sender holds it: news for the admin, not damage).
fn read_counter(
    rt: &Runtime,
    counter: Counter<'_>,
    exempt: bool,
    limits: &[Limit],
) -> Result<CounterStatus, Failure> {
    let now = rt.now();
    let name = match counter {
        Counter::Account(a) => a,
        Counter::Server => "server",
    };
    Ok(match rt.store()?.read(&rt.config, counter, now) {
        Ok(rec) => counter_status(name, exempt, &rec, limits, now),
        Err(f) => {
            let mut c = counter_status(name, exempt, &CounterRecord::default(), &[], now);
            c.unreadable(f);
            c
        }
    })
}

/// The text form: the account's line with its flags, then one line per window.
fn print_counter(c: &CounterStatus) {
    let mut flags = Vec::new();
    if c.exempt {
        flags.push("exempt".to_string());
    }
    if let Some(why) = &c.locked {
        flags.push(format!("LOCKED: {why}"));
    }
    match &c.broken {
        Some(why) if c.busy => flags.push(why.clone()),
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
    if let Some(b) = &c.bounces {
        out!(
            "  bounces    {} of {} recipients ({:.0} %) within {}; trigger: {} ({}{}){}",
            b.bounced,
            b.bounced + b.delivered,
            b.percent,
            b.window,
            b.threshold,
            b.action,
            if b.observe { ", observe only" } else { "" },
            if b.held { "; HOLDING new mail" } else { "" }
        );
    }
    for w in &c.windows {
        let limit = match (w.max_messages, w.max_recipients) {
            (Some(m), Some(r)) => format!("{m} msgs / {r} rcpts"),
            (Some(m), None) => format!("{m} msgs"),
            (None, Some(r)) => format!("{r} rcpts"),
            (None, None) => "-".into(),
        };
        let next = match w.next_possible {
            Some(_) if w.observe => "now (observe only: would have stopped mail)".into(),
            Some(t) => limits::format_time(t),
            None if w.observe => "now (observe only)".into(),
            None => "now".into(),
        };
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

fn counter_status(
    name: &str,
    exempt: bool,
    rec: &CounterRecord,
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
                observe: l.observe,
            }
        })
        .collect();
    CounterStatus {
        name: name.to_string(),
        exempt,
        locked: rec.lock.as_ref().map(|l| l.reason.clone()),
        held_by_trigger: rec.lock.as_ref().is_some_and(|l| l.ends_itself),
        broken: None,
        busy: false,
        held: 0,
        deferred: 0,
        queued: 0,
        windows,
        bounces: None,
    }
}
