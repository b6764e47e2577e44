//! At the relay's 250: the hand-over record (`record`) of a message mailgate gave the relay,
//! named by the relay's queue id from its reply, so that the relay's log can later be tied to
//! the caller, the script and the route. Called by the sender and by the queue run.

use super::record::{self, Handed};
use crate::message::Message;
use crate::relay::disposition::Disposition;
use crate::runtime::Runtime;
use crate::spool::Meta;

/// At the relay's 250: write the hand-over record, when outcomes are learnt at all.
/// Best effort (the message is the relay's now): a failure is logged, never returned.
pub fn record_hand_over(
    rt: &Runtime,
    meta: &Meta,
    msg: &Message,
    disposition: &Disposition,
    route: &str,
) {
    if rt.config.outcomes.relay_log.is_none() || meta.internal {
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
    let Some(relay_id) = crate::relay::queue_id::queued_as(&reply) else {
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
        handed: rt.now(),
        route: route.to_string(),
        relay_id: relay_id.to_string(),
        reply,
        recipients_cut: 0,
    };
    let written = rt.state().map_err(|f| f.message).and_then(|state| {
        // Below the spool's free-space reserve a customer's record is not written: kept mail
        // and root's work come first (the message is the relay's already).
        let reserve = rt.config.spool.min_free_percent;
        match state.top().free_percent() {
            Some(free) if free < reserve && !rt.config.is_exempt(&meta.account) => Err(format!(
                "the state filesystem is down to {free}% free (reserve {reserve}%)"
            )),
            _ => record::write(state, handed).map_err(|e| e.to_string()),
        }
    });
    if let Err(why) = written {
        rt.logger.log(
            crate::log::Severity::Warning,
            &format!(
                "id={} cannot write its hand-over record (trace and outcomes will not know it): {why}",
                meta.id
            ),
        );
    }
}
