//! The small files of the after-relay step in `delivery/` (dot names: never a queue id, so
//! never a record): where the reader stopped, why it is blind, why the log is forgeable, the
//! accounts a trigger holds, the server's buckets, the alert claims, the last expiry.

use crate::state::{Dir, flags};
use std::io::Read;

/// Where the last run stopped reading the relay's log (`reader::Position`).
pub const POSITION: &str = ".position";
/// Why the relay's log cannot be read, as last said.
pub const BLIND: &str = ".blind";
/// Why the relay's log may hold lines others wrote, as last said in the log.
pub const FORGEABLE: &str = ".forgeable";
/// Accounts a trigger holds until their rate falls (one name per line).
pub const HELD: &str = ".held";
/// The whole server's outcomes, in 5-minute buckets ("start delivered bounced" lines).
pub const SERVER: &str = ".server";
/// Per account: until when no further trigger alert goes out ("alerted-ACCOUNT").
pub const ALERTED: &str = ".alerted-";
/// When records were last expired (its modification time).
pub const EXPIRED: &str = ".expired";

/// A small state file of this step ("" when missing or unreadable).
pub fn read(dir: &Dir, name: &str) -> String {
    let mut text = String::new();
    if let Ok(f) = dir.open_file(name, flags::READ) {
        let _ = f.take(1 << 20).read_to_string(&mut text);
    }
    text
}

/// Replace a small state file whole (best effort: the next run writes it again).
pub fn write(dir: &Dir, name: &str, text: &str) {
    let _ = dir.replace(name, text.as_bytes());
}
