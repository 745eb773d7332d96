//! Accumulates decoded rows with the acknowledgements of the messages that carried them, and decides when
//! to flush: at `batch_size` rows or when the oldest row has waited `flush_interval`, whichever comes first.
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
}

impl<A> Default for Batch<A> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            acks: Vec::new(),
            opened_at: None,
        }
    }
}

impl<A> Batch<A> {
    /// Adds the rows of one message and its acknowledgement handle.
    pub fn push(&mut self, rows: Vec<EventRow>, ack: A, now: Instant) {
        self.opened_at.get_or_insert(now);
        self.rows.extend(rows);
        self.acks.push(ack);
    }

    /// True when the batch holds `batch_size` rows or more.
    pub fn is_full(&self, batch_size: usize) -> bool {
        self.rows.len() >= batch_size
    }

    /// True when nothing (not even a message without rows) is held.
    pub fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.rows.is_empty()
    }

    /// When this batch must be flushed at the latest; `None` while empty.
    pub fn deadline(&self, flush_interval: Duration) -> Option<Instant> {
        self.opened_at.map(|t| t + flush_interval)
    }

    /// Takes the batch out, leaving an empty one.
    pub fn take(&mut self) -> Self {
        std::mem::take(self)
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
            index: 0,
            ingested_at: 0,
        };
        (0..n).map(|_| to_row(event.context.clone(), &kind, &origin)).collect()
    }

    #[test]
    fn a_batch_is_full_at_batch_size_rows() {
        let mut batch = Batch::default();
        let now = Instant::now();
        batch.push(rows(2), 1, now);
        assert!(!batch.is_full(3));
        batch.push(rows(1), 2, now);
        assert!(batch.is_full(3));
        assert_eq!(batch.acks, vec![1, 2]);
    }

    #[test]
    fn the_deadline_runs_from_the_first_row() {
        let mut batch: Batch<u8> = Batch::default();
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
        let mut batch = Batch::default();
        batch.push(rows(4), 1, Instant::now());
        let taken = batch.take();
        assert_eq!(taken.rows.len(), 4);
        assert!(batch.is_empty());
        assert_eq!(batch.deadline(Duration::from_secs(1)), None);
    }
}
