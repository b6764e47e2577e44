//! The statistics files: `stats/ACCOUNT` in the state directory. A writer locks the current
//! file, writes the new content beside it and renames it into place, so a reader never sees
//! half a file and a sender killed at any instant leaves the previous one whole.

use super::Stats;
use crate::exit::{Exit, Failure};
use crate::state_dir::{Dir, StateDir, flags};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

const DIR: &str = "stats";

/// What became of an update.
#[derive(Debug, PartialEq, Eq)]
pub enum Updated<T> {
    Done(T),
    /// Another process held the file's lock past the deadline (a stopped sender of the same
    /// account): the update is skipped; the log line stays the record.
    Busy,
}

/// Change an account's statistics under its lock. A damaged file is started afresh; the
/// returned note says so, for the log.
pub fn update<T>(
    state: &StateDir,
    account: &str,
    wait: Duration,
    change: impl FnOnce(&mut Stats) -> T,
) -> Result<(Updated<T>, Option<String>), Failure> {
    checked(account)?;
    let dir = state.subdir(DIR)?;
    let path = state.path().join(DIR).join(account);
    let fail = |what: &str, e: std::io::Error| {
        Failure::io(Exit::OsErr, format!("cannot {what} {}", path.display()), &e)
    };
    let Some(mut file) = lock_current(&dir, account, wait).map_err(|e| fail("lock", e))? else {
        return Ok((Updated::Busy, None));
    };
    let mut text = String::new();
    let mut note = None;
    let mut stats = match bounded_read(&mut file, &mut text) {
        Ok(()) => Stats::decode(&text).unwrap_or_else(|why| {
            note = Some(format!(
                "{} was damaged ({why}); started afresh",
                path.display()
            ));
            Stats::default()
        }),
        Err(e) => {
            note = Some(format!(
                "cannot read {}: {e}; started afresh",
                path.display()
            ));
            Stats::default()
        }
    };
    let result = change(&mut stats);
    let new = format!(".new-{account}-{}", std::process::id());
    let mut out = dir
        .open_file(&new, flags::REWRITE)
        .map_err(|e| fail("write", e))?;
    if let Err(e) = out.write_all(stats.encode().as_bytes()) {
        let _ = dir.unlink(&new);
        return Err(fail("write", e));
    }
    dir.rename(&new, &dir, account)
        .map_err(|e| fail("replace", e))?;
    // The lock (on the replaced file) goes with `file`, after the new one is in place.
    drop(file);
    Ok((Updated::Done(result), note))
}

/// An account name is a file name here: never one with a `/` or a `..`.
fn checked(account: &str) -> Result<(), Failure> {
    crate::config::validate_account_name(account).map_err(|why| Failure::new(Exit::Software, why))
}

/// Open and lock the file that is in place now: after waiting for the lock, a file that was
/// replaced meanwhile is opened again.
fn lock_current(dir: &Dir, name: &str, wait: Duration) -> std::io::Result<Option<std::fs::File>> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let file = dir.open_file(name, flags::READ_WRITE | flags::CREATE)?;
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match crate::limits::store::lock_with_deadline(&file, left) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Ok(None),
            Err(e) => return Err(e),
        }
        let meta = file.metadata()?;
        if dir.identity(name)? == (meta.dev(), meta.ino()) {
            return Ok(Some(file));
        }
        if std::time::Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// An account's statistics as they are (no lock: files are replaced whole). A missing file is
/// empty statistics; a damaged one an error naming it.
pub fn read(state: &StateDir, account: &str) -> Result<Stats, Failure> {
    checked(account)?;
    let path = state.path().join(DIR).join(account);
    let dir = state.subdir(DIR)?;
    let mut text = String::new();
    match dir.open_file(account, flags::READ) {
        Ok(mut f) => {
            bounded_read(&mut f, &mut text).map_err(|e| {
                Failure::io(Exit::OsErr, format!("cannot read {}", path.display()), &e)
            })?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Failure::io(
                Exit::OsErr,
                format!("cannot open {}", path.display()),
                &e,
            ));
        }
    }
    Stats::decode(&text)
        .map_err(|why| Failure::new(Exit::OsErr, format!("{}: {why}", path.display())))
}

/// A statistics file is never larger than `MAX_FILE`: one that is was not written by us, and
/// is not read further.
fn bounded_read(file: &mut std::fs::File, text: &mut String) -> std::io::Result<()> {
    // Room for a typical file up front: one read instead of a doubling series of them.
    text.reserve(8192);
    file.take(super::MAX_FILE as u64 + 1).read_to_string(text)?;
    if text.len() > super::MAX_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} bytes", super::MAX_FILE),
        ));
    }
    Ok(())
}

/// Accounts with statistics.
pub fn accounts(state: &StateDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state.path().join(DIR))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
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
            let (done, note) =
                update(&state, "acc", wait, |s| s.record(&ev(Outcome::Sent))).unwrap();
            assert_eq!((done, note), (Updated::Done(()), None));
        }
        assert_eq!(
            read(&state, "acc").unwrap().totals.messages(Outcome::Sent),
            3
        );
        assert_eq!(accounts(&state), vec!["acc".to_string()]);
        assert!(
            update(&state, "../acc", wait, |_| ()).is_err(),
            "no path as a name"
        );
        assert!(read(&state, "a/b").is_err());
        // A held lock: the update is skipped within the wait.
        let held = std::fs::File::open(base.join("stats/acc")).unwrap();
        held.lock().unwrap();
        let (done, _) = update(&state, "acc", wait, |s| s.record(&ev(Outcome::Sent))).unwrap();
        assert_eq!(done, Updated::Busy);
        drop(held);
        // Damage: reported by read, repaired by the next update.
        std::fs::write(base.join("stats/acc"), "mailgate-stats 1\nslot 1").unwrap();
        assert!(read(&state, "acc").is_err());
        let (_, note) = update(&state, "acc", wait, |s| s.record(&ev(Outcome::Held))).unwrap();
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
}
