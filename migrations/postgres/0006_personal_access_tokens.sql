-- Personal access tokens (Label Studio's long-lived JWT refresh tokens), the keys that sign
-- them and the short-lived access tokens, and each organization's token settings.

-- Keys shared by every replica. `purpose`: 'access' (Ed25519, signs access tokens, published
-- in the key set), 'personal' (HMAC-SHA256, signs the PATs made here) or 'label_studio' (an
-- imported Label Studio SECRET_KEY: HMAC-SHA256, only verifies the PATs it signed there).
-- `private_key` is the secret half (base64url); only ever read by the service itself.
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    purpose TEXT NOT NULL CHECK (purpose IN ('access', 'personal', 'label_studio')),
    algorithm TEXT NOT NULL CHECK (algorithm IN ('EdDSA', 'HS256')),
    private_key TEXT NOT NULL,
    public_key TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    -- No longer signs since then.
    retired_at TIMESTAMPTZ,
    -- No longer verifies after that: every token it signed has expired.
    not_after TIMESTAMPTZ
);

-- One current signing key per purpose; replicas starting together race to create it.
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (purpose)
    WHERE retired_at IS NULL AND purpose <> 'label_studio';

-- One row per PAT ever issued (Label Studio's outstanding tokens); `token` is its
-- `header.payload`, without the signature, as Label Studio keeps it.
CREATE TABLE personal_access_tokens (
    jti TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token TEXT NOT NULL,
    key_id TEXT NOT NULL REFERENCES signing_keys (kid),
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    -- Label Studio's blacklist: set when revoked or rotated out.
    revoked_at TIMESTAMPTZ
);

CREATE INDEX personal_access_tokens_user_id ON personal_access_tokens (user_id);

-- Label Studio's jwt_auth_jwtsettings; an organization without a row has the defaults.
CREATE TABLE token_settings (
    organization_id BIGINT PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    api_tokens_enabled BOOLEAN NOT NULL DEFAULT TRUE,
    legacy_api_tokens_enabled BOOLEAN NOT NULL DEFAULT TRUE,
    api_token_ttl_days INTEGER NOT NULL DEFAULT 73000
);
