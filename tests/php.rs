//! Real callers: PHP 8 `mail()`, PHPMailer `isSendmail()` and Symfony Mailer's
//! `SendmailTransport` (`-bs` and `-t`), all from Debian's packages.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn php(env: &Env, sendmail_path: &str, extra_ini: &[&str], script: &str) -> std::process::Output {
    let file = env.dir.path().join(format!("t{}.php", std::process::id()));
    std::fs::write(&file, script).unwrap();
    let mut cmd = Command::new("php");
    // The distribution's php.ini and conf.d (ctype, mbstring), plus the test's settings.
    cmd.arg("-d").arg(format!("sendmail_path={sendmail_path}"));
    for ini in extra_ini {
        cmd.arg("-d").arg(ini);
    }
    cmd.arg(&file)
        .env("MAILGATE_CONFIG", &env.config)
        .env_remove("MAILGATE_ACCOUNT");
    let out = run_with_input(&mut cmd, b"");
    assert!(
        out.status.success(),
        "php failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn php_mail_with_and_without_fifth_parameter() {
    let sink = Sink::start(&[]);
    let env = Env::new(sink.port, "");
    let path = format!("{BIN} -t -i");
    let out = php(
        &env,
        &path,
        &["mail.add_x_header=On"],
        r#"<?php
var_dump(mail("one@x.org", "plain", "line1\n.\nline3\n"));
var_dump(mail("Two <two@x.org>, three@x.org", "with -f", "body", "From: Web <web@example.org>\r\nCc: cc@x.org\r\nBcc: bcc@x.org", "-fbounce@example.org"));
"#,
    );
    assert_eq!(stdout(&out), "bool(true)\nbool(true)\n");
    let got = sink.wait_count(2);
    let first = got
        .iter()
        .find(|r| r.header("Subject").as_deref() == Some("plain"))
        .unwrap();
    assert_eq!(first.rcpts, ["one@x.org"]);
    // PHP adds a newline after the message.
    assert!(
        first.text().ends_with("\n\nline1\n.\nline3\n\n"),
        "{:?}",
        first.text()
    );
    assert!(first.header("X-PHP-Originating-Script").is_some());
    let second = got
        .iter()
        .find(|r| r.header("Subject").as_deref() == Some("with -f"))
        .unwrap();
    assert_eq!(second.sender(), "bounce@example.org");
    assert_eq!(
        second.rcpts,
        ["two@x.org", "three@x.org", "cc@x.org", "bcc@x.org"]
    );
    assert!(second.header("Bcc").is_none());
    assert_eq!(second.header("From").unwrap(), "Web <web@example.org>");
    // The script is logged, never used as identity.
    assert!(env.log_text().contains("script="), "{}", env.log_text());
}

#[test]
fn php_mail_mixed_lf_and_crlf() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(rec.port, "");
    let out = php(
        &env,
        &format!("{BIN} -t -i"),
        &["mail.mixed_lf_and_crlf=On"],
        r#"<?php
var_dump(mail("m@x.org", "mixed", "a\r\nb\nc", "From: f@example.org\nX-Extra: 1"));
"#,
    );
    assert_eq!(stdout(&out), "bool(true)\n");
    let got = rec.wait_count(1);
    assert_eq!(got[0].header("X-Extra").as_deref(), Some("1"));
    assert_eq!(got[0].header("From").as_deref(), Some("f@example.org"));
    assert!(
        got[0].data.ends_with(b"\r\n\r\na\r\nb\r\nc\r\n"),
        "{:?}",
        got[0].text()
    );
    assert!(
        !got[0]
            .data
            .windows(2)
            .any(|w| w[1] == b'\n' && w[0] != b'\r'),
        "bare LF on the wire"
    );
}

#[test]
fn php_mail_returns_false_when_mailgate_refuses() {
    let rec = Recorder::start(Script {
        reject_rcpt: vec![("nobody@x.org".into(), "550 5.1.1 no such user".into())],
        ..Script::default()
    });
    let env = Env::new(rec.port, "");
    let out = php(
        &env,
        &format!("{BIN} -t -i"),
        &[],
        r#"<?php
var_dump(mail("nobody@x.org", "refused", "x"));
var_dump(mail("somebody@x.org", "accepted", "x"));
"#,
    );
    assert_eq!(stdout(&out), "bool(false)\nbool(true)\n");
    assert_eq!(rec.wait_count(1).len(), 1);
}

#[test]
fn phpmailer_is_sendmail_through_a_link_named_sendmail() {
    let sink = Sink::start(&[]);
    let env = Env::new(sink.port, "");
    let link = env.sendmail_link();
    let out = php(
        &env,
        link.to_str().unwrap(),
        &[],
        r#"<?php
require '/usr/share/php/libphp-phpmailer/autoload.php';
$m = new PHPMailer\PHPMailer\PHPMailer(true);
$m->isSendmail();
echo $m->Sendmail, "\n";
$m->setFrom('shop@example.org', 'Shop');
$m->addAddress('customer@x.org');
$m->addBCC('archive@x.org');
$m->Subject = 'Invoice';
$m->Body = "Dear customer,\n.\nthanks";
var_dump($m->send());
"#,
    );
    assert_eq!(stdout(&out), format!("{}\nbool(true)\n", link.display()));
    let got = sink.wait_count(1);
    assert_eq!(got[0].sender(), "shop@example.org");
    assert_eq!(got[0].rcpts, ["customer@x.org", "archive@x.org"]);
    assert!(got[0].header("Bcc").is_none());
    assert_eq!(got[0].header("Subject").unwrap(), "Invoice");
}

fn symfony_script(command: &Path, flags: &str) -> String {
    format!(
        r#"<?php
require '/usr/share/php/Symfony/Component/Mailer/autoload.php';
use Symfony\Component\Mailer\Mailer;
use Symfony\Component\Mailer\Transport\SendmailTransport;
use Symfony\Component\Mime\Email;
$mailer = new Mailer(new SendmailTransport('{} {flags}'));
foreach (['first', 'second'] as $s) {{
    $mailer->send((new Email())->from('app@example.org')->to('user@x.org')->bcc('audit@x.org')
        ->subject($s)->text("hello\n.\nworld"));
}}
echo "sent\n";
"#,
        command.display()
    )
}

#[test]
fn symfony_mailer_bs_mode() {
    let sink = Sink::start(&[]);
    let env = Env::new(sink.port, "");
    let link = env.sendmail_link();
    let out = php(&env, "/bin/false", &[], &symfony_script(&link, "-bs"));
    assert_eq!(stdout(&out), "sent\n");
    let got = sink.wait_count(2);
    for r in &got {
        assert_eq!(r.sender(), "app@example.org");
        assert_eq!(r.rcpts, ["user@x.org", "audit@x.org"]);
        assert!(r.header("Bcc").is_none());
        assert!(r.text().contains("hello\n.\nworld"), "{:?}", r.text());
    }
}

#[test]
fn symfony_mailer_bs_mode_reports_refusal() {
    let sink = Sink::start(&["-f", "RCPT"]);
    let env = Env::new(sink.port, "");
    let link = env.sendmail_link();
    let script = format!(
        r#"<?php
require '/usr/share/php/Symfony/Component/Mailer/autoload.php';
$t = new Symfony\Component\Mailer\Transport\SendmailTransport('{} -bs');
try {{
    (new Symfony\Component\Mailer\Mailer($t))->send((new Symfony\Component\Mime\Email())
        ->from('app@example.org')->to('user@x.org')->subject('s')->text('x'));
    echo "sent\n";
}} catch (Symfony\Component\Mailer\Exception\TransportExceptionInterface $e) {{
    echo "refused: ", $e->getMessage(), "\n";
}}
"#,
        link.display()
    );
    let out = php(&env, "/bin/false", &[], &script);
    let text = stdout(&out);
    assert!(text.starts_with("refused: "), "{text}");
    assert!(text.contains("554"), "{text}");
}

#[test]
fn symfony_mailer_t_mode() {
    let sink = Sink::start(&[]);
    let env = Env::new(sink.port, "");
    let link = env.sendmail_link();
    let out = php(&env, "/bin/false", &[], &symfony_script(&link, "-oi -t"));
    assert_eq!(stdout(&out), "sent\n");
    let got = sink.wait_count(2);
    for r in &got {
        assert_eq!(r.rcpts, ["user@x.org", "audit@x.org"]);
        assert!(
            r.header("Bcc").is_none(),
            "mailgate strips the Bcc that Symfony's -t mode leaves"
        );
    }
}

#[test]
fn mutt_style_call() {
    let rec = Recorder::start(Script::default());
    let env = Env::new(rec.port, "");
    let o = env.send(
        &["-oem", "-oi", "--", "a@x.org", "b@x.org"],
        b"From: me@example.org\nTo: a@x.org\nSubject: m\n\nbody\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(rec.wait_count(1)[0].rcpts, ["a@x.org", "b@x.org"]);
}
