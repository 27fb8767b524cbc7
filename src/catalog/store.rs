//! The catalog's SQL, as functions over a connection or a transaction.

use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use crate::clock::Micros;
use crate::error::{Context, Error, Result};
use crate::ids::TenantId;
use crate::storage::sqlite::is_unique_violation;

/// Where a tenant is in its life. Only `Active` tenants are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantState {
    /// Its catalog row exists, its file is being made; invisible to clients.
    Provisioning,
    Active,
    Suspended,
    Deleting,
    Deleted,
}

impl TenantState {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Provisioning => "provisioning",
            TenantState::Active => "active",
            TenantState::Suspended => "suspended",
            TenantState::Deleting => "deleting",
            TenantState::Deleted => "deleted",
        }
    }

    fn parse(text: &str) -> rusqlite::Result<Self> {
        Ok(match text {
            "provisioning" => TenantState::Provisioning,
            "active" => TenantState::Active,
            "suspended" => TenantState::Suspended,
            "deleting" => TenantState::Deleting,
            "deleted" => TenantState::Deleted,
            other => {
                return Err(rusqlite::Error::InvalidColumnType(
                    0,
                    format!("unknown tenant state {other:?}"),
                    rusqlite::types::Type::Text,
                ));
            }
        })
    }

    /// Whether clients can see the tenant at all (in Get and List).
    pub fn is_visible(self) -> bool {
        matches!(self, TenantState::Active | TenantState::Suspended)
    }
}

#[derive(Clone, Debug)]
pub struct TenantRecord {
    pub id: TenantId,
    pub name: String,
    pub display_name: String,
    pub state: TenantState,
    pub schema_version: u32,
    pub create_time: Micros,
    pub update_time: Micros,
    /// The last call to the tenant's data as last flushed to the catalog
    /// (see [`crate::tenant::Registry::flush_accesses`]); `None` if never.
    pub last_access_time: Option<Micros>,
}

#[derive(Clone, Debug)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub description: String,
    pub secret_sha256: [u8; 32],
    pub create_time: Micros,
    pub revoke_time: Option<Micros>,
}

/// What one API key grants: the tenant it acts for, and whether it still may.
#[derive(Clone, Debug)]
pub struct KeyGrant {
    pub key_id: Uuid,
    pub tenant_id: TenantId,
    pub secret_sha256: [u8; 32],
    pub revoked: bool,
    pub tenant_state: TenantState,
}

const TENANT_COLUMNS: &str =
    "id, name, display_name, state, schema_version, create_time, update_time, last_access_time";

fn tenant_from_row(row: &Row<'_>) -> rusqlite::Result<TenantRecord> {
    let id: String = row.get(0)?;
    Ok(TenantRecord {
        id: parse_tenant_id(&id)?,
        name: row.get(1)?,
        display_name: row.get(2)?,
        state: TenantState::parse(&row.get::<_, String>(3)?)?,
        schema_version: row.get(4)?,
        create_time: row.get(5)?,
        update_time: row.get(6)?,
        last_access_time: row.get(7)?,
    })
}

fn parse_tenant_id(text: &str) -> rusqlite::Result<TenantId> {
    TenantId::parse("id", text).map_err(|e| {
        rusqlite::Error::InvalidColumnType(0, e.to_string(), rusqlite::types::Type::Text)
    })
}

pub fn insert_tenant(conn: &Connection, tenant: &TenantRecord) -> Result<()> {
    let inserted = conn
        .prepare_cached(&format!(
            "INSERT INTO tenants ({TENANT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ))
        .and_then(|mut statement| {
            statement.execute(params![
                tenant.id.to_string(),
                tenant.name,
                tenant.display_name,
                tenant.state.as_str(),
                tenant.schema_version,
                tenant.create_time,
                tenant.update_time,
                tenant.last_access_time,
            ])
        });
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists(format!(
            "a tenant named {:?} already exists: choose another name",
            tenant.name
        ))),
        Err(e) => Err(e).context(|| format!("inserting tenant {}", tenant.id)),
    }
}

pub fn set_tenant_state(
    conn: &Connection,
    id: TenantId,
    state: TenantState,
    schema_version: u32,
    time: Micros,
) -> Result<()> {
    conn.execute(
        "UPDATE tenants SET state = ?2, schema_version = ?3, update_time = ?4 WHERE id = ?1",
        params![id.to_string(), state.as_str(), schema_version, time],
    )
    .context(|| format!("setting tenant {id} {}", state.as_str()))?;
    Ok(())
}

/// Writes a tenant's `display_name`, `state` and `update_time`.
pub fn update_tenant(conn: &Connection, tenant: &TenantRecord) -> Result<()> {
    conn.execute(
        "UPDATE tenants SET display_name = ?2, state = ?3, update_time = ?4 WHERE id = ?1",
        params![
            tenant.id.to_string(),
            tenant.display_name,
            tenant.state.as_str(),
            tenant.update_time
        ],
    )
    .context(|| format!("updating tenant {}", tenant.id))?;
    Ok(())
}

pub fn set_schema_version(conn: &Connection, id: TenantId, version: u32) -> Result<()> {
    conn.prepare_cached("UPDATE tenants SET schema_version = ?2 WHERE id = ?1")
        .and_then(|mut statement| statement.execute(params![id.to_string(), version]))
        .context(|| format!("recording the schema version of tenant {id}"))?;
    Ok(())
}

/// Active and suspended tenants whose recorded schema version is below
/// `latest`, with that version.
pub fn tenants_to_migrate(conn: &Connection, latest: u32) -> Result<Vec<(TenantId, u32)>> {
    let mut statement = conn
        .prepare(
            "SELECT id, schema_version FROM tenants
             WHERE state IN ('active', 'suspended') AND schema_version < ?1 ORDER BY id",
        )
        .context(|| "listing tenants to migrate".into())?;
    let rows = statement
        .query_map([latest], |row| {
            Ok((parse_tenant_id(&row.get::<_, String>(0)?)?, row.get(1)?))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .context(|| "listing tenants to migrate".into())?;
    Ok(rows)
}

/// Sets a tenant's state, leaving its schema version alone.
pub fn set_tenant_state_only(
    conn: &Connection,
    id: TenantId,
    state: TenantState,
    time: Micros,
) -> Result<()> {
    conn.execute(
        "UPDATE tenants SET state = ?2, update_time = ?3 WHERE id = ?1",
        params![id.to_string(), state.as_str(), time],
    )
    .context(|| format!("setting tenant {id} {}", state.as_str()))?;
    Ok(())
}

/// Records the last calls to tenants' data, never moving a time backwards.
pub fn record_accesses(conn: &Connection, accesses: &[(TenantId, Micros)]) -> Result<()> {
    let mut statement = conn
        .prepare_cached(
            "UPDATE tenants SET last_access_time = max(coalesce(last_access_time, ?2), ?2)
             WHERE id = ?1",
        )
        .context(|| "recording tenant accesses".into())?;
    for (tenant, time) in accesses {
        statement
            .execute(params![tenant.to_string(), time])
            .context(|| format!("recording an access to tenant {tenant}"))?;
    }
    Ok(())
}

pub fn get_tenant(conn: &Connection, id: TenantId) -> Result<Option<TenantRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"
    ))
    .and_then(|mut statement| {
        statement
            .query_row([id.to_string()], tenant_from_row)
            .optional()
    })
    .context(|| format!("reading tenant {id}"))
}

/// Visible tenants ordered by name, after `after_name` when given. The
/// `state <> 'deleted'` term lets SQLite walk the partial unique index on name.
pub fn list_tenants(
    conn: &Connection,
    after_name: Option<&str>,
    limit: usize,
) -> Result<Vec<TenantRecord>> {
    let mut statement = conn
        .prepare_cached(&list_tenants_sql())
        .context(|| "listing tenants".into())?;
    let rows = statement
        .query_map(
            params![after_name.unwrap_or(""), limit as i64],
            tenant_from_row,
        )
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .context(|| "listing tenants".into())?;
    Ok(rows)
}

/// A page of live tenants by name. `state <> 'deleted'` selects the partial
/// index on names, which walks tenants in order from the token on; the unary
/// `+` keeps SQLite from preferring the index on state, which would read
/// every live tenant and sort them all for each page.
fn list_tenants_sql() -> String {
    format!(
        "SELECT {TENANT_COLUMNS} FROM tenants
         WHERE state <> 'deleted' AND +state IN ('active', 'suspended') AND name > ?1
         ORDER BY name LIMIT ?2"
    )
}

/// How SQLite will run [`list_tenants`]: for a test that a page costs the
/// same with any number of tenants.
#[cfg(test)]
fn list_tenants_plan(conn: &Connection) -> String {
    let sql = format!("EXPLAIN QUERY PLAN {}", list_tenants_sql());
    let mut statement = conn.prepare(&sql).unwrap();
    let rows = statement
        .query_map(params!["", 10], |row| row.get::<_, String>(3))
        .unwrap();
    rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
}

pub fn tenants_in_state(conn: &Connection, state: TenantState) -> Result<Vec<TenantRecord>> {
    let mut statement = conn
        .prepare(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE state = ?1"
        ))
        .context(|| "listing tenants by state".into())?;
    let rows = statement
        .query_map([state.as_str()], tenant_from_row)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .context(|| format!("listing {} tenants", state.as_str()))?;
    Ok(rows)
}

pub fn delete_tenant_row(conn: &Connection, id: TenantId) -> Result<()> {
    conn.execute(
        "DELETE FROM api_keys WHERE tenant_id = ?1",
        [id.to_string()],
    )
    .and_then(|_| conn.execute("DELETE FROM tenants WHERE id = ?1", [id.to_string()]))
    .context(|| format!("deleting tenant row {id}"))?;
    Ok(())
}

const KEY_COLUMNS: &str = "id, tenant_id, description, secret_sha256, create_time, revoke_time";

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    let id: String = row.get(0)?;
    let hash: Vec<u8> = row.get(3)?;
    Ok(ApiKeyRecord {
        id: Uuid::try_parse(&id).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })?,
        tenant_id: parse_tenant_id(&row.get::<_, String>(1)?)?,
        description: row.get(2)?,
        secret_sha256: hash.try_into().map_err(|_| {
            rusqlite::Error::InvalidColumnType(
                3,
                "secret_sha256".into(),
                rusqlite::types::Type::Blob,
            )
        })?,
        create_time: row.get(4)?,
        revoke_time: row.get(5)?,
    })
}

pub fn get_api_key(conn: &Connection, id: Uuid) -> Result<Option<ApiKeyRecord>> {
    conn.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"))
        .and_then(|mut statement| {
            statement
                .query_row([id.hyphenated().to_string()], key_from_row)
                .optional()
        })
        .context(|| format!("reading api key {id}"))
}

/// A tenant's keys, oldest first, after `after` (create time, id) when given.
pub fn list_api_keys(
    conn: &Connection,
    tenant: TenantId,
    after: Option<(Micros, Uuid)>,
    limit: usize,
) -> Result<Vec<ApiKeyRecord>> {
    let (time, id) = after.unwrap_or((Micros::MIN, Uuid::nil()));
    let mut statement = conn
        .prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys
             WHERE tenant_id = ?1 AND (create_time, id) > (?2, ?3)
             ORDER BY create_time, id LIMIT ?4"
        ))
        .context(|| "listing api keys".into())?;
    let rows = statement
        .query_map(
            params![
                tenant.to_string(),
                time,
                id.hyphenated().to_string(),
                limit as i64
            ],
            key_from_row,
        )
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .context(|| format!("listing the api keys of tenant {tenant}"))?;
    Ok(rows)
}

/// Marks a key revoked at `time`, unless it already is.
pub fn revoke_api_key(conn: &Connection, id: Uuid, time: Micros) -> Result<()> {
    conn.execute(
        "UPDATE api_keys SET revoke_time = ?2 WHERE id = ?1 AND revoke_time IS NULL",
        params![id.hyphenated().to_string(), time],
    )
    .context(|| format!("revoking api key {id}"))?;
    Ok(())
}

pub fn insert_api_key(conn: &Connection, key: &ApiKeyRecord) -> Result<()> {
    conn.execute(
        "INSERT INTO api_keys (id, tenant_id, description, secret_sha256, create_time)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            key.id.hyphenated().to_string(),
            key.tenant_id.to_string(),
            key.description,
            key.secret_sha256.as_slice(),
            key.create_time,
        ],
    )
    .context(|| format!("inserting api key {}", key.id))?;
    Ok(())
}

/// The grant of one key, joined with its tenant's state.
pub fn key_grant(conn: &Connection, key_id: Uuid) -> Result<Option<KeyGrant>> {
    let mut statement = conn
        .prepare_cached(
            "SELECT k.tenant_id, k.secret_sha256, k.revoke_time IS NOT NULL, t.state
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             WHERE k.id = ?1",
        )
        .context(|| "looking up an api key".into())?;
    statement
        .query_row([key_id.hyphenated().to_string()], |row| {
            let hash: Vec<u8> = row.get(1)?;
            Ok(KeyGrant {
                key_id,
                tenant_id: parse_tenant_id(&row.get::<_, String>(0)?)?,
                secret_sha256: hash.try_into().map_err(|_| {
                    rusqlite::Error::InvalidColumnType(
                        1,
                        "secret_sha256".into(),
                        rusqlite::types::Type::Blob,
                    )
                })?,
                revoked: row.get(2)?,
                tenant_state: TenantState::parse(&row.get::<_, String>(3)?)?,
            })
        })
        .optional()
        .context(|| format!("looking up api key {key_id}"))
}

/// One entry of the admin audit trail: who did what to which target, and how
/// it ended. The tenant it concerns is read from a target `tenants/<id>…`.
pub struct AdminEvent<'a> {
    pub time: Micros,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub outcome: &'a str,
    /// More than the target says; usually empty.
    pub detail: &'a str,
}

pub fn record_admin_event(conn: &Connection, event: &AdminEvent<'_>) -> Result<()> {
    let tenant = tenant_of_target(event.target).map(|id| id.to_string());
    conn.prepare_cached(
        "INSERT INTO admin_audit (time, actor, action, target, outcome, tenant_id, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut statement| {
        statement.execute(params![
            event.time,
            event.actor,
            event.action,
            event.target,
            event.outcome,
            tenant,
            event.detail
        ])
    })
    .context(|| format!("recording admin event {}", event.action))?;
    Ok(())
}

/// A snapshot BackupTenant made, as recorded.
#[derive(Clone, Debug)]
pub struct BackupRecord {
    /// Relative to the data directory: `backups/<tenant id>/<time>.db`.
    pub path: String,
    pub tenant_id: TenantId,
    pub size_bytes: u64,
    pub sha256: String,
    pub schema_version: u32,
    pub create_time: Micros,
}

pub fn insert_backup(conn: &Connection, backup: &BackupRecord) -> Result<()> {
    conn.execute(
        "INSERT INTO backups (path, tenant_id, size_bytes, sha256, schema_version, create_time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            backup.path,
            backup.tenant_id.to_string(),
            backup.size_bytes as i64,
            backup.sha256,
            backup.schema_version,
            backup.create_time
        ],
    )
    .context(|| format!("recording backup {}", backup.path))?;
    Ok(())
}

pub fn get_backup(conn: &Connection, path: &str) -> Result<Option<BackupRecord>> {
    conn.query_row(
        "SELECT path, tenant_id, size_bytes, sha256, schema_version, create_time
         FROM backups WHERE path = ?1",
        [path],
        |row| {
            Ok(BackupRecord {
                path: row.get(0)?,
                tenant_id: parse_tenant_id(&row.get::<_, String>(1)?)?,
                size_bytes: row.get::<_, i64>(2)?.max(0) as u64,
                sha256: row.get(3)?,
                schema_version: row.get(4)?,
                create_time: row.get(5)?,
            })
        },
    )
    .optional()
    .context(|| format!("reading backup {path}"))
}

/// Forgets every backup of a tenant: its files are erased.
pub fn delete_backups_of(conn: &Connection, tenant: TenantId) -> Result<()> {
    conn.execute(
        "DELETE FROM backups WHERE tenant_id = ?1",
        [tenant.to_string()],
    )
    .context(|| format!("forgetting the backups of tenant {tenant}"))?;
    Ok(())
}

/// The tenant an admin event concerns, from its target `tenants/<id>…`.
pub fn tenant_of_target(target: &str) -> Option<TenantId> {
    let id = target.strip_prefix("tenants/")?.get(..36)?;
    TenantId::parse("target", id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_of_tenants_walks_the_name_index_from_the_token() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::storage::schema::migrate(
            &mut conn,
            crate::catalog::migrations::CATALOG,
            "the catalog",
        )
        .unwrap();
        let plan = list_tenants_plan(&conn);
        assert!(plan.contains("tenants_live_name"), "{plan}");
        assert!(
            !plan.contains("TEMP B-TREE"),
            "every page sorts every tenant: {plan}"
        );
    }
}
