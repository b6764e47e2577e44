//! Nothing lost: the queue (relay trouble), defer and hold spools, alerts and auto-lock, and
//! the admin commands that work them.

mod common;
use common::*;

const MSG: &[u8] = b"Subject: kept\n\nbody\n";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn queue_len(env: &Env) -> usize {
    json(env, &["queue", "list"], None)
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn relay_down_4xx_and_timeout_are_queued_then_delivered_exactly_once() {
    let port = free_port();
    let env = Env::new(port, "");
    // Nothing listening.
    let o = env.send(&["-i", "down@x.org"], b"Subject: down\n\nb\n");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("queued"), "{}", stderr(&o));
    // 4xx at RCPT.
    let soft = Sink::start_on(port, &["-r", "RCPT"]);
    assert_eq!(
        code(&env.send(&["-i", "soft@x.org"], b"Subject: soft\n\nb\n")),
        0
    );
    drop(soft);
    // Too slow.
    std::fs::write(
        &env.config,
        std::fs::read_to_string(&env.config)
            .unwrap()
            .replace("timeout = \"5s\"", "timeout = \"1s\""),
    )
    .unwrap();
    let slow = Sink::start_on(port, &["-w", "30"]);
    let o = env.send(&["-i", "slow@x.org"], b"Subject: slow\n\nb\n");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("did not answer within 1 s"),
        "{}",
        stderr(&o)
    );
    drop(slow);
    assert_eq!(queue_len(&env), 3);

    let sink = Sink::start_on(port, &[]);
    // Backoff: nothing is due yet.
    let out = admin(&env, &["queue", "run"], None);
    assert!(
        out.contains("delivered 0 queued") && out.contains("3 queued for later"),
        "{out}"
    );
    assert!(sink.received().is_empty());
    // Later, all three go, exactly once.
    let out = admin(&env, &["queue", "run"], Some(now() + 3600));
    assert!(out.contains("delivered 3 queued"), "{out}");
    let got = sink.wait_count(3);
    let mut subjects: Vec<String> = got.iter().map(|r| r.header("Subject").unwrap()).collect();
    subjects.sort();
    assert_eq!(subjects, ["down", "slow", "soft"]);
    assert_eq!(queue_len(&env), 0);
    admin(&env, &["queue", "run"], Some(now() + 7200));
    assert_eq!(sink.received().len(), 3);
}

#[test]
fn queued_message_gives_up_after_max_age_and_real_attempts_and_tells_the_admin() {
    // The relay keeps deferring a@x.org and takes the admin's mail.
    let rec = Recorder::start(Script {
        reject_rcpt: vec![("a@x.org".into(), "451 4.7.1 try again later".into())],
        ..Script::default()
    });
    let env = Env::new(
        rec.port,
        "[spool]\nmax_age = \"2h\"\nmax_retry = \"1h\"\n[alerts]\nadmin = \"postmaster@example.org\"\n",
    );
    assert_eq!(code(&env.send(&["-i", "a@x.org"], MSG)), 0);
    assert_eq!(queue_len(&env), 1);
    // A clock a year ahead is past max_age, but one real attempt is not two hours of them:
    // the entry is tried (relay up), stays, and is due again within max_retry.
    let year = now() + 365 * 86400;
    let out = admin(&env, &["queue", "run"], Some(year));
    assert!(
        out.contains("1 queued for later") && out.contains("0 failed"),
        "{out}"
    );
    // The clock comes back: the entry is not stranded a year ahead, it is due within max_retry.
    let list = json(&env, &["queue", "list"], None);
    let next = list[0]["next_attempt"].as_i64().unwrap();
    assert!(next > year, "{list}");
    let out = admin(&env, &["queue", "run"], Some(now() + 60));
    assert!(
        out.contains("0 failed"),
        "tried again at once, not in a year: {out}"
    );
    assert_eq!(json(&env, &["queue", "list"], None)[0]["attempts"], 2);
    // One vocabulary: the relay's 4xx is `queued` in the sender's line and in each retry of
    // the queue run, never a limit's `deferred`; `top` counts it in the same column.
    let log = env.log_text();
    let retries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("from_spool=queue"))
        .collect();
    assert_eq!(retries.len(), 2, "{log}");
    for line in &retries {
        assert!(line.contains("status=queued"), "{line}");
    }
    assert!(!log.contains("status=deferred"), "{log}");
    let top = json(&env, &["top"], Some(now() + 61));
    // Within the last hour: the sender's hand-over and the retry a minute later (the retry
    // under the clock a year ahead is outside it).
    let counts = &top["accounts"][0];
    assert_eq!(
        (counts["queued"].as_u64(), counts["deferred"].as_u64()),
        (Some(2), Some(0)),
        "{top}"
    );
    // Past max_age with enough attempts (2h / 1h = 2): it fails, once, with the admin told.
    let out = admin(&env, &["queue", "run"], Some(now() + 3 * 3600));
    assert!(out.contains("1 failed"), "{out}");
    assert_eq!(queue_len(&env), 0);
    assert_eq!(
        std::fs::read_dir(env.state.join("failed")).unwrap().count(),
        1
    );
    let got = rec.wait_count(1);
    assert_eq!(got[0].rcpts, ["postmaster@example.org"]);
    let text = got[0].text();
    assert!(
        text.contains("not delivered") && text.contains("3 attempts"),
        "{text}"
    );
}

#[test]
fn flush_ignores_backoff_and_mailq_lists_like_postfix() {
    let port = free_port();
    let env = Env::new(port, "");
    // Relay down: queued with a retry five minutes ahead.
    for rcpt in ["one@x.org", "two@x.org"] {
        let o = env.send(&["-i", rcpt], b"Subject: wait\n\nb\n");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    // mailq: Postfix's long-id layout, the reason above the recipients, the summary line.
    let o = env.send(&["-bp"], b"");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "----Queue ID----- --Size-- ---Arrival Time---- --Sender/Recipient------"
    );
    let entry = lines[1];
    let id = entry.split_whitespace().next().unwrap();
    assert!(
        id.chars().all(|c| c.is_ascii_hexdigit()) && id.len() >= 17,
        "{entry}"
    );
    assert!(
        entry.ends_with(&format!(" {}@example.org", login())),
        "{entry}"
    );
    assert!(
        lines[2].trim_start().starts_with("(relay 127.0.0.1:"),
        "{text}"
    );
    assert_eq!(lines[3].trim_start(), "one@x.org");
    assert_eq!(lines[3].len() - "one@x.org".len(), 47, "recipient column");
    assert_eq!(lines.last().unwrap(), &"-- 0 Kbytes in 2 Requests.");
    // queue list shows attempts, next attempt and the last error.
    let out = admin(&env, &["queue", "list"], None);
    assert!(
        out.contains("attempts: 0, next attempt: ") && out.contains("last error: relay 127.0.0.1:"),
        "{out}"
    );

    let sink = Sink::start_on(port, &[]);
    let out = admin(&env, &["queue", "run"], None);
    assert!(
        out.contains("2 queued for later"),
        "backoff honoured: {out}"
    );
    let out = admin(&env, &["queue", "flush"], None);
    assert!(out.contains("delivered 2 queued"), "{out}");
    sink.wait_count(2);
    // sendmail -q is the same flush; mailq is empty again.
    let o = env.send(&["-q"], b"");
    assert_eq!(code(&o), 0);
    assert_eq!(
        String::from_utf8_lossy(&env.send(&["-bp"], b"").stdout),
        "Mail queue is empty\n"
    );
}

#[test]
fn sigkill_during_send_and_queue_run_loses_nothing() {
    let port = free_port();
    let env = Env::new(
        port,
        "[defaults]\nlimits = [ { window = \"1h\", messages = 100000 } ]\n",
    );
    // How long one whole send takes on this machine now (a loaded CI machine is slower).
    let started = std::time::Instant::now();
    let o = env.send(&["-i", "a@x.org"], b"Subject: timing\n\nbody\n");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let whole = started.elapsed().as_micros() as u64;
    // Senders killed at instants spread over 0..1.5 times that, while the relay is down:
    // some kills land before the spool rename, some after the process is done.
    let mut ok = 1;
    let mut killed = 0;
    for i in 0..60u64 {
        let delay = std::time::Duration::from_micros(i * 2111 % (whole * 3 / 2).max(1));
        let subject = format!("Subject: m{i}\n\nbody\n");
        match kill_after(env.cmd().args(["-i", "a@x.org"]), subject.as_bytes(), delay) {
            Some(0) => ok += 1,
            Some(c) => panic!("sender exited {c}"),
            None => killed += 1,
        }
    }
    let queued = queue_len(&env);
    assert!(
        queued >= ok && queued <= ok + killed,
        "queued {queued}, exit 0: {ok}, killed {killed}"
    );
    assert!(
        killed > 0 && ok > 0,
        "the kills did not spread: ok {ok}, killed {killed}"
    );
    let ids: Vec<String> = json(&env, &["queue", "list"], None)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_string())
        .collect();

    // Queue runs killed at random instants; a last one runs to the end.
    let sink = Sink::start_on(port, &[]);
    let mut run_kills = 0;
    for i in 0..25u64 {
        let delay = std::time::Duration::from_micros(500 + i * 397 % 6000);
        let later = (now() + 3600).to_string();
        if kill_after(
            env.cmd().args(["queue", "run"]).env("MAILGATE_NOW", later),
            b"",
            delay,
        )
        .is_none()
        {
            run_kills += 1;
        }
    }
    admin(&env, &["queue", "run"], Some(now() + 7200));
    assert_eq!(queue_len(&env), 0);
    let got = sink.wait_count(queued);
    let subjects: Vec<String> = got.iter().map(|r| r.header("Subject").unwrap()).collect();
    for s in &ids {
        assert!(subjects.contains(s), "queued message {s} was lost");
    }
    // A duplicate needs a kill between the relay's 250 and the unlink: at most one per kill.
    assert!(
        got.len() <= queued + run_kills,
        "{} delivered for {queued} queued with {run_kills} kills",
        got.len()
    );
}

#[test]
fn full_disk_is_a_failure_not_a_success() {
    let env = Env::new(free_port(), "");
    let disk = SmallDisk::mount(env.dir.path(), "64k");
    let small = disk.0.clone();
    std::fs::write(
        &env.config,
        std::fs::read_to_string(&env.config).unwrap().replace(
            &env.state.display().to_string(),
            &small.display().to_string(),
        ),
    )
    .unwrap();
    let mut big = b"Subject: big\n\n".to_vec();
    big.extend(std::iter::repeat_n(b"0123456789abcdef\n".as_slice(), 20_000).flatten());
    let o = env.send(&["-i", "a@x.org"], &big);
    assert_eq!(code(&o), 74, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("could not be kept") && err.contains("No space left"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(small.join("queue"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
    assert!(!env.log_text().contains("status=queued"));
}

#[test]
fn defer_releases_in_order_as_windows_free_up() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        "[alerts]\nadmin = \"\"\n[defaults]\nlimits = [ { window = \"1m\", messages = 3, action = \"defer\" }, { window = \"1d\", messages = 100 } ]\n[accounts.root]\nexempt = false\n",
    );
    let t0 = now();
    for i in 0..10 {
        let o = run_with_input(
            env.cmd()
                .env("MAILGATE_NOW", t0.to_string())
                .args(["-i", "a@x.org"]),
            format!("Subject: m{i}\n\nb\n").as_bytes(),
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        if i >= 3 {
            assert!(
                stderr(&o).contains("deferred until the account has room"),
                "{}",
                stderr(&o)
            );
        }
    }
    assert_eq!(rec.received().len(), 3);
    assert_eq!(
        json(&env, &["queue", "list"], None)
            .as_array()
            .unwrap()
            .len(),
        7
    );
    let subjects = |rec: &Recorder| {
        rec.received()
            .iter()
            .map(|r| r.header("Subject").unwrap())
            .collect::<Vec<_>>()
    };
    // Within the window nothing moves.
    admin(&env, &["queue", "run"], Some(t0 + 30));
    assert_eq!(rec.received().len(), 3);
    for (step, expected) in [(1, 6), (2, 9), (3, 10)] {
        let out = admin(&env, &["queue", "run"], Some(t0 + step * 70));
        assert_eq!(rec.received().len(), expected, "after step {step}: {out}");
    }
    let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(subjects(&rec), expected, "order kept per account");
    let st = json(&env, &["status"], Some(t0 + 3 * 70));
    let acc = &st["accounts"][0];
    assert_eq!(acc["deferred"], 0);
    assert_eq!(acc["windows"][1]["messages"], 10);
}

#[test]
fn hold_list_show_release_delete() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        "[alerts]\nadmin = \"\"\n[defaults]\nlimits = [ { window = \"1h\", messages = 1, action = \"hold\" } ]\n[accounts.root]\nexempt = false\n",
    );
    assert_eq!(code(&env.send(&["-i", "a@x.org"], MSG)), 0);
    let body = b"Subject: held \xe4\nTo: b@x.org\n\n.dot line\nbinary \x01\xff\n".to_vec();
    let o = env.send(&["-t", "-i"], &body);
    assert_eq!(code(&o), 0);
    assert!(stderr(&o).contains("held for the admin"), "{}", stderr(&o));
    assert_eq!(
        code(&env.send(&["-i", "c@x.org"], b"Subject: second held\n\nx\n")),
        0
    );
    assert_eq!(rec.received().len(), 1);
    let list = json(&env, &["hold", "list"], None);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["recipients"][0], "b@x.org");
    assert!(
        list[0]["reason"]
            .as_str()
            .unwrap()
            .contains("exceeded 1 messages per 1h")
    );
    let shown = admin(&env, &["hold", "show", &id], None);
    assert!(
        shown.contains("recipients: b@x.org")
            && shown.contains("Subject: held")
            && !shown.contains("dot line"),
        "{shown}"
    );
    let shown = admin(&env, &["hold", "show", &id, "--body"], None);
    assert!(shown.contains(".dot line"), "{shown}");
    // Release: delivered byte-exact, bypassing the limit.
    let out = admin(&env, &["hold", "release", &id], None);
    assert!(out.contains("delivered"), "{out}");
    let got = rec.wait_count(2);
    assert!(
        got[1]
            .data
            .ends_with(b"\r\n\r\n..dot line\r\nbinary \x01\xff\r\n"),
        "{:?}",
        got[1].text()
    );
    assert!(
        got[1]
            .data
            .windows(16)
            .any(|w| w == b"Subject: held \xe4\r")
    );
    assert!(
        env.log_text().contains("from_spool=hold"),
        "{}",
        env.log_text()
    );
    // Delete the other.
    let other = json(&env, &["hold", "list"], None)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    admin(&env, &["hold", "delete", &other], None);
    assert!(
        json(&env, &["hold", "list"], None)
            .as_array()
            .unwrap()
            .is_empty()
    );
    let o = run_with_input(env.cmd().args(["hold", "show", "../../etc/passwd"]), b"");
    assert_eq!(code(&o), 64);
    assert_eq!(rec.received().len(), 2);
}

#[test]
fn alert_once_per_window_and_auto_lock() {
    let rec = Recorder::start(Script::default());
    let me = {
        let o = std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let env = Env::new(
        rec.port,
        "[alerts]\nadmin = \"hostmaster@example.org\"\nlock_after = 4\n[defaults]\nlimits = [ { window = \"1h\", messages = 2 } ]\n[accounts.root]\nexempt = false\n",
    );
    let t0 = now();
    let send = |t: i64, subject: &str| {
        run_with_input(
            env.cmd()
                .env("MAILGATE_NOW", t.to_string())
                .args(["-i", "a@x.org"]),
            format!("Subject: {subject}\n\nb\n").as_bytes(),
        )
    };
    for i in 0..2 {
        assert_eq!(code(&send(t0, &format!("ok{i}"))), 0);
    }
    // Three refusals: one alert.
    for i in 0..3 {
        assert_eq!(code(&send(t0 + 1, &format!("spam{i}"))), 69);
    }
    let alerts = |rec: &Recorder| {
        rec.received()
            .into_iter()
            .filter(|r| r.rcpts == ["hostmaster@example.org"])
            .collect::<Vec<_>>()
    };
    let a = alerts(&rec);
    assert_eq!(a.len(), 1, "one alert per account per window");
    let text = a[0].text();
    assert!(
        a[0].header("Subject")
            .unwrap()
            .contains(&format!("account {me} exceeded 2 messages per 1h")),
        "{text}"
    );
    assert!(
        text.contains("ok1") && text.contains("spam0"),
        "recent subjects listed: {text}"
    );
    // The fourth refusal locks the account: held from now on, and the admin is told.
    assert_eq!(code(&send(t0 + 2, "spam3")), 69);
    let a = alerts(&rec);
    assert_eq!(a.len(), 2);
    assert!(
        a[1].header("Subject").unwrap().contains("locked"),
        "{}",
        a[1].text()
    );
    let st = json(&env, &["status"], Some(t0 + 2));
    assert!(
        st["accounts"][0]["locked"]
            .as_str()
            .unwrap()
            .contains("lock_after = 4"),
        "{st}"
    );
    // Even in a new window, a locked account's mail is held.
    let o = send(t0 + 7200, "after lock");
    assert_eq!(code(&o), 0);
    assert!(stderr(&o).contains("locked"), "{}", stderr(&o));
    assert_eq!(
        json(&env, &["hold", "list"], None)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    admin(&env, &["unlock", &me], None);
    assert_eq!(code(&send(t0 + 7200, "unlocked")), 0);
    assert!(
        rec.received()
            .iter()
            .any(|r| r.header("Subject").as_deref() == Some("unlocked"))
    );
    // The next window gets its own alert.
    for i in 0..3 {
        send(t0 + 7201, &format!("late{i}"));
    }
    assert_eq!(alerts(&rec).len(), 3);
}

#[test]
fn admin_commands_need_admin_and_check_config_names_the_line() {
    let env = Env::new(free_port(), "");
    let broken = env.dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        "[relay]\nport = 10025\n\n[defaults]\nlimits = [ { window = \"1h\", messages = -3 } ]\n",
    )
    .unwrap();
    let o = run_with_input(
        env.cmd().args(["check-config", broken.to_str().unwrap()]),
        b"",
    );
    assert_eq!(code(&o), 78);
    assert!(
        stderr(&o).contains(&format!("{}:5:", broken.display())),
        "{}",
        stderr(&o)
    );
    let o = run_with_input(
        env.cmd()
            .args(["check-config", env.config.to_str().unwrap()]),
        b"",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(": ok"));
    let help = run_with_input(env.cmd().args(["hold", "--help"]), b"");
    assert_eq!(code(&help), 0);
    let text = String::from_utf8_lossy(&help.stdout);
    for sub in ["list", "show", "release", "delete"] {
        assert!(text.contains(sub), "{text}");
    }
}

#[test]
fn deferred_past_the_cap_are_held_and_release_by_account() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        "[alerts]\nadmin = \"\"\n[defaults]\nlimits = [ { window = \"1h\", messages = 1, action = \"defer\" } ]\n[accounts.root]\nexempt = false\nmax_deferred = 2\n",
    );
    for i in 0..5 {
        let o = env.send(
            &["-i", "a@x.org"],
            format!("Subject: c{i}\n\nb\n").as_bytes(),
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    assert_eq!(rec.received().len(), 1);
    let list = json(&env, &["queue", "list"], None);
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["spool"] == "defer")
            .count(),
        2
    );
    let held = json(&env, &["hold", "list"], None);
    assert_eq!(held.as_array().unwrap().len(), 2);
    assert!(
        held[0]["reason"]
            .as_str()
            .unwrap()
            .contains("2 messages are already deferred"),
        "{held}"
    );
    // An admin lock holds everything, even with room; release by account delivers them.
    admin(&env, &["lock", "root", "--reason", "investigating"], None);
    let o = env.send(&["-i", "a@x.org"], b"Subject: while locked\n\nb\n");
    assert!(
        stderr(&o).contains("locked: investigating"),
        "{}",
        stderr(&o)
    );
    admin(&env, &["unlock", "root"], None);
    let out = admin(&env, &["hold", "release", "--account", "root"], None);
    assert_eq!(out.matches("delivered").count(), 3, "{out}");
    assert_eq!(rec.received().len(), 4);
}
