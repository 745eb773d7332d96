-- The live-update notice and the analytics event (200 bytes, about a message_sent event's size) in one journal
-- row, as the server writes them with analytics on.
    live_notice AS (INSERT INTO live_events (notice, event_id, event_subject, event)
        SELECT json_build_object('kind', 'message_created', 'chat_id', ins.chat_id, 'ids', json_build_array(ins.id),
            'message', json_build_object('id', ins.id, 'chat_id', ins.chat_id, 'sender_id', ins.sender_id,
                'content', ins.content, 'files', ins.files, 'created_at', ins.created_at, 'edited_at', ins.edited_at))::text, gen_random_uuid(), 'fechatter.analytics.message.sent', '\x0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a'::bytea
        FROM ins RETURNING id)
