//! Sendmail conformance: the real binary against Postfix's smtp-sink and an in-test recording
//! SMTP server (for byte-exact wire checks).

mod common;
use common::*;
use std::process::Command;
use std::process::Stdio;

fn recorder_env() -> (Recorder, Env) {
    let rec = Recorder::start(Script::default());
    let env = Env::new(rec.port, "");
    (rec, env)
}

fn ok(o: &std::process::Output) {
    assert_eq!(code(o), 0, "stderr: {}", stderr(o));
    assert!(
        o.stdout.is_empty(),
        "stdout must stay empty in sendmail mode"
    );
}

#[test]
fn argv_forms_reach_the_envelope() {
    let (rec, env) = recorder_env();
    let msg = b"Subject: t\n\nbody\n";
    ok(&env.send(&["-fa1@example.com", "-ti", "r1@x.org"], msg));
    ok(&env.send(&["-f", "a2@example.com", "-i", "r2@x.org"], msg));
    ok(&env.send(&["-tif", "a3@example.com", "r3@x.org"], msg));
    ok(&env.send(&["-oem", "-oi", "--", "r4@x.org", "r5@x.org"], msg));
    ok(&env.send(
        &[
            "-r",
            "a5@example.com",
            "-f",
            "a6@example.com",
            "r6@x.org, Six <r7@x.org>",
        ],
        msg,
    ));
    ok(&env.send(&["-f", "<>", "r8@x.org"], msg));
    ok(&env.send(
        &["-f", "Full Name <a9@example.com>", "-i", "localuser"],
        msg,
    ));
    let got = rec.wait_count(7);
    let envs: Vec<(String, Vec<String>)> =
        got.iter().map(|r| (r.sender(), r.rcpts.clone())).collect();
    assert_eq!(
        envs,
        [
            ("a1@example.com".into(), vec!["r1@x.org".to_string()]),
            ("a2@example.com".into(), vec!["r2@x.org".into()]),
            ("a3@example.com".into(), vec!["r3@x.org".into()]),
            (
                format!("{}@example.org", login()),
                vec!["r4@x.org".into(), "r5@x.org".into()]
            ),
            (
                "a6@example.com".into(),
                vec!["r6@x.org".into(), "r7@x.org".into()]
            ),
            ("".into(), vec!["r8@x.org".into()]),
            (
                "a9@example.com".into(),
                vec!["localuser@example.org".into()]
            ),
        ]
    );
}

#[test]
fn posix_stop_makes_later_options_recipients() {
    let (rec, env) = recorder_env();
    ok(&env.send(&["-i", "r1@x.org", "-t"], b"To: hidden@x.org\n\nx\n"));
    let got = rec.wait_count(1);
    assert_eq!(got[0].rcpts, ["r1@x.org", "-t@example.org"]);
}

#[test]
fn t_unions_argv_and_headers_and_prefers_resent() {
    let (rec, env) = recorder_env();
    let headers = b"To: \"Doe, John\" <j@x.org>, k@x.org (Kay)\nCc: Team: a@x.org,\n  B <b@x.org>;\nBcc: hidden@x.org\nSubject: s\n\nbody\n";
    ok(&env.send(&["-t", "-i", "argv@x.org"], headers));
    let resent = b"To: old@x.org\nResent-To: new@x.org\nResent-Bcc: <@relay:blind@x.org>\n\nbody\n";
    ok(&env.send(&["-t", "-i"], resent));
    let got = rec.wait_count(2);
    assert_eq!(
        got[0].rcpts,
        [
            "argv@x.org",
            "j@x.org",
            "k@x.org",
            "a@x.org",
            "b@x.org",
            "hidden@x.org"
        ]
    );
    assert_eq!(got[1].rcpts, ["new@x.org", "blind@x.org"]);
    for r in &got {
        assert!(
            r.header("Bcc").is_none() && r.header("Resent-Bcc").is_none(),
            "{}",
            r.text()
        );
    }
}

#[test]
fn dots_line_endings_and_eight_bit_are_byte_exact() {
    let (rec, env) = recorder_env();
    let mut body =
        b"Subject: \xc3\xa4 8bit\r\nTo: a@x.org\n\n.leading dot\r\n..two\n.\nafter dot\n".to_vec();
    let long = vec![b'L'; 3000];
    body.extend_from_slice(&long);
    body.extend_from_slice(b"\nbin \x01\xfe\xff\r\nlast line without newline");
    ok(&env.send(&["-i", "a@x.org"], &body));
    ok(&env.send(&["a@x.org"], &body));
    let got = rec.wait_count(2);
    let with_i = got[0].data.clone();
    let mut expected_body = b"\r\n\r\n..leading dot\r\n...two\r\n..\r\nafter dot\r\n".to_vec();
    expected_body.extend_from_slice(&long);
    expected_body.extend_from_slice(b"\r\nbin \x01\xfe\xff\r\nlast line without newline\r\n");
    assert!(
        with_i.ends_with(&expected_body),
        "wire body differs: {:?}",
        String::from_utf8_lossy(&with_i)
    );
    assert!(
        with_i
            .windows(24)
            .any(|w| w == b"Subject: \xc3\xa4 8bit\r\nTo: a@")
    );
    assert!(got[0].mail.contains("BODY=8BITMIME"), "{}", got[0].mail);
    // Without -i the lone dot ended the message.
    assert!(
        got[1]
            .data
            .ends_with(b"\r\n\r\n..leading dot\r\n...two\r\n"),
        "{:?}",
        got[1].text()
    );
    // No bare LF anywhere on the wire.
    for r in &got {
        assert!(!r.data.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
    }
}

#[test]
fn headers_added_and_stripped() {
    let (rec, env) = recorder_env();
    ok(&env.send(
        &["-i", "-F", "Cron Daemon", "a@x.org"],
        b"From wrong@mbox Sat Jan 1 00:00:00 2000\nReturn-Path: <forged@evil>\nSubject: hi\n\nbody\n",
    ));
    ok(&env.send(&["-i", "a@x.org"], b"From: Me <me@example.org>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <keep@x>\n\nb\n"));
    let got = rec.wait_count(2);
    let first = &got[0];
    assert!(first.header("Return-Path").is_none());
    assert!(!first.text().contains("wrong@mbox"));
    assert_eq!(
        first.header("From").unwrap(),
        format!("Cron Daemon <{}@example.org>", login())
    );
    assert!(first.header("Date").is_some() && first.header("Message-ID").is_some());
    let received = first.header("Received").unwrap();
    assert!(
        received.starts_with("by web1.example.org (mailgate, from userid "),
        "{received}"
    );
    assert_eq!(first.text().matches("Received:").count(), 1);
    let second = &got[1];
    assert_eq!(second.header("From").unwrap(), "Me <me@example.org>");
    assert_eq!(second.header("Message-ID").unwrap(), "<keep@x>");
    assert_eq!(second.text().matches("\r\nFrom:").count(), 1);
}

#[test]
fn sender_default_is_the_real_uid_not_user() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(rec.port, "");
    let mut cmd = if is_root() {
        // Run as a real unprivileged user; the state dir and log must be theirs to write.
        chown_recursive(env.dir.path(), "nobody");
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", BIN]);
        c
    } else {
        std::process::Command::new(BIN)
    };
    cmd.env("MAILGATE_CONFIG", &env.config)
        .env("USER", "ceo")
        .env("LOGNAME", "ceo")
        .args(["-i", "a@x.org"]);
    let o = run_with_input(&mut cmd, b"Subject: x\n\nb\n");
    ok(&o);
    let expected = if is_root() {
        "nobody".to_string()
    } else {
        login()
    };
    let got = rec.wait_count(1);
    assert_eq!(got[0].sender(), format!("{expected}@example.org"));
    // The From: that mailgate adds carries the password file's full name, as Postfix's does.
    let passwd = std::process::Command::new("getent")
        .args(["passwd", &expected])
        .output()
        .unwrap();
    let passwd = String::from_utf8_lossy(&passwd.stdout);
    let gecos = passwd.split(':').nth(4).unwrap_or("");
    let full_name = gecos.split(',').next().unwrap_or("").trim();
    let from = if full_name.is_empty() {
        format!("{expected}@example.org")
    } else {
        format!("{full_name} <{expected}@example.org>")
    };
    assert_eq!(got[0].header("From").unwrap(), from);
}

fn chown_recursive(dir: &std::path::Path, user: &str) {
    let s = std::process::Command::new("chown")
        .args(["-R", user])
        .arg(dir)
        .status()
        .unwrap();
    assert!(s.success());
}

#[test]
fn c_and_x_paths_are_never_opened() {
    let (rec, env) = recorder_env();
    // FIFOs: opening one for reading or writing would block until the deadline.
    let x = env.dir.path().join("x.fifo");
    let c = env.dir.path().join("c.fifo");
    for p in [&x, &c] {
        let s = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .unwrap();
        assert!(s.success());
    }
    let created = env.dir.path().join("log.php");
    let o = env.send(
        &[
            "-X",
            x.to_str().unwrap(),
            &format!("-C{}", c.display()),
            "-X",
            created.to_str().unwrap(),
            "-i",
            "a@x.org",
        ],
        b"Subject: x\n\nb\n",
    );
    ok(&o);
    assert!(!created.exists(), "-X must not create its file");
    rec.wait_count(1);
}

#[test]
fn queue_and_alias_modes_answer_like_postfix() {
    let (rec, env) = recorder_env();
    // -bp and the name mailq list the (empty) queue as Postfix's mailq does.
    let mailq = env.dir.path().join("mailq");
    std::os::unix::fs::symlink(BIN, &mailq).unwrap();
    for o in [
        env.send(&["-bp"], b""),
        run_with_input(&mut env.cmd_as(&mailq), b""),
    ] {
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "Mail queue is empty\n");
    }
    // -bi, -I and newaliases: one line that says where aliases live.
    let newaliases = env.dir.path().join("newaliases");
    std::os::unix::fs::symlink(BIN, &newaliases).unwrap();
    for o in [
        env.send(&["-bi"], b""),
        env.send(&["-I"], b""),
        run_with_input(&mut env.cmd_as(&newaliases), b""),
    ] {
        assert_eq!(code(&o), 0);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("aliases are the relay's business"), "{out}");
    }
    // -q flushes the queue (nothing queued here); -bv has nothing to do.
    for args in [&["-q"][..], &["-q30m"]] {
        let o = env.send(args, b"");
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).starts_with("queue run: "));
    }
    let o = env.send(&["-bv", "a@x.org"], b"");
    assert_eq!(code(&o), 0);
    assert!(o.stdout.is_empty() && o.stderr.is_empty());
    assert!(rec.received().is_empty(), "no mode sent mail");
}

#[test]
fn control_characters_in_addresses_are_malformed_never_reinterpreted() {
    let (rec, env) = recorder_env();
    for args in [
        &["-i", "ok@example.com\r\nRCPT TO:<evil2@x.example>"][..],
        &["-i", "ok@example.com\nevil@x.example"],
        &["-f", "a@x.org\r\nRSET", "-i", "ok@example.com"],
        &["-f", "a\u{7}@x.org", "-i", "ok@example.com"],
    ] {
        let o = env.send(args, b"Subject: x\n\nb\n");
        assert_eq!(code(&o), 67, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("control character"), "{}", stderr(&o));
    }
    // -bs: 501 for both.
    let o = env.send(
        &["-bs"],
        b"EHLO c\r\nMAIL FROM:<a\x01b@x.org>\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b\x02@x.org>\r\nQUIT\r\n",
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let codes: Vec<&str> = out.lines().map(|l| &l[..3]).collect();
    assert_eq!(
        codes,
        [
            "220", "250", "250", "250", "250", "250", "501", "250", "501", "221"
        ],
        "{out}"
    );
    assert!(rec.received().is_empty(), "nothing was sent");
}

#[test]
fn a_typo_of_a_command_never_sends_mail() {
    let (rec, env) = recorder_env();
    for (args, hint) in [
        (&["stats"][..], "mailgate status"),
        (&["qeue", "list"], "mailgate queue"),
        (&["hodl"], "mailgate hold"),
    ] {
        let o = env.send(args, b"");
        assert_eq!(code(&o), 64, "{args:?}");
        assert!(
            stderr(&o).contains(&format!("did you mean `{hint}`")),
            "{}",
            stderr(&o)
        );
    }
    // Unknown long options are named as such.
    let o = env.send(&["--bogus"], b"");
    assert_eq!(code(&o), 64);
    assert!(
        stderr(&o).contains("unknown option --bogus"),
        "{}",
        stderr(&o)
    );
    // A global option before the subcommand selects the admin interface.
    let o = run_with_input(
        Command::new(BIN).args(["--config", env.config.to_str().unwrap(), "status", "--json"]),
        b"",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"accounts\""));
    // stdin a terminal: a recipient is a usage error, not an empty mail (script(1) gives a pty).
    let o = Command::new("script")
        .args(["-qec", &format!("{BIN} alice@example.org"), "/dev/null"])
        .env("MAILGATE_CONFIG", &env.config)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&o), 64, "{}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stdout).contains("stdin is a terminal"));
    // Under the sendmail name nothing is second-guessed: `stats` is a local recipient.
    let o = run_with_input(
        env.cmd_as(env.sendmail_link()).args(["-i", "stats"]),
        b"Subject: s\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let got = rec.wait_count(1);
    assert_eq!(got[0].rcpts, ["stats@example.org"]);
}

#[test]
fn usage_errors_exit_64_after_reading_all_input() {
    let (rec, env) = recorder_env();
    let big = vec![b'x'; 4 << 20];
    for (args, needle) in [
        (&["-k", "a@x.org"][..], "unknown option -k"),
        (&["-i"], "no recipients"),
        (&["-f"], "requires a value"),
    ] {
        // run_with_input asserts that all 4 MiB were accepted: no SIGPIPE for the writer.
        let o = env.send(args, &big);
        assert_eq!(code(&o), 64, "{args:?}");
        let err = stderr(&o);
        assert!(err.contains(needle) && err.lines().count() == 1, "{err}");
    }
    let o = env.send(&["-t", "-i"], b"Subject: nobody to send to\n\nx\n");
    assert_eq!(code(&o), 64);
    assert!(rec.received().is_empty());
}

#[test]
fn bad_recipient_exits_67() {
    let (rec, env) = recorder_env();
    let o = env.send(&["-i", "\"a\rRSET\"@x.org"], b"Subject: x\n\nb\n");
    assert_eq!(code(&o), 67, "{}", stderr(&o));
    assert!(rec.received().is_empty());
}

#[test]
fn name_containing_sendmail_is_pure_sendmail() {
    let (rec, env) = recorder_env();
    let link = env.sendmail_link();
    let o = run_with_input(
        env.cmd_as(&link).args(["-i", "status"]),
        b"Subject: x\n\nb\n",
    );
    ok(&o);
    assert_eq!(rec.wait_count(1)[0].rcpts, ["status@example.org"]);
    // As mailgate, "status" is the admin command.
    let o = run_with_input(env.cmd().arg("status"), b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(rec.received().len(), 1);
}

#[test]
fn partial_rcpt_rejection_delivers_to_the_rest() {
    let rec = Recorder::start(Script {
        reject_rcpt: vec![(
            "bad@x.org".into(),
            "550 5.1.1 <bad@x.org>: no such user".into(),
        )],
        ..Script::default()
    });
    let env = Env::new(rec.port, "");
    let o = env.send(&["-i", "good@x.org", "bad@x.org"], b"Subject: x\n\nb\n");
    assert_eq!(code(&o), 0);
    let err = stderr(&o);
    assert!(
        err.contains("bad@x.org") && err.contains("550 5.1.1") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(rec.wait_count(1)[0].rcpts, ["good@x.org"]);
    // All rejected: exit 69 with the relay's reply.
    let o = env.send(&["-i", "bad@x.org"], b"Subject: x\n\nb\n");
    assert_eq!(code(&o), 69);
    assert!(stderr(&o).contains("550 5.1.1"), "{}", stderr(&o));
}

#[test]
fn relay_5xx_exits_69_and_trouble_is_queued_never_75() {
    for flags in [&["-f", "RCPT"][..], &["-f", "MAIL"], &["-f", "DATA"]] {
        let sink = Sink::start(flags);
        let env = Env::new(sink.port, "");
        let o = env.send(&["-i", "a@x.org"], b"Subject: x\n\nb\n");
        assert_eq!(code(&o), 69, "{flags:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(" 5"), "{flags:?}: {}", stderr(&o));
        assert!(sink.received().is_empty());
    }
    // 4xx at MAIL, 421 at DATA, nobody listening: kept in the queue, exit 0 (tests/spool.rs
    // delivers them later).
    for flags in [&["-r", "MAIL"][..], &["-Q", "DATA"]] {
        let sink = Sink::start(flags);
        let env = Env::new(sink.port, "");
        let o = env.send(&["-i", "a@x.org"], b"Subject: x\n\nb\n");
        assert_eq!(code(&o), 0, "{flags:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("queued"), "{flags:?}: {}", stderr(&o));
    }
    let env = Env::new(free_port(), "");
    let o = env.send(&["-i", "a@x.org"], b"Subject: x\n\nb\n");
    assert_eq!(code(&o), 0);
    assert!(
        stderr(&o).contains("Connection refused") && stderr(&o).contains("queued"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn smtp_sink_receives_the_message() {
    let sink = Sink::start(&[]);
    let env = Env::new(sink.port, "");
    ok(&env.send(
        &["-t", "-i"],
        b"To: Someone <someone@x.org>\nSubject: real sink\n\nHello\n.\nWorld\n",
    ));
    let got = sink.wait_count(1);
    assert_eq!(got[0].rcpts, ["someone@x.org"]);
    assert_eq!(got[0].header("Subject").unwrap(), "real sink");
    assert!(
        got[0].text().ends_with("\nHello\n.\nWorld\n"),
        "{:?}",
        got[0].text()
    );
    assert!(env.log_text().contains("status=sent"), "{}", env.log_text());
}

#[test]
fn bs_session_with_two_transactions() {
    let sink = Sink::start(&[]);
    let env = Env::new(sink.port, "");
    let session = "EHLO client\r\nMAIL FROM:<app@example.org>\r\nRCPT TO:<one@x.org>\r\nDATA\r\nSubject: first\r\n\r\n..dotted\r\n.\r\n\
                   RSET\r\nMAIL FROM:<app@example.org> BODY=8BITMIME\r\nRCPT TO:<two@x.org>\r\nRCPT TO:<three@x.org>\r\nDATA\r\nSubject: second\r\n\r\nx\r\n.\r\nQUIT\r\n";
    let mut cmd = env.cmd();
    cmd.arg("-bs");
    let o = run_with_input(&mut cmd, session.as_bytes());
    assert_eq!(code(&o), 0);
    assert!(
        o.stderr.is_empty(),
        "-bs must not write to stderr: {}",
        stderr(&o)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("220 "), "{out}");
    assert!(
        out.contains("250-8BITMIME") && out.contains("250-PIPELINING") && out.contains("250-SIZE"),
        "{out}"
    );
    assert_eq!(out.matches("250 2.0.0 Ok: queued as ").count(), 2, "{out}");
    assert!(out.ends_with("221 2.0.0 Bye\r\n"), "{out}");
    let mut got = sink.wait_count(2);
    // Dumps of the same second come in no particular order.
    got.sort_by_key(|r| r.header("Subject"));
    assert_eq!(got[0].rcpts, ["one@x.org"]);
    assert!(
        got[0].text().ends_with("\n.dotted\n"),
        "{:?}",
        got[0].text()
    );
    assert_eq!(got[1].rcpts, ["two@x.org", "three@x.org"]);
}

#[test]
fn bs_reports_relay_refusal_in_the_session() {
    let sink = Sink::start(&["-f", "RCPT"]);
    let env = Env::new(sink.port, "");
    let o = run_with_input(
        env.cmd().arg("-bs"),
        b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\nSubject: s\r\n\r\nx\r\n.\r\nQUIT\r\n",
    );
    assert!(o.stderr.is_empty());
    let out = String::from_utf8_lossy(&o.stdout);
    let data_reply = out.lines().rev().nth(1).unwrap();
    assert!(data_reply.starts_with("554 "), "{out}");
}

#[test]
fn broken_config_exits_78_with_file_and_line() {
    let (_rec, env) = recorder_env();
    std::fs::write(&env.config, "[relay]\nport = 10025\nbogus_key = 1\n").unwrap();
    let o = env.send(&["-i", "a@x.org"], b"Subject: x\n\nb\n");
    assert_eq!(code(&o), 78);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}:3:", env.config.display())),
        "{err}"
    );
    // The same in -bs: the greeting says so, stderr stays empty.
    let o = run_with_input(env.cmd().arg("-bs"), b"QUIT\r\n");
    assert!(o.stderr.is_empty());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("554 5.3.5"));
}

#[test]
fn cron_style_call() {
    let (rec, env) = recorder_env();
    ok(&env.send(
        &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
        b"Subject: Cron <root@web1> run-parts\n\noutput\n",
    ));
    let got = rec.wait_count(1);
    assert_eq!(got[0].rcpts, ["root@example.org"]);
    assert_eq!(
        got[0].header("From").unwrap(),
        format!("CronDaemon <{}@example.org>", login())
    );
}

#[test]
fn stdin_is_not_inherited_by_noop_modes() {
    // -bp must not wait for input that never comes.
    let (_rec, env) = recorder_env();
    let mut child = env
        .cmd()
        .arg("-bp")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = wait_for("-bp to exit without input", || child.try_wait().unwrap());
    drop(child.stdin.take());
    assert!(status.success(), "pid {pid}");
}
