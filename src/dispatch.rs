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
    Sendmail,
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
        return Route::Sendmail;
    }
    if let Some(first) = first_after_global_options(args)
        && (matches!(first, "--help" | "-h" | "--version" | "-V" | "help")
            || subcommands.contains(&first))
    {
        return Route::Admin;
    }
    let Ok(inv) = args::parse(args) else {
        return Route::Sendmail; // sendmail mode reports the usage error itself
    };
    if inv.mode != args::Mode::Deliver {
        return Route::Sendmail;
    }
    for operand in &inv.recipients {
        if operand.contains('@') || is_login(operand) {
            continue;
        }
        if let Some(near) = closest(operand, subcommands) {
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
    Route::Sendmail
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

/// The candidate within edit distance 2 of `word` (1 for a command of four letters or
/// fewer), the closest first.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        // A short command is near too many short words ("joe" is 2 from "top"): one edit.
        .filter(|(d, c)| *d <= if c.len() <= 4 { 1 } else { 2 })
        .min()
        .map(|(_, c)| c)
}

/// Edit distance over chars where swapping two neighbours is one edit, like a single
/// insertion, deletion or substitution (optimal string alignment): "prot" is 1 from "port".
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBS: &[&str] = crate::admin::SUBCOMMANDS;

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
        assert_eq!(r(&["root"], false), Route::Sendmail);
        assert_eq!(r(&["stats@example.org"], false), Route::Sendmail);
        assert_eq!(r(&["-i", "alice@example.org"], false), Route::Sendmail);
        assert_eq!(r(&["somebody-else"], false), Route::Sendmail);
        assert_eq!(r(&["joe"], false), Route::Sendmail, "2 edits from top");
    }

    #[test]
    fn a_terminal_on_stdin_is_never_a_message() {
        assert!(matches!(r(&["alice@example.org"], true), Route::Typo(_)));
        assert_eq!(r(&["-bp"], true), Route::Sendmail);
        // Under the sendmail name nothing is second-guessed.
        let args = vec!["stats".to_string()];
        assert_eq!(
            route("sendmail", &args, SUBS, true, &|_| false),
            Route::Sendmail
        );
    }

    #[test]
    fn distances() {
        assert_eq!(edit_distance("stats", "status"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("prot", "port"), 1);
        assert_eq!(edit_distance("tpo", "top"), 1);
        assert_eq!(edit_distance("joe", "top"), 2);
        assert_eq!(closest("qeue", SUBS), Some("queue"));
        assert_eq!(closest("alice", SUBS), None);
    }
}
