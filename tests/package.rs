//! The Debian package, as an admin uses it: `cargo deb` builds it, `apt-get install ./….deb`
//! installs it, PHP's `mail()` sends through it as a real user, an upgrade to N+1 keeps the
//! admin's configuration and the mail queued while the relay was down (delivered once after),
//! `remove` keeps configuration and spools, `purge` leaves nothing. Needs root and changes the
//! system, so it refuses to run where mailgate is installed and undoes what it did.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const USER: &str = "mgpkg1";
/// Everything the package installs or its maintainer scripts create.
const PATHS: [&str; 10] = [
    "/usr/sbin/mailgate",
    "/usr/sbin/mailgate-chain",
    "/usr/lib/mailgate",
    "/etc/mailgate",
    "/var/lib/mailgate",
    "/etc/cron.d/mailgate",
    "/etc/logrotate.d/mailgate",
    "/lib/systemd/system/mailgate-queue.timer",
    "/lib/systemd/system/mailgate-queue.service",
    "/usr/share/man/man8/mailgate.8.gz",
];

/// Purges the package and removes the test user, whatever happened; what `mailgate-chain`
/// made (its root-only backups, the cron daemon it started where systemd does not run) goes
/// too, unless it was there before the test.
struct Cleanup {
    cron_ran: bool,
    chain_backups_existed: bool,
}

const CHAIN_BACKUPS: &str = "/var/lib/mailgate-chain";

impl Cleanup {
    fn take() -> Cleanup {
        Cleanup {
            cron_ran: sh("pgrep -x cron").status.success(),
            chain_backups_existed: Path::new(CHAIN_BACKUPS).exists(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = sh("dpkg --purge mailgate >/dev/null 2>&1");
        let _ = sh(&format!("userdel {USER} >/dev/null 2>&1"));
        if !self.chain_backups_existed {
            let _ = std::fs::remove_dir_all(CHAIN_BACKUPS);
        }
        if !self.cron_ran {
            let _ = sh("/etc/init.d/cron stop >/dev/null 2>&1; pkill -x cron; \
                 for _ in 1 2 3 4 5 6 7 8 9 10; do pgrep -x cron >/dev/null || exit 0; sleep 0.5; done; \
                 pkill -9 -x cron");
        }
    }
}

/// node_exporter's textfile directory, which the unit may write.
const TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";

/// The unit's `ReadWritePaths=` (a leading `-`, "if it exists", dropped).
fn unit_writable_paths(unit: &str) -> Vec<String> {
    std::fs::read_to_string(unit)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("ReadWritePaths="))
        .flat_map(|v| v.split_whitespace())
        .map(|p| p.trim_start_matches('-').to_string())
        .collect()
}

/// Run `command` in a mount namespace where every mount is read-only except `writable`
/// (what `ProtectSystem=strict` with `ReadWritePaths=` gives the unit, proven here without
/// systemd as PID 1).
fn run_confined(writable: &[String], command: &str) -> std::process::Output {
    let script = format!(
        "set -e\n\
         for p in {rw}; do [ -e \"$p\" ] && mount --bind \"$p\" \"$p\"; done\n\
         for m in $(awk '{{print $2}}' /proc/self/mounts | sort -u); do\n\
           case \" {rw} \" in *\" $m \"*) continue ;; esac\n\
           mount -o remount,bind,ro \"$m\" 2>/dev/null || true\n\
         done\n\
         touch /etc/.mailgate-confined-probe 2>/dev/null && {{ echo 'not read-only' >&2; exit 99; }}\n\
         exec {command}\n",
        rw = writable.join(" ")
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)")
}

/// Builds the package of version `version` into `dir`, as the README says: pkg/build-deb.sh
/// (the static binary of pkg/build.sh, which cargo leaves alone when it is up to date).
fn build(dir: &Path, version: &str) -> PathBuf {
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = dir.join(format!("mailgate_{version}_amd64.deb"));
    let o = Command::new(Path::new(repo).join("pkg/build-deb.sh"))
        .current_dir(repo)
        .args(["--deb-version", version, "--output"])
        .arg(&out)
        .output()
        .expect("pkg/build-deb.sh needs cargo-deb (.ci/run: cargo install cargo-deb)");
    assert!(o.status.success(), "pkg/build-deb.sh: {}", stderr(&o));
    out
}

fn php_mail(subject: &str) -> String {
    let code = format!(r#"echo mail("dest@example.net", "{subject}", "body") ? "T" : "F";"#);
    let o = as_user(
        USER,
        &[],
        "php",
        &[
            "-d",
            "sendmail_path=/usr/lib/mailgate/sendmail -t -i",
            "-r",
            &code,
        ],
        b"",
    );
    assert!(o.status.success(), "php: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn at_sink(sink: &Sink, subject: &str) -> usize {
    sink.received()
        .iter()
        .filter(|r| r.header("Subject").as_deref() == Some(subject))
        .count()
}

#[test]
fn install_upgrade_remove_and_purge_the_debian_package() {
    assert!(
        is_root(),
        "this test installs a Debian package; run it as root (.ci/run)"
    );
    for tool in [
        "apt-get",
        "dpkg-statoverride",
        "php",
        "logrotate",
        "lintian",
        "cargo-deb",
    ] {
        assert!(
            sh(&format!("command -v {tool}")).status.success(),
            "{tool} is missing (.ci/run installs it)"
        );
    }
    assert!(
        !sh("dpkg -s mailgate >/dev/null 2>&1").status.success()
            && PATHS.iter().all(|p| !Path::new(p).exists()),
        "mailgate is installed on this machine; this test installs and purges its own package, not over a real one"
    );
    let _cleanup = Cleanup::take();
    let group_before = sh("getent group mailgate").status.success();
    assert!(!group_before, "group mailgate exists without the package");

    let dir = TempDir::new("package");
    let first = build(dir.path(), "0.1.0-1");
    let second = build(dir.path(), "0.1.0-2");
    // lintian: no errors; the warnings left are listed and justified in README ("Install").
    let lint = sh(&format!(
        "lintian --allow-root --fail-on error {}",
        first.display()
    ));
    assert!(
        lint.status.success(),
        "lintian: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        stderr(&lint)
    );
    must(&format!("apt-get install -y -q {}", first.display()));

    // What dpkg and the maintainer scripts made.
    assert_eq!(
        must("stat -c '%a %U:%G' /usr/sbin/mailgate").trim(),
        "2755 root:mailgate"
    );
    assert_eq!(
        must("dpkg-statoverride --list /usr/sbin/mailgate").trim(),
        "root mailgate 2755 /usr/sbin/mailgate"
    );
    assert_eq!(
        must("stat -c '%a %U:%G' /var/lib/mailgate").trim(),
        "770 root:mailgate"
    );
    for sub in [
        "accounts", "queue", "defer", "hold", "failed", "tmp", "pending", "stats", "spooled",
        "delivery", "scripts",
    ] {
        assert_eq!(
            must(&format!("stat -c '%a %U:%G' /var/lib/mailgate/{sub}")).trim(),
            "2770 root:mailgate",
            "{sub}"
        );
    }
    assert_eq!(
        must("stat -c '%a %U:%G' /var/lib/mailgate/mailgate.log").trim(),
        "660 root:mailgate",
        "the fallback log, for hosts without syslog"
    );
    assert_eq!(
        must("readlink -f /usr/lib/mailgate/sendmail").trim(),
        "/usr/sbin/mailgate"
    );
    let conffiles = must("dpkg-query -W -f='${Conffiles}' mailgate");
    for f in [
        "/etc/mailgate/mailgate.toml",
        "/etc/cron.d/mailgate",
        "/etc/logrotate.d/mailgate",
    ] {
        assert!(conffiles.contains(f), "{f} is no conffile: {conffiles}");
    }
    // It relays to Postfix and does not replace it.
    let fields = must("dpkg-query -W -f='${Depends}|${Provides}' mailgate");
    assert!(fields.contains("postfix"), "{fields}");
    assert!(!fields.contains("mail-transport-agent"), "{fields}");
    assert!(must("readlink -f /usr/sbin/sendmail").contains("sendmail"));
    assert!(!must("readlink -f /usr/sbin/sendmail").contains("mailgate"));
    must("man -w mailgate");
    must("man -w mailgate-chain");
    // The chain command is shipped; its dry run says what it would do and changes nothing.
    assert!(must("/usr/sbin/mailgate-chain --help").contains("--undo"));
    let dry = must("/usr/sbin/mailgate-chain --dry-run --php");
    assert!(dry.contains("mailgate-chain: dry run:"), "{dry}");
    assert!(dry.contains("postfix-postfwd"), "{dry}");
    assert!(!Path::new("/etc/postfix-postfwd").exists());
    assert!(!Path::new("/var/lib/mailgate/install-backup").exists());
    must("logrotate -d /etc/logrotate.d/mailgate 2>&1");

    // Asked for, mailgate becomes /usr/sbin/sendmail through the package's diversion of
    // Postfix's (removing the package gives it back, below).
    must("/usr/sbin/mailgate-chain --without-postfix --as-sendmail");
    assert_eq!(
        must("dpkg-divert --listpackage /usr/sbin/sendmail").trim(),
        "mailgate"
    );
    assert_eq!(
        must("readlink /usr/sbin/sendmail").trim(),
        "/usr/sbin/mailgate"
    );

    // The admin points the relay at a test sink (an edit of the conffile).
    let mut sink = Sink::start(&[]);
    let port = sink.port;
    let config = std::fs::read_to_string("/etc/mailgate/mailgate.toml").unwrap();
    let edited = config
        .replace("port = 825", &format!("port = {port}"))
        .replace(
            "timeout = \"30s\"",
            "timeout = \"5s\"\ntrusted_owners = [\"root\", \"nobody\"]   # the test sink runs as nobody",
        );
    assert_ne!(edited, config, "the example config names the relay port");
    std::fs::write("/etc/mailgate/mailgate.toml", &edited).unwrap();
    must(&format!(
        "useradd --no-create-home --shell /usr/sbin/nologin {USER}"
    ));

    assert_eq!(php_mail("package one"), "T");
    wait_for("the first message at the sink", || {
        (at_sink(&sink, "package one") == 1).then_some(())
    });

    // Relay down: mail() still says true, the message waits in mailgate's queue.
    drop(sink);
    assert_eq!(php_mail("package queued"), "T");
    let queued = must("/usr/sbin/mailgate queue list --json");
    assert!(queued.contains("dest@example.net"), "{queued}");

    // Upgrade to N+1: the admin's edit, the queued message and the setgid bit survive.
    must(&format!("apt-get install -y -q {}", second.display()));
    assert_eq!(
        must("dpkg-query -W -f='${Version}' mailgate").trim(),
        "0.1.0-2"
    );
    assert_eq!(
        std::fs::read_to_string("/etc/mailgate/mailgate.toml").unwrap(),
        edited
    );
    assert_eq!(
        must("stat -c '%a %U:%G' /usr/sbin/mailgate").trim(),
        "2755 root:mailgate"
    );
    assert!(must("/usr/sbin/mailgate queue list --json").contains("dest@example.net"));

    // The relay is back: delivered exactly once, by a queue run confined as the shipped unit
    // confines it (everything read-only but the paths the unit names as writable), which
    // also learns outcomes and writes the metrics file. Left out, the state directory makes
    // the run fail clearly and keep the message.
    sink = Sink::start_on(port, &[]);
    let made_textfile_dir = !Path::new(TEXTFILE_DIR).exists();
    std::fs::create_dir_all(TEXTFILE_DIR).unwrap();
    let relay_log = "/var/log/mailgate-package-test-relay.log";
    std::fs::write(relay_log, "").unwrap();
    let confined_config = format!(
        "{edited}\n[metrics]\ntextfile = \"{TEXTFILE_DIR}/mailgate.prom\"\n[outcomes]\nrelay_log = \"{relay_log}\"\n"
    );
    std::fs::write("/etc/mailgate/mailgate.toml", &confined_config).unwrap();
    let writable = unit_writable_paths("/lib/systemd/system/mailgate-queue.service");
    assert!(
        writable.iter().any(|p| p == "/var/lib/mailgate"),
        "{writable:?}"
    );
    let without_state: Vec<String> = writable
        .iter()
        .filter(|p| *p != "/var/lib/mailgate")
        .cloned()
        .collect();
    let o = run_confined(&without_state, "/usr/sbin/mailgate queue flush");
    assert!(
        !o.status.success(),
        "a read-only state directory must fail the run"
    );
    assert!(
        stderr(&o).contains("Read-only file system"),
        "the failure says why: {}",
        stderr(&o)
    );
    assert!(must("/usr/sbin/mailgate queue list --json").contains("dest@example.net"));
    let o = run_confined(&writable, "/usr/sbin/mailgate queue flush");
    assert!(
        o.status.success(),
        "the queue run under the unit's file-system view: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    wait_for("the queued message at the sink", || {
        (at_sink(&sink, "package queued") == 1).then_some(())
    });
    assert!(
        std::fs::read_to_string(format!("{TEXTFILE_DIR}/mailgate.prom"))
            .unwrap()
            .contains("mailgate_messages_total"),
        "the metrics file was written"
    );
    assert!(
        Path::new("/var/lib/mailgate/delivery/.position").exists(),
        "the outcomes were read (the relay log's position written)"
    );
    std::fs::write("/etc/mailgate/mailgate.toml", &edited).unwrap();
    let _ = std::fs::remove_file(relay_log);
    let _ = std::fs::remove_file(format!("{TEXTFILE_DIR}/mailgate.prom"));
    if made_textfile_dir {
        let _ = std::fs::remove_dir_all("/var/lib/prometheus");
    }
    must("/usr/sbin/mailgate queue run");
    assert!(!must("/usr/sbin/mailgate queue list --json").contains("dest@example.net"));
    assert_eq!(at_sink(&sink, "package queued"), 1);

    // remove keeps configuration, counters and spools; purge removes them all.
    must("apt-get remove -y -q mailgate");
    assert!(!Path::new("/usr/sbin/mailgate").exists());
    assert_eq!(
        must("dpkg -S /usr/sbin/sendmail").trim(),
        "postfix: /usr/sbin/sendmail"
    );
    assert!(
        std::fs::symlink_metadata("/usr/sbin/sendmail")
            .unwrap()
            .is_file(),
        "Postfix's sendmail is back"
    );
    assert_eq!(
        sh("dpkg-divert --listpackage /usr/sbin/sendmail").stdout,
        b""
    );
    assert_eq!(
        std::fs::read_to_string("/etc/mailgate/mailgate.toml").unwrap(),
        edited
    );
    assert!(Path::new("/var/lib/mailgate/accounts").is_dir());
    must("apt-get purge -y -q mailgate");
    for p in PATHS {
        assert!(!Path::new(p).exists(), "{p} is left after purge");
    }
    assert!(!sh("getent group mailgate").status.success());
    assert_eq!(
        must("dpkg-statoverride --list '*mailgate*' || true").trim(),
        ""
    );
}

/// The logrotate entry rotates the Postfix logs and reloads Postfix without failing, on
/// copies of the files (the real ones may belong to a running Postfix).
#[test]
fn the_postfix_logs_are_rotated() {
    let dir = TempDir::new("logrotate");
    let conf = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pkg/etc/logrotate-mailgate"),
    )
    .unwrap();
    let d = dir.path().display().to_string();
    let conf = conf.replace("/var/log/", &format!("{d}/"));
    std::fs::write(dir.path().join("rotate.conf"), &conf).unwrap();
    for log in ["postfix.log", "postfix-postfwd.log"] {
        std::fs::write(dir.path().join(log), "a line\n").unwrap();
    }
    let o = sh(&format!("logrotate -f -s {d}/state {d}/rotate.conf"));
    assert!(o.status.success(), "logrotate: {}", stderr(&o));
    for log in ["postfix.log", "postfix-postfwd.log"] {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(format!("{log}.1"))).unwrap(),
            "a line\n",
            "{log}"
        );
    }
}

/// The queue service is hardened as far as the queue run allows: systemd's own judgement,
/// offline (systemd need not run), is at most 2.0 ("OK"); and the cron fallback runs the
/// same command as the unit.
#[test]
fn the_queue_service_is_hardened_and_cron_runs_the_same_command() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let unit = format!("{repo}/pkg/debian/mailgate-queue.service");
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=true", &unit])
        .output()
        .expect("systemd-analyze must be installed (.ci/run installs systemd)");
    let text = String::from_utf8_lossy(&o.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("exposure level for mailgate-queue.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}{}", stderr(&o)));
    assert!(level <= 2.0, "exposure {level}:\n{text}");
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    let exec = unit_text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let cron = std::fs::read_to_string(format!("{repo}/pkg/etc/cron.d-mailgate")).unwrap();
    assert!(cron.contains(exec), "cron runs {exec:?}:\n{cron}");
}

/// Issue 34: the package is reproducible. Two builds of the same commit through
/// pkg/build-deb.sh, from two checkouts at different paths and a minute apart (the second
/// rebuilds mailgate itself), give the same .deb byte for byte; its files carry the commit's
/// time, not the build's, and the binary names neither checkout nor CARGO_HOME.
#[test]
fn two_builds_from_two_checkouts_are_byte_identical() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reproducible");
    // Shared, so that the dependencies are built once; mailgate is rebuilt from each checkout.
    let target = base.join("target");
    let mut debs = Vec::new();
    for (i, name) in ["first-checkout", "some/other/path/second"]
        .iter()
        .enumerate()
    {
        let dir = base.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        let o = Command::new("git")
            .args(["clone", "--quiet", "--no-hardlinks", repo])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "git clone: {}", stderr(&o));
        let o = Command::new("cargo")
            .args(["clean", "-q", "-p", "mailgate", "--release"])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(o.status.success(), "cargo clean: {}", stderr(&o));
        let deb = base.join(format!("{i}.deb"));
        let o = Command::new(dir.join("pkg/build-deb.sh"))
            .args(["-q", "--output"])
            .arg(&deb)
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .unwrap();
        assert!(o.status.success(), "pkg/build-deb.sh: {}", stderr(&o));
        let strings = Command::new("strings")
            .arg(target.join(build_target()).join("release/mailgate"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&strings.stdout);
        let cargo_home = std::env::var("CARGO_HOME")
            .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap()));
        for path in [dir.display().to_string(), cargo_home] {
            assert!(!text.contains(&path), "the binary names {path}");
        }
        debs.push(std::fs::read(&deb).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert!(
        debs[0] == debs[1],
        "two builds of one commit differ (diffoscope {})",
        base.display()
    );
    // The archive's times are the commit's.
    let commit = Command::new("git")
        .args(["log", "-1", "--format=%cd", "--date=format:%Y-%m-%d %H:%M"])
        .current_dir(repo)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_string();
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(base.join("0.deb"))
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.lines().all(|l| l.contains(&commit)),
        "file times other than the commit's ({commit}):\n{listing}"
    );
}

/// The target triple pkg/build.sh builds for (pkg/target.sh chooses), under which its static
/// binary lands (`target/TRIPLE/release/mailgate`).
fn build_target() -> String {
    let o = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/pkg/target.sh"))
        .output()
        .expect("pkg/target.sh runs");
    assert!(o.status.success(), "pkg/target.sh: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
