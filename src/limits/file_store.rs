//! The counter store of one server: `accounts/NAME` and `server` as locked files in the state
//! directory (format: `store.rs`), checked and updated under their locks — account first, then
//! server, so two senders never wait for each other in a circle.

use super::store::{self, Counter, CounterFile, CounterRecord};
use super::window::Window;
use super::{
    Alert, Attempt, CounterStore, Decision, Refusal, SENDER_LOCK_WAIT, Scope, Ticket, Verdict,
    decide, reconcile,
};
use crate::config::Config;
use crate::config::OnStateError;
use crate::exit::Failure;
use crate::state::StateDir;

/// The counters as locked files in the state directory.
pub(super) struct FileStore(pub(super) StateDir);

impl CounterStore for FileStore {
    fn check_and_record(
        &self,
        config: &Config,
        attempt: &Attempt<'_>,
        warn: &mut dyn FnMut(&str),
    ) -> Result<Decision, Failure> {
        files_check_and_record(&self.0, config, attempt, warn)
    }

    fn refund(&self, config: &Config, ticket: &Ticket) -> Result<(), Failure> {
        files_refund(&self.0, config, ticket)
    }

    fn read(
        &self,
        config: &Config,
        counter: Counter<'_>,
        _now: i64,
    ) -> Result<CounterRecord, Failure> {
        files_read(&self.0, config, counter)
    }

    fn reset(&self, config: &Config, counter: Counter<'_>) -> Result<(), Failure> {
        files_reset(&self.0, config, counter)
    }

    fn set_lock(
        &self,
        config: &Config,
        account: &str,
        lock: Option<store::AccountLock>,
    ) -> Result<bool, Failure> {
        files_set_lock(&self.0, config, account, lock)
    }

    fn accounts(&self) -> Result<Vec<String>, Failure> {
        // Without .new-* files being born and .broken-* set aside by reset.
        Ok(self.0.names_in("accounts"))
    }

    fn counter_name(&self, counter: Counter<'_>) -> String {
        self.0.counter_path(counter).display().to_string()
    }
}

/// The locked counter files of one decision: account first, then server.
struct Locked {
    account: CounterFile,
    server: Option<CounterFile>,
}

fn lock_both(
    state: &StateDir,
    config: &Config,
    account: &str,
    wait: std::time::Duration,
) -> Result<Result<Locked, crate::state::lock::Busy>, Failure> {
    let account = match state.lock_within(Counter::Account(account), wait)? {
        Ok(f) => f,
        Err(busy) => return Ok(Err(busy)),
    };
    let server = if config.server.limits.is_empty() {
        None
    } else {
        match state.lock_within(Counter::Server, wait)? {
            Ok(f) => Some(f),
            Err(busy) => return Ok(Err(busy)),
        }
    };
    Ok(Ok(Locked { account, server }))
}

/// What a decision may wait for a lock: `lock_timeout`, but never more than
/// `SENDER_LOCK_WAIT`.
pub fn decision_wait(config: &Config) -> std::time::Duration {
    std::time::Duration::from_secs(config.state.lock_timeout.secs()).min(SENDER_LOCK_WAIT)
}

/// Check and count one message. A corrupt counter follows `state.on_error`: fail closed
/// (exit 71) or accept uncounted with a warning in the log.
fn files_check_and_record(
    state: &StateDir,
    config: &Config,
    attempt: &Attempt<'_>,
    warn: &mut dyn FnMut(&str),
) -> Result<Decision, Failure> {
    let account = attempt.account;
    let started = std::time::Instant::now();
    let locked = match lock_both(state, config, account, decision_wait(config))? {
        Ok(locked) => locked,
        Err(busy) => {
            return Ok(Decision::busy(busy, started.elapsed()));
        }
    };
    let lock_wait = started.elapsed();
    let Some((mut arec, mut srec)) = load_both(&locked, config, warn)? else {
        return Ok(Decision {
            verdict: Verdict::Accepted(None),
            alert: None,
            lock_wait,
            observed: Vec::new(),
        });
    };
    let limits = config.limits_for(account);
    let mut awin = reconcile(&arec, limits, attempt.now);
    let mut swin = reconcile(&srec, &config.server.limits, attempt.now);
    let mut t = attempt.now;
    for w in awin.iter_mut().chain(swin.iter_mut()) {
        t = t.max(w.advance(attempt.now));
    }
    let (verdict, mut alert, observed) = judge(&arec, &mut awin, &mut swin, config, attempt, t);
    if !attempt.count_refusal && !matches!(verdict, Verdict::Accepted(_)) {
        // Nothing was decided for good: leave both files as they were.
        return Ok(Decision {
            verdict,
            alert: None,
            lock_wait,
            observed: Vec::new(),
        });
    }
    arec.remember(t, attempt.sender, attempt.subject);
    lock_past_threshold(&mut arec, &awin, config, account, t, &mut alert);
    if let Some(a) = &mut alert {
        a.usage = awin
            .iter()
            .map(|w| (crate::config::TimeSpan(w.secs).to_string(), w.usage(t)))
            .collect();
        a.recent = arec.recent.clone();
    }
    arec.windows = awin;
    save_both(&locked, &mut arec, &mut srec, swin)?;
    Ok(Decision {
        verdict,
        alert,
        lock_wait,
        observed,
    })
}

/// Both records, under their locks. `None`: a damaged one with `on_error = "fail-open"`, so
/// the message goes uncounted (and the admin is warned); with fail-closed it is an error.
fn load_both(
    locked: &Locked,
    config: &Config,
    warn: &mut dyn FnMut(&str),
) -> Result<Option<(CounterRecord, CounterRecord)>, Failure> {
    let loaded = (|| {
        let a = locked.account.load()?;
        let s = match &locked.server {
            Some(f) => f.load()?,
            None => CounterRecord::default(),
        };
        Ok::<_, store::Corrupt>((a, s))
    })();
    match loaded {
        Ok(pair) => Ok(Some(pair)),
        Err(store::Corrupt(why)) => match config.state.on_error {
            OnStateError::FailClosed => Err(Failure::new(crate::exit::Exit::OsErr, why)),
            OnStateError::FailOpen => {
                warn(&format!(
                    "{why}; sending uncounted (state.on_error = \"fail-open\")"
                ));
                Ok(None)
            }
        },
    }
}

/// The verdict on this attempt at time `t`, what observe-mode limits would have refused, and
/// the alert when a window refused it (or would have) for the first time in that window (the
/// window remembers it: one alert per account per window).
fn judge(
    arec: &CounterRecord,
    awin: &mut [Window],
    swin: &mut [Window],
    config: &Config,
    attempt: &Attempt<'_>,
    t: i64,
) -> (Verdict, Option<Alert>, Vec<Refusal>) {
    let account = attempt.account;
    if let Some(lock) = &arec.lock {
        awin.iter_mut().for_each(|w| w.record_refused(t));
        return (Verdict::Locked(lock.reason.clone()), None, Vec::new());
    }
    let limits = config.limits_for(account);
    match decide(
        (awin, limits),
        config.is_exempt(account),
        (swin, &config.server.limits),
        t,
        attempt.recipients,
    ) {
        Ok(observed) => {
            let alert = observed
                .iter()
                .find_map(|r| first_in_window(r, awin, swin, t, true));
            (
                Verdict::Accepted(Some(Ticket {
                    account: account.to_string(),
                    at: t,
                    recipients: attempt.recipients,
                })),
                alert,
                observed,
            )
        }
        Err(r) => {
            let alert = first_in_window(&r, awin, swin, t, false);
            (Verdict::Refused(r), alert, Vec::new())
        }
    }
}

/// The alert for `r` when its window has not alerted yet in this window.
fn first_in_window(
    r: &Refusal,
    awin: &mut [Window],
    swin: &mut [Window],
    t: i64,
    observed: bool,
) -> Option<Alert> {
    let windows = match r.scope {
        Scope::Account => awin,
        Scope::Server => swin,
        // A script's windows are not in these records (`crate::script::rules`).
        Scope::Script => return None,
    };
    let w = windows
        .iter_mut()
        .find(|w| w.secs == r.limit.window.secs())?;
    if w.alerted_until > t {
        return None;
    }
    w.alerted_until = t + r.limit.window.secs() as i64;
    Some(Alert {
        refusal: Some(r.clone()),
        locked: None,
        observed,
        usage: Vec::new(),
        recent: Vec::new(),
    })
}

/// `lock_after`: an account with that many refused or held attempts within one of its
/// windows is locked, and the alert says so.
fn lock_past_threshold(
    arec: &mut CounterRecord,
    awin: &[Window],
    config: &Config,
    account: &str,
    t: i64,
    alert: &mut Option<Alert>,
) {
    let Some(threshold) = config.lock_after(account).filter(|&n| n > 0) else {
        return;
    };
    let tried = awin.iter().map(|w| w.usage(t).refused).max().unwrap_or(0);
    if arec.lock.is_some() || tried < u64::from(threshold) {
        return;
    }
    let reason =
        format!("{tried} refused or held attempts within a window (lock_after = {threshold})");
    arec.lock = Some(store::AccountLock {
        since: t,
        reason: reason.clone(),
        ends_itself: false,
    });
    let a = alert.get_or_insert_with(|| Alert {
        observed: false,
        refusal: None,
        locked: None,
        usage: Vec::new(),
        recent: Vec::new(),
    });
    a.locked = Some(reason);
}

/// Both counters or neither: the server first; if the account's write then fails, the
/// server gets its previous record back, so a failed write never leaves a phantom count.
fn save_both(
    locked: &Locked,
    arec: &mut CounterRecord,
    srec: &mut CounterRecord,
    swin: Vec<Window>,
) -> Result<(), Failure> {
    match &locked.server {
        Some(f) => {
            let mut counted = srec.clone();
            counted.windows = swin;
            f.save(&mut counted)?;
            if let Err(e) = locked.account.save(arec) {
                srec.seq = counted.seq;
                let _ = f.save(srec);
                return Err(e);
            }
            Ok(())
        }
        None => locked.account.save(arec),
    }
}

/// Lock or unlock an account (admin command). Returns whether anything changed.
fn files_set_lock(
    state: &StateDir,
    config: &Config,
    account: &str,
    lock: Option<store::AccountLock>,
) -> Result<bool, Failure> {
    let timeout = std::time::Duration::from_secs(config.state.lock_timeout.secs());
    let f = state.lock(Counter::Account(account), timeout)?;
    let mut rec = f
        .load()
        .map_err(|store::Corrupt(why)| Failure::new(crate::exit::Exit::OsErr, why))?;
    let changed = rec.lock.is_some() != lock.is_some();
    rec.lock = lock;
    f.save(&mut rec)?;
    Ok(changed)
}

/// Give back a counted message that was not sent after all (the relay refused it).
fn files_refund(state: &StateDir, config: &Config, ticket: &Ticket) -> Result<(), Failure> {
    let timeout = std::time::Duration::from_secs(config.state.lock_timeout.secs());
    let locked = lock_both(state, config, &ticket.account, timeout)?
        .map_err(|busy| Failure::busy(busy.describe()))?;
    let files = std::iter::once(&locked.account).chain(locked.server.as_ref());
    for f in files {
        let Ok(mut rec) = f.load() else { continue };
        for w in &mut rec.windows {
            w.refund(ticket.at, ticket.recipients);
        }
        f.save(&mut rec)?;
    }
    Ok(())
}

/// Read an account's counters without changing them (status).
fn files_read(
    state: &StateDir,
    config: &Config,
    counter: Counter<'_>,
) -> Result<CounterRecord, Failure> {
    // A counter held by a stopped sender must not stall `status` for every account.
    let f = state.lock(counter, decision_wait(config))?;
    f.load()
        .map_err(|store::Corrupt(why)| Failure::new(crate::exit::Exit::OsErr, why))
}

/// Empty an account's (or the server's) counters.
fn files_reset(state: &StateDir, config: &Config, counter: Counter<'_>) -> Result<(), Failure> {
    let timeout = std::time::Duration::from_secs(config.state.lock_timeout.secs());
    // Whatever is in the way (a directory, a symlink, a device) is moved aside first.
    let f = match state.lock(counter, timeout) {
        Ok(f) => f,
        Err(_) if !state.is_regular_file(counter) => {
            state.set_aside(counter)?;
            state.lock(counter, timeout)?
        }
        Err(f) => return Err(f),
    };
    // Counters go; a lock stays until `mailgate unlock`.
    let old = f.load().unwrap_or_default();
    let mut fresh = CounterRecord {
        seq: old.seq,
        lock: old.lock,
        ..CounterRecord::default()
    };
    // Write both slots so that no older record survives.
    f.save(&mut fresh)?;
    f.save(&mut fresh)
}
