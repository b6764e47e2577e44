//! After a message's fate is logged: it is counted in its account's statistics (for `top` and
//! `metrics`), and when a limit or a lock stopped it, the account's `notify` addresses hear it
//! once per window. The decision "first in this window" is taken under the statistics lock, so
//! parallel senders never send two notices; with the Redis store it is also claimed in Redis,
//! so that the nodes of a cluster send one between them.

use super::Runtime;
use crate::log::Severity;
use crate::runtime::notify;
use crate::stats;
use std::time::Duration;

/// How long recording a message's statistics waits for their lock (a stopped sender of the
/// same account may hold it); past it the message goes to the account's backlog.
const STATS_LOCK_WAIT: Duration = Duration::from_millis(200);

impl Runtime {
    /// Count a logged outcome in the account's statistics; with a notice, tell the account's
    /// `notify` addresses, unless they heard one in this window already.
    pub fn record_statistics(
        &self,
        account: &str,
        event: &stats::Event<'_>,
        notice: Option<notify::Notice>,
    ) {
        let Ok(state) = self.state() else { return };
        let wants_notice = notice
            .as_ref()
            .filter(|_| !self.notify_addresses(account).is_empty());
        // One wait per account and process: once a stopped process of this account held the
        // lock past it, this process writes to the backlog at once (a queue run with 1,000 of
        // that account's messages waits once, not 1,000 times).
        let wait = if self.stats_busy.borrow().contains(account) {
            Duration::ZERO
        } else {
            STATS_LOCK_WAIT
        };
        let updated = stats::file::update(state, account, wait, std::slice::from_ref(event), |s| {
            let n = wants_notice?;
            s.claim_notice(event.now, n.window_secs as i64)
                .then(|| s.since(event.now - n.window_secs as i64).0)
        });
        let note = |line: String| {
            self.logger.log(Severity::Warning, &line);
        };
        match updated {
            Ok((stats::file::Updated::Done(rows), damaged)) => {
                if let Some(why) = damaged {
                    note(why);
                }
                // First in this window here; with a shared store, also across the nodes.
                if let (Some(rows), Some(n)) = (rows, &notice)
                    && self
                        .store()
                        .map_or(true, |s| s.claim_notice(account, n.window_secs))
                {
                    self.send_notice(account, n, &rows);
                }
            }
            Ok((stats::file::Updated::Busy, _)) => {
                self.stats_busy.borrow_mut().insert(account.to_string());
                note(format!(
                    "statistics of {account} busy (another process holds them); the message is in its backlog"
                ));
            }
            Err(f) => note(f.message),
        }
    }

    /// The customer's notice, to each `notify` address (null sender, never counted).
    fn send_notice(&self, account: &str, notice: &notify::Notice, rows: &[stats::Row]) {
        for to in self.notify_addresses(account) {
            let msg = notify::notice_message(
                account,
                notice,
                rows,
                &self.envelope_to(&to),
                self.config.spool.customer_release,
            );
            self.send_internal(msg, &to, "notice");
        }
    }
}
