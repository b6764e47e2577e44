//! The admin's command line: this file parses, checks the permission each command states
//! (`cli::Command::who`), loads the configuration, starts the runtime and dispatches. Its
//! children, one per command or family: the clap schema `cli`, `access` (who may see and act
//! on what, the admin's log line), `check` (`check-config`), `counters` (`reset`, `lock`,
//! `unlock`), `docs` (the man pages and completion), `lanes` (`postfwd-rules`), `mailq`
//! (`mailq`, `sendmail -bp`), `scripts`, `spools` (`hold`, `queue`, `sendmail -q`), `status`, `trace`,
//! `traffic` (`top`, `metrics`). `newaliases` is the one line below.
//!
//! It must not bypass the pipeline's rules: a customer sees and handles only their own
//! account's mail, and a release goes through the queue runner's one way of delivering.

pub mod cli;
#[cfg(test)]
mod docs;
pub mod lanes;
pub mod mailq;

use crate::admin::cli::{Cli, Command, Who};
use crate::config::Config;
use crate::exit::{Exit, Failure};
use crate::identity::{self, Caller};
use crate::log::{Fields, Severity};
use crate::runtime::Runtime;
use crate::spool::Spool;
use clap::Parser;
use std::ffi::OsString;

mod access;
mod check;
mod counters;
mod scripts;
mod spools;
mod status;
mod trace;
mod traffic;

use access::Viewer;
pub use spools::{flush, mailq};

/// The subcommand names, as plain data: `mailgate` runs once per mail, and building the
/// clap command tree on every run to learn them costs more than the rest of a refusal. A unit
/// test checks them against the clap definition, so the two cannot drift apart.
pub const SUBCOMMANDS: &[&str] = &[
    "status",
    "top",
    "metrics",
    "trace",
    "scripts",
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
    let caller = Caller::current()?;
    let admin = access::require_admin(&caller, privileged);
    if cli.command.who() == Who::Admin {
        admin.clone()?;
    }
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
    if let Command::PostfwdRules { action, server } = cli.command {
        lanes::print(&config, action, server);
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
        Command::Reset { account } => counters::reset(&rt, &account),
        Command::Lock { account, reason } => counters::lock(&rt, &account, &reason),
        Command::Unlock { account } => counters::unlock(&rt, &account),
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
        Command::Scripts {
            action,
            account,
            json,
        } => scripts::scripts(&rt, action, account.as_deref(), json, &viewer),
        Command::Hold { action } => spools::hold(&rt, &spool, action, &viewer),
        Command::Queue { action } => spools::queue(&rt, &spool, action),
        Command::CheckConfig { .. } | Command::PostfwdRules { .. } => {
            unreachable!("handled above")
        }
    }
}

/// The runtime for an admin operation outside clap's commands (`mailq`, `sendmail -q`).
fn admin_runtime(config_option: Option<&str>) -> Result<(Runtime, bool), Failure> {
    let privileged = identity::is_privileged();
    let config = load_config(config_option, privileged, None)?;
    Ok((
        Runtime::start(config, Caller::current()?, privileged),
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

    #[test]
    fn customers_may_run_only_the_commands_that_show_their_own() {
        let customer: Vec<String> = SUBCOMMANDS
            .iter()
            .filter(|name| {
                let argv = match **name {
                    "trace" | "reset" | "lock" | "unlock" => vec!["mailgate", name, "x"],
                    "hold" | "queue" => vec!["mailgate", name, "list"],
                    _ => vec!["mailgate", name],
                };
                Cli::try_parse_from(argv).unwrap().command.who() == Who::Customer
            })
            .map(|n| n.to_string())
            .collect();
        assert_eq!(customer, ["status", "top", "trace", "scripts", "hold"]);
    }
}
