//! What became of the mail after the relay took it: the hand-over record written at the relay's
//! 250, and `queue run`'s step that learns the outcomes from the relay's log, counts them per
//! account and script, and runs the failure-rate triggers (`delivery` has the pure parts).
//!
//! Nothing here can stop a message that the limits let through, except a trigger's hold; and
//! everything here keeps working (blind, and saying so) when the relay's log is missing,
//! unreadable or rotated away.

use crate::config::{Trigger, TriggerAction, TriggerEnd};
use crate::delivery::record::{self, Handed, Step};
use crate::delivery::{self, postfix_log, reader, trigger};
use crate::limits::store::{AccountLock, Counter};
use crate::log::{Fields, Severity};
use crate::message::Message;
use crate::relay::disposition::Disposition;
use crate::runtime::Runtime;
use crate::runtime::notify;
use crate::spool::Meta;
use crate::state::{Dir, flags};
use crate::stats::{self, Outcome};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;

/// Files of this step in `delivery/` (dot names: never a queue id).
const POSITION: &str = ".position";
const BLIND: &str = ".blind";
/// Why the relay's log may hold lines others wrote, as last said in the log.
const FORGEABLE: &str = ".forgeable";
/// Accounts a trigger holds until their rate falls (one name per line).
const HELD: &str = ".held";
/// The whole server's outcomes, in 5-minute buckets ("start delivered bounced" lines).
const SERVER: &str = ".server";
/// Per account: until when no further trigger alert goes out ("alerted-ACCOUNT").
const ALERTED: &str = ".alerted-";
/// Sample replies kept per source for the notices.
const SAMPLES: usize = 3;

/// At the relay's 250: write the hand-over record, when outcomes are learnt at all.
/// Best effort (the message is the relay's now): a failure is logged, never returned.
pub fn record_hand_over(
    ctx: &Runtime,
    meta: &Meta,
    msg: &Message,
    disposition: &Disposition,
    route: &str,
) {
    if ctx.config.outcomes.relay_log.is_none() || meta.internal {
        return;
    }
    let (reply, left_out) = match disposition {
        Disposition::Delivered { reply } => (reply, Vec::new()),
        Disposition::Partly {
            reply,
            retry,
            failed,
        } => (
            reply,
            retry.iter().chain(failed).map(|(r, _)| r.clone()).collect(),
        ),
        _ => return,
    };
    let reply = reply.to_string();
    let Some(relay_id) = postfix_log::queued_as(&reply) else {
        return;
    };
    let handed = Handed {
        id: meta.id.clone(),
        account: meta.account.clone(),
        uid: meta.uid,
        user: meta.user.clone(),
        script: meta.script.clone(),
        cwd: meta.cwd.clone(),
        pool: meta.pool.clone(),
        sender: meta.sender.clone(),
        recipients: meta
            .recipients
            .iter()
            .filter(|r| !left_out.contains(r))
            .cloned()
            .collect(),
        message_id: msg
            .header("Message-ID")
            .map(|h| h.value().trim().to_string())
            .unwrap_or_default(),
        subject: meta.subject.clone(),
        size: meta.size,
        time: meta.time,
        handed: ctx.now(),
        route: route.to_string(),
        relay_id: relay_id.to_string(),
        reply,
        recipients_cut: 0,
    };
    let written = ctx.state().map_err(|f| f.message).and_then(|state| {
        // Below the spool's free-space reserve a customer's record is not written: kept mail
        // and root's work come first (the message is the relay's already).
        let reserve = ctx.config.spool.min_free_percent;
        match state.top().free_percent() {
            Some(free) if free < reserve && !ctx.config.is_exempt(&meta.account) => Err(format!(
                "the state filesystem is down to {free}% free (reserve {reserve}%)"
            )),
            _ => record::write(state, handed).map_err(|e| e.to_string()),
        }
    });
    if let Err(why) = written {
        ctx.logger.log(
            Severity::Warning,
            &format!(
                "id={} cannot write its hand-over record (trace and outcomes will not know it): {why}",
                meta.id
            ),
        );
    }
}

/// What one run learnt.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Learnt {
    pub lines: usize,
    /// Facts about messages mailgate handed over.
    pub matched: usize,
    /// Recipient outcomes counted.
    pub counted: usize,
    pub blind: Option<String>,
}

/// One counted outcome of an account, with where the message came from.
struct Counted {
    script: String,
    cwd: String,
    outcome: Outcome,
    reply: String,
}

/// `queue run`'s step: read what the relay logged since the last run, count it, run the
/// triggers.
pub fn learn(ctx: &Runtime) -> Learnt {
    let mut learnt = Learnt::default();
    let Some(path) = ctx.config.outcomes.relay_log.clone() else {
        return learnt;
    };
    let Ok(dir) = ctx.state().and_then(|s| s.subdir(record::DIR)) else {
        return learnt;
    };
    let position = reader::Position::decode(&read_small(&dir, POSITION));
    let batch = match reader::read_new(&path, position, ctx.config.outcomes.max_read) {
        Ok(batch) => batch,
        // Only root reads the relay's log (its mode is 0600 root); a queue run by an admin in
        // group mailgate leaves the outcomes to root's next run.
        // SAFETY: geteuid cannot fail.
        Err(reader::Blind { denied: true, .. }) if unsafe { libc::geteuid() } != 0 => {
            return learnt;
        }
        // Blind, the triggers are not asked: a hold ends on a rate that is seen to fall, never
        // on outcomes that could not be read.
        Err(reader::Blind { why, .. }) => {
            went_blind(ctx, &dir, &why);
            learnt.blind = Some(why);
            return learnt;
        }
    };
    note_source(ctx, &dir, &path);
    if !read_small(&dir, BLIND).is_empty() && dir.unlink(BLIND).is_ok() {
        ctx.logger.log(
            Severity::Info,
            &format!("outcomes: {} can be read again", path.display()),
        );
    }
    for note in &batch.notes {
        ctx.logger
            .log(Severity::Warning, &format!("outcomes: {note}"));
    }
    let now = ctx.now();
    let name = &ctx.config.outcomes.syslog_name;
    // Each message's facts in log order, so that its record is opened once for all of them.
    let mut facts: HashMap<&str, Vec<postfix_log::Fact<'_>>> = HashMap::new();
    for line in batch.text.lines() {
        learnt.lines += 1;
        if let Some((queue_id, fact)) = postfix_log::parse(line, name) {
            facts.entry(queue_id).or_default().push(fact);
        }
    }
    let mut by_account: BTreeMap<String, Vec<Counted>> = BTreeMap::new();
    for (queue_id, facts) in facts {
        let Some(mut opened) = record::open(&dir, queue_id) else {
            continue;
        };
        let mut steps: Vec<Step> = Vec::new();
        let rec = &mut opened.record;
        for fact in &facts {
            learnt.matched += 1;
            let applied = delivery::apply(rec, fact, now);
            steps.extend(applied.steps);
            let counted = by_account.entry(rec.handed.account.clone()).or_default();
            for (outcome, reply) in applied.counted {
                learnt.counted += 1;
                counted.push(Counted {
                    script: rec.handed.script.clone(),
                    cwd: rec.handed.cwd.clone(),
                    outcome,
                    reply,
                });
            }
        }
        if !steps.is_empty()
            && let Err(e) = opened.append(&steps)
        {
            ctx.logger.log(
                Severity::Warning,
                &format!("outcomes: cannot add to the record of {queue_id}: {e}"),
            );
        }
    }
    write_small(&dir, POSITION, &batch.next.encode());
    add_to_server(&dir, &by_account, now);
    run_triggers(ctx, &dir, by_account);
    expire_records(ctx, &dir);
    learnt
}

/// The relay's log cannot be read: said in the log and to the admin once (and again only when
/// the reason changes); `status` shows `.blind` as long as it lasts.
fn went_blind(ctx: &Runtime, dir: &Dir, why: &str) {
    if read_small(dir, BLIND) == why {
        return;
    }
    write_small(dir, BLIND, why);
    ctx.logger.log(
        Severity::Warning,
        &format!("outcomes: blind: {why}; the failure-rate triggers cannot see bounces"),
    );
    if let Some(admin) = ctx.admin_address() {
        let msg = notify::blind_message(why, &ctx.envelope_to(&admin));
        ctx.send_internal(msg, &admin, "alert");
    }
}

/// Why local users could write lines into the relay's log, if they could (`check-config`
/// says it too).
pub fn source_warning(
    outcomes: &crate::config::Outcomes,
    path: &std::path::Path,
) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let config_dir = &outcomes.relay_config;
    let main_cf = std::fs::read_to_string(config_dir.join("main.cf")).ok();
    let mode = std::fs::symlink_metadata(path).ok().map(|m| m.mode());
    delivery::source::forgeable(path, config_dir, main_cf.as_deref(), mode)
}

/// Say in the log, once (and again when the reason changes), that the relay's log can hold
/// lines that other local users wrote: the outcomes are then evidence anyone can forge.
fn note_source(ctx: &Runtime, dir: &Dir, path: &std::path::Path) {
    let why = source_warning(&ctx.config.outcomes, path).unwrap_or_default();
    if read_small(dir, FORGEABLE) == why {
        return;
    }
    if why.is_empty() {
        let _ = dir.unlink(FORGEABLE);
        return;
    }
    write_small(dir, FORGEABLE, &why);
    ctx.logger.log(
        Severity::Warning,
        &format!("outcomes: the relay's log is not evidence only the relay writes: {why}"),
    );
}

/// Why outcomes are not learnt, if they are not: for `status`.
pub fn blindness(ctx: &Runtime) -> Option<String> {
    if ctx.config.outcomes.relay_log.is_none() {
        return Some("[outcomes] relay_log is not set: delivery outcomes are not learnt".into());
    }
    let dir = ctx.state().ok()?.top().open_dir(record::DIR).ok()?;
    let why = read_small(&dir, BLIND);
    (!why.is_empty()).then_some(why)
}

/// A trigger's view of one account after this run.
struct Evaluation {
    tally: trigger::Tally,
    /// (source, bounced, delivered, sample replies).
    worst: Vec<(String, u64, u64, Vec<String>)>,
}

/// Count each account's outcomes, then ask its trigger (and the server's). Accounts a trigger
/// holds are asked too, without new outcomes, so that their hold ends when the window moves on.
fn run_triggers(ctx: &Runtime, dir: &Dir, by_account: BTreeMap<String, Vec<Counted>>) {
    let Ok(state) = ctx.state() else { return };
    let now = ctx.now();
    let mut held: Vec<String> = read_small(dir, HELD)
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
        let window = trigger_window(ctx, account);
        let updated = stats::file::update(
            state,
            account,
            std::time::Duration::from_millis(200),
            &events,
            |s| trigger::tally(s, now, window),
        );
        let (tally, sources) = match updated {
            Ok((stats::file::Updated::Done(t), note)) => {
                if let Some(why) = note {
                    ctx.logger.log(Severity::Warning, &why);
                }
                t
            }
            // A process of the account holds the file's lock (a customer's sender, perhaps
            // stopped on purpose): the outcomes went to the backlog, and the lock-free read
            // (file plus backlog) judges the account now, so no lock a customer holds can
            // keep the trigger from looking.
            Ok((stats::file::Updated::Busy, _)) => match stats::file::read(state, account) {
                Ok(s) => trigger::tally(&s, now, window),
                Err(f) => {
                    ctx.logger.log(Severity::Warning, &f.message);
                    continue;
                }
            },
            Err(f) => {
                ctx.logger.log(Severity::Warning, &f.message);
                continue;
            }
        };
        evaluations.insert(account.clone(), evaluate(tally, sources, counted));
    }
    for account in &held {
        if evaluations.contains_key(account) {
            continue;
        }
        if let Ok(s) = stats::file::read(state, account) {
            let (tally, sources) = trigger::tally(&s, now, trigger_window(ctx, account));
            evaluations.insert(account.clone(), evaluate(tally, sources, &[]));
        }
    }
    let server_hit = ctx.config.server.trigger.as_ref().filter(|t| {
        let tally = server_tally(dir, now, t.window.secs() as i64);
        trigger::passes(t, &tally)
    });
    for (account, ev) in &evaluations {
        if ctx.config.is_exempt(account) {
            continue;
        }
        let own = ctx.config.trigger_for(account);
        let fired = match (own, server_hit) {
            (Some(t), _) if trigger::passes(t, &ev.tally) => Some(t),
            // The server's rate is over its threshold: it acts on the accounts whose own
            // rate passes it too (a newsletter's 5 % is not held for another's 60 %).
            (_, Some(t)) if trigger::passes(t, &ev.tally) => Some(t),
            _ => None,
        };
        match fired {
            Some(t) => fire(ctx, dir, account, t, ev, &mut held),
            None => end_if_held(ctx, account, ev, &mut held),
        }
    }
    held.sort();
    held.dedup();
    write_small(
        dir,
        HELD,
        &held.iter().map(|a| format!("{a}\n")).collect::<String>(),
    );
}

fn trigger_window(ctx: &Runtime, account: &str) -> i64 {
    ctx.config
        .trigger_for(account)
        .or(ctx.config.server.trigger.as_ref())
        .map_or(3600, |t| t.window.secs() as i64)
}

fn evaluate(
    tally: trigger::Tally,
    sources: Vec<(stats::SourceKey, trigger::Tally)>,
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
    ctx: &Runtime,
    dir: &Dir,
    account: &str,
    t: &Trigger,
    ev: &Evaluation,
    held: &mut Vec<String>,
) {
    let now = ctx.now();
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
        let locked = ctx
            .store()
            .and_then(|s| s.read(&ctx.config, Counter::Account(account), now))
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
        match ctx
            .store()
            .and_then(|s| s.set_lock(&ctx.config, account, Some(lock)))
        {
            Ok(_) => {
                if ends_itself {
                    held.push(account.to_string());
                }
            }
            Err(f) => {
                ctx.logger.log(Severity::Warning, &f.message);
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
    ctx.logger.log(Severity::Warning, fields.as_str());
    let b = notify::Bounces {
        account: account.to_string(),
        tally,
        threshold: trigger::threshold(t),
        action,
        ends,
        worst: ev.worst.clone(),
    };
    tell(ctx, &b, true);
    if !t.observe {
        tell(ctx, &b, false);
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
fn end_if_held(ctx: &Runtime, account: &str, ev: &Evaluation, held: &mut Vec<String>) {
    if !held.iter().any(|a| a == account) {
        return;
    }
    let now = ctx.now();
    let Ok(store) = ctx.store() else { return };
    let lock = store
        .read(&ctx.config, Counter::Account(account), now)
        .ok()
        .and_then(|r| r.lock);
    held.retain(|a| a != account);
    // Only a hold the trigger itself set and that ends by itself; an admin's lock stays.
    if !lock.is_some_and(|l| l.ends_itself) {
        return;
    }
    if store.set_lock(&ctx.config, account, None).is_err() {
        held.push(account.to_string());
        return;
    }
    let line = format!(
        "account={account} trigger=ended reason=\"bounce rate back under the threshold: {}\"",
        ev.tally.describe()
    );
    ctx.logger.log(Severity::Info, &line);
    if let Some(admin) = ctx.admin_address() {
        let b = notify::Bounces {
            account: account.to_string(),
            tally: ev.tally.describe(),
            threshold: String::new(),
            action: "the hold has ended: new mail flows again (held mail stays held)".into(),
            ends: "ended".into(),
            worst: ev.worst.clone(),
        };
        send(ctx, &b, true, &admin);
    }
}

/// The admin's alert (`to_admin`), or the notice to the account's notify addresses.
fn tell(ctx: &Runtime, b: &notify::Bounces, to_admin: bool) {
    let to = if to_admin {
        ctx.admin_address().into_iter().collect()
    } else {
        ctx.notify_addresses(&b.account)
    };
    for addr in to {
        send(ctx, b, to_admin, &addr);
    }
}

fn send(ctx: &Runtime, b: &notify::Bounces, to_admin: bool, to: &str) {
    let what = if to_admin { "alert" } else { "notice" };
    let msg = notify::bounces_message(b, to_admin, &ctx.envelope_to(to));
    ctx.send_internal(msg, to, what);
}

/// The first alert of `account` within `secs`: `true`, and no other until then.
fn claim_alert(dir: &Dir, account: &str, now: i64, secs: i64) -> bool {
    let name = format!("{ALERTED}{account}");
    let mut until: i64 = read_small(dir, &name).trim().parse().unwrap_or(0);
    if !stats::claim_window(&mut until, now, secs) {
        return false;
    }
    write_small(dir, &name, &until.to_string());
    true
}

/// The server's buckets, with this run's outcomes added; older than a day dropped.
fn add_to_server(dir: &Dir, by_account: &BTreeMap<String, Vec<Counted>>, now: i64) {
    let mut buckets = server_buckets(dir);
    let start = now.div_euclid(stats::FINE) * stats::FINE;
    let mut add = trigger::Tally::default();
    for c in by_account.values().flatten() {
        match c.outcome {
            Outcome::Delivered => add.delivered += 1,
            Outcome::Bounced => add.bounced += 1,
            _ => {}
        }
    }
    if add == trigger::Tally::default() {
        return;
    }
    buckets.entry(start).or_default().add(add);
    buckets.retain(|&s, _| s > now - stats::KEEP && s <= now);
    let text: String = buckets
        .iter()
        .map(|(s, t)| format!("{s} {} {}\n", t.delivered, t.bounced))
        .collect();
    write_small(dir, SERVER, &text);
}

fn server_buckets(dir: &Dir) -> BTreeMap<i64, trigger::Tally> {
    let mut out = BTreeMap::new();
    for line in read_small(dir, SERVER).lines() {
        let n: Vec<i64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [start, d, b] = n[..] {
            out.insert(
                start,
                trigger::Tally {
                    delivered: d.max(0) as u64,
                    bounced: b.max(0) as u64,
                },
            );
        }
    }
    out
}

fn server_tally(dir: &Dir, now: i64, window: i64) -> trigger::Tally {
    let mut t = trigger::Tally::default();
    for (start, b) in server_buckets(dir) {
        if trigger::in_window(start, now, window) {
            t.add(b);
        }
    }
    t
}

/// Records older than `[outcomes] keep` go, at most once an hour (a directory listing).
fn expire_records(ctx: &Runtime, dir: &Dir) {
    const MARK: &str = ".expired";
    let recent = dir
        .modified(MARK)
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|e| e.as_secs() < 3600);
    if recent {
        return;
    }
    write_small(dir, MARK, "");
    let keep = std::time::Duration::from_secs(ctx.config.outcomes.keep.secs());
    for name in crate::state::older_than(dir, keep) {
        if record::valid_name(&name) {
            let _ = dir.unlink(&name);
        }
    }
}

/// A small state file of this step ("" when missing or unreadable).
fn read_small(dir: &Dir, name: &str) -> String {
    let mut text = String::new();
    if let Ok(f) = dir.open_file(name, flags::READ) {
        let _ = f.take(1 << 20).read_to_string(&mut text);
    }
    text
}

/// Replace a small state file whole (best effort: the next run writes it again).
fn write_small(dir: &Dir, name: &str, text: &str) {
    let _ = dir.replace(name, text.as_bytes());
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
        let tally = trigger::Tally {
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
