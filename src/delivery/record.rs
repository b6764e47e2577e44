//! The hand-over record: `delivery/QUEUEID` in the state directory, one per message the relay
//! took, named by the relay's queue id from its 250 reply. Its first line says where the message
//! came from (the caller, its script, how it reached the relay); each further line is one step
//! the relay's log reported for a recipient. `queue run` appends the steps, `trace` reads
//! them. Lines are JSON: a remote server's reply is data, never markup.
//!
//! Writers: the sender (or `queue run`) writes the first line once, right after the relay's
//! 250; only root's `queue run` appends. A record is at most `MAX_RECORD` bytes read.

use crate::state::{Dir, StateDir, flags};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

pub const DIR: &str = "delivery";
/// Larger records are read only this far; steps stop being appended before it, so the first
/// line (bounded by `HEAD_MAX`) and the steps are always read whole.
const MAX_RECORD: u64 = 4 * 1024 * 1024;
/// Every text field of a record (script, working directory, subject, Message-ID, a reply) is
/// cut to this and marked as cut: a 4.5 MB script header makes a record of a few KiB.
pub const FIELD_MAX: usize = 1024;
/// A recipient longer than an address can be (RFC 5321: 256 octets with the brackets).
const ADDRESS_MAX: usize = 320;
/// The recipients a first line lists at most, in bytes; the rest are counted in
/// `recipients_cut` (their outcomes are not learnt: the record does not know them).
const RECIPIENTS_MAX: usize = 512 * 1024;
/// The first line is never larger (fields and recipients bounded as above).
#[cfg(test)]
const HEAD_MAX: usize = RECIPIENTS_MAX + 16 * FIELD_MAX;

/// Where a message came from and how it reached the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handed {
    /// mailgate's id.
    pub id: String,
    pub account: String,
    pub uid: u32,
    pub user: String,
    pub script: String,
    pub cwd: String,
    #[serde(default)]
    pub pool: Option<String>,
    pub sender: Option<String>,
    pub recipients: Vec<String>,
    pub message_id: String,
    pub subject: String,
    pub size: u64,
    /// When the caller gave it to mailgate.
    pub time: i64,
    /// When the relay took it.
    pub handed: i64,
    /// "direct", or the spool it waited in and why ("queue: relay down; 2 attempts").
    pub route: String,
    /// The relay's queue id and its whole 250 reply.
    pub relay_id: String,
    pub reply: String,
    /// Recipients left out of `recipients` to keep the record bounded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recipients_cut: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Handed {
    /// The record's first line as it is stored: every field the caller chooses cut to
    /// `FIELD_MAX` (marked), recipients to `RECIPIENTS_MAX` bytes in all.
    pub fn bounded(mut self) -> Handed {
        use crate::bounded::marked;
        for field in [
            &mut self.id,
            &mut self.user,
            &mut self.script,
            &mut self.cwd,
            &mut self.message_id,
            &mut self.subject,
            &mut self.route,
            &mut self.reply,
        ] {
            *field = marked(field, FIELD_MAX);
        }
        self.pool = self.pool.map(|p| marked(&p, FIELD_MAX));
        self.sender = self.sender.map(|p| marked(&p, ADDRESS_MAX));
        let mut bytes = 0;
        let all = std::mem::take(&mut self.recipients);
        for r in all {
            if r.len() > ADDRESS_MAX || bytes + r.len() > RECIPIENTS_MAX {
                self.recipients_cut += 1;
                continue;
            }
            bytes += r.len() + 3;
            self.recipients.push(r);
        }
        self
    }

    /// Whether `to` (as the relay logged it) is one of this message's recipients: only those
    /// are counted, whatever a log line names.
    pub fn knows(&self, to: &str) -> bool {
        self.recipients.iter().any(|r| r.eq_ignore_ascii_case(to))
    }
}

/// One step the relay's log reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub time: i64,
    /// The recipient as the relay logged it; empty for a step of the whole message.
    pub to: String,
    /// delivered, bounced, deferred, expired; "removed" when the message left the relay.
    pub status: String,
    pub dsn: String,
    pub reply: String,
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub handed: Handed,
    pub steps: Vec<Step>,
}

impl Record {
    /// The last status logged for `to`, if any.
    pub fn last_status(&self, to: &str) -> Option<&str> {
        self.steps
            .iter()
            .rev()
            .find(|s| s.to == to)
            .map(|s| s.status.as_str())
    }

    /// Recipients whose last step is a deferral: what an expiry gives up.
    pub fn still_deferred(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.steps {
            if !s.to.is_empty() && !out.contains(&s.to) {
                out.push(s.to.clone());
            }
        }
        out.retain(|to| self.last_status(to) == Some("deferred"));
        out
    }

    pub fn removed(&self) -> bool {
        self.steps.iter().any(|s| s.status == "removed")
    }
}

/// A relay queue id as a file name: what `postfix_log::is_queue_id` accepts, nothing else.
pub fn valid_name(queue_id: &str) -> bool {
    super::postfix_log::is_queue_id(queue_id)
}

/// Why a record was not written.
#[derive(Debug)]
pub enum WriteError {
    /// Another message holds this queue id (it belongs to the first that recorded it, until
    /// the relay logged it as removed): a listener's made-up `queued as` claims nothing.
    Taken {
        by: String,
    },
    Io(std::io::Error),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Taken { by } => write!(f, "the queue id is recorded already for {by}"),
            WriteError::Io(e) => e.fmt(f),
        }
    }
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> WriteError {
        WriteError::Io(e)
    }
}

/// Write the first line, bounded (`Handed::bounded`). A queue id belongs to the first message
/// that recorded it; a record is replaced only once the relay logged its message as removed
/// (a short queue id that the relay reuses). Best effort: the message is the relay's now
/// whatever happens here.
pub fn write(state: &StateDir, handed: Handed) -> Result<(), WriteError> {
    if !valid_name(&handed.relay_id) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a queue id").into());
    }
    let dir = state
        .subdir(DIR)
        .map_err(|f| std::io::Error::other(f.message))?;
    let handed = handed.bounded();
    let mut line = serde_json::to_string(&handed).map_err(std::io::Error::other)?;
    line.push('\n');
    let exclusive = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let mut file = match dir.open_file(&handed.relay_id, exclusive) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            match read(&dir, &handed.relay_id) {
                Some(old) if !old.removed() => {
                    return Err(WriteError::Taken {
                        by: format!("{} (account {})", old.handed.id, old.handed.account),
                    });
                }
                _ => dir.open_file(&handed.relay_id, flags::REWRITE)?,
            }
        }
        Err(e) => return Err(e.into()),
    };
    file.write_all(line.as_bytes())?;
    Ok(())
}

/// A record opened for reading and appending: one open for both (the queue run's way).
pub struct Opened {
    file: std::fs::File,
    pub record: Record,
}

impl Opened {
    /// Append steps (one `write` with `O_APPEND`), their replies cut to `FIELD_MAX`. A record
    /// that would pass `MAX_RECORD` takes no more: what it holds stays readable.
    pub fn append(&mut self, steps: &[Step]) -> std::io::Result<()> {
        let mut text = String::new();
        for s in steps {
            let s = Step {
                reply: crate::bounded::marked(&s.reply, FIELD_MAX),
                ..s.clone()
            };
            text.push_str(&serde_json::to_string(&s).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        let size = self.file.metadata()?.len();
        if size + text.len() as u64 > MAX_RECORD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("the record is full ({size} bytes); further steps are not kept"),
            ));
        }
        self.file.write_all(text.as_bytes())
    }
}

/// The record of `queue_id` for update; `None` when there is none (a message mailgate did not
/// hand over) or its first line is not one.
pub fn open(dir: &Dir, queue_id: &str) -> Option<Opened> {
    if !valid_name(queue_id) {
        return None;
    }
    let mut file = dir
        .open_file(queue_id, libc::O_RDWR | libc::O_APPEND)
        .ok()?;
    let record = read_from(&mut file)?;
    Some(Opened { file, record })
}

/// The record of `queue_id`, read only (`trace`).
pub fn read(dir: &Dir, queue_id: &str) -> Option<Record> {
    if !valid_name(queue_id) {
        return None;
    }
    read_from(&mut dir.open_file(queue_id, flags::READ).ok()?)
}

/// The whole record (at most `MAX_RECORD` bytes), in one read when it fits its size.
fn read_from(file: &mut std::fs::File) -> Option<Record> {
    let size = file.metadata().ok()?.len().min(MAX_RECORD);
    let mut bytes = Vec::with_capacity(size as usize + 1);
    file.take(MAX_RECORD).read_to_end(&mut bytes).ok()?;
    decode(&String::from_utf8_lossy(&bytes))
}

/// The first line and every whole step line after it (a damaged line is skipped).
pub fn decode(text: &str) -> Option<Record> {
    let mut lines = text.lines();
    let handed: Handed = serde_json::from_str(lines.next()?).ok()?;
    let steps = lines.filter_map(|l| serde_json::from_str(l).ok()).collect();
    Some(Record { handed, steps })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> Handed {
        Handed {
            id: "ABC".into(),
            account: "shop".into(),
            uid: 1001,
            user: "shop".into(),
            script: "1001:/var/www/shop/contact.php".into(),
            cwd: "/var/www/shop".into(),
            pool: Some("shop".into()),
            sender: Some("shop@example.org".into()),
            recipients: vec!["a@example.org".into(), "b@example.org".into()],
            message_id: "<ABC@vm>".into(),
            subject: "Hi".into(),
            size: 300,
            time: 100,
            handed: 101,
            route: "direct".into(),
            relay_id: "4Sb7Kd1zZkz9sWr".into(),
            reply: "250 2.0.0 Ok: queued as 4Sb7Kd1zZkz9sWr".into(),
            recipients_cut: 0,
        }
    }

    fn step(to: &str, status: &str) -> Step {
        Step {
            time: 200,
            to: to.into(),
            status: status.into(),
            dsn: String::new(),
            reply: "host said: 450 \"later\"\n<b>".into(),
        }
    }

    #[test]
    fn round_trip_and_last_status() {
        let dir = std::env::temp_dir().join(format!("mg-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = StateDir::open(&dir).unwrap();
        write(&state, sample()).unwrap();
        let sub = state.subdir(DIR).unwrap();
        let mut opened = open(&sub, "4Sb7Kd1zZkz9sWr").unwrap();
        assert!(opened.record.steps.is_empty());
        opened.append(&[step("a@example.org", "deferred")]).unwrap();
        opened
            .append(&[
                step("a@example.org", "delivered"),
                step("b@example.org", "deferred"),
            ])
            .unwrap();
        drop(opened);
        let r = read(&sub, "4Sb7Kd1zZkz9sWr").unwrap();
        assert_eq!(r.handed, sample());
        assert_eq!(r.steps.len(), 3);
        assert_eq!(r.steps[0].reply, "host said: 450 \"later\"\n<b>");
        assert_eq!(r.last_status("a@example.org"), Some("delivered"));
        assert_eq!(r.still_deferred(), vec!["b@example.org".to_string()]);
        assert!(!r.removed());
        assert!(read(&sub, "../etc").is_none());
        assert!(read(&sub, "NOSUCHID").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_oversized_caller_field_is_cut_and_the_record_stays_readable() {
        let dir = std::env::temp_dir().join(format!("mg-record-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = StateDir::open(&dir).unwrap();
        let mut h = sample();
        h.script = format!("1001:/var/www/{}.php", "x".repeat(4_500_000));
        h.subject = "s".repeat(3_000_000);
        h.message_id = format!("<{}@x>", "m".repeat(3_000_000));
        h.recipients = (0..100_000).map(|i| format!("r{i}@example.org")).collect();
        write(&state, h).unwrap();
        let sub = state.subdir(DIR).unwrap();
        let size = std::fs::metadata(dir.join(DIR).join("4Sb7Kd1zZkz9sWr"))
            .unwrap()
            .len();
        assert!(size <= HEAD_MAX as u64, "{size} bytes");
        let mut opened = open(&sub, "4Sb7Kd1zZkz9sWr").expect("readable");
        let head = &opened.record.handed;
        assert!(head.script.ends_with(crate::bounded::CUT_MARK));
        assert!(head.script.len() <= FIELD_MAX);
        assert!(head.knows("r0@example.org"));
        assert!(head.recipients_cut > 0);
        assert_eq!(head.recipients.len() + head.recipients_cut, 100_000);
        // Steps stop before the read cap; what is there stays readable.
        let steps: Vec<Step> = (0..400)
            .map(|_| Step {
                reply: "y".repeat(50_000),
                ..step("r0@example.org", "deferred")
            })
            .collect();
        for s in steps.chunks(10) {
            let _ = opened.append(s);
        }
        drop(opened);
        let r = read(&sub, "4Sb7Kd1zZkz9sWr").expect("still readable");
        assert!(!r.steps.is_empty());
        assert!(r.steps.iter().all(|s| s.reply.len() <= FIELD_MAX));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_queue_id_belongs_to_the_first_message_until_it_is_removed() {
        let dir = std::env::temp_dir().join(format!("mg-record-first-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = StateDir::open(&dir).unwrap();
        write(&state, sample()).unwrap();
        let mut other = sample();
        other.id = "MALLORY".into();
        other.account = "mallory".into();
        assert!(matches!(
            write(&state, other.clone()),
            Err(WriteError::Taken { .. })
        ));
        let sub = state.subdir(DIR).unwrap();
        assert_eq!(
            read(&sub, "4Sb7Kd1zZkz9sWr").unwrap().handed.account,
            "shop"
        );
        // Once the relay removed the first message, its (short) id is free again.
        open(&sub, "4Sb7Kd1zZkz9sWr")
            .unwrap()
            .append(&[step("", "removed")])
            .unwrap();
        write(&state, other).unwrap();
        assert_eq!(
            read(&sub, "4Sb7Kd1zZkz9sWr").unwrap().handed.account,
            "mallory"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_step_is_skipped_a_damaged_head_is_no_record() {
        let head = serde_json::to_string(&sample()).unwrap();
        let good = serde_json::to_string(&step("a@example.org", "bounced")).unwrap();
        let r = decode(&format!("{head}\n{{\"time\":1,\n{good}\n{}", &good[..10])).unwrap();
        assert_eq!(r.steps.len(), 1);
        assert!(decode(&format!("{{\"id\":\n{good}\n")).is_none());
        assert!(decode("").is_none());
    }
}
