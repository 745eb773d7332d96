//! Analytics events of the chat API: [`event`] builds them with a full context, [`publisher`] sends them to
//! JetStream, acknowledged and deduplicated by `event_id`.

pub mod event;
pub mod publisher;

pub use event::{RequestContext, build_event};
pub use publisher::{AnalyticsPublisher, PublishError, PublishOutcome, PublisherSettings};
