//! The message as mailgate relays it: read from stdin (sendmail mode) or from an SMTP `DATA`
//! section (`-bs`), with any mix of LF and CRLF, kept as header fields plus a CRLF body, and
//! written back to the wire dot-stuffed. Pure code over `BufRead`/`Write`.
//!
//! Bytes are never re-encoded: 8-bit text, binary MIME parts and lines longer than 998 octets
//! pass through unchanged. Only line endings become CRLF, as SMTP requires.
//!
//! It must not know accounts, limits or the relay.

pub mod address;
pub mod origin;

use std::io::{self, BufRead, Write};

/// How the input ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminator {
    /// `-i` / `-oi`: only end-of-file ends the message.
    Eof,
    /// sendmail without `-i`: a line consisting of a single "." ends the message.
    DotLine,
    /// SMTP DATA: "." ends the message and a leading dot of any other line is removed.
    SmtpData,
}

#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// The message exceeds the configured size; the input was consumed up to its end.
    TooBig {
        limit: u64,
    },
}

/// One header field, continuation lines included, as raw bytes without the final CRLF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub raw: Vec<u8>,
}

impl Header {
    pub fn new(name: &str, value: &str) -> Header {
        Header {
            raw: format!("{name}: {value}").into_bytes(),
        }
    }

    pub fn name(&self) -> &[u8] {
        let colon = self
            .raw
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(self.raw.len());
        trim_ascii_end(&self.raw[..colon])
    }

    pub fn is(&self, name: &str) -> bool {
        self.name().eq_ignore_ascii_case(name.as_bytes())
    }

    /// The value with folding removed, decoded lossily (addresses and logging only).
    pub fn value(&self) -> String {
        let colon = self
            .raw
            .iter()
            .position(|&b| b == b':')
            .map_or(0, |c| c + 1);
        let unfolded: Vec<u8> = self.raw[colon..]
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        String::from_utf8_lossy(&unfolded).trim().to_string()
    }
}

/// A message: header fields, then a body whose lines all end in CRLF.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

/// The headers mailgate adds to a message that lacks them, and its trace header.
pub struct Trace<'a> {
    pub host: &'a str,
    pub uid: u32,
    /// RFC 5322 date of now.
    pub date: &'a str,
    pub message_id: &'a str,
    /// Address for a missing From: header.
    pub from_addr: &'a str,
    /// `-F`: display name for a missing From: header.
    pub full_name: Option<&'a str>,
}

/// Address headers whose bare local parts Postfix's cleanup qualifies for local submissions.
const ADDRESS_HEADERS: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Resent-From",
    "Resent-Sender",
    "Resent-Reply-To",
    "Resent-To",
    "Resent-Cc",
    "Errors-To",
    "Disposition-Notification-To",
];

/// Headers that never leave the machine: blind copies and a caller's forged bounce address.
const STRIPPED: &[&str] = &["Bcc", "Resent-Bcc", "Return-Path"];

pub fn read_message<R: BufRead>(
    input: &mut R,
    terminator: Terminator,
    max_size: u64,
) -> Result<Message, ReadError> {
    let mut msg = Message::default();
    let mut line = Vec::with_capacity(1024);
    let mut in_headers = true;
    let mut first = true;
    let mut size: u64 = 0;
    let mut too_big = false;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(ReadError::Io)? == 0 {
            if terminator == Terminator::SmtpData {
                // The client went away inside DATA: what arrived is a fragment, never a message.
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client ended the connection inside DATA",
                )));
            }
            break;
        }
        strip_line_ending(&mut line);
        if terminator != Terminator::Eof && line == b"." {
            break;
        }
        let mut content: &[u8] = &line;
        if terminator == Terminator::SmtpData && content.first() == Some(&b'.') {
            content = &content[1..];
        }
        if std::mem::take(&mut first)
            && terminator != Terminator::SmtpData
            && content.starts_with(b"From ")
        {
            // An mbox separator line: not part of the message.
            continue;
        }
        size += content.len() as u64 + 2;
        if size > max_size {
            too_big = true;
        }
        if too_big {
            continue;
        }
        if in_headers {
            if content.is_empty() {
                in_headers = false;
                continue;
            }
            if matches!(content[0], b' ' | b'\t') {
                if let Some(last) = msg.headers.last_mut() {
                    last.raw.extend_from_slice(b"\r\n");
                    last.raw.extend_from_slice(content);
                    continue;
                }
            } else if is_header_field(content) {
                msg.headers.push(Header {
                    raw: content.to_vec(),
                });
                continue;
            }
            // Not a header: the body begins without the empty separator line, which
            // `write_data` supplies.
            in_headers = false;
        }
        msg.body.extend_from_slice(content);
        msg.body.extend_from_slice(b"\r\n");
    }
    if too_big {
        return Err(ReadError::TooBig { limit: max_size });
    }
    Ok(msg)
}

/// Consume the rest of the input so that the writer never sees EPIPE/SIGPIPE.
pub fn drain<R: io::Read>(input: &mut R) {
    let _ = io::copy(input, &mut io::sink());
}

fn strip_line_ending(line: &mut Vec<u8>) {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
}

/// `Name: value` with a name of printable ASCII (obsolete whitespace before the colon allowed).
fn is_header_field(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = trim_ascii_end(&line[..colon]);
    !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b))
}

fn trim_ascii_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &bytes[..end]
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&Header> {
        self.headers.iter().find(|h| h.is(name))
    }

    /// Recipients for `-t`: the Resent-To/Cc/Bcc headers if any exists, else To/Cc/Bcc.
    pub fn header_recipients(&self) -> Vec<String> {
        const RESENT: [&str; 3] = ["Resent-To", "Resent-Cc", "Resent-Bcc"];
        const ORIGINAL: [&str; 3] = ["To", "Cc", "Bcc"];
        let names = if self.headers.iter().any(|h| RESENT.iter().any(|n| h.is(n))) {
            RESENT
        } else {
            ORIGINAL
        };
        self.headers
            .iter()
            .filter(|h| names.iter().any(|n| h.is(n)))
            .flat_map(|h| address::parse_list(&h.value()))
            .collect()
    }

    /// `To: root` → `To: root@origin`, as Postfix's cleanup does for local submissions, so
    /// the headers stay valid whichever relay takes the message. Only the insertion changes
    /// the header; every other byte stays.
    pub fn qualify_addresses(&mut self, origin: &str) {
        for header in &mut self.headers {
            if !ADDRESS_HEADERS.iter().any(|n| header.is(n)) {
                continue;
            }
            let Some(colon) = header.raw.iter().position(|&b| b == b':') else {
                continue;
            };
            let value_start = colon + 1;
            let ends = address::unqualified_ends(&header.raw[value_start..]);
            for end in ends.into_iter().rev() {
                let at = value_start + end;
                header.raw.splice(at..at, format!("@{origin}").into_bytes());
            }
        }
    }

    /// Remove blind-copy and Return-Path headers, add Date, Message-ID and From where missing,
    /// and prepend mailgate's Received trace header.
    pub fn complete_headers(&mut self, trace: &Trace<'_>) {
        self.headers.retain(|h| !STRIPPED.iter().any(|n| h.is(n)));
        if self.header("From").is_none() {
            let from = match trace.full_name.map(quote_phrase) {
                Some(name) if !name.is_empty() => {
                    format!("{name} <{}>", trace.from_addr)
                }
                _ => trace.from_addr.to_string(),
            };
            self.headers.push(Header::new("From", &from));
        }
        if self.header("Date").is_none() {
            self.headers.push(Header::new("Date", trace.date));
        }
        if self.header("Message-ID").is_none() {
            self.headers
                .push(Header::new("Message-ID", trace.message_id));
        }
        let received = format!(
            "by {} (mailgate, from userid {});\r\n\t{}",
            trace.host, trace.uid, trace.date
        );
        self.headers.insert(0, Header::new("Received", &received));
    }

    /// Bytes of the message as it goes on the wire before dot-stuffing.
    pub fn size(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|h| h.raw.len() + 2).sum();
        (headers + 2 + self.body.len()) as u64
    }

    pub fn has_8bit(&self) -> bool {
        self.headers.iter().any(|h| !h.raw.is_ascii()) || !self.body.is_ascii()
    }

    /// The message as a relay without 8BITMIME may take it, as Postfix converts: a single-part
    /// text (or untyped) body with 8-bit bytes becomes quoted-printable. `Err` says why a
    /// message cannot be converted (8-bit headers, multipart or binary bodies): then it waits.
    pub fn to_seven_bit(&self) -> Result<Message, String> {
        if self.headers.iter().any(|h| !h.raw.is_ascii()) {
            return Err("8-bit characters in a header".into());
        }
        let content_type = self
            .header("Content-Type")
            .map(|h| h.value().to_ascii_lowercase())
            .unwrap_or_default();
        if !(content_type.is_empty() || content_type.starts_with("text/")) {
            return Err(format!("8-bit {content_type} body"));
        }
        let encoding = self
            .header("Content-Transfer-Encoding")
            .map(|h| h.value().to_ascii_lowercase())
            .unwrap_or_default();
        if !matches!(encoding.as_str(), "" | "7bit" | "8bit") {
            return Err(format!("8-bit data in a {encoding} body"));
        }
        let mut out = self.clone();
        out.headers.retain(|h| !h.is("Content-Transfer-Encoding"));
        if out.header("MIME-Version").is_none() {
            out.headers.push(Header::new("MIME-Version", "1.0"));
        }
        if out.header("Content-Type").is_none() {
            // RFC 2045 would read an untyped body as US-ASCII; UTF-8 is what it most likely is.
            out.headers
                .push(Header::new("Content-Type", "text/plain; charset=UTF-8"));
        }
        out.headers
            .push(Header::new("Content-Transfer-Encoding", "quoted-printable"));
        out.body = quoted_printable(&self.body);
        Ok(out)
    }

    /// The message as canonical CRLF text: headers, empty line, body.
    pub fn write_to<W: Write>(&self, out: &mut W) -> io::Result<()> {
        for h in &self.headers {
            out.write_all(&h.raw)?;
            out.write_all(b"\r\n")?;
        }
        out.write_all(b"\r\n")?;
        out.write_all(&self.body)
    }

    /// The SMTP DATA section: dot-stuffed, ending in ".\r\n".
    pub fn write_data<W: Write>(&self, out: &mut W) -> io::Result<()> {
        let mut stuffer = DotStuffer {
            inner: out,
            at_line_start: true,
        };
        self.write_to(&mut stuffer)?;
        out.write_all(b".\r\n")
    }
}

/// RFC 2045 6.7 quoted-printable of a CRLF body: lines of at most 76 characters, trailing
/// whitespace encoded, hard line breaks kept.
fn quoted_printable(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 8);
    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    let last = lines.len() - 1;
    for (n, raw) in lines.into_iter().enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if n == last && line.is_empty() {
            break; // the body's final CRLF was already written
        }
        let mut width = 0;
        for (i, &b) in line.iter().enumerate() {
            let at_end = i + 1 == line.len();
            let literal =
                (b == b' ' || b == b'\t') && !at_end || (33..=126).contains(&b) && b != b'=';
            let piece: Vec<u8> = if literal {
                vec![b]
            } else {
                format!("={b:02X}").into_bytes()
            };
            if width + piece.len() > 75 {
                out.extend_from_slice(b"=\r\n");
                width = 0;
            }
            out.extend_from_slice(&piece);
            width += piece.len();
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `-F "Cron Daemon"` needs no quotes; `-F "Doe, John"` does. Control characters (CR/LF
/// would inject headers) are dropped: the name comes from the caller.
fn quote_phrase(name: &str) -> String {
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    let name = name.trim();
    let plain = name
        .chars()
        .all(|c| c.is_alphanumeric() || c == ' ' || "!#$%&'*+-/=?^_`{|}~".contains(c));
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Doubles a dot at the start of every line (RFC 5321 4.5.2).
struct DotStuffer<'a, W: Write> {
    inner: &'a mut W,
    at_line_start: bool,
}

impl<W: Write> Write for DotStuffer<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.at_line_start && buf[0] == b'.' {
                self.inner.write_all(b".")?;
            }
            let end = buf
                .iter()
                .position(|&b| b == b'\n')
                .map_or(buf.len(), |p| p + 1);
            self.inner.write_all(&buf[..end])?;
            self.at_line_start = buf[end - 1] == b'\n';
            buf = &buf[end..];
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8], t: Terminator) -> Message {
        read_message(&mut &input[..], t, u64::MAX).expect("readable")
    }

    fn wire(msg: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        msg.write_data(&mut out).unwrap();
        out
    }

    #[test]
    fn mixed_line_endings_become_crlf() {
        let m = read(
            b"Subject: a\r\nTo: b@x\n\nline1\nline2\r\nlast",
            Terminator::Eof,
        );
        assert_eq!(m.headers.len(), 2);
        assert_eq!(m.body, b"line1\r\nline2\r\nlast\r\n");
    }

    #[test]
    fn dot_handling() {
        let input = b"Subject: a\n\n.hidden\n.\nafter\n";
        let with_i = read(input, Terminator::Eof);
        assert_eq!(with_i.body, b".hidden\r\n.\r\nafter\r\n");
        assert_eq!(
            wire(&with_i),
            b"Subject: a\r\n\r\n..hidden\r\n..\r\nafter\r\n.\r\n"
        );
        let without_i = read(input, Terminator::DotLine);
        assert_eq!(without_i.body, b".hidden\r\n");
        let smtp = read(b"Subject: a\r\n\r\n..x\r\n.\r\nnext", Terminator::SmtpData);
        assert_eq!(smtp.body, b".x\r\n");
    }

    #[test]
    fn from_line_folding_and_missing_separator() {
        let m = read(
            b"From someone Sat Jan  1 00:00:00 2000\nTo: a@x,\n  b@y\nbody without blank\n",
            Terminator::Eof,
        );
        assert_eq!(m.headers.len(), 1);
        assert_eq!(m.headers[0].raw, b"To: a@x,\r\n  b@y");
        assert_eq!(m.header_recipients(), ["a@x", "b@y"]);
        assert_eq!(
            m.headers[0].value(),
            "a@x,  b@y",
            "unfolded: no CR or LF left"
        );
        assert_eq!(m.body, b"body without blank\r\n");
        assert_eq!(
            wire(&m),
            b"To: a@x,\r\n  b@y\r\n\r\nbody without blank\r\n.\r\n"
        );
    }

    #[test]
    fn resent_headers_take_precedence() {
        let m = read(
            b"To: a@x\nCc: b@x\nResent-To: r@x\nResent-Bcc: s@x\n\n",
            Terminator::Eof,
        );
        assert_eq!(m.header_recipients(), ["r@x", "s@x"]);
        let n = read(b"To: a@x\nCc: b@x\nBcc: c@x\n\n", Terminator::Eof);
        assert_eq!(n.header_recipients(), ["a@x", "b@x", "c@x"]);
    }

    #[test]
    fn eight_bit_and_long_lines_unchanged() {
        let mut input = b"Subject: \xe4\xf6\n\n".to_vec();
        let long = vec![b'x'; 5000];
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\n\x00\xff\n");
        let m = read(&input, Terminator::Eof);
        assert!(m.has_8bit());
        let mut expected = long.clone();
        expected.extend_from_slice(b"\r\n\x00\xff\r\n");
        assert_eq!(m.body, expected);
    }

    #[test]
    fn complete_headers_strips_and_adds() {
        let mut m = read(
            b"To: a@x\nBcc: hidden@x\nReturn-Path: <forged@x>\nresent-bcc: h2@x\n\nhi\n",
            Terminator::Eof,
        );
        m.complete_headers(&Trace {
            host: "web1.example",
            uid: 1000,
            date: "Sat, 28 Nov 2026 01:00:00 +0000",
            message_id: "<id@web1.example>",
            from_addr: "web1@example.org",
            full_name: Some("Doe, John"),
        });
        let names: Vec<String> = m
            .headers
            .iter()
            .map(|h| String::from_utf8_lossy(h.name()).into_owned())
            .collect();
        assert_eq!(names, ["Received", "To", "From", "Date", "Message-ID"]);
        assert_eq!(
            m.header("From").unwrap().value(),
            "\"Doe, John\" <web1@example.org>"
        );
        assert!(
            m.header("Received")
                .unwrap()
                .value()
                .contains("from userid 1000")
        );
    }

    #[test]
    fn bare_local_addresses_are_qualified_like_postfix_cleanup() {
        // cron (Debian's cron 3.0) and logwatch, verbatim.
        let mut cron = read(
            b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@vm> run-parts\n\
              X-Cron-Env: <MAILTO=root>\n\nout\n",
            Terminator::Eof,
        );
        cron.qualify_addresses("vm.localdomain");
        let text = String::from_utf8(wire(&cron)).unwrap();
        assert!(
            text.starts_with(
                "From: root@vm.localdomain (Cron Daemon)\r\nTo: root@vm.localdomain\r\n\
                 Subject: Cron <root@vm> run-parts\r\nX-Cron-Env: <MAILTO=root>\r\n"
            ),
            "{text}"
        );
        let mut logwatch = read(
            b"To: root\nFrom: Logwatch\nReply-To: Team: a, b@x;\nCc: \"Ops\" <ops>\n\nx\n",
            Terminator::Eof,
        );
        logwatch.qualify_addresses("example.net");
        let names: Vec<String> = logwatch.headers.iter().map(|h| h.value()).collect();
        assert_eq!(
            names,
            [
                "root@example.net",
                "Logwatch@example.net",
                "Team: a@example.net, b@x;",
                "\"Ops\" <ops@example.net>"
            ]
        );
    }

    /// The From: header that `complete_headers` adds for `full_name`.
    fn added_from(full_name: &str) -> Vec<u8> {
        let mut m = read(b"To: a@x\n\nbody\n", Terminator::Eof);
        m.complete_headers(&Trace {
            host: "h",
            uid: 1,
            date: "d",
            message_id: "<m@h>",
            from_addr: "web1@h",
            full_name: Some(full_name),
        });
        m.header("From").unwrap().raw.clone()
    }

    #[test]
    fn added_from_carries_a_sanitised_full_name() {
        assert_eq!(
            added_from("Evil\r\nBcc: x@y"),
            b"From: \"EvilBcc: x@y\" <web1@h>".to_vec()
        );
    }

    #[test]
    fn an_empty_full_name_gives_a_bare_from() {
        assert_eq!(added_from("\r\n"), b"From: web1@h".to_vec());
    }

    #[test]
    fn size_is_the_wire_size_and_the_limit_is_exact() {
        let input = b"A: b\nC: d\n\nx\nyz\n";
        let m = read(input, Terminator::Eof);
        // Headers with CRLF, the empty line, the body: what goes out before the final dot.
        assert_eq!(m.size(), 6 + 6 + 2 + 3 + 4);
        assert_eq!(m.size() as usize, wire(&m).len() - 3);
        assert!(read_message(&mut &input[..], Terminator::Eof, 21).is_ok());
        assert!(matches!(
            read_message(&mut &input[..], Terminator::Eof, 20),
            Err(ReadError::TooBig { limit: 20 })
        ));
    }

    #[test]
    fn drain_reads_everything() {
        let mut rest = std::io::Cursor::new(vec![7u8; 100_000]);
        drain(&mut rest);
        assert_eq!(rest.position(), 100_000);
    }

    #[test]
    fn header_names_are_printable_and_not_empty() {
        assert!(is_header_field(b"Subject: x"));
        assert!(
            is_header_field(b"Subject : x"),
            "obsolete space before the colon"
        );
        assert!(!is_header_field(b": x"));
        assert!(!is_header_field(b"a b: x"));
        assert!(!is_header_field(b"no colon"));
    }

    #[test]
    fn eight_bit_text_becomes_quoted_printable_for_a_seven_bit_relay() {
        let body = "Grüße aus Köln = 100 % \n.dot\n".to_string() + &"x".repeat(80) + "\n";
        let m = read(format!("Subject: x\n\n{body}").as_bytes(), Terminator::Eof);
        let seven = m.to_seven_bit().unwrap();
        assert!(!seven.has_8bit());
        let text = String::from_utf8(wire(&seven)).unwrap();
        assert!(
            text.contains("Content-Transfer-Encoding: quoted-printable\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Gr=C3=BC=C3=9Fe aus K=C3=B6ln =3D 100 %=20\r\n"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.len() <= 76), "{text}");
        // Decoding gives the body back.
        let qp = &seven.body;
        let mut decoded = Vec::new();
        let mut i = 0;
        while i < qp.len() {
            if qp[i] == b'=' && qp.get(i + 1) == Some(&b'\r') {
                i += 3;
            } else if qp[i] == b'=' {
                let hex = std::str::from_utf8(&qp[i + 1..i + 3]).unwrap();
                decoded.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                decoded.push(qp[i]);
                i += 1;
            }
        }
        assert_eq!(decoded, m.body);
    }

    #[test]
    fn seven_bit_conversion_keeps_the_other_headers_and_blank_lines() {
        let m = read(
            "Subject: x\nContent-Transfer-Encoding: 8bit\n\nGr\u{fc}\u{df}e\n\nend\n".as_bytes(),
            Terminator::Eof,
        );
        let seven = m.to_seven_bit().unwrap();
        let text = String::from_utf8(wire(&seven)).unwrap();
        assert!(text.starts_with("Subject: x\r\n"), "{text}");
        assert_eq!(
            seven
                .headers
                .iter()
                .filter(|h| h.is("Content-Transfer-Encoding"))
                .count(),
            1,
            "{text}"
        );
        assert!(
            text.ends_with("\r\n\r\nGr=C3=BC=C3=9Fe\r\n\r\nend\r\n.\r\n"),
            "{text}"
        );
    }

    #[test]
    fn quoted_printable_lines_hold_76_characters_at_most() {
        let exactly = quoted_printable(format!("{}\r\n", "x".repeat(75)).as_bytes());
        assert_eq!(exactly, format!("{}\r\n", "x".repeat(75)).into_bytes());
        let over = quoted_printable(format!("{}\r\n", "x".repeat(76)).as_bytes());
        assert_eq!(over, format!("{}=\r\nx\r\n", "x".repeat(75)).into_bytes());
    }

    #[test]
    fn phrases_are_quoted_only_when_needed() {
        assert_eq!(quote_phrase("Cron Daemon"), "Cron Daemon");
        assert_eq!(quote_phrase("O'Brien-Smith!"), "O'Brien-Smith!");
        assert_eq!(quote_phrase("J\u{f6}rg"), "J\u{f6}rg");
        assert_eq!(quote_phrase("Doe, John"), "\"Doe, John\"");
        assert_eq!(quote_phrase("a \"b\" \\c"), "\"a \\\"b\\\" \\\\c\"");
    }

    #[test]
    fn eight_bit_is_found_in_headers_and_body() {
        assert!(!read(b"A: b\n\nc\n", Terminator::Eof).has_8bit());
        assert!(read("A: b\n\n\u{e9}\n".as_bytes(), Terminator::Eof).has_8bit());
        assert!(read("A: \u{e9}\n\nc\n".as_bytes(), Terminator::Eof).has_8bit());
    }

    /// A writer that records what it gets and how often it is flushed.
    #[derive(Default)]
    struct Recording {
        bytes: Vec<u8>,
        flushes: usize,
    }

    impl Write for Recording {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.flushes += 1;
            Ok(())
        }
    }

    #[test]
    fn the_dot_stuffer_is_a_whole_writer() {
        let mut inner = Recording::default();
        let mut stuffer = DotStuffer {
            inner: &mut inner,
            at_line_start: true,
        };
        assert_eq!(stuffer.write(b".a\r\n.b").unwrap(), 6);
        let last = 'c';
        write!(stuffer, "\r\n.{last}").unwrap();
        stuffer.flush().unwrap();
        assert_eq!(inner.bytes, b"..a\r\n..b\r\n..c");
        assert_eq!(inner.flushes, 1);
    }

    #[test]
    fn what_cannot_be_converted_says_why() {
        let header = read("Subject: Grüße\n\nx\n".as_bytes(), Terminator::Eof);
        assert!(header.to_seven_bit().unwrap_err().contains("header"));
        let binary = read(
            "Content-Type: application/octet-stream\n\n\u{e9}\n".as_bytes(),
            Terminator::Eof,
        );
        assert!(binary.to_seven_bit().is_err());
    }

    #[test]
    fn too_big_consumes_input() {
        let input = b"Subject: a\n\n0123456789\n0123456789\n.\nrest\n";
        let mut cursor = &input[..];
        let err = read_message(&mut cursor, Terminator::SmtpData, 20).unwrap_err();
        assert!(matches!(err, ReadError::TooBig { limit: 20 }));
        assert_eq!(cursor, b"rest\n");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(input in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            for t in [Terminator::Eof, Terminator::DotLine, Terminator::SmtpData] {
                if let Ok(m) = read_message(&mut &input[..], t, 1 << 20) {
                    let _ = m.header_recipients();
                    let _ = wire(&m);
                }
            }
        }

        #[test]
        fn dot_stuffing_round_trips(body_lines in proptest::collection::vec("[.a-z ]{0,6}", 0..10)) {
            let mut input = b"Subject: s\n\n".to_vec();
            for l in &body_lines {
                input.extend_from_slice(l.as_bytes());
                input.push(b'\n');
            }
            let m = read(&input, Terminator::Eof);
            let data = wire(&m);
            let back = read(&data, Terminator::SmtpData);
            proptest::prop_assert_eq!(back, m);
        }
    }
}
