-- A message send carries its analytics event (`message_sent`) in the live-update journal row it writes anyway,
-- instead of a row of its own in analytics_outbox: a row of its own cost the send statement a fifth of its rate
-- (benches/send_statement/run.sh), the same bytes in the journal row nothing that shows. The relay reads these
-- events by snapshot, as the live hubs read the journal (src/analytics/journal_relay.rs), and the journal's
-- pruning keeps every row whose event it has not passed.
ALTER TABLE live_events
    ADD COLUMN event_id UUID,
    ADD COLUMN event_subject TEXT,
    ADD COLUMN event BYTEA;

-- How far the relay has published the journal's events. `relayed`: every event of a transaction visible in this
-- snapshot is in JetStream. While a read of several pages runs, `upper` is the snapshot it reads up to and
-- (`after_xid`, `after_id`) the last row published of it. One row; its lock makes one relay at a time read.
CREATE TABLE analytics_journal_cursor (
    only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    relayed pg_snapshot NOT NULL,
    upper pg_snapshot,
    after_xid xid8,
    after_id BIGINT
);
INSERT INTO analytics_journal_cursor (relayed) VALUES (pg_current_snapshot());
