//! What a relay's answer does to a kept message, decided and carried out in one place. The
//! queue run, the release of deferred mail and `hold release` each claim a spool entry, hand it
//! over (`super::deliver`) and give the `Disposition` to `carry_out`: every spool move after a
//! relay answer is made here, and the counts and words the callers report come from the
//! `Settled` it returns.
//!
//! A new relay answer changes `Settlement::of` (pure); a new spool transition changes
//! `carry_out`.

use super::{backoff_delay, expired, give_up};
use crate::exit::Failure;
use crate::limits::Ticket;
use crate::message::Message;
use crate::relay::Reply;
use crate::relay::disposition::{self, Disposition};
use crate::runtime::Runtime;
use crate::spool::{Kind, Meta, Spool};

/// What a relay answer means for a kept entry. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Every recipient is done (taken, or refused for good and reported): the entry goes.
    Done { reply: Reply },
    /// The entry waits in queue/: for `rest` (the recipients the relay put off) when some were
    /// taken (`delivered`), else for all of them.
    Requeue {
        delivered: Option<Reply>,
        rest: Option<Vec<String>>,
        why: String,
        relay_down: bool,
    },
    /// Refused for good.
    Failed { why: String },
}

impl Settlement {
    pub fn of(disposition: Disposition) -> Settlement {
        match disposition {
            Disposition::Delivered { reply } => Settlement::Done { reply },
            Disposition::Partly { reply, retry, .. } if retry.is_empty() => {
                Settlement::Done { reply }
            }
            Disposition::Partly { reply, retry, .. } => Settlement::Requeue {
                delivered: Some(reply),
                why: format!("relay deferred {}", disposition::describe(&retry, 5)),
                rest: Some(disposition::recipients(&retry)),
                relay_down: false,
            },
            Disposition::Retry { why, relay_down } => Settlement::Requeue {
                delivered: None,
                rest: None,
                why,
                relay_down,
            },
            Disposition::Failed { why } => Settlement::Failed { why },
        }
    }
}

/// What became of the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Every recipient done; the entry is gone.
    Done { reply: Reply },
    /// It waits in queue/ (for the recipients the relay put off, when some were `delivered`).
    Queued {
        delivered: Option<Reply>,
        why: String,
        relay_down: bool,
    },
    /// Refused for good, or retried past `max_age`: in failed/, the admin told.
    Failed { why: String },
    /// The relay refused a held message for good: it stays held for the admin to decide.
    StaysHeld { why: String },
}

/// Carry out what `disposition` means for the entry claimed from `from`. `ticket`: the count
/// the release of a deferred entry took, given back when the relay refuses it for good.
pub(super) fn carry_out(
    rt: &Runtime,
    spool: &Spool<'_>,
    from: Kind,
    meta: &mut Meta,
    msg: &Message,
    disposition: Disposition,
    ticket: Option<&Ticket>,
) -> Result<Settled, Failure> {
    let now = rt.now();
    match Settlement::of(disposition) {
        Settlement::Done { reply } => {
            spool.remove(from, &meta.id)?;
            Ok(Settled::Done { reply })
        }
        Settlement::Failed { why } if from == Kind::Hold => Ok(Settled::StaysHeld { why }),
        Settlement::Failed { why } => {
            if let Some(t) = ticket {
                rt.store()?.refund(&rt.config, t)?;
            }
            give_up(rt, spool, from, meta, msg, &why)?;
            Ok(Settled::Failed { why })
        }
        Settlement::Requeue {
            delivered,
            rest,
            why,
            relay_down,
        } => {
            if let Some(rest) = rest {
                meta.recipients = rest;
            }
            meta.attempts += 1;
            meta.last_error = why.clone();
            if expired(rt, meta, now) {
                let why = format!(
                    "still undeliverable after {} and {} attempts (max_age): {why}",
                    crate::config::TimeSpan((now - meta.time).max(1) as u64),
                    meta.attempts
                );
                give_up(rt, spool, from, meta, msg, &why)?;
                return Ok(Settled::Failed { why });
            }
            // An admin's release is tried again by the next run; anything else backs off.
            meta.next_attempt = match from {
                Kind::Hold => now,
                _ => now + backoff_delay(rt, meta.attempts),
            };
            if from == Kind::Queue {
                spool.keep(Kind::Queue, meta, msg)?;
            } else {
                spool.move_entry(from, Kind::Queue, meta, msg)?;
            }
            Ok(Settled::Queued {
                delivered,
                why,
                relay_down,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16) -> Reply {
        Reply {
            code,
            text: format!("{code} text"),
        }
    }

    #[test]
    fn a_partial_delivery_with_nothing_put_off_is_done() {
        let d = Disposition::Partly {
            reply: reply(250),
            retry: Vec::new(),
            failed: vec![("gone@x".into(), reply(550))],
        };
        assert_eq!(Settlement::of(d), Settlement::Done { reply: reply(250) });
    }

    #[test]
    fn only_the_recipients_put_off_stay_queued() {
        let d = Disposition::Partly {
            reply: reply(250),
            retry: vec![("later@x".into(), reply(451))],
            failed: vec![("gone@x".into(), reply(550))],
        };
        let Settlement::Requeue {
            delivered,
            rest,
            why,
            relay_down,
        } = Settlement::of(d)
        else {
            panic!("a 4xx recipient must stay queued");
        };
        assert_eq!(delivered, Some(reply(250)));
        assert_eq!(rest, Some(vec!["later@x".to_string()]));
        assert_eq!(why, "relay deferred <later@x> (451 451 text)");
        assert!(!relay_down);
    }

    #[test]
    fn a_message_put_off_whole_keeps_all_its_recipients() {
        for relay_down in [false, true] {
            let d = Disposition::Retry {
                why: "451 busy".into(),
                relay_down,
            };
            assert_eq!(
                Settlement::of(d),
                Settlement::Requeue {
                    delivered: None,
                    rest: None,
                    why: "451 busy".into(),
                    relay_down,
                }
            );
        }
        assert_eq!(
            Settlement::of(Disposition::Failed { why: "554".into() }),
            Settlement::Failed { why: "554".into() }
        );
    }
}
