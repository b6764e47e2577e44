//! `mailgate check-config [PATH]`: the main file and every file of `accounts.d/` beside it,
//! with file:line in each finding (errors exit 78, warnings do not), plus what only the running
//! system can tell: whether postfwd's bypass lane is stricter than mailgate, whether the relay
//! would be handed mail now, and whether only the relay writes the log outcomes come from.
//! Admins only (a customer could otherwise probe files through the setgid binary).

use super::Cli;
use super::access::require_admin;
use crate::config::Config;
use crate::exit::{Exit, Failure};
use crate::identity::{self, Caller};

/// Where the lanes into the relay disagree with the configuration: mailgate's own lane
/// installed but not used (its mail then meets postfwd's limits a second time), and an
/// installed postfwd.cf more generous than mailgate's limits for the bypass lane.
fn lane_findings(
    config: &Config,
    account_files: &[(String, crate::config::Account)],
) -> Vec<crate::config::check::Finding> {
    use crate::config::check::Finding;
    const INSTALLED_LANE: &str = "/var/spool/postfix-postfwd/mailgate/smtpd";
    let mut out = Vec::new();
    let lane_exists = std::fs::symlink_metadata(INSTALLED_LANE)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
    if config.relay.socket.is_none() && lane_exists {
        out.push(Finding {
            warning: true,
            text: format!(
                "warning: mailgate's lane {INSTALLED_LANE} is installed, but [relay] socket is not set: mailgate's mail goes to {}:{} and meets postfwd's limits a second time",
                config.relay.host, config.relay.port
            ),
        });
    }
    let Ok(rules) = std::fs::read_to_string(crate::admin::lanes::POSTFWD_RULES) else {
        return out;
    };
    let owners = crate::admin::lanes::owners(
        &config.defaults.limits,
        config
            .accounts
            .iter()
            .map(|(n, a)| (n.as_str(), a))
            .chain(account_files.iter().map(|(n, a)| (n.as_str(), a))),
    );
    let rates = crate::admin::lanes::parse(&rules);
    for text in crate::admin::lanes::too_generous(&owners, &config.server.limits, &rates) {
        out.push(Finding {
            warning: true,
            text: format!("{}: warning: {text}", crate::admin::lanes::POSTFWD_RULES),
        });
    }
    out
}

/// `check-config [PATH]`: the main file and every file of `accounts.d/` beside it, each
/// finding with its file and line. Errors (what would stop or misdirect mail) exit 78;
/// warnings alone exit 0. Customers may not probe files with the setgid binary (77); root
/// and group mailgate check PATH as given.
/// Whether mail would be handed to the configured relay now: reachable, and its end of the
/// connection a trusted owner's (on every address of this host), or why not.
fn relay_finding(config: &Config) -> Option<crate::config::check::Finding> {
    let uids = identity::uids_of(&config.relay.trusted_owners);
    let relay = crate::relay::Relay {
        host: &config.relay.host,
        port: config.relay.port,
        socket: config.relay.socket.as_deref(),
        timeout: std::time::Duration::from_secs(5),
        helo: "check-config",
        trusted_owners: &uids,
    };
    let why = relay.probe().err()?;
    Some(crate::config::check::Finding {
        warning: true,
        text: format!(
            "warning: relay {}: mail would not be handed to it now: {why}",
            relay.name()
        ),
    })
}

pub(super) fn check_config(cli: &Cli, path: Option<&str>, privileged: bool) -> Result<(), Failure> {
    use crate::config::check::{self as config_check, Finding};
    require_admin(&Caller::current()?, privileged)?;
    let path = match path {
        Some(p) => std::path::PathBuf::from(p),
        None => crate::config::path_for(cli.config.as_deref(), privileged).0,
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Failure::io(Exit::Config, format!("cannot read {}", path.display()), &e))?;
    let file = path.display().to_string();
    // Thousands of account files name thousands of users: each looked up once.
    let logins = std::cell::RefCell::new(std::collections::HashMap::<String, bool>::new());
    let is_login = |name: &str| {
        *logins
            .borrow_mut()
            .entry(name.to_string())
            .or_insert_with(|| identity::is_login(name))
    };
    let system = config_check::System {
        is_login: &is_login,
    };
    let mut findings = config_check::check(&text, &file, &system);
    let main = Config::parse(&text, &file).ok();
    let dir = crate::config::accounts_dir_of(&path);
    let mut listing_errors = Vec::new();
    let names = crate::config::account_file_names(Some(&dir), &mut listing_errors);
    findings.extend(listing_errors.into_iter().map(|e| Finding {
        warning: false,
        text: e.0,
    }));
    let mut account_files: Vec<(String, crate::config::Account)> = Vec::new();
    // Domain → the accounts that name it, to warn where one domain has two owners.
    let mut owners: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    if let Some(main) = &main {
        for (name, account) in &main.accounts {
            for d in crate::state::domain_index::owned_domains(account) {
                owners.entry(d).or_default().push(name.clone());
            }
        }
    }
    for name in &names {
        let account_path = dir.join(format!("{name}.toml"));
        let account_file = account_path.display().to_string();
        let account_text = match std::fs::read_to_string(&account_path) {
            Ok(t) => t,
            Err(e) => {
                findings.push(Finding {
                    warning: false,
                    text: format!("{account_file}: cannot read: {e}"),
                });
                continue;
            }
        };
        let (found, account) =
            config_check::check_account(&account_text, &account_file, name, &system);
        findings.extend(found);
        if main.as_ref().is_some_and(|m| m.accounts.contains_key(name)) {
            findings.push(Finding {
                warning: false,
                text: format!("{account_file}:1: account {name:?} is also defined in {file}; keep one of the two"),
            });
        }
        if let Some(account) = account {
            for d in crate::state::domain_index::owned_domains(&account) {
                owners.entry(d).or_default().push(name.clone());
            }
            account_files.push((name.clone(), account));
        }
    }
    if let Some(main) = &main {
        findings.extend(lane_findings(main, &account_files));
        findings.extend(relay_finding(main));
        if let Some(log) = &main.outcomes.relay_log
            && let Some(why) = crate::delivery::learn::source_warning(&main.outcomes, log)
        {
            findings.push(Finding {
                warning: true,
                text: format!("{file}: warning: [outcomes] relay_log: {why}"),
            });
        }
    }
    for (domain, mut accounts) in owners.into_iter().filter(|(_, a)| a.len() > 1) {
        accounts.sort();
        findings.push(Finding {
            warning: true,
            text: format!(
                "{}: warning: the domain {domain} is named by accounts {}; it belongs to {} alone",
                dir.display(),
                accounts.join(", "),
                accounts[0]
            ),
        });
    }
    // The counter store, as this configuration reaches it (Redis only).
    let store_lines = main
        .as_ref()
        .map(crate::limits::probe_store)
        .unwrap_or_default();
    for line in &store_lines {
        if let Err(why) = line {
            findings.push(Finding {
                warning: false,
                text: format!("{file}: [store] {why}"),
            });
        }
    }
    for f in &findings {
        err!("{}", crate::log::printable(&f.text, 1024));
    }
    let errors = findings.iter().filter(|f| !f.warning).count();
    let warnings = findings.len() - errors;
    if errors > 0 {
        return Err(Failure::new(
            Exit::Config,
            format!("{file}: {errors} error(s), {warnings} warning(s)"),
        ));
    }
    let config =
        main.ok_or_else(|| Failure::new(Exit::Config, format!("{file}: does not load")))?;
    for line in store_lines.iter().flatten() {
        out!("{file}: {line}");
    }
    out!(
        "{file}: ok ({} accounts in the file, {} in {}, {} default limits, {} server limits{})",
        config.accounts.len(),
        names.len(),
        dir.display(),
        config.defaults.limits.len(),
        config.server.limits.len(),
        if warnings > 0 {
            format!("; {warnings} warning(s)")
        } else {
            String::new()
        }
    );
    Ok(())
}
