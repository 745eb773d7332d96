//! `analytics_server check-publisher`: do the publisher (`fechatter_server`) and this service agree?
//!
//! The failure the seed document was written about: the publisher sent `fechatter.analytics.user.login` while
//! the subscriber listened to `fechatter.analytics.events` only. This compares the publisher's own account of
//! its settings (`fechatter_server analytics-config`) with this service's configuration.

use crate::config::{Settings, uncovered};
use serde::Deserialize;

/// What `fechatter_server analytics-config` prints.
#[derive(Debug, Clone, Deserialize)]
pub struct PublisherSettings {
    /// `features.messaging.enabled` of the publisher.
    pub messaging_enabled: bool,
    /// The NATS server it publishes to.
    pub nats_url: String,
    /// Every subject it publishes on.
    pub subjects: Vec<String>,
}

/// The verdict: one ✅/❌/⚠️ line per check, and whether all passed.
#[derive(Debug, Clone)]
pub struct Report {
    /// Human-readable lines.
    pub lines: Vec<String>,
    /// False if any check failed (warnings do not fail).
    pub ok: bool,
}

impl Report {
    fn check(&mut self, passed: bool, good: String, bad: String) {
        self.ok &= passed;
        self.lines.push(if passed {
            format!("✅ {good}")
        } else {
            format!("❌ {bad}")
        });
    }

    fn warn(&mut self, message: String) {
        self.lines.push(format!("⚠️ {message}"));
    }
}

/// Compares `publisher` with `settings`.
pub fn check_publisher(settings: &Settings, publisher: &PublisherSettings) -> Report {
    let mut report = Report {
        lines: Vec::new(),
        ok: true,
    };
    let messaging = &settings.integrations.messaging;
    report.check(
        publisher.messaging_enabled,
        "fechatter_server publishes analytics (features.messaging.enabled: true)".into(),
        "fechatter_server publishes nothing: set features.messaging.enabled: true \
         (FECHATTER__FEATURES__MESSAGING__ENABLED=true)"
            .into(),
    );
    report.check(
        messaging.enabled,
        "analytics_server consumes (integrations.messaging.enabled: true)".into(),
        "analytics_server consumes nothing: set integrations.messaging.enabled: true \
         (ANALYTICS__INTEGRATIONS__MESSAGING__ENABLED=true)"
            .into(),
    );
    if !messaging.jetstream_enabled {
        report.warn(
            "integrations.messaging.jetstream_enabled is false: events published while analytics_server is \
             down are lost (core NATS is at-most-once)"
                .into(),
        );
    }
    if same_server(&publisher.nats_url, &messaging.nats_url) {
        report.check(true, format!("both use NATS at {}", messaging.nats_url), String::new());
    } else {
        report.warn(format!(
            "fechatter_server publishes to {} and analytics_server reads {}: make sure they are the same server",
            publisher.nats_url, messaging.nats_url
        ));
    }
    let pattern = &messaging.subjects.analytics_events;
    let uncovered = uncovered(pattern, &publisher.subjects);
    report.check(
        uncovered.is_empty() && !publisher.subjects.is_empty(),
        format!(
            "all {} subjects fechatter_server publishes are covered by analytics_events ({pattern})",
            publisher.subjects.len()
        ),
        format!(
            "not covered by integrations.messaging.subjects.analytics_events ({pattern}): {}; set it to \
             fechatter.analytics.>",
            if uncovered.is_empty() {
                "(no subjects reported)".to_owned()
            } else {
                uncovered.join(", ")
            }
        ),
    );
    report
}

/// Whether two NATS URLs name the same server, forgiving `localhost` versus `127.0.0.1` and a missing scheme.
fn same_server(a: &str, b: &str) -> bool {
    let normal = |url: &str| {
        url.trim_start_matches("nats://")
            .trim_end_matches('/')
            .replace("localhost", "127.0.0.1")
    };
    normal(a) == normal(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pattern: &str) -> Settings {
        let var = (
            "ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__ANALYTICS_EVENTS".to_owned(),
            pattern.to_owned(),
        );
        // The compatibility patterns must stay inside analytics_events; point them at it.
        let vars = [
            var,
            (
                "ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__ANALYTICS_BATCH".into(),
                // A subject to publish to, inside the pattern.
                pattern.replace(['>', '*'], "batch"),
            ),
            (
                "ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__USER_EVENTS".into(),
                pattern.into(),
            ),
            (
                "ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__CHAT_EVENTS".into(),
                pattern.into(),
            ),
            (
                "ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__MESSAGE_EVENTS".into(),
                pattern.into(),
            ),
            (
                "ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__BOT_EVENTS".into(),
                pattern.into(),
            ),
            (
                "ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__ERROR_EVENTS".into(),
                pattern.into(),
            ),
        ];
        Settings::load(None, vars).expect("valid settings")
    }

    fn publisher(enabled: bool) -> PublisherSettings {
        PublisherSettings {
            messaging_enabled: enabled,
            nats_url: "nats://127.0.0.1:4222".into(),
            subjects: fechatter_protos::all_subjects(),
        }
    }

    #[test]
    fn the_shipped_configurations_agree() {
        let report = check_publisher(&settings("fechatter.analytics.>"), &publisher(true));
        assert!(report.ok, "{:#?}", report.lines);
        assert!(
            report.lines.iter().any(|l| l.contains("both use NATS")),
            "{:#?}",
            report.lines
        );
    }

    #[test]
    fn the_seed_documents_bug_is_caught_naming_the_subjects() {
        let report = check_publisher(&settings("fechatter.analytics.events"), &publisher(true));
        assert!(!report.ok);
        let bad = report
            .lines
            .iter()
            .find(|l| l.starts_with('❌'))
            .expect("a failure line");
        assert!(bad.contains("fechatter.analytics.user.login"), "{bad}");
    }

    #[test]
    fn a_publisher_with_messaging_off_fails() {
        let report = check_publisher(&settings("fechatter.analytics.>"), &publisher(false));
        assert!(!report.ok);
        assert!(
            report
                .lines
                .iter()
                .any(|l| l.contains("FECHATTER__FEATURES__MESSAGING__ENABLED"))
        );
    }

    #[test]
    fn localhost_and_loopback_are_the_same_server() {
        assert!(same_server("nats://localhost:4222", "nats://127.0.0.1:4222"));
        assert!(!same_server("nats://nats:4222", "nats://127.0.0.1:4222"));
    }
}
