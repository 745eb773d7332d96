-- The live-update notification.
    notice AS (SELECT json_build_object('kind', 'message_created', 'chat_id', ins.chat_id, 'ids', json_build_array(ins.id),
        'message', json_build_object('id', ins.id, 'chat_id', ins.chat_id, 'sender_id', ins.sender_id,
            'content', ins.content, 'files', ins.files, 'created_at', ins.created_at, 'edited_at', ins.edited_at))::text
        AS whole FROM ins),
    live_notice AS (SELECT pg_notify('chat_events', whole) FROM notice)
