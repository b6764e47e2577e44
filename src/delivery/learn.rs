//! `queue run`'s step that learns what became of the mail: read what the relay logged since
//! the last run (`reader`), tie each line to its hand-over record (`postfix_log`, `record`),
//! count the outcomes per account and script (`apply`), then let `triggers` act on them.
//! Blind (the log unreadable) it says so once and asks no trigger; a log that other local
//! users can write into (`source`) is said once too.

use super::record::{self, Step};
use super::{marks, postfix_log, reader, triggers};
use crate::log::Severity;
use crate::runtime::Runtime;
use crate::runtime::notify;
use crate::state::Dir;
use crate::stats::Outcome;
use std::collections::{BTreeMap, HashMap};

/// What one run learnt.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Learnt {
    pub lines: usize,
    /// Facts about messages mailgate handed over.
    pub matched: usize,
    /// Recipient outcomes counted.
    pub counted: usize,
    pub blind: Option<String>,
    /// Another process (a follower, another run) was learning: nothing was read.
    pub busy: bool,
}

/// One counted outcome of an account, with where the message came from.
pub(super) struct Counted {
    pub(super) script: String,
    pub(super) cwd: String,
    pub(super) outcome: Outcome,
    pub(super) reply: String,
}

/// `queue run`'s step: read what the relay logged since the last run, count it, run the
/// triggers.
pub fn learn(rt: &Runtime) -> Learnt {
    let mut learnt = Learnt::default();
    let Some(path) = rt.config.outcomes.relay_log.clone() else {
        return learnt;
    };
    let Ok(state) = rt.state() else {
        return learnt;
    };
    // One learner at a time: two would read the same lines from the same position.
    let _learning = match state.try_lock_named("learn.lock") {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            learnt.busy = true;
            return learnt;
        }
        Err(f) => {
            rt.logger.log(Severity::Warning, &f.message);
            return learnt;
        }
    };
    let Ok(dir) = state.subdir(record::DIR) else {
        return learnt;
    };
    let position = reader::Position::decode(&marks::read(&dir, marks::POSITION));
    let batch = match reader::read_new(&path, position, rt.config.outcomes.max_read) {
        Ok(batch) => batch,
        // Only root reads the relay's log (its mode is 0600 root); a queue run by an admin in
        // group mailgate leaves the outcomes to root's next run.
        // SAFETY: geteuid cannot fail.
        Err(reader::Blind { denied: true, .. }) if unsafe { libc::geteuid() } != 0 => {
            return learnt;
        }
        // Blind, the triggers are not asked: a hold ends on a rate that is seen to fall, never
        // on outcomes that could not be read.
        Err(reader::Blind { why, .. }) => {
            went_blind(rt, &dir, &why);
            learnt.blind = Some(why);
            return learnt;
        }
    };
    note_source(rt, &dir, &path);
    if !marks::read(&dir, marks::BLIND).is_empty() && dir.unlink(marks::BLIND).is_ok() {
        rt.logger.log(
            Severity::Info,
            &format!("outcomes: {} can be read again", path.display()),
        );
    }
    for note in &batch.notes {
        rt.logger
            .log(Severity::Warning, &format!("outcomes: {note}"));
    }
    let now = rt.now();
    let name = &rt.config.outcomes.syslog_name;
    // Each message's facts in log order, so that its record is opened once for all of them.
    let mut facts: HashMap<&str, Vec<postfix_log::Fact<'_>>> = HashMap::new();
    for line in batch.text.lines() {
        learnt.lines += 1;
        if let Some((queue_id, fact)) = postfix_log::parse(line, name) {
            facts.entry(queue_id).or_default().push(fact);
        }
    }
    let mut by_account: BTreeMap<String, Vec<Counted>> = BTreeMap::new();
    for (queue_id, facts) in facts {
        let Some(mut opened) = record::open(&dir, queue_id) else {
            continue;
        };
        let mut steps: Vec<Step> = Vec::new();
        let rec = &mut opened.record;
        for fact in &facts {
            learnt.matched += 1;
            let applied = super::apply(rec, fact, now);
            steps.extend(applied.steps);
            let counted = by_account.entry(rec.handed.account.clone()).or_default();
            for (outcome, reply) in applied.counted {
                learnt.counted += 1;
                counted.push(Counted {
                    script: rec.handed.script.clone(),
                    cwd: rec.handed.cwd.clone(),
                    outcome,
                    reply,
                });
            }
        }
        if !steps.is_empty()
            && let Err(e) = opened.append(&steps)
        {
            rt.logger.log(
                Severity::Warning,
                &format!("outcomes: cannot add to the record of {queue_id}: {e}"),
            );
        }
    }
    marks::write(&dir, marks::POSITION, &batch.next.encode());
    triggers::add_to_server(&dir, &by_account, now);
    triggers::run(rt, &dir, by_account);
    expire_records(rt, &dir);
    learnt
}

/// The relay's log cannot be read: said in the log and to the admin once (and again only when
/// the reason changes); `status` shows `.blind` as long as it lasts.
fn went_blind(rt: &Runtime, dir: &Dir, why: &str) {
    if marks::read(dir, marks::BLIND) == why {
        return;
    }
    marks::write(dir, marks::BLIND, why);
    rt.logger.log(
        Severity::Warning,
        &format!("outcomes: blind: {why}; the failure-rate triggers cannot see bounces"),
    );
    if let Some(admin) = rt.admin_address() {
        let msg = notify::blind_message(why, &rt.envelope_to(&admin));
        rt.send_internal(msg, &admin, "alert");
    }
}

/// Why local users could write lines into the relay's log, if they could (`check-config`
/// says it too).
pub fn source_warning(
    outcomes: &crate::config::Outcomes,
    path: &std::path::Path,
) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let config_dir = &outcomes.relay_config;
    let main_cf = std::fs::read_to_string(config_dir.join("main.cf")).ok();
    let mode = std::fs::symlink_metadata(path).ok().map(|m| m.mode());
    super::source::forgeable(path, config_dir, main_cf.as_deref(), mode)
}

/// Say in the log, once (and again when the reason changes), that the relay's log can hold
/// lines that other local users wrote: the outcomes are then evidence anyone can forge.
fn note_source(rt: &Runtime, dir: &Dir, path: &std::path::Path) {
    let why = source_warning(&rt.config.outcomes, path).unwrap_or_default();
    if marks::read(dir, marks::FORGEABLE) == why {
        return;
    }
    if why.is_empty() {
        let _ = dir.unlink(marks::FORGEABLE);
        return;
    }
    marks::write(dir, marks::FORGEABLE, &why);
    rt.logger.log(
        Severity::Warning,
        &format!("outcomes: the relay's log is not evidence only the relay writes: {why}"),
    );
}

/// Why outcomes are not learnt, if they are not: for `status`.
pub fn blindness(rt: &Runtime) -> Option<String> {
    if rt.config.outcomes.relay_log.is_none() {
        return Some("[outcomes] relay_log is not set: delivery outcomes are not learnt".into());
    }
    let dir = rt.state().ok()?.top().open_dir(record::DIR).ok()?;
    let why = marks::read(&dir, marks::BLIND);
    (!why.is_empty()).then_some(why)
}

/// Records older than `[outcomes] keep` go, at most once an hour (a directory listing).
fn expire_records(rt: &Runtime, dir: &Dir) {
    let recent = dir
        .modified(marks::EXPIRED)
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|e| e.as_secs() < 3600);
    if recent {
        return;
    }
    marks::write(dir, marks::EXPIRED, "");
    let keep = std::time::Duration::from_secs(rt.config.outcomes.keep.secs());
    for name in crate::state::older_than(dir, keep) {
        if record::valid_name(&name) {
            let _ = dir.unlink(&name);
        }
    }
}
