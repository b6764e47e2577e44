//! The state directory and every system call on it. Everything mailgate keeps (counters,
//! spools, the pending journal) is reached from one directory descriptor opened once, with
//! `*at` calls that never follow a symlink: a name can never lead outside the directory, and a
//! directory swapped for a link in the middle of a run is refused. This module is the only
//! place with file-system `unsafe`; the rest of mailgate uses the safe methods below.
//!
//! Also here: the locks on state files with their deadline and holder lookup (`lock`), the
//! journal of messages being handed over (`journal`), the domain index (`domain_index`), and
//! the checksum the state files carry. What the counter and spool files contain is theirs
//! (`limits`, `spool`, `stats`); how they are reached is this module's.

pub mod domain_index;
pub mod journal;
pub mod lock;

use crate::exit::{Exit, Failure};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// An open directory; names are resolved relative to it, without following symlinks.
pub struct Dir {
    fd: OwnedFd,
}

/// Open flags for `Dir::open_file`; `O_NOFOLLOW | O_CLOEXEC` are always added.
pub mod flags {
    pub const READ: i32 = libc::O_RDONLY;
    pub const READ_WRITE: i32 = libc::O_RDWR;
    /// Create or truncate, for writing.
    pub const REWRITE: i32 = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
    pub const CREATE: i32 = libc::O_CREAT;
}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

/// -1 from a libc call becomes the OS error.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Dir {
    /// Open `path` (relative paths from the working directory) as a directory.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        Dir::open_at(libc::AT_FDCWD, &c)
    }

    fn open_at(dir: libc::c_int, name: &CString) -> io::Result<Dir> {
        // SAFETY: name is a valid C string; the returned fd is owned by the OwnedFd below.
        let fd = check(unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        })?;
        // SAFETY: fd was just returned by openat and is owned by nobody else.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// A subdirectory.
    pub fn open_dir(&self, name: &str) -> io::Result<Dir> {
        Dir::open_at(self.fd.as_raw_fd(), &c_name(name)?)
    }

    /// Create a subdirectory; `Ok(false)` when it exists already.
    pub fn mkdir(&self, name: &str, mode: u32) -> io::Result<bool> {
        let c = c_name(name)?;
        // SAFETY: fd is a directory, c a valid C string.
        match check(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), mode) }) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Open a regular file (mode 0660 when created), never following a symlink and never
    /// blocking: a FIFO or a device put in place of a state file (by root or group mailgate)
    /// is an error (`InvalidData`, "not a regular file"), not a sender that hangs.
    pub fn open_file(&self, name: &str, flags: i32) -> io::Result<File> {
        let c = c_name(name)?;
        // SAFETY: fd is a directory, c a valid C string; the fd is owned by the File below.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
                0o660 as libc::c_uint,
            )
        })?;
        // SAFETY: fd was just returned by openat and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        // (O_NONBLOCK stays set: it has no effect on a regular file's reads and writes.)
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file",
            ));
        }
        Ok(file)
    }

    /// Replace the file `name` whole: written beside it, then renamed over it, so that a reader
    /// sees the old content or the new, never a part.
    pub fn replace(&self, name: &str, text: &[u8]) -> io::Result<()> {
        let tmp = format!(".{name}.{}", std::process::id());
        let mut file = self.open_file(&tmp, flags::REWRITE)?;
        let written =
            std::io::Write::write_all(&mut file, text).and_then(|()| self.rename(&tmp, self, name));
        if written.is_err() {
            let _ = self.unlink(&tmp);
        }
        written
    }

    /// Rename `from` here to `to` in `dest` (replacing it atomically).
    pub fn rename(&self, from: &str, dest: &Dir, to: &str) -> io::Result<()> {
        let (f, t) = (c_name(from)?, c_name(to)?);
        // SAFETY: both fds are directories, both names valid C strings.
        check(unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                f.as_ptr(),
                dest.fd.as_raw_fd(),
                t.as_ptr(),
            )
        })
        .map(drop)
    }

    /// A second name `to` for the file `from`; fails with `AlreadyExists` if `to` exists.
    pub fn link(&self, from: &str, to: &str) -> io::Result<()> {
        let (f, t) = (c_name(from)?, c_name(to)?);
        let dir = self.fd.as_raw_fd();
        // SAFETY: dir is a directory, both names valid C strings.
        check(unsafe { libc::linkat(dir, f.as_ptr(), dir, t.as_ptr(), 0) }).map(drop)
    }

    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = c_name(name)?;
        // SAFETY: fd is a directory, c a valid C string.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(drop)
    }

    /// `stat` of `name` itself (a symlink is not followed).
    fn stat_at(&self, name: &str) -> io::Result<libc::stat> {
        let c = c_name(name)?;
        // SAFETY: st is plain data written by fstatat; fd is a directory, c a valid C string.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        check(unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(st)
    }

    /// Device and inode of `name` itself (a symlink is not followed).
    pub fn identity(&self, name: &str) -> io::Result<(u64, u64)> {
        let st = self.stat_at(name)?;
        Ok((st.st_dev, st.st_ino))
    }

    /// When `name` itself (a symlink is not followed) last changed.
    pub fn modified(&self, name: &str) -> io::Result<std::time::SystemTime> {
        let st = self.stat_at(name)?;
        let secs = u64::try_from(st.st_mtime).unwrap_or(0);
        Ok(std::time::UNIX_EPOCH + std::time::Duration::new(secs, st.st_mtime_nsec as u32))
    }

    /// Whether `name` is a regular file (not a directory, symlink or device put there).
    pub fn is_regular_file(&self, name: &str) -> bool {
        self.stat_at(name)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
    }

    /// The names in this directory (without `.` and `..`), read through the descriptor: the
    /// listing is of the directory opened, whatever its path leads to now.
    pub fn names(&self) -> io::Result<Vec<String>> {
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor, which fdopendir then owns and
        // closedir closes; readdir's entries are valid until the next readdir.
        let fd = check(unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        let dirp = unsafe { libc::fdopendir(fd) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            unsafe { libc::close(fd) };
            return Err(e);
        }
        // The duplicate shares the original's offset: start from the top.
        unsafe { libc::rewinddir(dirp) };
        let mut names = Vec::new();
        loop {
            let entry = unsafe { libc::readdir(dirp) };
            if entry.is_null() {
                break;
            }
            let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        unsafe { libc::closedir(dirp) };
        Ok(names)
    }

    /// The share of the filesystem holding this directory that is free, in percent.
    pub fn free_percent(&self) -> Option<u8> {
        // SAFETY: st is plain data written by fstatvfs; fd is an open directory.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatvfs(self.fd.as_raw_fd(), &mut st) } != 0 || st.f_blocks == 0 {
            return None;
        }
        Some((st.f_bavail as u128 * 100 / st.f_blocks as u128) as u8)
    }

    /// Make a rename or unlink in this directory durable.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: fd is an open directory.
        check(unsafe { libc::fsync(self.fd.as_raw_fd()) }).map(drop)
    }

    /// State subdirectories belong to root:mailgate with mode 2770 (install.sh makes them
    /// so). One that a customer's sender had to create is theirs until root opens it next;
    /// best effort, the directory works either way.
    fn settle(&self, created: bool, group: Option<u32>) {
        let fd = self.fd.as_raw_fd();
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root && !created {
            // Nothing a sender could change: no fstat on every message's path.
            return;
        }
        // SAFETY: fd is an open directory; fstat writes into st.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return;
        }
        if root && st.st_uid != 0 {
            // SAFETY: fd is an open directory; -1 keeps the group.
            unsafe { libc::fchown(fd, 0, u32::MAX) };
        }
        // The group of the state directory itself (mailgate), whoever made this one.
        if let Some(gid) = group.filter(|&g| root && st.st_gid != g) {
            // SAFETY: fd is an open directory; -1 keeps the owner.
            unsafe { libc::fchown(fd, u32::MAX, gid) };
        }
        if created || (root && st.st_mode & 0o7777 != 0o2770) {
            // SAFETY: fd is an open directory we own (or we are root).
            unsafe { libc::fchmod(fd, 0o2770) };
        }
    }
}

/// The files in `dir` last changed more than `age` ago: what a process that died left behind
/// (a write in tmp/, a pending record).
pub fn older_than(dir: &Dir, age: std::time::Duration) -> Vec<String> {
    dir.names()
        .unwrap_or_default()
        .into_iter()
        .filter(|name| is_older_than(dir, name, age))
        .collect()
}

/// Whether `name` in `dir` last changed more than `age` ago (a time in the future is not).
pub fn is_older_than(dir: &Dir, name: &str, age: std::time::Duration) -> bool {
    dir.modified(name)
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}

/// A message id as the name of a state file (spool entries, pending records). IDs come from
/// argv in admin commands: only what `spool::new_id` makes is accepted.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Every subdirectory of the state directory (each made on first use, `StateDir::subdir`).
pub const SUBDIRS: [&str; 11] = [
    "accounts", "queue", "defer", "hold", "failed", "tmp", "pending", "stats", "spooled",
    "delivery", SCRIPTS,
];

/// Each account's scripts and their counters (`crate::script`).
pub const SCRIPTS: &str = "scripts";

/// The state directory, opened once.
pub struct StateDir {
    dir: Dir,
    path: PathBuf,
}

impl StateDir {
    pub fn open(path: &Path) -> Result<StateDir, Failure> {
        let dir = Dir::open(path).map_err(|e| {
            Failure::io(
                Exit::OsErr,
                format!("cannot open state directory {}", path.display()),
                &e,
            )
        })?;
        Ok(StateDir {
            dir,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state directory itself, for files at its top (the server counter, lock files).
    pub fn top(&self) -> &Dir {
        &self.dir
    }

    /// A subdirectory, created (root:mailgate 2770) when missing.
    pub fn subdir(&self, name: &str) -> Result<Dir, Failure> {
        let fail = |what: &str, e: io::Error| {
            Failure::io(
                Exit::OsErr,
                format!("cannot {what} {}", self.path.join(name).display()),
                &e,
            )
        };
        // Open first: the directory exists on every run but the first, and a failed mkdir
        // would cost a system call on the hot path every time.
        let (sub, created) = match self.dir.open_dir(name) {
            Ok(sub) => (sub, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let created = self.dir.mkdir(name, 0o770).map_err(|e| fail("create", e))?;
                (
                    self.dir.open_dir(name).map_err(|e| fail("open", e))?,
                    created,
                )
            }
            Err(e) => return Err(fail("open", e)),
        };
        sub.settle(created, None);
        Ok(sub)
    }

    /// Every state subdirectory there is, given back to root and the state directory's group
    /// with mode 2770 (root's `queue run`): one that a customer's sender created stays
    /// theirs only until then.
    pub fn settle_all(&self) {
        let fd = self.dir.fd.as_raw_fd();
        // SAFETY: fd is an open directory; fstat writes into st.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let group = (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_gid);
        for name in SUBDIRS {
            if let Ok(sub) = self.dir.open_dir(name) {
                sub.settle(false, group);
            }
        }
    }

    /// The names in a subdirectory, sorted, without the hidden ones (files being born or set
    /// aside start with a dot); none when it does not exist.
    pub fn names_in(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .dir
            .open_dir(sub)
            .and_then(|d| d.names())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    /// A lock file in the state directory held by at most one process (e.g. `queue run`);
    /// `None` when another process holds it.
    pub fn try_lock_named(&self, name: &str) -> Result<Option<File>, Failure> {
        let path = self.path.join(name);
        let file = self
            .dir
            .open_file(name, flags::READ_WRITE | flags::CREATE)
            .map_err(|e| Failure::io(Exit::OsErr, format!("cannot open {}", path.display()), &e))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Failure::io(
                Exit::OsErr,
                format!("cannot lock {}", path.display()),
                &e,
            )),
        }
    }
}

/// FNV-1a, the checksum of counter slots, ledgers and statistics files.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_leave_the_directory_or_follow_links() {
        let base = std::env::temp_dir().join(format!("mailgate-statedir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::os::unix::fs::symlink("/etc", base.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", base.join("file-link")).unwrap();
        let dir = Dir::open(&base).unwrap();
        assert!(
            dir.open_dir("link").is_err(),
            "a symlinked directory is refused"
        );
        assert!(dir.open_file("file-link", flags::READ).is_err());
        assert!(dir.open_file("a\0b", flags::READ).is_err());
        assert!(dir.mkdir("sub", 0o770).unwrap());
        assert!(!dir.mkdir("sub", 0o770).unwrap());
        let f = dir.open_file("x", flags::REWRITE).unwrap();
        drop(f);
        dir.link("x", "y").unwrap();
        assert_eq!(
            dir.link("x", "y").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(dir.identity("x").unwrap(), dir.identity("y").unwrap());
        let sub = dir.open_dir("sub").unwrap();
        dir.rename("y", &sub, "z").unwrap();
        sub.unlink("z").unwrap();
        dir.sync().unwrap();
        assert!(Dir::open(&base).unwrap().free_percent().is_some());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
