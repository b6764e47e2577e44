//! The statistics files: `stats/ACCOUNT` in the state directory. A file has two slots (at 0
//! and at `SLOT`), each `slot GENERATION LENGTH` and a sealed text (checksum line). A writer
//! takes the file's lock, reads both, and writes the new content into the slot that does not
//! hold the newest valid generation (one `pwrite`: no new inode, no directory change on the
//! hot path, no truncation). A writer killed at any instant damages only the slot it was
//! writing: the previous generation stays whole in the other, so no kill can wipe an account's
//! history. Readers take no lock: the newest valid slot is never the one being written.
//!
//! A writer that cannot get the lock (another process holds it: a customer's sender stopped at
//! that instant) appends the message to the account's backlog instead (`backlog`,
//! `stats/.backlog-ACCOUNT`), and from
//! then on does not wait for that account again; readers add the backlog's unfolded lines,
//! the next writer with the lock folds them in, root's queue run empties it. The file records
//! how much of the backlog it has folded (`folded N`, before the checksum line).

use super::{Event, Stats, backlog};
use crate::exit::{Exit, Failure};
use crate::state::fnv1a;
use crate::state::{StateDir, flags};
use std::os::unix::fs::FileExt;
use std::time::Duration;

const DIR: &str = "stats";

/// What became of an update.
#[derive(Debug, PartialEq, Eq)]
pub enum Updated<T> {
    Done(T),
    /// Another process held the file's lock past the deadline (a stopped sender of the same
    /// account): the message went to the backlog, counted by readers and folded later.
    Busy,
}

/// Count `events` in an account's statistics and change them further, under its lock. A damaged file is started afresh; the
/// returned note says so, for the log.
pub fn update<T>(
    state: &StateDir,
    account: &str,
    wait: Duration,
    events: &[Event<'_>],
    change: impl FnOnce(&mut Stats) -> T,
) -> Result<(Updated<T>, Option<String>), Failure> {
    checked(account)?;
    let dir = state.subdir(DIR)?;
    let path = state.path().join(DIR).join(account);
    let fail = |what: &str, e: std::io::Error| {
        Failure::io(Exit::OsErr, format!("cannot {what} {}", path.display()), &e)
    };
    let file = dir
        .open_file(account, flags::READ_WRITE | flags::CREATE)
        .map_err(|e| fail("open", e))?;
    let (locked, note_ended) = crate::state::lock::lock_ending_stopped(&file, &path, wait);
    match locked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            for event in events {
                backlog::append(&dir, account, event)
                    .map_err(|e| fail("append to the backlog of", e))?;
            }
            return Ok((Updated::Busy, None));
        }
        Err(e) => return Err(fail("lock", e)),
    }
    let mut note = note_ended;
    let newest = newest_slot(&file).map_err(|e| fail("read", e))?;
    let (mut stats, folded, generation, target) = match newest {
        Ok(Some(slot)) => (slot.stats, slot.folded, slot.generation, 1 - slot.index),
        Ok(None) => (Stats::default(), 0, 0, 0),
        Err(why) => {
            note = Some(format!(
                "{} was damaged ({why}); started afresh",
                path.display()
            ));
            (Stats::default(), 0, 0, 0)
        }
    };
    // What other processes could not write while this lock was held by someone else.
    let (pending, folded) =
        backlog::read_from(&dir, account, folded).unwrap_or((Vec::new(), folded));
    pending.iter().for_each(|l| l.record_into(&mut stats));
    events.iter().for_each(|e| stats.record(e));
    let result = change(&mut stats);
    let encoded = stats.encode();
    let write = |slot: usize, generation: u64, folded: u64| {
        let content = seal(encoded.clone(), folded);
        let framed = format!("slot {generation} {}\n{content}", content.len());
        file.write_all_at(framed.as_bytes(), slot as u64 * SLOT)
            .map_err(|e| fail("write", e))
    };
    write(target, generation + 1, folded)?;
    // Root empties what it folded (a customer's process could be killed between the two
    // writes and leave a folded offset that no longer fits; root's cannot).
    // SAFETY: geteuid cannot fail.
    if folded > 0
        && unsafe { libc::geteuid() } == 0
        && backlog::empty_if_folded(&dir, account, folded)
    {
        write(1 - target, generation + 2, 0)?;
    }
    Ok((Updated::Done(result), note))
}

/// Where the second slot begins: past the largest content of the first.
const SLOT: u64 = 128 * 1024;
/// One read per slot covers a typical file.
const FIRST_READ: usize = 8192;

/// The content of one valid slot.
struct Slot {
    index: usize,
    generation: u64,
    stats: Stats,
    folded: u64,
}

/// The newest valid slot: `Ok(None)` for an empty file, `Err` when neither slot is valid.
/// A file from before the slots (sealed text at 0) is generation 0 in slot 0.
fn newest_slot(file: &std::fs::File) -> std::io::Result<Result<Option<Slot>, String>> {
    // Both slots are read and their checksums checked; only the newest valid one is decoded
    // (decoding is most of the cost).
    let mut sealed: Vec<(usize, u64, String, u64)> = Vec::with_capacity(2);
    let mut why = String::new();
    let mut empty = true;
    // One buffer for both reads: the first slot's text is copied out before the second.
    let mut buf = Vec::new();
    for index in 0..2 {
        read_slot(file, index as u64 * SLOT, &mut buf)?;
        let raw = &buf;
        if raw.is_empty() || raw.iter().all(|&b| b == 0) {
            continue;
        }
        empty = false;
        match unframe(raw) {
            Ok((generation, body, folded)) => sealed.push((index, generation, body, folded)),
            Err(e) => why = e,
        }
    }
    sealed.sort_by_key(|s| std::cmp::Reverse(s.1));
    for (index, generation, body, folded) in sealed {
        match Stats::decode(&body) {
            Ok(stats) => {
                return Ok(Ok(Some(Slot {
                    index,
                    generation,
                    stats,
                    folded,
                })));
            }
            Err(e) => why = e,
        }
    }
    Ok(if empty { Ok(None) } else { Err(why) })
}

/// The bytes of the slot at `offset`, into `buf`: its frame line and content (one read when
/// they fit in `FIRST_READ`), or, for a file from before the slots, everything up to `SLOT`.
fn read_slot(file: &std::fs::File, offset: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.resize(FIRST_READ, 0);
    let n = read_at_most(file, buf, offset)?;
    buf.truncate(n);
    let framed_len = frame(buf).map(|(_, len, header)| header + len);
    let want = match framed_len {
        Some(total) => total.min(super::MAX_FILE + 64),
        None if offset == 0 && buf.starts_with(b"mailgate-stats") => super::MAX_FILE + 64,
        None => return Ok(()),
    };
    if want > buf.len() && n == FIRST_READ {
        buf.resize(want, 0);
        let m = read_at_most(file, &mut buf[n..], offset + n as u64)?;
        buf.truncate(n + m);
    }
    buf.truncate(want.min(buf.len()));
    Ok(())
}

/// One `pread`: a regular file returns less than asked only at its end.
fn read_at_most(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    file.read_at(buf, offset)
}

/// `slot GENERATION LENGTH\n`: the generation, the content's length and the frame line's.
fn frame(raw: &[u8]) -> Option<(u64, usize, usize)> {
    let nl = raw.iter().take(64).position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&raw[..nl]).ok()?;
    let mut parts = line.strip_prefix("slot ")?.split(' ');
    let generation = parts.next()?.parse().ok()?;
    let len = parts.next()?.parse().ok()?;
    Some((generation, len, nl + 1))
}

/// A slot's generation, statistics text and folded backlog offset, when its frame and
/// checksum are whole; else why not.
fn unframe(raw: &[u8]) -> Result<(u64, String, u64), String> {
    let (generation, content) = match frame(raw) {
        Some((generation, len, header)) => {
            let content = raw
                .get(header..header + len)
                .ok_or("written only in part (shorter than its frame says)")?;
            (generation, content)
        }
        // From before the slots: the whole of slot 0.
        None => (0, raw),
    };
    let text = std::str::from_utf8(content).map_err(|_| "not text".to_string())?;
    let (body, folded) = unseal(text)?;
    Ok((generation, body.to_string(), folded))
}

/// The text with how much of the backlog it holds (`folded N`) and its checksum line: `sum`
/// and the FNV-1a hash of everything before it.
fn seal(mut text: String, folded: u64) -> String {
    text.push_str(&format!("folded {folded}\n"));
    let sum = fnv1a(text.as_bytes());
    text.push_str(&format!("sum {sum:016x}\n"));
    text
}

/// The statistics text of a sealed file and how much of the backlog it holds; an empty file
/// is empty statistics.
fn unseal(content: &str) -> Result<(&str, u64), String> {
    let body = checked_body(content)?;
    let trimmed = body.trim_end_matches('\n');
    let Some(start) = trimmed
        .rfind('\n')
        .map(|i| i + 1)
        .or((!trimmed.is_empty()).then_some(0))
    else {
        return Ok((body, 0));
    };
    match trimmed[start..].strip_prefix("folded ") {
        Some(n) => Ok((
            &body[..start],
            n.parse().map_err(|_| format!("bad folded line {n:?}"))?,
        )),
        // Written before the backlog existed.
        None => Ok((body, 0)),
    }
}

/// The text before a valid checksum line.
fn checked_body(content: &str) -> Result<&str, String> {
    if content.is_empty() {
        return Ok("");
    }
    let body_end = content
        .trim_end_matches('\n')
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let (body, last) = content.split_at(body_end);
    let sum = last
        .strip_prefix("sum ")
        .and_then(|s| s.strip_suffix('\n'))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or("no checksum line (written only in part?)")?;
    if sum != fnv1a(body.as_bytes()) {
        return Err("checksum mismatch (written only in part?)".into());
    }
    Ok(body)
}

/// An account name is a file name here: never one with a `/` or a `..`.
fn checked(account: &str) -> Result<(), Failure> {
    crate::config::validate_account_name(account).map_err(|why| Failure::new(Exit::Software, why))
}

/// An account's statistics as they are, read under a shared lock (after 0.5 s without it,
/// read anyway: a half-written file then shows as damaged). A missing file is empty
/// statistics; a damaged one an error naming it.
pub fn read(state: &StateDir, account: &str) -> Result<Stats, Failure> {
    checked(account)?;
    let path = state.path().join(DIR).join(account);
    let dir = state.subdir(DIR)?;
    let newest = match dir.open_file(account, flags::READ) {
        // No lock: the newest valid slot is never the one a writer is writing.
        Ok(f) => newest_slot(&f)
            .map_err(|e| Failure::io(Exit::OsErr, format!("cannot read {}", path.display()), &e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            return Err(Failure::io(
                Exit::OsErr,
                format!("cannot open {}", path.display()),
                &e,
            ));
        }
    };
    let (mut stats, folded) = match newest {
        Ok(Some(slot)) => (slot.stats, slot.folded),
        Ok(None) => (Stats::default(), 0),
        Err(why) => {
            return Err(Failure::new(
                Exit::OsErr,
                format!("{}: {why}", path.display()),
            ));
        }
    };
    // Messages that went to the backlog while a stopped process held the lock count too.
    if let Ok((pending, _)) = backlog::read_from(&dir, account, folded) {
        pending.iter().for_each(|l| l.record_into(&mut stats));
    }
    Ok(stats)
}

/// Accounts with statistics.
pub fn accounts(state: &StateDir) -> Vec<String> {
    state.names_in(DIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Event, Outcome};

    #[test]
    fn updates_are_whole_and_damage_starts_afresh() {
        let base = std::env::temp_dir().join(format!("mailgate-stats-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let state = StateDir::open(&base).unwrap();
        let ev = |o| Event {
            now: 1_800_000_000,
            outcome: o,
            recipients: 1,
            script: "s.php",
            cwd: "/",
            lock_wait_us: None,
            lock_busy: false,
            relay_error: None,
        };
        let wait = Duration::from_millis(100);
        for _ in 0..3 {
            let (done, note) = update(&state, "acc", wait, &[ev(Outcome::Sent)], |_| ()).unwrap();
            assert_eq!((done, note), (Updated::Done(()), None));
        }
        assert_eq!(
            read(&state, "acc").unwrap().totals.messages(Outcome::Sent),
            3
        );
        assert_eq!(accounts(&state), vec!["acc".to_string()]);
        assert!(
            update(&state, "../acc", wait, &[ev(Outcome::Sent)], |_| ()).is_err(),
            "no path as a name"
        );
        assert!(read(&state, "a/b").is_err());
        // A held lock: the message goes to the backlog within the wait; readers count it, the
        // next update folds it in.
        let held = std::fs::File::open(base.join("stats/acc")).unwrap();
        held.lock().unwrap();
        for _ in 0..2 {
            let (done, _) = update(&state, "acc", wait, &[ev(Outcome::Refused)], |_| ()).unwrap();
            assert_eq!(done, Updated::Busy);
        }
        let s = read(&state, "acc").unwrap();
        assert_eq!(
            s.totals.messages(Outcome::Refused),
            2,
            "counted while the lock is held"
        );
        drop(held);
        update(&state, "acc", wait, &[ev(Outcome::Sent)], |_| ()).unwrap();
        let s = read(&state, "acc").unwrap();
        assert_eq!(
            (
                s.totals.messages(Outcome::Sent),
                s.totals.messages(Outcome::Refused)
            ),
            (4, 2),
            "folded once, not twice"
        );
        // Root empties the folded backlog; a customer's sender leaves it.
        // SAFETY: geteuid cannot fail.
        let emptied = std::fs::metadata(base.join("stats/.backlog-acc"))
            .unwrap()
            .len()
            == 0;
        assert_eq!(emptied, unsafe { libc::geteuid() } == 0);
        update(&state, "acc", wait, &[ev(Outcome::Sent)], |_| ()).unwrap();
        assert_eq!(
            read(&state, "acc")
                .unwrap()
                .totals
                .messages(Outcome::Refused),
            2
        );
        // A writer killed in the middle of its write damages only the slot it was writing:
        // the generation before stays whole.
        let before = read(&state, "acc").unwrap();
        update(&state, "acc", wait, &[ev(Outcome::Held)], |_| ()).unwrap();
        let raw = std::fs::read(base.join("stats/acc")).unwrap();
        let newest = (0..2)
            .max_by_key(|&i| frame(&raw[i * SLOT as usize..]).map(|f| f.0))
            .unwrap();
        let torn = std::fs::OpenOptions::new()
            .write(true)
            .open(base.join("stats/acc"))
            .unwrap();
        torn.write_all_at(b"garbage", newest as u64 * SLOT + 40)
            .unwrap();
        assert_eq!(
            read(&state, "acc").unwrap(),
            before,
            "the previous generation"
        );
        update(&state, "acc", wait, &[ev(Outcome::Held)], |_| ()).unwrap();
        assert_eq!(
            read(&state, "acc").unwrap().totals.messages(Outcome::Held),
            before.totals.messages(Outcome::Held) + 1
        );
        // Damage of both slots: reported by read, repaired by the next update.
        std::fs::write(base.join("stats/acc"), "mailgate-stats 1\nslot 1").unwrap();
        assert!(read(&state, "acc").is_err());
        let (_, note) = update(&state, "acc", wait, &[ev(Outcome::Held)], |_| ()).unwrap();
        assert!(note.unwrap().contains("started afresh"));
        let s = read(&state, "acc").unwrap();
        assert_eq!(s.totals.messages(Outcome::Held), 1);
        assert!(
            std::fs::read_dir(base.join("stats")).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".new")),
            "no temporary file left"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_file_written_only_in_part_is_recognised() {
        let sealed = seal("mailgate-stats 1\nend\n".to_string(), 42);
        assert_eq!(unseal(&sealed), Ok(("mailgate-stats 1\nend\n", 42)));
        assert_eq!(unseal(""), Ok(("", 0)));
        // A file from before the backlog: nothing folded.
        let old = format!(
            "mailgate-stats 1\nend\nsum {:016x}\n",
            fnv1a(b"mailgate-stats 1\nend\n")
        );
        assert_eq!(unseal(&old), Ok(("mailgate-stats 1\nend\n", 0)));
        assert!(unseal(&sealed[..sealed.len() - 3]).is_err(), "cut short");
        assert!(
            unseal(&format!("{sealed}end\n")).is_err(),
            "an older tail left behind"
        );
        assert!(unseal(&sealed.replace("end", "emd")).is_err(), "changed");
        assert!(unseal("mailgate-stats 1\nend\n").is_err(), "no checksum");
    }
}
