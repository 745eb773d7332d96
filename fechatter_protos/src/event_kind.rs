//! Names, NATS subjects and JSON payloads for the kinds of analytics events.
//!
//! Every kind has a *type name* (the `event_type` oneof field name, e.g.
//! `user_login`) and a *subject suffix* (the type name with its first
//! underscore replaced by a dot, e.g. `user.login`). Single events are
//! published on `fechatter.analytics.<suffix>`, batches on
//! [`BATCH_SUBJECT`]. [`EventType::payload_json`] and
//! [`EventType::from_payload_json`] convert the kind-specific message to and
//! from canonical proto3 JSON.

use serde::Deserialize;

use crate::v1::{
    AnalyticsEvent, AppExitEvent, AppStartEvent, BotResponseEvent, ChatCreatedEvent, ChatJoinedEvent, ChatLeftEvent,
    ErrorOccurredEvent, FileDownloadedEvent, FileUploadedEvent, MessageSentEvent, NavigationEvent,
    NotificationReceivedEvent, SearchPerformedEvent, UserLoginEvent, UserLogoutEvent, UserRegisterEvent,
    analytics_event::EventType,
};

/// Prefix of every analytics NATS subject.
pub const SUBJECT_PREFIX: &str = "fechatter.analytics";

/// NATS subject for [`crate::v1::BatchRecordEventsRequest`] batches.
pub const BATCH_SUBJECT: &str = "fechatter.analytics.batch";

/// Why a kind-specific JSON payload could not be turned into an [`EventType`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    /// The type name is not one of [`ALL_TYPE_NAMES`].
    #[error("unknown analytics event type `{0}`")]
    UnknownType(String),
    /// The payload is not valid proto3 JSON for the kind's message.
    #[error("invalid JSON payload for analytics event type `{type_name}`: {message}")]
    InvalidJson {
        /// Type name the payload was parsed as.
        type_name: String,
        /// The JSON parser's error message.
        message: String,
    },
}

/// Parses `json` as the message of kind `type_name`.
fn parse<'a, T: Deserialize<'a>>(type_name: &str, json: &'a str) -> Result<T, KindError> {
    serde_json::from_str(json).map_err(|err| KindError::InvalidJson {
        type_name: type_name.to_owned(),
        message: err.to_string(),
    })
}

/// Generates the per-kind tables from one list, so they cannot drift apart.
macro_rules! event_kinds {
    ($($variant:ident($message:ty) => $name:literal, $suffix:literal;)+) => {
        /// Every type name, in field-number order (`app_start` = 10 … `bot_response` = 25).
        pub const ALL_TYPE_NAMES: [&str; 16] = [$($name),+];

        /// Every subject suffix (`user.login`), in the same order as [`ALL_TYPE_NAMES`].
        pub const ALL_SUBJECT_SUFFIXES: [&str; 16] = [$($suffix),+];

        /// Maps a subject suffix (`user.login`) back to its type name (`user_login`).
        fn type_name_for_suffix(suffix: &str) -> Option<&'static str> {
            match suffix {
                $($suffix => Some($name),)+
                _ => None,
            }
        }

        impl EventType {
            /// The oneof field name of this kind, e.g. `"user_login"`.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $name,)+
                }
            }

            /// The type name with its first underscore replaced by a dot, e.g. `"user.login"`.
            pub fn subject_suffix(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $suffix,)+
                }
            }

            /// Canonical proto3 JSON of the kind-specific message, e.g.
            /// `{"email":"a@b","loginMethod":"password"}`.
            pub fn payload_json(&self) -> String {
                let json = match self {
                    $(Self::$variant(message) => serde_json::to_string(message),)+
                };
                // The generated impls only write strings, numbers, bools and enum
                // names to string-keyed objects; they fail only on an enum value
                // the schema does not know.
                json.unwrap_or_else(|_| self.payload_json_with_unknown_enum_values())
            }

            /// Parses a payload produced by [`Self::payload_json`] for `type_name`.
            pub fn from_payload_json(type_name: &str, json: &str) -> Result<Self, KindError> {
                match type_name {
                    $($name => parse::<$message>(type_name, json).map(Self::$variant),)+
                    _ => Err(KindError::UnknownType(type_name.to_owned())),
                }
                .or_else(|err| Self::with_unknown_enum_values(type_name, json).ok_or(err))
            }
        }
    };
}

event_kinds! {
    AppStart(AppStartEvent) => "app_start", "app.start";
    AppExit(AppExitEvent) => "app_exit", "app.exit";
    UserLogin(UserLoginEvent) => "user_login", "user.login";
    UserLogout(UserLogoutEvent) => "user_logout", "user.logout";
    UserRegister(UserRegisterEvent) => "user_register", "user.register";
    ChatCreated(ChatCreatedEvent) => "chat_created", "chat.created";
    MessageSent(MessageSentEvent) => "message_sent", "message.sent";
    ChatJoined(ChatJoinedEvent) => "chat_joined", "chat.joined";
    ChatLeft(ChatLeftEvent) => "chat_left", "chat.left";
    Navigation(NavigationEvent) => "navigation", "navigation";
    FileUploaded(FileUploadedEvent) => "file_uploaded", "file.uploaded";
    FileDownloaded(FileDownloadedEvent) => "file_downloaded", "file.downloaded";
    SearchPerformed(SearchPerformedEvent) => "search_performed", "search.performed";
    NotificationReceived(NotificationReceivedEvent) => "notification_received", "notification.received";
    ErrorOccurred(ErrorOccurredEvent) => "error_occurred", "error.occurred";
    BotResponse(BotResponseEvent) => "bot_response", "bot.response";
}

impl EventType {
    /// The NATS subject for this kind, e.g. `"fechatter.analytics.user.login"`.
    pub fn subject(&self) -> String {
        format!("{SUBJECT_PREFIX}.{}", self.subject_suffix())
    }

    /// The payload JSON of a kind holding an enum value the schema does not know (a newer client's exit code):
    /// proto3 JSON writes such a value as its number, which the generated serializer refuses to do. The exit code
    /// is the contract's only enum field.
    fn payload_json_with_unknown_enum_values(&self) -> String {
        match self {
            Self::AppExit(exit) => serde_json::json!({ "exitCode": exit.exit_code }).to_string(),
            _ => String::from("{}"),
        }
    }

    /// Reads what [`Self::payload_json_with_unknown_enum_values`] writes, which the generated parser refuses.
    fn with_unknown_enum_values(type_name: &str, json: &str) -> Option<Self> {
        if type_name != "app_exit" {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(json).ok()?;
        let fields = value.as_object()?;
        let exit_code = i32::try_from(fields.get("exitCode")?.as_i64()?).ok()?;
        (fields.len() == 1).then_some(Self::AppExit(AppExitEvent { exit_code }))
    }
}

/// Every subject a publisher of single events uses, one per kind (`fechatter.analytics.app.start`, …).
pub fn all_subjects() -> Vec<String> {
    ALL_SUBJECT_SUFFIXES
        .iter()
        .map(|suffix| format!("{SUBJECT_PREFIX}.{suffix}"))
        .collect()
}

/// The type name published on `subject`, e.g.
/// `"fechatter.analytics.user.login"` → `Some("user_login")`.
///
/// Returns `None` for [`BATCH_SUBJECT`] and for unknown subjects.
pub fn type_name_from_subject(subject: &str) -> Option<&'static str> {
    let suffix = subject.strip_prefix(SUBJECT_PREFIX)?.strip_prefix('.')?;
    type_name_for_suffix(suffix)
}

impl AnalyticsEvent {
    /// The type name of the event's kind, or `None` if no kind is set.
    pub fn type_name(&self) -> Option<&'static str> {
        self.event_type.as_ref().map(EventType::type_name)
    }

    /// The NATS subject of the event's kind, or `None` if no kind is set.
    pub fn subject(&self) -> Option<String> {
        self.event_type.as_ref().map(EventType::subject)
    }

    /// The publisher-assigned dedup key; `""` if there is no context.
    pub fn event_id(&self) -> &str {
        self.context.as_ref().map_or("", |context| &context.event_id)
    }

    /// The acting user; `""` if there is no context or the user is anonymous.
    pub fn user_id(&self) -> &str {
        self.context.as_ref().map_or("", |context| &context.user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::sample_events;

    fn sample_kinds() -> Vec<EventType> {
        sample_events()
            .into_iter()
            .filter_map(|event| event.event_type)
            .collect()
    }

    #[test]
    fn all_subjects_are_the_subjects_of_every_kind() {
        let from_kinds: Vec<String> = sample_kinds().iter().map(EventType::subject).collect();
        assert_eq!(all_subjects(), from_kinds);
    }

    #[test]
    fn samples_cover_every_kind_in_field_number_order() {
        let names: Vec<_> = sample_kinds().iter().map(EventType::type_name).collect();
        assert_eq!(names, ALL_TYPE_NAMES);
    }

    #[test]
    fn subject_suffix_replaces_the_first_underscore() {
        for kind in sample_kinds() {
            assert_eq!(kind.subject_suffix(), kind.type_name().replacen('_', ".", 1));
        }
    }

    #[test]
    fn subjects_live_under_the_analytics_prefix() {
        let kinds = sample_kinds();
        let subjects: Vec<_> = kinds.iter().map(EventType::subject).collect();
        assert_eq!(subjects[0], "fechatter.analytics.app.start");
        assert_eq!(subjects[2], "fechatter.analytics.user.login");
        assert_eq!(subjects[9], "fechatter.analytics.navigation");
        assert_eq!(subjects[13], "fechatter.analytics.notification.received");
        assert!(!subjects.iter().any(|subject| subject == BATCH_SUBJECT));
    }

    #[test]
    fn subjects_map_back_to_their_type_names() {
        for kind in sample_kinds() {
            assert_eq!(type_name_from_subject(&kind.subject()), Some(kind.type_name()));
        }
    }

    #[test]
    fn batch_and_unknown_subjects_have_no_type_name() {
        for subject in [
            BATCH_SUBJECT,
            SUBJECT_PREFIX,
            "fechatter.analytics.",
            "fechatter.analytics.user_login",
            "fechatter.analytics.user.unknown",
            "fechatter.analyticsx.user.login",
            "other.user.login",
            "user.login",
            "",
        ] {
            assert_eq!(type_name_from_subject(subject), None, "{subject}");
        }
    }

    #[test]
    fn payload_json_is_the_canonical_json_of_the_kind_message() {
        let kind = EventType::UserLogin(UserLoginEvent {
            email: "a@b".into(),
            login_method: "password".into(),
        });
        assert_eq!(kind.payload_json(), r#"{"email":"a@b","loginMethod":"password"}"#);
        assert_eq!(EventType::AppStart(AppStartEvent {}).payload_json(), "{}");
    }

    #[test]
    fn every_kind_round_trips_through_its_payload_json() {
        for kind in sample_kinds() {
            let parsed = EventType::from_payload_json(kind.type_name(), &kind.payload_json());
            assert_eq!(parsed, Ok(kind));
        }
    }

    #[test]
    fn an_enum_value_the_schema_does_not_know_is_kept_as_its_number() {
        let kind = EventType::AppExit(AppExitEvent { exit_code: 7 });
        assert_eq!(kind.payload_json(), r#"{"exitCode":7}"#);
        assert_eq!(EventType::from_payload_json("app_exit", &kind.payload_json()), Ok(kind));
        let known = EventType::AppExit(AppExitEvent { exit_code: 3 });
        assert_eq!(known.payload_json(), r#"{"exitCode":"EXIT_CODE_CRASH"}"#);
        assert!(EventType::from_payload_json("app_exit", r#"{"exitCode":"x"}"#).is_err());
    }

    #[test]
    fn unknown_type_names_are_rejected() {
        assert_eq!(
            EventType::from_payload_json("user.login", "{}"),
            Err(KindError::UnknownType("user.login".into()))
        );
    }

    #[test]
    fn malformed_payloads_report_the_type_name() {
        for json in ["", "[]", r#"{"email":1}"#, r#"{"nope":"x"}"#] {
            let err = EventType::from_payload_json("user_login", json).expect_err("payload should be rejected");
            assert!(
                matches!(&err, KindError::InvalidJson { type_name, .. } if type_name == "user_login"),
                "{json}: {err}"
            );
        }
    }

    #[test]
    fn event_accessors_read_the_context_and_kind() {
        let event = &sample_events()[2];
        assert_eq!(event.type_name(), Some("user_login"));
        assert_eq!(event.subject().as_deref(), Some("fechatter.analytics.user.login"));
        assert_eq!(event.event_id(), "00000000-0000-4000-8000-000000000012");
        assert!(!event.user_id().is_empty());

        let empty = AnalyticsEvent::default();
        assert_eq!(empty.type_name(), None);
        assert_eq!(empty.subject(), None);
        assert_eq!(empty.event_id(), "");
        assert_eq!(empty.user_id(), "");
    }
}
