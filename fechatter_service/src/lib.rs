//! What every Fechatter service binary shares: layered configuration with errors that name the key
//! ([`config`]), logging set-up ([`telemetry`]) and signal-driven shutdown ([`shutdown`]).

pub mod config;
pub mod shutdown;
pub mod telemetry;

pub use config::{ConfigError, load};
