-- A design probe, not the server's statement: the live-update notice and the analytics event in one journal
-- row (live_events with an `event` column that only this bench adds), instead of a row of its own in the outbox.
    live_notice AS (INSERT INTO live_events (notice, event)
        SELECT json_build_object('kind', 'message_created', 'chat_id', ins.chat_id, 'ids', json_build_array(ins.id),
            'message', json_build_object('id', ins.id, 'chat_id', ins.chat_id, 'sender_id', ins.sender_id,
                'content', ins.content, 'files', ins.files, 'created_at', ins.created_at, 'edited_at', ins.edited_at))::text, '\x0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a'::bytea
        FROM ins RETURNING id)
