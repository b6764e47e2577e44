//! What became of the mail after the relay took it (issue 21), through the real binary: real
//! hand-overs to an in-test relay that answers with a queue id per message, a relay log in
//! Postfix 3.7's own line format, `queue run` on the test clock. The real Postfix chain is
//! tests/chain.rs; the log reader's and the trigger's edge cases are unit tests.

mod common;

use common::*;

const T0: i64 = 1_900_000_000;

fn uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

struct Setup {
    rec: Recorder,
    env: Env,
    relay_log: std::path::PathBuf,
    www: TempDir,
    /// Holds the relay's log; removed with the setup.
    _log_dir: TempDir,
}

fn setup(trigger: &str) -> Setup {
    let rec = Recorder::start(Script::default());
    let dir = TempDir::new("outcomes-log");
    let relay_log = dir.path().join("postfix-postfwd.log");
    std::fs::write(&relay_log, "").unwrap();
    let env = Env::new(
        rec.port,
        &format!(
            "[alerts]\nadmin = \"\"\n[outcomes]\nrelay_log = \"{log}\"\n\
             [defaults]\nlimits = [ {{ window = \"1h\", messages = 100 }} ]\n{trigger}\n\
             [accounts.shop]\nusers = [{uid}]\n[accounts.blog]\nusers = [{uid}]\n",
            log = relay_log.display(),
            uid = uid()
        ),
    );
    Setup {
        rec,
        env,
        relay_log,
        www: TempDir::new("outcomes-www"),
        _log_dir: dir,
    }
}

impl Setup {
    /// Send as `account` from `script` to `rcpts`; the relay's queue id of the message.
    fn send(&self, account: &str, script: &str, t: i64, rcpts: &[&str]) -> String {
        let msg = format!(
            "To: {}\nX-PHP-Originating-Script: {}:{script}\nSubject: {script}\n\nhello\n",
            rcpts.join(", "),
            uid()
        );
        let before = self.rec.received().len();
        let mut cmd = self.env.cmd();
        cmd.env("MAILGATE_ACCOUNT", account)
            .env("MAILGATE_NOW", t.to_string())
            .current_dir(self.www.path())
            .arg("-i")
            .args(rcpts);
        let o = run_with_input(&mut cmd, msg.as_bytes());
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        format!("REC{}", before + 1)
    }

    /// Lines as the relay instance writes them, appended.
    fn log(&self, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.relay_log)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn queue_run(&self, t: i64) -> String {
        admin(&self.env, &["queue", "run"], Some(t))
    }

    /// shop's contact.php to `gone1..=gone6@example.net`, one message each at T0 + 1..=6: the
    /// relay's queue ids.
    fn send_to_six_gone(&self) -> Vec<String> {
        (1..=6)
            .map(|i| {
                self.send(
                    "shop",
                    "/var/www/shop/contact.php",
                    T0 + i,
                    &[&format!("gone{i}@example.net")],
                )
            })
            .collect()
    }

    /// The relay's lines for those six: every recipient bounced, appended to its log.
    fn log_six_bounces(&self, queue_ids: &[String]) {
        let mut log = String::new();
        for (i, q) in queue_ids.iter().enumerate() {
            let to = format!("gone{}@example.net", i + 1);
            log.push_str(&line(
                q,
                &to,
                "bounced",
                "host mx said: 550 5.1.1 user unknown",
            ));
        }
        self.log(&log);
    }

    /// `queue run --follow 120s` at T0 + 30, started and holding follow.lock (its stdout
    /// piped); killed and reaped by PID when the guard goes.
    fn start_follower(&self) -> Guard {
        let mut cmd = self.env.cmd();
        cmd.args(["queue", "run", "--follow", "120s"])
            .env("MAILGATE_NOW", (T0 + 30).to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let follower = Guard(cmd.spawn().unwrap());
        wait_for("the follower to hold follow.lock", || {
            let f = std::fs::File::open(self.env.state.join("follow.lock")).ok()?;
            matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)).then_some(())
        });
        follower
    }

    fn json(&self, args: &[&str], t: i64) -> serde_json::Value {
        serde_json::from_str(&admin(&self.env, args, Some(t))).unwrap()
    }
}

use common::relay_log_line as line;

fn source<'a>(top: &'a serde_json::Value, account: &str, script: &str) -> &'a serde_json::Value {
    top["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account"] == account)
        .unwrap_or_else(|| panic!("{account} in {top}"))["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"].as_str().unwrap().ends_with(script))
        .unwrap_or_else(|| panic!("{script} in {top}"))
}

#[test]
fn outcomes_per_script_the_trigger_holds_and_lets_go_and_trace_shows_the_way() {
    let s = setup(
        "[defaults.trigger]\nwindow = \"1h\"\nmin_failures = 5\npercent = 30\naction = \"hold\"",
    );
    // shop: contact.php to six addresses that do not exist; news.php to two good ones and one
    // whose server puts it off. blog: post.php, three good ones.
    let contact = s.send_to_six_gone();
    let news: Vec<String> = (0..2)
        .map(|i| {
            s.send(
                "shop",
                "/var/www/shop/news.php",
                T0 + 10 + i,
                &[
                    "good1@example.net",
                    "good2@example.net",
                    "later@example.net",
                ],
            )
        })
        .collect();
    let post: Vec<String> = (0..3)
        .map(|i| {
            s.send(
                "blog",
                "/var/www/blog/post.php",
                T0 + 20 + i,
                &["reader@example.net"],
            )
        })
        .collect();
    assert_eq!(s.rec.received().len(), 11);

    let mut log = String::new();
    log.push_str(
        "Dec  3 13:20:00 vm postfix-postfwd/smtpd[1]: connect from localhost[127.0.0.1]\n",
    );
    for (i, q) in contact.iter().enumerate() {
        let to = format!("gone{}@example.net", i + 1);
        log.push_str(&line(
            q,
            &to,
            "bounced",
            &format!("host mx said: 550 5.1.1 <{to}>: user unknown (in reply to RCPT TO command)"),
        ));
    }
    for q in &news {
        log.push_str(&line(q, "good1@example.net", "sent", "250 2.0.0 Ok"));
        log.push_str(&line(q, "good2@example.net", "sent", "250 2.0.0 Ok"));
        log.push_str(&line(
            q,
            "later@example.net",
            "deferred",
            "host mx said: 450 4.2.0 greylisted",
        ));
    }
    for q in &post[..2] {
        log.push_str(&line(q, "reader@example.net", "sent", "250 2.0.0 Ok"));
    }
    // A message the relay got elsewhere (not through mailgate) and the primary instance.
    log.push_str(&line("ZZZZZZZZZZ", "x@example.net", "bounced", "550 no"));
    log.push_str(
        &line(&post[2], "reader@example.net", "sent", "250 2.0.0 Ok")
            .replace("postfix-postfwd/", "postfix/"),
    );
    // The last line is still being written.
    let last = line(&post[2], "reader@example.net", "sent", "250 2.0.0 Ok");
    let (first_half, second_half) = last.split_at(60);
    log.push_str(first_half);
    s.log(&log);

    let summary = s.queue_run(T0 + 60);
    assert!(
        summary.contains("learnt 14 recipient outcomes"),
        "{summary}"
    );
    let top = s.json(&["top", "--json"], T0 + 61);
    let c = source(&top, "shop", "contact.php");
    assert_eq!(
        (c["bounced"].as_u64(), c["delivered"].as_u64()),
        (Some(6), Some(0)),
        "{top}"
    );
    let n = source(&top, "shop", "news.php");
    assert_eq!(
        (
            n["delivered"].as_u64(),
            n["delayed"].as_u64(),
            n["bounced"].as_u64()
        ),
        (Some(4), Some(2), Some(0)),
        "{top}"
    );
    let p = source(&top, "blog", "post.php");
    assert_eq!(
        p["delivered"].as_u64(),
        Some(2),
        "the cut line is not read yet: {top}"
    );

    // shop: 6 bounced of 10 (60 % ≥ 30 %, 6 ≥ 5): held. blog flows.
    let status = s.json(&["status", "--json"], T0 + 62);
    let acc = |name: &str| {
        status["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()
            .clone()
    };
    assert!(
        acc("shop")["locked"]
            .as_str()
            .unwrap()
            .contains("6 of 10 recipients bounced"),
        "{status}"
    );
    assert_eq!(acc("shop")["bounces"]["held"], true, "{status}");
    assert!(acc("blog")["locked"].is_null(), "{status}");
    let mailgate_log = s.env.log_text();
    assert!(
        mailgate_log.contains("account=shop trigger=hold bounced=6 delivered=4"),
        "{mailgate_log}"
    );
    assert!(
        mailgate_log.contains("contact.php"),
        "the worst script is named: {mailgate_log}"
    );
    // shop's next message is held; blog's goes.
    let before = s.rec.received().len();
    s.send(
        "shop",
        "/var/www/shop/contact.php",
        T0 + 70,
        &["gone7@example.net"],
    );
    s.send(
        "blog",
        "/var/www/blog/post.php",
        T0 + 71,
        &["reader@example.net"],
    );
    assert_eq!(s.rec.received().len(), before + 1);
    assert!(s.env.log_text().contains("status=held"));

    // The rest of the cut line, a retry of the deferred recipient (counted once), then its
    // delivery (not a failure).
    s.log(second_half);
    s.log(&line(
        &news[0],
        "later@example.net",
        "deferred",
        "host mx said: 450 4.2.0 greylisted",
    ));
    s.log(&line(&news[0], "later@example.net", "sent", "250 2.0.0 Ok"));
    s.log(&format!(
        "Dec  3 13:25:00 vm postfix-postfwd/qmgr[99]: {}: removed\n",
        news[0]
    ));
    s.queue_run(T0 + 120);
    let top = s.json(&["top", "--json"], T0 + 121);
    let n = source(&top, "shop", "news.php");
    assert_eq!(
        (n["delivered"].as_u64(), n["delayed"].as_u64()),
        (Some(5), Some(2)),
        "{top}"
    );
    assert_eq!(
        source(&top, "blog", "post.php")["delivered"].as_u64(),
        Some(3),
        "{top}"
    );

    // trace: by the relay's queue id, mailgate's id, and the Message-ID.
    let by_queue_id = admin(&s.env, &["trace", &contact[0]], Some(T0 + 130));
    for needle in [
        "account shop",
        &format!("uid {}", uid()),
        "/var/www/shop/contact.php",
        "route      direct",
        &format!("took it as {}", contact[0]),
        "bounced",
        "550 5.1.1 <gone1@example.net>: user unknown",
        "now        <gone1@example.net> bounced",
    ] {
        assert!(by_queue_id.contains(needle), "{needle:?} in\n{by_queue_id}");
    }
    let id = by_queue_id
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string();
    let message_id = by_queue_id
        .lines()
        .next()
        .unwrap()
        .split("Message-ID ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    assert_eq!(admin(&s.env, &["trace", &id], Some(T0 + 130)), by_queue_id);
    assert_eq!(
        admin(&s.env, &["trace", &message_id], Some(T0 + 130)),
        by_queue_id
    );
    let traced = s.json(&["trace", "--json", &news[0]], T0 + 130);
    let steps = traced["steps"].as_array().unwrap();
    assert_eq!(
        steps
            .iter()
            .filter(|s| s["to"] == "later@example.net")
            .count(),
        3
    );
    assert_eq!(steps.last().unwrap()["status"], "removed");
    let unknown = run_with_input(s.env.cmd().args(["trace", "NOSUCHMESSAGE"]), b"");
    assert_eq!(code(&unknown), 69, "{}", stderr(&unknown));
    let hostile = run_with_input(s.env.cmd().args(["trace", "../../etc/passwd"]), b"");
    assert_eq!(code(&hostile), 69, "{}", stderr(&hostile));

    // Two hours on, shop's window holds no bounces; but while the relay's log cannot be read
    // the rate is not seen to fall, and the hold stays.
    let aside = s.relay_log.with_extension("aside");
    std::fs::rename(&s.relay_log, &aside).unwrap();
    s.queue_run(T0 + 7200);
    let status = s.json(&["status", "shop", "--json"], T0 + 7201);
    assert_eq!(status["accounts"][0]["bounces"]["held"], true, "{status}");
    assert!(status["outcomes_blind"].is_string(), "{status}");
    // Readable again: the hold ends by itself.
    std::fs::rename(&aside, &s.relay_log).unwrap();
    s.queue_run(T0 + 7260);
    let status = s.json(&["status", "shop", "--json"], T0 + 7261);
    assert!(status["accounts"][0]["locked"].is_null(), "{status}");
    assert!(s.env.log_text().contains("account=shop trigger=ended"));
    let before = s.rec.received().len();
    s.send(
        "shop",
        "/var/www/shop/contact.php",
        T0 + 7202,
        &["fine@example.net"],
    );
    assert_eq!(s.rec.received().len(), before + 1, "shop sends again");
}

#[test]
fn observe_mode_counts_and_says_what_it_would_have_done_and_the_mail_flows() {
    let s = setup(
        "[defaults.trigger]\nmin_failures = 2\npercent = 50\naction = \"lock\"\nobserve = true",
    );
    let q: Vec<String> = (0..3)
        .map(|i| {
            s.send(
                "shop",
                "/var/www/shop/form.php",
                T0 + i,
                &["nobody@example.net"],
            )
        })
        .collect();
    let mut log = String::new();
    for id in &q {
        log.push_str(&line(
            id,
            "nobody@example.net",
            "bounced",
            "550 5.1.1 no such user",
        ));
    }
    s.log(&log);
    s.queue_run(T0 + 60);
    let before = s.rec.received().len();
    s.send(
        "shop",
        "/var/www/shop/form.php",
        T0 + 61,
        &["someone@example.net"],
    );
    assert_eq!(
        s.rec.received().len(),
        before + 1,
        "observe mode never stops mail"
    );
    let text = s.env.log_text();
    assert!(
        text.contains("trigger=observe bounced=3 delivered=0")
            && text.contains("would have locked the account"),
        "{text}"
    );
    // Once per window: a second run says nothing new.
    s.log(&line(&q[0], "x@example.net", "bounced", "550 no"));
    s.queue_run(T0 + 120);
    assert_eq!(s.env.log_text().matches("trigger=observe").count(), 1);

    // An observed limit: over it, the message goes and the log says what it would have done.
    let limits = std::fs::read_to_string(&s.env.config)
        .unwrap()
        .replace(
            "limits = [ { window = \"1h\", messages = 100 } ]",
            "limits = [ { window = \"1h\", messages = 100 }, { window = \"1m\", messages = 1, observe = true } ]",
        );
    std::fs::write(&s.env.config, limits).unwrap();
    let before = s.rec.received().len();
    s.send("blog", "/var/www/blog/a.php", T0 + 300, &["a@example.net"]);
    s.send("blog", "/var/www/blog/a.php", T0 + 301, &["b@example.net"]);
    assert_eq!(s.rec.received().len(), before + 2);
    let text = s.env.log_text();
    assert!(
        text.contains("observed=\"would have been refused: blog exceeded 1 messages per 1m"),
        "{text}"
    );
    let status = admin(&s.env, &["status", "blog"], Some(T0 + 302));
    assert!(
        status.contains("observe only: would have stopped mail"),
        "{status}"
    );
}

#[test]
fn a_missing_or_symlinked_relay_log_makes_it_blind_and_it_says_so_once() {
    let s = setup("[defaults.trigger]\n");
    let q = s.send("shop", "/var/www/shop/a.php", T0, &["a@example.net"]);
    std::fs::remove_file(&s.relay_log).unwrap();
    s.queue_run(T0 + 60);
    let status = admin(&s.env, &["status"], Some(T0 + 61));
    assert!(
        status.contains("delivery outcomes: BLIND: cannot read the relay's log"),
        "{status}"
    );
    let metrics = admin(&s.env, &["metrics"], Some(T0 + 61));
    assert!(metrics.contains("mailgate_outcomes_blind 1\n"), "{metrics}");
    s.queue_run(T0 + 120);
    assert_eq!(
        s.env.log_text().matches("outcomes: blind").count(),
        1,
        "said once"
    );
    // A log replaced by a symlink to a file the admin never named is refused.
    let secret = s.env.dir.path().join("elsewhere.log");
    std::fs::write(&secret, line(&q, "a@example.net", "bounced", "550 planted")).unwrap();
    std::os::unix::fs::symlink(&secret, &s.relay_log).unwrap();
    s.queue_run(T0 + 180);
    assert!(s.env.log_text().contains("is a symbolic link (refused)"));
    let top = s.json(&["top", "--json"], T0 + 181);
    assert_eq!(
        source(&top, "shop", "a.php")["bounced"].as_u64(),
        Some(0),
        "{top}"
    );
    // Readable again: said once, and it learns.
    std::fs::remove_file(&s.relay_log).unwrap();
    s.log_create(&line(&q, "a@example.net", "sent", "250 ok"));
    s.queue_run(T0 + 240);
    assert!(s.env.log_text().contains("can be read again"));
    let top = s.json(&["top", "--json"], T0 + 241);
    assert_eq!(
        source(&top, "shop", "a.php")["delivered"].as_u64(),
        Some(1),
        "{top}"
    );
    let status = admin(&s.env, &["status"], Some(T0 + 241));
    assert!(!status.contains("BLIND"), "{status}");
}

impl Setup {
    fn log_create(&self, text: &str) {
        std::fs::write(&self.relay_log, text).unwrap();
    }
}

/// Setup with a relay answering as scripted (a fixed queue id, say).
fn setup_with(trigger: &str, script: Script) -> Setup {
    let mut s = setup(trigger);
    s.rec = Recorder::start(script);
    let config = std::fs::read_to_string(&s.env.config).unwrap();
    let port_line = config
        .lines()
        .find(|l| l.starts_with("port = "))
        .unwrap()
        .to_string();
    std::fs::write(
        &s.env.config,
        config.replace(&port_line, &format!("port = {}", s.rec.port)),
    )
    .unwrap();
    s
}

/// The first account of a `status --json` answer is locked by the trigger for the six bounces
/// of `send_to_six_gone`.
fn assert_locked_by_six_bounces(status: &serde_json::Value) {
    assert!(
        status["accounts"][0]["locked"]
            .as_str()
            .unwrap()
            .contains("6 of 6 recipients bounced"),
        "{status}"
    );
}

fn held(s: &Setup, account: &str, t: i64) -> bool {
    let status = s.json(&["status", "--json"], t);
    status["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == account)
        .is_some_and(|a| !a["locked"].is_null())
}

/// Evidence issue, attacks 1 (what a forged line can still name) and 9: a line about an
/// address the message was not sent to counts nothing, and a queue id belongs to the first
/// message that recorded it; the honest bounces still hold the account.
#[test]
fn forged_recipients_and_a_claimed_queue_id_count_nothing() {
    let trigger =
        "[defaults.trigger]\nwindow = \"1h\"\nmin_failures = 3\npercent = 20\naction = \"hold\"";
    let s = setup(trigger);
    let shop: Vec<String> = (1..=3)
        .map(|i| s.send("shop", "/var/www/shop/a.php", T0 + i, &["real@example.net"]))
        .collect();
    let blog = s.send(
        "blog",
        "/var/www/blog/b.php",
        T0 + 5,
        &["reader@example.net"],
    );
    // Forged: bounces for blog's queue id to addresses blog never wrote to, and deliveries
    // of made-up recipients for shop's ids (to hide shop's own bounces).
    let mut log = String::new();
    for i in 0..20 {
        log.push_str(&line(
            &blog,
            &format!("x{i}@example.net"),
            "bounced",
            "550 forged",
        ));
        log.push_str(&line(
            &shop[0],
            &format!("y{i}@example.net"),
            "sent",
            "250 forged",
        ));
    }
    // The honest outcomes: shop's three real recipients bounced, blog's was delivered.
    for q in &shop {
        log.push_str(&line(q, "real@example.net", "bounced", "550 5.1.1 unknown"));
    }
    log.push_str(&line(&blog, "reader@example.net", "sent", "250 ok"));
    s.log(&log);
    s.queue_run(T0 + 60);
    let top = s.json(&["top", "--json"], T0 + 61);
    let a = source(&top, "shop", "a.php");
    assert_eq!(
        (a["bounced"].as_u64(), a["delivered"].as_u64()),
        (Some(3), Some(0)),
        "{top}"
    );
    let b = source(&top, "blog", "b.php");
    assert_eq!(
        (b["bounced"].as_u64(), b["delivered"].as_u64()),
        (Some(0), Some(1)),
        "{top}"
    );
    assert!(held(&s, "shop", T0 + 62), "the real bouncer is held");
    assert!(!held(&s, "blog", T0 + 62), "the victim is not");

    // A relay (or a listener in its place) that answers every message with the same queue
    // id: the first message keeps it.
    let fixed = Script {
        data_reply: Some("250 2.0.0 Ok: queued as FIXEDQID1".into()),
        ..Script::default()
    };
    let s = setup_with(trigger, fixed);
    s.send(
        "blog",
        "/var/www/blog/b.php",
        T0 + 1,
        &["reader@example.net"],
    );
    s.send(
        "shop",
        "/var/www/shop/a.php",
        T0 + 2,
        &["reader@example.net"],
    );
    let trace = s.json(&["trace", "FIXEDQID1", "--json"], T0 + 3);
    assert_eq!(trace["handed"]["account"], "blog", "{trace}");
    assert!(
        s.env.log_text().contains("recorded already"),
        "the second claim is logged: {}",
        s.env.log_text()
    );
}

/// Evidence issue, attacks 3 and 4: a 4.5 MB script header and 3 MB Subject and Message-ID
/// make a record of a few KiB whose outcomes are counted.
#[test]
fn an_oversized_header_neither_hides_bounces_nor_grows_the_record() {
    let s = setup("");
    let huge = format!("/var/www/shop/{}.php", "x".repeat(4_500_000));
    let msg = format!(
        "To: gone@example.net\nX-PHP-Originating-Script: {}:{huge}\nSubject: {}\nMessage-ID: <{}@x>\n\nhello\n",
        uid(),
        "s".repeat(3_000_000),
        "m".repeat(3_000_000),
    );
    let mut cmd = s.env.cmd();
    cmd.env("MAILGATE_ACCOUNT", "shop")
        .env("MAILGATE_NOW", (T0 + 1).to_string())
        .current_dir(s.www.path())
        .args(["-i", "gone@example.net"]);
    let o = run_with_input(&mut cmd, msg.as_bytes());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let record = s.env.state.join("delivery").join("REC1");
    let size = std::fs::metadata(&record).unwrap().len();
    assert!(size < 16 * 1024, "the record is {size} bytes");
    s.log(&line("REC1", "gone@example.net", "bounced", "550 unknown"));
    s.queue_run(T0 + 60);
    let top = s.json(&["top", "--json", "--all"], T0 + 61);
    let bounced: u64 = top["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["account"] == "shop")
        .flat_map(|a| a["sources"].as_array().unwrap().iter())
        .filter_map(|src| src["bounced"].as_u64())
        .sum();
    assert_eq!(bounced, 1, "{top}");
    let trace = s.json(&["trace", "REC1", "--json"], T0 + 62);
    let script = trace["handed"]["script"].as_str().unwrap();
    assert!(
        script.ends_with("[cut]") && script.len() <= 1024,
        "the cut is marked: {script}"
    );
}

/// Evidence issue, attack 11: the server's trigger acts only on accounts whose own rate
/// passes its threshold; a newsletter with 5 % bounced is not held for another's 60.
#[test]
fn the_server_trigger_holds_only_the_accounts_that_bounce_themselves() {
    let s = setup(
        "[server.trigger]\nwindow = \"1h\"\nmin_failures = 5\npercent = 20\naction = \"hold\"",
    );
    let mut log = String::new();
    for i in 0..60 {
        let to = format!("dead{i}@example.net");
        let q = s.send("shop", "/var/www/shop/spam.php", T0 + 1, &[&to]);
        log.push_str(&line(&q, &to, "bounced", "550 unknown"));
    }
    let news: Vec<String> = (0..100).map(|i| format!("reader{i}@example.net")).collect();
    let refs: Vec<&str> = news.iter().map(String::as_str).collect();
    let q = s.send("blog", "/var/www/blog/news.php", T0 + 2, &refs);
    for (i, to) in news.iter().enumerate() {
        let status = if i < 5 { "bounced" } else { "sent" };
        log.push_str(&line(&q, to, status, "reply"));
    }
    s.log(&log);
    s.queue_run(T0 + 60);
    assert!(held(&s, "shop", T0 + 61), "the bouncing account is held");
    assert!(!held(&s, "blog", T0 + 61), "the 5 % newsletter is not");
}

/// Issue 30: `queue run --follow` learns a bounce the relay logs without another run, and it
/// and a queue run never count a line twice.
#[test]
fn a_follower_holds_a_bouncing_script_without_waiting_for_the_next_run() {
    let s = setup(
        "[defaults.trigger]\nwindow = \"1h\"\nmin_failures = 5\npercent = 30\naction = \"hold\"",
    );
    let contact = s.send_to_six_gone();
    // The minute's run, then it stays and follows the relay's log. Only one follower at a
    // time: once the first holds follow.lock, a second one says so and leaves at once.
    let follower = s.start_follower();
    let second = admin(&s.env, &["queue", "run", "--follow", "120s"], Some(T0 + 30));
    assert!(second.contains("another process follows"), "{second}");
    assert!(second.contains("queue run: delivered"), "{second}");

    s.log_six_bounces(&contact);
    // No further run: the follower learns the six bounces and the trigger holds shop.
    let status = wait_for("the follower's trigger to hold shop", || {
        let status = s.json(&["status", "--json", "shop"], T0 + 31);
        (status["accounts"][0]["bounces"]["held"] == true).then_some(status)
    });
    assert_locked_by_six_bounces(&status);
    // The next message of shop is held, not relayed.
    let before = s.rec.received().len();
    s.send(
        "shop",
        "/var/www/shop/contact.php",
        T0 + 32,
        &["x@example.net"],
    );
    assert_eq!(s.rec.received().len(), before, "held, not relayed");
    // A queue run meanwhile reads nothing twice: the follower moved the position past them.
    let summary = s.queue_run(T0 + 33);
    assert!(!summary.contains("learnt"), "{summary}");
    let top = s.json(&["top", "--json"], T0 + 34);
    assert_eq!(
        source(&top, "shop", "contact.php")["bounced"].as_u64(),
        Some(6),
        "{top}"
    );
    drop(follower); // killed and reaped by PID
}

/// A follower judges with the configuration its run loaded. When the admin adds a trigger
/// while it follows, it ends before reading on, and the next run learns the bounces with the
/// trigger and holds the account: none of them is judged by the old configuration alone.
#[test]
fn a_follower_ends_when_the_configuration_changes_and_the_next_run_judges_with_the_new() {
    let s = setup("");
    let contact = s.send_to_six_gone();
    let mut follower = s.start_follower();
    // The admin adds a trigger, then the relay logs the six bounces.
    let config = std::fs::read_to_string(&s.env.config).unwrap();
    std::fs::write(
        &s.env.config,
        format!(
            "{config}[defaults.trigger]\nwindow = \"1h\"\nmin_failures = 5\npercent = 30\n\
             action = \"hold\"\n"
        ),
    )
    .unwrap();
    s.log_six_bounces(&contact);
    // The follower ends of itself, long before its 120 s, and says why.
    wait_for("the follower to end", || {
        follower.0.try_wait().ok().flatten()
    });
    let mut out = String::new();
    std::io::Read::read_to_string(&mut follower.0.stdout.take().unwrap(), &mut out).unwrap();
    assert!(out.contains("the configuration changed"), "{out}");
    assert!(out.contains("learnt 0 recipient outcomes"), "{out}");
    assert!(!held(&s, "shop", T0 + 31), "nothing was learnt yet");
    // The next run reads on from where the follower stopped and holds shop.
    let summary = s.queue_run(T0 + 32);
    assert!(summary.contains("queue run:"), "{summary}");
    let status = s.json(&["status", "--json", "shop"], T0 + 33);
    assert_eq!(status["accounts"][0]["bounces"]["held"], true, "{status}");
    assert_locked_by_six_bounces(&status);
}
