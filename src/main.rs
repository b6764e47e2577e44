//! mailgate: a sendmail-compatible drop-in that identifies the sending account, counts its
//! mail under file locks and relays it, keeps it, or refuses it with a clear exit code.
//!
//! Under a name containing "sendmail" the binary is purely sendmail(1). As `mailgate`, a first
//! argument naming an admin subcommand selects it; anything else is sendmail mode.
//!
//! # The privilege contract (as Postfix's postdrop.c states its own)
//!
//! The binary is installed set-gid `mailgate`, never set-uid. Group `mailgate` alone may write
//! the state directory; the caller may be any local user, and is assumed hostile. A process
//! that runs with privileges the caller lacks (`identity::is_privileged`):
//!
//! - trusts only the kernel for identity: the real uid (`getuid`), never `USER`, `LOGNAME` or a
//!   header; the account is `--account`/the account variable only when the configuration
//!   binds the caller to it;
//! - empties its environment before any library reads it (`identity::clean_env`; the account
//!   variable is read from a private copy) and sets its own umask;
//! - ignores every caller override: `--config`, `MAILGATE_CONFIG`, the state directory, the
//!   test clock `MAILGATE_NOW`; reads the configuration only from /etc/mailgate;
//! - never opens a path that argv names; opens state files relative to a directory it opened
//!   itself, with `O_NOFOLLOW|O_NONBLOCK`, and uses them only if they are regular files;
//! - treats argv, stdin, headers, the working directory and inherited descriptors as data:
//!   bounded (`bounded`), escaped before any log line or terminal, never markup;
//! - holds a state lock for microseconds and waits for one at most a deadline: a caller who
//!   stops her own process holding it delays others by that deadline, and root's queue run
//!   ends such a stopped holder (`state::lock`);
//! - hands mail only to a relay whose end of the connection a trusted owner holds
//!   (`relay::sockdiag`, the lane's socket credentials).
//!
//! Root's admin commands and queue run (real uid 0) may read everything; a customer's admin
//! command sees only her own accounts.

/// `println!` that never panics: a closed or broken stdout (`mailgate status | head -1`, EBADF)
/// must not turn into an abort, nor change the exit code that reports the message's fate.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics, for the same reason (PHP may close the pipe it reads).
/// The line is formatted first and written at once: unbuffered stderr would otherwise take
/// one system call per piece, and concurrent writers could interleave them.
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

mod admin;
mod bounded;
mod config;
mod delivery;
mod dispatch;
mod exit;
mod glob;
mod identity;
mod limits;
mod log;
mod message;
mod pipeline;
mod queue;
mod relay;
mod runtime;
mod script;
mod sendmail;
mod spelling;
mod spool;
mod state;
mod stats;
mod status;

use std::ffi::OsString;

fn main() {
    // State files must come out 0660 whatever umask the (untrusted) caller left us.
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o007) };
    identity::clean_env();
    // A caller's `ulimit -f` must make a write fail (EFBIG, handled), not kill the process
    // between the relay's 250 and the log line.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let argv: Vec<OsString> = std::env::args_os().collect();
    let program = argv
        .first()
        .and_then(|p| std::path::Path::new(p).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rest: Vec<String> = argv
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // With mailgate installed as /usr/sbin/sendmail, Debian's mailq and newaliases links point
    // at it too: they are `sendmail -bp` and `sendmail -bi`.
    if program == "mailq" {
        std::process::exit(admin::mailq(None).code());
    }
    if program == "newaliases" {
        std::process::exit(admin::newaliases().code());
    }
    // SAFETY: isatty only inspects the descriptor.
    let stdin_is_tty = unsafe { libc::isatty(0) } == 1;
    let exit = match dispatch::route(
        &program,
        &rest,
        admin::SUBCOMMANDS,
        stdin_is_tty,
        &identity::is_login,
    ) {
        dispatch::Route::Admin => admin::run(&argv),
        dispatch::Route::Sendmail(parsed) => sendmail::run(parsed),
        dispatch::Route::Typo(why) => {
            err!("mailgate: {why}");
            exit::Exit::Usage
        }
    };
    std::process::exit(exit.code());
}
