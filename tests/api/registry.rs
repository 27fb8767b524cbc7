//! The registry of open tenants: single flight, and its bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tenantry::ids::TenantId;
use tenantry::pb::{GetItemRequest, ListItemsRequest};
use tenantry::storage::sqlite::Step;
use tenantry::tenant::Stage;
use tonic::Code;

use crate::common::{new_item, spawn_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_first_calls_open_the_tenant_once() {
    let server = spawn_with(|config| config.tenant_max_concurrent_calls = 100).await;
    let acme = server.tenant("acme").await;
    assert_eq!(
        server.registry.opens(),
        0,
        "creating a tenant does not keep it open"
    );

    let items = server.items().await;
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let (mut items, acme) = (items.clone(), acme.clone());
            tokio::spawn(async move {
                items
                    .list_items(acme.call(ListItemsRequest::default()))
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("every first call succeeds");
    }
    assert_eq!(server.registry.opens(), 1);
    assert_eq!(server.registry.open_count().await, 1);
}

#[tokio::test]
async fn tenants_beyond_the_bound_are_closed_and_reopen_on_their_next_call() {
    let server = spawn_with(|config| config.max_open_tenants = 2).await;
    let mut tenants = Vec::new();
    for n in 0..5 {
        tenants.push(server.tenant(&format!("tenant-{n}")).await);
    }
    let mut items = server.items().await;
    for tenant in &tenants {
        items
            .create_item(tenant.call(new_item("hello")))
            .await
            .unwrap();
        assert!(
            server.registry.open_count().await <= 2,
            "never more than the bound stay open"
        );
    }
    assert_eq!(server.registry.opens(), 5);

    for tenant in &tenants {
        let listed = items
            .list_items(tenant.call(ListItemsRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            listed.items.len(),
            1,
            "a closed tenant reopens with its data"
        );
    }
    assert!(
        server.registry.opens() > 5,
        "closed tenants were opened again"
    );
}

/// How many of this process's file descriptors are open on `path` or its
/// `-wal` and `-shm` companions.
fn descriptors_on(path: &std::path::Path) -> usize {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter(|target| {
            target.parent() == path.parent()
                && target
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&name))
        })
        .count()
}

#[tokio::test]
async fn closing_every_tenant_closes_their_files_at_once() {
    let server = spawn_with(|_| {}).await;
    let mut items = server.items().await;
    let mut files = Vec::new();
    for name in ["alpha", "bravo", "charlie"] {
        let tenant = server.tenant(name).await;
        items
            .create_item(tenant.call(new_item("an item")))
            .await
            .unwrap();
        let file = server.tenant_file(&tenant.id);
        assert!(descriptors_on(&file) > 0, "{name} is open");
        files.push(file);
    }
    server.registry.close_all().await;
    for file in &files {
        assert_eq!(descriptors_on(file), 0, "{} is still open", file.display());
        let wal = file.with_extension("db-wal");
        assert!(
            !wal.exists(),
            "the last connection checkpointed {}",
            wal.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moves_through_its_stages_as_calls_and_operations_reach_it() {
    let server = spawn_with(|_| {}).await;
    let acme = server.tenant("acme").await;
    let id = TenantId::parse("id", &acme.id).unwrap();
    let registry = &server.registry;
    let mut items = server.items().await;
    let list = || acme.call(ListItemsRequest::default());
    assert_eq!(
        registry.stage(id).await,
        Stage::Closed,
        "created, not opened"
    );

    items.list_items(list()).await.unwrap();
    assert_eq!(registry.stage(id).await, Stage::Open);

    // An operation takes the file: the tenant is closed and held, and a
    // call waits for the hold instead of opening the file.
    let held = registry.exclusive(id).await;
    assert_eq!(registry.stage(id).await, Stage::Held);
    assert!(!registry.is_open(id));
    let mut waiting = Box::pin({
        let mut items = items.clone();
        let request = list();
        async move { items.list_items(request).await }
    });
    let opens = registry.opens();
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), &mut waiting)
            .await
            .is_err(),
        "a call waits while an operation holds its tenant"
    );
    assert_eq!(registry.opens(), opens, "nothing opened the held file");
    drop(held);
    waiting
        .await
        .expect("the waiting call is answered once the hold is released");
    assert_eq!(registry.stage(id).await, Stage::Open);

    // A database that left the cache is closing until the calls running on
    // it are done.
    let (running, release) = blocked_read(registry, id).await;
    registry.evict(id).await;
    assert_eq!(registry.stage(id).await, Stage::Closing);
    release.send(()).unwrap();
    running.await.unwrap().expect("the running read ends well");
    drop(registry.exclusive(id).await);
    assert_eq!(registry.stage(id).await, Stage::Closed);
}

/// A read aside of the tenant's data (on its open database, or on a
/// connection of its own if it is closed, on a blocking thread either way)
/// that runs until the returned sender sends; returns once it runs.
async fn blocked_read(
    registry: &tenantry::tenant::Registry,
    id: TenantId,
) -> (
    tokio::task::JoinHandle<tenantry::error::Result<()>>,
    std::sync::mpsc::Sender<()>,
) {
    let (started, running) = tokio::sync::oneshot::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let registry = registry.clone();
    let read = tokio::spawn(async move {
        registry
            .read_aside(id, move |_| {
                started.send(()).unwrap();
                released.recv().unwrap();
                Ok(())
            })
            .await
    });
    running.await.unwrap();
    (read, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_read_aside_lets_the_tenant_s_calls_run_between_its_steps() {
    // A read aside of a closed tenant (what a search or a usage view makes)
    // opens its file outside the cache and reads in steps, each in a turn on
    // the tenant's one connection. A call that arrives meanwhile takes that
    // database over instead of opening the file again, and is answered
    // between two steps, long before the read is done.
    let server = spawn_with(|_| {}).await;
    let acme = server.tenant("acme").await;
    let id = TenantId::parse("id", &acme.id).unwrap();
    let registry = server.registry.clone();
    assert_eq!(registry.stage(id).await, Stage::Closed);
    const STEPS: usize = 1000;
    let (started, first_step) = tokio::sync::oneshot::channel();
    let mut started = Some(started);
    let read_done = Arc::new(AtomicBool::new(false));
    let read = tokio::spawn({
        let (registry, read_done) = (registry.clone(), read_done.clone());
        async move {
            let read = registry
                .read_aside_in_steps(id, 0, move |_, steps: &mut usize| {
                    if let Some(started) = started.take() {
                        started.send(()).unwrap();
                    }
                    // A millisecond of work a step, as a step of a search
                    // of a big tenant takes.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    *steps += 1;
                    Ok(if *steps == STEPS {
                        Step::Done
                    } else {
                        Step::More
                    })
                })
                .await;
            read_done.store(true, Ordering::SeqCst);
            read.map(|(steps, _)| steps)
        }
    });
    first_step.await.unwrap();
    let opens = registry.opens();
    let mut items = server.items().await;
    items
        .list_items(acme.call(ListItemsRequest::default()))
        .await
        .expect("the call is answered");
    assert!(
        !read_done.load(Ordering::SeqCst),
        "the call was answered between the read's steps, not after them"
    );
    assert_eq!(
        registry.opens(),
        opens,
        "the call took over the database read aside"
    );
    assert_eq!(read.await.unwrap().expect("the read ends well"), STEPS);
    assert_eq!(
        registry.stage(id).await,
        Stage::Open,
        "the cache keeps the database the read opened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_that_gives_up_waiting_for_a_running_call_leaves_the_tenant_unheld() {
    let server = spawn_with(|_| {}).await;
    let acme = server.tenant("acme").await;
    let id = TenantId::parse("id", &acme.id).unwrap();
    let registry = &server.registry;
    let mut items = server.items().await;
    items
        .list_items(acme.call(ListItemsRequest::default()))
        .await
        .unwrap();
    let (running, release) = blocked_read(registry, id).await;
    // The hold takes the gate, then waits for the read running on the open
    // database; its caller gives up first.
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        registry.exclusive(id),
    )
    .await;
    assert!(gave_up.is_err(), "the hold waits for the running read");
    let _slot_kept = registry.shared(id).await;
    release.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert_ne!(registry.stage(id).await, Stage::Held);
    items
        .list_items(acme.call(ListItemsRequest::default()))
        .await
        .expect("the tenant serves calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_racing_evictions_at_a_bound_of_one_are_all_answered() {
    // Every open evicts another tenant, often one a call has just found:
    // each call still gets its turn, on the database it found or on one it
    // opens under the tenant's gate.
    let server = spawn_with(|config| {
        config.max_open_tenants = 1;
        config.tenant_max_concurrent_calls = 100;
    })
    .await;
    let mut tenants = Vec::new();
    for n in 0..3 {
        tenants.push(server.tenant(&format!("racer-{n}")).await);
    }
    let items = server.items().await;
    let calls: Vec<_> = (0..300)
        .map(|n| {
            let (mut items, tenant) = (items.clone(), tenants[n % 3].clone());
            tokio::spawn(async move {
                if n % 2 == 0 {
                    items
                        .create_item(tenant.call(new_item("raced")))
                        .await
                        .map(|_| ())
                } else {
                    let missing = GetItemRequest {
                        id: uuid::Uuid::new_v4().to_string(),
                    };
                    match items.get_item(tenant.call(missing)).await {
                        Err(status) if status.code() == Code::NotFound => Ok(()),
                        other => other.map(|_| ()),
                    }
                }
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("every call is answered");
    }
    assert!(
        server.registry.opens() > 3,
        "the tenants were evicted and opened again"
    );
    let mut items = items.clone();
    for tenant in &tenants {
        let listed = items
            .list_items(tenant.call(ListItemsRequest {
                page_size: 100,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.items.len(), 50, "every acknowledged write is there");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_called_again_just_after_its_idle_time_ran_out_keeps_serving() {
    // The cache's entry has expired, but nothing has removed it yet (its
    // housekeeping runs only when the cache is used), while something keeps
    // the tenant's slot (a backup, a search, a closer waiting): the next
    // call opens the tenant afresh, never the database the cache let go of.
    let server = spawn_with(|config| config.tenant_idle_secs = 1).await;
    let acme = server.tenant("acme").await;
    let id = TenantId::parse("id", &acme.id).unwrap();
    let mut items = server.items().await;
    let list = || acme.call(ListItemsRequest::default());
    let _slot_kept = server.registry.shared(id).await;
    items.list_items(list()).await.unwrap();
    // The idle time passing is what this test is about: the cache's
    // housekeeping runs just before it runs out, and the call comes just
    // after.
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    server.registry.open_count().await;
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    for call in 0..5 {
        items
            .list_items(list())
            .await
            .unwrap_or_else(|status| panic!("call {call}: {status:?}"));
    }
    assert_eq!(server.registry.stage(id).await, Stage::Open);
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        server.registry.read_aside(id, |_| Ok(())),
    )
    .await
    .expect("a read aside finds the tenant's database")
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_after_a_read_aside_whose_caller_went_away_finds_the_file_closed() {
    let server = spawn_with(|_| {}).await;
    let acme = server.tenant("acme").await;
    let id = TenantId::parse("id", &acme.id).unwrap();
    let file = server.tenant_file(&acme.id);
    // An admin's read aside of the closed tenant, mid-step, whose caller
    // goes away.
    let (running, release) = blocked_read(&server.registry, id).await;
    running.abort();
    let _ = running.await;
    let registry = server.registry.clone();
    let mut hold = Box::pin(async move { registry.exclusive(id).await });
    assert!(
        futures::poll!(&mut hold).is_pending(),
        "an operation waits while the read's connection has the file"
    );
    release.send(()).unwrap();
    let held = tokio::time::timeout(std::time::Duration::from_secs(10), hold)
        .await
        .expect("the hold is taken once the read's step is done");
    assert_eq!(
        descriptors_on(&file),
        0,
        "no connection of this process has the file open under the hold"
    );
    drop(held);
}
