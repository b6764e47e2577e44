//! One message's way through mailgate, the same for sendmail mode and `-bs`:
//! message read → envelope → identity and sender policy → decide (limits) → relay → outcome.
//! It runs on the runtime's services (`crate::runtime`) for one account; what a relay answer
//! means is `relay::disposition`'s to say, the pipeline carries it out.

use crate::config::{Action, SenderPolicy};
use crate::exit::{Exit, Failure};
use crate::identity::Account;
use crate::limits::{self, Verdict};
use crate::log::{Fields, Severity};
use crate::message::address;
use crate::message::{Message, Trace};
use crate::relay::Envelope;
use crate::relay::disposition::{self, Disposition, Refusal};
use crate::runtime::Runtime;
use crate::runtime::notify;
use crate::spool::{KeepError, Kind, Meta, Share};
use crate::state::journal;
use crate::stats;
use crate::status::Status;

/// One message's way through mailgate, on the runtime's services, for one account.
pub struct Pipeline {
    pub runtime: Runtime,
    pub account: Account,
    /// The current message's record in pending/, from the hand-over until its line is logged.
    pending: Option<journal::Pending>,
}

/// A message with its envelope as the caller gave it.
pub struct Submission {
    /// `None` when the caller gave no sender; `Some(None)` is the null sender.
    pub sender: Option<Option<String>>,
    pub recipients: Vec<String>,
    pub full_name: Option<String>,
    pub message: Message,
}

/// What is known about one message on its way: the log line's fields, and the facts its
/// statistics and the customer's notice need.
#[derive(Default)]
struct Trail {
    fields: Fields,
    lock_wait_us: Option<u64>,
    lock_busy: bool,
    relay_error: Option<stats::RelayError>,
    /// A limit or a lock stopped the message: what the account's `notify` addresses hear
    /// (once per window).
    notice: Option<notify::Notice>,
}

/// What happened, in the words of both interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub exit: Exit,
    pub status: Status,
    /// The one stderr line in sendmail mode (without the "mailgate: " prefix).
    pub line: Option<String>,
    /// The reply to the final "." in `-bs` mode.
    pub smtp: String,
}

impl Report {
    fn failure(f: &Failure, smtp_code: &str) -> Report {
        Report {
            exit: f.exit,
            status: Status::Refused,
            line: Some(f.message.clone()),
            smtp: format!("{smtp_code} {}", f.message),
        }
    }
}

impl Pipeline {
    pub fn new(runtime: Runtime, account: Account) -> Pipeline {
        Pipeline {
            runtime,
            account,
            pending: None,
        }
    }

    pub fn submit(&mut self, sub: Submission) -> Report {
        let id = crate::spool::new_id();
        let script = sub
            .message
            .header("X-PHP-Originating-Script")
            .map(|h| h.value())
            .unwrap_or_default();
        let mut trail = Trail::default();
        trail
            .fields
            .add("id", &id)
            .add("account", &self.account.name)
            .add("uid", self.runtime.caller.uid)
            .add("user", &self.runtime.caller.login);
        if !script.is_empty() {
            trail.fields.add("script", &script);
        }
        let origin = crate::identity::CallSite::of_this_process();
        trail.fields.add("cwd", &origin.cwd);
        if let Some(pool) = &origin.pool {
            trail.fields.add("pool", pool);
        }
        let nrcpt = sub.recipients.len() as u64;
        let report = self.process(sub, &id, &script, &origin, &mut trail);
        trail.fields.add("status", report.status.as_str());
        if let Some(line) = &report.line {
            trail.fields.add("reason", line);
        }
        let severity = if report.status == Status::Sent {
            Severity::Info
        } else {
            Severity::Warning
        };
        // Counted before it is logged: a sender killed in between leaves the statistics one
        // ahead of the log, never behind it (a customer cannot hide a message from `top`).
        let event = stats::Event {
            now: self.runtime.now(),
            outcome: report.status.outcome(),
            recipients: nrcpt,
            script: &script,
            cwd: &origin.cwd,
            lock_wait_us: trail.lock_wait_us,
            lock_busy: trail.lock_busy,
            relay_error: trail.relay_error,
        };
        self.runtime
            .record_statistics(&self.account.name, &event, trail.notice.take());
        let logged = self.runtime.logger.log(severity, trail.fields.as_str());
        if let Some(pending) = self.pending.take()
            && logged
        {
            pending.finish();
        }
        report
    }

    /// One message: prepare, admit, hand over. Each step may end it with a report.
    fn process(
        &mut self,
        mut sub: Submission,
        id: &str,
        script: &str,
        origin: &crate::identity::CallSite,
        trail: &mut Trail,
    ) -> Report {
        let mut meta = match self.prepare(&mut sub, id, script, origin, &mut trail.fields) {
            Ok(meta) => meta,
            Err(report) => return report,
        };
        // The calling script: a dropper's signs hold the message; its rules narrow the count.
        let judged = crate::script::check::judge(&self.runtime, &self.account.name, script, origin);
        meta.script_path = judged.script.path.clone();
        trail
            .fields
            .add("script_path", &judged.script.path)
            .add("script_status", judged.standing.as_str());
        if !judged.signs.is_empty() {
            trail
                .fields
                .add("signs", crate::script::describe(&judged.signs));
        }
        if let Some(why) = judged.hold {
            trail.notice = Some(notify::Notice {
                what: why.clone(),
                limit: None,
                window_secs: self.notice_window(),
            });
            return self.keep(Kind::Hold, meta, &sub.message, why, None);
        }
        let ticket = match self.admit(&meta, &sub.message, &judged.rules, trail) {
            Ok(ticket) => ticket,
            Err(report) => return report,
        };
        self.hand_over(meta, &sub.message, ticket, trail)
    }

    /// The envelope under the account's sender policy, the headers completed as Postfix
    /// would, and the bookkeeping every outcome needs.
    fn prepare(
        &self,
        sub: &mut Submission,
        id: &str,
        script: &str,
        origin: &crate::identity::CallSite,
        fields: &mut Fields,
    ) -> Result<Meta, Report> {
        let sender = match self.envelope_sender(sub.sender.take(), fields) {
            Ok(s) => s,
            Err(f) => return Err(Report::failure(&f, "553 5.7.1")),
        };
        fields.add("from", format!("<{}>", sender.as_deref().unwrap_or("")));
        if let Err(f) = self.check_domain_ownership(sender.as_deref(), &sub.message) {
            return Err(Report::failure(&f, "553 5.7.1"));
        }
        let recipients = std::mem::take(&mut sub.recipients);
        fields.add("nrcpt", recipients.len());

        let date = chrono::Local::now().to_rfc2822();
        let message_id = format!("<{id}@{}>", self.runtime.names.hostname);
        let from_addr = sender
            .clone()
            .unwrap_or_else(|| self.runtime.qualify(&self.runtime.caller.login));
        sub.message.qualify_addresses(&self.runtime.names.origin);
        sub.message.complete_headers(&Trace {
            host: &self.runtime.names.hostname,
            uid: self.runtime.caller.uid,
            date: &date,
            message_id: &message_id,
            from_addr: &from_addr,
            full_name: sub
                .full_name
                .as_deref()
                .or(self.runtime.caller.full_name.as_deref()),
        });
        let size = sub.message.size();
        fields.add("size", size);
        let subject = sub
            .message
            .header("Subject")
            .map(|h| h.value())
            .unwrap_or_default();
        let meta = Meta {
            id: id.to_string(),
            account: self.account.name.clone(),
            uid: self.runtime.caller.uid,
            user: self.runtime.caller.login.clone(),
            script: script.to_string(),
            cwd: origin.cwd.clone(),
            script_path: String::new(),
            pool: origin.pool.clone(),
            sender: sender.clone(),
            recipients,
            subject,
            size,
            time: self.runtime.now(),
            reason: String::new(),
            attempts: 0,
            next_attempt: 0,
            last_error: String::new(),
            internal: false,
            script_deferred: false,
        };
        Ok(meta)
    }

    /// Count the message against its account (and the server), or keep or refuse it as the
    /// limits, a lock, a busy counter or the account's deferred mail say.
    /// A locked account: everything it sends is held, and its notify addresses hear why.
    fn locked(&self, reason: &str, meta: &Meta, msg: &Message, trail: &mut Trail) -> Report {
        let what = format!("account {} is locked: {reason}", self.account.name);
        trail.notice = Some(notify::Notice {
            what: what.clone(),
            limit: None,
            window_secs: self.notice_window(),
        });
        self.keep(Kind::Hold, meta.clone(), msg, what, None)
    }

    /// Over a limit: the limit's action decides (refuse with exit 69, hold for the admin, or
    /// defer until there is room), and the account's notify addresses hear it.
    fn over_limit(
        &self,
        refusal: &limits::Refusal,
        meta: &Meta,
        msg: &Message,
        trail: &mut Trail,
    ) -> Report {
        let text = refusal.describe(&self.account.name, meta.recipients.len() as u32);
        trail.fields.add("limit", refusal.limit.window);
        trail.notice = Some(notify::Notice {
            what: text.clone(),
            limit: Some(refusal.limit.clone()),
            window_secs: refusal.limit.window.secs(),
        });
        match refusal.action() {
            Action::Reject => Report {
                exit: Exit::Unavailable,
                status: Status::Refused,
                smtp: format!("550 5.7.1 {text}"),
                line: Some(text),
            },
            Action::Hold => self.keep(Kind::Hold, meta.clone(), msg, text, None),
            Action::Defer => {
                let mut meta = meta.clone();
                // Only this script's window is full: the account's other mail goes on.
                meta.script_deferred = refusal.scope == limits::Scope::Script;
                self.defer_or_hold(meta, msg, text)
            }
        }
    }

    fn admit(
        &self,
        meta: &Meta,
        msg: &Message,
        rules: &[crate::script::rules::Rule],
        trail: &mut Trail,
    ) -> Result<Option<limits::Ticket>, Report> {
        let fields = &mut trail.fields;
        let attempt = limits::Attempt {
            account: &self.account.name,
            recipients: meta.recipients.len() as u32,
            now: self.runtime.now(),
            sender: meta.sender.as_deref().unwrap_or("<>"),
            subject: &meta.subject,
            count_refusal: true,
            test_clock: self.runtime.fixed_now.is_some(),
        };
        let decision = match self.decide(&attempt, rules) {
            Ok(d) => d,
            Err(f) => return Err(Report::failure(&f, "451 4.3.0")),
        };
        fields.add("lock_wait_us", decision.lock_wait.as_micros());
        trail.lock_wait_us = Some(decision.lock_wait.as_micros() as u64);
        if let Some(alert) = &decision.alert {
            self.send_alert(alert, meta);
        }
        // Limits in observe mode: the message goes; the log says what they would have done.
        let observed: Vec<String> = decision
            .observed
            .iter()
            .map(|r| {
                format!(
                    "would have been {}: {}",
                    would_be(r.action()),
                    r.describe(&self.account.name, meta.recipients.len() as u32)
                )
            })
            .collect();
        if !observed.is_empty() {
            fields.add("observed", observed.join("; "));
        }
        let ticket = match decision.verdict {
            Verdict::Accepted(ticket) => ticket,
            Verdict::StoreUnavailable(why) => {
                return Err(self.keep(
                    Kind::Defer,
                    meta.clone(),
                    msg,
                    format!("{why}; counted when the store is back"),
                    None,
                ));
            }
            Verdict::Busy(busy) => {
                // A stopped sender holds a counter: nobody else waits for it. The message waits
                // in defer/ and is counted when `queue run` releases it.
                let why = busy.describe();
                fields.add("busy", &why);
                trail.lock_busy = true;
                self.runtime
                    .logger
                    .log(Severity::Warning, &format!("{why}; deferring"));
                return Err(self.defer_or_hold(meta.clone(), msg, why));
            }
            Verdict::Locked(reason) => return Err(self.locked(&reason, meta, msg, trail)),
            Verdict::Refused(refusal) => return Err(self.over_limit(&refusal, meta, msg, trail)),
        };
        if let Some(waiting) = self.deferred_ahead() {
            // Within an account mail leaves in order: while some of it waits in defer/, a new
            // message waits behind it; `queue run` releases (and counts) them oldest first.
            // A lock or a refusal above still decides first; a count is given back.
            self.give_back(ticket.as_ref(), &mut trail.fields);
            let text = format!(
                "{waiting} earlier messages of {} are deferred; this one waits behind them",
                self.account.name
            );
            return Err(self.defer_or_hold(meta.clone(), msg, text));
        }
        Ok(ticket)
    }

    /// Give the message to the relay; keep what it puts off, give the count back for what it
    /// refuses for good.
    fn hand_over(
        &mut self,
        meta: Meta,
        msg: &Message,
        ticket: Option<limits::Ticket>,
        trail: &mut Trail,
    ) -> Report {
        let fields = &mut trail.fields;
        // From here the relay may take the message: make sure it is logged even if this
        // process dies before the outcome is (root's next queue run logs what is left).
        self.pending = self
            .runtime
            .state()
            .ok()
            .and_then(|state| journal::begin(state, &meta.id, fields.as_str()));
        let disposition = self.runtime.relay().send(
            &Envelope {
                sender: meta.sender.as_deref(),
                recipients: &meta.recipients,
            },
            msg,
        );
        trail.relay_error = disposition.trouble().map(Into::into);
        crate::delivery::hand_over::record_hand_over(
            &self.runtime,
            &meta,
            msg,
            &disposition,
            "direct",
        );
        match disposition {
            Disposition::Delivered { reply } => {
                fields.add("relay", &reply);
                Report {
                    exit: Exit::Ok,
                    status: Status::Sent,
                    line: None,
                    smtp: queued_as(&reply, &meta.id),
                }
            }
            Disposition::Partly {
                reply,
                retry,
                failed,
            } => {
                fields.add("relay", &reply);
                let queued = queued_as(&reply, &meta.id);
                self.partly_sent(meta, msg, retry, failed, queued, fields)
            }
            Disposition::Failed { why } => {
                self.give_back(ticket.as_ref(), fields);
                Report {
                    exit: Exit::Unavailable,
                    status: Status::Refused,
                    smtp: format!("554 5.0.0 {why}"),
                    line: Some(format!("message not sent: {why}")),
                }
            }
            Disposition::Retry { why, .. } => {
                fields.add("relay", &why);
                let retry = self.runtime.now() + self.runtime.config.spool.retry.secs() as i64;
                let report = self.keep(Kind::Queue, meta, msg, why, Some(retry));
                if report.exit != Exit::Ok {
                    self.give_back(ticket.as_ref(), fields);
                }
                report
            }
        }
    }

    /// The relay took the message for some recipients: those it refused for good are
    /// reported, those it put off (4xx) stay queued, just them.
    fn partly_sent(
        &self,
        meta: Meta,
        msg: &Message,
        deferred: Vec<Refusal>,
        refused: Vec<Refusal>,
        queued: String,
        fields: &mut Fields,
    ) -> Report {
        let list = |l: &[Refusal]| disposition::describe(l, usize::MAX);
        let mut line = String::from("sent");
        if !refused.is_empty() {
            line.push_str(&format!(", but the relay refused {}", list(&refused)));
        }
        if !deferred.is_empty() {
            // Recipients the relay put off stay queued, just them, for `queue run`.
            let mut rest = meta;
            rest.recipients = disposition::recipients(&deferred);
            let why = format!("relay deferred {}", list(&deferred));
            fields.add("deferred_rcpts", rest.recipients.len());
            let retry = self.runtime.now() + self.runtime.config.spool.retry.secs() as i64;
            let kept = self.keep(Kind::Queue, rest, msg, why, Some(retry));
            if kept.exit != Exit::Ok {
                return Report {
                    exit: kept.exit,
                    status: Status::SentPartly,
                    smtp: kept.smtp,
                    line: Some(format!("{line}; {}", kept.line.unwrap_or_default())),
                };
            }
            line.push_str(&format!("; {}", kept.line.unwrap_or_default()));
        }
        Report {
            exit: Exit::Ok,
            status: Status::SentPartly,
            line: Some(line),
            smtp: queued,
        }
    }

    /// Whether a customer's message may still be kept at all: the state filesystem's
    /// free-space reserve (the account's share is reserved by the keep itself,
    /// `Spool::keep_within`). mailgate's own mail and exempt accounts (root) are not limited,
    /// so alerts and the admin's cron mail keep working.
    fn spool_room(&self, meta: &Meta) -> Result<(), String> {
        if !self.shared(meta) {
            return Ok(());
        }
        let spool = self.runtime.spool().map_err(|f| f.message)?;
        let limits = &self.runtime.config.spool;
        if let Some(free) = spool.free_percent()
            && free < limits.min_free_percent
        {
            return Err(format!(
                "the mail spool's filesystem is down to {free}% free (reserve {}%)",
                limits.min_free_percent
            ));
        }
        Ok(())
    }

    /// Whether the message counts against its account's spool share (a customer's mail;
    /// not mailgate's own, not an exempt account's).
    fn shared(&self, meta: &Meta) -> bool {
        !meta.internal && !self.runtime.config.is_exempt(&meta.account)
    }

    /// How many messages of this account wait in defer/ (`None`: none, or exempt).
    fn deferred_ahead(&self) -> Option<usize> {
        if self.runtime.config.is_exempt(&self.account.name) {
            return None;
        }
        // The account's own ledger record: no other account's spool is looked at.
        let deferred = self
            .runtime
            .spool()
            .ok()?
            .usage_of(&self.account.name)
            .deferred;
        Some(deferred as usize).filter(|n| *n > 0)
    }

    /// Defer, unless the account already has `max_deferred` waiting: then hold.
    fn defer_or_hold(&self, meta: Meta, msg: &Message, text: String) -> Report {
        let cap = self.runtime.config.max_deferred(&self.account.name) as usize;
        let deferred = self
            .runtime
            .spool()
            .map(|s| s.usage_of(&self.account.name).deferred as usize);
        if deferred.is_ok_and(|n| n < cap) {
            self.keep(Kind::Defer, meta, msg, text, None)
        } else {
            let text = format!("{text}; {cap} messages are already deferred");
            self.keep(Kind::Hold, meta, msg, text, None)
        }
    }

    /// The message was counted but will not go: give its count back.
    fn give_back(&self, ticket: Option<&limits::Ticket>, fields: &mut Fields) {
        if let Some(t) = ticket
            && let Err(f) = self
                .runtime
                .store()
                .and_then(|store| store.refund(&self.runtime.config, t))
        {
            fields.add("refund", &f.message);
        }
    }

    /// Keep the message in a spool; exit 0 only once it is on disk.
    fn keep(
        &self,
        kind: Kind,
        mut meta: Meta,
        msg: &Message,
        reason: String,
        next_attempt: Option<i64>,
    ) -> Report {
        meta.reason = reason.clone();
        if kind == Kind::Queue {
            meta.last_error = reason.clone();
        }
        meta.next_attempt = next_attempt.unwrap_or(0);
        let share = Share {
            messages: u64::from(self.runtime.config.spool.account_max_messages),
            bytes: self.runtime.config.spool.account_max_bytes,
        };
        let kept = self
            .spool_room(&meta)
            .map_err(KeepError::Refused)
            .and_then(|()| match self.runtime.spool() {
                Ok(spool) if self.shared(&meta) => spool.keep_within(kind, &meta, msg, share),
                Ok(spool) => spool.keep(kind, &meta, msg).map_err(KeepError::Failed),
                Err(f) => Err(KeepError::Failed(f)),
            });
        if let Err(KeepError::Refused(full)) = &kept {
            let text = format!("{reason}; and the message cannot be kept: {full}");
            return Report {
                exit: Exit::Unavailable,
                status: Status::Refused,
                smtp: format!("452 4.3.1 {text}"),
                line: Some(text),
            };
        }
        if let Err(KeepError::Failed(f)) = kept {
            let text = format!("{reason}; and the message could not be kept: {f}");
            return Report {
                exit: Exit::IoErr,
                status: Status::Refused,
                smtp: format!("451 4.3.0 {text}"),
                line: Some(text),
            };
        }
        let (status, what) = match kind {
            Kind::Queue => (Status::Queued, "queued for `mailgate queue run` to retry"),
            Kind::Defer => (
                Status::Deferred,
                "deferred until the account has room again",
            ),
            _ => (Status::Held, "held for the admin (`mailgate hold list`)"),
        };
        Report {
            exit: Exit::Ok,
            status,
            line: Some(format!("{reason}; message {what} as {}", meta.id)),
            smtp: format!("250 2.0.0 Ok: kept as {} ({})", meta.id, status.as_str()),
        }
    }

    /// How long one customer notice about a lock holds: the account's shortest window (an
    /// hour when it has none).
    fn notice_window(&self) -> u64 {
        self.runtime
            .config
            .limits_for(&self.account.name)
            .iter()
            .map(|l| l.window.secs())
            .min()
            .unwrap_or(3600)
    }

    fn decide(
        &self,
        attempt: &limits::Attempt<'_>,
        rules: &[crate::script::rules::Rule],
    ) -> Result<limits::Decision, Failure> {
        let logger = &self.runtime.logger;
        crate::script::rules::check_and_record(
            self.runtime.state()?,
            self.runtime.store()?,
            &self.runtime.config,
            attempt,
            rules,
            &mut |w| {
                logger.log(Severity::Warning, w);
            },
        )
    }

    /// One mail to the admin; kept in the queue when the relay is down.
    pub fn send_alert(&self, alert: &limits::Alert, meta: &Meta) {
        let Some(admin) = self.runtime.admin_address() else {
            return;
        };
        let msg = notify::alert_message(
            alert,
            meta,
            &self.runtime.names.hostname,
            &admin,
            &self.runtime.names.origin,
        );
        self.runtime.send_internal(msg, &admin, "alert");
    }

    /// The caller's sender (or the default), qualified, then the account's sender policy.
    /// A domain that another account owns (names in its `allowed_senders`) cannot be used as
    /// envelope sender or in From: by this account, unless its own `allowed_senders` allow
    /// the address. Exempt accounts (root) are not limited.
    fn check_domain_ownership(
        &self,
        sender: Option<&str>,
        message: &Message,
    ) -> Result<(), Failure> {
        if self.runtime.config.is_exempt(&self.account.name) {
            return Ok(());
        }
        let own = self
            .runtime
            .config
            .accounts
            .get(&self.account.name)
            .map_or(&[][..], |a| a.allowed_senders.as_slice());
        let from_header: Vec<String> = message
            .headers
            .iter()
            .filter(|h| h.is("From") || h.is("Sender"))
            .flat_map(|h| address::parse_list(&h.value()))
            .collect();
        // One index for the message's addresses: built at most once if it is stale.
        let index =
            self.runtime
                .state()
                .ok()
                .map(|state| crate::state::domain_index::DomainIndex {
                    config: &self.runtime.config,
                    state,
                    logger: &self.runtime.logger,
                    built: Default::default(),
                });
        for addr in sender.into_iter().map(str::to_string).chain(from_header) {
            // Every domain the address reaches the Internet in, as receiving servers see it:
            // `ceo@alice.example.` is alice's domain, whatever the spelling.
            for domain in address::domains_reached(&addr) {
                let Some(owner) = self.domain_owner(index.as_ref(), &domain) else {
                    continue;
                };
                if owner == self.account.name
                    || own.iter().any(|p| address::sender_matches(p, &addr))
                {
                    continue;
                }
                return Err(Failure::new(
                    Exit::NoPerm,
                    format!(
                        "{addr}: the domain {domain} belongs to account {owner}; account {} may not send as it",
                        self.account.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The account that owns `domain`: the first by name among those in the main file and
    /// those in `accounts.d/` (through the domain index, one lookup).
    fn domain_owner(
        &self,
        index: Option<&crate::state::domain_index::DomainIndex<'_>>,
        domain: &str,
    ) -> Option<String> {
        if self.runtime.config.is_shared_domain(domain) {
            return None;
        }
        let inline = self.runtime.config.domain_owner(domain).map(str::to_string);
        let dropin = index.and_then(|index| index.owner(domain));
        match (inline, dropin) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn envelope_sender(
        &self,
        given: Option<Option<String>>,
        fields: &mut Fields,
    ) -> Result<Option<String>, Failure> {
        let sender = match given {
            Some(None) => None,
            Some(Some(s)) => Some(self.runtime.qualify(&s)),
            None => Some(self.runtime.qualify(&self.runtime.caller.login)),
        };
        let Some(policy) = self.runtime.config.accounts.get(&self.account.name) else {
            return Ok(sender);
        };
        if policy.allowed_senders.is_empty() {
            return Ok(sender);
        }
        let allowed = policy.allowed_senders.iter().any(|p| match &sender {
            Some(s) => address::sender_matches(p, s),
            None => p == "<>",
        });
        if allowed {
            return Ok(sender);
        }
        let shown = sender.as_deref().unwrap_or("<>");
        match (policy.sender_policy, &policy.default_sender) {
            (SenderPolicy::Rewrite, Some(default)) => {
                fields.add("sender_rewritten", shown);
                Ok(Some(default.clone()))
            }
            _ => Err(Failure::new(
                Exit::NoPerm,
                format!(
                    "sender {shown} is not allowed for account {} (allowed_senders: {})",
                    self.account.name,
                    policy.allowed_senders.join(", ")
                ),
            )),
        }
    }
}

/// What a limit's action does to a message, for "would have been …".
fn would_be(action: Action) -> &'static str {
    match action {
        Action::Reject => "refused",
        Action::Hold => "held",
        Action::Defer => "deferred",
    }
}

/// The sender's 250 reply: the relay's queue id (or ours) in Postfix's words.
fn queued_as(reply: &crate::relay::Reply, id: &str) -> String {
    format!(
        "250 2.0.0 Ok: queued as {}",
        crate::relay::queue_id::queued_as(&reply.text).unwrap_or(id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_count_as_the_outcome_the_log_names() {
        use Status::*;
        for s in [Sent, SentPartly, Queued, Held, Deferred, Refused] {
            let word = if s == SentPartly { "sent" } else { s.as_str() };
            assert_eq!(s.outcome().as_str(), word);
        }
    }
}
