//! How batches pass from the pipeline to the sink: the sink asks for a batch each time it is ready to insert
//! one, and the pipeline answers with the batch it has built so far once that batch is due.
//!
//! Asking, rather than the pipeline pushing into a queue, is what lets INSERTs grow with the load: while
//! ClickHouse works on one INSERT, the next batch keeps taking rows (up to the pipeline's ceiling) instead of
//! being frozen at `batch_size` in a queue slot. ClickHouse writes a new part of some 60 files per INSERT and
//! later merges the parts, so fewer, larger INSERTs cost it less per row; an idle ingester still flushes at
//! `batch_size` rows or `flush_interval`, as before. (A batch with a backlog behind it grows to the ceiling even
//! when the sink is ready: see [`crate::batcher::FlushPolicy`].)

use crate::batcher::Batch;
use crate::source::Ack;
use tokio::sync::{mpsc, oneshot};

/// A sink's request: where to send the next batch.
type Request = oneshot::Sender<Batch<Ack>>;

/// Creates the two ends of a hand-over.
pub fn channel() -> (Giver, Taker) {
    // One request at a time: the sink asks again only after it has stored what it was given.
    let (requests, received) = mpsc::channel(1);
    (
        Giver {
            requests: received,
            waiting: None,
        },
        Taker { requests },
    )
}

/// The pipeline's end: learns when the sink is ready and gives it a batch.
pub struct Giver {
    requests: mpsc::Receiver<Request>,
    /// A request received and not answered yet.
    waiting: Option<Request>,
}

impl Giver {
    /// Waits until the sink is ready for a batch; false when the sink is gone. Cancel-safe, so it can be one
    /// branch of a `select!`: a request received is kept for [`give`](Self::give).
    pub async fn ready(&mut self) -> bool {
        if self.waiting.is_none() {
            self.waiting = self.requests.recv().await;
        }
        self.waiting.is_some()
    }

    /// Gives `batch` to the sink that asked for it. Gives it back when there is no request (call
    /// [`ready`](Self::ready) first) or the sink is gone.
    pub fn give(&mut self, batch: Batch<Ack>) -> Result<(), Batch<Ack>> {
        match self.waiting.take() {
            Some(request) => request.send(batch),
            None => Err(batch),
        }
    }
}

/// The sink's end: asks for the next batch.
pub struct Taker {
    requests: mpsc::Sender<Request>,
}

impl Taker {
    /// Asks for the next batch and waits for it; `None` once the pipeline has finished and given everything.
    pub async fn next(&self) -> Option<Batch<Ack>> {
        let (request, response) = oneshot::channel();
        self.requests.send(request).await.ok()?;
        response.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::FlushPolicy;
    use tokio::time::Instant;

    fn batch_of(acks: usize) -> Batch<Ack> {
        let mut batch = Batch::new(FlushPolicy {
            batch_size: acks,
            max_rows: acks,
            flush_interval: std::time::Duration::from_secs(1),
        });
        for _ in 0..acks {
            batch.push(Vec::new(), Ack::None, Instant::now());
        }
        batch
    }

    #[tokio::test]
    async fn the_sink_gets_a_batch_only_when_it_asks() {
        let (mut giver, taker) = channel();
        let returned = giver
            .give(batch_of(1))
            .expect_err("no request, so the batch comes back");
        assert_eq!(returned.acks.len(), 1);

        let sink = tokio::spawn(async move { taker.next().await.map(|b| b.acks.len()) });
        assert!(giver.ready().await);
        assert!(giver.ready().await, "the request is kept until answered");
        assert!(giver.give(batch_of(3)).is_ok(), "the sink asked");
        assert!(giver.give(batch_of(1)).is_err(), "one batch per request");
        assert_eq!(sink.await.expect("sink task"), Some(3));
    }

    #[tokio::test]
    async fn the_sink_stops_when_the_pipeline_is_done() {
        let (giver, taker) = channel();
        drop(giver);
        assert!(taker.next().await.is_none());
    }

    #[tokio::test]
    async fn the_pipeline_learns_that_the_sink_is_gone() {
        let (mut giver, taker) = channel();
        drop(taker);
        assert!(!giver.ready().await);
        assert!(giver.give(batch_of(1)).is_err());
    }
}
