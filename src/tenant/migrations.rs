//! The schema of a tenant database, one migration per version. Append only: a
//! released migration is never edited, a change is a new entry at the end.

use crate::storage::schema::Migration;

pub const TENANT: &[Migration] = &[
    Migration {
        description: "items",
        sql: "
        CREATE TABLE items (
            id          TEXT PRIMARY KEY,
            title       TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            completed   INTEGER NOT NULL DEFAULT 0 CHECK (completed IN (0, 1)),
            create_time INTEGER NOT NULL,
            update_time INTEGER NOT NULL,
            revision    INTEGER NOT NULL DEFAULT 1
        ) STRICT;
        -- ListItems walks these newest first, with or without the completed filter.
        CREATE INDEX items_newest ON items (create_time DESC, id DESC);
        CREATE INDEX items_completed_newest ON items (completed, create_time DESC, id DESC);
    ",
    },
    Migration {
        description: "items.due_time",
        sql: "
        -- When an item is due (microseconds since the epoch), or NULL.
        ALTER TABLE items ADD COLUMN due_time INTEGER;
        -- What is due soonest: only items that have a due time are indexed.
        CREATE INDEX items_due ON items (due_time) WHERE due_time IS NOT NULL;
    ",
    },
    Migration {
        description: "audit trail of writes",
        sql: "
        -- Every write to this tenant's data, in the same transaction as the
        -- write, so that the trail travels with the tenant's file.
        CREATE TABLE audit_events (
            id      INTEGER PRIMARY KEY,
            time    INTEGER NOT NULL,
            -- CreateItem, UpdateItem, DeleteItem
            action  TEXT NOT NULL,
            item_id TEXT NOT NULL,
            -- 'keys/<api key id>' (or 'admin')
            actor   TEXT NOT NULL
        ) STRICT;
        CREATE INDEX audit_events_time ON audit_events (time);
    ",
    },
];

/// The schema version this binary creates and serves.
pub fn latest() -> u32 {
    TENANT.len() as u32
}
