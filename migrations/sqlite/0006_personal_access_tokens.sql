-- Personal access tokens (Label Studio's long-lived JWT refresh tokens), the keys that sign
-- them and the short-lived access tokens, and each organization's token settings. Times are
-- microseconds since the Unix epoch.

-- See the Postgres migration for what each column holds.
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    purpose TEXT NOT NULL CHECK (purpose IN ('access', 'personal', 'label_studio')),
    algorithm TEXT NOT NULL CHECK (algorithm IN ('EdDSA', 'HS256')),
    private_key TEXT NOT NULL,
    public_key TEXT,
    created_at INTEGER NOT NULL,
    retired_at INTEGER,
    not_after INTEGER
) WITHOUT ROWID;

CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (purpose)
    WHERE retired_at IS NULL AND purpose <> 'label_studio';

CREATE TABLE personal_access_tokens (
    jti TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token TEXT NOT NULL,
    key_id TEXT NOT NULL REFERENCES signing_keys (kid),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
) WITHOUT ROWID;

CREATE INDEX personal_access_tokens_user_id ON personal_access_tokens (user_id);

CREATE TABLE token_settings (
    organization_id INTEGER PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    api_tokens_enabled INTEGER NOT NULL DEFAULT 1,
    legacy_api_tokens_enabled INTEGER NOT NULL DEFAULT 1,
    api_token_ttl_days INTEGER NOT NULL DEFAULT 73000
);
