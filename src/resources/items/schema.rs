//! The items' share of the tenant database: their table and indexes, and
//! the check that a file from outside holds only items the API could have
//! written.

use rusqlite::Connection;

use crate::storage::schema::{Migration, Part, Released, Schema, check_table};

use super::store::{MAX_DESCRIPTION_CHARS, MAX_REVISION, MAX_TITLE_CHARS};

pub static SCHEMA: Part = Part {
    name: "items",
    collection: "items",
    writes: &["CreateItem", "UpdateItem", "DeleteItem"],
    migrations: &[
        Released {
            version: 1,
            migration: Migration {
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
        },
        Released {
            version: 2,
            migration: Migration {
                description: "items.due_time",
                sql: "
        -- When an item is due (microseconds since the epoch), or NULL.
        ALTER TABLE items ADD COLUMN due_time INTEGER;
        -- What is due soonest: only items that have a due time are indexed.
        CREATE INDEX items_due ON items (due_time) WHERE due_time IS NOT NULL;
    ",
            },
        },
    ],
    check_rows,
};

/// Every item must be one the API could have written: a canonical UUID,
/// a title and description within the API's limits, a flag, revision and
/// times in range. Sizes are counted first, so that no oversized value is
/// ever loaded.
fn check_rows(conn: &Connection, version: u32, _: &Schema) -> Result<(), String> {
    let oversized = format!(
        "SELECT count(*) FROM items WHERE octet_length(id) <> 36
         OR octet_length(title) > {} OR octet_length(description) > {}",
        MAX_TITLE_CHARS * 4,
        MAX_DESCRIPTION_CHARS * 4
    );
    let due = if version >= 2 { "due_time" } else { "NULL" };
    let select = format!(
        "SELECT id, title, description, completed, create_time, update_time, revision, {due}
         FROM items"
    );
    check_table(conn, "items", &oversized, &select, |row| {
        let id: String = row.get(0)?;
        let valid = crate::ids::parse_canonical_uuid("id", &id).is_ok()
            && super::store::check_title("title", &row.get::<_, String>(1)?).is_ok()
            && super::store::check_description("description", &row.get::<_, String>(2)?).is_ok()
            && (0..=1).contains(&row.get::<_, i64>(3)?)
            && crate::clock::is_valid(row.get(4)?)
            && crate::clock::is_valid(row.get(5)?)
            && (1..=MAX_REVISION).contains(&row.get::<_, i64>(6)?)
            && row
                .get::<_, Option<i64>>(7)?
                .is_none_or(crate::clock::is_valid);
        Ok(match valid {
            true => Ok(()),
            false => Err(format!(
                "item {} is not one the API could have stored",
                crate::audit::clip(&id)
            )),
        })
    })
}
