//! `analytics_server`: consumes Fechatter analytics events from NATS JetStream and stores each exactly once,
//! as seen by queries, in ClickHouse; also accepts events from client apps over HTTP.
//!
//! Flow: [`source`] pulls messages → [`pipeline`] decodes ([`decode`]), dead-letters poison ([`dead_letter`])
//! and batches ([`batcher`]) rows ([`row`]) → [`handoff`] → [`sink`] inserts into ClickHouse and only then acknowledges.
//! [`startup`] wires it together with the HTTP API ([`http`]); [`schema`] owns the ClickHouse tables.

pub mod batcher;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod handoff;
pub mod http;
pub mod jetstream;
pub mod metrics;
pub mod pipeline;
pub mod row;
pub mod schema;
pub mod sink;
pub mod source;
pub mod startup;
