//! The spools, maildir-style under the state directory: `queue/` (the relay was unavailable),
//! `defer/` (over a limit with action defer; released by `queue run` when there is room),
//! `hold/` (over a limit with action hold, or a locked account; released by an admin) and
//! `failed/` (gave up). An entry is written in `tmp/`, fsynced, renamed into place and the
//! directory fsynced before anyone is told it is kept.
//!
//! Each entry is one file: a JSON line with the envelope and bookkeeping, then the message
//! exactly as it goes to the relay (CRLF lines, not dot-stuffed).
//!
//! It keeps, moves and lists entries; it must not decide whether a message may be sent.

pub mod ledger;

use crate::exit::{Exit, Failure};
use crate::message::{self, Message, Terminator};
use crate::state::StateDir;
use crate::state::{Dir, flags};
use ledger::{Changed, Ledger, Usage};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Queue,
    Defer,
    Hold,
    Failed,
}

impl Kind {
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::Defer => "defer",
            Kind::Hold => "hold",
            Kind::Failed => "failed",
        }
    }

    pub const ALL: [Kind; 4] = [Kind::Queue, Kind::Defer, Kind::Hold, Kind::Failed];

    /// The spools that count against an account's share (failed/ is the admin's).
    pub fn counted(self) -> bool {
        self != Kind::Failed
    }
}

/// An entry's envelope and bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub account: String,
    pub uid: u32,
    pub user: String,
    #[serde(default)]
    pub script: String,
    /// The caller's working directory (where the mail came from when there is no script).
    #[serde(default)]
    pub cwd: String,
    /// The script as mailgate resolved it (`crate::script`): the key of its limits.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub script_path: String,
    /// The caller's PHP-FPM pool, when it was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// `None` is the null sender.
    pub sender: Option<String>,
    pub recipients: Vec<String>,
    #[serde(default)]
    pub subject: String,
    pub size: u64,
    /// When the caller handed the message over (Unix time).
    pub time: i64,
    /// Why it is kept.
    pub reason: String,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub next_attempt: i64,
    #[serde(default)]
    pub last_error: String,
    /// True for mailgate's own mail (alerts): never counted against an account.
    #[serde(default)]
    pub internal: bool,
    /// Deferred by its script's own window (a script limit, the new-script budget): it waits
    /// for that script's room only, and the account's other mail does not wait behind it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub script_deferred: bool,
}

impl Meta {
    /// Whether the entry holds the account's other mail back (`Usage::deferred`): a deferred
    /// one, unless only its script's window put it there.
    pub fn waits_in_line(&self, kind: Kind) -> bool {
        kind == Kind::Defer && !self.script_deferred
    }
}

impl Meta {
    /// Stand-in for an entry whose envelope line cannot be read.
    pub fn damaged(id: &str, why: &str) -> Meta {
        Meta {
            id: id.to_string(),
            account: "(damaged)".into(),
            uid: 0,
            user: String::new(),
            script: String::new(),
            script_path: String::new(),
            sender: None,
            recipients: Vec::new(),
            subject: String::new(),
            size: 0,
            time: 0,
            reason: why.to_string(),
            attempts: 0,
            next_attempt: 0,
            last_error: why.to_string(),
            internal: false,
            script_deferred: false,
            cwd: String::new(),
            pool: None,
        }
    }
}

/// Unique per host: seconds, microseconds, pid and a per-process counter, in hex (like
/// Postfix's long queue ids, and safe as a file name).
pub fn new_id() -> String {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{:08X}{:05X}{:08X}{seq:X}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id()
    )
}

pub use crate::state::valid_id;

/// An entry that this process alone handles until it drops.
pub struct Claim {
    pub meta: Meta,
    pub msg: Message,
    _lock: File,
}

/// An account's share of the spools (`[spool] account_max_messages`, `account_max_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct Share {
    pub messages: u64,
    pub bytes: u64,
}

/// Why a customer's keep did not happen.
#[derive(Debug)]
pub enum KeepError {
    /// The share is full or its record cannot be counted in: the caller is told (69).
    Refused(String),
    /// The message could not be written.
    Failed(Failure),
}

pub struct Spool<'a> {
    state: &'a StateDir,
    /// How long to wait for an account's ledger record that another process holds.
    ledger_wait: Duration,
    /// Accounts whose record stayed busy past `ledger_wait`: not waited for again by this
    /// process, so one stopped customer process costs a run one wait, not one per message.
    ledger_busy: RefCell<BTreeSet<String>>,
}

impl<'a> Spool<'a> {
    /// The spools as root's commands and the queue run use them: a busy ledger record is
    /// waited for briefly, once per account.
    pub fn new(state: &'a StateDir) -> Spool<'a> {
        Spool {
            state,
            ledger_wait: Duration::from_millis(20),
            ledger_busy: RefCell::new(BTreeSet::new()),
        }
    }

    /// A sender waits for its own account's record as long as for its counters.
    pub fn waiting(mut self, wait: Duration) -> Spool<'a> {
        self.ledger_wait = wait;
        self
    }

    fn dir(&self, name: &str) -> Result<Dir, Failure> {
        self.state.subdir(name)
    }

    fn path(&self, kind: Kind, id: &str) -> String {
        self.state
            .path()
            .join(kind.dir())
            .join(id)
            .display()
            .to_string()
    }

    /// Keep a message durably: write in tmp/, fsync, rename into `kind`, fsync the directory.
    /// Replaces an entry with the same id (used to update its bookkeeping).
    pub fn keep(&self, kind: Kind, meta: &Meta, msg: &Message) -> Result<(), Failure> {
        // An entry rewritten with new bookkeeping is already counted.
        let replaces = kind.counted()
            && self
                .dir(kind.dir())
                .is_ok_and(|d| d.identity(&meta.id).is_ok());
        self.write(kind, meta, msg)?;
        if kind.counted() && !replaces {
            self.count(meta, 1, kind);
        }
        Ok(())
    }

    /// Write an entry durably, without counting it.
    fn write(&self, kind: Kind, meta: &Meta, msg: &Message) -> Result<(), Failure> {
        if !valid_id(&meta.id) {
            return Err(Failure::new(
                Exit::Software,
                format!("invalid spool id {:?}", meta.id),
            ));
        }
        let target = self.path(kind, &meta.id);
        let fail = |e: io::Error| {
            Failure::io(
                Exit::IoErr,
                format!("cannot keep the message in {target}"),
                &e,
            )
        };
        let tmp = self.dir("tmp")?;
        let dest = self.dir(kind.dir())?;
        let name = meta.id.as_str();
        let file = tmp.open_file(name, flags::REWRITE).map_err(fail)?;
        let written = (|| {
            let mut w = io::BufWriter::with_capacity(64 * 1024, &file);
            serde_json::to_writer(&mut w, meta).map_err(io::Error::other)?;
            w.write_all(b"\n")?;
            msg.write_to(&mut w)?;
            w.flush()?;
            drop(w);
            file.sync_all()
        })();
        if let Err(e) = written.and_then(|()| tmp.rename(name, &dest, name)) {
            let _ = tmp.unlink(name);
            return Err(fail(e));
        }
        dest.sync().map_err(fail)
    }

    /// A customer's keep: the message's place in the account's share is reserved in its
    /// ledger record, under the record's lock, before the message is written; a share that is
    /// full or a record that stays busy refuses the keep (`Refused`), so nothing is ever kept
    /// uncounted. The place is given back when the write fails.
    pub fn keep_within(
        &self,
        kind: Kind,
        meta: &Meta,
        msg: &Message,
        share: Share,
    ) -> Result<(), KeepError> {
        if !kind.counted() {
            return self.keep(kind, meta, msg).map_err(KeepError::Failed);
        }
        let ledger = Ledger { state: self.state };
        let mut full = None;
        let changed = ledger
            .update(&meta.account, self.ledger_wait, |u| {
                let u = u.unwrap_or_else(|| {
                    self.counted_usage()
                        .remove(&meta.account)
                        .unwrap_or_default()
                });
                if u.messages >= share.messages || u.bytes.saturating_add(meta.size) > share.bytes {
                    full = Some(u);
                    return None;
                }
                Some(u.adjusted(1, meta.size, meta.waits_in_line(kind)))
            })
            .map_err(KeepError::Failed)?;
        match changed {
            Changed::Written => {}
            Changed::Busy => {
                return Err(KeepError::Refused(format!(
                    "the spool record of account {} ({}) is held by another of its processes",
                    meta.account,
                    self.state
                        .path()
                        .join(ledger::DIR)
                        .join(&meta.account)
                        .display()
                )));
            }
            Changed::Left => {
                let u = full.unwrap_or_default();
                return Err(KeepError::Refused(format!(
                    "account {} already has {} messages ({} bytes) kept; its share is {} messages, {} bytes",
                    meta.account, u.messages, u.bytes, share.messages, share.bytes
                )));
            }
        }
        self.write(kind, meta, msg).map_err(|f| {
            self.count(meta, -1, kind);
            KeepError::Failed(f)
        })
    }

    /// Adjust the account's ledger record for one entry of `kind` added (1) or gone (-1).
    /// A record that stays busy or is damaged is left for `queue run` to repair.
    fn count(&self, meta: &Meta, sign: i8, kind: Kind) {
        let account = meta.account.as_str();
        let wait = if self.ledger_busy.borrow().contains(account) {
            Duration::ZERO
        } else {
            self.ledger_wait
        };
        let ledger = Ledger { state: self.state };
        let changed = ledger.update(account, wait, |u| {
            u.map(|u| u.adjusted(sign, meta.size, meta.waits_in_line(kind)))
        });
        if !matches!(changed, Ok(Changed::Written)) {
            self.ledger_busy.borrow_mut().insert(account.to_string());
        }
    }

    /// The envelope of an entry about to leave `kind`, to count it out afterwards.
    fn counted_meta(&self, kind: Kind, id: &str) -> Option<Meta> {
        kind.counted()
            .then(|| self.read_meta(kind, id).ok())
            .flatten()
    }

    fn uncount(&self, kind: Kind, meta: Option<Meta>) {
        if let Some(m) = meta {
            self.count(&m, -1, kind);
        }
    }

    /// An account's share of the spools, from its ledger record (one small file); counted
    /// from the spools only when the record is damaged.
    pub fn usage_of(&self, account: &str) -> Usage {
        match (Ledger { state: self.state }).read(account) {
            Ok(Some(u)) => u,
            _ => self.counted_usage().remove(account).unwrap_or_default(),
        }
    }

    /// Every account's share as the spools hold it now (reads every entry's envelope).
    pub fn counted_usage(&self) -> BTreeMap<String, Usage> {
        let mut usage: BTreeMap<String, Usage> = BTreeMap::new();
        for kind in [Kind::Queue, Kind::Defer, Kind::Hold] {
            for m in self.list(kind).unwrap_or_default() {
                let u = usage.entry(m.account.clone()).or_default();
                *u = u.adjusted(1, m.size, m.waits_in_line(kind));
            }
        }
        usage
    }

    /// `queue run`'s repair: every ledger record set to what the spools hold. A record busy
    /// at that instant is skipped (never waited for). Only a record that disagrees with two
    /// listings in a row is set, so that a sender's change between a listing and the
    /// comparison is not mistaken for damage. Returns the accounts repaired.
    pub fn repair_ledgers(&self) -> Vec<String> {
        let ledger = Ledger { state: self.state };
        let disagreeing = |actual: &BTreeMap<String, Usage>,
                           names: &mut dyn Iterator<Item = String>| {
            names
                .filter(|n| crate::config::validate_account_name(n).is_ok())
                .filter(|n| {
                    let want = actual.get(n).copied().unwrap_or_default();
                    !matches!(ledger.read(n), Ok(Some(u)) if u == want)
                })
                .collect::<BTreeSet<String>>()
        };
        let first = self.counted_usage();
        let mut names: BTreeSet<String> = ledger.accounts().into_iter().collect();
        names.extend(first.keys().cloned());
        let suspects = disagreeing(&first, &mut names.into_iter());
        if suspects.is_empty() {
            return Vec::new();
        }
        let second = self.counted_usage();
        let mut repaired = Vec::new();
        for name in disagreeing(&second, &mut suspects.into_iter()) {
            let want = second.get(&name).copied().unwrap_or_default();
            if matches!(ledger.set(&name, want), Ok(Changed::Written)) {
                repaired.push(name);
            }
        }
        repaired
    }

    /// The ids in `kind`, oldest first (an id begins with its creation time in hex).
    pub fn ids(&self, kind: Kind) -> Result<Vec<String>, Failure> {
        let names = match self
            .state
            .top()
            .open_dir(kind.dir())
            .and_then(|d| d.names())
        {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Failure::io(
                    Exit::IoErr,
                    format!(
                        "cannot list {}",
                        self.state.path().join(kind.dir()).display()
                    ),
                    &e,
                ));
            }
        };
        let mut ids: Vec<String> = names.into_iter().filter(|name| valid_id(name)).collect();
        ids.sort();
        Ok(ids)
    }

    /// Move an entry that cannot be read as it is to failed/, for the admin to look at.
    pub fn quarantine(&self, from: Kind, id: &str, why: &str) -> Result<(), Failure> {
        checked_name(id)?;
        let src = self.dir(from.dir())?;
        let dest = self.dir(Kind::Failed.dir())?;
        let counted = self.counted_meta(from, id);
        if let Err(e) = src.rename(id, &dest, id) {
            return Err(Failure::io(
                Exit::IoErr,
                format!(
                    "cannot move damaged {} to failed/ ({why})",
                    self.path(from, id)
                ),
                &e,
            ));
        }
        self.uncount(from, counted);
        dest.sync()
            .map_err(|e| Failure::io(Exit::IoErr, "cannot sync failed/", &e))
    }

    /// Delete an entry unless another process is handling it. `false`: busy or gone.
    pub fn delete(&self, kind: Kind, id: &str) -> Result<bool, Failure> {
        match self.claim(kind, id) {
            Ok(Some(_claim)) => self.remove(kind, id).map(|()| true),
            Ok(None) => Ok(false),
            // A damaged entry can still be deleted; nobody can be delivering it.
            Err(f) if f.exit == Exit::DataErr => self.remove(kind, id).map(|()| true),
            Err(f) => Err(f),
        }
    }

    /// All entries of `kind`, oldest first. A damaged entry is listed with account
    /// `(damaged)` and the reason, so that it never goes unseen.
    pub fn list(&self, kind: Kind) -> Result<Vec<Meta>, Failure> {
        let mut metas = Vec::new();
        for name in self.ids(kind)? {
            // An entry removed meanwhile (another queue run) is simply gone.
            match self.read_meta(kind, &name) {
                Ok(meta) => metas.push(meta),
                Err(f) if f.exit == Exit::DataErr => metas.push(Meta::damaged(&name, &f.message)),
                Err(_) => {}
            }
        }
        metas.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
        Ok(metas)
    }

    fn open(&self, kind: Kind, id: &str) -> Result<File, Failure> {
        checked_name(id)?;
        self.dir(kind.dir())?
            .open_file(id, flags::READ)
            .map_err(|e| {
                let exit = if e.kind() == io::ErrorKind::NotFound {
                    Exit::Usage
                } else {
                    Exit::IoErr
                };
                Failure::io(exit, format!("cannot open {}", self.path(kind, id)), &e)
            })
    }

    pub fn read_meta(&self, kind: Kind, id: &str) -> Result<Meta, Failure> {
        self.meta_line(&mut BufReader::new(self.open(kind, id)?), kind, id)
    }

    /// The JSON envelope line at the start of an entry.
    fn meta_line(&self, reader: &mut impl BufRead, kind: Kind, id: &str) -> Result<Meta, Failure> {
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).map_err(|e| {
            Failure::io(
                Exit::IoErr,
                format!("cannot read {}", self.path(kind, id)),
                &e,
            )
        })?;
        serde_json::from_slice(&line).map_err(|e| {
            Failure::new(
                Exit::DataErr,
                format!("{} is damaged: {e}", self.path(kind, id)),
            )
        })
    }

    /// Take an entry for delivery, release or deletion: at most one process at a time holds
    /// it (an flock on the entry file, kept until the `Claim` drops). `Ok(None)` when another
    /// process holds it or it is gone (delivered or deleted meanwhile). Every change to a
    /// claimed entry replaces or removes the file, so a claim on an inode that is no longer
    /// the entry is detected and taken again.
    pub fn claim(&self, kind: Kind, id: &str) -> Result<Option<Claim>, Failure> {
        checked_name(id)?;
        let dir = self.dir(kind.dir())?;
        loop {
            let file = match self.open(kind, id) {
                Ok(f) => f,
                Err(f) if f.exit == Exit::Usage => return Ok(None),
                Err(f) => return Err(f),
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Failure::io(
                        Exit::IoErr,
                        format!("cannot lock {}", self.path(kind, id)),
                        &e,
                    ));
                }
            }
            match same_file_at(&dir, id, &file) {
                Ok(true) => {}
                // Replaced by its previous holder: take the new file.
                Ok(false) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(Failure::io(
                        Exit::IoErr,
                        format!("cannot stat {}", self.path(kind, id)),
                        &e,
                    ));
                }
            }
            let lock = file
                .try_clone()
                .map_err(|e| Failure::io(Exit::OsErr, "cannot duplicate a file descriptor", &e))?;
            let (meta, msg) = self.load_from(file, kind, id)?;
            return Ok(Some(Claim {
                meta,
                msg,
                _lock: lock,
            }));
        }
    }

    fn load_from(&self, file: File, kind: Kind, id: &str) -> Result<(Meta, Message), Failure> {
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        let meta = self.meta_line(&mut reader, kind, id)?;
        let msg =
            message::read_message(&mut reader, Terminator::Eof, u64::MAX).map_err(|e| match e {
                message::ReadError::Io(e) => Failure::io(
                    Exit::IoErr,
                    format!("cannot read {}", self.path(kind, id)),
                    &e,
                ),
                message::ReadError::TooBig { .. } => {
                    Failure::new(Exit::Software, "spooled message too big")
                }
            })?;
        Ok((meta, msg))
    }

    /// The raw stored message (for `hold show --body`).
    pub fn raw(&self, kind: Kind, id: &str) -> Result<Vec<u8>, Failure> {
        let mut bytes = Vec::new();
        self.open(kind, id)?.read_to_end(&mut bytes).map_err(|e| {
            Failure::io(
                Exit::IoErr,
                format!("cannot read {}", self.path(kind, id)),
                &e,
            )
        })?;
        let start = bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |p| p + 1);
        Ok(bytes.split_off(start))
    }

    pub fn remove(&self, kind: Kind, id: &str) -> Result<(), Failure> {
        let counted = self.counted_meta(kind, id);
        self.remove_in(kind.dir(), id)?;
        self.uncount(kind, counted);
        Ok(())
    }

    fn remove_in(&self, dir_name: &str, id: &str) -> Result<(), Failure> {
        checked_name(id)?;
        let dir = self.dir(dir_name)?;
        if let Err(e) = dir.unlink(id) {
            let path = self.state.path().join(dir_name).join(id);
            return Err(Failure::io(
                Exit::IoErr,
                format!("cannot remove {}", path.display()),
                &e,
            ));
        }
        dir.sync()
            .map_err(|e| Failure::io(Exit::IoErr, "cannot sync the spool directory", &e))
    }

    /// Move an entry (with updated bookkeeping) to another spool: the new copy is durable
    /// before the old one goes, so a crash in between leaves two copies, never none.
    pub fn move_entry(
        &self,
        from: Kind,
        to: Kind,
        meta: &Meta,
        msg: &Message,
    ) -> Result<(), Failure> {
        self.keep(to, meta, msg)?;
        self.remove(from, &meta.id)
    }

    /// Remove files in tmp/ older than `age`: writes that never reached their rename (the
    /// sender was killed, so its caller got no exit 0). Returns how many went.
    pub fn remove_stale_tmp(&self, age: std::time::Duration) -> usize {
        let mut removed = 0;
        let Ok(tmp) = self.state.top().open_dir("tmp") else {
            return 0;
        };
        for name in crate::state::older_than(&tmp, age) {
            if valid_id(&name) && self.remove_in("tmp", &name).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Which spool holds `id`.
    pub fn find(&self, id: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| self.read_meta(*k, id).is_ok())
    }

    /// Free space on the state filesystem, in percent of its size (for unprivileged users).
    pub fn free_percent(&self) -> Option<u8> {
        self.state.top().free_percent()
    }
}

/// A message id from argv is a file name only after `valid_id` said it is one.
fn checked_name(id: &str) -> Result<(), Failure> {
    if !valid_id(id) {
        return Err(Failure::new(
            Exit::Usage,
            format!("invalid message id {id:?}"),
        ));
    }
    Ok(())
}

/// Whether `name` in `dir` is still the file `file` has open.
fn same_file_at(dir: &Dir, name: &str, file: &File) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let open = file.metadata()?;
    Ok(dir.identity(name)? == (open.dev(), open.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_list_load_move_remove() {
        let dir = std::env::temp_dir().join(format!("mailgate-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state = StateDir::open(&dir).unwrap();
        let spool = Spool::new(&state);
        let msg = message::read_message(
            &mut &b"Subject: s\n\n.x\r\n\xff\n"[..],
            Terminator::Eof,
            1 << 20,
        )
        .unwrap();
        let mut meta = Meta {
            id: "ABC123".into(),
            account: "a".into(),
            uid: 1,
            user: "u".into(),
            script: String::new(),
            script_path: String::new(),
            sender: None,
            recipients: vec!["r@x".into()],
            subject: "s".into(),
            size: msg.size(),
            time: 5,
            reason: "test".into(),
            attempts: 0,
            next_attempt: 0,
            last_error: String::new(),
            internal: false,
            script_deferred: false,
            cwd: String::new(),
            pool: None,
        };
        spool.keep(Kind::Hold, &meta, &msg).unwrap();
        assert_eq!(spool.list(Kind::Hold).unwrap(), vec![meta.clone()]);
        let one = |deferred| Usage {
            messages: 1,
            bytes: msg.size(),
            deferred,
        };
        assert_eq!(spool.usage_of("a"), one(0), "counted once kept");
        // Rewriting an entry's bookkeeping does not count it again.
        spool.keep(Kind::Hold, &meta, &msg).unwrap();
        assert_eq!(spool.usage_of("a"), one(0));
        let claim = spool.claim(Kind::Hold, "ABC123").unwrap().expect("free");
        assert_eq!((&claim.meta, &claim.msg), (&meta, &msg));
        // Held by this claim: a second claimant (another process's flock) gets nothing.
        assert!(spool.claim(Kind::Hold, "ABC123").unwrap().is_none());
        drop(claim);
        meta.attempts = 2;
        spool
            .move_entry(Kind::Hold, Kind::Queue, &meta, &msg)
            .unwrap();
        assert_eq!(spool.find("ABC123"), Some(Kind::Queue));
        assert!(spool.list(Kind::Hold).unwrap().is_empty());
        assert_eq!(spool.usage_of("a"), one(0), "moved, not added");
        spool
            .move_entry(Kind::Queue, Kind::Defer, &meta, &msg)
            .unwrap();
        assert_eq!(spool.usage_of("a"), one(1), "now deferred");
        spool
            .move_entry(Kind::Defer, Kind::Queue, &meta, &msg)
            .unwrap();
        assert!(spool.claim(Kind::Queue, "../x").is_err());
        // A record that went wrong (a sender killed between rename and count) is repaired.
        Ledger { state: &state }.set("a", Usage::default()).unwrap();
        assert_eq!(spool.usage_of("a"), Usage::default());
        assert_eq!(spool.repair_ledgers(), ["a"]);
        assert_eq!(spool.usage_of("a"), one(0));
        assert!(spool.repair_ledgers().is_empty(), "nothing left to repair");
        spool.remove(Kind::Queue, "ABC123").unwrap();
        assert_eq!(spool.find("ABC123"), None);
        assert_eq!(spool.usage_of("a"), Usage::default(), "counted out");
        // An unfinished write in tmp/ goes once it is old enough, not before.
        std::fs::write(dir.join("tmp").join("DEAD01"), b"half").unwrap();
        assert_eq!(
            spool.remove_stale_tmp(std::time::Duration::from_secs(3600)),
            0
        );
        assert_eq!(spool.remove_stale_tmp(std::time::Duration::ZERO), 1);
        assert!(!dir.join("tmp").join("DEAD01").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
