//! Continuous replication of every tenant's WAL to object storage, and
//! restores from it.
//!
//! Replication is built into the server rather than run beside it because
//! only the server knows when a tenant opens and closes: an open tenant's
//! commits are shipped by a task of its own ([`tenant`]), at most every
//! `--replica-sync-ms`, as segments of WAL frames; a tenant that is idle or
//! closed has no task and costs no request. The server owns the WAL's
//! checkpoints already; while frames wait to be shipped, checkpoints wait
//! too ([`crate::storage::sqlite::WalLog`]), so no frame is overwritten
//! before it is shipped.
//!
//! What is in the store is described in [`manifest`]; how segments are
//! read out of a WAL and applied to a snapshot, in [`wal`].

pub mod manifest;
pub mod store;
mod tenant;
pub mod wal;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::TenantId;
use crate::storage::data_dir::DataDir;
use crate::storage::sqlite::{Database, run_blocking};
use manifest::{Manifest, Subject};
use store::{Expect, Store};

/// The settings of `--replica` and its companions.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: String,
    pub endpoint: Option<String>,
    pub sync_interval: Duration,
}

/// A server's replica: the store, and who this server is to it.
pub struct Replica {
    store: Store,
    /// This data directory's id, which names the writer of its replicas.
    node: String,
    sync_interval: Duration,
    /// Where each closed tenant's replication state is kept
    /// (`replica/<tenant id>.json`).
    state_dir: PathBuf,
    /// Snapshots made at once: each holds a copy of a tenant's file in
    /// memory while it is compressed and uploaded, and after a crash every
    /// tenant opened wants one.
    snapshots: tokio::sync::Semaphore,
}

/// Snapshots made at once ([`Replica::snapshots`]).
const SNAPSHOTS_AT_ONCE: usize = 2;

/// The object that says which node writes a replica.
const NODE_KEY: &str = "node.json";

#[derive(Serialize, Deserialize)]
struct NodeClaim {
    node: String,
}

impl Replica {
    /// Opens the store and claims it for this data directory: a second
    /// server started on the same replica with another data directory is
    /// refused, since two writers would interleave their tenants' objects.
    pub async fn start(settings: &Settings, data_dir: &DataDir) -> Result<Arc<Replica>> {
        let store = Store::open(&settings.url, settings.endpoint.as_deref())?;
        let state_dir = data_dir.root().join("replica");
        let node = {
            let state_dir = state_dir.clone();
            run_blocking(move || node_id(&state_dir)).await?
        };
        claim(&store, &node).await?;
        tracing::info!(replica = %store.url(), %node, "replicating every tenant");
        Ok(Arc::new(Replica {
            store,
            node,
            sync_interval: settings.sync_interval,
            state_dir,
            snapshots: tokio::sync::Semaphore::new(SNAPSHOTS_AT_ONCE),
        }))
    }

    /// Replicates `database`, tenant `tenant`'s file just opened, until it
    /// closes.
    pub fn attach(self: &Arc<Self>, tenant: TenantId, database: &Arc<Database>) {
        tenant::TenantLog::attach(self.clone(), Subject::Tenant(tenant), database);
    }

    /// Replicates the catalog's database, until it closes.
    pub fn attach_catalog(self: &Arc<Self>, database: &Arc<Database>) {
        tenant::TenantLog::attach(self.clone(), Subject::Catalog, database);
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn state_file(&self, subject: Subject) -> PathBuf {
        self.state_dir.join(format!("{}.json", subject.file_stem()))
    }
}

/// The id of this data directory as a writer of replicas, made once.
fn node_id(state_dir: &Path) -> Result<String> {
    let path = state_dir.join("node");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(Error::internal(
                format!("reading {}", path.display()),
                error,
            ));
        }
    }
    std::fs::create_dir_all(state_dir)
        .map_err(|e| Error::internal(format!("creating {}", state_dir.display()), e))?;
    let node = uuid::Uuid::new_v4().to_string();
    store::write_durably(&path, node.as_bytes())?;
    Ok(node)
}

/// The id of the data directory that writes the replica in `store`.
pub async fn writer_of(store: &Store) -> Result<String> {
    let Some((bytes, _)) = store.get(NODE_KEY).await? else {
        return Err(Error::NotFound(format!(
            "{} holds no replica: it has no {NODE_KEY}",
            store.url()
        )));
    };
    let claim: NodeClaim = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Storage(format!("the replica's {NODE_KEY} is not readable: {e}")))?;
    Ok(claim.node)
}

/// Makes the data directory at `dir` the writer `node` of a replica: the
/// server started on it goes on writing it.
pub async fn adopt_writer(dir: &Path, node: &str) -> Result<()> {
    let path = dir.join("replica").join("node");
    let node = node.to_owned();
    run_blocking(move || store::write_durably(&path, node.as_bytes())).await
}

async fn claim(store: &Store, node: &str) -> Result<()> {
    let claim = serde_json::to_vec(&NodeClaim { node: node.into() }).expect("serializes");
    loop {
        match store.get(NODE_KEY).await? {
            Some((bytes, _)) => {
                let owner: NodeClaim = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Storage(format!("the replica's {NODE_KEY} is not readable: {e}"))
                })?;
                if owner.node == node {
                    return Ok(());
                }
                return Err(Error::FailedPrecondition(format!(
                    "the replica {} is written by another server (node {}, named in its \
                     data directory's replica/node); two servers must never write one replica: \
                     give this one its own --replica",
                    store.url(),
                    owner.node
                )));
            }
            None => {
                if store
                    .put_if(NODE_KEY, Bytes::from(claim.clone()), Expect::Absent)
                    .await?
                    .is_ok()
                {
                    return Ok(());
                }
                // Another server claimed it meanwhile: read whose it is.
            }
        }
    }
}

/// What a restore from the replica did.
#[derive(Debug)]
pub struct Restored {
    pub generation: u64,
    pub commits: u64,
    /// The time of the last commit restored (the snapshot's, if none).
    pub latest_micros: i64,
}

/// Rebuilds the file of `subject` (the catalog or a tenant) at `to` (which must not exist; on a
/// failure, whatever was written there is removed) from the
/// replica: its latest state, or its state at `until` (Unix microseconds).
/// Reads only what the tenant's manifest lists. The file is synced and
/// checked with `integrity_check`.
pub async fn restore(
    store: &Store,
    subject: Subject,
    until: Option<i64>,
    to: &Path,
) -> Result<Restored> {
    if to.exists() {
        return Err(Error::FailedPrecondition(format!(
            "{} already exists: a file is rebuilt from the replica only where there is none",
            to.display()
        )));
    }
    let restored = rebuild_into(store, subject, until, to).await;
    if restored.is_err() {
        let _ = std::fs::remove_file(to);
    }
    restored
}

async fn rebuild_into(
    store: &Store,
    subject: Subject,
    until: Option<i64>,
    to: &Path,
) -> Result<Restored> {
    let Some((bytes, _)) = store.get(&Manifest::key(subject)).await? else {
        return Err(Error::NotFound(format!(
            "the replica holds nothing of {subject}"
        )));
    };
    let manifest = tenant::parse_manifest(subject, &bytes)?;
    let generation = manifest.generation_for(until).ok_or_else(|| {
        Error::NotFound(format!(
            "the replica holds nothing of {subject} as early as that: its earliest \
             restorable time is {}",
            manifest
                .generations
                .first()
                .map(|g| crate::storage::data_dir::file_time(g.started_micros))
                .unwrap_or_default()
        ))
    })?;
    let Some((snapshot, _)) = store.get(&generation.snapshot_key(subject)).await? else {
        return Err(Error::DataLoss(format!(
            "the snapshot of generation {} of {subject} is missing from the replica",
            generation.id
        )));
    };
    let path = to.to_owned();
    let page_size = generation.page_size;
    let mut rebuild = run_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::internal(format!("creating {}", path.display()), e))?;
        // Decoded as it is written: a snapshot's size is bounded by the
        // disk, not by memory.
        zstd::stream::copy_decode(&snapshot[..], &mut file).map_err(|e| {
            Error::DataLoss(format!("a snapshot in the replica is not readable: {e}"))
        })?;
        let mut header = [0u8; 100];
        file.read_exact_at(&mut header, 0)
            .map_err(|_| Error::DataLoss("a snapshot in the replica is truncated".into()))?;
        if generation_page_size(&header)? != page_size {
            return Err(Error::DataLoss(
                "a snapshot in the replica does not have the page size its manifest records".into(),
            ));
        }
        Ok(wal::Rebuild::new(file, page_size))
    })
    .await?;
    let mut commits = 0;
    let mut latest_micros = generation.started_micros;
    for sequence in 0..generation.segments {
        let key = generation.segment_key(subject, sequence);
        let Some((bytes, _)) = store.get(&key).await? else {
            return Err(Error::DataLoss(format!(
                "segment {key} is listed in the manifest of {subject} but missing from \
                 the replica"
            )));
        };
        let (back, applied, latest) = run_blocking(move || {
            let segment = wal::Segment::decode(&bytes)?;
            let applied = rebuild.apply(&segment, until)?;
            // Commits are applied in order, as many as `applied` says.
            let latest = applied
                .commits
                .checked_sub(1)
                .and_then(|last| segment.header().commits.get(last))
                .map(|commit| commit.time_micros);
            Ok((rebuild, applied, latest))
        })
        .await?;
        rebuild = back;
        commits += applied.commits as u64;
        if let Some(time) = latest {
            latest_micros = time;
        }
        if applied.stopped {
            break;
        }
    }
    let path = to.to_owned();
    run_blocking(move || {
        rebuild.finish()?;
        check_integrity(&path)
    })
    .await?;
    Ok(Restored {
        generation: generation.id,
        commits,
        latest_micros,
    })
}

/// The page size a SQLite file's header records.
fn generation_page_size(file: &[u8]) -> Result<u32> {
    let raw = file
        .get(16..18)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| Error::DataLoss("a snapshot in the replica is truncated".into()))?;
    Ok(if raw == 1 { 65536 } else { u32::from(raw) })
}

/// Runs SQLite's `integrity_check` on a rebuilt file.
fn check_integrity(path: &Path) -> Result<()> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::internal(format!("opening {}", path.display()), e))?;
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check(5)")
        .and_then(|mut s| {
            s.query_map([], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| Error::internal(format!("checking {}", path.display()), e))?;
    if problems != ["ok"] {
        return Err(Error::DataLoss(format!(
            "the file rebuilt from the replica fails the integrity check: {}",
            problems.join("; ")
        )));
    }
    Ok(())
}
