//! Counter files: one per account plus one for the server cap, each guarded by an exclusive
//! lock and made of two checksummed fixed-size slots. An update writes the slot that does not
//! hold the newest state, so a process killed at any instant leaves the other slot valid.

use super::window::{BUCKETS, Bucket, Window};
use crate::bounded::cut;
use crate::config::MAX_WINDOWS;
use crate::exit::{Exit, Failure};
use crate::state::fnv1a;
use crate::state::lock::{Busy, lock_holder, lock_with_deadline};
use crate::state::{Dir, StateDir, flags};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

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
pub struct CounterRecord {
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
    /// Set by a failure-rate trigger whose hold ends by itself (`ends = "auto"`): the queue
    /// run lifts it when the rate falls back under the threshold. An admin's lock, and
    /// `lock_after`'s, end only by `mailgate unlock`.
    pub ends_itself: bool,
}

impl CounterRecord {
    /// Remember a message for the alert mail, keeping the last `RECENT`.
    pub fn remember(&mut self, time: i64, sender: &str, subject: &str) {
        if self.recent.len() == RECENT {
            self.recent.remove(0);
        }
        self.recent.push(Recent {
            time,
            sender: cut(sender, SENDER_BYTES),
            subject: cut(subject, SUBJECT_BYTES),
        });
    }
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
        let s = cut(s, width);
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

pub fn encode(record: &CounterRecord) -> [u8; SLOT_SIZE] {
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
            p.u8(if lock.ends_itself { 2 } else { 1 });
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
pub fn decode(slot: &[u8]) -> Option<CounterRecord> {
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
        kind => Some(AccountLock {
            since: t.i64()?,
            reason: t.str(REASON_BYTES)?,
            ends_itself: kind == 2,
        }),
    };
    Some(CounterRecord {
        seq,
        windows,
        recent,
        lock,
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
        lock_counter(file, path, timeout)
    }

    /// A script's counter, `scripts/NAME` (`crate::script::rules`), locked like `lock_within`.
    pub fn lock_script_counter(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Result<CounterFile, Busy>, Failure> {
        let path = self.path().join(crate::state::SCRIPTS).join(name);
        let file = open_counter_at(&self.subdir(crate::state::SCRIPTS)?, name)
            .map_err(|e| Failure::io(Exit::OsErr, format!("cannot open {}", path.display()), &e))?;
        lock_counter(file, path, timeout)
    }

    /// Whether the counter is a regular file (not a directory, symlink or device put there).
    pub fn is_regular_file(&self, counter: Counter<'_>) -> bool {
        match counter {
            Counter::Account(name) => self
                .top()
                .open_dir("accounts")
                .is_ok_and(|d| d.is_regular_file(name)),
            Counter::Server => self.top().is_regular_file("server"),
        }
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
fn lock_counter(
    file: File,
    path: PathBuf,
    timeout: Duration,
) -> Result<Result<CounterFile, Busy>, Failure> {
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
    let empty = encode(&CounterRecord::default());
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

/// A locked counter file. The lock is released when this is dropped.
pub struct CounterFile {
    file: File,
    path: PathBuf,
}

/// A counter file whose content is neither empty nor a valid record.
#[derive(Debug)]
pub struct Corrupt(pub String);

impl CounterFile {
    pub fn load(&self) -> Result<CounterRecord, Corrupt> {
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
    pub fn save(&self, record: &mut CounterRecord) -> Result<(), Failure> {
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

    fn sample() -> CounterRecord {
        let mut w = Window::new(3600, 1_000_000);
        w.record(1_000_000, 7);
        w.record_refused(1_000_000);
        let mut r = CounterRecord {
            seq: 41,
            windows: vec![w, Window::new(60, 5)],
            ..CounterRecord::default()
        };
        r.remember(1_000_000, "a@example.org", "Invoice \u{e4}\u{f6}\u{fc}");
        r.remember(1_000_001, &"x".repeat(300), &"\u{e4}".repeat(100));
        r.lock = Some(AccountLock {
            since: 1_000_002,
            reason: "spam run".into(),
            ends_itself: true,
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
        // The lock after them (1: until unlocked, 2: a trigger's hold that ends by itself;
        // a binary from before reads both as locked), the checksum in the last 8 bytes.
        assert_eq!(slot[1889], 2);
        assert_eq!(&slot[1890..1898], &1_000_002i64.to_le_bytes());
        assert_eq!(
            &slot[1898..1907],
            &[8, b's', b'p', b'a', b'm', b' ', b'r', b'u', b'n']
        );
        assert_eq!(&slot[2040..], &fnv1a(&slot[..2040]).to_le_bytes());
        // Full and empty records round-trip; a slot cut short is no record.
        assert_eq!(decode(&slot), Some(rec));
        let empty = CounterRecord::default();
        assert_eq!(decode(&encode(&empty)), Some(empty));
        assert_eq!(decode(&slot[..100]), None);
        assert_eq!(FILE_SIZE, 4096);
    }

    #[test]
    fn remembered_texts_are_cut_at_a_character_boundary() {
        let mut rec = CounterRecord::default();
        // 1 + 2 x 40 bytes: byte 56 is inside a character.
        rec.remember(1, &format!("a{}", "\u{fc}".repeat(40)), "s");
        assert_eq!(rec.recent[0].sender.len(), 55);
        assert!(rec.recent[0].sender.ends_with('\u{fc}'));
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
