//! The catalog's schema, one migration per version. Append only: a released
//! migration is never edited, a change is a new entry at the end.

use crate::storage::schema::Migration;

pub const CATALOG: &[Migration] = &[
    Migration {
    description: "tenants, api keys and the admin audit trail",
    after: None,
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
        after: None,
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
        after: None,
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
        after: None,
        sql: "
        -- The last item call for the tenant (microseconds since the epoch),
        -- written in batches, not once per call; NULL if it never had one.
        ALTER TABLE tenants ADD COLUMN last_access_time INTEGER;
        -- More about an admin call than its target says (the tenants a
        -- search read).
        ALTER TABLE admin_audit ADD COLUMN detail TEXT NOT NULL DEFAULT '';
    ",
    },
    Migration {
        description: "lifecycle operations with their outcomes; backups made",
        after: None,
        sql: "
        -- Every lifecycle operation on a tenant's files (create, delete,
        -- purge, restore): recorded once it holds the tenant, run to its end
        -- by itself, and kept with its outcome, so that a caller that
        -- stopped waiting can look it up, and a retry can be answered with
        -- it. At most one runs per tenant; start-up finishes (or, for a
        -- creation, rolls back) those a crash interrupted.
        CREATE TABLE operations (
            id           TEXT PRIMARY KEY,
            tenant_id    TEXT NOT NULL,
            kind         TEXT NOT NULL CHECK (kind IN ('create', 'delete', 'purge', 'restore')),
            -- the call that started it: CreateTenant, DeleteTenant, ...
            action       TEXT NOT NULL,
            -- what tells a retry of the same call from another call
            request      TEXT NOT NULL DEFAULT '',
            -- the client's request id (AIP-155), if it gave one
            request_id   TEXT,
            -- restore: the checked snapshot waiting in staging/ (a file name)
            staging_file TEXT,
            -- where the tenant's current file goes (a file name in trash/)
            trash_file   TEXT,
            state        TEXT NOT NULL CHECK (state IN ('running', 'done')),
            -- once done: OK, or the name of the status code it failed with
            outcome      TEXT,
            message      TEXT NOT NULL DEFAULT '',
            -- once done with OK: what the call answers, as JSON
            result       TEXT NOT NULL DEFAULT '',
            start_time   INTEGER NOT NULL,
            end_time     INTEGER
        ) STRICT;
        CREATE UNIQUE INDEX operations_running ON operations (tenant_id) WHERE state = 'running';
        CREATE UNIQUE INDEX operations_request ON operations (request_id) WHERE request_id IS NOT NULL;
        -- Operations a crash interrupted before this version: finished at
        -- start-up like any other.
        INSERT INTO operations (id, tenant_id, kind, action, staging_file, trash_file, state, start_time)
            SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
                         || substr(hex(randomblob(2)), 2) || '-a'
                         || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))),
                   tenant_id, kind,
                   CASE kind WHEN 'delete' THEN 'DeleteTenant' WHEN 'purge' THEN 'PurgeTenant'
                             ELSE 'RestoreTenant' END,
                   staging_file, trash_file, 'running', start_time
            FROM tenant_operations;
        DROP TABLE tenant_operations;

        -- The snapshots BackupTenant made: a restore takes only these, into
        -- their own tenant, and only while their bytes are as recorded.
        CREATE TABLE backups (
            -- relative to the data directory: backups/<tenant id>/<time>.db
            path           TEXT PRIMARY KEY,
            tenant_id      TEXT NOT NULL,
            size_bytes     INTEGER NOT NULL,
            sha256         TEXT NOT NULL,
            schema_version INTEGER NOT NULL,
            create_time    INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX backups_tenant ON backups (tenant_id);
    ",
    },
    Migration {
        description: "spare tenant files",
        after: None,
        sql: "
        -- Empty tenant files made ahead, at their final place
        -- (tenants/<id>.db), so that creating a tenant takes one catalog
        -- commit and no file work: 'making' while the files are written and
        -- synced (start-up removes those a stop interrupted), 'ready' once
        -- they are durable. A spare is never served: it has no tenant row.
        CREATE TABLE spare_tenants (
            id             TEXT PRIMARY KEY,
            schema_version INTEGER NOT NULL,
            state          TEXT NOT NULL CHECK (state IN ('making', 'ready')),
            create_time    INTEGER NOT NULL
        ) STRICT;
    ",
    },
];
