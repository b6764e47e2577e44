//! Who sent what: bounded per-account statistics for `mailgate top` and `mailgate metrics`.
//!
//! Every message whose fate is logged (`status=` in a log line with `account=`) is counted
//! here too, under its source: the `X-PHP-Originating-Script` it carried, else the working
//! directory of the process that called mailgate. Per account the file holds
//!
//! - totals since the statistics began (messages and recipients by outcome, lock waits, relay
//!   errors): the monotonic counters Prometheus wants;
//! - per source, counts in time slots: 5-minute slots for the last hour (so that `--since 1h`
//!   is exact to 5 minutes) and hourly slots back to `KEEP`; older slots are dropped;
//! - at most `MAX_SOURCES` sources: a new one pushes the smallest into "(other)", so totals
//!   stay exact while the heavy senders keep their own rows.
//!
//! Its size therefore has a fixed bound whatever the traffic (`MAX_FILE`). This module is
//! pure (the model and its text codec); `file` reads and writes it in the state directory.
//!
//! It must never stop a message: a statistics file it cannot update is skipped and logged.

pub mod metrics;

pub mod backlog;
pub mod file;

use crate::bounded::cut;
use std::fmt::Write as _;

/// Sources with their own row per account; the rest are summed in "(other)".
pub const MAX_SOURCES: usize = 20;
/// Longest source key kept (bytes); a longer script path is cut.
pub const MAX_KEY: usize = 200;
/// Slot length for the most recent `FINE_SPAN`.
pub const FINE: i64 = 300;
pub const FINE_SPAN: i64 = 3600;
/// Slot length beyond it.
pub const COARSE: i64 = 3600;
/// How far back the slots go.
pub const KEEP: i64 = 25 * 3600;
/// Upper bound of an encoded statistics file (bytes), proven by a test: header and totals,
/// plus per source (20 and "(other)") its key line and at most 13 fine and 26 coarse slot
/// lines, with every count at 10 digits (10^10 messages in one slot are out of reach).
pub const MAX_FILE: usize = 124 * 1024;

const MAGIC: &str = "mailgate-stats 1";

/// What became of a message, as the log's `status=` says it; and, after the relay took it,
/// what became of each recipient (learnt from the relay's log, `crate::delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Sent,
    Queued,
    Deferred,
    Held,
    Refused,
    /// A recipient the receiving server (or the relay's local delivery) took.
    Delivered,
    /// A recipient refused for good (5xx) or given up on (expired): a bounce to the sender.
    Bounced,
    /// A recipient the receiving server put off (4xx; Postfix's `status=deferred`), counted
    /// once however often the relay retries it.
    Delayed,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Sent,
        Outcome::Queued,
        Outcome::Deferred,
        Outcome::Held,
        Outcome::Refused,
        Outcome::Delivered,
        Outcome::Bounced,
        Outcome::Delayed,
    ];
    /// The outcomes of messages (what mailgate did), as opposed to those of recipients.
    pub const MESSAGE: [Outcome; 5] = [
        Outcome::Sent,
        Outcome::Queued,
        Outcome::Deferred,
        Outcome::Held,
        Outcome::Refused,
    ];
    /// What the relay's log says became of recipients after the hand-over.
    pub const DELIVERY: [Outcome; 3] = [Outcome::Delivered, Outcome::Bounced, Outcome::Delayed];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Queued => "queued",
            Outcome::Deferred => "deferred",
            Outcome::Held => "held",
            Outcome::Refused => "refused",
            Outcome::Delivered => "delivered",
            Outcome::Bounced => "bounced",
            Outcome::Delayed => "delayed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Messages by outcome, and the recipients of those sent; then recipients by what became of
/// them after the hand-over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub sent: u64,
    pub queued: u64,
    pub deferred: u64,
    pub held: u64,
    pub refused: u64,
    /// Recipients of the messages sent.
    pub recipients: u64,
    /// Recipients delivered, bounced and delayed (the relay's log).
    pub delivered: u64,
    pub bounced: u64,
    pub delayed: u64,
}

impl Counts {
    /// One message with `recipients` recipients; for a delivery outcome, that many
    /// recipients.
    pub fn add(&mut self, outcome: Outcome, recipients: u64) {
        let (n, by) = match outcome {
            Outcome::Sent => {
                self.recipients = self.recipients.saturating_add(recipients);
                (&mut self.sent, 1)
            }
            Outcome::Queued => (&mut self.queued, 1),
            Outcome::Deferred => (&mut self.deferred, 1),
            Outcome::Held => (&mut self.held, 1),
            Outcome::Refused => (&mut self.refused, 1),
            Outcome::Delivered => (&mut self.delivered, recipients),
            Outcome::Bounced => (&mut self.bounced, recipients),
            Outcome::Delayed => (&mut self.delayed, recipients),
        };
        *n = n.saturating_add(by);
    }

    pub fn merge(&mut self, o: &Counts) {
        let mut f = self.fields();
        for (a, b) in f.iter_mut().zip(o.fields()) {
            *a = a.saturating_add(b);
        }
        *self = Counts::from_fields(f);
    }

    /// Bounced recipients as a share of those with a final outcome (delivered or bounced),
    /// in percent; `None` before any.
    pub fn bounce_percent(&self) -> Option<f64> {
        bounce_percent(self.delivered, self.bounced)
    }

    /// Every message, whatever its outcome: what `top` sorts by.
    pub fn messages(&self) -> u64 {
        self.sent
            .saturating_add(self.queued)
            .saturating_add(self.deferred)
            .saturating_add(self.held)
            .saturating_add(self.refused)
    }

    fn fields(&self) -> [u64; 9] {
        [
            self.sent,
            self.queued,
            self.deferred,
            self.held,
            self.refused,
            self.recipients,
            self.delivered,
            self.bounced,
            self.delayed,
        ]
    }

    fn from_fields(f: [u64; 9]) -> Counts {
        Counts {
            sent: f[0],
            queued: f[1],
            deferred: f[2],
            held: f[3],
            refused: f[4],
            recipients: f[5],
            delivered: f[6],
            bounced: f[7],
            delayed: f[8],
        }
    }
}

/// Where a message came from, within its account.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKey {
    /// `X-PHP-Originating-Script` (PHP's `mail.add_x_header`): "uid:path".
    Script(String),
    /// The caller's working directory, when no script header was given.
    Cwd(String),
    /// Sources pushed out of the table, summed.
    Other,
}

impl SourceKey {
    /// The script when there is one, else the working directory; cut to `MAX_KEY` bytes.
    pub fn of(script: &str, cwd: &str) -> SourceKey {
        if script.is_empty() {
            SourceKey::Cwd(cut(cwd, MAX_KEY))
        } else {
            SourceKey::Script(cut(script, MAX_KEY))
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SourceKey::Script(_) => "script",
            SourceKey::Cwd(_) => "cwd",
            SourceKey::Other => "other",
        }
    }

    /// How a person reads it (`top`, notices, alerts): the script, or "cwd DIR", escaped
    /// (a script name is the caller's choice).
    pub fn label(&self) -> String {
        match self {
            SourceKey::Script(s) => crate::log::printable(s, MAX_KEY),
            SourceKey::Cwd(d) => format!("cwd {}", crate::log::printable(d, MAX_KEY)),
            SourceKey::Other => "(other sources)".into(),
        }
    }

    pub fn text(&self) -> &str {
        match self {
            SourceKey::Script(s) | SourceKey::Cwd(s) => s,
            SourceKey::Other => "(other)",
        }
    }
}

/// Counts of one time slot `[start, start + secs)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub start: i64,
    pub secs: i64,
    pub counts: Counts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub key: SourceKey,
    pub last_seen: i64,
    /// The weight of the source it replaced in a full table (the Space-Saving algorithm): a
    /// newcomer ranks above it for eviction, so a source sending more than 1/`MAX_SOURCES` of
    /// the account's mail is never pushed out by a crowd of small ones. Never reported.
    pub inherited: u64,
    /// Oldest first.
    pub slots: Vec<Slot>,
}

impl Source {
    fn volume(&self) -> u64 {
        self.slots.iter().map(|s| s.counts.messages()).sum()
    }

    fn weight(&self) -> u64 {
        self.volume().saturating_add(self.inherited)
    }

    fn add(&mut self, now: i64, outcome: Outcome, recipients: u64) {
        let start = now.div_euclid(FINE) * FINE;
        match self
            .slots
            .iter_mut()
            .find(|s| s.start == start && s.secs == FINE)
        {
            Some(s) => s.counts.add(outcome, recipients),
            None => {
                let mut counts = Counts::default();
                counts.add(outcome, recipients);
                self.slots.push(Slot {
                    start,
                    secs: FINE,
                    counts,
                });
                self.slots.sort_by_key(|s| (s.start, s.secs));
            }
        }
        self.last_seen = self.last_seen.max(now);
    }

    fn merge_slots(&mut self, slots: &[Slot]) {
        for s in slots {
            match self
                .slots
                .iter_mut()
                .find(|t| t.start == s.start && t.secs == s.secs)
            {
                Some(t) => t.counts.merge(&s.counts),
                None => self.slots.push(s.clone()),
            }
        }
        self.slots.sort_by_key(|s| (s.start, s.secs));
    }

    /// Fine slots older than `FINE_SPAN` go into their hour; slots older than `KEEP` go.
    /// Slots from a clock that was ahead (they begin after the current slot) are counted in
    /// the current slot, so that a clock stepped back never grows the file.
    fn age(&mut self, now: i64) {
        let current = now.div_euclid(FINE) * FINE;
        let mut aged: Vec<Slot> = Vec::new();
        self.slots.retain(|s| {
            if s.start > current {
                aged.push(Slot {
                    start: current,
                    secs: FINE,
                    counts: s.counts,
                });
                return false;
            }
            if s.start + s.secs <= now - KEEP {
                return false;
            }
            if s.secs == FINE && s.start < now - FINE_SPAN {
                aged.push(Slot {
                    start: s.start.div_euclid(COARSE) * COARSE,
                    secs: COARSE,
                    counts: s.counts,
                });
                return false;
            }
            true
        });
        self.merge_slots(&aged);
    }
}

/// Totals since the statistics began: what `mailgate metrics` exports as counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Messages and recipients by outcome (`Outcome::index`); for a delivery outcome both
    /// count recipients.
    pub messages: [u64; 8],
    pub recipients: [u64; 8],
    /// Time senders waited for the counter locks, in microseconds, and how many decisions.
    pub lock_wait_us: u64,
    pub decisions: u64,
    /// Decisions that gave up waiting for a lock (a stopped holder).
    pub lock_busy: u64,
    /// Relay answers that were not a 250 for everything: temporary, permanent, unreachable.
    pub relay_errors: [u64; 3],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayError {
    Temporary,
    Permanent,
    Unreachable,
}

impl From<crate::relay::disposition::Trouble> for RelayError {
    fn from(t: crate::relay::disposition::Trouble) -> RelayError {
        use crate::relay::disposition::Trouble;
        match t {
            Trouble::Permanent => RelayError::Permanent,
            Trouble::Temporary => RelayError::Temporary,
            Trouble::Unreachable => RelayError::Unreachable,
        }
    }
}

impl RelayError {
    pub const ALL: [RelayError; 3] = [
        RelayError::Temporary,
        RelayError::Permanent,
        RelayError::Unreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RelayError::Temporary => "temporary",
            RelayError::Permanent => "permanent",
            RelayError::Unreachable => "unreachable",
        }
    }
}

impl Totals {
    /// Add another account's totals (the metrics' "(other)" sum).
    pub fn add(&mut self, other: &Totals) {
        let add_all = |a: &mut [u64], b: &[u64]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        add_all(&mut self.messages, &other.messages);
        add_all(&mut self.recipients, &other.recipients);
        add_all(&mut self.relay_errors, &other.relay_errors);
        self.lock_wait_us += other.lock_wait_us;
        self.decisions += other.decisions;
        self.lock_busy += other.lock_busy;
    }

    /// Messages over every message outcome.
    pub fn all_messages(&self) -> u64 {
        Outcome::MESSAGE.iter().map(|&o| self.messages(o)).sum()
    }

    pub fn messages(&self, o: Outcome) -> u64 {
        self.messages[o.index()]
    }

    pub fn recipients(&self, o: Outcome) -> u64 {
        self.recipients[o.index()]
    }

    pub fn relay_errors(&self, e: RelayError) -> u64 {
        self.relay_errors[e as usize]
    }
}

/// One logged message outcome.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub now: i64,
    pub outcome: Outcome,
    pub recipients: u64,
    pub script: &'a str,
    pub cwd: &'a str,
    /// The wait for the counter locks, when this message was decided (not for a queue run's
    /// delivery of a message decided before).
    pub lock_wait_us: Option<u64>,
    pub lock_busy: bool,
    pub relay_error: Option<RelayError>,
}

/// One account's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub totals: Totals,
    /// Until when no further notice goes to the account's `notify` addresses.
    pub notice_until: i64,
    pub sources: Vec<Source>,
}

/// One row of `top`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub key: SourceKey,
    pub counts: Counts,
}

impl Stats {
    pub fn record(&mut self, e: &Event<'_>) {
        let t = &mut self.totals;
        let i = e.outcome.index();
        t.messages[i] = t.messages[i].saturating_add(1);
        t.recipients[i] = t.recipients[i].saturating_add(e.recipients);
        if let Some(us) = e.lock_wait_us {
            t.lock_wait_us = t.lock_wait_us.saturating_add(us);
            t.decisions = t.decisions.saturating_add(1);
        }
        if e.lock_busy {
            t.lock_busy = t.lock_busy.saturating_add(1);
        }
        if let Some(r) = e.relay_error {
            t.relay_errors[r as usize] = t.relay_errors[r as usize].saturating_add(1);
        }
        self.age(e.now);
        let key = SourceKey::of(e.script, e.cwd);
        let at = match self.sources.iter().position(|s| s.key == key) {
            Some(at) => at,
            None => self.make_room_for(key, e.now),
        };
        self.sources[at].add(e.now, e.outcome, e.recipients);
    }

    /// A row for a new source; when the table is full the smallest source (the least recently
    /// seen among equals) is summed into "(other)" first. Returns its index.
    fn make_room_for(&mut self, key: SourceKey, now: i64) -> usize {
        let named = self
            .sources
            .iter()
            .filter(|s| s.key != SourceKey::Other)
            .count();
        let mut inherited = 0;
        if named >= MAX_SOURCES {
            let smallest = self
                .sources
                .iter()
                .enumerate()
                .filter(|(_, s)| s.key != SourceKey::Other)
                .min_by_key(|(_, s)| (s.weight(), s.last_seen))
                .map(|(i, _)| i)
                .expect("a full table has a named source");
            let gone = self.sources.remove(smallest);
            inherited = gone.weight();
            let other = match self.sources.iter().position(|s| s.key == SourceKey::Other) {
                Some(i) => i,
                None => {
                    self.sources.push(Source {
                        key: SourceKey::Other,
                        last_seen: gone.last_seen,
                        inherited: 0,
                        slots: Vec::new(),
                    });
                    self.sources.len() - 1
                }
            };
            let other = &mut self.sources[other];
            other.merge_slots(&gone.slots);
            other.last_seen = other.last_seen.max(gone.last_seen);
        }
        self.sources.push(Source {
            key,
            last_seen: now,
            inherited,
            slots: Vec::new(),
        });
        self.sources.len() - 1
    }

    /// Fold and drop old slots; a source with nothing left goes.
    pub fn age(&mut self, now: i64) {
        for s in &mut self.sources {
            s.age(now);
        }
        self.sources.retain(|s| !s.slots.is_empty());
    }

    /// Each source's counts in the slots that overlap `[from, ...)`, largest first, and where
    /// they really begin: `from`, or the start of a slot that began before it (at most one
    /// slot length earlier); `None` without any.
    pub fn since(&self, from: i64) -> (Vec<Row>, Option<i64>) {
        let mut begins: Option<i64> = None;
        let mut rows: Vec<Row> = Vec::new();
        for s in &self.sources {
            let mut counts = Counts::default();
            for slot in s.slots.iter().filter(|sl| sl.start + sl.secs > from) {
                counts.merge(&slot.counts);
                // A slot that began before `from` is counted whole: the counts begin there.
                let start = slot.start.min(from);
                begins = Some(begins.map_or(start, |b| b.min(start)));
            }
            if counts != Counts::default() {
                rows.push(Row {
                    key: s.key.clone(),
                    counts,
                });
            }
        }
        rows.sort_by(|a, b| {
            b.counts
                .messages()
                .cmp(&a.counts.messages())
                .then_with(|| a.key.cmp(&b.key))
        });
        (rows, begins)
    }

    /// The first notice in a window: `true` (and no other until `now + secs`) when none was
    /// sent since `notice_until`.
    pub fn claim_notice(&mut self, now: i64, secs: i64) -> bool {
        claim_window(&mut self.notice_until, now, secs)
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(256 + self.sources.len() * 256);
        let t = &self.totals;
        let _ = writeln!(out, "{MAGIC}");
        let _ = writeln!(
            out,
            "totals {} {} {} {} {} {} {}",
            t.lock_wait_us,
            t.decisions,
            t.lock_busy,
            t.relay_errors[0],
            t.relay_errors[1],
            t.relay_errors[2],
            self.notice_until
        );
        for o in Outcome::ALL {
            let _ = writeln!(
                out,
                "outcome {} {} {}",
                o.as_str(),
                t.messages(o),
                t.recipients(o)
            );
        }
        for s in &self.sources {
            let _ = writeln!(
                out,
                "source {} {} {} {}",
                s.key.kind(),
                s.last_seen,
                s.inherited,
                escape(s.key.text())
            );
            for sl in &s.slots {
                let _ = write!(out, "slot {} {}", sl.start, sl.secs);
                for n in sl.counts.fields() {
                    let _ = write!(out, " {n}");
                }
                out.push('\n');
            }
        }
        out.push_str("end\n");
        out
    }

    /// The statistics in `text`; an empty text is a new file. Anything malformed (a file cut
    /// short, edited, or not ours) is an error: the caller starts afresh and says so.
    ///
    /// Long on purpose: one arm per line kind of the file format, read top to bottom.
    pub fn decode(text: &str) -> Result<Stats, String> {
        if text.is_empty() {
            return Ok(Stats::default());
        }
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err("not a mailgate statistics file".into());
        }
        let mut stats = Stats::default();
        let mut ended = false;
        for (n, line) in lines.enumerate() {
            if ended {
                return Err(format!("line {}: text after the end", n + 2));
            }
            let bad = |what: &str| format!("line {}: {what}", n + 2);
            let mut words = line.split(' ');
            let tag = words.next().unwrap_or_default();
            // Into a fixed array: a file of hundreds of lines costs no allocation per line.
            let nums = |words: &mut std::str::Split<'_, char>, v: &mut [i128]| {
                for n in v.iter_mut() {
                    let w = words.next().ok_or_else(|| bad("too few fields"))?;
                    *n = w.parse::<i128>().map_err(|_| bad("not a number"))?;
                }
                Ok::<_, String>(())
            };
            let count = |v: i128| u64::try_from(v).map_err(|_| bad("count out of range"));
            let time = |v: i128| i64::try_from(v).map_err(|_| bad("time out of range"));
            match tag {
                "totals" => {
                    let mut v = [0; 7];
                    nums(&mut words, &mut v)?;
                    stats.totals.lock_wait_us = count(v[0])?;
                    stats.totals.decisions = count(v[1])?;
                    stats.totals.lock_busy = count(v[2])?;
                    stats.totals.relay_errors = [count(v[3])?, count(v[4])?, count(v[5])?];
                    stats.notice_until = time(v[6])?;
                }
                "outcome" => {
                    let name = words.next().unwrap_or_default();
                    let o = Outcome::ALL
                        .into_iter()
                        .find(|o| o.as_str() == name)
                        .ok_or_else(|| bad("unknown outcome"))?;
                    let mut v = [0; 2];
                    nums(&mut words, &mut v)?;
                    stats.totals.messages[o.index()] = count(v[0])?;
                    stats.totals.recipients[o.index()] = count(v[1])?;
                }
                "source" => {
                    let kind = words.next().unwrap_or_default();
                    let mut v = [0; 2];
                    nums(&mut words, &mut v)?;
                    let (last_seen, inherited) = (time(v[0])?, count(v[1])?);
                    let text = unescape(words.next().unwrap_or_default())
                        .ok_or_else(|| bad("bad escape"))?;
                    let key = match kind {
                        "script" => SourceKey::Script(cut(&text, MAX_KEY)),
                        "cwd" => SourceKey::Cwd(cut(&text, MAX_KEY)),
                        "other" => SourceKey::Other,
                        _ => return Err(bad("unknown source kind")),
                    };
                    if stats.sources.len() > MAX_SOURCES {
                        return Err(bad("too many sources"));
                    }
                    stats.sources.push(Source {
                        key,
                        last_seen,
                        inherited,
                        slots: Vec::new(),
                    });
                }
                "slot" => {
                    // 6 counts in files from before the delivery outcomes, 9 since.
                    let n = words.clone().count();
                    if n != 8 && n != 11 {
                        return Err(bad("wrong number of fields"));
                    }
                    let mut v = [0; 11];
                    let v = &mut v[..n];
                    nums(&mut words, v)?;
                    let (start, secs) = (time(v[0])?, time(v[1])?);
                    if secs != FINE && secs != COARSE {
                        return Err(bad("bad slot length"));
                    }
                    let source = stats
                        .sources
                        .last_mut()
                        .ok_or_else(|| bad("slot before any source"))?;
                    if source.slots.len() >= (FINE_SPAN / FINE + KEEP / COARSE + 2) as usize {
                        return Err(bad("too many slots"));
                    }
                    let mut f = [0u64; 9];
                    for (slot, &n) in f.iter_mut().zip(&v[2..]) {
                        *slot = count(n)?;
                    }
                    source.slots.push(Slot {
                        start,
                        secs,
                        counts: Counts::from_fields(f),
                    });
                }
                "end" => ended = true,
                _ => return Err(bad("unknown line")),
            }
            if words.next().is_some() {
                return Err(bad("too many fields"));
            }
        }
        if !ended {
            return Err("cut short (no end line)".into());
        }
        for s in &mut stats.sources {
            s.slots.sort_by_key(|s| (s.start, s.secs));
        }
        Ok(stats)
    }
}

/// Bounced recipients as a share of those with a final outcome (delivered or bounced), in
/// percent; `None` before any.
pub fn bounce_percent(delivered: u64, bounced: u64) -> Option<f64> {
    let decided = delivered.saturating_add(bounced);
    (decided > 0).then(|| bounced as f64 * 100.0 / decided as f64)
}

/// Once per window: `true`, and `until` moves to `now + secs`, unless an earlier claim's window
/// is still open. An `until` further ahead than one window was set by a clock that was ahead,
/// not by this window, and does not count.
pub fn claim_window(until: &mut i64, now: i64, secs: i64) -> bool {
    if now < *until && *until <= now.saturating_add(secs.max(1)) {
        return false;
    }
    *until = now.saturating_add(secs.max(1));
    true
}

/// `top`'s table of one account's rows (at most `max`, the rest summed), for a terminal or a
/// mail: every key escaped and cut.
pub fn render_rows(rows: &[Row], max: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>7} {:>7} {:>8} {:>6} {:>7} {:>7} | {:>9} {:>7} {:>7} {:>7}  SOURCE",
        "SENT",
        "QUEUED",
        "DEFERRED",
        "HELD",
        "REFUSED",
        "RCPTS",
        "DELIVERED",
        "BOUNCED",
        "DELAYED",
        "BOUNCE%"
    );
    let mut rest = Counts::default();
    for (i, r) in rows.iter().enumerate() {
        if i >= max {
            rest.merge(&r.counts);
            continue;
        }
        out.push_str(&row_line(&r.counts, &r.key.label()));
    }
    if rows.len() > max {
        out.push_str(&row_line(&rest, &format!("({} more)", rows.len() - max)));
    }
    if rows.is_empty() {
        out.push_str("       (no mail)\n");
    }
    out
}

/// One line of `top`'s table: what mailgate did with the messages, then (after the bar) what
/// became of their recipients after the relay took them.
pub fn row_line(c: &Counts, label: &str) -> String {
    let rate = c
        .bounce_percent()
        .map_or_else(|| "-".to_string(), |p| format!("{p:.0}%"));
    format!(
        "{:>7} {:>7} {:>8} {:>6} {:>7} {:>7} | {:>9} {:>7} {:>7} {:>7}  {label}\n",
        c.sent,
        c.queued,
        c.deferred,
        c.held,
        c.refused,
        c.recipients,
        c.delivered,
        c.bounced,
        c.delayed,
        rate
    )
}

/// Keys are written as one word: `%`, space, control characters and non-ASCII bytes become
/// `%XX`; an empty key is `%`.
fn escape(text: &str) -> String {
    if text.is_empty() {
        return "%".into();
    }
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn unescape(word: &str) -> Option<String> {
    if word == "%" {
        return Some(String::new());
    }
    let bytes = word.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = word.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_from_before_the_delivery_outcomes_still_read() {
        let old = "mailgate-stats 1\ntotals 0 0 0 0 0 0 0\noutcome sent 3 4\nsource script 10 0 1:/a.php\nslot 0 300 3 0 0 0 0 4\nend\n";
        let s = Stats::decode(old).unwrap();
        assert_eq!(s.sources[0].slots[0].counts.sent, 3);
        assert_eq!(s.sources[0].slots[0].counts.delivered, 0);
        let mut c = Counts::default();
        c.add(Outcome::Bounced, 2);
        c.add(Outcome::Delivered, 6);
        c.add(Outcome::Sent, 8);
        assert_eq!((c.messages(), c.bounced, c.delivered), (1, 2, 6));
        assert_eq!(c.bounce_percent(), Some(25.0));
        let reread = Stats::decode(&s.encode()).unwrap();
        assert_eq!(reread, s);
        assert!(Stats::decode(&old.replace("0 0 0 0 4", "0 0 0 4")).is_err());
    }

    #[test]
    fn totals_add_up_field_by_field() {
        let a = Totals {
            messages: [1, 2, 3, 4, 5, 100, 100, 100],
            recipients: [6, 7, 8, 9, 10, 100, 100, 100],
            lock_wait_us: 11,
            decisions: 12,
            lock_busy: 13,
            relay_errors: [14, 15, 16],
        };
        let mut sum = a;
        sum.add(&a);
        assert_eq!(
            sum,
            Totals {
                messages: [2, 4, 6, 8, 10, 200, 200, 200],
                recipients: [12, 14, 16, 18, 20, 200, 200, 200],
                lock_wait_us: 22,
                decisions: 24,
                lock_busy: 26,
                relay_errors: [28, 30, 32],
            }
        );
        // Recipients' delivery outcomes are not messages.
        assert_eq!(a.all_messages(), 15);
        assert_eq!(Totals::default().all_messages(), 0);
    }

    fn event<'a>(now: i64, outcome: Outcome, script: &'a str) -> Event<'a> {
        Event {
            now,
            outcome,
            recipients: 2,
            script,
            cwd: "/var/www/site",
            lock_wait_us: Some(10),
            lock_busy: false,
            relay_error: None,
        }
    }

    const T0: i64 = 1_800_000_000;

    #[test]
    fn rows_add_up_by_source_and_outcome() {
        let mut s = Stats::default();
        for _ in 0..3 {
            s.record(&event(T0, Outcome::Sent, "33:/var/www/a/contact.php"));
        }
        s.record(&event(
            T0 + 10,
            Outcome::Refused,
            "33:/var/www/a/contact.php",
        ));
        s.record(&event(T0 + 20, Outcome::Held, ""));
        let (rows, begins) = s.since(T0 - 3600);
        assert_eq!(
            begins,
            Some(T0 - 3600),
            "nothing before: counted from where asked"
        );
        assert_eq!(
            s.since(T0 + 1).1,
            Some(T0.div_euclid(FINE) * FINE),
            "a slot counted whole"
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].key,
            SourceKey::Script("33:/var/www/a/contact.php".into())
        );
        assert_eq!(
            rows[0].counts,
            Counts {
                sent: 3,
                refused: 1,
                recipients: 6,
                ..Counts::default()
            }
        );
        assert_eq!(rows[1].key, SourceKey::Cwd("/var/www/site".into()));
        assert_eq!(rows[1].counts.held, 1);
        assert_eq!(s.totals.messages(Outcome::Sent), 3);
        assert_eq!(s.totals.recipients(Outcome::Refused), 2);
        assert_eq!((s.totals.decisions, s.totals.lock_wait_us), (5, 50));
    }

    #[test]
    fn since_is_exact_to_five_minutes_for_the_last_hour_and_to_the_hour_beyond() {
        let mut s = Stats::default();
        // One message every 10 minutes for 3 hours.
        for i in 0..18 {
            s.record(&event(T0 + i * 600, Outcome::Sent, "x"));
        }
        let now = T0 + 17 * 600;
        s.age(now);
        let (rows, begins) = s.since(now - 1800);
        assert_eq!(rows[0].counts.sent, 4, "the last 30 minutes: 4 messages");
        assert_eq!(begins, Some((now - 1800).div_euclid(FINE) * FINE));
        let (rows, begins) = s.since(now - 2 * 3600);
        let begins = begins.unwrap();
        assert!(
            begins <= now - 2 * 3600 && begins > now - 3 * 3600,
            "{begins}"
        );
        assert_eq!(
            rows[0].counts.sent as i64,
            (now - begins) / 600 + 1,
            "every message since the reported start"
        );
        // Older than KEEP: gone.
        s.age(now + KEEP + 2 * COARSE);
        assert!(s.sources.is_empty());
        assert_eq!(s.totals.messages(Outcome::Sent), 18, "totals stay");
    }

    #[test]
    fn a_full_table_pushes_the_smallest_into_other_and_keeps_every_count() {
        let mut s = Stats::default();
        // A heavy script first, then many small ones, then a new heavy one.
        for _ in 0..50 {
            s.record(&event(T0, Outcome::Sent, "heavy-1"));
        }
        for i in 0..100 {
            s.record(&event(T0 + i, Outcome::Refused, &format!("small-{i}")));
        }
        for _ in 0..30 {
            s.record(&event(T0 + 200, Outcome::Refused, "heavy-2"));
        }
        let (rows, _) = s.since(T0 - 60);
        assert!(rows.len() <= MAX_SOURCES + 1);
        let total: u64 = rows.iter().map(|r| r.counts.messages()).sum();
        assert_eq!(total, 180, "no message lost from the sums");
        let row = |name: &str| {
            rows.iter()
                .find(|r| r.key == SourceKey::Script(name.into()))
                .map(|r| r.counts)
        };
        assert_eq!(row("heavy-1").map(|c| c.sent), Some(50), "{rows:?}");
        let other = rows.iter().find(|r| r.key == SourceKey::Other).unwrap();
        assert_eq!(other.counts.refused, 100 - (MAX_SOURCES as u64 - 2));
        assert_eq!(
            row("heavy-2").map(|c| c.refused),
            Some(30),
            "the new heavy sender has its own row"
        );
    }

    #[test]
    fn the_file_stays_under_its_bound_after_100000_messages_from_1000_scripts() {
        let mut s = Stats::default();
        let mut largest = 0;
        let long = "/".repeat(400);
        for i in 0..100_000i64 {
            // Two days, 1000 scripts with long names, every outcome.
            let now = T0 + i * 2;
            // Half from 20 steady scripts (every slot of every row filled), half from 1000
            // that come and go.
            let script = if i % 2 == 0 {
                format!("1000:/var/www/steady{}/{long}.php", (i / 2) % 20)
            } else {
                format!("1000:/var/www/site{}/{long}.php", i % 1000)
            };
            let outcome = Outcome::ALL[(i % 5) as usize];
            s.record(&event(now, outcome, &script));
            if i % 97 == 0 {
                largest = largest.max(s.encode().len());
            }
        }
        largest = largest.max(s.encode().len());
        eprintln!(
            "largest statistics file: {largest} bytes; {} sources, {} slots",
            s.sources.len(),
            s.sources.iter().map(|x| x.slots.len()).sum::<usize>()
        );
        assert!(largest <= MAX_FILE, "{largest} > {MAX_FILE}");
        assert_eq!(
            Outcome::ALL
                .iter()
                .map(|&o| s.totals.messages(o))
                .sum::<u64>(),
            100_000
        );
        let (rows, _) = s.since(T0 + 200_000 - KEEP);
        assert!(rows.len() <= MAX_SOURCES + 1);
    }

    #[test]
    fn the_worst_case_file_stays_under_its_bound() {
        // 20 sources with the longest keys (every byte escaped), each active in every slot
        // for KEEP, every count at 10 digits, and "(other)" as full.
        let mut s = Stats::default();
        let now = T0 + KEEP;
        let big = 9_999_999_999;
        let full = Counts::from_fields([big; 9]);
        for i in 0..=MAX_SOURCES {
            let key = if i == MAX_SOURCES {
                SourceKey::Other
            } else {
                SourceKey::Script(format!("{i:02}{}", "\u{7f}".repeat(MAX_KEY - 2)))
            };
            let mut slots = Vec::new();
            let mut t = (now - KEEP).div_euclid(COARSE) * COARSE;
            while t < now - FINE_SPAN {
                slots.push(Slot {
                    start: t,
                    secs: COARSE,
                    counts: full,
                });
                t += COARSE;
            }
            while t <= now {
                slots.push(Slot {
                    start: t,
                    secs: FINE,
                    counts: full,
                });
                t += FINE;
            }
            s.sources.push(Source {
                key,
                last_seen: now,
                inherited: big,
                slots,
            });
        }
        s.totals.messages = [u64::MAX; 8];
        s.totals.recipients = [u64::MAX; 8];
        s.age(now);
        let size = s.encode().len();
        eprintln!("worst-case statistics file: {size} bytes");
        assert!(size <= MAX_FILE, "{size} > {MAX_FILE}");
        assert_eq!(Stats::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn long_keys_are_cut_at_a_character_boundary() {
        let long = format!("a{}", "\u{fc}".repeat(150));
        let SourceKey::Script(k) = SourceKey::of(&long, "/") else {
            panic!("a script key")
        };
        assert_eq!(k.len(), MAX_KEY - 1);
        assert_eq!(SourceKey::of("", "/x"), SourceKey::Cwd("/x".into()));
        assert_eq!(SourceKey::of("s", "/x"), SourceKey::Script("s".into()));
    }

    #[test]
    fn each_message_lands_in_its_own_slot() {
        let mut s = Stats::default();
        s.record(&event(T0, Outcome::Sent, "x"));
        s.record(&event(T0 + 1, Outcome::Sent, "x"));
        assert_eq!(s.sources[0].slots.len(), 1, "one 5-minute slot");
        s.record(&event(T0 + FINE, Outcome::Refused, "x"));
        assert_eq!(s.sources[0].slots.len(), 2);
        let (rows, _) = s.since(T0 + FINE);
        assert_eq!((rows[0].counts.sent, rows[0].counts.refused), (0, 1));
        // A slot that ended when the span begins is not in it.
        let (rows, _) = s.since(T0 + 2 * FINE);
        assert!(rows.is_empty(), "{rows:?}");
    }

    #[test]
    fn fine_slots_become_hourly_after_an_hour_and_the_count_stays_bounded() {
        let t = T0.div_euclid(COARSE) * COARSE;
        let mut s = Stats::default();
        s.record(&event(t, Outcome::Sent, "x"));
        s.age(t + FINE_SPAN);
        assert_eq!(s.sources[0].slots[0].secs, FINE, "still within the hour");
        s.age(t + FINE_SPAN + 1);
        assert_eq!(s.sources[0].slots[0].secs, COARSE);
        // One steady sender for two days: 13 fine and 26 hourly slots at most.
        let mut s = Stats::default();
        for i in 0..(2 * 86_400 / 60) {
            s.record(&event(t + i * 60, Outcome::Sent, "x"));
            assert!(
                s.sources[0].slots.len() <= 39,
                "{}",
                s.sources[0].slots.len()
            );
        }
        assert!(
            s.sources[0].slots.len() >= 36,
            "{}",
            s.sources[0].slots.len()
        );
    }

    #[test]
    fn a_clock_stepped_back_for_good_keeps_the_file_bounded() {
        let mut s = Stats::default();
        // 30 hours a day ahead, then the clock is set right and 30 hours go by.
        for start in [T0 + 86_400, T0] {
            for i in 0..(30 * 3600 / 120) {
                s.record(&event(start + i * 120, Outcome::Sent, "x"));
                assert!(
                    s.sources[0].slots.len() <= 39,
                    "{}",
                    s.sources[0].slots.len()
                );
            }
        }
        assert_eq!(Stats::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn a_file_with_more_slots_than_possible_is_damaged() {
        let slots = |n: usize| {
            let mut text = format!("{MAGIC}\nsource script 1 0 x\n");
            for i in 0..n {
                text.push_str(&format!("slot {} 300 1 0 0 0 0 1\n", T0 + i as i64 * 300));
            }
            text + "end\n"
        };
        assert!(Stats::decode(&slots(39)).is_ok());
        assert!(Stats::decode(&slots(40)).is_err());
    }

    #[test]
    fn the_table_shows_max_rows_then_sums_the_rest() {
        let row = |key: SourceKey, sent: u64| Row {
            key,
            counts: Counts {
                sent,
                recipients: sent * 2,
                ..Counts::default()
            },
        };
        let rows = vec![
            row(SourceKey::Script("a.php\x1b[2J".into()), 5),
            row(SourceKey::Cwd("/var/www".into()), 3),
            row(SourceKey::Other, 2),
            row(SourceKey::Script("b.php".into()), 1),
        ];
        let text = render_rows(&rows, 2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].ends_with("BOUNCE%  SOURCE"), "{text}");
        assert!(
            lines[1].ends_with("     10 |         0       0       0       -  a.php\\x1b[2J"),
            "escaped: {text}"
        );
        assert!(lines[1].trim_start().starts_with("5 "), "{text}");
        assert!(lines[2].ends_with("  cwd /var/www"), "{text}");
        assert!(
            lines[3].trim_start().starts_with("3 "),
            "the rest summed: {text}"
        );
        assert!(lines[3].ends_with("(2 more)"), "{text}");
        let all = render_rows(&rows, 4);
        assert_eq!(all.lines().count(), 5, "{all}");
        assert!(
            all.contains("(other sources)") && !all.contains("more)"),
            "{all}"
        );
        assert!(render_rows(&[], 10).contains("(no mail)"));
        assert!(!all.contains("(no mail)"));
    }

    #[test]
    fn notices_once_per_window() {
        let mut s = Stats::default();
        assert!(s.claim_notice(T0, 3600));
        assert!(!s.claim_notice(T0 + 10, 3600));
        assert!(!s.claim_notice(T0 + 3599, 3600));
        assert!(s.claim_notice(T0 + 3600, 3600));
        // The clock stepped back a day: the next stop is announced, not a day later.
        assert!(s.claim_notice(T0 - 86_400, 3600));
        assert!(!s.claim_notice(T0 - 86_400 + 1, 3600));
    }

    #[test]
    fn a_clock_stepping_back_and_forth_never_grows_the_file() {
        let mut s = Stats::default();
        let mut largest = 0;
        for i in 0..2000i64 {
            // Every other message a day ahead, then back: a clock that cannot decide.
            let now = T0 + i * 7 + if i % 2 == 0 { 86_400 } else { 0 };
            s.record(&event(now, Outcome::Sent, "s.php"));
            largest = largest.max(s.sources[0].slots.len());
            assert_eq!(Stats::decode(&s.encode()).unwrap(), s);
        }
        assert!(largest <= 39, "{largest} slots");
        assert_eq!(s.totals.messages(Outcome::Sent), 2000);
    }

    #[test]
    fn codec_round_trips_and_rejects_damage() {
        let mut s = Stats::default();
        s.record(&event(
            T0,
            Outcome::Sent,
            "1000:/var/www/a b/100%.php\x1b[2J",
        ));
        s.record(&event(T0 + 4000, Outcome::Deferred, ""));
        s.record(&Event {
            relay_error: Some(RelayError::Unreachable),
            lock_busy: true,
            ..event(T0 + 4001, Outcome::Queued, "ü")
        });
        s.claim_notice(T0, 60);
        let text = s.encode();
        assert_eq!(Stats::decode(&text).unwrap(), s);
        assert_eq!(Stats::decode("").unwrap(), Stats::default());
        let cut = &text[..text.len() - 4];
        assert!(Stats::decode(cut).is_err(), "a file cut short");
        assert!(Stats::decode("garbage\n").is_err());
        assert!(Stats::decode(&text.replace("slot", "slat")).is_err());
        assert!(Stats::decode(&format!("{text}end\n")).is_err());
        assert!(Stats::decode(&text.replace(" 300 ", " 301 ")).is_err());
    }

    proptest::proptest! {
        #[test]
        /// Any text: decoding never panics, and what decodes re-encodes to itself.
        fn decode_never_panics_and_round_trips(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::string::string_regex("(totals|outcome|source|slot|end)( [-0-9a-z%]{0,12}){0,9}").unwrap(),
                    proptest::string::string_regex("slot [0-9]{1,10} (300|3600)( [0-9]{1,5}){6}").unwrap(),
                    proptest::string::string_regex("source (script|cwd|other) [0-9]{1,3} [0-9]{1,3} [^ \n]{0,20}").unwrap(),
                    ".{0,30}",
                ],
                0..20,
            ),
        ) {
            let text = format!("{MAGIC}\n{}\nend\n", lines.join("\n"));
            if let Ok(s) = Stats::decode(&text) {
                proptest::prop_assert_eq!(Stats::decode(&s.encode()).unwrap(), s);
            }
        }

        #[test]
        /// Recorded events are never lost from the sums, whatever the keys and times.
        fn sums_never_lose_a_message(
            events in proptest::collection::vec((0i64..20_000, 0usize..5, "[a-c]{0,2}", 0u64..5), 1..200),
        ) {
            let mut s = Stats::default();
            let mut t = T0;
            let mut times = Vec::new();
            for (dt, o, script, rcpts) in &events {
                t += dt;
                times.push(t);
                s.record(&Event { recipients: *rcpts, ..event(t, Outcome::ALL[*o], script) });
            }
            let total: u64 = Outcome::ALL.iter().map(|&o| s.totals.messages(o)).sum();
            proptest::prop_assert_eq!(total, events.len() as u64);
            // Every message of the last KEEP is in the rows (and none older than its hour).
            let (rows, _) = s.since(t - KEEP);
            let in_rows = rows.iter().map(|r| r.counts.messages()).sum::<u64>() as usize;
            let surely = times.iter().filter(|&&at| at > t - KEEP).count();
            let at_most = times.iter().filter(|&&at| at > t - KEEP - COARSE).count();
            proptest::prop_assert!(surely <= in_rows && in_rows <= at_most, "{} <= {} <= {}", surely, in_rows, at_most);
            let s2 = Stats::decode(&s.encode()).unwrap();
            proptest::prop_assert_eq!(s2, s);
        }
    }
}
