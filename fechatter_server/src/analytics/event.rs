//! Building analytics events: the kind comes from the action, the context from the request that caused it.

use fechatter_protos::v1::analytics_event::EventType;
use fechatter_protos::v1::{AnalyticsEvent, EventContext};
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// Who did something, and from where: the facts a request handler knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The acting user's id.
    pub user_id: String,
    /// The acting user's workspace id.
    pub workspace_id: String,
    /// Client install id, from the `X-Client-Id` header when sent.
    pub client_id: String,
    /// Client session id, from the `X-Session-Id` header when sent.
    pub session_id: String,
    /// Caller's IP address.
    pub ip: String,
    /// Caller's `User-Agent`.
    pub user_agent: String,
    /// Version of the server (or of the client, when it says so).
    pub app_version: String,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An event of `kind` with a fresh UUIDv7 `event_id` (time-ordered, the dedup key everywhere downstream),
/// `server_ts` now, and the request's context.
pub fn build_event(kind: EventType, request: &RequestContext) -> AnalyticsEvent {
    AnalyticsEvent {
        context: Some(EventContext {
            event_id: Uuid::now_v7().to_string(),
            server_ts: now_ms(),
            user_id: request.user_id.clone(),
            workspace_id: request.workspace_id.clone(),
            client_id: request.client_id.clone(),
            session_id: request.session_id.clone(),
            ip: request.ip.clone(),
            user_agent: request.user_agent.clone(),
            app_version: request.app_version.clone(),
            ..Default::default()
        }),
        event_type: Some(kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fechatter_protos::v1::UserLoginEvent;

    #[test]
    fn built_events_carry_a_fresh_time_ordered_id_and_the_request_context() {
        let request = RequestContext {
            user_id: "42".into(),
            workspace_id: "7".into(),
            ip: "10.1.2.3".into(),
            ..Default::default()
        };
        let kind = EventType::UserLogin(UserLoginEvent {
            email: "super@none.org".into(),
            login_method: "password".into(),
        });
        let a = build_event(kind.clone(), &request);
        let b = build_event(kind, &request);
        let (ca, cb) = (a.context.as_ref().expect("ctx"), b.context.as_ref().expect("ctx"));
        assert_ne!(ca.event_id, cb.event_id);
        assert_eq!(Uuid::parse_str(&ca.event_id).expect("uuid").get_version_num(), 7);
        assert!(ca.event_id < cb.event_id, "v7 ids sort by time");
        assert_eq!(
            (ca.user_id.as_str(), ca.workspace_id.as_str(), ca.ip.as_str()),
            ("42", "7", "10.1.2.3")
        );
        assert!(ca.server_ts > 1_700_000_000_000);
        assert_eq!(a.subject().as_deref(), Some("fechatter.analytics.user.login"));
    }
}
