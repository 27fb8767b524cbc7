//! A crash loop: the real binary is killed with SIGKILL, again and again,
//! while writers wait for its answers, and is started again on the same data
//! directory each time. After every restart each write the server
//! acknowledged is there, each write whose answer was lost is there whole or
//! not at all, and nothing else is; after a clean stop at the end, every
//! tenant file and the catalog pass `integrity_check`. Tenant files are in WAL
//! mode with `synchronous = NORMAL`, which may lose a commit to a power cut
//! but never to a killed process: the log is in the operating system's page
//! cache, so a kill loses nothing that was acknowledged.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use prost_types::FieldMask;
use tempfile::TempDir;
use tenantry::pb::{self, item_service_client::ItemServiceClient};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tonic::Status;
use tonic::transport::Channel;

use crate::common::{
    ServerProcess, TestTenant, all_items, create_tenant, integrity, spawn_in, titles_in_file,
};

/// The signal `Child::kill` sends on Unix, the same number on every one.
const SIGKILL: i32 = 9;
const TENANTS: usize = 8;
/// Two writers per tenant, so that writes to one tenant queue behind each
/// other as well as running beside other tenants' writes.
const WRITERS: usize = 16;

#[tokio::test]
async fn acknowledged_writes_survive_a_loop_of_sigkills() {
    kill_loop(10).await;
}

/// The same loop, for `TENANTRY_SOAK_ITERATIONS` kills (100 unless set).
#[tokio::test]
#[ignore = "a soak; run it with --ignored"]
async fn acknowledged_writes_survive_a_long_loop_of_sigkills() {
    let iterations = std::env::var("TENANTRY_SOAK_ITERATIONS").map_or(100, |n| {
        n.parse()
            .expect("TENANTRY_SOAK_ITERATIONS is a number of iterations")
    });
    kill_loop(iterations).await;
}

/// Starts the binary, checks what the last run left, writes until the kill,
/// `iterations` times; then checks once more with a server that stops
/// cleanly, and checks the files it leaves.
async fn kill_loop(iterations: usize) {
    let dir = Arc::new(TempDir::new().unwrap());
    let mut tenants = Vec::new();
    let mut writers: Vec<Writer> = (0..WRITERS).map(Writer::new).collect();
    let mut checks = Checks::default();
    let mut acknowledged = 0;
    for iteration in 0..iterations {
        let server = ServerProcess::start(&dir, &[]);
        if tenants.is_empty() {
            let mut admin = server.admin().await;
            for n in 0..TENANTS {
                tenants.push(create_tenant(&mut admin, &format!("tenant-{n}")).await);
            }
        }
        checks.add(check_and_settle(&mut server.items().await, &tenants, &mut writers).await);
        // Vary the moment of the kill from one iteration to the next.
        let kill_after = 40 + iteration * 53 % 120;
        let round = write_until_killed(server, &tenants, &mut writers, kill_after).await;
        acknowledged += round.acknowledged;
        eprintln!(
            "iteration {iteration}: SIGKILL after {} acknowledged writes, {} calls in flight",
            round.acknowledged, round.in_flight
        );
    }

    let server = spawn_in(dir, |_| {}).await;
    checks.add(check_and_settle(&mut server.items().await, &tenants, &mut writers).await);
    let files: Vec<PathBuf> = tenants.iter().map(|t| server.tenant_file(&t.id)).collect();
    let catalog = server.data_dir().join("catalog.db");
    // The directory is removed when this goes, after the files are checked.
    let _dir = server.stop().await;
    for (n, file) in files.iter().enumerate() {
        let mut expected: Vec<String> = writers
            .iter()
            .filter(|w| w.tenant == n)
            .flat_map(Writer::present_titles)
            .collect();
        expected.sort();
        assert_eq!(titles_in_file(file), expected, "the file of tenant-{n}");
    }
    for file in files.iter().chain([&catalog]) {
        assert_eq!(integrity(file), "ok", "{}", file.display());
    }
    eprintln!(
        "{iterations} iterations: {acknowledged} acknowledged writes; {} acknowledged states \
         checked after restarts; {} lost answers, {} of them applied",
        checks.acknowledged, checks.lost, checks.lost_but_applied
    );
    assert!(
        checks.lost > 0,
        "no write was in flight at any kill: the loop proves nothing"
    );
}

/// What a writer's call sets in an item.
#[derive(Clone, Debug, PartialEq)]
struct Content {
    description: String,
    completed: bool,
}

impl Content {
    fn of(item: &pb::Item) -> Content {
        Content {
            description: item.description.clone(),
            completed: item.completed,
        }
    }
}

/// What the server may hold for one title.
struct Tracked {
    /// The item's id, once an answer or a listing has shown it.
    id: Option<String>,
    /// The states the item may be in, `None` being absent: one when the
    /// server acknowledged the last write; before and after the write when
    /// its answer was lost.
    may_be: Vec<Option<Content>>,
}

/// One write: the item it touches, and what it turns it from and into.
/// Nothing before is a creation, nothing after a deletion.
struct Write {
    title: String,
    id: Option<String>,
    before: Option<Content>,
    after: Option<Content>,
}

impl Write {
    /// Sends the write, and returns the item's id from the answer.
    async fn send(
        &self,
        items: &mut ItemServiceClient<Channel>,
        tenant: &TestTenant,
    ) -> Result<Option<String>, Status> {
        let id = self.id.clone().unwrap_or_default();
        let answer = match (&self.before, &self.after) {
            (None, Some(after)) => {
                let item = self.item(String::new(), after);
                items
                    .create_item(tenant.call(pb::CreateItemRequest { item: Some(item) }))
                    .await?
            }
            (Some(_), Some(after)) => {
                let item = self.item(id, after);
                let update_mask = Some(FieldMask {
                    paths: vec!["description".into(), "completed".into()],
                });
                items
                    .update_item(tenant.call(pb::UpdateItemRequest {
                        item: Some(item),
                        update_mask,
                    }))
                    .await?
            }
            (Some(_), None) => {
                items
                    .delete_item(tenant.call(pb::DeleteItemRequest { id }))
                    .await?;
                return Ok(None);
            }
            (None, None) => unreachable!("a write changes something"),
        }
        .into_inner();
        assert_eq!(
            (answer.title.as_str(), Some(Content::of(&answer))),
            (self.title.as_str(), self.after.clone()),
            "the answer shows the write"
        );
        Ok(Some(answer.id))
    }

    fn item(&self, id: String, content: &Content) -> pb::Item {
        pb::Item {
            id,
            title: self.title.clone(),
            description: content.description.clone(),
            completed: content.completed,
            ..Default::default()
        }
    }
}

/// One writer: it creates items in its tenant, updates and deletes the
/// ones it created, and remembers what the server may hold for each. Its
/// titles are its own, so no other writer touches its items.
struct Writer {
    index: usize,
    tenant: usize,
    writes: usize,
    items: BTreeMap<String, Tracked>,
}

impl Writer {
    fn new(index: usize) -> Writer {
        Writer {
            index,
            tenant: index % TENANTS,
            writes: 0,
            items: BTreeMap::new(),
        }
    }

    /// Mostly creations; every fourth write an update, and every other tenth
    /// a deletion, of one of its items when it has one.
    fn next_write(&mut self) -> Write {
        self.writes += 1;
        let n = self.writes;
        let present: Vec<(&String, &Tracked)> = self
            .items
            .iter()
            .filter(|(_, tracked)| matches!(tracked.may_be[..], [Some(_)]))
            .collect();
        let creation = Write {
            title: format!("w{:02}-{n:06}", self.index),
            id: None,
            before: None,
            after: Some(Content {
                description: format!("created by write {n}"),
                completed: false,
            }),
        };
        let (update, delete) = (n.is_multiple_of(4), n.is_multiple_of(10));
        if present.is_empty() || !(update || delete) {
            return creation;
        }
        let (title, tracked) = present[n / 4 % present.len()];
        let before = tracked.may_be[0].clone().expect("a present item");
        let after = update.then(|| Content {
            description: format!("updated by write {n}"),
            completed: !before.completed,
        });
        Write {
            title: title.clone(),
            id: tracked.id.clone(),
            before: Some(before),
            after,
        }
    }

    /// Writes until a call fails, which must be because the server is being
    /// killed, and hands itself back.
    async fn write_until_failure(
        mut self,
        mut items: ItemServiceClient<Channel>,
        tenant: TestTenant,
        progress: Arc<Progress>,
    ) -> Writer {
        loop {
            let write = self.next_write();
            progress.in_flight.fetch_add(1, SeqCst);
            let answer = write.send(&mut items, &tenant).await;
            progress.in_flight.fetch_sub(1, SeqCst);
            let tracked = match answer {
                Ok(id) => Tracked {
                    id: id.or(write.id),
                    may_be: vec![write.after],
                },
                Err(status) => {
                    assert!(
                        progress.killing.load(SeqCst),
                        "writer {} failed while the server was up: {status:?}",
                        self.index
                    );
                    Tracked {
                        id: write.id,
                        may_be: vec![write.before, write.after],
                    }
                }
            };
            let acknowledged = tracked.may_be.len() == 1;
            self.items.insert(write.title, tracked);
            if !acknowledged {
                return self;
            }
            progress.acknowledge();
        }
    }

    fn present_titles(&self) -> impl Iterator<Item = String> + '_ {
        self.items
            .iter()
            .filter(|(_, tracked)| matches!(tracked.may_be[..], [Some(_)]))
            .map(|(title, _)| title.clone())
    }
}

/// The writers' progress in one iteration, shared with the code that kills
/// the server.
struct Progress {
    acknowledged: AtomicUsize,
    kill_after: usize,
    reached: Notify,
    in_flight: AtomicUsize,
    /// Set just before the kill: from then on a call may fail.
    killing: AtomicBool,
}

impl Progress {
    fn acknowledge(&self) {
        if self.acknowledged.fetch_add(1, SeqCst) + 1 == self.kill_after {
            self.reached.notify_one();
        }
    }
}

/// What happened in one iteration.
struct Round {
    acknowledged: usize,
    in_flight: usize,
}

/// Runs every writer against `server` until `kill_after` writes are
/// acknowledged, kills it with SIGKILL while they wait for answers, and
/// puts the writers back once each has seen a call fail.
async fn write_until_killed(
    server: ServerProcess,
    tenants: &[TestTenant],
    writers: &mut Vec<Writer>,
    kill_after: usize,
) -> Round {
    let progress = Arc::new(Progress {
        acknowledged: AtomicUsize::new(0),
        kill_after,
        reached: Notify::new(),
        in_flight: AtomicUsize::new(0),
        killing: AtomicBool::new(false),
    });
    let items = server.items().await;
    let mut running = JoinSet::new();
    for writer in std::mem::take(writers) {
        let tenant = tenants[writer.tenant].clone();
        running.spawn(writer.write_until_failure(items.clone(), tenant, progress.clone()));
    }
    tokio::select! {
        () = progress.reached.notified() => {}
        stopped = running.join_next() => match stopped.expect("the writers are running") {
            Err(failed) => std::panic::resume_unwind(failed.into_panic()),
            Ok(writer) => unreachable!("writer {} stopped without a failure", writer.index),
        },
    }
    progress.killing.store(true, SeqCst);
    let in_flight = progress.in_flight.load(SeqCst);
    let status = server.kill();
    assert_eq!(
        status.signal(),
        Some(SIGKILL),
        "the server died of SIGKILL: {status}"
    );
    *writers = running.join_all().await;
    writers.sort_by_key(|w| w.index);
    Round {
        acknowledged: progress.acknowledged.load(SeqCst),
        in_flight,
    }
}

/// What the checks after a restart found.
#[derive(Default)]
struct Checks {
    /// Items whose last write was acknowledged, found exactly as written.
    acknowledged: usize,
    /// Items whose last write's answer was lost.
    lost: usize,
    /// Of those, the ones the write had changed.
    lost_but_applied: usize,
}

impl Checks {
    fn add(&mut self, more: Checks) {
        self.acknowledged += more.acknowledged;
        self.lost += more.lost;
        self.lost_but_applied += more.lost_but_applied;
    }
}

/// Lists every tenant's items and checks each against what its writers may
/// have left: an acknowledged write exactly, a write whose answer was lost
/// whole or not at all, and nothing else. Then takes what it found as the
/// one state of each item, for the next writes to start from.
async fn check_and_settle(
    items: &mut ItemServiceClient<Channel>,
    tenants: &[TestTenant],
    writers: &mut [Writer],
) -> Checks {
    let mut checks = Checks::default();
    for (n, tenant) in tenants.iter().enumerate() {
        let mut found = BTreeMap::new();
        for item in all_items(items, tenant).await {
            if let Some(twin) = found.insert(item.title.clone(), item) {
                panic!("tenant-{n} holds two items titled {:?}", twin.title);
            }
        }
        for writer in writers.iter_mut().filter(|w| w.tenant == n) {
            for (title, tracked) in &mut writer.items {
                let item = found.remove(title);
                let now = item.as_ref().map(Content::of);
                assert!(
                    tracked.may_be.contains(&now),
                    "tenant-{n}, {title:?}: the server holds {now:?}, but the writes allow only \
                     {:?}",
                    tracked.may_be
                );
                match &tracked.may_be[..] {
                    [_] => checks.acknowledged += 1,
                    [_, after] => {
                        checks.lost += 1;
                        checks.lost_but_applied += usize::from(*after == now);
                    }
                    _ => unreachable!("one or two states"),
                }
                *tracked = Tracked {
                    id: item.map(|i| i.id),
                    may_be: vec![now],
                };
            }
        }
        assert!(
            found.is_empty(),
            "tenant-{n} holds items nobody wrote: {:?}",
            found.keys()
        );
    }
    checks
}
