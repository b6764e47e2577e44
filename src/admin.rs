//! The admin's command line: `mailgate status`, `reset`, `check-config`.

use crate::config::{Config, Limit};
use crate::exit::{Exit, Failure};
use crate::identity::{self, Caller};
use crate::limits::{
    self, reconcile,
    store::{Counter, Record, StateDir},
    window::Window,
};
use clap::{Parser, Subcommand};
use serde::Serialize;
use std::ffi::OsString;

#[derive(Parser)]
#[command(
    name = "mailgate",
    version,
    about = "Counts and limits outgoing mail per account; sendmail-compatible.",
    long_about = "Counts and limits outgoing mail per account; sendmail-compatible.\n\n\
        Without a subcommand (or when installed under a name containing \"sendmail\") mailgate \
        is sendmail(1): it reads a message on stdin and relays it to the configured SMTP relay."
)]
struct Cli {
    /// Configuration file (ignored when running setgid).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show each account's windows: limit, used, remaining, refused, next possible message.
    Status {
        /// Only this account.
        account: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Empty an account's counters ("server" for the server-wide cap).
    Reset { account: String },
    /// Validate a configuration file; errors name file and line (exit 78).
    CheckConfig { path: Option<String> },
}

const SUBCOMMANDS: &[&str] = &[
    "status",
    "reset",
    "check-config",
    "help",
    "--help",
    "--version",
    "-V",
];

pub fn is_subcommand(arg: &str) -> bool {
    SUBCOMMANDS.contains(&arg)
}

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
            eprintln!("mailgate: {}", f.message);
            f.exit
        }
    }
}

fn execute(cli: Cli) -> Result<(), Failure> {
    let privileged = identity::is_privileged();
    if let Command::CheckConfig { path } = &cli.command {
        let (path, is_default) = match path {
            Some(p) if !privileged => (std::path::PathBuf::from(p), false),
            _ => crate::sendmail::config_path(cli.config.as_deref(), privileged),
        };
        let config = Config::load(&path, false).map_err(|e| Failure::new(Exit::Config, e.0))?;
        let _ = is_default;
        println!(
            "{}: ok ({} accounts, {} default limits, {} server limits)",
            path.display(),
            config.accounts.len(),
            config.defaults.limits.len(),
            config.server.limits.len()
        );
        return Ok(());
    }
    let (path, is_default) = crate::sendmail::config_path(cli.config.as_deref(), privileged);
    let config = Config::load(&path, is_default).map_err(|e| Failure::new(Exit::Config, e.0))?;
    let state = StateDir::open(&config.state_dir)?;
    let caller = Caller::current();
    match cli.command {
        Command::Status { account, json } => {
            status(&config, &state, &caller, account.as_deref(), json)
        }
        Command::Reset { account } => {
            require_admin(&caller, privileged)?;
            let counter = if account == "server" {
                Counter::Server
            } else {
                identity::validate_account_name(&account)
                    .map_err(|why| Failure::new(Exit::Usage, why))?;
                Counter::Account(&account)
            };
            limits::reset(&state, &config, counter)?;
            println!("{}: counters reset", state.counter_path(counter).display());
            Ok(())
        }
        Command::CheckConfig { .. } => unreachable!("handled above"),
    }
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

#[derive(Serialize)]
struct Status {
    accounts: Vec<CounterStatus>,
    server: Option<CounterStatus>,
}

#[derive(Serialize)]
struct CounterStatus {
    name: String,
    exempt: bool,
    windows: Vec<WindowStatus>,
}

#[derive(Serialize)]
struct WindowStatus {
    window: String,
    messages: u64,
    recipients: u64,
    refused: u64,
    max_messages: Option<u32>,
    max_recipients: Option<u32>,
    remaining_messages: Option<u64>,
    /// Unix time of the next possible message when the window is full.
    next_possible: Option<i64>,
}

fn status(
    config: &Config,
    state: &StateDir,
    caller: &Caller,
    only: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let now = std::env::var("MAILGATE_NOW")
        .ok()
        .filter(|_| !identity::is_privileged())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| chrono::Utc::now().timestamp());
    let mut names: Vec<String> = match only {
        Some(a) => vec![a.to_string()],
        None => std::fs::read_dir(state.path().join("accounts"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default(),
    };
    names.sort();
    if identity::is_privileged() && caller.uid != 0 {
        // A customer sees only the accounts they may send as.
        names.retain(|n| {
            n == &caller.login || identity::resolve_account(caller, Some(n), None, config).is_ok()
        });
    }
    let mut out = Status {
        accounts: Vec::new(),
        server: None,
    };
    for name in &names {
        identity::validate_account_name(name).map_err(|why| Failure::new(Exit::Usage, why))?;
        let rec = limits::read(state, config, Counter::Account(name))?;
        out.accounts.push(counter_status(
            name,
            config.is_exempt(name),
            &rec,
            config.limits_for(name),
            now,
        ));
    }
    if !config.server.limits.is_empty() && (caller.uid == 0 || !identity::is_privileged()) {
        let rec = limits::read(state, config, Counter::Server)?;
        out.server = Some(counter_status(
            "server",
            false,
            &rec,
            &config.server.limits,
            now,
        ));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out)
                .map_err(|e| Failure::new(Exit::Software, e.to_string()))?
        );
        return Ok(());
    }
    for c in out.accounts.iter().chain(out.server.as_ref()) {
        println!("{}{}", c.name, if c.exempt { " (exempt)" } else { "" });
        for w in &c.windows {
            let limit = match (w.max_messages, w.max_recipients) {
                (Some(m), Some(r)) => format!("{m} msgs / {r} rcpts"),
                (Some(m), None) => format!("{m} msgs"),
                (None, Some(r)) => format!("{r} rcpts"),
                (None, None) => "-".into(),
            };
            let next = w
                .next_possible
                .map(limits::format_time)
                .unwrap_or_else(|| "now".into());
            println!(
                "  {:>5}  used {:>6} msgs {:>7} rcpts  limit {:<22} refused {:>5}  next {next}",
                w.window, w.messages, w.recipients, limit, w.refused
            );
        }
    }
    Ok(())
}

fn counter_status(
    name: &str,
    exempt: bool,
    rec: &Record,
    limits: &[Limit],
    now: i64,
) -> CounterStatus {
    let mut windows: Vec<Window> = reconcile(rec, limits, now);
    let windows = windows
        .iter_mut()
        .zip(limits)
        .map(|(w, l)| {
            let t = w.advance(now);
            let u = w.usage(t);
            let next = w
                .next_room(t, (1, 1), (l.messages, l.recipients))
                .filter(|&n| n > t);
            WindowStatus {
                window: l.window.to_string(),
                messages: u.messages,
                recipients: u.recipients,
                refused: u.refused,
                max_messages: l.messages,
                max_recipients: l.recipients,
                remaining_messages: l.messages.map(|m| u64::from(m).saturating_sub(u.messages)),
                next_possible: if exempt { None } else { next },
            }
        })
        .collect();
    CounterStatus {
        name: name.to_string(),
        exempt,
        windows,
    }
}
