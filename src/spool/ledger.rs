//! Each account's share of the spools, kept as a number rather than counted: `spooled/NAME`
//! holds how many messages and bytes the account has in queue/, defer/ and hold/ and how many
//! of them are deferred. A message reads its own account's record (one small file) to know
//! whether it may still be kept and whether mail of its account waits in defer/, so its cost
//! depends neither on other accounts' spools nor on the size of its own.
//!
//! Every change to a counted spool entry adjusts the record under the record's lock
//! (`Spool::keep`, `remove`, `quarantine`). A process killed between the two leaves the
//! record off by one; `queue run` compares every record with what the spools hold and
//! repairs it (`Spool::repair_ledgers`). The record is a bound against a full disk and a hint
//! for ordering, so a count that is briefly off by one is harmless.
//!
//! Nothing a customer's process holds stalls anyone else: the only lock is the account's own
//! record, waited on by that account's senders; root's commands never wait for it (a busy
//! record is left for the next queue run, which ends a stopped holder and repairs it). A
//! customer's keep reserves its place in the record, under the lock, before the message is
//! written (`Spool::keep_within`): a keep that cannot count itself is refused, never kept
//! uncounted, so a record frozen by a stopped process cannot lift the share.

use crate::exit::{Exit, Failure};
use crate::state::fnv1a;
use crate::state::{StateDir, flags};
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Duration;

pub const DIR: &str = "spooled";
const MAGIC: &str = "mailgate-spooled 1";
/// Records are written whole at offset 0 with the same length, never truncated.
const LEN: usize = 128;

/// What one account has kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Messages in queue/, defer/ and hold/.
    pub messages: u64,
    pub bytes: u64,
    /// Of them, in defer/.
    pub deferred: u64,
}

impl Usage {
    /// One entry of `size` bytes added (`sign` 1) or taken away (-1); never below zero.
    pub fn adjusted(self, sign: i8, size: u64, deferred: bool) -> Usage {
        let step = |v: u64, by: u64| {
            if sign > 0 {
                v.saturating_add(by)
            } else {
                v.saturating_sub(by)
            }
        };
        Usage {
            messages: step(self.messages, 1),
            bytes: step(self.bytes, size),
            deferred: if deferred {
                step(self.deferred, 1)
            } else {
                self.deferred
            },
        }
    }
}

/// The record's bytes: a line with the three numbers and their checksum, padded to `LEN`.
pub fn encode(u: Usage) -> [u8; LEN] {
    let body = format!("{MAGIC} {} {} {}", u.messages, u.bytes, u.deferred);
    let line = format!("{body} {:016x}", fnv1a(body.as_bytes()));
    let mut out = [b' '; LEN];
    out[..line.len()].copy_from_slice(line.as_bytes());
    out[LEN - 1] = b'\n';
    out
}

/// `None` for anything `encode` did not write (a torn read, damage).
pub fn decode(bytes: &[u8]) -> Option<Usage> {
    let text = std::str::from_utf8(bytes).ok()?.trim_end();
    let (body, sum) = text.rsplit_once(' ')?;
    if u64::from_str_radix(sum, 16).ok()? != fnv1a(body.as_bytes()) {
        return None;
    }
    let mut numbers = body.strip_prefix(MAGIC)?.split_whitespace();
    let mut next = || numbers.next()?.parse::<u64>().ok();
    Some(Usage {
        messages: next()?,
        bytes: next()?,
        deferred: next()?,
    })
}

/// What became of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    Written,
    /// The change left the record as it was.
    Left,
    /// Another process held the record's lock past the wait (and was not ended).
    Busy,
}

/// The records in the state directory.
pub struct Ledger<'a> {
    pub state: &'a StateDir,
}

impl Ledger<'_> {
    /// The account's usage without locking: `Ok(None)` when the record is damaged (the caller
    /// counts the spools instead), zero when the account never kept anything.
    pub fn read(&self, account: &str) -> Result<Option<Usage>, Failure> {
        let dir = self.state.subdir(DIR)?;
        let file = match dir.open_file(account, flags::READ) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(Usage::default())),
            // Not a regular file (`Dir::open_file` refuses it): damage, counted from the spools.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(None),
            Err(e) => return Err(self.fail("open", account, &e)),
        };
        // A read that meets a write in progress sees a bad checksum: read once more.
        for _ in 0..3 {
            let mut buf = [0u8; LEN];
            let n = file
                .read_at(&mut buf, 0)
                .map_err(|e| self.fail("read", account, &e))?;
            if let Some(u) = decode(&buf[..n]) {
                return Ok(Some(u));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(None)
    }

    /// Apply `change` to the account's record under its lock, waiting at most `wait` (root
    /// ends a stopped mailgate process that holds it, then takes it); the change sees `None`
    /// for a damaged record and may leave it (`None`).
    pub fn update(
        &self,
        account: &str,
        wait: Duration,
        change: impl FnOnce(Option<Usage>) -> Option<Usage>,
    ) -> Result<Changed, Failure> {
        let dir = self.state.subdir(DIR)?;
        let file = dir
            .open_file(account, flags::READ_WRITE | flags::CREATE)
            .map_err(|e| self.fail("open", account, &e))?;
        let path = self.state.path().join(DIR).join(account);
        match crate::state::lock::lock_ending_stopped(&file, &path, wait) {
            (Ok(()), _) => {}
            (Err(e), _) if e.kind() == io::ErrorKind::TimedOut => return Ok(Changed::Busy),
            (Err(e), _) => return Err(self.fail("lock", account, &e)),
        }
        let mut buf = [0u8; LEN];
        let n = file
            .read_at(&mut buf, 0)
            .map_err(|e| self.fail("read", account, &e))?;
        let current = match n {
            0 => Some(Usage::default()),
            _ => decode(&buf[..n]),
        };
        let Some(new) = change(current) else {
            return Ok(Changed::Left);
        };
        file.write_all_at(&encode(new), 0)
            .map_err(|e| self.fail("write", account, &e))?;
        Ok(Changed::Written)
    }

    /// Set the record to what the spools hold (`queue run`'s repair): never waits for a
    /// running holder; a stopped one is ended (root).
    pub fn set(&self, account: &str, usage: Usage) -> Result<Changed, Failure> {
        self.update(account, Duration::ZERO, |_| Some(usage))
    }

    /// The accounts that have a record.
    pub fn accounts(&self) -> Vec<String> {
        self.state.names_in(DIR)
    }

    fn fail(&self, what: &str, account: &str, e: &io::Error) -> Failure {
        let path = self.state.path().join(DIR).join(account);
        Failure::io(Exit::OsErr, format!("cannot {what} {}", path.display()), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_seen() {
        let u = Usage {
            messages: 10_000,
            bytes: 40_960_000,
            deferred: 3,
        };
        let bytes = encode(u);
        assert_eq!(bytes.len(), LEN);
        assert_eq!(decode(&bytes), Some(u));
        assert_eq!(decode(&encode(Usage::default())), Some(Usage::default()));
        let mut torn = bytes;
        torn[20] = b'9';
        assert_eq!(decode(&torn), None);
        assert_eq!(decode(b""), None);
        let max = Usage {
            messages: u64::MAX,
            bytes: u64::MAX,
            deferred: u64::MAX,
        };
        assert_eq!(decode(&encode(max)), Some(max));
    }

    #[test]
    fn adjustments_count_and_never_go_below_zero() {
        let u = Usage::default()
            .adjusted(1, 100, true)
            .adjusted(1, 50, false);
        assert_eq!(
            u,
            Usage {
                messages: 2,
                bytes: 150,
                deferred: 1
            }
        );
        let u = u.adjusted(-1, 100, true);
        assert_eq!(
            u,
            Usage {
                messages: 1,
                bytes: 50,
                deferred: 0
            }
        );
        assert_eq!(
            Usage::default().adjusted(-1, 10, true),
            Usage::default(),
            "saturates"
        );
    }
}
