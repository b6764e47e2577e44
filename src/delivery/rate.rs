//! The failure-rate trigger's arithmetic: over a sliding window, how many recipients were
//! delivered and how many bounced, and whether that passes the trigger (cPanel's two-part
//! rule: a minimum number of failures *and* a percentage; without its clock-hour edge, since
//! the window ends now). Pure.
//!
//! A deferral is not counted either way: it is not a verdict yet (greylisting defers good
//! mail), and a recipient deferred, then delivered, counts once, as delivered. A bounce is
//! counted once per recipient, however often the relay tried it (`delivery::apply`).

use crate::config::Trigger;
use crate::stats::{Slot, SourceKey, Stats};

/// Final outcomes in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub delivered: u64,
    pub bounced: u64,
}

impl Tally {
    pub fn add(&mut self, o: Tally) {
        self.delivered = self.delivered.saturating_add(o.delivered);
        self.bounced = self.bounced.saturating_add(o.bounced);
    }

    /// Bounced as a share of all final outcomes, in percent (0 before any).
    pub fn percent(&self) -> f64 {
        crate::stats::bounce_percent(self.delivered, self.bounced).unwrap_or(0.0)
    }

    /// "8 of 20 recipients bounced (40 %)".
    pub fn describe(&self) -> String {
        format!(
            "{} of {} recipients bounced ({:.0} %)",
            self.bounced,
            self.delivered.saturating_add(self.bounced),
            self.percent()
        )
    }
}

/// Whether a slot that begins at `start` lies in the window `[now - window, now]`: one that
/// began before the window's start is left out, so the window is exact to a slot's length and
/// never reaches back further than `window`; one from a clock that was ahead is left out too.
pub fn in_window(start: i64, now: i64, window: i64) -> bool {
    start >= now - window && start <= now
}

/// The slots that lie in the window (`in_window`): exact to 5 minutes for the last hour, to
/// the hour beyond.
pub fn tally_slots<'a>(slots: impl IntoIterator<Item = &'a Slot>, now: i64, window: i64) -> Tally {
    let mut t = Tally::default();
    for s in slots {
        if in_window(s.start, now, window) {
            t.add(Tally {
                delivered: s.counts.delivered,
                bounced: s.counts.bounced,
            });
        }
    }
    t
}

/// An account's tally over the window, and its sources that bounced, worst first.
pub fn tally(stats: &Stats, now: i64, window: i64) -> (Tally, Vec<(SourceKey, Tally)>) {
    let mut all = Tally::default();
    let mut sources = Vec::new();
    for s in &stats.sources {
        let t = tally_slots(&s.slots, now, window);
        all.add(t);
        if t.bounced > 0 {
            sources.push((s.key.clone(), t));
        }
    }
    sources.sort_by(|a, b| b.1.bounced.cmp(&a.1.bounced).then_with(|| a.0.cmp(&b.0)));
    (all, sources)
}

/// Both parts of the rule: at least `min_failures` bounces, and at least `percent` of the
/// final outcomes. A trigger with `percent = 0` never fires.
pub fn passes(t: &Trigger, tally: &Tally) -> bool {
    t.percent > 0
        && tally.bounced >= u64::from(t.min_failures.max(1))
        && tally.percent() >= f64::from(t.percent)
}

/// "at least 5 bounces and 20 % of the recipients in 1h".
pub fn threshold(t: &Trigger) -> String {
    format!(
        "at least {} bounces that are {} % of the recipients within {}",
        t.min_failures.max(1),
        t.percent,
        t.window
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TimeSpan;
    use crate::stats::{Counts, Event, Outcome};

    fn trigger(min: u32, percent: u8) -> Trigger {
        Trigger {
            window: TimeSpan(3600),
            min_failures: min,
            percent,
            ..Trigger::default()
        }
    }

    fn counts(delivered: u64, bounced: u64) -> Tally {
        Tally { delivered, bounced }
    }

    #[test]
    fn both_the_minimum_and_the_percentage_must_be_reached() {
        let t = trigger(5, 20);
        // 4 of 4 bounced: 100 %, but under the minimum.
        assert!(!passes(&t, &counts(0, 4)));
        // 5 of 100: the minimum, but 5 %.
        assert!(!passes(&t, &counts(95, 5)));
        // 5 of 25: both, exactly at the edges.
        assert!(passes(&t, &counts(20, 5)));
        assert!(!passes(&t, &counts(21, 5)));
        // percent 0 is off; min 0 means at least one.
        assert!(!passes(&trigger(5, 0), &counts(0, 1000)));
        assert!(passes(&trigger(0, 50), &counts(1, 1)));
        assert!(!passes(&trigger(0, 50), &counts(0, 0)));
    }

    fn event(now: i64, outcome: Outcome, script: &str) -> Event<'_> {
        Event {
            now,
            outcome,
            recipients: 1,
            script,
            cwd: "/",
            lock_wait_us: None,
            lock_busy: false,
            relay_error: None,
        }
    }

    #[test]
    fn the_window_slides_and_its_edge_leaves_older_slots_out() {
        let mut s = Stats::default();
        let t0 = 1_000_000 * 300; // a slot boundary
        for _ in 0..6 {
            s.record(&event(t0, Outcome::Bounced, "1:/a.php"));
        }
        s.record(&event(t0 + 600, Outcome::Delivered, "1:/b.php"));
        s.record(&event(t0 + 600, Outcome::Bounced, "1:/b.php"));
        s.record(&event(t0 + 600, Outcome::Delivered, "1:/clean.php"));
        // Within the hour: everything.
        let (all, worst) = tally(&s, t0 + 1800, 3600);
        assert_eq!(
            all,
            Tally {
                delivered: 2,
                bounced: 7
            }
        );
        assert_eq!(worst[0].0, SourceKey::Script("1:/a.php".into()));
        assert_eq!(worst[0].1.bounced, 6);
        // Only sources that bounced are named.
        assert_eq!(worst.len(), 2, "{worst:?}");
        // One hour and a second after the first slot began, it has left the window.
        let (all, _) = tally(&s, t0 + 3601, 3600);
        assert_eq!(
            all,
            Tally {
                delivered: 2,
                bounced: 1
            }
        );
        assert!(!passes(&trigger(5, 20), &all));
        // And an hour after the second, nothing is left.
        assert_eq!(tally(&s, t0 + 600 + 3601, 3600).0, Tally::default());
    }

    #[test]
    fn a_slot_from_a_clock_that_was_ahead_is_not_in_the_window() {
        let slots = [Slot {
            start: 10_000,
            secs: 300,
            counts: Counts {
                bounced: 9,
                ..Counts::default()
            },
        }];
        assert_eq!(tally_slots(&slots, 5_000, 3600), Tally::default());
        assert_eq!(tally_slots(&slots, 10_100, 3600).bounced, 9);
    }

    #[test]
    fn descriptions_name_the_numbers() {
        assert_eq!(
            counts(12, 8).describe(),
            "8 of 20 recipients bounced (40 %)"
        );
        assert_eq!(
            threshold(&trigger(5, 20)),
            "at least 5 bounces that are 20 % of the recipients within 1h"
        );
    }
}
