//! One message's way through mailgate, the same for sendmail mode and `-bs`:
//! message read → envelope → identity and sender policy → decide (limits) → relay → outcome.

use crate::address;
use crate::config::{Config, SenderPolicy};
use crate::exit::{Exit, Failure};
use crate::identity::{Account, Caller};
use crate::limits::{self, Verdict, store::StateDir};
use crate::log::{Fields, Logger, Severity};
use crate::message::{Message, Trace};
use crate::relay::{Envelope, Outcome, Relay};
use std::time::Duration;

/// Everything about this run that does not change from message to message.
pub struct Context {
    pub config: Config,
    pub caller: Caller,
    pub account: Account,
    pub origin: String,
    pub hostname: String,
    pub logger: Logger,
    /// Test clock (`MAILGATE_NOW`), honoured only when not running setgid.
    pub fixed_now: Option<i64>,
    state: Result<StateDir, Failure>,
}

/// A message with its envelope as the caller gave it.
pub struct Submission {
    /// `None` when the caller gave no sender; `Some(None)` is the null sender.
    pub sender: Option<Option<String>>,
    pub recipients: Vec<String>,
    pub full_name: Option<String>,
    pub message: Message,
}

/// What happened, in the words of both interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub exit: Exit,
    /// The one stderr line in sendmail mode (without the "mailgate: " prefix).
    pub line: Option<String>,
    /// The reply to the final "." in `-bs` mode.
    pub smtp: String,
}

impl Report {
    fn failure(f: &Failure, smtp_code: &str) -> Report {
        Report {
            exit: f.exit,
            line: Some(f.message.clone()),
            smtp: format!("{smtp_code} {}", f.message),
        }
    }
}

impl Context {
    pub fn new(
        config: Config,
        caller: Caller,
        account: Account,
        fixed_now: Option<i64>,
    ) -> Context {
        let hostname = config.hostname.clone().unwrap_or_else(host_name);
        let origin = config
            .origin
            .clone()
            .unwrap_or_else(|| mailname().unwrap_or_else(|| hostname.clone()));
        let logger = Logger::new(config.log.file.clone(), &config.state_dir);
        let state = StateDir::open(&config.state_dir);
        Context {
            config,
            caller,
            account,
            origin,
            hostname,
            logger,
            fixed_now,
            state,
        }
    }

    pub fn now(&self) -> i64 {
        self.fixed_now
            .unwrap_or_else(|| chrono::Utc::now().timestamp())
    }

    /// `user` → `user@origin`; anything with an `@` stays.
    pub fn qualify(&self, addr: &str) -> String {
        if addr.contains('@') {
            addr.to_string()
        } else {
            format!("{addr}@{}", self.origin)
        }
    }

    fn state(&self) -> Result<&StateDir, Failure> {
        self.state.as_ref().map_err(Clone::clone)
    }

    pub fn submit(&mut self, sub: Submission) -> Report {
        let id = queue_id();
        let script = sub
            .message
            .header("X-PHP-Originating-Script")
            .map(|h| h.value())
            .unwrap_or_default();
        let mut fields = Fields::default();
        fields
            .add("id", &id)
            .add("account", &self.account.name)
            .add("uid", self.caller.uid)
            .add("user", &self.caller.login);
        if !script.is_empty() {
            fields.add("script", &script);
        }
        let report = self.process(sub, &id, &mut fields);
        fields.add(
            "status",
            match (&report.exit, &report.line) {
                (Exit::Ok, None) => "sent",
                (Exit::Ok, Some(_)) => "sent-partly",
                _ => "refused",
            },
        );
        if let Some(line) = &report.line {
            fields.add("reason", line);
        }
        let severity = if report.exit == Exit::Ok {
            Severity::Info
        } else {
            Severity::Warning
        };
        self.logger.log(severity, fields.as_str());
        report
    }

    fn process(&mut self, mut sub: Submission, id: &str, fields: &mut Fields) -> Report {
        let sender = match self.envelope_sender(sub.sender.take(), fields) {
            Ok(s) => s,
            Err(f) => return Report::failure(&f, "553 5.7.1"),
        };
        fields.add("from", format!("<{}>", sender.as_deref().unwrap_or("")));
        let recipients = sub.recipients;
        fields.add("nrcpt", recipients.len());

        let date = chrono::Local::now().to_rfc2822();
        let message_id = format!("<{id}@{}>", self.hostname);
        let from_addr = sender
            .clone()
            .unwrap_or_else(|| self.qualify(&self.caller.login));
        sub.message.complete_headers(&Trace {
            host: &self.hostname,
            uid: self.caller.uid,
            date: &date,
            message_id: &message_id,
            from_addr: &from_addr,
            full_name: sub.full_name.as_deref(),
        });
        fields.add("size", sub.message.size());

        let ticket = match self.decide(recipients.len() as u32) {
            Ok(Verdict::Accepted(ticket)) => ticket,
            Ok(Verdict::Refused(refusal)) => {
                let text = refusal.describe(&self.account.name, recipients.len() as u32);
                fields.add("limit", refusal.limit.window);
                return Report {
                    exit: Exit::Unavailable,
                    smtp: format!("550 5.7.1 {text}"),
                    line: Some(text),
                };
            }
            Err(f) => return Report::failure(&f, "451 4.3.0"),
        };

        let relay = Relay {
            host: &self.config.relay.host,
            port: self.config.relay.port,
            timeout: Duration::from_secs(self.config.relay.timeout.secs()),
            helo: &self.hostname,
        };
        let outcome = relay.send(
            &Envelope {
                sender: sender.as_deref(),
                recipients: &recipients,
            },
            &sub.message,
        );
        match outcome {
            Outcome::Delivered { reply, rejected } => {
                fields.add("relay", &reply);
                let queued = format!(
                    "250 2.0.0 Ok: queued as {}",
                    relay_queue_id(&reply.text).unwrap_or(id)
                );
                if rejected.is_empty() {
                    return Report {
                        exit: Exit::Ok,
                        line: None,
                        smtp: queued,
                    };
                }
                let list = rejected
                    .iter()
                    .map(|(r, reply)| format!("<{r}> ({reply})"))
                    .collect::<Vec<_>>()
                    .join(", ");
                Report {
                    exit: Exit::Ok,
                    line: Some(format!("sent, but the relay refused {list}")),
                    smtp: queued,
                }
            }
            Outcome::Permanent(why) => self.not_sent(ticket, why, "554 5.0.0", fields),
            Outcome::Temporary(why) => self.not_sent(ticket, why, "451 4.4.1", fields),
        }
    }

    /// The relay did not take the message: give its count back and say why.
    fn not_sent(
        &mut self,
        ticket: Option<limits::Ticket>,
        why: String,
        smtp_code: &str,
        fields: &mut Fields,
    ) -> Report {
        if let Some(t) = &ticket {
            let refunded = self
                .state()
                .and_then(|state| limits::refund(state, &self.config, t));
            if let Err(f) = refunded {
                fields.add("refund", &f.message);
            }
        }
        Report {
            exit: Exit::Unavailable,
            smtp: format!("{smtp_code} {why}"),
            line: Some(format!("message not sent: {why}")),
        }
    }

    fn decide(&self, recipients: u32) -> Result<Verdict, Failure> {
        let now = self.now();
        let logger = &self.logger;
        limits::check_and_record(
            self.state()?,
            &self.config,
            &self.account.name,
            recipients,
            now,
            &mut |w| logger.log(Severity::Warning, w),
        )
    }

    /// The caller's sender (or the default), qualified, then the account's sender policy.
    fn envelope_sender(
        &self,
        given: Option<Option<String>>,
        fields: &mut Fields,
    ) -> Result<Option<String>, Failure> {
        let sender = match given {
            Some(None) => None,
            Some(Some(s)) => Some(self.qualify(&s)),
            None => Some(self.qualify(&self.caller.login)),
        };
        let Some(policy) = self.config.accounts.get(&self.account.name) else {
            return Ok(sender);
        };
        if policy.allowed_senders.is_empty() {
            return Ok(sender);
        }
        let allowed = policy.allowed_senders.iter().any(|p| match &sender {
            Some(s) => glob_match(p, s),
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

/// `*@example.com`, case-insensitive; `*` matches any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.to_ascii_lowercase();
    let t = text.to_ascii_lowercase();
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == t;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !t.starts_with(first)
        || !t[first.len()..].ends_with(last)
        || t.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &t[first.len()..t.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// The sender's address for `-f`/`-r`/`MAIL FROM`: `None` is the null sender.
pub fn parse_sender(raw: &str) -> Result<Option<String>, Failure> {
    let addr = address::parse_single(raw);
    if let Some(a) = &addr {
        check_address(a)
            .map_err(|why| Failure::new(Exit::Usage, format!("invalid sender {raw:?}: {why}")))?;
    }
    Ok(addr)
}

/// No control characters or angle brackets: an address goes verbatim into an SMTP command.
pub fn check_address(addr: &str) -> Result<(), String> {
    if addr.len() > 512 {
        return Err("address longer than 512 bytes".into());
    }
    if let Some(c) = addr
        .chars()
        .find(|c| c.is_control() || matches!(c, '<' | '>'))
    {
        return Err(format!("address contains {c:?}"));
    }
    Ok(())
}

/// Unique per host: seconds, microseconds and pid, like Postfix's long queue ids.
pub fn queue_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:X}{:05X}{:X}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id()
    )
}

/// "Ok: queued as 4Xyz" → "4Xyz".
fn relay_queue_id(text: &str) -> Option<&str> {
    let rest = &text[text.find("queued as ")? + "queued as ".len()..];
    rest.split_whitespace().next()
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn mailname() -> Option<String> {
    let text = std::fs::read_to_string("/etc/mailname").ok()?;
    let name = text.lines().next()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*@example.com", "info@EXAMPLE.com"));
        assert!(!glob_match("*@example.com", "info@example.com.evil"));
        assert!(glob_match("news-*@example.com", "news-2026@example.com"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(glob_match("exact@x", "exact@x"));
    }

    #[test]
    fn sender_checks() {
        assert_eq!(parse_sender("<>").unwrap(), None);
        assert_eq!(parse_sender("N <a@x>").unwrap().as_deref(), Some("a@x"));
        assert_eq!(
            parse_sender("\"a\r\nRSET\"@x").unwrap_err().exit,
            Exit::Usage
        );
        assert_eq!(relay_queue_id("2.0.0 Ok: queued as 4Xyz12"), Some("4Xyz12"));
    }
}
