//! SearchItems: the administrator reading items across tenants, tenant by
//! tenant, without disturbing the tenants that are open, with per-tenant
//! errors, a deadline over the whole stream, prompt cancellation, and one
//! audit record per call naming the tenants read.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tenantry::ids::TenantId;
use tenantry::pb::{self, SearchItemsRequest, SearchItemsResponse};
use tonic::{Code, Streaming};

use crate::audit::trail;
use crate::common::{
    TestServer, as_admin, as_admin_for, expect_code, new_item, spawn, spawn_with, suspend,
};

fn tenant_id(text: &str) -> TenantId {
    TenantId::parse("id", text).unwrap()
}

/// A tenant made for a search, and the titles it should match.
struct Seeded {
    id: String,
    name: String,
    matching: BTreeSet<String>,
}

/// `count` tenants, created through the admin API; tenant `i` has `i % 3`
/// items whose title contains "Needle" and, for every fifth tenant, one
/// that does not match.
async fn seed(server: &TestServer, count: usize) -> Vec<Seeded> {
    let mut admin = server.admin().await;
    let mut items = server.items().await;
    let mut seeded = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("tenant-{i:04}");
        let tenant = admin
            .create_tenant(as_admin(pb::CreateTenantRequest {
                tenant: Some(pb::Tenant {
                    name: name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let mut matching = BTreeSet::new();
        for k in 0..i % 3 {
            let title = format!("a Needle of {name} #{k}");
            items
                .create_item(as_admin_for(&tenant.id, new_item(&title)))
                .await
                .unwrap();
            matching.insert(title);
        }
        if i % 5 == 0 {
            items
                .create_item(as_admin_for(&tenant.id, new_item("only hay")))
                .await
                .unwrap();
        }
        seeded.push(Seeded {
            id: tenant.id,
            name,
            matching,
        });
    }
    seeded
}

async fn search(
    server: &TestServer,
    request: SearchItemsRequest,
) -> Streaming<SearchItemsResponse> {
    server
        .admin()
        .await
        .search_items(as_admin(request))
        .await
        .expect("the search starts")
        .into_inner()
}

async fn collect(mut stream: Streaming<SearchItemsResponse>) -> Vec<SearchItemsResponse> {
    let mut all = Vec::new();
    while let Some(response) = stream.message().await.expect("the search goes on") {
        all.push(response);
    }
    all
}

fn titles_by_tenant(responses: &[SearchItemsResponse]) -> BTreeMap<String, BTreeSet<String>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for response in responses {
        assert!(response.error_code.is_empty(), "{response:?}");
        let item = response.item.as_ref().expect("an item");
        found
            .entry(response.tenant_id.clone())
            .or_default()
            .insert(item.title.clone());
    }
    found
}

/// The detail of the newest SearchItems record, once it is written.
async fn search_record(server: &TestServer) -> pb::AuditEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let newest = trail(server, "", 1000)
                .await
                .into_iter()
                .find(|e| e.action == "SearchItems");
            if let Some(event) = newest {
                return event;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the search is recorded")
}

/// "read N tenants" in a search record's detail.
fn tenants_read(event: &pb::AuditEvent) -> usize {
    let (_, rest) = event.detail.split_once("read ").expect("a count");
    rest.split(' ').next().unwrap().parse().expect("a number")
}

#[tokio::test]
async fn a_search_of_300_tenants_with_room_for_50_finds_exactly_their_matches_and_leaves_the_open_ones_open()
 {
    let server = spawn_with(|c| c.max_open_tenants = 50).await;
    let tenants = seed(&server, 300).await;

    // The hot tenants: 20 called again and again.
    let mut items = server.items().await;
    for _ in 0..3 {
        for tenant in &tenants[100..120] {
            items
                .list_items(as_admin_for(&tenant.id, pb::ListItemsRequest::default()))
                .await
                .unwrap();
        }
    }
    // The cache applies its bound in the background: settle it first.
    server.registry.open_count().await;
    let open_before: BTreeSet<&str> = tenants
        .iter()
        .filter(|t| server.registry.is_open(tenant_id(&t.id)))
        .map(|t| t.id.as_str())
        .collect();
    assert!(open_before.len() <= 50, "{}", open_before.len());
    assert!(!open_before.is_empty());
    let opens_before = server.registry.opens();
    let aside_before = server.registry.aside_reads();

    let responses = collect(
        search(
            &server,
            SearchItemsRequest {
                title_contains: "needle".into(),
                limit_per_tenant: 100,
                ..Default::default()
            },
        )
        .await,
    )
    .await;

    // Exactly each tenant's matches, tagged with its id and name, tenant by
    // tenant in name order.
    let found = titles_by_tenant(&responses);
    let expected: BTreeMap<String, BTreeSet<String>> = tenants
        .iter()
        .filter(|t| !t.matching.is_empty())
        .map(|t| (t.id.clone(), t.matching.clone()))
        .collect();
    assert_eq!(found, expected);
    let names: BTreeMap<&str, &str> = tenants
        .iter()
        .map(|t| (t.id.as_str(), t.name.as_str()))
        .collect();
    for response in &responses {
        assert_eq!(names[response.tenant_id.as_str()], response.tenant_name);
    }
    let order: Vec<&str> = responses.iter().map(|r| r.tenant_name.as_str()).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "tenant by tenant, in name order");

    // The open tenants are the same ones; nothing was opened in the cache,
    // and the closed tenants were read aside.
    server.registry.open_count().await;
    let open_after: BTreeSet<&str> = tenants
        .iter()
        .filter(|t| server.registry.is_open(tenant_id(&t.id)))
        .map(|t| t.id.as_str())
        .collect();
    assert_eq!(open_after, open_before);
    assert_eq!(server.registry.opens(), opens_before);
    assert_eq!(
        server.registry.aside_reads() - aside_before,
        (300 - open_before.len()) as u64
    );

    // One record, naming every tenant read.
    let record = search_record(&server).await;
    assert_eq!(record.outcome, "OK");
    assert_eq!(record.actor, "admin");
    assert_eq!(tenants_read(&record), 300);
    for tenant in &tenants {
        assert!(record.detail.contains(&tenant.id), "{}", tenant.name);
    }
    let searches = trail(&server, "", 1000)
        .await
        .into_iter()
        .filter(|e| e.action == "SearchItems")
        .count();
    assert_eq!(searches, 1);
}

#[tokio::test]
async fn a_search_matches_titles_filters_and_names_tenants_as_asked() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let globex = server.tenant("globex").await;
    let initech = server.tenant("initech").await;
    let mut items = server.items().await;
    for (tenant, title, completed) in [
        (&acme, "Invoice 100% paid", true),
        (&acme, "invoice_draft", false),
        (&acme, "INVOICE overdue", false),
        (&globex, "invoice for globex", false),
        (&initech, "no match here", false),
    ] {
        let mut request = new_item(title);
        request.item.as_mut().unwrap().completed = completed;
        items.create_item(tenant.call(request)).await.unwrap();
    }
    let all = |title_contains: &str| SearchItemsRequest {
        title_contains: title_contains.into(),
        ..Default::default()
    };

    // Case-insensitive for ASCII; `%` and `_` are plain characters.
    let found = titles_by_tenant(&collect(search(&server, all("invoice")).await).await);
    assert_eq!(found.len(), 2);
    assert_eq!(found[&acme.id].len(), 3);
    assert_eq!(
        found[&globex.id],
        BTreeSet::from(["invoice for globex".to_owned()])
    );
    let found = titles_by_tenant(&collect(search(&server, all("100%")).await).await);
    assert_eq!(
        found,
        BTreeMap::from([(
            acme.id.clone(),
            BTreeSet::from(["Invoice 100% paid".to_owned()])
        )])
    );
    let found = titles_by_tenant(&collect(search(&server, all("invoic_")).await).await);
    assert!(found.is_empty(), "`_` is not a wildcard: {found:?}");
    // The completed filter, and the limit per tenant (newest first).
    let completed = SearchItemsRequest {
        completed: Some(false),
        limit_per_tenant: 1,
        ..all("invoice")
    };
    let responses = collect(search(&server, completed).await).await;
    let titles: Vec<_> = responses
        .iter()
        .map(|r| r.item.as_ref().unwrap().title.as_str())
        .collect();
    assert_eq!(titles, ["INVOICE overdue", "invoice for globex"]);

    // Named tenants, in the order named; an unknown one is an error entry
    // and the others go on; a suspended one can be searched by name but is
    // left out of "every active tenant".
    suspend(&server, &globex.id).await;
    let nobody = uuid::Uuid::new_v4().to_string();
    let named = SearchItemsRequest {
        tenant_ids: vec![globex.id.clone(), nobody.clone(), acme.id.clone()],
        limit_per_tenant: 1,
        ..all("invoice")
    };
    let responses = collect(search(&server, named).await).await;
    let summary: Vec<_> = responses
        .iter()
        .map(|r| (r.tenant_id.as_str(), r.error_code.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (globex.id.as_str(), ""),
            (nobody.as_str(), "NOT_FOUND"),
            (acme.id.as_str(), "")
        ]
    );
    assert!(responses[1].error_message.contains(&nobody));
    let found = titles_by_tenant(&collect(search(&server, all("invoice")).await).await);
    assert_eq!(found.keys().collect::<Vec<_>>(), [&acme.id]);
}

#[tokio::test]
async fn a_bad_search_is_refused_and_a_tenant_key_cannot_search() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let mut admin = server.admin().await;
    for (request, field) in [
        (
            SearchItemsRequest {
                limit_per_tenant: -1,
                ..Default::default()
            },
            "limit_per_tenant",
        ),
        (
            SearchItemsRequest {
                tenant_ids: vec![acme.id.to_uppercase()],
                ..Default::default()
            },
            "tenant_ids",
        ),
        (
            SearchItemsRequest {
                title_contains: "x".repeat(201),
                ..Default::default()
            },
            "title_contains",
        ),
        (
            SearchItemsRequest {
                tenant_ids: vec![acme.id.clone(); 1001],
                ..Default::default()
            },
            "tenant_ids",
        ),
    ] {
        let status = expect_code(
            admin.search_items(as_admin(request)).await,
            Code::InvalidArgument,
        );
        assert!(status.message().contains(field), "{status:?}");
    }
    expect_code(
        admin
            .search_items(acme.call(SearchItemsRequest::default()))
            .await,
        Code::PermissionDenied,
    );
    let refused: Vec<_> = trail(&server, "", 100)
        .await
        .into_iter()
        .filter(|e| e.action == "SearchItems")
        .map(|e| e.outcome)
        .collect();
    assert_eq!(refused, ["INVALID_ARGUMENT"; 4]);
}

#[tokio::test]
async fn a_damaged_tenant_is_one_error_entry_while_the_others_stream() {
    let server = spawn().await;
    let mut items = server.items().await;
    let mut ids = Vec::new();
    for name in ["alpha", "bravo", "charlie", "delta"] {
        let tenant = server.tenant(name).await;
        items
            .create_item(tenant.call(new_item(&format!("needle in {name}"))))
            .await
            .unwrap();
        ids.push(tenant.id);
    }
    // Bravo's file is overwritten while it is closed.
    server.registry.close_all().await;
    std::fs::write(
        server.tenant_file(&ids[1]),
        b"this is not a database ".repeat(500),
    )
    .unwrap();

    let responses = collect(
        search(
            &server,
            SearchItemsRequest {
                title_contains: "needle".into(),
                ..Default::default()
            },
        )
        .await,
    )
    .await;
    let summary: Vec<_> = responses
        .iter()
        .map(|r| {
            let title = r.item.as_ref().map(|i| i.title.as_str()).unwrap_or("");
            (r.tenant_name.as_str(), title, r.error_code.as_str())
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("alpha", "needle in alpha", ""),
            ("bravo", "", "DATA_LOSS"),
            ("charlie", "needle in charlie", ""),
            ("delta", "needle in delta", ""),
        ]
    );
    assert!(
        responses[1].error_message.contains("damaged"),
        "{:?}",
        responses[1]
    );
    let record = search_record(&server).await;
    assert_eq!(record.outcome, "OK");
    assert!(record.detail.contains("(1 failed)"), "{}", record.detail);
    assert!(record.detail.contains(&format!("failed: {}", ids[1])));
    // The damaged file was left as it was.
    let garbage = std::fs::read(server.tenant_file(&ids[1])).unwrap();
    assert!(garbage.starts_with(b"this is not a database"));
}

#[tokio::test]
async fn a_cancelled_search_stops_reading_tenants_and_a_deadline_covers_the_stream() {
    let server = spawn_with(|c| c.search_parallelism = 1).await;
    seed(&server, 300).await;
    server.registry.close_all().await;

    // Cancelled after the first match: the search stops well before the
    // 300th tenant, and says so in the trail.
    let mut stream = search(
        &server,
        SearchItemsRequest {
            title_contains: "needle".into(),
            ..Default::default()
        },
    )
    .await;
    let first = stream.message().await.unwrap().expect("a first match");
    assert!(first.error_code.is_empty());
    drop(stream);
    let record = search_record(&server).await;
    assert_eq!(record.outcome, "CANCELLED");
    let read = tenants_read(&record);
    assert!(read < 300, "read {read} tenants after the client went away");
    let aside = server.registry.aside_reads();
    assert!(aside < 300, "opened {aside} files");

    // A deadline far shorter than reading 300 files one at a time: the
    // stream ends with DEADLINE_EXCEEDED, and so does the record.
    let mut request = as_admin(SearchItemsRequest::default());
    request.set_timeout(Duration::from_millis(20));
    let answer = server.admin().await.search_items(request).await;
    let status = match answer {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("the search finished within 20 ms"),
                    Err(status) => break status,
                }
            }
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let outcomes: Vec<_> = trail(&server, "", 1000)
        .await
        .into_iter()
        .filter(|e| e.action == "SearchItems")
        .map(|e| (e.outcome, tenants_read_of(&e.detail)))
        .collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert_eq!(outcomes[0].0, "DEADLINE_EXCEEDED");
    assert!(outcomes[0].1 < 300, "{outcomes:?}");
}

fn tenants_read_of(detail: &str) -> usize {
    tenants_read(&pb::AuditEvent {
        detail: detail.into(),
        ..Default::default()
    })
}
