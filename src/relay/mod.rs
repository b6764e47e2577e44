//! The SMTP client that hands a message to the relay (the seed's second Postfix instance).
//!
//! Hand-written instead of lettre because mailgate needs (1) each RCPT's own outcome, so that a
//! partially rejected message still goes to the accepted recipients (lettre aborts the
//! transaction at the first rejected RCPT), (2) TCP_NODELAY, without which the DATA dot waits
//! ~40 ms on Nagle + delayed ACK, and (3) one deadline for the whole transaction, not per read.
//! With PIPELINING, MAIL, every RCPT and DATA go out in one write.
//!
//! Two ways in: TCP (the bypass lane's listener, 127.0.0.1:825, where postfwd counts), or
//! mailgate's own lane, a Unix socket only group mailgate can reach (`[relay] socket`).
//!
//! It says what the relay answered and what that means (`disposition`); it must not keep,
//! count or log a message — the pipeline and the queue runner carry the disposition out.

pub mod disposition;
pub mod queue_id;
mod sockdiag;

pub use disposition::Disposition;

use crate::message::Message;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// One SMTP reply (multi-line replies joined with a space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text.replace('\n', " "))
    }
}

pub struct Envelope<'a> {
    /// `None` is the null sender `<>`.
    pub sender: Option<&'a str>,
    pub recipients: &'a [String],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The relay took the message for at least one recipient.
    Delivered {
        reply: Reply,
        rejected: Vec<(String, Reply)>,
    },
    /// 5xx: the relay will never take it as it is.
    Permanent(String),
    /// 4xx for the message as a whole: may work later.
    Temporary(String),
    /// No connection, a timeout, a broken dialogue: the relay itself is not working now, so
    /// `queue run` stops trying it for the rest of the run.
    Unreachable(String),
}

/// Transactions per message when the relay takes only some recipients at a time (452).
const MAX_TRANSACTIONS: usize = 1000;

pub struct Relay<'a> {
    pub host: &'a str,
    pub port: u16,
    /// mailgate's own lane: when set, `host` and `port` are not used.
    pub socket: Option<&'a Path>,
    pub timeout: Duration,
    pub helo: &'a str,
    /// Uids that may accept the relay connection when the relay is on this host; empty: no
    /// check.
    pub trusted_owners: &'a [u32],
}

impl Relay<'_> {
    /// Relay `msg` to every recipient and say what becomes of it. A relay that answers 452 (too many recipients) to some
    /// RCPTs after taking others gets the rest in further transactions; every other refused
    /// recipient is reported in `Delivered::rejected` with its own reply, 4xx ones included,
    /// so that the caller keeps them for a retry.
    pub fn send(&self, env: &Envelope<'_>, msg: &Message) -> Disposition {
        self.send_all(env, msg).disposition()
    }

    fn send_all(&self, env: &Envelope<'_>, msg: &Message) -> Answer {
        let mut pending: Vec<String> = env.recipients.to_vec();
        let mut delivered: Option<Reply> = None;
        let mut rejected: Vec<(String, Reply)> = Vec::new();
        for _ in 0..MAX_TRANSACTIONS {
            let outcome = self.transaction_with_deadline(
                &Envelope {
                    sender: env.sender,
                    recipients: &pending,
                },
                msg,
            );
            match outcome {
                Answer::Delivered {
                    reply,
                    rejected: refused,
                } => {
                    delivered.get_or_insert(reply);
                    pending = split_too_many(refused, &mut rejected);
                    if pending.is_empty() {
                        break;
                    }
                }
                // The first transaction decides alone unless it delivered something.
                other if delivered.is_none() => return other,
                Answer::Permanent(why) => {
                    let reply = Reply {
                        code: 554,
                        text: why,
                    };
                    rejected.extend(pending.drain(..).map(|r| (r, reply.clone())));
                    break;
                }
                Answer::Temporary(why) | Answer::Unreachable(why) => {
                    let reply = Reply {
                        code: 451,
                        text: why,
                    };
                    rejected.extend(pending.drain(..).map(|r| (r, reply.clone())));
                    break;
                }
            }
        }
        // Still over the relay's recipient limit after MAX_TRANSACTIONS: retried later.
        let reply = Reply {
            code: 452,
            text: "too many recipients for one run".into(),
        };
        rejected.extend(pending.into_iter().map(|r| (r, reply.clone())));
        match delivered {
            Some(reply) => Answer::Delivered { reply, rejected },
            None => Answer::Temporary("relay took no recipient".into()),
        }
    }

    /// One SMTP transaction, bounded by one wall-clock deadline of `timeout`.
    fn transaction_with_deadline(&self, env: &Envelope<'_>, msg: &Message) -> Answer {
        let deadline = Instant::now() + self.timeout;
        match self.transaction(env, msg, deadline) {
            Ok(outcome) => outcome,
            Err(e) => {
                let what = match e.kind() {
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                        format!(
                            "relay {} did not answer within {} s",
                            self.name(),
                            self.timeout.as_secs()
                        )
                    }
                    _ => format!("relay {}: {e}", self.name()),
                };
                Answer::Unreachable(what)
            }
        }
    }

    /// Connect once and check whom the connection reaches, sending nothing (`check-config`):
    /// `Err` says why mail would not be handed to it (down, or not a trusted owner's, or an
    /// owner that cannot be told).
    pub fn probe(&self) -> io::Result<()> {
        self.connect(Instant::now() + self.timeout).map(drop)
    }

    /// How log lines and errors name the relay: its socket path or host:port.
    pub fn name(&self) -> String {
        match self.socket {
            Some(path) => path.display().to_string(),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    fn connect(&self, deadline: Instant) -> io::Result<Stream> {
        if let Some(path) = self.socket {
            // A local connect either completes or fails at once: no timeout needed.
            let stream = UnixStream::connect(path)?;
            self.check_unix_owner(&stream)?;
            return Ok(Stream::Unix(stream));
        }
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in (self.host, self.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, remaining(deadline)?) {
                Ok(s) => {
                    self.check_owner(&s)?;
                    s.set_nodelay(true)?;
                    return Ok(Stream::Tcp(s));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The lane's directory keeps customers out; the listener's credentials (taken by the
    /// kernel when Postfix's master bound it, as the postfix user) say that it is Postfix's
    /// socket and not one a misconfigured path lets somebody else create.
    fn check_unix_owner(&self, stream: &UnixStream) -> io::Result<()> {
        if self.trusted_owners.is_empty() {
            return Ok(());
        }
        let uid = peer_uid(stream)?;
        if self.trusted_owners.contains(&uid) {
            Ok(())
        } else {
            Err(untrusted(uid))
        }
    }

    /// On this host anyone can listen on an unprivileged port while the relay is down: hand
    /// mail only to a relay process of root or the Postfix user. The connection we just
    /// opened is looked up from the other end with sock_diag: the accepted socket belongs
    /// to the uid of the process that accepted it (Postfix's smtpd runs as postfix), so
    /// there is no race between check and use. This holds for every address of this host,
    /// not only loopback: a relay on the host's LAN address is checked the same way. Only a
    /// relay on another host (the kernel has no accepting end here) is not looked up.
    fn check_owner(&self, stream: &TcpStream) -> io::Result<()> {
        if self.trusted_owners.is_empty() {
            return Ok(());
        }
        let (peer, local) = (stream.peer_addr()?, stream.local_addr()?);
        match sockdiag::tcp_owner(peer, local) {
            Ok(uid) if self.trusted_owners.contains(&uid) => Ok(()),
            Ok(uid) => Err(untrusted(uid)),
            // No accepting end on this host: the relay is elsewhere (a connection to one of
            // this host's own addresses always has one, and comes from that address).
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT)
                    && !peer.ip().is_loopback()
                    && peer.ip() != local.ip() =>
            {
                Ok(())
            }
            Err(e) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "cannot tell who owns the relay's socket at {peer} (sock_diag: {e}): not handing mail to it"
                ),
            )),
        }
    }

    fn transaction(
        &self,
        env: &Envelope<'_>,
        msg: &Message,
        deadline: Instant,
    ) -> io::Result<Answer> {
        let mut conn = Conn::new(self.connect(deadline)?, deadline)?;
        let extensions = match self.hello(&mut conn)? {
            Ok(extensions) => extensions,
            Err(refused) => return Ok(refused),
        };
        let has = |ext: &str| {
            extensions
                .iter()
                .any(|e| e == ext || e.starts_with(&format!("{ext} ")))
        };
        let pipelining = has("PIPELINING");
        // No raw 8-bit data to a relay that did not offer 8BITMIME: convert it as Postfix
        // does, or keep the message with the reason.
        let converted;
        let msg = if msg.has_8bit() && !has("8BITMIME") {
            match msg.to_seven_bit() {
                Ok(m) => {
                    converted = m;
                    &converted
                }
                Err(why) => {
                    conn.quit();
                    return Ok(Answer::Temporary(format!(
                        "relay does not announce 8BITMIME and the message cannot be made 7-bit ({why})"
                    )));
                }
            }
        } else {
            msg
        };

        let mut mail = format!("MAIL FROM:<{}>", env.sender.unwrap_or(""));
        if has("SIZE") {
            mail.push_str(&format!(" SIZE={}", msg.size()));
        }
        if has("8BITMIME") && msg.has_8bit() {
            mail.push_str(" BODY=8BITMIME");
        }
        // With PIPELINING the whole envelope and DATA go in one write; otherwise each command
        // waits for its reply.
        conn.command(&mail)?;
        let mail_reply = if pipelining {
            None
        } else {
            Some(conn.reply()?)
        };
        if let Some(r) = &mail_reply
            && !r.is_positive()
        {
            return Ok(conn.fail("MAIL FROM", r.clone()));
        }
        let mut rcpt_replies = Vec::with_capacity(env.recipients.len());
        for rcpt in env.recipients {
            conn.command(&format!("RCPT TO:<{rcpt}>"))?;
            if !pipelining {
                rcpt_replies.push(conn.reply()?);
            }
        }
        if pipelining {
            conn.command("DATA")?;
            let mail_reply = conn.reply()?;
            for _ in env.recipients {
                rcpt_replies.push(conn.reply()?);
            }
            let data_reply = conn.reply()?;
            if !mail_reply.is_positive() {
                if data_reply.code == 354 {
                    conn.end_empty_data()?;
                }
                return Ok(conn.fail("MAIL FROM", mail_reply));
            }
            return self.finish(conn, env, msg, rcpt_replies, data_reply);
        }
        if !rcpt_replies.iter().any(Reply::is_positive) {
            return Ok(all_rejected(conn, env, rcpt_replies));
        }
        conn.command("DATA")?;
        let data_reply = conn.reply()?;
        self.finish(conn, env, msg, rcpt_replies, data_reply)
    }

    /// The greeting and EHLO (HELO when EHLO is refused): the extensions the relay offers,
    /// upper case, or the answer that ends the transaction.
    fn hello(&self, conn: &mut Conn) -> io::Result<Result<Vec<String>, Answer>> {
        let greeting = conn.reply()?;
        if !greeting.is_positive() {
            conn.quit();
            return Ok(Err(classify("greeting", greeting)));
        }
        conn.command(&format!("EHLO {}", self.helo))?;
        let ehlo = conn.reply()?;
        if ehlo.is_positive() {
            return Ok(Ok(ehlo
                .text
                .split('\n')
                .skip(1)
                .map(|l| l.to_ascii_uppercase())
                .collect()));
        }
        conn.command(&format!("HELO {}", self.helo))?;
        let helo = conn.reply()?;
        if !helo.is_positive() {
            conn.quit();
            return Ok(Err(classify("HELO", helo)));
        }
        Ok(Ok(Vec::new()))
    }

    fn finish(
        &self,
        mut conn: Conn,
        env: &Envelope<'_>,
        msg: &Message,
        rcpt_replies: Vec<Reply>,
        data_reply: Reply,
    ) -> io::Result<Answer> {
        let any_accepted = rcpt_replies.iter().any(Reply::is_positive);
        if data_reply.code != 354 {
            if !any_accepted {
                return Ok(all_rejected(conn, env, rcpt_replies));
            }
            return Ok(conn.fail("DATA", data_reply));
        }
        if !any_accepted {
            conn.end_empty_data()?;
            return Ok(all_rejected(conn, env, rcpt_replies));
        }
        msg.write_data(&mut conn.writer)?;
        conn.writer.write_all(b"QUIT\r\n")?;
        conn.flush()?;
        let reply = conn.reply()?;
        // The 221 is a courtesy; the outcome is already known.
        let _ = conn.reply();
        let rejected: Vec<(String, Reply)> = env
            .recipients
            .iter()
            .cloned()
            .zip(rcpt_replies)
            .filter(|(_, r)| !r.is_positive())
            .collect();
        Ok(if reply.is_positive() {
            Answer::Delivered { reply, rejected }
        } else {
            classify("end of data", reply)
        })
    }
}

/// Recipients refused with 452 (too many recipients, RFC 5321 4.5.3.1.10) go to the next
/// transaction; every other refusal is final for this attempt and goes to `rejected`.
fn split_too_many(
    refused: Vec<(String, Reply)>,
    rejected: &mut Vec<(String, Reply)>,
) -> Vec<String> {
    let mut next = Vec::new();
    for (rcpt, reply) in refused {
        if reply.code == 452 {
            next.push(rcpt);
        } else {
            rejected.push((rcpt, reply));
        }
    }
    next
}

fn all_rejected(mut conn: Conn, env: &Envelope<'_>, replies: Vec<Reply>) -> Answer {
    conn.quit();
    // Temporary if any recipient might work later, permanent only if all were refused for good.
    let detail = env
        .recipients
        .iter()
        .zip(&replies)
        .map(|(r, reply)| format!("<{r}>: {reply}"))
        .collect::<Vec<_>>()
        .join("; ");
    if replies.iter().all(Reply::is_permanent) {
        Answer::Permanent(format!("relay rejected all recipients: {detail}"))
    } else {
        Answer::Temporary(format!("relay deferred recipients: {detail}"))
    }
}

fn classify(stage: &str, reply: Reply) -> Answer {
    let text = format!("relay refused {stage}: {reply}");
    if reply.is_permanent() {
        Answer::Permanent(text)
    } else {
        Answer::Temporary(text)
    }
}

fn untrusted(uid: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "the relay's end of the connection belongs to uid {uid}, not to a trusted owner ([relay] trusted_owners): not handing mail to it"
        ),
    )
}

/// The uid the listening end had when it was bound (SO_PEERCRED).
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// The connection to the relay: TCP (the bypass lane's listener) or mailgate's Unix lane.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// RFC 5321 allows 512 octets per reply line; Postfix sends far less.
const MAX_REPLY_LINE: u64 = 4096;

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
    } else {
        Ok(left)
    }
}

/// A socket whose every read and write gets only the time left until one deadline, so a relay
/// that trickles a byte at a time (or reads DATA slowly) cannot stretch the transaction. The
/// socket's timeout is what was left when it was set; a call that starts later may end that
/// much past the deadline, so the timeout is set anew when it is older than `REARM_AFTER`
/// (a dialogue on this host takes a fraction of that: one setsockopt per direction, not one
/// per system call).
struct Deadlined {
    stream: Stream,
    deadline: Instant,
    /// When the socket's timeout for this direction was last set.
    armed: Option<Instant>,
}

/// How far past the deadline one read or write may end.
const REARM_AFTER: Duration = Duration::from_millis(50);

impl Deadlined {
    fn new(stream: Stream, deadline: Instant) -> Deadlined {
        Deadlined {
            stream,
            deadline,
            armed: None,
        }
    }

    /// Make sure the next call on the socket ends by the deadline (within `REARM_AFTER`).
    fn arm(&mut self, set: fn(&Stream, Option<Duration>) -> io::Result<()>) -> io::Result<()> {
        let left = remaining(self.deadline)?;
        let now = Instant::now();
        if self
            .armed
            .is_none_or(|at| now.duration_since(at) >= REARM_AFTER)
        {
            set(&self.stream, Some(left))?;
            self.armed = Some(now);
        }
        Ok(())
    }
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(Stream::set_read_timeout)?;
        self.stream.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(Stream::set_write_timeout)?;
        // Small writes: a relay reading slowly returns to the deadline check often.
        let chunk = &buf[..buf.len().min(16 * 1024)];
        self.stream.write(chunk)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

struct Conn {
    reader: BufReader<Deadlined>,
    writer: BufWriter<Deadlined>,
}

impl Conn {
    /// Buffered both ways, every read and write bounded by `deadline`.
    fn new(stream: Stream, deadline: Instant) -> io::Result<Conn> {
        Ok(Conn {
            reader: BufReader::new(Deadlined::new(stream.try_clone()?, deadline)),
            writer: BufWriter::with_capacity(64 * 1024, Deadlined::new(stream, deadline)),
        })
    }

    /// Queue a command; it is sent when a reply is read (or on flush).
    fn command(&mut self, line: &str) -> io::Result<()> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\r\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    fn reply(&mut self) -> io::Result<Reply> {
        self.flush()?;
        let mut text = String::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            // A reply line longer than any real one is a relay talking endlessly.
            if (&mut self.reader)
                .take(MAX_REPLY_LINE)
                .read_until(b'\n', &mut line)?
                == 0
            {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "relay closed the connection",
                ));
            }
            let l = String::from_utf8_lossy(&line);
            let l = l.trim_end();
            let code = l
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("malformed reply {l:?}"))
                })?;
            if text.len() > 64 * 1024 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "relay reply longer than 64 KiB",
                ));
            }
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(l.get(4..).unwrap_or(""));
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply { code, text });
            }
        }
    }

    fn end_empty_data(&mut self) -> io::Result<()> {
        self.writer.write_all(b".\r\n")?;
        self.reply().map(|_| ())
    }

    fn fail(mut self, stage: &str, reply: Reply) -> Answer {
        self.quit();
        classify(stage, reply)
    }

    fn quit(&mut self) {
        if self.command("QUIT").is_ok() {
            let _ = self.reply();
        }
    }
}
