//! Limits end to end: exact under concurrency, windows over (test) time, crash safety, the
//! refusal as sendmail and `-bs` callers see it.

mod common;
use common::*;
use std::process::Command;

const MSG: &[u8] = b"Subject: limit test\n\nbody\n";

fn status_json(env: &Env, now: Option<i64>) -> serde_json::Value {
    let mut cmd = env.cmd();
    cmd.args(["status", "--json"]);
    if let Some(t) = now {
        cmd.env("MAILGATE_NOW", t.to_string());
    }
    let o = run_with_input(&mut cmd, b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("status --json is JSON")
}

fn window<'a>(status: &'a serde_json::Value, account: &str, window: &str) -> &'a serde_json::Value {
    let acc = status["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == account)
        .expect("account listed");
    acc["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["window"] == window)
        .expect("window listed")
}

#[test]
fn eight_parallel_senders_get_exactly_the_limit() {
    let sink = Sink::start(&[]);
    let limit = 37;
    let env = Env::new(
        sink.port,
        &format!(
            "[alerts]\nadmin = \"\"\n[accounts.shop]\nusers = [\"{}\", 0]\nlimits = [ {{ window = \"1h\", messages = {limit} }}, {{ window = \"1d\", messages = 1000 }} ]\n",
            whoami()
        ),
    );
    let per_sender = 10;
    let results: Vec<Vec<i32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..per_sender)
                        .map(|_| code(&env.send(&["--account", "shop", "-i", "to@x.org"], MSG)))
                        .collect::<Vec<i32>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<i32> = results.concat();
    let accepted = all.iter().filter(|&&c| c == 0).count();
    let refused = all.iter().filter(|&&c| c == 69).count();
    assert_eq!(
        (accepted, refused),
        (limit, 8 * per_sender - limit),
        "exit codes: {all:?}"
    );
    assert_eq!(sink.wait_count(limit).len(), limit);
    let st = status_json(&env, None);
    let w = window(&st, "shop", "1h");
    assert_eq!(w["messages"], limit as u64);
    assert_eq!(w["refused"], (8 * per_sender - limit) as u64);
    assert_eq!(w["remaining_messages"], 0);
    assert!(w["next_possible"].as_i64().is_some());
}

#[test]
fn server_cap_is_exact_across_accounts() {
    let sink = Sink::start(&[]);
    let me = whoami();
    let env = Env::new(
        sink.port,
        &format!(
            "[alerts]\nadmin = \"\"\n[defaults]\nlimits = [ {{ window = \"1h\", messages = 100 }} ]\n[server]\nlimits = [ {{ window = \"1h\", messages = 25 }} ]\n\
             [accounts.a]\nusers = [\"{me}\", 0]\n[accounts.b]\nusers = [\"{me}\", 0]\n"
        ),
    );
    let codes: Vec<i32> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let env = &env;
                s.spawn(move || {
                    let acc = if i % 2 == 0 { "a" } else { "b" };
                    (0..6)
                        .map(|_| code(&env.send(&["--account", acc, "-i", "to@x.org"], MSG)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(codes.iter().filter(|&&c| c == 0).count(), 25, "{codes:?}");
    assert_eq!(sink.wait_count(25).len(), 25);
    let st = status_json(&env, None);
    assert_eq!(st["server"]["windows"][0]["messages"], 25);
}

fn whoami() -> String {
    let o = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

#[test]
fn sliding_window_over_test_time() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        "[alerts]\nadmin = \"\"\n[defaults]\nlimits = [ { window = \"1m\", messages = 3 }, { window = \"1h\", recipients = 5 } ]\n[accounts.root]\nexempt = false\n",
    );
    let t0: i64 = 1_900_000_000;
    let send = |t: i64, rcpts: &[&str]| {
        let mut args = vec!["-i"];
        args.extend_from_slice(rcpts);
        run_with_input(
            env.cmd().env("MAILGATE_NOW", t.to_string()).args(&args),
            MSG,
        )
    };
    for i in 0..3 {
        assert_eq!(code(&send(t0 + i, &["a@x.org"])), 0);
    }
    let refused = send(t0 + 10, &["a@x.org"]);
    assert_eq!(code(&refused), 69);
    let err = stderr(&refused);
    assert!(
        err.starts_with(&format!(
            "mailgate: {} exceeded 3 messages per 1m (limit \"1m\"); next message possible at ",
            whoami()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    // Still full just before the window has passed, free after it.
    assert_eq!(code(&send(t0 + 59, &["a@x.org"])), 69);
    assert_eq!(code(&send(t0 + 64, &["a@x.org", "b@x.org"])), 0);
    // Recipients: 3 + 2 = 5 per hour used; one more recipient is over.
    let over = send(t0 + 130, &["c@x.org"]);
    assert_eq!(code(&over), 69);
    assert!(
        stderr(&over).contains("exceeded 5 recipients per 1h"),
        "{}",
        stderr(&over)
    );
    assert_eq!(rec.received().len(), 4);
    let st = status_json(&env, Some(t0 + 130));
    assert_eq!(window(&st, &whoami(), "1h")["recipients"], 5);
    assert_eq!(window(&st, &whoami(), "1m")["refused"], 1);
}

#[test]
fn bs_refusal_is_550_and_the_session_goes_on() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        "[alerts]\nadmin = \"\"\n[defaults]\nlimits = [ { window = \"1h\", messages = 1 } ]\n[accounts.root]\nexempt = false\n",
    );
    let tx =
        "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\nSubject: s\r\n\r\nx\r\n.\r\n";
    let session = format!("EHLO c\r\n{tx}{tx}NOOP\r\nQUIT\r\n");
    let o = run_with_input(env.cmd().arg("-bs"), session.as_bytes());
    assert!(o.stderr.is_empty());
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("250 2.0.0 Ok: queued as").count(), 1, "{out}");
    assert!(
        out.contains("\r\n550 5.7.1 ") && out.contains("exceeded 1 messages per 1h"),
        "{out}"
    );
    assert!(out.ends_with("250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"), "{out}");
    assert_eq!(rec.received().len(), 1);
}

#[test]
fn relay_refusal_gives_the_quota_back() {
    let sink = Sink::start(&["-f", "RCPT"]);
    let env = Env::new(
        sink.port,
        "[alerts]\nadmin = \"\"\n[defaults]\nlimits = [ { window = \"1h\", messages = 2 } ]\n[accounts.root]\nexempt = false\n",
    );
    for _ in 0..4 {
        assert_eq!(code(&env.send(&["-i", "a@x.org"], MSG)), 69);
    }
    let st = status_json(&env, None);
    let w = window(&st, &whoami(), "1h");
    assert_eq!(
        (w["messages"].as_u64(), w["refused"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );
}

#[test]
fn sigkill_at_any_instant_leaves_valid_state_and_never_relays_uncounted() {
    let sink = Sink::start(&[]);
    let env = Env::new(
        sink.port,
        "[alerts]\nadmin = \"\"\n[defaults]\nlimits = [ { window = \"1h\", messages = 100000 }, { window = \"1m\", messages = 100000 } ]\n[accounts.root]\nexempt = false\n",
    );
    // How long one whole send takes on this machine now (a loaded CI machine is slower); it
    // is counted and relayed like any other.
    let started = std::time::Instant::now();
    assert_eq!(code(&env.send(&["-i", "a@x.org"], MSG)), 0);
    let whole = (started.elapsed().as_micros() as u64).max(1);
    let rounds = 150;
    let mut killed = 0;
    for i in 0..rounds {
        // Kill within the time of one send: lands before, during and after the counter
        // update and the relay.
        let delay = std::time::Duration::from_micros(i as u64 * 197 % whole);
        if kill_after(env.cmd().args(["-i", "a@x.org"]), MSG, delay).is_none() {
            killed += 1;
        }
    }
    // Every relayed message was counted first; a kill can only leave a count without a relay.
    let st = status_json(&env, None);
    let counted = window(&st, &whoami(), "1h")["messages"].as_u64().unwrap() as usize;
    // Let in-flight sink transactions of killed senders finish or drop.
    let relayed = wait_for("the sink to settle", || {
        let a = sink.received().len();
        std::thread::sleep(std::time::Duration::from_millis(200));
        (sink.received().len() == a).then_some(a)
    });
    assert!(killed > 0, "no process was killed; the test proved nothing");
    assert!(relayed <= counted, "relayed {relayed} > counted {counted}");
    assert!(
        counted <= relayed + killed,
        "counted {counted} > relayed {relayed} + killed {killed}"
    );
    // And the files still work: one more message is counted on top.
    assert_eq!(code(&env.send(&["-i", "a@x.org"], MSG)), 0);
    let after = status_json(&env, None);
    assert_eq!(
        window(&after, &whoami(), "1h")["messages"]
            .as_u64()
            .unwrap() as usize,
        counted + 1
    );
}

#[test]
fn corrupt_state_fails_closed_by_default_and_open_on_request() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        "[alerts]\nadmin = \"\"\n[accounts.root]\nexempt = false\n",
    );
    assert_eq!(code(&env.send(&["-i", "a@x.org"], MSG)), 0);
    let file = env.state.join("accounts").join(whoami());
    std::fs::write(&file, vec![0x5a; 4096]).unwrap();
    let o = env.send(&["-i", "a@x.org"], MSG);
    assert_eq!(code(&o), 71);
    assert!(
        stderr(&o).contains(&file.display().to_string()) && stderr(&o).contains("corrupt"),
        "{}",
        stderr(&o)
    );
    let open = Env::new(
        rec.port,
        "[alerts]\nadmin = \"\"\n[accounts.root]\nexempt = false\n[state]\non_error = \"fail-open\"\n",
    );
    let file = open.state.join("accounts").join(whoami());
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, vec![0x5a; 4096]).unwrap();
    assert_eq!(code(&open.send(&["-i", "a@x.org"], MSG)), 0);
    assert!(open.log_text().contains("corrupt"), "{}", open.log_text());
    // The corrupt file is left for the admin, not silently reset.
    assert_eq!(std::fs::read(&file).unwrap(), vec![0x5a; 4096]);
    // `mailgate reset` repairs it.
    let o = run_with_input(open.cmd().args(["reset", &whoami()]), b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(code(&open.send(&["-i", "a@x.org"], MSG)), 0);
    let st = status_json(&open, None);
    assert_eq!(window(&st, &whoami(), "1h")["messages"], 1);
}

#[test]
fn sender_policy_rewrites_or_refuses() {
    let rec = Recorder::start(Script::default());
    let me = whoami();
    let env = Env::new(
        rec.port,
        &format!(
            "[alerts]\nadmin = \"\"\n[accounts.shop]\nusers = [\"{me}\", 0]\nallowed_senders = [\"*@shop.example\"]\ndefault_sender = \"noreply@shop.example\"\n\
             [accounts.strict]\nusers = [\"{me}\", 0]\nallowed_senders = [\"*@strict.example\"]\nsender_policy = \"reject\"\n"
        ),
    );
    assert_eq!(
        code(&env.send(
            &[
                "--account",
                "shop",
                "-f",
                "sales@shop.example",
                "-i",
                "a@x.org"
            ],
            MSG
        )),
        0
    );
    assert_eq!(
        code(&env.send(
            &[
                "--account",
                "shop",
                "-f",
                "spoof@bank.example",
                "-i",
                "a@x.org"
            ],
            MSG
        )),
        0
    );
    let o = env.send(
        &[
            "--account",
            "strict",
            "-f",
            "spoof@bank.example",
            "-i",
            "a@x.org",
        ],
        MSG,
    );
    assert_eq!(code(&o), 77);
    assert!(
        stderr(&o).contains("not allowed for account strict"),
        "{}",
        stderr(&o)
    );
    let got = rec.wait_count(2);
    assert_eq!(got[0].sender(), "sales@shop.example");
    assert_eq!(got[1].sender(), "noreply@shop.example");
    assert!(
        env.log_text()
            .contains("sender_rewritten=spoof@bank.example"),
        "{}",
        env.log_text()
    );
    assert_eq!(rec.received().len(), 2);
}

#[test]
fn a_held_lock_defers_the_message_and_names_the_holder() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        "[alerts]\nadmin = \"\"\n[state]\nlock_timeout = \"10s\"\n[accounts.root]\nexempt = false\nmax_deferred = 10\n",
    );
    assert_eq!(code(&env.send(&["-i", "a@x.org"], MSG)), 0);
    // Another process holds the account's lock (a stopped sender, say).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(env.state.join("accounts").join(whoami()))
        .unwrap();
    file.lock().unwrap();
    let o = env.send(&["-i", "a@x.org"], MSG);
    // Kept, not failed, and without waiting lock_timeout.
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let holder = format!("held by pid {}", std::process::id());
    assert!(
        stderr(&o).contains("counter busy") && stderr(&o).contains(&holder),
        "{}",
        stderr(&o)
    );
    assert!(env.log_text().contains(&holder), "the log names the holder");
    // status shows the others and who holds this one, without failing.
    let out = admin(&env, &["status"], None);
    assert!(out.contains(&holder), "{out}");
    assert_eq!(rec.received().len(), 1);
    file.unlock().unwrap();
    // The next queue run releases and counts it.
    let out = admin(&env, &["queue", "run"], None);
    assert!(out.contains("released 1 deferred"), "{out}");
    assert_eq!(rec.wait_count(2).len(), 2);
}

#[test]
fn one_syslog_line_per_message_and_a_file_when_syslog_is_gone() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(rec.port, "[alerts]\nadmin = \"\"\n");
    let socket = env.dir.path().join("log.sock");
    let text = std::fs::read_to_string(&env.config).unwrap();
    let text = text.replace(
        &format!("file = \"{}\"", env.log.display()),
        &format!("syslog_socket = \"{}\"", socket.display()),
    );
    std::fs::write(&env.config, text).unwrap();
    let syslog = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    syslog.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(code(&env.send(&["-i", "a@x.org"], MSG)), 0);
    let mut buf = [0u8; 4096];
    let n = syslog
        .recv(&mut buf)
        .expect("one datagram on the syslog socket");
    let line = String::from_utf8_lossy(&buf[..n]);
    // <22> = facility mail (2 << 3) | info (6).
    assert!(
        line.starts_with("<22>") && line.contains(" mailgate["),
        "{line}"
    );
    for key in [
        "account=",
        "uid=",
        "user=",
        "from=<",
        "nrcpt=1",
        "size=",
        "status=sent",
        "relay=",
    ] {
        assert!(line.contains(key), "{key} missing in {line}");
    }
    // Syslog gone: the decision lands in the state directory instead.
    drop(syslog);
    std::fs::remove_file(&socket).unwrap();
    assert_eq!(code(&env.send(&["-i", "b@x.org"], MSG)), 0);
    let fallback = std::fs::read_to_string(env.state.join("mailgate.log")).unwrap();
    assert!(
        fallback.contains("status=sent") && fallback.contains("nrcpt=1"),
        "{fallback}"
    );
    assert_eq!(rec.received().len(), 2);
}

/// Issue 30: a script's own limit is exact under 8 parallel senders, and narrows only that
/// script: another script of the same account goes on under the account's limit.
#[test]
fn a_script_limit_is_exact_under_eight_parallel_senders() {
    let sink = Sink::start(&[]);
    let limit = 13;
    let env = Env::new(
        sink.port,
        &format!(
            "[alerts]\nadmin = \"\"\n[accounts.shop]\nusers = [\"{}\", 0]\nlimits = [ {{ window = \"1h\", messages = 1000 }} ]\nscript_limits = [ {{ script = \"*/contact.php\", window = \"1h\", messages = {limit} }} ]\n",
            whoami()
        ),
    );
    let msg = |script: &str| format!("X-PHP-Originating-Script: 1000:{script}\nSubject: s\n\nb\n");
    let per_sender = 5;
    let contact = msg("contact.php");
    let codes: Vec<i32> = std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..per_sender)
                            .map(|_| {
                                code(&env.send(
                                    &["--account", "shop", "-i", "to@x.org"],
                                    contact.as_bytes(),
                                ))
                            })
                            .collect::<Vec<i32>>()
                    })
                })
                .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let accepted = codes.iter().filter(|&&c| c == 0).count();
    let refused = codes.iter().filter(|&&c| c == 69).count();
    assert_eq!(
        (accepted, refused),
        (limit, 8 * per_sender - limit),
        "exit codes: {codes:?}"
    );
    assert_eq!(sink.wait_count(limit).len(), limit);
    // The refusal names the script's limit; the account's window counted only what went.
    let o = env.send(&["--account", "shop", "-i", "to@x.org"], contact.as_bytes());
    assert_eq!(code(&o), 69);
    assert!(
        stderr(&o).contains("script limit \"*/contact.php\""),
        "{}",
        stderr(&o)
    );
    let st = status_json(&env, None);
    assert_eq!(window(&st, "shop", "1h")["messages"], limit as u64);
    // Another script of the account is not narrowed.
    let news = msg("news.php");
    for _ in 0..3 {
        let o = env.send(&["--account", "shop", "-i", "to@x.org"], news.as_bytes());
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    assert_eq!(sink.wait_count(limit + 3).len(), limit + 3);
}
