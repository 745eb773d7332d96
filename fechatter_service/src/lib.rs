//! What every Fechatter service binary shares: layered configuration with errors that name the key
//! ([`config`]), error cause chains for logs ([`error`]), logging set-up ([`telemetry`]), signal-driven shutdown
//! ([`shutdown`]), per-client rate limiting ([`rate_limit`]) by the client's address behind trusted reverse
//! proxies ([`client_addr`]), the NATS reconnection pace ([`reconnect`]) and HTTP fallbacks and connection
//! handling ([`http`]).

pub mod client_addr;
pub mod config;
pub mod error;
pub mod http;
pub mod rate_limit;
pub mod reconnect;
pub mod shutdown;
pub mod telemetry;

pub use config::{ConfigError, load};
pub use error::chain as error_chain;
