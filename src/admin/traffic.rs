//! Who sends what: `mailgate top` (from the per-account statistics) and `mailgate metrics`
//! (Prometheus text; also written to `[metrics] textfile` by every queue run).

use crate::config::TimeSpan;
use crate::exit::{Exit, Failure};
use crate::limits::{reconcile, store::Counter};
use crate::runtime::Runtime;
use crate::spool::{Kind, Spool};
use crate::stats::metrics;
use crate::stats::{self, Counts, Row};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
struct Top {
    /// What was asked (seconds back from now) and where the counts really begin.
    since_seconds: u64,
    begins: Option<i64>,
    accounts: Vec<AccountTop>,
    /// Accounts beyond `-n` that sent in the span, and their messages.
    left_out: usize,
    left_out_messages: u64,
}

#[derive(Serialize)]
struct AccountTop {
    account: String,
    #[serde(flatten)]
    totals: Counts,
    /// Bounced of delivered + bounced recipients, percent; absent before any.
    bounce_percent: Option<f64>,
    sources: Vec<SourceTop>,
}

#[derive(Serialize)]
struct SourceTop {
    kind: &'static str,
    source: String,
    #[serde(flatten)]
    counts: Counts,
    bounce_percent: Option<f64>,
}

/// `mailgate top [--since SPAN] [--account A] [--json]`. `visible` says which accounts the
/// caller may see (an admin all, a customer their own).
pub(super) fn top(
    rt: &Runtime,
    since: &str,
    only: Option<&str>,
    json: bool,
    limit: Option<usize>,
    visible: &dyn Fn(&str) -> bool,
) -> Result<(), Failure> {
    let span = parse_span(since)?;
    let state = rt.state()?;
    let from = rt.now() - span.secs() as i64;
    let mut names = match only {
        Some(a) => vec![super::access::checked(a)?.to_string()],
        None => stats::file::accounts(state),
    };
    names.retain(|n| visible(n));
    if let (Some(a), true) = (only, names.is_empty()) {
        return Err(super::access::not_yours(&format!("account {a:?}")));
    }
    let Senders {
        mut accounts,
        begins,
        damaged,
    } = senders(state, names, from);
    // The largest senders; the rest are counted, not printed.
    let left_out: Vec<_> = match limit {
        Some(n) if accounts.len() > n => accounts.split_off(n),
        _ => Vec::new(),
    };
    let mut rest = Counts::default();
    left_out.iter().for_each(|(_, t, _)| rest.merge(t));
    if json {
        let top = Top {
            since_seconds: span.secs(),
            begins,
            left_out: left_out.len(),
            left_out_messages: rest.messages(),
            accounts: accounts
                .into_iter()
                .map(|(account, totals, rows)| AccountTop {
                    account,
                    bounce_percent: totals.bounce_percent(),
                    totals,
                    sources: rows.into_iter().map(source_top).collect(),
                })
                .collect(),
        };
        out!(
            "{}",
            serde_json::to_string_pretty(&top)
                .map_err(|e| Failure::new(Exit::Software, e.to_string()))?
        );
    } else {
        print_top(
            span,
            begins.unwrap_or(from),
            &accounts,
            left_out.len(),
            &rest,
        );
    }
    for why in &damaged {
        err!("mailgate: {why}");
    }
    if damaged.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(
            Exit::OsErr,
            format!(
                "{} statistics file(s) cannot be read (the next message rewrites them)",
                damaged.len()
            ),
        ))
    }
}

/// `--since`: a span the statistics still cover.
fn parse_span(since: &str) -> Result<TimeSpan, Failure> {
    let span = TimeSpan::parse(since)
        .map_err(|why| Failure::new(Exit::Usage, format!("--since: {why}")))?;
    if span.secs() > stats::KEEP.unsigned_abs() {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "--since {span}: the statistics go back {} only",
                TimeSpan(stats::KEEP as u64)
            ),
        ));
    }
    Ok(span)
}

/// One account's rows since the span's start, with their totals.
type AccountRows = (String, Counts, Vec<stats::Row>);

/// The accounts that sent since `from`, largest first; when the statistics begin; the files
/// that could not be read.
struct Senders {
    accounts: Vec<AccountRows>,
    begins: Option<i64>,
    damaged: Vec<String>,
}

fn senders(state: &crate::state::StateDir, names: Vec<String>, from: i64) -> Senders {
    let mut out = Senders {
        accounts: Vec::new(),
        begins: None,
        damaged: Vec::new(),
    };
    for name in names {
        if crate::config::validate_account_name(&name).is_err() {
            continue;
        }
        let stats = match stats::file::read(state, &name) {
            Ok(s) => s,
            Err(f) => {
                out.damaged.push(f.message);
                continue;
            }
        };
        let (rows, b) = stats.since(from);
        if rows.is_empty() {
            continue;
        }
        out.begins = match (out.begins, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        let mut totals = Counts::default();
        rows.iter().for_each(|r| totals.merge(&r.counts));
        out.accounts.push((name, totals, rows));
    }
    out.accounts.sort_by(|a, b| {
        b.1.messages()
            .cmp(&a.1.messages())
            .then_with(|| a.0.cmp(&b.0))
    });
    out
}

/// The text form of `top`.
fn print_top(span: TimeSpan, shown: i64, accounts: &[AccountRows], left_out: usize, rest: &Counts) {
    out!(
        "mailgate top: the last {span} (counted since {})",
        crate::limits::format_time(shown)
    );
    if accounts.is_empty() {
        out!("no mail");
    }
    for (name, t, rows) in accounts {
        out!(
            "\n{name}: {} messages (sent {}, queued {}, deferred {}, held {}, refused {}), {} recipients; after the relay: {} delivered, {} bounced{}, {} delayed",
            t.messages(),
            t.sent,
            t.queued,
            t.deferred,
            t.held,
            t.refused,
            t.recipients,
            t.delivered,
            t.bounced,
            t.bounce_percent()
                .map_or_else(String::new, |p| format!(" ({p:.0} %)")),
            t.delayed
        );
        let table = stats::render_rows(rows, usize::MAX);
        for line in table.lines() {
            out!("  {line}");
        }
    }
    if left_out > 0 {
        out!(
            "\n{left_out} more accounts with {} messages left out (`--all` shows every one, `-n N` the N largest)",
            rest.messages()
        );
    }
}

fn source_top(r: Row) -> SourceTop {
    SourceTop {
        kind: r.key.kind(),
        source: crate::log::printable(r.key.text(), stats::MAX_KEY),
        bounce_percent: r.counts.bounce_percent(),
        counts: r.counts,
    }
}

/// Everything `metrics` shows, gathered from the statistics, the counters and the spools.
/// How full each window of a counter is (share of its limit, by messages and by
/// recipients), and whether the account is locked; nothing for a counter that cannot be read.
type WindowUsage = (
    Vec<(String, &'static str, f64)>,
    Option<crate::limits::store::AccountLock>,
);

fn window_usage(
    rt: &Runtime,
    counter: Counter<'_>,
    limits: &[crate::config::Limit],
    now: i64,
) -> WindowUsage {
    let Ok(rec) = rt.store().and_then(|s| s.read(&rt.config, counter, now)) else {
        return (Vec::new(), None);
    };
    let mut windows = reconcile(&rec, limits, now);
    let mut out = Vec::new();
    for (w, l) in windows.iter_mut().zip(limits) {
        let t = w.advance(now);
        let u = w.usage(t);
        if let Some(m) = l.messages.filter(|&m| m > 0) {
            out.push((
                l.window.to_string(),
                "messages",
                u.messages as f64 / f64::from(m),
            ));
        }
        if let Some(r) = l.recipients.filter(|&r| r > 0) {
            out.push((
                l.window.to_string(),
                "recipients",
                u.recipients as f64 / f64::from(r),
            ));
        }
    }
    (out, rec.lock)
}

pub fn snapshot(rt: &Runtime) -> Result<metrics::Snapshot, Failure> {
    let state = rt.state()?;
    let spool = Spool::new(state);
    let now = rt.now();
    let config = &rt.config;
    let mut names: std::collections::BTreeSet<String> =
        stats::file::accounts(state).into_iter().collect();
    names.extend(rt.store()?.accounts().unwrap_or_default());
    let mut kept: BTreeMap<(String, &'static str), (u64, u64)> = BTreeMap::new();
    let mut oldest: Option<i64> = None;
    for kind in Kind::ALL {
        for m in spool.list(kind)? {
            if matches!(kind, Kind::Queue | Kind::Defer) {
                oldest = Some(oldest.map_or(m.time, |o| o.min(m.time)));
            }
            if m.internal {
                continue;
            }
            let e = kept.entry((m.account.clone(), kind.dir())).or_default();
            e.0 += 1;
            e.1 += m.size;
            names.insert(m.account);
        }
    }
    let usage = |counter: Counter<'_>, limits: &[crate::config::Limit]| {
        window_usage(rt, counter, limits, now)
    };
    let mut accounts = Vec::new();
    let mut statistics_unreadable = 0;
    for name in names {
        if crate::config::validate_account_name(&name).is_err() {
            continue;
        }
        let (totals, last_hour) = match stats::file::read(state, &name) {
            Ok(s) => {
                let (t, _) = crate::delivery::rate::tally(&s, now, 3600);
                (s.totals, (t.delivered, t.bounced))
            }
            Err(_) => {
                statistics_unreadable += 1;
                (stats::Totals::default(), (0, 0))
            }
        };
        let (usage, lock) = usage(Counter::Account(&name), config.limits_for(&name));
        let spools = [Kind::Hold, Kind::Defer, Kind::Queue, Kind::Failed]
            .into_iter()
            .map(|k| {
                let (n, bytes) = kept
                    .get(&(name.clone(), k.dir()))
                    .copied()
                    .unwrap_or_default();
                (k.dir(), n, bytes)
            })
            .collect();
        accounts.push(metrics::Account {
            name,
            totals,
            usage,
            locked: lock.is_some(),
            held_by_trigger: lock.is_some_and(|l| l.ends_itself),
            last_hour,
            spools,
        });
    }
    metrics::bound_accounts(&mut accounts, config.metrics.accounts);
    let server_usage = if config.server.limits.is_empty() {
        Vec::new()
    } else {
        usage(Counter::Server, &config.server.limits).0
    };
    Ok(metrics::Snapshot {
        accounts,
        server_usage,
        oldest_waiting: oldest.map(|t| now - t),
        outcomes_blind: crate::delivery::learn::blindness(rt).is_some(),
        statistics_unreadable,
    })
}

/// `mailgate metrics`.
pub(super) fn print_metrics(rt: &Runtime) -> Result<(), Failure> {
    let text = metrics::render(&snapshot(rt)?);
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(())
}

/// `[metrics] textfile`: written beside its final name and renamed into place, so
/// node_exporter never reads half a file.
pub(super) fn write_textfile(rt: &Runtime) -> Result<(), Failure> {
    let Some(path) = &rt.config.metrics.textfile else {
        return Ok(());
    };
    let fail = |e: std::io::Error| {
        Failure::io(
            Exit::IoErr,
            format!("cannot write metrics textfile {}", path.display()),
            &e,
        )
    };
    let text = metrics::render(&snapshot(rt)?);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    use std::io::Write as _;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            use std::os::unix::fs::PermissionsExt;
            f.write_all(text.as_bytes())?;
            f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(())
}
