//! A hosting server's size: 10,000 accounts in `accounts.d/`, one file each as a panel writes
//! them (users, notify, allowed senders and two windows). Each message reads its own
//! account's file; a broken file or index touches no other account; a file replaced under
//! eight running senders never misattributes a message; the spool counts per account stay
//! exact; the admin commands read 10,000 accounts' counters and statistics.

mod common;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const ACCOUNTS: usize = 10_000;

/// The tests of this file each drive 10,000 accounts through a debug build: one at a time, so
/// that none of them measures the others' load.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `accounts.d/siteN.toml` for N in 1..=n, as a hosting panel would write them.
fn generate(dir: &Path, n: usize) {
    let accounts = dir.join("accounts.d");
    std::fs::create_dir_all(&accounts).unwrap();
    for i in 1..=n {
        std::fs::write(accounts.join(format!("site{i}.toml")), account_file(i, 100)).unwrap();
    }
}

fn account_file(i: usize, per_hour: u32) -> String {
    format!(
        "users = [\"web{i}\"]\nnotify = [\"owner@site{i}.example\"]\n\
         allowed_senders = [\"*@site{i}.example\"]\ndefault_sender = \"www@site{i}.example\"\n\
         limits = [ {{ window = \"1h\", messages = {per_hour} }}, {{ window = \"1d\", messages = 10000 }} ]\n"
    )
}

/// Replace a file the way a panel should: write beside it, rename over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn scale_env(sink_port: u16) -> Env {
    let env = Env::new(sink_port, "[alerts]\nadmin = \"\"\n");
    generate(env.dir.path(), ACCOUNTS);
    env
}

fn send_as(env: &Env, account: &str, from: &str) -> std::process::Output {
    let msg = format!("From: {from}\nSubject: scale {account}\n\nbody\n");
    env.send(
        &["--account", account, "-i", "to@example.net"],
        msg.as_bytes(),
    )
}

/// The account of each message in the log.
fn logged_accounts(env: &Env) -> Vec<String> {
    env.log_text()
        .lines()
        .filter(|l| l.contains(" id="))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|w| w.strip_prefix("account="))
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn each_account_gets_its_own_file_limits_and_domains_among_ten_thousand() {
    let _serial = serial();
    let sink = Sink::start(&[]);
    let env = scale_env(sink.port);
    let accounts = env.dir.path().join("accounts.d");
    // site4711 allows 2 an hour: the third is refused with its own limit's words.
    replace(&accounts.join("site4711.toml"), &account_file(4711, 2));
    for _ in 0..2 {
        let o = send_as(&env, "site4711", "x@site4711.example");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let o = send_as(&env, "site4711", "x@site4711.example");
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert!(stderr(&o).contains("2 messages per 1h"), "{}", stderr(&o));
    // Its neighbour has its own 100 an hour.
    let o = send_as(&env, "site4712", "x@site4712.example");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // The environment variable names the account as --account does.
    let msg = b"From: y@site77.example\nSubject: env\n\nbody\n";
    let o = run_with_input(
        env.cmd()
            .env("MAILGATE_ACCOUNT", "site77")
            .args(["-i", "to@example.net"]),
        msg,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // A domain named by another account's file is that account's: found through the index.
    let o = send_as(&env, "site5", "boss@site9999.example");
    assert_eq!(code(&o), 77, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("belongs to account site9999"),
        "{}",
        stderr(&o)
    );
    sink.wait_count(4);
    let logged = logged_accounts(&env);
    for account in ["site4711", "site4712", "site77", "site5"] {
        assert!(
            logged.iter().any(|a| a == account),
            "{account} in {logged:?}"
        );
    }
}

#[test]
fn a_damaged_account_file_or_index_changes_nothing_for_the_others() {
    let _serial = serial();
    let sink = Sink::start(&[]);
    let env = scale_env(sink.port);
    let accounts = env.dir.path().join("accounts.d");
    replace(
        &accounts.join("site17.toml"),
        "users = [\"web17\"\nlimits = oops\n",
    );
    let o = send_as(&env, "site17", "x@site17.example");
    assert_eq!(code(&o), 78, "{}", stderr(&o));
    assert!(stderr(&o).contains("site17.toml:"), "{}", stderr(&o));
    assert!(
        env.log_text().contains("config-error="),
        "the broken file is logged:\n{}",
        env.log_text()
    );
    for account in ["site16", "site18", "site10000"] {
        let o = send_as(&env, account, &format!("x@{account}.example"));
        assert_eq!(code(&o), 0, "{account}: {}", stderr(&o));
    }
    // check-config names the file and line, and exits 78 for the error.
    let o = run_with_input(env.cmd().arg("check-config"), b"");
    assert_eq!(code(&o), 78, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("site17.toml:2:") || stderr(&o).contains("site17.toml:1:"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        stderr(&o)
            .lines()
            .filter(|l| !l.contains("warning:"))
            .count(),
        2,
        "one error and the summary:\n{}",
        stderr(&o)
    );

    // A damaged index is not trusted: rebuilt, logged, and ownership still holds.
    let index = env.state.join("domains.index");
    assert!(index.exists(), "the first lookup published the index");
    let text = std::fs::read_to_string(&index).unwrap();
    let header = text.lines().next().unwrap();
    std::fs::write(&index, format!("{header}\nsite1.example site2\n")).unwrap();
    let o = send_as(&env, "site1", "x@site1.example");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = send_as(&env, "site3", "x@site2.example");
    assert_eq!(code(&o), 77, "{}", stderr(&o));
    assert!(
        env.log_text().contains("domains.index damaged"),
        "{}",
        env.log_text()
    );
    // A removed account owns nothing any more, at once (the index is stale, not trusted).
    std::fs::remove_file(accounts.join("site2.toml")).unwrap();
    let o = send_as(&env, "site3", "x@site2.example");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn replacing_account_files_under_eight_senders_never_misattributes() {
    let _serial = serial();
    let sink = Sink::start(&[]);
    let env = scale_env(sink.port);
    let accounts = env.dir.path().join("accounts.d");
    // The index is built once before the panel starts (a debug build takes seconds for it).
    let o = send_as(&env, "site100", "x@site100.example");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let per_sender = 15;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let codes: Vec<i32> = std::thread::scope(|s| {
        // The panel rewrites the eight senders' files as fast as it can meanwhile.
        s.spawn(|| {
            let mut round = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for i in 1..=8 {
                    replace(
                        &accounts.join(format!("site{i}.toml")),
                        &account_file(i, 1000 + round),
                    );
                }
                round += 1;
                // A busy panel, not a busy loop: the senders need the CPU too.
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let senders: Vec<_> = (1..=8)
            .map(|i| {
                let env = &env;
                s.spawn(move || {
                    (0..per_sender)
                        .map(|n| {
                            let msg = format!(
                                "From: x@site{i}.example\nSubject: from-site{i}-{n}\n\nbody\n"
                            );
                            let o = env.send(
                                &["--account", &format!("site{i}"), "-i", "to@example.net"],
                                msg.as_bytes(),
                            );
                            code(&o)
                        })
                        .collect::<Vec<i32>>()
                })
            })
            .collect();
        let codes = senders
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        codes
    });
    assert!(codes.iter().all(|&c| c == 0), "{codes:?}");
    let received: Vec<_> = sink
        .wait_count(8 * per_sender + 1)
        .into_iter()
        .filter(|r| r.sender() != "www@site100.example")
        .collect();
    assert_eq!(received.len(), 8 * per_sender);
    // Every message is logged under the account that sent it, and leaves with that
    // account's own default sender (from its own file).
    let logged = logged_accounts(&env);
    for i in 1..=8 {
        let account = format!("site{i}");
        let n = logged.iter().filter(|a| **a == account).count();
        assert_eq!(n, per_sender, "{account} logged {n} times: {logged:?}");
    }
    for r in &received {
        let subject = r.header("Subject").unwrap();
        let site = subject.split('-').nth(1).unwrap();
        assert_eq!(r.sender(), format!("www@{site}.example"), "{subject}");
    }
}

#[test]
fn spool_counts_stay_exact_per_account_while_the_relay_is_down() {
    let _serial = serial();
    // Nothing listens on this port: every message is queued.
    let env = Env::new(
        free_port(),
        "[alerts]\nadmin = \"\"\n[spool]\naccount_max_messages = 5\n",
    );
    generate(env.dir.path(), 3);
    for _ in 0..5 {
        let o = send_as(&env, "site1", "x@site1.example");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    // The sixth of site1 is refused by its share; site2's first is kept.
    let o = send_as(&env, "site1", "x@site1.example");
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("already has 5 messages"),
        "{}",
        stderr(&o)
    );
    let o = send_as(&env, "site2", "x@site2.example");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // A count knocked wrong (a sender killed between its rename and its count) is set right
    // by the next queue run.
    let record = env.state.join("spooled").join("site1");
    std::fs::write(&record, b"garbage").unwrap();
    let sink = Sink::start(&[]);
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config = config.replace(
        &format!("port = {}", config_port(&config)),
        &format!("port = {}", sink.port),
    );
    std::fs::write(&env.config, config).unwrap();
    let summary = admin(&env, &["queue", "flush"], None);
    assert!(summary.contains("delivered 6 queued"), "{summary}");
    sink.wait_count(6);
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(
        text.starts_with("mailgate-spooled 1 0 0 0 "),
        "delivered and repaired: {text:?}"
    );
    // The share is free again.
    let o = send_as(&env, "site1", "x@site1.example");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

fn config_port(config: &str) -> u16 {
    config
        .lines()
        .find_map(|l| l.strip_prefix("port = "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The admin commands over 10,000 accounts that all have counters and statistics. The bound
/// is a guard against a command that went quadratic (minutes at this size), not a timing
/// claim: this is a debug build on a shared machine; README has the release figures from
/// bench/scale.sh (each under 0.5 s).
#[test]
fn admin_commands_over_ten_thousand_accounts_with_counters_and_statistics() {
    let _serial = serial();
    let sink = Sink::start(&[]);
    let env = scale_env(sink.port);
    // The first message builds the domain index (a debug build parses 10,000 files in
    // seconds); the eight senders then find it built.
    let o = send_as(&env, "site1", "x@site1.example");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // One message per account, eight senders at a time.
    std::thread::scope(|s| {
        for t in 0..8 {
            let env = &env;
            s.spawn(move || {
                for i in (2..=ACCOUNTS).filter(|i| i % 8 == t) {
                    let o = send_as(env, &format!("site{i}"), &format!("x@site{i}.example"));
                    assert_eq!(code(&o), 0, "site{i}: {}", stderr(&o));
                }
            });
        }
    });
    sink.wait_count(ACCOUNTS);
    let timed = |args: &[&str]| {
        let started = Instant::now();
        let out = admin(&env, args, None);
        (started.elapsed(), out)
    };
    let bound = Duration::from_secs(60);
    let (took, top) = timed(&["top"]);
    assert!(took < bound, "top took {took:?}");
    assert!(
        top.contains("9980 more accounts with 9980 messages left out"),
        "{top}"
    );
    let (took, all) = timed(&["top", "--all"]);
    assert!(took < bound, "top --all took {took:?}");
    assert_eq!(all.matches("1 messages (sent 1").count(), ACCOUNTS);
    let (took, metrics) = timed(&["metrics"]);
    assert!(took < bound, "metrics took {took:?}");
    assert!(
        metrics.contains("account=\"(other)\",outcome=\"sent\"} 9900"),
        "100 accounts of their own, the rest summed"
    );
    let (took, status) = timed(&["status", "site5000"]);
    assert!(took < bound, "status ACCOUNT took {took:?}");
    assert!(status.contains("site5000"), "{status}");
    let (took, _) = timed(&["status"]);
    assert!(took < bound, "status took {took:?}");
    let (took, summary) = timed(&["queue", "run"]);
    assert!(took < bound, "queue run took {took:?}");
    assert!(summary.contains("delivered 0 queued"), "{summary}");
}
