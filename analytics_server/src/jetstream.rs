//! Makes sure the JetStream objects the ingester relies on exist: the `ANALYTICS` stream, the dead-letter
//! stream and the durable pull consumer.
//!
//! The stream is created when missing and widened when it exists with narrower settings (subjects, retention,
//! duplicate window, limits on its bytes or messages, which would drop events not yet stored); it is never
//! narrowed and never deleted, since other publishers' data may live in it.
//! Every action is logged.

use crate::config::{Settings, subject_matches};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, Context};
use std::time::Duration;

/// A JetStream administration step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("failed to look up stream {stream}")]
    Lookup {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("failed to create stream {stream}")]
    Create {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("failed to widen stream {stream}")]
    Update {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("failed to create or update consumer {consumer} on {stream}")]
    Consumer {
        stream: String,
        consumer: String,
        #[source]
        source: async_nats::Error,
    },
    #[error(
        "consumer {consumer} on {stream} acknowledges with policy {found}; the ingester needs explicit acks \
         (JetStream cannot change it: delete the consumer and it is re-created)"
    )]
    AckPolicy {
        stream: String,
        consumer: String,
        found: String,
    },
}

/// What [`ensure_stream`] did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAction {
    /// The stream did not exist and was created.
    Created,
    /// The stream existed and was widened; the strings say how.
    Widened(Vec<String>),
    /// The stream already covered everything.
    Unchanged,
}

/// The stream configuration wanted for `settings`.
fn wanted(settings: &Settings) -> stream::Config {
    let js = &settings.jetstream;
    stream::Config {
        name: js.stream.clone(),
        subjects: vec![settings.integrations.messaging.subjects.analytics_events.clone()],
        storage: StorageType::File,
        max_age: Duration::from_secs(js.max_age_days * 86_400),
        duplicate_window: Duration::from_secs(js.duplicate_window_seconds),
        ..Default::default()
    }
}

/// Computes how `current` must change to cover `want` without narrowing anything. Pure, for unit tests.
pub fn widen(current: &stream::Config, want: &stream::Config) -> (stream::Config, Vec<String>) {
    let mut next = current.clone();
    let mut changes = Vec::new();
    for subject in &want.subjects {
        if !current.subjects.iter().any(|have| subject_matches(have, subject)) {
            // Drop existing subjects the new pattern covers: JetStream refuses overlapping subjects.
            next.subjects.retain(|have| !subject_matches(subject, have));
            next.subjects.push(subject.clone());
            changes.push(format!("subjects {:?} -> {:?}", current.subjects, next.subjects));
        }
    }
    // A max_age of zero means "forever": only a finite, shorter one is widened.
    if !current.max_age.is_zero() && current.max_age < want.max_age {
        next.max_age = want.max_age;
        changes.push(format!("max_age {:?} -> {:?}", current.max_age, want.max_age));
    }
    if current.duplicate_window < want.duplicate_window {
        next.duplicate_window = want.duplicate_window;
        changes.push(format!(
            "duplicate_window {:?} -> {:?}",
            current.duplicate_window, want.duplicate_window
        ));
    }
    // Limits on bytes or messages drop the oldest messages when reached (or refuse new ones), whether or not they
    // are stored in ClickHouse yet: a long ClickHouse outage would lose accepted events. The stream is bounded by
    // its age alone.
    let limits = [
        ("max_bytes", current.max_bytes, &mut next.max_bytes),
        ("max_messages", current.max_messages, &mut next.max_messages),
        (
            "max_messages_per_subject",
            current.max_messages_per_subject,
            &mut next.max_messages_per_subject,
        ),
    ];
    for (name, have, set) in limits {
        if have > 0 {
            *set = -1;
            changes.push(format!("{name} {have} -> unlimited"));
        }
    }
    // A cap on one message's size refuses, for good, any larger event or batch that HTTP ingest accepted, and
    // the client is told to retry (503): only this service's own limits (`jetstream.max_message_bytes`, checked
    // before publishing) and the server's `max_payload` bound a message.
    if current.max_message_size > 0 {
        next.max_message_size = -1;
        changes.push(format!("max_message_size {} -> unlimited", current.max_message_size));
    }
    (next, changes)
}

/// Creates the stream named by `jetstream.stream`, or widens it.
pub async fn ensure_stream(js: &Context, settings: &Settings) -> Result<StreamAction, SetupError> {
    let want = wanted(settings);
    ensure(js, want).await
}

/// Creates the stream named by `jetstream.stream` when it is missing; leaves one that exists as it is. For
/// core-NATS mode, where this service reads no stream and so has no say in the limits an operator gave it.
pub async fn create_stream_if_missing(js: &Context, settings: &Settings) -> Result<StreamAction, SetupError> {
    let want = wanted(settings);
    match js.get_stream(&want.name).await {
        Ok(_) => Ok(StreamAction::Unchanged),
        Err(err) if is_stream_not_found(&err.kind()) => create(js, want).await,
        Err(err) => Err(SetupError::Lookup {
            stream: want.name,
            source: err.into(),
        }),
    }
}

/// Creates the dead-letter stream when missing (it is ours alone, so it is never widened).
pub async fn ensure_dead_letter_stream(js: &Context, settings: &Settings) -> Result<StreamAction, SetupError> {
    let cfg = &settings.jetstream;
    let want = stream::Config {
        name: cfg.dead_letter_stream.clone(),
        subjects: vec![cfg.dead_letter_subject.clone()],
        storage: StorageType::File,
        max_age: Duration::from_secs(cfg.max_age_days * 86_400),
        duplicate_window: Duration::from_secs(cfg.duplicate_window_seconds),
        ..Default::default()
    };
    ensure(js, want).await
}

async fn ensure(js: &Context, want: stream::Config) -> Result<StreamAction, SetupError> {
    let name = want.name.clone();
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(|e| SetupError::Lookup {
                stream: name.clone(),
                source: e.into(),
            })?;
            if info.config.storage != StorageType::File {
                tracing::warn!(stream = %name, "stream uses memory storage: events are lost if NATS restarts");
            }
            let (next, changes) = widen(&info.config, &want);
            if changes.is_empty() {
                tracing::info!(stream = %name, subjects = ?info.config.subjects, "JetStream stream present");
                return Ok(StreamAction::Unchanged);
            }
            js.update_stream(&next).await.map_err(|e| SetupError::Update {
                stream: name.clone(),
                source: e.into(),
            })?;
            tracing::info!(stream = %name, ?changes, "widened JetStream stream");
            Ok(StreamAction::Widened(changes))
        }
        Err(err) if is_stream_not_found(&err.kind()) => create(js, want).await,
        Err(err) => Err(SetupError::Lookup {
            stream: name,
            source: err.into(),
        }),
    }
}

async fn create(js: &Context, want: stream::Config) -> Result<StreamAction, SetupError> {
    js.create_stream(want.clone()).await.map_err(|e| SetupError::Create {
        stream: want.name.clone(),
        source: e.into(),
    })?;
    tracing::info!(stream = %want.name, subjects = ?want.subjects, max_age = ?want.max_age, "created JetStream stream");
    Ok(StreamAction::Created)
}

fn is_stream_not_found(kind: &jetstream::context::GetStreamErrorKind) -> bool {
    matches!(kind, jetstream::context::GetStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// The durable consumer's configuration for `settings`.
pub fn consumer_config(settings: &Settings) -> pull::Config {
    let js = &settings.jetstream;
    pull::Config {
        durable_name: Some(js.consumer.clone()),
        name: Some(js.consumer.clone()),
        description: Some("analytics_server: JetStream -> ClickHouse".into()),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: Duration::from_secs(js.ack_wait_seconds),
        max_ack_pending: i64::try_from(js.max_ack_pending).unwrap_or(i64::MAX),
        // Never give a message up: poison is dead-lettered and terminated explicitly instead.
        max_deliver: -1,
        filter_subject: settings.integrations.messaging.subjects.analytics_events.clone(),
        ..Default::default()
    }
}

/// Makes everything the ingester consumes through exist: the stream, the dead-letter stream and the durable
/// consumer. Run at start-up, and again by the source whenever pulling fails, so that a stream deleted by an
/// operator (or lost with a NATS server's storage) is re-created and consumption resumes without a restart.
pub async fn ensure_all(
    js: &Context,
    settings: &Settings,
) -> Result<jetstream::consumer::Consumer<pull::Config>, SetupError> {
    ensure_stream(js, settings).await?;
    ensure_dead_letter_stream(js, settings).await?;
    ensure_consumer(js, settings).await
}

/// Creates the durable pull consumer, or updates it to the configured limits.
pub async fn ensure_consumer(
    js: &Context,
    settings: &Settings,
) -> Result<jetstream::consumer::Consumer<pull::Config>, SetupError> {
    let names = &settings.jetstream;
    let err = |source: async_nats::Error| SetupError::Consumer {
        stream: names.stream.clone(),
        consumer: names.consumer.clone(),
        source,
    };
    let stream = js.get_stream(&names.stream).await.map_err(|e| err(e.into()))?;
    let config = consumer_config(settings);
    match stream.get_consumer::<pull::Config>(&names.consumer).await {
        Ok(existing) => {
            let have = &existing.cached_info().config;
            // A consumer left by an operator or an older deployment: with other than explicit acks, messages in
            // flight are gone once delivered; with a delivery limit, a message failing that often is given up.
            if have.ack_policy != AckPolicy::Explicit {
                return Err(SetupError::AckPolicy {
                    stream: names.stream.clone(),
                    consumer: names.consumer.clone(),
                    found: format!("{:?}", have.ack_policy),
                });
            }
            if have.max_ack_pending != config.max_ack_pending
                || have.ack_wait != config.ack_wait
                || have.filter_subject != config.filter_subject
                || have.max_deliver > 0
            {
                tracing::info!(consumer = %names.consumer, "updating consumer limits");
                return stream.update_consumer(config).await.map_err(|e| err(e.into()));
            }
            Ok(existing)
        }
        Err(_) => {
            let consumer = stream
                .get_or_create_consumer(&names.consumer, config)
                .await
                .map_err(|e| err(e.into()))?;
            tracing::info!(consumer = %names.consumer, stream = %names.stream, "durable consumer ready");
            Ok(consumer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(subjects: &[&str], max_age_days: u64, dup_secs: u64) -> stream::Config {
        stream::Config {
            name: "ANALYTICS".into(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            max_age: Duration::from_secs(max_age_days * 86_400),
            duplicate_window: Duration::from_secs(dup_secs),
            ..Default::default()
        }
    }

    #[test]
    fn a_narrow_stream_is_widened_to_the_wildcard() {
        let (next, changes) = widen(
            &cfg(&["fechatter.analytics.events", "other.subject"], 30, 120),
            &cfg(&["fechatter.analytics.>"], 30, 120),
        );
        assert_eq!(next.subjects, vec!["other.subject", "fechatter.analytics.>"]);
        assert_eq!(changes.len(), 1);
    }

    #[test]
    fn a_wider_stream_is_never_narrowed() {
        let current = cfg(&["fechatter.>"], 90, 600);
        let (next, changes) = widen(&current, &cfg(&["fechatter.analytics.>"], 30, 120));
        assert!(changes.is_empty());
        assert_eq!(next.subjects, current.subjects);
        assert_eq!(next.max_age, current.max_age);
        assert_eq!(next.duplicate_window, current.duplicate_window);
    }

    #[test]
    fn shorter_retention_and_dedup_window_are_raised() {
        let (next, changes) = widen(
            &cfg(&["fechatter.analytics.>"], 1, 30),
            &cfg(&["fechatter.analytics.>"], 30, 120),
        );
        assert_eq!(next.max_age, Duration::from_secs(30 * 86_400));
        assert_eq!(next.duplicate_window, Duration::from_secs(120));
        assert_eq!(changes.len(), 2);
    }

    #[test]
    fn limits_that_would_drop_unstored_events_are_lifted() {
        let current = stream::Config {
            max_bytes: 1 << 30,
            max_messages: 1_000,
            max_messages_per_subject: 10,
            max_message_size: 64 * 1024,
            ..cfg(&["fechatter.analytics.>"], 30, 120)
        };
        let (next, changes) = widen(&current, &cfg(&["fechatter.analytics.>"], 30, 120));
        assert_eq!(
            (
                next.max_bytes,
                next.max_messages,
                next.max_messages_per_subject,
                next.max_message_size
            ),
            (-1, -1, -1, -1)
        );
        assert_eq!(changes.len(), 4, "{changes:?}");
        let unlimited = stream::Config {
            max_bytes: -1,
            max_messages: -1,
            max_messages_per_subject: -1,
            max_message_size: -1,
            ..cfg(&["fechatter.analytics.>"], 30, 120)
        };
        assert!(widen(&unlimited, &unlimited).1.is_empty());
    }

    #[test]
    fn unlimited_retention_stays_unlimited() {
        let (next, _) = widen(
            &cfg(&["fechatter.analytics.>"], 0, 120),
            &cfg(&["fechatter.analytics.>"], 30, 120),
        );
        assert!(next.max_age.is_zero());
    }
}
