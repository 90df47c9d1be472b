-- Credential generations (a session may only start from a credential that is still current),
-- session activity (sessions end after a stretch without use), aggregated audit rows, and a
-- retention rule the append-only trail allows.

ALTER TABLE users ADD COLUMN credential_version BIGINT NOT NULL DEFAULT 0;

ALTER TABLE tokens ADD COLUMN last_used_at TIMESTAMPTZ;
UPDATE tokens SET last_used_at = created_at WHERE kind = 'session';

-- One row may stand for several refusals of one kind from one client in one window.
ALTER TABLE audit_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;

-- Rows stay at least 30 days whatever the configured retention; updates and truncation are
-- refused as before.
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.at < now() - interval '30 days' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only';
END
$$;

-- Until when a key that reached `failures` failures at `at` is blocked: none below the limit,
-- then doubling from the base delay up to the longest one (ThrottleRule::delay_after).
CREATE FUNCTION identity_throttle_until(
    failures INTEGER,
    max_failures INTEGER,
    base_ms DOUBLE PRECISION,
    max_ms DOUBLE PRECISION,
    at TIMESTAMPTZ
) RETURNS TIMESTAMPTZ LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN failures >= max_failures THEN
        at + LEAST(base_ms * power(2::float8, LEAST(failures - max_failures, 40)), max_ms)
            * interval '1 millisecond'
    END
$$;
