//! Snapshots of tenant databases, and the checks a file must pass before it
//! may become a tenant's data.
//!
//! A snapshot is a copy of the tenant's file made while the file is still
//! ([`Database::with_still_file`]): every commit checkpointed into it, and no
//! checkpoint until the copy is done, while calls go on writing to the WAL.
//! So it holds exactly the commits made before it began, and the copy never
//! holds the tenant's connection. The copy is then switched to the rollback
//! journal, so it is one self-contained file that opens with the `sqlite3`
//! shell, even read-only.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rusqlite::limits::Limit;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::deadline::Deadline;
use crate::error::{Context, Error, Result};
use crate::storage::schema::{self, Migrated, Schema};
use crate::storage::sqlite::{Database, EXISTING, Retired, run_blocking};
use crate::storage::staging::{StagedFile, Staging};

/// What a finished snapshot file is.
#[derive(Clone, Debug)]
pub struct FileSummary {
    pub size_bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
    pub schema_version: u32,
}

/// Copies an open tenant database's file into a new file of the staging
/// folder (reserving its size there), seals it and makes it durable. The
/// call's deadline is checked before the copy and after it.
/// `Err(Retired)` if the database closed before the copy began.
pub async fn take(
    database: &Database,
    staging: &Arc<Staging>,
    what: &str,
) -> std::result::Result<Result<(StagedFile, FileSummary)>, Retired> {
    let deadline = crate::deadline::current();
    let (staging, what) = (staging.clone(), what.to_owned());
    let copied = database
        .with_still_file(move |source| {
            let staged = staging.reserve(&what, source.size)?;
            source.copy_to(staged.path(), deadline.as_deref())?;
            Ok(staged)
        })
        .await?;
    let staged = match copied {
        Ok(staged) => staged,
        Err(error) => return Ok(Err(error)),
    };
    Ok(run_blocking(move || {
        seal(staged.path())?;
        let summary = summarize(staged.path())?;
        Ok((staged, summary))
    })
    .await)
}

/// Switches a database file to the rollback journal (no `-wal` to carry
/// around) and flushes it to disk. Blocking.
pub fn seal(path: &Path) -> Result<()> {
    let conn = Connection::open_with_flags(path, EXISTING)
        .context(|| format!("opening {}", path.display()))?;
    crate::storage::sqlite::defend(&conn, None)
        .context(|| format!("opening {}", path.display()))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "DELETE", |row| row.get(0))
        .context(|| format!("setting the journal mode of {}", path.display()))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(Error::internal(
            format!("sealing {}", path.display()),
            format!("journal_mode stayed {mode}"),
        ));
    }
    conn.close()
        .map_err(|(_, e)| e)
        .context(|| format!("closing {}", path.display()))?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .context(|| format!("syncing {}", path.display()))
}

/// Size, SHA-256 and schema version of a database file. Blocking.
pub fn summarize(path: &Path) -> Result<FileSummary> {
    let (size_bytes, sha256) = file_sha256(path)?;
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .context(|| format!("opening {}", path.display()))?;
    crate::storage::sqlite::defend(&conn, None)
        .context(|| format!("opening {}", path.display()))?;
    let schema_version =
        schema::version(&conn).context(|| format!("reading the version of {}", path.display()))?;
    Ok(FileSummary {
        size_bytes,
        sha256,
        schema_version,
    })
}

/// The size and SHA-256 (hex) of a file. Blocking.
pub fn file_sha256(path: &Path) -> Result<(u64, String)> {
    let mut file = std::fs::File::open(path).context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let read = file
            .read(&mut buffer)
            .context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        size += read as u64;
        hasher.update(&buffer[..read]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// The most objects (tables, indexes) a tenant schema has in
/// `sqlite_schema`; far more than tenantry's, far fewer than would cost
/// memory to parse.
const MAX_SCHEMA_ROWS: u16 = 64;
/// The longest statement a snapshot's schema may hold.
const MAX_SCHEMA_SQL_BYTES: i32 = 16 * 1024;

/// Checks that the file at `path` (a private copy: this may modify it) is a
/// tenant database this server could have made, then brings it to the
/// current schema and seals it. A snapshot from outside is hostile until
/// checked, so the check reads the file before SQLite parses its schema,
/// opens it defensively, and then requires exactly tenantry's own schema at
/// the file's version (every object, `sqlite_*` ones included, its SQL
/// word for word: no trigger, view or index of its own can survive) and
/// rows that the API could have written. Statements stop at `deadline`.
/// Anything wrong with the file is INVALID_ARGUMENT, except a schema newer
/// than this server's, which is FAILED_PRECONDITION. Blocking.
pub fn check_and_upgrade(
    path: &Path,
    schema: &Schema,
    deadline: Option<&Deadline>,
) -> Result<Migrated> {
    check_header(path)?;
    let mut conn = Connection::open_with_flags(path, EXISTING)
        .map_err(|e| not_valid(&format!("it does not open as a SQLite database ({e})")))?;
    crate::storage::sqlite::defend(&conn, None)
        .context(|| "configuring a snapshot check".into())?;
    conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_SCHEMA_SQL_BYTES)
        .context(|| "configuring a snapshot check".into())?;
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, 1 << 20)
        .context(|| "configuring a snapshot check".into())?;
    let version = crate::storage::sqlite::bounded(deadline, || check_contents(&conn, schema))?;
    crate::deadline::check(deadline)?;
    let migrated = schema::migrate(&mut conn, schema.migrations(), "the snapshot")?;
    if migrated.from != version {
        return Err(not_valid("its schema version changed while it was checked"));
    }
    conn.close()
        .map_err(|(_, e)| e)
        .context(|| format!("closing {}", path.display()))?;
    seal(path)?;
    Ok(migrated)
}

/// What the file says of itself before SQLite reads its schema: a SQLite
/// file, whose schema table fits on its first page with few rows (so that
/// parsing it costs little, however crafted).
fn check_header(path: &Path) -> Result<()> {
    let mut header = [0u8; 108];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut header));
    if read.is_err() || &header[..16] != SQLITE_MAGIC {
        return Err(not_valid("it is not a SQLite database file"));
    }
    // The b-tree page header of page 1, the schema table, after the 100
    // bytes of the file header: a leaf table page, and its cell count.
    const LEAF_TABLE: u8 = 0x0d;
    let cells = u16::from_be_bytes([header[103], header[104]]);
    if header[100] != LEAF_TABLE || cells > MAX_SCHEMA_ROWS {
        return Err(not_valid(
            "its schema holds far more objects than tenantry's ever does",
        ));
    }
    // Text encoding (1 is UTF-8).
    if u32::from_be_bytes([header[56], header[57], header[58], header[59]]) > 1 {
        return Err(not_valid("its text is not UTF-8"));
    }
    Ok(())
}

/// The checks that read through SQLite; the file's schema version.
fn check_contents(conn: &Connection, schema: &Schema) -> Result<u32> {
    let version = schema::version(conn)
        .map_err(|e| not_valid(&format!("its schema cannot be read ({e})")))?;
    if version == 0 {
        return Err(not_valid("it has no tenantry schema (schema version 0)"));
    }
    let latest = schema.latest();
    if version > latest {
        return Err(Error::FailedPrecondition(format!(
            "the snapshot has schema version {version}, newer than this server's {latest}: \
             upgrade tenantry before restoring it"
        )));
    }
    // The schema first: the integrity check evaluates the file's
    // constraints, which must be tenantry's own before anything runs them.
    let expected = reference_schema(schema, version)?;
    let mut found =
        schema_of(conn).map_err(|e| not_valid(&format!("its schema cannot be read ({e})")))?;
    // A set of optional indexes a migration kept, whole, is tenantry's too.
    for set in schema.optional_indexes(version) {
        if set.iter().all(|index| found.contains(index)) {
            found.retain(|object| !set.contains(object));
        }
    }
    if found != expected {
        let missing: Vec<_> = expected.iter().filter(|o| !found.contains(o)).collect();
        let extra: Vec<_> = found.iter().filter(|o| !expected.contains(o)).collect();
        return Err(not_valid(&format!(
            "its schema is not tenantry's schema version {version} (missing: {missing:?}; unexpected: {extra:?})"
        )));
    }
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check(5)")
        .and_then(|mut s| {
            s.query_map([], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| not_valid(&format!("its integrity check could not run ({e})")))?;
    if problems != ["ok"] {
        return Err(not_valid(&format!(
            "it fails the integrity check: {}",
            problems.join("; ")
        )));
    }
    schema
        .check_rows(conn, version)
        .map_err(|why| not_valid(&why))?;
    Ok(version)
}

fn not_valid(why: &str) -> Error {
    Error::invalid(
        "source",
        format!("is not a valid tenant database: {why}; the tenant keeps its current data"),
    )
}

/// Every row of `sqlite_schema` but its root pages, `sqlite_*` objects
/// included, in order: what two databases at the same version must agree
/// on, word for word.
fn schema_of(conn: &Connection) -> rusqlite::Result<Vec<[Option<String>; 4]>> {
    conn.prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name")?
        .query_map([], |row| {
            Ok([row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?])
        })?
        .collect()
}

/// The schema a database made by this binary has at `version`.
fn reference_schema(schema: &Schema, version: u32) -> Result<Vec<[Option<String>; 4]>> {
    let mut conn =
        Connection::open_in_memory().context(|| "opening a reference database".into())?;
    schema::migrate(
        &mut conn,
        &schema.migrations()[..version as usize],
        "the reference schema",
    )?;
    schema_of(&conn).context(|| "reading the reference schema".into())
}
