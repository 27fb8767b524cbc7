//! The catalog's schema, one migration per version. Append only: a released
//! migration is never edited, a change is a new entry at the end.

use crate::schema::Migration;

pub const CATALOG: &[Migration] = &[
    Migration {
    description: "tenants, api keys and the admin audit trail",
    sql: "
        CREATE TABLE tenants (
            id             TEXT PRIMARY KEY,
            name           TEXT NOT NULL,
            display_name   TEXT NOT NULL DEFAULT '',
            state          TEXT NOT NULL
                           CHECK (state IN ('provisioning', 'active', 'suspended', 'deleting', 'deleted')),
            schema_version INTEGER NOT NULL DEFAULT 0,
            create_time    INTEGER NOT NULL,
            update_time    INTEGER NOT NULL
        ) STRICT;
        -- A name is unique among tenants that exist; a deleted tenant's name is free again.
        CREATE UNIQUE INDEX tenants_live_name ON tenants (name) WHERE state <> 'deleted';
        CREATE INDEX tenants_state ON tenants (state);

        CREATE TABLE api_keys (
            id            TEXT PRIMARY KEY,
            tenant_id     TEXT NOT NULL REFERENCES tenants (id),
            description   TEXT NOT NULL DEFAULT '',
            secret_sha256 BLOB NOT NULL CHECK (length(secret_sha256) = 32),
            create_time   INTEGER NOT NULL,
            revoke_time   INTEGER
        ) STRICT;
        CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

        CREATE TABLE admin_audit (
            id        INTEGER PRIMARY KEY,
            time      INTEGER NOT NULL,
            actor     TEXT NOT NULL,
            action    TEXT NOT NULL,
            target    TEXT NOT NULL DEFAULT '',
            outcome   TEXT NOT NULL
        ) STRICT;
    ",
},
    Migration {
        description: "tenant operations in progress",
        sql: "
        -- A lifecycle operation that moves files (delete, purge, restore),
        -- recorded before its first step and removed after its last, so that
        -- start-up can finish whatever a crash interrupted. At most one per
        -- tenant at a time.
        CREATE TABLE tenant_operations (
            tenant_id    TEXT PRIMARY KEY REFERENCES tenants (id),
            kind         TEXT NOT NULL CHECK (kind IN ('delete', 'purge', 'restore')),
            -- restore: the checked snapshot waiting in staging/ (a file name)
            staging_file TEXT,
            -- where the tenant's current file goes (a file name in trash/)
            trash_file   TEXT,
            start_time   INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX api_keys_tenant_created ON api_keys (tenant_id, create_time, id);
        DROP INDEX api_keys_tenant;
    ",
    },
    Migration {
        description: "admin audit trail by tenant",
        sql: "
        -- The tenant an admin event concerns, for ListAuditEvents by tenant.
        ALTER TABLE admin_audit ADD COLUMN tenant_id TEXT;
        UPDATE admin_audit SET tenant_id = substr(target, 9, 36)
            WHERE target GLOB 'tenants/[0-9a-f]*' AND length(target) >= 44;
        UPDATE admin_audit SET outcome = 'OK' WHERE outcome = 'ok';
        CREATE INDEX admin_audit_time ON admin_audit (time, id);
        CREATE INDEX admin_audit_tenant ON admin_audit (tenant_id, time, id)
            WHERE tenant_id IS NOT NULL;
    ",
    },
    Migration {
        description: "tenant last access, audit detail",
        sql: "
        -- The last item call for the tenant (microseconds since the epoch),
        -- written in batches, not once per call; NULL if it never had one.
        ALTER TABLE tenants ADD COLUMN last_access_time INTEGER;
        -- More about an admin call than its target says (the tenants a
        -- search read).
        ALTER TABLE admin_audit ADD COLUMN detail TEXT NOT NULL DEFAULT '';
    ",
    },
];
