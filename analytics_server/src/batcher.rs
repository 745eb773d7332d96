//! Accumulates decoded rows with the acknowledgements of the messages that carried them, and decides when a
//! batch is due: at `batch_size` rows, when the oldest row has waited `flush_interval`, or when a backlog of
//! `batch_size` messages or more has drained, whichever comes first.
//!
//! Pure (no I/O, generic over the acknowledgement handle) so the flush policy is unit-tested directly.

use crate::row::EventRow;
use std::time::Duration;
use tokio::time::Instant;

/// A set of rows to insert together, and the handles to acknowledge once they are stored.
#[derive(Debug)]
pub struct Batch<A> {
    /// Rows, in arrival order.
    pub rows: Vec<EventRow>,
    /// One handle per message; a batch message's handle covers all its rows.
    pub acks: Vec<A>,
    /// When the first row arrived, for the flush deadline.
    opened_at: Option<Instant>,
    /// Rows reserved when the first message arrives: `batch_size`, what a busy batch grows to anyway.
    capacity: usize,
    /// Whether a backlog of `batch_size` messages or more has been seen, by this batch or the ones before it,
    /// and has not drained since.
    in_backlog: bool,
    /// Whether the last message arrived with none waiting behind it.
    caught_up: bool,
}

impl<A> Batch<A> {
    /// An empty batch that reserves room for `capacity` rows when its first message arrives. Growing the row
    /// vector by doubling instead copied every row about once more and, at 10,000 rows (6 MB), had the
    /// allocator map and fault in fresh pages at each step: 9 % of the ingester's CPU in a backlog drain.
    pub fn new(capacity: usize) -> Self {
        Self {
            rows: Vec::new(),
            acks: Vec::new(),
            opened_at: None,
            capacity,
            in_backlog: false,
            caught_up: false,
        }
    }

    /// Records how many messages the stream still held behind the last message received (`pending`), whether
    /// or not that message added rows.
    ///
    /// The last batch of a backlog is due as soon as the backlog has drained: the flush interval is there to
    /// gather events that trickle in, and waiting it out after a backlog only delays the backlog's last events
    /// (with an interval of seconds, by as much as it took to drain 200,000 events). A backlog counts once
    /// `batch_size` messages or more waited: events that trickle in, or come in bursts smaller than a batch,
    /// still wait for `batch_size` rows or the interval, as configured, instead of making an INSERT per burst.
    pub fn note_pending(&mut self, pending: u64, batch_size: usize) {
        self.in_backlog |= pending >= batch_size as u64;
        self.caught_up = pending == 0;
    }

    /// True when this batch ends a backlog that has now drained (see [`Self::note_pending`]).
    pub fn backlog_drained(&self) -> bool {
        self.in_backlog && self.caught_up && !self.is_empty()
    }

    /// When the first row of this batch arrived; `None` while it is empty.
    pub fn opened_at(&self) -> Option<Instant> {
        self.opened_at
    }

    /// Adds the rows of one message and its acknowledgement handle; returns how many rows it added.
    pub fn push(&mut self, rows: impl IntoIterator<Item = EventRow>, ack: A, now: Instant) -> usize {
        self.opened_at.get_or_insert(now);
        if self.rows.capacity() == 0 {
            self.rows.reserve(self.capacity);
        }
        let before = self.rows.len();
        self.rows.extend(rows);
        self.acks.push(ack);
        self.rows.len() - before
    }

    /// True when the batch holds `batch_size` rows or more.
    pub fn is_full(&self, batch_size: usize) -> bool {
        self.rows.len() >= batch_size
    }

    /// True when the batch should go to the sink: `batch_size` rows or more, a row older than `flush_interval`,
    /// or the end of a backlog that has drained ([`Self::backlog_drained`]).
    pub fn is_due(&self, batch_size: usize, flush_interval: Duration, now: Instant) -> bool {
        self.is_full(batch_size)
            || self.backlog_drained()
            || self.deadline(flush_interval).is_some_and(|deadline| deadline <= now)
    }

    /// True when nothing (not even a message without rows) is held.
    pub fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.rows.is_empty()
    }

    /// When this batch must be flushed at the latest; `None` while empty.
    pub fn deadline(&self, flush_interval: Duration) -> Option<Instant> {
        self.opened_at.map(|t| t + flush_interval)
    }

    /// Takes the batch out, leaving an empty one of the same capacity, which carries on a backlog that has not
    /// drained yet.
    pub fn take(&mut self) -> Self {
        let mut empty = Self::new(self.capacity);
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
        };
        (0..n).map(|_| to_row(event.context.clone(), &kind, &origin)).collect()
    }

    #[test]
    fn a_batch_is_full_at_batch_size_rows() {
        let mut batch = Batch::new(3);
        let now = Instant::now();
        batch.push(rows(2), 1, now);
        assert!(!batch.is_full(3));
        batch.push(rows(1), 2, now);
        assert!(batch.is_full(3));
        assert_eq!(batch.acks, vec![1, 2]);
    }

    #[test]
    fn a_batch_is_due_when_full_or_when_its_oldest_row_has_waited() {
        let interval = Duration::from_secs(5);
        let first = Instant::now();
        let mut batch = Batch::new(3);
        assert!(
            !batch.is_due(3, interval, first + interval * 2),
            "an empty batch is never due"
        );
        batch.push(rows(1), 1, first);
        assert!(!batch.is_due(3, interval, first + Duration::from_secs(4)));
        assert!(batch.is_due(3, interval, first + interval));
        batch.push(rows(2), 2, first + Duration::from_secs(1));
        assert!(batch.is_due(3, interval, first + Duration::from_secs(1)), "full");
    }

    #[test]
    fn the_last_batch_of_a_backlog_is_due_once_the_backlog_has_drained() {
        let interval = Duration::from_secs(60);
        let now = Instant::now();
        let mut batch = Batch::new(3);
        for pending in [10, 9, 8] {
            batch.note_pending(pending, 3);
            batch.push(rows(1), pending, now);
        }
        assert!(batch.is_due(3, interval, now), "full");
        assert!(!batch.backlog_drained());
        let _ = batch.take();
        batch.note_pending(1, 3);
        batch.push(rows(1), 1, now);
        assert!(!batch.is_due(3, interval, now), "one more waiting");
        batch.note_pending(0, 3);
        batch.push(rows(1), 0, now);
        assert!(
            batch.is_due(3, interval, now),
            "the last of the backlog, in the batch after the one that saw it"
        );
        assert!(batch.take().backlog_drained());
        batch.note_pending(0, 3);
        assert!(!batch.is_due(3, interval, now), "empty: nothing to hand over");
        batch.push(rows(1), 9, now);
        assert!(
            !batch.is_due(3, interval, now),
            "the backlog is over: this event trickled in"
        );
    }

    #[test]
    fn events_that_trickle_in_or_come_in_small_bursts_wait_for_batch_size_or_the_interval() {
        let interval = Duration::from_secs(60);
        let now = Instant::now();
        let mut batch = Batch::new(100);
        for pending in [0, 0, 3, 2, 1, 0, 0] {
            batch.note_pending(pending, 100);
            batch.push(rows(1), pending, now);
        }
        assert!(!batch.is_due(100, interval, now + Duration::from_secs(59)));
        assert!(batch.is_due(100, interval, now + interval));
    }

    #[test]
    fn the_deadline_runs_from_the_first_row() {
        let mut batch: Batch<u8> = Batch::new(2);
        assert_eq!(batch.deadline(Duration::from_secs(5)), None);
        let first = Instant::now();
        batch.push(rows(1), 1, first);
        batch.push(rows(1), 2, first + Duration::from_secs(3));
        assert_eq!(
            batch.deadline(Duration::from_secs(5)),
            Some(first + Duration::from_secs(5))
        );
    }

    #[test]
    fn taking_a_batch_resets_it() {
        let mut batch = Batch::new(4);
        assert_eq!(batch.push(rows(4), 1, Instant::now()), 4);
        assert!(batch.rows.capacity() >= 4);
        let taken = batch.take();
        assert_eq!(taken.rows.len(), 4);
        assert!(batch.is_empty());
        assert_eq!(batch.deadline(Duration::from_secs(1)), None);
        assert_eq!(batch.rows.capacity(), 0, "room is reserved only when rows arrive");
        batch.push(rows(1), 2, Instant::now());
        assert!(batch.rows.capacity() >= 4, "the next batch reserves the same room");
    }
}
