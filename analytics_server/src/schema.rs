//! The ClickHouse schema, created and migrated by the service at start-up, and every query the project runs.
//!
//! Migrations are numbered and recorded in `schema_migrations`; each statement is idempotent (`IF NOT EXISTS`),
//! so two instances starting together, or a crash half-way, leave the same schema. The SQL is written for both
//! ClickHouse 18.16 (the distribution's server, used by the tests) and current releases: no TTL, CODEC,
//! DateTime64, LowCardinality or CTEs. A test runs all of it on a current engine too.
//!
//! `analytics_events` is a `ReplacingMergeTree` ordered by `(event_type, event_id)` with no time partition, so
//! every copy of an event (a redelivery, a re-publish) collapses into one row whatever its timestamps; queries
//! that must count exactly read with `FINAL`.

use clickhouse::Client;

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Strictly increasing version.
    pub version: u32,
    /// What it does.
    pub name: &'static str,
    /// Idempotent statements, run in order.
    pub statements: &'static [&'static str],
}

/// Name of the events table.
pub const EVENTS_TABLE: &str = "analytics_events";

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "create analytics_events",
    statements: &[r"CREATE TABLE IF NOT EXISTS analytics_events (
    event_id String,
    event_type String,
    subject String,
    stream_sequence UInt64,
    ingested_at DateTime,
    event_date Date,
    server_ts Int64,
    client_ts Int64,
    client_id String,
    session_id String,
    user_id String,
    workspace_id String,
    app_version String,
    user_agent String,
    ip String,
    has_system UInt8,
    system_os String,
    system_arch String,
    system_locale String,
    system_timezone String,
    system_browser String,
    system_browser_version String,
    has_geo UInt8,
    geo_country String,
    geo_region String,
    geo_city String,
    payload String
) ENGINE = ReplacingMergeTree()
ORDER BY (event_type, event_id)"],
}];

/// Creates the migrations ledger. Kept apart from [`MIGRATIONS`] because the ledger must exist to record them.
const LEDGER_DDL: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime DEFAULT now()
) ENGINE = MergeTree() ORDER BY version";

/// Queries the project runs, collected so the current-ClickHouse test checks them all.
pub mod queries {
    /// Readiness probe.
    pub const PING: &str = "SELECT 1";
    /// Highest applied migration.
    pub const SCHEMA_VERSION: &str = "SELECT toUInt32(max(version)) FROM schema_migrations";
    /// Events visible to queries, duplicates collapsed.
    pub const COUNT_EVENTS: &str = "SELECT count() FROM analytics_events FINAL";
    /// Distinct event ids (a second, merge-independent way to count).
    pub const COUNT_DISTINCT_IDS: &str = "SELECT uniqExact(event_id) FROM analytics_events";
    /// Events by type, duplicates collapsed.
    pub const COUNT_BY_TYPE: &str =
        "SELECT event_type, count() AS events FROM analytics_events FINAL GROUP BY event_type ORDER BY event_type";
    /// Whether one event is stored (the connection probe of `analytics_server send-test-event`).
    pub const COUNT_EVENT_ID: &str = "SELECT count() FROM analytics_events FINAL WHERE event_id = ?";
    /// One user's events of one type, newest first.
    pub const EVENTS_OF_USER: &str = "SELECT ?fields FROM analytics_events FINAL \
         WHERE user_id = ? AND event_type = ? ORDER BY server_ts DESC LIMIT 100";
}

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("failed to create database {database}")]
    CreateDatabase {
        database: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("failed to read the applied schema version")]
    ReadVersion(#[source] clickhouse::error::Error),
    #[error("migration {version} ({name}) failed")]
    Migrate {
        version: u32,
        name: &'static str,
        #[source]
        source: clickhouse::error::Error,
    },
}

/// Creates the database and applies the migrations not applied yet; returns the resulting version.
///
/// `server` is a client without a database set (the database may not exist yet); `client` is bound to it.
pub async fn migrate(server: &Client, client: &Client, database: &str) -> Result<u32, SchemaError> {
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .execute()
        .await
        .map_err(|source| SchemaError::CreateDatabase {
            database: database.to_owned(),
            source,
        })?;
    client
        .query(LEDGER_DDL)
        .execute()
        .await
        .map_err(SchemaError::ReadVersion)?;
    let mut applied: u32 = client
        .query(queries::SCHEMA_VERSION)
        .fetch_one()
        .await
        .map_err(SchemaError::ReadVersion)?;
    let start = applied;
    let pending = MIGRATIONS.iter().filter(move |m| m.version > start);
    for migration in pending {
        let failed = |source| SchemaError::Migrate {
            version: migration.version,
            name: migration.name,
            source,
        };
        for statement in migration.statements {
            client.query(statement).execute().await.map_err(failed)?;
        }
        client
            .query("INSERT INTO schema_migrations (version, name) VALUES (?, ?)")
            .bind(migration.version)
            .bind(migration.name)
            .execute()
            .await
            .map_err(failed)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied ClickHouse migration"
        );
        applied = migration.version;
    }
    Ok(applied)
}

/// Re-creates what an INSERT found missing while the service ran (the database, or the events table, dropped by
/// hand): [`migrate`], which rebuilds a dropped database, then every migration's statements again, for a table
/// dropped under a ledger that still records it. Each statement is `IF NOT EXISTS` (a unit test checks), so
/// running them again changes nothing that exists.
pub async fn restore(server: &Client, client: &Client, database: &str) -> Result<u32, SchemaError> {
    let version = migrate(server, client, database).await?;
    for migration in MIGRATIONS {
        for statement in migration.statements {
            client
                .query(statement)
                .execute()
                .await
                .map_err(|source| SchemaError::Migrate {
                    version: migration.version,
                    name: migration.name,
                    source,
                })?;
        }
    }
    Ok(version)
}

/// Every statement the service may run, in order, for validating them on another ClickHouse version.
pub fn all_statements(database: &str) -> Vec<String> {
    let mut out = vec![
        format!("CREATE DATABASE IF NOT EXISTS {database}"),
        format!("USE {database}"),
        LEDGER_DDL.to_owned(),
    ];
    out.extend(
        MIGRATIONS
            .iter()
            .flat_map(|m| m.statements.iter().map(|s| (*s).to_owned())),
    );
    out.push("INSERT INTO schema_migrations (version, name) VALUES (1, 'x')".to_owned());
    out.extend(
        [
            queries::PING,
            queries::SCHEMA_VERSION,
            queries::COUNT_EVENTS,
            queries::COUNT_DISTINCT_IDS,
            queries::COUNT_BY_TYPE,
        ]
        .map(str::to_owned),
    );
    out.push(
        queries::EVENTS_OF_USER
            .replace("?fields", "event_id, payload")
            .replacen('?', "'u'", 1)
            .replacen('?', "'user_login'", 1),
    );
    out.push(queries::COUNT_EVENT_ID.replacen('?', "'e'", 1));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_statement_may_run_again() {
        for migration in MIGRATIONS {
            for statement in migration.statements {
                assert!(statement.contains("IF NOT EXISTS"), "{}: {statement}", migration.name);
            }
        }
    }

    #[test]
    fn migration_versions_strictly_increase() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(MIGRATIONS[0].version, 1);
    }

    #[test]
    fn ddl_avoids_what_clickhouse_18_16_lacks() {
        for sql in all_statements("db") {
            for missing in [
                "TTL",
                "CODEC",
                "DateTime64",
                "LowCardinality",
                "Map(",
                "JSONExtract",
                "WITH ",
            ] {
                assert!(!sql.contains(missing), "{missing} in {sql}");
            }
        }
    }
}
