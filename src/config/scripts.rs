//! The calling script's part in the decision: `[scripts]` (what a dropper looks like, what
//! each sign does, how small a new script starts) and the per-script limits an account's
//! `script_limits` narrow its windows with.

use super::{Action, Limit, TimeSpan};
use serde::Deserialize;

/// A limit for the scripts whose path matches `script` (a glob, `*` crossing `/`), on top of
/// the account's own: it narrows them, never widens them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct ScriptLimit {
    pub script: String,
    pub window: TimeSpan,
    pub messages: Option<u32>,
    pub recipients: Option<u32>,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub observe: bool,
}

impl ScriptLimit {
    pub fn limit(&self) -> Limit {
        Limit {
            window: self.window,
            messages: self.messages,
            recipients: self.recipients,
            action: self.action,
            observe: self.observe,
        }
    }
}

/// What a sign of a dropper does to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "kebab-case")]
pub enum SignAction {
    /// Kept in hold/ for the admin (`mailgate hold release`), the admin told once per script.
    Hold,
    /// The script is treated as new whatever its history: the new-script budget applies.
    Budget,
    /// The mail goes; the admin is told once per script.
    Notify,
    /// The mail goes; the log line and `mailgate scripts` name the sign.
    Observe,
    /// Not looked at.
    Off,
}

/// `[scripts]` (server-wide; an account may have its own `[accounts.NAME.scripts]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Scripts {
    /// Directories honest deployments do not send mail from: uploads, caches, temporary and
    /// hidden directories (globs over the script's path, or the caller's working directory).
    pub suspicious_dirs: Vec<String>,
    /// A script file changed within this span counts as `recent`.
    pub recent: TimeSpan,
    /// Messages a script without a history may send per `new_script_window`, all new scripts
    /// of an account together; 0 turns the budget off.
    pub new_script_budget: u32,
    pub new_script_window: TimeSpan,
    /// What a new script over its budget gets (`defer`: late, never lost).
    pub new_script_action: Action,
    /// How long a script is new: after this span of sending it has a history.
    pub history: TimeSpan,
    /// For this span after mailgate first saw an account's scripts, each script it meets is
    /// learnt as known (an upgrade does not make a server's every script new); signs apply.
    pub learning: TimeSpan,
    /// Customers may approve and block their own accounts' scripts.
    pub customer_approve: bool,
    pub on_suspicious_dir: SignAction,
    pub on_eval: SignAction,
    pub on_missing: SignAction,
    pub on_foreign_owner: SignAction,
    pub on_writable_by_others: SignAction,
    pub on_recent: SignAction,
}

/// Where WordPress, Joomla, Drupal and Magento keep uploads and caches, the system's
/// temporary directories, and any hidden directory.
pub const SUSPICIOUS_DIRS: &[&str] = &[
    "*/wp-content/uploads/*",
    "*/wp-content/cache/*",
    "*/wp-content/upgrade/*",
    "*/images/*",
    "*/media/*",
    "*/sites/default/files/*",
    "*/sites/*/files/*",
    "*/pub/media/*",
    "*/pub/static/*",
    "*/var/cache/*",
    "*/cache/*",
    "*/tmp/*",
    "/tmp/*",
    "/var/tmp/*",
    "/dev/shm/*",
    "*/.*/*",
];

impl Default for Scripts {
    fn default() -> Scripts {
        Scripts {
            suspicious_dirs: SUSPICIOUS_DIRS.iter().map(|s| s.to_string()).collect(),
            recent: TimeSpan(86400),
            new_script_budget: 10,
            new_script_window: TimeSpan(3600),
            new_script_action: Action::Defer,
            history: TimeSpan(7 * 86400),
            learning: TimeSpan(86400),
            customer_approve: false,
            on_suspicious_dir: SignAction::Hold,
            on_eval: SignAction::Hold,
            on_missing: SignAction::Hold,
            on_foreign_owner: SignAction::Notify,
            on_writable_by_others: SignAction::Notify,
            on_recent: SignAction::Observe,
        }
    }
}

/// What is wrong with an account's `script_limits` (key, message).
pub fn problems(owner: &str, limits: &[ScriptLimit], out: &mut Vec<(String, String)>) {
    for (i, l) in limits.iter().enumerate() {
        if l.script.trim().is_empty() {
            out.push((
                "script".into(),
                format!("{owner}: a script limit needs a script glob"),
            ));
        }
        if l.messages.is_none() && l.recipients.is_none() {
            out.push((
                "script".into(),
                format!(
                    "{owner}: script limit {:?} \"{}\" needs messages and/or recipients",
                    l.script, l.window
                ),
            ));
        }
        if limits[..i]
            .iter()
            .any(|o| o.script == l.script && o.window == l.window)
        {
            out.push((
                "script".into(),
                format!(
                    "{owner}: two script limits for {:?} with the same window \"{}\"",
                    l.script, l.window
                ),
            ));
        }
    }
    let globs: std::collections::BTreeSet<&str> =
        limits.iter().map(|l| l.script.as_str()).collect();
    if globs.len() > MAX_SCRIPT_GLOBS {
        out.push((
            "script_limits".into(),
            format!(
                "{owner}: at most {MAX_SCRIPT_GLOBS} script globs are supported, found {}",
                globs.len()
            ),
        ));
    }
}

/// Script globs an account may have (each is one counter file a message may lock).
pub const MAX_SCRIPT_GLOBS: usize = 8;

/// The problems of a `[scripts]` table.
pub fn scripts_problems(owner: &str, s: &Scripts, out: &mut Vec<(String, String)>) {
    if s.history.secs() == 0 {
        out.push((
            "history".into(),
            format!("{owner}: scripts history must be longer than 0s"),
        ));
    }
    if s.new_script_window.secs() == 0 {
        out.push((
            "new_script_window".into(),
            format!("{owner}: new_script_window must be longer than 0s"),
        ));
    }
}
