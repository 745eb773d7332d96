-- The outbox row (analytics on).
    event AS (INSERT INTO analytics_outbox (event_id, subject, payload)
        SELECT gen_random_uuid(), 'fechatter.analytics.message.sent', '\x0a2a0a0c08011a0c08021a0c0803'::bytea
        FROM ins RETURNING id)
