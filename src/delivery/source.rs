//! Whether the relay's log holds only lines the relay's own processes wrote. Outcomes are
//! evidence that the bounce trigger acts on by itself, so their source matters: a syslog file
//! takes anyone's lines (`logger -t postfix-postfwd/smtp …`), and a Postfix `maillog_file`
//! takes anyone's lines too when the instance's `postlogd` socket is open to the set-gid
//! `postlog` command (Postfix ≥ 3.7: `postlog -c /etc/postfix-postfwd -t …` as any user).
//! The source that only the relay writes: its own `maillog_file`, written by its `postlogd`,
//! with a `setgid_group` that no set-gid program has (its `public/` directory, where the
//! `postlog` socket lives, is closed to everyone else), in a file only root may write.
//! `mailgate-chain` sets that up. Pure: the instance's main.cf text in, a verdict out.

use std::path::Path;

/// Postfix's default `setgid_group`: the group of `postdrop`, `postqueue` and `postlog`.
const POSTDROP: &str = "postdrop";

/// The value of `key` in a main.cf text: the last assignment wins, continuation lines
/// (starting with white space) belong to the line before. `None` when unset.
pub fn main_cf_value(text: &str, key: &str) -> Option<String> {
    let mut value = None;
    let mut current: Option<String> = None;
    for line in text.lines().chain(std::iter::once("")) {
        if line.starts_with([' ', '\t']) && !line.trim().is_empty() {
            if let Some(v) = current.as_mut() {
                if !v.is_empty() {
                    v.push(' ');
                }
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some(v) = current.take() {
            value = Some(v);
        }
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            current = Some(v.trim().to_string());
        }
    }
    value
}

/// Why local users can put lines into `relay_log`, or `None` when only the relay writes it.
/// `main_cf` is the relay instance's main.cf (`None`: unreadable); `mode` the log's mode.
pub fn forgeable(
    relay_log: &Path,
    config_dir: &Path,
    main_cf: Option<&str>,
    mode: Option<u32>,
) -> Option<String> {
    let log = relay_log.display();
    let dir = config_dir.display();
    let Some(main_cf) = main_cf else {
        return Some(format!(
            "cannot read {dir}/main.cf, so whether only the relay writes {log} is unknown ([outcomes] relay_config)"
        ));
    };
    let maillog = main_cf_value(main_cf, "maillog_file").unwrap_or_default();
    if Path::new(&maillog) != relay_log {
        return Some(format!(
            "{log} is not the relay instance's own maillog_file ({dir}: {}): its lines come through syslog, where any local user can log in the relay's name (logger -t postfix-postfwd/smtp); run mailgate-chain again",
            if maillog.is_empty() {
                "unset"
            } else {
                &maillog
            }
        ));
    }
    let group = main_cf_value(main_cf, "setgid_group").unwrap_or_else(|| POSTDROP.into());
    if group == POSTDROP {
        return Some(format!(
            "the relay instance's setgid_group is {POSTDROP}: any local user can write lines into {log} through its postlogd (postlog -c {dir} -t postfix-postfwd/smtp); run mailgate-chain again, which gives the relay a group of its own"
        ));
    }
    if mode.is_some_and(|m| m & 0o022 != 0) {
        return Some(format!(
            "{log} is writable by its group or by everyone (mode {:o})",
            mode.unwrap_or(0) & 0o7777
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAFE: &str = "maillog_file = /var/log/postfix-postfwd.log\n\
                        setgid_group = mailgate-relay\n";

    fn judge(main_cf: Option<&str>, mode: Option<u32>) -> Option<String> {
        forgeable(
            Path::new("/var/log/postfix-postfwd.log"),
            Path::new("/etc/postfix-postfwd"),
            main_cf,
            mode,
        )
    }

    #[test]
    fn values_follow_postfix_rules() {
        let text = "# maillog_file = /nope\nmaillog_file =\n  /var/log/x.log\nother = 1\nsetgid_group = a\nsetgid_group = b\n";
        assert_eq!(
            main_cf_value(text, "maillog_file").as_deref(),
            Some("/var/log/x.log")
        );
        assert_eq!(main_cf_value(text, "setgid_group").as_deref(), Some("b"));
        assert_eq!(main_cf_value(text, "missing"), None);
    }

    #[test]
    fn only_the_relays_own_log_behind_a_closed_postlogd_is_trusted() {
        assert_eq!(judge(Some(SAFE), Some(0o100600)), None);
        let syslog = judge(Some("setgid_group = mailgate-relay\n"), Some(0o100640)).unwrap();
        assert!(syslog.contains("syslog"), "{syslog}");
        let postlog = judge(
            Some("maillog_file = /var/log/postfix-postfwd.log\n"),
            Some(0o100600),
        )
        .unwrap();
        assert!(postlog.contains("postlog"), "{postlog}");
        assert!(
            judge(Some(SAFE), Some(0o100666))
                .unwrap()
                .contains("writable")
        );
        assert!(judge(None, None).unwrap().contains("cannot read"));
    }
}
