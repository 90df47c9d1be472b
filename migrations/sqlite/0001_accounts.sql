-- Accounts, the organization they share, its invite token, and hashed API and session tokens.
-- Times are microseconds since the Unix epoch, so they compare as integers.

CREATE TABLE organizations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    created_by_user_id INTEGER REFERENCES users (id),
    invite_token TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE CHECK (email = lower(email)),
    username TEXT NOT NULL,
    first_name TEXT NOT NULL DEFAULT '',
    last_name TEXT NOT NULL DEFAULT '',
    password_hash TEXT,
    is_active INTEGER NOT NULL DEFAULT 1,
    date_joined INTEGER NOT NULL,
    active_organization_id INTEGER REFERENCES organizations (id)
);

CREATE TABLE memberships (
    organization_id INTEGER NOT NULL REFERENCES organizations (id),
    user_id INTEGER NOT NULL REFERENCES users (id),
    joined_at INTEGER NOT NULL,
    deleted_at INTEGER,
    PRIMARY KEY (organization_id, user_id)
);

CREATE INDEX memberships_user_id ON memberships (user_id);

CREATE TABLE tokens (
    token_hash TEXT NOT NULL PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('api', 'session')),
    created_at INTEGER NOT NULL,
    expires_at INTEGER
) WITHOUT ROWID;

CREATE UNIQUE INDEX tokens_one_api_token_per_user ON tokens (user_id) WHERE kind = 'api';
CREATE INDEX tokens_user_id ON tokens (user_id);
