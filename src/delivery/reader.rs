//! Reading the relay's log incrementally: from a remembered position (device, inode, offset)
//! to the last whole line, at most `budget` bytes per run. The position survives
//!
//! - rotation by rename (logrotate's default, Postfix's `postfix logrotate`): the rest of the
//!   old file is read from `PATH.1` when it is the same inode, then the new file from its start;
//! - truncation (`copytruncate`): a file shorter than the position is read from its start;
//! - a line being written: the part after the last newline stays for the next run.
//!
//! The log is opened without following a symlink and must be a regular file: a log replaced by
//! a symlink (or a FIFO) is refused, and the reader says it is blind.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where the next run goes on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
    /// Checksum of the file's first line: a log removed and made again may get the same
    /// inode number, and is then still a new file.
    pub head: u64,
}

impl Position {
    pub fn encode(&self) -> String {
        format!("{} {} {} {}\n", self.dev, self.ino, self.offset, self.head)
    }

    /// A damaged or missing position is the start (`Position::default`).
    pub fn decode(text: &str) -> Position {
        let n: Vec<u64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        match n[..] {
            [dev, ino, offset, head] => Position {
                dev,
                ino,
                offset,
                head,
            },
            _ => Position::default(),
        }
    }

    fn is_file(&self, meta: &std::fs::Metadata, head: u64) -> bool {
        (meta.dev(), meta.ino()) == (self.dev, self.ino) && (self.head == head || self.head == 0)
    }
}

/// The checksum of the first line (at most 512 bytes); 0 before there is one.
fn head_bytes(file: &mut (impl Read + Seek)) -> io::Result<u64> {
    let mut buf = [0u8; 512];
    file.seek(SeekFrom::Start(0))?;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(match buf[..n].iter().position(|&b| b == b'\n') {
        Some(end) => crate::state::fnv1a(&buf[..end]),
        None if n == buf.len() => crate::state::fnv1a(&buf),
        None => 0,
    })
}

/// What one run read.
#[derive(Debug, Default)]
pub struct Batch {
    /// Whole lines (lossy UTF-8), in order.
    pub text: String,
    pub next: Position,
    /// What the admin should know: a truncation, lines lost to a rotation, the budget reached.
    pub notes: Vec<String>,
    /// The budget ran out before the end of the log.
    pub more: bool,
}

/// Why the log cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blind {
    pub why: String,
    /// The caller lacks the permission (an admin in group mailgate, not root): not the log's
    /// fault, and no reason to say the outcomes are blind.
    pub denied: bool,
}

/// The log at `path`, opened without following a symlink, never blocking; a regular file.
fn open(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(file)
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Read what was added to the log at `path` since `from`, at most `budget` bytes.
pub fn read_new(path: &Path, from: Position, budget: u64) -> Result<Batch, Blind> {
    let why = |e: io::Error| {
        let what = match e.raw_os_error() {
            Some(libc::ELOOP) => "is a symbolic link (refused)".to_string(),
            _ => e.to_string(),
        };
        Blind {
            why: format!("cannot read the relay's log {}: {what}", path.display()),
            denied: e.kind() == io::ErrorKind::PermissionDenied,
        }
    };
    let mut file = open(path).map_err(why)?;
    let meta = file.metadata().map_err(why)?;
    let head = head_bytes(&mut file).map_err(why)?;
    let mut batch = Batch::default();
    let mut budget = budget;
    let mut start = 0;
    let same_inode = (meta.dev(), meta.ino()) == (from.dev, from.ino);
    if from.is_file(&meta, head) && meta.len() >= from.offset {
        start = from.offset;
    } else if same_inode {
        batch.notes.push(format!(
            "{} was truncated or written anew since the last run: read from its start",
            path.display()
        ));
    } else if from.ino != 0 {
        // Rotated since: finish the old file first, if it is still beside it.
        let old = rotated(path);
        // Reads and seeks work on `&File`: `head_bytes(&mut &File)`.
        let mut former = open(&old).ok().filter(|mut f| {
            f.metadata()
                .is_ok_and(|m| head_bytes(&mut f).is_ok_and(|h| from.is_file(&m, h)))
        });
        match &mut former {
            Some(f) => {
                let (taken, more) =
                    read_lines(f, from.offset, budget, &mut batch.text).map_err(why)?;
                if more {
                    batch.more = true;
                    batch.next = Position {
                        offset: from.offset + taken,
                        ..from
                    };
                    return Ok(batch);
                }
                budget -= taken;
            }
            None => batch.notes.push(format!(
                "{} was replaced and its former file is not {}: what was logged there after the last run is not counted",
                path.display(),
                old.display()
            )),
        }
    }
    let (taken, more) = read_lines(&mut file, start, budget, &mut batch.text).map_err(why)?;
    batch.more = more;
    let head = if head == 0 && taken > 0 {
        head_bytes(&mut file).map_err(why)?
    } else {
        head
    };
    batch.next = Position {
        dev: meta.dev(),
        ino: meta.ino(),
        offset: start + taken,
        head,
    };
    if more {
        batch.notes.push(format!(
            "{} has more than this run reads; the next run goes on",
            path.display()
        ));
    }
    Ok(batch)
}

/// Append the whole lines from `start` (at most `budget` bytes) to `out`. Returns the bytes
/// consumed and whether whole lines were left for later.
fn read_lines(
    file: &mut File,
    start: u64,
    budget: u64,
    out: &mut String,
) -> io::Result<(u64, bool)> {
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    // One byte past the budget tells whether there is more.
    file.take(budget + 1).read_to_end(&mut buf)?;
    let more = buf.len() as u64 > budget;
    buf.truncate(budget as usize);
    let whole = match buf.iter().rposition(|&b| b == b'\n') {
        Some(last) => last + 1,
        None => 0,
    };
    out.push_str(&String::from_utf8_lossy(&buf[..whole]));
    Ok((whole as u64, more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("mg-reader-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
        fn log(&self) -> PathBuf {
            self.0.join("postfix-postfwd.log")
        }
        fn append(&self, text: &str) {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log())
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn goes_on_where_it_stopped_and_leaves_a_cut_line() {
        let s = Scratch::new("cut");
        s.append("one\ntwo\nthr");
        let b = read_new(&s.log(), Position::default(), 1 << 20).unwrap();
        assert_eq!(b.text, "one\ntwo\n");
        assert_eq!(b.next.offset, 8);
        s.append("ee\nfour\n");
        let b = read_new(&s.log(), b.next, 1 << 20).unwrap();
        assert_eq!(b.text, "three\nfour\n");
        let again = read_new(&s.log(), b.next, 1 << 20).unwrap();
        assert_eq!(again.text, "");
        assert!(again.notes.is_empty());
    }

    #[test]
    fn rotation_by_rename_finishes_the_old_file_first() {
        let s = Scratch::new("rotate");
        s.append("a\n");
        let b = read_new(&s.log(), Position::default(), 1 << 20).unwrap();
        // Written after the run, then rotated (during the next read's wait).
        s.append("b\n");
        std::fs::rename(s.log(), rotated(&s.log())).unwrap();
        s.append("c\n");
        let b = read_new(&s.log(), b.next, 1 << 20).unwrap();
        assert_eq!(b.text, "b\nc\n");
        assert!(b.notes.is_empty(), "{:?}", b.notes);
    }

    #[test]
    fn rotation_while_reading_goes_on_in_the_renamed_file() {
        let s = Scratch::new("during");
        s.append("a\nb\nc\n");
        // The budget stops the read in the first file; it is rotated before the next run.
        let b = read_new(&s.log(), Position::default(), 2).unwrap();
        assert_eq!((b.text.as_str(), b.more), ("a\n", true));
        std::fs::rename(s.log(), rotated(&s.log())).unwrap();
        s.append("d\n");
        let b = read_new(&s.log(), b.next, 1 << 20).unwrap();
        assert_eq!(b.text, "b\nc\nd\n");
    }

    #[test]
    fn a_rotated_file_gone_is_said_and_the_new_one_read() {
        let s = Scratch::new("gone");
        s.append("a\n");
        let b = read_new(&s.log(), Position::default(), 1 << 20).unwrap();
        std::fs::remove_file(s.log()).unwrap();
        s.append("x\n");
        let b2 = read_new(&s.log(), b.next, 1 << 20).unwrap();
        assert_eq!(b2.text, "x\n");
        assert_eq!(b2.notes.len(), 1, "{:?}", b2.notes);
    }

    #[test]
    fn truncation_reads_from_the_start() {
        let s = Scratch::new("trunc");
        s.append("aaaa\nbbbb\n");
        let b = read_new(&s.log(), Position::default(), 1 << 20).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(s.log())
            .unwrap();
        s.append("c\n");
        let b = read_new(&s.log(), b.next, 1 << 20).unwrap();
        assert_eq!(b.text, "c\n");
        assert!(b.notes[0].contains("truncated"));
    }

    #[test]
    fn a_symlink_a_fifo_or_nothing_is_blindness() {
        let s = Scratch::new("blind");
        assert!(read_new(&s.log(), Position::default(), 10).is_err());
        std::fs::write(s.0.join("elsewhere"), "secret\n").unwrap();
        std::os::unix::fs::symlink(s.0.join("elsewhere"), s.log()).unwrap();
        let Blind { why, denied } = read_new(&s.log(), Position::default(), 10).unwrap_err();
        assert!(why.contains("symbolic link") && !denied, "{why}");
        std::fs::remove_file(s.log()).unwrap();
        let c = std::ffi::CString::new(s.log().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let Blind { why, .. } = read_new(&s.log(), Position::default(), 10).unwrap_err();
        assert!(why.contains("not a regular file"), "{why}");
    }

    #[test]
    fn positions_round_trip_and_damage_means_the_start() {
        let p = Position {
            dev: 1,
            ino: 2,
            offset: 3,
            head: 4,
        };
        assert_eq!(Position::decode(&p.encode()), p);
        assert_eq!(Position::decode("x y"), Position::default());
    }
}
