//! Prometheus metrics of the ingester, served as text at `GET /metrics`.
//!
//! Names carry units (`_seconds`, `_rows`) and counters end in `_total`, as Prometheus expects.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of [`Metrics::failed`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `too_large`, `invalid_protobuf`, `missing_event_type`, `empty_batch`, `insert`, `dead_letter`, `ack`.
    pub reason: String,
}

/// Every metric of the service; cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// Messages received from NATS.
    pub messages_received: Counter,
    /// Events decoded from received messages.
    pub events_received: Counter,
    /// Rows inserted into ClickHouse (copies of redelivered events included).
    pub events_inserted: Counter,
    /// Failures by reason (poison classes, failed inserts, failed dead-lettering).
    pub failed: Family<ReasonLabel, Counter>,
    /// Messages copied to the dead-letter stream and terminated.
    pub dead_lettered: Counter,
    /// INSERT attempts that failed and will be retried.
    pub insert_retries: Counter,
    /// Rows per flushed batch.
    pub batch_rows: Histogram,
    /// Duration of successful INSERTs.
    pub insert_seconds: Histogram,
    /// From the event's `server_ts` to its INSERT succeeding.
    pub end_to_end_seconds: Histogram,
    /// Messages the consumer has not been delivered yet, as last read from JetStream.
    pub consumer_pending: Gauge,
    /// Messages delivered and not acknowledged yet, as last read from JetStream.
    pub consumer_ack_pending: Gauge,
    /// Messages redelivered at least once, as last read from JetStream.
    pub consumer_redelivered: Gauge,
    /// Events accepted by the HTTP API (published and acknowledged by JetStream).
    pub http_events_accepted: Counter,
    /// HTTP requests refused, by reason.
    pub http_rejected: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("analytics");
        let m = Self {
            messages_received: Counter::default(),
            events_received: Counter::default(),
            events_inserted: Counter::default(),
            failed: Family::default(),
            dead_lettered: Counter::default(),
            insert_retries: Counter::default(),
            batch_rows: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            insert_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            end_to_end_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 18)),
            consumer_pending: Gauge::default(),
            consumer_ack_pending: Gauge::default(),
            consumer_redelivered: Gauge::default(),
            http_events_accepted: Counter::default(),
            http_rejected: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_received",
            "Messages received from NATS",
            m.messages_received.clone(),
        );
        registry.register(
            "events_received",
            "Events decoded from received messages",
            m.events_received.clone(),
        );
        registry.register(
            "events_inserted",
            "Rows inserted into ClickHouse",
            m.events_inserted.clone(),
        );
        registry.register("events_failed", "Failures by reason", m.failed.clone());
        registry.register(
            "events_dead_lettered",
            "Messages dead-lettered and terminated",
            m.dead_lettered.clone(),
        );
        registry.register(
            "insert_retries",
            "Failed INSERT attempts that are retried",
            m.insert_retries.clone(),
        );
        registry.register("batch_rows", "Rows per flushed batch", m.batch_rows.clone());
        registry.register(
            "insert_duration_seconds",
            "Duration of successful INSERTs",
            m.insert_seconds.clone(),
        );
        registry.register(
            "end_to_end_latency_seconds",
            "From the event's server_ts to its INSERT succeeding",
            m.end_to_end_seconds.clone(),
        );
        registry.register(
            "consumer_pending",
            "Messages not yet delivered to the consumer",
            m.consumer_pending.clone(),
        );
        registry.register(
            "consumer_ack_pending",
            "Messages delivered and not yet acknowledged",
            m.consumer_ack_pending.clone(),
        );
        registry.register(
            "consumer_redelivered",
            "Messages redelivered at least once",
            m.consumer_redelivered.clone(),
        );
        registry.register(
            "http_events_accepted",
            "Events accepted by the HTTP API",
            m.http_events_accepted.clone(),
        );
        registry.register(
            "http_rejected",
            "HTTP ingest requests refused, by reason",
            m.http_rejected.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts one failure of `reason`.
    pub fn fail(&self, reason: &str) {
        self.failed
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one refused HTTP request.
    pub fn reject(&self, reason: &str) {
        self.http_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_shows_counters_with_their_labels() {
        let m = Metrics::new();
        m.events_inserted.inc_by(3);
        m.fail("invalid_protobuf");
        let text = m.render();
        assert!(text.contains("analytics_events_inserted_total 3"), "{text}");
        assert!(
            text.contains("analytics_events_failed_total{reason=\"invalid_protobuf\"} 1"),
            "{text}"
        );
        assert!(text.contains("analytics_end_to_end_latency_seconds_bucket"), "{text}");
    }
}
