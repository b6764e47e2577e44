//! Outcomes within seconds. After its run, `queue run --follow SPAN` stays and watches the
//! relay's log: a `stat` of it every `TICK`, and when it changed, the same `learn` as the run's
//! own step (so the evidence rules are the same: only the relay's own lines, only the
//! recipients a record lists). A bounce reaches the triggers within a tick of the relay
//! writing it, instead of at the next minute's run.
//!
//! Why a follower inside the minute's run, not a daemon of its own: the scheduler that already
//! exists (the systemd timer, or cron where systemd does not run) starts it, so a host needs
//! no new service, a crashed follower is replaced within a minute, and it holds nothing
//! between runs. Idle it costs one `stat` per tick (no account is looked at); with new lines
//! it reads only them and touches only the accounts they name, whatever the number of
//! accounts on the server (bench/containment.sh measures both).
//!
//! One follower at a time (`follow.lock`); learning is one at a time (`learn.lock`, taken in
//! `learn`), so a queue run's step and a follower never read the same line twice.
//!
//! A follower judges with the configuration its run loaded. When the admin changes the main
//! file or `accounts.d/` (a trigger added, a threshold lowered), it ends before reading
//! another line: outcomes it had learnt with the old configuration would never be judged
//! again, since the triggers look at an account when its outcomes come in. The next run
//! (within a minute) reads on from the same position with the new configuration.

use super::learn;
use crate::config::Config;
use crate::exit::Failure;
use crate::log::Severity;
use crate::runtime::Runtime;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the relay's log is looked at.
pub const TICK: Duration = Duration::from_millis(500);
/// The longest `--follow` (the scheduler starts the next run long before).
pub const MAX_SPAN: Duration = Duration::from_secs(3600);

/// What one follow did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Followed {
    /// Times the log had changed and was read.
    pub passes: usize,
    /// Recipient outcomes counted.
    pub counted: usize,
    /// It ended early: the configuration changed since the run loaded it.
    pub config_changed: bool,
}

/// Follow the relay's log until `span` has passed since `started`. `None`: another process
/// follows it already.
pub fn follow(rt: &Runtime, started: Instant, span: Duration) -> Result<Option<Followed>, Failure> {
    let state = rt.state()?;
    let Some(_following) = state.try_lock_named("follow.lock")? else {
        return Ok(None);
    };
    let span = span.min(MAX_SPAN);
    let path = rt.config.outcomes.relay_log.clone();
    let mut followed = Followed::default();
    // The first tick always reads: lines may have come since the run's own step.
    let mut seen: Option<Signature> = None;
    let mut first = true;
    let config = ConfigWatch::new(&rt.config);
    while started.elapsed() + TICK <= span {
        std::thread::sleep(TICK);
        if config.changed() {
            rt.logger.log(
                Severity::Info,
                "follow: the configuration changed; this run stops following, the next one \
                 reads on with the new configuration",
            );
            followed.config_changed = true;
            break;
        }
        // Without a relay log the follower still lasts its span: the scheduler's cadence
        // (a run a minute) stays the same whatever is configured.
        let Some(path) = &path else { continue };
        let now = signature(path);
        if !first && now == seen {
            continue;
        }
        let learnt = learn::learn(rt);
        if learnt.busy {
            continue; // a queue run is learning: the next tick looks again
        }
        first = false;
        seen = now;
        followed.passes += 1;
        followed.counted += learnt.counted;
    }
    Ok(Some(followed))
}

/// What tells that the relay's log changed: a new file (rotation), another size or another
/// modification time.
type Signature = (u64, u64, u64, i64, i64);

fn signature(path: &Path) -> Option<Signature> {
    std::fs::symlink_metadata(path)
        .ok()
        .as_ref()
        .map(signature_of)
}

fn signature_of(m: &std::fs::Metadata) -> Signature {
    (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec())
}

/// The configuration files a follower's judgement rests on: the main file (through a
/// symlink, as configuration management links it) and the `accounts.d/` directory (a panel
/// writes a file there and renames it into place, which changes the directory).
struct ConfigWatch {
    paths: Vec<std::path::PathBuf>,
    baseline: Vec<Option<Signature>>,
    /// One of them was written between shortly before the run loaded it (file times are
    /// coarser than a clock read) and now: it may be newer than what was loaded. A time in the
    /// future (a clock stepped back) is not taken for a change, or every follower would end.
    written_at_load: bool,
}

/// How close to the load a change counts as possibly after it: a file time lags the clock by
/// up to a jiffy (the kernel stamps files from its coarse clock).
const LOAD_SLACK: Duration = Duration::from_millis(50);

impl ConfigWatch {
    fn new(config: &Config) -> ConfigWatch {
        let Some((main, loaded_at)) = &config.loaded_from else {
            return ConfigWatch {
                paths: Vec::new(),
                baseline: Vec::new(),
                written_at_load: false,
            };
        };
        let paths: Vec<std::path::PathBuf> = std::iter::once(main.clone())
            .chain(config.accounts_dir.clone())
            .collect();
        let metadata: Vec<Option<std::fs::Metadata>> =
            paths.iter().map(|p| std::fs::metadata(p).ok()).collect();
        let since = loaded_at.checked_sub(LOAD_SLACK).unwrap_or(*loaded_at);
        let now = std::time::SystemTime::now();
        let written_at_load = metadata
            .iter()
            .flatten()
            .any(|m| m.modified().is_ok_and(|t| t >= since && t <= now));
        ConfigWatch {
            baseline: metadata
                .iter()
                .map(|m| m.as_ref().map(signature_of))
                .collect(),
            paths,
            written_at_load,
        }
    }

    fn changed(&self) -> bool {
        self.written_at_load
            || self
                .paths
                .iter()
                .zip(&self.baseline)
                .any(|(p, was)| std::fs::metadata(p).ok().as_ref().map(signature_of) != *was)
    }
}
