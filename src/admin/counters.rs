//! `reset`, `lock`, `unlock`: the admin's hand on an account's counters and its lock, in
//! whichever counter store is configured (so on a Redis store they act on every node).

use super::access::{checked, log_admin};
use crate::exit::Failure;
use crate::limits::store::{self, Counter};
use crate::runtime::Runtime;

/// Empty an account's counters ("server": the server-wide cap's).
pub(super) fn reset(rt: &Runtime, account: &str) -> Result<(), Failure> {
    let counter = if account == "server" {
        Counter::Server
    } else {
        Counter::Account(checked(account)?)
    };
    let store = rt.store()?;
    store.reset(&rt.config, counter)?;
    out!("{}: counters reset", store.counter_name(counter));
    log_admin(rt, "reset", account, "");
    Ok(())
}

/// Hold everything the account sends until `unlock`.
pub(super) fn lock(rt: &Runtime, account: &str, reason: &str) -> Result<(), Failure> {
    let lock = store::AccountLock {
        since: rt.now(),
        reason: reason.to_string(),
        ends_itself: false,
    };
    let changed = rt
        .store()?
        .set_lock(&rt.config, checked(account)?, Some(lock))?;
    out!(
        "{account}: {}",
        if changed {
            "locked; everything it sends is held"
        } else {
            "lock reason updated"
        }
    );
    log_admin(rt, "lock", account, reason);
    Ok(())
}

pub(super) fn unlock(rt: &Runtime, account: &str) -> Result<(), Failure> {
    let changed = rt.store()?.set_lock(&rt.config, checked(account)?, None)?;
    out!(
        "{account}: {}",
        if changed {
            "unlocked"
        } else {
            "was not locked"
        }
    );
    log_admin(rt, "unlock", account, "");
    Ok(())
}
