//! One open tenant's replication: its commits noted as they are made, and
//! a task that ships them.
//!
//! The task wakes on the first commit after a quiet spell and ships it at
//! once; commits made while a shipment is under way wait for the next one,
//! which comes at most `--replica-sync-ms` after the last: one object per
//! interval for a busy tenant, none for an idle one. A shipment reads the
//! WAL's new frames holding the tenant's one connection (so no commit or
//! checkpoint runs meanwhile), then uploads without it.
//!
//! Continuity: a tenant closed with every frame shipped leaves a state file
//! naming its generation and the file as it was then (inode, size, change
//! time). When it is opened again with an empty WAL and the same file, its
//! shipping goes on in that generation; otherwise (a crash, a restore, a
//! migration while it was not replicated, frames that could not be shipped)
//! a new generation starts with a snapshot, so the replica never mixes
//! frames of two different files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::Replica;
use super::manifest::{self, Generation, Manifest, Subject, Writer};
use super::store::{Conflict, Expect, Version};
use super::wal::{self, Segment, WalPosition};
use crate::clock::now_micros;
use crate::error::{Error, Result};
use crate::storage::sqlite::{Database, WalLog, run_blocking};

/// How long closing a tenant waits for its last frames to be shipped.
const CLOSING_WAIT: Duration = Duration::from_secs(10);
/// Most frames of WAL kept unshipped before checkpoints go on without
/// them (at 4 KiB pages, 256 MiB).
const MOST_HELD_FRAMES: u32 = 65_536;
/// Most frames one segment carries, unless one transaction has more (at
/// 4 KiB pages, 32 MiB).
const SEGMENT_FRAMES: u32 = 8_192;

/// The longest wait between attempts while the store fails.
const MOST_BACKOFF: Duration = Duration::from_secs(30);

pub(super) struct TenantLog {
    subject: Subject,
    replica: Arc<Replica>,
    database: Weak<Database>,
    state: Arc<Mutex<LogState>>,
    /// Whether the file is whole once closed (a tenant's: closing
    /// checkpoints it), so that a snapshot may be made of it then; a file
    /// whose WAL stays beside it (the catalog's) starts its next
    /// generation when next opened instead.
    whole_when_closed: bool,
    wake: Notify,
    shipper: tokio::sync::Mutex<Shipper>,
    closed: AtomicBool,
}

/// What the WAL holds, as commits and checkpoints told it.
#[derive(Default)]
struct LogState {
    /// Frames in the WAL after its last commit.
    committed: u32,
    /// Frames of the WAL shipped.
    shipped: u32,
    /// The commits not shipped yet: the WAL's frames after each, its time.
    commits: Vec<(u32, i64)>,
    /// Counts the checkpoints that emptied the WAL: a shipment records what
    /// it shipped only if none came between its read and its upload.
    restarts: u64,
    /// The WAL was emptied since the last shipment: the next frames are in
    /// a new WAL.
    restarted: bool,
    /// Frames were checkpointed before they were shipped, or could not be
    /// read: the replica cannot follow this file any more, and a new
    /// generation is due.
    broken: bool,
}

/// The shipping side, one shipment at a time.
#[derive(Default)]
struct Shipper {
    /// The tenant's manifest as last read or written, and its version.
    manifest: Option<(Manifest, Version)>,
    /// Where the last shipment ended, in the WAL it read.
    position: Option<WalPosition>,
    /// The generation shipping goes on in, once known to be this file's.
    generation: Option<u64>,
    /// A generation the state file says this file continues, to be checked
    /// against the manifest.
    continues: Option<Continuity>,
    /// Another writer took the replica over: this one stops.
    fenced: bool,
}

/// How far a shipment got.
#[derive(Debug, PartialEq, Eq)]
enum Shipped {
    /// Every commit made before it is shipped.
    All,
    /// As much as one segment holds; more is waiting.
    Part,
    /// It could not go on: the database is gone, or the replica is
    /// another writer's, or a generation is due that cannot start now.
    Stopped,
}

/// What a tenant closed with everything shipped leaves behind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Continuity {
    generation: u64,
    epoch: u64,
    /// The generation's segments when the file was closed: if the replica
    /// holds more now, something else went on writing it, and this file
    /// no longer leads to it.
    segments: u64,
    file: FileIdentity,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileIdentity {
    device: u64,
    inode: u64,
    size: u64,
    /// The inode's change time, which no program can set back (a copy
    /// that keeps modification times, or `touch`, changes it).
    changed_nanos: i128,
}

impl FileIdentity {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileIdentity {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            changed_nanos: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        })
    }
}

impl TenantLog {
    pub(super) fn attach(replica: Arc<Replica>, subject: Subject, database: &Arc<Database>) {
        let continues = continuity(&replica.state_file(subject), database);
        // A file the replica cannot vouch for gets its generation now, not
        // at its first commit: it may never be written again (restored,
        // then only read), and the replica must not go on holding another
        // file's history as its latest.
        let due = continues.is_none();
        let state = LogState {
            broken: due,
            ..LogState::default()
        };
        let log = Arc::new(TenantLog {
            subject,
            replica,
            database: Arc::downgrade(database),
            state: Arc::new(Mutex::new(state)),
            whole_when_closed: subject != Subject::Catalog,
            wake: Notify::new(),
            shipper: tokio::sync::Mutex::new(Shipper {
                continues,
                ..Shipper::default()
            }),
            closed: AtomicBool::new(false),
        });
        database.set_wal_log(log.clone());
        if due {
            log.wake.notify_one();
        }
        tokio::spawn(log.run());
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().expect("never poisoned")
    }

    async fn run(self: Arc<Self>) {
        let mut backoff = self.replica.sync_interval;
        loop {
            if !self.has_unshipped() {
                self.wake.notified().await;
            }
            if self.closed.load(Ordering::Acquire) || self.database.strong_count() == 0 {
                return;
            }
            match self.ship(false).await {
                Ok(shipped) => {
                    backoff = self.replica.sync_interval;
                    // A backlog goes out at once, a shipment after another.
                    if shipped != Shipped::Part {
                        tokio::time::sleep(self.replica.sync_interval).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(replica_of = %self.subject, error = %crate::error::error_chain(&error), retry_in = ?backoff, "could not replicate the tenant's latest commits");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MOST_BACKOFF);
                }
            }
        }
    }

    /// Ships until every commit made so far is shipped, for at most
    /// [`CLOSING_WAIT`]; `closing` as for [`TenantLog::ship`].
    async fn ship_everything(&self, closing: bool) -> Result<()> {
        let shipped = tokio::time::timeout(CLOSING_WAIT, async {
            while self.has_unshipped() {
                if self.ship(closing).await? == Shipped::Stopped {
                    return Err(Error::Unavailable(format!(
                        "the replica of {} cannot go on here: it is another server's, or \
                         needs a new generation",
                        self.subject
                    )));
                }
            }
            Ok(())
        })
        .await;
        shipped.unwrap_or_else(|_| {
            Err(Error::Unavailable(format!(
                "the replica of {} is behind, and could not catch up within {CLOSING_WAIT:?}: \
                 is the replica's store answering? Retry once it is",
                self.subject
            )))
        })
    }

    fn has_unshipped(&self) -> bool {
        let state = self.state();
        state.shipped < state.committed || state.broken
    }

    /// Ships every commit not shipped yet (starting a generation first if
    /// one is due).
    ///
    /// `closing`: the database is closing, and its connection is no longer
    /// anybody else's, so no turn is taken; a generation cannot start then
    /// (its snapshot would need the connection), and one that is due starts
    /// when the tenant is next opened.
    async fn ship(&self, closing: bool) -> Result<Shipped> {
        let Some(database) = self.database.upgrade() else {
            return Ok(Shipped::Stopped);
        };
        let mut shipper = self.shipper.lock().await;
        if shipper.fenced {
            return Ok(Shipped::Stopped);
        }
        if shipper.manifest.is_none() {
            self.load_manifest(&mut shipper).await?;
        }
        if shipper.generation.is_none() || self.state().broken {
            if closing {
                return Ok(Shipped::Stopped);
            }
            self.start_generation(&database, &mut shipper).await?;
        }
        let turn = match closing {
            true => None,
            false => match database.read_turn().await {
                Ok(turn) => Some(turn),
                Err(_) => return Ok(Shipped::Stopped),
            },
        };
        let (committed, commits, restarted, restarts) = {
            let state = self.state();
            if state.broken {
                // Frames were checkpointed away since the generation began.
                return Err(Error::Unavailable(
                    "the tenant's WAL was checkpointed before it was shipped; a new \
                     generation starts"
                        .into(),
                ));
            }
            (
                state.committed,
                state.commits.clone(),
                state.restarted,
                state.restarts,
            )
        };
        if committed == 0 || committed <= self.state().shipped {
            return Ok(Shipped::All);
        }
        // After a checkpoint the WAL usually starts anew, but not always (a
        // shared file whose reader held on, or whose connections all
        // closed): the WAL's own salts say which.
        let from = shipper.position;
        let shipped = self.state().shipped;
        let up_to = shipment_end(&commits, shipped, committed);
        let wal_path = database.wal_path();
        let read = run_blocking(move || {
            let read = wal::read_committed(&wal_path, from, up_to);
            drop(turn);
            read
        })
        .await;
        let read = match read {
            Ok(read) if read.continues() || restarted || from.is_none() => read,
            Ok(_) => return Err(self.break_off("the WAL was restarted before it was shipped")),
            Err(error) => return Err(self.break_off(&error.to_string())),
        };
        let end = read.end();
        let Some(segment) = Segment::new(read, &commits, now_micros()) else {
            return Ok(Shipped::All);
        };
        let latest = segment
            .header()
            .commits
            .last()
            .map_or(0, |commit| commit.time_micros);
        let encoded = Bytes::from(run_blocking(move || segment.encode()).await?);
        self.append_segment(&mut shipper, encoded, latest).await?;
        shipper.position = Some(end);
        let checkpoint_due = {
            let mut state = self.state();
            if state.restarts == restarts {
                state.shipped = end.frame;
                state.commits.retain(|(frames, _)| *frames > end.frame);
                state.restarted = false;
            }
            state.shipped >= state.committed
        };
        // The checkpoint the writer held back for these frames.
        if checkpoint_due && !closing {
            database.checkpoint_soon(end.frame);
        }
        Ok(if up_to < committed {
            Shipped::Part
        } else {
            Shipped::All
        })
    }

    /// The replica can no longer follow the file from where it is.
    fn break_off(&self, why: &str) -> Error {
        self.state().broken = true;
        Error::internal(
            format!("shipping the WAL of {}", self.subject),
            format!("{why}; a new generation starts with a snapshot"),
        )
    }

    async fn load_manifest(&self, shipper: &mut Shipper) -> Result<()> {
        let store = &self.replica.store;
        let key = Manifest::key(self.subject);
        let writer = Writer {
            node: self.replica.node.clone(),
            epoch: 1,
        };
        let (manifest, version) = match store.get(&key).await? {
            Some((bytes, version)) => (parse_manifest(self.subject, &bytes)?, version),
            None => {
                let manifest = Manifest::new(self.subject, writer.clone());
                let written = store
                    .put_if(&key, Bytes::from(to_json(&manifest)), Expect::Absent)
                    .await?;
                let Ok(version) = written else {
                    return Err(self.fenced(shipper));
                };
                (manifest, version)
            }
        };
        if manifest.writer.node != writer.node {
            return Err(self.fenced(shipper));
        }
        if let Some(continues) = shipper.continues.take()
            && manifest.latest().is_some_and(|g| {
                g.id == continues.generation
                    && g.epoch == continues.epoch
                    && g.segments == continues.segments
            })
            && manifest.writer.epoch == continues.epoch
        {
            shipper.generation = Some(continues.generation);
        }
        shipper.manifest = Some((manifest, version));
        Ok(())
    }

    fn fenced(&self, shipper: &mut Shipper) -> Error {
        shipper.fenced = true;
        Error::FailedPrecondition(format!(
            "the replica of {} is written by another server; this one stops replicating it",
            self.subject
        ))
    }

    /// Starts a generation: a snapshot of the file with every commit
    /// checkpointed into it, after which shipping starts at the beginning
    /// of the (emptied) WAL.
    async fn start_generation(&self, database: &Database, shipper: &mut Shipper) -> Result<()> {
        let _turn = self.snapshot_turn().await?;
        // Whatever happens below, the generation shipped so far is not
        // added to any more: its file is about to lose frames it lacks.
        shipper.generation = None;
        shipper.position = None;
        let staging = self
            .replica
            .state_dir
            .join(format!("{}.snapshot.partial", self.subject.file_stem()));
        let copy_to = staging.clone();
        let state = self.state.clone();
        let copied = database
            .with_still_file(move |file| {
                // No checkpoint runs while the file is still: the WAL holds
                // exactly the commits made since the copy's own checkpoint,
                // which are the new generation's to ship.
                let started_micros = now_micros();
                state.lock().expect("never poisoned").broken = false;
                file.copy_to(&copy_to, None)?;
                Ok(started_micros)
            })
            .await
            .map_err(|_| Error::Unavailable("the tenant was closed".into()))?;
        let started_micros = match copied {
            Ok(time) => time,
            Err(error) => {
                let _ = std::fs::remove_file(&staging);
                return Err(error);
            }
        };
        let compressed = run_blocking(move || compress_file(&staging)).await?;
        self.record_generation(shipper, started_micros, compressed)
            .await
    }

    async fn snapshot_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.replica
            .snapshots
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("the server is stopping".into()))
    }

    /// Uploads a snapshot and records it as the start of a new generation.
    async fn record_generation(
        &self,
        shipper: &mut Shipper,
        started_micros: i64,
        compressed: Compressed,
    ) -> Result<()> {
        let (mut manifest, version) = shipper.manifest.clone().expect("loaded first");
        let generation = Generation {
            id: manifest.latest().map_or(1, |g| g.id + 1),
            token: format!("{:08x}", rand::random::<u32>()),
            epoch: manifest.writer.epoch,
            started_micros,
            page_size: compressed.page_size,
            snapshot_bytes: compressed.bytes.len() as u64,
            segments: 0,
            segment_bytes: 0,
            latest_micros: started_micros,
        };
        self.put_new(&generation.snapshot_key(self.subject), compressed.bytes)
            .await?;
        let id = generation.id;
        manifest.generations.push(generation);
        let version = self.write_manifest(shipper, &manifest, version).await?;
        shipper.manifest = Some((manifest, version));
        shipper.generation = Some(id);
        shipper.position = None;
        tracing::debug!(replica_of = %self.subject, generation = id, "started a replica generation");
        Ok(())
    }

    /// After the close: if the replica does not hold the file as it now is
    /// (a generation was due, or frames could not be shipped), the closed
    /// file, whole and still, starts a new generation. Then the state file
    /// records what the file continues.
    async fn after_close(&self) -> Result<Option<Continuity>> {
        let Some(database) = self.database.upgrade() else {
            return Ok(None);
        };
        let mut shipper = self.shipper.lock().await;
        if shipper.fenced {
            return Ok(None);
        }
        // First the manifest, which tells whether the generation the file
        // was opened in goes on: a tenant only read needs no new one.
        if shipper.manifest.is_none() {
            self.load_manifest(&mut shipper).await?;
        }
        if shipper.fenced {
            return Ok(None);
        }
        let due = shipper.generation.is_none() || self.has_unshipped();
        if due && !self.whole_when_closed {
            return Ok(None);
        }
        if due {
            let _turn = self.snapshot_turn().await?;
            let path = database.path().to_owned();
            let started_micros = now_micros();
            let compressed = run_blocking(move || compress_copy(&path)).await?;
            self.record_generation(&mut shipper, started_micros, compressed)
                .await?;
        }
        let (Some(generation), Some((manifest, _))) = (shipper.generation, &shipper.manifest)
        else {
            return Ok(None);
        };
        let Some(latest) = manifest.latest().filter(|g| g.id == generation) else {
            return Ok(None);
        };
        Ok(FileIdentity::of(database.path()).map(|file| Continuity {
            generation,
            epoch: manifest.writer.epoch,
            segments: latest.segments,
            file,
        }))
    }

    async fn append_segment(
        &self,
        shipper: &mut Shipper,
        segment: Bytes,
        latest_micros: i64,
    ) -> Result<()> {
        let (mut manifest, version) = shipper.manifest.clone().expect("loaded first");
        let generation = manifest
            .generations
            .last_mut()
            .expect("a generation was started first");
        let key = generation.segment_key(self.subject, generation.segments);
        let bytes = segment.len() as u64;
        self.put_new(&key, segment).await?;
        generation.segments += 1;
        generation.segment_bytes += bytes;
        generation.latest_micros = generation.latest_micros.max(latest_micros);
        let version = self.write_manifest(shipper, &manifest, version).await?;
        shipper.manifest = Some((manifest, version));
        Ok(())
    }

    async fn write_manifest(
        &self,
        shipper: &mut Shipper,
        manifest: &Manifest,
        version: Version,
    ) -> Result<Version> {
        let written = self
            .replica
            .store
            .put_if(
                &Manifest::key(self.subject),
                Bytes::from(to_json(manifest)),
                Expect::Version(version),
            )
            .await?;
        if let Ok(version) = written {
            return Ok(version);
        }
        // Changed since it was read: by another server (which now writes
        // it), or by this one's own write whose answer was lost. Either
        // way the generation this writer was in is not to be added to.
        let (bytes, version) = self
            .replica
            .store
            .get(&Manifest::key(self.subject))
            .await?
            .ok_or_else(|| Error::Unavailable("the tenant's manifest vanished".into()))?;
        let current = parse_manifest(self.subject, &bytes)?;
        if current.writer.node != self.replica.node {
            return Err(self.fenced(shipper));
        }
        shipper.manifest = Some((current, version));
        shipper.generation = None;
        Err(Error::Unavailable(
            "the tenant's manifest changed meanwhile; a new generation starts".into(),
        ))
    }

    /// Writes an object that must not exist yet: one that does is left
    /// from a write whose answer was lost, or another writer's, and the
    /// generation it belongs to is not added to.
    async fn put_new(&self, key: &str, bytes: Bytes) -> Result<()> {
        match self
            .replica
            .store
            .put_if(key, bytes, Expect::Absent)
            .await?
        {
            Ok(_) => Ok(()),
            Err(Conflict) => {
                self.state().broken = true;
                Err(Error::Unavailable(format!(
                    "{key} already exists in the replica; a new generation starts"
                )))
            }
        }
    }
}

impl WalLog for TenantLog {
    fn committed(&self, frames: u32) {
        let mut state = self.state();
        // Commits of a shared file's connections may be told out of order.
        state.committed = state.committed.max(frames);
        state.commits.push((frames, now_micros()));
        drop(state);
        self.wake.notify_one();
    }

    fn may_checkpoint(&self) -> bool {
        let state = self.state();
        // Held back for at most so many frames: past them (the store has
        // been failing a while), the WAL is let go, and the replica starts
        // a new generation once the store answers again.
        state.broken
            || state.shipped >= state.committed
            || state.committed - state.shipped > MOST_HELD_FRAMES
    }

    fn checkpointed(&self) {
        let mut state = self.state();
        if state.shipped < state.committed {
            state.broken = true;
        }
        state.committed = 0;
        state.shipped = 0;
        state.commits.clear();
        state.restarts += 1;
        state.restarted = true;
    }

    fn ship_pending(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> {
        Box::pin(self.ship_everything(false))
    }

    fn closing(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if let Err(error) = self.ship_everything(true).await {
                let failure = crate::error::error_chain(&error);
                tracing::warn!(replica_of = %self.subject, %failure, "closing a tenant whose latest commits are not replicated; a new generation starts when it is next opened");
            }
        })
    }

    fn closed(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.closed.store(true, Ordering::Release);
            self.wake.notify_one();
            let state_file = self.replica.state_file(self.subject);
            let recorded = match self.after_close().await {
                Ok(Some(continuity)) => {
                    super::store::write_durably(&state_file, &to_json(&continuity))
                }
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            };
            if let Err(error) = recorded {
                let _ = std::fs::remove_file(&state_file);
                tracing::warn!(replica_of = %self.subject, error = %crate::error::error_chain(&error), "the replica may not hold the tenant's latest commits; a new generation starts when it is next opened");
            }
        })
    }
}

/// Where a shipment after frame `shipped` ends: at the last commit within
/// [`SEGMENT_FRAMES`] of it, or at the first commit after it if that one
/// alone is larger; `committed` if the commits' frames are not known.
fn shipment_end(commits: &[(u32, i64)], shipped: u32, committed: u32) -> u32 {
    let limit = shipped.saturating_add(SEGMENT_FRAMES);
    let after = commits
        .iter()
        .map(|(frames, _)| *frames)
        .filter(|f| *f > shipped);
    after
        .clone()
        .filter(|f| *f <= limit)
        .max()
        .or_else(|| after.min())
        .unwrap_or(committed)
        .min(committed)
}

/// The generation a tenant just opened continues, if its state file says
/// it was closed with everything shipped and its file is as it was then.
/// The state file is used once: it is removed here.
fn continuity(state_file: &Path, database: &Database) -> Option<Continuity> {
    let bytes = std::fs::read(state_file).ok()?;
    // Used once, and gone for good before the file changes: a state file
    // back after a power cut would vouch for a file it never saw.
    let dir = state_file.parent()?;
    let removed = std::fs::remove_file(state_file)
        .and_then(|()| std::fs::File::open(dir).and_then(|dir| dir.sync_all()));
    if removed.is_err() {
        return None;
    }
    let continuity: Continuity = serde_json::from_slice(&bytes).ok()?;
    let wal_empty = std::fs::metadata(database.wal_path()).map_or(true, |m| m.len() == 0);
    (wal_empty && FileIdentity::of(database.path()).as_ref() == Some(&continuity.file))
        .then_some(continuity)
}

pub(super) fn parse_manifest(subject: Subject, bytes: &[u8]) -> Result<Manifest> {
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| {
        Error::DataLoss(format!(
            "the replica's manifest of {subject} is not readable: {e}"
        ))
    })?;
    if manifest.format != manifest::FORMAT {
        return Err(Error::DataLoss(format!(
            "the replica's manifest of {subject} has format {}, which this version does not \
             read",
            manifest.format
        )));
    }
    if manifest.subject != subject.file_stem() {
        return Err(Error::DataLoss(format!(
            "the replica's manifest of {subject} says it is the manifest of {}",
            manifest.subject
        )));
    }
    Ok(manifest)
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("serializes")
}

struct Compressed {
    bytes: Bytes,
    page_size: u32,
}

/// Compresses a copy of a tenant's file, and removes the copy.
fn compress_file(path: &PathBuf) -> Result<Compressed> {
    let compressed = compress_copy(path);
    let _ = std::fs::remove_file(path);
    compressed
}

/// Compresses a tenant's file that nothing writes.
fn compress_copy(path: &Path) -> Result<Compressed> {
    let file = std::fs::read(path)
        .map_err(|e| Error::internal(format!("reading {}", path.display()), e))?;
    let page_size = super::generation_page_size(&file)?;
    let bytes = zstd::stream::encode_all(&file[..], 3)
        .map_err(|e| Error::internal("compressing a snapshot", e))?;
    Ok(Compressed {
        bytes: Bytes::from(bytes),
        page_size,
    })
}
