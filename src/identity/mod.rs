//! Who is sending: the real uid (the only truth), its login name, and the account the message
//! counts against. `USER`, `LOGNAME` and `X-PHP-Originating-Script` are never trusted.

mod passwd;

use crate::config::{Config, UserRef};
use crate::exit::{Exit, Failure};
use passwd::Key;

/// The caller as the kernel knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// Login name from the password database.
    pub login: String,
    /// Full name from the password file's GECOS field, for a From: that mailgate adds.
    pub full_name: Option<String>,
}

/// Where the account name came from, for the log and for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountSource {
    Option,
    Env,
    Login,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub source: AccountSource,
}

impl Caller {
    /// The real uid and its entry. A uid no database knows is refused, as Postfix's sendmail
    /// refuses it (EX_OSERR, "no login name found for user ID N"): mailgate would not know
    /// whose mail it is, and a lookup that fails (an NSS module the caller starved of file
    /// descriptors) must not become a fresh account with a fresh budget.
    pub fn current() -> Result<Caller, Failure> {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        match passwd::lookup(Key::Uid(uid)) {
            Ok(Some(entry)) => Ok(Caller {
                uid,
                full_name: full_name_from_gecos(&entry.gecos, &entry.name),
                login: entry.name,
            }),
            Ok(None) => Err(Failure::new(
                Exit::OsErr,
                format!(
                    "no login name found for user ID {uid}: neither /etc/passwd nor the \
                     system's NSS (getent passwd {uid}) knows it; mail is not sent"
                ),
            )),
            Err(passwd::Unanswered(why)) => Err(Failure::new(
                Exit::OsErr,
                format!("cannot tell who user ID {uid} is ({why}); mail is not sent"),
            )),
        }
    }
}

/// The caller's environment as it was when mailgate started. Under setgid the process
/// environment is emptied at once (`clean_env`), like Postfix's postdrop does, so that no
/// library reads a caller-chosen `TZ`, `LANG` or `*_PATH`; mailgate itself reads only the
/// account variable, from this snapshot.
static CALLER_ENV: std::sync::OnceLock<Vec<(std::ffi::OsString, std::ffi::OsString)>> =
    std::sync::OnceLock::new();

/// Empty the environment when running setgid; keep a private snapshot for `caller_env`.
pub fn clean_env() {
    let snapshot: Vec<_> = std::env::vars_os().collect();
    if is_privileged() {
        for (key, _) in &snapshot {
            // SAFETY: called first thing in main, before any thread exists.
            unsafe { std::env::remove_var(key) };
        }
    }
    let _ = CALLER_ENV.set(snapshot);
}

/// A variable of the caller's environment (the account variable that the config names).
pub fn caller_env(name: &str) -> Option<String> {
    match CALLER_ENV.get() {
        Some(env) => env
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.to_str().map(str::to_string)),
        None => std::env::var(name).ok(),
    }
}

/// Where the mail comes from, as the kernel tells it: the caller's working directory (PHP-FPM
/// and CGI run a script from its own directory) and, when a PHP-FPM worker called us
/// (`php-fpm: pool NAME` as its process title, up the chain of parents), the pool. A caller
/// can only misstate these within its own uid; they are logged, never used for identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallSite {
    pub cwd: String,
    pub pool: Option<String>,
    /// The script a PHP interpreter up the chain was started with (`php job.php`), as its
    /// argv gave it.
    pub php_script: Option<String>,
}

impl CallSite {
    pub fn of_this_process() -> CallSite {
        let cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        // PHP's mail() runs `sh -c sendmail_path`: the worker is the parent or grandparent.
        // Two levels at most, so that the hot path reads at most three small /proc files.
        // SAFETY: getppid cannot fail.
        let mut parent = unsafe { libc::getppid() } as u32;
        let mut pool = None;
        let mut php_script = None;
        for level in 0..2 {
            if parent <= 1 {
                break;
            }
            let title = read_proc(parent, "cmdline");
            let argv: Vec<String> = String::from_utf8_lossy(&title)
                .split('\0')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
            if let Some(script) = crate::script::php_cli_script(&argv) {
                php_script = Some(script.to_string());
                break;
            }
            if let Some(name) = fpm_pool(&title) {
                // Any user can start PHP-FPM's binary with a pool name of their choosing; the
                // system's pools are the workers of a master that runs as root.
                if parent_pid(parent).is_some_and(is_root_fpm_master) {
                    pool = Some(name);
                }
                break;
            }
            if level == 1 {
                break;
            }
            match parent_pid(parent) {
                Some(p) => parent = p,
                None => break,
            }
        }
        CallSite {
            cwd,
            pool,
            php_script,
        }
    }
}

/// The first `PROC_READ_MAX` bytes of `/proc/PID/FILE`, empty when it cannot be read. A
/// caller chooses its own command line, up to the kernel's 2 MiB: mailgate reads no more than
/// the process title and the first arguments it looks at, in one read (`fs::read` would ask
/// for the size first and then read in growing steps: six system calls for a 300-byte file).
fn read_proc(pid: u32, file: &str) -> Vec<u8> {
    let mut content = Vec::with_capacity(PROC_READ_MAX);
    use std::io::Read;
    if let Ok(f) = std::fs::File::open(format!("/proc/{pid}/{file}")) {
        let _ = f.take(PROC_READ_MAX as u64).read_to_end(&mut content);
    }
    content
}

/// More than a process title, a PHP command line's script argument or `/proc/PID/stat`.
const PROC_READ_MAX: usize = 8192;

/// Whether `pid` is a PHP-FPM master process whose real uid is root.
fn is_root_fpm_master(pid: u32) -> bool {
    let title = read_proc(pid, "cmdline");
    if !title.starts_with(b"php-fpm: master process") {
        return false;
    }
    let status = read_proc(pid, "status");
    String::from_utf8_lossy(&status)
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        == Some("0")
}

/// The parent of `pid` from /proc/PID/stat (the field after the parenthesised name).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = read_proc(pid, "stat");
    let stat = std::str::from_utf8(&stat).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// `php-fpm: pool example.com` (PHP-FPM's worker title; NUL or spaces may pad it).
pub fn fpm_pool(cmdline: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(cmdline);
    let title = text.split('\0').next()?.trim();
    let name = title.strip_prefix("php-fpm: pool ")?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// True when the kernel gave us privileges the caller does not have (setgid `mailgate`).
/// Every caller-controlled override is ignored then.
///
/// Asked once per process: the ids do not change while mailgate runs.
pub fn is_privileged() -> bool {
    static PRIVILEGED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: these getters cannot fail.
    *PRIVILEGED.get_or_init(|| unsafe {
        libc::getegid() != libc::getgid() || libc::geteuid() != libc::getuid()
    })
}

/// Whether `name` is a login in the password database (a bare recipient such as `root`).
pub fn is_login(name: &str) -> bool {
    uid_of(name).is_some()
}

/// The uids of `users` that the password database knows (numeric ones as they are), with
/// one read of it for all the names.
pub fn uids_of(users: &[UserRef]) -> Vec<u32> {
    let keys: Vec<Key> = users
        .iter()
        .filter_map(|u| match u {
            UserRef::Name(name) => Some(Key::Name(name)),
            UserRef::Uid(_) => None,
        })
        .collect();
    let mut by_name = passwd::lookup_all(&keys).into_iter();
    users
        .iter()
        .filter_map(|u| match u {
            UserRef::Uid(uid) => Some(*uid),
            UserRef::Name(_) => by_name.next()?.ok().flatten().map(|e| e.uid),
        })
        .collect()
}

/// The uid of login `name` in the password database (`None` also when it cannot be asked:
/// the callers treat an unknown name as no uid at all).
pub fn uid_of(name: &str) -> Option<u32> {
    passwd::lookup(Key::Name(name))
        .ok()
        .flatten()
        .map(|e| e.uid)
}

/// The full name in a GECOS field as Postfix reads it: up to the first comma, `&` standing
/// for the login name with its first letter capitalised; control characters dropped.
pub fn full_name_from_gecos(gecos: &str, login: &str) -> Option<String> {
    let first = gecos.split(',').next().unwrap_or("");
    let mut capitalised = login.chars();
    let login_cap: String = capitalised
        .next()
        .map(|c| c.to_uppercase().chain(capitalised).collect())
        .unwrap_or_default();
    let name: String = first
        .replace('&', &login_cap)
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// The account name the caller asks for, before any check: `--account`, else the configured
/// environment variable, else the login name. Its `accounts.d` file is loaded before
/// `resolve_account` judges it.
pub fn requested_account(
    caller: &Caller,
    option: Option<&str>,
    env_value: Option<&str>,
) -> (String, AccountSource) {
    match (option, env_value.filter(|v| !v.is_empty())) {
        (Some(n), _) => (n.to_string(), AccountSource::Option),
        (None, Some(n)) => (n.to_string(), AccountSource::Env),
        (None, None) => (caller.login.clone(), AccountSource::Login),
    }
}

/// The account: `--account`, else the configured environment variable, else the login name;
/// a named account must be declared with the caller among its users (root may use any).
pub fn resolve_account(
    caller: &Caller,
    option: Option<&str>,
    env_value: Option<&str>,
    config: &Config,
) -> Result<Account, Failure> {
    let (name, source) = requested_account(caller, option, env_value);
    let how = match source {
        AccountSource::Option => "--account".to_string(),
        AccountSource::Env => format!("${}", config.identity.account_env),
        AccountSource::Login => "login name".to_string(),
    };
    crate::config::validate_account_name(&name)
        .map_err(|why| Failure::new(Exit::NoPerm, format!("invalid account from {how}: {why}")))?;
    if source == AccountSource::Login || caller.uid == 0 || name == caller.login {
        return Ok(Account { name, source });
    }
    let Some(declared) = config.accounts.get(&name) else {
        return Err(Failure::new(
            Exit::NoPerm,
            format!(
                "account {name:?} (from {how}) is not declared; add [accounts.\"{name}\"] with users = [\"{}\"] to the config",
                caller.login
            ),
        ));
    };
    let allowed = declared.users.iter().any(|u| match u {
        UserRef::Uid(uid) => *uid == caller.uid,
        UserRef::Name(n) => *n == caller.login,
    });
    if !allowed {
        return Err(Failure::new(
            Exit::NoPerm,
            format!(
                "user {} (uid {}) may not send as account {name:?}; add \"{}\" to users of [accounts.\"{name}\"]",
                caller.login, caller.uid, caller.login
            ),
        ));
    }
    Ok(Account { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Account as AccountConfig;

    fn caller(uid: u32, login: &str) -> Caller {
        Caller {
            uid,
            login: login.into(),
            full_name: None,
        }
    }

    fn config_with(name: &str, users: Vec<UserRef>) -> Config {
        let mut c = Config::default();
        c.accounts.insert(
            name.into(),
            AccountConfig {
                users,
                ..AccountConfig::default()
            },
        );
        c
    }

    #[test]
    fn names_are_validated() {
        for bad in [
            "",
            "a/b",
            "..",
            "a..b",
            ".hidden",
            "a\nb",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(
                crate::config::validate_account_name(bad).is_err(),
                "{bad:?}"
            );
        }
        for good in ["example.com", "web1", "user@example.com", "a-b_c+d"] {
            assert!(
                crate::config::validate_account_name(good).is_ok(),
                "{good:?}"
            );
        }
    }

    #[test]
    fn php_fpm_pool_titles() {
        assert_eq!(
            fpm_pool(b"php-fpm: pool example.com                \0").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            fpm_pool(b"php-fpm: master process (/etc/php/8.2/fpm/php-fpm.conf)"),
            None
        );
        assert_eq!(fpm_pool(b"/bin/sh\0-c\0sendmail -t -i\0"), None);
        assert_eq!(fpm_pool(b""), None);
        // This test's own parents are no FPM workers.
        assert_eq!(CallSite::of_this_process().pool, None);
        assert!(!CallSite::of_this_process().cwd.is_empty());
    }

    #[test]
    fn gecos_full_names() {
        assert_eq!(
            full_name_from_gecos("Jane Doe,,,", "jane").as_deref(),
            Some("Jane Doe")
        );
        assert_eq!(
            full_name_from_gecos("& the admin", "root").as_deref(),
            Some("Root the admin")
        );
        assert_eq!(full_name_from_gecos(",,,", "web1"), None);
        assert_eq!(full_name_from_gecos("", "web1"), None);
        assert_eq!(
            full_name_from_gecos("Evil\r\nBcc: x@y", "e").as_deref(),
            Some("EvilBcc: x@y")
        );
    }

    #[test]
    fn precedence_option_env_login() {
        let c = config_with("example.com", vec![UserRef::Name("web1".into())]);
        let me = caller(1001, "web1");
        let a = resolve_account(&me, Some("example.com"), Some("other"), &c).unwrap();
        assert_eq!(
            (a.name.as_str(), a.source),
            ("example.com", AccountSource::Option)
        );
        let b = resolve_account(&me, None, Some("example.com"), &c).unwrap();
        assert_eq!(b.source, AccountSource::Env);
        let d = resolve_account(&me, None, Some(""), &c).unwrap();
        assert_eq!((d.name.as_str(), d.source), ("web1", AccountSource::Login));
    }

    #[test]
    fn binding_is_enforced() {
        let c = config_with("example.com", vec![UserRef::Uid(1001)]);
        assert!(resolve_account(&caller(1001, "web1"), Some("example.com"), None, &c).is_ok());
        let e = resolve_account(&caller(1002, "web2"), Some("example.com"), None, &c).unwrap_err();
        assert_eq!(e.exit, Exit::NoPerm);
        assert!(e.message.contains("web2"), "{e}");
        let e =
            resolve_account(&caller(1002, "web2"), Some("undeclared.org"), None, &c).unwrap_err();
        assert!(e.message.contains("not declared"), "{e}");
        assert!(resolve_account(&caller(0, "root"), Some("undeclared.org"), None, &c).is_ok());
        let e = resolve_account(&caller(1001, "web1"), Some("../etc"), None, &c).unwrap_err();
        assert_eq!(e.exit, Exit::NoPerm);
    }
}
