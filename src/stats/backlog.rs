//! Messages not yet counted in an account's statistics file: `stats/.backlog-ACCOUNT` (a dot
//! name: never listed as an account; opened from the statistics directory already open), one line
//! per message, appended without the statistics lock when another process holds that lock (a
//! customer's sender stopped at that instant). Readers (`top`, `metrics`) add what the file has
//! not folded yet; the next writer that gets the lock folds it in. So a stopped process of a
//! customer can neither hide that account's messages nor make anyone wait for it more than
//! once.
//!
//! A line is JSON with a checksum; one `write` with `O_APPEND` puts it whole at the end. The
//! statistics file records how many bytes of the backlog it has folded (`folded`); the backlog
//! is emptied only under an exclusive `flock`, which appenders share while they append, and
//! only when everything in it was folded.

use super::{Event, MAX_KEY, Outcome, RelayError, Stats};
use crate::bounded::cut;
use crate::state::fnv1a;
use crate::state::{Dir, flags};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// The backlog's name in the statistics directory.
fn name(account: &str) -> String {
    format!(".backlog-{account}")
}
/// A backlog takes no line past this size, and is not read further: a customer who stops one
/// of her senders while it holds her statistics lock can make it grow by every attempt, refused
/// ones too, so it has a bound of its own (a line is at most a few hundred bytes: the script
/// and the working directory are cut to what the statistics keep, `MAX_KEY`). Root's queue run
/// ends such a stopped holder and folds the backlog.
const MAX_BACKLOG: u64 = 4 * 1024 * 1024;

/// One message's event, owned, as a backlog line stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub now: i64,
    pub outcome: String,
    pub recipients: u64,
    pub script: String,
    pub cwd: String,
    pub lock_wait_us: Option<u64>,
    pub lock_busy: bool,
    pub relay_error: Option<String>,
}

impl Line {
    pub fn of(e: &Event<'_>) -> Line {
        Line {
            now: e.now,
            outcome: e.outcome.as_str().to_string(),
            recipients: e.recipients,
            script: cut(e.script, MAX_KEY),
            cwd: cut(e.cwd, MAX_KEY),
            lock_wait_us: e.lock_wait_us,
            lock_busy: e.lock_busy,
            relay_error: e.relay_error.map(|r| r.as_str().to_string()),
        }
    }

    /// Count it, as `Stats::record` counts a message; a line with an unknown outcome is not
    /// one this program wrote and counts nothing.
    pub fn record_into(&self, stats: &mut Stats) {
        let Some(outcome) = Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == self.outcome)
        else {
            return;
        };
        let relay_error = self
            .relay_error
            .as_deref()
            .and_then(|r| RelayError::ALL.into_iter().find(|e| e.as_str() == r));
        stats.record(&Event {
            now: self.now,
            outcome,
            recipients: self.recipients,
            script: &self.script,
            cwd: &self.cwd,
            lock_wait_us: self.lock_wait_us,
            lock_busy: self.lock_busy,
            relay_error,
        });
    }
}

/// `JSON checksum\n`.
pub fn encode(line: &Line) -> String {
    let json = serde_json::to_string(line).unwrap_or_default();
    format!("{json} {:016x}\n", fnv1a(json.as_bytes()))
}

/// The lines of `bytes` that `encode` wrote whole, and how many bytes they span (a line
/// still being appended at the end is left for later; a damaged line is skipped).
pub fn decode(bytes: &[u8]) -> (Vec<Line>, usize) {
    let mut lines = Vec::new();
    let mut used = 0;
    for raw in bytes.split_inclusive(|&b| b == b'\n') {
        if raw.last() != Some(&b'\n') {
            break;
        }
        used += raw.len();
        let Ok(text) = std::str::from_utf8(&raw[..raw.len() - 1]) else {
            continue;
        };
        let Some((json, sum)) = text.rsplit_once(' ') else {
            continue;
        };
        if u64::from_str_radix(sum, 16).ok() != Some(fnv1a(json.as_bytes())) {
            continue;
        }
        if let Ok(line) = serde_json::from_str(json) {
            lines.push(line);
        }
    }
    (lines, used)
}

/// Append one message to the account's backlog, whole, without waiting for anyone.
pub fn append(dir: &Dir, account: &str, event: &Event<'_>) -> io::Result<()> {
    let mut file = dir.open_file(
        &name(account),
        libc::O_WRONLY | libc::O_APPEND | flags::CREATE,
    )?;
    // Shared: other appenders go on; only the emptying (exclusive) waits for this line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
    while file.try_lock_shared().is_err() {
        if std::time::Instant::now() > deadline {
            break; // the emptier holds it for microseconds; append anyway, it re-checks
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let line = encode(&Line::of(event));
    let len = file.metadata()?.len();
    if len + line.len() as u64 > MAX_BACKLOG {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("it is full ({len} bytes): this message is not counted in the statistics"),
        ));
    }
    file.write_all(line.as_bytes())
}

/// The account's backlog from byte `from` on: its whole lines and the offset after them.
pub fn read_from(dir: &Dir, account: &str, from: u64) -> io::Result<(Vec<Line>, u64)> {
    let mut file = match dir.open_file(&name(account), flags::READ) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len < from {
        // Emptied since (by a writer that folded it): nothing of it is pending.
        return Ok((Vec::new(), 0));
    }
    let mut bytes = Vec::new();
    let mut rest = std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(from))
        .map(|_| file.take(MAX_BACKLOG))?;
    rest.read_to_end(&mut bytes)?;
    let (lines, used) = decode(&bytes);
    Ok((lines, from + used as u64))
}

/// Empty the backlog when everything in it was folded (`folded` bytes) and no appender is at
/// work; `true` when it is empty now. Only root's queue run empties a backlog, between two
/// writes of the statistics file (folded N, then folded 0): a customer cannot kill it in
/// between.
pub fn empty_if_folded(dir: &Dir, account: &str, folded: u64) -> bool {
    let file = match dir.open_file(&name(account), flags::READ_WRITE) {
        Ok(f) => f,
        Err(e) => return e.kind() == io::ErrorKind::NotFound,
    };
    if file.try_lock().is_err() {
        return false;
    }
    match file.metadata() {
        Ok(m) if m.len() == folded => file.set_len(0).is_ok(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Line {
        Line {
            now: 1_700_000_000,
            outcome: "sent".into(),
            recipients: 3,
            script: "1001:/var/www/a b/send.php".into(),
            cwd: "/var/www/\"x\"\n".into(),
            lock_wait_us: Some(12),
            lock_busy: false,
            relay_error: Some("temporary".into()),
        }
    }

    #[test]
    fn lines_round_trip_and_a_partial_or_damaged_line_is_not_counted() {
        let one = encode(&event());
        let mut bytes = one.clone().into_bytes();
        bytes.extend_from_slice(one.as_bytes());
        let (lines, used) = decode(&bytes);
        assert_eq!((lines.len(), used), (2, bytes.len()));
        assert_eq!(lines[0], event());
        // A line still being written is left for later.
        let (lines, used) = decode(&bytes[..bytes.len() - 5]);
        assert_eq!((lines.len(), used), (1, one.len()));
        // A damaged line is skipped, the next one counts.
        let mut damaged = bytes.clone();
        damaged[10] ^= 1;
        let (lines, used) = decode(&damaged);
        assert_eq!((lines.len(), used), (1, bytes.len()));
    }

    #[test]
    fn lines_are_bounded_and_the_backlog_stops_at_its_bound() {
        let dir = std::env::temp_dir().join(format!("mg-backlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = Dir::open(&dir).unwrap();
        let script = format!("1001:/{}", "s".repeat(6_000_000));
        let e = Event {
            now: 1,
            outcome: Outcome::Refused,
            recipients: 1,
            script: &script,
            cwd: &script,
            lock_wait_us: None,
            lock_busy: true,
            relay_error: None,
        };
        let line = encode(&Line::of(&e));
        assert!(line.len() < 1024, "{} bytes", line.len());
        let mut appended = 0;
        while append(&d, "shop", &e).is_ok() {
            appended += 1;
            assert!(appended < 100_000, "never stops");
        }
        let size = std::fs::metadata(dir.join(".backlog-shop")).unwrap().len();
        assert!(size <= MAX_BACKLOG && size + line.len() as u64 > MAX_BACKLOG);
        let (lines, _) = read_from(&d, "shop", 0).unwrap();
        assert_eq!(lines.len(), appended, "every line it took is read");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_line_counts_like_the_event() {
        let mut direct = Stats::default();
        let line = event();
        direct.record(&Event {
            now: line.now,
            outcome: Outcome::Sent,
            recipients: 3,
            script: &line.script,
            cwd: &line.cwd,
            lock_wait_us: Some(12),
            lock_busy: false,
            relay_error: Some(RelayError::Temporary),
        });
        let mut folded = Stats::default();
        line.record_into(&mut folded);
        assert_eq!(folded, direct);
        let mut unknown = Stats::default();
        Line {
            outcome: "vanished".into(),
            ..event()
        }
        .record_into(&mut unknown);
        assert_eq!(unknown, Stats::default());
    }
}
