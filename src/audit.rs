//! The audit trail, kept in two places and read as one.
//!
//! - **Admin calls** are recorded in the catalog's `admin_audit`: a change
//!   records itself in the transaction that makes it; every other call
//!   (reads, and every call that failed) is recorded when it ends, by the
//!   admin API ([`crate::api::tenants`]).
//! - **Writes to a tenant's data** are recorded in that tenant's own
//!   `audit_events`, in the transaction of the write, so that the trail of a
//!   tenant's data is in its file, its backups and its exports.
//!
//! `ListAuditEvents` merges both, newest first. Its page token is a
//! [`Position`] in that order: time, then source, then row id.

use rusqlite::{Connection, Transaction, params};
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::clock::{Micros, now_micros};
use crate::error::{Context, Error, Result};
use crate::ids::TenantId;
use crate::storage::schema::{Migration, Part, Released, Schema, check_table};

/// The trail's share of the tenant database: one table of writes.
pub static TRAIL: Part = Part {
    name: "audit trail of writes",
    collection: "audit_events",
    writes: &[],
    migrations: &[
        Released {
            version: 3,
            migration: Migration {
                description: "audit trail of writes",
                after: None,
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
        },
        Released {
            version: 5,
            migration: Migration {
                description: "audit trail keyed by time",
                after: None,
                sql: "
        -- An event's id is its time, in microseconds, unique in the file
        -- (an event in the same microsecond as the one before it takes the
        -- next one): the table is in time order, and needs no index for it,
        -- so that recording a write touches one page.
        CREATE TABLE audit_by_time (
            id      INTEGER PRIMARY KEY,
            time    INTEGER NOT NULL CHECK (time = id),
            action  TEXT NOT NULL,
            item_id TEXT NOT NULL,
            actor   TEXT NOT NULL
        ) STRICT;
        -- In time order, each event at its own time, or the next free
        -- microsecond after the event before it.
        INSERT INTO audit_by_time
            SELECT at, at, action, item_id, actor FROM (
                SELECT action, item_id, actor,
                       n + max(time - n) OVER (ORDER BY time, id) AS at
                FROM (SELECT *, row_number() OVER (ORDER BY time, id) AS n FROM audit_events)
            );
        DROP TABLE audit_events;
        ALTER TABLE audit_by_time RENAME TO audit_events;
    ",
            },
        },
    ],
    optional_indexes: &[],
    check_rows: check_trail,
};

/// Every event in a file from outside must be one tenantry writes: a time
/// in range, an action some part of the schema records, the canonical id
/// of what it wrote, and an actor that is the admin or an API key.
fn check_trail(
    conn: &Connection,
    version: u32,
    schema: &Schema,
) -> std::result::Result<(), String> {
    let oversized = "SELECT count(*) FROM audit_events
        WHERE octet_length(action) > 16 OR octet_length(item_id) <> 36 OR octet_length(actor) > 64";
    let select = "SELECT time, action, item_id, actor, id FROM audit_events";
    let keyed_by_time = version >= 5;
    check_table(conn, "audit events", oversized, select, |row| {
        let actor: String = row.get(3)?;
        let actor_ok = actor == "admin"
            || actor
                .strip_prefix("keys/")
                .is_some_and(|key| crate::ids::parse_canonical_uuid("actor", key).is_ok());
        let time: i64 = row.get(0)?;
        if !crate::clock::is_not_future(time) {
            return Ok(Err(
                "its audit trail holds an event dated more than a year after this server's clock"
                    .into(),
            ));
        }
        let valid = crate::clock::is_valid(time)
            && (!keyed_by_time || row.get::<_, i64>(4)? == time)
            && schema.writer_of(&row.get::<_, String>(1)?).is_some()
            && crate::ids::parse_canonical_uuid("item_id", &row.get::<_, String>(2)?).is_ok()
            && actor_ok;
        Ok(match valid {
            true => Ok(()),
            false => Err("its audit trail holds an event tenantry would not have written".into()),
        })
    })
}

/// Where an event is recorded; also its rank among events of the same time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Tenant = 0,
    Admin = 1,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: i64,
    pub source: Source,
    pub time: Micros,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub tenant_id: Option<TenantId>,
    pub outcome: String,
    pub detail: String,
}

impl Event {
    pub fn position(&self) -> Position {
        Position {
            time: self.time,
            source: self.source,
            id: self.id,
        }
    }
}

/// A place in the merged trail, newest first: a page lists the events
/// strictly after (older than) it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub time: Micros,
    pub source: Source,
    pub id: i64,
}

impl Position {
    /// Before every event: the start of the first page.
    pub const START: Position = Position {
        time: i64::MAX,
        source: Source::Admin,
        id: i64::MAX,
    };

    pub fn to_bytes(self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(17);
        bytes.extend_from_slice(&self.time.to_be_bytes());
        bytes.push(self.source as u8);
        bytes.extend_from_slice(&self.id.to_be_bytes());
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (time, rest) = bytes.split_first_chunk::<8>()?;
        let (&source, id) = rest.split_first()?;
        let id: [u8; 8] = id.try_into().ok()?;
        Some(Position {
            time: i64::from_be_bytes(*time),
            source: match source {
                0 => Source::Tenant,
                1 => Source::Admin,
                _ => return None,
            },
            id: i64::from_be_bytes(id),
        })
    }

    /// The `(time, id)` bound below which a source's rows come after this
    /// position: rows of the same time come after it only if their source
    /// ranks lower, or ranks the same and their id is lower.
    fn bound_for(self, source: Source) -> (Micros, i64) {
        use std::cmp::Ordering::*;
        match source.cmp(&self.source) {
            Less => (self.time, i64::MAX),
            Equal => (self.time, self.id),
            Greater => (self.time, i64::MIN),
        }
    }
}

/// Admin events, newest first, after `after`; only those concerning
/// `tenant` if one is given.
pub fn list_admin(
    conn: &Connection,
    tenant: Option<TenantId>,
    after: Position,
    limit: usize,
) -> Result<Vec<Event>> {
    let (time, id) = after.bound_for(Source::Admin);
    let sql = match tenant {
        Some(_) => {
            "SELECT id, time, actor, action, target, tenant_id, outcome, detail FROM admin_audit
             WHERE tenant_id = ?1 AND (time, id) < (?2, ?3)
             ORDER BY time DESC, id DESC LIMIT ?4"
        }
        None => {
            "SELECT id, time, actor, action, target, tenant_id, outcome, detail FROM admin_audit
             WHERE ?1 IS NULL AND (time, id) < (?2, ?3)
             ORDER BY time DESC, id DESC LIMIT ?4"
        }
    };
    conn.prepare_cached(sql)
        .and_then(|mut statement| {
            statement
                .query_map(
                    params![tenant.map(|t| t.to_string()), time, id, limit as i64],
                    |row| {
                        let tenant_id: Option<String> = row.get(5)?;
                        Ok(Event {
                            id: row.get(0)?,
                            source: Source::Admin,
                            time: row.get(1)?,
                            actor: row.get(2)?,
                            action: row.get(3)?,
                            target: row.get(4)?,
                            tenant_id: tenant_id
                                .and_then(|id| TenantId::parse("tenant_id", &id).ok()),
                            outcome: row.get(6)?,
                            detail: row.get(7)?,
                        })
                    },
                )?
                .collect()
        })
        .context(|| "listing admin audit events".into())
}

/// An admin call, as recorded when it ends.
pub struct AdminCall {
    pub action: String,
    pub target: String,
    /// "OK" or a status code's name.
    pub outcome: String,
    pub detail: String,
}

impl AdminCall {
    /// A call that succeeded, with nothing to add to its target.
    pub fn ok(action: &str, target: impl Into<String>) -> Self {
        AdminCall {
            action: action.to_owned(),
            target: target.into(),
            outcome: "OK".to_owned(),
            detail: String::new(),
        }
    }
}

/// Records `call` in the admin trail at `time`, in `tx`: the transaction of
/// the change it records, so that the change and its record commit
/// together. Every admin event is written here or by [`record_admin_call`].
pub fn record_in(tx: &rusqlite::Connection, time: Micros, call: &AdminCall) -> Result<()> {
    crate::catalog::store::record_admin_event(
        tx,
        &crate::catalog::store::AdminEvent {
            time,
            actor: "admin",
            action: &call.action,
            target: &call.target,
            outcome: &call.outcome,
            detail: &call.detail,
        },
    )
}

/// Records an admin call that did not record itself in the catalog's trail,
/// when it ends. A failure to record is logged and changes nothing else.
pub async fn record_admin_call(catalog: &Catalog, call: AdminCall) {
    let action = call.action.clone();
    let recorded = catalog
        .write(move |tx| record_in(tx, now_micros(), &call))
        .await;
    if let Err(error) = recorded {
        tracing::error!(action, error = %crate::error::error_chain(&error), "could not record an admin call in the audit trail");
    }
}

/// Records a write to a tenant's data, in the write's own transaction, at
/// the next free microsecond of the trail from now on (its id and its time).
pub fn record_write(tx: &Transaction<'_>, action: &str, item: Uuid, actor: &str) -> Result<()> {
    let last: Option<i64> = tx
        .prepare_cached("SELECT max(id) FROM audit_events")
        .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
        .context(|| format!("recording {action} in the audit trail"))?;
    let time = last.map_or(now_micros(), |last| {
        now_micros().max(last.saturating_add(1))
    });
    if !crate::clock::is_valid(time) {
        return Err(Error::FailedPrecondition(format!(
            "the tenant's audit trail ends at the last time it can record: {action} is not \
             recorded, and so not done"
        )));
    }
    tx.prepare_cached(
        "INSERT INTO audit_events (id, time, action, item_id, actor) VALUES (?1, ?1, ?2, ?3, ?4)",
    )
    .and_then(|mut statement| {
        statement.execute(params![time, action, item.hyphenated().to_string(), actor])
    })
    .context(|| format!("recording {action} in the audit trail"))?;
    Ok(())
}

/// A tenant's recorded writes, newest first, after `after`. Each names
/// its target in the collection of the part of `schema` that wrote it.
pub fn list_writes(
    conn: &Connection,
    schema: &Schema,
    tenant: TenantId,
    after: Position,
    limit: usize,
) -> Result<Vec<Event>> {
    // An event's id is its time: the events after the position are those
    // below one id, which the table's key finds without a scan.
    let (time, id) = after.bound_for(Source::Tenant);
    let below = if id > time {
        time.saturating_add(1)
    } else {
        time
    };
    conn.prepare_cached(
        "SELECT id, time, action, item_id, actor FROM audit_events
         WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
    )
    .and_then(|mut statement| {
        statement
            .query_map(params![below, limit as i64], |row| {
                Ok(Event {
                    id: row.get(0)?,
                    source: Source::Tenant,
                    time: row.get(1)?,
                    target: format!(
                        "{}/{}",
                        collection_of(schema, &row.get::<_, String>(2)?),
                        row.get::<_, String>(3)?
                    ),
                    action: row.get(2)?,
                    actor: row.get(4)?,
                    tenant_id: Some(tenant),
                    outcome: "OK".into(),
                    detail: String::new(),
                })
            })?
            .collect()
    })
    .context(|| "listing the tenant's audit events".into())
}

/// Two lists, each newest first, merged newest first.
pub fn merge(admin: Vec<Event>, tenant: Vec<Event>) -> Vec<Event> {
    let mut events: Vec<Event> = admin.into_iter().chain(tenant).collect();
    events.sort_by_key(|event| std::cmp::Reverse(event.position()));
    events
}

/// The collection a write's target is in: that of the part whose writes
/// record `action` (a file is checked before it is served, so there is one).
fn collection_of(schema: &Schema, action: &str) -> &'static str {
    schema
        .writer_of(action)
        .map_or("unknown", |part| part.collection)
}

/// Text a client sent, as the audit trail and the log name it: at most 64
/// characters, escaped, since it may be anything until it is parsed.
pub fn clip(text: &str) -> String {
    const MAX: usize = 64;
    let mut clipped: String = text.chars().take(MAX).collect();
    if text.chars().count() > MAX {
        clipped.push('…');
    }
    clipped.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::store::tenant_of_target;

    #[test]
    fn positions_round_trip_and_garbage_is_refused() {
        let position = Position {
            time: 1_700_000_000_000_000,
            source: Source::Tenant,
            id: 42,
        };
        assert_eq!(Position::from_bytes(&position.to_bytes()), Some(position));
        assert_eq!(
            Position::from_bytes(&Position::START.to_bytes()),
            Some(Position::START)
        );
        let mut bad_source = position.to_bytes();
        bad_source[8] = 7;
        assert_eq!(Position::from_bytes(&bad_source), None);
        assert_eq!(Position::from_bytes(&position.to_bytes()[..16]), None);
        assert_eq!(
            Position::from_bytes(&[position.to_bytes(), vec![0]].concat()),
            None
        );
    }

    #[test]
    fn the_bound_for_each_source_keeps_the_merged_order() {
        let at = Position {
            time: 100,
            source: Source::Admin,
            id: 5,
        };
        // Admin rows at time 100 come after it only below id 5; tenant rows
        // at time 100 all come after it (lower rank).
        assert_eq!(at.bound_for(Source::Admin), (100, 5));
        assert_eq!(at.bound_for(Source::Tenant), (100, i64::MAX));
        let at = Position {
            source: Source::Tenant,
            ..at
        };
        assert_eq!(at.bound_for(Source::Admin), (100, i64::MIN));
    }

    #[test]
    fn the_tenant_of_a_target_is_read_only_from_a_canonical_id() {
        let id = TenantId::new_random();
        assert_eq!(tenant_of_target(&format!("tenants/{id}")), Some(id));
        assert_eq!(tenant_of_target(&format!("tenants/{id}/keys/x")), Some(id));
        assert_eq!(tenant_of_target("tenants"), None);
        assert_eq!(
            tenant_of_target(&format!("tenants/{}", id.to_string().to_uppercase())),
            None
        );
    }
}
