-- Credential generations (a session may only start from a credential that is still current),
-- session activity (sessions end after a stretch without use), aggregated audit rows, and a
-- retention rule the append-only trail allows. Times are microseconds since the epoch.

ALTER TABLE users ADD COLUMN credential_version INTEGER NOT NULL DEFAULT 0;

ALTER TABLE tokens ADD COLUMN last_used_at INTEGER;
UPDATE tokens SET last_used_at = created_at WHERE kind = 'session';

-- One row may stand for several refusals of one kind from one client in one window.
ALTER TABLE audit_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;

-- Rows stay at least 30 days whatever the configured retention.
DROP TRIGGER audit_events_no_delete;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN OLD.at > (CAST(strftime('%s', 'now') AS INTEGER) - 30 * 86400) * 1000000
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
