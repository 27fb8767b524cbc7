//! Item CRUD, validation, optimistic concurrency and pagination.

use std::collections::HashSet;

use prost_types::FieldMask;
use tenantry::pb::{self, DeleteItemRequest, GetItemRequest, ListItemsRequest, UpdateItemRequest};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{expect_code, new_item, spawn};

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

#[tokio::test]
async fn an_item_can_be_created_read_updated_and_deleted() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut items = server.items().await;

    let created = items
        .create_item(acme.call(pb::CreateItemRequest {
            item: Some(pb::Item {
                title: "Buy milk".into(),
                description: "two litres".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    let id = uuid::Uuid::parse_str(&created.id).unwrap();
    assert_eq!(id.get_version_num(), 7, "ids are UUIDv7");
    assert_eq!(
        (created.title.as_str(), created.description.as_str()),
        ("Buy milk", "two litres")
    );
    assert!(!created.completed);
    assert!(!created.etag.is_empty());
    assert_eq!(created.create_time, created.update_time);

    let read = items
        .get_item(acme.call(GetItemRequest {
            id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, created);

    let updated = items
        .update_item(acme.call(UpdateItemRequest {
            item: Some(pb::Item {
                id: created.id.clone(),
                completed: true,
                title: "ignored".into(),
                ..Default::default()
            }),
            update_mask: mask(&["completed"]),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(updated.completed);
    assert_eq!(
        updated.title, "Buy milk",
        "fields outside the mask are kept"
    );
    assert_ne!(updated.etag, created.etag);
    assert!(updated.update_time.unwrap().seconds >= created.update_time.unwrap().seconds);
    assert_eq!(updated.create_time, created.create_time);

    let read = items
        .get_item(acme.call(GetItemRequest {
            id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, updated);

    items
        .delete_item(acme.call(DeleteItemRequest {
            id: created.id.clone(),
        }))
        .await
        .unwrap();
    expect_code(
        items
            .get_item(acme.call(GetItemRequest {
                id: created.id.clone(),
            }))
            .await,
        Code::NotFound,
    );
    expect_code(
        items
            .delete_item(acme.call(DeleteItemRequest { id: created.id }))
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn an_update_without_a_mask_changes_the_fields_that_are_set() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut items = server.items().await;
    let created = items
        .create_item(acme.call(new_item("Draft")))
        .await
        .unwrap()
        .into_inner();

    let updated = items
        .update_item(acme.call(UpdateItemRequest {
            item: Some(pb::Item {
                id: created.id.clone(),
                description: "now with text".into(),
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.title.as_str(), updated.description.as_str()),
        ("Draft", "now with text")
    );
}

#[tokio::test]
async fn an_update_with_a_stale_etag_is_aborted_and_writes_nothing() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut items = server.items().await;
    let original = items
        .create_item(acme.call(new_item("Original")))
        .await
        .unwrap()
        .into_inner();

    let first = items
        .update_item(acme.call(UpdateItemRequest {
            item: Some(pb::Item {
                id: original.id.clone(),
                title: "First writer".into(),
                etag: original.etag.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["title"]),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.title, "First writer");

    let stale = items
        .update_item(acme.call(UpdateItemRequest {
            item: Some(pb::Item {
                id: original.id.clone(),
                title: "Second writer".into(),
                etag: original.etag.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["title"]),
        }))
        .await;
    expect_code(stale, Code::Aborted);
    let read = items
        .get_item(acme.call(GetItemRequest { id: original.id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, first);
}

#[tokio::test]
async fn invalid_items_are_refused_with_the_field_that_is_wrong() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut items = server.items().await;

    let cases: Vec<(pb::CreateItemRequest, &str)> = vec![
        (new_item(""), "item.title"),
        (new_item("   "), "item.title"),
        (new_item(&"x".repeat(201)), "item.title"),
        (new_item("nul\0byte"), "item.title"),
        (
            pb::CreateItemRequest {
                item: Some(pb::Item {
                    title: "ok".into(),
                    description: "d".repeat(10_001),
                    ..Default::default()
                }),
            },
            "item.description",
        ),
        (pb::CreateItemRequest { item: None }, "item"),
    ];
    for (request, field) in cases {
        let status = expect_code(
            items.create_item(acme.call(request)).await,
            Code::InvalidArgument,
        );
        let violations = status
            .get_details_bad_request()
            .expect("carries a BadRequest")
            .field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, field, "{status:?}");
    }
    // The longest allowed values are accepted, counted in characters.
    items
        .create_item(acme.call(pb::CreateItemRequest {
            item: Some(pb::Item {
                title: "é".repeat(200),
                description: "ü".repeat(10_000),
                ..Default::default()
            }),
        }))
        .await
        .expect("200 and 10,000 characters are allowed");

    for id in ["", "not-a-uuid", "../catalog"] {
        expect_code(
            items
                .get_item(acme.call(GetItemRequest { id: id.into() }))
                .await,
            Code::InvalidArgument,
        );
    }
    let existing = items
        .create_item(acme.call(new_item("Kept")))
        .await
        .unwrap()
        .into_inner();
    for paths in [&["colour"][..], &["id"], &["create_time"]] {
        let update = UpdateItemRequest {
            item: Some(pb::Item {
                id: existing.id.clone(),
                title: "x".into(),
                ..Default::default()
            }),
            update_mask: mask(paths),
        };
        expect_code(
            items.update_item(acme.call(update)).await,
            Code::InvalidArgument,
        );
    }
    let read = items
        .get_item(acme.call(GetItemRequest {
            id: existing.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, existing, "refused updates changed nothing");
}

#[tokio::test]
async fn pages_cover_every_item_once_newest_first() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut items = server.items().await;
    let mut created = Vec::new();
    for n in 0..23 {
        created.push(
            items
                .create_item(acme.call(new_item(&format!("item {n}"))))
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = items
            .list_items(acme.call(ListItemsRequest {
                page_size: 5,
                page_token: token.clone(),
                completed: None,
            }))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.items.len() <= 5);
        seen.extend(page.items.into_iter().map(|item| item.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 5);
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first, "every item once, newest first");

    let default_page = items
        .list_items(acme.call(ListItemsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default_page.items.len(), 23);
    assert!(default_page.next_page_token.is_empty());
}

#[tokio::test]
async fn the_completed_filter_selects_items_and_binds_its_page_tokens() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut items = server.items().await;
    let mut done = HashSet::new();
    for n in 0..10 {
        let item = items
            .create_item(acme.call(new_item(&format!("task {n}"))))
            .await
            .unwrap()
            .into_inner();
        if n % 3 == 0 {
            items
                .update_item(acme.call(UpdateItemRequest {
                    item: Some(pb::Item {
                        id: item.id.clone(),
                        completed: true,
                        ..Default::default()
                    }),
                    update_mask: mask(&["completed"]),
                }))
                .await
                .unwrap();
            done.insert(item.id);
        }
    }

    let list = |completed| ListItemsRequest {
        page_size: 0,
        page_token: String::new(),
        completed,
    };
    let completed = items
        .list_items(acme.call(list(Some(true))))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        completed
            .iter()
            .map(|i| i.id.clone())
            .collect::<HashSet<_>>(),
        done
    );
    assert!(completed.iter().all(|i| i.completed));
    let open = items
        .list_items(acme.call(list(Some(false))))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(open.len(), 6);
    assert!(open.iter().all(|i| !i.completed));

    let first = items
        .list_items(acme.call(ListItemsRequest {
            page_size: 2,
            page_token: String::new(),
            completed: Some(true),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let reused = ListItemsRequest {
        page_size: 2,
        page_token: first.next_page_token.clone(),
        completed: Some(false),
    };
    expect_code(
        items.list_items(acme.call(reused)).await,
        Code::InvalidArgument,
    );
    let reused = ListItemsRequest {
        page_size: 2,
        page_token: first.next_page_token,
        completed: None,
    };
    expect_code(
        items.list_items(acme.call(reused)).await,
        Code::InvalidArgument,
    );

    let negative = ListItemsRequest {
        page_size: -1,
        ..Default::default()
    };
    expect_code(
        items.list_items(acme.call(negative)).await,
        Code::InvalidArgument,
    );
    let garbage = ListItemsRequest {
        page_token: "not a token".into(),
        ..Default::default()
    };
    expect_code(
        items.list_items(acme.call(garbage)).await,
        Code::InvalidArgument,
    );
}
