//! The calling script: which one it is, as well as mailgate can tell, and whether it looks
//! like an intruder's dropper. Pure; `probe` asks the kernel (the parent's argv, the file's
//! owner, mode and age), `registry` remembers each account's scripts, `rules` turns both into
//! the per-script windows a message is counted in.
//!
//! What each source can tell:
//! - PHP CLI (cron jobs, `php script.php`): the interpreter's argv names the script itself.
//! - PHP-FPM, CGI, mod_php: PHP's `X-PHP-Originating-Script: UID:NAME` names the *file that
//!   called mail()* by its base name only (PHP 8), and the working directory is the requested
//!   script's directory. The path is then the working directory joined with that name: the
//!   script itself for a dropper that sends from the file it was requested as; for honest
//!   code that sends from an included file (WordPress's pluggable.php) a name that is stable
//!   but need not exist there.
//! - Anything else (a shell script, a binary): the working directory alone.
//!
//! A caller can lie about all of it within its own uid (another header, a `chdir`, another
//! argv): a script's name and signs can only ever narrow what the account may send (a hold,
//! a budget, a narrower limit), never widen it past the account's own limits.

pub mod check;
pub mod probe;
pub mod registry;
pub mod rules;

use crate::bounded::cut;
use crate::config::scripts::{Scripts, SignAction};

/// Longest script path kept (bytes): a longer one is cut.
pub const MAX_PATH: usize = 512;

/// Where the script's name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The PHP interpreter's argv: the file itself.
    Cli,
    /// PHP's `X-PHP-Originating-Script`, joined to the working directory.
    Header,
    /// No script known: the working directory.
    Cwd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The path it is known by (the key of limits, the registry and the log).
    pub path: String,
    pub source: Source,
    /// PHP says the mail() call ran in eval()'d (or otherwise runtime-created) code.
    pub eval: bool,
}

/// What PHP writes after a file name for code that has no file of its own.
const EVAL_MARKS: &[&str] = &[
    " : eval()'d code",
    " : runtime-created function",
    " : regexp code",
    " : assert code",
];

/// The script of a message: `header` is `X-PHP-Originating-Script`'s value, `cwd` the
/// caller's working directory, `cli` the script a PHP interpreter up the process chain was
/// started with.
pub fn resolve(header: &str, cwd: &str, cli: Option<&str>) -> Script {
    let named = header
        .split_once(':')
        .filter(|(uid, _)| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
        .map_or(header, |(_, name)| name)
        .trim();
    let eval = EVAL_MARKS.iter().any(|m| named.contains(m));
    // "x.php(12) : eval()'d code" names the file x.php.
    let file = match EVAL_MARKS.iter().find_map(|m| named.find(m)) {
        Some(at) => strip_line(&named[..at]),
        None => named,
    };
    let (path, source) = match (cli, file) {
        (Some(arg), _) => (join(cwd, arg), Source::Cli),
        // `php -r CODE` and `php < file`: no file of their own.
        (None, "" | "Command line code" | "Standard input code") => {
            (format!("{}/", cwd.trim_end_matches('/')), Source::Cwd)
        }
        (None, name) => (join(cwd, name), Source::Header),
    };
    Script {
        path: clean(&path),
        source,
        eval,
    }
}

/// `x.php(12)` → `x.php`.
fn strip_line(name: &str) -> &str {
    match name.rfind('(') {
        Some(i) if name.ends_with(')') => &name[..i],
        _ => name,
    }
}

fn join(cwd: &str, name: &str) -> String {
    let name = name.strip_prefix("./").unwrap_or(name);
    if name.starts_with('/') {
        name.to_string()
    } else {
        format!("{}/{name}", cwd.trim_end_matches('/'))
    }
}

/// No control characters (log lines, the registry's lines), bounded.
fn clean(path: &str) -> String {
    let printable: String = path
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    cut(&printable, MAX_PATH)
}

/// The script a PHP command line runs: `php [options] script.php [args]`. `None` for another
/// program, `php -r CODE`, or standard input.
pub fn php_cli_script(argv: &[String]) -> Option<&str> {
    let program = argv.first()?.rsplit('/').next()?;
    let version = program.strip_prefix("php")?;
    if !version.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None; // php-fpm, php-cgi, phpize…
    }
    let mut args = argv[1..].iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-f" | "--file" => return args.next().map(String::as_str),
            "-r" | "--run" | "-B" | "-R" | "-F" | "-E" | "-a" | "-S" | "-t" => return None,
            "-c" | "-d" | "-z" | "--php-ini" | "--define" | "--zend-extension" => {
                args.next();
            }
            "--" => return args.next().map(String::as_str),
            a if a.starts_with('-') => {}
            script => return Some(script),
        }
    }
    None
}

/// What the file system says about a script file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFacts {
    pub uid: u32,
    pub mode: u32,
    /// The later of its modification and status change (a copy keeps mtime, not ctime).
    pub changed: i64,
}

/// A sign of a dropper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sign {
    /// The script or the working directory is an upload, cache, temporary or hidden directory.
    SuspiciousDir,
    /// The mail() call ran in eval()'d code.
    Eval,
    /// The script the PHP interpreter was started with no longer exists.
    Missing,
    /// The file belongs to another uid than the caller's (and not to root).
    ForeignOwner,
    /// Anyone may write the file.
    WritableByOthers,
    /// The file was created or changed within `[scripts] recent`.
    Recent,
}

impl Sign {
    pub const ALL: [Sign; 6] = [
        Sign::SuspiciousDir,
        Sign::Eval,
        Sign::Missing,
        Sign::ForeignOwner,
        Sign::WritableByOthers,
        Sign::Recent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Sign::SuspiciousDir => "suspicious-dir",
            Sign::Eval => "eval",
            Sign::Missing => "missing",
            Sign::ForeignOwner => "foreign-owner",
            Sign::WritableByOthers => "writable-by-others",
            Sign::Recent => "recent",
        }
    }

    pub fn parse(word: &str) -> Option<Sign> {
        Sign::ALL.into_iter().find(|s| s.as_str() == word)
    }

    pub fn action(self, cfg: &Scripts) -> SignAction {
        match self {
            Sign::SuspiciousDir => cfg.on_suspicious_dir,
            Sign::Eval => cfg.on_eval,
            Sign::Missing => cfg.on_missing,
            Sign::ForeignOwner => cfg.on_foreign_owner,
            Sign::WritableByOthers => cfg.on_writable_by_others,
            Sign::Recent => cfg.on_recent,
        }
    }
}

/// The signs a message's script shows. `facts`: the script file's, `None` when there is no
/// file to look at (no script known, or a name PHP gave that is not in the working
/// directory); `exists` only counts for a script the interpreter names itself. `fpm`: a
/// PHP-FPM worker called: its working directory is the requested script's even when PHP
/// names no script; for any other caller without a script (a shell, cron, an admin in /tmp)
/// the working directory says nothing about a dropper.
pub fn signs(
    script: &Script,
    (cwd, fpm): (&str, bool),
    facts: Option<Result<FileFacts, Missing>>,
    cfg: &Scripts,
    caller_uid: u32,
    now: i64,
) -> Vec<Sign> {
    let mut out = Vec::new();
    let dir = format!("{}/", cwd.trim_end_matches('/'));
    let judged = script.source != Source::Cwd || fpm;
    if judged
        && cfg
            .suspicious_dirs
            .iter()
            .any(|g| crate::glob::glob_match(g, &script.path) || crate::glob::glob_match(g, &dir))
    {
        out.push(Sign::SuspiciousDir);
    }
    if script.eval {
        out.push(Sign::Eval);
    }
    match facts {
        Some(Err(Missing)) if script.source == Source::Cli => out.push(Sign::Missing),
        Some(Ok(f)) => {
            if f.uid != caller_uid && f.uid != 0 {
                out.push(Sign::ForeignOwner);
            }
            if f.mode & 0o002 != 0 {
                out.push(Sign::WritableByOthers);
            }
            if now - f.changed < cfg.recent.secs() as i64 {
                out.push(Sign::Recent);
            }
        }
        _ => {}
    }
    out.retain(|s| s.action(cfg) != SignAction::Off);
    out
}

/// The script file is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missing;

/// `eval,recent`, for the log and the registry.
pub fn describe(signs: &[Sign]) -> String {
    signs
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_cli_names_the_script_the_header_its_file_else_the_directory() {
        let s = resolve("1000:contact.php", "/var/www/shop", None);
        assert_eq!(
            (s.path.as_str(), s.source),
            ("/var/www/shop/contact.php", Source::Header)
        );
        let s = resolve("", "/home/web1/cron/", Some("./job.php"));
        assert_eq!(
            (s.path.as_str(), s.source),
            ("/home/web1/cron/job.php", Source::Cli)
        );
        let s = resolve("1000:x.php", "/x", Some("/opt/abs.php"));
        assert_eq!(s.path, "/opt/abs.php", "the interpreter's argv wins");
        let s = resolve("", "/var/www/shop", None);
        assert_eq!((s.path.as_str(), s.source), ("/var/www/shop/", Source::Cwd));
        let s = resolve("0:Command line code", "/root", None);
        assert_eq!((s.path.as_str(), s.source), ("/root/", Source::Cwd));
    }

    #[test]
    fn eval_marks_are_seen_and_name_their_file() {
        let s = resolve("33:x.php(1) : eval()'d code", "/var/www/up", None);
        assert!(s.eval);
        assert_eq!(s.path, "/var/www/up/x.php");
        assert!(!resolve("33:x.php", "/", None).eval);
        assert!(resolve("33:a.php(3) : runtime-created function", "/", None).eval);
    }

    #[test]
    fn controls_are_replaced_and_long_paths_cut() {
        let s = resolve("1:a\nb\tc.php", "/w", None);
        assert_eq!(s.path, "/w/a?b?c.php");
        let long = "x".repeat(5000);
        assert!(resolve(&format!("1:{long}"), "/w", None).path.len() <= MAX_PATH);
    }

    #[test]
    fn php_command_lines() {
        assert_eq!(php_cli_script(&argv(&["php", "a.php", "x"])), Some("a.php"));
        assert_eq!(
            php_cli_script(&argv(&[
                "/usr/bin/php8.2",
                "-d",
                "x=1",
                "-c",
                "/e",
                "-q",
                "b.php"
            ])),
            Some("b.php")
        );
        assert_eq!(
            php_cli_script(&argv(&["php", "-f", "c.php"])),
            Some("c.php")
        );
        assert_eq!(php_cli_script(&argv(&["php", "-r", "mail(1);"])), None);
        assert_eq!(php_cli_script(&argv(&["php-fpm: pool www"])), None);
        assert_eq!(php_cli_script(&argv(&["php-cgi", "x.php"])), None);
        assert_eq!(php_cli_script(&argv(&["bash", "x.php"])), None);
        assert_eq!(php_cli_script(&argv(&["php"])), None);
    }

    fn facts(uid: u32, mode: u32, changed: i64) -> Option<Result<FileFacts, Missing>> {
        Some(Ok(FileFacts { uid, mode, changed }))
    }

    #[test]
    fn a_dropper_in_uploads_shows_its_signs_an_honest_script_none() {
        let cfg = Scripts::default();
        let now = 1_900_000_000;
        let dropper = resolve("33:x.php", "/var/www/shop/wp-content/uploads/2026/12", None);
        let found = signs(
            &dropper,
            ("/var/www/shop/wp-content/uploads/2026/12", true),
            facts(33, 0o666, now - 60),
            &cfg,
            1000,
            now,
        );
        assert_eq!(
            found,
            [
                Sign::SuspiciousDir,
                Sign::ForeignOwner,
                Sign::WritableByOthers,
                Sign::Recent
            ]
        );
        let honest = resolve("1000:contact.php", "/var/www/shop", None);
        let found = signs(
            &honest,
            ("/var/www/shop", true),
            facts(1000, 0o644, now - 30 * 86400),
            &cfg,
            1000,
            now,
        );
        assert!(found.is_empty(), "{found:?}");
        // A root-owned script (a system tool) is not foreign.
        let found = signs(
            &honest,
            ("/var/www/shop", true),
            facts(0, 0o644, now - 30 * 86400),
            &cfg,
            1000,
            now,
        );
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn missing_counts_only_for_the_interpreters_own_script() {
        let cfg = Scripts::default();
        let cli = resolve("", "/home/u", Some("gone.php"));
        assert_eq!(
            signs(&cli, ("/home/u", true), Some(Err(Missing)), &cfg, 1, 0),
            [Sign::Missing]
        );
        // WordPress sends from wp-includes/pluggable.php while its cwd is the site's root.
        let fpm = resolve("1:pluggable.php", "/var/www/site", None);
        assert!(
            signs(
                &fpm,
                ("/var/www/site", true),
                Some(Err(Missing)),
                &cfg,
                1,
                0
            )
            .is_empty()
        );
    }

    #[test]
    fn hidden_and_temporary_directories_and_signs_turned_off() {
        let mut cfg = Scripts::default();
        for dir in [
            "/var/www/s/.well-known/x",
            "/tmp",
            "/dev/shm/a",
            "/var/www/s/cache/x",
        ] {
            let s = resolve("1:a.php", dir, None);
            assert_eq!(
                signs(&s, (dir, true), None, &cfg, 1, 0),
                [Sign::SuspiciousDir],
                "{dir}"
            );
        }
        // A shell or cron job working in /tmp, no PHP: nothing to judge.
        let shell = resolve("", "/tmp", None);
        assert!(signs(&shell, ("/tmp", false), None, &cfg, 1, 0).is_empty());
        assert_eq!(
            signs(&shell, ("/tmp", true), None, &cfg, 1, 0),
            [Sign::SuspiciousDir]
        );
        cfg.on_suspicious_dir = SignAction::Off;
        let s = resolve("1:a.php", "/tmp", None);
        assert!(signs(&s, ("/tmp", true), None, &cfg, 1, 0).is_empty());
        assert_eq!(describe(&[Sign::Eval, Sign::Recent]), "eval,recent");
        assert_eq!(
            Sign::parse("writable-by-others"),
            Some(Sign::WritableByOthers)
        );
    }
}
