//! Accumulates decoded rows with the acknowledgements of the messages that carried them, and decides when a
//! batch is due ([`FlushPolicy`]): at `batch_size` rows, when the oldest row has waited `flush_interval`, or
//! when a backlog of `batch_size` messages or more has drained, whichever comes first; and while such a backlog
//! still waits behind a batch, at the ceiling of rows instead of at `batch_size`, or once messages stop coming
//! ([`QUIET`]) or the batch is [`GROW_WAIT`] old.
//!
//! Pure (no I/O, generic over the acknowledgement handle) so the flush policy is unit-tested directly.

use crate::row::EventRow;
use std::time::Duration;
use tokio::time::Instant;

/// Oldest a batch of `batch_size` rows or more gets, counted from its first row, while it grows towards the
/// ceiling because a backlog waits behind it (never older than the flush interval): what a backlog's events may
/// wait, at most, for a larger INSERT. A drain fills a batch to the ceiling in a fraction of this (18,000 rows in
/// about 0.15 s on two cores).
pub const GROW_WAIT: Duration = Duration::from_secs(1);

/// How long a growing batch (see [`GROW_WAIT`]) waits for its next message before it goes as it is. While a
/// backlog drains, messages arrive microseconds apart; a pause this long means JetStream has stopped delivering
/// to this instance (its `max_ack_pending` is taken by batches still being inserted or acknowledged, by other
/// instances sharing the consumer, or by a crashed instance's messages until their ack wait ends), and the rows
/// the batch would wait for come only after an INSERT.
pub const QUIET: Duration = Duration::from_millis(25);

/// The ceiling of a batch in bytes ([`EventRow::size`]): a batch at it takes no more rows, however few it holds.
/// The row ceiling assumes events of a few hundred bytes; events are up to `jetstream.max_message_bytes` (1 MiB),
/// and thousands of those would take gigabytes, in each of the batches held at once (one growing, one being
/// inserted, one being acknowledged), and make an INSERT ClickHouse may refuse for its size, again and again.
pub const MAX_BATCH_BYTES: u32 = 64 << 20;

/// Most rows a batch reserves room for up front (some 32 MB of `EventRow`s); a larger batch grows its vector.
const MAX_RESERVED_ROWS: usize = 65_536;

/// When a batch is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    /// Rows that make a batch due when no backlog waits behind it.
    pub batch_size: usize,
    /// The ceiling: most rows a batch takes (at least `batch_size`).
    pub max_rows: usize,
    /// Longest wait of a row in a partial batch.
    pub flush_interval: Duration,
}

/// A set of rows to insert together, and the handles to acknowledge once they are stored.
#[derive(Debug)]
pub struct Batch<A> {
    /// Rows, in arrival order.
    pub rows: Vec<EventRow>,
    /// The rows' [`EventRow::size`], summed (saturating; `u32`, like `pending`'s `u16`, keeps the batch small).
    bytes: u32,
    /// One handle per message; a batch message's handle covers all its rows.
    pub acks: Vec<A>,
    /// When the first row arrived, for the flush deadline.
    opened_at: Option<Instant>,
    /// When the last message arrived (with or without rows), to tell a batch that has stopped growing.
    last_seen: Option<Instant>,
    /// How many messages waited behind the last one (saturating: only a hint for the room to reserve, which is
    /// at most [`MAX_RESERVED_ROWS`]; `u16` keeps a batch small enough to hand back by value, see `handoff`).
    pending: u16,
    /// When this batch is due.
    policy: FlushPolicy,
    /// Whether a backlog of `batch_size` messages or more has been seen, by this batch or the ones before it,
    /// and has not drained since.
    in_backlog: bool,
    /// Whether the last message arrived with none waiting behind it.
    caught_up: bool,
}

impl<A> Batch<A> {
    /// An empty batch, due by `policy`.
    pub fn new(policy: FlushPolicy) -> Self {
        Self {
            rows: Vec::new(),
            bytes: 0,
            acks: Vec::new(),
            opened_at: None,
            last_seen: None,
            pending: 0,
            policy,
            in_backlog: false,
            caught_up: false,
        }
    }

    /// Records how many messages the stream still held behind the message received at `now` (`pending`),
    /// whether or not that message added rows.
    ///
    /// The last batch of a backlog is due as soon as the backlog has drained: the flush interval is there to
    /// gather events that trickle in, and waiting it out after a backlog only delays the backlog's last events
    /// (with an interval of seconds, by as much as it took to drain 200,000 events). A backlog counts once
    /// `batch_size` messages or more waited: events that trickle in, or come in bursts smaller than a batch,
    /// still wait for `batch_size` rows or the interval, as configured, instead of making an INSERT per burst.
    pub fn note_pending(&mut self, pending: u64, now: Instant) {
        self.in_backlog |= pending >= self.policy.batch_size as u64;
        self.caught_up = pending == 0;
        self.pending = u16::try_from(pending).unwrap_or(u16::MAX);
        self.last_seen = Some(now);
    }

    /// True when this batch ends a backlog that has now drained (see [`Self::note_pending`]).
    pub fn backlog_drained(&self) -> bool {
        self.in_backlog && self.caught_up && !self.is_empty()
    }

    /// True while a backlog of `batch_size` messages or more still waits behind this batch.
    ///
    /// Such a batch keeps taking rows past `batch_size`, up to the ceiling: the rows are there to be had at once,
    /// and each INSERT makes ClickHouse write a new part (some 60 files on 18.16) and merge it later, so a
    /// backlog drained in batches of the ceiling costs ClickHouse less CPU than one drained in batches of
    /// `batch_size` (a third less in `ingest_bench`; see docs/benchmarks.md). Its events were late already;
    /// they wait at most [`GROW_WAIT`] more, and only while delivery keeps flowing ([`QUIET`]).
    fn backlog_waiting(&self) -> bool {
        self.in_backlog && !self.caught_up
    }

    /// When the first row of this batch arrived; `None` while it is empty.
    pub fn opened_at(&self) -> Option<Instant> {
        self.opened_at
    }

    /// Adds the rows of one message and its acknowledgement handle; returns how many rows it added.
    ///
    /// The first message reserves room for the rows the batch will likely reach: `batch_size`, or, when a
    /// backlog waits behind it (call [`Self::note_pending`] first), what waits, up to the ceiling and at most
    /// [`MAX_RESERVED_ROWS`]. Growing the row vector by doubling instead copied every row about once more and, at
    /// 10,000 rows (6 MB), had the allocator map and fault in fresh pages at each step: 9 % of the ingester's CPU
    /// in a backlog drain.
    pub fn push(&mut self, rows: impl IntoIterator<Item = EventRow>, ack: A, now: Instant) -> usize {
        self.opened_at.get_or_insert(now);
        if self.rows.capacity() == 0 {
            let waiting = usize::from(self.pending) + 1;
            let likely = if self.backlog_waiting() {
                waiting
                    .min(self.policy.max_rows)
                    .min(MAX_RESERVED_ROWS)
                    .max(self.policy.batch_size)
            } else {
                self.policy.batch_size
            };
            self.rows.reserve(likely);
        }
        let before = self.rows.len();
        self.rows.extend(rows);
        let added = self.rows[before..].iter().map(EventRow::size).sum::<usize>();
        self.bytes = self.bytes.saturating_add(u32::try_from(added).unwrap_or(u32::MAX));
        self.acks.push(ack);
        self.rows.len() - before
    }

    /// True when the batch holds `batch_size` rows or more.
    pub fn is_full(&self) -> bool {
        self.rows.len() >= self.policy.batch_size
    }

    /// True when the batch holds the ceiling of rows or of bytes, or more: it takes no more.
    pub fn at_ceiling(&self) -> bool {
        self.rows.len() >= self.policy.max_rows || self.bytes >= MAX_BATCH_BYTES
    }

    /// Rows the batch may still take before the ceiling (none once at the byte ceiling).
    pub fn room(&self) -> usize {
        if self.bytes >= MAX_BATCH_BYTES {
            return 0;
        }
        self.policy.max_rows.saturating_sub(self.rows.len())
    }

    /// True when the batch should go to the sink: the ceiling of rows; `batch_size` rows or more, unless a
    /// backlog waits behind them ([`Self::backlog_waiting`]); the end of a backlog that has drained
    /// ([`Self::backlog_drained`]); or the [`deadline`](Self::deadline).
    pub fn is_due(&self, now: Instant) -> bool {
        self.at_ceiling()
            || (self.is_full() && !self.backlog_waiting())
            || self.backlog_drained()
            || self.deadline().is_some_and(|deadline| deadline <= now)
    }

    /// True when nothing (not even a message without rows) is held.
    pub fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.rows.is_empty()
    }

    /// When this batch is due at the latest: `flush_interval` after its first row; for a batch of `batch_size`
    /// rows or more that a backlog lets grow, sooner: [`GROW_WAIT`] after its first row, or [`QUIET`] after the
    /// last message, whichever comes first. `None` while empty.
    pub fn deadline(&self) -> Option<Instant> {
        let opened = self.opened_at?;
        let interval = opened + self.policy.flush_interval;
        if !self.is_full() {
            return Some(interval);
        }
        let quiet = self.last_seen.map_or(interval, |t| t + QUIET);
        Some(interval.min(opened + GROW_WAIT).min(quiet))
    }

    /// Takes the batch out, leaving an empty one of the same policy, which carries on a backlog that has not
    /// drained yet.
    pub fn take(&mut self) -> Self {
        let mut empty = Self::new(self.policy);
        empty.in_backlog = self.in_backlog && !self.caught_up;
        std::mem::replace(self, empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::{Origin, to_row};
    use fechatter_protos::sample_events;

    fn rows(n: usize) -> Vec<EventRow> {
        let event = sample_events().remove(0);
        let kind = event.event_type.clone().expect("set");
        let origin = Origin {
            subject: "s",
            stream: "S",
            stream_sequence: 1,
            published_ns: 0,
            index: 0,
            ingested_at: 0,
            redrive_of: None,
        };
        (0..n).map(|_| to_row(event.context.clone(), &kind, &origin)).collect()
    }

    fn policy(batch_size: usize, max_rows: usize, flush_interval: Duration) -> FlushPolicy {
        FlushPolicy {
            batch_size,
            max_rows,
            flush_interval,
        }
    }

    #[test]
    fn large_events_reach_the_byte_ceiling_long_before_the_row_ceiling() {
        let mut batch: Batch<()> = Batch::new(policy(100, 1_000, Duration::from_secs(30)));
        // Four rows of a quarter of the ceiling each.
        let large = || {
            let mut row = rows(1).remove(0);
            row.payload = "x".repeat(MAX_BATCH_BYTES as usize / 4);
            row
        };
        let now = Instant::now();
        for _ in 0..3 {
            batch.push([large()], (), now);
        }
        assert!(!batch.at_ceiling() && batch.room() > 0, "three quarters");
        batch.push([large()], (), now);
        assert!(batch.at_ceiling(), "at the byte ceiling with 4 rows");
        assert_eq!(batch.room(), 0);
        assert!(batch.is_due(now), "a batch at a ceiling goes at once");
        let next = batch.take();
        assert_eq!(next.rows.len(), 4);
        assert!(!batch.at_ceiling(), "the next batch starts empty");
    }

    #[test]
    fn a_batch_is_full_at_batch_size_rows() {
        let mut batch = Batch::new(policy(3, 10, Duration::from_secs(60)));
        let now = Instant::now();
        batch.push(rows(2), 1, now);
        assert!(!batch.is_full());
        batch.push(rows(1), 2, now);
        assert!(batch.is_full());
        assert_eq!(batch.acks, vec![1, 2]);
    }

    #[test]
    fn a_batch_is_due_when_full_or_when_its_oldest_row_has_waited() {
        let interval = Duration::from_secs(5);
        let policy = policy(3, 10, interval);
        let first = Instant::now();
        let mut batch = Batch::new(policy);
        assert!(!batch.is_due(first + interval * 2), "an empty batch is never due");
        batch.push(rows(1), 1, first);
        assert!(!batch.is_due(first + Duration::from_secs(4)));
        assert!(batch.is_due(first + interval));
        batch.push(rows(2), 2, first + Duration::from_secs(1));
        assert!(batch.is_due(first + Duration::from_secs(1)), "full");
    }

    #[test]
    fn the_last_batch_of_a_backlog_is_due_once_the_backlog_has_drained() {
        let interval = Duration::from_secs(60);
        // The ceiling at batch_size: this is about the end of the backlog, not about growing.
        let policy = policy(3, 3, interval);
        let now = Instant::now();
        let mut batch = Batch::new(policy);
        for pending in [10, 9, 8] {
            batch.note_pending(pending, now);
            batch.push(rows(1), pending, now);
        }
        assert!(batch.is_due(now), "full");
        assert!(!batch.backlog_drained());
        let _ = batch.take();
        batch.note_pending(1, now);
        batch.push(rows(1), 1, now);
        assert!(!batch.is_due(now), "one more waiting");
        batch.note_pending(0, now);
        batch.push(rows(1), 0, now);
        assert!(
            batch.is_due(now),
            "the last of the backlog, in the batch after the one that saw it"
        );
        assert!(batch.take().backlog_drained());
        batch.note_pending(0, now);
        assert!(!batch.is_due(now), "empty: nothing to hand over");
        batch.push(rows(1), 9, now);
        assert!(!batch.is_due(now), "the backlog is over: this event trickled in");
    }

    #[test]
    fn events_that_trickle_in_or_come_in_small_bursts_wait_for_batch_size_or_the_interval() {
        let interval = Duration::from_secs(60);
        let policy = policy(100, 1000, interval);
        let now = Instant::now();
        let mut batch = Batch::new(policy);
        for pending in [0, 0, 3, 2, 1, 0, 0] {
            batch.note_pending(pending, now);
            batch.push(rows(1), pending, now);
        }
        assert!(!batch.is_due(now + Duration::from_secs(59)));
        assert!(batch.is_due(now + interval));
    }

    #[test]
    fn the_deadline_runs_from_the_first_row() {
        let policy = policy(3, 10, Duration::from_secs(5));
        let mut batch: Batch<u8> = Batch::new(policy);
        assert_eq!(batch.deadline(), None);
        let first = Instant::now();
        batch.push(rows(1), 1, first);
        batch.push(rows(1), 2, first + Duration::from_secs(3));
        assert_eq!(batch.deadline(), Some(first + Duration::from_secs(5)));
    }

    #[test]
    fn a_full_batch_keeps_growing_while_a_backlog_waits_behind_it() {
        let policy = policy(3, 6, Duration::from_secs(60));
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut batch = Batch::new(policy);
        for (at, pending) in [(0, 20), (1, 19), (2, 18), (3, 17)] {
            batch.note_pending(pending, ms(at));
            batch.push(rows(1), pending, ms(at));
        }
        assert!(!batch.is_due(ms(3)), "past batch_size, and more wait behind");
        for (at, pending) in [(4, 16), (5, 15)] {
            batch.note_pending(pending, ms(at));
            batch.push(rows(1), pending, ms(at));
        }
        assert!(batch.is_due(ms(5)), "at the ceiling");
        assert_eq!(batch.take().rows.len(), 6);
        for (at, pending) in [(6, 14), (7, 13), (8, 12)] {
            batch.note_pending(pending, ms(at));
            batch.push(rows(1), pending, ms(at));
        }
        assert!(!batch.is_due(ms(8)), "the next batch of the backlog grows too");
        batch.note_pending(0, ms(9));
        batch.push(rows(1), 0, ms(9));
        assert!(batch.is_due(ms(9)), "the backlog has drained");
        let _ = batch.take();
        for (at, pending) in [(10, 2), (11, 1), (12, 0)] {
            batch.note_pending(pending, ms(at));
            batch.push(rows(1), pending, ms(at));
        }
        assert!(batch.is_due(ms(12)), "no backlog: due at batch_size");
    }

    #[test]
    fn a_growing_batch_goes_once_messages_stop_coming() {
        // Other instances, or batches still being inserted, hold the consumer's max_ack_pending: JetStream
        // stops delivering to this one although the stream holds more.
        let policy = policy(3, 1000, Duration::from_secs(60));
        let t0 = Instant::now();
        let mut batch = Batch::new(policy);
        for n in 0..5u64 {
            batch.note_pending(500 - n, t0 + Duration::from_millis(n));
            batch.push(rows(1), n, t0 + Duration::from_millis(n));
        }
        let last = t0 + Duration::from_millis(4);
        assert!(!batch.is_due(last + QUIET - Duration::from_millis(1)));
        assert_eq!(batch.deadline(), Some(last + QUIET));
        assert!(batch.is_due(last + QUIET));
    }

    #[test]
    fn a_growing_batch_goes_after_grow_wait_however_fast_messages_come() {
        let policy = policy(3, 1_000_000, Duration::from_secs(60));
        let t0 = Instant::now();
        let mut batch = Batch::new(policy);
        let mut at = t0;
        while at < t0 + GROW_WAIT {
            batch.note_pending(1_000_000, at);
            batch.push(rows(1), 0, at);
            assert!(!batch.is_due(at), "still growing at {:?}", at - t0);
            at += Duration::from_millis(10);
        }
        assert_eq!(batch.deadline(), Some(t0 + GROW_WAIT));
        assert!(batch.is_due(t0 + GROW_WAIT));
    }

    #[test]
    fn a_short_flush_interval_bounds_the_growing_too() {
        let policy = policy(2, 100, Duration::from_millis(10));
        let now = Instant::now();
        let mut batch = Batch::new(policy);
        batch.note_pending(50, now);
        batch.push(rows(2), 50, now);
        assert!(!batch.is_due(now), "growing: 50 more wait");
        assert_eq!(batch.deadline(), Some(now + Duration::from_millis(10)));
    }

    #[test]
    fn taking_a_batch_resets_it() {
        let mut batch = Batch::new(policy(4, 8, Duration::from_secs(1)));
        assert_eq!(batch.push(rows(4), 1, Instant::now()), 4);
        assert!(batch.rows.capacity() >= 4);
        let taken = batch.take();
        assert_eq!(taken.rows.len(), 4);
        assert!(batch.is_empty());
        assert_eq!(batch.deadline(), None);
        assert_eq!(batch.rows.capacity(), 0, "room is reserved only when rows arrive");
        batch.push(rows(1), 2, Instant::now());
        assert!(batch.rows.capacity() >= 4, "the next batch reserves the same room");
    }

    #[test]
    fn a_batch_opened_in_a_backlog_reserves_room_for_what_waits_up_to_the_ceiling() {
        let now = Instant::now();
        let mut batch = Batch::new(policy(4, 12, Duration::from_secs(1)));
        batch.note_pending(100, now);
        batch.push(rows(1), 1, now);
        assert!(
            batch.rows.capacity() >= 12,
            "it will grow to the ceiling: no copying on the way"
        );
        let mut batch = Batch::new(policy(4, 12, Duration::from_secs(1)));
        batch.note_pending(6, now);
        batch.push(rows(1), 1, now);
        assert!((7..12).contains(&batch.rows.capacity()), "what waits, not the ceiling");
        let mut batch = Batch::new(policy(4, 10_000_000, Duration::from_secs(1)));
        batch.note_pending(50_000_000, now);
        batch.push(rows(1), 1, now);
        assert!(
            batch.rows.capacity() < 2 * MAX_RESERVED_ROWS,
            "a huge ceiling is not reserved up front"
        );
    }
}
