//! The man pages `mailgate(8)` and `mailgate.toml(5)` and the bash completion, generated from
//! the clap definition (`cli.rs`) and the built-in configuration defaults. The generated files
//! are committed under `man/` and `completions/` (install.sh installs them); the tests below
//! fail when they differ from what the code generates, so they cannot drift.
//! Regenerate with `MAILGATE_BLESS=1 cargo test --bin mailgate docs::`.

use crate::admin::cli::Cli;
use crate::config::Config;
use clap::CommandFactory;
use std::fmt::Write as _;

/// What every configuration key means; `man/mailgate.toml.5` lists them with their defaults.
/// A key of the schema without an entry here fails `every_key_is_documented`.
const KEYS: &[(&str, &str)] = &[
    (
        "origin",
        "Domain for bare local parts (root becomes root@origin), the default sender login@origin and the alert address. Default: the first line of /etc/mailname, else the host name.",
    ),
    (
        "hostname",
        "Name in EHLO, Received: and Message-ID:. Default: the kernel's host name, with .localdomain appended when it has no dot (as Postfix's myhostname).",
    ),
    (
        "state_dir",
        "Counters and spools; root:mailgate 0770, subdirectories 2770.",
    ),
    (
        "max_message_size",
        "Largest message accepted, in bytes; larger ones exit 65.",
    ),
    (
        "shared_domains",
        "Domains several accounts may send as. Any other domain named literally in an account's allowed_senders belongs to that account: another account using it as envelope sender or in From: is refused (exit 77).",
    ),
    (
        "relay.host",
        "The SMTP relay: the second Postfix instance that checks postfwd.",
    ),
    ("relay.port", "Its port."),
    (
        "relay.socket",
        "mailgate's own lane into the relay: the Unix socket of an smtpd that only group mailgate can reach (install.sh --with-postfix sets it to /var/spool/postfix-postfwd/mailgate/smtpd). Mail that mailgate counted and decided goes there and does not meet postfwd's limits a second time; host and port are then not used. Default: unset (TCP to host:port).",
    ),
    (
        "relay.timeout",
        "One wall-clock deadline for connect, the whole dialogue and the data of one transaction; past it the message is queued.",
    ),
    (
        "relay.trusted_owners",
        "When the relay is on this host: the logins or uids that may accept the connection (Postfix's smtpd runs as postfix), besides the sender itself. Mail is never handed to another user's listener on the relay port; it stays queued with the reason. Empty: no check.",
    ),
    (
        "smtp.idle_timeout",
        "sendmail -bs: a client that sends nothing for this long gets 421 and the session ends (Postfix's smtpd_timeout).",
    ),
    (
        "identity.account_env",
        "Environment variable that names the account (PHP-FPM env[...]); empty disables it.",
    ),
    (
        "log.file",
        "Append log lines to this file instead of syslog.",
    ),
    (
        "log.syslog_socket",
        "The syslog socket; when it cannot take a line, the line goes to mailgate.log in the state directory.",
    ),
    (
        "state.lock_timeout",
        "How long a sender waits for another sender's lock on the same counter.",
    ),
    (
        "state.on_error",
        "fail-closed (refuse with 71) or fail-open (send uncounted) when a counter file is corrupt.",
    ),
    (
        "store.kind",
        "files (local locked counter files) or redis (one quota across several web servers).",
    ),
    (
        "store.url",
        "The Redis server (redis://HOST:PORT/DB, rediss:// for TLS); with sentinels only its scheme and database count.",
    ),
    (
        "store.username",
        "Redis ACL user (Redis 6 or later); the default user when not set.",
    ),
    (
        "store.password_file",
        "File with the Redis password, readable by group mailgate only.",
    ),
    (
        "store.sentinels",
        "Redis Sentinel: the sentinels (HOST:PORT) asked for the current master, in order.",
    ),
    (
        "store.master_name",
        "The name the sentinels monitor the master under.",
    ),
    (
        "store.cluster",
        "Redis Cluster: some of its nodes (HOST:PORT, rediss://HOST:PORT for TLS); the rest are found.",
    ),
    (
        "store.sentinel_password_file",
        "File with the sentinels' own password, when they require one.",
    ),
    (
        "store.tls_ca_file",
        "CA certificates (PEM) for rediss:// and TLS sentinels; else the public roots built in.",
    ),
    (
        "store.timeout_ms",
        "Redis connect and command timeout, per address and command.",
    ),
    (
        "store.failover_wait_ms",
        "With sentinels: how long a message waits for a new master during a failover.",
    ),
    (
        "store.on_unavailable",
        "queue (keep in defer/ until Redis is back), fail-open or refuse.",
    ),
    (
        "spool.retry",
        "First retry of a queued message; doubles per attempt up to max_retry.",
    ),
    ("spool.max_retry", "Longest retry interval."),
    (
        "spool.max_age",
        "A queued message gives up (failed/, admin mail) after max_age and enough real attempts to span it (max_age / max_retry), so a clock step cannot fail it early.",
    ),
    (
        "spool.account_max_messages",
        "Messages one account may have kept at once (held, deferred and queued); past it new ones are refused with exit 69.",
    ),
    (
        "spool.account_max_bytes",
        "Bytes one account may have kept at once; past it new ones are refused with exit 69.",
    ),
    (
        "spool.min_free_percent",
        "Below this share of free space on the state filesystem no customer message is kept (exit 69); counters, alerts and admin commands go on working.",
    ),
    (
        "spool.customer_release",
        "Customers may release their own held messages with mailgate hold release (listing, showing and deleting them they always may). Default false.",
    ),
    (
        "alerts.admin",
        "Address of alert mails (limit exceeded, account locked, message failed); empty disables them.",
    ),
    (
        "alerts.lock_after",
        "Lock an account after this many refused and held attempts within one window; 0 never locks.",
    ),
    (
        "metrics.textfile",
        "Every queue run writes mailgate metrics to this file (replaced whole) for node_exporter's textfile collector, e.g. /var/lib/prometheus/node-exporter/mailgate.prom. Unset: none.",
    ),
    (
        "spool.customer_release_past_limits",
        "With customer_release: a customer's release may pass the limits the message was held for. Default: it counts like a new message and stays held past them. A locked account's mail is released by the admin only, either way.",
    ),
    (
        "metrics.accounts",
        "Accounts with series of their own in mailgate metrics: the ones with the most messages; all others are summed as account=\"(other)\". 0: only the sum. Keeps the number of series bounded on a server with thousands of accounts.",
    ),
    (
        "defaults.limits",
        "Limits of every account without its own: a list of { window, messages, recipients, action }.",
    ),
    (
        "defaults.limits.window",
        "Length of a sliding window: \"90s\", \"15m\", \"1h\", \"1d\", \"1w\".",
    ),
    ("defaults.limits.messages", "Messages allowed per window."),
    (
        "defaults.limits.recipients",
        "Recipients allowed per window (a 500-Bcc newsletter is 500).",
    ),
    (
        "defaults.limits.action",
        "reject (exit 69), hold (kept for the admin) or defer (kept, released by queue run when there is room).",
    ),
    (
        "defaults.limits.observe",
        "true: only watch this limit. A message over it is counted and logged as \"would have been refused/held/deferred\" (observed=), the admin is alerted once per window, and the mail flows. For rolling a limit out: watch a week of real traffic, then set it to false.",
    ),
    (
        "server.limits",
        "Limits on the sum over all accounts, same form as defaults.limits.",
    ),
    (
        "defaults.script_limits",
        "Narrower limits for some scripts, on top of the account's: [ { script = \"*/contact.php\", window = \"1h\", messages = 20 } ]. script is a glob over the script's path (* crosses /); window, messages, recipients, action and observe as in defaults.limits. Counted exactly, per node, in scripts/ACCOUNT#g<hash>. An account's own script_limits replace these.",
    ),
    (
        "scripts.suspicious_dirs",
        "Globs of directories honest deployments do not send mail from (uploads, caches, temporary and hidden directories of WordPress, Joomla, Drupal, Magento); a script in one, or a caller working in one, shows the sign suspicious-dir.",
    ),
    (
        "scripts.recent",
        "A script file changed within this span shows the sign recent (a plugin update changes every file: observe by default).",
    ),
    (
        "scripts.new_script_budget",
        "Messages all new scripts of an account may send together per new_script_window (a script is new until it has sent for history, or is approved); 0 turns it off.",
    ),
    (
        "scripts.new_script_window",
        "The window of the new-script budget.",
    ),
    (
        "scripts.new_script_action",
        "What a new script over its budget gets: defer (late, never lost), hold or reject.",
    ),
    (
        "scripts.history",
        "How long a script is new after it first sent.",
    ),
    (
        "scripts.learning",
        "For this span after mailgate first saw an account's scripts every script it meets is learnt as known, so that an upgrade does not make every script of a server new. Signs still apply.",
    ),
    (
        "scripts.customer_approve",
        "true: customers may approve and block their own accounts' scripts (mailgate scripts approve|block).",
    ),
    (
        "scripts.on_suspicious_dir",
        "What the sign suspicious-dir does: hold (kept for the admin, who is told once per script), budget (treated as new), notify (the admin is told once per script), observe (logged) or off.",
    ),
    (
        "scripts.on_eval",
        "What the sign eval (mail() ran in eval()'d code) does; default hold.",
    ),
    (
        "scripts.on_missing",
        "What the sign missing (the PHP interpreter's script file is gone) does; default hold.",
    ),
    (
        "scripts.on_foreign_owner",
        "What the sign foreign-owner (another uid than the caller's, and not root, owns the script) does; default notify.",
    ),
    (
        "scripts.on_writable_by_others",
        "What the sign writable-by-others (anyone may write the script) does; default notify.",
    ),
    (
        "scripts.on_recent",
        "What the sign recent (the script changed within scripts.recent) does; default observe.",
    ),
    (
        "outcomes.relay_log",
        "The relay instance's own delivery log: its maillog_file, written by its postlogd (mailgate-chain sets /var/log/postfix-postfwd.log and gives the relay instance a setgid_group of its own, so that no local user can write lines into it). Each queue run reads what was added since the last run and learns, per recipient, delivered, bounced, delayed (deferred) or expired, with the receiving server's reply; only the recipients a message's hand-over record lists count. A syslog file takes any local user's lines (logger): check-config and the queue run's log say so. Unset: outcomes are not learnt and the failure-rate triggers are blind (status says so).",
    ),
    (
        "outcomes.relay_config",
        "The relay instance's configuration directory (default /etc/postfix-postfwd): its main.cf tells whether relay_log is the instance's own maillog_file behind a closed postlogd (check-config and the queue run's log warn otherwise).",
    ),
    (
        "outcomes.syslog_name",
        "The relay instance's syslog_name; only its lines count (default postfix-postfwd).",
    ),
    (
        "outcomes.keep",
        "How long hand-over records (delivery/QUEUEID in the state directory) are kept for mailgate trace (default 7d).",
    ),
    (
        "outcomes.max_read",
        "Bytes of the relay's log one queue run reads at most (default 64 MiB, about 300,000 lines); the next run goes on where it stopped.",
    ),
    (
        "defaults.trigger",
        "The failure-rate trigger of every account without its own (absent: none). Over a sliding window, at least min_failures bounced recipients that are at least percent of those delivered or bounced: the action is taken. Deferrals count neither way; a recipient retried counts once.",
    ),
    (
        "defaults.trigger.window",
        "The trigger's sliding window (default 1h; exact to 5 minutes within the last hour, to the hour beyond, at most 25h).",
    ),
    (
        "defaults.trigger.min_failures",
        "Bounced recipients needed in the window (default 5, cPanel's minimum): a handful of typos never trips it.",
    ),
    (
        "defaults.trigger.percent",
        "Bounced share of delivered + bounced recipients in the window, in percent (default 20; 0 turns the trigger off).",
    ),
    (
        "defaults.trigger.action",
        "hold (new mail is held, as for a locked account; default), lock (held until mailgate unlock) or notify (only the alert and the notice). Never discards.",
    ),
    (
        "defaults.trigger.ends",
        "auto (default): a hold ends by itself once the window's rate is under the threshold again; admin: only mailgate unlock ends it. Held mail stays held either way.",
    ),
    (
        "defaults.trigger.observe",
        "true: counted, logged and alerted (once per window) as what the trigger would have done; the mail flows.",
    ),
    (
        "server.trigger",
        "The same rule over the whole server's outcomes; when it fires, its action is taken on each account that bounced at least min_failures in the window itself.",
    ),
    (
        "accounts.NAME.trigger",
        "The account's own failure-rate trigger, replacing defaults.trigger (same keys).",
    ),
    (
        "accounts.NAME.users",
        "Logins or uids allowed to send as account NAME.",
    ),
    (
        "accounts.NAME.exempt",
        "Counted and logged, never limited (root by default).",
    ),
    (
        "accounts.NAME.limits",
        "The account's own limits, replacing defaults.limits.",
    ),
    (
        "accounts.NAME.allowed_senders",
        "Envelope senders the account may use (\"*@example.com\"); empty allows any.",
    ),
    (
        "accounts.NAME.sender_policy",
        "rewrite (to default_sender) or reject (exit 77) a sender outside allowed_senders.",
    ),
    (
        "accounts.NAME.default_sender",
        "Sender used by rewrite and when the caller names none.",
    ),
    (
        "accounts.NAME.lock_after",
        "Overrides alerts.lock_after for this account.",
    ),
    (
        "accounts.NAME.max_deferred",
        "Deferred messages kept at most; past it new ones are held. Default: the largest message limit of the account's windows.",
    ),
    (
        "accounts.NAME.notify",
        "The customer's addresses: the first time in a window that a limit or a lock stops the account's mail, each gets one notice (null sender, not counted) with what happened, the limit, the top scripts and what to do.",
    ),
];

/// `mailgate(8)`.
pub fn man8() -> String {
    let cmd = Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Manager's Manual");
    man.render_title(&mut out).unwrap();
    man.render_name_section(&mut out).unwrap();
    man.render_synopsis_section(&mut out).unwrap();
    man.render_description_section(&mut out).unwrap();
    let mut text = String::from_utf8(out).unwrap();
    text.push_str(&admin_commands_section(&cmd));
    text.push_str(SENDMAIL_SECTIONS);
    text
}

/// Every subcommand, nested ones included, with its usage and help, from clap.
fn admin_commands_section(cmd: &clap::Command) -> String {
    let mut text = String::from(".SH \"ADMIN COMMANDS\"\n");
    let mut stack: Vec<clap::Command> = cmd.get_subcommands().cloned().collect();
    stack.reverse();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut depth_of: Vec<usize> = vec![0; stack.len()];
    while let Some(mut sub) = stack.pop() {
        let depth = depth_of.pop().unwrap_or(0);
        path.truncate(depth);
        path.push((depth, sub.get_name().to_string()));
        let children: Vec<clap::Command> = sub.get_subcommands().cloned().collect();
        if children.is_empty() {
            let full = path
                .iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            let usage = sub
                .render_usage()
                .to_string()
                .trim_start_matches("Usage: ")
                .replacen(sub.get_name(), &full, 1);
            let _ = writeln!(text, ".TP\n\\fBmailgate {}\\fR", roff_escape(usage.trim()));
            if let Some(about) = sub.get_about() {
                let _ = writeln!(text, "{}", roff_escape(&about.to_string()));
            }
        }
        for child in children.into_iter().rev() {
            stack.push(child);
            depth_of.push(depth + 1);
        }
    }
    text
}

fn roff_escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    // A line starting with . or ' would be a request.
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

const SENDMAIL_SECTIONS: &str = r#".SH "SENDMAIL INTERFACE"
Under a name containing \fBsendmail\fR (\fB/usr/sbin/sendmail\fR after \fBinstall.sh \-\-as\-sendmail\fR,
or \fB/usr/lib/mailgate/sendmail\fR) mailgate is sendmail(1): it reads a message on standard
input, counts it against the caller's account and relays it, keeps it, or refuses it.
Invoked as \fBmailgate\fR, an operand close to an admin command, or any operand while
standard input is a terminal, is a usage error (64) rather than mail.
.TP
\fB\-t\fR
Add the recipients of To:, Cc: and Bcc: (or the Resent\- ones).
.TP
\fB\-i\fR, \fB\-oi\fR
A line with a single dot does not end the message.
.TP
\fB\-f\fR \fIsender\fR, \fB\-r\fR \fIsender\fR
Envelope sender (subject to the account's allowed_senders).
.TP
\fB\-F\fR \fIname\fR
Full name for a From: header that mailgate adds (default: the password file's GECOS field).
.TP
\fB\-bs\fR
SMTP on standard input and output (Symfony Mailer, Laravel).
.TP
\fB\-bp\fR, \fBmailq\fR
List queued, deferred and held mail in Postfix's mailq layout (a customer sees only their own).
.TP
\fB\-q\fR
Try every queued message now (as \fBmailgate queue flush\fR).
.TP
\fB\-bi\fR, \fB\-I\fR, \fBnewaliases\fR
Print that aliases are the relay's business; exit 0.
.TP
\fB\-\-account\fR \fIname\fR
The account to count against (from the admin's sendmail_path; given twice: 64).
.TP
\fB\-\-config\fR \fIpath\fR
Configuration file (ignored when running setgid).
.PP
Other sendmail options (\-B, \-N, \-R, \-V, \-e, \-h, \-o..., \-C, \-X) are accepted and
ignored; files named by \-C or \-X are never opened.
.SH "EXIT STATUS"
.TP
0
The relay took the message, or it was kept in a spool on disk.
.TP
64
Usage error.
.TP
65
The message is unusable (for example larger than max_message_size).
.TP
67
A recipient or sender address is malformed.
.TP
69
Refused: a limit with action reject, or the relay refused the message for good.
.TP
70, 71, 74
Internal error, system error (a corrupt counter, a lock deadline), I/O error.
.TP
77
Not permitted: account binding, sender policy, locked account, admin command as a customer.
.TP
78
Configuration error (\fBmailgate check\-config\fR names file and line).
.PP
mailgate never exits 75: PHP 8.5's mail() reports 75 as success.
.SH FILES
.TP
\fB/etc/mailgate/mailgate.toml\fR
The configuration, see mailgate.toml(5).
.TP
\fB/etc/mailgate/accounts.d/NAME.toml\fR
One account per file (the keys of [accounts.NAME] without the header), as a hosting panel
writes them: replace a file by writing a new one beside it and renaming it over the old.
A message reads only its own account's file.
.TP
\fB/var/lib/mailgate/\fR
Counters (accounts/, server), spools (queue/, defer/, hold/, failed/, tmp/), the
per\-account statistics behind \fBmailgate top\fR and \fBmailgate metrics\fR (stats/, two
copies of at most 96 KiB per account, and .backlog\-ACCOUNT beside them for messages counted
while another process held that file), each account's share of the spools (spooled/), the index of the sender
domains that accounts.d/ files own (domains.index, rebuilt whenever accounts.d/ changes);
mailgate.log when syslog cannot take a line.
.SH "SEE ALSO"
mailgate.toml(5), sendmail(1), postfix(1), postfwd(8)
"#;

/// `mailgate.toml(5)`: every key with its built-in default.
pub fn man5() -> String {
    let mut text = String::from(
        ".TH MAILGATE.TOML 5 \"\" \"mailgate\" \"File Formats Manual\"\n\
         .SH NAME\nmailgate.toml \\- mailgate's configuration\n\
         .SH DESCRIPTION\n\
         /etc/mailgate/mailgate.toml is a TOML file. Every key is optional; a missing key has \
         the default shown. \\fBmailgate check\\-config\\fR reports every error with its line.\n\
         Accounts may also live one per file in /etc/mailgate/accounts.d/NAME.toml, each \
         holding the keys of accounts.NAME below without the table header.\n\
         .SH KEYS\n",
    );
    let defaults = defaults();
    for (key, meaning) in KEYS {
        let _ = writeln!(text, ".TP\n\\fB{}\\fR", roff_escape(key));
        let default = defaults
            .iter()
            .find(|(k, _)| k == key)
            .map_or("(not set)".to_string(), |(_, v)| v.clone());
        let _ = writeln!(
            text,
            "{}\n.br\nDefault: {}",
            roff_escape(meaning),
            roff_escape(&default)
        );
    }
    text.push_str(".SH EXAMPLE\n.nf\n");
    text.push_str(
        &roff_escape(include_str!("../../mailgate.toml.example")).replace("\n.", "\n\\&."),
    );
    text.push_str(".fi\n.SH \"SEE ALSO\"\nmailgate(8)\n");
    text
}

/// The built-in defaults as (key path, TOML value), with `accounts.root` shown as
/// `accounts.NAME` and the limit fields under `defaults.limits.*`.
fn defaults() -> Vec<(String, String)> {
    let value = toml::Value::try_from(Config::default()).unwrap();
    let mut out = Vec::new();
    flatten("", &value, &mut out);
    out.into_iter()
        .map(|(k, v)| (k.replacen("accounts.root.", "accounts.NAME.", 1), v))
        .collect()
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        toml::Value::Array(items)
            if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
        {
            out.push((prefix.to_string(), value.to_string()));
            for item in items {
                flatten(prefix, item, out);
            }
        }
        other => {
            if !out.iter().any(|(k, _)| k == prefix) {
                out.push((prefix.to_string(), other.to_string()));
            }
        }
    }
}

/// The bash completion for `mailgate`.
pub fn bash_completion() -> String {
    let mut out = Vec::new();
    clap_complete::generate(
        clap_complete::Shell::Bash,
        &mut Cli::command(),
        "mailgate",
        &mut out,
    );
    String::from_utf8(out).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed file must be what the code generates (MAILGATE_BLESS=1 rewrites it).
    fn matches_committed(relative: &str, generated: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
        if std::env::var_os("MAILGATE_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{relative} is out of date: run MAILGATE_BLESS=1 cargo test --bin mailgate docs::"
        );
    }

    #[test]
    fn man_page_8_is_current() {
        let page = man8();
        for needle in [
            "queue flush",
            "hold release",
            "check\\-config",
            "EXIT STATUS",
            "\\-bp",
        ] {
            assert!(page.contains(needle), "{needle}");
        }
        matches_committed("man/mailgate.8", &page);
    }

    #[test]
    fn man_page_5_is_current() {
        matches_committed("man/mailgate.toml.5", &man5());
    }

    #[test]
    fn bash_completion_is_current() {
        matches_committed("completions/mailgate.bash", &bash_completion());
    }

    #[test]
    fn every_key_is_documented() {
        for (key, _) in defaults() {
            // [server] shares the form of [defaults]; check-config refuses its script_limits.
            let key = key
                .replace("server.limits.", "defaults.limits.")
                .replace("server.script_limits", "defaults.script_limits");
            assert!(
                KEYS.iter().any(|(k, _)| *k == key),
                "configuration key {key} has no entry in docs::KEYS"
            );
        }
    }
}
