//! The catalog's record of spare tenant files (see
//! [`crate::tenant::spares`]), as functions over a connection.

use rusqlite::{Connection, OptionalExtension, params};

use crate::clock::Micros;
use crate::error::{Context, Result};
use crate::ids::TenantId;

/// A spare as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spare {
    pub id: TenantId,
    pub schema_version: u32,
    pub ready: bool,
}

/// Records spares about to be made.
pub fn insert_making(
    conn: &Connection,
    ids: &[TenantId],
    version: u32,
    time: Micros,
) -> Result<()> {
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO spare_tenants (id, schema_version, state, create_time)
             VALUES (?1, ?2, 'making', ?3)",
        )
        .context(|| "recording spare tenant files".into())?;
    for id in ids {
        statement
            .execute(params![id.to_string(), version, time])
            .context(|| format!("recording spare tenant file {id}"))?;
    }
    Ok(())
}

/// Records spares as made and durable.
pub fn mark_ready(conn: &Connection, ids: &[TenantId]) -> Result<()> {
    let mut statement = conn
        .prepare_cached("UPDATE spare_tenants SET state = 'ready' WHERE id = ?1")
        .context(|| "recording spare tenant files as ready".into())?;
    for id in ids {
        statement
            .execute([id.to_string()])
            .context(|| format!("recording spare tenant file {id} as ready"))?;
    }
    Ok(())
}

/// Takes a ready spare at `version` (it is no spare any more once this
/// transaction commits), if there is one.
pub fn take_ready(conn: &Connection, version: u32) -> Result<Option<TenantId>> {
    let id: Option<String> = conn
        .prepare_cached(
            "DELETE FROM spare_tenants
             WHERE id = (SELECT id FROM spare_tenants
                         WHERE state = 'ready' AND schema_version = ?1 LIMIT 1)
             RETURNING id",
        )
        .and_then(|mut statement| statement.query_row([version], |row| row.get(0)).optional())
        .context(|| "taking a spare tenant file".into())?;
    id.map(|id| TenantId::parse("id", &id))
        .transpose()
        .context(|| "reading a spare tenant file's id".into())
}

/// Forgets a spare.
pub fn remove(conn: &Connection, id: TenantId) -> Result<()> {
    conn.execute("DELETE FROM spare_tenants WHERE id = ?1", [id.to_string()])
        .context(|| format!("forgetting spare tenant file {id}"))?;
    Ok(())
}

/// Every spare recorded.
pub fn all(conn: &Connection) -> Result<Vec<Spare>> {
    let mut statement = conn
        .prepare("SELECT id, schema_version, state FROM spare_tenants")
        .context(|| "listing spare tenant files".into())?;
    let rows = statement
        .query_map([], |row| {
            let id: String = row.get(0)?;
            Ok((
                id,
                row.get::<_, u32>(1)?,
                row.get::<_, String>(2)? == "ready",
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .context(|| "listing spare tenant files".into())?;
    rows.into_iter()
        .map(|(id, schema_version, ready)| {
            Ok(Spare {
                id: TenantId::parse("id", &id).context(|| "reading a spare's id".into())?,
                schema_version,
                ready,
            })
        })
        .collect()
}

/// How many spares at `version` are ready.
pub fn count_ready(conn: &Connection, version: u32) -> Result<usize> {
    conn.query_row(
        "SELECT count(*) FROM spare_tenants WHERE state = 'ready' AND schema_version = ?1",
        [version],
        |row| row.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as usize)
    .context(|| "counting spare tenant files".into())
}
