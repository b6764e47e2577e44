//! Which limits apply to which lane into the relay, and the one place they come from.
//!
//! mailgate's own mail takes its own lane (`[relay] socket`, an smtpd without postfwd): only
//! mailgate's limits apply to it. Mail that bypasses mailgate (a customer's direct SMTP to
//! the relay's TCP listener, Postfix's own sendmail) meets postfwd's rate rules instead, and
//! those must never be more generous than mailgate's: `mailgate postfwd-rules` writes them
//! from the configuration (for each window, the strictest limit any account has), and
//! `check-config` compares an installed rules file against the configuration.
//!
//! Once the lanes are apart, no warning is needed for an account whose mailgate limit is
//! *above* postfwd's: its mail through mailgate no longer meets postfwd.
//!
//! Pure: text in, text out.

use crate::config::{Account, Limit};
use std::collections::BTreeMap;

/// Where install.sh writes postfwd's rules.
pub const POSTFWD_RULES: &str = "/etc/postfix/postfwd.cf";

/// What one postfwd `rate()` rule counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    /// Each envelope sender: the bypass lane's per-account rules.
    Sender,
    /// Each client address: the whole server's bypass mail (it all comes from 127.0.0.1).
    Client,
}

/// One postfwd `rate(KEY/COUNT/SECONDS/...)` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    pub id: String,
    pub per: Per,
    pub count: u64,
    pub seconds: u64,
}

/// What postfwd does with a request over a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verdict {
    Reject,
    Defer,
    Hold,
}

impl Verdict {
    fn postfwd_action(self) -> &'static str {
        match self {
            Verdict::Reject => "REJECT",
            Verdict::Defer => "450 4.7.1",
            Verdict::Hold => "HOLD",
        }
    }
}

/// Who limits: the defaults (for every account without limits of its own), an account, or
/// the server.
pub struct Owner<'a> {
    pub name: &'a str,
    pub limits: &'a [Limit],
}

/// `mailgate postfwd-rules`: the rules for the bypass lane, from the configuration.
pub fn print(config: &crate::config::Config, action: Verdict, server: u64) {
    let owners = owners(
        &config.defaults.limits,
        config.accounts.iter().map(|(n, a)| (n.as_str(), a)),
    );
    print!("{}", render(&owners, &config.server.limits, server, action));
}

/// The owners whose limits a bypass rule must respect: the defaults and every account with
/// limits of its own that is not exempt.
pub fn owners<'a>(
    defaults: &'a [Limit],
    accounts: impl Iterator<Item = (&'a str, &'a Account)>,
) -> Vec<Owner<'a>> {
    let mut out = vec![Owner {
        name: "defaults",
        limits: defaults,
    }];
    for (name, account) in accounts {
        if let (false, Some(limits)) = (account.exempt, &account.limits) {
            out.push(Owner { name, limits });
        }
    }
    out
}

/// How many requests (postfwd counts each recipient) one limit allows in its window.
fn allowance(limit: &Limit) -> Option<u64> {
    match (limit.messages, limit.recipients) {
        (Some(m), Some(r)) => Some(u64::from(m.min(r))),
        (Some(n), None) | (None, Some(n)) => Some(u64::from(n)),
        (None, None) => None,
    }
}

/// For each window any owner limits, the strictest allowance among them: a rule per window
/// that is never more generous than any owner's limit of that window.
pub fn strictest(owners: &[Owner<'_>]) -> BTreeMap<u64, u64> {
    let mut by_window: BTreeMap<u64, u64> = BTreeMap::new();
    for owner in owners {
        for limit in owner.limits {
            if let Some(n) = allowance(limit) {
                let slot = by_window.entry(limit.window.secs()).or_insert(n);
                *slot = (*slot).min(n);
            }
        }
    }
    by_window
}

fn window_name(seconds: u64) -> String {
    match seconds {
        60 => "minute".into(),
        3600 => "hour".into(),
        86400 => "day".into(),
        s => format!("{s} seconds"),
    }
}

/// postfwd.cf for the bypass lane: per sender the strictest limit of each window, and per
/// client address the server's limits (or `server_fallback` per hour when it has none).
pub fn render(
    owners: &[Owner<'_>],
    server: &[Limit],
    server_fallback: u64,
    verdict: Verdict,
) -> String {
    let verb = verdict.postfwd_action();
    let mut out = String::from(
        "# postfwd rules for the bypass lane, written by `mailgate postfwd-rules` from mailgate's\n\
         # configuration: mail that bypasses mailgate (direct SMTP to the relay's TCP listener,\n\
         # Postfix's own sendmail) gets per envelope sender the strictest limit any account has\n\
         # for each window, and the server's limit per client address. mailgate's own mail takes\n\
         # its own lane and does not meet these rules.\n",
    );
    for (seconds, count) in strictest(owners) {
        let name = window_name(seconds);
        out.push_str(&format!(
            "id=RATE_SENDER_{seconds}; action=rate(sender/{count}/{seconds}/{verb} only {count} messages per {name} for $$sender)\n"
        ));
    }
    let mut server_rates = strictest(&[Owner {
        name: "server",
        limits: server,
    }]);
    if server_rates.is_empty() {
        server_rates.insert(3600, server_fallback);
    }
    for (seconds, count) in server_rates {
        let name = window_name(seconds);
        out.push_str(&format!(
            "id=RATE_SERVER_{seconds}; action=rate(client_address/{count}/{seconds}/{verb} only {count} messages per {name} from this server)\n"
        ));
    }
    out
}

/// The `rate()` rules of a postfwd.cf; lines it cannot read are skipped (postfwd's grammar is
/// far larger than these rules: what is not a rate is not a limit this check compares).
pub fn parse(text: &str) -> Vec<Rate> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Rate> {
    let line = line.trim();
    if line.starts_with('#') {
        return None;
    }
    let mut id = String::new();
    let mut action = None;
    for item in line.split(';') {
        let (key, value) = item.split_once('=')?;
        match key.trim() {
            "id" => id = value.trim().to_string(),
            "action" => action = Some(value.trim()),
            _ => {}
        }
    }
    let args = action?.strip_prefix("rate(")?;
    let mut fields = args.splitn(4, '/');
    let per = match fields.next()?.trim() {
        "sender" => Per::Sender,
        "client_address" => Per::Client,
        _ => return None,
    };
    let count = fields.next()?.trim().parse().ok()?;
    let seconds = fields.next()?.trim().parse().ok()?;
    (seconds > 0).then_some(Rate {
        id,
        per,
        count,
        seconds,
    })
}

/// The most the rules of kind `per` let through in `window` seconds: each rule allows its
/// count once per started period of its own.
fn bypass_allows(rates: &[Rate], per: Per, window: u64) -> Option<(u64, &Rate)> {
    rates
        .iter()
        .filter(|r| r.per == per)
        .map(|r| (r.count.saturating_mul(window.div_ceil(r.seconds)), r))
        .min_by_key(|(n, _)| *n)
}

/// Every window in which the bypass lane lets one sender (or the whole server) send more
/// than mailgate allows: one text per window and allowance, naming up to three owners.
pub fn too_generous(owners: &[Owner<'_>], server: &[Limit], rates: &[Rate]) -> Vec<String> {
    let mut out = Vec::new();
    // (window, allowance) → owners, so that 10,000 accounts with one limit give one line.
    let mut groups: BTreeMap<(u64, u64), Vec<&str>> = BTreeMap::new();
    for owner in owners {
        for limit in owner.limits {
            if let Some(n) = allowance(limit) {
                groups
                    .entry((limit.window.secs(), n))
                    .or_default()
                    .push(owner.name);
            }
        }
    }
    for ((window, n), names) in groups {
        let name = window_name(window);
        match bypass_allows(rates, Per::Sender, window) {
            None => out.push(format!(
                "postfwd has no per-sender rate: one sender may send any number per {name} through the bypass lane, mailgate allows {n} ({})",
                some_of(&names)
            )),
            Some((allowed, rule)) if allowed > n => out.push(format!(
                "postfwd ({}: {} per {} s) lets one sender send {allowed} per {name} through the bypass lane, mailgate allows {n} ({}): regenerate the rules with `mailgate postfwd-rules`",
                rule.id,
                rule.count,
                rule.seconds,
                some_of(&names)
            )),
            Some(_) => {}
        }
    }
    for limit in server {
        let Some(n) = allowance(limit) else {
            continue;
        };
        let window = limit.window.secs();
        let allowed = bypass_allows(rates, Per::Client, window).map(|(a, _)| a);
        if allowed.is_none_or(|a| a > n) {
            out.push(format!(
                "the bypass lane lets the server send more than mailgate's server limit of {n} per {}: regenerate the rules with `mailgate postfwd-rules`",
                window_name(window)
            ));
        }
    }
    out
}

fn some_of(names: &[&str]) -> String {
    match names.len() {
        0..=3 => names.join(", "),
        n => format!("{} and {} more", names[..3].join(", "), n - 3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, TimeSpan};
    use proptest::prelude::*;

    fn limit(window: u64, messages: u32, recipients: Option<u32>) -> Limit {
        Limit {
            window: TimeSpan(window),
            messages: Some(messages),
            recipients,
            action: Action::Reject,
            observe: false,
        }
    }

    #[test]
    fn the_rules_take_the_strictest_limit_of_each_window() {
        let defaults = [limit(3600, 50, None), limit(86400, 100, Some(500))];
        let small = [limit(3600, 10, None)];
        let big = [limit(3600, 100_000, None), limit(60, 20, Some(5))];
        let owners = vec![
            Owner {
                name: "defaults",
                limits: &defaults,
            },
            Owner {
                name: "small",
                limits: &small,
            },
            Owner {
                name: "big",
                limits: &big,
            },
        ];
        let text = render(&owners, &[], 5000, Verdict::Defer);
        let rates = parse(&text);
        assert_eq!(
            rates
                .iter()
                .map(|r| (r.per, r.count, r.seconds))
                .collect::<Vec<_>>(),
            [
                (Per::Sender, 5, 60),
                (Per::Sender, 10, 3600),
                (Per::Sender, 100, 86400),
                (Per::Client, 5000, 3600)
            ]
        );
        assert!(text.contains("450 4.7.1 only 10 messages per hour for $$sender"));
        // What it writes, the check accepts.
        assert_eq!(too_generous(&owners, &[], &rates), Vec::<String>::new());
    }

    #[test]
    fn the_seeds_rules_are_more_generous_than_the_default_limits() {
        let seed = "id=RATE_HOURLY; action=rate(sender/200/3600/450 4.7.1 only 200 messages per hour for $$sender)\n\
                    id=RATE_DAILY; action=rate(sender/1000/86400/450 4.7.1 only 1000 messages per day for $$sender)\n\
                    id=RATE_SERVER; action=rate(client_address/5000/3600/450 4.7.1 only 5000 messages per hour from this server)\n";
        let rates = parse(seed);
        assert_eq!(rates.len(), 3);
        let defaults = [limit(3600, 50, None), limit(86400, 100, Some(500))];
        let server = [limit(3600, 1000, None)];
        let owners = owners(&defaults, std::iter::empty());
        let found = too_generous(&owners, &server, &rates);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("RATE_HOURLY") && found[0].contains("send 200 per hour"));
        assert!(found[1].contains("RATE_DAILY") && found[1].contains("mailgate allows 100"));
        assert!(found[2].contains("server limit of 1000 per hour"));
        // Exactly as generous is not more generous.
        let server = [limit(3600, 5000, None)];
        let found = too_generous(&owners, &server, &rates);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().all(|f| !f.contains("server limit")),
            "{found:?}"
        );
        // A window shorter than a rule's: the rule's whole count fits in it.
        let minute = [limit(60, 10, None)];
        let found = too_generous(&super::owners(&minute, std::iter::empty()), &[], &rates);
        assert!(found[0].contains("send 200 per minute"), "{found:?}");
    }

    #[test]
    fn ten_thousand_accounts_with_one_limit_give_one_line() {
        let own = [limit(3600, 10, None)];
        let names: Vec<String> = (0..10_000).map(|i| format!("site{i}")).collect();
        let mut owners = vec![];
        for n in &names {
            owners.push(Owner {
                name: n,
                limits: &own,
            });
        }
        let rates = parse("id=R; action=rate(sender/20/3600/REJECT x)\n");
        let found = too_generous(&owners, &[], &rates);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].contains("site0, site1, site2 and 9997 more"),
            "{found:?}"
        );
    }

    #[test]
    fn what_is_not_a_rate_rule_is_skipped() {
        for line in [
            "",
            "# id=X; action=rate(sender/1/60/REJECT)",
            "id=X; action=DUNNO",
            "id=X; action=rate(recipient/1/60/REJECT)",
            "id=X; action=rate(sender/x/60/REJECT)",
            "id=X; action=rate(sender/1/0/REJECT)",
            "&&LIST { client_address=127.0.0.1 }",
        ] {
            assert_eq!(parse(line), [], "{line:?}");
        }
    }

    proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in "\\PC*") {
            let _ = parse(&text);
        }

        #[test]
        fn parsing_rule_like_text_never_panics(
            text in "(id=[A-Z_]{0,4}; )?action=rate\\((sender|client_address)?/[0-9]{0,25}/[0-9]{0,25}(/.{0,10})?\\)?"
        ) {
            let _ = parse(&text);
        }
    }
}
