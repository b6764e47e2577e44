//! `mailgate scripts [ACCOUNT]`, `scripts approve|block ACCOUNT SCRIPT`: each account's
//! scripts as `crate::script::registry` records them, with what they sent and what bounced
//! from the statistics.

use super::access::{Viewer, checked, log_admin, not_yours};
use super::cli::ScriptsAction;
use crate::exit::{Exit, Failure};
use crate::runtime::Runtime;
use crate::script::registry::{self, Mark};

#[derive(serde::Serialize)]
struct Row {
    account: String,
    script: String,
    standing: &'static str,
    first_seen: i64,
    last_seen: i64,
    sent: u64,
    bounced: u64,
    signs: Vec<&'static str>,
}

pub(super) fn scripts(
    rt: &Runtime,
    action: Option<ScriptsAction>,
    only: Option<&str>,
    json: bool,
    viewer: &Viewer<'_>,
) -> Result<(), Failure> {
    match action {
        None => list(rt, only, json, viewer),
        Some(ScriptsAction::Approve { account, script }) => {
            decide(rt, &account, &script, Mark::Approved, viewer)
        }
        Some(ScriptsAction::Block { account, script }) => {
            decide(rt, &account, &script, Mark::Blocked, viewer)
        }
    }
}

fn list(rt: &Runtime, only: Option<&str>, json: bool, viewer: &Viewer<'_>) -> Result<(), Failure> {
    let state = rt.state()?;
    let mut names: Vec<String> = match only {
        Some(a) => vec![checked(a)?.to_string()],
        None => state
            .names_in(registry::DIR)
            .into_iter()
            .filter_map(|n| n.strip_suffix("#list").map(str::to_string))
            .collect(),
    };
    names.retain(|n| viewer.may_see(n));
    if let (Some(a), true) = (only, names.is_empty()) {
        return Err(not_yours(&format!("account {a:?}")));
    }
    let now = rt.now();
    let mut rows = Vec::new();
    for account in names {
        let reg = registry::read(state, &account);
        let cfg = rt.config.scripts_for(&account);
        let day = crate::stats::file::read(state, &account)
            .map(|s| s.since(now - 86400).0)
            .unwrap_or_default();
        for e in &reg.entries {
            let key = crate::bounded::cut(&e.source, crate::stats::MAX_KEY);
            let counts = day
                .iter()
                .find(|r| !e.source.is_empty() && r.key.text() == key)
                .map(|r| r.counts)
                .unwrap_or_default();
            rows.push(Row {
                account: account.clone(),
                script: e.path.clone(),
                standing: reg.standing(&e.path, now, cfg).as_str(),
                first_seen: e.first,
                last_seen: e.last,
                sent: counts.sent,
                bounced: counts.bounced,
                signs: e.signs.iter().map(|s| s.as_str()).collect(),
            });
        }
    }
    if json {
        out!("{}", serde_json::to_string(&rows).unwrap_or_default());
        return Ok(());
    }
    if rows.is_empty() {
        out!("no scripts recorded yet");
        return Ok(());
    }
    out!(
        "{:<16} {:<9} {:<16} {:<16} {:>6} {:>7}  {:<24} SCRIPT",
        "ACCOUNT",
        "STANDING",
        "FIRST SEEN",
        "LAST SEEN",
        "SENT",
        "BOUNCED",
        "SIGNS"
    );
    for r in rows {
        let signs = if r.signs.is_empty() {
            "-".to_string()
        } else {
            r.signs.join(",")
        };
        out!(
            "{:<16} {:<9} {:<16} {:<16} {:>6} {:>7}  {:<24} {}",
            crate::log::printable(&r.account, 64),
            r.standing,
            minute(r.first_seen),
            minute(r.last_seen),
            r.sent,
            r.bounced,
            signs,
            crate::log::printable(&r.script, 512)
        );
    }
    Ok(())
}

fn minute(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).map_or_else(
        || format!("@{t}"),
        |d| d.format("%Y-%m-%d %H:%M").to_string(),
    )
}

/// Approve or block a script: the admin, or a customer for their own account where the admin
/// allows it.
fn decide(
    rt: &Runtime,
    account: &str,
    script: &str,
    mark: Mark,
    viewer: &Viewer<'_>,
) -> Result<(), Failure> {
    let account = checked(account)?;
    let may = viewer.admin
        || (rt.config.scripts_for(account).customer_approve && viewer.may_see(account));
    if !may {
        return Err(Failure::new(
            Exit::NoPerm,
            format!(
                "{account}: only the administrator decides about its scripts ([scripts] customer_approve is not set)"
            ),
        ));
    }
    if script.is_empty() || script.len() > crate::script::MAX_PATH || script.contains(['\n', '\t'])
    {
        return Err(Failure::new(
            Exit::Usage,
            "SCRIPT is the path `mailgate scripts` lists",
        ));
    }
    let now = rt.now();
    let state = rt.state()?;
    let done = registry::update(state, account, std::time::Duration::from_secs(10), |r| {
        r.decide(script, mark, now)
    })?;
    match done {
        Some(true) => {
            let word = match mark {
                Mark::Blocked => "blocked: everything it sends is held",
                _ => "approved",
            };
            out!("{account}: {script}: {word}");
            log_admin(
                rt,
                if mark == Mark::Blocked {
                    "script-block"
                } else {
                    "script-approve"
                },
                account,
                script,
            );
            Ok(())
        }
        Some(false) => Err(Failure::new(
            Exit::Unavailable,
            format!(
                "{account}: {} scripts are decided already; no room for another",
                registry::MAX_ENTRIES
            ),
        )),
        None => Err(Failure::new(
            Exit::Unavailable,
            format!("{account}: its scripts are being updated by another process; try again"),
        )),
    }
}
