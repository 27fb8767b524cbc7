//! The administrator acting for one tenant: the admin token may call the
//! item API for any tenant named in `x-tenant-id`, and every such call is
//! recorded in the audit trail as an admin call on that tenant. A tenant's
//! API key still acts for its own tenant only.

use tenantry::pb::{
    self, AuditSource, DeleteItemRequest, GetItemRequest, ListItemsRequest, UpdateItemRequest,
};
use tonic::Code;

use crate::audit::trail;
use crate::common::{as_admin, as_admin_for, expect_code, new_item, spawn, suspend};

#[tokio::test]
async fn the_admin_acts_for_a_tenant_and_every_call_is_an_admin_event_on_it() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let globex = server.tenant("globex").await;
    let mut items = server.items().await;
    let own = items
        .create_item(acme.call(new_item("acme's own")))
        .await
        .unwrap()
        .into_inner();
    items
        .create_item(globex.call(new_item("globex's own")))
        .await
        .unwrap();

    // The admin sees exactly the tenant it names.
    let listed = items
        .list_items(as_admin_for(&acme.id, ListItemsRequest::default()))
        .await
        .expect("the admin lists acme's items")
        .into_inner()
        .items;
    let titles: Vec<_> = listed.iter().map(|i| i.title.as_str()).collect();
    assert_eq!(titles, ["acme's own"]);

    // And can change it, for support.
    let fixed = items
        .create_item(as_admin_for(&acme.id, new_item("added by support")))
        .await
        .unwrap()
        .into_inner();
    items
        .update_item(as_admin_for(
            &acme.id,
            UpdateItemRequest {
                item: Some(pb::Item {
                    id: fixed.id.clone(),
                    completed: true,
                    ..Default::default()
                }),
                update_mask: None,
            },
        ))
        .await
        .unwrap();
    items
        .get_item(as_admin_for(
            &acme.id,
            GetItemRequest { id: own.id.clone() },
        ))
        .await
        .unwrap();
    items
        .delete_item(as_admin_for(
            &acme.id,
            DeleteItemRequest {
                id: fixed.id.clone(),
            },
        ))
        .await
        .unwrap();
    // A failed call is recorded with its status: globex's items are not
    // acme's.
    let missing = uuid::Uuid::new_v4().to_string();
    expect_code(
        items
            .get_item(as_admin_for(
                &acme.id,
                GetItemRequest {
                    id: missing.clone(),
                },
            ))
            .await,
        Code::NotFound,
    );

    let events = trail(&server, &acme.id, 100).await;
    let admin_item_calls: Vec<_> = events
        .iter()
        .filter(|e| e.source == AuditSource::Admin as i32 && e.target.contains("/items"))
        .map(|e| {
            assert_eq!(e.actor, "admin");
            assert_eq!(e.tenant_id, acme.id);
            (e.action.as_str(), e.target.as_str(), e.outcome.as_str())
        })
        .collect();
    let items_of = |id: &str| format!("tenants/{}/items/{id}", acme.id);
    let all_items = format!("tenants/{}/items", acme.id);
    assert_eq!(
        admin_item_calls,
        [
            ("GetItem", items_of(&missing).as_str(), "NOT_FOUND"),
            ("DeleteItem", items_of(&fixed.id).as_str(), "OK"),
            ("GetItem", items_of(&own.id).as_str(), "OK"),
            ("UpdateItem", items_of(&fixed.id).as_str(), "OK"),
            ("CreateItem", items_of(&fixed.id).as_str(), "OK"),
            ("ListItems", all_items.as_str(), "OK"),
        ]
    );
    // The writes are in acme's own trail too, by the admin; acme's key wrote
    // the first item.
    let writes: Vec<_> = events
        .iter()
        .filter(|e| e.source == AuditSource::Tenant as i32)
        .map(|e| (e.action.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(writes.len(), 4, "{writes:?}");
    assert_eq!(
        &writes[..3],
        [
            ("DeleteItem", "admin"),
            ("UpdateItem", "admin"),
            ("CreateItem", "admin")
        ]
    );
    assert!(writes[3].1.starts_with("keys/"), "{writes:?}");

    // None of it touched globex or shows in its trail.
    let globex_trail = trail(&server, &globex.id, 100).await;
    assert!(
        globex_trail.iter().all(|e| !e.target.contains("/items")),
        "{globex_trail:?}"
    );
    let globex_items = items
        .list_items(globex.call(ListItemsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(globex_items.len(), 1);
    // The tenant's own key calls are not admin events.
    assert!(
        events
            .iter()
            .filter(|e| e.source == AuditSource::Admin as i32)
            .all(|e| e.actor == "admin")
    );
}

#[tokio::test]
async fn the_admin_is_refused_for_a_tenant_that_cannot_be_served_and_the_refusal_is_audited() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut items = server.items().await;

    // No tenant named: the admin token alone selects nothing.
    expect_code(
        items
            .list_items(as_admin(ListItemsRequest::default()))
            .await,
        Code::InvalidArgument,
    );
    // A tenant that does not exist.
    let nobody = uuid::Uuid::new_v4().to_string();
    let status = expect_code(
        items
            .list_items(as_admin_for(&nobody, ListItemsRequest::default()))
            .await,
        Code::NotFound,
    );
    assert!(status.message().contains(&nobody), "{status:?}");
    // A suspended tenant: like its own keys, the admin must resume it first.
    suspend(&server, &acme.id).await;
    expect_code(
        items
            .create_item(as_admin_for(&acme.id, new_item("while suspended")))
            .await,
        Code::FailedPrecondition,
    );

    let refused: Vec<_> = trail(&server, "", 100)
        .await
        .into_iter()
        .filter(|e| e.target.ends_with("/items") || e.action == "ListItems")
        .map(|e| (e.action, e.target, e.outcome))
        .collect();
    assert_eq!(
        refused,
        [
            (
                "CreateItem".to_owned(),
                format!("tenants/{}/items", acme.id),
                "FAILED_PRECONDITION".to_owned()
            ),
            (
                "ListItems".to_owned(),
                format!("tenants/{nobody}/items"),
                "NOT_FOUND".to_owned()
            ),
            (
                "ListItems".to_owned(),
                "tenants".to_owned(),
                "INVALID_ARGUMENT".to_owned()
            ),
        ]
    );
    // Nothing was written while suspended.
    let acme_writes = trail(&server, &acme.id, 100)
        .await
        .into_iter()
        .filter(|e| e.source == AuditSource::Tenant as i32)
        .count();
    assert_eq!(acme_writes, 0);
}

#[tokio::test]
async fn a_tenant_key_still_cannot_act_for_another_tenant() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let globex = server.tenant("globex").await;
    let mut items = server.items().await;
    items
        .create_item(globex.call(new_item("globex's secret")))
        .await
        .unwrap();

    for answer in [
        items
            .list_items(acme.call_for(&globex.id, ListItemsRequest::default()))
            .await
            .map(|_| ()),
        items
            .create_item(acme.call_for(&globex.id, new_item("planted")))
            .await
            .map(|_| ()),
    ] {
        let status = answer.expect_err("acme's key must not act for globex");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let globex_items = items
        .list_items(globex.call(ListItemsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .items;
    let titles: Vec<_> = globex_items.iter().map(|i| i.title.as_str()).collect();
    assert_eq!(titles, ["globex's secret"]);
    // A key's calls are not admin calls: no item call is in the admin trail.
    let admin_item_calls = trail(&server, "", 100)
        .await
        .into_iter()
        .filter(|e| e.target.contains("/items"))
        .count();
    assert_eq!(admin_item_calls, 0);
}
