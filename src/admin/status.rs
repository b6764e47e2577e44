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
    /// The counter is only busy (a stopped sender holds its lock), not damaged.
    #[serde(skip)]
    busy: bool,
    held: usize,
    deferred: usize,
    queued: usize,
    windows: Vec<WindowStatus>,
}

impl CounterStatus {
    /// Note why the counter cannot be read; 1 when that is damage, 0 when it is busy.
    fn unreadable(&mut self, f: Failure) -> usize {
        self.busy = f.kind == FailureKind::Busy;
        self.broken = Some(f.message);
        usize::from(!self.busy)
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
}

pub(super) fn status(
    ctx: &Runtime,
    caller: &Caller,
    only: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
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
                let mut c = counter_status(
                    name,
                    config.is_exempt(name),
                    &CounterRecord::default(),
                    &[],
                    now,
                );
                broken += c.unreadable(f);
                c
            }
        };
        c.held = count(Kind::Hold, name);
        c.deferred = count(Kind::Defer, name);
        c.queued = count(Kind::Queue, name);
        out.accounts.push(c);
    }
    if let (Some(a), true) = (only, names.is_empty()) {
        return Err(super::not_yours(&format!("account {a:?}")));
    }
    if !config.server.limits.is_empty() && (caller.uid == 0 || !identity::is_privileged()) {
        out.server = Some(match ctx.store()?.read(config, Counter::Server, now) {
            Ok(rec) => counter_status("server", false, &rec, &config.server.limits, now),
            Err(f) => {
                let mut c = counter_status("server", false, &CounterRecord::default(), &[], now);
                broken += c.unreadable(f);
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
            }
        })
        .collect();
    CounterStatus {
        name: name.to_string(),
        exempt,
        locked: rec.lock.as_ref().map(|l| l.reason.clone()),
        broken: None,
        busy: false,
        held: 0,
        deferred: 0,
        queued: 0,
        windows,
    }
}
