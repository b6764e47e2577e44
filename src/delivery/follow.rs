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

use super::learn;
use crate::exit::Failure;
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
    while started.elapsed() + TICK <= span {
        std::thread::sleep(TICK);
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
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}
