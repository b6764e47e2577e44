//! `sendmail -bs`: server-side SMTP on stdin/stdout, as Symfony Mailer (and so Laravel and
//! Drupal) speak it by default. Each message goes through the same pipeline as sendmail mode
//! and the reply to the final "." is its real outcome. Nothing is ever written to stderr.

use crate::message::address;
use crate::message::{self, ReadError, Terminator};
use crate::pipeline::Submission;
use std::io::{self, BufRead, Write};

/// Longest command line accepted (RFC 5321 allows 512; extensions make it longer).
const MAX_LINE: usize = 4096;
const MAX_RECIPIENTS: usize = 1000;

pub struct Server<'a> {
    pub hostname: &'a str,
    pub max_size: u64,
    /// `Some(reply)` when mailgate cannot send at all (broken config, refused account): the
    /// greeting says so and every transaction is refused with it.
    pub unavailable: Option<String>,
}

#[derive(Default)]
struct Transaction {
    /// `Some(None)` is the null sender.
    sender: Option<Option<String>>,
    recipients: Vec<String>,
}

impl Server<'_> {
    /// Run one session until QUIT or end of input. `deliver` returns the reply to the final ".".
    /// Long on purpose: one arm per SMTP command, the session's state machine in one place.
    pub fn run<R: BufRead, W: Write>(
        &self,
        input: &mut R,
        output: &mut W,
        deliver: &mut dyn FnMut(Submission) -> String,
    ) -> io::Result<()> {
        let greeting = match &self.unavailable {
            Some(why) => format!("554 5.3.5 {why}"),
            None => format!("220 {} ESMTP mailgate", self.hostname),
        };
        reply(output, &greeting)?;
        output.flush()?;
        let mut tx = Transaction::default();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = match <&mut R as io::Read>::take(&mut *input, MAX_LINE as u64)
                .read_until(b'\n', &mut line)
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return self.idle(output),
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(());
            }
            if line.last() != Some(&b'\n') && n == MAX_LINE {
                // Skip the rest of an overlong line.
                let mut rest = Vec::new();
                input.read_until(b'\n', &mut rest)?;
                reply(output, "500 5.5.2 Line too long")?;
                output.flush()?;
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let (verb, arg) = match text.split_once(' ') {
                Some((v, a)) => (v.to_ascii_uppercase(), a.trim()),
                None => (text.to_ascii_uppercase(), ""),
            };
            let answer = match verb.as_str() {
                "EHLO" => {
                    tx = Transaction::default();
                    format!(
                        "250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES",
                        self.hostname, self.max_size
                    )
                }
                "HELO" => {
                    tx = Transaction::default();
                    format!("250 {}", self.hostname)
                }
                "MAIL" => self.mail(&mut tx, arg),
                "RCPT" => rcpt(&mut tx, arg),
                "DATA" => {
                    if let Some(refusal) = data_refusal(&tx, self.unavailable.as_deref()) {
                        refusal
                    } else {
                        reply(output, "354 End data with <CR><LF>.<CR><LF>")?;
                        output.flush()?;
                        let tx = std::mem::take(&mut tx);
                        match message::read_message(input, Terminator::SmtpData, self.max_size) {
                            Ok(message) => deliver(Submission {
                                sender: tx.sender,
                                recipients: tx.recipients,
                                full_name: None,
                                message,
                            }),
                            Err(ReadError::TooBig { limit }) => {
                                format!("552 5.3.4 Message exceeds the size limit of {limit} bytes")
                            }
                            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
                                return self.idle(output);
                            }
                            Err(ReadError::Io(e)) => return Err(e),
                        }
                    }
                }
                "RSET" => {
                    tx = Transaction::default();
                    "250 2.0.0 Ok".into()
                }
                "NOOP" => "250 2.0.0 Ok".into(),
                "VRFY" => {
                    "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery"
                        .into()
                }
                "HELP" => "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP VRFY QUIT".into(),
                "QUIT" => {
                    reply(output, "221 2.0.0 Bye")?;
                    return output.flush();
                }
                "" => "500 5.5.2 Error: empty command".into(),
                _ => "502 5.5.2 Error: command not recognized".into(),
            };
            reply(output, &answer)?;
            output.flush()?;
        }
    }

    /// The client said nothing for the idle timeout: close as Postfix's smtpd does. A message
    /// being received is dropped.
    fn idle<W: Write>(&self, output: &mut W) -> io::Result<()> {
        reply(
            output,
            &format!("421 4.4.2 {} Error: timeout exceeded", self.hostname),
        )?;
        output.flush()
    }

    fn mail(&self, tx: &mut Transaction, arg: &str) -> String {
        if let Some(why) = &self.unavailable {
            return format!("554 5.3.5 {why}");
        }
        if tx.sender.is_some() {
            return "503 5.5.1 Error: nested MAIL command".into();
        }
        let Some(path) = strip_keyword(arg, "FROM:") else {
            return "501 5.5.4 Syntax: MAIL FROM:<address>".into();
        };
        let (addr, params) = split_path(path);
        if let Some(size) = params.split_whitespace().find_map(|p| {
            p.to_ascii_uppercase()
                .strip_prefix("SIZE=")
                .map(str::to_string)
        }) && size.parse::<u64>().is_ok_and(|s| s > self.max_size)
        {
            return "552 5.3.4 Message size exceeds fixed limit".into();
        }
        match address::parse_sender(addr) {
            Ok(sender) => {
                tx.sender = Some(sender);
                "250 2.1.0 Ok".into()
            }
            Err(f) => format!("501 5.1.7 {}", f.message),
        }
    }
}

fn rcpt(tx: &mut Transaction, arg: &str) -> String {
    if tx.sender.is_none() {
        return "503 5.5.1 Error: need MAIL command".into();
    }
    let Some(path) = strip_keyword(arg, "TO:") else {
        return "501 5.5.4 Syntax: RCPT TO:<address>".into();
    };
    if tx.recipients.len() >= MAX_RECIPIENTS {
        return "452 4.5.3 Error: too many recipients".into();
    }
    let (addr, _params) = split_path(path);
    if let Err(why) = address::check_raw_address(addr) {
        return format!("501 5.1.3 Bad recipient address syntax: {why}");
    }
    let Some(addr) = address::parse_single(addr) else {
        return "501 5.1.3 Bad recipient address syntax".into();
    };
    if let Err(why) = address::check_address(&addr) {
        return format!("501 5.1.3 Bad recipient address syntax: {why}");
    }
    tx.recipients.push(addr);
    "250 2.1.5 Ok".into()
}

fn data_refusal(tx: &Transaction, unavailable: Option<&str>) -> Option<String> {
    if let Some(why) = unavailable {
        return Some(format!("554 5.3.5 {why}"));
    }
    if tx.sender.is_none() {
        return Some("503 5.5.1 Error: need MAIL command".into());
    }
    if tx.recipients.is_empty() {
        return Some("554 5.5.1 Error: no valid recipients".into());
    }
    None
}

/// `FROM:<a@x> SIZE=10` with the keyword matched case-insensitively and optional space.
fn strip_keyword<'a>(arg: &'a str, keyword: &str) -> Option<&'a str> {
    let head = arg.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| arg[keyword.len()..].trim_start())
}

/// `<a@x> SIZE=10` → (`<a@x>`, `SIZE=10`).
fn split_path(path: &str) -> (&str, &str) {
    if path.starts_with('<')
        && let Some(end) = path.find('>')
    {
        return (&path[..=end], path[end + 1..].trim());
    }
    match path.split_once(' ') {
        Some((a, p)) => (a, p.trim()),
        None => (path, ""),
    }
}

fn reply<W: Write>(output: &mut W, text: &str) -> io::Result<()> {
    output.write_all(text.as_bytes())?;
    output.write_all(b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str) -> (String, Vec<Submission>) {
        let server = Server {
            hostname: "web1.example",
            max_size: 1000,
            unavailable: None,
        };
        let mut out = Vec::new();
        let mut got = Vec::new();
        server
            .run(&mut input.as_bytes(), &mut out, &mut |s| {
                got.push(s);
                "250 2.0.0 Ok: queued as X".into()
            })
            .unwrap();
        (String::from_utf8(out).unwrap(), got)
    }

    fn codes(out: &str) -> Vec<&str> {
        out.lines()
            .filter(|l| l.as_bytes().get(3) != Some(&b'-'))
            .map(|l| &l[..3])
            .collect()
    }

    #[test]
    fn paths_and_their_parameters() {
        assert_eq!(
            split_path("<a@x> SIZE=10 BODY=8BITMIME"),
            ("<a@x>", "SIZE=10 BODY=8BITMIME")
        );
        assert_eq!(split_path("<a@x>"), ("<a@x>", ""));
        assert_eq!(split_path("a@x SIZE=10"), ("a@x", "SIZE=10"));
        assert_eq!(split_path("a@x"), ("a@x", ""));
    }

    #[test]
    fn every_command_gets_its_own_reply() {
        let long = "x".repeat(MAX_LINE + 10);
        let (out, got) = run(&format!(
            "HELO c\r\nNOOP\r\nHELP\r\n\r\nMAIL FROM:<a@x> SIZE=1000\r\nRSET\r\n\
             MAIL FROM:<a@x> SIZE=1001\r\n{long}\r\nVRFY a\r\nBOGUS\r\nQUIT\r\n"
        ));
        assert_eq!(
            codes(&out),
            [
                "220", "250", "250", "214", "500", "250", "250", "552", "500", "252", "502", "221"
            ],
            "{out}"
        );
        assert!(out.contains("250 web1.example\r\n"), "{out}");
        assert!(out.contains("500 5.5.2 Line too long"), "{out}");
        assert!(got.is_empty());
        // A last command without its line ending is a command, not an overlong line.
        let (out, _) = run("HELO c\r\nQUIT");
        assert_eq!(codes(&out), ["220", "250", "221"], "{out}");
    }

    /// Reads the script, then fails with `kind` (a client gone quiet, or a broken pipe).
    struct Then<'a> {
        script: &'a [u8],
        kind: io::ErrorKind,
    }

    impl io::Read for Then<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.script.is_empty() {
                return Err(io::Error::new(self.kind, "test"));
            }
            let n = buf.len().min(self.script.len());
            buf[..n].copy_from_slice(&self.script[..n]);
            self.script = &self.script[n..];
            Ok(n)
        }
    }

    #[test]
    fn an_idle_client_gets_421_and_other_errors_end_the_session() {
        let server = Server {
            hostname: "h",
            max_size: 1000,
            unavailable: None,
        };
        for (script, kind, idle) in [
            (&b"EHLO c\r\n"[..], io::ErrorKind::TimedOut, true),
            (
                b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nSubject: x\r\n",
                io::ErrorKind::TimedOut,
                true,
            ),
            (b"EHLO c\r\n", io::ErrorKind::BrokenPipe, false),
        ] {
            let mut input = io::BufReader::new(Then { script, kind });
            let mut out = Vec::new();
            let mut delivered = 0;
            let result = server.run(&mut input, &mut out, &mut |_| {
                delivered += 1;
                "250 2.0.0 Ok".into()
            });
            let out = String::from_utf8(out).unwrap();
            assert_eq!(delivered, 0);
            if idle {
                assert!(result.is_ok(), "{out}");
                assert!(
                    out.ends_with("421 4.4.2 h Error: timeout exceeded\r\n"),
                    "{out}"
                );
            } else {
                assert_eq!(result.unwrap_err().kind(), kind);
                assert!(!out.contains("421"), "{out}");
            }
        }
    }

    #[test]
    fn end_of_input_inside_data_delivers_nothing() {
        for tail in ["", "Subject: cut\r\n\r\nhalf a bo", "x\r\nQUIT\r\n"] {
            let server = Server {
                hostname: "h",
                max_size: 1000,
                unavailable: None,
            };
            let input = format!("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n{tail}");
            let mut out = Vec::new();
            let mut delivered = 0;
            let result = server.run(&mut input.as_bytes(), &mut out, &mut |_| {
                delivered += 1;
                "250 2.0.0 Ok".into()
            });
            assert_eq!(delivered, 0, "{tail:?}");
            assert_eq!(
                result.unwrap_err().kind(),
                io::ErrorKind::UnexpectedEof,
                "{tail:?}"
            );
        }
    }

    #[test]
    fn two_transactions_in_one_session() {
        let (out, got) = run(
            "EHLO c\r\nMAIL FROM:<a@x> SIZE=10\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\nSubject: 1\r\n\r\n..dot\r\n.\r\n\
             MAIL FROM:<>\r\nRCPT TO:<d@x>\r\nDATA\r\nSubject: 2\r\n\r\nx\r\n.\r\nVRFY z\r\nNOOP\r\nRSET\r\nQUIT\r\n",
        );
        assert!(out.starts_with("220 web1.example ESMTP"), "{out}");
        assert!(
            out.contains("250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME"),
            "{out}"
        );
        assert_eq!(out.matches("250 2.0.0 Ok: queued as X").count(), 2);
        assert!(
            out.contains("252 2.0.0") && out.ends_with("221 2.0.0 Bye\r\n"),
            "{out}"
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].sender, Some(Some("a@x".into())));
        assert_eq!(got[0].recipients, ["b@x", "c@x"]);
        assert_eq!(got[0].message.body, b".dot\r\n");
        assert_eq!(got[1].sender, Some(None));
    }

    #[test]
    fn sequence_errors_and_sizes() {
        let (out, got) = run(
            "HELO c\r\nRCPT TO:<b@x>\r\nDATA\r\nMAIL FROM:<a@x> SIZE=5000\r\nMAIL FROM:<a@x>\r\nMAIL FROM:<a@x>\r\nDATA\r\nRCPT TO:<\"a\r\nb\"@x>\r\nBOGUS\r\n",
        );
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(&lines[2][..3], "503");
        assert_eq!(&lines[3][..3], "503");
        assert_eq!(&lines[4][..3], "552");
        assert_eq!(&lines[5][..3], "250");
        assert_eq!(&lines[6][..3], "503");
        assert_eq!(&lines[7][..3], "554");
        assert!(got.is_empty());
        assert!(out.contains("502 5.5.2"), "{out}");
    }

    #[test]
    fn unavailable_refuses_everything() {
        let server = Server {
            hostname: "h",
            max_size: 100,
            unavailable: Some("config broken".into()),
        };
        let mut out = Vec::new();
        server
            .run(
                &mut &b"EHLO x\r\nMAIL FROM:<a@x>\r\nQUIT\r\n"[..],
                &mut out,
                &mut |_| unreachable!(),
            )
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("554 5.3.5 config broken"));
        assert!(out.contains("\r\n554 5.3.5 config broken\r\n221"), "{out}");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(input in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let server = Server { hostname: "h", max_size: 100, unavailable: None };
            let mut out = Vec::new();
            let _ = server.run(&mut &input[..], &mut out, &mut |_| "250 ok".into());
        }

        #[test]
        fn command_soup_never_panics(cmds in proptest::collection::vec(proptest::sample::select(vec![
            "EHLO x", "HELO", "MAIL FROM:<a@x>", "MAIL FROM:", "MAIL", "RCPT TO:<b@x>", "RCPT TO:", "DATA",
            ".", "Subject: x", "", "RSET", "NOOP", "VRFY", "QUIT", "mail from:<>", "rcpt to:b@x"]), 0..30)) {
            let input = cmds.join("\r\n");
            let server = Server { hostname: "h", max_size: 100, unavailable: None };
            let mut out = Vec::new();
            let _ = server.run(&mut input.as_bytes(), &mut out, &mut |_| "250 ok".into());
        }
    }
}
