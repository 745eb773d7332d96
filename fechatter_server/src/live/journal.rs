//! The live-update journal: the table `live_events`, written by every chat change in its own transaction and
//! read by every server instance.
//!
//! Why a table and not `NOTIFY`: PostgreSQL serializes the commits of notifying transactions on one lock, held
//! while the commit is flushed to disk, so one `pg_notify` per message send capped every instance together at
//! the disk's flush rate (`benches/send_statement/run.sh` with durable commits, before and after the change:
//! the send statement at 0.19 of the raw insert rate with the `NOTIFY`, 0.34 with a journal row). A journal
//! row is one more insert, flushed to disk together with the message.
//!
//! How a reader finds new rows without missing one: rows become visible in commit order, not in id order, so
//! "ids above the last one read" would skip a row whose transaction was still running. A [`Cursor`] is instead
//! the snapshot (`pg_current_snapshot()`) of the previous read, and a read returns the rows visible now that
//! were not visible in it. Its own snapshot, taken by the same statement, becomes the next cursor. Only the
//! rows of transactions that were still running at the previous read (`xid >= xmin`) are looked at, through
//! the primary key.
//!
//! Rows are deleted once their transaction finished more than [`RETAIN`] ago. A reader that has not read for
//! [`STALE_AFTER`] (half of that) starts over from a new cursor and tells its subscribers to resync.

use sqlx::{PgConnection, PgPool, Row as _};
use std::time::{Duration, Instant};

/// How long rows are kept after their transaction finished.
pub const RETAIN: Duration = Duration::from_secs(60);
/// A cursor not advanced for this long may have lost rows to pruning.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// Writes `notice` (the JSON of a [`super::Notice`]) to the journal in the transaction on `conn`: readers see
/// it exactly when that transaction commits.
pub async fn append(conn: &mut PgConnection, notice: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO live_events (notice) VALUES ($1)")
        .bind(notice)
        .execute(conn)
        .await?;
    Ok(())
}

/// A reader's position: the snapshot of its last read, as PostgreSQL prints it (`xmin:xmax:xip,…`).
#[derive(Debug, Clone)]
pub struct Cursor {
    snapshot: String,
    read_at: Instant,
}

impl Cursor {
    /// A cursor at the present: a read returns the rows committed after this call.
    pub async fn now(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let snapshot = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(pool)
            .await?;
        Ok(Self {
            snapshot,
            read_at: Instant::now(),
        })
    }

    /// Whether rows this cursor has not read may have been pruned already.
    pub fn is_stale(&self) -> bool {
        self.read_at.elapsed() >= STALE_AFTER
    }

    /// The oldest transaction id still running at the last read: every row below it had been read by then.
    fn xmin(&self) -> &str {
        self.snapshot.split(':').next().unwrap_or("0")
    }
}

/// What one read returned.
#[derive(Debug)]
pub enum Read {
    /// The notices committed since the previous read, oldest transaction first.
    Notices(Vec<String>),
    /// More than the read's limit were committed: the reader skipped them and must resync its subscribers.
    Overflow,
}

/// Reads the notices committed since `cursor` (at most `limit`) and moves `cursor` past them.
pub async fn read(pool: &PgPool, cursor: &mut Cursor, limit: usize) -> Result<Read, sqlx::Error> {
    let row = sqlx::query(
        "SELECT pg_current_snapshot()::text AS snapshot, \
             ARRAY(SELECT notice FROM live_events \
                   WHERE xid >= pg_snapshot_xmin($1::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::pg_snapshot) \
                   ORDER BY xid, id LIMIT $2) AS notices",
    )
    .bind(&cursor.snapshot)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1))
    .fetch_one(pool)
    .await?;
    let notices: Vec<String> = row.try_get("notices")?;
    *cursor = Cursor {
        snapshot: row.try_get("snapshot")?,
        read_at: Instant::now(),
    };
    Ok(if notices.len() > limit {
        Read::Overflow
    } else {
        Read::Notices(notices)
    })
}

/// Deletes the journal's old rows, one retention period at a time: the rows of transactions that had finished
/// before the cursor of the previous prune, once that cursor is a period old.
#[derive(Debug)]
pub struct Pruner {
    /// The cursor at the previous prune (or first call), whose `xmin` is the next cut-off.
    mark: Option<Cursor>,
    /// The retention period ([`RETAIN`] but in tests).
    retain: Duration,
}

impl Default for Pruner {
    fn default() -> Self {
        Self::retaining(RETAIN)
    }
}

impl Pruner {
    /// A pruner that keeps rows for `retain` after their transaction finished.
    pub fn retaining(retain: Duration) -> Self {
        Self { mark: None, retain }
    }

    /// Prunes when due, given the reader's current `cursor`; returns the rows deleted.
    pub async fn maybe_prune(&mut self, pool: &PgPool, cursor: &Cursor) -> Result<u64, sqlx::Error> {
        let Some(mark) = &self.mark else {
            self.mark = Some(cursor.clone());
            return Ok(0);
        };
        if mark.read_at.elapsed() < self.retain {
            return Ok(0);
        }
        // Several instances may prune at once: they delete the same rows, the later ones find them gone. A row
        // carrying an analytics event stays until the analytics relay has passed it (`analytics::journal_relay`).
        let deleted = sqlx::query(
            "DELETE FROM live_events WHERE xid < $1::text::xid8 \
             AND (event IS NULL OR xid < (SELECT pg_snapshot_xmin(relayed) FROM analytics_journal_cursor))",
        )
        .bind(mark.xmin())
        .execute(pool)
        .await?
        .rows_affected();
        self.mark = Some(cursor.clone());
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_off_is_the_oldest_running_transaction_of_the_snapshot() {
        let cursor = Cursor {
            snapshot: "752:760:752,755".into(),
            read_at: Instant::now(),
        };
        assert_eq!(cursor.xmin(), "752");
        assert!(!cursor.is_stale());
    }
}
