//! Every message handed to the relay gets its log line, even when its sender is killed right
//! after the relay's 250 (a customer can SIGKILL their own sender at any instant) or cannot
//! write its log (`ulimit -f`, a full disk). Just before the hand-over the log line so far goes
//! to a record in `pending/` in the state directory; it is marked done once the final line is
//! written. Root's next `queue run` logs whatever is left there as `status=unknown`, so the
//! admin still sees that the relay may have had it.
//!
//! The records are kept in a few slot files (`slot-0` … `slot-15`) that are reused, not in a
//! file per message: creating and removing a file per message (an inode allocated and freed
//! on ext4) was 2–3 % of an accepted message's time (`perf record`, docs/PERFORMANCE.md). A
//! sender takes a free slot with `flock` and holds it until its line is logged; the record is
//! the slot's first line, and a `#` written over its first byte marks it done. A slot whose
//! lock nobody holds and whose first line is a record belongs to a sender that died: the
//! queue run logs it at once. A held slot is a live sender's, unless its record is older than
//! the relay timeout and a minute and its holder is stopped (by a customer who would keep a
//! relayed message out of the log): root's queue run ends that sender and logs it. When every
//! slot is held (as many senders at that instant, or a customer's stopped ones) the record
//! gets a file of its own, named after the message, as before the slots: no lock a customer
//! holds can leave a message without its record.

use crate::log::{Logger, Severity};
use crate::state::StateDir;
use crate::state::lock;
use crate::state::{Dir, flags};
use std::fs::{File, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::time::Duration;

const DIR: &str = "pending";
/// Slot files: more than the senders of a busy server at one instant.
const SLOTS: usize = 16;
const SLOT_PREFIX: &str = "slot-";
/// What marks a slot's record done (written over its first byte).
const DONE: u8 = b'#';
/// More than a record (the log fields before the hand-over, bounded by the logger).
const MAX_RECORD: u64 = 16 * 1024;

/// A pending record; `finish` marks it done once the message's final line is logged.
pub enum Pending {
    /// A slot, locked until this is dropped.
    Slot(File),
    /// A file of its own (every slot was held).
    Own { dir: Dir, name: String },
}

/// Record `line` (the log fields known before the hand-over) under `id`. Best effort: the
/// message goes out either way.
pub fn begin(state: &StateDir, id: &str, line: &str) -> Option<Pending> {
    let dir = state.subdir(DIR).ok()?;
    // Senders start at different slots, so that concurrent ones rarely try the same.
    let first = std::process::id() as usize % SLOTS;
    for i in 0..SLOTS {
        let Ok(file) = dir.open_file(
            &slot_name((first + i) % SLOTS),
            flags::READ_WRITE | flags::CREATE,
        ) else {
            break;
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(_)) => break,
        }
        if file.write_all_at(format!("{line}\n").as_bytes(), 0).is_ok() {
            return Some(Pending::Slot(file));
        }
        // Written in part, perhaps: not a record anyone should log.
        let _ = file.write_all_at(&[DONE], 0);
        break;
    }
    let mut file = dir.open_file(id, flags::REWRITE).ok()?;
    file.write_all(line.as_bytes()).ok()?;
    Some(Pending::Own {
        dir,
        name: id.to_string(),
    })
}

fn slot_name(n: usize) -> String {
    format!("{SLOT_PREFIX}{n}")
}

impl Pending {
    pub fn finish(self) {
        match self {
            Pending::Slot(file) => {
                let _ = file.write_all_at(&[DONE], 0);
            }
            Pending::Own { dir, name } => {
                let _ = dir.unlink(&name);
            }
        }
    }
}

/// Log the records that their senders never finished and mark them done: a slot whose lock
/// nobody holds, a file of its own older than `age` (a live sender finishes within the relay
/// timeout). Returns how many there were.
pub fn recover(state: &StateDir, age: Duration, logger: &Logger) -> usize {
    let mut recovered = 0;
    let Ok(dir) = state.top().open_dir(DIR) else {
        return 0;
    };
    for name in dir.names().unwrap_or_default() {
        if name.starts_with(SLOT_PREFIX) {
            recovered += usize::from(recover_slot(&dir, &name, age, logger));
            continue;
        }
        if !crate::state::valid_id(&name) || !crate::state::is_older_than(&dir, &name, age) {
            continue;
        }
        let fields = dir
            .open_file(&name, flags::READ)
            .and_then(std::io::read_to_string)
            .unwrap_or_default();
        if log_unknown(logger, &fields) {
            let _ = dir.unlink(&name);
            recovered += 1;
        }
    }
    recovered
}

/// A slot left with a record by a sender that died: logged, then marked done. A slot still
/// held is a live sender's, unless its record is older than `age` and its holder is stopped:
/// a customer who stops her sender between the relay's 250 and its log line would keep a
/// relayed message out of the log for as long as she liked. Root ends such a holder, as it
/// ends a stopped holder of a counter (`lock::end_stopped_holder`), and logs the record.
fn recover_slot(dir: &Dir, name: &str, age: Duration, logger: &Logger) -> bool {
    let Ok(file) = dir.open_file(name, flags::READ_WRITE) else {
        return false;
    };
    if file.try_lock().is_err() {
        if !crate::state::is_older_than(dir, name, age) {
            return false;
        }
        let path = std::path::PathBuf::from(DIR).join(name);
        let (locked, ended) = lock::lock_ending_stopped(&file, &path, Duration::ZERO);
        if let Some(ended) = ended {
            logger.log(Severity::Warning, &format!("pending records: {ended}"));
        }
        if locked.is_err() {
            return false;
        }
    }
    let mut text = Vec::new();
    if (&file).take(MAX_RECORD).read_to_end(&mut text).is_err() {
        return false;
    }
    let record = text.split(|&b| b == b'\n').next().unwrap_or_default();
    if record.is_empty() || record[0] == DONE {
        return false;
    }
    log_unknown(logger, &String::from_utf8_lossy(record)) && file.write_all_at(&[DONE], 0).is_ok()
}

fn log_unknown(logger: &Logger, fields: &str) -> bool {
    let line = format!(
        "{} status=unknown reason=\"the sender ended between handing the message to the relay and logging the outcome; the relay may have it\"",
        crate::log::printable(fields.trim(), 4096)
    );
    logger.log(Severity::Warning, &line)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(std::path::PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(name: &str) -> (Scratch, StateDir, Logger) {
        let base = std::env::temp_dir().join(format!("mailgate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let state = StateDir::open(&base).unwrap();
        let log = crate::config::Log {
            file: Some(base.join("log")),
            ..Default::default()
        };
        let logger = Logger::new(&log, &base);
        (Scratch(base), state, logger)
    }

    fn log_of(s: &Scratch) -> String {
        std::fs::read_to_string(s.0.join("log")).unwrap_or_default()
    }

    #[test]
    fn a_finished_record_is_never_logged_and_a_slot_is_reused() {
        let (s, state, logger) = setup("journal-reuse");
        for n in 0..40 {
            let p = begin(
                &state,
                &format!("{n:04X}"),
                &format!("id={n:04X} long-field={}", "x".repeat(40 - n)),
            )
            .unwrap();
            assert!(matches!(p, Pending::Slot(_)));
            p.finish();
        }
        assert_eq!(
            recover(&state, Duration::ZERO, &logger),
            0,
            "{}",
            log_of(&s)
        );
        let files = std::fs::read_dir(s.0.join(DIR)).unwrap().count();
        assert_eq!(files, 1, "one process after the other: one slot");
    }

    #[test]
    fn a_held_slot_is_left_alone_and_one_nobody_holds_is_logged_once() {
        let (s, state, logger) = setup("journal-held");
        let live = begin(&state, "AA", "id=AA").unwrap();
        let dead = begin(&state, "BB", "id=BB").unwrap();
        // The sender of BB dies: its descriptor and with it its lock go away, the record stays.
        drop(dead);
        assert_eq!(recover(&state, Duration::ZERO, &logger), 1);
        let log = log_of(&s);
        assert!(log.contains("id=BB status=unknown"), "{log}");
        assert!(!log.contains("id=AA"), "a live sender's record: {log}");
        assert_eq!(recover(&state, Duration::ZERO, &logger), 0, "once only");
        live.finish();
        assert_eq!(recover(&state, Duration::ZERO, &logger), 0);
    }

    #[test]
    fn with_every_slot_held_the_record_gets_a_file_of_its_own() {
        let (s, state, logger) = setup("journal-full");
        // A customer's stopped senders hold every slot.
        let held: Vec<Pending> = (0..SLOTS)
            .map(|n| begin(&state, &format!("{n:02X}"), &format!("id={n:02X}")).unwrap())
            .collect();
        assert!(held.iter().all(|p| matches!(p, Pending::Slot(_))));
        let own = begin(&state, "CAFE", "id=CAFE").unwrap();
        assert!(matches!(&own, Pending::Own { name, .. } if name == "CAFE"));
        // Its sender dies; the queue run logs it once it is older than the relay's timeout.
        drop(own);
        assert_eq!(recover(&state, Duration::from_secs(3600), &logger), 0);
        assert_eq!(recover(&state, Duration::ZERO, &logger), 1);
        assert!(log_of(&s).contains("id=CAFE status=unknown"));
        assert!(!s.0.join(DIR).join("CAFE").exists());
        drop(held);
    }
}
