//! Typed settings of `analytics_server`, loaded from `analytics.yml` and `ANALYTICS__…` environment variables.
//!
//! The shipped `analytics.yml` is compiled in as the defaults, so a deployment's file only needs the keys it
//! changes. [`Settings::validate`] checks the relations between keys once, at start-up, naming the key at fault.

use fechatter_service::ConfigError;
use fechatter_service::client_addr::TrustedProxies;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// The shipped configuration file, which doubles as the defaults.
pub const DEFAULTS: &str = include_str!("../analytics.yml");
/// Prefix of the environment variables that override keys.
pub const ENV_PREFIX: &str = "ANALYTICS";
/// Environment variable naming the configuration file.
pub const CONFIG_PATH_VAR: &str = "ANALYTICS_CONFIG";
/// Shortest accepted `flush_interval_seconds`: a millisecond.
const MIN_FLUSH_INTERVAL_SECONDS: f64 = 0.001;

/// Everything `analytics_server` can be configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The HTTP API.
    pub server: ServerSettings,
    /// Connections to other systems (the seed document's `integrations` section).
    pub integrations: Integrations,
    /// JetStream stream, consumer and dead-letter settings.
    pub jetstream: JetStreamSettings,
    /// Where events are stored.
    pub clickhouse: ClickHouseSettings,
    /// Rows that make a batch due for its INSERT; a due batch keeps growing while the previous INSERT runs, and
    /// while a backlog waits behind it (see `batcher::FlushPolicy`).
    pub batch_size: usize,
    /// Longest time, in seconds (fractions allowed, e.g. 0.5), a row waits in a partial batch before it is
    /// flushed (the last batch of a backlog of `batch_size` messages or more goes as soon as it has drained).
    pub flush_interval_seconds: f64,
}

/// The HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to bind.
    pub host: String,
    /// Port to bind (0 picks a free one, for tests).
    pub port: u16,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most events accepted in one `POST /api/batch`, and in one message on the batch subject (more are
    /// dead-lettered as `too_many_events`: they would be rows past the pipeline's memory ceiling).
    pub max_batch_events: usize,
    /// Ingest requests accepted per minute from one client address (bursts up to the same number); 429 above.
    pub ingest_rate_limit_per_minute: u32,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
}

/// External systems.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Integrations {
    /// NATS.
    pub messaging: MessagingSettings,
}

/// NATS connection and subjects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingSettings {
    /// false: consume nothing (the HTTP ingest answers 503).
    pub enabled: bool,
    /// NATS server URL.
    pub nats_url: String,
    /// true: durable JetStream consumer (exactly once); false: core NATS subscription (at most once).
    pub jetstream_enabled: bool,
    /// Subject patterns.
    pub subjects: Subjects,
}

/// Subject patterns from the seed document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subjects {
    /// The pattern consumed and captured by the stream (`fechatter.analytics.>`).
    pub analytics_events: String,
    /// The subject carrying `BatchRecordEventsRequest`s.
    pub analytics_batch: String,
    /// Compatibility pattern for user events; must be covered by `analytics_events`.
    pub user_events: String,
    /// Compatibility pattern for chat events; must be covered by `analytics_events`.
    pub chat_events: String,
    /// Compatibility pattern for message events; must be covered by `analytics_events`.
    pub message_events: String,
    /// Compatibility pattern for bot events; must be covered by `analytics_events`.
    pub bot_events: String,
    /// Compatibility pattern for error events; must be covered by `analytics_events`.
    pub error_events: String,
}

/// JetStream stream, consumer and dead-letter settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamSettings {
    /// Stream name.
    pub stream: String,
    /// Stream retention in days.
    pub max_age_days: u64,
    /// JetStream duplicate window in seconds (at least 120).
    pub duplicate_window_seconds: u64,
    /// Durable consumer name.
    pub consumer: String,
    /// Unacknowledged messages the consumer may hold (at least 3 x batch_size).
    pub max_ack_pending: usize,
    /// Seconds before an unacknowledged message is redelivered.
    pub ack_wait_seconds: u64,
    /// Messages per pull request.
    pub pull_batch: usize,
    /// Dead-letter stream name.
    pub dead_letter_stream: String,
    /// Dead-letter subject (outside `analytics_events`).
    pub dead_letter_subject: String,
    /// Largest message accepted from the stream, in bytes.
    pub max_message_bytes: usize,
}

/// ClickHouse connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseSettings {
    /// HTTP URL of the server.
    pub url: String,
    /// Database holding the tables (created at start-up).
    pub database: String,
    /// User name.
    pub user: String,
    /// Password (never logged).
    pub password: String,
    /// Timeout of one INSERT, in seconds.
    pub insert_timeout_seconds: u64,
    /// Cap of the backoff between INSERT retries, in seconds.
    pub max_retry_backoff_seconds: u64,
    /// Compression of INSERT bodies.
    pub compression: InsertCompression,
}

/// How INSERT bodies travel to ClickHouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InsertCompression {
    /// LZ4 (a third of the bytes on the wire; costs CPU on both ends).
    Lz4,
    /// Uncompressed: no compression work on either end, more bytes for ClickHouse to read.
    None,
}

impl From<InsertCompression> for clickhouse::Compression {
    fn from(value: InsertCompression) -> Self {
        match value {
            InsertCompression::Lz4 => Self::Lz4,
            InsertCompression::None => Self::None,
        }
    }
}

impl ClickHouseSettings {
    /// A client for the server (no database selected; `.with_database(&self.database)` for the tables).
    pub fn client(&self) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_password(&self.password)
            .with_compression(self.compression.into())
            // Validation needs RowBinaryWithNamesAndTypes, which ClickHouse 18.16 lacks; the round-trip tests
            // guard the row layout instead.
            .with_validation(false)
    }
}

impl Settings {
    /// Loads the defaults, the file named by `ANALYTICS_CONFIG` (if set) and the environment, then validates.
    pub fn from_env() -> Result<Self, ConfigError> {
        let path = std::env::var_os(CONFIG_PATH_VAR).map(std::path::PathBuf::from);
        Self::load(path.as_deref(), std::env::vars())
    }

    /// Loads the defaults, `path` and the overrides in `vars`, then validates.
    pub fn load(path: Option<&Path>, vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let settings: Self = fechatter_service::load(DEFAULTS, path, ENV_PREFIX, vars)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the relations between keys that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Validation {
                key: key.to_owned(),
                message,
            })
        };
        let subjects = &self.integrations.messaging.subjects;
        if self.batch_size == 0 {
            return invalid("batch_size", "must be at least 1".into());
        }
        if self.flush_interval_seconds.is_nan() || self.flush_interval_seconds < MIN_FLUSH_INTERVAL_SECONDS {
            return invalid(
                "flush_interval_seconds",
                format!(
                    "must be at least {MIN_FLUSH_INTERVAL_SECONDS} s, not {}",
                    self.flush_interval_seconds
                ),
            );
        }
        // The rows of a partial batch are unacknowledged while they wait: JetStream would redeliver them first.
        if self.flush_interval_seconds >= self.jetstream.ack_wait_seconds as f64 {
            return invalid(
                "flush_interval_seconds",
                format!(
                    "must be shorter than jetstream.ack_wait_seconds ({} s), not {} s: JetStream would redeliver \
                     the rows of a partial batch while they wait",
                    self.jetstream.ack_wait_seconds, self.flush_interval_seconds
                ),
            );
        }
        if self.server.max_batch_events == 0 {
            return invalid("server.max_batch_events", "must be at least 1".into());
        }
        if self.server.ingest_rate_limit_per_minute == 0 {
            return invalid("server.ingest_rate_limit_per_minute", "must be at least 1".into());
        }
        let js = &self.jetstream;
        // Held at once: the batch being inserted, the one before it while its acks go out, the one being built,
        // and what the source has pulled but the pipeline has not yet taken (the channel and the pull in flight).
        let needed = self
            .batch_size
            .saturating_mul(3)
            .saturating_add(js.pull_batch.saturating_mul(2));
        if js.max_ack_pending < needed {
            return invalid(
                "jetstream.max_ack_pending",
                format!(
                    "{} cannot hold the batch being built, the one being inserted, the one being acknowledged and \
                     two pulls (needs at least 3 x batch_size + 2 x jetstream.pull_batch = {needed})",
                    js.max_ack_pending,
                ),
            );
        }
        if js.max_ack_pending > MAX_ACK_PENDING {
            return invalid(
                "jetstream.max_ack_pending",
                format!(
                    "must be at most {MAX_ACK_PENDING}, not {}: the ingester holds up to this many events in memory",
                    js.max_ack_pending
                ),
            );
        }
        if js.duplicate_window_seconds < 120 {
            return invalid("jetstream.duplicate_window_seconds", "must be at least 120".into());
        }
        if js.ack_wait_seconds < 5 {
            return invalid("jetstream.ack_wait_seconds", "must be at least 5".into());
        }
        if js.pull_batch == 0 {
            return invalid("jetstream.pull_batch", "must be at least 1".into());
        }
        if js.max_age_days == 0 || js.max_age_days > MAX_AGE_DAYS {
            return invalid(
                "jetstream.max_age_days",
                format!("must be from 1 to {MAX_AGE_DAYS}, not {}", js.max_age_days),
            );
        }
        if js.duplicate_window_seconds > js.max_age_days.saturating_mul(86_400) {
            // JetStream refuses such a stream; said here, by key, instead of after a minute of start-up retries.
            return invalid(
                "jetstream.duplicate_window_seconds",
                format!(
                    "{} s is longer than the stream keeps messages (jetstream.max_age_days {})",
                    js.duplicate_window_seconds, js.max_age_days
                ),
            );
        }
        // Below these, every message would be poison or every request refused, or retries would spin.
        let floors = [
            ("jetstream.max_message_bytes", js.max_message_bytes, MIN_MESSAGE_BYTES),
            ("server.max_body_bytes", self.server.max_body_bytes, MIN_MESSAGE_BYTES),
            (
                "clickhouse.insert_timeout_seconds",
                usize::try_from(self.clickhouse.insert_timeout_seconds).unwrap_or(usize::MAX),
                1,
            ),
            (
                "clickhouse.max_retry_backoff_seconds",
                usize::try_from(self.clickhouse.max_retry_backoff_seconds).unwrap_or(usize::MAX),
                1,
            ),
        ];
        for (key, value, floor) in floors {
            if value < floor {
                return invalid(key, format!("must be at least {floor}, not {value}"));
            }
        }
        for (key, name) in [
            ("jetstream.stream", &js.stream),
            ("jetstream.consumer", &js.consumer),
            ("jetstream.dead_letter_stream", &js.dead_letter_stream),
        ] {
            if !is_jetstream_name(name) {
                return invalid(
                    key,
                    format!("{name:?} is not a JetStream name (letters, digits, `-` and `_`)"),
                );
            }
        }
        if !is_literal_subject(&js.dead_letter_subject) {
            return invalid(
                "jetstream.dead_letter_subject",
                format!(
                    "{:?} is not a subject to publish to (dot-separated tokens, no wildcards or spaces)",
                    js.dead_letter_subject
                ),
            );
        }
        if js.stream == js.dead_letter_stream {
            return invalid(
                "jetstream.dead_letter_stream",
                "must differ from jetstream.stream".into(),
            );
        }
        if subject_matches(&subjects.analytics_events, &js.dead_letter_subject) {
            return invalid(
                "jetstream.dead_letter_subject",
                format!("must not be inside {}", subjects.analytics_events),
            );
        }
        let covered = [
            (
                "integrations.messaging.subjects.analytics_batch",
                &subjects.analytics_batch,
            ),
            ("integrations.messaging.subjects.user_events", &subjects.user_events),
            ("integrations.messaging.subjects.chat_events", &subjects.chat_events),
            (
                "integrations.messaging.subjects.message_events",
                &subjects.message_events,
            ),
            ("integrations.messaging.subjects.bot_events", &subjects.bot_events),
            ("integrations.messaging.subjects.error_events", &subjects.error_events),
        ];
        if !is_literal_subject(&subjects.analytics_batch) {
            // POST /api/batch publishes to it, and the ingester tells batch messages by it.
            return invalid(
                "integrations.messaging.subjects.analytics_batch",
                format!(
                    "{:?} is not a subject to publish to (dot-separated tokens, no wildcards or spaces)",
                    subjects.analytics_batch
                ),
            );
        }
        for (key, pattern) in covered {
            if !subject_matches(&subjects.analytics_events, pattern) {
                return invalid(
                    key,
                    format!(
                        "{pattern} is not covered by analytics_events ({})",
                        subjects.analytics_events
                    ),
                );
            }
        }
        if !self
            .clickhouse
            .database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || self.clickhouse.database.is_empty()
        {
            return invalid(
                "clickhouse.database",
                "must be a plain identifier ([A-Za-z0-9_])".into(),
            );
        }
        Ok(())
    }

    /// How often messages held unacknowledged (a batch waiting for the sink, an INSERT running or retried) are
    /// signalled as in progress: a third of the consumer's ack wait, so two signals can be lost before JetStream
    /// redelivers.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.jetstream.ack_wait_seconds) / 3
    }

    /// The flush interval as a duration (its range is checked when the settings are loaded).
    pub fn flush_interval(&self) -> Duration {
        Duration::try_from_secs_f64(self.flush_interval_seconds).unwrap_or(Duration::from_secs(1))
    }
}

/// Longest stream retention accepted, in days (a hundred years: beyond it the retention is a mistake).
const MAX_AGE_DAYS: u64 = 36_500;

/// Most unacknowledged messages the consumer may hold. The ingester holds about as many events as rows in memory
/// (two batches of up to half of it, some 1 KB each), so this bounds its memory at about 1 GB.
const MAX_ACK_PENDING: usize = 1_000_000;

/// Smallest message and request body limit accepted: an event with its context takes a few hundred bytes.
const MIN_MESSAGE_BYTES: usize = 1024;

/// A stream or consumer name JetStream accepts, kept to the characters every tool handles.
fn is_jetstream_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A subject one can publish to: non-empty tokens, no wildcards, no whitespace.
fn is_literal_subject(subject: &str) -> bool {
    subject
        .split('.')
        .all(|token| !token.is_empty() && token != "*" && token != ">" && !token.contains(char::is_whitespace))
}

/// The subjects among `subjects` that `pattern` does not match, in their order.
pub fn uncovered<'a>(pattern: &str, subjects: &'a [String]) -> Vec<&'a str> {
    subjects
        .iter()
        .filter(|subject| !subject_matches(pattern, subject))
        .map(String::as_str)
        .collect()
}

/// True when every subject matched by `candidate` (a subject or pattern) is matched by `pattern`.
///
/// NATS wildcards: `*` matches one token, `>` (last) one or more.
pub fn subject_matches(pattern: &str, candidate: &str) -> bool {
    let mut p = pattern.split('.');
    let mut c = candidate.split('.');
    loop {
        match (p.next(), c.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(token)) if token != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn shipped_file_is_valid_and_matches_the_seed() {
        let s = Settings::load(None, vars(&[])).expect("shipped config is valid");
        assert_eq!(s.server.port, 6690);
        assert_eq!(s.batch_size, 100);
        assert_eq!(s.flush_interval(), Duration::from_secs(30));
        assert_eq!(s.jetstream.stream, "ANALYTICS");
        assert_eq!(
            s.integrations.messaging.subjects.analytics_events,
            "fechatter.analytics.>"
        );
        assert!(s.integrations.messaging.enabled && s.integrations.messaging.jetstream_enabled);
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let s = Settings::load(
            None,
            vars(&[
                ("ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL", "nats://nats:4222"),
                ("ANALYTICS__BATCH_SIZE", "500"),
                ("ANALYTICS__CLICKHOUSE__PASSWORD", "0042"),
            ]),
        )
        .expect("valid");
        assert_eq!(s.integrations.messaging.nats_url, "nats://nats:4222");
        assert_eq!(s.batch_size, 500);
        assert_eq!(s.clickhouse.password, "0042");
    }

    #[test]
    fn unknown_key_stops_start_up_naming_it() {
        let err = Settings::load(None, vars(&[("ANALYTICS__CLICKHOUSE__URI", "x")])).expect_err("unknown");
        assert!(err.to_string().contains("clickhouse.uri"), "{err}");
    }

    #[test]
    fn the_flush_interval_may_be_fractional_and_is_refused_by_name_out_of_range() {
        let s = Settings::load(None, vars(&[("ANALYTICS__FLUSH_INTERVAL_SECONDS", "0.25")])).expect("fractional");
        assert_eq!(s.flush_interval(), Duration::from_millis(250));
        for bad in ["0", "-1", "NaN", "60", "600"] {
            let err = Settings::load(None, vars(&[("ANALYTICS__FLUSH_INTERVAL_SECONDS", bad)])).expect_err(bad);
            assert!(err.to_string().contains("flush_interval_seconds"), "{bad}: {err}");
        }
    }

    #[test]
    fn too_small_max_ack_pending_is_refused_by_name() {
        let err = Settings::load(None, vars(&[("ANALYTICS__BATCH_SIZE", "10000")])).expect_err("too small");
        assert!(err.to_string().contains("jetstream.max_ack_pending"), "{err}");
    }

    #[test]
    fn values_that_would_stop_every_message_or_spin_are_refused_by_name() {
        for (var, value, key) in [
            (
                "ANALYTICS__JETSTREAM__MAX_MESSAGE_BYTES",
                "0",
                "jetstream.max_message_bytes",
            ),
            ("ANALYTICS__SERVER__MAX_BODY_BYTES", "10", "server.max_body_bytes"),
            (
                "ANALYTICS__CLICKHOUSE__INSERT_TIMEOUT_SECONDS",
                "0",
                "clickhouse.insert_timeout_seconds",
            ),
            (
                "ANALYTICS__CLICKHOUSE__MAX_RETRY_BACKOFF_SECONDS",
                "0",
                "clickhouse.max_retry_backoff_seconds",
            ),
            (
                "ANALYTICS__JETSTREAM__MAX_AGE_DAYS",
                "999999999999",
                "jetstream.max_age_days",
            ),
            ("ANALYTICS__JETSTREAM__STREAM", "", "jetstream.stream"),
            ("ANALYTICS__JETSTREAM__CONSUMER", "my consumer", "jetstream.consumer"),
            (
                "ANALYTICS__JETSTREAM__DEAD_LETTER_STREAM",
                "DLQ.x",
                "jetstream.dead_letter_stream",
            ),
            (
                "ANALYTICS__JETSTREAM__DEAD_LETTER_SUBJECT",
                "fechatter.deadletter.*",
                "jetstream.dead_letter_subject",
            ),
            (
                "ANALYTICS__JETSTREAM__DEAD_LETTER_SUBJECT",
                "fechatter..dlq",
                "jetstream.dead_letter_subject",
            ),
            (
                "ANALYTICS__BATCH_SIZE",
                "18446744073709551615",
                "jetstream.max_ack_pending",
            ),
            (
                "ANALYTICS__JETSTREAM__MAX_ACK_PENDING",
                "1000001",
                "jetstream.max_ack_pending",
            ),
            (
                "ANALYTICS__JETSTREAM__DUPLICATE_WINDOW_SECONDS",
                "2592001",
                "jetstream.duplicate_window_seconds",
            ),
            (
                "ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__ANALYTICS_BATCH",
                "fechatter.analytics.*",
                "subjects.analytics_batch",
            ),
        ] {
            let err = Settings::load(None, vars(&[(var, value)])).expect_err(value);
            assert!(err.to_string().contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn compatibility_subjects_must_be_covered() {
        let err = Settings::load(
            None,
            vars(&[(
                "ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__ANALYTICS_EVENTS",
                "fechatter.analytics.events",
            )]),
        )
        .expect_err("narrow");
        assert!(err.to_string().contains("analytics_batch"), "{err}");
    }

    #[test]
    fn subject_matching_follows_nats_wildcards() {
        assert!(subject_matches("fechatter.analytics.>", "fechatter.analytics.user.>"));
        assert!(subject_matches("fechatter.analytics.>", "fechatter.analytics.batch"));
        assert!(!subject_matches("fechatter.analytics.>", "fechatter.analytics"));
        assert!(!subject_matches(
            "fechatter.analytics.>",
            "fechatter.deadletter.analytics"
        ));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.>"));
        assert!(subject_matches(">", "anything.at.all"));
    }
}
