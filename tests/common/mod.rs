//! Test harness: real Postfix `smtp-sink`, an in-test recording SMTP server for byte-exact
//! checks, and a throw-away mailgate configuration per test. Every process a test starts is
//! killed by PID when its guard drops; every wait has a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mailgate");

/// The binary that ships (pkg/build.sh: release, statically linked), built once per test
/// process; cargo leaves it alone when it is up to date.
pub fn static_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let o = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/pkg/build.sh"))
                .arg("--quiet")
                .output()
                .expect("pkg/build.sh runs");
            assert!(
                o.status.success(),
                "pkg/build.sh: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
        })
        .clone()
}

/// `sh -c CMD` (apt and dpkg without questions).
pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .args(["-c", cmd])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap()
}

/// `sh -c CMD`, which must succeed; its standard output.
pub fn must(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run `program args` as `user` (with that user's groups) and extra environment, feeding
/// `stdin`.
pub fn as_user(
    user: &str,
    envs: &[(&str, &str)],
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
    stdin: &[u8],
) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={user}"),
        &format!("--regid={user}"),
        "--init-groups",
        "env",
    ]);
    for (k, v) in envs {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.arg(program).args(args);
    run_with_input(&mut cmd, stdin)
}
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The login name of the user running the tests.
pub fn login() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A port that was free a moment ago (bind port 0, then release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The hand-over records in `state`'s `pending/` that no sender finished, as (file, record):
/// a slot's first line unless it is marked done (`#`), or a file of its own.
pub fn unfinished_records(state: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    Ok(std::fs::read_dir(state.join("pending"))?
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            let first = text.lines().next()?.to_string();
            (!first.is_empty() && !first.starts_with('#')).then(|| (e.path(), first))
        })
        .collect())
}

/// Poll `cond` until it holds or the deadline passes.
pub fn wait_for<T>(what: &str, cond: impl FnMut() -> Option<T>) -> T {
    wait_for_within(what, DEADLINE, cond)
}

/// `wait_for` with its own deadline, for waits on a scheduler (cron runs once a minute).
pub fn wait_for_within<T>(what: &str, limit: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }

    /// Under `parent`: a site's scripts belong in a web root (/srv), not under /tmp, which
    /// mailgate's `[scripts] suspicious_dirs` rightly distrusts.
    pub fn new_in(parent: &Path, tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = parent.join(format!(
            "mailgate-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills and reaps a child by PID when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a sink received for one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// MAIL FROM argument as given, e.g. `<a@x> BODY=8BITMIME`.
    pub mail: String,
    /// RCPT TO addresses without brackets.
    pub rcpts: Vec<String>,
    /// Message content (smtp-sink: LF lines, unstuffed; recorder: raw wire bytes).
    pub data: Vec<u8>,
}

impl Received {
    pub fn sender(&self) -> String {
        let m = &self.mail;
        m[m.find('<').map_or(0, |i| i + 1)..m.find('>').unwrap_or(m.len())].to_string()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// Value of the first header `name` (unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let mut found: Option<String> = None;
        for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
            if line.is_empty() {
                break;
            }
            if let Some(v) = &mut found {
                if line.starts_with([' ', '\t']) {
                    v.push_str(line);
                    continue;
                }
                break;
            }
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case(name)
            {
                found = Some(v.trim().to_string());
            }
        }
        found
    }
}

/// Postfix's smtp-sink on a free loopback port.
pub struct Sink {
    pub port: u16,
    pub dir: TempDir,
    _child: Guard,
}

impl Sink {
    pub fn start(extra: &[&str]) -> Sink {
        Sink::start_on(free_port(), extra)
    }

    /// On a given port (a relay that comes back where mailgate expects it).
    pub fn start_on(port: u16, extra: &[&str]) -> Sink {
        let sink = Sink::spawn(&format!("127.0.0.1:{port}"), port, extra, None);
        wait_for("smtp-sink to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        sink
    }

    /// On a Unix socket (mailgate's own lane into the relay), listening as `user`.
    pub fn start_unix(socket: &Path, user: Option<&str>) -> Sink {
        let sink = Sink::spawn(&format!("unix:{}", socket.display()), 0, &[], user);
        wait_for("smtp-sink to listen on its socket", || {
            std::os::unix::net::UnixStream::connect(socket).ok()
        });
        sink
    }

    fn spawn(address: &str, port: u16, extra: &[&str], user: Option<&str>) -> Sink {
        let dir = TempDir::new("sink");
        // smtp-sink drops to `-u nobody` when root; its dumps must be writable then.
        let dumps = dir.path().join("dumps");
        std::fs::create_dir(&dumps).unwrap();
        std::fs::set_permissions(&dumps, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let mut cmd = match user {
            // The whole process as that user, so that the socket is bound as that user.
            Some(user) => {
                let gid = Command::new("id").args(["-g", user]).output().unwrap();
                let gid = String::from_utf8_lossy(&gid.stdout).trim().to_string();
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid",
                    user,
                    "--regid",
                    &gid,
                    "--clear-groups",
                    "smtp-sink",
                ]);
                c
            }
            None => Command::new("smtp-sink"),
        };
        if is_root() && user.is_none() {
            cmd.args(["-u", "nobody"]);
        }
        cmd.args(extra)
            .arg("-d")
            .arg(format!("{}/%Y%m%d%H%M%S.", dumps.display()))
            .arg(address)
            .arg("64")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = Guard(
            cmd.spawn()
                .expect("smtp-sink (Debian package postfix) must be installed"),
        );
        Sink {
            port,
            dir,
            _child: child,
        }
    }

    /// Every complete transaction dumped so far.
    pub fn received(&self) -> Vec<Received> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("dumps"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .filter_map(|f| parse_dump(&std::fs::read(f).ok()?))
            .collect()
    }

    pub fn wait_count(&self, n: usize) -> Vec<Received> {
        wait_for(&format!("{n} messages at the sink"), || {
            let r = self.received();
            (r.len() >= n).then_some(r)
        })
    }
}

/// smtp-sink dumps: `X-Mail-Args:`/`X-Rcpt-Args:` lines, its own Received header, the message,
/// and a trailing empty line.
fn parse_dump(bytes: &[u8]) -> Option<Received> {
    let mut mail = None;
    let mut rcpts = Vec::new();
    let mut rest = bytes;
    loop {
        let end = rest.iter().position(|&b| b == b'\n')?;
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
            mail = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
            let v = v.split_whitespace().next().unwrap_or("");
            rcpts.push(v.trim_start_matches('<').trim_end_matches('>').to_string());
        } else if !line.starts_with("X-") {
            break;
        }
        rest = &rest[end + 1..];
    }
    // Skip smtp-sink's own Received header (first line plus continuation lines).
    let mut end = rest.iter().position(|&b| b == b'\n')? + 1;
    while rest.get(end).is_some_and(|&b| b == b' ' || b == b'\t') {
        end += rest[end..].iter().position(|&b| b == b'\n')? + 1;
    }
    let mut data = rest[end..].to_vec();
    // smtp-sink appends an empty line after the message; a dump is complete when it has it.
    if !data.ends_with(b"\n\n") && !data.ends_with(b"\n") {
        return None;
    }
    if data.ends_with(b"\n\n") || data == b"\n" {
        data.pop();
    }
    Some(Received {
        mail: mail?,
        rcpts,
        data,
    })
}

/// How the recording server answers (and misbehaves).
#[derive(Clone, Default)]
pub struct Script {
    /// RCPT addresses answered with this reply instead of 250.
    pub reject_rcpt: Vec<(String, String)>,
    /// With `reject_once`, each address of `reject_rcpt` is refused only the first time.
    pub reject_once: bool,
    /// Reply to the final "." (default 250).
    pub data_reply: Option<String>,
    /// Accept at most this many RCPTs per transaction, then 452 (Postfix's
    /// smtpd_recipient_limit).
    pub rcpt_limit: Option<usize>,
    /// Send the greeting one byte per this interval.
    pub trickle_greeting: Option<Duration>,
    /// After EHLO, send "250-" continuation lines for ever, one per 100 ms.
    pub endless_ehlo: bool,
    /// Read DATA 4 KiB at a time with this pause in between.
    pub slow_data: Option<Duration>,
    /// Do not announce 8BITMIME.
    pub no_8bitmime: bool,
    /// Addresses already refused once (shared by all connections).
    pub refused: Arc<Mutex<Vec<String>>>,
}

/// An in-test SMTP server that records the raw wire bytes of every DATA section.
pub struct Recorder {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    refused: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    pub fn start(script: Script) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        let refused = script.refused.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let store = store.clone();
                let script = script.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &script, &store);
                });
            }
        });
        Recorder {
            port,
            received,
            refused,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Every RCPT address it refused, in order (once per refusal).
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().unwrap().clone()
    }

    pub fn wait_count(&self, n: usize) -> Vec<Received> {
        wait_for(&format!("{n} messages at the recorder"), || {
            let r = self.received();
            (r.len() >= n).then_some(r)
        })
    }
}

fn serve(conn: TcpStream, script: &Script, store: &Mutex<Vec<Received>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(DEADLINE))?;
    let mut out = conn.try_clone()?;
    let slow_data = script.slow_data;
    let mut input = BufReader::with_capacity(4096, conn);
    match script.trickle_greeting {
        Some(pause) => {
            for b in b"220 recorder ESMTP\r\n" {
                out.write_all(&[*b])?;
                std::thread::sleep(pause);
            }
        }
        None => out.write_all(b"220 recorder ESMTP\r\n")?,
    }
    let mut tx = Received {
        mail: String::new(),
        rcpts: Vec::new(),
        data: Vec::new(),
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = text.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") && script.endless_ehlo {
            loop {
                out.write_all(b"250-still talking\r\n")?;
                std::thread::sleep(Duration::from_millis(100));
            }
        } else if upper.starts_with("EHLO") && script.no_8bitmime {
            "250-recorder\r\n250-PIPELINING\r\n250 SIZE 100000000".to_string()
        } else if upper.starts_with("EHLO") {
            "250-recorder\r\n250-PIPELINING\r\n250-SIZE 100000000\r\n250 8BITMIME".to_string()
        } else if upper.starts_with("MAIL FROM:") {
            tx = Received {
                mail: text[10..].to_string(),
                rcpts: Vec::new(),
                data: Vec::new(),
            };
            "250 2.1.0 Ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let addr = text[8..]
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string();
            let refuse = script
                .reject_rcpt
                .iter()
                .find(|(a, _)| *a == addr)
                .filter(|_| {
                    let mut refused = script.refused.lock().unwrap();
                    if script.reject_once && refused.contains(&addr) {
                        return false;
                    }
                    refused.push(addr.clone());
                    true
                });
            match refuse {
                Some((_, r)) => r.clone(),
                None if script.rcpt_limit.is_some_and(|n| tx.rcpts.len() >= n) => {
                    "452 4.5.3 Error: too many recipients".into()
                }
                None => {
                    tx.rcpts.push(addr);
                    "250 2.1.5 Ok".into()
                }
            }
        } else if upper == "DATA" {
            if tx.rcpts.is_empty() {
                "554 5.5.1 Error: no valid recipients".into()
            } else {
                out.write_all(b"354 go ahead\r\n")?;
                let mut data = Vec::new();
                loop {
                    line.clear();
                    if input.read_until(b'\n', &mut line)? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    data.extend_from_slice(&line);
                    if let Some(pause) = slow_data
                        && data.len() % 4096 < line.len()
                    {
                        std::thread::sleep(pause);
                    }
                }
                tx.data = data;
                // A queue id per message, as a relay gives: REC1, REC2, ...
                let mut stored = store.lock().unwrap();
                let reply = script
                    .data_reply
                    .clone()
                    .unwrap_or_else(|| format!("250 2.0.0 Ok: queued as REC{}", stored.len() + 1));
                if reply.starts_with('2') {
                    stored.push(tx.clone());
                }
                reply
            }
        } else if upper == "QUIT" {
            out.write_all(b"221 Bye\r\n")?;
            return Ok(());
        } else {
            "250 Ok".into()
        };
        out.write_all(reply.as_bytes())?;
        out.write_all(b"\r\n")?;
    }
}

/// A mailgate configuration, state directory and log file of its own.
pub struct Env {
    pub dir: TempDir,
    pub config: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
}

impl Env {
    pub fn new(relay_port: u16, extra: &str) -> Env {
        Env::with_relay(&format!("host = \"127.0.0.1\"\nport = {relay_port}"), extra)
    }

    /// With `relay` as the `[relay]` table's address keys (host and port, or socket).
    pub fn with_relay(relay: &str, extra: &str) -> Env {
        // The tests' scripts and working directories live under /tmp, which the default
        // `[scripts] suspicious_dirs` rightly distrusts: here only an upload directory is
        // suspicious, unless a test says otherwise (tests/scripts.rs).
        let scripts = if extra.contains("[scripts]") {
            ""
        } else {
            "[scripts]\nsuspicious_dirs = [\"*/wp-content/uploads/*\"]\n"
        };
        let dir = TempDir::new("env");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let log = dir.path().join("mailgate.log");
        let config = dir.path().join("mailgate.toml");
        std::fs::write(
            &config,
            format!(
                "origin = \"example.org\"\nhostname = \"web1.example.org\"\nstate_dir = \"{}\"\n\
                 [relay]\n{relay}\ntimeout = \"5s\"\n\
                 trusted_owners = [0, {uid}, \"nobody\"]\n\
                 [log]\nfile = \"{}\"\n{scripts}{extra}\n",
                state.display(),
                log.display(),
                // SAFETY: getuid cannot fail. The in-test relays are this user's sockets;
                // smtp-sink accepts as nobody.
                uid = unsafe { libc::getuid() },
            ),
        )
        .unwrap();
        Env {
            dir,
            config,
            state,
            log,
        }
    }

    pub fn cmd(&self) -> Command {
        self.cmd_as(BIN)
    }

    /// Run the binary through `program` (e.g. a link named `sendmail`).
    pub fn cmd_as(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("MAILGATE_CONFIG", &self.config)
            .env_remove("MAILGATE_ACCOUNT");
        c
    }

    pub fn send(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_with_input(self.cmd().args(args), stdin)
    }

    /// A link to the binary whose name contains "sendmail".
    pub fn sendmail_link(&self) -> PathBuf {
        let link = self.dir.path().join("sendmail");
        if !link.exists() {
            std::os::unix::fs::symlink(BIN, &link).unwrap();
        }
        link
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A tmpfs of `size` (e.g. "64k") mounted at `dir/small`, unmounted when dropped. Needs root.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    pub fn mount(dir: &Path, size: &str) -> SmallDisk {
        assert!(
            is_root(),
            "this test mounts a tmpfs; run it as root (.ci/run)"
        );
        let path = dir.join("small");
        std::fs::create_dir(&path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount tmpfs failed");
        SmallDisk(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

impl Env {
    /// Point the configuration's state directory at `dir` (a small disk, say).
    pub fn move_state_to(&self, dir: &Path) {
        let config = std::fs::read_to_string(&self.config).unwrap().replace(
            &self.state.display().to_string(),
            &dir.display().to_string(),
        );
        std::fs::write(&self.config, config).unwrap();
    }
}

/// Run to completion with `stdin`, within the deadline.
pub fn run_with_input(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || pipe.write_all(&input));
    let pid = child.id();
    let output = wait_output(child, pid);
    writer
        .join()
        .unwrap()
        .expect("the whole stdin was accepted (no EPIPE)");
    output
}

pub fn wait_output(mut child: Child, pid: u32) -> Output {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {pid} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `mailgate ARGS --json` (status, hold list, queue list) as JSON.
pub fn json(env: &Env, args: &[&str], now: Option<i64>) -> serde_json::Value {
    let mut cmd = env.cmd();
    cmd.args(args).arg("--json");
    if let Some(t) = now {
        cmd.env("MAILGATE_NOW", t.to_string());
    }
    let o = run_with_input(&mut cmd, b"");
    assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?} --json: {e}"))
}

/// `mailgate ARGS` as admin (same config), checked for success; returns stdout.
pub fn admin(env: &Env, args: &[&str], now: Option<i64>) -> String {
    let mut cmd = env.cmd();
    cmd.args(args);
    if let Some(t) = now {
        cmd.env("MAILGATE_NOW", t.to_string());
    }
    let o = run_with_input(&mut cmd, b"");
    assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Start `cmd` with `stdin`, SIGKILL it after `delay`. Its exit code, or `None` when the kill
/// landed before it exited.
pub fn kill_after(cmd: &mut Command, stdin: &[u8], delay: Duration) -> Option<i32> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // A killed reader may leave the pipe unread: ignore EPIPE here.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    std::thread::sleep(delay);
    // SAFETY: the pid is our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap().code()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One delivery line of the relay instance (Postfix 3.7, `maillog_file`).
pub fn relay_log_line(queue_id: &str, to: &str, status: &str, reply: &str) -> String {
    let dsn = match status {
        "sent" => "2.0.0",
        "bounced" => "5.1.1",
        _ => "4.2.0",
    };
    format!(
        "Dec  3 13:20:01 vm postfix-postfwd/smtp[4711]: {queue_id}: to=<{to}>, relay=mx.example.net[192.0.2.1]:25, delay=0.2, delays=0.01/0.01/0.1/0.08, dsn={dsn}, status={status} ({reply})\n"
    )
}
