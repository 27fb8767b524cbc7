//! Versioned schema migrations for the catalog and for tenant databases.
//!
//! A database's schema version is its `PRAGMA user_version`. Migrations are an
//! ordered list compiled into the binary; migration `n` (counting from 1)
//! brings a database from version `n - 1` to `n`. Each one runs in its own
//! `BEGIN IMMEDIATE` transaction together with the `user_version` bump, so a
//! crash leaves the database at a whole version. A database whose version is
//! newer than the binary knows is refused, never downgraded.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Context, Error, Result};

pub struct Migration {
    pub description: &'static str,
    pub sql: &'static str,
}

/// What [`migrate`] did: the version found and the version left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migrated {
    pub from: u32,
    pub to: u32,
}

pub fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Brings `conn` up to the newest version in `migrations`. `what` names the
/// database in errors (`"catalog"`, `"tenant <id>"`).
pub fn migrate(conn: &mut Connection, migrations: &[Migration], what: &str) -> Result<Migrated> {
    let latest = migrations.len() as u32;
    let from = version(conn).context(|| format!("reading the schema version of {what}"))?;
    if from > latest {
        return Err(Error::FailedPrecondition(format!(
            "{what} has schema version {from}, newer than this server's {latest}: \
             upgrade tenantry before serving it"
        )));
    }
    for (index, migration) in migrations.iter().enumerate().skip(from as usize) {
        let to = index as u32 + 1;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context(|| format!("starting migration {to} of {what}"))?;
        // Another process may have migrated the file since we read the version.
        if version(&tx).context(|| format!("re-reading the schema version of {what}"))? >= to {
            continue;
        }
        tx.execute_batch(migration.sql)
            .context(|| format!("migration {to} ({}) of {what}", migration.description))?;
        tx.pragma_update(None, "user_version", to)
            .context(|| format!("recording schema version {to} of {what}"))?;
        tx.commit()
            .context(|| format!("committing migration {to} of {what}"))?;
    }
    Ok(Migrated { from, to: latest })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &[Migration] = &[
        Migration {
            description: "t",
            sql: "CREATE TABLE t (a INTEGER);",
        },
        Migration {
            description: "t.b",
            sql: "ALTER TABLE t ADD COLUMN b TEXT;",
        },
    ];

    #[test]
    fn migrates_step_by_step_and_records_the_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(
            migrate(&mut conn, &TWO[..1], "db").unwrap(),
            Migrated { from: 0, to: 1 }
        );
        assert_eq!(
            migrate(&mut conn, TWO, "db").unwrap(),
            Migrated { from: 1, to: 2 }
        );
        assert_eq!(
            migrate(&mut conn, TWO, "db").unwrap(),
            Migrated { from: 2, to: 2 }
        );
        conn.execute("INSERT INTO t (a, b) VALUES (1, 'x')", [])
            .unwrap();
    }

    #[test]
    fn a_newer_database_is_refused_and_left_alone() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, TWO, "db").unwrap();
        let err = migrate(&mut conn, &TWO[..1], "db").unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        assert_eq!(version(&conn).unwrap(), 2);
    }

    #[test]
    fn a_failing_migration_leaves_the_previous_version_whole() {
        let broken = [
            Migration {
                description: "t",
                sql: "CREATE TABLE t (a INTEGER);",
            },
            Migration {
                description: "bad",
                sql: "CREATE TABLE u (a); SELECT nonsense FROM nowhere;",
            },
        ];
        let mut conn = Connection::open_in_memory().unwrap();
        assert!(migrate(&mut conn, &broken, "db").is_err());
        assert_eq!(version(&conn).unwrap(), 1);
        let u_exists: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'u'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!u_exists, "the failed migration's first statement was kept");
    }
}
