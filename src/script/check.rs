//! The script step of a message: resolve the script, look at its file, record the sighting,
//! tell the admin about new signs, and say what the message gets: held, or counted under which
//! script rules. The pipeline calls `judge` for a new message; the queue run calls `rules`
//! for a kept one it releases (the script may have been approved or blocked meanwhile).

use super::registry::{self, Standing};
use super::rules::{self, Rule};
use super::{Script, Sign, Source, describe};
use crate::config::scripts::SignAction;
use crate::identity::CallSite;
use crate::runtime::Runtime;

/// What the script step decided.
#[derive(Debug, Clone)]
pub struct Judged {
    pub script: Script,
    pub standing: Standing,
    pub signs: Vec<Sign>,
    /// Why the message is held, when it is.
    pub hold: Option<String>,
    pub rules: Vec<Rule>,
}

pub fn judge(rt: &Runtime, account: &str, header: &str, origin: &CallSite) -> Judged {
    let cfg = rt.config.scripts_for(account);
    let script = super::resolve(header, &origin.cwd, origin.php_script.as_deref());
    let facts = match script.source {
        Source::Cwd => None,
        _ => super::probe::file_facts(&script.path, crate::identity::is_privileged()),
    };
    let now = rt.now();
    let fpm = origin.pool.is_some();
    let signs = super::signs(&script, (&origin.cwd, fpm), facts, cfg, rt.caller.uid, now);
    let standing = match rt.state() {
        Ok(state) => {
            let source = if header.is_empty() {
                &origin.cwd
            } else {
                header
            };
            sight(rt, state, account, (&script.path, source), &signs)
        }
        // No state directory: the decision after this one fails the same way.
        Err(_) => Standing::New,
    };
    let exempt = rt.config.is_exempt(account);
    let approved = standing == Standing::Approved;
    let holding: Vec<Sign> = signs
        .iter()
        .copied()
        .filter(|s| s.action(cfg) == SignAction::Hold)
        .collect();
    let hold = if exempt {
        None
    } else if standing == Standing::Blocked {
        Some(format!(
            "script {} is blocked by the administrator",
            script.path
        ))
    } else if !holding.is_empty() && !approved {
        Some(format!(
            "script {} shows signs of a dropper ({}); held for the administrator",
            script.path,
            describe(&holding)
        ))
    } else {
        None
    };
    let budget = standing == Standing::New
        || (!approved && signs.iter().any(|s| s.action(cfg) == SignAction::Budget));
    Judged {
        rules: rules::rules_for(&rt.config, account, &script.path, budget),
        script,
        standing,
        signs,
        hold,
    }
}

/// Record the sighting (a write only when something changed) and tell the admin about signs
/// not told before; the script's standing.
fn sight(
    rt: &Runtime,
    state: &crate::state::StateDir,
    account: &str,
    (path, source): (&str, &str),
    signs: &[Sign],
) -> Standing {
    let cfg = rt.config.scripts_for(account);
    let now = rt.now();
    let mut registry = registry::read(state, account);
    let seen = registry.sight(path, source, signs, now, cfg);
    let tell: Vec<Sign> = seen
        .untold
        .iter()
        .copied()
        .filter(|s| matches!(s.action(cfg), SignAction::Hold | SignAction::Notify))
        .collect();
    if !seen.changed && tell.is_empty() {
        return seen.standing;
    }
    let wait = crate::limits::decision_wait(&rt.config);
    let written = registry::update(state, account, wait, |r| {
        let again = r.sight(path, source, signs, now, cfg);
        let tell: Vec<Sign> = again
            .untold
            .iter()
            .copied()
            .filter(|s| tell.contains(s))
            .collect();
        r.told(path, &tell);
        tell
    });
    match written {
        Ok(Some(told)) if !told.is_empty() => {
            let held = told.iter().any(|s| s.action(cfg) == SignAction::Hold)
                && seen.standing != Standing::Approved;
            if let Some(admin) = rt.admin_address() {
                let msg = crate::runtime::notify::script_message(
                    account,
                    path,
                    &describe(&told),
                    held,
                    &rt.envelope_to(&admin),
                );
                rt.send_internal(msg, &admin, "script");
            }
        }
        Ok(_) => {}
        Err(f) => {
            rt.logger.log(crate::log::Severity::Warning, &f.message);
        }
    }
    seen.standing
}

/// The rules a kept message is counted under when it is released: its script's standing now.
pub fn rules(rt: &Runtime, account: &str, script_path: &str) -> Vec<Rule> {
    if script_path.is_empty() {
        return Vec::new();
    }
    let cfg = rt.config.scripts_for(account);
    let new = rt.state().is_ok_and(|state| {
        registry::read(state, account).standing(script_path, rt.now(), cfg) == Standing::New
    });
    rules::rules_for(&rt.config, account, script_path, new)
}
