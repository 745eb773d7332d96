-- The live-update notice, written to the journal (live_events).
    live_notice AS (INSERT INTO live_events (notice)
        SELECT json_build_object('kind', 'message_created', 'chat_id', ins.chat_id, 'ids', json_build_array(ins.id),
            'message', json_build_object('id', ins.id, 'chat_id', ins.chat_id, 'sender_id', ins.sender_id,
                'content', ins.content, 'files', ins.files, 'created_at', ins.created_at, 'edited_at', ins.edited_at))::text
        FROM ins RETURNING id)
