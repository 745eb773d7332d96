-- The send statement of chat::store::send_messages for one message, with scalars for its arrays (keep them
-- alike): membership check and idempotent message insert; run.sh appends the outbox row (parts/event.sql) and
-- the live-update journal row (parts/live.sql) per variant.
WITH member AS (SELECT c.id FROM chats c WHERE c.id = 1 AND c.workspace_id = 1
        AND EXISTS (SELECT 1 FROM chat_members m WHERE m.chat_id = c.id AND m.user_id = :u)),
    ins AS (INSERT INTO messages (chat_id, sender_id, content, files, idempotency_key)
        SELECT id, :u, 'message 1 from client see https://x.y @bob', '{}', NULL FROM member
        ON CONFLICT (chat_id, sender_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, chat_id, sender_id, content, files, created_at, edited_at)
