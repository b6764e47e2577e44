//! Locks on state files: a wait with a deadline (`File::lock` has none), who holds a lock that
//! was not given back in time (/proc/locks, /proc/PID/status), and the end of a holder that is
//! stopped (SIGSTOP'ed by its owner to block everyone else). Every state file that is locked
//! (counters, statistics, ledgers) is locked through here.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `File::lock` has no timeout: poll `try_lock` with a short, growing pause.
pub(crate) fn lock_with_deadline(file: &File, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(50);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "another sender held the lock for more than {} s",
                    timeout.as_secs_f32()
                ),
            ));
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// Marks the text of a counter lock that was held too long (see `Busy::describe`).
const BUSY: &str = "counter busy";

/// A counter whose lock another process held past the deadline.
#[derive(Debug, Clone)]
pub struct Busy {
    pub path: PathBuf,
    pub holder: Option<Holder>,
}

/// The process holding a lock, as /proc tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub uid: Option<u32>,
    /// SIGSTOPped (state T) or traced (t): it will not let go by itself.
    pub stopped: bool,
}

impl Busy {
    pub fn describe(&self) -> String {
        let who = match &self.holder {
            Some(h) => format!(
                "held by pid {}{}{}",
                h.pid,
                h.uid.map_or(String::new(), |u| format!(" (uid {u})")),
                if h.stopped { ", which is stopped" } else { "" }
            ),
            None => "held by another process".into(),
        };
        format!("{BUSY}: {} is {who}", self.path.display())
    }
}

/// Who holds the flock on `file`: its inode in /proc/locks, then /proc/PID/status.
pub(crate) fn lock_holder(file: &File) -> Option<Holder> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = holder_pid(&locks, meta.dev(), meta.ino())?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    Some(holder_from_status(pid, &status))
}

/// `1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF` → 4242 for inode 1234567 on fd:01.
fn holder_pid(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "->" marks a waiter, not the holder.
        if fields.get(1) == Some(&"->") || fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let pid: u32 = fields.get(4)?.parse().ok()?;
        let mut id = fields.get(5)?.split(':');
        let (maj, min, inode) = (id.next()?, id.next()?, id.next()?);
        let same = u32::from_str_radix(maj, 16).ok()? == major
            && u32::from_str_radix(min, 16).ok()? == minor
            && inode.parse::<u64>().ok()? == ino;
        same.then_some(pid)
    })
}

fn holder_from_status(pid: u32, status: &str) -> Holder {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let state = field("State:");
    Holder {
        pid,
        uid: field("Uid:")
            .split_whitespace()
            .next()
            .and_then(|u| u.parse().ok()),
        stopped: state.starts_with('T') || state.starts_with('t'),
    }
}

/// `queue run` as root ends a process that is stopped while holding a counter lock: it will
/// never let go by itself, and it is the caller's own mailgate (whose caller got no answer
/// yet, so nothing it promised is broken). Returns what it did, for the log.
pub fn end_stopped_holder(busy: &Busy) -> Option<String> {
    let h = busy.holder.as_ref()?;
    // SAFETY: geteuid cannot fail.
    if !h.stopped || unsafe { libc::geteuid() } != 0 || h.uid == Some(0) {
        return None;
    }
    // Only a mailgate process (the lock is mailgate's), never anything else.
    let exe = std::fs::read_link(format!("/proc/{}/exe", h.pid)).ok()?;
    let own = std::fs::read_link("/proc/self/exe").ok()?;
    if exe != own {
        return None;
    }
    // SAFETY: kill has no memory preconditions; pid was read from /proc just now.
    (unsafe { libc::kill(h.pid as libc::pid_t, libc::SIGKILL) } == 0).then(|| {
        format!(
            "ended stopped pid {} (uid {:?}) holding {}",
            h.pid,
            h.uid,
            busy.path.display()
        )
    })
}

/// Lock `file` (at `path`), waiting at most `wait`; when the wait runs out and this is root,
/// a stopped mailgate process that holds the lock is ended first and the lock taken then
/// (`end_stopped_holder`). Returns the result and what was ended, for the log.
pub(crate) fn lock_ending_stopped(
    file: &File,
    path: &std::path::Path,
    wait: Duration,
) -> (io::Result<()>, Option<String>) {
    let locked = lock_with_deadline(file, wait);
    match &locked {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            let busy = Busy {
                path: path.to_path_buf(),
                holder: lock_holder(file),
            };
            match end_stopped_holder(&busy) {
                Some(done) => (lock_with_deadline(file, Duration::from_secs(1)), Some(done)),
                None => (locked, None),
            }
        }
        _ => (locked, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_holders_from_proc() {
        let locks = "1: POSIX  ADVISORY  WRITE 77 fd:01:99 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 4343 fd:01:1234567 0 EOF\n";
        let dev = libc::makedev(0xfd, 0x01);
        assert_eq!(holder_pid(locks, dev, 1234567), Some(4242));
        assert_eq!(holder_pid(locks, dev, 99), None, "POSIX locks are not ours");
        assert_eq!(holder_pid(locks, libc::makedev(8, 1), 1234567), None);
        let h = holder_from_status(
            4242,
            "Name:\tmailgate\nState:\tT (stopped)\nUid:\t1001\t1001\t1001\t1001\n",
        );
        assert_eq!(
            h,
            Holder {
                pid: 4242,
                uid: Some(1001),
                stopped: true
            }
        );
        assert!(!holder_from_status(1, "State:\tS (sleeping)\n").stopped);
    }
}
