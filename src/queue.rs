//! `mailgate queue run` and `hold release`: delivering what the spools keep. A queued entry
//! leaves the queue only after the relay's 250 (at least once; a crash between the 250 and the
//! unlink is the only way to a duplicate). Deferred messages are released in order, per
//! account, when its windows have room, and count then.

use crate::exit::{Exit, Failure};
use crate::limits::{self, Verdict};
use crate::log::{Fields, Severity};
use crate::message::Message;
use crate::notify;
use crate::pipeline::Context;
use crate::relay::{Envelope, Outcome};
use crate::spool::{Kind, Meta, Spool};
use std::collections::BTreeSet;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub delivered: usize,
    pub released: usize,
    pub retry_later: usize,
    pub failed: usize,
    pub still_deferred: usize,
    pub stale_removed: usize,
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
        Ok(())
    }
}

/// Deliver due queue entries and release deferred ones that fit. `None` when another
/// `queue run` is active.
pub fn run(ctx: &Context) -> Result<Option<Summary>, Failure> {
    let state = ctx.state()?;
    let Some(_running) = state.try_lock_named("queue.lock")? else {
        return Ok(None);
    };
    let spool = Spool::new(state);
    let now = ctx.now();
    // A sender killed between writing tmp/ and the rename leaves a file nobody was told about.
    let mut summary = Summary {
        stale_removed: spool.remove_stale_tmp(std::time::Duration::from_secs(3600)),
        ..Summary::default()
    };
    for meta in spool.list(Kind::Queue)? {
        if meta.next_attempt > now {
            summary.retry_later += 1;
            continue;
        }
        let (mut meta, msg) = spool.load(Kind::Queue, &meta.id)?;
        let age = now - meta.time;
        if age > ctx.config.spool.max_age.secs() as i64 {
            let why = format!(
                "still undeliverable after {} (max_age): {}",
                crate::config::Duration(age.max(1) as u64),
                meta.last_error
            );
            give_up(ctx, &spool, Kind::Queue, &mut meta, &msg, &why)?;
            summary.failed += 1;
            continue;
        }
        match deliver(ctx, &meta, &msg, "queue") {
            Outcome::Delivered { .. } => {
                spool.remove(Kind::Queue, &meta.id)?;
                summary.delivered += 1;
            }
            Outcome::Permanent(why) => {
                give_up(ctx, &spool, Kind::Queue, &mut meta, &msg, &why)?;
                summary.failed += 1;
            }
            Outcome::Temporary(why) => {
                meta.attempts += 1;
                meta.last_error = why;
                meta.next_attempt = now + backoff(ctx, meta.attempts);
                spool.keep(Kind::Queue, &meta, &msg)?;
                summary.retry_later += 1;
            }
        }
    }
    release_deferred(ctx, &spool, now, &mut summary)?;
    Ok(Some(summary))
}

fn release_deferred(
    ctx: &Context,
    spool: &Spool<'_>,
    now: i64,
    summary: &mut Summary,
) -> Result<(), Failure> {
    let mut blocked: BTreeSet<String> = BTreeSet::new();
    for meta in spool.list(Kind::Defer)? {
        if blocked.contains(&meta.account) {
            summary.still_deferred += 1;
            continue;
        }
        let (mut meta, msg) = spool.load(Kind::Defer, &meta.id)?;
        let attempt = limits::Attempt {
            account: &meta.account,
            recipients: meta.recipients.len() as u32,
            now,
            sender: meta.sender.as_deref().unwrap_or("<>"),
            subject: &meta.subject,
            count_refusal: false,
            test_clock: ctx.fixed_now.is_some(),
        };
        let decision = ctx
            .store()?
            .check_and_record(&ctx.config, &attempt, &mut |w| {
                ctx.logger.log(Severity::Warning, w)
            })?;
        let ticket = match decision.verdict {
            Verdict::Accepted(t) => t,
            Verdict::Refused(_) | Verdict::StoreUnavailable(_) => {
                // Order is kept per account: nothing of it goes before this one.
                blocked.insert(meta.account.clone());
                summary.still_deferred += 1;
                continue;
            }
            Verdict::Locked(reason) => {
                meta.reason = format!("account locked: {reason}");
                spool.move_entry(Kind::Defer, Kind::Hold, &meta, &msg)?;
                continue;
            }
        };
        match deliver(ctx, &meta, &msg, "defer") {
            Outcome::Delivered { .. } => {
                spool.remove(Kind::Defer, &meta.id)?;
                summary.released += 1;
            }
            Outcome::Temporary(why) => {
                meta.last_error = why;
                meta.next_attempt = now + backoff(ctx, 1);
                spool.move_entry(Kind::Defer, Kind::Queue, &meta, &msg)?;
                summary.retry_later += 1;
            }
            Outcome::Permanent(why) => {
                if let Some(t) = &ticket {
                    ctx.store()?.refund(&ctx.config, t)?;
                }
                give_up(ctx, spool, Kind::Defer, &mut meta, &msg, &why)?;
                summary.failed += 1;
            }
        }
    }
    Ok(())
}

/// Relay a kept message and log the outcome.
pub fn deliver(ctx: &Context, meta: &Meta, msg: &Message, from: &str) -> Outcome {
    let outcome = ctx.relay().send(
        &Envelope {
            sender: meta.sender.as_deref(),
            recipients: &meta.recipients,
        },
        msg,
    );
    let mut fields = Fields::default();
    fields
        .add("id", &meta.id)
        .add("account", &meta.account)
        .add("from_spool", from)
        .add("by", &ctx.caller.login)
        .add("nrcpt", meta.recipients.len());
    match &outcome {
        Outcome::Delivered { reply, rejected } => {
            fields.add("status", "sent").add("relay", reply);
            if !rejected.is_empty() {
                fields.add(
                    "rejected",
                    rejected
                        .iter()
                        .map(|(r, _)| r.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
        }
        Outcome::Permanent(why) => {
            fields.add("status", "refused").add("reason", why);
        }
        Outcome::Temporary(why) => {
            fields.add("status", "deferred").add("reason", why);
        }
    }
    ctx.logger.log(Severity::Info, fields.as_str());
    outcome
}

/// Move to failed/ and tell the admin (not for mailgate's own mail: no loops).
fn give_up(
    ctx: &Context,
    spool: &Spool<'_>,
    from: Kind,
    meta: &mut Meta,
    msg: &Message,
    why: &str,
) -> Result<(), Failure> {
    meta.reason = why.to_string();
    spool.move_entry(from, Kind::Failed, meta, msg)?;
    if !meta.internal && !ctx.config.alerts.admin.is_empty() {
        let admin = ctx.qualify(&ctx.config.alerts.admin);
        ctx.send_internal(
            notify::failed_message(meta, why, &ctx.hostname, &admin, &ctx.origin),
            &admin,
            "failed",
        );
    }
    Ok(())
}

/// retry, 2 x retry, 4 x retry, ... up to max_retry.
fn backoff(ctx: &Context, attempts: u32) -> i64 {
    let first = ctx.config.spool.retry.secs();
    let delay = first.saturating_mul(1u64 << attempts.saturating_sub(1).min(20));
    delay.min(ctx.config.spool.max_retry.secs()) as i64
}

/// `hold release`: deliver now, bypassing limits. Temporary trouble moves it to the queue.
pub fn release(ctx: &Context, id: &str) -> Result<String, Failure> {
    let state = ctx.state()?;
    let spool = Spool::new(state);
    let (mut meta, msg) = spool.load(Kind::Hold, id)?;
    match deliver(ctx, &meta, &msg, "hold") {
        Outcome::Delivered { reply, .. } => {
            spool.remove(Kind::Hold, id)?;
            Ok(format!("{id}: delivered ({reply})"))
        }
        Outcome::Temporary(why) => {
            meta.last_error = why.clone();
            meta.next_attempt = ctx.now();
            spool.move_entry(Kind::Hold, Kind::Queue, &meta, &msg)?;
            Ok(format!(
                "{id}: relay unavailable ({why}); moved to the queue"
            ))
        }
        Outcome::Permanent(why) => Err(Failure::new(
            Exit::Unavailable,
            format!("{id}: the relay refused it: {why}; it stays held"),
        )),
    }
}
