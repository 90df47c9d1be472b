-- Users and organizations brought over from Label Studio by `import-label-studio`, so that a
-- later run recognises them and writes nothing twice. A Label Studio row is known by its id
-- together with the time it was created there, which tells apart rows of two Label Studio
-- databases and survives a dump and restore of either.

CREATE TABLE label_studio_users (
    label_studio_id BIGINT NOT NULL,
    label_studio_date_joined TIMESTAMPTZ NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    imported_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (label_studio_id, label_studio_date_joined),
    CONSTRAINT label_studio_users_user_id_key UNIQUE (user_id)
);

CREATE TABLE label_studio_organizations (
    label_studio_id BIGINT NOT NULL,
    label_studio_created_at TIMESTAMPTZ NOT NULL,
    organization_id BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    imported_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (label_studio_id, label_studio_created_at),
    CONSTRAINT label_studio_organizations_organization_id_key UNIQUE (organization_id)
);
