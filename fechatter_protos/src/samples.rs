//! Test fixtures: one fully populated [`AnalyticsEvent`] of every kind.
//!
//! Meant for round-trip tests here and in other crates (protobuf, JSON,
//! NATS, storage). Every field holds a distinctive non-default value, so a
//! dropped or swapped field shows up as a mismatch.

use crate::v1::{
    AnalyticsEvent, AppExitEvent, AppStartEvent, BotResponseEvent, ChatCreatedEvent, ChatJoinedEvent, ChatLeftEvent,
    ErrorOccurredEvent, EventContext, ExitCode, FileDownloadedEvent, FileUploadedEvent, GeoLocation, MessageSentEvent,
    NavigationEvent, NotificationReceivedEvent, SearchPerformedEvent, SystemInfo, UserLoginEvent, UserLogoutEvent,
    UserRegisterEvent, analytics_event::EventType,
};

/// 2^53 + 1: loses precision if a JSON codec treats 64-bit integers as doubles.
const LARGE: i64 = 9_007_199_254_740_993;

/// One event of every kind, in field-number order ([`crate::ALL_TYPE_NAMES`]).
///
/// Each event's context is fully set (including `system` and `geo`); its
/// `event_id` is `00000000-0000-4000-8000-0000000000NN` where `NN` is the
/// kind's oneof field number (10–25), and its timestamps are distinct,
/// realistic epoch milliseconds. 64-bit payload fields use values above 2^53.
pub fn sample_events() -> Vec<AnalyticsEvent> {
    let kinds = [
        EventType::AppStart(AppStartEvent {}),
        EventType::AppExit(AppExitEvent {
            exit_code: ExitCode::Crash.into(),
        }),
        EventType::UserLogin(UserLoginEvent {
            email: "login@acme.test".into(),
            login_method: "password".into(),
        }),
        EventType::UserLogout(UserLogoutEvent {
            email: "logout@acme.test".into(),
        }),
        EventType::UserRegister(UserRegisterEvent {
            email: "register@acme.test".into(),
            workspace_id: "7".into(),
            registration_method: "invite_link".into(),
        }),
        EventType::ChatCreated(ChatCreatedEvent {
            workspace_id: "8".into(),
            chat_type: "private_channel".into(),
            initial_members_count: 5,
        }),
        EventType::MessageSent(MessageSentEvent {
            chat_id: "101".into(),
            r#type: "text".into(),
            size: 2_048,
            total_files: 3,
            has_mentions: true,
            has_links: true,
        }),
        EventType::ChatJoined(ChatJoinedEvent {
            chat_id: "102".into(),
            join_method: "invitation".into(),
        }),
        EventType::ChatLeft(ChatLeftEvent {
            chat_id: "103".into(),
            leave_reason: "kicked".into(),
        }),
        EventType::Navigation(NavigationEvent {
            from: "/chat/101".into(),
            to: "/settings/profile".into(),
            duration_ms: 12_345,
        }),
        EventType::FileUploaded(FileUploadedEvent {
            file_type: "image/png".into(),
            file_size: LARGE,
            upload_method: "drag_drop".into(),
            upload_duration_ms: 1_500,
        }),
        EventType::FileDownloaded(FileDownloadedEvent {
            file_type: "application/pdf".into(),
            file_size: LARGE + 2,
            download_duration_ms: 750,
        }),
        EventType::SearchPerformed(SearchPerformedEvent {
            search_type: "messages".into(),
            query_length: "17".into(),
            results_count: 42,
            search_duration_ms: 88,
            has_filters: true,
        }),
        EventType::NotificationReceived(NotificationReceivedEvent {
            notification_type: "mention".into(),
            source: "chat:101".into(),
            was_clicked: true,
        }),
        EventType::ErrorOccurred(ErrorOccurredEvent {
            error_type: "NetworkError".into(),
            error_code: "E_TIMEOUT".into(),
            error_message: "request timed out after 30s".into(),
            stack_trace: "at fetch (api.ts:12:5)\nat send (chat.ts:40:9)".into(),
            context: "message_send".into(),
        }),
        EventType::BotResponse(BotResponseEvent {
            bot_id: "bot-assistant".into(),
            chat_id: "104".into(),
            response_type: "summary".into(),
            response_time_ms: LARGE as u64 + 4,
            tokens_used: 4_000_000_000,
            success: true,
            error_message: "partial: context truncated".into(),
        }),
    ];
    kinds
        .into_iter()
        .zip(10_i64..)
        .map(|(kind, field_number)| AnalyticsEvent {
            context: Some(context(field_number)),
            event_type: Some(kind),
        })
        .collect()
}

/// A fully populated context, made distinct by the kind's field number `n`.
fn context(n: i64) -> EventContext {
    let client_ts = 1_700_000_000_000 + n * 1_000;
    EventContext {
        client_id: format!("client-{n}"),
        session_id: format!("session-{n}"),
        user_id: (1_000 + n).to_string(),
        app_version: "1.2.3-beta.4".into(),
        client_ts,
        server_ts: client_ts + 250,
        user_agent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) Fechatter/1.2.3".into(),
        ip: format!("203.0.113.{n}"),
        system: Some(SystemInfo {
            os: "macos".into(),
            arch: "aarch64".into(),
            locale: "en-US".into(),
            timezone: "America/Los_Angeles".into(),
            browser: "safari".into(),
            browser_version: "17.1".into(),
        }),
        geo: Some(GeoLocation {
            country: "US".into(),
            region: "California".into(),
            city: "San Francisco".into(),
        }),
        event_id: format!("00000000-0000-4000-8000-{n:012}"),
        workspace_id: (2_000 + n).to_string(),
    }
}
