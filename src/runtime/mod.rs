//! The runtime: the services one mailgate process uses, whatever it does — the
//! configuration, the caller, the clock, the host's mail names, the log, the state directory,
//! the counter store and the relay — set up once at start-up and shared by the sendmail front
//! end, the message pipeline, the queue runner and the admin commands. It also sends
//! mailgate's own mail (alerts, notices) and records the statistics (`statistics.rs`).
//!
//! It knows no account: the pipeline adds the one a message is sent as. It must not decide
//! anything about a customer's message.

pub mod notify;

mod statistics;

use crate::config::Config;
use crate::exit::{Exit, Failure};
use crate::identity::Caller;
use crate::limits;
use crate::log::{Fields, Logger, Severity};
use crate::message::Message;
use crate::message::origin::LocalNames;
use crate::relay::{Disposition, Envelope, Relay};
use crate::spool::{Kind, Meta, Spool};
use crate::state::StateDir;
use crate::status::Status;
use std::time::Duration;

/// Everything about this run that does not change from message to message.
pub struct Runtime {
    pub config: Config,
    pub caller: Caller,
    pub names: LocalNames,
    /// `[relay] trusted_owners` as uids (names that do not exist are left out), resolved at
    /// the first hand-over: a refused message never reads the password database for them.
    /// (the configured owners, the same plus the caller).
    trusted_owners: std::cell::OnceCell<(Vec<u32>, Vec<u32>)>,
    pub logger: Logger,
    /// Test clock (`MAILGATE_NOW`), honoured only when not running setgid.
    pub fixed_now: Option<i64>,
    state: Result<StateDir, Failure>,
    store: Result<limits::Store, Failure>,
    /// Accounts whose statistics lock another process held past the wait: not waited for
    /// again by this process (`record_statistics`).
    pub(crate) stats_busy: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl Runtime {
    /// Start-up, once per process: host names, the log, the state directory and the counter
    /// store, from the configuration the caller may use.
    /// The test clock is honoured only when not `privileged` (not running setgid).
    pub fn start(config: Config, caller: Caller, privileged: bool) -> Runtime {
        let fixed_now = test_clock(privileged);
        let names = LocalNames::of_this_host(config.hostname.as_deref(), config.origin.as_deref());
        let logger = Logger::new(&config.log, &config.state_dir);
        let state = StateDir::open(&config.state_dir);
        let store = limits::open_store(&config);
        Runtime {
            config,
            caller,
            names,
            trusted_owners: std::cell::OnceCell::new(),
            logger,
            fixed_now,
            state,
            store,
            stats_busy: Default::default(),
        }
    }

    pub fn now(&self) -> i64 {
        self.fixed_now
            .unwrap_or_else(|| chrono::Utc::now().timestamp())
    }

    /// `user` → `user@origin`; anything with an `@` stays.
    pub fn qualify(&self, addr: &str) -> String {
        self.names.qualify(addr)
    }

    /// The local state directory (spools; counters too with the file store).
    pub fn state(&self) -> Result<&StateDir, Failure> {
        self.state.as_ref().map_err(Clone::clone)
    }

    /// The spools, as a sender uses them: its account's ledger record is waited for as long
    /// as its counters.
    pub fn spool(&self) -> Result<Spool<'_>, Failure> {
        let wait = Duration::from_secs(self.config.state.lock_timeout.secs());
        Ok(Spool::new(self.state()?).waiting(wait))
    }

    /// Where the counters live.
    pub fn store(&self) -> Result<&limits::Store, Failure> {
        self.store.as_ref().map_err(Clone::clone)
    }

    /// The relay for the caller's own mail: its listener may also be the caller's own.
    pub fn relay(&self) -> Relay<'_> {
        self.relay_trusting(true)
    }

    /// The relay for mailgate's own mail (alerts and notices about an account): only the
    /// configured owners, never the caller, so that an alert about a customer's account
    /// cannot be caught by a listener that customer put on the relay's port.
    pub fn relay_internal(&self) -> Relay<'_> {
        self.relay_trusting(false)
    }

    fn relay_trusting(&self, caller_too: bool) -> Relay<'_> {
        let (configured, with_caller) = self.trusted_owners.get_or_init(|| {
            let uids = crate::identity::uids_of(&self.config.relay.trusted_owners);
            // The caller's own listener may have the caller's own mail: that hurts nobody
            // else (root's queue run is uid 0, which only root and postfix match by default).
            let mut with_caller = uids.clone();
            if !uids.is_empty() {
                with_caller.push(self.caller.uid);
            }
            (uids, with_caller)
        });
        let trusted_owners = if caller_too { with_caller } else { configured };
        Relay {
            host: &self.config.relay.host,
            port: self.config.relay.port,
            socket: self.config.relay.socket.as_deref(),
            timeout: Duration::from_secs(self.config.relay.timeout.secs()),
            helo: &self.names.hostname,
            trusted_owners,
        }
    }

    /// Where alerts go: `[alerts] admin`, qualified; `None` when alerts are off.
    pub fn admin_address(&self) -> Option<String> {
        let admin = &self.config.alerts.admin;
        (!admin.is_empty()).then(|| self.qualify(admin))
    }

    /// The account's `notify` addresses (the customer's), qualified.
    pub fn notify_addresses(&self, account: &str) -> Vec<String> {
        self.config
            .accounts
            .get(account)
            .map_or(&[][..], |a| a.notify.as_slice())
            .iter()
            .map(|a| self.qualify(a))
            .collect()
    }

    /// How mailgate's own mail to `to` is addressed.
    pub fn envelope_to<'a>(&'a self, to: &'a str) -> notify::Envelope<'a> {
        notify::Envelope {
            hostname: &self.names.hostname,
            to,
            origin: &self.names.origin,
        }
    }

    /// mailgate's own mail (alerts, failure notices): relayed with the null sender, never
    /// counted, queued when the relay is down.
    pub fn send_internal(&self, msg: Message, to: &str, what: &str) {
        let rcpts = vec![to.to_string()];
        let outcome = self.relay_internal().send(
            &Envelope {
                sender: None,
                recipients: &rcpts,
            },
            &msg,
        );
        let mut fields = Fields::default();
        fields.add("internal", what).add("to", to);
        match outcome {
            Disposition::Delivered { reply } | Disposition::Partly { reply, .. } => {
                fields
                    .add("status", Status::Sent.as_str())
                    .add("relay", reply);
            }
            Disposition::Failed { why } => {
                fields
                    .add("status", Status::Refused.as_str())
                    .add("reason", why);
            }
            Disposition::Retry { why, .. } => {
                let meta = Meta {
                    id: crate::spool::new_id(),
                    account: "mailgate".into(),
                    uid: self.caller.uid,
                    user: self.caller.login.clone(),
                    script: String::new(),
                    cwd: String::new(),
                    script_path: String::new(),
                    pool: None,
                    sender: None,
                    recipients: rcpts.clone(),
                    subject: msg.header("Subject").map(|h| h.value()).unwrap_or_default(),
                    size: msg.size(),
                    time: self.now(),
                    reason: why,
                    attempts: 0,
                    next_attempt: self.now(),
                    last_error: String::new(),
                    internal: true,
                    script_deferred: false,
                };
                let kept = self
                    .spool()
                    .and_then(|spool| spool.keep(Kind::Queue, &meta, &msg));
                fields
                    .add(
                        "status",
                        if kept.is_ok() {
                            Status::Queued.as_str()
                        } else {
                            "lost"
                        },
                    )
                    .add("id", &meta.id);
            }
        }
        self.logger.log(Severity::Warning, fields.as_str());
    }
}

/// The main configuration file, as `--config` names it (honoured only without setgid): the
/// one loader of every mode. Account files are loaded by what needs them: the sender only
/// its own, admin commands all or one.
pub fn load_config(option: Option<&str>, privileged: bool) -> Result<Config, Failure> {
    let (path, is_default) = crate::config::path_for(option, privileged);
    Config::load(&path, is_default).map_err(|e| Failure::new(Exit::Config, e.0))
}

/// The test clock: `MAILGATE_NOW` (Unix seconds), honoured only when not running setgid.
fn test_clock(privileged: bool) -> Option<i64> {
    if privileged {
        return None;
    }
    std::env::var("MAILGATE_NOW")
        .ok()
        .and_then(|v| v.parse().ok())
}
