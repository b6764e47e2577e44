//! Each account's scripts: when mailgate first and last saw each send, what the admin (or the
//! customer) decided about it, and which signs it showed and the admin was told about. One
//! small text file per account, `scripts/ACCOUNT#list`, replaced whole under the lock of
//! `scripts/ACCOUNT#lock` and read without a lock (a reader sees the old file or the new).
//!
//! The hot path reads it once; it writes only when something changes (a new script, a new
//! sign, a last-seen older than `TOUCH`). A sender stopped while holding the lock delays no
//! one: a writer that cannot get the lock within `SENDER_LOCK_WAIT` leaves the file as it is,
//! and a script it did not record stays *new* (narrower, never wider).
//!
//! Bounded: at most `MAX_ENTRIES` scripts; a new one pushes out the script seen longest ago
//! that nobody decided about (never an approved or blocked one).

use super::{MAX_PATH, Sign};
use crate::config::scripts::Scripts;
use crate::exit::{Exit, Failure};
use crate::state::{StateDir, flags};
use std::io::Read;

pub const DIR: &str = crate::state::SCRIPTS;
pub const MAX_ENTRIES: usize = 256;
/// A script's last-seen time is written again at most this often.
pub const TOUCH: i64 = 3600;
const MAGIC: &str = "mailgate-scripts 1";

/// What is recorded about a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Seen sending; new until it has `[scripts] history`.
    Seen,
    /// Met while the account's scripts were being learnt: known from the start.
    Learnt,
    Approved,
    Blocked,
}

impl Mark {
    fn as_str(self) -> &'static str {
        match self {
            Mark::Seen => "seen",
            Mark::Learnt => "learnt",
            Mark::Approved => "approved",
            Mark::Blocked => "blocked",
        }
    }

    fn parse(s: &str) -> Option<Mark> {
        [Mark::Seen, Mark::Learnt, Mark::Approved, Mark::Blocked]
            .into_iter()
            .find(|m| m.as_str() == s)
    }

    fn decided(self) -> bool {
        matches!(self, Mark::Approved | Mark::Blocked)
    }
}

/// What a script may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No history yet: the new-script budget applies.
    New,
    Known,
    Approved,
    Blocked,
}

impl Standing {
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::New => "new",
            Standing::Known => "known",
            Standing::Approved => "approved",
            Standing::Blocked => "blocked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub first: i64,
    pub last: i64,
    pub mark: Mark,
    /// Signs it showed (the latest message's and earlier ones').
    pub signs: Vec<Sign>,
    /// Signs the admin was told about (once per script and sign).
    pub told: Vec<Sign>,
    /// Its key in the statistics (`top`'s source: PHP's header, or the working directory),
    /// where `mailgate scripts` finds what it sent and what bounced.
    pub source: String,
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    /// When mailgate began recording this account's scripts; `None`: not yet.
    pub since: Option<i64>,
    pub entries: Vec<Entry>,
}

/// What one message's sighting means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub standing: Standing,
    /// Signs the admin has not been told about for this script yet.
    pub untold: Vec<Sign>,
    /// The registry must be written.
    pub changed: bool,
}

impl Registry {
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.path == path)
    }

    /// The standing of a script; one not recorded is new, unless the account's scripts are
    /// still being learnt.
    pub fn standing(&self, path: &str, now: i64, cfg: &Scripts) -> Standing {
        match self.entry(path) {
            Some(e) => match e.mark {
                Mark::Approved => Standing::Approved,
                Mark::Blocked => Standing::Blocked,
                Mark::Learnt => Standing::Known,
                Mark::Seen if now - e.first >= cfg.history.secs() as i64 => Standing::Known,
                Mark::Seen => Standing::New,
            },
            None if self.learning(now, cfg) => Standing::Known,
            None => Standing::New,
        }
    }

    fn learning(&self, now: i64, cfg: &Scripts) -> bool {
        self.since
            .is_none_or(|since| now - since < cfg.learning.secs() as i64)
    }

    /// Record a message of `path` (known as `source` in the statistics) showing `signs`. Pure.
    pub fn sight(
        &mut self,
        path: &str,
        source: &str,
        signs: &[Sign],
        now: i64,
        cfg: &Scripts,
    ) -> Sighting {
        let standing = self.standing(path, now, cfg);
        let learning = self.learning(now, cfg);
        let mut changed = false;
        if self.since.is_none() {
            self.since = Some(now);
            changed = true;
        }
        let i = match self.entries.iter().position(|e| e.path == path) {
            Some(i) => i,
            None => {
                if self.entries.len() >= MAX_ENTRIES && !self.evict_one() {
                    // Every place is taken by a decided script: this one stays unrecorded.
                    return Sighting {
                        standing,
                        untold: Vec::new(),
                        changed,
                    };
                }
                self.entries.push(Entry {
                    first: now,
                    last: now,
                    mark: if learning { Mark::Learnt } else { Mark::Seen },
                    signs: Vec::new(),
                    told: Vec::new(),
                    source: field(source),
                    path: field(path),
                });
                changed = true;
                self.entries.len() - 1
            }
        };
        let e = &mut self.entries[i];
        if now - e.last >= TOUCH {
            e.last = now;
            changed = true;
        }
        let untold: Vec<Sign> = signs
            .iter()
            .copied()
            .filter(|s| !e.told.contains(s))
            .collect();
        for s in signs {
            if !e.signs.contains(s) {
                e.signs.push(*s);
                e.signs.sort();
                changed = true;
            }
        }
        Sighting {
            standing,
            untold,
            changed,
        }
    }

    /// The admin was told about `signs` of `path`.
    pub fn told(&mut self, path: &str, signs: &[Sign]) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.path == path) {
            for s in signs {
                if !e.told.contains(s) {
                    e.told.push(*s);
                    e.told.sort();
                }
            }
        }
    }

    /// Approve or block `path` (recorded even if it never sent yet).
    pub fn decide(&mut self, path: &str, mark: Mark, now: i64) -> bool {
        match self.entries.iter_mut().find(|e| e.path == path) {
            Some(e) => e.mark = mark,
            None => {
                if self.entries.len() >= MAX_ENTRIES && !self.evict_one() {
                    return false;
                }
                self.entries.push(Entry {
                    first: now,
                    last: now,
                    mark,
                    signs: Vec::new(),
                    told: Vec::new(),
                    source: String::new(),
                    path: field(path),
                });
            }
        }
        self.since.get_or_insert(now);
        true
    }

    /// Push out the undecided script seen longest ago (a merely seen one before a learnt one).
    fn evict_one(&mut self) -> bool {
        let victim = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.mark.decided())
            .min_by_key(|(_, e)| (e.mark == Mark::Learnt, e.last))
            .map(|(i, _)| i);
        match victim {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = format!("{MAGIC}\nsince {}\n", self.since.unwrap_or(0));
        let words = |signs: &[Sign]| match super::describe(signs) {
            s if s.is_empty() => "-".to_string(),
            s => s,
        };
        for e in &self.entries {
            out.push_str(&format!(
                "S\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                e.first,
                e.last,
                e.mark.as_str(),
                words(&e.signs),
                words(&e.told),
                e.source,
                e.path
            ));
        }
        out
    }

    /// A file that does not decode is empty (its scripts are new again: narrower, not wider).
    pub fn decode(text: &str) -> Registry {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Registry::default();
        }
        let since = lines
            .next()
            .and_then(|l| l.strip_prefix("since "))
            .and_then(|t| t.parse().ok())
            .filter(|&t| t != 0);
        let signs = |w: &str| -> Vec<Sign> { w.split(',').filter_map(Sign::parse).collect() };
        let entries = lines
            .filter_map(|l| {
                let mut f = l.strip_prefix("S\t")?.splitn(7, '\t');
                Some(Entry {
                    first: f.next()?.parse().ok()?,
                    last: f.next()?.parse().ok()?,
                    mark: Mark::parse(f.next()?)?,
                    signs: signs(f.next()?),
                    told: signs(f.next()?),
                    source: f.next()?.to_string(),
                    path: f.next()?.to_string(),
                })
            })
            .take(MAX_ENTRIES)
            .collect();
        Registry { since, entries }
    }
}

/// A field of a line: no control characters (tabs and newlines separate), bounded.
fn field(text: &str) -> String {
    let printable: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    crate::bounded::cut(&printable, MAX_PATH)
}

fn list_name(account: &str) -> String {
    format!("{account}#list")
}

/// The account's registry, read without a lock.
pub fn read(state: &StateDir, account: &str) -> Registry {
    let Ok(dir) = state.top().open_dir(DIR) else {
        return Registry::default();
    };
    let mut text = String::new();
    if let Ok(f) = dir.open_file(&list_name(account), flags::READ) {
        let _ = f.take(256 * 1024).read_to_string(&mut text);
    }
    Registry::decode(&text)
}

/// Change the account's registry under its lock. `Ok(None)`: the lock stayed busy past
/// `wait`; nothing was changed.
pub fn update<R>(
    state: &StateDir,
    account: &str,
    wait: std::time::Duration,
    change: impl FnOnce(&mut Registry) -> R,
) -> Result<Option<R>, Failure> {
    let dir = state.subdir(DIR)?;
    let path = state.path().join(DIR).join(format!("{account}#lock"));
    let lock = dir
        .open_file(
            &format!("{account}#lock"),
            flags::READ_WRITE | flags::CREATE,
        )
        .map_err(|e| Failure::io(Exit::OsErr, format!("cannot open {}", path.display()), &e))?;
    if crate::state::lock::lock_with_deadline(&lock, wait).is_err() {
        return Ok(None);
    }
    let mut registry = read(state, account);
    let result = change(&mut registry);
    dir.replace(&list_name(account), registry.encode().as_bytes())
        .map_err(|e| {
            Failure::io(
                Exit::IoErr,
                format!(
                    "cannot write {}",
                    path.with_file_name(list_name(account)).display()
                ),
                &e,
            )
        })?;
    Ok(Some(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_900_000_000;
    const DAY: i64 = 86400;

    #[test]
    fn an_upgrade_learns_the_scripts_then_new_ones_start_small() {
        let cfg = Scripts::default();
        let mut r = Registry::default();
        let s = r.sight("/w/news.php", "src", &[], T, &cfg);
        assert_eq!(
            s.standing,
            Standing::Known,
            "learning: known from the start"
        );
        assert!(s.changed);
        // A day later learning is over: a script never seen is new, for `history`.
        let later = T + DAY + 1;
        assert_eq!(
            r.sight("/w/up/x.php", "src", &[], later, &cfg).standing,
            Standing::New
        );
        assert_eq!(r.standing("/w/news.php", later, &cfg), Standing::Known);
        assert_eq!(
            r.standing("/w/up/x.php", later + 7 * DAY - 1, &cfg),
            Standing::New
        );
        assert_eq!(
            r.standing("/w/up/x.php", later + 7 * DAY, &cfg),
            Standing::Known
        );
        // Decisions win over history.
        assert!(r.decide("/w/up/x.php", Mark::Blocked, later));
        assert_eq!(
            r.standing("/w/up/x.php", later + 30 * DAY, &cfg),
            Standing::Blocked
        );
        r.decide("/w/brand-new.php", Mark::Approved, later);
        assert_eq!(
            r.standing("/w/brand-new.php", later, &cfg),
            Standing::Approved
        );
    }

    #[test]
    fn the_admin_hears_each_sign_of_a_script_once() {
        let cfg = Scripts::default();
        let mut r = Registry::default();
        let s = r.sight("/w/x.php", "src", &[Sign::Recent], T, &cfg);
        assert_eq!(s.untold, [Sign::Recent]);
        r.told("/w/x.php", &s.untold);
        let s = r.sight("/w/x.php", "src", &[Sign::Recent, Sign::Eval], T + 1, &cfg);
        assert_eq!(s.untold, [Sign::Eval]);
        assert!(s.changed, "a new sign is recorded");
        r.told("/w/x.php", &s.untold);
        let s = r.sight("/w/x.php", "src", &[Sign::Eval], T + 2, &cfg);
        assert!(s.untold.is_empty() && !s.changed, "{s:?}");
        assert!(
            r.sight("/w/x.php", "src", &[], T + TOUCH, &cfg).changed,
            "last seen touched hourly"
        );
    }

    #[test]
    fn it_round_trips_and_a_damaged_file_is_empty() {
        let cfg = Scripts::default();
        let mut r = Registry::default();
        r.sight(
            "/w/a b.php",
            "1000:a\tb.php",
            &[Sign::Eval, Sign::Recent],
            T,
            &cfg,
        );
        r.decide("/w/c.php", Mark::Approved, T);
        r.told("/w/a b.php", &[Sign::Eval]);
        assert_eq!(Registry::decode(&r.encode()), r);
        assert_eq!(Registry::decode("garbage"), Registry::default());
        assert_eq!(Registry::decode(""), Registry::default());
    }

    #[test]
    fn it_is_bounded_and_never_pushes_out_a_decision() {
        let cfg = Scripts::default();
        let mut r = Registry::default();
        r.decide("/w/approved.php", Mark::Approved, T);
        for i in 0..MAX_ENTRIES * 2 {
            r.sight(
                &format!("/w/{i}.php"),
                "src",
                &[],
                T + DAY * 2 + i as i64,
                &cfg,
            );
        }
        assert_eq!(r.entries.len(), MAX_ENTRIES);
        assert!(r.entry("/w/approved.php").is_some());
        assert!(
            r.entry(&format!("/w/{}.php", MAX_ENTRIES * 2 - 1))
                .is_some()
        );
        let long = "x".repeat(MAX_PATH * 4);
        r.sight(&long, "src", &[], T + 9 * DAY, &cfg);
        assert!(r.encode().len() < MAX_ENTRIES * (MAX_PATH + 200));
    }
}
