//! `fechatter_server`: the Fechatter chat API on PostgreSQL. Every user action also becomes an analytics
//! event, written to a transactional outbox and relayed to NATS JetStream ([`analytics`]).
//!
//! [`startup`] wires it together; [`http`] holds one module per resource; [`auth`] signs and checks tokens.

pub mod analytics;
pub mod auth;
pub mod chat;
pub mod config;
pub mod error;
pub mod http;
pub mod live;
pub mod metrics;
pub mod seed;
pub mod startup;
pub mod state;

pub use fechatter_service::error_chain;
