//! Group commit of message sends: the sends that arrive while the database is busy are written together, in
//! one statement and one transaction ([`store::send_messages`]), instead of one transaction each.
//!
//! Why: with durable commits, a send's cost is mostly not its rows but its statement and its commit (parse,
//! plan, executor start-up, the commit record and the wait for the disk). Written together, sends share them.
//! No send waits for a batch to fill: a writer takes whatever is queued the moment it is free, so a lone send is
//! written at once, alone, and batches grow only when sends arrive faster than writers finish (the queue's
//! natural batching). A send is answered only once its statement committed, so nothing is acknowledged that a
//! crash could lose.
//!
//! How many statements are in flight at once is `database.send_writers` (default 1). One writer makes the largest
//! batches: the sends that arrive while its statement runs all go in the next. More writers overlap statements, so
//! that one slow statement does not hold up every send, but make batches smaller and a send's CPU greater. The
//! `send_bench` history: 4 writers wrote 2.5 sends per statement and were no faster than 1 or 2, which wrote 8 and
//! 4.5; 3 writers, 3.4 sends per statement, as many sends per second as 2 and 409-489 µs of CPU per send against
//! 345-424; on the tenth session's machine (2 cores, fast disk), alternating runs of 1 and 2 writers: 8.3 against
//! 4.8 sends per statement, off 100-107 against 119-140 µs of CPU per send, on 125-132 against 143-166, and 2-5 %
//! more sends per second. A statement no longer waits for a chat's deletion (see `store::send_messages`), the one
//! lock a send could wait long for.
//!
//! A batch's statement is all or nothing. When it fails (a deadlock with another batch, a chat deleted under
//! it), each of its sends is written again on its own, so one bad send never fails the others.

use super::store::{self, NewMessage, Sent};
use crate::error::is_foreign_key_violation;
use crate::metrics::Metrics;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most sends in one statement: bounds a statement's size and the wait of the first send in it.
pub const MAX_BATCH: usize = 64;

/// Sends waiting for a writer; when full, senders wait (back-pressure on the HTTP handlers).
const QUEUE_CAPACITY: usize = 1024;

/// One queued send and where its outcome goes.
struct Job {
    message: NewMessage,
    reply: oneshot::Sender<Result<Sent, sqlx::Error>>,
}

/// The handle handlers send through. Cheap to clone; the writers stop once every handle is dropped and the
/// queue is empty.
#[derive(Clone)]
pub struct SendQueue {
    jobs: mpsc::Sender<Job>,
}

/// Why a send has no outcome.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The statement failed.
    #[error("message send statement failed")]
    Database(#[from] sqlx::Error),
    /// The writers are gone (the server is stopping, or a writer panicked).
    #[error("message send queue stopped")]
    Stopped,
}

impl SendQueue {
    /// Starts `writers` writers (at least one) on the current runtime. They have connections of their own, one
    /// each, to the database `pool` connects to (opened when first needed).
    pub fn start(pool: &PgPool, writers: usize, metrics: Arc<Metrics>) -> Self {
        let writers = writers.max(1);
        let (jobs, queued) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(dispatch(writers_pool(pool, writers), writers, metrics, queued));
        Self { jobs }
    }

    /// Sends `message` with the others queued at the same time; returns once its statement committed.
    pub async fn send(&self, message: NewMessage) -> Result<Sent, SendError> {
        let (reply, outcome) = oneshot::channel();
        self.jobs
            .send(Job { message, reply })
            .await
            .map_err(|_| SendError::Stopped)?;
        Ok(outcome.await.map_err(|_| SendError::Stopped)??)
    }
}

/// The writers' connections: those of `pool`, with generic plans for prepared statements.
///
/// PostgreSQL plans a prepared statement anew for each execution while it judges that a plan for the actual
/// parameters may be cheaper (`plan_cache_mode = auto`), and with array parameters it keeps judging so: the send
/// statement then spent as long being planned as being run (measured with `EXPLAIN (ANALYZE, SUMMARY)` on
/// three messages: planning 0.8-1.3 ms, execution 0.7-1.2 ms; with a generic plan 0.06-0.1 ms and
/// 0.4-0.8 ms). Its best plan does not depend on the parameters (index lookups by key for each message), so
/// these connections always reuse the generic plan. Only these: the history and search queries do depend on
/// theirs.
fn writers_pool(pool: &PgPool, writers: usize) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .options([("plan_cache_mode", "force_generic_plan")]);
    PgPoolOptions::new()
        .max_connections(u32::try_from(writers).unwrap_or(u32::MAX))
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_lazy_with(options)
}

/// Hands the queued sends, up to [`MAX_BATCH`] at a time, to a free writer, until the queue closes.
async fn dispatch(pool: PgPool, writers: usize, metrics: Arc<Metrics>, mut queued: mpsc::Receiver<Job>) {
    let writers = Arc::new(Semaphore::new(writers));
    loop {
        // Wait for a free writer first: while all are busy, sends pile up in the queue and leave together.
        let Ok(writer) = writers.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if queued.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        metrics.send_batch_size.observe(batch.len() as f64);
        let pool = pool.clone();
        tokio::spawn(async move {
            write(&pool, batch).await;
            drop(writer);
        });
    }
}

/// Writes `batch` and answers each of its sends.
async fn write(pool: &PgPool, batch: Vec<Job>) {
    let (messages, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|job| (job.message, job.reply)).unzip();
    for (reply, outcome) in replies.into_iter().zip(write_together(pool, messages).await) {
        // A handler that stopped waiting (its client went away) needs no answer.
        let _ = reply.send(outcome);
    }
}

/// Writes `messages` in one statement, or, if that fails, each on its own; the outcome of each, in order.
pub async fn write_together(pool: &PgPool, messages: Vec<NewMessage>) -> Vec<Result<Sent, sqlx::Error>> {
    let each_fails = |why: String| {
        messages
            .iter()
            .map(|_| Err(sqlx::Error::Protocol(why.clone())))
            .collect()
    };
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        // Nothing was written, and each send alone would wait as long again for a connection.
        Err(err) => return each_fails(format!("no database connection for the sends: {err}")),
    };
    let written = store::send_messages(&mut conn, &messages).await;
    drop(conn);
    let err = match written {
        Ok(outcomes) => return outcomes.into_iter().map(Ok).collect(),
        Err(err) if messages.len() == 1 && !is_foreign_key_violation(&err) => return vec![Err(err)],
        // Each send fails (500); a client retrying with its idempotency key gets its message either way.
        Err(err) if !wrote_nothing(&err) => {
            return each_fails(format!("batched send statement failed, and may have committed: {err}"));
        }
        Err(err) => err,
    };
    tracing::debug!(error = %err, sends = messages.len(), "batched send failed; sending one by one");
    let mut outcomes = Vec::with_capacity(messages.len());
    for message in &messages {
        outcomes.push(write_alone(pool, message).await);
    }
    outcomes
}

/// Whether `err`, the failure of a statement sent on a connection, proves that the statement wrote nothing, so
/// that its sends may be written again: PostgreSQL refused it (a statement run alone is its own transaction,
/// rolled back on error). Any other failure (the connection lost mid-statement, an answer that cannot be read)
/// may have come after its commit, and writing again would store a second copy of every message sent without an
/// idempotency key.
fn wrote_nothing(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(_))
}

/// Writes one send in a statement of its own. A send whose chat was deleted after its membership check fails
/// the foreign key; written once more, its membership check sees the chat gone, and it is answered as any send
/// to a missing chat (404), not as a failed statement (500).
async fn write_alone(pool: &PgPool, message: &NewMessage) -> Result<Sent, sqlx::Error> {
    let one = std::slice::from_ref(message);
    let outcome = match send_all(pool, one).await {
        Err(err) if is_foreign_key_violation(&err) => send_all(pool, one).await,
        outcome => outcome,
    };
    // `send_messages` answers exactly one outcome per message, or an error.
    outcome.and_then(|sent| sent.into_iter().next().ok_or(sqlx::Error::RowNotFound))
}

/// One statement on one pooled connection.
async fn send_all(pool: &PgPool, messages: &[NewMessage]) -> Result<Vec<Sent>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    store::send_messages(&mut conn, messages).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refused_statement_lets_its_sends_be_written_again() {
        let lost = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(
            !wrote_nothing(&lost),
            "a connection lost mid-statement may follow its commit"
        );
        assert!(!wrote_nothing(&sqlx::Error::Protocol("unreadable answer".into())));
    }
}
