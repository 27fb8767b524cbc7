//! Note storage: the SQL over one tenant's connection.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use uuid::Uuid;

use crate::clock::{Micros, now_micros};
use crate::error::{Context, Error, Result};

pub const MAX_BODY_CHARS: usize = 1_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub id: Uuid,
    pub body: String,
    pub create_time: Micros,
}

/// Checks a body: 1 to 1,000 characters.
pub fn check_body(field: &'static str, body: &str) -> Result<()> {
    let chars = body.chars().count();
    if chars == 0 || chars > MAX_BODY_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be 1 to {MAX_BODY_CHARS} characters (it has {chars})"),
        ));
    }
    Ok(())
}

pub fn insert(tx: &Transaction<'_>, body: String) -> Result<Note> {
    let note = Note {
        id: Uuid::now_v7(),
        body,
        create_time: now_micros(),
    };
    tx.prepare_cached("INSERT INTO notes (id, body, create_time) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| {
            s.execute(params![
                note.id.hyphenated().to_string(),
                note.body,
                note.create_time
            ])
        })
        .context(|| "inserting a note".into())?;
    Ok(note)
}

pub fn get(conn: &Connection, id: Uuid) -> Result<Option<Note>> {
    conn.prepare_cached("SELECT body, create_time FROM notes WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row(params![id.hyphenated().to_string()], |row| {
                Ok(Note {
                    id,
                    body: row.get(0)?,
                    create_time: row.get(1)?,
                })
            })
            .optional()
        })
        .context(|| format!("reading note {id}"))
}
