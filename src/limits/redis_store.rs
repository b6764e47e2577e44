//! The shared counter store for hosting clusters: every window of an account and of the
//! (cluster-wide) server cap checked and updated by one Lua script in one round trip
//! (`redis.lua`), with the same bucket math as `window.rs`. Keys expire when their window has
//! passed unused, so idle accounts vanish from Redis by themselves.
//!
//! Redis unreachable or slow (`[store] timeout_ms`) follows `[store] on_unavailable`: keep the
//! message in the local defer spool for `queue run` (default), send uncounted, or refuse.

use super::redis_conn::RedisConn;
use super::store::{AccountLock, CounterRecord};
use super::window::{BUCKETS, Bucket, Window};
use super::{
    Alert, Attempt, Counter, CounterStore, Decision, Refusal, Scope, Ticket, Verdict, store, worse,
};
use crate::config::{Config, Limit, OnUnavailable};
use crate::exit::{Exit, Failure};
use redis::Value;
use std::time::Duration;

const CHECK: &str = include_str!("redis.lua");
const REFUND: &str = r#"
local rc = tonumber(ARGV[#KEYS + 1])
for i = 1, #KEYS do
  local idx = tonumber(ARGV[i])
  local slot = tostring(idx % 20)
  local v = redis.call('HGET', KEYS[i], slot)
  if v then
    local b, m, r, f = string.match(v, '^(%-?%d+):(%d+):(%d+):(%d+)$')
    if b and tonumber(b) == idx then
      m = math.max(0, tonumber(m) - 1)
      r = math.max(0, tonumber(r) - rc)
      redis.call('HSET', KEYS[i], slot, b .. ':' .. m .. ':' .. r .. ':' .. f)
    end
  end
end
return 1
"#;

/// The delivery outcomes every node learnt, per account: a hash of minute buckets
/// ("delivered:bounced"), added to and summed over the trigger's window in one call; buckets
/// older than the window are dropped, the key expires when the account goes quiet.
const OUTCOMES: &str = r#"
local now, d, b, win = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cur = math.floor(now / 60)
local first = math.floor((now - win) / 60)
if d > 0 or b > 0 then
  local v = redis.call('HGET', KEYS[1], cur)
  local od, ob = 0, 0
  if v then
    local x, y = string.match(v, '^(%d+):(%d+)$')
    od, ob = tonumber(x) or 0, tonumber(y) or 0
  end
  redis.call('HSET', KEYS[1], cur, (od + d) .. ':' .. (ob + b))
  redis.call('EXPIRE', KEYS[1], win + 120)
end
local all = redis.call('HGETALL', KEYS[1])
local sd, sb = 0, 0
for i = 1, #all, 2 do
  local bucket = tonumber(all[i])
  if bucket and bucket < first then
    redis.call('HDEL', KEYS[1], all[i])
  elseif bucket and bucket <= cur then
    local x, y = string.match(all[i + 1], '^(%d+):(%d+)$')
    sd = sd + (tonumber(x) or 0); sb = sb + (tonumber(y) or 0)
  end
end
return {sd, sb}
"#;

pub struct RedisStore {
    conn: RedisConn,
    keys: Keys,
    on_unavailable: OnUnavailable,
}

/// mailgate's key names. On a Redis Cluster every key carries one hash tag (`{mailgate}`), so
/// that the keys one script call touches (an account's windows, the server's, the lock, the
/// call's token) live in one slot, as a Cluster requires of a script; elsewhere the names are
/// the plain `mailgate:` ones they have always been.
#[derive(Clone, Copy)]
pub(super) struct Keys {
    prefix: &'static str,
}

impl Keys {
    pub(super) fn new(cluster: bool) -> Keys {
        Keys {
            prefix: if cluster { "{mailgate}:" } else { "mailgate:" },
        }
    }

    fn window(self, counter: Counter<'_>, secs: u64) -> String {
        match counter {
            Counter::Account(a) => format!("{}a:{a}:{secs}", self.prefix),
            Counter::Server => format!("{}s:{secs}", self.prefix),
        }
    }

    fn lock(self, account: &str) -> String {
        format!("{}lock:{account}", self.prefix)
    }

    fn once(self, token: &str) -> String {
        format!("{}once:{token}", self.prefix)
    }

    fn notice(self, account: &str) -> String {
        format!("{}notice:{account}", self.prefix)
    }

    fn outcomes(self, account: &str) -> String {
        format!("{}o:{account}", self.prefix)
    }

    /// Every window key of a counter (SCAN pattern).
    fn windows(self, counter: Counter<'_>) -> String {
        match counter {
            Counter::Account(a) => format!("{}a:{a}:*", self.prefix),
            Counter::Server => format!("{}s:*", self.prefix),
        }
    }

    /// The account a window key belongs to.
    fn account_of(self, key: &str) -> Option<String> {
        let rest = key.strip_prefix(self.prefix)?.strip_prefix("a:")?;
        Some(rest[..rest.rfind(':')?].to_string())
    }
}

impl RedisStore {
    pub fn new(config: &Config) -> Result<RedisStore, Failure> {
        Ok(RedisStore {
            conn: RedisConn::new(&config.store)?,
            keys: Keys::new(!config.store.cluster.is_empty()),
            on_unavailable: config.store.on_unavailable,
        })
    }

    /// Run `f` on the store's connection (see `RedisConn::run`: failovers are followed).
    fn with_conn<T>(
        &self,
        f: impl FnMut(&mut dyn redis::ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        self.conn.run(f)
    }

    /// check-config's lines: the master (through the sentinels), reachable and authenticated,
    /// the two scripts loaded.
    pub fn probe(&self) -> Vec<Result<String, String>> {
        let mut lines = Vec::new();
        let name = self.conn.describe();
        if let Some(master) = self.conn.sentinel_master() {
            match master {
                Ok((host, port)) => lines.push(Ok(format!(
                    "counter store {name}: the sentinels name {host}:{port}"
                ))),
                Err(why) => {
                    lines.push(Err(format!("counter store {name}: {why}")));
                    return lines;
                }
            }
        }
        match self.conn.run(|c| redis::cmd("PING").query::<String>(c)) {
            Ok(_) => lines.push(Ok(format!(
                "counter store {name}: reachable, authenticated{}",
                self.conn.user_note()
            ))),
            Err(why) => {
                lines.push(Err(format!("counter store {name}: {why}")));
                return lines;
            }
        }
        for (what, source) in [("counting", CHECK), ("refund", REFUND)] {
            let script = redis::Script::new(source);
            match self.conn.run(|c| script.prepare_invoke().load(c)) {
                Ok(sha) => lines.push(Ok(format!(
                    "counter store {name}: {what} script loaded ({sha})"
                ))),
                Err(why) => lines.push(Err(format!(
                    "counter store {name}: {what} script not loaded: {why}"
                ))),
            }
        }
        lines
    }

    /// The configured reaction to an unreachable or slow Redis.
    fn unavailable(&self, why: String, warn: &mut dyn FnMut(&str)) -> Result<Decision, Failure> {
        let verdict = match self.on_unavailable {
            OnUnavailable::Queue => Verdict::StoreUnavailable(why),
            OnUnavailable::FailOpen => {
                warn(&format!(
                    "{why}; sending uncounted (store.on_unavailable = \"fail-open\")"
                ));
                Verdict::Accepted(None)
            }
            OnUnavailable::Refuse => return Err(Failure::new(Exit::OsErr, why)),
        };
        Ok(Decision {
            verdict,
            alert: None,
            lock_wait: Duration::ZERO,
            observed: Vec::new(),
        })
    }

    /// The script's answer for a message that did not fit: the worst refusal, and the alert
    /// when the script says one is due (first in the window) or the account was just locked.
    fn refused(
        &self,
        reply: &[Value],
        limits: &[Limit],
        server: &[Limit],
        now: i64,
        attempt: &Attempt<'_>,
    ) -> (Verdict, Option<Alert>) {
        let (refusals, alert) = answer(reply, limits, server, now, attempt, false);
        let worst = refusals
            .into_iter()
            .reduce(|a, b| if worse(&b, &a) { b } else { a })
            .unwrap_or_else(|| self.placeholder_refusal(limits, server));
        let alert = alert.map(|mut a| {
            a.refusal = Some(worst.clone());
            a
        });
        (Verdict::Refused(worst), alert)
    }

    pub fn check_and_record(
        &self,
        config: &Config,
        attempt: &Attempt<'_>,
        warn: &mut dyn FnMut(&str),
    ) -> Result<Decision, Failure> {
        let account = attempt.account;
        let limits = config.limits_for(account);
        let server = &config.server.limits;
        let script = redis::Script::new(CHECK);
        let invocation = check_invocation(&script, self.keys, config, attempt);
        let started = std::time::Instant::now();
        let reply: Vec<Value> = match self.with_conn(|c| invocation.invoke(c)) {
            Ok(r) => r,
            Err(why) => return self.unavailable(why, warn),
        };
        let lock_wait = started.elapsed();
        let status = int(reply.first());
        let now = int(reply.get(1));
        let verdict = match status {
            1 => {
                // Over limits in observe mode only: it goes; the script lists them.
                let (observed, alert) = if reply.len() >= 5 {
                    answer(&reply, limits, server, now, attempt, true)
                } else {
                    (Vec::new(), None)
                };
                return Ok(Decision {
                    verdict: Verdict::Accepted(Some(Ticket {
                        account: account.to_string(),
                        at: now,
                        recipients: attempt.recipients,
                    })),
                    alert,
                    lock_wait,
                    observed,
                });
            }
            2 => {
                let raw = string(reply.get(2));
                Verdict::Locked(
                    raw.split_once('|')
                        .map_or(raw.clone(), |(_, r)| r.to_string()),
                )
            }
            0 | 3 if status == 3 || reply.len() < 5 => {
                // Did not fit, nothing recorded (queue run asking about a deferred message).
                return Ok(Decision {
                    verdict: Verdict::Refused(self.placeholder_refusal(limits, server)),
                    alert: None,
                    lock_wait,
                    observed: Vec::new(),
                });
            }
            _ => {
                let (verdict, alert) = self.refused(&reply, limits, server, now, attempt);
                return Ok(Decision {
                    verdict,
                    alert,
                    lock_wait,
                    observed: Vec::new(),
                });
            }
        };
        Ok(Decision {
            verdict,
            alert: None,
            lock_wait,
            observed: Vec::new(),
        })
    }

    /// A refusal whose details were not computed (only "no" matters to the caller).
    fn placeholder_refusal(&self, limits: &[Limit], server: &[Limit]) -> Refusal {
        let limit = limits.first().or(server.first()).cloned().unwrap_or(Limit {
            window: crate::config::TimeSpan(1),
            messages: Some(0),
            recipients: None,
            action: crate::config::Action::Reject,
            observe: false,
        });
        Refusal {
            scope: Scope::Account,
            script: None,
            max: limit.messages.unwrap_or(0),
            limit,
            what: "messages",
            next: None,
        }
    }

    pub fn refund(&self, config: &Config, ticket: &Ticket) -> Result<(), Failure> {
        let script = redis::Script::new(REFUND);
        let mut invocation = script.prepare_invoke();
        let windows: Vec<(Counter<'_>, u64)> = config
            .limits_for(&ticket.account)
            .iter()
            .map(|l| (Counter::Account(&ticket.account), l.window.secs()))
            .chain(
                config
                    .server
                    .limits
                    .iter()
                    .map(|l| (Counter::Server, l.window.secs())),
            )
            .collect();
        for (counter, secs) in &windows {
            invocation.key(self.keys.window(*counter, *secs));
        }
        for (_, secs) in &windows {
            invocation.arg(ticket.at.div_euclid(Window::new(*secs, 0).bucket_len()));
        }
        invocation.arg(ticket.recipients);
        self.with_conn(|c| invocation.invoke::<i64>(c))
            .map(|_| ())
            .map_err(|why| Failure::new(Exit::OsErr, why))
    }

    pub fn read(
        &self,
        counter: Counter<'_>,
        limits: &[Limit],
        now: i64,
    ) -> Result<CounterRecord, Failure> {
        let mut record = CounterRecord::default();
        for l in limits {
            let key = self.keys.window(counter, l.window.secs());
            let fields: Vec<(String, String)> = self
                .with_conn(|c| redis::cmd("HGETALL").arg(&key).query(c))
                .map_err(|why| Failure::new(Exit::OsErr, why))?;
            let mut dump = vec![0i64];
            for (field, value) in fields {
                if field == "alert" {
                    dump[0] = value.parse().unwrap_or(0);
                } else {
                    dump.extend(value.split(':').filter_map(|n| n.parse::<i64>().ok()));
                }
            }
            let values: Vec<Value> = dump.into_iter().map(Value::Int).collect();
            record
                .windows
                .push(window_from_dump(l.window.secs(), now, &values));
        }
        if let Counter::Account(a) = counter {
            let lock: Option<String> = self
                .with_conn(|c| redis::cmd("GET").arg(self.keys.lock(a)).query(c))
                .map_err(|why| Failure::new(Exit::OsErr, why))?;
            record.lock = lock.map(|raw| {
                let (since, reason) = raw.split_once('|').unwrap_or(("0", &raw));
                // "SINCE+" marks a trigger's hold that ends by itself.
                let ends_itself = since.ends_with('+');
                AccountLock {
                    since: since.trim_end_matches('+').parse().unwrap_or(0),
                    reason: reason.to_string(),
                    ends_itself,
                }
            });
        }
        Ok(record)
    }

    /// Delete an account's (or the server's) windows; a lock stays.
    pub fn reset(&self, counter: Counter<'_>) -> Result<(), Failure> {
        for key in self.scan(&self.keys.windows(counter))? {
            self.with_conn(|c| redis::cmd("DEL").arg(&key).query::<i64>(c))
                .map_err(|why| Failure::new(Exit::OsErr, why))?;
        }
        Ok(())
    }

    pub fn set_lock(&self, account: &str, lock: Option<AccountLock>) -> Result<bool, Failure> {
        let key = self.keys.lock(account);
        let changed: i64 = match lock {
            Some(l) => self.with_conn(|c| {
                let existed: i64 = redis::cmd("EXISTS").arg(&key).query(c)?;
                redis::cmd("SET")
                    .arg(&key)
                    .arg(format!(
                        "{}{}|{}",
                        l.since,
                        if l.ends_itself { "+" } else { "" },
                        l.reason
                    ))
                    .query::<()>(c)?;
                Ok(1 - existed)
            }),
            None => self.with_conn(|c| redis::cmd("DEL").arg(&key).query(c)),
        }
        .map_err(|why| Failure::new(Exit::OsErr, why))?;
        Ok(changed > 0)
    }

    /// Accounts with counters in Redis.
    pub fn accounts(&self) -> Result<Vec<String>, Failure> {
        let mut names: Vec<String> = self
            .scan(&format!("{}a:*", self.keys.prefix))?
            .into_iter()
            .filter_map(|k| self.keys.account_of(&k))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn scan(&self, pattern: &str) -> Result<Vec<String>, Failure> {
        self.conn
            .scan(pattern)
            .map_err(|why| Failure::new(Exit::OsErr, why))
    }
}

fn refusal(
    scope: Scope,
    limit: &Limit,
    what: &'static str,
    w: &Window,
    now: i64,
    recipients: u32,
) -> Refusal {
    Refusal {
        scope,
        limit: limit.clone(),
        what,
        max: if what == "messages" {
            limit.messages
        } else {
            limit.recipients
        }
        .unwrap_or(0),
        next: w.next_room(
            now,
            (1, u64::from(recipients)),
            (limit.messages, limit.recipients),
        ),
        script: None,
    }
}

/// `[alert, bucket, messages, recipients, refused, ...]` as the script dumps it → a Window at now.
fn window_from_dump(secs: u64, now: i64, dump: &[Value]) -> Window {
    let mut w = Window::new(secs, now);
    w.alerted_until = int(dump.first());
    for q in dump.get(1..).unwrap_or(&[]).chunks(4) {
        let idx = int(q.first());
        if idx > w.head - BUCKETS as i64 && idx <= w.head {
            w.buckets[idx.rem_euclid(BUCKETS as i64) as usize] = Bucket {
                messages: int(q.get(1)) as u32,
                recipients: int(q.get(2)) as u32,
                refused: int(q.get(3)) as u32,
            };
        }
    }
    w
}

fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Int(i)) => *i,
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).parse().unwrap_or(0),
        Some(Value::SimpleString(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn string(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(i)) => i.to_string(),
        _ => String::new(),
    }
}

fn array(v: Option<&Value>) -> Vec<Value> {
    match v {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    }
}

/// The windows the script names as exceeded (or, for an accepted message, observed), as
/// refusals; and the alert when the script says one is due or the account was just locked.
fn answer(
    reply: &[Value],
    limits: &[Limit],
    server: &[Limit],
    now: i64,
    attempt: &Attempt<'_>,
    observed: bool,
) -> (Vec<Refusal>, Option<Alert>) {
    let alert_due = int(reply.get(2)) == 1;
    let locked = string(reply.get(3));
    let exceeded = array(reply.get(4));
    let windows: Vec<Window> = limits
        .iter()
        .chain(server)
        .enumerate()
        .map(|(i, l)| window_from_dump(l.window.secs(), now, &array(reply.get(5 + i))))
        .collect();
    let mut refusals = Vec::new();
    for pair in exceeded.chunks(2) {
        let i = (int(pair.first()) - 1).max(0) as usize;
        let what = if string(pair.get(1)) == "recipients" {
            "recipients"
        } else {
            "messages"
        };
        let (scope, limit) = match limits.get(i) {
            Some(l) => (Scope::Account, l),
            None => match server.get(i - limits.len()) {
                Some(l) => (Scope::Server, l),
                None => continue,
            },
        };
        let Some(w) = windows.get(i) else { continue };
        refusals.push(refusal(scope, limit, what, w, now, attempt.recipients));
    }
    let alert = (alert_due || !locked.is_empty()).then(|| Alert {
        refusal: refusals.first().cloned(),
        locked: (!locked.is_empty()).then(|| locked.clone()),
        observed,
        usage: windows[..limits.len().min(windows.len())]
            .iter()
            .map(|w| (crate::config::TimeSpan(w.secs).to_string(), w.usage(now)))
            .collect(),
        recent: Vec::new(),
    });
    (refusals, alert)
}

/// The check script's keys (every window of the account and of the server, and the account's
/// lock) and arguments for one attempt.
/// 128 random bits in hex: one counting call, repeated as often as a failover needs.
fn call_token() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most bytes.len() bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // No randomness (a very old kernel): time and pid are unique enough for one call.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return format!("{:x}-{}", now.as_nanos(), std::process::id());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_invocation<'a>(
    script: &'a redis::Script,
    keys: Keys,
    config: &Config,
    attempt: &Attempt<'_>,
) -> redis::ScriptInvocation<'a> {
    let account = attempt.account;
    let limits = config.limits_for(account);
    let server = &config.server.limits;
    let mut invocation = script.prepare_invoke();
    for l in limits {
        invocation.key(keys.window(Counter::Account(account), l.window.secs()));
    }
    for l in server {
        invocation.key(keys.window(Counter::Server, l.window.secs()));
    }
    invocation
        .key(keys.lock(account))
        .key(keys.once(&call_token()))
        // 0: decide by Redis's clock, the one clock all nodes share.
        .arg(if attempt.test_clock { attempt.now } else { 0 })
        .arg(attempt.recipients)
        .arg(u8::from(attempt.count_refusal))
        .arg(u8::from(config.is_exempt(account)))
        .arg(config.lock_after(account).unwrap_or(0))
        .arg(limits.len())
        .arg(server.len());
    for l in limits.iter().chain(server) {
        invocation
            .arg(l.window.secs())
            .arg(l.messages.map_or(-1, i64::from))
            .arg(l.recipients.map_or(-1, i64::from))
            .arg(u8::from(l.observe));
    }
    // The token lives as long as the call may repeat itself (a failover's wait and a margin),
    // not longer: every message leaves one, and a runaway script sends hundreds a second.
    invocation.arg(config.store.failover_wait_ms / 1000 + 30);
    invocation
}

impl CounterStore for RedisStore {
    fn check_and_record(
        &self,
        config: &Config,
        attempt: &Attempt<'_>,
        warn: &mut dyn FnMut(&str),
    ) -> Result<Decision, Failure> {
        RedisStore::check_and_record(self, config, attempt, warn)
    }

    fn refund(&self, config: &Config, ticket: &Ticket) -> Result<(), Failure> {
        RedisStore::refund(self, config, ticket)
    }

    fn read(
        &self,
        config: &Config,
        counter: Counter<'_>,
        now: i64,
    ) -> Result<CounterRecord, Failure> {
        let limits = match counter {
            Counter::Account(a) => config.limits_for(a),
            Counter::Server => &config.server.limits,
        };
        RedisStore::read(self, counter, limits, now)
    }

    fn reset(&self, _config: &Config, counter: Counter<'_>) -> Result<(), Failure> {
        RedisStore::reset(self, counter)
    }

    fn set_lock(
        &self,
        _config: &Config,
        account: &str,
        lock: Option<store::AccountLock>,
    ) -> Result<bool, Failure> {
        RedisStore::set_lock(self, account, lock)
    }

    fn accounts(&self) -> Result<Vec<String>, Failure> {
        RedisStore::accounts(self)
    }

    fn counter_name(&self, counter: Counter<'_>) -> String {
        match counter {
            Counter::Account(_) | Counter::Server => {
                format!("redis {}", self.keys.windows(counter))
            }
        }
    }

    fn add_outcomes(
        &self,
        account: &str,
        now: i64,
        added: (u64, u64),
        window: i64,
    ) -> Option<(u64, u64)> {
        let script = redis::Script::new(OUTCOMES);
        let key = self.keys.outcomes(account);
        // Tried once, not followed through a failover (an add repeated after a lost answer
        // would count twice): without an answer the node's own tally decides this run.
        self.conn
            .run_once(|c| {
                script
                    .key(&key)
                    .arg(now)
                    .arg(added.0)
                    .arg(added.1)
                    .arg(window)
                    .invoke::<(u64, u64)>(c)
            })
            .ok()
    }

    fn claim_notice(&self, account: &str, secs: u64) -> bool {
        let key = self.keys.notice(account);
        self.with_conn(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(secs.max(1))
                .query::<Option<String>>(c)
        })
        .map_or(true, |set| set.is_some())
    }
}
