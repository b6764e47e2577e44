//! `mailgate metrics`: the Prometheus text exposition format (version 0.0.4, which
//! node_exporter's textfile collector and `promtool check metrics` read). Pure: renders a
//! snapshot that `admin::report` gathers.

use crate::stats::{Outcome, RelayError, Totals};
use std::fmt::Write as _;

/// One account as the metrics see it.
#[derive(Debug, Clone, Default)]
pub struct Account {
    pub name: String,
    pub totals: Totals,
    /// (window, "messages"/"recipients", used / limit).
    pub usage: Vec<(String, &'static str, f64)>,
    pub locked: bool,
    /// The lock is a failure-rate trigger's hold (it ends by itself).
    pub held_by_trigger: bool,
    /// Recipients delivered and bounced in the last hour (the bounce rate's parts).
    pub last_hour: (u64, u64),
    /// Hold, defer, queue and failed.
    pub spools: Vec<SpoolUse>,
}

/// (spool, entries, bytes).
pub type SpoolUse = (&'static str, u64, u64);

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub accounts: Vec<Account>,
    /// The server-wide cap's windows, like `Account::usage`.
    pub server_usage: Vec<(String, &'static str, f64)>,
    /// Age of the oldest entry waiting in queue/ or defer/, seconds.
    pub oldest_waiting: Option<i64>,
    /// The relay's log cannot be read (or is not configured): outcomes are not learnt.
    pub outcomes_blind: bool,
    /// Accounts whose statistics file cannot be read (damaged; rewritten by the next message).
    pub statistics_unreadable: u64,
}

/// The name under which the accounts beyond `[metrics] accounts` are summed.
pub const OTHER: &str = "(other)";

/// Bound the series: the `keep` accounts with the most messages keep their own series, the
/// rest are summed into one account named `(other)` (no window use, not locked). The order
/// is by all-time messages, so an account rarely moves across the line.
pub fn bound_accounts(accounts: &mut Vec<Account>, keep: usize) {
    if accounts.len() <= keep {
        return;
    }
    accounts.sort_by(|a, b| {
        b.totals
            .all_messages()
            .cmp(&a.totals.all_messages())
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut other = Account {
        name: OTHER.to_string(),
        ..Account::default()
    };
    for a in accounts.drain(keep..) {
        other.totals.add(&a.totals);
        other.last_hour.0 += a.last_hour.0;
        other.last_hour.1 += a.last_hour.1;
        if other.spools.is_empty() {
            other.spools = a.spools.iter().map(|(k, _, _)| (*k, 0, 0)).collect();
        }
        for (sum, (_, n, bytes)) in other.spools.iter_mut().zip(&a.spools) {
            sum.1 += n;
            sum.2 += bytes;
        }
    }
    accounts.push(other);
}

/// A label value with `\`, `"` and line feeds escaped, as the format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.0, "{name}");
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// The metrics in the textfile format, family by family in the order of the file. Long on
/// purpose: each family is a HELP line, a TYPE line and its samples, read top to bottom.
pub fn render(s: &Snapshot) -> String {
    let mut o = Out(String::with_capacity(4096 + s.accounts.len() * 2048));
    type ByOutcome = fn(&Totals, Outcome) -> u64;
    let by_outcome: [(&str, &str, ByOutcome); 2] = [
        (
            "mailgate_messages_total",
            "Messages by account and outcome (sent, queued, deferred, held, refused) since the account's statistics began.",
            Totals::messages,
        ),
        (
            "mailgate_recipients_total",
            "Recipients of those messages, by account and outcome.",
            Totals::recipients,
        ),
    ];
    for (name, help, count) in by_outcome {
        o.family(name, "counter", help);
        for a in &s.accounts {
            for out in Outcome::MESSAGE {
                o.sample(
                    name,
                    &[("account", &a.name), ("outcome", out.as_str())],
                    count(&a.totals, out),
                );
            }
        }
    }
    o.family(
        "mailgate_deliveries_total",
        "counter",
        "Recipients by what became of them after the relay took the message (delivered, bounced, delayed: put off by the receiving server, counted once), from the relay's log.",
    );
    for a in &s.accounts {
        for out in Outcome::DELIVERY {
            o.sample(
                "mailgate_deliveries_total",
                &[("account", &a.name), ("outcome", out.as_str())],
                a.totals.recipients(out),
            );
        }
    }
    o.family(
        "mailgate_window_usage_ratio",
        "gauge",
        "Use of each limit window as a fraction of its limit (1 = full).",
    );
    for a in &s.accounts {
        for (window, what, ratio) in &a.usage {
            o.sample(
                "mailgate_window_usage_ratio",
                &[("account", &a.name), ("window", window), ("limit", what)],
                ratio,
            );
        }
    }
    o.family(
        "mailgate_server_window_usage_ratio",
        "gauge",
        "Use of each window of the server-wide cap as a fraction of its limit.",
    );
    for (window, what, ratio) in &s.server_usage {
        o.sample(
            "mailgate_server_window_usage_ratio",
            &[("window", window), ("limit", what)],
            ratio,
        );
    }
    o.family(
        "mailgate_account_locked",
        "gauge",
        "1 while the account is locked (everything it sends is held).",
    );
    for a in &s.accounts {
        o.sample(
            "mailgate_account_locked",
            &[("account", &a.name)],
            u8::from(a.locked),
        );
    }
    o.family(
        "mailgate_bounce_ratio",
        "gauge",
        "Bounced recipients as a share of those delivered or bounced in the last hour (accounts with any).",
    );
    for a in &s.accounts {
        let (delivered, bounced) = a.last_hour;
        if delivered + bounced > 0 {
            o.sample(
                "mailgate_bounce_ratio",
                &[("account", &a.name)],
                bounced as f64 / (delivered + bounced) as f64,
            );
        }
    }
    o.family(
        "mailgate_account_held_by_trigger",
        "gauge",
        "1 while a failure-rate trigger holds the account's new mail (it ends by itself when the bounce rate falls).",
    );
    for a in &s.accounts {
        o.sample(
            "mailgate_account_held_by_trigger",
            &[("account", &a.name)],
            u8::from(a.held_by_trigger),
        );
    }
    type OfSpool = fn(&SpoolUse) -> u64;
    let kept: [(&str, &str, OfSpool); 2] = [
        (
            "mailgate_spool_messages",
            "Messages kept, by account and spool (hold, defer, queue, failed).",
            |&(_, n, _)| n,
        ),
        (
            "mailgate_spool_bytes",
            "Bytes kept, by account and spool.",
            |&(_, _, bytes)| bytes,
        ),
    ];
    for (name, help, value) in kept {
        o.family(name, "gauge", help);
        for a in &s.accounts {
            for entry in &a.spools {
                o.sample(
                    name,
                    &[("account", &a.name), ("spool", entry.0)],
                    value(entry),
                );
            }
        }
    }
    o.family(
        "mailgate_queue_oldest_age_seconds",
        "gauge",
        "Age of the oldest message waiting in the queue or in defer/ (0 when none waits).",
    );
    o.sample(
        "mailgate_queue_oldest_age_seconds",
        &[],
        s.oldest_waiting.unwrap_or(0).max(0),
    );
    let sum = |f: &dyn Fn(&Totals) -> u64| s.accounts.iter().map(|a| f(&a.totals)).sum::<u64>();
    o.family(
        "mailgate_outcomes_blind",
        "gauge",
        "1 while delivery outcomes are not learnt (the relay's log is missing, unreadable or not configured): the failure-rate triggers are blind.",
    );
    o.sample("mailgate_outcomes_blind", &[], u8::from(s.outcomes_blind));
    o.family(
        "mailgate_statistics_unreadable",
        "gauge",
        "Accounts whose statistics file cannot be read (damaged): their top and metrics counts start afresh with the next message.",
    );
    o.sample(
        "mailgate_statistics_unreadable",
        &[],
        s.statistics_unreadable,
    );
    o.family(
        "mailgate_lock_wait_seconds_total",
        "counter",
        "Time senders waited for the counter locks, summed.",
    );
    o.sample(
        "mailgate_lock_wait_seconds_total",
        &[],
        sum(&|t| t.lock_wait_us) as f64 / 1e6,
    );
    o.family(
        "mailgate_decisions_total",
        "counter",
        "Limit decisions taken (each waited for the counter locks).",
    );
    o.sample("mailgate_decisions_total", &[], sum(&|t| t.decisions));
    o.family(
        "mailgate_lock_busy_total",
        "counter",
        "Decisions that gave up waiting for a counter lock (a stopped sender held it); the message was deferred.",
    );
    o.sample("mailgate_lock_busy_total", &[], sum(&|t| t.lock_busy));
    o.family(
        "mailgate_relay_errors_total",
        "counter",
        "Relay hand-overs that failed, by kind (temporary 4xx, permanent 5xx, unreachable).",
    );
    for kind in RelayError::ALL {
        o.sample(
            "mailgate_relay_errors_total",
            &[("kind", kind.as_str())],
            sum(&|t| t.relay_errors(kind)),
        );
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_beyond_the_bound_are_summed_into_other() {
        let account = |name: &str, sent: u64, queued: u64| {
            let mut totals = Totals::default();
            totals.messages[0] = sent;
            Account {
                name: name.into(),
                totals,
                usage: Vec::new(),
                locked: false,
                held_by_trigger: false,
                last_hour: (1, 1),
                spools: vec![("hold", 0, 0), ("queue", queued, queued * 100)],
            }
        };
        let mut few = vec![account("a", 1, 0), account("b", 2, 0)];
        bound_accounts(&mut few, 2);
        assert_eq!(few.len(), 2, "within the bound nothing changes");
        let mut many = vec![
            account("small", 1, 1),
            account("big", 9, 2),
            account("mid", 5, 3),
        ];
        bound_accounts(&mut many, 1);
        let names: Vec<&str> = many.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["big", OTHER]);
        assert_eq!(many[1].totals.all_messages(), 6);
        assert_eq!(many[1].spools, [("hold", 0, 0), ("queue", 4, 400)]);
        assert_eq!(
            many[1].last_hour,
            (2, 2),
            "the bounce rate's parts are summed too"
        );
    }

    #[test]
    fn every_family_is_declared_once_and_labels_are_escaped() {
        let mut totals = Totals::default();
        totals.messages[0] = 3;
        totals.lock_wait_us = 1_500_000;
        totals.relay_errors[2] = 2;
        totals.recipients[Outcome::Bounced as usize] = 7;
        let snap = Snapshot {
            accounts: vec![Account {
                name: "we\"ird\\acc".into(),
                totals,
                usage: vec![("1h".into(), "messages", 0.5)],
                locked: true,
                held_by_trigger: true,
                last_hour: (3, 1),
                spools: vec![("hold", 2, 300)],
            }],
            server_usage: vec![],
            oldest_waiting: Some(42),
            outcomes_blind: true,
            statistics_unreadable: 0,
        };
        let text = render(&snap);
        assert!(
            text.contains(r#"mailgate_messages_total{account="we\"ird\\acc",outcome="sent"} 3"#),
            "{text}"
        );
        assert!(text.contains("mailgate_lock_wait_seconds_total 1.5\n"));
        assert!(text.contains("mailgate_relay_errors_total{kind=\"unreachable\"} 2\n"));
        assert!(text.contains("mailgate_queue_oldest_age_seconds 42\n"));
        assert!(
            text.contains(
                r#"mailgate_deliveries_total{account="we\"ird\\acc",outcome="bounced"} 7"#
            ),
            "{text}"
        );
        assert!(
            !text.contains(r#"mailgate_messages_total{account="we\"ird\\acc",outcome="bounced"}"#)
        );
        assert!(text.contains(r#"mailgate_account_held_by_trigger{account="we\"ird\\acc"} 1"#));
        assert!(text.contains("mailgate_outcomes_blind 1\n"));
        assert!(
            text.contains(r#"mailgate_bounce_ratio{account="we\"ird\\acc"} 0.25"#),
            "{text}"
        );
        assert!(text.contains(r#"mailgate_window_usage_ratio{account="we\"ird\\acc",window="1h",limit="messages"} 0.5"#));
        let mut seen = std::collections::HashSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(seen.insert(line.to_string()), "declared twice: {line}");
        }
        // Every sample belongs to the family declared last.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_string();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, family, "{line}");
            }
        }
    }
}
