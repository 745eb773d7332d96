-- The live-update journal (see src/live/journal.rs): every chat change writes one row in its own transaction,
-- and every server instance reads the rows committed since its last read, by snapshot. It replaces a
-- `pg_notify` per change: PostgreSQL serializes the commits of notifying transactions on one lock, held
-- while the commit is flushed to disk, which capped message sends at the disk's flush rate. Rows are deleted
-- a minute after their transaction finished; primary key order (transaction id, then row id) is the read order.
CREATE TABLE live_events (
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    id BIGINT GENERATED ALWAYS AS IDENTITY,
    notice TEXT NOT NULL,
    PRIMARY KEY (xid, id)
);
