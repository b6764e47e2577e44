//! Every message handed to the relay gets its log line, even when its sender is killed right
//! after the relay's 250 (a customer can SIGKILL their own sender at any instant) or cannot
//! write its log (`ulimit -f`, a full disk). Just before the hand-over the log line so far goes
//! to `pending/ID` in the state directory; it is removed once the final line is written. Root's
//! next `queue run` logs whatever is left there as `status=unknown`, so the admin still sees
//! that the relay may have had it.

use crate::log::{Logger, Severity};
use crate::state::StateDir;
use crate::state::{Dir, flags};
use std::io::Write;
use std::time::Duration;

const DIR: &str = "pending";

/// A pending record; `finish` removes it once the message's final line is logged.
pub struct Pending {
    dir: Dir,
    name: String,
}

/// Record `line` (the log fields known before the hand-over) under `id`. Best effort: the
/// message goes out either way.
pub fn begin(state: &StateDir, id: &str, line: &str) -> Option<Pending> {
    let dir = state.subdir(DIR).ok()?;
    let mut file = dir.open_file(id, flags::REWRITE).ok()?;
    file.write_all(line.as_bytes()).ok()?;
    Some(Pending {
        dir,
        name: id.to_string(),
    })
}

impl Pending {
    pub fn finish(self) {
        let _ = self.dir.unlink(&self.name);
    }
}

/// Log the records that their senders never finished (older than `age`) and remove them.
/// Returns how many there were.
pub fn recover(state: &StateDir, age: Duration, logger: &Logger) -> usize {
    let mut recovered = 0;
    let Ok(dir) = state.top().open_dir(DIR) else {
        return 0;
    };
    for name in crate::state::older_than(&dir, age) {
        if !crate::state::valid_id(&name) {
            continue;
        }
        let fields = dir
            .open_file(&name, flags::READ)
            .and_then(std::io::read_to_string)
            .unwrap_or_default();
        let line = format!(
            "{} status=unknown reason=\"the sender ended between handing the message to the relay and logging the outcome; the relay may have it\"",
            crate::log::printable(fields.trim(), 4096)
        );
        if logger.log(Severity::Warning, &line) {
            let _ = dir.unlink(&name);
            recovered += 1;
        }
    }
    recovered
}
