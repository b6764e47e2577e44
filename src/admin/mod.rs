//! The admin's command line: dispatch, the permission check, and the small commands
//! (`reset`, `lock`, `unlock`, `check-config`, `newaliases`). The spool commands live in
//! `spools`, `status` in `status`; the clap schema in `cli`.
//!
//! It must not bypass the pipeline's rules: a customer sees and handles only their own
//! account's mail, and a release goes through the queue runner's one way of delivering.

pub mod cli;
#[cfg(test)]
mod docs;
pub mod lanes;
pub mod mailq;

use crate::admin::cli::{Cli, Command};
use crate::config::Config;
use crate::exit::{Exit, Failure};
use crate::identity::{self, Caller};
use crate::limits::store::{self, Counter};
use crate::log::{Fields, Severity};
use crate::runtime::Runtime;
use crate::spool::Spool;
use clap::Parser;
use std::ffi::OsString;

mod spools;
mod status;
mod trace;
mod traffic;

pub use spools::{flush, mailq};

/// The subcommand names, as plain data: `mailgate` runs once per mail, and building the
/// clap command tree on every run to learn them costs more than the rest of a refusal. A unit
/// test checks them against the clap definition, so the two cannot drift apart.
pub const SUBCOMMANDS: &[&str] = &[
    "status",
    "top",
    "metrics",
    "trace",
    "hold",
    "queue",
    "reset",
    "lock",
    "unlock",
    "check-config",
    "postfwd-rules",
];

pub fn run(argv: &[OsString]) -> Exit {
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let exit = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let _ = e.print();
            return exit;
        }
    };
    match execute(cli) {
        Ok(()) => Exit::Ok,
        Err(f) => {
            err!("mailgate: {}", f.message);
            f.exit
        }
    }
}

fn execute(cli: Cli) -> Result<(), Failure> {
    let privileged = identity::is_privileged();
    if let Command::CheckConfig { path } = &cli.command {
        return check_config(&cli, path.as_deref(), privileged);
    }
    // `status ACCOUNT` reads that account alone; every other command sees all of them.
    let only = match &cli.command {
        Command::Status {
            account: Some(name),
            ..
        } => Some(name.as_str()),
        _ => None,
    };
    let config = load_config(cli.config.as_deref(), privileged, only)?;
    let caller = Caller::current();
    let admin = require_admin(&caller, privileged);
    // Customers may look at their own accounts (status, top) and their own held mail.
    if !matches!(
        cli.command,
        Command::Status { .. } | Command::Top { .. } | Command::Hold { .. } | Command::Trace { .. }
    ) {
        admin.clone()?;
    }
    if let Command::PostfwdRules { action, server } = cli.command {
        let owners = crate::admin::lanes::owners(
            &config.defaults.limits,
            config.accounts.iter().map(|(n, a)| (n.as_str(), a)),
        );
        print!(
            "{}",
            crate::admin::lanes::render(&owners, &config.server.limits, server, action)
        );
        return Ok(());
    }

    let ctx = Runtime::start(config, caller.clone(), privileged);
    let viewer = Viewer {
        admin: admin.is_ok(),
        caller: &ctx.caller,
        config: &ctx.config,
    };
    let state = ctx.state()?;
    let spool = Spool::new(state);
    match cli.command {
        Command::Status { account, json } => {
            status::status(&ctx, &caller, account.as_deref(), json)
        }
        Command::Reset { account } => {
            let counter = if account == "server" {
                Counter::Server
            } else {
                Counter::Account(checked(&account)?)
            };
            let store = ctx.store()?;
            store.reset(&ctx.config, counter)?;
            out!("{}: counters reset", store.counter_name(counter));
            log_admin(&ctx, "reset", &account, "");
            Ok(())
        }
        Command::Lock { account, reason } => {
            let lock = store::AccountLock {
                since: ctx.now(),
                reason: reason.clone(),
                ends_itself: false,
            };
            let changed = ctx
                .store()?
                .set_lock(&ctx.config, checked(&account)?, Some(lock))?;
            out!(
                "{account}: {}",
                if changed {
                    "locked; everything it sends is held"
                } else {
                    "lock reason updated"
                }
            );
            log_admin(&ctx, "lock", &account, &reason);
            Ok(())
        }
        Command::Unlock { account } => {
            let changed = ctx
                .store()?
                .set_lock(&ctx.config, checked(&account)?, None)?;
            out!(
                "{account}: {}",
                if changed {
                    "unlocked"
                } else {
                    "was not locked"
                }
            );
            log_admin(&ctx, "unlock", &account, "");
            Ok(())
        }
        Command::Top {
            since,
            account,
            limit,
            all,
            json,
        } => traffic::top(
            &ctx,
            &since,
            account.as_deref(),
            json,
            (!all).then_some(limit),
            &|a| viewer.may_see(a),
        ),
        Command::Metrics => traffic::print_metrics(&ctx),
        Command::Trace { id, json } => {
            trace::trace(&ctx, &spool, &id, json, &|a| viewer.may_see(a))
        }
        Command::Hold { action } => spools::hold(&ctx, &spool, action, &viewer),
        Command::Queue { action } => spools::queue(&ctx, &spool, action),
        Command::CheckConfig { .. } | Command::PostfwdRules { .. } => {
            unreachable!("handled above")
        }
    }
}

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

/// What a customer hears about an account or message that is not theirs (exit 77).
pub(super) fn not_yours(what: &str) -> Failure {
    Failure::new(
        Exit::NoPerm,
        format!("{what}: you may not see it (it is not yours)"),
    )
}

/// Which accounts the caller may see and act on: an admin every one, a customer the ones
/// they may send as.
pub(super) struct Viewer<'a> {
    pub admin: bool,
    caller: &'a Caller,
    config: &'a Config,
}

impl Viewer<'_> {
    pub fn may_see(&self, account: &str) -> bool {
        self.admin
            || account == self.caller.login
            || identity::resolve_account(self.caller, Some(account), None, self.config).is_ok()
    }

    /// A customer may release held mail only where the admin allows it.
    pub fn may_release(&self) -> bool {
        self.admin || self.config.spool.customer_release
    }
}

fn checked(account: &str) -> Result<&str, Failure> {
    crate::config::validate_account_name(account).map_err(|why| Failure::new(Exit::Usage, why))?;
    Ok(account)
}

fn log_admin(ctx: &Runtime, what: &str, target: &str, detail: &str) {
    let mut f = Fields::default();
    f.add("admin", what)
        .add("target", target)
        .add("by", &ctx.caller.login)
        .add("uid", ctx.caller.uid);
    if !detail.is_empty() {
        f.add("detail", detail);
    }
    ctx.logger.log(Severity::Info, f.as_str());
}

/// The runtime for an admin operation outside clap's commands (`mailq`, `sendmail -q`).
fn admin_context(config_option: Option<&str>) -> Result<(Runtime, bool), Failure> {
    let privileged = identity::is_privileged();
    let config = load_config(config_option, privileged, None)?;
    Ok((
        Runtime::start(config, Caller::current(), privileged),
        privileged,
    ))
}

/// The main file and the accounts an admin command needs: `only` that one, else every file
/// of `accounts.d/`. A drop-in file that does not load is named on stderr and in the log and
/// left out; the command goes on with the others.
fn load_config(
    option: Option<&str>,
    privileged: bool,
    only: Option<&str>,
) -> Result<Config, Failure> {
    let (path, is_default) = crate::config::path_for(option, privileged);
    let mut config =
        Config::load(&path, is_default).map_err(|e| Failure::new(Exit::Config, e.0))?;
    let errors = match only {
        Some(name) => config.load_account(name).err().into_iter().collect(),
        None => config.load_all_accounts(),
    };
    if !errors.is_empty() {
        let logger = crate::log::Logger::new(&config.log, &config.state_dir);
        for e in errors {
            err!("mailgate: warning: {}", crate::log::printable(&e.0, 1024));
            let mut fields = Fields::default();
            fields.add("config-error", &e.0);
            logger.log(Severity::Warning, fields.as_str());
        }
    }
    Ok(config)
}

fn report(result: Result<(), Failure>) -> Exit {
    match result {
        Ok(()) => Exit::Ok,
        Err(f) => {
            err!("mailgate: {}", f.message);
            f.exit
        }
    }
}

/// `newaliases`, `sendmail -bi`: there is no alias database here.
pub fn newaliases() -> Exit {
    out!(
        "mailgate: no alias database here: aliases are the relay's business (edit /etc/aliases and run newaliases there)"
    );
    Exit::Ok
}

/// `check-config [PATH]`: the main file and every file of `accounts.d/` beside it, each
/// finding with its file and line. Errors (what would stop or misdirect mail) exit 78;
/// warnings alone exit 0. Customers may not probe files with the setgid binary (77); root
/// and group mailgate check PATH as given.
/// Whether mail would be handed to the configured relay now: reachable, and its end of the
/// connection a trusted owner's (on every address of this host), or why not.
fn relay_finding(config: &Config) -> Option<crate::config::check::Finding> {
    let uids: Vec<u32> = config
        .relay
        .trusted_owners
        .iter()
        .filter_map(identity::uid_of_ref)
        .collect();
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

fn check_config(cli: &Cli, path: Option<&str>, privileged: bool) -> Result<(), Failure> {
    use crate::config::check::{self as config_check, Finding};
    require_admin(&Caller::current(), privileged)?;
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

/// Changing state needs root or membership in the group the binary runs setgid to.
fn require_admin(caller: &Caller, privileged: bool) -> Result<(), Failure> {
    // SAFETY: getegid cannot fail; getgroups writes at most groups.len() entries.
    let egid = unsafe { libc::getegid() };
    if !privileged || caller.uid == 0 {
        return Ok(());
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    if n > 0 && groups[..n as usize].contains(&egid) {
        return Ok(());
    }
    Err(Failure::new(
        Exit::NoPerm,
        "this command needs root or membership in group mailgate",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn subcommand_names_match_the_clap_definition() {
        let from_clap: Vec<String> = Cli::command()
            .get_subcommands()
            .flat_map(|c| std::iter::once(c.get_name()).chain(c.get_all_aliases()))
            .map(str::to_string)
            .collect();
        assert_eq!(from_clap, SUBCOMMANDS);
    }
}
