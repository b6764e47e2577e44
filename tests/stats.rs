//! Who is sending: `mailgate top` against the log, `mailgate metrics` through promtool, the
//! textfile for node_exporter, and the customer's notice (issue 14).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::process::Command;

const T0: i64 = 1_900_000_000;

fn uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

fn message(script: Option<&str>, subject: &str) -> Vec<u8> {
    let mut m = String::from("To: someone@example.net\n");
    if let Some(s) = script {
        m.push_str(&format!("X-PHP-Originating-Script: {s}\n"));
    }
    m.push_str(&format!("Subject: {subject}\n\nhello\n"));
    m.into_bytes()
}

/// Send as `account` at test time `t` from the working directory `cwd`.
fn send(
    env: &Env,
    account: &str,
    t: i64,
    cwd: &std::path::Path,
    msg: &[u8],
    rcpts: &[&str],
) -> i32 {
    let mut cmd = env.cmd();
    cmd.env("MAILGATE_ACCOUNT", account)
        .env("MAILGATE_NOW", t.to_string())
        .current_dir(cwd)
        .arg("-i")
        .args(rcpts);
    code(&run_with_input(&mut cmd, msg))
}

/// The log's own account of things: (account, source) → status → (messages, recipients).
fn counts_from_log(log: &str) -> BTreeMap<(String, String), BTreeMap<String, (u64, u64)>> {
    let mut out: BTreeMap<(String, String), BTreeMap<String, (u64, u64)>> = BTreeMap::new();
    for line in log.lines() {
        let field = |key: &str| -> Option<String> {
            let at = line.find(&format!(" {key}="))? + key.len() + 2;
            let rest = &line[at..];
            Some(if let Some(q) = rest.strip_prefix('"') {
                q[..q.find('"').unwrap()].to_string()
            } else {
                rest.split(' ').next().unwrap().to_string()
            })
        };
        let (Some(account), Some(status)) = (field("account"), field("status")) else {
            continue;
        };
        let source = field("script").unwrap_or_else(|| format!("cwd {}", field("cwd").unwrap()));
        let status = if status == "sent-partly" {
            "sent".into()
        } else {
            status
        };
        let nrcpt: u64 = field("nrcpt").unwrap().parse().unwrap();
        let e = out
            .entry((account, source))
            .or_default()
            .entry(status)
            .or_default();
        e.0 += 1;
        e.1 += nrcpt;
    }
    out
}

#[test]
fn top_matches_the_log_exactly() {
    let rec = Recorder::start(Script {
        // The relay puts one recipient off once: that message is queued, then sent by the run.
        reject_rcpt: vec![("later@example.net".into(), "450 4.2.0 try later".into())],
        reject_once: true,
        ..Script::default()
    });
    let env = Env::new(
        rec.port,
        &format!(
            "[alerts]\nadmin = \"\"\n[spool]\nretry = \"1s\"\n\
             [accounts.shop]\nusers = [{uid}]\nlimits = [ {{ window = \"1h\", messages = 4 }} ]\n\
             [accounts.blog]\nusers = [{uid}]\nlimits = [ {{ window = \"1h\", messages = 2, action = \"hold\" }} ]\n",
            uid = uid()
        ),
    );
    let www = TempDir::new("www");
    let contact = message(Some("1000:/var/www/shop/contact.php"), "contact");
    let newsletter = message(Some("1000:/var/www/shop/newsletter.php"), "news");
    let wp = message(Some("1000:/var/www/blog/wp-mail.php"), "wp");
    let plain = message(None, "cron");
    // shop: 4 fit (one of them queued for a recipient put off), 3 refused.
    assert_eq!(
        send(&env, "shop", T0, www.path(), &contact, &["a@example.net"]),
        0
    );
    assert_eq!(
        send(
            &env,
            "shop",
            T0 + 1,
            www.path(),
            &contact,
            &["a@example.net", "b@example.net"]
        ),
        0
    );
    assert_eq!(
        send(
            &env,
            "shop",
            T0 + 2,
            www.path(),
            &newsletter,
            &["later@example.net", "c@example.net"]
        ),
        0
    );
    assert_eq!(
        send(&env, "shop", T0 + 3, www.path(), &plain, &["d@example.net"]),
        0
    );
    for i in 0..3 {
        assert_eq!(
            send(
                &env,
                "shop",
                T0 + 10 + i,
                www.path(),
                &newsletter,
                &["e@example.net"]
            ),
            69
        );
    }
    // blog: 2 fit, 2 held.
    for i in 0..4 {
        assert_eq!(
            send(
                &env,
                "blog",
                T0 + 20 + i,
                www.path(),
                &wp,
                &["f@example.net"]
            ),
            0
        );
    }
    // The queued recipient goes with the next run (logged with its script, from the spool).
    let o = run_with_input(
        env.cmd()
            .env("MAILGATE_NOW", (T0 + 60).to_string())
            .args(["queue", "run"]),
        b"",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    let expected = counts_from_log(&env.log_text());
    let top = json(&env, &["top", "--since", "1h"], Some(T0 + 120));
    let mut got: BTreeMap<(String, String), BTreeMap<String, (u64, u64)>> = BTreeMap::new();
    for a in top["accounts"].as_array().unwrap() {
        for s in a["sources"].as_array().unwrap() {
            let source = match s["kind"].as_str().unwrap() {
                "cwd" => format!("cwd {}", s["source"].as_str().unwrap()),
                _ => s["source"].as_str().unwrap().to_string(),
            };
            let e = got
                .entry((a["account"].as_str().unwrap().to_string(), source))
                .or_default();
            for status in ["sent", "queued", "deferred", "held", "refused"] {
                let n = s[status].as_u64().unwrap();
                if n > 0 {
                    // Recipients are those of the messages sent.
                    let rcpts = if status == "sent" {
                        s["recipients"].as_u64().unwrap()
                    } else {
                        0
                    };
                    e.insert(status.to_string(), (n, rcpts));
                }
            }
        }
    }
    let expected: BTreeMap<_, BTreeMap<String, (u64, u64)>> = expected
        .into_iter()
        .map(|(k, v)| {
            let v = v
                .into_iter()
                .map(|(s, (n, r))| {
                    let r = if s == "sent" { r } else { 0 };
                    (s, (n, r))
                })
                .collect();
            (k, v)
        })
        .collect();
    assert_eq!(got, expected, "top --json against the log");
    // The workload is what it says: 2 accounts, 3 scripts and a working directory.
    assert_eq!(got.len(), 4, "{got:?}");
    let cwd = format!("cwd {}", www.path().canonicalize().unwrap().display());
    assert_eq!(got[&("shop".to_string(), cwd)]["sent"], (1, 1));
    assert_eq!(
        got[&(
            "blog".to_string(),
            "1000:/var/www/blog/wp-mail.php".to_string()
        )]["held"]
            .0,
        2
    );
    // Largest first; the text form names the same.
    assert_eq!(top["accounts"][0]["account"], "shop");
    let text = admin(&env, &["top", "--since", "1h"], Some(T0 + 120));
    assert!(text.contains("1000:/var/www/shop/newsletter.php"), "{text}");
    assert!(
        text.find("shop:").unwrap() < text.find("blog:").unwrap(),
        "{text}"
    );
    // --account narrows; a span past what is kept is refused.
    let only = json(&env, &["top", "--account", "blog"], Some(T0 + 120));
    assert_eq!(only["accounts"].as_array().unwrap().len(), 1);
    let o = run_with_input(env.cmd().args(["top", "--since", "3d"]), b"");
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    // A day later the last hour is empty, the last day is not.
    let later = json(&env, &["top", "--since", "1h"], Some(T0 + 86_000));
    assert!(later["accounts"].as_array().unwrap().is_empty(), "{later}");
    let day = json(&env, &["top", "--since", "1d"], Some(T0 + 86_000));
    assert_eq!(day["accounts"].as_array().unwrap().len(), 2);
}

fn promtool_check(text: &str) {
    let out = run_with_input(
        Command::new("promtool").args(["check", "metrics"]),
        text.as_bytes(),
    );
    assert_eq!(
        code(&out),
        0,
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

#[test]
fn metrics_pass_promtool_and_the_textfile_is_replaced_whole() {
    let rec = Recorder::start(Script::default());
    let dir = TempDir::new("textfile");
    let prom = dir.path().join("mailgate.prom");
    let env = Env::new(
        rec.port,
        &format!(
            "[alerts]\nadmin = \"\"\n[metrics]\ntextfile = \"{}\"\n\
             [server]\nlimits = [ {{ window = \"1d\", messages = 100 }} ]\n\
             [accounts.shop]\nusers = [{uid}]\nlimits = [ {{ window = \"1h\", messages = 2, recipients = 10 }} ]\n",
            prom.display(),
            uid = uid()
        ),
    );
    let www = TempDir::new("www");
    let msg = message(Some("1000:/var/www/shop/a \"quoted\" name.php"), "m");
    for i in 0..3 {
        send(
            &env,
            "shop",
            T0 + i,
            www.path(),
            &msg,
            &["a@example.net", "b@example.net"],
        );
    }
    let text = admin(&env, &["metrics"], Some(T0 + 10));
    promtool_check(&text);
    assert!(
        text.contains("mailgate_messages_total{account=\"shop\",outcome=\"sent\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("mailgate_messages_total{account=\"shop\",outcome=\"refused\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("mailgate_recipients_total{account=\"shop\",outcome=\"sent\"} 4\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "mailgate_window_usage_ratio{account=\"shop\",window=\"1h\",limit=\"messages\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "mailgate_window_usage_ratio{account=\"shop\",window=\"1h\",limit=\"recipients\"} 0.4\n"
        ),
        "{text}"
    );
    assert!(text.contains("mailgate_decisions_total 3\n"), "{text}");

    // Every queue run replaces the textfile whole: a reader never sees a part of one.
    admin(&env, &["queue", "run"], None);
    promtool_check(&std::fs::read_to_string(&prom).unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, prom) = (stop.clone(), prom.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = std::fs::read_to_string(&prom).expect("the textfile is always there");
                assert!(
                    text.ends_with("mailgate_relay_errors_total{kind=\"unreachable\"} 0\n"),
                    "a partial textfile was visible:\n{text}"
                );
                reads += 1;
            }
            reads
        })
    };
    for _ in 0..20 {
        admin(&env, &["queue", "run"], None);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 20, "the reader ran alongside ({reads} reads)");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("mailgate.prom")],
        "no temporary file left"
    );
}

#[test]
fn the_customer_notice_arrives_once_per_window() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        &format!(
            "[alerts]\nadmin = \"\"\n\
             [accounts.shop]\nusers = [{uid}]\nnotify = [\"webmaster@shop.example\"]\n\
             limits = [ {{ window = \"1h\", messages = 2 }} ]\n",
            uid = uid()
        ),
    );
    let www = TempDir::new("www");
    let msg = message(Some("1000:/var/www/shop/contact.php"), "m");
    let notices = || {
        rec.received()
            .into_iter()
            .filter(|r| r.rcpts == ["webmaster@shop.example"])
            .collect::<Vec<_>>()
    };
    for i in 0..6 {
        let want = if i < 2 { 0 } else { 69 };
        assert_eq!(
            send(&env, "shop", T0 + i, www.path(), &msg, &["a@example.net"]),
            want
        );
    }
    let got = wait_for("the first notice", || {
        let n = notices();
        (!n.is_empty()).then_some(n)
    });
    assert_eq!(got.len(), 1, "one notice for four refusals in the window");
    let n = &got[0];
    assert_eq!(n.sender(), "", "null sender");
    let text = n.text();
    assert!(text.contains("shop exceeded 2 messages per 1h"), "{text}");
    assert!(text.contains("2 messages per 1h"), "{text}");
    assert!(
        text.contains("1000:/var/www/shop/contact.php"),
        "the top scripts: {text}"
    );
    assert!(text.contains("What to do"), "{text}");
    // Not counted: the account still has exactly its 2 messages in the window.
    let st = json(&env, &["status", "shop"], Some(T0 + 10));
    assert_eq!(st["accounts"][0]["windows"][0]["messages"], 2);
    // The next window: one more notice at its first refusal, and only one.
    let t1 = T0 + 3600 + 10;
    let mut sent = 2;
    for i in 0..4 {
        if send(&env, "shop", t1 + i, www.path(), &msg, &["a@example.net"]) == 0 {
            sent += 1;
        }
    }
    let got = wait_for("the second notice", || {
        let n = notices();
        (n.len() >= 2).then_some(n)
    });
    // Every message was logged before its notice went out: wait for the last log line.
    wait_for("all lines logged", || {
        (env.log_text().matches("status=refused").count() >= 6).then_some(())
    });
    assert_eq!(got.len(), 2, "{}", notices().len());
    assert_eq!(notices().len(), 2);
    // The rest at the relay is the customer's mail, each message once.
    assert_eq!(rec.received().len(), sent + 2);
}

/// Senders killed at every instant of their run: `top` still counts every message the log
/// has (the statistics are written before the log line, and a write cut short damages only
/// the copy being written), never fails on a damaged file, and counts at most the killed
/// ones more.
#[test]
fn a_sender_killed_at_any_instant_never_hides_or_wipes_a_message() {
    let sink = Sink::start(&[]);
    let env = Env::new(
        sink.port,
        &format!(
            "[alerts]\nadmin = \"\"\n[accounts.shop]\nusers = [{}]\nlimits = [ {{ window = \"1h\", messages = 100000 }} ]\n",
            uid()
        ),
    );
    let msg = message(Some("1:/var/www/shop/send.php"), "hunt");
    // How long one whole send takes on this machine now; it is logged and counted too.
    let started = std::time::Instant::now();
    let o = env.send(&["--account", "shop", "-i", "to@example.net"], &msg);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let whole = (started.elapsed().as_micros() as u64 * 6 / 5).max(1);
    let rounds = 200;
    let mut killed = 0;
    for i in 0..rounds {
        // Within the time of one send: before, during and after the decision, the relay, the
        // statistics and the log.
        let delay = std::time::Duration::from_micros(i as u64 * 397 % whole);
        let mut cmd = env.cmd();
        cmd.args(["--account", "shop", "-i", "to@example.net"]);
        if kill_after(&mut cmd, &msg, delay).is_none() {
            killed += 1;
        }
    }
    assert!(killed > 0, "no sender was killed; the test proved nothing");
    let logged = env
        .log_text()
        .lines()
        .filter(|l| l.contains(" account=shop ") && l.contains(" status="))
        .count();
    let top = json(&env, &["top"], None);
    let counted: u64 = top["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["account"] == "shop")
        .map(|a| {
            ["sent", "queued", "deferred", "held", "refused"]
                .iter()
                .map(|k| a[k].as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    assert!(
        counted as usize >= logged,
        "top counts {counted}, the log has {logged} ({killed} killed)"
    );
    assert!(
        counted as usize <= logged + killed,
        "top counts {counted} > {logged} logged + {killed} killed"
    );
}

/// The shipped alerting rules load in Prometheus and fire on what they name (their own unit
/// tests: an account held by the trigger, a bounce rate over both parts of the rule and not
/// under the minimum, an old queue, relay errors, unreadable statistics, blind outcomes).
#[test]
fn the_prometheus_alerting_rules_pass_their_promtool_unit_tests() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/pkg/prometheus");
    for args in [
        ["check", "rules", "mailgate.rules.yml"],
        ["test", "rules", "mailgate.rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("promtool (package prometheus) must be installed");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
    }
    // Every metric a rule names is one `mailgate metrics` exports.
    let rules = std::fs::read_to_string(format!("{dir}/mailgate.rules.yml")).unwrap();
    let exported =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/stats/metrics.rs"))
            .unwrap();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("mailgate_") {
            assert!(
                exported.contains(&format!("\"{word}\"")),
                "the rules name {word}, which mailgate metrics does not export"
            );
        }
    }
}
