-- The send with analytics on: as send_off.sql plus the outbox row (chat::store::send_message).
\set u random(1, 16)
WITH member AS (SELECT c.id FROM chats c WHERE c.id = 1 AND c.workspace_id = 1
        AND EXISTS (SELECT 1 FROM chat_members m WHERE m.chat_id = c.id AND m.user_id = :u)),
    ins AS (INSERT INTO messages (chat_id, sender_id, content, files, idempotency_key)
        SELECT id, :u, 'message 1 from client see https://x.y @bob', '{}', NULL FROM member
        ON CONFLICT (chat_id, sender_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, chat_id, sender_id, content, files, created_at, edited_at),
    event AS (INSERT INTO analytics_outbox (event_id, subject, payload)
        SELECT gen_random_uuid(), 'fechatter.analytics.message.sent', '\x0a2a0a0c08011a0c08021a0c0803'::bytea
        FROM ins RETURNING id),
    notice AS (SELECT json_build_object('kind', 'message_created', 'chat_id', ins.chat_id, 'ids', json_build_array(ins.id),
        'message', json_build_object('id', ins.id, 'chat_id', ins.chat_id, 'sender_id', ins.sender_id,
            'content', ins.content, 'files', ins.files, 'created_at', ins.created_at, 'edited_at', ins.edited_at))::text
        AS whole FROM ins),
    live_notice AS (SELECT pg_notify('chat_events', whole) FROM notice)
SELECT EXISTS (SELECT 1 FROM member) AS is_member, (SELECT count(*) FROM event) AS events, (SELECT count(*) FROM live_notice) AS notices, ins.* FROM (SELECT) AS one LEFT JOIN ins ON true;
