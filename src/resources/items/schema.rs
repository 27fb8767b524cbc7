//! The items' share of the tenant database: their table and indexes, and
//! the check that a file from outside holds only items the API could have
//! written.

use rusqlite::Connection;

use crate::storage::schema::{Migration, OptionalIndex, Part, Released, Schema, check_table};

use super::store::{MAX_DESCRIPTION_CHARS, MAX_REVISION, MAX_TITLE_CHARS};

pub static SCHEMA: Part = Part {
    name: "items",
    collection: "items",
    writes: &["CreateItem", "UpdateItem", "DeleteItem"],
    optional_indexes: &[NEWEST, COMPLETED_NEWEST],
    migrations: &[
        Released {
            version: 1,
            migration: Migration {
                description: "items",
                after: None,
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
                after: None,
                sql: "
        -- When an item is due (microseconds since the epoch), or NULL.
        ALTER TABLE items ADD COLUMN due_time INTEGER;
        -- What is due soonest: only items that have a due time are indexed.
        CREATE INDEX items_due ON items (due_time) WHERE due_time IS NOT NULL;
    ",
            },
        },
        Released {
            version: 4,
            migration: Migration {
                description: "items keyed by their id, in order",
                after: Some(keep_time_order_where_needed),
                sql: "
        -- Keyed by the id's 16 bytes, without a rowid: a point read is one
        -- b-tree descent, and the ids, which are ordered by their creation
        -- time, give the list order (newest first) without an index of
        -- their own. A write touches three pages: the item's, the
        -- completed index's and the audit trail's.
        CREATE TABLE items_by_id (
            id          BLOB PRIMARY KEY CHECK (length(id) = 16),
            title       TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            completed   INTEGER NOT NULL DEFAULT 0 CHECK (completed IN (0, 1)),
            create_time INTEGER NOT NULL,
            update_time INTEGER NOT NULL,
            revision    INTEGER NOT NULL DEFAULT 1,
            due_time    INTEGER
        ) STRICT, WITHOUT ROWID;
        INSERT INTO items_by_id
            SELECT unhex(replace(id, '-', '')), title, description, completed,
                   create_time, update_time, revision, due_time
            FROM items;
        DROP TABLE items;
        ALTER TABLE items_by_id RENAME TO items;
        -- ListItems with the completed filter walks this (its entries end
        -- with the id), newest first.
        CREATE INDEX items_completed ON items (completed);
        CREATE INDEX items_due ON items (due_time) WHERE due_time IS NOT NULL;
    ",
            },
        },
    ],
    check_rows,
};

/// The index a file keeps for the list order where its ids and creation
/// times disagree (see [`keep_time_order_where_needed`]).
const NEWEST: OptionalIndex = OptionalIndex {
    since: 4,
    name: "items_newest",
    table: "items",
    sql: NEWEST_SQL,
};
pub(super) const NEWEST_SQL: &str =
    "CREATE INDEX items_newest ON items (create_time DESC, id DESC)";
const COMPLETED_NEWEST: OptionalIndex = OptionalIndex {
    since: 4,
    name: "items_completed_newest",
    table: "items",
    sql: COMPLETED_NEWEST_SQL,
};
pub(super) const COMPLETED_NEWEST_SQL: &str =
    "CREATE INDEX items_completed_newest ON items (completed, create_time DESC, id DESC)";

/// Lists are newest first: by creation time, then id. Ids made since
/// version 4 come from the same reading of the clock as the creation time
/// ([`crate::clock::reading_after`]), so in id order the times never go
/// back, and the id order is the list order. Items made before came from two
/// readings, and a clock set back, or a file imported from elsewhere, can
/// have them disagree: such a file keeps indexes in the time order, and is
/// listed by them, so that no list changes its order.
fn keep_time_order_where_needed(conn: &Connection) -> rusqlite::Result<()> {
    if ids_follow_times(conn)? {
        return Ok(());
    }
    tracing::info!(
        "a tenant's item ids and creation times disagree in order: it keeps its lists' indexes"
    );
    conn.execute_batch(&format!("{};\n{};", NEWEST.sql, COMPLETED_NEWEST.sql))
}

/// Whether, in id order, no item's creation time is before the previous
/// item's.
fn ids_follow_times(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT NOT EXISTS (
             SELECT 1 FROM (
                 SELECT create_time, lag(create_time) OVER (ORDER BY id) AS previous FROM items
             ) WHERE create_time < previous
         )",
        [],
        |row| row.get(0),
    )
}

/// Whether the file lists its items in id order (else by its indexes in
/// creation time order, see [`keep_time_order_where_needed`]).
pub fn listed_by_id(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT NOT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'index' AND name = 'items_newest')",
    )?
    .query_row([], |row| row.get(0))
}

/// Every item must be one the API could have written: a canonical UUID
/// (16 bytes since version 4), a title and description within the API's
/// limits, a flag, revision and times in range; and, in a file listed in id
/// order, no creation time before the one of the item before it. Sizes are
/// counted first, so that no oversized value is ever loaded.
fn check_rows(conn: &Connection, version: u32, _: &Schema) -> Result<(), String> {
    let keyed_by_bytes = version >= 4;
    let id_bytes = if keyed_by_bytes { 16 } else { 36 };
    let oversized = format!(
        "SELECT count(*) FROM items WHERE octet_length(id) <> {id_bytes}
         OR octet_length(title) > {} OR octet_length(description) > {}",
        MAX_TITLE_CHARS * 4,
        MAX_DESCRIPTION_CHARS * 4
    );
    let due = if version >= 2 { "due_time" } else { "NULL" };
    let select = format!(
        "SELECT id, title, description, completed, create_time, update_time, revision, {due}
         FROM items ORDER BY id"
    );
    let in_id_order = keyed_by_bytes
        && listed_by_id(conn).map_err(|e| format!("its schema cannot be read ({e})"))?;
    let mut previous = i64::MIN;
    check_table(conn, "items", &oversized, &select, |row| {
        let id = match keyed_by_bytes {
            true => uuid::Uuid::from_slice(&row.get::<_, Vec<u8>>(0)?).ok(),
            false => crate::ids::parse_canonical_uuid("id", &row.get::<_, String>(0)?).ok(),
        };
        let create_time: i64 = row.get(4)?;
        let update_time: i64 = row.get(5)?;
        let future = [
            Some(create_time),
            Some(update_time),
            id.as_ref().and_then(crate::clock::time_of_id),
        ]
        .into_iter()
        .flatten()
        .any(|time| !crate::clock::is_not_future(time));
        if future {
            let named = id.map_or_else(|| "with a malformed id".to_owned(), |id| id.to_string());
            return Ok(Err(format!(
                "item {named} is dated more than a year after this server's clock"
            )));
        }
        let valid = id.is_some()
            && super::store::check_title("title", &row.get::<_, String>(1)?).is_ok()
            && super::store::check_description("description", &row.get::<_, String>(2)?).is_ok()
            && (0..=1).contains(&row.get::<_, i64>(3)?)
            && crate::clock::is_valid(create_time)
            && crate::clock::is_valid(update_time)
            && (1..=MAX_REVISION).contains(&row.get::<_, i64>(6)?)
            && row
                .get::<_, Option<i64>>(7)?
                .is_none_or(crate::clock::is_valid)
            && (!in_id_order || create_time >= previous);
        previous = create_time;
        let named = id.map_or_else(|| "with a malformed id".to_owned(), |id| id.to_string());
        Ok(match valid {
            true => Ok(()),
            false => Err(format!("item {named} is not one the API could have stored")),
        })
    })
}
