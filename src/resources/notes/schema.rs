//! The notes' share of the tenant database.

use rusqlite::Connection;

use crate::storage::schema::{Migration, Part, Released, Schema};

use super::store::MAX_BODY_CHARS;

pub static SCHEMA: Part = Part {
    name: "notes",
    collection: "notes",
    writes: &["CreateNote"],
    migrations: &[Released {
        // After every version the served resources released.
        version: 4,
        migration: Migration {
            description: "notes",
            sql: "
        CREATE TABLE notes (
            id          TEXT PRIMARY KEY,
            body        TEXT NOT NULL,
            create_time INTEGER NOT NULL
        ) STRICT;
    ",
        },
    }],
    check_rows,
};

/// Every note must be one the API could have written.
fn check_rows(conn: &Connection, _version: u32, _: &Schema) -> Result<(), String> {
    let bad = |e: rusqlite::Error| format!("its notes cannot be read ({e})");
    let oversized: i64 = conn
        .query_row(
            &format!(
                "SELECT count(*) FROM notes
                 WHERE octet_length(id) <> 36 OR octet_length(body) > {}",
                MAX_BODY_CHARS * 4
            ),
            [],
            |row| row.get(0),
        )
        .map_err(bad)?;
    if oversized > 0 {
        return Err(format!(
            "{oversized} of its notes have fields longer than the API allows"
        ));
    }
    let mut statement = conn
        .prepare("SELECT id, body, create_time FROM notes")
        .map_err(bad)?;
    let mut rows = statement.query([]).map_err(bad)?;
    while let Some(row) = rows.next().map_err(bad)? {
        let (id, body, time): (String, String, i64) = (
            row.get(0).map_err(bad)?,
            row.get(1).map_err(bad)?,
            row.get(2).map_err(bad)?,
        );
        let valid = crate::ids::parse_canonical_uuid("id", &id).is_ok()
            && super::store::check_body("body", &body).is_ok()
            && crate::clock::is_valid(time);
        if !valid {
            return Err(format!(
                "note {} is not one the API could have stored",
                crate::audit::clip(&id)
            ));
        }
    }
    Ok(())
}
