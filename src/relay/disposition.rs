//! What becomes of a message and each recipient once the relay has answered: decided here,
//! once, for the sender, the queue runner, the release of deferred mail and `hold release`,
//! which only carry it out (Postfix's qmgr and dma decide a delivery result in one place the
//! same way). A new relay answer is handled by adding it here. Pure.

use super::{Answer, Reply};

/// A recipient the relay did not take, with its reply.
pub type Refusal = (String, Reply);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Taken for every recipient: the message is done.
    Delivered { reply: Reply },
    /// Taken for some recipients: those put off (`retry`, 4xx) stay queued, just them; those
    /// refused for good (`failed`, 5xx) are reported.
    Partly {
        reply: Reply,
        retry: Vec<Refusal>,
        failed: Vec<Refusal>,
    },
    /// Taken for none, and it may work later: the message stays queued. `relay_down`: the
    /// relay itself is not working (no connection, a timeout), so a queue run stops trying it.
    Retry { why: String, relay_down: bool },
    /// Refused for good: the message fails (bounce, failed/, exit 69).
    Failed { why: String },
}

impl Answer {
    /// What the answer means for the message and its recipients.
    pub fn disposition(self) -> Disposition {
        match self {
            Answer::Delivered { reply, rejected } if rejected.is_empty() => {
                Disposition::Delivered { reply }
            }
            Answer::Delivered { reply, rejected } => {
                let (failed, retry) = rejected.into_iter().partition(|(_, r)| r.is_permanent());
                Disposition::Partly {
                    reply,
                    retry,
                    failed,
                }
            }
            Answer::Permanent(why) => Disposition::Failed { why },
            Answer::Temporary(why) => Disposition::Retry {
                why,
                relay_down: false,
            },
            Answer::Unreachable(why) => Disposition::Retry {
                why,
                relay_down: true,
            },
        }
    }
}

/// The relay's trouble with a message, for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    Permanent,
    Temporary,
    Unreachable,
}

impl Disposition {
    /// What went wrong, if anything: a partial delivery counts as permanent only when every
    /// recipient left out was refused for good.
    pub fn trouble(&self) -> Option<Trouble> {
        match self {
            Disposition::Delivered { .. } => None,
            Disposition::Partly { retry, .. } if retry.is_empty() => Some(Trouble::Permanent),
            Disposition::Partly { .. } => Some(Trouble::Temporary),
            Disposition::Retry {
                relay_down: true, ..
            } => Some(Trouble::Unreachable),
            Disposition::Retry { .. } => Some(Trouble::Temporary),
            Disposition::Failed { .. } => Some(Trouble::Permanent),
        }
    }
}

/// The recipients of `refusals`.
pub fn recipients(refusals: &[Refusal]) -> Vec<String> {
    refusals.iter().map(|(r, _)| r.clone()).collect()
}

/// `<a@x> (451 …), <b@y> (452 …)`, the first `max` of them and how many more.
pub fn describe(refusals: &[Refusal], max: usize) -> String {
    let list: Vec<String> = refusals
        .iter()
        .take(max)
        .map(|(r, reply)| format!("<{r}> ({reply})"))
        .collect();
    match refusals.len().saturating_sub(max) {
        0 => list.join(", "),
        more => format!("{} and {more} more", list.join(", ")),
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
    fn every_relay_answer_has_one_disposition() {
        let ok = reply(250);
        assert_eq!(
            Answer::Delivered {
                reply: ok.clone(),
                rejected: vec![]
            }
            .disposition(),
            Disposition::Delivered { reply: ok.clone() }
        );
        let partly = Answer::Delivered {
            reply: ok.clone(),
            rejected: vec![("a@x".into(), reply(450)), ("b@x".into(), reply(550))],
        }
        .disposition();
        assert_eq!(
            partly,
            Disposition::Partly {
                reply: ok.clone(),
                retry: vec![("a@x".into(), reply(450))],
                failed: vec![("b@x".into(), reply(550))],
            }
        );
        assert_eq!(partly.trouble(), Some(Trouble::Temporary));
        let only_failed = Answer::Delivered {
            reply: ok,
            rejected: vec![("b@x".into(), reply(550))],
        }
        .disposition();
        assert_eq!(only_failed.trouble(), Some(Trouble::Permanent));
        let down = Answer::Unreachable("no".into()).disposition();
        assert_eq!(down.trouble(), Some(Trouble::Unreachable));
        let later = Answer::Temporary("451".into()).disposition();
        assert_eq!(
            later,
            Disposition::Retry {
                why: "451".into(),
                relay_down: false
            }
        );
        let never = Answer::Permanent("554".into()).disposition();
        assert_eq!(never.trouble(), Some(Trouble::Permanent));
    }

    #[test]
    fn long_lists_are_cut() {
        let many: Vec<Refusal> = (0..7).map(|i| (format!("r{i}@x"), reply(451))).collect();
        let text = describe(&many, 5);
        assert!(text.starts_with("<r0@x> (451 451 text), "), "{text}");
        assert!(text.ends_with(" and 2 more"), "{text}");
        assert_eq!(describe(&many[..1], 5), "<r0@x> (451 451 text)");
        assert_eq!(recipients(&many[..2]), ["r0@x", "r1@x"]);
    }
}
