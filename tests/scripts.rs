//! The calling script (issue 30): a planted script held at its first message, new scripts
//! starting small, approve and block, the admin told once per sign, through the real binary
//! and a real PHP 8 interpreter from Debian.

mod common;
use common::*;
use std::process::Command;

const T0: i64 = 1_900_000_000;
const DAY: i64 = 86400;

fn uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// Honest-looking site and an upload directory under it (the test's temp dir is under /tmp:
/// these tests name their own suspicious directories).
struct Site {
    rec: Recorder,
    env: Env,
    root: TempDir,
}

fn site(extra: &str) -> Site {
    let rec = Recorder::start(Script::default());
    let env = Env::new(
        rec.port,
        &format!(
            "[alerts]\nadmin = \"postmaster@example.org\"\n\
             [scripts]\nsuspicious_dirs = [\"*/wp-content/uploads/*\", \"*/.*/*\"]\n{extra}\n\
             [accounts.shop]\nusers = [{uid}]\nlimits = [ {{ window = \"1h\", messages = 1000 }} ]\n",
            uid = uid()
        ),
    );
    let root = TempDir::new("site");
    std::fs::create_dir_all(root.path().join("wp-content/uploads/2026/12")).unwrap();
    Site { rec, env, root }
}

impl Site {
    /// Send from `dir` (under the site) as PHP-FPM would: PHP's header names the file.
    fn send(&self, dir: &str, file: &str, t: i64) -> std::process::Output {
        let cwd = self.root.path().join(dir);
        std::fs::create_dir_all(&cwd).unwrap();
        let msg = format!(
            "X-PHP-Originating-Script: {}:{file}\nTo: to@example.net\nSubject: {file}\n\nhello\n",
            uid()
        );
        let mut cmd = self.env.cmd();
        cmd.env("MAILGATE_ACCOUNT", "shop")
            .env("MAILGATE_NOW", t.to_string())
            .current_dir(&cwd)
            .args(["-i", "to@example.net"]);
        run_with_input(&mut cmd, msg.as_bytes())
    }

    fn scripts(&self, t: i64) -> serde_json::Value {
        serde_json::from_str(&admin(&self.env, &["scripts", "--json"], Some(t))).unwrap()
    }

    /// Mail the admin got about scripts.
    fn script_alerts(&self) -> Vec<Received> {
        self.rec
            .received()
            .into_iter()
            .filter(|r| {
                r.header("Subject")
                    .is_some_and(|s| s.starts_with("mailgate: script"))
            })
            .collect()
    }

    fn relayed(&self, subject: &str) -> usize {
        self.rec
            .received()
            .iter()
            .filter(|r| r.header("Subject").as_deref() == Some(subject))
            .count()
    }
}

#[test]
fn a_planted_script_is_held_at_its_first_message_and_the_honest_one_flows() {
    let s = site("");
    // The honest contact form, in the site's root.
    std::fs::write(s.root.path().join("contact.php"), "<?php").unwrap();
    let o = s.send("", "contact.php", T0);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(s.relayed("contact.php"), 1);
    // The dropper, requested as wp-content/uploads/2026/12/x.php: held, none relayed.
    let dropper = "wp-content/uploads/2026/12";
    std::fs::write(s.root.path().join(dropper).join("x.php"), "<?php").unwrap();
    for i in 0..3 {
        let o = s.send(dropper, "x.php", T0 + 10 + i);
        assert_eq!(code(&o), 0, "kept, not refused: {}", stderr(&o));
        assert!(stderr(&o).contains("held"), "{}", stderr(&o));
    }
    assert_eq!(s.relayed("x.php"), 0, "the planted script relayed nothing");
    let held = std::fs::read_dir(s.env.state.join("hold")).unwrap().count();
    assert_eq!(held, 3, "every message kept for the admin");
    // The admin is told once, with the script, its path and the sign.
    let alerts = wait_for("the admin's mail about the script", || {
        let a = s.script_alerts();
        (!a.is_empty()).then_some(a)
    });
    assert_eq!(alerts.len(), 1, "told once");
    let text = alerts[0].text();
    assert!(
        text.contains("x.php") && text.contains("suspicious-dir") && text.contains("HELD"),
        "{text}"
    );
    let log = s.env.log_text();
    assert!(log.contains("signs=suspicious-dir"), "{log}");
    // `mailgate scripts` lists both, with the sign; approving lets the script send.
    let list = s.scripts(T0 + 20);
    let row = |p: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["script"].as_str().unwrap().ends_with(p))
            .cloned()
            .unwrap_or_else(|| panic!("{p} in {list}"))
    };
    assert_eq!(row("/x.php")["signs"][0], "suspicious-dir");
    assert_eq!(row("/contact.php")["sent"], 1);
    let path = row("/x.php")["script"].as_str().unwrap().to_string();
    admin(
        &s.env,
        &["scripts", "approve", "shop", &path],
        Some(T0 + 21),
    );
    let o = s.send(dropper, "x.php", T0 + 22);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(s.relayed("x.php"), 1, "approved: it goes");
    // Blocked: everything it sends is held again, with the reason.
    admin(&s.env, &["scripts", "block", "shop", &path], Some(T0 + 23));
    let o = s.send(dropper, "x.php", T0 + 24);
    assert!(stderr(&o).contains("blocked"), "{}", stderr(&o));
    assert_eq!(s.relayed("x.php"), 1);
}

#[test]
fn eval_code_and_hidden_directories_are_signs_too() {
    let s = site("");
    let o = s.send("", "index.php(3) : eval()'d code", T0);
    assert!(stderr(&o).contains("held"), "{}", stderr(&o));
    let o = s.send(".cache", "a.php", T0 + 1);
    assert!(stderr(&o).contains("held"), "{}", stderr(&o));
    assert_eq!(
        s.rec
            .received()
            .iter()
            .filter(|r| r.rcpts == ["to@example.net"])
            .count(),
        0
    );
    assert!(s.env.log_text().contains("signs=eval"));
}

#[test]
fn a_new_script_starts_small_after_learning_and_approval_lifts_the_budget() {
    let s = site(
        "new_script_budget = 3\nnew_script_window = \"1h\"\nhistory = \"7d\"\nlearning = \"1d\"",
    );
    // Learning: the newsletter is known from its first message.
    for i in 0..5 {
        let o = s.send("news", "send.php", T0 + i);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    assert_eq!(s.relayed("send.php"), 5);
    // Two days later a script never seen before gets 3 an hour; the 4th waits in defer/.
    let later = T0 + 2 * DAY;
    for i in 0..4 {
        let o = s.send("", "fresh.php", later + i);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    assert_eq!(s.relayed("fresh.php"), 3);
    assert_eq!(
        std::fs::read_dir(s.env.state.join("defer"))
            .unwrap()
            .count(),
        1
    );
    assert!(s.env.log_text().contains("script_status=new"));
    // The known newsletter is not narrowed.
    for i in 0..5 {
        assert_eq!(code(&s.send("news", "send.php", later + 10 + i)), 0);
    }
    assert_eq!(s.relayed("send.php"), 10);
    // Approved, the deferred one is released by the next queue run (its budget no longer
    // applies) and new ones go.
    let path = format!("{}/fresh.php", s.root.path().display());
    admin(
        &s.env,
        &["scripts", "approve", "shop", &path],
        Some(later + 20),
    );
    let out = admin(&s.env, &["queue", "run"], Some(later + 30));
    assert!(out.contains("released 1 deferred"), "{out}");
    assert_eq!(code(&s.send("", "fresh.php", later + 40)), 0);
    assert_eq!(s.relayed("fresh.php"), 5);
    // After its history a script is known without approval.
    let o = s.send("", "other.php", later + 50);
    assert_eq!(code(&o), 0);
    let list = s.scripts(later + 8 * DAY);
    let other = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["script"].as_str().unwrap().ends_with("/other.php"))
        .unwrap();
    assert_eq!(other["standing"], "known", "{list}");
}

/// PHP CLI: the interpreter's argv names the script, so a script run from an upload
/// directory (a cron job an intruder planted) is held at its first message.
#[test]
fn a_php_cli_script_in_an_upload_directory_is_held() {
    let s = site("");
    let dir = s.root.path().join("wp-content/uploads");
    let file = dir.join("cron.php");
    std::fs::write(
        &file,
        "<?php var_dump(mail('to@example.net', 'cli', 'body'));\n",
    )
    .unwrap();
    let mut cmd = Command::new("php");
    cmd.arg("-d")
        .arg(format!("sendmail_path={BIN} -t -i"))
        .arg(&file)
        .current_dir(s.root.path())
        .env("MAILGATE_CONFIG", &s.env.config)
        .env("MAILGATE_ACCOUNT", "shop")
        .env("MAILGATE_NOW", T0.to_string());
    let o = run_with_input(&mut cmd, b"");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s.relayed("cli"), 0, "held, not relayed");
    let log = s.env.log_text();
    assert!(
        log.contains(&format!("script_path={}", file.display()))
            && log.contains("signs=suspicious-dir")
            && log.contains("status=held"),
        "{log}"
    );
}
