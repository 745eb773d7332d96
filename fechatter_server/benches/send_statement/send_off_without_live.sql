-- send_off.sql without the live-update NOTIFY.
\set u random(1, 16)
WITH member AS (SELECT c.id FROM chats c WHERE c.id = 1 AND c.workspace_id = 1
        AND EXISTS (SELECT 1 FROM chat_members m WHERE m.chat_id = c.id AND m.user_id = :u)),
    ins AS (INSERT INTO messages (chat_id, sender_id, content, files, idempotency_key)
        SELECT id, :u, 'message 1 from client see https://x.y @bob', '{}', NULL FROM member
        ON CONFLICT (chat_id, sender_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, chat_id, sender_id, content, files, created_at, edited_at)
SELECT EXISTS (SELECT 1 FROM member) AS is_member, ins.* FROM (SELECT) AS one LEFT JOIN ins ON true;
