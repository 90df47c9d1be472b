#!/usr/bin/env python3
"""Generates a Label Studio-shaped database for benchmarking `import-label-studio`.

It holds the tables the import reads, with Label Studio 1.23's DDL (`htx_user`,
`authtoken_token`, `organization`, `organizations_organizationmember`, `jwt_auth_jwtsettings`),
filled with N users spread over a few organizations, the quirks of real data included: emails
with capitals in the local part, users without a password, soft-deleted memberships, users who
belong to two organizations, inactive users.

Passwords are real Django `pbkdf2_sha256` hashes with Label Studio's 1,000,000 iterations, but
only a handful are computed (one per distinct password) and reused across users: hashing 100,000
of them would take hours, and the import never hashes anything. User i's password is
`bench-password-<i % HASHES>`.

Only the standard library is used. Output: a SQLite file (Label Studio's default), or with
--postgres-sql a script for `psql -v ON_ERROR_STOP=1 -f FILE` that fills an empty database.

    scripts/generate_label_studio_db.py --users 100000 --out /tmp/ls-100k.sqlite3
    scripts/generate_label_studio_db.py --users 100000 --postgres-sql /tmp/ls-100k.sql
"""

import argparse
import base64
import hashlib
import random
import sqlite3
import string
import sys
from datetime import datetime, timedelta, timezone

ITERATIONS = 1_000_000
HASHES = 8
ALNUM = string.ascii_letters + string.digits

SQLITE_DDL = [
    'CREATE TABLE "organization" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, '
    '"title" varchar(1000) NOT NULL, "created_at" datetime NOT NULL, '
    '"updated_at" datetime NOT NULL, "created_by_id" integer NULL UNIQUE '
    'REFERENCES "htx_user" ("id") DEFERRABLE INITIALLY DEFERRED, '
    '"token" varchar(256) NULL UNIQUE, "contact_info" varchar(254) NULL)',
    'CREATE TABLE "htx_user" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, '
    '"password" varchar(128) NOT NULL, "last_login" datetime NULL, "is_superuser" bool NOT NULL, '
    '"username" varchar(256) NOT NULL, "email" varchar(254) NOT NULL UNIQUE, '
    '"first_name" varchar(256) NOT NULL, "last_name" varchar(256) NOT NULL, '
    '"is_staff" bool NOT NULL, "is_active" bool NOT NULL, "date_joined" datetime NOT NULL, '
    '"last_activity" datetime NOT NULL, "activity_at" datetime NOT NULL, '
    '"phone" varchar(256) NOT NULL, "avatar" varchar(100) NOT NULL, '
    '"active_organization_id" integer NULL REFERENCES "organization" ("id") '
    'DEFERRABLE INITIALLY DEFERRED, "allow_newsletters" bool NULL, "custom_hotkeys" text NULL '
    'CHECK ((JSON_VALID("custom_hotkeys") OR "custom_hotkeys" IS NULL)))',
    'CREATE TABLE "authtoken_token" ("key" varchar(40) NOT NULL PRIMARY KEY, '
    '"created" datetime NOT NULL, "user_id" integer NOT NULL UNIQUE REFERENCES "htx_user" ("id") '
    'DEFERRABLE INITIALLY DEFERRED)',
    'CREATE TABLE "organizations_organizationmember" ("id" integer NOT NULL PRIMARY KEY '
    'AUTOINCREMENT, "created_at" datetime NOT NULL, "updated_at" datetime NOT NULL, '
    '"organization_id" integer NOT NULL REFERENCES "organization" ("id") DEFERRABLE INITIALLY '
    'DEFERRED, "user_id" integer NOT NULL REFERENCES "htx_user" ("id") DEFERRABLE INITIALLY '
    'DEFERRED, "deleted_at" datetime NULL)',
    'CREATE TABLE "jwt_auth_jwtsettings" ("organization_id" integer NOT NULL PRIMARY KEY '
    'REFERENCES "organization" ("id") DEFERRABLE INITIALLY DEFERRED, '
    '"api_tokens_enabled" bool NOT NULL, "api_token_ttl_days" integer NOT NULL, '
    '"created_at" datetime NOT NULL, "updated_at" datetime NOT NULL, '
    '"legacy_api_tokens_enabled" bool NOT NULL)',
]

POSTGRES_DDL = """
CREATE TABLE htx_user (
    id integer PRIMARY KEY, password varchar(128) NOT NULL, last_login timestamptz,
    is_superuser boolean NOT NULL, username varchar(256) NOT NULL,
    email varchar(254) NOT NULL UNIQUE, first_name varchar(256) NOT NULL,
    last_name varchar(256) NOT NULL, is_staff boolean NOT NULL, is_active boolean NOT NULL,
    date_joined timestamptz NOT NULL, last_activity timestamptz NOT NULL,
    activity_at timestamptz NOT NULL, phone varchar(256) NOT NULL, avatar varchar(100) NOT NULL,
    active_organization_id integer, allow_newsletters boolean, custom_hotkeys jsonb
);
CREATE TABLE organization (
    id integer PRIMARY KEY, title varchar(1000) NOT NULL, created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL, created_by_id integer UNIQUE REFERENCES htx_user (id),
    token varchar(256) UNIQUE, contact_info varchar(254)
);
CREATE TABLE authtoken_token (
    key varchar(40) PRIMARY KEY, created timestamptz NOT NULL,
    user_id integer NOT NULL UNIQUE REFERENCES htx_user (id)
);
CREATE TABLE organizations_organizationmember (
    id integer PRIMARY KEY, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
    organization_id integer NOT NULL REFERENCES organization (id),
    user_id integer NOT NULL REFERENCES htx_user (id), deleted_at timestamptz
);
CREATE TABLE jwt_auth_jwtsettings (
    organization_id integer PRIMARY KEY REFERENCES organization (id),
    api_tokens_enabled boolean NOT NULL, api_token_ttl_days integer NOT NULL,
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
    legacy_api_tokens_enabled boolean NOT NULL
);
"""


def django_pbkdf2(password: str, salt: str) -> str:
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), ITERATIONS)
    return f"pbkdf2_sha256${ITERATIONS}${salt}${base64.b64encode(digest).decode()}"


def generate(users: int, organizations: int, seed: int):
    """Yields the rows of each table, as Label Studio would hold them."""
    rng = random.Random(seed)
    print(f"hashing {HASHES} passwords with {ITERATIONS:,} iterations…", file=sys.stderr)
    hashes = [
        django_pbkdf2(f"bench-password-{k}", "".join(rng.choices(ALNUM, k=22)))
        for k in range(HASHES)
    ]
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)

    orgs = []
    for org_id in range(1, organizations + 1):
        created = start + timedelta(seconds=org_id)
        # The first users create the organizations and own them.
        orgs.append((org_id, f"Team {org_id}", created, created, org_id,
                     "".join(rng.choices(ALNUM, k=40)), None))

    rows_users, rows_tokens, rows_members = [], [], []
    member_id = 0
    for user_id in range(1, users + 1):
        joined = start + timedelta(minutes=user_id, microseconds=rng.randrange(1_000_000))
        local = f"user{user_id}"
        # One in a hundred kept the capitals typed at signup (the CLI and the API keep them).
        if user_id % 100 == 7:
            local = f"User.{user_id}"
        email = f"{local}@example.com"
        password = hashes[user_id % HASHES]
        if user_id % 100 == 13:
            password = ""  # created through the API: no password
        org_id = (user_id - 1) % organizations + 1
        active = user_id % 50 != 11
        rows_users.append((user_id, password, None, user_id == 1, local.lower(), email, "", "",
                           user_id == 1, active, joined, joined, joined, "", "", org_id, None,
                           None))
        rows_tokens.append(("%040x" % rng.getrandbits(160), joined, user_id))
        member_id += 1
        deleted = joined + timedelta(days=1) if user_id % 100 == 42 else None
        rows_members.append((member_id, joined, joined, org_id, user_id, deleted))
        if user_id % 20 == 3 and organizations > 1:
            member_id += 1
            other = org_id % organizations + 1
            rows_members.append((member_id, joined, joined, other, user_id, None))
    jwt = [(org_id, True, 73000, start, start, True) for org_id in range(1, organizations + 1)]
    return rows_users, orgs, rows_tokens, rows_members, jwt


def sqlite_time(value):
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(" ")
    return value


def write_sqlite(path, tables):
    users, orgs, tokens, members, jwt = tables
    conn = sqlite3.connect(path)
    for ddl in SQLITE_DDL:
        conn.execute(ddl)

    def rows(table):
        return [tuple(sqlite_time(v) for v in row) for row in table]

    conn.executemany(f"INSERT INTO htx_user VALUES ({', '.join('?' * 18)})", rows(users))
    conn.executemany("INSERT INTO organization VALUES (?, ?, ?, ?, ?, ?, ?)", rows(orgs))
    conn.executemany("INSERT INTO authtoken_token VALUES (?, ?, ?)", rows(tokens))
    conn.executemany(
        "INSERT INTO organizations_organizationmember VALUES (?, ?, ?, ?, ?, ?)", rows(members))
    conn.executemany("INSERT INTO jwt_auth_jwtsettings VALUES (?, ?, ?, ?, ?, ?)", rows(jwt))
    conn.commit()
    conn.close()


def copy_value(value):
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat(" ")
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def write_postgres_sql(path, tables):
    users, orgs, tokens, members, jwt = tables
    with open(path, "w", encoding="utf-8") as out:
        out.write(POSTGRES_DDL)
        for table, rows in [
            ("htx_user", users),
            ("organization", orgs),
            ("authtoken_token", tokens),
            ("organizations_organizationmember", members),
            ("jwt_auth_jwtsettings", jwt),
        ]:
            out.write(f"COPY {table} FROM stdin;\n")
            for row in rows:
                out.write("\t".join(copy_value(v) for v in row) + "\n")
            out.write("\\.\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--organizations", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="SQLite file to create (must not exist)")
    target.add_argument("--postgres-sql", help="psql script to write")
    args = parser.parse_args()
    tables = generate(args.users, max(1, args.organizations), args.seed)
    if args.out:
        write_sqlite(args.out, tables)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        write_postgres_sql(args.postgres_sql, tables)
        print(f"wrote {args.postgres_sql}", file=sys.stderr)


if __name__ == "__main__":
    main()
