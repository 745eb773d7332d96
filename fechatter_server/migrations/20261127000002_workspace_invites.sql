-- Joining an existing workspace takes an invitation from one of its members: naming the workspace at sign-up is
-- not enough (it would let anyone into any workspace whose name they can guess). Only the SHA-256 of an
-- invitation is stored; an invitation can be used by several people until it expires.
CREATE TABLE workspace_invites (
    token_hash TEXT PRIMARY KEY,
    workspace_id BIGINT NOT NULL REFERENCES workspaces (id),
    created_by BIGINT NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX workspace_invites_workspace_idx ON workspace_invites (workspace_id);
