//! Which interface an invocation means: sendmail(1) or an admin subcommand. Pure: the program
//! name, the arguments, whether stdin is a terminal and a login lookup come in.
//!
//! Under a name containing "sendmail" the binary is purely sendmail. As `mailgate`, the first
//! argument after the global `--config PATH` that names a subcommand selects it. A typo must
//! never send mail: an operand without `@` that is not a login and is close to a subcommand
//! name, or any operand while stdin is a terminal, is a usage error.

use crate::sendmail::args;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Admin,
    /// argv parsed once, here, for sendmail mode to use (a usage error is its to report).
    Sendmail(Result<args::Invocation, args::UsageError>),
    /// A usage error (exit 64) with this message; nothing is read, nothing is sent.
    Typo(String),
}

pub fn route(
    program: &str,
    args: &[String],
    subcommands: &[&str],
    stdin_is_tty: bool,
    is_login: &dyn Fn(&str) -> bool,
) -> Route {
    if program.contains("sendmail") {
        return Route::Sendmail(args::parse(args));
    }
    if let Some(first) = first_after_global_options(args)
        && (matches!(first, "--help" | "-h" | "--version" | "-V" | "help")
            || subcommands.contains(&first))
    {
        return Route::Admin;
    }
    let inv = match args::parse(args) {
        Ok(inv) => inv,
        // sendmail mode reports the usage error itself
        Err(usage) => return Route::Sendmail(Err(usage)),
    };
    if inv.mode != args::Mode::Deliver {
        return Route::Sendmail(Ok(inv));
    }
    for operand in &inv.recipients {
        if operand.contains('@') || is_login(operand) {
            continue;
        }
        if let Some(near) = crate::spelling::closest(operand, subcommands) {
            return Route::Typo(format!(
                "unknown command {operand:?}: did you mean `mailgate {near}`? \
                 (to mail a local user, write {operand}@HOST)"
            ));
        }
    }
    if stdin_is_tty && !inv.recipients.is_empty() {
        return Route::Typo(
            "stdin is a terminal: mailgate reads the message from stdin (pipe it in), \
             or see `mailgate --help` for the admin commands"
                .into(),
        );
    }
    Route::Sendmail(Ok(inv))
}

/// The first argument after `--config PATH` / `--config=PATH`.
fn first_after_global_options(args: &[String]) -> Option<&str> {
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        if arg == "--config" {
            i += 2;
        } else if arg.starts_with("--config=") {
            i += 1;
        } else {
            return Some(arg);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBS: &[&str] = crate::admin::SUBCOMMANDS;

    /// Sendmail mode with argv parsed.
    fn sends(route: Route) -> bool {
        matches!(route, Route::Sendmail(Ok(_)))
    }

    fn r(args: &[&str], tty: bool) -> Route {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        route("mailgate", &args, SUBS, tty, &|l| {
            l == "web1" || l == "root"
        })
    }

    #[test]
    fn subcommands_and_global_options() {
        assert_eq!(r(&["status"], false), Route::Admin);
        assert_eq!(r(&["--config", "/x.toml", "status"], false), Route::Admin);
        assert_eq!(
            r(&["--config=/x.toml", "queue", "list"], false),
            Route::Admin
        );
        assert_eq!(r(&["--help"], false), Route::Admin);
    }

    #[test]
    fn typos_never_send() {
        for typo in [
            &["stats"][..],
            &["statu"],
            &["qeue", "list"],
            &["rest", "web1"],
            &["mtrics"],
            &["tp", "--json"],
        ] {
            match r(typo, false) {
                Route::Typo(why) => assert!(why.contains("did you mean"), "{why}"),
                other => panic!("{typo:?} -> {other:?}"),
            }
        }
        // A local login or a full address is mail, even when it looks like a command.
        assert!(sends(r(&["root"], false)));
        assert!(sends(r(&["stats@example.org"], false)));
        assert!(sends(r(&["-i", "alice@example.org"], false)));
        assert!(sends(r(&["somebody-else"], false)));
        assert!(sends(r(&["joe"], false)), "2 edits from top");
    }

    #[test]
    fn a_terminal_on_stdin_is_never_a_message() {
        assert!(matches!(r(&["alice@example.org"], true), Route::Typo(_)));
        assert!(sends(r(&["-bp"], true)));
        // Under the sendmail name nothing is second-guessed.
        let args = vec!["stats".to_string()];
        assert!(sends(route("sendmail", &args, SUBS, true, &|_| false)));
    }
}
