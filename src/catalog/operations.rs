//! The catalog's record of lifecycle operations (see
//! [`crate::tenant::operations`]), as functions over a connection.

use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use crate::clock::Micros;
use crate::error::{Context, Error, Result};
use crate::ids::TenantId;
use crate::storage::sqlite::is_unique_violation;

/// What an operation does to a tenant's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationKind {
    /// A new tenant's file is made (empty, or a copy of another's).
    Create,
    /// Soft delete: the file moves to the trash.
    Delete,
    /// Erasure: the file, its trash copies and its backups are removed.
    Purge,
    /// The file moves to the trash and a checked snapshot takes its place.
    Restore,
}

impl OperationKind {
    fn as_str(self) -> &'static str {
        match self {
            OperationKind::Create => "create",
            OperationKind::Delete => "delete",
            OperationKind::Purge => "purge",
            OperationKind::Restore => "restore",
        }
    }

    fn parse(text: &str) -> rusqlite::Result<Self> {
        match text {
            "create" => Ok(OperationKind::Create),
            "delete" => Ok(OperationKind::Delete),
            "purge" => Ok(OperationKind::Purge),
            "restore" => Ok(OperationKind::Restore),
            other => Err(rusqlite::Error::InvalidColumnType(
                2,
                format!("unknown operation kind {other:?}"),
                rusqlite::types::Type::Text,
            )),
        }
    }
}

/// One operation as recorded.
#[derive(Clone, Debug)]
pub struct OperationRecord {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub kind: OperationKind,
    /// The call that started it, such as `RestoreTenant`.
    pub action: String,
    /// What tells a retry of the same call from another one.
    pub request: String,
    pub request_id: Option<Uuid>,
    /// A file name in `staging/`: a restore's checked snapshot.
    pub staging_file: Option<String>,
    /// A file name in `trash/`: where the tenant's file goes.
    pub trash_file: Option<String>,
    /// `None` while it runs.
    pub outcome: Option<String>,
    pub message: String,
    /// Once done with OK: what the call answers, as JSON.
    pub result: String,
    pub start_time: Micros,
    pub end_time: Option<Micros>,
}

const COLUMNS: &str = "id, tenant_id, kind, action, request, request_id, staging_file, \
                       trash_file, outcome, message, result, start_time, end_time";

fn from_row(row: &Row<'_>) -> rusqlite::Result<OperationRecord> {
    let uuid = |index: usize, text: String| {
        Uuid::try_parse(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                index,
                rusqlite::types::Type::Text,
                Box::new(e),
            )
        })
    };
    let tenant: String = row.get(1)?;
    Ok(OperationRecord {
        id: uuid(0, row.get(0)?)?,
        tenant_id: TenantId::parse("tenant_id", &tenant).map_err(|e| {
            rusqlite::Error::InvalidColumnType(1, e.to_string(), rusqlite::types::Type::Text)
        })?,
        kind: OperationKind::parse(&row.get::<_, String>(2)?)?,
        action: row.get(3)?,
        request: row.get(4)?,
        request_id: row
            .get::<_, Option<String>>(5)?
            .map(|text| uuid(5, text))
            .transpose()?,
        staging_file: row.get(6)?,
        trash_file: row.get(7)?,
        outcome: row.get(8)?,
        message: row.get(9)?,
        result: row.get(10)?,
        start_time: row.get(11)?,
        end_time: row.get(12)?,
    })
}

/// Records a running operation. A tenant with one running already is
/// FAILED_PRECONDITION (its gate makes that impossible: this is the last
/// line of defence).
pub fn insert(conn: &Connection, op: &OperationRecord) -> Result<()> {
    insert_as(conn, op, "running")
}

/// Records an operation that is done already: one whose every change is in
/// the transaction that records it, with its outcome, message, result and
/// end time as `op` has them.
pub fn insert_done(conn: &Connection, op: &OperationRecord) -> Result<()> {
    insert_as(conn, op, "done")
}

fn insert_as(conn: &Connection, op: &OperationRecord, state: &str) -> Result<()> {
    let inserted = conn
        .prepare_cached(&format!(
            "INSERT INTO operations ({COLUMNS}, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ))
        .and_then(|mut statement| {
            statement.execute(params![
                op.id.to_string(),
                op.tenant_id.to_string(),
                op.kind.as_str(),
                op.action,
                op.request,
                op.request_id.map(|id| id.to_string()),
                op.staging_file,
                op.trash_file,
                op.outcome,
                op.message,
                op.result,
                op.start_time,
                op.end_time,
                state,
            ])
        });
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(Error::FailedPrecondition(format!(
            "another operation on tenant {} is in progress, or request_id {} was used \
             already: wait for it, or use another request_id",
            op.tenant_id,
            op.request_id.map(|id| id.to_string()).unwrap_or_default()
        ))),
        Err(e) => Err(e).context(|| format!("recording an operation on tenant {}", op.tenant_id)),
    }
}

/// Records how an operation ended.
pub fn finish(
    conn: &Connection,
    id: Uuid,
    outcome: &str,
    message: &str,
    result: &str,
    time: Micros,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE operations SET state = 'done', outcome = ?2, message = ?3, result = ?4,
                               end_time = ?5
         WHERE id = ?1",
    )
    .and_then(|mut statement| {
        statement.execute(params![id.to_string(), outcome, message, result, time])
    })
    .context(|| format!("recording the end of operation {id}"))?;
    Ok(())
}

pub fn get(conn: &Connection, id: Uuid) -> Result<Option<OperationRecord>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM operations WHERE id = ?1"))
        .and_then(|mut statement| statement.query_row([id.to_string()], from_row).optional())
        .context(|| format!("reading operation {id}"))
}

/// The operation a client started with `request_id`, if any.
pub fn by_request_id(conn: &Connection, request_id: Uuid) -> Result<Option<OperationRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM operations WHERE request_id = ?1"
    ))
    .and_then(|mut statement| {
        statement
            .query_row([request_id.to_string()], from_row)
            .optional()
    })
    .context(|| format!("reading the operation of request {request_id}"))
}

/// Every operation still running, oldest first: at start-up, the ones a
/// stop interrupted.
pub fn running(conn: &Connection) -> Result<Vec<OperationRecord>> {
    let mut statement = conn
        .prepare(&format!(
            "SELECT {COLUMNS} FROM operations WHERE state = 'running' ORDER BY start_time"
        ))
        .context(|| "listing running operations".into())?;
    let rows = statement
        .query_map([], from_row)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .context(|| "listing running operations".into())?;
    Ok(rows)
}
