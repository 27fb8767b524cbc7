//! Snapshots of tenant databases, and the checks a file must pass before it
//! may become a tenant's data.
//!
//! A snapshot is made with `VACUUM INTO` on its own connection: it reads the
//! database in one read transaction, so it holds exactly the commits made
//! before it began, while writers go on in the WAL. The result is switched to
//! the rollback journal, so it is one self-contained file that opens with the
//! `sqlite3` shell, even read-only.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::error::{Context, Error, Result};
use crate::schema::{self, Migrated};
use crate::staging::{StagedFile, Staging};
use crate::tenant::migrations::{TENANT, latest};

/// What a finished snapshot file is.
#[derive(Clone, Debug)]
pub struct FileSummary {
    pub size_bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
    pub schema_version: u32,
}

const EXISTING: OpenFlags =
    OpenFlags::SQLITE_OPEN_READ_WRITE.union(OpenFlags::SQLITE_OPEN_NO_MUTEX);

/// Writes a consistent snapshot of the database at `source` into a new
/// file of the staging folder, reserving what the snapshot may take there
/// (the database's size, which `VACUUM INTO` never exceeds), and makes it
/// durable. Blocking.
pub fn take(
    source: &Path,
    staging: &Arc<Staging>,
    what: &str,
) -> Result<(StagedFile, FileSummary)> {
    let conn = Connection::open_with_flags(source, EXISTING)
        .context(|| format!("opening {} for a snapshot", source.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .context(|| "setting a busy timeout".into())?;
    let bytes: i64 = conn
        .query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |row| row.get(0),
        )
        .context(|| format!("measuring {}", source.display()))?;
    let staged = staging.reserve(what, bytes.max(0) as u64)?;
    let dest = staged.path();
    let dest_text = dest.to_str().ok_or_else(|| {
        Error::internal("taking a snapshot", "the data directory path is not UTF-8")
    })?;
    conn.execute("VACUUM INTO ?1", [dest_text]).context(|| {
        format!(
            "writing a snapshot of {} to {}",
            source.display(),
            dest.display()
        )
    })?;
    drop(conn);
    seal(dest)?;
    let summary = summarize(dest)?;
    Ok((staged, summary))
}

/// Switches a database file to the rollback journal (no `-wal` to carry
/// around) and flushes it to disk. Blocking.
pub fn seal(path: &Path) -> Result<()> {
    let conn = Connection::open_with_flags(path, EXISTING)
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

/// Checks that the file at `path` (a private copy: this may modify it) is a
/// tenant database this server can serve, then brings it to the current
/// schema and seals it. Anything wrong with the file is INVALID_ARGUMENT,
/// except a schema newer than this server's, which is FAILED_PRECONDITION.
/// Blocking.
pub fn check_and_upgrade(path: &Path) -> Result<Migrated> {
    let mut magic = [0u8; 16];
    let is_sqlite = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == SQLITE_MAGIC;
    if !is_sqlite {
        return Err(not_valid("it is not a SQLite database file"));
    }
    let mut conn = Connection::open_with_flags(path, EXISTING)
        .map_err(|e| not_valid(&format!("it does not open as a SQLite database ({e})")))?;
    // Nothing in the file runs while it is checked: no triggers or views of
    // its own can call functions with side effects.
    conn.execute_batch("PRAGMA trusted_schema = OFF;")
        .context(|| "configuring a snapshot check".into())?;
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
    let version = schema::version(&conn)
        .map_err(|e| not_valid(&format!("its schema version cannot be read ({e})")))?;
    if version == 0 {
        return Err(not_valid("it has no tenantry schema (schema version 0)"));
    }
    if version > latest() {
        return Err(Error::FailedPrecondition(format!(
            "the snapshot has schema version {version}, newer than this server's {}: \
             upgrade tenantry before restoring it",
            latest()
        )));
    }
    let expected = reference_schema(version)?;
    let found = schema_of(&conn).context(|| "reading the schema of a snapshot".into())?;
    if found != expected {
        let missing: Vec<_> = expected.iter().filter(|o| !found.contains(o)).collect();
        let extra: Vec<_> = found.iter().filter(|o| !expected.contains(o)).collect();
        return Err(not_valid(&format!(
            "its schema is not tenantry's schema version {version} (missing: {missing:?}; unexpected: {extra:?})"
        )));
    }
    let migrated = schema::migrate(&mut conn, TENANT, "the snapshot")?;
    conn.close()
        .map_err(|(_, e)| e)
        .context(|| format!("closing {}", path.display()))?;
    seal(path)?;
    Ok(migrated)
}

fn not_valid(why: &str) -> Error {
    Error::invalid(
        "source",
        format!("is not a valid tenant database: {why}; the tenant keeps its current data"),
    )
}

/// Every schema object and every table column, as `type name` strings:
/// what two databases at the same version must agree on.
fn schema_of(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut objects: Vec<String> = conn
        .prepare(
            "SELECT type || ' ' || name FROM sqlite_schema
             WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let columns: Vec<String> = conn
        .prepare(
            "SELECT 'column ' || t.name || '.' || c.name || ' ' || c.type || ' ' || c.\"notnull\" || ' ' || c.pk
             FROM sqlite_schema t, pragma_table_info(t.name) c
             WHERE t.type = 'table' AND t.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    objects.extend(columns);
    objects.sort();
    Ok(objects)
}

/// The schema a database made by this binary has at `version`.
fn reference_schema(version: u32) -> Result<Vec<String>> {
    let mut conn =
        Connection::open_in_memory().context(|| "opening a reference database".into())?;
    schema::migrate(
        &mut conn,
        &TENANT[..version as usize],
        "the reference schema",
    )?;
    schema_of(&conn).context(|| "reading the reference schema".into())
}
