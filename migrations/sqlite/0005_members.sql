-- The People page: members in join order (keyset pagination), a count of members per
-- organization kept by the database itself, and secrets every process shares (the key that
-- signs page tokens). Times are microseconds since the epoch.

CREATE INDEX memberships_join_order ON memberships (organization_id, joined_at, user_id);

CREATE TABLE membership_counts (
    organization_id INTEGER PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    members INTEGER NOT NULL DEFAULT 0,
    removed INTEGER NOT NULL DEFAULT 0
);

INSERT INTO membership_counts (organization_id, members, removed)
SELECT organization_id,
       SUM(CASE WHEN deleted_at IS NULL THEN 1 ELSE 0 END),
       SUM(CASE WHEN deleted_at IS NULL THEN 0 ELSE 1 END)
FROM memberships GROUP BY organization_id;

CREATE TRIGGER memberships_counted_insert AFTER INSERT ON memberships
BEGIN
    INSERT INTO membership_counts (organization_id, members, removed)
    VALUES (NEW.organization_id,
            CASE WHEN NEW.deleted_at IS NULL THEN 1 ELSE 0 END,
            CASE WHEN NEW.deleted_at IS NULL THEN 0 ELSE 1 END)
    ON CONFLICT (organization_id) DO UPDATE
    SET members = members + excluded.members, removed = removed + excluded.removed;
END;

CREATE TRIGGER memberships_counted_delete AFTER DELETE ON memberships
BEGIN
    UPDATE membership_counts
    SET members = members - CASE WHEN OLD.deleted_at IS NULL THEN 1 ELSE 0 END,
        removed = removed - CASE WHEN OLD.deleted_at IS NULL THEN 0 ELSE 1 END
    WHERE organization_id = OLD.organization_id;
END;

CREATE TRIGGER memberships_counted_update AFTER UPDATE OF organization_id, deleted_at
ON memberships
BEGIN
    UPDATE membership_counts
    SET members = members - CASE WHEN OLD.deleted_at IS NULL THEN 1 ELSE 0 END,
        removed = removed - CASE WHEN OLD.deleted_at IS NULL THEN 0 ELSE 1 END
    WHERE organization_id = OLD.organization_id;
    INSERT INTO membership_counts (organization_id, members, removed)
    VALUES (NEW.organization_id,
            CASE WHEN NEW.deleted_at IS NULL THEN 1 ELSE 0 END,
            CASE WHEN NEW.deleted_at IS NULL THEN 0 ELSE 1 END)
    ON CONFLICT (organization_id) DO UPDATE
    SET members = members + excluded.members, removed = removed + excluded.removed;
END;

CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
