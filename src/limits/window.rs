//! Sliding-window counting with bounded state: pure arithmetic, the time is a parameter.
//!
//! A window of length W keeps `BUCKETS` buckets of length L = ceil(W / (BUCKETS - 1)), so the
//! ring always holds every bucket that intersects [now - W, now]. A decision at time t counts
//! every bucket that intersects that interval. Because a bucket may hold events up to L older
//! than W, this over-counts by at most one bucket and never under-counts: in any interval of
//! length W there are never more events than the limit (no 2x burst at a window edge), and the
//! window is at most W + L long (about 5% stricter). State: BUCKETS x 12 bytes per window,
//! whatever the limit.

pub const BUCKETS: usize = 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub messages: u32,
    pub recipients: u32,
    pub refused: u32,
}

/// Counts inside a window at some time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub messages: u64,
    pub recipients: u64,
    pub refused: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub secs: u64,
    /// Index of the newest bucket (bucket j covers [j*L, (j+1)*L)).
    pub head: i64,
    /// No alert mail for this window before this time (one per account per window).
    pub alerted_until: i64,
    pub buckets: [Bucket; BUCKETS],
}

impl Window {
    pub fn new(secs: u64, now: i64) -> Window {
        let mut w = Window {
            secs: secs.max(1),
            head: 0,
            alerted_until: 0,
            buckets: [Bucket::default(); BUCKETS],
        };
        w.head = w.index(now);
        w
    }

    pub fn bucket_len(&self) -> i64 {
        let len = self.secs.div_ceil(BUCKETS as u64 - 1).max(1);
        i64::try_from(len).unwrap_or(i64::MAX / 4)
    }

    fn span(&self) -> i64 {
        i64::try_from(self.secs).unwrap_or(i64::MAX / 4)
    }

    fn index(&self, t: i64) -> i64 {
        t.div_euclid(self.bucket_len())
    }

    fn slot(&self, index: i64) -> usize {
        index.rem_euclid(BUCKETS as i64) as usize
    }

    /// Bring the ring to `now` and return the time to decide at. A clock that went back less
    /// than a window is treated as standing still (counts stay, nothing goes negative); one that
    /// went back further resets the window, because its buckets would otherwise never expire.
    pub fn advance(&mut self, now: i64) -> i64 {
        let current = self.index(now);
        if current >= self.head {
            let gap = current - self.head;
            if gap >= BUCKETS as i64 {
                self.buckets = [Bucket::default(); BUCKETS];
            } else {
                for j in self.head + 1..=current {
                    let s = self.slot(j);
                    self.buckets[s] = Bucket::default();
                }
            }
            self.head = current;
            return now;
        }
        let back = (self.head - current).saturating_mul(self.bucket_len());
        if back > self.span() {
            *self = Window::new(self.secs, now);
            return now;
        }
        self.head * self.bucket_len()
    }

    /// Oldest bucket index that intersects [t - W, t].
    fn first(&self, t: i64) -> i64 {
        self.index(t.saturating_sub(self.span()))
            .max(self.head - BUCKETS as i64 + 1)
    }

    /// Counts in [t - W, t] (after `advance(t)`).
    pub fn usage(&self, t: i64) -> Usage {
        let mut u = Usage::default();
        for j in self.first(t)..=self.head {
            let b = self.buckets[self.slot(j)];
            u.messages += u64::from(b.messages);
            u.recipients += u64::from(b.recipients);
            u.refused += u64::from(b.refused);
        }
        u
    }

    /// Count an accepted message at t (after `advance(t)`).
    pub fn record(&mut self, t: i64, recipients: u32) {
        let s = self.slot(self.index(t).min(self.head));
        let b = &mut self.buckets[s];
        b.messages = b.messages.saturating_add(1);
        b.recipients = b.recipients.saturating_add(recipients);
    }

    pub fn record_refused(&mut self, t: i64) {
        let s = self.slot(self.index(t).min(self.head));
        self.buckets[s].refused = self.buckets[s].refused.saturating_add(1);
    }

    /// Give back a message counted at t that was not sent after all; nothing if its bucket
    /// already left the ring.
    pub fn refund(&mut self, t: i64, recipients: u32) {
        let j = self.index(t).min(self.head);
        if j <= self.head - BUCKETS as i64 {
            return;
        }
        let s = self.slot(j);
        let b = &mut self.buckets[s];
        b.messages = b.messages.saturating_sub(1);
        b.recipients = b.recipients.saturating_sub(recipients);
    }

    /// The earliest time >= t at which `need` more fits under `max`, `None` if it never can
    /// (a single message larger than the limit). `max`/`need` are (messages, recipients);
    /// a `None` maximum is unlimited.
    pub fn next_room(
        &self,
        t: i64,
        need: (u64, u64),
        max: (Option<u32>, Option<u32>),
    ) -> Option<i64> {
        let fits = |m: u64, r: u64| {
            max.0.is_none_or(|lim| m + need.0 <= u64::from(lim))
                && max.1.is_none_or(|lim| r + need.1 <= u64::from(lim))
        };
        if !fits(0, 0) {
            return None;
        }
        let u = self.usage(t);
        let (mut m, mut r) = (u.messages, u.recipients);
        if fits(m, r) {
            return Some(t);
        }
        for j in self.first(t)..=self.head {
            let b = self.buckets[self.slot(j)];
            m -= u64::from(b.messages);
            r -= u64::from(b.recipients);
            if fits(m, r) {
                return Some((j + 1) * self.bucket_len() + self.span());
            }
        }
        Some((self.head + 1) * self.bucket_len() + self.span())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accept messages one at a time under `limit` per `secs`, as the limiter does.
    fn try_send(w: &mut Window, t: i64, limit: u32) -> bool {
        let t = w.advance(t);
        if w.usage(t).messages < u64::from(limit) {
            w.record(t, 1);
            true
        } else {
            w.record_refused(t);
            false
        }
    }

    #[test]
    fn limit_holds_within_window_and_frees_after() {
        let mut w = Window::new(3600, 1_000_000);
        for i in 0..50 {
            assert!(try_send(&mut w, 1_000_000 + i, 50));
        }
        assert!(!try_send(&mut w, 1_000_100, 50));
        assert_eq!(w.usage(1_000_100).refused, 1);
        let next = w.next_room(1_000_100, (1, 1), (Some(50), None)).unwrap();
        assert!(next > 1_000_000 + 3600 && next <= 1_000_000 + 3600 + w.bucket_len() + 50);
        assert!(!try_send(&mut w, next - 1, 50));
        assert!(try_send(&mut w, next, 50));
    }

    #[test]
    fn no_burst_at_window_edge() {
        // Send as fast as allowed for 3 windows; check every interval of length W.
        let (secs, limit) = (60u64, 10u32);
        let mut w = Window::new(secs, 0);
        let mut sent = Vec::new();
        for t in 0..180 {
            for _ in 0..3 {
                if try_send(&mut w, t, limit) {
                    sent.push(t);
                }
            }
        }
        for start in 0..180 {
            let inside = sent
                .iter()
                .filter(|&&t| t >= start && t <= start + secs as i64)
                .count();
            assert!(
                inside <= limit as usize,
                "{inside} messages in [{start}, {}]",
                start + secs as i64
            );
        }
        // ...and the window is not much stricter than W: at least `limit` per W + L.
        assert!(sent.len() >= 2 * limit as usize);
    }

    #[test]
    fn long_idle_gap_clears() {
        let mut w = Window::new(60, 0);
        for _ in 0..5 {
            try_send(&mut w, 0, 5);
        }
        assert!(!try_send(&mut w, 10, 5));
        assert!(try_send(&mut w, 10_000_000, 5));
        assert_eq!(w.usage(10_000_000).messages, 1);
    }

    #[test]
    fn bucket_lengths() {
        assert_eq!(Window::new(3600, 0).bucket_len(), 190);
        assert_eq!(Window::new(60, 0).bucket_len(), 4);
        assert_eq!(Window::new(190, 0).bucket_len(), 10);
        assert_eq!(Window::new(1, 0).bucket_len(), 1);
    }

    #[test]
    fn a_step_back_of_exactly_one_window_keeps_the_counts() {
        // 190 s = 19 buckets of 10 s: going back exactly one window is "standing still".
        let mut w = Window::new(190, 10_000);
        assert!(try_send(&mut w, 10_000, 5));
        let decided_at = w.advance(10_000 - 190);
        assert_eq!(
            decided_at, 10_000,
            "decides at the start of the newest bucket"
        );
        assert_eq!(w.usage(decided_at).messages, 1);
        // One bucket further back is more than a window: the window starts over.
        let t = w.advance(10_000 - 200);
        assert_eq!(w.usage(t).messages, 0);
    }

    #[test]
    fn next_room_is_when_the_oldest_blocking_bucket_leaves() {
        let mut w = Window::new(3600, 0);
        let max = (Some(2), None);
        let t = w.advance(0);
        w.record(t, 1);
        w.record(t, 1);
        let t = w.advance(1000);
        // Full: room when bucket 0 ([0, 190)) has left the window, at 190 + 3600.
        assert_eq!(w.next_room(t, (1, 1), max), Some(3790));
        // Recipients too: 2 + 3 > 4 until the same moment.
        assert_eq!(w.next_room(t, (0, 3), (None, Some(4))), Some(3790));
        w.record(t, 1);
        // For three messages under a limit of 3 both buckets must leave: bucket 5
        // ([950, 1140)) at 1140 + 3600.
        assert_eq!(w.next_room(t, (3, 1), (Some(3), None)), Some(4740));
        assert_eq!(w.next_room(t, (1, 1), (Some(3), None)), Some(3790));
    }

    #[test]
    fn clock_going_backwards() {
        let mut w = Window::new(3600, 100_000);
        for _ in 0..3 {
            try_send(&mut w, 100_000, 3);
        }
        // Small step back: counts stay, limit still holds.
        assert!(!try_send(&mut w, 99_000, 3));
        let t = w.advance(99_000);
        assert_eq!(w.usage(t).messages, 3);
        // Huge step back: the window restarts instead of never expiring.
        assert!(try_send(&mut w, -5_000_000, 3));
        // Refunds never go negative.
        w.refund(-5_000_000, 100);
        w.refund(-5_000_000, 100);
        let t = w.advance(-5_000_000);
        assert_eq!(w.usage(t).messages, 0);
    }

    #[test]
    fn recipients_and_oversized_messages() {
        let mut w = Window::new(86400, 0);
        let max = (Some(100), Some(500));
        assert_eq!(w.next_room(0, (1, 600), max), None);
        let t = w.advance(0);
        w.record(t, 400);
        assert_eq!(w.next_room(10, (1, 100), max), Some(10));
        let later = w.next_room(10, (1, 101), max).unwrap();
        assert!(later >= 86400);
    }
    proptest::proptest! {
        /// Never under-counts: whatever the arrival pattern, no interval of the window's length
        /// holds more accepted messages than the limit.
        #[test]
        fn no_interval_of_the_window_exceeds_the_limit(
            secs in 1u64..5000,
            limit in 1u32..20,
            gaps in proptest::collection::vec(0i64..400, 1..300),
        ) {
            let mut w = Window::new(secs, 0);
            let mut t = 1_000_000i64;
            let mut accepted: Vec<i64> = Vec::new();
            for gap in gaps {
                t += gap;
                if try_send(&mut w, t, limit) {
                    accepted.push(t);
                }
            }
            for (i, &end) in accepted.iter().enumerate() {
                let start = end - secs as i64;
                let inside = accepted[..=i].iter().filter(|&&a| a > start).count();
                proptest::prop_assert!(inside <= limit as usize, "{} in ({start}, {end}]", inside);
            }
        }
    }
}
