//! Nothing lost, nothing hangs: a deliberately misbehaving relay (the in-test recorder with
//! per-RCPT rules, a recipient limit, trickled and endless replies, slow DATA reads, no
//! 8BITMIME), closed stderr, concurrent releases and damaged entries.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tests run as root, which is exempt by default; no alert mail among the counted ones.
const NOT_EXEMPT: &str =
    "[accounts.root]\nexempt = false\nmax_deferred = 100\n[alerts]\nadmin = \"\"\n";
const LIMITS: &str = "[defaults]\nlimits = [ { window = \"1h\", messages = 1000 } ]\n";

fn queue(env: &Env) -> serde_json::Value {
    json(env, &["queue", "list"], None)
}

fn later() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 7200
}

#[test]
fn ten_thousand_recipients_through_a_relay_that_takes_a_thousand_each_exactly_once() {
    let rec = Recorder::start(Script {
        rcpt_limit: Some(1000),
        ..Script::default()
    });
    let env = Env::new(rec.port, LIMITS);
    let rcpts: Vec<String> = (0..10_000).map(|i| format!("r{i}@x.org")).collect();
    let mut args = vec!["-i".to_string()];
    args.extend(rcpts.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = env.send(&args, b"Subject: newsletter\n\nb\n");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let got = rec.wait_count(10);
    assert_eq!(got.len(), 10, "ten transactions of a thousand");
    let mut delivered: Vec<String> = got.into_iter().flat_map(|r| r.rcpts).collect();
    delivered.sort();
    let mut expected = rcpts.clone();
    expected.sort();
    assert_eq!(delivered, expected, "every recipient exactly once");
    assert!(queue(&env).as_array().unwrap().is_empty());
    // Counted once, as one message of 10,000 recipients.
    let status = json(&env, &["status", &login()], None);
    let window = &status["accounts"][0]["windows"][0];
    assert_eq!(window["messages"], 1, "{status}");
    assert_eq!(window["recipients"], 10_000, "{status}");
}

#[test]
fn temporarily_refused_recipients_stay_queued_until_delivered_once() {
    let rec = Recorder::start(Script {
        reject_rcpt: vec![
            ("busy@x.org".into(), "451 4.3.0 try again".into()),
            ("full@x.org".into(), "450 4.2.2 mailbox busy".into()),
            ("gone@x.org".into(), "550 5.1.1 no such user".into()),
        ],
        reject_once: true,
        ..Script::default()
    });
    let env = Env::new(rec.port, LIMITS);
    let o = env.send(
        &["-i", "ok@x.org", "busy@x.org", "full@x.org", "gone@x.org"],
        b"Subject: partly\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("relay refused <gone@x.org>"), "{err}");
    assert!(
        err.contains("relay deferred") && err.contains("queued"),
        "{err}"
    );
    let got = rec.wait_count(1);
    assert_eq!(got[0].rcpts, ["ok@x.org"]);
    // Just the deferred ones are queued.
    let q = queue(&env);
    assert_eq!(q.as_array().unwrap().len(), 1, "{q}");
    assert_eq!(
        q[0]["recipients"],
        serde_json::json!(["busy@x.org", "full@x.org"])
    );
    let out = admin(&env, &["queue", "run"], Some(later()));
    assert!(out.contains("delivered 1 queued"), "{out}");
    let got = rec.wait_count(2);
    assert_eq!(got[1].rcpts, ["busy@x.org", "full@x.org"]);
    assert!(queue(&env).as_array().unwrap().is_empty());
    admin(&env, &["queue", "run"], Some(later() + 7200));
    assert_eq!(rec.received().len(), 2, "nobody twice");

    // -bs: 250 only for what was relayed or kept.
    let o = env.send(
        &["-bs"],
        b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<busy2@x.org>\r\nDATA\r\nSubject: bs\r\n\r\nx\r\n.\r\nQUIT\r\n",
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("250 2.0.0 Ok: queued as REC3"), "{out}");
}

/// Runs `env.send` and returns the output and how long it took.
fn timed_send(env: &Env, args: &[&str], msg: &[u8]) -> (std::process::Output, Duration) {
    let start = Instant::now();
    let o = env.send(args, msg);
    (o, start.elapsed())
}

#[test]
fn one_deadline_bounds_the_whole_transaction_whatever_the_relay_trickles() {
    let cases: Vec<(&str, Script, Vec<u8>)> = vec![
        (
            "greeting one byte per 300 ms",
            Script {
                trickle_greeting: Some(Duration::from_millis(300)),
                ..Script::default()
            },
            b"Subject: t\n\nb\n".to_vec(),
        ),
        (
            "endless EHLO reply",
            Script {
                endless_ehlo: true,
                ..Script::default()
            },
            b"Subject: t\n\nb\n".to_vec(),
        ),
        (
            "DATA read at 40 KB/s",
            Script {
                slow_data: Some(Duration::from_millis(100)),
                ..Script::default()
            },
            {
                let mut m = b"Subject: big\n\n".to_vec();
                for _ in 0..20_000 {
                    m.extend_from_slice(
                        b"0123456789012345678901234567890123456789012345678901234567890123456789\n",
                    );
                }
                m
            },
        ),
    ];
    for (what, script, msg) in cases {
        let rec = Recorder::start(script);
        let env = Env::new(rec.port, LIMITS);
        std::fs::write(
            &env.config,
            std::fs::read_to_string(&env.config)
                .unwrap()
                .replace("timeout = \"5s\"", "timeout = \"2s\""),
        )
        .unwrap();
        let (o, took) = timed_send(&env, &["-i", "a@x.org"], &msg);
        assert_eq!(code(&o), 0, "{what}: {}", stderr(&o));
        assert!(stderr(&o).contains("queued"), "{what}: {}", stderr(&o));
        // The deadline is 2 s; the old per-line timeout took 6 s, for ever, and 28 s here.
        assert!(
            took < Duration::from_millis(3500),
            "{what}: took {took:?} with a 2 s deadline"
        );
        assert_eq!(queue(&env).as_array().unwrap().len(), 1, "{what}");
    }
}

#[test]
fn a_dead_relay_costs_one_timeout_per_queue_run_not_one_per_entry() {
    // A listener that never answers: connect succeeds, the greeting never comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let env = Env::new(port, LIMITS);
    std::fs::write(
        &env.config,
        std::fs::read_to_string(&env.config)
            .unwrap()
            .replace("timeout = \"5s\"", "timeout = \"1s\""),
    )
    .unwrap();
    for i in 0..5 {
        let o = env.send(&["-i", &format!("r{i}@x.org")], b"Subject: d\n\nb\n");
        assert_eq!(code(&o), 0);
    }
    let out = admin(&env, &["queue", "run"], Some(later()));
    assert!(out.contains("relay unavailable"), "{out}");
    assert!(out.contains("5 queued for later"), "{out}");
    // Only the first entry was tried; the others were left alone for this run.
    let attempts: Vec<i64> = queue(&env)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["attempts"].as_i64().unwrap())
        .collect();
    assert_eq!(
        attempts.iter().filter(|a| **a == 1).count(),
        1,
        "{attempts:?}"
    );
    assert_eq!(
        attempts.iter().filter(|a| **a == 0).count(),
        4,
        "{attempts:?}"
    );
}

#[test]
fn bs_end_of_input_inside_data_relays_and_counts_nothing() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(rec.port, LIMITS);
    for tail in ["", "Subject: cut\r\n\r\nhalf", "Subject: q\r\n\r\nQUIT\r\n"] {
        let input = format!("EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n{tail}");
        let o = env.send(&["-bs"], input.as_bytes());
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("354"), "{out}");
        assert!(!out.contains("queued as"), "{tail:?}: {out}");
    }
    assert!(rec.received().is_empty());
    assert!(!env.log_text().contains("status="), "{}", env.log_text());
    let status = json(&env, &["status", &login()], None);
    assert!(
        status["accounts"]
            .as_array()
            .is_none_or(|a| a.is_empty() || a[0]["windows"][0]["messages"] == 0),
        "{status}"
    );
}

#[test]
fn bs_idle_client_gets_421_and_nothing_is_sent() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        &format!("{LIMITS}[smtp]\nidle_timeout = \"1s\"\n"),
    );
    let mut child = env
        .cmd()
        .arg("-bs")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    stdin
        .write_all(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\nSubject: x\r\n")
        .unwrap();
    // ... and then nothing, with the pipe still open.
    let pid = child.id();
    let out = wait_output(child, pid);
    drop(stdin);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("421 4.4.2"), "{text}");
    assert!(rec.received().is_empty());
}

#[test]
fn the_exit_code_never_depends_on_stderr_being_writable() {
    let rec = Recorder::start(Script {
        reject_rcpt: vec![("gone@x.org".into(), "550 5.1.1 no such user".into())],
        ..Script::default()
    });
    let env = Env::new(
        rec.port,
        &format!("{NOT_EXEMPT}[defaults]\nlimits = [ {{ window = \"1h\", messages = 1 }} ]\n"),
    );
    // sent (0), refused (69: over the limit), over the limit (69), usage (64)
    let cases: [(&[&str], i32); 4] = [
        (&["-i", "ok@x.org"], 0),
        (&["-i", "gone@x.org"], 69),
        (&["-i", "ok@x.org"], 69),
        (&["-Z"], 64),
    ];
    for (args, expected) in cases {
        // stderr closed (EBADF) ...
        let script = format!(
            "exec 2>&-; printf 'Subject: s\\n\\nb\\n' | MAILGATE_CONFIG={} {BIN} {}",
            env.config.display(),
            args.join(" ")
        );
        let o = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert_eq!(o.status.code(), Some(expected), "closed stderr, {args:?}");
    }
    // ... and stderr a pipe nobody reads any more (EPIPE).
    admin(&env, &["reset", &login()], None);
    for (args, expected) in cases {
        let mut child = env
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stderr.take());
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(b"Subject: s\n\nb\n");
        }
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(expected), "EPIPE on stderr, {args:?}");
    }
    // `status | head -1`: stdout closed early, no panic.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "MAILGATE_CONFIG={} {BIN} status | head -c1 >/dev/null; echo ${{PIPESTATUS:-0}}",
            env.config.display()
        ))
        .output()
        .unwrap();
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn two_concurrent_releases_never_send_a_message_twice() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        &format!(
            "{NOT_EXEMPT}[defaults]\nlimits = [ {{ window = \"1h\", messages = 1, action = \"hold\" }} ]\n"
        ),
    );
    for i in 0..21 {
        let o = env.send(
            &["-i", "a@x.org"],
            format!("Subject: m{i}\n\nb\n").as_bytes(),
        );
        assert_eq!(code(&o), 0);
    }
    assert_eq!(rec.wait_count(1).len(), 1);
    let held = json(&env, &["hold", "list"], None);
    assert_eq!(held.as_array().unwrap().len(), 20);
    let spawn = || {
        env.cmd()
            .args(["hold", "release", "--all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    let (ra, rb) = (a.wait().unwrap(), b.wait().unwrap());
    assert!(ra.code().is_some() && rb.code().is_some());
    let got = rec.wait_count(21);
    let mut subjects: Vec<String> = got.iter().map(|r| r.header("Subject").unwrap()).collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), 21, "every message exactly once");
    assert_eq!(rec.received().len(), 21);
    assert!(
        json(&env, &["hold", "list"], None)
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_damaged_entry_is_listed_then_moved_to_failed_and_the_run_goes_on() {
    let port = free_port();
    let env = Env::new(
        port,
        &format!("{LIMITS}[alerts]\nadmin = \"postmaster@example.org\"\n"),
    );
    for rcpt in ["a@x.org", "b@x.org"] {
        assert_eq!(code(&env.send(&["-i", rcpt], b"Subject: q\n\nb\n")), 0);
    }
    let ids: Vec<String> = queue(&env)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    std::fs::write(
        env.state.join("queue").join(&ids[0]),
        b"{ not json\ngarbage",
    )
    .unwrap();
    let list = admin(&env, &["queue", "list"], None);
    assert!(list.contains("(damaged)"), "{list}");
    let sink = Sink::start_on(port, &[]);
    let o = run_with_input(
        env.cmd()
            .args(["queue", "run"])
            .env("MAILGATE_NOW", later().to_string()),
        b"",
    );
    assert_eq!(
        code(&o),
        74,
        "reported: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("delivered 1 queued"));
    assert!(env.state.join("failed").join(&ids[0]).exists());
    let got = sink.wait_count(2);
    assert!(got.iter().any(|r| r.rcpts == ["b@x.org"]));
    assert!(got.iter().any(|r| r.rcpts == ["postmaster@example.org"]
        && r.header("Subject").unwrap().contains("damaged")));
    assert!(queue(&env).as_array().unwrap().is_empty());
}

#[test]
fn no_raw_8bit_data_for_a_relay_without_8bitmime() {
    let rec = Recorder::start(Script {
        no_8bitmime: true,
        ..Script::default()
    });
    let env = Env::new(rec.port, LIMITS);
    let o = env.send(
        &["-i", "a@x.org"],
        "Subject: hi\nContent-Type: text/plain; charset=UTF-8\n\nGrüße = ok\n".as_bytes(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let got = rec.wait_count(1);
    let text = got[0].text();
    assert!(text.is_ascii(), "{text}");
    assert!(
        text.contains("Content-Transfer-Encoding: quoted-printable"),
        "{text}"
    );
    assert!(text.contains("Gr=C3=BC=C3=9Fe =3D ok"), "{text}");
    // A binary 8-bit part cannot be made 7-bit: kept, with the reason.
    let o = env.send(
        &["-i", "a@x.org"],
        b"Subject: bin\nContent-Type: application/octet-stream\n\n\xff\xfe\n",
    );
    assert_eq!(code(&o), 0);
    assert!(stderr(&o).contains("8BITMIME"), "{}", stderr(&o));
    assert_eq!(rec.received().len(), 1);
}

#[test]
fn within_an_account_mail_leaves_in_order() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        &format!(
            "{NOT_EXEMPT}[defaults]\nlimits = [ {{ window = \"1m\", messages = 1, action = \"defer\" }} ]\n"
        ),
    );
    let t0 = later();
    let send = |i: u32, at: i64| {
        run_with_input(
            env.cmd()
                .args(["-i", "a@x.org"])
                .env("MAILGATE_NOW", at.to_string()),
            format!("Subject: m{i}\n\nb\n").as_bytes(),
        )
    };
    for i in 0..3 {
        assert_eq!(code(&send(i, t0)), 0);
    }
    assert_eq!(rec.wait_count(1).len(), 1);
    // Two minutes later the window has room, but m1 and m2 wait: m3 goes behind them.
    let o = send(3, t0 + 120);
    assert_eq!(code(&o), 0);
    assert!(stderr(&o).contains("waits behind them"), "{}", stderr(&o));
    // One per window (a sliding window of 1 m is up to 5% stricter: 70 s apart).
    let mut runs = Vec::new();
    for step in 1..=3 {
        runs.push(admin(&env, &["queue", "run"], Some(t0 + 120 + step * 70)));
    }
    wait_for(&format!("4 messages; queue runs: {runs:?}"), || {
        (rec.received().len() >= 4).then_some(())
    });
    let got = rec.received();
    let order: Vec<String> = got.iter().map(|r| r.header("Subject").unwrap()).collect();
    assert_eq!(order, ["m0", "m1", "m2", "m3"]);
}

#[test]
fn on_a_full_disk_one_stuck_entry_does_not_stop_the_others() {
    let env = Env::new(free_port(), LIMITS);
    let disk = SmallDisk::mount(env.dir.path(), "256k");
    let small = disk.0.clone();
    let config = std::fs::read_to_string(&env.config).unwrap().replace(
        &env.state.display().to_string(),
        &small.display().to_string(),
    );
    std::fs::write(&env.config, &config).unwrap();
    // Relay down: four entries queued.
    for rcpt in ["busy@x.org", "a@x.org", "b@x.org", "c@x.org"] {
        let o = env.send(&["-i", rcpt], b"Subject: q\n\nb\n");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    // The disk fills up; the relay comes back but keeps deferring busy@x.org, whose entry
    // then cannot be rewritten (ENOSPC).
    let _ = std::fs::write(small.join("filler"), vec![0u8; 1 << 20]);
    let rec = Recorder::start(Script {
        reject_rcpt: vec![("busy@x.org".into(), "451 4.3.0 later".into())],
        ..Script::default()
    });
    let port_line = config
        .lines()
        .find(|l| l.starts_with("port = "))
        .unwrap()
        .to_string();
    std::fs::write(
        &env.config,
        config.replace(&port_line, &format!("port = {}", rec.port)),
    )
    .unwrap();
    let o = run_with_input(
        env.cmd()
            .args(["queue", "run"])
            .env("MAILGATE_NOW", later().to_string()),
        b"",
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(code(&o), 74, "the error is reported: {out}{}", stderr(&o));
    assert!(out.contains("delivered 3 queued"), "{out}");
    let mut got: Vec<String> = rec
        .wait_count(3)
        .into_iter()
        .flat_map(|r| r.rcpts)
        .collect();
    got.sort();
    assert_eq!(got, ["a@x.org", "b@x.org", "c@x.org"]);
    // The stuck entry is still there, whole, for the next run.
    let _ = std::fs::remove_file(small.join("filler"));
    let left = queue(&env);
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left[0]["recipients"], serde_json::json!(["busy@x.org"]));
}

#[test]
fn any_damaged_counter_is_shown_as_broken_and_repaired_by_reset() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        &format!(
            "{LIMITS}[accounts.a1]\nusers = [\"{me}\"]\n[accounts.a2]\nusers = [\"{me}\"]\n",
            me = login()
        ),
    );
    let send = |account: &str| {
        env.send(
            &["--account", account, "-i", "x@x.org"],
            b"Subject: s\n\nb\n",
        )
    };
    let counter = env.state.join("accounts").join("a1");
    let damages: [(&str, &dyn Fn()); 4] = [
        ("a directory", &|| std::fs::create_dir(&counter).unwrap()),
        ("a symlink", &|| {
            std::os::unix::fs::symlink("/etc/passwd", &counter).unwrap()
        }),
        ("zero bytes", &|| std::fs::write(&counter, b"").unwrap()),
        ("garbage", &|| {
            std::fs::write(&counter, vec![0x5a; 4096]).unwrap()
        }),
    ];
    for (what, damage) in damages {
        assert_eq!(code(&send("a1")), 0, "{what}");
        assert_eq!(code(&send("a2")), 0, "{what}");
        std::fs::remove_file(&counter).unwrap();
        damage();
        // The damaged account fails closed; the other one sends on.
        assert_eq!(code(&send("a1")), 71, "{what}");
        assert_eq!(code(&send("a2")), 0, "{what}");
        // status lists both, marks the broken one, and says so in its exit code.
        let o = run_with_input(env.cmd().arg("status"), b"");
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(code(&o), 71, "{what}: {out}");
        assert!(out.contains("a1 (BROKEN: "), "{what}: {out}");
        assert!(out.lines().any(|l| l == "a2"), "{what}: {out}");
        // reset repairs it, whatever it was.
        let o = run_with_input(env.cmd().args(["reset", "a1"]), b"");
        assert_eq!(code(&o), 0, "{what}: {}", stderr(&o));
        assert!(
            std::fs::symlink_metadata(&counter).unwrap().is_file(),
            "{what}"
        );
        assert_eq!(code(&send("a1")), 0, "{what}");
        let o = run_with_input(env.cmd().arg("status"), b"");
        assert_eq!(code(&o), 0, "{what}");
        // The symlink's target was never touched.
        assert!(
            std::fs::read_to_string("/etc/passwd")
                .unwrap()
                .contains("root:")
        );
    }
}

#[test]
fn one_account_cannot_fill_the_spools_or_the_disk() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        &format!(
            "[alerts]\nadmin = \"\"\n[defaults]\nlimits = [ {{ window = \"1h\", messages = 1, action = \"hold\" }} ]\n\
             [spool]\naccount_max_messages = 5\nmin_free_percent = 50\n\
             [accounts.flood]\nusers = [\"{me}\"]\n[accounts.other]\nusers = [\"{me}\"]\n",
            me = login()
        ),
    );
    let disk = SmallDisk::mount(env.dir.path(), "1m");
    let small = disk.0.clone();
    let config = std::fs::read_to_string(&env.config).unwrap().replace(
        &env.state.display().to_string(),
        &small.display().to_string(),
    );
    std::fs::write(&env.config, &config).unwrap();
    let send = |account: &str, i: u32| {
        env.send(
            &["--account", account, "-i", "x@x.org"],
            format!("Subject: {account} {i}\n\nb\n").as_bytes(),
        )
    };
    // The flood: one sent, five held, then refused with a clear line, never a silent 0.
    let codes: Vec<i32> = (0..10).map(|i| code(&send("flood", i))).collect();
    assert_eq!(codes, [0, 0, 0, 0, 0, 0, 69, 69, 69, 69]);
    let o = send("flood", 99);
    assert!(
        stderr(&o).contains("already has 5 messages"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        json(&env, &["hold", "list"], None)
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // Another account still sends.
    assert_eq!(code(&send("other", 0)), 0);
    // Below the free-space reserve nothing more is kept, but mail that goes out still goes,
    // and the admin's commands work.
    let _ = std::fs::write(small.join("filler"), vec![0u8; 600 * 1024]);
    admin(&env, &["reset", "flood"], None);
    admin(&env, &["hold", "delete", "--account", "flood"], None);
    assert_eq!(code(&send("flood", 100)), 0, "sent: room in the window");
    let o = send("flood", 101);
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("% free (reserve 50%)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        code(&send("other", 1)),
        69,
        "its window is full and nothing can be held"
    );
    admin(&env, &["status"], None);
    assert_eq!(rec.received().len(), 3);
}

#[test]
fn a_relayed_message_is_logged_even_when_its_sender_cannot_write_the_log() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(rec.port, LIMITS);
    // Both log files are at the caller's `ulimit -f` (8 KiB): every append fails with EFBIG.
    let filler = vec![b'#'; 8192];
    std::fs::write(&env.log, &filler).unwrap();
    std::fs::write(env.state.join("mailgate.log"), &filler).unwrap();
    let o = run_with_input(
        Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -f 8; exec {BIN} -i a@x.org"))
            .env("MAILGATE_CONFIG", &env.config),
        b"Subject: unlogged\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(rec.wait_count(1).len(), 1, "relayed");
    assert!(!env.log_text().contains("status=sent"));
    let pending = unfinished_records(&env.state).unwrap();
    assert_eq!(
        pending.len(),
        1,
        "the record of the hand-over is kept: {pending:?}"
    );
    let id = pending[0]
        .1
        .split_whitespace()
        .find_map(|f| f.strip_prefix("id="))
        .unwrap()
        .to_string();
    // The sender is gone (its slot's lock with it): a queue run writes the line at once.
    std::fs::write(&env.log, b"").unwrap();
    admin(&env, &["queue", "run"], None);
    let log = env.log_text();
    assert!(
        log.contains(&format!("id={id}"))
            && log.contains("status=unknown")
            && log.contains("account=root"),
        "{log}"
    );
    assert!(
        unfinished_records(&env.state).unwrap().is_empty(),
        "marked done"
    );
    // And once only: the next run finds nothing to log.
    std::fs::write(&env.log, b"").unwrap();
    admin(&env, &["queue", "run"], None);
    assert!(!env.log_text().contains("status=unknown"));
}

#[test]
fn hostile_headers_cannot_flood_the_log_or_drive_the_admins_terminal() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        &format!(
            "{NOT_EXEMPT}[defaults]\nlimits = [ {{ window = \"1h\", messages = 1, action = \"hold\" }} ]\n"
        ),
    );
    let script = format!(
        "X-PHP-Originating-Script: 1000:{}\x1b[2J\x07",
        "a".repeat(1 << 20)
    );
    for i in 0..5 {
        let msg = format!("{script}\nSubject: evil\x1b]0;owned\x07 {i}\n\nb\n");
        assert_eq!(code(&env.send(&["-i", "x@x.org"], msg.as_bytes())), 0);
    }
    // Five attempts with a 1 MiB header: a few KiB of log, no raw escape.
    let log = env.log_text();
    assert!(log.len() < 5 * 4096, "{} bytes of log", log.len());
    assert!(!log.contains('\x1b') && !log.contains('\x07'), "{log}");
    assert!(log.contains("more bytes]"), "cut values are marked");
    // hold list and hold show escape what the customer wrote.
    let list = admin(&env, &["hold", "list"], None);
    assert!(!list.contains('\x1b') && !list.contains('\x07'), "{list:?}");
    assert!(list.contains("\\x1b]0;owned"), "{list}");
    let id = json(&env, &["hold", "list"], None)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = admin(&env, &["hold", "show", &id, "--body"], None);
    assert!(
        !show.contains('\x1b') && !show.contains('\x07'),
        "terminal escapes in hold show"
    );
}

#[test]
fn another_accounts_sender_domain_is_refused() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        &format!(
            "{LIMITS}[accounts.\"alice.example\"]\nusers = [\"{me}\"]\nallowed_senders = [\"*@alice.example\"]\nsender_policy = \"reject\"\n\
             [accounts.mallory]\nusers = [\"{me}\"]\n",
            me = login()
        ),
    );
    let o = env.send(
        &[
            "--account",
            "mallory",
            "-f",
            "ceo@alice.example",
            "-i",
            "x@x.org",
        ],
        b"Subject: s\n\nb\n",
    );
    assert_eq!(code(&o), 77, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("belongs to account alice.example"),
        "{}",
        stderr(&o)
    );
    let o = env.send(
        &["--account", "mallory", "-i", "x@x.org"],
        b"From: CEO <ceo@alice.example>\nSubject: s\n\nb\n",
    );
    assert_eq!(code(&o), 77, "From: header too: {}", stderr(&o));
    // The owner itself sends as its domain.
    let o = env.send(
        &[
            "--account",
            "alice.example",
            "-f",
            "ceo@alice.example",
            "-i",
            "x@x.org",
        ],
        b"Subject: s\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(rec.received().len(), 1);
}

#[test]
fn mailgates_own_lane_is_a_unix_socket_and_only_a_trusted_listener_gets_mail() {
    assert!(
        is_root(),
        "this test binds a listener as another user; run it as root (.ci/run)"
    );
    let dir = TempDir::new("lane");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let socket = dir.path().join("smtpd");
    let relay = format!("socket = \"{}\"", socket.display());

    // A listener of a trusted owner (nobody, as smtp-sink runs in these tests) gets the mail,
    // whatever host and port say.
    let sink = Sink::start_unix(&socket, Some("nobody"));
    let env = Env::with_relay(&relay, "");
    let o = env.send(&["-i", "lane@example.net"], b"Subject: lane\n\nx\n");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let got = sink.wait_count(1);
    assert_eq!(got[0].rcpts, ["lane@example.net"]);
    assert!(env.log_text().contains("status=sent"), "{}", env.log_text());
    drop(sink);

    // The same socket bound by another user (daemon): the message stays queued, with the
    // reason, and the listener saw no transaction.
    let _ = std::fs::remove_file(&socket);
    let squatter = Sink::start_unix(&socket, Some("daemon"));
    let o = env.send(&["-i", "squat@example.net"], b"Subject: squat\n\nx\n");
    assert_eq!(code(&o), 0, "queued, not refused: {}", stderr(&o));
    let log = env.log_text();
    assert!(
        log.lines().any(|l| l.contains("status=queued")
            && l.contains("not to a trusted owner")
            && l.contains(&socket.display().to_string())),
        "{log}"
    );
    assert!(squatter.received().is_empty());
    let q = queue(&env);
    assert!(q.to_string().contains("squat@example.net"), "{q}");
}
