-- The machine's limit: one row, no index but the primary key, autocommit (send_bench's "raw").
\set u random(1, 16)
INSERT INTO raw_bench (chat_id, sender_id, content) VALUES (1, :u, 'message 1 from client see https://x.y @bob');
