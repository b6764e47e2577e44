//! The admin's command line: dispatch, the permission check, and the small commands
//! (`reset`, `lock`, `unlock`, `newaliases`). Its children: the clap schema `cli`, `check`
//! (`check-config`), `docs` (the man pages and completion), `lanes` (`postfwd-rules`), `mailq`,
//! `spools` (hold/queue), `status`, `trace`, `traffic` (`top`, `metrics`).
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

mod check;
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
        return check::check_config(&cli, path.as_deref(), privileged);
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

    let rt = Runtime::start(config, caller.clone(), privileged);
    let viewer = Viewer {
        admin: admin.is_ok(),
        caller: &rt.caller,
        config: &rt.config,
    };
    let state = rt.state()?;
    let spool = Spool::new(state);
    match cli.command {
        Command::Status { account, json } => status::status(&rt, &caller, account.as_deref(), json),
        Command::Reset { account } => {
            let counter = if account == "server" {
                Counter::Server
            } else {
                Counter::Account(checked(&account)?)
            };
            let store = rt.store()?;
            store.reset(&rt.config, counter)?;
            out!("{}: counters reset", store.counter_name(counter));
            log_admin(&rt, "reset", &account, "");
            Ok(())
        }
        Command::Lock { account, reason } => {
            let lock = store::AccountLock {
                since: rt.now(),
                reason: reason.clone(),
                ends_itself: false,
            };
            let changed = rt
                .store()?
                .set_lock(&rt.config, checked(&account)?, Some(lock))?;
            out!(
                "{account}: {}",
                if changed {
                    "locked; everything it sends is held"
                } else {
                    "lock reason updated"
                }
            );
            log_admin(&rt, "lock", &account, &reason);
            Ok(())
        }
        Command::Unlock { account } => {
            let changed = rt.store()?.set_lock(&rt.config, checked(&account)?, None)?;
            out!(
                "{account}: {}",
                if changed {
                    "unlocked"
                } else {
                    "was not locked"
                }
            );
            log_admin(&rt, "unlock", &account, "");
            Ok(())
        }
        Command::Top {
            since,
            account,
            limit,
            all,
            json,
        } => traffic::top(
            &rt,
            &since,
            account.as_deref(),
            json,
            (!all).then_some(limit),
            &|a| viewer.may_see(a),
        ),
        Command::Metrics => traffic::print_metrics(&rt),
        Command::Trace { id, json } => trace::trace(&rt, &spool, &id, json, &|a| viewer.may_see(a)),
        Command::Hold { action } => spools::hold(&rt, &spool, action, &viewer),
        Command::Queue { action } => spools::queue(&rt, &spool, action),
        Command::CheckConfig { .. } | Command::PostfwdRules { .. } => {
            unreachable!("handled above")
        }
    }
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

fn log_admin(rt: &Runtime, what: &str, target: &str, detail: &str) {
    let mut f = Fields::default();
    f.add("admin", what)
        .add("target", target)
        .add("by", &rt.caller.login)
        .add("uid", rt.caller.uid);
    if !detail.is_empty() {
        f.add("detail", detail);
    }
    rt.logger.log(Severity::Info, f.as_str());
}

/// The runtime for an admin operation outside clap's commands (`mailq`, `sendmail -q`).
fn admin_runtime(config_option: Option<&str>) -> Result<(Runtime, bool), Failure> {
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
    let mut config = crate::runtime::load_config(option, privileged)?;
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
