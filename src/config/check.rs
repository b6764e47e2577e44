//! `mailgate check-config`: every problem of a configuration file at once, each with its
//! file and line, where loading stops at the first. Beyond what loading refuses it flags what
//! loads but cannot be meant: unknown users, accounts nobody can use, windows that can never
//! bind. Pure apart from the password/group lookups passed in.

use crate::config::{Account, Config, Limit, line_of_key};

/// Lookups the checks need from the system.
pub struct System<'a> {
    pub is_login: &'a dyn Fn(&str) -> bool,
}

/// One finding: an error (the file would stop or misdirect mail: `check-config` exits 78) or
/// a warning (harmless, but not what anyone means: exit 0), as `postfix check` separates them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub warning: bool,
    /// `file:line: message`, or `file:line: warning: message`.
    pub text: String,
}

impl Finding {
    fn error(text: String) -> Finding {
        Finding {
            warning: false,
            text,
        }
    }

    fn warning(file: &str, line: usize, message: &str) -> Finding {
        Finding {
            warning: true,
            text: format!("{file}:{line}: warning: {message}"),
        }
    }
}

/// All findings of the main file; empty when the file is good.
pub fn check(text: &str, file: &str, system: &System<'_>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let Some(config) = schema::<Config>(text, file, &mut findings) else {
        return findings;
    };
    for (key, message) in config.problems() {
        let line = line_of_key(text, &key);
        findings.push(Finding::error(format!("{file}:{line}: {message}")));
    }
    for (name, account) in &config.accounts {
        for (key, message) in lint_account(name, account, system) {
            findings.push(Finding::warning(file, line_of_key(text, &key), &message));
        }
    }
    for (owner, limits) in [
        ("defaults", &config.defaults.limits),
        ("server", &config.server.limits),
    ] {
        for (key, message) in unreachable_windows(owner, limits) {
            findings.push(Finding::warning(file, line_of_key(text, &key), &message));
        }
    }
    findings
}

/// All findings of one `accounts.d/NAME.toml` file, and the account when it loads.
pub fn check_account(
    text: &str,
    file: &str,
    name: &str,
    system: &System<'_>,
) -> (Vec<Finding>, Option<Account>) {
    let mut findings = Vec::new();
    let Some(account) = schema::<Account>(text, file, &mut findings) else {
        return (findings, None);
    };
    for (key, message) in crate::config::account_problems(name, &account) {
        let line = line_of_key(text, &key);
        findings.push(Finding::error(format!("{file}:{line}: {message}")));
    }
    for (key, message) in lint_account(name, &account, system) {
        findings.push(Finding::warning(file, line_of_key(text, &key), &message));
    }
    let loads = findings.iter().all(|f| f.warning);
    (findings, loads.then_some(account))
}

/// The file as `T`, with every syntax and schema error pushed: one error is reported, its
/// line neutralised, and the file parsed again, so that every unknown key and every wrong
/// value shows in one run. `None` when it does not load.
fn schema<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
    findings: &mut Vec<Finding>,
) -> Option<T> {
    // A syntax error leaves nothing reliable to check further.
    if let Err(e) = toml::from_str::<toml::Table>(text) {
        findings.push(Finding::error(format_error(text, file, &e)));
        return None;
    }
    let mut work: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..100 {
        let joined = work.join("\n");
        match toml::from_str::<T>(&joined) {
            Ok(c) => return Some(c),
            Err(e) => {
                findings.push(Finding::error(format_error(&joined, file, &e)));
                let line = e.span().map(|s| line_index(&joined, s.start))?;
                if !neutralise(&mut work, line) {
                    return None;
                }
            }
        }
    }
    None
}

/// What loads in one account but cannot be what the admin meant.
fn lint_account(name: &str, account: &Account, system: &System<'_>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for user in &account.users {
        if let crate::config::UserRef::Name(login) = user
            && !(system.is_login)(login)
        {
            out.push((
                format!("\"{login}\""),
                format!("account {name:?}: user {login:?} does not exist"),
            ));
        }
    }
    if account.users.is_empty() && !(system.is_login)(name) {
        out.push((
            name.to_string(),
            format!(
                "account {name:?} has no users and is no login name: nobody can send as it (add users = [\"LOGIN\"])"
            ),
        ));
    }
    if let Some(limits) = &account.limits {
        out.extend(unreachable_windows(name, limits));
    }
    out
}

/// A longer window that allows no more than a shorter one makes the shorter one pointless
/// (`1h: 100` next to `1d: 50`): almost always a typo.
fn unreachable_windows(owner: &str, limits: &[Limit]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for short in limits {
        for long in limits.iter().filter(|l| l.window > short.window) {
            for (what, s, l) in [
                ("messages", short.messages, long.messages),
                ("recipients", short.recipients, long.recipients),
            ] {
                if let (Some(s), Some(l)) = (s, l)
                    && s >= l
                {
                    out.push((
                        "window".into(),
                        format!(
                            "{owner}: the {} limit of {s} {what} can never be reached: the {} limit allows only {l}",
                            short.window, long.window
                        ),
                    ));
                }
            }
        }
    }
    out
}

fn format_error(text: &str, file: &str, e: &toml::de::Error) -> String {
    let mut message = e.message().trim().to_string();
    if let Some(hint) = did_you_mean(&message) {
        message.push_str(&format!(" (did you mean `{hint}`?)"));
    }
    match e.span() {
        Some(span) => format!("{file}:{}: {message}", line_index(text, span.start) + 1),
        None => format!("{file}: {message}"),
    }
}

/// "unknown field `limts`, expected one of `users`, `limits`" → `limits`.
fn did_you_mean(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    crate::spelling::closest(field, &candidates).map(str::to_string)
}

fn line_index(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count()
}

/// Comment out line `i` (and, for a table header, its keys), so that the next parse goes
/// past it. `false` when there was nothing left to remove.
fn neutralise(lines: &mut [String], i: usize) -> bool {
    let Some(line) = lines.get(i) else {
        return false;
    };
    if line.trim().is_empty() || line.trim_start().starts_with('#') {
        return false;
    }
    let header = line.trim_start().starts_with('[');
    lines[i] = String::new();
    if header {
        for l in lines[i + 1..].iter_mut() {
            if l.trim_start().starts_with('[') {
                break;
            }
            l.clear();
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Vec<String> {
        check(
            text,
            "m.toml",
            &System {
                is_login: &|l| matches!(l, "root" | "web1" | "www-data"),
            },
        )
        .into_iter()
        .map(|f| f.text)
        .collect()
    }

    #[test]
    fn a_good_file_has_no_findings() {
        assert_eq!(
            run(include_str!("../../mailgate.toml.example")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let text = "\
[relay]
prot = 10025
timeout = \"30x\"

[accounts.\"example.com\"]
users = [\"web1\", \"ghost\"]
limts = [ { window = \"1h\", messages = 5 } ]

[accounts.\"nobody.example\"]
exempt = false
";
        let found = run(text);
        let joined = found.join("\n");
        assert!(
            joined.contains("m.toml:2: unknown field `prot`")
                && joined.contains("did you mean `port`?"),
            "{joined}"
        );
        assert!(
            joined.contains("m.toml:3:") && joined.contains("unknown unit"),
            "{joined}"
        );
        assert!(
            joined.contains("m.toml:7: unknown field `limts`")
                && joined.contains("did you mean `limits`?"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "m.toml:6: warning: account \"example.com\": user \"ghost\" does not exist"
            ),
            "{joined}"
        );
        assert!(
            joined.contains("m.toml:9: warning: account \"nobody.example\" has no users"),
            "{joined}"
        );
        assert_eq!(found.len(), 5, "{joined}");
    }

    #[test]
    fn duplicate_and_unreachable_windows() {
        let dup = run(
            "[defaults]\nlimits = [ { window = \"1h\", messages = 5 }, { window = \"60m\", messages = 6 } ]\n",
        );
        assert!(dup.iter().any(|f| f.contains("same window")), "{dup:?}");
        let never = run(
            "[defaults]\nlimits = [ { window = \"1h\", messages = 100 }, { window = \"1d\", messages = 50 } ]\n",
        );
        assert_eq!(never.len(), 1, "{never:?}");
        assert!(
            never[0].contains("the 1h limit of 100 messages can never be reached"),
            "{never:?}"
        );
    }

    #[test]
    fn a_syntax_error_stops_the_check() {
        let found = run("[relay\nport = 1\n");
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("m.toml:1:"), "{found:?}");
    }

    #[test]
    fn an_account_file_is_checked_like_its_table() {
        let system = System {
            is_login: &|l| l == "web1",
        };
        let (found, _) = check_account(
            "users = [\"web1\"]\nlimts = 1\nlimits = [ { window = \"1h\", messages = 9 }, { window = \"1d\", messages = 5 } ]\n",
            "a.toml",
            "shop",
            &system,
        );
        let texts: Vec<&str> = found.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(found.len(), 2, "{texts:?}");
        assert!(
            !found[0].warning && texts[0].starts_with("a.toml:2: unknown field `limts`"),
            "{texts:?}"
        );
        assert!(
            found[1].warning && texts[1].starts_with("a.toml:3: warning: shop: the 1h limit"),
            "{texts:?}"
        );
        let (broken, account) = check_account("users = [", "b.toml", "shop", &system);
        assert!(account.is_none());
        assert!(broken.len() == 1 && !broken[0].warning, "{broken:?}");
    }
}
