//! The shared counter store: two "nodes" (two mailgate state/config roots) sharing one real
//! redis-server on loopback; Redis stopped, slow and back.

mod common;
use common::*;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

const MSG: &[u8] = b"Subject: cluster\n\nbody\n";

/// A redis-server of our own on a free port, with an append-only file so that a restart keeps
/// the counters.
struct Redis {
    port: u16,
    dir: TempDir,
    child: Option<Guard>,
    extra: Vec<String>,
    /// TLS only (CA, certificate, key): the port speaks TLS, replication too.
    tls: Option<Tls>,
}

#[derive(Clone)]
struct Tls {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// With more arguments for redis-server (`--replicaof HOST PORT`).
    fn start_with(extra: &[&str]) -> Redis {
        Redis::start_tls(extra, None)
    }

    fn start_tls(extra: &[&str], tls: Option<Tls>) -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: TempDir::new("redis"),
            child: None,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            tls,
        };
        r.restart();
        r
    }

    /// redis-cli's arguments to reach this server.
    fn cli_args(&self) -> Vec<String> {
        let mut args = vec!["-p".to_string(), self.port.to_string()];
        if let Some(t) = &self.tls {
            args.extend([
                "--tls".into(),
                "--cacert".into(),
                t.ca.display().to_string(),
            ]);
        }
        args
    }

    /// Gone at once, as a crashed host is: SIGKILL, no SHUTDOWN.
    fn kill(&mut self) {
        self.child.take();
    }

    fn restart(&mut self) {
        let ports: Vec<String> = match &self.tls {
            None => vec!["--port".into(), self.port.to_string()],
            Some(t) => [
                "--port",
                "0",
                "--tls-port",
                &self.port.to_string(),
                "--tls-cert-file",
                &t.cert.display().to_string(),
                "--tls-key-file",
                &t.key.display().to_string(),
                "--tls-ca-cert-file",
                &t.ca.display().to_string(),
                "--tls-auth-clients",
                "no",
                "--tls-replication",
                "yes",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect(),
        };
        let child = Command::new("redis-server")
            .args(&self.extra)
            .args(&ports)
            .args([
                "--bind",
                "127.0.0.1",
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
        let cli = self.cli_args();
        wait_for("redis-server to answer", || {
            let o = Command::new("redis-cli")
                .args(&cli)
                .arg("ping")
                .output()
                .ok()?;
            (String::from_utf8_lossy(&o.stdout).trim() == "PONG").then_some(())
        });
    }

    /// Stop it the way an admin does (SHUTDOWN writes the append-only file).
    fn stop(&mut self) {
        let _ = Command::new("redis-cli")
            .args(self.cli_args())
            .arg("shutdown")
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
            .args(self.cli_args())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

/// How many messages `env` keeps in its spools for a queue run.
fn spooled(env: &Env) -> usize {
    json(env, &["queue", "list"], None)
        .as_array()
        .unwrap()
        .len()
}

/// Eight senders alternating between nodes `a` and `b`, `per_sender` messages each to
/// account shop: their exit codes.
fn eight_senders(a: &Env, b: &Env, per_sender: usize) -> Vec<i32> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let env = if i % 2 == 0 { a } else { b };
                s.spawn(move || {
                    (0..per_sender)
                        .map(|_| code(&env.send(&["--account", "shop", "-i", "to@x.org"], MSG)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
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
    let codes: Vec<i32> = eight_senders(&a, &b, 5);
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
    assert_eq!(spooled(&env), 4);
    // queue run while Redis is still down: nothing moves, nothing is lost.
    admin(&env, &["queue", "run"], None);
    assert_eq!(spooled(&env), 4);
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
    let kept = spooled(&a) + spooled(&b);
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
    let left = spooled(&a) + spooled(&b);
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

/// A replicated Redis watched by three sentinels, all on loopback free ports: a master, one
/// replica, and sentinels that call the master down after 500 ms.
struct SentinelSet {
    master: Redis,
    replica: Redis,
    sentinels: Vec<(u16, Guard)>,
    tls: Option<Tls>,
    _dir: TempDir,
}

const MASTER_NAME: &str = "mgmaster";

impl SentinelSet {
    fn start() -> SentinelSet {
        SentinelSet::start_tls(None)
    }

    /// With `tls`, master and replica speak TLS only (replication too), and the sentinels
    /// reach them over TLS; the sentinels' own port stays plain.
    fn start_tls(tls: Option<Tls>) -> SentinelSet {
        let master = Redis::start_tls(&[], tls.clone());
        let replica = Redis::start_tls(
            &["--replicaof", "127.0.0.1", &master.port.to_string()],
            tls.clone(),
        );
        wait_for("the replica to be in sync", || {
            replica
                .cli(&["info", "replication"])
                .contains("master_link_status:up")
                .then_some(())
        });
        let dir = TempDir::new("sentinels");
        let sentinels = (0..3)
            .map(|i| {
                let port = free_port();
                let conf = dir.path().join(format!("sentinel{i}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "{}\nbind 127.0.0.1\ndir {}\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 500\n\
                         sentinel failover-timeout {MASTER_NAME} 5000\n{}",
                        match &tls {
                            Some(_) => format!("port 0\ntls-port {port}\ntls-auth-clients no"),
                            None => format!("port {port}"),
                        },
                        dir.path().display(),
                        master.port,
                        match &tls {
                            Some(t) => format!(
                                "tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-replication yes\n",
                                t.cert.display(),
                                t.key.display(),
                                t.ca.display()
                            ),
                            None => String::new(),
                        }
                    ),
                )
                .unwrap();
                let child = Command::new("redis-sentinel")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-sentinel (Debian package redis-sentinel) must be installed");
                (port, Guard(child))
            })
            .collect();
        let set = SentinelSet {
            master,
            replica,
            sentinels,
            tls,
            _dir: dir,
        };
        // Every sentinel knows the replica and the two other sentinels before anything fails.
        for (port, _) in &set.sentinels {
            wait_for("the sentinels to know each other and the replica", || {
                let cli = |args: &[&str]| {
                    let o = Command::new("redis-cli")
                        .args(set.sentinel_cli(*port))
                        .args(args)
                        .output()
                        .ok()?;
                    Some(String::from_utf8_lossy(&o.stdout).into_owned())
                };
                let replicas = cli(&["sentinel", "replicas", MASTER_NAME])?;
                let others = cli(&["sentinel", "sentinels", MASTER_NAME])?;
                (replicas.contains(&set.replica.port.to_string())
                    && others.matches("runid").count() == 2)
                    .then_some(())
            });
        }
        set
    }

    /// The master's port as the first sentinel names it.
    /// redis-cli's arguments to reach the sentinel on `port`.
    fn sentinel_cli(&self, port: u16) -> Vec<String> {
        let mut args = vec!["-p".to_string(), port.to_string()];
        if let Some(t) = &self.tls {
            args.extend([
                "--tls".into(),
                "--cacert".into(),
                t.ca.display().to_string(),
            ]);
        }
        args
    }

    fn named_master(&self) -> Option<u16> {
        let o = Command::new("redis-cli")
            .args(self.sentinel_cli(self.sentinels[0].0))
            .args(["sentinel", "get-master-addr-by-name", MASTER_NAME])
            .output()
            .ok()?;
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }

    fn store_config(&self, extra: &str) -> String {
        let list: Vec<String> = self
            .sentinels
            .iter()
            .map(|(p, _)| {
                let scheme = if self.tls.is_some() {
                    "rediss"
                } else {
                    "redis"
                };
                format!("\"{scheme}://127.0.0.1:{p}\"")
            })
            .collect();
        format!(
            "sentinels = [{}]\nmaster_name = \"{MASTER_NAME}\"\nfailover_wait_ms = 15000\n{extra}",
            list.join(", ")
        )
    }
}

/// Issue 31: the master killed mid-burst, Sentinel promotes the replica; two nodes with 8
/// senders each at the account's limit lose nothing, relay nothing twice, decide every
/// message within the call (nothing waits for a queue run), go over the limit by at most one
/// message per sender in flight (README: what asynchronous replication can lose), and the
/// messages in flight at the kill are decided within a second of the promotion.
#[test]
fn a_sentinel_failover_mid_burst_loses_nothing_and_counts_nothing_twice() {
    failover_mid_burst(SentinelSet::start(), "");
}

/// The same over TLS (a test CA made here; replication and the sentinels' links to the
/// servers are TLS too) with an ACL user.
#[test]
fn a_sentinel_failover_over_tls_with_an_acl_user() {
    let dir = TempDir::new("tls-sentinel");
    let (ca, cert, key) = make_ca(dir.path(), "sentinel");
    let set = SentinelSet::start_tls(Some(Tls {
        ca: ca.clone(),
        cert,
        key,
    }));
    for r in [&set.master, &set.replica] {
        set_acl_user(r, "failover-pass");
    }
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "failover-pass\n").unwrap();
    failover_mid_burst(
        set,
        &format!(
            "url = \"rediss://ignored/0\"\nusername = \"mailgate\"\npassword_file = \"{}\"\ntls_ca_file = \"{}\"",
            secret.display(),
            ca.display()
        ),
    );
}

/// README's ACL line for mailgate's user (read from README.md, so that the line an admin
/// copies is the line the tests prove), set on `redis` with `password`.
fn set_acl_user(redis: &Redis, password: &str) {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("ACL SETUSER mailgate "))
        .expect("README shows the ACL line for mailgate's user");
    let args: Vec<String> = line
        .split_whitespace()
        .map(|w| {
            if w == ">PASSWORD" {
                format!(">{password}")
            } else {
                w.to_string()
            }
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(redis.cli(&args), "OK", "{line}");
}

/// A highly available Redis a test can take the master of away.
trait Failover {
    /// The `[store]` keys that reach it (plus `extra`).
    fn store_config(&self, extra: &str) -> String;
    /// Kill the master that holds mailgate's keys (SIGKILL, as a crashed host); its port.
    fn kill_master(&mut self) -> u16;
    /// The new master's port, once one other than `old` serves mailgate's keys.
    fn new_master(&self, old: u16) -> Option<u16>;
}

impl Failover for SentinelSet {
    fn store_config(&self, extra: &str) -> String {
        SentinelSet::store_config(self, extra)
    }

    fn kill_master(&mut self) -> u16 {
        self.master.kill();
        self.master.port
    }

    fn new_master(&self, old: u16) -> Option<u16> {
        // The replica, promoted: never another server.
        self.named_master()
            .filter(|p| *p != old)
            .inspect(|p| assert_eq!(*p, self.replica.port, "the replica is the new master"))
    }
}

fn failover_mid_burst(mut set: impl Failover, store_extra: &str) {
    let sink = Sink::start(&[]);
    let nodes = [0, 1].map(|_| {
        Env::new(
            sink.port,
            &format!(
                "[alerts]\nadmin = \"\"\n[store]\nkind = \"redis\"\ntimeout_ms = 300\n{}\n\
                 [accounts.shop]\nusers = [\"{}\", 0]\nlimits = [ {{ window = \"1h\", messages = 40 }} ]\n",
                set.store_config(store_extra),
                me()
            ),
        )
    });
    let senders = 16;
    let per_sender = 6;
    let start = std::time::Instant::now();
    let (results, killed_at, promoted_at) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..senders)
            .map(|i| {
                let env = &nodes[i % 2];
                s.spawn(move || {
                    (0..per_sender)
                        .map(|_| {
                            let began = start.elapsed();
                            let c = code(&env.send(&["--account", "shop", "-i", "to@x.org"], MSG));
                            (began, start.elapsed(), c)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        wait_for("the first messages through", || {
            (sink.received().len() >= 10).then_some(())
        });
        let old = set.kill_master();
        let killed_at = start.elapsed();
        wait_for_within("a replica to be promoted", Duration::from_secs(30), || {
            set.new_master(old)
        });
        let promoted_at = start.elapsed();
        let results: Vec<_> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        (results, killed_at, promoted_at)
    });
    let codes: Vec<i32> = results.iter().map(|r| r.2).collect();
    assert!(codes.iter().all(|&c| c == 0 || c == 69), "{codes:?}");
    // Decided within the call: nothing kept for a queue run, on either node.
    for env in &nodes {
        let kept = spooled(env);
        assert_eq!(
            kept, 0,
            "a message waited for the queue run instead of the new master"
        );
    }
    let accepted = codes.iter().filter(|&&c| c == 0).count();
    let got = sink.wait_count(accepted);
    assert_eq!(
        got.len(),
        accepted,
        "every accepted message reached the relay, once"
    );
    let mut ids: Vec<String> = got.iter().filter_map(|r| r.header("Message-ID")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), got.len(), "no message relayed twice");
    assert!(
        (40..=40 + senders).contains(&accepted),
        "{accepted} accepted for a limit of 40 (README: at most one per sender in flight over it)"
    );
    // The failover happened while messages were being decided, and those in flight when the
    // master died were decided within a second of the promotion.
    let in_flight: Vec<_> = results
        .iter()
        .filter(|(began, ended, _)| *began <= killed_at && *ended >= killed_at)
        .collect();
    assert!(
        !in_flight.is_empty(),
        "the kill hit no message in flight: the test proved nothing"
    );
    let last = results
        .iter()
        .filter(|(began, _, _)| *began <= promoted_at)
        .map(|r| r.1)
        .max()
        .unwrap();
    assert!(
        last <= promoted_at + Duration::from_secs(1),
        "a message begun before the promotion was decided {:?} after it",
        last.saturating_sub(promoted_at)
    );
    // The new master holds the cluster-wide count.
    let st = json(&nodes[0], &["status", "shop"], None);
    let counted = st["accounts"][0]["windows"][0]["messages"]
        .as_u64()
        .unwrap() as usize;
    assert!(
        counted <= accepted && counted + senders >= accepted,
        "counted {counted}, accepted {accepted}"
    );
}

/// Issue 31: the counting script called twice with one call token (a sender that lost the
/// answer with the old master's connection and asks the new one) counts once and answers
/// the same; another token counts again.
#[test]
fn a_repeated_call_counts_once() {
    let redis = Redis::start();
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/limits/redis.lua"))
            .unwrap();
    let call = |token: &str| {
        redis.cli(&[
            "eval",
            &script,
            "3",
            "mailgate:a:t:3600",
            "mailgate:lock:t",
            token,
            // now, recipients, count_refusal, exempt, lock_after, account windows, server
            // windows, then the window: seconds, messages, recipients, observe
            "1000",
            "1",
            "1",
            "0",
            "0",
            "1",
            "0",
            "3600",
            "5",
            "-1",
            "0",
            // how long the token lives
            "60",
        ])
    };
    let messages = || -> i64 {
        let fields = redis.cli(&["hgetall", "mailgate:a:t:3600"]);
        fields
            .lines()
            .filter_map(|l| l.split(':').nth(1)?.parse::<i64>().ok())
            .sum()
    };
    let first = call("mailgate:once:A");
    assert_eq!(messages(), 1);
    let ttl: i64 = redis.cli(&["ttl", "mailgate:once:A"]).parse().unwrap();
    assert!(
        ttl > 0 && ttl <= 60,
        "the token lives as long as a repeat can come: {ttl}"
    );
    assert_eq!(call("mailgate:once:A"), first, "the same answer again");
    assert_eq!(messages(), 1, "counted once");
    call("mailgate:once:B");
    assert_eq!(messages(), 2, "another call counts");
}

/// Issue 31: an ACL user with only what mailgate needs (README's line), through Sentinel:
/// check-config says each step, mail is counted as that user; a wrong password is a clear
/// check-config error and keeps the mail (on_unavailable = "queue").
#[test]
fn an_acl_user_through_sentinel_is_checked_and_counts() {
    let set = SentinelSet::start();
    // README "Many web servers": the ACL line for mailgate's user. ACLs do not replicate:
    // the user goes on every server that may become the master.
    for r in [&set.master, &set.replica] {
        set_acl_user(r, "s3cret-pass");
    }
    let sink = Sink::start(&[]);
    let dir = TempDir::new("acl");
    let secret = dir.path().join("redis.secret");
    let node = |password: &str| {
        std::fs::write(&secret, format!("{password}\n")).unwrap();
        Env::new(
            sink.port,
            &format!(
                "[alerts]\nadmin = \"\"\n[store]\nkind = \"redis\"\ntimeout_ms = 2000\n{}\n\
                 [accounts.shop]\nusers = [\"{}\", 0]\nlimits = [ {{ window = \"1h\", messages = 5 }} ]\n",
                set.store_config(&format!(
                    "username = \"mailgate\"\npassword_file = \"{}\"",
                    secret.display()
                )),
                me()
            ),
        )
    };
    let good = node("s3cret-pass");
    let o = run_with_input(good.cmd().arg("check-config"), b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for step in [
        format!("the sentinels name 127.0.0.1:{}", set.master.port),
        "reachable, authenticated as user \"mailgate\"".to_string(),
        "counting script loaded".to_string(),
        "refund script loaded".to_string(),
    ] {
        assert!(out.contains(&step), "check-config names {step:?}:\n{out}");
    }
    assert_eq!(
        code(&good.send(&["--account", "shop", "-i", "to@x.org"], MSG)),
        0
    );
    sink.wait_count(1);
    assert_eq!(
        set.master.cli(&["exists", "mailgate:a:shop:3600"]),
        "1",
        "counted on the master"
    );

    let bad = node("wrong");
    let o = run_with_input(bad.cmd().arg("check-config"), b"");
    assert_eq!(code(&o), 78, "a wrong password is a configuration error");
    assert!(
        stderr(&o).contains("[store]") && stderr(&o).to_lowercase().contains("auth"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        code(&bad.send(&["--account", "shop", "-i", "to@x.org"], MSG)),
        0
    );
    let kept = spooled(&bad);
    assert_eq!(kept, 1, "kept for the queue run, not sent uncounted");
    assert_eq!(sink.received().len(), 1);
}

/// Issue 31: one cluster, one voice. Two nodes on one Redis: the admin's alert and the
/// customer's notice go out once per window between them (claimed in Redis), and a lock
/// made on node A holds node B's mail.
#[test]
fn two_nodes_send_one_alert_and_one_notice_and_share_a_lock() {
    let redis = Redis::start();
    let sink = Sink::start(&[]);
    let node = || {
        Env::new(
            sink.port,
            &format!(
                "[alerts]\nadmin = \"admin@x.org\"\n[store]\nkind = \"redis\"\n\
                 url = \"redis://127.0.0.1:{}/0\"\ntimeout_ms = 2000\n\
                 [accounts.shop]\nusers = [\"{}\", 0]\nnotify = [\"owner@shop.example\"]\n\
                 limits = [ {{ window = \"1h\", messages = 2 }} ]\n",
                redis.port,
                me()
            ),
        )
    };
    let (a, b) = (node(), node());
    let send = |env: &Env| code(&env.send(&["--account", "shop", "-i", "to@x.org"], MSG));
    assert_eq!([send(&a), send(&b)], [0, 0]);
    // Over the limit on both nodes, twice each.
    assert_eq!([send(&a), send(&b), send(&a), send(&b)], [69, 69, 69, 69]);
    let to = |rcpt: &str| {
        sink.received()
            .iter()
            .filter(|r| r.rcpts.iter().any(|x| x == rcpt))
            .count()
    };
    wait_for("the alert and the notice", || {
        (to("admin@x.org") >= 1 && to("owner@shop.example") >= 1).then_some(())
    });
    // Every refusal was logged and its statistics written before its sender exited: nothing
    // more is on its way.
    assert_eq!(to("admin@x.org"), 1, "one alert for the cluster");
    assert_eq!(to("owner@shop.example"), 1, "one notice for the cluster");

    // A lock on node A holds node B's next message.
    admin(&a, &["reset", "shop"], None);
    admin(
        &a,
        &["lock", "shop", "--reason", "hacked contact form"],
        None,
    );
    assert_eq!(send(&b), 0, "kept, not refused");
    let held = json(&b, &["hold", "list"], None);
    assert_eq!(held.as_array().unwrap().len(), 1, "held on node B: {held}");
    let relayed = sink.received().len();
    admin(&b, &["unlock", "shop"], None);
    assert_eq!(send(&a), 0);
    sink.wait_count(relayed + 1);
}

/// A test CA and a server certificate for 127.0.0.1 signed by it, made with openssl(1).
fn make_ca(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = dir.join(format!("{name}-ca.key"));
    let ca = dir.join(format!("{name}-ca.pem"));
    let key = dir.join(format!("{name}-server.key"));
    let csr = dir.join(format!("{name}-server.csr"));
    let cert = dir.join(format!("{name}-server.pem"));
    let ext = dir.join(format!("{name}-san.ext"));
    std::fs::write(&ext, "subjectAltName = IP:127.0.0.1\n").unwrap();
    let openssl = |args: Vec<String>| {
        let o = Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl (Debian package openssl) must be installed");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let p = |x: &std::path::Path| x.display().to_string();
    openssl(vec![
        "req".into(),
        "-x509".into(),
        "-newkey".into(),
        "rsa:2048".into(),
        "-nodes".into(),
        "-days".into(),
        "2".into(),
        "-subj".into(),
        format!("/CN=mailgate test CA {name}"),
        "-keyout".into(),
        p(&ca_key),
        "-out".into(),
        p(&ca),
    ]);
    openssl(vec![
        "req".into(),
        "-newkey".into(),
        "rsa:2048".into(),
        "-nodes".into(),
        "-subj".into(),
        "/CN=127.0.0.1".into(),
        "-keyout".into(),
        p(&key),
        "-out".into(),
        p(&csr),
    ]);
    openssl(vec![
        "x509".into(),
        "-req".into(),
        "-in".into(),
        p(&csr),
        "-CA".into(),
        p(&ca),
        "-CAkey".into(),
        p(&ca_key),
        "-CAcreateserial".into(),
        "-days".into(),
        "2".into(),
        "-extfile".into(),
        p(&ext),
        "-out".into(),
        p(&cert),
    ]);
    (ca, cert, key)
}

/// Issue 31: rediss:// with a test CA and an ACL user: check-config says the certificate was
/// verified, mail is counted on the TLS server; a server whose certificate another CA signed
/// is refused (a configuration error for check-config, the mail kept for the queue run).
#[test]
fn tls_with_an_acl_user_verifies_the_server() {
    let dir = TempDir::new("tls");
    let (ca, cert, key) = make_ca(dir.path(), "good");
    let (other_ca, _, _) = make_ca(dir.path(), "other");
    let tls_port = free_port();
    let redis = Redis::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &cert.display().to_string(),
        "--tls-key-file",
        &key.display().to_string(),
        "--tls-ca-cert-file",
        &ca.display().to_string(),
        "--tls-auth-clients",
        "no",
    ]);
    set_acl_user(&redis, "tls-pass");
    std::fs::write(dir.path().join("secret"), "tls-pass\n").unwrap();
    let sink = Sink::start(&[]);
    let node = |ca: &std::path::Path| {
        Env::new(
            sink.port,
            &format!(
                "[alerts]\nadmin = \"\"\n[store]\nkind = \"redis\"\nurl = \"rediss://127.0.0.1:{tls_port}/0\"\n\
                 username = \"mailgate\"\npassword_file = \"{}\"\ntls_ca_file = \"{}\"\ntimeout_ms = 2000\n\
                 [accounts.shop]\nusers = [\"{}\", 0]\nlimits = [ {{ window = \"1h\", messages = 2 }} ]\n",
                dir.path().join("secret").display(),
                ca.display(),
                me()
            ),
        )
    };
    let good = node(&ca);
    let o = run_with_input(good.cmd().arg("check-config"), b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("over TLS (certificate verified) as user \"mailgate\""),
        "{out}"
    );
    let send = |env: &Env| code(&env.send(&["--account", "shop", "-i", "to@x.org"], MSG));
    assert_eq!(
        [send(&good), send(&good), send(&good)],
        [0, 0, 69],
        "the limit holds over TLS"
    );
    sink.wait_count(2);
    assert_eq!(redis.cli(&["exists", "mailgate:a:shop:3600"]), "1");

    let fooled = node(&other_ca);
    let o = run_with_input(fooled.cmd().arg("check-config"), b"");
    assert_eq!(code(&o), 78, "{}", String::from_utf8_lossy(&o.stdout));
    assert!(stderr(&o).contains("[store]"), "{}", stderr(&o));
    assert_eq!(send(&fooled), 0);
    let kept = spooled(&fooled);
    assert_eq!(
        kept, 1,
        "kept for the queue run, never counted by an unverified server"
    );
}

/// A Redis Cluster of three masters on loopback free ports (`redis-cli --cluster create`).
struct Cluster {
    nodes: Vec<Redis>,
    /// The node `kill_master` killed.
    killed: Option<usize>,
}

impl Cluster {
    /// Three masters with `replicas` replicas each; a node is called failing after 1 s.
    fn start(replicas: usize) -> Cluster {
        let nodes: Vec<Redis> = (0..3 * (1 + replicas))
            .map(|i| {
                let conf = format!("nodes-{i}-{}.conf", std::process::id());
                Redis::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "1000",
                ])
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let o = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        for n in &nodes {
            wait_for("the cluster to be ok on every node", || {
                n.cli(&["cluster", "info"])
                    .contains("cluster_state:ok")
                    .then_some(())
            });
        }
        if replicas > 0 {
            // Every master has its replica attached before anything fails.
            wait_for("every replica to be in sync", || {
                let synced = nodes
                    .iter()
                    .filter(|n| {
                        n.cli(&["info", "replication"])
                            .contains("master_link_status:up")
                    })
                    .count();
                (synced == 3 * replicas).then_some(())
            });
        }
        Cluster {
            nodes,
            killed: None,
        }
    }

    fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("\"127.0.0.1:{}\"", n.port))
            .collect()
    }

    /// The port of the master that serves the slot of mailgate's hash tag, as the node at
    /// `ask` sees it (`cluster nodes`: "ID IP:PORT@BUS FLAGS MASTER … SLOTS").
    fn master_of_tag(&self, ask: usize) -> Option<u16> {
        let slot: u16 = self.nodes[ask]
            .cli(&["cluster", "keyslot", "{mailgate}"])
            .parse()
            .ok()?;
        self.nodes[ask].cli(&["cluster", "nodes"]).lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let master = f.get(2)?.split(',').any(|x| x == "master")
                && !f.get(2)?.contains("fail");
            let serves = f.iter().skip(8).any(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
            });
            (master && serves).then(|| f[1].split(['@', ':']).nth(1)?.parse().ok())?
        })
    }
}

impl Failover for Cluster {
    fn store_config(&self, extra: &str) -> String {
        format!(
            "cluster = [{}]\nfailover_wait_ms = 15000\n{extra}",
            self.seeds().join(", ")
        )
    }

    fn kill_master(&mut self) -> u16 {
        let port = self
            .master_of_tag(0)
            .expect("a master serves mailgate's slot");
        let i = self.nodes.iter().position(|n| n.port == port).unwrap();
        self.nodes[i].kill();
        self.killed = Some(i);
        port
    }

    fn new_master(&self, old: u16) -> Option<u16> {
        let ask = (0..self.nodes.len()).find(|i| Some(*i) != self.killed)?;
        self.master_of_tag(ask).filter(|p| *p != old)
    }
}

/// Issue 31: a 3-master Redis Cluster. mailgate's keys share one hash tag, so the counting
/// script (an account's windows, the server's, the lock, the call token) runs in one slot
/// instead of failing with CROSSSLOT; two nodes with 8 senders get exactly the limit; status
/// and reset find the keys on the node that holds the slot.
#[test]
fn a_redis_cluster_counts_exactly_in_one_slot() {
    let cluster = Cluster::start(0);
    let sink = Sink::start(&[]);
    let seeds = cluster.seeds();
    let node = || {
        Env::new(
            sink.port,
            &format!(
                "[alerts]\nadmin = \"\"\n[store]\nkind = \"redis\"\ncluster = [{}]\ntimeout_ms = 2000\n\
                 [server]\nlimits = [ {{ window = \"1d\", messages = 100000 }} ]\n\
                 [accounts.shop]\nusers = [\"{}\", 0]\nlimits = [ {{ window = \"1h\", messages = 20 }} ]\n",
                seeds.join(", "),
                me()
            ),
        )
    };
    let (a, b) = (node(), node());
    let o = run_with_input(a.cmd().arg("check-config"), b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let codes: Vec<i32> = eight_senders(&a, &b, 5);
    assert_eq!(codes.iter().filter(|&&c| c == 0).count(), 20, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 69).count(), 20, "{codes:?}");
    assert_eq!(sink.wait_count(20).len(), 20);
    for env in [&a, &b] {
        let kept = spooled(env);
        assert_eq!(
            kept, 0,
            "nothing waited for a queue run (no CROSSSLOT, no redirect lost)"
        );
    }
    let st = json(&b, &["status", "shop"], None);
    assert_eq!(st["accounts"][0]["windows"][0]["messages"], 20);
    // The account's and the server's keys share the slot of the tag.
    let slot = |key: &str| cluster.nodes[0].cli(&["cluster", "keyslot", key]);
    assert_eq!(slot("{mailgate}:a:shop:3600"), slot("{mailgate}:s:86400"));
    admin(&a, &["reset", "shop"], None);
    assert_eq!(
        json(&a, &["status", "shop"], None)["accounts"][0]["windows"][0]["messages"],
        0
    );
}

/// Issue 31: outcomes count for the account across the cluster. Two nodes, each with its own
/// relay and relay log, share a Redis store; a script bounces three recipients through each.
/// Neither node alone reaches the trigger's five bounces; the second queue run sees six across
/// the cluster and holds the account, and the hold holds node A's next message.
#[test]
fn bounces_through_two_nodes_add_up_to_one_trigger() {
    const T0: i64 = 1_900_000_000;
    let redis = Redis::start();
    let node = || {
        let rec = Recorder::start(Script::default());
        let dir = TempDir::new("cluster-outcomes");
        let log = dir.path().join("postfix-postfwd.log");
        std::fs::write(&log, "").unwrap();
        let env = Env::new(
            rec.port,
            &format!(
                "[alerts]\nadmin = \"\"\n[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}/0\"\ntimeout_ms = 2000\n\
                 [outcomes]\nrelay_log = \"{}\"\n\
                 [defaults.trigger]\nwindow = \"1h\"\nmin_failures = 5\npercent = 30\naction = \"hold\"\n\
                 [accounts.shop]\nusers = [\"{}\", 0]\n",
                redis.port,
                log.display(),
                me()
            ),
        );
        (rec, env, log, dir)
    };
    let (a, b) = (node(), node());
    let bounce_three = |(rec, env, log, _): &(Recorder, Env, std::path::PathBuf, TempDir),
                        t: i64| {
        let mut lines = String::new();
        for i in 0..3 {
            let before = rec.received().len();
            let to = format!("gone{i}@example.net");
            let mut cmd = env.cmd();
            cmd.env("MAILGATE_NOW", (t + i).to_string())
                .args(["--account", "shop", "-i", &to]);
            let o = run_with_input(&mut cmd, b"Subject: bounce\n\nb\n");
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            lines.push_str(&relay_log_line(
                &format!("REC{}", before + 1),
                &to,
                "bounced",
                "host mx.example.net said: 550 5.1.1 no such user",
            ));
        }
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(log)
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        admin(env, &["queue", "run"], Some(t + 10));
    };
    let locked = |env: &Env, t: i64| {
        let st = json(env, &["status", "shop"], Some(t));
        !st["accounts"][0]["locked"].is_null()
    };
    bounce_three(&a, T0);
    assert!(
        !locked(&a.1, T0 + 11),
        "three bounces on one node are under the trigger"
    );
    bounce_three(&b, T0 + 20);
    assert!(
        locked(&b.1, T0 + 31),
        "six bounces across the cluster hold the account"
    );
    // Node A, which saw only its own three, holds the next message too.
    let mut cmd = a.1.cmd();
    cmd.env("MAILGATE_NOW", (T0 + 40).to_string()).args([
        "--account",
        "shop",
        "-i",
        "next@example.net",
    ]);
    let o = run_with_input(&mut cmd, b"Subject: next\n\nb\n");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let held = json(&a.1, &["hold", "list"], Some(T0 + 41));
    assert_eq!(held.as_array().unwrap().len(), 1, "held on node A: {held}");
}

/// The failover suite against a Redis Cluster of three masters with a replica each: the
/// master that holds mailgate's slot is killed mid-burst, the Cluster promotes its replica,
/// and the crate follows the redirection.
#[test]
fn a_cluster_failover_mid_burst_loses_nothing_and_counts_nothing_twice() {
    failover_mid_burst(Cluster::start(1), "");
}
