//! Streamed answers whose clients stop reading: nothing a stream holds
//! while it waits for its reader blocks a lifecycle operation or another
//! call, a stream ended for its reader's silence says so, and stalled
//! streams count against the staging bound and the call limit.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tenantry::pb::{self, tenant_service_client::TenantServiceClient};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::common::{
    TestServer, TestTenant, as_admin, expect_code, files_under, new_item, spawn_with,
};

/// An admin client on a connection whose flow-control windows are tiny: a
/// stream it does not read stops the server after a few bytes.
async fn slow_reader(server: &TestServer) -> TenantServiceClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    TenantServiceClient::new(channel)
}

/// A tenant with `count` items of about 2 KB each.
async fn filled(server: &TestServer, name: &str, count: usize) -> TestTenant {
    let tenant = server.tenant(name).await;
    let mut items = server.items().await;
    for n in 0..count {
        let mut request = new_item(&format!("{name} item {n:04}"));
        request.item.as_mut().unwrap().description = "filler ".repeat(300);
        items.create_item(tenant.call(request)).await.unwrap();
    }
    tenant
}

/// Waits until the admin trail records an `action` call on `target` that
/// ended with `outcome`.
async fn ended(server: &TestServer, action: &str, target: &str, outcome: &str) {
    let mut admin = server.admin().await;
    let started = Instant::now();
    loop {
        let events = admin
            .list_audit_events(as_admin(pb::ListAuditEventsRequest {
                page_size: 1000,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .events;
        if events
            .iter()
            .any(|e| e.action == action && e.target == target && e.outcome == outcome)
        {
            return;
        }
        let others: Vec<(&str, &str)> = events
            .iter()
            .filter(|e| e.action != "ListAuditEvents")
            .map(|e| (e.action.as_str(), e.outcome.as_str()))
            .collect();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no {action} record with {outcome}: {others:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_search_whose_client_stops_reading_holds_up_no_delete_and_no_call() {
    let server = spawn_with(|config| config.stream_stall_ms = 1500).await;
    let tenants = [
        filled(&server, "first", 40).await,
        filled(&server, "second", 40).await,
        filled(&server, "third", 40).await,
    ];
    // Closed, as most tenants are: a search reads each on a connection of
    // its own, holding the tenant's file in place meanwhile.
    for tenant in &tenants {
        let id = tenantry::ids::TenantId::parse("id", &tenant.id).unwrap();
        server.registry.evict(id).await;
    }
    let mut reader = slow_reader(&server).await;
    let stalled = reader
        .search_items(as_admin(pb::SearchItemsRequest {
            limit_per_tenant: 1000,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();

    // Everything else goes on while nobody reads the search.
    let mut admin = server.admin().await;
    for tenant in &tenants[1..] {
        let mut delete = as_admin(pb::DeleteTenantRequest {
            id: tenant.id.clone(),
            ..Default::default()
        });
        delete.set_timeout(Duration::from_secs(2));
        admin
            .delete_tenant(delete)
            .await
            .expect("a tenant a stalled search read is deleted at once");
    }
    let mut items = server.items().await;
    let mut list = tenants[0].call(pb::ListItemsRequest::default());
    list.set_timeout(Duration::from_secs(2));
    let page = items
        .list_items(list)
        .await
        .expect("a searched tenant is served");
    assert!(!page.into_inner().items.is_empty());

    // The search ends for its reader's silence, and says so when read.
    ended(&server, "SearchItems", "tenants", "UNAVAILABLE").await;
    let answers: Vec<_> = stalled.collect().await;
    let last = answers.last().unwrap().as_ref().unwrap_err();
    assert_eq!(last.code(), Code::Unavailable, "{last:?}");
    assert!(last.message().contains("1500 ms"), "{last:?}");
    assert!(
        answers.len() < 121,
        "the search stopped early: {}",
        answers.len()
    );
}

#[tokio::test]
async fn stalled_exports_are_bounded_by_the_staging_folder_and_the_call_limit() {
    let server = spawn_with(|config| {
        config.stream_stall_ms = 1500;
        config.max_staging_mib = 4;
        config.max_concurrent_calls = 3;
        config.tenant_max_concurrent_calls = 3;
        config.admin_reserved_calls = 0;
    })
    .await;
    let big = filled(&server, "big", 600).await;
    let small = server.tenant("small").await;
    let export = |tenant: &TestTenant| {
        as_admin(pb::ExportTenantRequest {
            id: tenant.id.clone(),
        })
    };
    let mut reader = slow_reader(&server).await;
    let mut stalled = reader
        .export_tenant(export(&big))
        .await
        .unwrap()
        .into_inner();
    let header = stalled.message().await.unwrap().unwrap().backup.unwrap();
    assert!(
        (2 << 20..4 << 20).contains(&header.size_bytes),
        "one snapshot fits in 4 MiB, two do not: {}",
        header.size_bytes
    );
    let staging = server.data_dir().join("staging");
    assert_eq!(files_under(&staging).len(), 1, "the snapshot being sent");

    // Another snapshot would not fit the staging folder's bound.
    let mut admin = server.admin().await;
    let status = expect_code(
        admin.export_tenant(export(&big)).await,
        Code::ResourceExhausted,
    );
    assert!(status.message().contains("--max-staging-mib"), "{status:?}");
    // A stream holds its call slot: with two more open, the limit is hit.
    let second = reader
        .export_tenant(export(&small))
        .await
        .unwrap()
        .into_inner();
    let third = reader
        .export_tenant(export(&small))
        .await
        .unwrap()
        .into_inner();
    let status = expect_code(
        admin
            .get_tenant(as_admin(pb::GetTenantRequest {
                id: small.id.clone(),
            }))
            .await,
        Code::Unavailable,
    );
    assert!(status.message().contains("3 calls"), "{status:?}");
    drop((second, third));

    // The stalled export ends, and its snapshot goes with it.
    ended(
        &server,
        "ExportTenant",
        &format!("tenants/{}", big.id),
        "UNAVAILABLE",
    )
    .await;
    assert!(
        files_under(&staging).is_empty(),
        "{:?}",
        files_under(&staging)
    );
    let answers: Vec<_> = stalled.collect().await;
    let last = answers.last().unwrap().as_ref().unwrap_err();
    assert_eq!(last.code(), Code::Unavailable, "{last:?}");
    // And there is room again, for snapshots and calls.
    let mut again = loop {
        match admin.export_tenant(export(&big)).await {
            Err(status) if status.code() == Code::Unavailable => tokio::task::yield_now().await,
            answer => {
                break answer
                    .expect("an export once the stalled one is gone")
                    .into_inner();
            }
        }
    };
    let mut bytes = 0;
    while let Some(message) = again.next().await {
        bytes += message.unwrap().chunk.len();
    }
    assert!(bytes > 256 * 1024, "{bytes}");
}

#[tokio::test]
async fn a_migration_whose_client_stops_reading_holds_up_no_delete_and_ends() {
    let server = crate::common::spawn().await;
    let mut tenants = Vec::new();
    for n in 0..120 {
        tenants.push(server.tenant(&format!("old-{n:03}")).await);
    }
    let dir = server.stop().await;
    for tenant in &tenants {
        crate::migrations::write_v1_tenant(
            &dir.path().join(format!("data/tenants/{}.db", tenant.id)),
            &["from version 1"],
        );
    }
    let all: Vec<&TestTenant> = tenants.iter().collect();
    crate::migrations::record_version(&dir, &all, 1);
    let server = crate::common::spawn_in(dir, |config| config.stream_stall_ms = 1500).await;

    let mut reader = slow_reader(&server).await;
    let stalled = reader
        .migrate_tenants(as_admin(pb::MigrateTenantsRequest {}))
        .await
        .unwrap()
        .into_inner();
    // Every tenant can be deleted while nobody reads the migration: none is
    // held by a migration waiting to report.
    let mut admin = server.admin().await;
    for tenant in &tenants {
        let mut delete = as_admin(pb::DeleteTenantRequest {
            id: tenant.id.clone(),
            ..Default::default()
        });
        delete.set_timeout(Duration::from_secs(2));
        admin
            .delete_tenant(delete)
            .await
            .expect("a tenant is deleted while a migration stalls");
    }
    let started = Instant::now();
    loop {
        let events = admin
            .list_audit_events(as_admin(pb::ListAuditEventsRequest {
                page_size: 1000,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .events;
        if let Some(event) = events.iter().find(|e| e.action == "MigrateTenants") {
            assert!(event.outcome.starts_with("UNAVAILABLE"), "{event:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the migration never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answers: Vec<_> = stalled.collect().await;
    let last = answers.last().unwrap().as_ref().unwrap_err();
    assert_eq!(last.code(), Code::Unavailable, "{last:?}");
}

#[tokio::test]
async fn a_search_whose_client_went_away_stops_though_it_found_nothing_to_send() {
    let server = spawn_with(|_| {}).await;
    let tenants = [
        filled(&server, "first", 2).await,
        filled(&server, "second", 2).await,
    ];
    // Every tenant is busy: the search waits for each in turn.
    let mut held = Vec::new();
    for tenant in &tenants {
        let id = tenantry::ids::TenantId::parse("id", &tenant.id).unwrap();
        held.push(server.registry.exclusive(id).await);
    }
    let mut admin = server.admin().await;
    let search = admin
        .search_items(as_admin(pb::SearchItemsRequest {
            title_contains: "matches nothing".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    drop(search);
    // The search ends as its client left, not when it has read every tenant.
    ended(&server, "SearchItems", "tenants", "CANCELLED").await;
    drop(held);
}
