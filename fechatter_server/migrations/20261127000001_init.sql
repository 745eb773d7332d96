-- Fechatter chat schema: workspaces, users, refresh tokens, chats, members, messages, files, analytics outbox.

CREATE TABLE workspaces (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    owner_id BIGINT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT workspaces_name_key UNIQUE (name)
);

CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    workspace_id BIGINT NOT NULL REFERENCES workspaces (id),
    fullname TEXT NOT NULL,
    -- Stored lower-cased, so uniqueness ignores case.
    email TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email)
);
CREATE INDEX users_workspace_id_idx ON users (workspace_id);

-- Refresh tokens are stored hashed; each sign-in starts a family, each refresh rotates within it. Presenting a
-- token that was already used revokes its whole family (a stolen token was replayed).
CREATE TABLE refresh_tokens (
    id UUID PRIMARY KEY,
    family_id UUID NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT refresh_tokens_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);

CREATE TABLE chats (
    id BIGSERIAL PRIMARY KEY,
    workspace_id BIGINT NOT NULL REFERENCES workspaces (id),
    name TEXT NOT NULL,
    chat_type TEXT NOT NULL CHECK (chat_type IN ('single', 'group', 'private_channel', 'public_channel')),
    owner_id BIGINT NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_activity_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX chats_workspace_idx ON chats (workspace_id);

CREATE TABLE chat_members (
    chat_id BIGINT NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, user_id)
);
CREATE INDEX chat_members_user_idx ON chat_members (user_id);

CREATE TABLE messages (
    id BIGSERIAL PRIMARY KEY,
    chat_id BIGINT NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    sender_id BIGINT NOT NULL REFERENCES users (id),
    content TEXT NOT NULL,
    files TEXT[] NOT NULL DEFAULT '{}',
    idempotency_key TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    edited_at TIMESTAMPTZ,
    search tsvector GENERATED ALWAYS AS (to_tsvector('simple', content)) STORED
);
CREATE INDEX messages_chat_id_idx ON messages (chat_id, id DESC);
CREATE INDEX messages_search_idx ON messages USING GIN (search);
-- The same idempotency key from the same sender in the same chat is the same message.
CREATE UNIQUE INDEX messages_idempotency_key ON messages (chat_id, sender_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Uploaded files: content-addressed by sha256, scoped to a workspace.
CREATE TABLE files (
    workspace_id BIGINT NOT NULL REFERENCES workspaces (id),
    sha256 TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    file_name TEXT NOT NULL,
    uploaded_by BIGINT NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, sha256)
);

-- Transactional outbox: analytics events written in the same transaction as the change they describe, published
-- to JetStream by the relay and deleted once acknowledged.
CREATE TABLE analytics_outbox (
    id BIGSERIAL PRIMARY KEY,
    event_id UUID NOT NULL,
    subject TEXT NOT NULL,
    payload BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT analytics_outbox_event_id_key UNIQUE (event_id)
);
