//! Relays the analytics events that message sends carry in their live-update journal rows (`live_events`,
//! columns `event_id`, `event_subject`, `event`), so that a send writes one row for its notice and its event
//! instead of two (see the migration `20261130000001_journal_events.sql` for what that saved).
//!
//! The relay reads the journal as the live hubs do, by snapshot (see `crate::live::journal`): rows become
//! visible in commit order, not in id order. Its position is stored in `analytics_journal_cursor`:
//! - `relayed`: every event of a transaction visible in this snapshot is in JetStream;
//! - while a read spans several rounds (more than `batch_size` events waiting): `upper`, the snapshot the read
//!   goes up to, fixed when it began so that no transaction committing meanwhile slips between two pages, and
//!   `(after_xid, after_id)`, the last row published. Once a round reads fewer than `batch_size` rows, `upper`
//!   becomes `relayed`.
//!
//! A round publishes, then moves the cursor past the rows JetStream acknowledged, in the transaction that holds the
//! cursor's row lock: one relay at a time reads (another instance's round finds the row locked and skips), and a
//! crash between the acks and the commit only publishes those rows again, which `Nats-Msg-Id = event_id` makes
//! JetStream drop (ClickHouse collapses any later copy). The journal's pruning keeps every row whose transaction
//! is not below `relayed`'s oldest running transaction (`pg_snapshot_xmin`), so an event waits in the journal
//! for as long as NATS is away, as the outbox's rows do.

use super::outbox::{Round, begin_round, publish_round};
use super::publisher::{AnalyticsPublisher, Encoded, PublishError};
use crate::metrics::Metrics;
use fechatter_protos::type_name_from_subject;
use sqlx::{PgPool, Row as _};

/// Publishes up to `batch_size` of the journal's events after the cursor and moves the cursor past the first
/// rows JetStream acknowledged (up to the first failure), in one transaction. Claims nothing while another
/// relay holds the cursor. `after_full_round`: the caller's previous round was full, so events are known to wait.
pub async fn relay_once(
    pool: &PgPool,
    publisher: &AnalyticsPublisher,
    batch_size: usize,
    after_full_round: bool,
    metrics: &Metrics,
) -> Result<Round, sqlx::Error> {
    // Most rounds of a quiet chat find nothing: ask without the lock, which would give the round a transaction
    // id and a commit to write.
    if !after_full_round && !work_waits(pool).await? {
        return Ok(Round::default());
    }
    let mut tx = begin_round(pool).await?;
    let cursor = sqlx::query(
        "SELECT relayed::text, upper::text, after_xid::text, after_id, \
             pg_snapshot_xmax(relayed) > pg_snapshot_xmax(pg_current_snapshot()) AS from_the_future \
         FROM analytics_journal_cursor FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(cursor) = cursor else {
        return Ok(Round::default());
    };
    if cursor.try_get::<bool, _>("from_the_future")? {
        // Transaction ids of another cluster (a restored dump): read every event in the journal again rather
        // than skip the new ones. JetStream's dedup and ClickHouse absorb the copies.
        tracing::warn!("the journal relay's cursor names transactions this database has not reached; reset");
        sqlx::query(
            "UPDATE analytics_journal_cursor SET relayed = '1:1:', upper = NULL, after_xid = NULL, after_id = NULL",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Round::default());
    }
    let relayed: String = cursor.try_get("relayed")?;
    let upper = match cursor.try_get::<Option<String>, _>("upper")? {
        Some(upper) => upper,
        // A new read goes up to now. Taken by a statement of its own, after the lock: the locking statement's
        // snapshot may predate the commit of the relay that held the lock, and so predate `relayed`.
        None => {
            sqlx::query_scalar("SELECT pg_current_snapshot()::text")
                .fetch_one(&mut *tx)
                .await?
        }
    };
    let after_xid: Option<String> = cursor.try_get("after_xid")?;
    let after_id: Option<i64> = cursor.try_get("after_id")?;
    // Committed after `relayed` and by `upper`, after the last row read (or from `relayed`'s oldest running
    // transaction: row ids start at 1); rows of aborted transactions are invisible to the statement. One key
    // bound, so that the primary key's index serves it whatever the plan, and the order is the key's (not the
    // text's: '10000' sorts before '9999').
    let rows = sqlx::query(
        "SELECT xid::text AS xid_text, id, event_id, event_subject, event FROM live_events \
         WHERE (xid, id) > (COALESCE($3::xid8, pg_snapshot_xmin($1::pg_snapshot)), COALESCE($4::bigint, 0)) \
             AND NOT pg_visible_in_snapshot(xid, $1::pg_snapshot) AND pg_visible_in_snapshot(xid, $2::pg_snapshot) \
             AND event IS NOT NULL \
         ORDER BY live_events.xid, live_events.id LIMIT $5",
    )
    .bind(&relayed)
    .bind(&upper)
    .bind(&after_xid)
    .bind(after_id)
    .bind(i64::try_from(batch_size).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await?;
    let claimed = rows.len();
    let mut keys = Vec::with_capacity(claimed);
    let mut events = Vec::with_capacity(claimed);
    // Positions of the rows whose subject is no analytics subject (a corrupted row: only this server writes
    // them): passed over, loudly, rather than failing every round.
    let mut corrupted = Vec::new();
    for (position, row) in rows.iter().enumerate() {
        let key = (row.try_get::<String, _>("xid_text")?, row.try_get::<i64, _>("id")?);
        let subject: String = row.try_get("event_subject")?;
        if type_name_from_subject(&subject).is_none() {
            tracing::error!(
                xid = key.0,
                id = key.1,
                subject,
                "journal event with no analytics subject passed over"
            );
            corrupted.push(position);
        } else {
            events.push(Encoded {
                event_id: row.try_get::<uuid::Uuid, _>("event_id")?.to_string(),
                subject: subject.into(),
                payload: row.try_get::<Vec<u8>, _>("event")?.into(),
            });
        }
        keys.push(key);
    }
    let mut results: Vec<Result<(), PublishError>> = publish_round(publisher, events)
        .await
        .into_iter()
        .map(|r| r.map(drop))
        .collect();
    // Back in the rows' order, the passed-over rows counting as done.
    for &position in &corrupted {
        results.insert(position, Ok(()));
    }
    // The cursor moves past the acknowledged rows before the first failure; the rows after it, acknowledged or
    // not, are read and published again (their copies are dropped by JetStream's deduplication).
    let published = results.iter().take_while(|r| r.is_ok()).count();
    if let Some(Err(err)) = results.get(published) {
        let failures = results.iter().filter(|r| r.is_err()).count();
        metrics.publish_failures.inc_by(failures as u64);
        let error = crate::error_chain(err);
        tracing::warn!(failed = failures, error = %error, "analytics events not published; kept in the journal");
    }
    if claimed == 0 && after_xid.is_none() {
        // Nothing new after all (the events `work_waits` saw were another relay's): the cursor stays.
    } else if published == claimed && claimed < batch_size {
        // The read up to `upper` is complete.
        sqlx::query(
            "UPDATE analytics_journal_cursor \
             SET relayed = $1::pg_snapshot, upper = NULL, after_xid = NULL, after_id = NULL",
        )
        .bind(&upper)
        .execute(&mut *tx)
        .await?;
    } else if published > 0 {
        let (xid, id) = &keys[published - 1];
        sqlx::query("UPDATE analytics_journal_cursor SET upper = $1::pg_snapshot, after_xid = $2::xid8, after_id = $3")
            .bind(&upper)
            .bind(xid)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let passed_over = corrupted.iter().filter(|&&p| p < published).count();
    metrics.events_published.inc_by((published - passed_over) as u64);
    Ok(Round {
        claimed,
        published,
        failed: Vec::new(),
    })
}

/// Whether the journal holds events the cursor has not passed, a read of several pages is under way, or the
/// cursor needs its reset (see `relay_once`). Takes no transaction id (`pg_current_xact_id` would).
///
/// The newest row at or above the cursor's oldest running transaction, by a backward scan of the primary key,
/// and not `EXISTS`: PostgreSQL plans an `EXISTS` over `xid >= pg_snapshot_xmin(…)` as a sequential scan (it
/// guesses a third of the rows match, so the first match comes soon) which, when nothing waits, reads the whole
/// journal, a minute of sends, in every round: 10-20 ms for 30,000 rows. `LIMIT` inside a lateral join keeps its
/// `ORDER BY` (an `EXISTS` drops both), so the scan starts at the newest row, the one not passed while sends keep
/// coming, and otherwise goes back no further than the cut-off.
pub const WORK_WAITS: &str = "SELECT c.after_xid IS NOT NULL \
         OR pg_snapshot_xmax(c.relayed) > pg_snapshot_xmax(pg_current_snapshot()) \
         OR newest.xid IS NOT NULL \
     FROM analytics_journal_cursor c LEFT JOIN LATERAL ( \
         SELECT xid FROM live_events \
         WHERE xid >= pg_snapshot_xmin(c.relayed) AND NOT pg_visible_in_snapshot(xid, c.relayed) \
             AND event IS NOT NULL \
         ORDER BY xid DESC LIMIT 1) newest ON true";

async fn work_waits(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(WORK_WAITS).fetch_one(pool).await
}

/// Events in the journal that the relay has not passed yet (part of the outbox depth metric).
pub async fn depth(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM live_events, analytics_journal_cursor c \
         WHERE xid >= pg_snapshot_xmin(c.relayed) AND NOT pg_visible_in_snapshot(xid, c.relayed) \
             AND event IS NOT NULL",
    )
    .fetch_one(pool)
    .await
}
