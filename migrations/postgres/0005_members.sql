-- The People page: members in join order (keyset pagination), a count of members per
-- organization kept by the database itself (so a page never counts 100,000 rows), a trigram
-- index for the case-insensitive search where pg_trgm can be had, and secrets every replica
-- shares (the key that signs page tokens).

CREATE INDEX memberships_join_order ON memberships (organization_id, joined_at, user_id);

CREATE TABLE membership_counts (
    organization_id BIGINT PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    -- Current members, and removed ones (memberships with deleted_at set).
    members BIGINT NOT NULL DEFAULT 0,
    removed BIGINT NOT NULL DEFAULT 0
);

INSERT INTO membership_counts (organization_id, members, removed)
SELECT organization_id,
       SUM(CASE WHEN deleted_at IS NULL THEN 1 ELSE 0 END),
       SUM(CASE WHEN deleted_at IS NULL THEN 0 ELSE 1 END)
FROM memberships GROUP BY organization_id;

-- Statement-level, from transition tables: a statement adds one delta per organization, so a
-- bulk insert (an import, a seed) updates each count once instead of once per row.
CREATE FUNCTION membership_counts_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO membership_counts AS c (organization_id, members, removed)
        SELECT organization_id,
               SUM(CASE WHEN deleted_at IS NULL THEN 1 ELSE 0 END),
               SUM(CASE WHEN deleted_at IS NULL THEN 0 ELSE 1 END)
        FROM new_rows GROUP BY organization_id
        ON CONFLICT (organization_id) DO UPDATE
        SET members = c.members + excluded.members, removed = c.removed + excluded.removed;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO membership_counts AS c (organization_id, members, removed)
        SELECT organization_id,
               -SUM(CASE WHEN deleted_at IS NULL THEN 1 ELSE 0 END),
               -SUM(CASE WHEN deleted_at IS NULL THEN 0 ELSE 1 END)
        FROM old_rows GROUP BY organization_id
        ON CONFLICT (organization_id) DO UPDATE
        SET members = c.members + excluded.members, removed = c.removed + excluded.removed;
    ELSE
        INSERT INTO membership_counts AS c (organization_id, members, removed)
        SELECT organization_id, SUM(members), SUM(removed) FROM (
            SELECT organization_id,
                   CASE WHEN deleted_at IS NULL THEN 1 ELSE 0 END AS members,
                   CASE WHEN deleted_at IS NULL THEN 0 ELSE 1 END AS removed
            FROM new_rows
            UNION ALL
            SELECT organization_id,
                   CASE WHEN deleted_at IS NULL THEN -1 ELSE 0 END,
                   CASE WHEN deleted_at IS NULL THEN 0 ELSE -1 END
            FROM old_rows
        ) AS delta GROUP BY organization_id
        HAVING SUM(members) <> 0 OR SUM(removed) <> 0
        ON CONFLICT (organization_id) DO UPDATE
        SET members = c.members + excluded.members, removed = c.removed + excluded.removed;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER memberships_counted_insert AFTER INSERT ON memberships
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION membership_counts_follow();
CREATE TRIGGER memberships_counted_update AFTER UPDATE ON memberships
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION membership_counts_follow();
CREATE TRIGGER memberships_counted_delete AFTER DELETE ON memberships
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION membership_counts_follow();

-- The search matches this expression (see store/members.rs); chr(1) keeps a query, which has
-- no control characters, from matching across two fields. pg_trgm is a trusted extension, so a
-- database owner may create it; where it is missing or refused the search scans instead.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE INDEX users_search ON users USING gin (
        lower(email || chr(1) || username || chr(1) || first_name || chr(1) || last_name)
        gin_trgm_ops
    );
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'member search without a trigram index: %', SQLERRM;
END
$$;

CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
