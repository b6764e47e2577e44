//! The windows a message is counted in besides its account's: the account's script limits
//! whose glob matches the message's script, and the new-script budget while the script is new.
//!
//! Each group is one counter file, `scripts/ACCOUNT#g<hash of the glob>` or
//! `scripts/ACCOUNT#new`, in the local state directory (per node, also with a Redis store),
//! in the account counters' own format. `check_and_record` locks them before the account's
//! counters (every sender in the same order, so none can deadlock), checks them first and
//! counts them only when the account's decision accepts the message: exact under any number
//! of concurrent senders, and a message they refuse leaves the account's windows untouched.

use crate::config::{Config, Limit, TimeSpan};
use crate::exit::Failure;
use crate::limits::{self, Attempt, Decision, Refusal, Scope, Verdict};
use crate::state::StateDir;

/// One group of windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its counter file in `scripts/`.
    pub counter: String,
    /// Whose windows, for the refusal's text: `script */contact.php`, `new script /x.php`.
    pub what: String,
    pub limits: Vec<Limit>,
}

/// The rules a message of `script_path` from `account` is counted under. Pure.
pub fn rules_for(config: &Config, account: &str, script_path: &str, new: bool) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    for l in config.script_limits_for(account) {
        if !crate::glob::glob_match(&l.script, script_path) {
            continue;
        }
        let counter = format!(
            "{account}#g{:016x}",
            crate::state::fnv1a(l.script.as_bytes())
        );
        match out.iter_mut().find(|r| r.counter == counter) {
            Some(rule) => rule.limits.push(l.limit()),
            None => out.push(Rule {
                counter,
                what: format!("script limit {:?}", l.script),
                limits: vec![l.limit()],
            }),
        }
    }
    let cfg = config.scripts_for(account);
    if new && cfg.new_script_budget > 0 {
        out.push(Rule {
            counter: format!("{account}#new"),
            what: format!("budget for new scripts ({script_path})"),
            limits: vec![Limit {
                window: TimeSpan(cfg.new_script_window.secs()),
                messages: Some(cfg.new_script_budget),
                recipients: None,
                action: cfg.new_script_action,
                observe: false,
            }],
        });
    }
    out.sort_by(|a, b| a.counter.cmp(&b.counter));
    out
}

/// Check and count one message under its script rules, then its account's (and the
/// server's) limits in `store`.
pub fn check_and_record(
    state: &StateDir,
    store: &limits::Store,
    config: &Config,
    attempt: &Attempt<'_>,
    rules: &[Rule],
    warn: &mut dyn FnMut(&str),
) -> Result<Decision, Failure> {
    if rules.is_empty() || config.is_exempt(attempt.account) {
        return store.check_and_record(config, attempt, warn);
    }
    let started = std::time::Instant::now();
    let wait = limits::decision_wait(config);
    let mut held = Vec::with_capacity(rules.len());
    for rule in rules {
        match state.lock_script_counter(&rule.counter, wait)? {
            Ok(file) => held.push(file),
            Err(busy) => {
                return Ok(Decision::busy(busy, started.elapsed()));
            }
        }
    }
    let now = attempt.now;
    let mut records = Vec::with_capacity(rules.len());
    let mut worst: Option<Refusal> = None;
    let mut observed = Vec::new();
    for (rule, file) in rules.iter().zip(&held) {
        // A damaged script counter starts again (it narrows; the account's windows still
        // hold), and says so.
        let mut record = file.load().unwrap_or_else(|store_corrupt| {
            warn(&store_corrupt.0);
            Default::default()
        });
        let mut windows = limits::reconcile(&record, &rule.limits, now);
        for w in &mut windows {
            w.advance(now);
        }
        for (w, l) in windows.iter().zip(&rule.limits) {
            let Some(mut r) = limits::check(w, l, Scope::Script, now, attempt.recipients) else {
                continue;
            };
            r.script = Some(rule.what.clone());
            if l.observe {
                observed.push(r);
            } else if worst.as_ref().is_none_or(|cur| limits::worse(&r, cur)) {
                worst = Some(r);
            }
        }
        record.windows = windows;
        records.push(record);
    }
    if let Some(refusal) = worst {
        if attempt.count_refusal {
            for (file, record) in held.iter().zip(&mut records) {
                record
                    .windows
                    .iter_mut()
                    .for_each(|w| w.record_refused(now));
                file.save(record)?;
            }
        }
        return Ok(Decision {
            verdict: Verdict::Refused(refusal),
            alert: None,
            lock_wait: started.elapsed(),
            observed: Vec::new(),
        });
    }
    let mut decision = store.check_and_record(config, attempt, warn)?;
    if matches!(decision.verdict, Verdict::Accepted(_)) {
        for (file, record) in held.iter().zip(&mut records) {
            record
                .windows
                .iter_mut()
                .for_each(|w| w.record(now, attempt.recipients));
            file.save(record)?;
        }
        decision.observed.extend(observed);
    }
    decision.lock_wait += started.elapsed().saturating_sub(decision.lock_wait);
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "test.toml").unwrap()
    }

    #[test]
    fn a_script_is_counted_under_every_glob_it_matches_and_the_budget_when_new() {
        let c = config(
            "[defaults]\nscript_limits = [\n { script = \"*/contact.php\", window = \"1h\", messages = 20 },\n { script = \"*/contact.php\", window = \"1d\", messages = 100 },\n { script = \"/var/www/shop/*\", window = \"1h\", messages = 500 },\n]\n",
        );
        let r = rules_for(&c, "shop", "/var/www/shop/contact.php", false);
        assert_eq!(r.len(), 2, "{r:?}");
        let contact = r.iter().find(|r| r.what.contains("contact")).unwrap();
        assert_eq!(contact.limits.len(), 2);
        assert!(contact.counter.starts_with("shop#g"));
        assert!(rules_for(&c, "shop", "/var/www/blog/news.php", false).is_empty());
        let r = rules_for(&c, "shop", "/var/www/blog/x.php", true);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].counter, "shop#new");
        assert_eq!(r[0].limits[0].messages, Some(10));
        assert_eq!(r[0].limits[0].action, crate::config::Action::Defer);
    }

    #[test]
    fn a_budget_of_zero_is_off() {
        let c = config("[scripts]\nnew_script_budget = 0\n");
        assert!(rules_for(&c, "a", "/x.php", true).is_empty());
    }
}
