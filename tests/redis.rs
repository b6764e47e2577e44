//! The shared counter store: two "nodes" (two mailgate state/config roots) sharing one real
//! redis-server on loopback; Redis stopped, slow and back.

mod common;
use common::*;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};

const MSG: &[u8] = b"Subject: cluster\n\nbody\n";

/// A redis-server of our own on a free port, with an append-only file so that a restart keeps
/// the counters.
struct Redis {
    port: u16,
    dir: TempDir,
    child: Option<Guard>,
}

impl Redis {
    fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: TempDir::new("redis"),
            child: None,
        };
        r.restart();
        r
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.child = Some(Guard(child));
        let port = self.port;
        wait_for("redis-server to answer", || {
            let o = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "ping"])
                .output()
                .ok()?;
            (String::from_utf8_lossy(&o.stdout).trim() == "PONG").then_some(())
        });
    }

    /// Stop it the way an admin does (SHUTDOWN writes the append-only file).
    fn stop(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .output();
        if let Some(mut g) = self.child.take() {
            let pid = g.0.id();
            wait_for(&format!("redis-server {pid} to exit"), || {
                g.0.try_wait().unwrap()
            });
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let o = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

fn me() -> String {
    let o = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A node of the cluster. Its Redis timeout (2 s) is longer than the default: a test is about
/// what happens when Redis is down or silent, never about a live Redis that a loaded CI machine
/// made slower than 0.5 s (one such deferral defers the account's later mail too, in order).
fn node(relay: u16, redis_port: u16, extra: &str) -> Env {
    Env::new(
        relay,
        &format!(
            "[alerts]\nadmin = \"\"\n[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{redis_port}/0\"\ntimeout_ms = 2000\n{extra}\n\
             [accounts.shop]\nusers = [\"{}\", 0]\nlimits = [ {{ window = \"1h\", messages = 20 }}, {{ window = \"1d\", messages = 1000 }} ]\n",
            me()
        ),
    )
}

#[test]
fn two_nodes_share_one_exact_quota() {
    let redis = Redis::start();
    let sink = Sink::start(&[]);
    let (a, b) = (
        node(sink.port, redis.port, ""),
        node(sink.port, redis.port, ""),
    );
    let codes: Vec<i32> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let env = if i % 2 == 0 { &a } else { &b };
                s.spawn(move || {
                    (0..5)
                        .map(|_| code(&env.send(&["--account", "shop", "-i", "to@x.org"], MSG)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(codes.iter().filter(|&&c| c == 0).count(), 20, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 69).count(), 20, "{codes:?}");
    assert_eq!(sink.wait_count(20).len(), 20);
    // Either node's status shows the cluster-wide count; the local state dirs hold no counters.
    let st = json(&b, &["status", "shop"], None);
    assert_eq!(st["accounts"][0]["windows"][0]["messages"], 20);
    assert_eq!(st["accounts"][0]["windows"][0]["refused"], 20);
    assert!(!a.state.join("accounts").exists() && !b.state.join("accounts").exists());
    // Keys expire by themselves.
    let ttl: i64 = redis.cli(&["ttl", "mailgate:a:shop:3600"]).parse().unwrap();
    assert!(ttl > 3600 && ttl <= 3600 + 2 * 190, "ttl {ttl}");
    // reset works against Redis too.
    admin(&a, &["reset", "shop"], None);
    assert_eq!(
        json(&a, &["status", "shop"], None)["accounts"][0]["windows"][0]["messages"],
        0
    );
    assert_eq!(
        code(&a.send(&["--account", "shop", "-i", "to@x.org"], MSG)),
        0
    );
}

#[test]
fn redis_down_keeps_mail_and_queue_run_counts_it_when_back() {
    let mut redis = Redis::start();
    let rec = Recorder::start(Script::default());
    let env = node(rec.port, redis.port, "");
    // Limit 20 per hour: 18 now, then Redis goes away.
    for _ in 0..18 {
        assert_eq!(
            code(&env.send(&["--account", "shop", "-i", "to@x.org"], MSG)),
            0
        );
    }
    redis.stop();
    for i in 0..4 {
        let o = env.send(
            &["--account", "shop", "-i", "to@x.org"],
            format!("Subject: while down {i}\n\nb\n").as_bytes(),
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert!(
            stderr(&o).contains("counter store") && stderr(&o).contains("deferred"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(rec.received().len(), 18);
    assert_eq!(
        json(&env, &["queue", "list"], None)
            .as_array()
            .unwrap()
            .len(),
        4
    );
    // queue run while Redis is still down: nothing moves, nothing is lost.
    admin(&env, &["queue", "run"], None);
    assert_eq!(
        json(&env, &["queue", "list"], None)
            .as_array()
            .unwrap()
            .len(),
        4
    );
    // Back (with its counts): only 2 more fit this hour; the other 2 wait, in order.
    redis.restart();
    let out = admin(&env, &["queue", "run"], None);
    assert!(
        out.contains("released 2 deferred") && out.contains("2 still deferred"),
        "{out}"
    );
    let subjects: Vec<String> = rec
        .received()
        .iter()
        .skip(18)
        .map(|r| r.header("Subject").unwrap())
        .collect();
    assert_eq!(subjects, ["while down 0", "while down 1"]);
    assert_eq!(
        json(&env, &["status", "shop"], None)["accounts"][0]["windows"][0]["messages"],
        20
    );
}

#[test]
fn slow_or_absent_redis_never_hangs_and_follows_on_unavailable() {
    // A "Redis" that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        for c in silent.incoming() {
            keep.push(c);
        }
    });
    let rec = Recorder::start(Script::default());
    let queue = node(rec.port, port, "on_unavailable = \"queue\"");
    let o = queue.send(&["--account", "shop", "-i", "to@x.org"], MSG);
    assert_eq!(code(&o), 0);
    assert!(stderr(&o).contains("deferred"), "{}", stderr(&o));
    let open = node(rec.port, port, "on_unavailable = \"fail-open\"");
    let o = open.send(&["--account", "shop", "-i", "to@x.org"], MSG);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(rec.wait_count(1).len(), 1);
    assert!(
        open.log_text().contains("sending uncounted"),
        "{}",
        open.log_text()
    );
    let refuse = node(rec.port, free_port(), "on_unavailable = \"refuse\"");
    let o = refuse.send(&["--account", "shop", "-i", "to@x.org"], MSG);
    assert_eq!(code(&o), 71);
    assert!(stderr(&o).contains("counter store"), "{}", stderr(&o));
    assert_eq!(rec.received().len(), 1);
}

#[test]
fn server_cap_is_cluster_wide_and_the_password_file_is_used() {
    let port = free_port();
    let dir = TempDir::new("redis-auth");
    let _server = Guard(
        Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--requirepass",
                "s3cret/+pass",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("redis-server with a password", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let pass = dir.path().join("redis.pass");
    std::fs::write(&pass, "s3cret/+pass\n").unwrap();
    let sink = Sink::start(&[]);
    let cfg = |password_file: &std::path::Path| {
        Env::new(
            sink.port,
            &format!(
                "[alerts]\nadmin = \"\"\n[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{port}/0\"\npassword_file = \"{}\"\non_unavailable = \"refuse\"\n\
                 [server]\nlimits = [ {{ window = \"1h\", messages = 10 }} ]\n[defaults]\nlimits = [ {{ window = \"1h\", messages = 100 }} ]\n\
                 [accounts.a]\nusers = [\"{me}\", 0]\n[accounts.b]\nusers = [\"{me}\", 0]\n",
                password_file.display(),
                me = me()
            ),
        )
    };
    let (n1, n2) = (cfg(&pass), cfg(&pass));
    let codes: Vec<i32> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let env = if i % 2 == 0 { &n1 } else { &n2 };
                let account = if i % 4 < 2 { "a" } else { "b" };
                s.spawn(move || {
                    (0..3)
                        .map(|_| code(&env.send(&["--account", account, "-i", "to@x.org"], MSG)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(codes.iter().filter(|&&c| c == 0).count(), 10, "{codes:?}");
    assert_eq!(sink.wait_count(10).len(), 10);
    assert_eq!(
        json(&n1, &["status"], None)["server"]["windows"][0]["messages"],
        10
    );
    // A wrong password is an unavailable store (here: refuse).
    let wrong = dir.path().join("wrong.pass");
    std::fs::write(&wrong, "nope").unwrap();
    let o = cfg(&wrong).send(&["--account", "a", "-i", "to@x.org"], MSG);
    assert_eq!(code(&o), 71, "{}", stderr(&o));
}

#[test]
fn redis_stopped_while_eight_senders_run_loses_nothing() {
    let mut redis = Redis::start();
    let sink = Sink::start(&[]);
    let (a, b) = (
        node(sink.port, redis.port, ""),
        node(sink.port, redis.port, ""),
    );
    let per_sender = 15;
    let attempts = 8 * per_sender;
    let codes: Vec<i32> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let env = if i % 2 == 0 { &a } else { &b };
                s.spawn(move || {
                    (0..per_sender)
                        .map(|_| code(&env.send(&["--account", "shop", "-i", "to@x.org"], MSG)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // Pull the plug while they run.
        wait_for("the first messages through", || {
            (sink.received().len() >= 4).then_some(())
        });
        redis.stop();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    // Every attempt either went out, was kept (exit 0) or was refused by the limit (69).
    assert!(codes.iter().all(|&c| c == 0 || c == 69), "{codes:?}");
    let deferred = |env: &Env| {
        json(env, &["queue", "list"], None)
            .as_array()
            .unwrap()
            .len()
    };
    let kept = deferred(&a) + deferred(&b);
    let refused = codes.iter().filter(|&&c| c == 69).count();
    wait_for("in-flight relays to finish", || {
        (sink.received().len() + kept + refused == attempts).then_some(())
    });
    assert!(
        kept > 0,
        "Redis went away after all senders were done; the test proved nothing"
    );
    // Redis back: queue runs on both nodes send what fits; never more than the limit.
    redis.restart();
    admin(&a, &["queue", "run"], None);
    admin(&b, &["queue", "run"], None);
    let sent = sink.received().len();
    assert!(sent <= 20, "{sent} sent for a limit of 20");
    let left = deferred(&a) + deferred(&b);
    assert_eq!(
        sent + left + refused,
        attempts,
        "every message is sent, kept or was refused"
    );
}

/// Observe mode through the Redis script: an observed limit counts and lets the mail go, the
/// log says what it would have done, and an enforced limit beside it still refuses.
#[test]
fn an_observed_limit_lets_mail_go_and_an_enforced_one_still_refuses() {
    let redis = Redis::start();
    let sink = Sink::start(&[]);
    let env = Env::new(
        sink.port,
        &format!(
            "[alerts]\nadmin = \"\"\n[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}/0\"\ntimeout_ms = 2000\n\
             [accounts.watch]\nusers = [\"{}\", 0]\n\
             limits = [ {{ window = \"1m\", messages = 1, observe = true }}, {{ window = \"1h\", messages = 3 }} ]\n",
            redis.port,
            me()
        ),
    );
    let codes: Vec<i32> = (0..4)
        .map(|_| code(&env.send(&["--account", "watch", "-i", "to@x.org"], MSG)))
        .collect();
    assert_eq!(
        codes,
        [0, 0, 0, 69],
        "observed 1/min lets 3 go; enforced 3/h refuses the 4th"
    );
    assert_eq!(sink.wait_count(3).len(), 3);
    let log = env.log_text();
    assert_eq!(
        log.matches("observed=\"would have been refused: watch exceeded 1 messages per 1m")
            .count(),
        2,
        "{log}"
    );
    let st = json(&env, &["status", "watch"], None);
    assert_eq!(st["accounts"][0]["windows"][0]["messages"], 3, "{st}");
}
