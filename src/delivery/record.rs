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
/// Larger records are read only this far (a message to thousands of recipients, retried).
const MAX_RECORD: u64 = 4 * 1024 * 1024;

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

/// Write the first line (replacing an older record of a reused short queue id). Best
/// effort: the message is the relay's now whatever happens here.
pub fn write(state: &StateDir, handed: &Handed) -> std::io::Result<()> {
    if !valid_name(&handed.relay_id) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a queue id",
        ));
    }
    let dir = state
        .subdir(DIR)
        .map_err(|f| std::io::Error::other(f.message))?;
    let mut line = serde_json::to_string(handed).map_err(std::io::Error::other)?;
    line.push('\n');
    let mut file = dir.open_file(&handed.relay_id, flags::REWRITE)?;
    file.write_all(line.as_bytes())
}

/// A record opened for reading and appending: one open for both (the queue run's way).
pub struct Opened {
    file: std::fs::File,
    pub record: Record,
}

impl Opened {
    /// Append steps (one `write` with `O_APPEND`).
    pub fn append(&mut self, steps: &[Step]) -> std::io::Result<()> {
        let mut text = String::new();
        for s in steps {
            text.push_str(&serde_json::to_string(s).map_err(std::io::Error::other)?);
            text.push('\n');
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
        write(&state, &sample()).unwrap();
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
    fn a_damaged_step_is_skipped_a_damaged_head_is_no_record() {
        let head = serde_json::to_string(&sample()).unwrap();
        let good = serde_json::to_string(&step("a@example.org", "bounced")).unwrap();
        let r = decode(&format!("{head}\n{{\"time\":1,\n{good}\n{}", &good[..10])).unwrap();
        assert_eq!(r.steps.len(), 1);
        assert!(decode(&format!("{{\"id\":\n{good}\n")).is_none());
        assert!(decode("").is_none());
    }
}
