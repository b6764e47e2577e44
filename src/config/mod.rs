//! The configuration file (`/etc/mailgate/mailgate.toml`): schema, built-in defaults and
//! validation. Every error names the file and line.
//!
//! It reads configuration files and nothing else: no decision about a message is taken here.

pub mod check;
pub mod scripts;

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/mailgate/mailgate.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mailgate";
/// Windows per account (plus as many for the server cap). Bounds the state file size.
pub const MAX_WINDOWS: usize = 5;

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Domain for addresses without one; default /etc/mailname, else the host's FQDN.
    pub origin: Option<String>,
    /// Name in the Received header and the relay's EHLO; default the host's FQDN.
    pub hostname: Option<String>,
    pub state_dir: PathBuf,
    /// Largest message accepted, in bytes.
    pub max_message_size: u64,
    /// Domains that several accounts may send as. Any other domain named in an account's
    /// `allowed_senders` belongs to that account alone.
    pub shared_domains: Vec<String>,
    pub relay: Relay,
    pub smtp: Smtp,
    pub identity: Identity,
    pub log: Log,
    pub state: State,
    pub store: Store,
    pub spool: Spool,
    pub alerts: Alerts,
    pub metrics: Metrics,
    pub outcomes: Outcomes,
    /// What the calling script is allowed (`[scripts]`).
    pub scripts: scripts::Scripts,
    pub defaults: Limits,
    pub server: Limits,
    /// The accounts written in the main file, plus those loaded from `accounts.d/`.
    pub accounts: BTreeMap<String, Account>,
    /// `accounts.d/` beside the main file: one `NAME.toml` per account (what hosting panels
    /// write). A message loads only its own account's file; see `load_account`.
    #[serde(skip)]
    pub accounts_dir: Option<PathBuf>,
    /// The main file this configuration was read from, and when: what a long-running
    /// `queue run --follow` compares against to notice that the admin changed it.
    #[serde(skip)]
    pub loaded_from: Option<(PathBuf, std::time::SystemTime)>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Relay {
    pub host: String,
    pub port: u16,
    /// mailgate's own lane into the relay: a Unix socket of an smtpd that only group
    /// mailgate can reach (install.sh --with-postfix). When set, `host` and `port` are not
    /// used: mail that mailgate has counted does not meet the bypass lane's postfwd limits.
    pub socket: Option<PathBuf>,
    pub timeout: TimeSpan,
    /// Who may accept the relay connection when the relay is on this host (login names or
    /// uids; Postfix's smtpd runs as postfix), besides the caller itself (whose own listener
    /// may have the caller's own mail); mail is never handed to anyone else's process.
    /// Empty: no check.
    pub trusted_owners: Vec<UserRef>,
}

/// `sendmail -bs`, mailgate's own SMTP server side.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    /// A client that sends nothing for this long gets 421 and the session ends.
    pub idle_timeout: TimeSpan,
}

impl Default for Smtp {
    fn default() -> Smtp {
        Smtp {
            idle_timeout: TimeSpan(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Identity {
    /// Environment variable that names the account (an FPM pool's `env[...]`); empty disables.
    pub account_env: String,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// Append log lines to this file instead of syslog (tests, hosts without syslog).
    pub file: Option<PathBuf>,
    /// The syslog socket (a chroot or a container may have it elsewhere).
    pub syslog_socket: PathBuf,
}

impl Default for Log {
    fn default() -> Log {
        Log {
            file: None,
            syslog_socket: PathBuf::from("/dev/log"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct State {
    /// How long a sender waits for another sender's lock on the same counter.
    pub lock_timeout: TimeSpan,
    /// What to do when a counter file is corrupt or unreadable.
    pub on_error: OnStateError,
}

/// Where the counters live: local locked files (default) or Redis shared by a cluster.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    pub kind: StoreKind,
    pub url: String,
    /// ACL user (Redis 6+); without it, the default user.
    pub username: Option<String>,
    /// File with the Redis password (readable by group mailgate only).
    pub password_file: Option<PathBuf>,
    /// Redis Sentinel: the sentinels (`host:port`) to ask for the current master.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the master under.
    pub master_name: String,
    /// Redis Cluster: some of its nodes (`host:port`, `rediss://` for TLS); the rest are found.
    pub cluster: Vec<String>,
    /// File with the sentinels' own password, when they have one.
    pub sentinel_password_file: Option<PathBuf>,
    /// For `rediss://` (and TLS sentinels): the CA certificates (PEM) that sign the servers'
    /// certificates; without it, the public (Mozilla) roots built in.
    pub tls_ca_file: Option<PathBuf>,
    /// Connect and command timeout.
    pub timeout_ms: u64,
    /// With sentinels: how long a message waits for a new master during a failover before
    /// `on_unavailable` decides.
    pub failover_wait_ms: u64,
    pub on_unavailable: OnUnavailable,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    #[default]
    Files,
    Redis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "kebab-case")]
pub enum OnUnavailable {
    /// Keep the message in the local defer spool; `queue run` decides when Redis is back.
    #[default]
    Queue,
    /// Send uncounted and log a warning.
    FailOpen,
    /// Refuse with exit 71.
    Refuse,
}

impl Default for Store {
    fn default() -> Store {
        Store {
            kind: StoreKind::Files,
            url: "redis://127.0.0.1:6379/0".into(),
            username: None,
            password_file: None,
            sentinels: Vec::new(),
            master_name: String::new(),
            cluster: Vec::new(),
            sentinel_password_file: None,
            tls_ca_file: None,
            timeout_ms: 500,
            failover_wait_ms: 5000,
            on_unavailable: OnUnavailable::Queue,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Spool {
    /// First retry of a queued message after this long; doubles per attempt up to `max_retry`.
    pub retry: TimeSpan,
    pub max_retry: TimeSpan,
    /// A queued message older than this moves to failed/ and the admin is told.
    pub max_age: TimeSpan,
    /// Messages one account may have kept (held + deferred + queued) at once; past it new
    /// ones are refused (exit 69), so no customer can fill the state filesystem.
    pub account_max_messages: u32,
    /// Bytes one account may have kept at once.
    pub account_max_bytes: u64,
    /// Below this share of free space (percent) on the state filesystem no customer message
    /// is kept; counters, alerts and the admin's commands go on working.
    pub min_free_percent: u8,
    /// Customers may release their own held messages (`mailgate hold release`); listing,
    /// showing and deleting them they always may.
    pub customer_release: bool,
    /// A customer's release may pass the account's limits (the message was held for them);
    /// by default it counts like a new message and stays held past them. The admin's lock
    /// holds either way.
    pub customer_release_past_limits: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Alerts {
    /// Address that gets alert mails (limit exceeded, account locked, message failed);
    /// empty disables them.
    pub admin: String,
    /// Lock an account once its refused + held attempts within one of its windows reach
    /// this many; 0 never locks. An account's own `lock_after` overrides it.
    pub lock_after: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Every `queue run` writes `mailgate metrics` here (atomically), for node_exporter's
    /// textfile collector; unset writes nothing.
    pub textfile: Option<PathBuf>,
    /// Accounts with series of their own: the ones with the most messages; the others are
    /// summed as account "(other)". 0: only the sum.
    pub accounts: usize,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            textfile: None,
            accounts: 100,
        }
    }
}

/// What became of each message after the relay took it: learnt from the relay's log.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Outcomes {
    /// The relay instance's delivery log (its `maillog_file`, or the syslog file its lines go
    /// to). Unset: outcomes are not learnt and the failure-rate triggers are blind.
    pub relay_log: Option<PathBuf>,
    /// The relay instance's configuration directory: its main.cf tells whether only the
    /// relay can write `relay_log` (`check-config`, the queue run's log).
    pub relay_config: PathBuf,
    /// The relay instance's `syslog_name`: only its lines count.
    pub syslog_name: String,
    /// How long hand-over records are kept for `mailgate trace`.
    pub keep: TimeSpan,
    /// Bytes of the log one `queue run` reads at most; the next run goes on.
    pub max_read: u64,
}

impl Default for Outcomes {
    fn default() -> Outcomes {
        Outcomes {
            relay_log: None,
            relay_config: PathBuf::from("/etc/postfix-postfwd"),
            syslog_name: "postfix-postfwd".into(),
            keep: TimeSpan(7 * 86400),
            max_read: 64 * 1024 * 1024,
        }
    }
}

/// The failure-rate trigger: over `window`, at least `min_failures` bounced recipients that are
/// at least `percent` of those with a final outcome (delivered or bounced).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Trigger {
    pub window: TimeSpan,
    pub min_failures: u32,
    pub percent: u8,
    pub action: TriggerAction,
    /// How a hold or lock by the trigger ends: `auto` when the window's rate falls back under
    /// the threshold, `admin` only by `mailgate unlock`.
    pub ends: TriggerEnd,
    /// Counted, logged and alerted as "would have", but the mail flows.
    pub observe: bool,
}

impl Default for Trigger {
    fn default() -> Trigger {
        Trigger {
            window: TimeSpan(3600),
            min_failures: 5,
            percent: 20,
            action: TriggerAction::Hold,
            ends: TriggerEnd::Auto,
            observe: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "kebab-case")]
pub enum TriggerAction {
    /// Hold the account's new mail (as a lock does) until the trigger ends.
    #[default]
    Hold,
    /// Lock the account: held until `mailgate unlock`, whatever `ends` says.
    Lock,
    /// Only tell the admin and the account's notify addresses.
    Notify,
}

impl TriggerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerAction::Hold => "hold",
            TriggerAction::Lock => "lock",
            TriggerAction::Notify => "notify",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "kebab-case")]
pub enum TriggerEnd {
    #[default]
    Auto,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "kebab-case")]
pub enum OnStateError {
    /// Refuse the message with exit 71 (default).
    FailClosed,
    /// Send without limiting, and log a warning.
    FailOpen,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub limits: Vec<Limit>,
    /// Narrower limits for some scripts (`[defaults]` only: every account's unless it has
    /// its own).
    pub script_limits: Vec<scripts::ScriptLimit>,
    /// The failure-rate trigger (`[defaults.trigger]`: every account's unless it has its own;
    /// `[server.trigger]`: the whole server's rate, acting on the accounts that bounce).
    pub trigger: Option<Trigger>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Account {
    /// Users (login names or numeric uids) allowed to send as this account.
    pub users: Vec<UserRef>,
    /// Counted and logged, never limited.
    pub exempt: bool,
    /// Replaces the defaults when present.
    pub limits: Option<Vec<Limit>>,
    /// Envelope senders this account may use (`*@example.com`); empty means any.
    pub allowed_senders: Vec<String>,
    /// What happens to a sender outside `allowed_senders`.
    pub sender_policy: SenderPolicy,
    /// Sender used by `rewrite` and when the caller gives none.
    pub default_sender: Option<String>,
    /// Overrides `[alerts] lock_after` for this account.
    pub lock_after: Option<u32>,
    /// Deferred messages kept at most; past it they are held. Default: the largest
    /// message limit of the account's windows.
    pub max_deferred: Option<u32>,
    /// Addresses (the customer's) told once per window when a limit or a lock stops this
    /// account's mail.
    pub notify: Vec<String>,
    /// Replaces `[defaults.trigger]` for this account.
    pub trigger: Option<Trigger>,
    /// Replaces `[defaults] script_limits` for this account.
    pub script_limits: Option<Vec<scripts::ScriptLimit>>,
    /// Replaces `[scripts]` for this account.
    pub scripts: Option<scripts::Scripts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(untagged)]
pub enum UserRef {
    Uid(u32),
    Name(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "kebab-case")]
pub enum SenderPolicy {
    /// Replace the envelope sender with the account's default sender (default).
    #[default]
    Rewrite,
    /// Refuse the message with exit 77.
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub window: TimeSpan,
    pub messages: Option<u32>,
    pub recipients: Option<u32>,
    #[serde(default)]
    pub action: Action,
    /// Only watch: a message over this limit is counted and logged as "would have been
    /// refused/held/deferred", the admin is alerted once per window, and the mail flows.
    #[serde(default)]
    pub observe: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    #[default]
    Reject,
    Hold,
    Defer,
}

/// A length of time written as `"90s"`, `"15m"`, `"1h"`, `"1d"` or `"1h30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeSpan(pub u64);

impl TimeSpan {
    /// 100 years: every span plus any Unix time of this era fits an i64, so no arithmetic on
    /// a span can wrap (`top --since 9223372036854775808s` is refused, not wrapped around).
    pub const MAX: TimeSpan = TimeSpan(100 * 365 * 86400);

    pub fn secs(self) -> u64 {
        self.0
    }

    pub fn parse(text: &str) -> Result<TimeSpan, String> {
        let mut total: u64 = 0;
        let mut digits = String::new();
        if text.is_empty() {
            return Err("empty duration".into());
        }
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                'w' => 7 * 86400,
                _ => {
                    return Err(format!(
                        "invalid duration {text:?}: unknown unit {c:?} (use s, m, h, d, w)"
                    ));
                }
            };
            let n: u64 = digits
                .parse()
                .map_err(|_| format!("invalid duration {text:?}: a number must precede {c:?}"))?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| format!("duration {text:?} is too long"))?;
            digits.clear();
        }
        if !digits.is_empty() {
            return Err(format!(
                "invalid duration {text:?}: missing unit after {digits} (e.g. \"{digits}s\")"
            ));
        }
        if total == 0 {
            return Err(format!("duration {text:?} must be longer than zero"));
        }
        if total > TimeSpan::MAX.0 {
            return Err(format!(
                "duration {text:?} is too long (at most {})",
                TimeSpan::MAX
            ));
        }
        Ok(TimeSpan(total))
    }
}

impl fmt::Display for TimeSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        for (unit, len) in [("d", 86400), ("h", 3600), ("m", 60)] {
            if s.is_multiple_of(len) {
                return write!(f, "{}{unit}", s / len);
            }
        }
        write!(f, "{s}s")
    }
}

#[cfg(test)]
impl serde::Serialize for TimeSpan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for TimeSpan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        TimeSpan::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Default for Config {
    fn default() -> Config {
        let mut accounts = BTreeMap::new();
        accounts.insert(
            "root".to_string(),
            Account {
                exempt: true,
                ..Account::default()
            },
        );
        Config {
            origin: None,
            hostname: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            max_message_size: 50 * 1024 * 1024,
            shared_domains: Vec::new(),
            relay: Relay::default(),
            smtp: Smtp::default(),
            identity: Identity::default(),
            log: Log::default(),
            state: State::default(),
            store: Store::default(),
            spool: Spool::default(),
            alerts: Alerts::default(),
            metrics: Metrics::default(),
            outcomes: Outcomes::default(),
            scripts: scripts::Scripts::default(),
            defaults: Limits {
                limits: vec![
                    Limit {
                        window: TimeSpan(3600),
                        messages: Some(50),
                        recipients: None,
                        action: Action::Reject,
                        observe: false,
                    },
                    Limit {
                        window: TimeSpan(86400),
                        messages: Some(100),
                        recipients: Some(500),
                        action: Action::Hold,
                        observe: false,
                    },
                ],
                script_limits: Vec::new(),
                trigger: None,
            },
            server: Limits::default(),
            accounts,
            accounts_dir: None,
            loaded_from: None,
        }
    }
}

impl Default for Relay {
    fn default() -> Relay {
        Relay {
            host: "127.0.0.1".into(),
            port: 825,
            socket: None,
            timeout: TimeSpan(30),
            trusted_owners: vec![
                UserRef::Name("root".into()),
                UserRef::Name("postfix".into()),
            ],
        }
    }
}

impl Default for Identity {
    fn default() -> Identity {
        Identity {
            account_env: "MAILGATE_ACCOUNT".into(),
        }
    }
}

impl Default for Spool {
    fn default() -> Spool {
        Spool {
            retry: TimeSpan(300),
            max_retry: TimeSpan(3600),
            max_age: TimeSpan(5 * 86400),
            account_max_messages: 1000,
            account_max_bytes: 100 * 1024 * 1024,
            min_free_percent: 5,
            customer_release: false,
            customer_release_past_limits: false,
        }
    }
}

impl Default for Alerts {
    fn default() -> Alerts {
        Alerts {
            admin: "root".into(),
            lock_after: 0,
        }
    }
}

impl Default for State {
    fn default() -> State {
        State {
            lock_timeout: TimeSpan(10),
            on_error: OnStateError::FailClosed,
        }
    }
}

/// `--config` and `MAILGATE_CONFIG` are the caller's: honoured only without setgid.
pub fn path_for(option: Option<&str>, privileged: bool) -> (PathBuf, bool) {
    if !privileged {
        if let Some(p) = option {
            return (PathBuf::from(p), false);
        }
        if let Some(p) = std::env::var_os("MAILGATE_CONFIG").filter(|p| !p.is_empty()) {
            return (PathBuf::from(p), false);
        }
    }
    (PathBuf::from(DEFAULT_PATH), true)
}

/// A configuration error, already formatted as `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The drop-in directory beside a main file: `/etc/mailgate/accounts.d`.
pub fn accounts_dir_of(main: &Path) -> PathBuf {
    main.parent()
        .unwrap_or_else(|| Path::new("."))
        .join(ACCOUNTS_DIR)
}

pub const ACCOUNTS_DIR: &str = "accounts.d";

impl Config {
    /// Load `path` (the main file only; accounts in `accounts.d/` are loaded on demand); a
    /// missing file at the default path means the built-in defaults.
    pub fn load(path: &Path, missing_is_default: bool) -> Result<Config, ConfigError> {
        let loaded_at = std::time::SystemTime::now();
        let mut config = match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, &path.display().to_string())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing_is_default => {
                Config::default()
            }
            Err(e) => return Err(ConfigError(format!("cannot read {}: {e}", path.display()))),
        };
        config.accounts_dir = Some(accounts_dir_of(path));
        config.loaded_from = Some((path.to_path_buf(), loaded_at));
        Ok(config)
    }

    /// The drop-in file of account `name`, if there is a drop-in directory.
    pub fn account_file(&self, name: &str) -> Option<PathBuf> {
        validate_account_name(name).ok()?;
        Some(self.accounts_dir.as_ref()?.join(format!("{name}.toml")))
    }

    /// Load account `name` from `accounts.d/NAME.toml` when that file exists: the one file a
    /// message needs, whatever the number of accounts. An invalid name or a missing file
    /// changes nothing (identity decides what they mean); a broken file is an error for
    /// this account alone.
    pub fn load_account(&mut self, name: &str) -> Result<(), ConfigError> {
        let Some(path) = self.account_file(name) else {
            return Ok(());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ConfigError(format!("cannot read {}: {e}", path.display()))),
        };
        let account = parse_account(&text, &path.display().to_string(), name)?;
        if self.accounts.contains_key(name) {
            return Err(ConfigError(format!(
                "{}: account {name:?} is also defined in the main file; keep one of the two",
                path.display()
            )));
        }
        self.accounts.insert(name.to_string(), account);
        Ok(())
    }

    /// Load every file of `accounts.d/` (admin commands and the queue run, which see all
    /// accounts). A file that does not load is left out and returned as an error; the
    /// others load regardless.
    pub fn load_all_accounts(&mut self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for name in account_file_names(self.accounts_dir.as_deref(), &mut errors) {
            if let Err(e) = self.load_account(&name) {
                errors.push(e);
            }
        }
        errors
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| toml_error(text, file, &e))?;
        config.validate().map_err(|(key, msg)| {
            ConfigError(format!("{file}:{}: {msg}", line_of_key(text, &key)))
        })?;
        Ok(config)
    }

    /// The first of `problems`: loading stops there.
    fn validate(&self) -> Result<(), (String, String)> {
        match self.problems().into_iter().next() {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }

    /// Checks that serde cannot express, all of them: the offending key (to find its line)
    /// and why.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        check_limits("defaults", &self.defaults.limits, &mut out);
        check_limits("server", &self.server.limits, &mut out);
        scripts::problems("defaults", &self.defaults.script_limits, &mut out);
        if !self.server.script_limits.is_empty() {
            out.push((
                "script_limits".into(),
                "server: script_limits belong in [defaults] or an account".into(),
            ));
        }
        scripts::scripts_problems("scripts", &self.scripts, &mut out);
        for (owner, t) in [
            ("defaults", &self.defaults.trigger),
            ("server", &self.server.trigger),
        ] {
            if let Some(t) = t {
                check_trigger(owner, t, &mut out);
            }
        }
        for (name, account) in &self.accounts {
            out.extend(account_problems(name, account));
        }
        if self.relay.host.is_empty() {
            out.push(("host".into(), "relay host must not be empty".into()));
        }
        if let Some(socket) = &self.relay.socket
            && !socket.is_absolute()
        {
            out.push((
                "socket".into(),
                format!("relay socket must be an absolute path, not {socket:?}"),
            ));
        }
        out
    }

    /// The account's own limits, else the defaults.
    pub fn limits_for<'a>(&'a self, account: &str) -> &'a [Limit] {
        match self.accounts.get(account).and_then(|a| a.limits.as_ref()) {
            Some(own) => own,
            None => &self.defaults.limits,
        }
    }

    /// The account's script limits: its own, else the defaults'.
    pub fn script_limits_for<'a>(&'a self, account: &str) -> &'a [scripts::ScriptLimit] {
        match self
            .accounts
            .get(account)
            .and_then(|a| a.script_limits.as_ref())
        {
            Some(own) => own,
            None => &self.defaults.script_limits,
        }
    }

    /// The account's `[scripts]`: its own, else the server's.
    pub fn scripts_for<'a>(&'a self, account: &str) -> &'a scripts::Scripts {
        match self.accounts.get(account).and_then(|a| a.scripts.as_ref()) {
            Some(own) => own,
            None => &self.scripts,
        }
    }

    /// The account's failure-rate trigger: its own, else the defaults'.
    pub fn trigger_for(&self, account: &str) -> Option<&Trigger> {
        match self.accounts.get(account).and_then(|a| a.trigger.as_ref()) {
            Some(own) => Some(own),
            None => self.defaults.trigger.as_ref(),
        }
    }

    pub fn lock_after(&self, account: &str) -> Option<u32> {
        self.accounts
            .get(account)
            .and_then(|a| a.lock_after)
            .or(Some(self.alerts.lock_after))
    }

    /// How many deferred messages an account may have before new ones are held.
    pub fn max_deferred(&self, account: &str) -> u32 {
        self.accounts
            .get(account)
            .and_then(|a| a.max_deferred)
            .unwrap_or_else(|| {
                self.limits_for(account)
                    .iter()
                    .filter_map(|l| l.messages)
                    .max()
                    .unwrap_or(100)
            })
    }

    /// The account that owns `domain`: the one whose `allowed_senders` names it literally
    /// (`*@alice.example`, `news-*@alice.example`), unless the domain is shared.
    pub fn domain_owner(&self, domain: &str) -> Option<&str> {
        if self.is_shared_domain(domain) {
            return None;
        }
        self.accounts.iter().find_map(|(name, account)| {
            account
                .allowed_senders
                .iter()
                .filter_map(|p| p.rsplit_once('@').map(|(_, d)| d))
                .any(|d| {
                    !d.contains('*')
                        && crate::message::address::canonical_domain(d)
                            == crate::message::address::canonical_domain(domain)
                })
                .then_some(name.as_str())
        })
    }

    pub fn is_shared_domain(&self, domain: &str) -> bool {
        let domain = crate::message::address::canonical_domain(domain);
        self.shared_domains
            .iter()
            .any(|d| crate::message::address::canonical_domain(d) == domain)
    }

    pub fn is_exempt(&self, account: &str) -> bool {
        self.accounts.get(account).is_some_and(|a| a.exempt)
    }
}

/// What serde cannot check in one account: its name, its limits, its sender policy.
pub fn account_problems(name: &str, account: &Account) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Err(why) = validate_account_name(name) {
        out.push((name.to_string(), format!("account {name:?}: {why}")));
    }
    if let Some(limits) = &account.limits {
        check_limits(name, limits, &mut out);
    }
    if let Some(t) = &account.trigger {
        check_trigger(name, t, &mut out);
    }
    if let Some(l) = &account.script_limits {
        scripts::problems(name, l, &mut out);
    }
    if let Some(s) = &account.scripts {
        scripts::scripts_problems(name, s, &mut out);
    }
    if account.sender_policy == SenderPolicy::Rewrite
        && !account.allowed_senders.is_empty()
        && account.default_sender.is_none()
    {
        out.push((
            "allowed_senders".to_string(),
            format!(
                "account {name:?}: sender_policy \"rewrite\" needs default_sender (or use sender_policy = \"reject\")"
            ),
        ));
    }
    out
}

/// One account's drop-in file: the keys of `[accounts.NAME]`, without the table header.
pub fn parse_account(text: &str, file: &str, name: &str) -> Result<Account, ConfigError> {
    let account: Account = toml::from_str(text).map_err(|e| toml_error(text, file, &e))?;
    if let Some((key, msg)) = account_problems(name, &account).into_iter().next() {
        return Err(ConfigError(format!(
            "{file}:{}: {msg}",
            line_of_key(text, &key)
        )));
    }
    Ok(account)
}

/// A TOML or schema error as `file:line: message`.
fn toml_error(text: &str, file: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let msg = e.message().trim().to_string();
    match line {
        Some(l) => ConfigError(format!("{file}:{l}: {msg}")),
        None => ConfigError(format!("{file}: {msg}")),
    }
}

/// The account names of the `NAME.toml` files in `dir`, sorted; other entries are ignored
/// (editor backups, dotfiles), names that are no account names are errors.
pub fn account_file_names(dir: Option<&Path>, errors: &mut Vec<ConfigError>) -> Vec<String> {
    let Some(dir) = dir else {
        return Vec::new();
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            errors.push(ConfigError(format!("cannot read {}: {e}", dir.display())));
            return Vec::new();
        }
    };
    let mut names = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".toml")) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        match validate_account_name(name) {
            Ok(()) => names.push(name.to_string()),
            Err(why) => errors.push(ConfigError(format!(
                "{}: {why}; the file is ignored",
                dir.join(&file).display()
            ))),
        }
    }
    names.sort();
    names
}

/// Account names become file names: no `/`, no `..`, no control bytes, bounded length.
/// Best-effort line of the first line mentioning `key` (semantic findings have no span).
pub fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| l.contains(key))
        .map_or(1, |i| i + 1)
}

pub fn validate_account_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("account name is empty".into());
    }
    if name.len() > 128 {
        return Err("account name is longer than 128 bytes".into());
    }
    if name.starts_with('.') || name.contains("..") {
        return Err("account name must not start with '.' or contain '..'".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._@+-".contains(*c)))
    {
        return Err(format!(
            "account name contains {bad:?} (allowed: letters, digits, . _ @ + -)"
        ));
    }
    Ok(())
}

/// A trigger's window must lie within what the statistics keep (25 hours, 5-minute slots).
fn check_trigger(owner: &str, t: &Trigger, out: &mut Vec<(String, String)>) {
    if t.percent > 100 {
        out.push((
            "percent".into(),
            format!(
                "{owner}: trigger percent must be 0 to 100, not {}",
                t.percent
            ),
        ));
    }
    if !(300..=25 * 3600).contains(&t.window.secs()) {
        out.push((
            "window".into(),
            format!(
                "{owner}: trigger window must be 5m to 25h (the statistics it reads), not \"{}\"",
                t.window
            ),
        ));
    }
}

fn check_limits(owner: &str, limits: &[Limit], out: &mut Vec<(String, String)>) {
    if limits.len() > MAX_WINDOWS {
        out.push((
            "limits".into(),
            format!(
                "{owner}: at most {MAX_WINDOWS} limits are supported, found {}",
                limits.len()
            ),
        ));
    }
    for (i, l) in limits.iter().enumerate() {
        if l.messages.is_none() && l.recipients.is_none() {
            out.push((
                "window".into(),
                format!(
                    "{owner}: limit \"{}\" needs messages and/or recipients",
                    l.window
                ),
            ));
        }
        if limits[..i].iter().any(|other| other.window == l.window) {
            out.push((
                "window".into(),
                format!("{owner}: two limits with the same window \"{}\"", l.window),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(TimeSpan::parse("90s"), Ok(TimeSpan(90)));
        assert_eq!(TimeSpan::parse("1h30m"), Ok(TimeSpan(5400)));
        assert_eq!(TimeSpan::parse("1d"), Ok(TimeSpan(86400)));
        assert!(TimeSpan::parse("10").is_err());
        assert!(TimeSpan::parse("0s").is_err());
        assert!(TimeSpan::parse("1y").is_err());
        assert!(TimeSpan::parse("99999999999999999999d").is_err());
        assert!(TimeSpan::parse("9223372036854775808s").is_err());
        assert!(TimeSpan::parse("18446744073709551615s").is_err());
        assert!(TimeSpan::parse("36501d").is_err());
        assert_eq!(TimeSpan::parse("36500d"), Ok(TimeSpan::MAX));
        assert_eq!(TimeSpan(5400).to_string(), "90m");
        assert_eq!(TimeSpan(3600).to_string(), "1h");
    }

    #[test]
    fn triggers_default_inherit_and_are_checked() {
        let c = Config::parse(
            "[defaults.trigger]\npercent = 40\n[accounts.a]\n[accounts.b.trigger]\naction = \"notify\"\nobserve = true\n",
            "t.toml",
        )
        .unwrap();
        let a = c.trigger_for("a").unwrap();
        assert_eq!(
            (a.percent, a.min_failures, a.window),
            (40, 5, TimeSpan(3600))
        );
        assert_eq!(
            (a.action, a.ends, a.observe),
            (TriggerAction::Hold, TriggerEnd::Auto, false)
        );
        let b = c.trigger_for("b").unwrap();
        assert_eq!(
            (b.percent, b.action, b.observe),
            (20, TriggerAction::Notify, true)
        );
        assert!(
            Config::default().trigger_for("a").is_none(),
            "off unless configured"
        );
        for bad in [
            "[defaults.trigger]\npercent = 101\n",
            "[server.trigger]\nwindow = \"1m\"\n",
            "[accounts.x.trigger]\nwindow = \"26h\"\n",
            "[defaults.trigger]\naction = \"discard\"\n",
        ] {
            assert!(Config::parse(bad, "t.toml").is_err(), "{bad}");
        }
    }

    #[test]
    fn full_example_parses() {
        let c = Config::parse(
            r#"
origin = "example.org"
[relay]
host = "127.0.0.1"
port = 10025
timeout = "30s"
[identity]
account_env = "MAILGATE_ACCOUNT"
[defaults]
limits = [
  { window = "1h", messages = 50, action = "reject" },
  { window = "1d", messages = 100, recipients = 500 },
]
[server]
limits = [ { window = "1h", messages = 2000 } ]
[accounts.root]
exempt = true
[accounts."example.com"]
users = ["web1", 1001]
limits = [ { window = "1h", messages = 200 } ]
allowed_senders = ["*@example.com"]
default_sender = "noreply@example.com"
"#,
            "t.toml",
        )
        .expect("valid");
        assert_eq!(c.limits_for("example.com").len(), 1);
        assert_eq!(c.limits_for("other").len(), 2);
        assert_eq!(
            c.accounts["example.com"].users,
            [UserRef::Name("web1".into()), UserRef::Uid(1001)]
        );
        assert!(c.is_exempt("root"));
    }

    #[test]
    fn shipped_example_is_valid_and_matches_the_defaults() {
        let example =
            Config::parse(include_str!("../../mailgate.toml.example"), "example").unwrap();
        let builtin = Config::default();
        assert_eq!(example.defaults.limits, builtin.defaults.limits);
        assert_eq!(
            (&example.relay.host, example.relay.port),
            (&builtin.relay.host, builtin.relay.port)
        );
        assert_eq!(example.accounts.keys().collect::<Vec<_>>(), ["root"]);
        assert!(example.is_exempt("root") && !example.is_exempt("www-data"));
    }

    #[test]
    fn sender_domains_belong_to_the_account_that_names_them() {
        let c = Config::parse(
            "shared_domains = [\"hoster.example\"]\n\
             [accounts.\"alice.example\"]\nusers = [\"alice\"]\nallowed_senders = [\"*@alice.example\", \"*@hoster.example\"]\nsender_policy = \"reject\"\n\
             [accounts.bob]\nallowed_senders = [\"news-*@Bob.Example\", \"*@*.bob.example\"]\nsender_policy = \"reject\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.domain_owner("ALICE.example"), Some("alice.example"));
        assert_eq!(c.domain_owner("bob.example"), Some("bob"));
        assert_eq!(c.domain_owner("hoster.example"), None, "shared");
        assert_eq!(
            c.domain_owner("sub.bob.example"),
            None,
            "wildcards own nothing"
        );
        assert_eq!(c.domain_owner("other.example"), None);
    }

    #[test]
    fn errors_carry_file_and_line() {
        let e = Config::parse("[relay]\nport = \"x\"\n", "m.toml").unwrap_err();
        assert!(e.0.starts_with("m.toml:2:"), "{e}");
        let e = Config::parse("[relay]\nbogus = 1\n", "m.toml").unwrap_err();
        assert!(e.0.starts_with("m.toml:2:"), "{e}");
        let e = Config::parse(
            "[defaults]\nlimits = [ { window = \"1x\", messages = 1 } ]\n",
            "m.toml",
        )
        .unwrap_err();
        assert!(
            e.0.starts_with("m.toml:2:") && e.0.contains("unknown unit"),
            "{e}"
        );
        let e = Config::parse(
            "\n[defaults]\nlimits = [ { window = \"1h\", messages = 1, action = \"drop\" } ]\n",
            "m.toml",
        )
        .unwrap_err();
        assert!(
            e.0.starts_with("m.toml:3:") && e.0.contains("unknown variant"),
            "{e}"
        );
    }
}
