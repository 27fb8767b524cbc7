//! A tenant's manifest: the one object that says what its replica is.
//!
//! A restore reads only what the manifest lists, never what a listing of
//! the store finds: objects a writer put but never recorded (it crashed
//! between the two, or it lost the replica to another writer) are never
//! read. The manifest names its writer (a node) and the writer's epoch, and
//! is only ever replaced conditionally on the version its writer last read
//! or wrote, so two writers cannot both record objects: the second one's
//! write fails, and it stops.
//!
//! Layout of a tenant's objects, under the replica's prefix:
//!
//! ```text
//! tenants/<tenant id>/manifest.json
//! tenants/<tenant id>/e<epoch>-g<generation>-<token>/snapshot.db.zst
//! tenants/<tenant id>/e<epoch>-g<generation>-<token>/<sequence>.seg
//! catalog/...                     the catalog's, laid out the same way
//! ```
//!
//! Every object is written only if absent, under a directory whose token
//! its generation drew at random: a writer that lost the manifest to
//! another can never overwrite an object the manifest lists.
//!
//! A generation is a snapshot of the file and the segments of WAL frames
//! committed after it, in order; each segment holds whole transactions and
//! the time of each. A new generation starts whenever the replica's
//! continuity with the local file cannot be shown (a file opened after a
//! crash, restored, or changed while it was not replicated).

use serde::{Deserialize, Serialize};

use crate::ids::TenantId;

/// What a replica is of: the catalog, or one tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    Catalog,
    Tenant(TenantId),
}

impl Subject {
    /// Where its objects are, under the replica's prefix.
    pub fn prefix(&self) -> String {
        match self {
            Subject::Catalog => "catalog".to_owned(),
            Subject::Tenant(id) => format!("tenants/{id}"),
        }
    }

    /// Its name in the data directory's `replica/` folder.
    pub fn file_stem(&self) -> String {
        match self {
            Subject::Catalog => "catalog".to_owned(),
            Subject::Tenant(id) => id.to_string(),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Catalog => f.write_str("the catalog"),
            Subject::Tenant(id) => write!(f, "tenant {id}"),
        }
    }
}

/// The manifest's format; a reader refuses one it does not know.
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Whose it is: `catalog`, or the tenant's id.
    pub subject: String,
    /// The node that writes this replica, and its epoch.
    pub writer: Writer,
    /// Oldest first.
    pub generations: Vec<Generation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    pub node: String,
    pub epoch: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Generation {
    /// Increasing within a tenant's replica.
    pub id: u64,
    /// Drawn at random when it began, and part of its objects' keys.
    pub token: String,
    /// The writer's epoch when it began.
    pub epoch: u64,
    /// When its snapshot was taken (Unix microseconds): the earliest time
    /// it can restore.
    pub started_micros: i64,
    pub page_size: u32,
    pub snapshot_bytes: u64,
    /// Its segments are numbered from 0 to `segments - 1`.
    pub segments: u64,
    /// Bytes of its segments.
    pub segment_bytes: u64,
    /// The time of the last commit it holds (its snapshot's, if none).
    pub latest_micros: i64,
}

impl Manifest {
    pub fn new(subject: Subject, writer: Writer) -> Self {
        Manifest {
            format: FORMAT,
            subject: subject.file_stem(),
            writer,
            generations: Vec::new(),
        }
    }

    pub fn key(subject: Subject) -> String {
        format!("{}/manifest.json", subject.prefix())
    }

    pub fn latest(&self) -> Option<&Generation> {
        self.generations.last()
    }

    /// The generation to restore `until` (Unix microseconds) from: the
    /// latest one that began at or before it; with no time, the latest.
    pub fn generation_for(&self, until: Option<i64>) -> Option<&Generation> {
        match until {
            None => self.latest(),
            Some(until) => self
                .generations
                .iter()
                .rev()
                .find(|g| g.started_micros <= until),
        }
    }
}

impl Generation {
    fn dir(&self, subject: Subject) -> String {
        format!(
            "{}/e{:010}-g{:010}-{}",
            subject.prefix(),
            self.epoch,
            self.id,
            self.token
        )
    }

    pub fn snapshot_key(&self, subject: Subject) -> String {
        format!("{}/snapshot.db.zst", self.dir(subject))
    }

    pub fn segment_key(&self, subject: Subject, sequence: u64) -> String {
        format!("{}/{sequence:012}.seg", self.dir(subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(id: u64, started_micros: i64) -> Generation {
        Generation {
            id,
            token: "ab12".into(),
            epoch: 1,
            started_micros,
            page_size: 4096,
            snapshot_bytes: 0,
            segments: 0,
            segment_bytes: 0,
            latest_micros: started_micros,
        }
    }

    #[test]
    fn a_time_is_restored_from_the_last_generation_begun_by_then() {
        let id = TenantId::parse("t", "0190f5a4-0000-7000-8000-000000000001").unwrap();
        let tenant = Subject::Tenant(id);
        let mut manifest = Manifest::new(
            tenant,
            Writer {
                node: "n".into(),
                epoch: 1,
            },
        );
        manifest.generations = vec![generation(1, 100), generation(2, 200)];
        assert_eq!(manifest.generation_for(None).unwrap().id, 2);
        assert_eq!(manifest.generation_for(Some(150)).unwrap().id, 1);
        assert_eq!(manifest.generation_for(Some(200)).unwrap().id, 2);
        assert!(manifest.generation_for(Some(99)).is_none());
        assert_eq!(
            manifest.generations[1].segment_key(tenant, 7),
            format!("tenants/{id}/e0000000001-g0000000002-ab12/000000000007.seg")
        );
    }
}
