//! What the kernel says about the calling script's file, asked with the caller's own
//! credentials: mailgate runs set-gid `mailgate`, and a path the caller names (in a header, in
//! its argv) must not let it learn anything about files only group mailgate may reach (the
//! state directory). The effective gid is the caller's for the one `lstat` and mailgate's
//! again right after (the saved set-gid allows both).

use super::{FileFacts, Missing};
use std::os::unix::fs::MetadataExt;

/// The file's owner, mode and age; `Err(Missing)` when it is not there; `None` when it could
/// not be looked at (no permission, an error, credentials that would not switch).
pub fn file_facts(path: &str, privileged: bool) -> Option<Result<FileFacts, Missing>> {
    let _caller = if privileged {
        Some(AsCaller::enter()?)
    } else {
        None
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Some(Ok(FileFacts {
            uid: m.uid(),
            mode: m.mode(),
            changed: m.mtime().max(m.ctime()),
        })),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Err(Missing)),
        Err(_) => None,
    }
}

/// The effective gid switched to the real one until dropped.
struct AsCaller {
    egid: libc::gid_t,
}

impl AsCaller {
    fn enter() -> Option<AsCaller> {
        // SAFETY: getegid/getgid cannot fail; setegid to the real gid is always allowed.
        let egid = unsafe { libc::getegid() };
        if unsafe { libc::setegid(libc::getgid()) } != 0 {
            return None;
        }
        Some(AsCaller { egid })
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        // SAFETY: the saved set-gid is `egid`, so switching back is allowed. Should it fail,
        // the process goes on with fewer rights (the caller's), never more: the state
        // directory then refuses it, and the message is kept or refused with an error.
        unsafe { libc::setegid(self.egid) };
    }
}
