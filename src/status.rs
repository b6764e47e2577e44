//! The words of a log line's `status=`, one vocabulary for the sender, the queue run and the
//! statistics: what mailgate did with a message.
//!
//! Two words that sound alike mean different things and stay apart everywhere (log, `top`,
//! metrics): `queued` is the relay's doing (it answered 4xx or could not be reached: the
//! message waits in queue/ for the next run), `deferred` is a limit's (the account is over a
//! window with `action = "defer"`: the message waits in defer/ until the window has room).
//! Before 0.9 the queue run logged and counted a relay's 4xx as `deferred`; statistics files
//! written then keep that count under `deferred`.

use crate::relay::disposition::Disposition;
use crate::stats;

/// What became of a message, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Sent,
    SentPartly,
    /// The relay put it off (4xx, or unreachable): in queue/ for the next queue run.
    Queued,
    Held,
    /// A limit put it off: in defer/ until the account's windows have room.
    Deferred,
    Refused,
}

impl Status {
    /// What the relay's answer makes of a message, whoever handed it over.
    pub fn of(disposition: &Disposition) -> Status {
        match disposition {
            Disposition::Delivered { .. } => Status::Sent,
            Disposition::Partly { .. } => Status::SentPartly,
            Disposition::Retry { .. } => Status::Queued,
            Disposition::Failed { .. } => Status::Refused,
        }
    }

    /// What the statistics count it as: a message sent in part is sent (the rest is counted
    /// when it goes).
    pub fn outcome(self) -> stats::Outcome {
        match self {
            Status::Sent | Status::SentPartly => stats::Outcome::Sent,
            Status::Queued => stats::Outcome::Queued,
            Status::Held => stats::Outcome::Held,
            Status::Deferred => stats::Outcome::Deferred,
            Status::Refused => stats::Outcome::Refused,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::SentPartly => "sent-partly",
            Status::Queued => "queued",
            Status::Held => "held",
            Status::Deferred => "deferred",
            Status::Refused => "refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::Reply;

    #[test]
    fn a_relays_temporary_failure_is_queued_never_deferred() {
        for relay_down in [false, true] {
            let d = Disposition::Retry {
                why: "451 later".into(),
                relay_down,
            };
            assert_eq!(Status::of(&d), Status::Queued);
            assert_eq!(Status::of(&d).as_str(), "queued");
            assert_eq!(Status::of(&d).outcome(), stats::Outcome::Queued);
        }
        // The limit's word and the relay's never meet.
        assert_ne!(Status::Deferred.as_str(), Status::Queued.as_str());
        assert_ne!(Status::Deferred.outcome(), Status::Queued.outcome());
    }

    #[test]
    fn each_relay_answer_has_its_word_and_count() {
        let reply = Reply {
            code: 250,
            text: "2.0.0 Ok: queued as ABC".into(),
        };
        let cases = [
            (
                Disposition::Delivered {
                    reply: reply.clone(),
                },
                "sent",
            ),
            (
                Disposition::Partly {
                    reply,
                    retry: Vec::new(),
                    failed: Vec::new(),
                },
                "sent-partly",
            ),
            (Disposition::Failed { why: "554".into() }, "refused"),
        ];
        for (d, word) in cases {
            assert_eq!(Status::of(&d).as_str(), word);
        }
        assert_eq!(Status::SentPartly.outcome(), stats::Outcome::Sent);
        assert_eq!(Status::Refused.outcome(), stats::Outcome::Refused);
    }
}
