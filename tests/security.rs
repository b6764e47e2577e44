//! Hostile local users against a setgid install: real unprivileged users (useradd), the binary
//! installed root:mailgate 2755 in a temporary prefix, and the system config path that a setgid
//! mailgate alone honours. Needs root; fails loudly without it.

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SYSTEM_CONFIG: &str = "/etc/mailgate/mailgate.toml";
const USERS: [&str; 2] = ["mgtest1", "mgtest2"];

/// Tests of this file share the system config path and the users: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const SYSTEM_ACCOUNTS: &str = "/etc/mailgate/accounts.d";

/// Puts the test's config at the system path (the setgid binary reads only that one) and
/// removes it again. It refuses to run over a real install's /etc/mailgate, as tests/chain.rs
/// does: a live configuration is never overwritten, not even for a moment.
struct SystemConfig(());

impl SystemConfig {
    fn install(text: &str) -> SystemConfig {
        assert!(
            !Path::new("/etc/mailgate").exists(),
            "/etc/mailgate exists: refusing to run the setgid tests over a real mailgate installation"
        );
        std::fs::create_dir_all("/etc/mailgate").unwrap();
        std::fs::write(SYSTEM_CONFIG, text).unwrap();
        SystemConfig(())
    }

    /// Another configuration for the rest of the test (the test owns /etc/mailgate already).
    fn replace(&self, text: &str) {
        std::fs::write(SYSTEM_CONFIG, text).unwrap();
    }

    /// Drop-in account files at the system path.
    fn with_accounts(self, files: &[(String, String)]) -> SystemConfig {
        std::fs::create_dir(SYSTEM_ACCOUNTS).unwrap();
        for (name, text) in files {
            std::fs::write(
                Path::new(SYSTEM_ACCOUNTS).join(format!("{name}.toml")),
                text,
            )
            .unwrap();
        }
        self
    }
}

impl Drop for SystemConfig {
    fn drop(&mut self) {
        // install() checked that /etc/mailgate did not exist: all of it is the test's.
        let _ = std::fs::remove_dir_all("/etc/mailgate");
    }
}

/// The setgid install in a prefix; dropping it removes the prefix, the users and group it
/// created and gives the directories above the prefix their modes back.
struct Install {
    prefix: PathBuf,
    bin: PathBuf,
    state: PathBuf,
    log: PathBuf,
    made_users: Vec<&'static str>,
    made_group: bool,
    changed_modes: Vec<(PathBuf, u32)>,
}

impl Drop for Install {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.prefix);
        for u in &self.made_users {
            let _ = sh(&format!("userdel {u}"));
        }
        if self.made_group {
            let _ = sh("groupdel mailgate");
        }
        for (dir, mode) in &self.changed_modes {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode));
        }
    }
}

fn install() -> Install {
    let made_group = !sh("getent group mailgate").status.success();
    if made_group {
        must("groupadd --system mailgate");
    }
    let mut made_users = Vec::new();
    for u in USERS {
        if !sh(&format!("id {u}")).status.success() {
            must(&format!(
                "useradd --no-create-home --shell /usr/sbin/nologin {u}"
            ));
            made_users.push(u);
        }
    }
    let prefix =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    std::fs::create_dir_all(&prefix).unwrap();
    // Every directory up to the prefix must be searchable by the test users.
    let mut changed_modes = Vec::new();
    let mut p = prefix.clone();
    while p.pop() && p != Path::new("/") {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        if mode & 0o005 != 0o005 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o005)).unwrap();
            changed_modes.push((p.clone(), mode));
        }
    }
    std::fs::set_permissions(&prefix, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = prefix.join("mailgate");
    std::fs::copy(BIN, &bin).unwrap();
    let state = prefix.join("state");
    let logdir = prefix.join("log");
    must(&format!(
        "chown root:mailgate {b} && chmod 2755 {b} && mkdir -m 0770 {s} {l} && chown root:mailgate {s} {l}",
        b = bin.display(),
        s = state.display(),
        l = logdir.display()
    ));
    Install {
        prefix,
        bin,
        state,
        log: logdir.join("mailgate.log"),
        made_users,
        made_group,
        changed_modes,
    }
}

fn send(inst: &Install, user: &str, envs: &[(&str, &str)], args: &[&str], msg: &[u8]) -> Output {
    as_user(user, envs, &inst.bin, args, msg)
}

/// A sender of the setgid install started as `user` for `rcpt`, `msg` written to its stdin and
/// closed; it runs on (to be stopped, killed or waited for by the test).
fn spawn_sender(inst: &Install, user: &str, rcpt: &str, msg: &[u8]) -> std::process::Child {
    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
        ])
        .arg(&inst.bin)
        .args(["-i", rcpt])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(msg)
        .expect("write the message to the sender");
    child
}

/// One test at a time: a sink, the setgid install and the system config with `limits`.
fn setgid_fixture(
    limits: &str,
) -> (
    std::sync::MutexGuard<'static, ()>,
    Sink,
    Install,
    SystemConfig,
) {
    assert!(
        is_root(),
        "this test needs root (it creates users and a setgid binary); run .ci/run or sudo cargo test"
    );
    setgid_fixture_with_sink(limits, &[])
}

/// `setgid_fixture` with smtp-sink's own options (`-w 60`: a relay slow to answer DATA).
fn setgid_fixture_with_sink(
    limits: &str,
    sink_options: &[&str],
) -> (
    std::sync::MutexGuard<'static, ()>,
    Sink,
    Install,
    SystemConfig,
) {
    assert!(
        is_root(),
        "this test needs root (it creates users and a setgid binary); run .ci/run or sudo cargo test"
    );
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sink = Sink::start(sink_options);
    let inst = install();
    let config = SystemConfig::install(&format!(
        "origin = \"example.org\"\nstate_dir = \"{}\"\n[relay]\nport = {}\n\
         trusted_owners = [\"root\", \"nobody\"] # smtp-sink accepts as nobody\n[log]\nfile = \"{}\"\n{limits}",
        inst.state.display(),
        sink.port,
        inst.log.display()
    ));
    (serial, sink, inst, config)
}

const MSG: &[u8] =
    b"Subject: hostile\nX-PHP-Originating-Script: 1002:/home/mgtest2/forged.php\n\nbody\n";

#[test]
fn hostile_local_users_against_a_setgid_install() {
    let (_serial, sink, inst, _config) = setgid_fixture(
        "[defaults]\nlimits = [ { window = \"1h\", messages = 2 } ]\n\
         [accounts.root]\nexempt = true\n[accounts.\"site2.example\"]\nusers = [\"mgtest2\"]\n",
    );
    // A config the attacker controls: no limits, another relay.
    let evil = inst.prefix.join("evil.toml");
    std::fs::write(
        &evil,
        format!(
            "state_dir = \"/tmp\"\n[accounts.mgtest1]\nexempt = true\n[relay]\nport = {}\n",
            free_port()
        ),
    )
    .unwrap();
    let evil_s = evil.to_str().unwrap();

    // Up to the limit and not beyond, whatever the caller sets.
    for _ in 0..2 {
        let o = send(&inst, "mgtest1", &[], &["-i", "to@x.org"], MSG);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    for envs in [
        &[("MAILGATE_CONFIG", evil_s)][..],
        &[("USER", "mgtest2"), ("LOGNAME", "mgtest2")],
        &[("MAILGATE_NOW", "0")],
    ] {
        let o = send(&inst, "mgtest1", envs, &["-i", "to@x.org"], MSG);
        assert_eq!(code(&o), 69, "{envs:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("mgtest1 exceeded 2 messages per 1h"),
            "{}",
            stderr(&o)
        );
    }
    let o = send(
        &inst,
        "mgtest1",
        &[],
        &["--config", evil_s, "-i", "to@x.org"],
        MSG,
    );
    assert_eq!(
        code(&o),
        69,
        "--config must be ignored under setgid: {}",
        stderr(&o)
    );

    // The other user's quota is their own.
    for _ in 0..2 {
        assert_eq!(
            code(&send(&inst, "mgtest2", &[], &["-i", "to@x.org"], MSG)),
            0
        );
    }
    assert_eq!(
        code(&send(&inst, "mgtest2", &[], &["-i", "to@x.org"], MSG)),
        69
    );

    // Account binding.
    let o = send(
        &inst,
        "mgtest1",
        &[],
        &["--account", "site2.example", "-i", "to@x.org"],
        MSG,
    );
    assert_eq!(code(&o), 77);
    assert!(
        stderr(&o).contains("may not send as account \"site2.example\""),
        "{}",
        stderr(&o)
    );
    let o = send(
        &inst,
        "mgtest1",
        &[("MAILGATE_ACCOUNT", "site2.example")],
        &["-i", "to@x.org"],
        MSG,
    );
    assert_eq!(code(&o), 77);
    let o = send(
        &inst,
        "mgtest1",
        &[],
        &["--account", "undeclared.example", "-i", "to@x.org"],
        MSG,
    );
    assert_eq!(code(&o), 77);
    assert!(stderr(&o).contains("not declared"), "{}", stderr(&o));
    let o = send(
        &inst,
        "mgtest1",
        &[],
        &["--account", "../../etc/passwd", "-i", "to@x.org"],
        MSG,
    );
    assert_eq!(code(&o), 77);
    let o = send(
        &inst,
        "mgtest2",
        &[],
        &["--account", "site2.example", "-i", "to@x.org"],
        MSG,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Five customer messages; the admin's alerts (null sender) come on top.
    sink.wait_count(5);
    let customer = sink
        .received()
        .into_iter()
        .filter(|r| !r.sender().is_empty())
        .count();
    assert_eq!(customer, 5);

    // The state files: group mailgate, 0660, in a 0770 directory.
    let own = inst.state.join("accounts/mgtest1");
    let other = inst.state.join("accounts/mgtest2");
    let meta = std::fs::metadata(&own).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!(
        std::fs::metadata(inst.state.join("accounts"))
            .unwrap()
            .mode()
            & 0o777,
        0o770
    );
    let before = std::fs::read(&own).unwrap();
    for target in [&own, &other] {
        let t = target.display();
        let dir = inst.state.join("accounts");
        let d = dir.display();
        for attack in [
            format!("cat {t}"),
            format!("echo x > {t}"),
            format!("truncate -s 0 {t}"),
            format!("rm -f {t}"),
            format!("mv {t} {t}.x"),
            format!("ln -sf /etc/passwd {d}/evil"),
            format!("ls {d}"),
            format!("chmod 666 {t}"),
        ] {
            let o = as_user("mgtest1", &[], Path::new("/bin/sh"), &["-c", &attack], b"");
            assert_ne!(code(&o), 0, "as mgtest1, `{attack}` succeeded");
        }
    }
    assert_eq!(
        std::fs::read(&own).unwrap(),
        before,
        "state changed by an attack"
    );

    // A symlink in the state directory is never followed.
    let victim = inst.prefix.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let site = inst.state.join("accounts/site2.example");
    std::fs::remove_file(&site).unwrap();
    std::os::unix::fs::symlink(&victim, &site).unwrap();
    let o = send(
        &inst,
        "mgtest2",
        &[],
        &["--account", "site2.example", "-i", "to@x.org"],
        MSG,
    );
    assert_eq!(code(&o), 71, "{}", stderr(&o));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

    // Admin commands: a customer sees only their own account and cannot reset.
    let o = as_user("mgtest1", &[], &inst.bin, &["status", "--json"], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = st["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mgtest1"]);
    let o = as_user("mgtest1", &[], &inst.bin, &["reset", "mgtest1"], b"");
    assert_eq!(code(&o), 77, "{}", stderr(&o));

    // The log knows the truth: uid-derived user and account, the forged script only as script.
    let log = std::fs::read_to_string(&inst.log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("status=refused") && l.contains("user=mgtest1"))
        .unwrap();
    assert!(
        line.contains("account=mgtest1") && line.contains("script=1002:/home/mgtest2/forged.php"),
        "{line}"
    );
}

#[test]
fn php_mail_as_two_users_is_limited_per_account() {
    let (_serial, sink, inst, _config) =
        setgid_fixture("[defaults]\nlimits = [ { window = \"1h\", messages = 3 } ]\n");
    let script =
        r#"for ($i = 0; $i < 5; $i++) { echo mail("c@x.org", "php $i", "body") ? "T" : "F"; }"#;
    for user in USERS {
        let o = as_user(
            user,
            &[],
            Path::new("php"),
            &[
                "-d",
                &format!("sendmail_path={} -t -i", inst.bin.display()),
                "-r",
                script,
            ],
            b"",
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "TTTFF",
            "{user}: {}",
            stderr(&o)
        );
    }
    let got = sink.wait_count(6);
    for user in USERS {
        assert_eq!(
            got.iter()
                .filter(|r| r.sender() == format!("{user}@example.org"))
                .count(),
            3
        );
    }
}

/// Whether `pid` holds an flock on the file with inode `ino` (/proc/locks).
fn holds_flock(pid: u32, ino: u64) -> bool {
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"FLOCK")
                && f.get(4) == Some(&pid.to_string().as_str())
                && f.get(5)
                    .and_then(|id| id.rsplit(':').next())
                    .is_some_and(|i| i == ino.to_string())
        })
}

/// A customer who stops her sender in the middle of the hand-over (after the relay may have
/// the message, before the log line) cannot keep it out of the log: root's queue run leaves the
/// record of a stopped sender alone while it is fresh, and once it is older than the relay
/// timeout (and a minute) ends the sender and logs the record as status=unknown.
#[test]
fn a_sender_stopped_in_the_hand_over_is_ended_and_its_record_logged() {
    let (_serial, _sink, inst, _config) = setgid_fixture_with_sink(
        "[alerts]\nadmin = \"\"\n[defaults]\nlimits = [ { window = \"1h\", messages = 1000 } ]\n",
        &["-w", "60"],
    );
    let hostile = USERS[0];
    // Killed and reaped by PID when the test ends, whatever it found.
    let mut sender = Guard(spawn_sender(
        &inst,
        hostile,
        "hidden@x.org",
        b"Subject: hidden\n\nb\n",
    ));
    let log_text = || std::fs::read_to_string(&inst.log).unwrap_or_default();
    // Its record is written (its slot locked) before it connects; the relay then sits on DATA.
    let slot = wait_for("the sender's hand-over record", || {
        unfinished_records(&inst.state)
            .ok()?
            .into_iter()
            .find(|(_, record)| record.contains(&format!("user={hostile}")))
            .map(|(path, _)| path)
    });
    // SAFETY: our own child.
    unsafe { libc::kill(sender.0.id() as i32, libc::SIGSTOP) };
    let queue_run = || {
        let o = run_with_input(Command::new(&inst.bin).args(["queue", "run"]), b"");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    };
    // Fresh: a live sender's, left alone.
    queue_run();
    assert!(!log_text().contains("status=unknown"), "{}", log_text());
    assert!(
        sender.0.try_wait().unwrap().is_none(),
        "not ended while fresh"
    );
    // Older than the relay timeout and a minute: ended, and its record logged.
    let aged = Command::new("touch")
        .args(["-d", "-10 minutes"])
        .arg(&slot)
        .status()
        .unwrap();
    assert!(aged.success());
    queue_run();
    let status = wait_for("the stopped sender to be ended", || {
        sender.0.try_wait().ok().flatten()
    });
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the stopped sender was ended"
    );
    let log = log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("status=unknown") && l.contains(&format!("user={hostile}"))),
        "{log}"
    );
    // Once: the next run finds nothing left.
    queue_run();
    assert_eq!(
        log_text().matches("status=unknown").count(),
        1,
        "{}",
        log_text()
    );
}

#[test]
fn a_stopped_sender_holding_the_server_lock_delays_nobody() {
    let (_serial, sink, inst, _config) = setgid_fixture(
        "[alerts]\nadmin = \"\"\n[defaults]\nlimits = [ { window = \"1h\", messages = 1000 } ]\n\
         [server]\nlimits = [ { window = \"1h\", messages = 100000 } ]\n",
    );
    let (hostile, victim) = (USERS[0], USERS[1]);
    let o = send(
        &inst,
        victim,
        &[],
        &["-i", "warm@x.org"],
        b"Subject: warm\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let server_ino = std::fs::metadata(inst.state.join("server")).unwrap().ino();

    // The hostile customer's hunt: start a sender, SIGSTOP it at a random instant, keep the
    // one that holds the server-cap lock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seed = std::process::id() as u64;
    let mut caught = None;
    let mut tries = 0;
    while caught.is_none() && std::time::Instant::now() < deadline {
        tries += 1;
        let mut child = spawn_sender(&inst, hostile, "hunt@x.org", b"Subject: hunt\n\nb\n");
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(std::time::Duration::from_micros((seed >> 33) % 4000));
        let pid = child.id();
        // SAFETY: our own child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        if holds_flock(pid, server_ino) {
            caught = Some(child);
        } else {
            // SAFETY: our own child.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            let _ = child.wait();
        }
    }
    let mut holder = caught.unwrap_or_else(|| {
        panic!("no sender caught holding the server lock in {tries} tries within 30 s")
    });
    let before = sink.received().len();

    // Every other customer's mail: exit 0 within 1 s, kept for later.
    for i in 0..5 {
        let start = std::time::Instant::now();
        let o = send(
            &inst,
            victim,
            &[],
            &["-i", "victim@x.org"],
            format!("Subject: victim {i}\n\nb\n").as_bytes(),
        );
        let took = start.elapsed();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
        // The first names the busy counter; the later ones wait behind it, in order.
        let why = stderr(&o);
        assert!(
            why.contains("counter busy") || (i > 0 && why.contains("waits behind")),
            "{why}"
        );
    }
    // Root's status finishes and names the holder.
    let o = run_with_input(Command::new(&inst.bin).arg("status"), b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("held by pid {}", holder.id())) && out.contains("stopped"),
        "{out}"
    );
    // Root's queue run ends the stopped holder; the next one releases the deferred mail.
    let o = run_with_input(Command::new(&inst.bin).args(["queue", "run"]), b"");
    assert!(code(&o) == 0, "{}", stderr(&o));
    let status = holder.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the stopped holder was ended"
    );
    let o = run_with_input(Command::new(&inst.bin).args(["queue", "run"]), b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("released 5 deferred"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let got = sink.wait_count(before + 5);
    let victims = got.iter().filter(|r| r.rcpts == ["victim@x.org"]).count();
    assert_eq!(victims, 5, "each victim message exactly once");
}

/// A customer's own SMTP server on a loopback port, answering 250 to everything and printing
/// every line it hears; killed by PID when dropped. Returns it and its output.
struct Squatter(std::process::Child);

impl Squatter {
    fn start(user: &str, port: u16) -> (Squatter, std::io::BufReader<std::process::ChildStdout>) {
        Squatter::start_on(user, "127.0.0.1", port)
    }

    fn start_on(
        user: &str,
        host: &str,
        port: u16,
    ) -> (Squatter, std::io::BufReader<std::process::ChildStdout>) {
        let script = "import socket, sys\n\
                 s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind((sys.argv[2], int(sys.argv[1]))); s.listen(16)\n\
                 print('listening', flush=True)\n\
                 def serve(c):\n\
                 \x20   c.sendall(b'220 squat ESMTP\\r\\n')\n\
                 \x20   for line in c.makefile('rb'):\n\
                 \x20       print(line.decode(errors='replace').strip(), flush=True)\n\
                 \x20       c.sendall(b'250 ok\\r\\n' if not line.startswith(b'DATA') else b'354 go\\r\\n')\n\
                 while True:\n\
                 \x20   c, _ = s.accept()\n\
                 \x20   try:\n\
                 \x20       serve(c)\n\
                 \x20   except OSError:\n\
                 \x20       print('reset', flush=True)\n";
        let mut child = Command::new("setpriv")
            .args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
                "/usr/bin/python3",
                "-c",
                script,
                &port.to_string(),
                host,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "listening");
        (Squatter(child), out)
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

#[test]
fn a_customer_listening_on_the_relay_port_receives_nothing() {
    let (_serial, _sink, inst, config) = setgid_fixture("[alerts]\nadmin = \"\"\n");
    squatter_gets_nothing(&inst, &config, "127.0.0.1");
}

/// A customer's own SMTP server on `host` and the relay's (unprivileged) port, configured as
/// the relay: another customer's message and root's `queue flush` hand it nothing; the
/// message stays queued with the reason.
fn squatter_gets_nothing(inst: &Install, config: &SystemConfig, host: &str) {
    let port = free_port();
    let (squatter, mut out) = Squatter::start_on(USERS[0], host, port);
    config.replace(&format!(
        "origin = \"example.org\"\nstate_dir = \"{}\"\n[relay]\nhost = \"{host}\"\nport = {port}\n[log]\nfile = \"{}\"\n[alerts]\nadmin = \"\"\n",
        inst.state.display(),
        inst.log.display()
    ));
    let o = send(
        inst,
        USERS[1],
        &[],
        &["-i", "victim@x.org"],
        b"Subject: secret\n\nb\n",
    );
    assert_eq!(code(&o), 0, "kept, not lost: {}", stderr(&o));
    assert!(
        stderr(&o).contains("not to a trusted owner"),
        "{}",
        stderr(&o)
    );
    let o = run_with_input(Command::new(&inst.bin).args(["queue", "flush"]), b"");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("not to a trusted owner"),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    drop(squatter);
    let mut heard = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut heard);
    assert!(
        !heard.contains("MAIL FROM") && !heard.contains("secret"),
        "the squatter got mail: {heard}"
    );
    let queued = run_with_input(Command::new(&inst.bin).args(["queue", "list"]), b"");
    assert!(String::from_utf8_lossy(&queued.stdout).contains("victim@x.org"));
}

#[test]
fn customers_cannot_probe_configs_or_other_accounts() {
    let (_serial, _sink, inst, _config) = setgid_fixture(&format!(
        "[alerts]\nadmin = \"\"\n[accounts.\"shop.example\"]\nusers = [\"{}\"]\n",
        USERS[0]
    ));
    // check-config as a customer: 77, whatever path is named (no file probing via setgid).
    for args in [&["check-config"][..], &["check-config", "/etc/shadow"]] {
        let o = send(&inst, USERS[1], &[], args, b"");
        assert_eq!(code(&o), 77, "{args:?}: {}", stderr(&o));
    }
    // status of another account: 77, not an empty 0.
    let o = send(&inst, USERS[1], &[], &["status", "shop.example"], b"");
    assert_eq!(code(&o), 77, "{}", stderr(&o));
    assert_eq!(
        code(&send(
            &inst,
            USERS[0],
            &[],
            &["status", "shop.example"],
            b""
        )),
        0
    );
    // root checks the PATH it names, even through the setgid binary.
    let bad = inst.prefix.join("bad.toml");
    std::fs::write(&bad, "[relay]\nprot = 1\n").unwrap();
    let o = run_with_input(
        Command::new(&inst.bin).args(["check-config", bad.to_str().unwrap()]),
        b"",
    );
    assert_eq!(code(&o), 78, "{}", stderr(&o));
    assert!(stderr(&o).contains("did you mean `port`"), "{}", stderr(&o));
    // A caller's TZ is not what the setgid process reads (its environment is emptied).
    let o = send(
        &inst,
        USERS[1],
        &[("TZ", inst.state.join("server").to_str().unwrap())],
        &["-i", "tz@x.org"],
        b"Subject: tz\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// `mailgate ARGS --json` as `user` (exit 0 asserted).
fn json_as(inst: &Install, user: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let o = as_user(user, &[], &inst.bin, &all, b"");
    assert_eq!(code(&o), 0, "{user} {args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn held_ids(list: &serde_json::Value, account: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .filter(|m| m["account"] == account)
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn customers_see_and_manage_only_their_own_held_mail_and_statistics() {
    let limits = "[alerts]\nadmin = \"\"\n[defaults]\nlimits = [ { window = \"1h\", messages = 1, action = \"hold\" } ]\n";
    let (_serial, sink, inst, _config) = setgid_fixture(limits);
    let (one, two) = (USERS[0], USERS[1]);
    for (user, n) in [(one, 3), (two, 2)] {
        for i in 0..n {
            let o = send(
                &inst,
                user,
                &[],
                &["-i", "to@x.org"],
                format!(
                    "Subject: {user} {i}\nX-PHP-Originating-Script: 1:/home/{user}/send.php\n\nb\n"
                )
                .as_bytes(),
            );
            assert_eq!(code(&o), 0, "{}", stderr(&o));
        }
    }
    sink.wait_count(2);
    // Each customer lists only their own held mail.
    let list1 = json_as(&inst, one, &["hold", "list"]);
    let list2 = json_as(&inst, two, &["hold", "list"]);
    let (own1, own2) = (held_ids(&list1, one), held_ids(&list2, two));
    assert_eq!((own1.len(), own2.len()), (2, 1), "{list1} {list2}");
    assert_eq!(list1.as_array().unwrap().len(), 2, "{list1}");
    assert_eq!(list2.as_array().unwrap().len(), 1, "{list2}");
    // Someone else's: neither shown, deleted, released nor listed by account.
    for args in [
        vec!["hold", "show", own1[0].as_str()],
        vec!["hold", "delete", own1[0].as_str()],
        vec!["hold", "list", "--account", one],
        vec!["hold", "delete", "--account", one],
    ] {
        let o = as_user(two, &[], &inst.bin, &args, b"");
        assert_eq!(code(&o), 77, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("not yours"), "{}", stderr(&o));
    }
    assert_eq!(
        held_ids(&json_as(&inst, "root", &["hold", "list"]), one).len(),
        2
    );
    // Their own: shown and deleted; released only when the admin allows it.
    let o = as_user(one, &[], &inst.bin, &["hold", "show", &own1[0]], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("Subject: {one} ")));
    let o = as_user(one, &[], &inst.bin, &["hold", "release", &own1[1]], b"");
    assert_eq!(code(&o), 77, "{}", stderr(&o));
    assert!(stderr(&o).contains("customer_release"), "{}", stderr(&o));
    let o = as_user(one, &[], &inst.bin, &["hold", "delete", &own1[0]], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        held_ids(&json_as(&inst, one, &["hold", "list"]), one),
        vec![own1[1].clone()]
    );
    // With customer_release, a release counts like a new message: past the limit it was held
    // for, it stays held.
    let base_config = std::fs::read_to_string(SYSTEM_CONFIG).unwrap();
    std::fs::write(
        SYSTEM_CONFIG,
        base_config.replace("[alerts]", "[spool]\ncustomer_release = true\n[alerts]"),
    )
    .unwrap();
    let o = as_user(two, &[], &inst.bin, &["hold", "release", "--all"], b"");
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert!(stderr(&o).contains("stays held"), "{}", stderr(&o));
    assert_eq!(
        held_ids(&json_as(&inst, two, &["hold", "list"]), two).len(),
        1
    );
    // The admin's lock beats every release a customer makes, past_limits or not.
    let o = as_user(
        "root",
        &[],
        &inst.bin,
        &["lock", two, "--reason", "spam"],
        b"",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    std::fs::write(
        SYSTEM_CONFIG,
        base_config.replace(
            "[alerts]",
            "[spool]\ncustomer_release = true\ncustomer_release_past_limits = true\n[alerts]",
        ),
    )
    .unwrap();
    let o = as_user(two, &[], &inst.bin, &["hold", "release", "--all"], b"");
    assert_eq!(code(&o), 77, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("locked by the administrator"),
        "{}",
        stderr(&o)
    );
    let o = as_user("root", &[], &inst.bin, &["unlock", two], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // With customer_release_past_limits, `--all` releases the caller's own and nobody else's.
    let o = as_user(two, &[], &inst.bin, &["hold", "release", "--all"], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let got = sink.wait_count(3);
    assert!(
        got.iter()
            .any(|r| r.text().contains(&format!("Subject: {two} 1"))),
        "the caller's own held message went"
    );
    assert_eq!(
        held_ids(&json_as(&inst, "root", &["hold", "list"]), one),
        vec![own1[1].clone()]
    );
    let o = as_user(one, &[], &inst.bin, &["hold", "release", &own1[1]], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    sink.wait_count(4);
    assert_eq!(sink.received().len(), 4);

    // top: a customer sees their own account, root every one; metrics are the admin's.
    let top1 = json_as(&inst, one, &["top"]);
    let accounts: Vec<&str> = top1["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account"].as_str().unwrap())
        .collect();
    assert_eq!(accounts, [one], "{top1}");
    assert_eq!(
        top1["accounts"][0]["sources"][0]["source"],
        format!("1:/home/{one}/send.php")
    );
    let o = as_user(one, &[], &inst.bin, &["top", "--account", two], b"");
    assert_eq!(code(&o), 77, "{}", stderr(&o));
    let all = json_as(&inst, "root", &["top"]);
    assert_eq!(all["accounts"].as_array().unwrap().len(), 2, "{all}");
    let o = as_user(one, &[], &inst.bin, &["metrics"], b"");
    assert_eq!(code(&o), 77, "{}", stderr(&o));
    // The statistics are the state directory's, out of the customers' reach.
    let o = as_user(
        one,
        &[],
        Path::new("/bin/sh"),
        &["-c", &format!("cat {}/stats/{one}", inst.state.display())],
        b"",
    );
    assert_ne!(code(&o), 0, "a customer read the statistics file directly");
}

/// One message of `ten_thousand_drop_in_accounts_under_setgid`: who sends how, and what
/// must come of it.
struct DropInCase<'a> {
    why: &'a str,
    user: &'a str,
    envs: &'a [(&'a str, &'a str)],
    account: Option<&'a str>,
    from: &'a str,
    exit: i32,
    says: &'a str,
}

/// 10,000 accounts in accounts.d under setgid: bindings, limits and domains come from each
/// account's own file; an attacker's config (and an accounts.d beside it) changes nothing.
#[test]
fn ten_thousand_drop_in_accounts_under_setgid() {
    let (_serial, sink, inst, config) = setgid_fixture(
        "[alerts]\nadmin = \"\"\n[defaults]\nlimits = [ { window = \"1h\", messages = 50 } ]\n",
    );
    let mut files: Vec<(String, String)> = (1..=10_000)
        .map(|i| {
            (
                format!("site{i}"),
                format!(
                    "users = [\"web{i}\"]\nnotify = [\"owner@site{i}.example\"]\n\
                     allowed_senders = [\"*@site{i}.example\"]\nsender_policy = \"reject\"\n\
                     limits = [ {{ window = \"1h\", messages = 100 }}, {{ window = \"1d\", messages = 1000 }} ]\n"
                ),
            )
        })
        .collect();
    files.push((
        "shop".into(),
        "users = [\"mgtest1\"]\nlimits = [ { window = \"1h\", messages = 1 } ]\n".into(),
    ));
    files.push((
        "mgtest2".into(),
        "limits = [ { window = \"1h\", messages = 1 } ]\n".into(),
    ));
    let _config = config.with_accounts(&files);
    let msg = |from: &str| format!("From: {from}\nSubject: dropin\n\nbody\n").into_bytes();

    // In order: each case sees the counts the ones before it left.
    let case = |why, user, envs, account, from, exit, says| DropInCase {
        why,
        user,
        envs,
        account,
        from,
        exit,
        says,
    };
    let cases = [
        case(
            "--account binding from the account's own file",
            "mgtest1",
            &[][..],
            Some("shop"),
            "a@x.org",
            0,
            "",
        ),
        case(
            "not among shop's users",
            "mgtest2",
            &[],
            Some("shop"),
            "a@x.org",
            77,
            "may not send as account",
        ),
        case(
            "the account variable names it too, and shop's own limit (1/h) holds",
            "mgtest1",
            &[("MAILGATE_ACCOUNT", "shop")],
            None,
            "a@x.org",
            69,
            "shop exceeded 1 messages per 1h",
        ),
        case(
            "a plain login with a file of its own gets that file's limits",
            "mgtest2",
            &[],
            None,
            "a@x.org",
            0,
            "",
        ),
        case(
            "... and its limit of 1/h holds",
            "mgtest2",
            &[],
            None,
            "a@x.org",
            69,
            "mgtest2 exceeded 1 messages",
        ),
        case(
            "a login without a file: the defaults",
            "mgtest1",
            &[],
            None,
            "a@x.org",
            0,
            "",
        ),
        case(
            "a domain one of the 10,000 owns is not anyone else's",
            "mgtest1",
            &[],
            None,
            "ceo@site9876.example",
            77,
            "belongs to account site9876",
        ),
    ];
    for c in cases {
        let mut args = Vec::new();
        if let Some(a) = c.account {
            args.extend(["--account", a]);
        }
        args.extend(["-i", "to@x.org"]);
        let o = send(&inst, c.user, c.envs, &args, &msg(c.from));
        assert_eq!(code(&o), c.exit, "{}: {}", c.why, stderr(&o));
        assert!(stderr(&o).contains(c.says), "{}: {}", c.why, stderr(&o));
    }
    // The attacker's own config and accounts.d beside it are ignored under setgid.
    let evil_dir = inst.prefix.join("evil");
    std::fs::create_dir_all(evil_dir.join("accounts.d")).unwrap();
    std::fs::write(evil_dir.join("mailgate.toml"), "[alerts]\nadmin = \"\"\n").unwrap();
    std::fs::write(
        evil_dir.join("accounts.d").join("shop.toml"),
        "users = [\"mgtest1\", \"mgtest2\"]\nexempt = true\n",
    )
    .unwrap();
    let evil = evil_dir.join("mailgate.toml");
    let o = send(
        &inst,
        "mgtest2",
        &[("MAILGATE_CONFIG", evil.to_str().unwrap())],
        &["--account", "shop", "-i", "to@x.org"],
        &msg("a@x.org"),
    );
    assert_eq!(code(&o), 77, "{}", stderr(&o));
    // The domain index lives in the state directory, which no customer can write.
    let index = inst.state.join("domains.index");
    let o = as_user(
        "mgtest1",
        &[],
        Path::new("/bin/sh"),
        &["-c", &format!("echo x >> {}", index.display())],
        b"",
    );
    assert_ne!(code(&o), 0, "a customer wrote the domain index");
    sink.wait_count(3);
}

/// The alert about a customer's account never reaches a listener that customer put on the
/// relay's port (her own mail may: it is hers), and state subdirectories she made first are
/// root's again after root's queue run.
#[test]
fn the_alert_about_a_customer_never_goes_to_her_listener() {
    let (_serial, _sink, inst, config) = setgid_fixture("[alerts]\nadmin = \"\"\n");
    let eve = USERS[0];
    let port = free_port();
    let (squatter, mut out) = Squatter::start(eve, port);
    config.replace(&format!(
        "origin = \"example.org\"\nstate_dir = \"{}\"\n[relay]\nport = {port}\n[log]\nfile = \"{}\"\n\
         [alerts]\nadmin = \"postmaster-alerts@example.org\"\n\
         [defaults]\nlimits = [ {{ window = \"1h\", messages = 1 }} ]\n",
        inst.state.display(),
        inst.log.display()
    ));
    // Her first message is hers to catch; the second is over the limit: the admin is alerted.
    let o = send(
        &inst,
        eve,
        &[],
        &["-i", "friend@x.org"],
        b"Subject: one\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = send(
        &inst,
        eve,
        &[],
        &["-i", "friend@x.org"],
        b"Subject: two\n\nb\n",
    );
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    let log = std::fs::read_to_string(&inst.log).unwrap_or_default();
    assert!(
        log.contains("internal=alert") && log.contains("postmaster-alerts@example.org"),
        "an alert was due: {log}"
    );
    // Root's queue run retries the queued alert: still not to her listener.
    let _ = run_with_input(Command::new(&inst.bin).args(["queue", "flush"]), b"");
    drop(squatter);
    let mut heard = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut heard);
    assert!(
        heard.contains("Subject: one"),
        "her own mail reached her: {heard}"
    );
    assert!(
        !heard.contains("postmaster-alerts"),
        "the alert about her went to her listener: {heard}"
    );
    // The subdirectories her senders created first are root's after root's queue run.
    for sub in [
        "accounts", "pending", "stats", "spooled", "queue", "scripts",
    ] {
        let path = inst.state.join(sub);
        if !path.exists() {
            continue;
        }
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o7777),
            (0, 0o2770),
            "{sub} after root's queue run"
        );
    }
    assert!(inst.state.join("pending").exists() && inst.state.join("stats").exists());
}

/// A process that holds a customer's statistics lock (as her sender stopped at that instant
/// would) neither hides her messages from `top` nor makes root's queue run wait once per
/// message of hers.
#[test]
fn a_held_statistics_lock_neither_blinds_top_nor_stalls_the_queue_run() {
    let (_serial, sink, inst, _config) = setgid_fixture(
        "[alerts]\nadmin = \"\"\n[defaults]\nlimits = [ { window = \"1h\", messages = 10000 } ]\n",
    );
    let eve = USERS[0];
    let o = send(
        &inst,
        eve,
        &[],
        &["-i", "to@x.org"],
        b"Subject: first\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let held = std::fs::File::open(inst.state.join("stats").join(eve)).unwrap();
    held.lock().unwrap();
    // Relay down: her next 60 are queued, each counted while the lock is held (each of her
    // senders waits 0.2 s for it, once), then one of another customer's, behind hers.
    let config = std::fs::read_to_string(SYSTEM_CONFIG).unwrap();
    let dead = config.replace(
        &format!("port = {}", sink.port),
        &format!("port = {}", free_port()),
    );
    std::fs::write(SYSTEM_CONFIG, &dead).unwrap();
    let queued = 60;
    for i in 0..queued {
        let msg = format!("Subject: queued {i}\n\nb\n");
        let o = send(&inst, eve, &[], &["-i", "to@x.org"], msg.as_bytes());
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let o = send(
        &inst,
        USERS[1],
        &[],
        &["-i", "to@x.org"],
        b"Subject: alice\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let top = json_as(&inst, "root", &["top"]);
    let eves = top["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account"] == eve)
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (eves["sent"].as_u64(), eves["queued"].as_u64()),
        (Some(1), Some(queued)),
        "top sees every message of hers: {top}"
    );
    // Root's queue run delivers her 60 and then the other customer's, waiting for her
    // statistics once (0.2 s), not once per message (12 s).
    std::fs::write(SYSTEM_CONFIG, &config).unwrap();
    let started = std::time::Instant::now();
    let o = run_with_input(Command::new(&inst.bin).args(["queue", "flush"]), b"");
    let took = started.elapsed();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let got = sink.wait_count(queued as usize + 2);
    assert!(got.iter().any(|r| r.text().contains("Subject: alice")));
    assert!(
        took < std::time::Duration::from_secs(6),
        "queue flush took {took:?} (0.2 s per message of hers would be 12 s)"
    );
    let top = json_as(&inst, "root", &["top"]);
    let eves = top["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account"] == eve)
        .cloned()
        .unwrap_or_default();
    assert_eq!(eves["sent"].as_u64(), Some(queued + 1), "{top}");
    drop(held);
}

/// A FIFO put in place of a customer's statistics file (by root or group mailgate) hangs
/// nobody: her sender, `top` and `metrics` finish, and the damage is named; durations past
/// 100 years are refused, not wrapped around.
#[test]
fn a_fifo_in_the_state_directory_hangs_nobody() {
    let (_serial, sink, inst, _config) = setgid_fixture("[alerts]\nadmin = \"\"\n");
    let eve = USERS[0];
    let o = send(
        &inst,
        eve,
        &[],
        &["-i", "to@x.org"],
        b"Subject: first\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let stats = inst.state.join("stats").join(eve);
    std::fs::remove_file(&stats).unwrap();
    must(&format!(
        "mkfifo -m 0660 {s} && chgrp mailgate {s}",
        s = stats.display()
    ));
    // Each of these would block forever on a FIFO; run_with_input's deadline catches a hang.
    let o = send(
        &inst,
        eve,
        &[],
        &["-i", "to@x.org"],
        b"Subject: second\n\nb\n",
    );
    assert_eq!(
        code(&o),
        0,
        "relayed whatever the statistics: {}",
        stderr(&o)
    );
    sink.wait_count(2);
    let log = std::fs::read_to_string(&inst.log).unwrap_or_default();
    assert!(
        log.contains("not a regular file"),
        "the damage is logged: {log}"
    );
    let o = run_with_input(Command::new(&inst.bin).arg("top"), b"");
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    let o = run_with_input(Command::new(&inst.bin).arg("metrics"), b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for since in ["9223372036854775808s", "18446744073709551615s"] {
        let o = run_with_input(Command::new(&inst.bin).args(["top", "--since", since]), b"");
        assert_eq!(code(&o), 64, "{since}: {}", stderr(&o));
        assert!(stderr(&o).contains("too long"), "{}", stderr(&o));
    }
    std::fs::remove_file(&stats).unwrap();
}

// ------------------------------------------------------------------------------------------
// The evidence issue: outcomes, trigger, records and shares under attack by a customer.

/// A setgid install whose relay is an in-test recorder (run by root, so trusted) that gives
/// each message a queue id, and whose relay log is a root-only file the test writes.
fn setgid_outcomes_fixture(
    extra: &str,
) -> (
    std::sync::MutexGuard<'static, ()>,
    Recorder,
    Install,
    SystemConfig,
    PathBuf,
) {
    assert!(
        is_root(),
        "this test needs root (it creates users and a setgid binary); run .ci/run or sudo cargo test"
    );
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rec = Recorder::start(Script::default());
    let inst = install();
    let relay_log = inst.prefix.join("postfix-postfwd.log");
    std::fs::write(&relay_log, "").unwrap();
    std::fs::set_permissions(&relay_log, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = SystemConfig::install(&format!(
        "origin = \"example.org\"\nstate_dir = \"{}\"\n[relay]\nport = {}\n[log]\nfile = \"{}\"\n\
         [alerts]\nadmin = \"\"\n[outcomes]\nrelay_log = \"{}\"\n{extra}",
        inst.state.display(),
        rec.port,
        inst.log.display(),
        relay_log.display()
    ));
    (serial, rec, inst, config, relay_log)
}

fn relay_line(queue_id: &str, to: &str, status: &str) -> String {
    let dsn = if status == "sent" { "2.0.0" } else { "5.1.1" };
    format!(
        "Dec  3 13:20:01 vm postfix-postfwd/smtp[4711]: {queue_id}: to=<{to}>, relay=mx.example.net[192.0.2.1]:25, delay=0.2, delays=0.01/0.01/0.1/0.08, dsn={dsn}, status={status} (550 5.1.1 user unknown)\n"
    )
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

fn locked(inst: &Install, account: &str) -> Option<String> {
    let status = json_as(inst, "root", &["status"]);
    status["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == account)
        .and_then(|a| a["locked"].as_str().map(str::to_string))
}

/// Attacks 2 and 5: a customer's process holding her statistics lock for good neither keeps
/// the trigger from judging her account on every run nor lets her refused attempts with 6 MB
/// script headers fill the state filesystem; another customer's mail flows.
#[test]
fn a_held_statistics_lock_neither_blinds_the_trigger_nor_fills_the_disk() {
    let (_serial, rec, inst, _config, relay_log) = setgid_outcomes_fixture(
        "[defaults]\nlimits = [ { window = \"1h\", messages = 5 } ]\n\
         [defaults.trigger]\nwindow = \"1h\"\nmin_failures = 3\npercent = 20\naction = \"hold\"\n",
    );
    let (eve, alice) = (USERS[0], USERS[1]);
    for i in 1..=4 {
        let to = format!("dead{i}@x.org");
        let o = send(&inst, eve, &[], &["-i", &to], b"Subject: list\n\nb\n");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    assert_eq!(rec.received().len(), 4);
    // Her statistics lock, held for good (as by a sender of hers stopped at that instant).
    let held = std::fs::File::open(inst.state.join("stats").join(eve)).unwrap();
    held.lock().unwrap();
    let script = format!("1001:/home/{eve}/{}.php", "s".repeat(6 * 1024 * 1024));
    let msg = format!("X-PHP-Originating-Script: {script}\nSubject: big\n\nb\n");
    for _ in 0..16 {
        let o = send(&inst, eve, &[], &["-i", "more@x.org"], msg.as_bytes());
        assert!(matches!(code(&o), 0 | 69), "{}", stderr(&o));
    }
    let backlog = std::fs::metadata(inst.state.join("stats").join(format!(".backlog-{eve}")))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        backlog > 0 && backlog < 64 * 1024,
        "16 attempts with 6 MB headers: backlog of {backlog} bytes"
    );
    let o = send(
        &inst,
        alice,
        &[],
        &["-i", "friend@x.org"],
        b"Subject: ok\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // The relay logs her four bounces; root's queue run judges her although the lock is held.
    let text: String = (1..=4)
        .map(|i| relay_line(&format!("REC{i}"), &format!("dead{i}@x.org"), "bounced"))
        .collect();
    append(&relay_log, &text);
    let o = run_with_input(Command::new(&inst.bin).args(["queue", "run"]), b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let why = locked(&inst, eve).expect("the bouncing account is held");
    assert!(why.contains("bounce rate"), "{why}");
    assert_eq!(locked(&inst, alice), None, "the other customer is not");
    drop(held);
}

/// Attack 6: a spool record whose lock a process of hers holds for good cannot lift her
/// share: her keeps are refused (69, saying why), never kept uncounted; other customers keep.
#[test]
fn a_frozen_spool_record_lifts_no_share() {
    let (_serial, _sink, inst, config) = setgid_fixture("[alerts]\nadmin = \"\"\n");
    let dead = std::fs::read_to_string(SYSTEM_CONFIG)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("port = ") {
                format!("port = {}", free_port())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n[spool]\naccount_max_messages = 3\n";
    config.replace(&dead);
    let (eve, alice) = (USERS[0], USERS[1]);
    let o = send(&inst, eve, &[], &["-i", "a@x.org"], b"Subject: 1\n\nb\n");
    assert_eq!(code(&o), 0, "queued: {}", stderr(&o));
    let record = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(inst.state.join("spooled").join(eve))
        .unwrap();
    record.lock().unwrap();
    for i in 0..4 {
        let o = send(
            &inst,
            eve,
            &[],
            &["-i", "a@x.org"],
            format!("Subject: {i}\n\nb\n").as_bytes(),
        );
        assert_eq!(code(&o), 69, "refused, not kept uncounted: {}", stderr(&o));
        assert!(
            stderr(&o).contains("held by another of its processes"),
            "{}",
            stderr(&o)
        );
    }
    let o = send(
        &inst,
        alice,
        &[],
        &["-i", "a@x.org"],
        b"Subject: alice\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    drop(record);
    let listed = json_as(&inst, "root", &["queue", "list"]);
    let eves = listed
        .as_array()
        .map_or(0, |l| l.iter().filter(|m| m["account"] == eve).count());
    assert_eq!(eves, 1, "only the counted message is kept: {listed}");
    // Free again: her keeps count up to her share, then are refused.
    for i in 0..2 {
        let o = send(
            &inst,
            eve,
            &[],
            &["-i", "a@x.org"],
            format!("Subject: n{i}\n\nb\n").as_bytes(),
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let o = send(&inst, eve, &[], &["-i", "a@x.org"], b"Subject: over\n\nb\n");
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("its share is 3 messages"),
        "{}",
        stderr(&o)
    );
}

/// Attack 7: a domain another account owns cannot be used in any spelling that reaches the
/// Internet as the same domain (trailing dot, case, percent hack, bang path), in the envelope
/// or in From:/Sender:, whether the owner is in the main file or in accounts.d/.
#[test]
fn no_spelling_of_another_accounts_domain_passes() {
    let (_serial, sink, inst, config) = setgid_fixture(&format!(
        "[alerts]\nadmin = \"\"\n[accounts.eve]\nusers = [\"{}\"]\n\
         [accounts.alice]\nusers = [\"{}\"]\nallowed_senders = [\"*@alice.example\"]\nsender_policy = \"reject\"\n",
        USERS[0], USERS[1]
    ));
    let _config = config.with_accounts(&[(
        "bob".into(),
        format!(
            "users = [\"{}\"]\nallowed_senders = [\"*@bob.example\"]\nsender_policy = \"reject\"\n",
            USERS[1]
        ),
    )]);
    let eve = USERS[0];
    for domain in ["alice.example", "bob.example"] {
        let upper = domain.to_ascii_uppercase();
        let spellings = [
            format!("ceo@{domain}."),
            format!("ceo@{upper}."),
            format!("ceo@{domain}.."),
            format!("ceo%{domain}.@localhost"),
            format!("{domain}!ceo@localhost"),
        ];
        for from in &spellings {
            let o = send(
                &inst,
                eve,
                &[],
                &["--account", "eve", "-f", from, "-i", "v@x.org"],
                b"Subject: x\n\nb\n",
            );
            assert_eq!(code(&o), 77, "-f {from}: {}", stderr(&o));
            for header in ["From", "Sender"] {
                let msg = format!("{header}: {from}\nSubject: x\n\nb\n");
                let o = send(
                    &inst,
                    eve,
                    &[],
                    &["--account", "eve", "-i", "v@x.org"],
                    msg.as_bytes(),
                );
                assert_eq!(code(&o), 77, "{header}: {from}: {}", stderr(&o));
            }
        }
    }
    assert!(
        sink.received().is_empty(),
        "nothing went out in alice's or bob's name"
    );
    // The honest cases: eve in her own name, alice in hers (with the dot, too).
    let o = send(
        &inst,
        eve,
        &[],
        &["--account", "eve", "-f", "eve@eve.example", "-i", "v@x.org"],
        b"Subject: x\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = send(
        &inst,
        USERS[1],
        &[],
        &[
            "--account",
            "alice",
            "-f",
            "ceo@alice.example.",
            "-i",
            "v@x.org",
        ],
        b"Subject: x\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    sink.wait_count(2);
}

/// An address of this host that is not loopback: the first global one, else one added to
/// `lo` for the test (removed when dropped).
struct LocalAddress {
    ip: String,
    added: bool,
}

impl LocalAddress {
    fn get() -> LocalAddress {
        let out = must("ip -4 -o addr show scope global");
        if let Some(ip) = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
        {
            return LocalAddress {
                ip: ip.to_string(),
                added: false,
            };
        }
        must("ip addr add 192.0.2.77/32 dev lo");
        LocalAddress {
            ip: "192.0.2.77".into(),
            added: true,
        }
    }
}

impl Drop for LocalAddress {
    fn drop(&mut self) {
        if self.added {
            let _ = sh(&format!("ip addr del {}/32 dev lo", self.ip));
        }
    }
}

/// Attack 8: with the relay on another local address and an unprivileged port, a customer
/// listening there while the relay is down gets nothing: the owner check covers every
/// address of the host.
#[test]
fn a_customer_listening_on_another_local_address_receives_nothing() {
    let (_serial, _sink, inst, config) = setgid_fixture("[alerts]\nadmin = \"\"\n");
    let address = LocalAddress::get();
    squatter_gets_nothing(&inst, &config, &address.ip);
}

/// Attack 10: a customer who reuses another's Message-ID neither hides hers from her nor
/// shows root only one of the two: each customer traces her own, the admin sees both.
#[test]
fn a_reused_message_id_neither_hides_nor_misleads_trace() {
    let (_serial, _rec, inst, _config, _relay_log) = setgid_outcomes_fixture("");
    let (eve, alice) = (USERS[0], USERS[1]);
    let msg = b"Message-ID: <order-4711@alice.example>\nSubject: your order\n\nb\n";
    let o = send(&inst, alice, &[], &["-i", "customer@x.org"], msg);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = send(&inst, eve, &[], &["-i", "other@x.org"], msg);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let id = "<order-4711@alice.example>";
    let o = as_user(alice, &[], &inst.bin, &["trace", id], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("customer@x.org") || text.contains(&format!("account {alice}")),
        "{text}"
    );
    assert!(!text.contains(&format!("account {eve}")), "{text}");
    let o = as_user(eve, &[], &inst.bin, &["trace", id], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains(&format!("account {alice}")));
    let o = run_with_input(Command::new(&inst.bin).args(["trace", id]), b"");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("2 messages match"), "{text}");
    assert!(
        text.contains(&format!("account {alice}")) && text.contains(&format!("account {eve}")),
        "{text}"
    );
}

/// Issue 30 under setgid: the script path a customer names (in PHP's header) is looked at with
/// her own credentials, never mailgate's group: it tells her nothing about the state
/// directory. And her planted script is held at its first message.
#[test]
fn a_script_path_never_looks_into_the_state_directory_and_a_planted_script_is_held() {
    let (eve, alice) = (USERS[0], USERS[1]);
    let (_serial, sink, inst, _config) = setgid_fixture(
        "[alerts]\nadmin = \"\"\n[scripts]\nsuspicious_dirs = [\"*/wp-content/uploads/*\"]\n",
    );
    let o = send(&inst, alice, &[], &["-i", "a@x.org"], b"Subject: a\n\nb\n");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Each customer is her own account (her login).
    let counter = inst.state.join("accounts").join(alice);
    assert!(counter.exists());
    // Eve names alice's counter (changed a moment ago) as her script: with mailgate's group it
    // would show the sign "recent" in her log line; with her own credentials it is not seen.
    let msg = format!(
        "X-PHP-Originating-Script: 1:{}\nSubject: probe\n\nb\n",
        counter.display()
    );
    let o = send(&inst, eve, &[], &["-i", "e@x.org"], msg.as_bytes());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let log = std::fs::read_to_string(&inst.log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("account={eve} ")) && l.contains("status="))
        .unwrap_or_else(|| panic!("eve's line in {log}"));
    assert!(!line.contains("signs="), "{line}");
    // Her planted script in an upload directory of her own: held, nothing relayed.
    let up = inst.prefix.join("www/wp-content/uploads");
    std::fs::create_dir_all(&up).unwrap();
    std::fs::write(up.join("x.php"), "<?php").unwrap();
    must(&format!(
        "chown -R {eve} {}",
        inst.prefix.join("www").display()
    ));
    let relayed = sink.received().len();
    let o = as_user(
        eve,
        &[],
        "env",
        &[
            &format!("--chdir={}", up.display()),
            &inst.bin.display().to_string(),
            "-i",
            "v@x.org",
        ],
        b"X-PHP-Originating-Script: 1:x.php\nSubject: planted\n\nb\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("held"), "{}", stderr(&o));
    assert_eq!(sink.received().len(), relayed, "nothing relayed");
    let log = std::fs::read_to_string(&inst.log).unwrap();
    assert!(log.contains("signs=suspicious-dir"), "{log}");
}

/// A user only an NSS module knows: libnss-extrausers (Debian's real module) configured in
/// /etc/nsswitch.conf, the user in /var/lib/extrausers. Dropping it gives nsswitch.conf back
/// and removes the files. It refuses to run over a real extrausers database.
struct ExtraUsers {
    nsswitch: String,
    made_dir: bool,
}

const EXTRAUSERS: &str = "/var/lib/extrausers";

impl ExtraUsers {
    fn install(name: &str, uid: u32) -> ExtraUsers {
        assert!(
            [
                "/usr/lib/libnss_extrausers.so.2",
                "/lib/x86_64-linux-gnu/libnss_extrausers.so.2"
            ]
            .iter()
            .any(|p| Path::new(p).exists()),
            "libnss-extrausers must be installed (.ci/run installs it)"
        );
        assert!(
            !Path::new(EXTRAUSERS).join("passwd").exists(),
            "{EXTRAUSERS}/passwd exists: refusing to run over a real extrausers database"
        );
        let nsswitch = std::fs::read_to_string("/etc/nsswitch.conf").unwrap();
        let made_dir = !Path::new(EXTRAUSERS).exists();
        std::fs::create_dir_all(EXTRAUSERS).unwrap();
        std::fs::write(
            Path::new(EXTRAUSERS).join("passwd"),
            format!("{name}:x:{uid}:{uid}:Only NSS Knows:/nonexistent:/usr/sbin/nologin\n"),
        )
        .unwrap();
        std::fs::write(
            Path::new(EXTRAUSERS).join("group"),
            format!("{name}:x:{uid}:\n"),
        )
        .unwrap();
        let with_module: String = nsswitch
            .lines()
            .map(|l| {
                if l.starts_with("passwd:") || l.starts_with("group:") {
                    format!("{l} extrausers\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let guard = ExtraUsers { nsswitch, made_dir };
        std::fs::write("/etc/nsswitch.conf", with_module).unwrap();
        guard
    }
}

impl Drop for ExtraUsers {
    fn drop(&mut self) {
        let _ = std::fs::write("/etc/nsswitch.conf", &self.nsswitch);
        for f in ["passwd", "group"] {
            let _ = std::fs::remove_file(Path::new(EXTRAUSERS).join(f));
        }
        if self.made_dir {
            let _ = std::fs::remove_dir(EXTRAUSERS);
        }
    }
}

/// A uid that neither /etc/passwd nor NSS knows, from `from` up.
fn unused_uid(from: u32) -> u32 {
    (from..from + 1000)
        .find(|u| !sh(&format!("getent passwd {u}")).status.success())
        .unwrap()
}

/// Issue 33: the shipped binary is static and reads no NSS module itself; a customer whom only
/// an NSS module knows (here libnss-extrausers) is still identified by uid, through the
/// system's `getent`, and limited like anyone else; a uid no database knows is refused with
/// Postfix's answer (EX_OSERR, "no login name found for user ID N"), never counted under a
/// made-up account.
#[test]
fn a_customer_only_nss_knows_is_limited_and_an_unknown_uid_is_refused() {
    let (_serial, sink, inst, _config) = setgid_fixture(
        "[defaults]\nlimits = [ { window = \"1h\", messages = 2 } ]\n[accounts.root]\nexempt = true\n",
    );
    // The binary a package installs: pkg/build.sh's static one, set-gid like the rest.
    std::fs::copy(static_binary(), &inst.bin).unwrap();
    must(&format!(
        "chown root:mailgate {b} && chmod 2755 {b}",
        b = inst.bin.display()
    ));
    let file =
        String::from_utf8(Command::new("file").arg(&inst.bin).output().unwrap().stdout).unwrap();
    assert!(
        file.contains("static"),
        "the shipped binary is static: {file}"
    );

    let uid = unused_uid(4290);
    let _nss = ExtraUsers::install("mgnssonly", uid);
    assert!(
        sh("getent passwd mgnssonly").status.success(),
        "NSS must know the extrausers user"
    );
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !passwd.contains("mgnssonly"),
        "the user is not in /etc/passwd"
    );

    let mut codes = Vec::new();
    for _ in 0..3 {
        let o = send(&inst, "mgnssonly", &[], &["-i", "to@x.org"], MSG);
        codes.push((code(&o), stderr(&o)));
    }
    assert_eq!(
        codes.iter().map(|c| c.0).collect::<Vec<_>>(),
        [0, 0, 69],
        "{codes:?}"
    );
    assert!(
        codes[2].1.contains("mgnssonly"),
        "the refusal names her account: {}",
        codes[2].1
    );
    let got = sink.wait_count(2);
    // Her two messages, with her login as envelope sender; mailgate's own notice of the
    // limit has the null sender.
    let from_customers = |got: &[Received]| -> Vec<String> {
        got.iter()
            .map(|r| r.sender())
            .filter(|s| !s.is_empty())
            .collect()
    };
    assert_eq!(
        from_customers(&got),
        ["mgnssonly@example.org", "mgnssonly@example.org"],
        "her login is her envelope sender"
    );
    let log = std::fs::read_to_string(&inst.log).unwrap();
    assert!(
        log.contains(&format!("uid={uid}")) && log.contains("account=mgnssonly"),
        "{log}"
    );

    // A uid nobody knows.
    let stranger = unused_uid(uid + 1);
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={stranger}"),
        &format!("--regid={stranger}"),
        "--clear-groups",
    ])
    .arg(&inst.bin)
    .args(["-i", "to@x.org"]);
    let o = run_with_input(&mut cmd, MSG);
    assert_eq!(code(&o), 71, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("no login name found for user ID {stranger}")),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        from_customers(&sink.received()).len(),
        2,
        "nothing of the stranger's reached the relay"
    );
}
