//! Prometheus metrics of the chat API, served as text at `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route pattern (`/api/chats/{id}`), never the raw path, to keep cardinality bounded.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Response status.
    pub status: u16,
}

/// Label of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The matched route pattern.
    pub route: String,
}

/// Every metric of the service.
pub struct Metrics {
    registry: Registry,
    /// Requests by route, method and status.
    pub requests: Family<RouteLabels, Counter>,
    /// Request latency by route.
    pub latency: Family<RouteLabel, Histogram>,
    /// Analytics events written to the outbox.
    pub events_written: Counter,
    /// Best-effort analytics events given up (see `Analytics::record_detached`).
    pub events_dropped: Counter,
    /// Analytics events acknowledged by JetStream.
    pub events_published: Counter,
    /// Analytics publish attempts that failed (the event stays in the outbox).
    pub publish_failures: Counter,
    /// Rows waiting in the outbox, counted by a scrape at most every 5 s (see `http::health`).
    pub outbox_depth: Gauge,
    /// When `outbox_depth` was last counted; held while a scrape counts.
    pub outbox_depth_counted: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Messages written per send statement (see `chat::send_queue`).
    pub send_batch_size: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fechatter");
        let latency = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let m = Self {
            requests: Family::default(),
            latency,
            events_written: Counter::default(),
            events_dropped: Counter::default(),
            events_published: Counter::default(),
            publish_failures: Counter::default(),
            outbox_depth: Gauge::default(),
            outbox_depth_counted: tokio::sync::Mutex::new(None),
            send_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 7)),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            m.latency.clone(),
        );
        registry.register(
            "analytics_events_written",
            "Analytics events written to the outbox",
            m.events_written.clone(),
        );
        registry.register(
            "analytics_events_dropped",
            "Best-effort analytics events (error_occurred) given up: too many being written, or no connection",
            m.events_dropped.clone(),
        );
        registry.register(
            "analytics_events_published",
            "Analytics events acknowledged by JetStream",
            m.events_published.clone(),
        );
        registry.register(
            "analytics_publish_failures",
            "Analytics publish attempts that failed (the event stays in the outbox)",
            m.publish_failures.clone(),
        );
        registry.register(
            "analytics_outbox_depth",
            "Analytics events waiting in the outbox",
            m.outbox_depth.clone(),
        );
        registry.register(
            "message_send_batch_size",
            "Messages written together by one send statement",
            m.send_batch_size.clone(),
        );
        Self { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
