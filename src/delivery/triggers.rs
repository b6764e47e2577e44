//! The failure-rate triggers acting on what `learn` counted: each account's own trigger and
//! the server's, judged on every run (a busy statistics file is read without its lock), and
//! what they do: hold or lock the account, tell the admin and the customer once, end a hold
//! when the rate falls. The arithmetic is `rate`'s; the marks (`.held`, `.server`,
//! `.alerted-ACCOUNT`) are `marks`'.

use super::learn::Counted;
use super::{marks, rate};
use crate::config::{Trigger, TriggerAction, TriggerEnd};
use crate::limits::store::{AccountLock, Counter};
use crate::log::{Fields, Severity};
use crate::runtime::Runtime;
use crate::runtime::notify;
use crate::state::Dir;
use crate::stats::{self, Outcome};
use std::collections::BTreeMap;

/// Sample replies kept per source for the notices.
const SAMPLES: usize = 3;

/// A trigger's view of one account after this run.
struct Evaluation {
    tally: rate::Tally,
    /// (source, bounced, delivered, sample replies).
    worst: Vec<(String, u64, u64, Vec<String>)>,
}

/// Count each account's outcomes, then ask its trigger (and the server's). Accounts a trigger
/// holds are asked too, without new outcomes, so that their hold ends when the window moves on.
pub(super) fn run(rt: &Runtime, dir: &Dir, by_account: BTreeMap<String, Vec<Counted>>) {
    let Ok(state) = rt.state() else { return };
    let now = rt.now();
    let mut held: Vec<String> = marks::read(dir, marks::HELD)
        .lines()
        .filter(|l| crate::config::validate_account_name(l).is_ok())
        .map(str::to_string)
        .collect();
    let mut evaluations: BTreeMap<String, Evaluation> = BTreeMap::new();
    for (account, counted) in &by_account {
        let events: Vec<stats::Event<'_>> = counted
            .iter()
            .map(|c| stats::Event {
                now,
                outcome: c.outcome,
                recipients: 1,
                script: &c.script,
                cwd: &c.cwd,
                lock_wait_us: None,
                lock_busy: false,
                relay_error: None,
            })
            .collect();
        let window = trigger_window(rt, account);
        let updated = stats::file::update(
            state,
            account,
            std::time::Duration::from_millis(200),
            &events,
            |s| rate::tally(s, now, window),
        );
        let (tally, sources) = match updated {
            Ok((stats::file::Updated::Done(t), note)) => {
                if let Some(why) = note {
                    rt.logger.log(Severity::Warning, &why);
                }
                t
            }
            // A process of the account holds the file's lock (a customer's sender, perhaps
            // stopped on purpose): the outcomes went to the backlog, and the lock-free read
            // (file plus backlog) judges the account now, so no lock a customer holds can
            // keep the trigger from looking.
            Ok((stats::file::Updated::Busy, _)) => match stats::file::read(state, account) {
                Ok(s) => rate::tally(&s, now, window),
                Err(f) => {
                    rt.logger.log(Severity::Warning, &f.message);
                    continue;
                }
            },
            Err(f) => {
                rt.logger.log(Severity::Warning, &f.message);
                continue;
            }
        };
        let added = rate::Tally {
            delivered: counted
                .iter()
                .filter(|c| c.outcome == Outcome::Delivered)
                .count() as u64,
            bounced: counted
                .iter()
                .filter(|c| c.outcome == Outcome::Bounced)
                .count() as u64,
        };
        let tally = shared_tally(rt, account, now, window, added).unwrap_or(tally);
        evaluations.insert(account.clone(), evaluate(tally, sources, counted));
    }
    for account in &held {
        if evaluations.contains_key(account) {
            continue;
        }
        if let Ok(s) = stats::file::read(state, account) {
            let window = trigger_window(rt, account);
            let (tally, sources) = rate::tally(&s, now, window);
            let tally =
                shared_tally(rt, account, now, window, rate::Tally::default()).unwrap_or(tally);
            evaluations.insert(account.clone(), evaluate(tally, sources, &[]));
        }
    }
    let server_hit = rt.config.server.trigger.as_ref().filter(|t| {
        let tally = server_tally(dir, now, t.window.secs() as i64);
        rate::passes(t, &tally)
    });
    for (account, ev) in &evaluations {
        if rt.config.is_exempt(account) {
            continue;
        }
        let own = rt.config.trigger_for(account);
        let fired = match (own, server_hit) {
            (Some(t), _) if rate::passes(t, &ev.tally) => Some(t),
            // The server's rate is over its threshold: it acts on the accounts whose own
            // rate passes it too (a newsletter's 5 % is not held for another's 60 %).
            (_, Some(t)) if rate::passes(t, &ev.tally) => Some(t),
            _ => None,
        };
        match fired {
            Some(t) => fire(rt, dir, account, t, ev, &mut held),
            None => end_if_held(rt, account, ev, &mut held),
        }
    }
    held.sort();
    held.dedup();
    marks::write(
        dir,
        marks::HELD,
        &held.iter().map(|a| format!("{a}\n")).collect::<String>(),
    );
}

/// On a cluster (a store the nodes share), this node's new outcomes added to everyone's, and
/// the account's tally over the window as all nodes learnt it: a script that bounces a little
/// through each of ten nodes is judged on its bounces across the ten. `None` for the file
/// store, or when the shared store does not answer (the node's own tally decides this run).
fn shared_tally(
    rt: &Runtime,
    account: &str,
    now: i64,
    window: i64,
    added: rate::Tally,
) -> Option<rate::Tally> {
    let store = rt.store().ok()?;
    let (delivered, bounced) =
        store.add_outcomes(account, now, (added.delivered, added.bounced), window)?;
    Some(rate::Tally { delivered, bounced })
}

fn trigger_window(rt: &Runtime, account: &str) -> i64 {
    rt.config
        .trigger_for(account)
        .or(rt.config.server.trigger.as_ref())
        .map_or(3600, |t| t.window.secs() as i64)
}

fn evaluate(
    tally: rate::Tally,
    sources: Vec<(stats::SourceKey, rate::Tally)>,
    counted: &[Counted],
) -> Evaluation {
    let worst = sources
        .into_iter()
        .map(|(key, t)| {
            let samples: Vec<String> = counted
                .iter()
                .filter(|c| {
                    c.outcome == Outcome::Bounced && stats::SourceKey::of(&c.script, &c.cwd) == key
                })
                .map(|c| c.reply.clone())
                .take(SAMPLES)
                .collect();
            (key.label(), t.bounced, t.delivered, samples)
        })
        .collect();
    Evaluation { tally, worst }
}

/// The trigger fired for `account`: hold, lock or only tell; in observe mode only say what it
/// would have done. Told once per window (a hold or lock: once when it begins).
fn fire(
    rt: &Runtime,
    dir: &Dir,
    account: &str,
    t: &Trigger,
    ev: &Evaluation,
    held: &mut Vec<String>,
) {
    let now = rt.now();
    let window = t.window;
    let tally = format!("{} within {window}", ev.tally.describe());
    let ends_itself = t.action == TriggerAction::Hold && t.ends == TriggerEnd::Auto;
    let (action, ends) = match (t.observe, t.action) {
        (true, a) => (
            format!("none (observe mode): would have {}", would(a)),
            "the mail flows; set observe = false to enforce".to_string(),
        ),
        (false, TriggerAction::Notify) => (
            "none (notify only)".to_string(),
            "nothing was stopped".to_string(),
        ),
        (false, TriggerAction::Hold) if ends_itself => (
            "new mail is held".to_string(),
            format!(
                "automatically, once the bounce rate within {window} falls under the threshold (or `mailgate unlock {account}`)"
            ),
        ),
        (false, _) => (
            "locked: new mail is held".to_string(),
            format!("when the admin runs `mailgate unlock {account}`"),
        ),
    };
    let enforce = !t.observe && t.action != TriggerAction::Notify;
    if enforce {
        let locked = rt
            .store()
            .and_then(|s| s.read(&rt.config, Counter::Account(account), now))
            .ok()
            .and_then(|r| r.lock)
            .is_some();
        if locked {
            return; // held or locked already: told when it began
        }
        let lock = AccountLock {
            since: now,
            reason: format!("bounce rate: {}", ev.tally.describe()),
            ends_itself,
        };
        match rt
            .store()
            .and_then(|s| s.set_lock(&rt.config, account, Some(lock)))
        {
            Ok(_) => {
                if ends_itself {
                    held.push(account.to_string());
                }
            }
            Err(f) => {
                rt.logger.log(Severity::Warning, &f.message);
                return;
            }
        }
    } else if !claim_alert(dir, account, now, window.secs() as i64) {
        return;
    }
    let mut fields = Fields::default();
    fields
        .add("account", account)
        .add(
            "trigger",
            if t.observe {
                "observe"
            } else {
                t.action.as_str()
            },
        )
        .add("bounced", ev.tally.bounced)
        .add("delivered", ev.tally.delivered)
        .add("window", window)
        .add("action", &action);
    if let Some((worst, ..)) = ev.worst.first() {
        fields.add("worst", worst);
    }
    rt.logger.log(Severity::Warning, fields.as_str());
    let b = notify::Bounces {
        account: account.to_string(),
        tally,
        threshold: rate::threshold(t),
        action,
        ends,
        worst: ev.worst.clone(),
    };
    tell(rt, &b, true);
    if !t.observe {
        tell(rt, &b, false);
    }
}

fn would(a: TriggerAction) -> &'static str {
    match a {
        TriggerAction::Hold => "held the account's new mail",
        TriggerAction::Lock => "locked the account",
        TriggerAction::Notify => "notified",
    }
}

/// A trigger's own hold ends when the account's rate is under the threshold again.
fn end_if_held(rt: &Runtime, account: &str, ev: &Evaluation, held: &mut Vec<String>) {
    if !held.iter().any(|a| a == account) {
        return;
    }
    let now = rt.now();
    let Ok(store) = rt.store() else { return };
    let lock = store
        .read(&rt.config, Counter::Account(account), now)
        .ok()
        .and_then(|r| r.lock);
    held.retain(|a| a != account);
    // Only a hold the trigger itself set and that ends by itself; an admin's lock stays.
    if !lock.is_some_and(|l| l.ends_itself) {
        return;
    }
    if store.set_lock(&rt.config, account, None).is_err() {
        held.push(account.to_string());
        return;
    }
    let line = format!(
        "account={account} trigger=ended reason=\"bounce rate back under the threshold: {}\"",
        ev.tally.describe()
    );
    rt.logger.log(Severity::Info, &line);
    if let Some(admin) = rt.admin_address() {
        let b = notify::Bounces {
            account: account.to_string(),
            tally: ev.tally.describe(),
            threshold: String::new(),
            action: "the hold has ended: new mail flows again (held mail stays held)".into(),
            ends: "ended".into(),
            worst: ev.worst.clone(),
        };
        send(rt, &b, true, &admin);
    }
}

/// The admin's alert (`to_admin`), or the notice to the account's notify addresses.
fn tell(rt: &Runtime, b: &notify::Bounces, to_admin: bool) {
    let to = if to_admin {
        rt.admin_address().into_iter().collect()
    } else {
        rt.notify_addresses(&b.account)
    };
    for addr in to {
        send(rt, b, to_admin, &addr);
    }
}

fn send(rt: &Runtime, b: &notify::Bounces, to_admin: bool, to: &str) {
    let what = if to_admin { "alert" } else { "notice" };
    let msg = notify::bounces_message(b, to_admin, &rt.envelope_to(to));
    rt.send_internal(msg, to, what);
}

/// The first alert of `account` within `secs`: `true`, and no other until then.
fn claim_alert(dir: &Dir, account: &str, now: i64, secs: i64) -> bool {
    let name = format!("{}{account}", marks::ALERTED);
    let mut until: i64 = marks::read(dir, &name).trim().parse().unwrap_or(0);
    if !stats::claim_window(&mut until, now, secs) {
        return false;
    }
    marks::write(dir, &name, &until.to_string());
    true
}

/// The server's buckets, with this run's outcomes added; older than a day dropped.
pub(super) fn add_to_server(dir: &Dir, by_account: &BTreeMap<String, Vec<Counted>>, now: i64) {
    let mut buckets = server_buckets(dir);
    let start = now.div_euclid(stats::FINE) * stats::FINE;
    let mut add = rate::Tally::default();
    for c in by_account.values().flatten() {
        match c.outcome {
            Outcome::Delivered => add.delivered += 1,
            Outcome::Bounced => add.bounced += 1,
            _ => {}
        }
    }
    if add == rate::Tally::default() {
        return;
    }
    buckets.entry(start).or_default().add(add);
    buckets.retain(|&s, _| s > now - stats::KEEP && s <= now);
    let text: String = buckets
        .iter()
        .map(|(s, t)| format!("{s} {} {}\n", t.delivered, t.bounced))
        .collect();
    marks::write(dir, marks::SERVER, &text);
}

fn server_buckets(dir: &Dir) -> BTreeMap<i64, rate::Tally> {
    let mut out = BTreeMap::new();
    for line in marks::read(dir, marks::SERVER).lines() {
        let n: Vec<i64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [start, d, b] = n[..] {
            out.insert(
                start,
                rate::Tally {
                    delivered: d.max(0) as u64,
                    bounced: b.max(0) as u64,
                },
            );
        }
    }
    out
}

fn server_tally(dir: &Dir, now: i64, window: i64) -> rate::Tally {
    let mut t = rate::Tally::default();
    for (start, b) in server_buckets(dir) {
        if rate::in_window(start, now, window) {
            t.add(b);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(script: &str, outcome: Outcome, reply: &str) -> Counted {
        Counted {
            script: script.into(),
            cwd: "/var/www".into(),
            outcome,
            reply: reply.into(),
        }
    }

    #[test]
    fn the_worst_sources_are_named_escaped_with_their_own_bounces_as_samples() {
        let hostile = "1:/x.php\nTo: victim@example.org";
        let counted = [
            counted(hostile, Outcome::Bounced, "550 one"),
            counted(hostile, Outcome::Delivered, "250 ok"),
            counted("1:/other.php", Outcome::Bounced, "550 other"),
            counted(hostile, Outcome::Bounced, "550 two"),
            counted(hostile, Outcome::Bounced, "550 three"),
            counted(hostile, Outcome::Bounced, "550 four"),
        ];
        let tally = rate::Tally {
            delivered: 1,
            bounced: 4,
        };
        let ev = evaluate(
            tally,
            vec![(stats::SourceKey::of(hostile, "/"), tally)],
            &counted,
        );
        let (name, bounced, delivered, samples) = &ev.worst[0];
        assert!(!name.contains('\n'), "{name}");
        assert_eq!((*bounced, *delivered), (4, 1));
        assert_eq!(samples, &["550 one", "550 two", "550 three"]);
    }
}
