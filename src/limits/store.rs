//! Counter files: one per account plus one for the server cap, each guarded by an exclusive
//! lock and made of two checksummed fixed-size slots. An update writes the slot that does not
//! hold the newest state, so a process killed at any instant leaves the other slot valid.

use super::window::{BUCKETS, Bucket, Window};
use crate::config::MAX_WINDOWS;
use crate::exit::{Exit, Failure};
pub use crate::state_dir::StateDir;
use crate::state_dir::{Dir, flags};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"MGS2";
pub const SLOT_SIZE: usize = 2048;
pub const FILE_SIZE: usize = 2 * SLOT_SIZE;
/// Messages remembered per account for the admin's alert mail.
pub const RECENT: usize = 4;
const SENDER_BYTES: usize = 56;
const SUBJECT_BYTES: usize = 72;
const REASON_BYTES: usize = 80;
const WINDOW_SIZE: usize = 24 + BUCKETS * 12;
const RECENT_SIZE: usize = 8 + 1 + SENDER_BYTES + 1 + SUBJECT_BYTES;
const LAYOUT_SIZE: usize =
    16 + MAX_WINDOWS * WINDOW_SIZE + 1 + RECENT * RECENT_SIZE + 1 + 8 + 1 + REASON_BYTES + 8;
const _: () = assert!(LAYOUT_SIZE <= SLOT_SIZE);

/// What a counter file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub windows: Vec<Window>,
    /// The last few messages (accepted or not), oldest first.
    pub recent: Vec<Recent>,
    /// Set by `mailgate lock` or by `lock_after`: everything is held.
    pub lock: Option<AccountLock>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recent {
    pub time: i64,
    pub sender: String,
    pub subject: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountLock {
    pub since: i64,
    pub reason: String,
}

impl Record {
    /// Remember a message for the alert mail, keeping the last `RECENT`.
    pub fn remember(&mut self, time: i64, sender: &str, subject: &str) {
        if self.recent.len() == RECENT {
            self.recent.remove(0);
        }
        self.recent.push(Recent {
            time,
            sender: truncate(sender, SENDER_BYTES),
            subject: truncate(subject, SUBJECT_BYTES),
        });
    }
}

/// The longest prefix of `s` that fits `max` bytes, cut at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Whose counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter<'a> {
    Account(&'a str),
    Server,
}

/// Fixed-layout little-endian writer over one slot.
struct Put<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl Put<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.out[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.bytes(&v.to_le_bytes());
    }
    /// A length byte, then `width` bytes of which the first `len` are the string.
    fn str(&mut self, s: &str, width: usize) {
        let s = truncate(s, width);
        self.u8(s.len() as u8);
        self.bytes(s.as_bytes());
        self.pos += width - s.len();
    }
}

/// Fixed-layout reader; `None` on any inconsistency.
struct Take<'a> {
    slot: &'a [u8],
    pos: usize,
}

impl Take<'_> {
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.slot.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
    fn str(&mut self, width: usize) -> Option<String> {
        let len = self.u8()? as usize;
        let field = self.bytes(width)?;
        String::from_utf8(field.get(..len)?.to_vec()).ok()
    }
}

pub fn encode(record: &Record) -> [u8; SLOT_SIZE] {
    let mut out = [0u8; SLOT_SIZE];
    let mut p = Put {
        out: &mut out,
        pos: 0,
    };
    p.bytes(MAGIC);
    p.u64(record.seq);
    let n = record.windows.len().min(MAX_WINDOWS);
    p.u32(n as u32);
    for w in &record.windows[..n] {
        p.u64(w.secs);
        p.i64(w.head);
        p.i64(w.alerted_until);
        for b in &w.buckets {
            p.u32(b.messages);
            p.u32(b.recipients);
            p.u32(b.refused);
        }
    }
    p.pos = 16 + MAX_WINDOWS * WINDOW_SIZE;
    let recent = &record.recent[record.recent.len().saturating_sub(RECENT)..];
    p.u8(recent.len() as u8);
    for r in recent {
        p.i64(r.time);
        p.str(&r.sender, SENDER_BYTES);
        p.str(&r.subject, SUBJECT_BYTES);
    }
    p.pos = 16 + MAX_WINDOWS * WINDOW_SIZE + 1 + RECENT * RECENT_SIZE;
    match &record.lock {
        Some(lock) => {
            p.u8(1);
            p.i64(lock.since);
            p.str(&lock.reason, REASON_BYTES);
        }
        None => p.u8(0),
    }
    let sum = fnv1a(&out[..SLOT_SIZE - 8]);
    out[SLOT_SIZE - 8..].copy_from_slice(&sum.to_le_bytes());
    out
}

/// `None` when the slot is empty, torn or foreign.
pub fn decode(slot: &[u8]) -> Option<Record> {
    if slot.len() != SLOT_SIZE || &slot[..4] != MAGIC {
        return None;
    }
    let sum = u64::from_le_bytes(slot[SLOT_SIZE - 8..].try_into().ok()?);
    if sum != fnv1a(&slot[..SLOT_SIZE - 8]) {
        return None;
    }
    let mut t = Take { slot, pos: 4 };
    let seq = t.u64()?;
    let n = t.u32()? as usize;
    if n > MAX_WINDOWS {
        return None;
    }
    let mut windows = Vec::with_capacity(n);
    for _ in 0..n {
        let secs = t.u64()?;
        let head = t.i64()?;
        let alerted_until = t.i64()?;
        let mut buckets = [Bucket::default(); BUCKETS];
        for b in &mut buckets {
            b.messages = t.u32()?;
            b.recipients = t.u32()?;
            b.refused = t.u32()?;
        }
        windows.push(Window {
            secs,
            head,
            alerted_until,
            buckets,
        });
    }
    t.pos = 16 + MAX_WINDOWS * WINDOW_SIZE;
    let nrecent = t.u8()? as usize;
    if nrecent > RECENT {
        return None;
    }
    let mut recent = Vec::with_capacity(nrecent);
    for _ in 0..nrecent {
        recent.push(Recent {
            time: t.i64()?,
            sender: t.str(SENDER_BYTES)?,
            subject: t.str(SUBJECT_BYTES)?,
        });
    }
    t.pos = 16 + MAX_WINDOWS * WINDOW_SIZE + 1 + RECENT * RECENT_SIZE;
    let lock = match t.u8()? {
        0 => None,
        _ => Some(AccountLock {
            since: t.i64()?,
            reason: t.str(REASON_BYTES)?,
        }),
    };
    Some(Record {
        seq,
        windows,
        recent,
        lock,
    })
}

/// FNV-1a, the checksum of counter slots and statistics files.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The counters in the state directory: `accounts/NAME` and `server`.
impl StateDir {
    pub fn counter_path(&self, counter: Counter<'_>) -> PathBuf {
        match counter {
            Counter::Account(name) => self.path().join("accounts").join(name),
            Counter::Server => self.path().join("server"),
        }
    }

    /// Open (creating if needed) and lock a counter file, waiting at most `timeout`. A lock
    /// still held then is an error that names its holder.
    pub fn lock(&self, counter: Counter<'_>, timeout: Duration) -> Result<CounterFile, Failure> {
        match self.lock_within(counter, timeout)? {
            Ok(f) => Ok(f),
            Err(busy) => Err(Failure::busy(busy.describe())),
        }
    }

    /// Like `lock`, but a lock still held at the deadline is `Err(Busy)`: the caller decides
    /// (a sender keeps the message in defer/; `queue run` ends a stopped holder).
    pub fn lock_within(
        &self,
        counter: Counter<'_>,
        timeout: Duration,
    ) -> Result<Result<CounterFile, Busy>, Failure> {
        let path = self.counter_path(counter);
        let file = match counter {
            Counter::Account(name) => open_counter_at(&self.subdir("accounts")?, name),
            Counter::Server => open_counter_at(self.top(), "server"),
        }
        .map_err(|e| Failure::io(Exit::OsErr, format!("cannot open {}", path.display()), &e))?;
        match lock_with_deadline(&file, timeout) {
            Ok(()) => Ok(Ok(CounterFile { file, path })),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                let holder = lock_holder(&file);
                Ok(Err(Busy { path, holder }))
            }
            Err(e) => Err(Failure::io(
                Exit::OsErr,
                format!("cannot lock {}", path.display()),
                &e,
            )),
        }
    }

    /// Whether the counter is a regular file (not a directory, symlink or device put there).
    pub fn is_regular_file(&self, counter: Counter<'_>) -> bool {
        std::fs::symlink_metadata(self.counter_path(counter)).is_ok_and(|m| m.file_type().is_file())
    }

    /// Move a counter that cannot be opened as a file (a directory, a symlink, a device) out
    /// of the way, to `.broken-NAME-TIME` beside it, so that `reset` can start it afresh.
    pub fn set_aside(&self, counter: Counter<'_>) -> Result<(), Failure> {
        let accounts;
        let (dir, name) = match counter {
            Counter::Account(name) => {
                accounts = self.subdir("accounts")?;
                (&accounts, name)
            }
            Counter::Server => (self.top(), "server"),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let aside = format!(".broken-{name}-{}.{:09}", now.as_secs(), now.subsec_nanos());
        match dir.rename(name, dir, &aside) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Failure::io(
                Exit::OsErr,
                format!("cannot move {} aside", self.counter_path(counter).display()),
                &e,
            )),
            _ => Ok(()),
        }
    }
}

/// Open a counter file, never following a symlink. A missing one is created whole: a valid
/// empty record is written under a temporary name and linked into place, so that a counter
/// file of zero bytes can only be damage (fail-closed applies), never a fresh start.
fn open_counter_at(dir: &Dir, name: &str) -> io::Result<File> {
    match dir.open_file(name, flags::READ_WRITE) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_counter_at(dir, name)?;
            dir.open_file(name, flags::READ_WRITE)
        }
        other => other,
    }
}

fn create_counter_at(dir: &Dir, name: &str) -> io::Result<()> {
    // Account names never start with '.', so this cannot be anyone's counter.
    let tmp = format!(".new-{}-{name}", std::process::id());
    let file = dir.open_file(&tmp, flags::READ_WRITE | flags::CREATE | libc::O_TRUNC)?;
    let empty = encode(&Record::default());
    let linked = file
        .write_all_at(&empty, 0)
        .and_then(|()| file.write_all_at(&empty, SLOT_SIZE as u64))
        .and_then(|()| match dir.link(&tmp, name) {
            // Another sender created it first: theirs is as good.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        });
    let _ = dir.unlink(&tmp);
    linked
}

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
fn lock_holder(file: &File) -> Option<Holder> {
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

/// A locked counter file. The lock is released when this is dropped.
pub struct CounterFile {
    file: File,
    path: PathBuf,
}

/// A counter file whose content is neither empty nor a valid record.
#[derive(Debug)]
pub struct Corrupt(pub String);

impl CounterFile {
    pub fn load(&self) -> Result<Record, Corrupt> {
        let mut buf = vec![0u8; FILE_SIZE];
        let n = read_full(&self.file, &mut buf)
            .map_err(|e| Corrupt(format!("cannot read {}: {e}", self.path.display())))?;
        if buf[..n].iter().all(|&b| b == 0) {
            // Counter files are born with a valid record: emptiness is damage (truncation).
            return Err(Corrupt(format!(
                "{} is empty (truncated?); `mailgate reset` rewrites it",
                self.path.display()
            )));
        }
        let a = decode(&buf[..SLOT_SIZE]);
        let b = decode(&buf[SLOT_SIZE..]);
        match (a, b) {
            (Some(a), Some(b)) => Ok(if a.seq >= b.seq { a } else { b }),
            (Some(r), None) | (None, Some(r)) => Ok(r),
            (None, None) => Err(Corrupt(format!(
                "{} is corrupt (no valid record; `mailgate reset` rewrites it)",
                self.path.display()
            ))),
        }
    }

    /// Write `record` with the next sequence number into the slot the newest state is not in.
    pub fn save(&self, record: &mut Record) -> Result<(), Failure> {
        record.seq += 1;
        let slot = record.seq % 2;
        self.file
            .write_all_at(&encode(record), slot * SLOT_SIZE as u64)
            .map_err(|e| {
                Failure::io(
                    Exit::OsErr,
                    format!("cannot write {}", self.path.display()),
                    &e,
                )
            })
    }
}

fn read_full(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut w = Window::new(3600, 1_000_000);
        w.record(1_000_000, 7);
        w.record_refused(1_000_000);
        let mut r = Record {
            seq: 41,
            windows: vec![w, Window::new(60, 5)],
            ..Record::default()
        };
        r.remember(1_000_000, "a@example.org", "Invoice \u{e4}\u{f6}\u{fc}");
        r.remember(1_000_001, &"x".repeat(300), &"\u{e4}".repeat(100));
        r.lock = Some(AccountLock {
            since: 1_000_002,
            reason: "spam run".into(),
        });
        r
    }

    #[test]
    fn the_on_disk_layout_is_fixed() {
        // State files outlive binaries: a changed layout needs a new MAGIC, never a silent
        // shift. The offsets are written out as numbers on purpose.
        let mut rec = sample();
        rec.windows = (0..5).map(|i| Window::new(60 * (i + 1), 9)).collect();
        for i in 0..4 {
            rec.remember(100 + i, "s", "t");
        }
        let slot = encode(&rec);
        assert_eq!(slot.len(), 2048);
        assert_eq!(&slot[..4], b"MGS2");
        assert_eq!(&slot[4..12], &rec.seq.to_le_bytes());
        assert_eq!(&slot[12..16], &5u32.to_le_bytes());
        // Each window: secs, head, alerted_until, then 20 buckets of 3 x u32 (264 bytes).
        assert_eq!(&slot[16 + 264..16 + 264 + 8], &120u64.to_le_bytes());
        // The recent messages at 16 + 5 x 264, each 8 + 1 + 56 + 1 + 72 bytes.
        assert_eq!(slot[1336], 4);
        assert_eq!(&slot[1337..1345], &100i64.to_le_bytes());
        assert_eq!(&slot[1345..1347], &[1, b's']);
        assert_eq!(&slot[1402..1404], &[1, b't']);
        assert_eq!(
            &slot[1337 + 3 * 138..1337 + 3 * 138 + 8],
            &103i64.to_le_bytes()
        );
        // The lock after them, the checksum in the last 8 bytes.
        assert_eq!(slot[1889], 1);
        assert_eq!(&slot[1890..1898], &1_000_002i64.to_le_bytes());
        assert_eq!(
            &slot[1898..1907],
            &[8, b's', b'p', b'a', b'm', b' ', b'r', b'u', b'n']
        );
        assert_eq!(&slot[2040..], &fnv1a(&slot[..2040]).to_le_bytes());
        // Full and empty records round-trip; a slot cut short is no record.
        assert_eq!(decode(&slot), Some(rec));
        let empty = Record::default();
        assert_eq!(decode(&encode(&empty)), Some(empty));
        assert_eq!(decode(&slot[..100]), None);
        assert_eq!(FILE_SIZE, 4096);
    }

    #[test]
    fn remembered_texts_are_cut_at_a_character_boundary() {
        let mut rec = Record::default();
        // 1 + 2 x 40 bytes: byte 56 is inside a character.
        rec.remember(1, &format!("a{}", "\u{fc}".repeat(40)), "s");
        assert_eq!(rec.recent[0].sender.len(), 55);
        assert!(rec.recent[0].sender.ends_with('\u{fc}'));
    }

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

    #[test]
    fn codec_round_trips_and_detects_damage() {
        let r = sample();
        let slot = encode(&r);
        let back = decode(&slot).unwrap();
        assert_eq!(back.recent[1].sender.len(), SENDER_BYTES);
        assert!(back.recent[1].subject.len() <= SUBJECT_BYTES);
        assert_eq!(back.recent[0], r.recent[0]);
        assert_eq!(
            (back.seq, &back.windows, &back.lock),
            (r.seq, &r.windows, &r.lock)
        );
        for pos in [0, 5, 20, 300, SLOT_SIZE - 1] {
            let mut bad = slot;
            bad[pos] ^= 0x40;
            assert_eq!(decode(&bad), None, "flip at {pos}");
        }
    }

    #[test]
    fn torn_write_falls_back_to_other_slot() {
        let dir = std::env::temp_dir().join(format!("mailgate-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state = StateDir::open(&dir).unwrap();
        let f = state
            .lock(Counter::Account("a"), Duration::from_secs(1))
            .unwrap();
        let mut r = sample();
        f.save(&mut r).unwrap();
        let good = r.clone();
        r.windows[0].record(1_000_000, 1);
        f.save(&mut r).unwrap();
        // Tear the newest slot: the previous state must come back.
        let slot = r.seq % 2;
        f.file
            .write_all_at(&[0xff; 100], slot * SLOT_SIZE as u64 + 10)
            .unwrap();
        assert_eq!(f.load().unwrap(), good);
        // Tear both: corrupt, reported with the path.
        f.file
            .write_all_at(&[0xff; 100], (1 - slot) * SLOT_SIZE as u64 + 10)
            .unwrap();
        let e = f.load().unwrap_err();
        assert!(e.0.contains("accounts/a"), "{}", e.0);
        drop(f);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #[test]
        /// Records with a valid magic and checksum but hostile contents (any counts, string
        /// bytes, lengths): decoding never panics, and what decodes re-encodes to itself.
        fn decode_of_valid_checksums_never_panics(
            body in proptest::collection::vec(proptest::num::u8::ANY, SLOT_SIZE - 12),
        ) {
            let mut slot = [0u8; SLOT_SIZE];
            slot[..4].copy_from_slice(MAGIC);
            slot[4..SLOT_SIZE - 8].copy_from_slice(&body);
            let sum = fnv1a(&slot[..SLOT_SIZE - 8]);
            slot[SLOT_SIZE - 8..].copy_from_slice(&sum.to_le_bytes());
            if let Some(record) = decode(&slot) {
                let again = decode(&encode(&record)).expect("re-encoded record decodes");
                proptest::prop_assert_eq!(again, record);
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, SLOT_SIZE)) {
            let _ = decode(&bytes);
        }
    }
}
