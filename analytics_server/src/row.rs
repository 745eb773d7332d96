//! The ClickHouse row an analytics event becomes, and the pure conversions both ways.
//!
//! Context fields get typed columns (they are what queries filter and group on); the kind-specific fields go,
//! complete, into `payload` as the kind message's canonical proto3 JSON, so no field of any kind is dropped and
//! new proto fields need no schema change. [`to_event`] rebuilds the protobuf event from a row, which the
//! round-trip tests use to prove nothing was lost.

use fechatter_protos::KindError;
use fechatter_protos::v1::analytics_event::EventType;
use fechatter_protos::v1::{AnalyticsEvent, EventContext, GeoLocation, SystemInfo};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace of the deterministic ids given to events that arrive without `event_id` (legacy publishers).
const LEGACY_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a4e_93d0_4b7a_8e52_0c1d_f3a9_7b21);

/// One row of `analytics_events`. Field order and types follow the table's DDL in `schema.rs` exactly, since
/// RowBinary carries no column names (the round-trip tests catch a mismatch).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct EventRow {
    /// Dedup key: the publisher's UUID, or a deterministic one from the stream, the publication time and the sequence.
    pub event_id: String,
    /// The oneof's field name, e.g. `user_login`.
    pub event_type: String,
    /// NATS subject the event arrived on.
    pub subject: String,
    /// JetStream stream sequence of the message that carried the event (0 over core NATS or HTTP-less paths).
    pub stream_sequence: u64,
    /// When analytics_server built the row (DateTime, seconds since the epoch).
    pub ingested_at: u32,
    /// Day of `server_ts` (Date, days since the epoch), or of `ingested_at` when `server_ts` is unset.
    pub event_date: u16,
    /// Server time of the event, epoch milliseconds.
    pub server_ts: i64,
    /// Client time of the event, epoch milliseconds.
    pub client_ts: i64,
    /// `context.client_id`.
    pub client_id: String,
    /// `context.session_id`.
    pub session_id: String,
    /// `context.user_id`.
    pub user_id: String,
    /// `context.workspace_id`.
    pub workspace_id: String,
    /// `context.app_version`.
    pub app_version: String,
    /// `context.user_agent`.
    pub user_agent: String,
    /// `context.ip`.
    pub ip: String,
    /// 1 when `context.system` was present.
    pub has_system: u8,
    /// `context.system.os`.
    pub system_os: String,
    /// `context.system.arch`.
    pub system_arch: String,
    /// `context.system.locale`.
    pub system_locale: String,
    /// `context.system.timezone`.
    pub system_timezone: String,
    /// `context.system.browser`.
    pub system_browser: String,
    /// `context.system.browser_version`.
    pub system_browser_version: String,
    /// 1 when `context.geo` was present.
    pub has_geo: u8,
    /// `context.geo.country`.
    pub geo_country: String,
    /// `context.geo.region`.
    pub geo_region: String,
    /// `context.geo.city`.
    pub geo_city: String,
    /// The kind message as canonical proto3 JSON (`{"email":"…","loginMethod":"password"}`).
    pub payload: String,
}

impl EventRow {
    /// About how many bytes the row takes in memory: the struct and its strings. What bounds a batch's memory
    /// ([`crate::batcher`]) when events are large: one may carry up to `jetstream.max_message_bytes`.
    pub fn size(&self) -> usize {
        let strings = [
            &self.event_id,
            &self.event_type,
            &self.subject,
            &self.client_id,
            &self.session_id,
            &self.user_id,
            &self.workspace_id,
            &self.app_version,
            &self.user_agent,
            &self.ip,
            &self.system_os,
            &self.system_arch,
            &self.system_locale,
            &self.system_timezone,
            &self.system_browser,
            &self.system_browser_version,
            &self.geo_country,
            &self.geo_region,
            &self.geo_city,
            &self.payload,
        ];
        std::mem::size_of::<Self>() + strings.iter().map(|s| s.len()).sum::<usize>()
    }
}

/// Where an event came from, for the columns that are not in the event itself.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Subject of the message.
    pub subject: &'a str,
    /// Stream name, used for legacy ids.
    pub stream: &'a str,
    /// Stream sequence of the message (0 when unknown).
    pub stream_sequence: u64,
    /// When JetStream stored the message, nanoseconds since the epoch (0 when unknown).
    pub published_ns: i128,
    /// Position of the event inside a batch message (0 for single events).
    pub index: usize,
    /// Ingest time, seconds since the epoch.
    pub ingested_at: u32,
    /// The dead letter a redrive re-published this message from (its `Fechatter-Redrive-Of` header), if it is
    /// such a re-publication.
    pub redrive_of: Option<&'a str>,
}

/// The id a legacy event without `event_id` gets: the same for every redelivery of the same message, and
/// different for any other message. The stream's sequence alone is not enough: a stream deleted and re-created
/// (by an operator, or with a NATS server's lost storage; the ingester re-creates it) numbers its messages from 1
/// again, and the ReplacingMergeTree would then collapse new events into old ones. The time JetStream stored the
/// message tells them apart.
///
/// A redrive's re-publication is a new message each time it is published: a redrive interrupted between a
/// publication and the dead letter's removal, and run again after JetStream's duplicate window, publishes it twice
/// at two sequences. Its ids therefore come from the dead letter it re-publishes, the same in every copy.
pub fn legacy_event_id(origin: &Origin<'_>) -> String {
    if let Some(dead_letter) = origin.redrive_of {
        let name = format!("redrive/{dead_letter}/{}", origin.index);
        return Uuid::new_v5(&LEGACY_ID_NAMESPACE, name.as_bytes()).to_string();
    }
    if origin.stream_sequence == 0 {
        // Core NATS has no sequence: nothing is redelivered there, so a random id cannot duplicate.
        return Uuid::new_v4().to_string();
    }
    let name = format!(
        "{}/{}/{}/{}",
        origin.stream, origin.published_ns, origin.stream_sequence, origin.index
    );
    Uuid::new_v5(&LEGACY_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// Builds the row for an event from its context and its oneof (which the decoder has checked is set). The
/// context is taken by value so its strings move into the row instead of being copied.
pub fn to_row(context: Option<EventContext>, kind: &EventType, origin: &Origin<'_>) -> EventRow {
    let mut ctx = context.unwrap_or_default();
    let (has_system, sys) = match ctx.system.take() {
        Some(system) => (1, system),
        None => (0, SystemInfo::default()),
    };
    let (has_geo, g) = match ctx.geo.take() {
        Some(geo) => (1, geo),
        None => (0, GeoLocation::default()),
    };
    let event_id = if ctx.event_id.is_empty() {
        legacy_event_id(origin)
    } else {
        ctx.event_id
    };
    let day_of = |ms: i64| u16::try_from(ms.div_euclid(86_400_000)).unwrap_or(0);
    let event_date = if ctx.server_ts > 0 {
        day_of(ctx.server_ts)
    } else {
        day_of(i64::from(origin.ingested_at) * 1000)
    };
    EventRow {
        event_id,
        event_type: kind.type_name().to_owned(),
        subject: origin.subject.to_owned(),
        stream_sequence: origin.stream_sequence,
        ingested_at: origin.ingested_at,
        event_date,
        server_ts: ctx.server_ts,
        client_ts: ctx.client_ts,
        client_id: ctx.client_id,
        session_id: ctx.session_id,
        user_id: ctx.user_id,
        workspace_id: ctx.workspace_id,
        app_version: ctx.app_version,
        user_agent: ctx.user_agent,
        ip: ctx.ip,
        has_system,
        system_os: sys.os,
        system_arch: sys.arch,
        system_locale: sys.locale,
        system_timezone: sys.timezone,
        system_browser: sys.browser,
        system_browser_version: sys.browser_version,
        has_geo,
        geo_country: g.country,
        geo_region: g.region,
        geo_city: g.city,
        payload: kind.payload_json(),
    }
}

/// Rebuilds the protobuf event a row was made from.
pub fn to_event(row: &EventRow) -> Result<AnalyticsEvent, KindError> {
    let kind = EventType::from_payload_json(&row.event_type, &row.payload)?;
    let system = (row.has_system == 1).then(|| SystemInfo {
        os: row.system_os.clone(),
        arch: row.system_arch.clone(),
        locale: row.system_locale.clone(),
        timezone: row.system_timezone.clone(),
        browser: row.system_browser.clone(),
        browser_version: row.system_browser_version.clone(),
    });
    let geo = (row.has_geo == 1).then(|| GeoLocation {
        country: row.geo_country.clone(),
        region: row.geo_region.clone(),
        city: row.geo_city.clone(),
    });
    Ok(AnalyticsEvent {
        context: Some(EventContext {
            client_id: row.client_id.clone(),
            session_id: row.session_id.clone(),
            user_id: row.user_id.clone(),
            app_version: row.app_version.clone(),
            client_ts: row.client_ts,
            server_ts: row.server_ts,
            user_agent: row.user_agent.clone(),
            ip: row.ip.clone(),
            system,
            geo,
            event_id: row.event_id.clone(),
            workspace_id: row.workspace_id.clone(),
        }),
        event_type: Some(kind),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fechatter_protos::sample_events;

    fn origin(seq: u64, index: usize) -> Origin<'static> {
        Origin {
            subject: "fechatter.analytics.user.login",
            stream: "ANALYTICS",
            stream_sequence: seq,
            published_ns: 1_700_000_000_123_456_789,
            index,
            ingested_at: 1_700_000_000,
            redrive_of: None,
        }
    }

    #[test]
    fn every_kind_survives_the_row_round_trip() {
        for event in sample_events() {
            let kind = event.event_type.clone().expect("samples set the oneof");
            let row = to_row(event.context.clone(), &kind, &origin(7, 0));
            assert_eq!(to_event(&row).expect("decodes"), event, "{}", row.event_type);
        }
    }

    #[test]
    fn legacy_events_get_the_same_id_on_every_redelivery() {
        assert_eq!(legacy_event_id(&origin(42, 3)), legacy_event_id(&origin(42, 3)));
        assert_ne!(legacy_event_id(&origin(42, 3)), legacy_event_id(&origin(42, 4)));
        assert_ne!(legacy_event_id(&origin(42, 3)), legacy_event_id(&origin(43, 3)));
    }

    #[test]
    fn every_copy_a_redrive_publishes_of_a_dead_letter_gives_the_same_ids() {
        let copy = |seq, dead_letter| Origin {
            redrive_of: Some(dead_letter),
            ..origin(seq, 3)
        };
        assert_eq!(
            legacy_event_id(&copy(42, "DLQ/1/7")),
            legacy_event_id(&copy(99, "DLQ/1/7"))
        );
        assert_ne!(
            legacy_event_id(&copy(42, "DLQ/1/7")),
            legacy_event_id(&copy(42, "DLQ/1/8"))
        );
        assert_ne!(legacy_event_id(&copy(42, "DLQ/1/7")), legacy_event_id(&origin(42, 3)));
    }

    #[test]
    fn a_recreated_stream_numbering_from_1_again_gives_new_ids() {
        let mut again = origin(42, 3);
        again.published_ns += 86_400_000_000_000;
        assert_ne!(legacy_event_id(&origin(42, 3)), legacy_event_id(&again));
    }

    #[test]
    fn event_date_comes_from_server_time_or_ingest_time() {
        let mut event = sample_events().remove(0);
        let kind = event.event_type.clone().expect("set");
        if let Some(ctx) = event.context.as_mut() {
            ctx.server_ts = 86_400_000 * 3 + 5;
        }
        assert_eq!(to_row(event.context.clone(), &kind, &origin(1, 0)).event_date, 3);
        event.context = None;
        let row = to_row(None, &kind, &origin(1, 0));
        assert_eq!(row.event_date, (1_700_000_000 / 86_400) as u16);
        assert!(!row.event_id.is_empty());
    }
}
