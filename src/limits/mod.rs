//! The decision: may this account send this message now? Every window of the account and of
//! the server cap is checked and updated as one step, under the locks of both counter files
//! (always account first, then server, so concurrent senders cannot deadlock).
//!
//! It decides and counts, nothing else: it must not read spools, relay or log a message.

mod file_store;
pub use file_store::decision_wait;
mod redis_conn;
mod redis_store;
pub mod store;
pub mod window;

use crate::config::{Action, Config, Limit};
use crate::exit::Failure;
use crate::state::StateDir;
use store::{Counter, CounterRecord};
use window::Window;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Account,
    Server,
    /// A script's own window (`crate::script::rules`): a script limit or the new-script budget.
    Script,
}

/// Why a message may not go now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub scope: Scope,
    pub limit: Limit,
    /// "messages" or "recipients".
    pub what: &'static str,
    pub max: u32,
    /// When the message would fit; `None` when it never can (too many recipients for the limit).
    pub next: Option<i64>,
    /// For `Scope::Script`: whose window ("script */contact.php", "new script /x/y.php").
    pub script: Option<String>,
}

impl Refusal {
    pub fn action(&self) -> Action {
        self.limit.action
    }

    /// The line the caller and the log see.
    pub fn describe(&self, account: &str, recipients: u32) -> String {
        let who = match self.scope {
            Scope::Account => account.to_string(),
            Scope::Server => "the server-wide cap".to_string(),
            Scope::Script => format!("{account}'s {}", self.script.as_deref().unwrap_or("script")),
        };
        let window = self.limit.window;
        match self.next {
            Some(t) => format!(
                "{who} exceeded {} {} per {window} (limit \"{window}\"); next message possible at {}",
                self.max,
                self.what,
                format_time(t)
            ),
            None => format!(
                "a message to {recipients} recipients exceeds {who}'s limit of {} {} per {window} (limit \"{window}\")",
                self.max, self.what
            ),
        }
    }
}

/// "14:32 UTC" today, with the date when further away.
pub fn format_time(t: i64) -> String {
    let Some(at) = chrono::DateTime::from_timestamp(t, 0) else {
        return format!("@{t}");
    };
    let now = chrono::Utc::now();
    if (at - now).num_hours().abs() < 20 {
        at.format("%H:%M UTC").to_string()
    } else {
        at.format("%Y-%m-%d %H:%M UTC").to_string()
    }
}

/// Align stored windows with the configured limits: keep the counts of a window whose length is
/// unchanged, start new ones empty.
pub fn reconcile(record: &CounterRecord, limits: &[Limit], now: i64) -> Vec<Window> {
    limits
        .iter()
        .map(|l| {
            record
                .windows
                .iter()
                .find(|w| w.secs == l.window.secs())
                .cloned()
                .unwrap_or_else(|| Window::new(l.window.secs(), now))
        })
        .collect()
}

/// Check every window, then count the message (accepted) or the refusal. Pure.
/// Accepted, it returns what the limits in observe mode would have refused: they never
/// refuse, and never hide an enforced limit that does.
pub fn decide(
    account: (&mut [Window], &[Limit]),
    exempt: bool,
    server: (&mut [Window], &[Limit]),
    now: i64,
    recipients: u32,
) -> Result<Vec<Refusal>, Refusal> {
    let mut worst: Option<Refusal> = None;
    let mut observed = Vec::new();
    if !exempt {
        for (scope, (windows, limits)) in [
            (Scope::Account, (&*account.0, account.1)),
            (Scope::Server, (&*server.0, server.1)),
        ] {
            for (w, l) in windows.iter().zip(limits) {
                let Some(r) = check(w, l, scope, now, recipients) else {
                    continue;
                };
                if l.observe {
                    observed.push(r);
                } else if worst.as_ref().is_none_or(|cur| worse(&r, cur)) {
                    worst = Some(r);
                }
            }
        }
    }
    let all = account.0.iter_mut().chain(server.0.iter_mut());
    match worst {
        None => {
            all.for_each(|w| w.record(now, recipients));
            Ok(observed)
        }
        Some(r) => {
            all.for_each(|w| w.record_refused(now));
            Err(r)
        }
    }
}

pub(crate) fn check(
    w: &Window,
    l: &Limit,
    scope: Scope,
    now: i64,
    recipients: u32,
) -> Option<Refusal> {
    let used = w.usage(now);
    let (what, max) = if l.messages.is_some_and(|m| used.messages + 1 > u64::from(m)) {
        ("messages", l.messages?)
    } else if l
        .recipients
        .is_some_and(|m| used.recipients + u64::from(recipients) > u64::from(m))
    {
        ("recipients", l.recipients?)
    } else {
        return None;
    };
    Some(Refusal {
        scope,
        limit: l.clone(),
        what,
        max,
        next: w.next_room(now, (1, u64::from(recipients)), (l.messages, l.recipients)),
        script: None,
    })
}

/// reject beats hold beats defer; among equals, the one that frees up later.
pub(crate) fn worse(a: &Refusal, b: &Refusal) -> bool {
    let rank = |r: &Refusal| match r.action() {
        Action::Reject => 2,
        Action::Hold => 1,
        Action::Defer => 0,
    };
    let later = |r: &Refusal| r.next.unwrap_or(i64::MAX);
    (rank(a), later(a)) > (rank(b), later(b))
}

/// A counted message, so that it can be given back if it is not sent after all.
#[derive(Debug, Clone)]
pub struct Ticket {
    account: String,
    at: i64,
    recipients: u32,
}

#[derive(Debug)]
pub enum Verdict {
    /// Counted (the ticket gives it back if the relay refuses); `None` when uncounted
    /// (fail-open on a corrupt counter).
    Accepted(Option<Ticket>),
    Refused(Refusal),
    /// The account is locked: everything is held. Carries the lock's reason.
    Locked(String),
    /// The shared counter store cannot be reached (`on_unavailable = "queue"`): keep the
    /// message for `queue run`, which decides when the store is back.
    StoreUnavailable(String),
    /// Another process held a counter lock past `SENDER_LOCK_WAIT` (a stopped sender): the
    /// message waits in defer/, and `queue run` decides (and counts) it later.
    Busy(crate::state::lock::Busy),
}

/// How long a decision waits for a counter lock before the message is deferred. A lock is
/// held for microseconds; a longer wait means a stopped or stuck holder, and a customer who
/// stops their own sender must not delay anyone else by more than this.
pub const SENDER_LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// What the admin's alert mail needs to know; produced once per account per window.
#[derive(Debug, Clone)]
pub struct Alert {
    pub refusal: Option<Refusal>,
    /// Set when this decision locked the account (`lock_after`).
    pub locked: Option<String>,
    /// The refusal is one an observe-mode limit would have made; the message went.
    pub observed: bool,
    pub usage: Vec<(String, window::Usage)>,
    pub recent: Vec<store::Recent>,
}

/// One message asking to be counted.
pub struct Attempt<'a> {
    pub account: &'a str,
    pub recipients: u32,
    pub now: i64,
    /// For the admin's alert mail.
    pub sender: &'a str,
    pub subject: &'a str,
    /// False when `queue run` only asks whether a deferred message fits now: a "no" then
    /// changes nothing (no refusal counted, no alert, no lock).
    pub count_refusal: bool,
    /// `now` is the test clock: the Redis store then uses it instead of Redis's own `TIME`.
    pub test_clock: bool,
}

pub struct Decision {
    pub verdict: Verdict,
    pub alert: Option<Alert>,
    /// How long this sender waited for the counter locks (logged; the benchmark reads it).
    pub lock_wait: std::time::Duration,
    /// Limits in observe mode that this accepted message went over: it flows, and the log
    /// says what they would have done.
    pub observed: Vec<Refusal>,
}

impl Decision {
    /// A counter lock stayed busy past the decision's wait (a stopped sender holds it).
    pub fn busy(busy: crate::state::lock::Busy, lock_wait: std::time::Duration) -> Decision {
        Decision {
            verdict: Verdict::Busy(busy),
            alert: None,
            lock_wait,
            observed: Vec::new(),
        }
    }
}

/// Where the counters live. Everything above the store (decide, refunds, status) is the same
/// for both: the local locked files, or Redis shared by the nodes of a cluster.
pub trait CounterStore {
    /// Check and count one message under the counters' locks (or the Redis script).
    fn check_and_record(
        &self,
        config: &Config,
        attempt: &Attempt<'_>,
        warn: &mut dyn FnMut(&str),
    ) -> Result<Decision, Failure>;

    /// Give back a counted message that was not sent after all (the relay refused it).
    fn refund(&self, config: &Config, ticket: &Ticket) -> Result<(), Failure>;

    /// An account's (or the server's) counters, unchanged (status).
    fn read(
        &self,
        config: &Config,
        counter: Counter<'_>,
        now: i64,
    ) -> Result<CounterRecord, Failure>;

    /// Empty an account's (or the server's) counters; a lock stays.
    fn reset(&self, config: &Config, counter: Counter<'_>) -> Result<(), Failure>;

    /// Lock or unlock an account. Returns whether anything changed.
    fn set_lock(
        &self,
        config: &Config,
        account: &str,
        lock: Option<store::AccountLock>,
    ) -> Result<bool, Failure>;

    /// Accounts that have counters.
    fn accounts(&self) -> Result<Vec<String>, Failure>;

    /// Where a counter lives, for messages.
    fn counter_name(&self, counter: Counter<'_>) -> String;

    /// Claim "the customer's notice about `account` in this window" for `secs` across every
    /// node that shares the store: true for the one claimant. The file store is one node's,
    /// whose statistics lock already decides; a store that cannot be asked says yes (two
    /// notices are better than none).
    fn claim_notice(&self, _account: &str, _secs: u64) -> bool {
        true
    }

    /// Add this node's newly learnt outcomes of `account` (recipients delivered, bounced) to
    /// the tally every node shares, and return the shared tally over the last `window`
    /// seconds — what the bounce trigger judges on a cluster. `None` for a store no other node
    /// shares (the file store: the node's own statistics are the whole truth) or one that
    /// cannot be asked (the node's own tally decides then).
    fn add_outcomes(
        &self,
        _account: &str,
        _now: i64,
        _added: (u64, u64),
        _window: i64,
    ) -> Option<(u64, u64)> {
        None
    }
}

pub type Store = Box<dyn CounterStore>;

/// Opens the state directory (files) or prepares the client (Redis connects on first use).
pub fn open_store(config: &Config) -> Result<Store, Failure> {
    match config.store.kind {
        crate::config::StoreKind::Files => Ok(Box::new(file_store::FileStore(StateDir::open(
            &config.state_dir,
        )?))),
        crate::config::StoreKind::Redis => Ok(Box::new(redis_store::RedisStore::new(config)?)),
    }
}

/// What `check-config` says about a Redis store, one line per step (reachable and
/// authenticated, the master Sentinel names, the scripts loaded): `Err` for a step that failed.
/// Nothing for the file store.
pub fn probe_store(config: &Config) -> Vec<Result<String, String>> {
    match config.store.kind {
        crate::config::StoreKind::Files => Vec::new(),
        crate::config::StoreKind::Redis => match redis_store::RedisStore::new(config) {
            Ok(store) => store.probe(),
            Err(f) => vec![Err(f.message)],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TimeSpan;

    fn limit(secs: u64, messages: Option<u32>, recipients: Option<u32>) -> Limit {
        Limit {
            window: TimeSpan(secs),
            messages,
            recipients,
            action: Action::Reject,
            observe: false,
        }
    }

    #[test]
    fn several_windows_and_server_cap() {
        let acc = [limit(60, Some(2), None), limit(3600, Some(3), Some(10))];
        let srv = [limit(3600, Some(4), None)];
        let mut aw: Vec<Window> = acc
            .iter()
            .map(|l| Window::new(l.window.secs(), 0))
            .collect();
        let mut sw: Vec<Window> = srv
            .iter()
            .map(|l| Window::new(l.window.secs(), 0))
            .collect();
        let send = |t: i64, rcpts: u32, aw: &mut Vec<Window>, sw: &mut Vec<Window>| {
            aw.iter_mut().chain(sw.iter_mut()).for_each(|w| {
                w.advance(t);
            });
            decide((aw, &acc), false, (sw, &srv), t, rcpts)
        };
        assert!(send(0, 1, &mut aw, &mut sw).is_ok());
        assert!(send(1, 1, &mut aw, &mut sw).is_ok());
        let r = send(2, 1, &mut aw, &mut sw).unwrap_err();
        assert_eq!((r.limit.window.secs(), r.what), (60, "messages"));
        assert!(
            r.describe("acc", 1)
                .contains("acc exceeded 2 messages per 1m"),
            "{}",
            r.describe("acc", 1)
        );
        // refused attempts consumed nothing:
        assert!(send(70, 1, &mut aw, &mut sw).is_ok());
        let r = send(200, 1, &mut aw, &mut sw).unwrap_err();
        assert_eq!(r.limit.window.secs(), 3600);
        assert_eq!(aw[1].usage(200).refused, 2);
        // recipients: 11 > 10 never fits.
        let r = send(4000, 11, &mut aw, &mut sw).unwrap_err();
        assert_eq!((r.what, r.next), ("recipients", None));
    }

    #[test]
    fn an_observed_limit_never_refuses_nor_hides_an_enforced_one() {
        let mut watch = limit(60, Some(1), None);
        watch.observe = true;
        let acc = [watch, limit(3600, Some(3), None)];
        let mut aw: Vec<Window> = acc
            .iter()
            .map(|l| Window::new(l.window.secs(), 0))
            .collect();
        let mut sw: Vec<Window> = Vec::new();
        assert_eq!(
            decide((&mut aw, &acc), false, (&mut sw, &[]), 0, 1),
            Ok(vec![])
        );
        // Over the observed limit: it goes, and says so; counted like any message.
        let observed = decide((&mut aw, &acc), false, (&mut sw, &[]), 1, 1).unwrap();
        assert_eq!(observed.len(), 1);
        assert_eq!(observed[0].limit.window.secs(), 60);
        assert_eq!(aw[0].usage(1).messages, 2);
        assert_eq!(
            decide((&mut aw, &acc), false, (&mut sw, &[]), 2, 1)
                .unwrap()
                .len(),
            1
        );
        // The enforced hourly limit refuses the fourth, whatever the observed one says.
        let r = decide((&mut aw, &acc), false, (&mut sw, &[]), 3, 1).unwrap_err();
        assert_eq!(r.limit.window.secs(), 3600);
    }

    #[test]
    fn exempt_is_counted_not_limited() {
        let acc = [limit(60, Some(1), None)];
        let mut aw = vec![Window::new(60, 0)];
        let mut sw: Vec<Window> = Vec::new();
        for _ in 0..5 {
            assert!(decide((&mut aw, &acc), true, (&mut sw, &[]), 0, 1).is_ok());
        }
        assert_eq!(aw[0].usage(0).messages, 5);
    }
}
