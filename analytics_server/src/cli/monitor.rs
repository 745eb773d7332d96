//! `analytics_server monitor`: the events on `fechatter.analytics.>` as they are published, decoded.
//!
//! `nats sub` prints protobuf bytes; this prints one line per event with its subject, type, user, server time
//! and every field as canonical proto3 JSON (or one JSON object per line with `--json`, for `jq`). It is a
//! plain core NATS subscription: it sees what is published while it runs, takes nothing from the stream and
//! acknowledges nothing, so it never disturbs the ingester.

use crate::config::Settings;
use crate::decode::{DecodedEvent, Limits, decode};
use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use fechatter_protos::ALL_TYPE_NAMES;
use futures::StreamExt as _;
use serde_json::json;

/// Options of `monitor`.
#[derive(Debug, Clone, Args)]
pub struct MonitorArgs {
    /// Only these event types (e.g. `user_login`; repeat or separate with commas).
    #[arg(long = "type", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only events of this user id.
    #[arg(long)]
    pub user: Option<String>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Exit after this many matching events.
    #[arg(long)]
    pub count: Option<usize>,
    /// Subject to watch (default: `integrations.messaging.subjects.analytics_events`).
    #[arg(long)]
    pub subject: Option<String>,
}

/// Which events to print.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    types: Vec<String>,
    user: Option<String>,
}

impl EventFilter {
    /// A filter on types (each must be a known type name) and user.
    pub fn new(types: Vec<String>, user: Option<String>) -> anyhow::Result<Self> {
        if let Some(unknown) = types.iter().find(|t| !ALL_TYPE_NAMES.contains(&t.as_str())) {
            anyhow::bail!(
                "--type {unknown:?} is not an event type; known types: {}",
                ALL_TYPE_NAMES.join(", ")
            );
        }
        Ok(Self { types, user })
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &DecodedEvent) -> bool {
        let type_ok = self.types.is_empty() || self.types.iter().any(|t| t == event.kind.type_name());
        let user_ok = self
            .user
            .as_deref()
            .is_none_or(|u| event.context.as_ref().is_some_and(|c| c.user_id == u));
        type_ok && user_ok
    }
}

/// The output line for one event.
pub fn format_event(subject: &str, event: &DecodedEvent, as_json: bool) -> String {
    let full = event.to_event();
    let fields = serde_json::to_value(&full).unwrap_or_else(|e| json!({ "unprintable": e.to_string() }));
    let ctx = full.context.unwrap_or_default();
    let time = DateTime::<Utc>::from_timestamp_millis(ctx.server_ts)
        .filter(|_| ctx.server_ts > 0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true));
    if as_json {
        return json!({
            "subject": subject,
            "type": event.kind.type_name(),
            "user_id": ctx.user_id,
            "server_time": time,
            "event": fields,
        })
        .to_string();
    }
    let user = if ctx.user_id.is_empty() {
        "-"
    } else {
        ctx.user_id.as_str()
    };
    format!(
        "{} {subject} {} user={user} {fields}",
        time.as_deref().unwrap_or("(no server_ts)"),
        event.kind.type_name()
    )
}

/// Subscribes and prints until interrupted (or `--count` events).
pub async fn run(settings: &Settings, args: MonitorArgs) -> anyhow::Result<()> {
    let filter = EventFilter::new(args.types, args.user)?;
    let subjects = &settings.integrations.messaging.subjects;
    let subject = args.subject.unwrap_or_else(|| subjects.analytics_events.clone());
    let client = super::connect_nats(settings, "analytics_server monitor").await?;
    let mut subscription = client
        .subscribe(subject.clone())
        .await
        .with_context(|| format!("cannot subscribe to {subject}"))?;
    client.flush().await.context("subscribing")?;
    eprintln!(
        "watching {subject} on {} (ctrl-c to stop)",
        settings.integrations.messaging.nats_url
    );
    let mut printed = 0usize;
    while let Some(message) = subscription.next().await {
        let decoded = decode(
            &message.subject,
            &message.payload,
            &subjects.analytics_batch,
            Limits::from_settings(settings),
        );
        match decoded {
            Ok(events) => {
                for event in events.iter().filter(|e| filter.matches(e)) {
                    println!("{}", format_event(&message.subject, event, args.json));
                    printed += 1;
                    if args.count.is_some_and(|n| printed >= n) {
                        return Ok(());
                    }
                }
            }
            Err(err) => println!(
                "! {} undecodable ({} bytes, {}): {err}",
                message.subject,
                message.payload.len(),
                err.reason()
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fechatter_protos::sample_events;

    fn decoded(n: usize) -> DecodedEvent {
        let event = sample_events().remove(n);
        DecodedEvent {
            context: event.context,
            kind: event.event_type.expect("samples set the oneof"),
        }
    }

    #[test]
    fn unknown_types_are_refused_naming_them() {
        let err = EventFilter::new(vec!["user_logn".into()], None).expect_err("unknown");
        assert!(err.to_string().contains("user_logn"), "{err}");
        assert!(err.to_string().contains("user_login"), "{err}");
    }

    #[test]
    fn filters_on_type_and_user() {
        let login = decoded(2);
        let user = login.context.as_ref().expect("ctx").user_id.clone();
        assert!(EventFilter::default().matches(&login));
        assert!(
            EventFilter::new(vec!["user_login".into()], None)
                .expect("ok")
                .matches(&login)
        );
        assert!(
            !EventFilter::new(vec!["app_start".into()], None)
                .expect("ok")
                .matches(&login)
        );
        assert!(EventFilter::new(vec![], Some(user)).expect("ok").matches(&login));
        assert!(
            !EventFilter::new(vec![], Some("nobody".into()))
                .expect("ok")
                .matches(&login)
        );
    }

    #[test]
    fn a_line_names_subject_type_user_and_fields() {
        let login = decoded(2);
        let ctx = login.context.clone().expect("ctx");
        let line = format_event("fechatter.analytics.user.login", &login, false);
        assert!(line.contains("fechatter.analytics.user.login user_login"), "{line}");
        assert!(line.contains(&format!("user={}", ctx.user_id)), "{line}");
        assert!(line.contains("\"userLogin\""), "{line}");
        let json: serde_json::Value = serde_json::from_str(&format_event("s", &login, true)).expect("json");
        assert_eq!(json["type"], "user_login");
        assert_eq!(json["user_id"], ctx.user_id.as_str());
        assert!(json["event"]["userLogin"].is_object(), "{json}");
    }
}
