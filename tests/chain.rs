//! The whole system on this machine, end to end: `install.sh --with-postfix --php --as-sendmail`
//! sets up the seed's two Postfix instances and postfwd for real; PHP (CLI and FPM through
//! cgi-fcgi) sends as two real users; outbound mail goes to a local smtp-sink. Needs root and
//! changes the system (it uninstalls again at the end), so it is one test that runs alone.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

const USERS: [&str; 2] = ["mgchain1", "mgchain2"];
const LOGDIR: &str = "/var/log/mailgate-chain-test";
/// postfwd's policy socket, in a directory only postfw and group postfix may enter.
const POLICY: &str = "/var/lib/postfwd/policy";
/// mailgate's own lane into the relay instance, in a directory only group mailgate may enter.
const LANE: &str = "/var/spool/postfix-postfwd/mailgate/smtpd";

fn install(sink_port: u16, extra: &str) -> String {
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = must(&format!(
        "{repo}/install.sh --binary {BIN} --with-postfix --php --as-sendmail --relayhost '[127.0.0.1]:{sink_port}' \
         --postfix-log {LOGDIR} --postfwd-hourly 5 {extra} 2>&1"
    ));
    wait_policy();
    out
}

/// README's install from source: the Debian package (built by install.sh with cargo deb),
/// then mailgate-chain.
fn install_packaged(sink_port: u16) -> String {
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = must(&format!(
        "{repo}/install.sh --with-postfix --php --relayhost '[127.0.0.1]:{sink_port}' \
         --postfix-log {LOGDIR} --postfwd-hourly 5 2>&1"
    ));
    wait_policy();
    out
}

/// The cron daemon stopped for a test (a host where cron is installed but not running), and
/// started again afterwards if it ran before.
struct CronStopped {
    ran: bool,
}

impl CronStopped {
    fn take() -> CronStopped {
        let ran = sh("pgrep -x cron").status.success();
        if ran {
            let _ = sh("/etc/init.d/cron stop >/dev/null 2>&1 || pkill -x cron");
            wait_for("cron to stop", || {
                (!sh("pgrep -x cron").status.success()).then_some(())
            });
        }
        assert!(
            Path::new("/usr/sbin/cron").exists(),
            "the cron package must be installed for this test (.ci/run installs it)"
        );
        CronStopped { ran }
    }
}

impl Drop for CronStopped {
    fn drop(&mut self) {
        let running = sh("pgrep -x cron").status.success();
        if self.ran && !running {
            let _ = sh("/etc/init.d/cron start >/dev/null 2>&1");
        } else if !self.ran && running {
            let _ = sh("/etc/init.d/cron stop >/dev/null 2>&1 || pkill -x cron");
            // Gone before the next test looks: a cron still exiting would pass for running.
            wait_for("cron to stop", || {
                (!sh("pgrep -x cron").status.success()).then_some(())
            });
        }
    }
}

/// postfwd answers policy requests (after a start or reload its workers take a moment).
fn wait_policy() {
    wait_for("postfwd to answer a policy request", || {
        let mut s = std::os::unix::net::UnixStream::connect(POLICY).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .ok()?;
        s.write_all(b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nclient_address=127.0.0.2\nsender=probe@example.org\nrecipient=probe@example.net\n\n").ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        line.starts_with("action=").then_some(())
    });
}

fn php_as(user: &str, code: &str) -> String {
    let o = as_user(user, &[], "php", &["-r", code], b"");
    assert!(o.status.success(), "php as {user}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn postfix_log() -> String {
    let a = std::fs::read_to_string(format!("{LOGDIR}/postfix-postfwd.log")).unwrap_or_default();
    let b = std::fs::read_to_string(format!("{LOGDIR}/postfix.log")).unwrap_or_default();
    a + &b
}

/// One SMTP transaction straight to the relay, bypassing mailgate; returns the RCPT reply.
fn smtp_direct(sender: &str) -> String {
    let stream = TcpStream::connect(("127.0.0.1", 825)).expect("the relay listens on 825");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut input = BufReader::new(stream);
    let mut reply = || {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            input.read_line(&mut line).unwrap();
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return text;
            }
        }
    };
    reply();
    let mut send = |cmd: &str| {
        out.write_all(cmd.as_bytes()).unwrap();
        out.write_all(b"\r\n").unwrap();
    };
    send("EHLO bypass");
    reply();
    send(&format!("MAIL FROM:<{sender}>"));
    reply();
    send("RCPT TO:<victim@example.net>");
    let rcpt = reply();
    if rcpt.starts_with('2') {
        send("DATA");
        reply();
        send("Subject: bypass\r\n\r\nx\r\n.");
        reply();
    }
    send("QUIT");
    rcpt
}

fn wait_log(needle: &str) -> String {
    wait_for(&format!("{needle:?} in the Postfix log"), || {
        let log = postfix_log();
        log.contains(needle).then_some(log)
    })
}

/// php-fpm's master stops its workers on SIGTERM (SIGKILL would orphan them).
struct Fpm(std::process::Child);

impl Drop for Fpm {
    fn drop(&mut self) {
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// What the chain test finds before it changes anything, and puts back when it ends, pass or
/// fail: it refuses to run over a real installation, and removes what it created. It starts
/// each test with a fresh Postfix log directory and the two test users.
struct Host {
    group_existed: bool,
}

/// The chain test and the prefix test both create and remove group mailgate: one at a time.
static SYSTEM: std::sync::Mutex<()> = std::sync::Mutex::new(());

const MAILBOXES: [&str; 3] = ["/var/mail/root", "/var/mail/mgchain1", "/var/mail/mgchain2"];

impl Host {
    fn take_over() -> Host {
        for path in ["/usr/sbin/mailgate", "/etc/mailgate", "/var/lib/mailgate"] {
            assert!(
                !Path::new(path).exists(),
                "{path} exists: refusing to run the chain test over a real mailgate installation"
            );
        }
        for u in USERS {
            assert!(
                !sh(&format!("id {u}")).status.success(),
                "user {u} exists: an earlier run did not clean up, or it is a real user"
            );
        }
        let group_existed = sh("getent group mailgate").status.success();
        // The test reads mailboxes from their start, so a message of an earlier run (or the
        // host's own mail) never counts. Each is moved aside beside itself (a rename keeps
        // its mode, owner and contents) and moved back at the end; a run killed before its
        // end left the saved one, which is put back first.
        for m in MAILBOXES {
            restore_mailbox(m);
            let saved = format!("{m}{SAVED}");
            if std::fs::rename(m, &saved).is_err() {
                std::fs::write(format!("{m}{ABSENT}"), b"").unwrap();
            }
        }
        // A fresh log directory: lines of an earlier run must not count.
        let _ = std::fs::remove_dir_all(LOGDIR);
        std::fs::create_dir_all(LOGDIR).unwrap();
        let host = Host { group_existed };
        for u in USERS {
            must(&format!(
                "useradd --no-create-home --shell /usr/sbin/nologin {u}"
            ));
        }
        host
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let repo = env!("CARGO_MANIFEST_DIR");
        // Held test mail in the relay instance would keep --uninstall from destroying it.
        let _ = sh("postsuper -c /etc/postfix-postfwd -d ALL >/dev/null 2>&1");
        if Path::new("/usr/sbin/mailgate").exists() {
            let _ = sh(&format!("{repo}/install.sh --uninstall >/dev/null 2>&1"));
        }
        // The package installed by install_packaged: removed by --uninstall, purged here.
        let _ = sh("dpkg --purge mailgate >/dev/null 2>&1");
        // The test created these (take_over checked they were absent).
        let _ = std::fs::remove_dir_all("/etc/mailgate");
        let _ = std::fs::remove_dir_all("/var/lib/mailgate");
        let _ = std::fs::remove_dir_all(LOGDIR);
        for u in USERS {
            let _ = sh(&format!("userdel {u} >/dev/null 2>&1"));
        }
        if !self.group_existed {
            let _ = sh("groupdel mailgate >/dev/null 2>&1");
        }
        for m in MAILBOXES {
            restore_mailbox(m);
        }
    }
}

/// Suffixes of a mailbox moved aside by the chain test, and of the marker that it had none.
const SAVED: &str = ".mailgate-chain-test";
const ABSENT: &str = ".mailgate-chain-test-absent";

/// Put a mailbox back as it was before a chain test (also after an interrupted one).
fn restore_mailbox(m: &str) {
    let (saved, absent) = (format!("{m}{SAVED}"), format!("{m}{ABSENT}"));
    if Path::new(&saved).exists() {
        let _ = std::fs::rename(&saved, m);
    } else if Path::new(&absent).exists() {
        let _ = std::fs::remove_file(m);
    }
    let _ = std::fs::remove_file(&absent);
}

/// TCP listeners with their processes (`ss -ltnp`), one "address process" per line.
fn listeners() -> std::collections::BTreeSet<String> {
    must("ss -Hltnp")
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let process = l.split("((\"").nth(1)?.split('"').next()?;
            Some(format!("{} {process}", cols.get(3)?))
        })
        .collect()
}

fn mailbox(user: &str) -> String {
    std::fs::read_to_string(format!("/var/mail/{user}")).unwrap_or_default()
}

/// Wait until `user`'s mailbox holds a message containing `needle`.
fn wait_mailbox(user: &str, needle: &str) -> String {
    wait_for(&format!("{needle:?} in /var/mail/{user}"), || {
        let m = mailbox(user);
        m.contains(needle).then_some(m)
    })
}

#[test]
fn php_to_postfwd_chain_end_to_end() {
    assert!(
        is_root(),
        "this test installs the system chain; run it as root (.ci/run)"
    );
    for tool in [
        "postmulti",
        "postfwd",
        "php",
        "php-fpm8.2",
        "cgi-fcgi",
        "dpkg-divert",
        "ss",
        "pgrep",
    ] {
        assert!(
            sh(&format!("command -v {tool}")).status.success(),
            "{tool} is missing (.ci/run installs it)"
        );
    }
    let _one_at_a_time = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
    let _host = Host::take_over();
    let before_main_cf = std::fs::read("/etc/postfix/main.cf").ok();
    let before_listeners = listeners();
    let cron_ran_before = sh("pgrep -x cron").status.success();
    let sink = Sink::start(&[]);

    // Install; the second run is a no-op.
    let first = install(sink.port, "--postfwd-action reject");
    assert!(first.contains("install.sh: done:"), "{first}");
    // The queue runner is in place and its daemon runs (a bare host has no cron daemon).
    assert!(first.contains("install.sh: queue runner: "), "{first}");
    if !Path::new("/run/systemd/system").exists() {
        assert!(Path::new("/etc/cron.d/mailgate").exists());
        assert!(
            sh("pgrep -x cron").status.success(),
            "install.sh said it set up cron, but no cron daemon runs:\n{first}"
        );
    }
    // State subdirectories belong to root, whoever sends first.
    for sub in ["accounts", "queue", "defer", "hold", "failed", "tmp"] {
        assert_eq!(
            must(&format!("stat -c '%a %U:%G' /var/lib/mailgate/{sub}")).trim(),
            "2770 root:mailgate",
            "{sub}"
        );
    }
    let second = install(sink.port, "--postfwd-action reject");
    assert!(
        second.contains("install.sh: done: 0 changes"),
        "second run changed something:\n{second}"
    );
    assert_eq!(
        must("stat -c '%a %U:%G' /usr/sbin/mailgate").trim(),
        "2755 root:mailgate"
    );
    assert_eq!(
        must("readlink /usr/sbin/sendmail").trim(),
        "/usr/sbin/mailgate"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", 25)).is_err(),
        "port 25 must not be open"
    );
    wait_for("the relay on 825", || {
        TcpStream::connect(("127.0.0.1", 825)).ok()
    });
    wait_for("postfwd on its socket", || {
        std::os::unix::net::UnixStream::connect(POLICY).ok()
    });
    // Nothing of the chain listens where a customer could: no 10025/10040, the relay below
    // 1024, and the policy socket closed to customers.
    let listening = listeners();
    assert!(
        listening.iter().any(|l| l.starts_with("127.0.0.1:825 ")),
        "{listening:?}"
    );
    assert!(
        !listening
            .iter()
            .any(|l| l.contains(":10025 ") || l.contains(":10040 ")),
        "{listening:?}"
    );
    let probe = as_user(
        USERS[0],
        &[],
        "/usr/bin/python3",
        &[
            "-c",
            &format!("import socket; socket.socket(socket.AF_UNIX).connect('{POLICY}')"),
        ],
        b"",
    );
    assert!(
        !probe.status.success() && stderr(&probe).contains("Permission denied"),
        "a customer reached postfwd's socket: {}",
        stderr(&probe)
    );

    // mailgate's own lane: named in the installed mailgate.toml, a socket of Postfix's smtpd,
    // closed to a customer's own process.
    let installed = std::fs::read_to_string("/etc/mailgate/mailgate.toml").unwrap();
    assert!(
        installed.contains(&format!("[relay]\nsocket = \"{LANE}\"")),
        "{installed}"
    );
    wait_for("mailgate's lane", || {
        std::os::unix::net::UnixStream::connect(LANE).ok()
    });
    assert_eq!(
        must(&format!(
            "stat -c '%a %U:%G' {}",
            Path::new(LANE).parent().unwrap().display()
        ))
        .trim(),
        "710 postfix:mailgate"
    );
    let probe = as_user(
        USERS[0],
        &[],
        "/usr/bin/python3",
        &[
            "-c",
            &format!("import socket; socket.socket(socket.AF_UNIX).connect('{LANE}')"),
        ],
        b"",
    );
    assert!(
        !probe.status.success() && stderr(&probe).contains("Permission denied"),
        "a customer reached mailgate's lane: {}",
        stderr(&probe)
    );

    // Alerts go to root (the default), to prove they arrive; a queued message is retried after
    // a second, so that the installed scheduler's next run (cron: once a minute) delivers it.
    let config = |limit: u32, relay: &str| {
        format!(
            "[relay]\n{relay}\n[log]\nfile = \"/var/lib/mailgate/chain.log\"\n[alerts]\nadmin = \"root\"\n\
             [spool]\nretry = \"1s\"\nmax_retry = \"1s\"\n\
             [defaults]\nlimits = [ {{ window = \"1h\", messages = {limit} }} ]\n[accounts.root]\nexempt = true\n\
             [accounts.\"site1.example\"]\nusers = [\"mgchain1\"]\nlimits = [ {{ window = \"1h\", messages = 2 }} ]\n"
        )
    };
    let lane = format!("socket = \"{LANE}\"");
    std::fs::write("/etc/mailgate/mailgate.toml", config(3, &lane)).unwrap();
    must(
        "/usr/sbin/mailgate reset mgchain1; /usr/sbin/mailgate reset mgchain2; /usr/sbin/mailgate reset site1.example",
    );

    // Two real users, php-cli with the installed php.ini snippet: true up to 3, then false.
    let code = r#"for ($i = 0; $i < 5; $i++) { echo mail("dest@example.net", "chain " . get_current_user() . " $i", "body") ? "T" : "F"; }"#;
    for user in USERS {
        assert_eq!(php_as(user, code), "TTTFF", "{user}");
    }
    let customer = |sink: &Sink| {
        sink.received()
            .into_iter()
            .filter(|r| r.rcpts == ["dest@example.net"])
            .collect::<Vec<_>>()
    };
    wait_for("6 mails through the chain", || {
        (customer(&sink).len() >= 6).then_some(())
    });
    assert_eq!(customer(&sink).len(), 6);
    for user in USERS {
        assert_eq!(
            customer(&sink)
                .iter()
                .filter(|r| r.sender().starts_with(&format!("{user}@")))
                .count(),
            3,
            "{user}"
        );
    }
    let status = must("/usr/sbin/mailgate status --json");
    for user in USERS {
        assert!(
            status.contains(&format!("\"name\": \"{user}\"")),
            "{status}"
        );
    }

    // PHP-FPM pool with its own account, driven through FastCGI.
    let www = TempDir::new_in(Path::new("/srv"), "chain-www");
    std::fs::set_permissions(
        www.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let script = www.path().join("mail.php");
    std::fs::write(
        &script,
        r#"<?php
if (($_SERVER['QUERY_STRING'] ?? '') === 'phpmailer') {
    require '/usr/share/php/libphp-phpmailer/autoload.php';
    $m = new PHPMailer\PHPMailer\PHPMailer(false); $m->isSendmail(); $m->setFrom('pool@site1.example');
    $m->addAddress('pool@example.net'); $m->Subject = 'pool phpmailer'; $m->Body = 'x';
    echo $m->send() ? "T" : "F";
} else {
    echo mail("pool@example.net", "from the pool", "x") ? "T" : "F";
}"#,
    )
    .unwrap();
    let fpm_port = free_port();
    let fpm_conf = www.path().join("fpm.conf");
    std::fs::write(
        &fpm_conf,
        format!(
            "[global]\nerror_log = {d}/fpm.log\ndaemonize = no\npid = {d}/fpm.pid\n[site1]\nuser = mgchain1\ngroup = mgchain1\n\
             listen = 127.0.0.1:{fpm_port}\npm = static\npm.max_children = 1\n\
             php_admin_value[sendmail_path] = /usr/lib/mailgate/sendmail --account site1.example -t -i\n",
            d = www.path().display()
        ),
    )
    .unwrap();
    let fpm = Fpm(Command::new("php-fpm8.2")
        .arg("-F")
        .arg("-y")
        .arg(&fpm_conf)
        .spawn()
        .unwrap());
    wait_for("php-fpm to listen", || {
        TcpStream::connect(("127.0.0.1", fpm_port)).ok()
    });
    let fcgi = |query: &str| {
        let o = run_with_input(
            Command::new("cgi-fcgi")
                .args(["-bind", "-connect", &format!("127.0.0.1:{fpm_port}")])
                .env("SCRIPT_FILENAME", &script)
                .env("QUERY_STRING", query)
                .env("REQUEST_METHOD", "GET"),
            b"",
        );
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .to_string()
    };
    // mail() and PHPMailer's isSendmail() both stay in the pool's account (the snippet's path
    // contains "sendmail"); the account allows 2.
    let results: Vec<String> = ["", "phpmailer", ""].into_iter().map(fcgi).collect();
    assert_eq!(results, ["T", "T", "F"], "the pool's account allows 2");
    // The refusal alerted the admin ("root", qualified with the origin): it arrives locally.
    wait_mailbox("root", "mailgate: account site1.example exceeded");
    let log = std::fs::read_to_string("/var/lib/mailgate/chain.log").unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("account=site1.example")
                && l.contains("user=mgchain1")
                && l.contains("status=sent"))
            .count(),
        2,
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("account=site1.example")
            && l.contains("from=<pool@site1.example>")
            && l.contains("status=sent")),
        "PHPMailer's isSendmail() went through the pool's account: {log}"
    );
    // Attribution at the source: the FPM pool (from the worker's process title) and the
    // script's directory (FPM runs a script from it).
    let www_dir = www.path().display().to_string();
    assert!(
        log.lines().any(|l| l.contains("account=site1.example")
            && l.contains("pool=site1")
            && l.contains(&format!("cwd={www_dir}"))),
        "{log}"
    );

    // Bypass attempts meet postfwd: Postfix's own sendmail, and SMTP straight to 825.
    // postfwd allows 5 per sender and hour (above mailgate's 3 per account, so that mail
    // mailgate passed is not stopped twice); the sixth is stopped.
    for i in 0..6 {
        let o = run_with_input(
            Command::new("/usr/sbin/sendmail.postfix").args([
                "-f",
                "bypass1@example.org",
                "-i",
                "victim@example.net",
            ]),
            format!("Subject: bypass {i}\n\nx\n").as_bytes(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    wait_log("only 5 messages per hour for bypass1@example.org");
    let replies: Vec<String> = (0..6).map(|_| smtp_direct("bypass2@example.org")).collect();
    assert!(
        replies[..5].iter().all(|r| r.starts_with("250")),
        "{replies:?}"
    );
    assert!(
        replies[5].starts_with('5') && replies[5].contains("only 5 messages per hour"),
        "{replies:?}"
    );
    // 450 and HOLD as postfwd's action (a reload resets postfwd's in-memory counters).
    install(sink.port, "--postfwd-action defer");
    let replies: Vec<String> = (0..6).map(|_| smtp_direct("bypass3@example.org")).collect();
    assert!(replies[5].starts_with("450 4.7.1"), "{replies:?}");
    install(sink.port, "--postfwd-action hold");
    for _ in 0..6 {
        smtp_direct("bypass4@example.org");
    }
    wait_log("hold: RCPT from localhost");
    let held = must("postqueue -c /etc/postfix-postfwd -j");
    assert!(
        held.contains("\"queue_name\": \"hold\"") && held.contains("bypass4@example.org"),
        "{held}"
    );
    install(sink.port, "--postfwd-action reject");

    // One limit per account: an account allowed 1,000 per hour sends 300 through mailgate (8
    // senders at once), far above postfwd's 5 per sender; all 300 reach the local mailbox and
    // none waits in mailgate's queue, because mailgate's lane does not meet postfwd.
    std::fs::write("/etc/mailgate/mailgate.toml", config(1000, &lane)).unwrap();
    must("/usr/sbin/mailgate reset mgchain2");
    let origin = must("postconf -c /etc/postfix-postfwd -h myorigin")
        .trim()
        .to_string();
    let tag = format!("lane-{}-{}", std::process::id(), now_nanos());
    std::thread::scope(|scope| {
        for sender in 0..8 {
            let tag = &tag;
            scope.spawn(move || {
                for i in (sender..300).step_by(8) {
                    let o = as_user(
                        USERS[1],
                        &[],
                        "/usr/sbin/mailgate",
                        &["-i", USERS[0]],
                        format!("Subject: {tag} {i}\n\nx\n").as_bytes(),
                    );
                    assert!(o.status.success(), "message {i}: {}", stderr(&o));
                }
            });
        }
    });
    let count_in_mailbox = |needle: &str| {
        mailbox(USERS[0])
            .lines()
            .filter(|l| l.starts_with("Subject: ") && l.contains(needle))
            .count()
    };
    wait_for_within(
        "300 messages in the local mailbox",
        std::time::Duration::from_secs(120),
        || (count_in_mailbox(&tag) >= 300).then_some(()),
    );
    assert_eq!(count_in_mailbox(&tag), 300);
    let queued = must("/usr/sbin/mailgate queue list --json");
    assert!(!queued.contains("mgchain2"), "{queued}");
    let st = must("/usr/sbin/mailgate status mgchain2 --json");
    assert!(st.contains("\"messages\": 300"), "{st}");
    assert!(
        !postfix_log().contains(&format!("per hour for {}@{origin}", USERS[1])),
        "postfwd counted mailgate's mail"
    );
    // The same customer's bypasses still meet postfwd at its rule, for the very sender
    // mailgate just used 300 times: SMTP straight to the TCP listener, and Postfix's own
    // sendmail (another sender of the customer's choosing).
    let smtp_as_customer = format!(
        "import smtplib\n\
         for i in range(6):\n\
         \x20   s = smtplib.SMTP('127.0.0.1', 825)\n\
         \x20   try:\n\
         \x20       s.sendmail('{u}@{origin}', ['victim@example.net'], 'Subject: bypass\\r\\n\\r\\nx\\r\\n')\n\
         \x20       print('250')\n\
         \x20   except smtplib.SMTPRecipientsRefused as e:\n\
         \x20       code, text = list(e.recipients.values())[0]\n\
         \x20       print(code, text.decode())\n\
         \x20   s.quit()\n",
        u = USERS[1]
    );
    let o = as_user(
        USERS[1],
        &[],
        "/usr/bin/python3",
        &["-c", &smtp_as_customer],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let replies: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(replies.len(), 6, "{replies:?}");
    assert!(replies[..5].iter().all(|r| r == "250"), "{replies:?}");
    assert!(
        replies[5].starts_with('5') && replies[5].contains("only 5 messages per hour"),
        "{replies:?}"
    );
    for i in 0..6 {
        let o = as_user(
            USERS[1],
            &[],
            "/usr/sbin/sendmail.postfix",
            &[
                "-f",
                &format!("{}-cli@{origin}", USERS[1]),
                "-i",
                "victim@example.net",
            ],
            format!("Subject: bypass {i}\n\nx\n").as_bytes(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    wait_log(&format!(
        "only 5 messages per hour for {}-cli@{origin}",
        USERS[1]
    ));

    // An install from before the lane (mailgate relays over TCP, no lane service): a message
    // queued while the relay is down is delivered exactly once through the lane after
    // install.sh moved mailgate there.
    std::fs::write(
        "/etc/mailgate/mailgate.toml",
        config(1000, "host = \"127.0.0.1\"\nport = 825"),
    )
    .unwrap();
    must("sed -i '/^\\.\\.\\/mailgate\\/smtpd/d' /etc/postfix-postfwd/master.cf");
    must("postmulti -i postfix-postfwd -p stop");
    let upgrade_tag = format!("{tag}-upgrade");
    let o = as_user(
        USERS[1],
        &[],
        "/usr/sbin/mailgate",
        &["-i", USERS[0]],
        format!("Subject: {upgrade_tag}\n\nx\n").as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(must("/usr/sbin/mailgate queue list --json").contains(USERS[0]));
    let upgrade = install(sink.port, "--postfwd-action reject");
    assert!(upgrade.contains("install.sh: done:"), "{upgrade}");
    let moved = std::fs::read_to_string("/etc/mailgate/mailgate.toml").unwrap();
    assert!(moved.contains(&format!("socket = \"{LANE}\"")), "{moved}");
    wait_for("mailgate's lane after the upgrade", || {
        std::os::unix::net::UnixStream::connect(LANE).ok()
    });
    must("/usr/sbin/mailgate queue run");
    wait_for("the queued message in the mailbox", || {
        (count_in_mailbox(&upgrade_tag) == 1).then_some(())
    });
    assert!(!must("/usr/sbin/mailgate queue list --json").contains(USERS[0]));
    must("/usr/sbin/mailgate queue run");
    assert_eq!(count_in_mailbox(&upgrade_tag), 1, "delivered exactly once");
    assert!(
        wait_log("postfix-postfwd/mailgate/smtpd").contains("postfix-postfwd/mailgate/smtpd"),
        "the lane's smtpd took it"
    );
    std::fs::write("/etc/mailgate/mailgate.toml", config(3, &lane)).unwrap();

    // --as-sendmail: Symfony Mailer's default transport (/usr/sbin/sendmail -bs) and PHPMailer's
    // isSendmail() go through mailgate and are counted.
    let symfony = r#"require '/usr/share/php/Symfony/Component/Mailer/autoload.php';
        (new Symfony\Component\Mailer\Mailer(new Symfony\Component\Mailer\Transport\SendmailTransport()))
            ->send((new Symfony\Component\Mime\Email())->from('app@example.org')->to('symfony@example.net')->subject('sf')->text('x'));
        echo "sent";"#;
    must("/usr/sbin/mailgate reset mgchain1");
    assert_eq!(php_as("mgchain1", symfony), "sent");
    let phpmailer = r#"require '/usr/share/php/libphp-phpmailer/autoload.php';
        $m = new PHPMailer\PHPMailer\PHPMailer(true); $m->isSendmail(); $m->setFrom('shop@example.org');
        $m->addAddress('phpmailer@example.net'); $m->Subject = 'pm'; $m->Body = 'x'; echo $m->send() ? "sent" : "failed";"#;
    assert_eq!(php_as("mgchain1", phpmailer), "sent");
    let log = std::fs::read_to_string("/var/lib/mailgate/chain.log").unwrap();
    for rcpt_count_marker in ["from=<app@example.org>", "from=<shop@example.org>"] {
        assert!(
            log.lines().any(|l| l.contains(rcpt_count_marker)
                && l.contains("account=mgchain1")
                && l.contains("status=sent")),
            "{log}"
        );
    }
    let st = must("/usr/sbin/mailgate status mgchain1 --json");
    assert!(st.contains("\"messages\": 2"), "{st}");

    // cron's mail to root arrives (root is exempt; the relay instance delivers locally), with
    // its bare addresses qualified the way Postfix's cleanup would.
    let token = format!("cron-{}-{}", std::process::id(), now_nanos());
    let o = run_with_input(
        Command::new("/usr/sbin/sendmail").args([
            "-FCronDaemon",
            "-i",
            "-B8BITMIME",
            "-oem",
            "root",
        ]),
        format!(
            "From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host> {token}\n\noutput\n"
        )
        .as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let root_mail = wait_mailbox("root", &token);
    let origin = must("postconf -c /etc/postfix-postfwd -h myorigin")
        .trim()
        .to_string();
    assert!(
        root_mail.contains(&format!("From: root@{origin} (Cron Daemon)"))
            && root_mail.contains(&format!("To: root@{origin}")),
        "{root_mail}"
    );
    // Every spelling of "local" reaches the mailbox: bare, localhost, the origin, the short
    // host name; and another local login.
    let short = must("cat /proc/sys/kernel/hostname").trim().to_string();
    for (i, rcpt) in [
        "root".to_string(),
        "root@localhost".to_string(),
        format!("root@{origin}"),
        format!("root@{short}"),
    ]
    .iter()
    .enumerate()
    {
        // Each from its own sender: postfwd allows root@origin only 5 per hour here.
        let tag = format!("{token}-spelling-{i}");
        let o = run_with_input(
            Command::new("/usr/sbin/sendmail").args([
                "-f",
                &format!("spelling{i}@example.org"),
                "-i",
                rcpt,
            ]),
            format!("Subject: {tag}\n\nx\n").as_bytes(),
        );
        assert!(o.status.success(), "{rcpt}: {}", stderr(&o));
        wait_mailbox("root", &tag);
    }
    let o = run_with_input(
        Command::new("/usr/sbin/sendmail").args(["-f", "login@example.org", "-i", USERS[1]]),
        format!("Subject: {token}-login\n\nx\n").as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    wait_mailbox(USERS[1], &format!("{token}-login"));

    // Relay down: mail() still returns true, the message waits in mailgate's queue.
    must("postmulti -i postfix-postfwd -p stop");
    wait_for("the relay to stop", || {
        TcpStream::connect(("127.0.0.1", 825))
            .is_err()
            .then_some(())
    });
    must("/usr/sbin/mailgate reset mgchain2");
    assert_eq!(
        php_as(
            "mgchain2",
            r#"echo mail("late@example.net", "relay down", "x") ? "T" : "F";"#
        ),
        "T"
    );
    let queued = must("/usr/sbin/mailgate queue list --json");
    assert!(queued.contains("late@example.net"), "{queued}");
    must("postmulti -i postfix-postfwd -p start");
    wait_for("the relay to return", || {
        TcpStream::connect(("127.0.0.1", 825)).ok()
    });
    // Nobody calls `queue run`: the installed scheduler does, within a minute or two.
    // cron runs it once a minute; three of its minutes, and on a timeout what it saw.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(200);
    while !sink
        .received()
        .iter()
        .any(|r| r.rcpts == ["late@example.net"])
    {
        if std::time::Instant::now() > deadline {
            let seen = sh(
                "pgrep -a cron; ls -l --time-style=full-iso /etc/cron.d; cat /etc/cron.d/mailgate; \
                 date; /usr/sbin/mailgate queue list; tail -n 5 /var/lib/mailgate/chain.log",
            );
            panic!(
                "the installed queue runner did not deliver the queued mail within 200 s:\n{}{}",
                String::from_utf8_lossy(&seen.stdout),
                stderr(&seen)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    wait_for("the queue to be empty", || {
        (!must("/usr/sbin/mailgate queue list --json").contains("late@example.net")).then_some(())
    });

    drop(fpm);
    // --uninstall restores what was there; its dry run lists exactly the changes it makes.
    must("postsuper -c /etc/postfix-postfwd -d ALL");
    let repo = env!("CARGO_MANIFEST_DIR");
    let dry = must(&format!("{repo}/install.sh --uninstall --dry-run"));
    let real = must(&format!("{repo}/install.sh --uninstall"));
    let planned: Vec<&str> = dry
        .lines()
        .filter_map(|l| l.strip_prefix("would run: "))
        .collect();
    let done: Vec<&str> = real.lines().filter_map(|l| l.strip_prefix("+ ")).collect();
    assert_eq!(planned, done, "dry run:\n{dry}\nreal run:\n{real}");
    assert!(!planned.is_empty());
    // The test's own smtp-sink is no install-started process.
    let after: std::collections::BTreeSet<String> = listeners()
        .into_iter()
        .filter(|l| !l.ends_with(" smtp-sink"))
        .collect();
    assert!(
        after.is_subset(&before_listeners),
        "processes that install.sh started still listen:\n{after:?}\nbefore: {before_listeners:?}"
    );
    assert_eq!(
        sh("pgrep -x cron").status.success(),
        cron_ran_before,
        "cron runs as it did before the install"
    );
    for dir in [
        "/var/spool/postfix-postfwd",
        "/var/lib/postfix-postfwd",
        "/etc/postfix-postfwd",
        "/var/lib/postfwd",
    ] {
        assert!(!Path::new(dir).exists(), "{dir} is left behind");
    }
    if Path::new("/etc/postfix/main.cf").exists() {
        must("postfix check");
    }
    assert_eq!(
        std::fs::read("/etc/postfix/main.cf").ok(),
        before_main_cf,
        "main.cf restored"
    );
    assert!(!Path::new("/usr/sbin/mailgate").exists());
    let sendmail =
        std::fs::symlink_metadata("/usr/sbin/sendmail").expect("Postfix's sendmail is back");
    assert!(
        sendmail.file_type().is_file(),
        "/usr/sbin/sendmail is Postfix's binary again"
    );
    assert!(
        must("dpkg-divert --list /usr/sbin/sendmail")
            .trim()
            .is_empty(),
        "diversion removed"
    );
}

/// Issue 21 against the real chain: the relay instance delivers to an in-test server on
/// loopback that answers 550 for some recipients and 450 for one. Two accounts, three scripts:
/// `top` shows per script what the server recorded, `trace` the whole way of a bounced message,
/// and the account that bounces past its trigger is held and told while the other's mail flows.
#[test]
fn outcomes_from_the_relays_log_per_script_and_the_bounce_trigger() {
    assert!(
        is_root(),
        "this test installs the system chain; run it as root (.ci/run)"
    );
    let _one_at_a_time = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
    // Dropped after the host is given back (whose --uninstall stops the cron it started).
    let _cron = CronStopped::take();
    let _host = Host::take_over();
    let gone: Vec<String> = (1..=6).map(|i| format!("gone{i}@example.net")).collect();
    let mut reject_rcpt: Vec<(String, String)> = gone
        .iter()
        .map(|g| {
            (
                g.clone(),
                format!("550 5.1.1 <{g}>: Recipient address rejected: User unknown"),
            )
        })
        .collect();
    reject_rcpt.push((
        "later@example.net".into(),
        "450 4.2.0 <later@example.net>: Recipient address rejected: Greylisted".into(),
    ));
    let server = Recorder::start(Script {
        reject_rcpt,
        ..Script::default()
    });
    // README's install, from the package, on a host without systemd where cron is installed
    // but its daemon does not run: the install must leave a queue runner that runs, and it
    // alone (no queue run by hand below) learns the outcomes and holds the bouncing account.
    let installed = install_packaged(server.port);
    assert!(installed.contains("install.sh: done:"), "{installed}");
    assert!(
        installed.contains("queue runner: cron job /etc/cron.d/mailgate")
            && installed.contains("run by the cron daemon"),
        "{installed}"
    );
    assert!(sh("pgrep -x cron").status.success(), "{installed}");
    // The relay's log is its own file behind a closed postlogd: check-config has nothing to
    // say about it, and a customer can neither log into it nor list the relay's queue.
    let checked = sh("/usr/sbin/mailgate check-config 2>&1");
    let checked = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert!(!checked.contains("relay_log"), "{checked}");
    assert_eq!(
        must("postconf -c /etc/postfix-postfwd -h setgid_group").trim(),
        "mailgate-relay"
    );
    // The chain names the relay's log in mailgate.toml and gives the relay long queue ids.
    let toml = std::fs::read_to_string("/etc/mailgate/mailgate.toml").unwrap();
    let relay_log = format!("{LOGDIR}/postfix-postfwd.log");
    assert!(
        toml.contains(&format!("[outcomes]\nrelay_log = \"{relay_log}\"")),
        "{toml}"
    );
    assert_eq!(
        must("postconf -c /etc/postfix-postfwd -h enable_long_queue_ids").trim(),
        "yes"
    );
    std::fs::write(
        "/etc/mailgate/mailgate.toml",
        format!(
            "[relay]\nsocket = \"{LANE}\"\n[log]\nfile = \"/var/lib/mailgate/chain.log\"\n\
             [alerts]\nadmin = \"root\"\n[outcomes]\nrelay_log = \"{relay_log}\"\n\
             [defaults]\nlimits = [ {{ window = \"1h\", messages = 100 }} ]\n\
             [defaults.trigger]\nwindow = \"1h\"\nmin_failures = 5\npercent = 30\naction = \"hold\"\n\
             [accounts.root]\nexempt = true\n[accounts.{u1}]\nnotify = [\"{u1}\"]\n",
            u1 = USERS[0]
        ),
    )
    .unwrap();

    // Three scripts, readable by both users.
    let www = TempDir::new_in(Path::new("/srv"), "chain-outcomes");
    std::fs::set_permissions(
        www.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let script = |name: &str, code: &str| {
        let path = www.path().join(name);
        std::fs::write(&path, format!("<?php\n{code}\n")).unwrap();
        path.display().to_string()
    };
    let contact = script(
        "contact.php",
        r#"for ($i = 1; $i <= 6; $i++) { echo mail("gone$i@example.net", "contact $i", "x") ? "T" : "F"; }"#,
    );
    let news = script(
        "news.php",
        r#"for ($i = 1; $i <= 2; $i++) { echo mail("good1@example.net, good2@example.net, later@example.net", "news $i", "x") ? "T" : "F"; }"#,
    );
    let post = script(
        "post.php",
        r#"for ($i = 1; $i <= 3; $i++) { echo mail("reader@example.net", "post $i", "x") ? "T" : "F"; }"#,
    );
    let php_file = |user: &str, file: &str| {
        let o = as_user(user, &[], "php", &["-f", file], b"");
        assert!(o.status.success(), "php as {user}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // A script planted in an upload directory (issue 30): held at its first message, with the
    // default [scripts]; nothing of it reaches the server.
    std::fs::create_dir_all(www.path().join("wp-content/uploads")).unwrap();
    let planted = script(
        "wp-content/uploads/x.php",
        r#"for ($i = 1; $i <= 3; $i++) { echo mail("victim$i@example.net", "planted $i", "x") ? "T" : "F"; }"#,
    );
    assert_eq!(php_file(USERS[1], &planted), "TTT", "held mail is accepted");
    let held = must("/usr/sbin/mailgate hold list --json");
    assert_eq!(held.matches("victim").count(), 3, "{held}");
    assert!(
        std::fs::read_to_string("/var/lib/mailgate/chain.log")
            .unwrap()
            .contains("signs=suspicious-dir"),
        "the log names the sign"
    );
    must(&format!(
        "/usr/sbin/mailgate hold delete --account {}",
        USERS[1]
    ));

    assert_eq!(php_file(USERS[0], &contact), "TTTTTT");
    assert_eq!(php_file(USERS[0], &news), "TT");
    assert_eq!(php_file(USERS[1], &post), "TTT");

    // What the test server recorded: recipients it took, and those it refused (550 / 450).
    let took = |to: &str| {
        server
            .received()
            .iter()
            .map(|r| r.rcpts.iter().filter(|x| *x == to).count() as u64)
            .sum::<u64>()
    };
    let refused = |prefix: &str| {
        server
            .refused()
            .iter()
            .filter(|a| a.starts_with(prefix))
            .count() as u64
    };
    wait_for("the relay to try every recipient", || {
        (refused("gone") == 6
            && refused("later") == 2
            && took("good1@example.net") + took("good2@example.net") == 4
            && took("reader@example.net") == 3)
            .then_some(())
    });
    assert_eq!(
        server
            .received()
            .iter()
            .filter(|r| r.rcpts.iter().any(|x| x.starts_with("victim")))
            .count(),
        0,
        "the planted script relayed nothing"
    );
    // The queue runs (cron's, following the relay's log) learn them from the relay's own log.
    let row = |top: &serde_json::Value, account: &str, file: &str| -> Option<serde_json::Value> {
        let acc = top["accounts"]
            .as_array()?
            .iter()
            .find(|a| a["account"] == account)?;
        acc["sources"]
            .as_array()?
            .iter()
            .find(|s| s["source"].as_str().unwrap_or("").ends_with(file))
            .cloned()
    };
    let n = |v: &serde_json::Value, key: &str| v[key].as_u64().unwrap_or(0);
    // A customer forges bounces for the other customer's mail in the relay's name, through
    // syslog (logger) and through the relay's postlogd (postlog -c, set-gid as Postfix
    // installs it upstream): neither line reaches the relay's log.
    let forged = |queue_id: &str| {
        format!(
            "{queue_id}: to=<reader@example.net>, relay=mx.example.net[192.0.2.1]:25, delay=0.2, delays=0.01/0.01/0.1/0.08, dsn=5.1.1, status=bounced (forged-by-{})",
            USERS[0]
        )
    };
    let relay_ids: Vec<String> = wait_for("the relay's queue ids of post.php", || {
        let log = std::fs::read_to_string("/var/lib/mailgate/chain.log").ok()?;
        let ids: Vec<String> = log
            .lines()
            .filter(|l| l.contains("post.php") && l.contains("status=sent"))
            .filter_map(|l| l.split("queued as ").nth(1))
            .filter_map(|r| r.split('"').next())
            .map(str::to_string)
            .collect();
        (ids.len() == 3).then_some(ids)
    });
    let postlog_mode = must("stat -c '%a %G' /usr/sbin/postlog");
    must("chgrp postdrop /usr/sbin/postlog && chmod 2755 /usr/sbin/postlog");
    for id in &relay_ids {
        let tag = "postfix-postfwd/smtp[4001]";
        let _ = as_user(USERS[0], &[], "logger", &["-t", tag, &forged(id)], b"");
        let _ = as_user(
            USERS[0],
            &[],
            "postlog",
            &["-c", "/etc/postfix-postfwd", "-t", tag, &forged(id)],
            b"",
        );
    }
    let (mode, group) = postlog_mode.trim().split_once(' ').unwrap();
    must(&format!(
        "chgrp {group} /usr/sbin/postlog && chmod {mode} /usr/sbin/postlog"
    ));
    // Nor can a customer list the relay's queue or the primary's.
    for args in [&["-c", "/etc/postfix-postfwd", "-p"][..], &["-p"][..]] {
        let o = as_user(USERS[0], &[], "postqueue", args, b"");
        assert!(
            !o.status.success() && !String::from_utf8_lossy(&o.stdout).contains('@'),
            "postqueue {args:?} as a customer: {}{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(&o)
        );
    }
    let top = wait_for_within(
        "cron's queue run to show what the server recorded",
        std::time::Duration::from_secs(180),
        || {
            let top: serde_json::Value =
                serde_json::from_str(&must("/usr/sbin/mailgate top --json")).ok()?;
            let c = row(&top, USERS[0], "contact.php")?;
            let w = row(&top, USERS[0], "news.php")?;
            let p = row(&top, USERS[1], "post.php")?;
            (n(&c, "bounced") == refused("gone")
                && n(&w, "delivered") == took("good1@example.net") + took("good2@example.net")
                && n(&w, "delayed") == refused("later")
                && n(&p, "delivered") == took("reader@example.net"))
            .then_some(top)
        },
    );
    let c = row(&top, USERS[0], "contact.php").unwrap();
    assert_eq!((n(&c, "bounced"), n(&c, "delivered")), (6, 0), "{top}");
    let w = row(&top, USERS[0], "news.php").unwrap();
    assert_eq!(
        (n(&w, "delivered"), n(&w, "delayed"), n(&w, "bounced")),
        (4, 2, 0),
        "{top}"
    );
    let p = row(&top, USERS[1], "post.php").unwrap();
    assert_eq!((n(&p, "delivered"), n(&p, "bounced")), (3, 0), "{top}");
    assert!(
        !postfix_log().contains(&format!("forged-by-{}", USERS[0])),
        "a forged line reached the relay's log"
    );

    // mgchain1 bounced 6 of 10 (60 % ≥ 30 %): held and told; mgchain2's mail flows.
    // The statistics are counted first, the trigger acts at the end of the same pass of the
    // follower: the hold comes a moment after `top` shows the counts.
    wait_for("the trigger to hold the bouncing account", || {
        let status: serde_json::Value = serde_json::from_str(&must(&format!(
            "/usr/sbin/mailgate status {} --json",
            USERS[0]
        )))
        .ok()?;
        (status["accounts"][0]["bounces"]["held"] == true).then_some(())
    });
    assert_eq!(
        php_file(USERS[0], &contact),
        "TTTTTT",
        "held mail is accepted"
    );
    let held = must("/usr/sbin/mailgate hold list --json");
    assert_eq!(held.matches("gone").count(), 6, "{held}");
    assert_eq!(php_file(USERS[1], &post), "TTT");
    wait_for("the other account's mail to flow", || {
        (took("reader@example.net") == 6).then_some(())
    });
    let alert = wait_mailbox("root", &format!("account {} bounces too much", USERS[0]));
    assert!(
        alert.contains("contact.php") && alert.contains("550 5.1.1"),
        "{alert}"
    );
    let notice = wait_mailbox(
        USERS[0],
        &format!("Mail from your account {} bounces", USERS[0]),
    );
    assert!(notice.contains("contact.php"), "{notice}");

    // trace: one bounced message's whole way, by the relay's queue id from mailgate's log.
    let log = std::fs::read_to_string("/var/lib/mailgate/chain.log").unwrap();
    let queue_id = log
        .lines()
        .find(|l| l.contains("contact.php") && l.contains("status=sent"))
        .and_then(|l| l.split("queued as ").nth(1))
        .and_then(|r| r.split('"').next())
        .expect("a contact.php hand-over in mailgate's log")
        .to_string();
    let trace = must(&format!("/usr/sbin/mailgate trace {queue_id}"));
    let uid = must(&format!("id -u {}", USERS[0]));
    for needle in [
        format!("uid {} ({})", uid.trim(), USERS[0]),
        format!("account {}", USERS[0]),
        "contact.php".to_string(),
        format!("took it as {queue_id}"),
        "bounced".to_string(),
        "550 5.1.1".to_string(),
    ] {
        assert!(trace.contains(&needle), "{needle:?} in\n{trace}");
    }
    let theirs = as_user(
        USERS[1],
        &[],
        "/usr/sbin/mailgate",
        &["trace", &queue_id],
        b"",
    );
    assert_eq!(
        code(&theirs),
        77,
        "another customer's message: {}",
        stderr(&theirs)
    );
    let own = as_user(
        USERS[0],
        &[],
        "/usr/sbin/mailgate",
        &["trace", &queue_id],
        b"",
    );
    assert!(own.status.success(), "{}", stderr(&own));
}

#[test]
fn install_into_a_prefix_dry_run_and_non_root_refusal() {
    assert!(
        is_root(),
        "this test creates group mailgate and a setgid binary; run it as root (.ci/run)"
    );
    let _one_at_a_time = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
    let group_existed = sh("getent group mailgate").status.success();
    let repo = env!("CARGO_MANIFEST_DIR");
    let prefix = TempDir::new("prefix");
    let p = prefix.path().display().to_string();
    // A dry run prints every change and makes none.
    let dry = must(&format!(
        "{repo}/install.sh --binary {BIN} --prefix {p} --php --as-sendmail --dry-run"
    ));
    assert!(
        dry.contains("would run: install -D -o root -g mailgate -m 2755")
            && dry.contains("would write:"),
        "{dry}"
    );
    assert!(
        std::fs::read_dir(prefix.path()).unwrap().next().is_none(),
        "the dry run changed something"
    );
    // node_exporter's textfile directory exists: install.sh points [metrics] textfile there.
    let textfile_dir = format!("{p}/var/lib/prometheus/node-exporter");
    std::fs::create_dir_all(&textfile_dir).unwrap();
    // The real thing, twice.
    let first = must(&format!(
        "{repo}/install.sh --binary {BIN} --prefix {p} --as-sendmail"
    ));
    assert!(!first.contains("done: 0 changes"), "{first}");
    let second = must(&format!(
        "{repo}/install.sh --binary {BIN} --prefix {p} --as-sendmail"
    ));
    assert!(second.contains("done: 0 changes"), "{second}");
    assert_eq!(
        must(&format!("stat -c '%a %U:%G' {p}/usr/sbin/mailgate")).trim(),
        "2755 root:mailgate"
    );
    assert_eq!(
        must(&format!("stat -c '%a %U:%G' {p}/var/lib/mailgate")).trim(),
        "770 root:mailgate"
    );
    assert_eq!(
        must(&format!("stat -c '%a %U:%G' {p}/var/lib/mailgate/queue")).trim(),
        "2770 root:mailgate"
    );
    assert_eq!(
        must(&format!("readlink {p}/usr/lib/mailgate/sendmail")).trim(),
        "/usr/sbin/mailgate"
    );
    let config = std::fs::read_to_string(format!("{p}/etc/mailgate/mailgate.toml")).unwrap();
    assert!(
        config.contains(&format!(
            "[metrics]\ntextfile = \"{textfile_dir}/mailgate.prom\""
        )),
        "{config}"
    );
    let checked = must(&format!(
        "{BIN} check-config {p}/etc/mailgate/mailgate.toml"
    ));
    assert!(checked.contains(": ok"), "{checked}");
    // The man pages render without a warning; the completion is in bash's directory.
    for page in ["man8/mailgate.8", "man5/mailgate.toml.5"] {
        let o = sh(&format!(
            "LC_ALL=C.UTF-8 groff -ww -man -Tutf8 {p}/usr/share/man/{page} >/dev/null"
        ));
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "{page}: {}",
            stderr(&o)
        );
        let text = must(&format!("MANWIDTH=100 man -l {p}/usr/share/man/{page}"));
        assert!(text.contains("mailgate"), "{text}");
    }
    assert!(
        must(&format!(
            "bash -c 'source {p}/usr/share/bash-completion/completions/mailgate && complete -p mailgate'"
        ))
        .contains("mailgate")
    );
    assert!(
        Path::new(&format!("{p}/etc/cron.d/mailgate")).exists()
            || Path::new(&format!("{p}/etc/systemd/system/mailgate-queue.timer")).exists()
    );
    // Not as root: refuses before changing anything.
    let o = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            &format!("{repo}/install.sh"),
            "--prefix",
            &p,
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(77));
    assert!(stderr(&o).contains("must run as root"), "{}", stderr(&o));
    // The backups are root's alone; a backup directory planted where group mailgate may
    // write (the old place, under the state directory) is never restored from.
    assert_eq!(
        must(&format!("stat -c '%a %U:%G' {p}/var/lib/mailgate-chain")).trim(),
        "700 root:root"
    );
    let planted = format!("{p}/var/lib/mailgate/install-backup");
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::write(format!("{planted}/%etc%planted"), "owned\n").unwrap();
    must(&format!("chown -R nobody {planted}"));
    let undone = must(&format!("{repo}/install.sh --prefix {p} --uninstall 2>&1"));
    assert!(
        undone.contains("ignoring") && undone.contains("not root's alone"),
        "{undone}"
    );
    assert!(
        !Path::new(&format!("{p}/etc/planted")).exists(),
        "restored from a planted backup"
    );
    assert!(!Path::new(&format!("{p}/usr/sbin/mailgate")).exists());
    if !group_existed {
        must("groupdel mailgate");
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
