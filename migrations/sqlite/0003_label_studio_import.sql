-- Users and organizations brought over from Label Studio by `import-label-studio`, so that a
-- later run recognises them and writes nothing twice. A Label Studio row is known by its id
-- together with the time it was created there, which tells apart rows of two Label Studio
-- databases and survives a dump and restore of either. Times are microseconds since the epoch.

CREATE TABLE label_studio_users (
    label_studio_id INTEGER NOT NULL,
    label_studio_date_joined INTEGER NOT NULL,
    user_id INTEGER NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    imported_at INTEGER NOT NULL,
    PRIMARY KEY (label_studio_id, label_studio_date_joined)
);

CREATE TABLE label_studio_organizations (
    label_studio_id INTEGER NOT NULL,
    label_studio_created_at INTEGER NOT NULL,
    organization_id INTEGER NOT NULL UNIQUE REFERENCES organizations (id) ON DELETE CASCADE,
    imported_at INTEGER NOT NULL,
    PRIMARY KEY (label_studio_id, label_studio_created_at)
);
