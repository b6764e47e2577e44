//! Everything after the relay took a message. mailgate sees a message until the relay's 250;
//! the relay's own log says the rest: delivered, bounced, deferred, expired, per recipient,
//! with the receiving server's reply. This folder owns all of it:
//!
//! - `hand_over`: at the 250, the sender or the queue run writes the message's record;
//! - `record`: the hand-over record `delivery/QUEUEID` (caller, script, route, steps), bounded;
//! - `learn`: the queue run's step: read the log, tie lines to records, count, ask the triggers;
//! - `follow`: `queue run --follow`, the same step within a tick of the relay writing a line;
//! - `reader`: the relay's log read incrementally from a position that survives rotation;
//! - `postfix_log`: one log line → (queue id, fact);
//! - `source`: whether the relay's log holds only the relay's own lines;
//! - `apply` (here): what a fact changes in a record and which outcome it counts, once;
//! - `rate`: the bounce rate's window arithmetic (pure);
//! - `triggers`: the failure-rate triggers acting on it (hold, lock, tell, end);
//! - `marks`: this step's small files beside the records (`.position`, `.held`, …).
//!
//! The relay's 250 is parsed for its queue id by `relay::queue_id`; `admin::trace` reads the
//! records; `queue run` calls `learn`.

pub mod follow;
pub mod hand_over;
pub mod learn;
mod marks;
pub mod postfix_log;
pub mod rate;
pub mod reader;
pub mod record;
pub mod source;
mod triggers;

use crate::stats::Outcome;
use postfix_log::{Fact, Status};
use record::{Record, Step};

/// What one fact changes: the steps to add to the record and the outcomes to count (with the
/// reply, for the samples that notices quote).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub steps: Vec<Step>,
    pub counted: Vec<(Outcome, String)>,
}

/// Apply `fact` to `record` (which gets the steps too, so that the next line of the same
/// message sees them). A recipient with a final outcome is never counted again (a log read
/// twice, a duplicate line); a deferral is counted once per recipient however often the relay
/// retries; an expiry bounces every recipient still deferred.
pub fn apply(record: &mut Record, fact: &Fact<'_>, now: i64) -> Applied {
    let mut out = Applied::default();
    let step = |to: &str, status: &str, dsn: &str, reply: &str| Step {
        time: now,
        to: to.to_string(),
        status: status.to_string(),
        dsn: dsn.to_string(),
        reply: reply.to_string(),
    };
    match fact {
        Fact::Recipient {
            to,
            orig_to,
            status,
            dsn,
            reply,
        } => {
            // Only the message's own recipients count: a line about any other address (made
            // up, or of a recipient the record had to leave out) changes nothing.
            let known = record.handed.knows(to) || orig_to.is_some_and(|o| record.handed.knows(o));
            if !known {
                return out;
            }
            let before = record.last_status(to).and_then(Status::parse);
            if before.is_some_and(Status::is_final) {
                return out;
            }
            out.steps.push(step(to, status.as_str(), dsn, reply));
            let counted = match status {
                Status::Sent => Some(Outcome::Delivered),
                Status::Bounced | Status::Expired => Some(Outcome::Bounced),
                Status::Deferred => before.is_none().then_some(Outcome::Delayed),
            };
            out.counted.extend(counted.map(|o| (o, reply.to_string())));
        }
        Fact::Expired => {
            for to in record.still_deferred() {
                let reply =
                    "gave up: the message stayed deferred past the relay's maximal_queue_lifetime";
                out.steps
                    .push(step(&to, Status::Expired.as_str(), "", reply));
                out.counted.push((Outcome::Bounced, reply.to_string()));
            }
        }
        Fact::Removed => {
            if !record.removed() {
                out.steps.push(step("", "removed", "", ""));
            }
        }
    }
    record.steps.extend(out.steps.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            handed: record::Handed {
                id: "A".into(),
                account: "shop".into(),
                uid: 1,
                user: "shop".into(),
                script: String::new(),
                cwd: "/".into(),
                pool: None,
                sender: None,
                recipients: vec!["a@x".into(), "b@x".into()],
                message_id: String::new(),
                subject: String::new(),
                size: 1,
                time: 0,
                handed: 0,
                route: "direct".into(),
                relay_id: "ABCDEF".into(),
                reply: String::new(),
                recipients_cut: 0,
            },
            steps: Vec::new(),
        }
    }

    fn rcpt(to: &str, status: Status) -> Fact<'_> {
        Fact::Recipient {
            to,
            orig_to: None,
            status,
            dsn: "4.0.0",
            reply: "450 later",
        }
    }

    #[test]
    fn only_the_records_own_recipients_count() {
        let mut r = record();
        // A made-up recipient (a forged line, or one the record left out) counts nothing.
        assert_eq!(
            apply(&mut r, &rcpt("victim@x", Status::Bounced), 1),
            Applied::default()
        );
        // The relay's spelling may differ in case; a rewritten address names the original.
        assert_eq!(
            outcomes(&apply(&mut r, &rcpt("A@X", Status::Bounced), 1)),
            [Outcome::Bounced]
        );
        let rewritten = Fact::Recipient {
            to: "b@mailbox.example",
            orig_to: Some("b@x"),
            status: Status::Sent,
            dsn: "2.0.0",
            reply: "250 ok",
        };
        assert_eq!(
            outcomes(&apply(&mut r, &rewritten, 2)),
            [Outcome::Delivered]
        );
    }

    fn outcomes(a: &Applied) -> Vec<Outcome> {
        a.counted.iter().map(|(o, _)| *o).collect()
    }

    #[test]
    fn a_retry_counts_once_and_deferred_then_delivered_is_no_failure() {
        let mut r = record();
        assert_eq!(
            outcomes(&apply(&mut r, &rcpt("a@x", Status::Deferred), 1)),
            [Outcome::Delayed]
        );
        assert_eq!(
            outcomes(&apply(&mut r, &rcpt("a@x", Status::Deferred), 2)),
            []
        );
        assert_eq!(
            outcomes(&apply(&mut r, &rcpt("a@x", Status::Sent), 3)),
            [Outcome::Delivered]
        );
        // The same line read again (a position lost): nothing more.
        assert_eq!(
            apply(&mut r, &rcpt("a@x", Status::Sent), 4),
            Applied::default()
        );
        assert_eq!(
            apply(&mut r, &rcpt("a@x", Status::Bounced), 4),
            Applied::default()
        );
        assert_eq!(r.steps.len(), 3);
    }

    #[test]
    fn a_bounce_counts_once() {
        let mut r = record();
        assert_eq!(
            outcomes(&apply(&mut r, &rcpt("b@x", Status::Bounced), 1)),
            [Outcome::Bounced]
        );
        assert_eq!(
            outcomes(&apply(&mut r, &rcpt("b@x", Status::Bounced), 1)),
            []
        );
    }

    #[test]
    fn expiry_bounces_the_recipients_still_deferred() {
        let mut r = record();
        apply(&mut r, &rcpt("a@x", Status::Deferred), 1);
        apply(&mut r, &rcpt("b@x", Status::Deferred), 1);
        apply(&mut r, &rcpt("b@x", Status::Sent), 2);
        let a = apply(&mut r, &Fact::Expired, 3);
        assert_eq!(outcomes(&a), [Outcome::Bounced]);
        assert_eq!(a.steps[0].to, "a@x");
        assert_eq!(r.last_status("a@x"), Some("expired"));
        assert_eq!(outcomes(&apply(&mut r, &Fact::Expired, 4)), []);
        assert_eq!(apply(&mut r, &Fact::Removed, 5).steps.len(), 1);
        assert_eq!(apply(&mut r, &Fact::Removed, 5).steps.len(), 0);
        assert!(r.removed());
    }
}
