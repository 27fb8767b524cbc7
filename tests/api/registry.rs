//! The registry of open tenants: single flight, and its bound.

use tenantry::pb::ListItemsRequest;

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
