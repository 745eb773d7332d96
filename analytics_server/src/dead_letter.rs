//! Copies poison messages to the dead-letter stream, so one bad message never blocks the stream and no bad
//! message is silently lost: the raw payload is kept with its subject, the error and the delivery count (a payload
//! too close to NATS's `max_payload` to travel with those headers is cut, and its full size recorded).
//!
//! Only after JetStream acknowledged the copy is the original terminated (`Term`); a failed copy leaves the
//! original unacknowledged, to be redelivered and tried again.
//!
//! [`DeadLetterWorkers`] does this in the background: waiting for each copy's acknowledgement inside the pipeline
//! stalled every good message behind a bad one for a round trip (measured: 10 % garbage cut throughput by up to
//! half), so the pipeline hands poison over and moves on, with a bounded number of copies in flight.

use crate::config::Settings;
use crate::jetstream::{StreamAction, ensure_dead_letter_stream};
use crate::metrics::Metrics;
use crate::source::Incoming;
use async_nats::HeaderMap;
use async_nats::jetstream::{AckKind, Context};
use fechatter_service::error::chain;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Header holding the subject the poison message was published on.
pub const HEADER_SUBJECT: &str = "Fechatter-Original-Subject";
/// Header holding the decoding error.
pub const HEADER_ERROR: &str = "Fechatter-Error";
/// Header holding the error's short reason (`invalid_protobuf`, …).
pub const HEADER_REASON: &str = "Fechatter-Error-Reason";
/// Header holding how many times the message had been delivered.
pub const HEADER_DELIVERED: &str = "Fechatter-Delivery-Count";
/// Header holding the original stream sequence.
pub const HEADER_SEQUENCE: &str = "Fechatter-Stream-Sequence";
/// Header present when the copy holds only the start of the payload: the payload's full size in bytes.
pub const HEADER_ORIGINAL_SIZE: &str = "Fechatter-Original-Size";
/// Header of a message `redrive` re-published from the dead-letter stream: which dead letter it came from
/// (`<stream>/<stored at, ns>/<sequence>`). Events without an `event_id` take their ids from it, so that every copy
/// of one dead letter stores its events under the same ids.
pub const HEADER_REDRIVE_OF: &str = "Fechatter-Redrive-Of";

/// Room left for the headers when a payload is cut to fit: more than the six headers take with a long error.
const HEADER_ROOM: usize = 2048;

/// Logs a poison message (one warning each: every one is an event some publisher got wrong).
pub(crate) fn log_poison(message: &Incoming, reason: &str, error: &str) {
    tracing::warn!(
        subject = %message.subject,
        sequence = message.stream_sequence,
        delivered = message.delivered,
        reason,
        error,
        "poison message"
    );
}

/// Publishes dead letters.
pub struct DeadLetters {
    js: Context,
    client: async_nats::Client,
    subject: String,
    stream: String,
}

/// The copy was not acknowledged by JetStream.
#[derive(Debug, thiserror::Error)]
#[error("failed to dead-letter message {sequence} from {subject}")]
pub struct DeadLetterError {
    subject: String,
    sequence: u64,
    #[source]
    source: async_nats::Error,
}

impl DeadLetters {
    /// Dead letters go to `subject`; `stream` is the source stream, used in the dedup id.
    pub fn new(js: Context, subject: String, stream: String) -> Self {
        let client = js.client();
        Self {
            js,
            client,
            subject,
            stream,
        }
    }

    /// The NATS connection dead letters go through (also used to terminate the originals).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Copies `message` with `reason` and `error` and waits for JetStream's acknowledgement.
    pub async fn send(&self, message: &Incoming, reason: &str, error: &str) -> Result<(), DeadLetterError> {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_SUBJECT, message.subject.as_str());
        headers.insert(HEADER_ERROR, error);
        headers.insert(HEADER_REASON, reason);
        headers.insert(HEADER_DELIVERED, message.delivered.to_string().as_str());
        headers.insert(HEADER_SEQUENCE, message.stream_sequence.to_string().as_str());
        // The same poison message dead-lettered twice (its Term was lost) is stored once; its publication time
        // keeps it apart from another message of the same sequence in a re-created stream.
        let id = format!(
            "dlq-{}-{}-{}",
            self.stream, message.stream_sequence, message.published_ns
        );
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        // A message near NATS's `max_payload` leaves no room for the headers: its copy would be refused on every
        // redelivery, forever. Such a copy keeps the start of the payload and says how long it was.
        let mut payload = message.payload.clone();
        let fits = self.client.server_info().max_payload.saturating_sub(HEADER_ROOM);
        if payload.len() > fits {
            headers.insert(HEADER_ORIGINAL_SIZE, payload.len().to_string().as_str());
            payload.truncate(fits);
        }
        let err = |source: async_nats::Error| DeadLetterError {
            subject: message.subject.clone(),
            sequence: message.stream_sequence,
            source,
        };
        let ack = self
            .js
            .publish_with_headers(self.subject.clone(), headers, payload)
            .await
            .map_err(|e| err(e.into()))?;
        ack.await.map_err(|e| err(e.into()))?;
        Ok(())
    }
}

/// Dead-letters poison messages in background tasks, at most `max_in_flight` at a time (then [`submit`] waits,
/// which is the backpressure). Each task logs the message, copies it, then terminates the original and counts
/// it.
///
/// [`submit`]: DeadLetterWorkers::submit
pub struct DeadLetterWorkers {
    /// Shared by the tasks, rather than cloned for each (a JetStream context, a client and two strings): the
    /// pipeline submits poison on its own serial path.
    letters: Arc<DeadLetters>,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    tasks: JoinSet<()>,
    /// Re-creates the dead-letter stream when copies fail, see [`DeadLetterWorkers::restoring`].
    restore: Option<Arc<Restore>>,
}

/// What a failed copy needs to re-create the dead-letter stream, and when that was last tried.
struct Restore {
    settings: Arc<Settings>,
    last: Mutex<Option<Instant>>,
}

/// Shortest time between two attempts to re-create the dead-letter stream after failed copies.
const RESTORE_EVERY: Duration = Duration::from_secs(5);

impl Restore {
    /// Re-creates the dead-letter stream if it is missing, at most every [`RESTORE_EVERY`] across all tasks.
    async fn after_failed_copy(&self, js: &Context) {
        {
            let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < RESTORE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        match ensure_dead_letter_stream(js, &self.settings).await {
            Ok(StreamAction::Created) => tracing::warn!(
                stream = self.settings.jetstream.dead_letter_stream,
                "dead-letter stream was missing and is created again"
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %chain(&err), "dead-letter stream could not be checked"),
        }
    }
}

impl DeadLetterWorkers {
    /// Workers sending through `letters`.
    pub fn new(letters: DeadLetters, metrics: Arc<Metrics>, max_in_flight: usize) -> Self {
        Self {
            letters: Arc::new(letters),
            metrics,
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            tasks: JoinSet::new(),
            restore: None,
        }
    }

    /// After a failed copy, re-creates the dead-letter stream of `settings` when it is missing (an operator
    /// deleted it while the service ran). Without that, every poison message would fail its copy, stay
    /// unacknowledged and come back after each ack wait, for good: the check at start-up, and after the source's
    /// own failures, never runs again, since pulling from the main stream still works.
    pub fn restoring(mut self, settings: Arc<Settings>) -> Self {
        self.restore = Some(Arc::new(Restore {
            settings,
            last: Mutex::new(None),
        }));
        self
    }

    /// Hands `message` over to be dead-lettered with `reason` and `error`.
    pub async fn submit(&mut self, message: Incoming, reason: &'static str, error: String) {
        // Finished tasks are reaped here, so the set holds at most the ones in flight.
        while self.tasks.try_join_next().is_some() {}
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            // The semaphore is never closed; if it were, the message stays unacknowledged and is redelivered.
            return;
        };
        let letters = self.letters.clone();
        let metrics = self.metrics.clone();
        let restore = self.restore.clone();
        self.tasks.spawn(async move {
            let _permit = permit;
            log_poison(&message, reason, &error);
            match letters.send(&message, reason, &error).await {
                Ok(()) => {
                    if let Err(e) = message.ack.send(letters.client(), AckKind::Term).await {
                        // The copy is stored; a redelivery will be dead-lettered again and deduplicated.
                        tracing::warn!(error = %e, "failed to terminate a dead-lettered message");
                    }
                    metrics.dead_lettered.inc();
                }
                Err(e) => {
                    metrics.fail("dead_letter");
                    tracing::error!(error = %chain(&e), "dead-lettering failed; the message will be redelivered");
                    if let Some(restore) = restore {
                        restore.after_failed_copy(&letters.js).await;
                    }
                }
            }
        });
    }

    /// Waits for every copy in flight (at shutdown, so that the originals are terminated before exit).
    pub async fn drain(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}
