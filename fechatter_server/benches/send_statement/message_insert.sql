-- The message row alone: tsvector column, GIN index, chat index, two foreign keys.
\set u random(1, 16)
INSERT INTO messages (chat_id, sender_id, content) VALUES (1, :u, 'message 1 from client see https://x.y @bob');
