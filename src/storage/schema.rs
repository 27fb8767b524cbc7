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

#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub description: &'static str,
    pub sql: &'static str,
    /// Runs after `sql`, in its transaction: for what depends on the data
    /// the file holds (see [`Part::optional_indexes`]).
    pub after: Option<fn(&Connection) -> rusqlite::Result<()>>,
}

/// A migration with the schema version it brings a database to.
pub struct Released {
    pub version: u32,
    pub migration: Migration,
}

/// One owner's share of the tenant database's schema: a resource's tables,
/// or the audit trail's. It lists its migrations with the versions they were
/// released as, so that parts added at different times keep the one
/// append-only order every tenant file went through.
pub struct Part {
    pub name: &'static str,
    pub migrations: &'static [Released],
    /// The collection its rows are in, as targets name it (`items`).
    pub collection: &'static str,
    /// The actions its writes record in the tenant's audit trail.
    pub writes: &'static [&'static str],
    /// Indexes a file may have beyond its version's own schema, all of them
    /// or none: a migration keeps them where the file's data needs them.
    pub optional_indexes: &'static [OptionalIndex],
    /// Checks that every row it holds in a file from outside, at `version`
    /// (at least the version of its first migration), is one the API could
    /// have written; reads sizes before values, so that nothing oversized is
    /// loaded. `Err` says what is wrong, to be told to whoever sent the
    /// file ("item ... is not one the API could have stored").
    pub check_rows: fn(&Connection, u32, &Schema) -> std::result::Result<(), String>,
}

/// An index that a migration made at `since` adds to the files whose data
/// needs it, and only to those.
pub struct OptionalIndex {
    pub since: u32,
    pub name: &'static str,
    pub table: &'static str,
    /// Its `CREATE INDEX` statement, as `sqlite_schema` keeps it.
    pub sql: &'static str,
}

/// The tenant database's schema: its parts, and their migrations in
/// version order.
pub struct Schema {
    parts: Vec<&'static Part>,
    migrations: Vec<Migration>,
}

impl Schema {
    /// Puts the parts' migrations in version order. Every version from 1 to
    /// the newest must be released by exactly one part: anything else is a
    /// mistake in the code, refused here before any file is touched.
    pub fn assemble(parts: impl IntoIterator<Item = &'static Part>) -> Self {
        let parts: Vec<&'static Part> = parts.into_iter().collect();
        let mut released: Vec<(u32, &str, Migration)> = parts
            .iter()
            .flat_map(|part| {
                part.migrations
                    .iter()
                    .map(|r| (r.version, part.name, r.migration))
            })
            .collect();
        released.sort_by_key(|(version, _, _)| *version);
        for (index, (version, part, _)) in released.iter().enumerate() {
            assert_eq!(
                *version,
                index as u32 + 1,
                "the tenant schema's versions must run 1, 2, 3, ... each released once; \
                 {part} releases version {version} where version {} belongs",
                index + 1
            );
        }
        Schema {
            parts,
            migrations: released.into_iter().map(|(_, _, m)| m).collect(),
        }
    }

    /// Every migration, version 1 first.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// The schema version this binary creates and serves.
    pub fn latest(&self) -> u32 {
        self.migrations.len() as u32
    }

    /// The part whose writes record `action`.
    pub fn writer_of(&self, action: &str) -> Option<&'static Part> {
        self.parts
            .iter()
            .copied()
            .find(|part| part.writes.contains(&action))
    }

    /// The sets of optional indexes a file at `version` may have, each as
    /// `sqlite_schema` rows (type, name, table, SQL): a file has all of a
    /// set or none of it.
    pub fn optional_indexes(&self, version: u32) -> Vec<Vec<[Option<String>; 4]>> {
        self.parts
            .iter()
            .map(|part| {
                part.optional_indexes
                    .iter()
                    .filter(|index| index.since <= version)
                    .map(|index| {
                        [
                            Some("index".to_owned()),
                            Some(index.name.to_owned()),
                            Some(index.table.to_owned()),
                            Some(index.sql.to_owned()),
                        ]
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|set| !set.is_empty())
            .collect()
    }

    /// Checks the rows of every part a file at `version` has.
    pub fn check_rows(&self, conn: &Connection, version: u32) -> std::result::Result<(), String> {
        for part in &self.parts {
            if part
                .migrations
                .first()
                .is_some_and(|m| m.version <= version)
            {
                (part.check_rows)(conn, version, self)?;
            }
        }
        Ok(())
    }
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
            .and_then(|()| migration.after.map_or(Ok(()), |after| after(&tx)))
            .context(|| format!("migration {to} ({}) of {what}", migration.description))?;
        tx.pragma_update(None, "user_version", to)
            .context(|| format!("recording schema version {to} of {what}"))?;
        tx.commit()
            .context(|| format!("committing migration {to} of {what}"))?;
    }
    Ok(Migrated { from, to: latest })
}

/// The two steps of a part's `check_rows` for one table: no row may hold a
/// value longer than allowed (`oversized` counts such rows, so that nothing
/// oversized is ever loaded), then `check` reads each row of `select` and
/// says what is wrong with it, if anything. `what` names the rows in
/// messages ("items").
pub fn check_table(
    conn: &Connection,
    what: &str,
    oversized: &str,
    select: &str,
    mut check: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<std::result::Result<(), String>>,
) -> std::result::Result<(), String> {
    let bad = |e: rusqlite::Error| format!("its {what} cannot be read ({e})");
    let count: i64 = conn
        .query_row(oversized, [], |row| row.get(0))
        .map_err(bad)?;
    if count > 0 {
        return Err(format!(
            "{count} of its {what} have fields longer than the API allows"
        ));
    }
    let mut statement = conn.prepare(select).map_err(bad)?;
    let mut rows = statement.query([]).map_err(bad)?;
    while let Some(row) = rows.next().map_err(bad)? {
        check(row).map_err(bad)??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_rows(_: &Connection, _: u32, _: &Schema) -> std::result::Result<(), String> {
        Ok(())
    }

    const fn part(name: &'static str, migrations: &'static [Released]) -> Part {
        Part {
            name,
            migrations,
            collection: name,
            writes: &[],
            optional_indexes: &[],
            check_rows: no_rows,
        }
    }

    const fn released(version: u32, description: &'static str) -> Released {
        Released {
            version,
            migration: Migration {
                description,
                sql: "",
                after: None,
            },
        }
    }

    static ONE_AND_THREE: Part = part("a", &[released(1, "a1"), released(3, "a3")]);
    static SECOND: Part = part("b", &[released(2, "b2")]);
    static ALSO_TWO: Part = part("c", &[released(2, "c2")]);

    #[test]
    fn parts_added_at_different_times_keep_one_version_order() {
        let schema = Schema::assemble([&ONE_AND_THREE, &SECOND]);
        let order: Vec<_> = schema.migrations().iter().map(|m| m.description).collect();
        assert_eq!(order, ["a1", "b2", "a3"]);
        assert_eq!(schema.latest(), 3);
    }

    #[test]
    #[should_panic(expected = "c releases version 2 where version 3 belongs")]
    fn a_version_released_twice_is_refused() {
        Schema::assemble([&ONE_AND_THREE, &SECOND, &ALSO_TWO]);
    }

    #[test]
    #[should_panic(expected = "where version 2 belongs")]
    fn a_gap_in_the_versions_is_refused() {
        Schema::assemble([&ONE_AND_THREE]);
    }

    const TWO: &[Migration] = &[
        Migration {
            description: "t",
            after: None,
            sql: "CREATE TABLE t (a INTEGER);",
        },
        Migration {
            description: "t.b",
            after: None,
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
                after: None,
                sql: "CREATE TABLE t (a INTEGER);",
            },
            Migration {
                description: "bad",
                after: None,
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
