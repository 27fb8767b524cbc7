//! The notes' share of the tenant database.

use rusqlite::Connection;

use crate::storage::schema::{Migration, Part, Released, Schema, check_table};

use super::store::MAX_BODY_CHARS;

pub static SCHEMA: Part = Part {
    name: "notes",
    collection: "notes",
    writes: &["CreateNote"],
    migrations: &[Released {
        // After every version the served resources released.
        version: 6,
        migration: Migration {
            description: "notes",
            after: None,
            sql: "
        CREATE TABLE notes (
            id          TEXT PRIMARY KEY,
            body        TEXT NOT NULL,
            create_time INTEGER NOT NULL
        ) STRICT;
    ",
        },
    }],
    optional_indexes: &[],
    check_rows,
};

/// Every note must be one the API could have written.
fn check_rows(conn: &Connection, _version: u32, _: &Schema) -> Result<(), String> {
    let oversized = format!(
        "SELECT count(*) FROM notes WHERE octet_length(id) <> 36 OR octet_length(body) > {}",
        MAX_BODY_CHARS * 4
    );
    let select = "SELECT id, body, create_time FROM notes";
    check_table(conn, "notes", &oversized, select, |row| {
        let id: String = row.get(0)?;
        let valid = crate::ids::parse_canonical_uuid("id", &id).is_ok()
            && super::store::check_body("body", &row.get::<_, String>(1)?).is_ok()
            && crate::clock::is_valid(row.get(2)?);
        Ok(match valid {
            true => Ok(()),
            false => Err(format!(
                "note {} is not one the API could have stored",
                crate::audit::clip(&id)
            )),
        })
    })
}
