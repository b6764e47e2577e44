//! `mailgate queue run` and `hold release`: delivering what the spools keep. A queued entry
//! leaves the queue only after the relay's 250 (at least once; a crash between the 250 and the
//! unlink is the only way to a duplicate). Deferred messages are released in order, per
//! account, when its windows have room, and count then.
//!
//! Every entry is claimed (`Spool::claim`) before it is touched, so concurrent runs, releases
//! and deletes never handle one entry twice. A failure on one entry (a damaged file, a full
//! disk) is logged and counted, and the run goes on with the others.

use crate::exit::{Exit, Failure};
use crate::limits::{self, Verdict};
use crate::log::{Fields, Severity};
use crate::message::Message;
use crate::relay::Envelope;
use crate::relay::disposition::Disposition;
use crate::runtime::Runtime;
use crate::runtime::notify;
use crate::spool::{Kind, Meta, Spool};
use crate::stats;
use crate::status::Status;
use std::collections::BTreeSet;

mod settle;
pub use settle::Settled;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub delivered: usize,
    pub released: usize,
    pub retry_later: usize,
    pub failed: usize,
    pub still_deferred: usize,
    pub stale_removed: usize,
    /// Accounts whose spool ledger record did not match the spools and was set right.
    pub ledgers_repaired: Vec<String>,
    /// Entries that could not be handled (damaged, disk full); each was logged.
    pub errors: usize,
    /// The relay did not answer; the rest of the run left it alone.
    pub relay_down: Option<String>,
    /// What the relay's log said about the mail it took.
    pub outcomes: crate::delivery::learn::Learnt,
}

impl Summary {
    /// One settled entry, counted by where it came from.
    fn count(&mut self, from: Kind, settled: &Settled) {
        match settled {
            Settled::Done { .. } if from == Kind::Defer => self.released += 1,
            Settled::Done { .. } => self.delivered += 1,
            Settled::Queued {
                delivered,
                why,
                relay_down,
            } => {
                match (from, delivered.is_some()) {
                    // Released in part: the rest waits in the queue, counted there later.
                    (Kind::Defer, true) => self.released += 1,
                    (_, true) => {
                        self.delivered += 1;
                        self.retry_later += 1;
                    }
                    (_, false) => self.retry_later += 1,
                }
                if *relay_down {
                    self.relay_down = Some(why.clone());
                }
            }
            Settled::Failed { .. } => self.failed += 1,
            Settled::StaysHeld { .. } => {}
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "delivered {} queued, released {} deferred; {} queued for later, {} still deferred, {} failed",
            self.delivered, self.released, self.retry_later, self.still_deferred, self.failed
        )?;
        if self.stale_removed > 0 {
            write!(
                f,
                "; removed {} unfinished files from tmp/",
                self.stale_removed
            )?;
        }
        if !self.ledgers_repaired.is_empty() {
            write!(
                f,
                "; set the spool count of {} account(s) right",
                self.ledgers_repaired.len()
            )?;
        }
        if self.errors > 0 {
            write!(
                f,
                "; {} entries could not be handled (see the log)",
                self.errors
            )?;
        }
        if let Some(why) = &self.relay_down {
            write!(f, "; relay unavailable: {why}")?;
        }
        let o = &self.outcomes;
        if o.counted > 0 {
            write!(
                f,
                "; learnt {} recipient outcomes from {} lines of the relay's log",
                o.counted, o.lines
            )?;
        }
        if let Some(why) = &o.blind {
            write!(f, "; delivery outcomes unknown: {why}")?;
        }
        Ok(())
    }
}

/// What a run does with queued entries whose retry time has not come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// `queue run`: only entries that are due.
    Honour,
    /// `queue flush`, `sendmail -q`: every entry now (Postfix's `postqueue -f`).
    Ignore,
}

/// Deliver due queue entries and release deferred ones that fit. `None` when another
/// `queue run` is active.
pub fn run(rt: &Runtime, backoff: Backoff) -> Result<Option<Summary>, Failure> {
    let state = rt.state()?;
    let Some(_running) = state.try_lock_named("queue.lock")? else {
        return Ok(None);
    };
    // Subdirectories a customer's sender had to create become root's again.
    state.settle_all();
    let spool = Spool::new(state);
    let now = rt.now();
    // A sender killed between writing tmp/ and the rename leaves a file nobody was told about.
    let mut summary = Summary {
        stale_removed: spool.remove_stale_tmp(std::time::Duration::from_secs(3600)),
        ..Summary::default()
    };
    // Senders that died between the hand-over and their log line: log them now (a slot whose
    // lock went with its sender; a record of its own once no live sender could still finish
    // it, the relay timeout and a minute).
    let unfinished = std::time::Duration::from_secs(rt.config.relay.timeout.secs() + 60);
    crate::state::journal::recover(state, unfinished, &rt.logger);
    for id in spool.ids(Kind::Queue)? {
        if summary.relay_down.is_some() {
            summary.retry_later += 1;
            continue;
        }
        if let Err(f) = run_queued(rt, &spool, &id, now, backoff, &mut summary) {
            entry_error(rt, &spool, Kind::Queue, &id, &f, &mut summary);
        }
    }
    release_deferred(rt, &spool, now, &mut summary)?;
    // What became of the mail the relay took: its log since the last run.
    summary.outcomes = crate::delivery::learn::learn(rt);
    // Each account's spool count, kept per change, is compared with the spools and repaired
    // (a sender killed between its rename and its count leaves it off by one).
    summary.ledgers_repaired = spool.repair_ledgers();
    if !summary.ledgers_repaired.is_empty() {
        let mut fields = Fields::default();
        fields.add("spool-count-repaired", summary.ledgers_repaired.join(","));
        rt.logger.log(Severity::Warning, fields.as_str());
    }
    Ok(Some(summary))
}

/// One queue entry: deliver it if due, else leave it.
fn run_queued(
    rt: &Runtime,
    spool: &Spool<'_>,
    id: &str,
    now: i64,
    backoff: Backoff,
    summary: &mut Summary,
) -> Result<(), Failure> {
    let Some(claim) = spool.claim(Kind::Queue, id)? else {
        return Ok(()); // another process has it, or it is gone
    };
    let (mut meta, msg) = (claim.meta, claim.msg);
    // A next attempt further away than max_retry can only come from a clock that was ahead:
    // it is due now, so that a clock step never strands an entry.
    let clock_stepped = meta.next_attempt > now + rt.config.spool.max_retry.secs() as i64;
    if backoff == Backoff::Honour && meta.next_attempt > now && !clock_stepped {
        summary.retry_later += 1;
        return Ok(());
    }
    let disposition = deliver(rt, &meta, &msg, "queue");
    let settled = settle::carry_out(rt, spool, Kind::Queue, &mut meta, &msg, disposition, None)?;
    summary.count(Kind::Queue, &settled);
    Ok(())
}

/// An entry gives up after `max_age` by the clock *and* enough real attempts to have spanned
/// `max_age` at the longest retry interval (`max_age / max_retry`). A clock step forward
/// cannot fail mail that was never really retried; a clock that is right fails it on time.
fn expired(rt: &Runtime, meta: &Meta, now: i64) -> bool {
    let max_age = rt.config.spool.max_age.secs();
    let needed = max_age.div_ceil(rt.config.spool.max_retry.secs().max(1));
    now - meta.time > max_age as i64 && u64::from(meta.attempts) >= needed
}

/// Log an entry that could not be handled and count it; the run goes on.
fn entry_error(
    rt: &Runtime,
    spool: &Spool<'_>,
    kind: Kind,
    id: &str,
    f: &Failure,
    summary: &mut Summary,
) {
    summary.errors += 1;
    let mut fields = Fields::default();
    fields
        .add("id", id)
        .add("spool", kind.dir())
        .add("status", "error")
        .add("reason", &f.message);
    rt.logger.log(Severity::Warning, fields.as_str());
    // A damaged entry can never be delivered: it goes to failed/ for the admin to see.
    if f.exit == Exit::DataErr {
        let _ = spool.quarantine(kind, id, &f.message);
        if let Some(admin) = rt.admin_address() {
            rt.send_internal(
                notify::damaged_message(
                    kind.dir(),
                    id,
                    &f.message,
                    &rt.names.hostname,
                    &admin,
                    &rt.names.origin,
                ),
                &admin,
                "damaged",
            );
        }
    }
}

fn release_deferred(
    rt: &Runtime,
    spool: &Spool<'_>,
    now: i64,
    summary: &mut Summary,
) -> Result<(), Failure> {
    let mut blocked: BTreeSet<String> = BTreeSet::new();
    for id in spool.ids(Kind::Defer)? {
        if summary.relay_down.is_some() {
            summary.still_deferred += 1;
            continue;
        }
        if let Err(f) = release_one(rt, spool, &id, now, &mut blocked, summary) {
            entry_error(rt, spool, Kind::Defer, &id, &f, summary);
        }
    }
    Ok(())
}

fn release_one(
    rt: &Runtime,
    spool: &Spool<'_>,
    id: &str,
    now: i64,
    blocked: &mut BTreeSet<String>,
    summary: &mut Summary,
) -> Result<(), Failure> {
    let Some(claim) = spool.claim(Kind::Defer, id)? else {
        return Ok(());
    };
    let (mut meta, msg) = (claim.meta, claim.msg);
    // Order is kept per account, and per script for what a script's own window deferred.
    let script_line = format!("{}\0{}", meta.account, meta.script_path);
    if blocked.contains(&meta.account) || blocked.contains(&script_line) {
        summary.still_deferred += 1;
        return Ok(());
    }
    let decision = count_kept(rt, &meta, now)?;
    let ticket = match decision.verdict {
        Verdict::Accepted(t) => t,
        Verdict::Refused(r) if r.scope == limits::Scope::Script => {
            // Only this script's mail waits behind it.
            blocked.insert(script_line);
            summary.still_deferred += 1;
            return Ok(());
        }
        Verdict::Refused(_) | Verdict::StoreUnavailable(_) => {
            // Nothing of the account goes before this one.
            blocked.insert(meta.account.clone());
            summary.still_deferred += 1;
            return Ok(());
        }
        Verdict::Busy(busy) => {
            // A stopped sender holds the counter. Root's run ends it (it never lets go by
            // itself); this account's deferred mail waits for the next run either way.
            let mut fields = Fields::default();
            fields
                .add("account", &meta.account)
                .add("busy", busy.describe());
            if let Some(done) = crate::state::lock::end_stopped_holder(&busy) {
                fields.add("action", done);
            }
            rt.logger.log(Severity::Warning, fields.as_str());
            blocked.insert(meta.account.clone());
            summary.still_deferred += 1;
            return Ok(());
        }
        Verdict::Locked(reason) => {
            meta.reason = format!("account locked: {reason}");
            spool.move_entry(Kind::Defer, Kind::Hold, &meta, &msg)?;
            return Ok(());
        }
    };
    let disposition = deliver(rt, &meta, &msg, "defer");
    let settled = settle::carry_out(
        rt,
        spool,
        Kind::Defer,
        &mut meta,
        &msg,
        disposition,
        ticket.as_ref(),
    )?;
    summary.count(Kind::Defer, &settled);
    Ok(())
}

/// A kept message checked against its account's limits and counted when it fits (a refusal
/// is not counted: the message is still kept).
fn count_kept(rt: &Runtime, meta: &Meta, now: i64) -> Result<limits::Decision, Failure> {
    let attempt = limits::Attempt {
        account: &meta.account,
        recipients: meta.recipients.len() as u32,
        now,
        sender: meta.sender.as_deref().unwrap_or("<>"),
        subject: &meta.subject,
        count_refusal: false,
        test_clock: rt.fixed_now.is_some(),
    };
    let rules = crate::script::check::rules(rt, &meta.account, &meta.script_path);
    crate::script::rules::check_and_record(
        rt.state()?,
        rt.store()?,
        &rt.config,
        &attempt,
        &rules,
        &mut |w| {
            rt.logger.log(Severity::Warning, w);
        },
    )
}

/// A customer's release is a send like any other: the admin's lock holds it, and it counts
/// against the account's limits (past them it stays held, unless the admin set
/// `customer_release_past_limits`). The admin's release is neither checked nor counted:
/// deciding past the limits is the admin's to make.
fn counted_release(rt: &Runtime, meta: &Meta) -> Result<(), Failure> {
    let decision = count_kept(rt, meta, rt.now())?;
    let id = &meta.id;
    match decision.verdict {
        Verdict::Accepted(_) => Ok(()),
        Verdict::Refused(_) if rt.config.spool.customer_release_past_limits => Ok(()),
        Verdict::Locked(reason) => Err(Failure::new(
            Exit::NoPerm,
            format!(
                "{id}: account {} is locked by the administrator ({reason}); only the administrator can release its mail",
                meta.account
            ),
        )),
        Verdict::Refused(r) => Err(Failure::new(
            Exit::Unavailable,
            format!(
                "{id}: stays held: {}",
                r.describe(&meta.account, meta.recipients.len() as u32)
            ),
        )),
        Verdict::Busy(_) | Verdict::StoreUnavailable(_) => Err(Failure::new(
            Exit::Unavailable,
            format!("{id}: stays held: the account's counters are busy; try again"),
        )),
    }
}

/// Relay a kept message and log the outcome.
pub fn deliver(rt: &Runtime, meta: &Meta, msg: &Message, from: &str) -> Disposition {
    let relay = if meta.internal {
        rt.relay_internal()
    } else {
        rt.relay()
    };
    let outcome = relay.send(
        &Envelope {
            sender: meta.sender.as_deref(),
            recipients: &meta.recipients,
        },
        msg,
    );
    let route = match meta.attempts {
        0 => format!("{from} ({}), then by {}", meta.reason, rt.caller.login),
        n => format!(
            "{from} ({}; {n} attempts, last: {}), then by {}",
            meta.reason, meta.last_error, rt.caller.login
        ),
    };
    crate::delivery::hand_over::record_hand_over(rt, meta, msg, &outcome, &route);
    let mut fields = Fields::default();
    fields
        .add("id", &meta.id)
        .add("account", &meta.account)
        .add("from_spool", from)
        .add("by", &rt.caller.login)
        .add("nrcpt", meta.recipients.len());
    if !meta.script.is_empty() {
        fields.add("script", &meta.script);
    }
    if !meta.cwd.is_empty() {
        fields.add("cwd", &meta.cwd);
    }
    let status = Status::of(&outcome);
    fields.add("status", status.as_str());
    match &outcome {
        Disposition::Delivered { reply } => {
            fields.add("relay", reply);
        }
        Disposition::Partly {
            reply,
            retry,
            failed,
        } => {
            let left_out: Vec<&str> = retry
                .iter()
                .chain(failed)
                .map(|(r, _)| r.as_str())
                .collect();
            fields
                .add("relay", reply)
                .add("rejected", left_out.join(","));
        }
        Disposition::Failed { why } | Disposition::Retry { why, .. } => {
            fields.add("reason", why);
        }
    }
    // Counted before it is logged: a process killed in between leaves the statistics one
    // ahead of the log, never behind it.
    if !meta.internal {
        let event = stats::Event {
            now: rt.now(),
            outcome: status.outcome(),
            recipients: meta.recipients.len() as u64,
            script: &meta.script,
            cwd: &meta.cwd,
            lock_wait_us: None,
            lock_busy: false,
            relay_error: outcome.trouble().map(Into::into),
        };
        rt.record_statistics(&meta.account, &event, None);
    }
    rt.logger.log(Severity::Info, fields.as_str());
    outcome
}

/// Move to failed/ and tell the admin (not for mailgate's own mail: no loops).
fn give_up(
    rt: &Runtime,
    spool: &Spool<'_>,
    from: Kind,
    meta: &mut Meta,
    msg: &Message,
    why: &str,
) -> Result<(), Failure> {
    meta.reason = why.to_string();
    spool.move_entry(from, Kind::Failed, meta, msg)?;
    if let Some(admin) = rt.admin_address().filter(|_| !meta.internal) {
        rt.send_internal(
            notify::failed_message(meta, why, &rt.names.hostname, &admin, &rt.names.origin),
            &admin,
            "failed",
        );
    }
    Ok(())
}

/// retry, 2 x retry, 4 x retry, ... up to max_retry.
fn backoff_delay(rt: &Runtime, attempts: u32) -> i64 {
    let first = rt.config.spool.retry.secs();
    let delay = first.saturating_mul(1u64 << attempts.saturating_sub(1).min(20));
    delay.min(rt.config.spool.max_retry.secs()) as i64
}

/// `hold release`: deliver now, bypassing limits. Temporary trouble moves it to the queue.
pub fn release(rt: &Runtime, id: &str, by_customer: bool) -> Result<String, Failure> {
    let state = rt.state()?;
    let spool = Spool::new(state);
    let Some(claim) = spool.claim(Kind::Hold, id)? else {
        return Err(Failure::new(
            Exit::Unavailable,
            format!("{id}: not held any more, or another process is handling it"),
        ));
    };
    let (mut meta, msg) = (claim.meta, claim.msg);
    if by_customer {
        counted_release(rt, &meta)?;
    }
    let disposition = deliver(rt, &meta, &msg, "hold");
    match settle::carry_out(rt, &spool, Kind::Hold, &mut meta, &msg, disposition, None)? {
        Settled::Done { reply } => Ok(format!("{id}: delivered ({reply})")),
        Settled::Queued {
            delivered: Some(reply),
            why,
            ..
        } => Ok(format!(
            "{id}: delivered ({reply}); {why}: moved to the queue"
        )),
        Settled::Queued { why, .. } => Ok(format!(
            "{id}: relay unavailable ({why}); moved to the queue"
        )),
        Settled::Failed { why } => Err(Failure::new(
            Exit::Unavailable,
            format!("{id}: {why}; moved to failed/"),
        )),
        Settled::StaysHeld { why } => Err(Failure::new(
            Exit::Unavailable,
            format!("{id}: the relay refused it: {why}; it stays held"),
        )),
    }
}
