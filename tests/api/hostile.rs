//! Hostile input: what an attacker or a broken client can send, and that
//! none of it reaches another tenant's data or changes stored data.
//!
//! - A property test runs random sequences of item operations across three
//!   tenants, some aimed at another tenant's ids, page tokens or
//!   `x-tenant-id`, against a model: every answer must match the model, and
//!   no answer may ever contain another tenant's item.
//! - Tables of malformed metadata, tampered page tokens and malformed fields,
//!   each with the status it must get; afterwards every tenant's data is
//!   exactly as before.
//!
//! Each test prints how many hostile cases it ran.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use tenantry::pb::item_service_client::ItemServiceClient;
use tenantry::pb::{self, Item};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::common::{
    ADMIN_TOKEN, TestServer, TestTenant, all_titles, as_admin, expect_code, new_item, spawn,
    with_metadata,
};

// ---------------------------------------------------------------- model ---

/// Titles that look like attacks on the storage: stored and read back as is.
const TITLES: &[&str] = &[
    "plain",
    "'); DROP TABLE items;--",
    "\" OR 1=1 --",
    "Robert'); DELETE FROM items WHERE ('1'='1",
    "%",
    "_",
    "100% _done_",
    "tëst 🚀 ünïcödé",
    "x'; ATTACH DATABASE '/tmp/evil.db' AS evil;--",
    "../../catalog.db",
];

fn title_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(TITLES).prop_map(str::to_owned),
        "[a-zA-Z0-9 '%_;-]{1,40}".prop_filter("not blank", |t| !t.trim().is_empty()),
        Just("w".repeat(200)),
    ]
}

/// Which item an operation aims at.
#[derive(Clone, Debug)]
enum Aim {
    /// One of the caller's own items (by index), if it has any.
    Own(usize),
    /// One of another tenant's items: must be NOT_FOUND.
    Foreign(usize, usize),
    /// An id nobody has.
    Nobody,
}

#[derive(Clone, Debug)]
enum Op {
    Create(usize, String),
    Get(usize, Aim),
    Update(usize, Aim, bool),
    Delete(usize, Aim),
    /// Lists every page of `page_size`, optionally filtered.
    List(usize, i32, Option<bool>),
    /// The caller's key, naming another tenant in `x-tenant-id`.
    ForeignHeader(usize, usize),
    /// A page token of one tenant's list, used by another tenant.
    ForeignToken(usize, usize),
}

const TENANTS: usize = 3;

fn aim() -> impl Strategy<Value = Aim> {
    prop_oneof![
        4 => any::<usize>().prop_map(Aim::Own),
        2 => (0..TENANTS, any::<usize>()).prop_map(|(t, i)| Aim::Foreign(t, i)),
        1 => Just(Aim::Nobody),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let tenant = 0..TENANTS;
    prop_oneof![
        4 => (tenant.clone(), title_strategy()).prop_map(|(t, title)| Op::Create(t, title)),
        2 => (tenant.clone(), aim()).prop_map(|(t, a)| Op::Get(t, a)),
        2 => (tenant.clone(), aim(), any::<bool>()).prop_map(|(t, a, c)| Op::Update(t, a, c)),
        1 => (tenant.clone(), aim()).prop_map(|(t, a)| Op::Delete(t, a)),
        2 => (tenant.clone(), 1..4i32, proptest::option::of(any::<bool>()))
            .prop_map(|(t, size, filter)| Op::List(t, size, filter)),
        1 => (tenant.clone(), tenant.clone()).prop_map(|(t, o)| Op::ForeignHeader(t, o)),
        1 => (tenant.clone(), tenant).prop_map(|(t, o)| Op::ForeignToken(t, o)),
    ]
}

/// What each tenant holds: item id → (title, completed), in creation order.
#[derive(Default)]
struct Model {
    tenants: Vec<BTreeMap<String, (String, bool)>>,
    /// Item ids in creation order, per tenant (deleted ones removed).
    order: Vec<Vec<String>>,
}

impl Model {
    fn new() -> Self {
        Model {
            tenants: vec![BTreeMap::new(); TENANTS],
            order: vec![Vec::new(); TENANTS],
        }
    }

    fn owner_of(&self, id: &str) -> Option<usize> {
        self.tenants.iter().position(|items| items.contains_key(id))
    }

    /// The id an aim resolves to for `tenant`, and whether it is the
    /// caller's own item.
    fn resolve(&self, tenant: usize, aim: &Aim) -> (String, bool) {
        let pick = |t: usize, i: usize| {
            let ids = &self.order[t];
            (!ids.is_empty()).then(|| ids[i % ids.len()].clone())
        };
        match aim {
            Aim::Own(i) => match pick(tenant, *i) {
                Some(id) => (id, true),
                None => (uuid::Uuid::now_v7().to_string(), false),
            },
            Aim::Foreign(t, i) if *t != tenant => match pick(*t, *i) {
                Some(id) => (id, false),
                None => (uuid::Uuid::now_v7().to_string(), false),
            },
            _ => (uuid::Uuid::now_v7().to_string(), false),
        }
    }
}

/// Checks that an item answered to `tenant` is one of its own, as modelled.
fn check_own(model: &Model, tenant: usize, item: &Item) {
    let owner = model.owner_of(&item.id);
    assert_eq!(
        owner,
        Some(tenant),
        "tenant {tenant} was answered item {item:?}, which belongs to {owner:?}"
    );
    let (title, completed) = &model.tenants[tenant][&item.id];
    assert_eq!((&item.title, &item.completed), (title, completed));
}

struct World {
    server: TestServer,
    items: ItemServiceClient<Channel>,
    cases: AtomicUsize,
    ops: AtomicUsize,
}

async fn fresh_tenants(world: &World) -> Vec<TestTenant> {
    let case = world.cases.fetch_add(1, Ordering::Relaxed);
    let mut tenants = Vec::new();
    for n in 0..TENANTS {
        tenants.push(world.server.tenant(&format!("case-{case}-t{n}")).await);
    }
    tenants
}

async fn list_all(
    items: &mut ItemServiceClient<Channel>,
    tenant: &TestTenant,
    page_size: i32,
    completed: Option<bool>,
) -> Vec<Item> {
    let (mut all, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = items
            .list_items(tenant.call(pb::ListItemsRequest {
                page_size,
                page_token,
                completed,
            }))
            .await
            .expect("lists its own items")
            .into_inner();
        assert!(page.items.len() <= page_size as usize);
        all.extend(page.items);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

async fn run(world: &World, ops: Vec<Op>) {
    let tenants = fresh_tenants(world).await;
    let mut items = world.items.clone();
    let mut model = Model::new();
    for op in ops {
        world.ops.fetch_add(1, Ordering::Relaxed);
        match op {
            Op::Create(t, title) => {
                let item = items
                    .create_item(tenants[t].call(new_item(&title)))
                    .await
                    .expect("creates an item")
                    .into_inner();
                assert_eq!(item.title, title, "stored verbatim");
                model.tenants[t].insert(item.id.clone(), (title, false));
                model.order[t].push(item.id);
            }
            Op::Get(t, aim) => {
                let (id, own) = model.resolve(t, &aim);
                let answer = items
                    .get_item(tenants[t].call(pb::GetItemRequest { id }))
                    .await;
                if own {
                    check_own(&model, t, &answer.expect("gets its own item").into_inner());
                } else {
                    expect_code(answer, Code::NotFound);
                }
            }
            Op::Update(t, aim, completed) => {
                let (id, own) = model.resolve(t, &aim);
                let answer = items
                    .update_item(tenants[t].call(pb::UpdateItemRequest {
                        item: Some(Item {
                            id: id.clone(),
                            completed,
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["completed".into()],
                        }),
                    }))
                    .await;
                if own {
                    model.tenants[t].get_mut(&id).unwrap().1 = completed;
                    check_own(
                        &model,
                        t,
                        &answer.expect("updates its own item").into_inner(),
                    );
                } else {
                    expect_code(answer, Code::NotFound);
                }
            }
            Op::Delete(t, aim) => {
                let (id, own) = model.resolve(t, &aim);
                let answer = items
                    .delete_item(tenants[t].call(pb::DeleteItemRequest { id: id.clone() }))
                    .await;
                if own {
                    answer.expect("deletes its own item");
                    model.tenants[t].remove(&id);
                    model.order[t].retain(|other| *other != id);
                } else {
                    expect_code(answer, Code::NotFound);
                }
            }
            Op::List(t, page_size, completed) => {
                let listed = list_all(&mut items, &tenants[t], page_size, completed).await;
                for item in &listed {
                    check_own(&model, t, item);
                }
                let mut expected: Vec<_> = model.tenants[t]
                    .iter()
                    .filter(|(_, (_, done))| completed.is_none_or(|c| c == *done))
                    .map(|(id, _)| id.clone())
                    .collect();
                expected.sort();
                let mut got: Vec<_> = listed.into_iter().map(|i| i.id).collect();
                got.sort();
                assert_eq!(got, expected, "tenant {t} lists exactly its own items");
            }
            Op::ForeignHeader(t, other) => {
                let answer = items
                    .list_items(
                        tenants[t].call_for(&tenants[other].id, pb::ListItemsRequest::default()),
                    )
                    .await;
                if t == other {
                    for item in &answer.expect("its own id is fine").into_inner().items {
                        check_own(&model, t, item);
                    }
                } else {
                    expect_code(answer, Code::PermissionDenied);
                }
            }
            Op::ForeignToken(t, other) => {
                let page = items
                    .list_items(tenants[other].call(pb::ListItemsRequest {
                        page_size: 1,
                        ..Default::default()
                    }))
                    .await
                    .unwrap()
                    .into_inner();
                if page.next_page_token.is_empty() || t == other {
                    continue;
                }
                expect_code(
                    items
                        .list_items(tenants[t].call(pb::ListItemsRequest {
                            page_size: 1,
                            page_token: page.next_page_token,
                            completed: None,
                        }))
                        .await,
                    Code::InvalidArgument,
                );
            }
        }
    }
}

#[test]
fn random_operations_across_tenants_never_see_another_tenants_data() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let world = runtime.block_on(async {
        let server = spawn().await;
        let items = server.items().await;
        Arc::new(World {
            server,
            items,
            cases: AtomicUsize::new(0),
            ops: AtomicUsize::new(0),
        })
    });
    let config = ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(32),
        // A failing case is shrunk against the same server; keep it short.
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    };
    let shared = world.clone();
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..40))| {
        runtime.block_on(run(&shared, ops));
    });
    eprintln!(
        "hostile sequences: {} cases, {} operations across {} tenants each",
        world.cases.load(Ordering::Relaxed),
        world.ops.load(Ordering::Relaxed),
        TENANTS
    );
    assert!(world.ops.load(Ordering::Relaxed) > 0);
}

// --------------------------------------------------------------- tables ---

/// A request with raw metadata values (which may be non-ASCII bytes).
fn with_raw<T>(message: T, entries: &[(&'static str, &[u8])]) -> Request<T> {
    let mut request = Request::new(message);
    for (key, value) in entries {
        let value = MetadataValue::try_from(*value).expect("a valid header value");
        request.metadata_mut().append(*key, value);
    }
    request
}

/// Both tenants' titles, to compare before and after a table.
async fn snapshot(server: &TestServer, tenants: &[&TestTenant]) -> Vec<Vec<String>> {
    let mut titles = Vec::new();
    for tenant in tenants {
        titles.push(all_titles(server, tenant).await);
    }
    titles
}

#[tokio::test]
async fn malformed_metadata_gets_its_status_and_changes_nothing() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let globex = server.tenant("globex").await;
    let mut items = server.items().await;
    for (tenant, title) in [(&acme, "acme's"), (&globex, "globex's")] {
        items
            .create_item(tenant.call(new_item(title)))
            .await
            .unwrap();
    }
    let before = snapshot(&server, &[&acme, &globex]).await;

    let bearer = |key: &str| format!("Bearer {key}");
    let own = bearer(&acme.key);
    let (id, other) = (acme.id.as_str(), globex.id.as_str());
    let upper = id.to_uppercase();
    let other_upper = other.to_uppercase();
    let braced = format!("{{{id}}}");
    let urn = format!("urn:uuid:{id}");
    let simple = id.replace('-', "");
    let padded = format!(" {id}");
    let trailing = format!("{id}\t");
    let long = "a".repeat(10_000);
    let (prefix, secret) = acme.key.rsplit_once('_').unwrap();
    let forged = bearer(&format!("{prefix}_{}", "0".repeat(secret.len())));
    let admin = bearer(ADMIN_TOKEN);
    let lower_scheme = format!("bearer {}", acme.key);
    let nil = uuid::Uuid::nil().to_string();
    let globex_key = bearer(&globex.key);

    type Case<'a> = (&'a str, Vec<(&'static str, &'a [u8])>, Code);
    let auth = |value: &'static str| -> (&'static str, &'static [u8]) {
        ("authorization", value.as_bytes())
    };
    let cases: Vec<Case> = vec![
        (
            "no credential",
            vec![("x-tenant-id", id.as_bytes())],
            Code::Unauthenticated,
        ),
        (
            "empty bearer",
            vec![auth("Bearer "), ("x-tenant-id", id.as_bytes())],
            Code::Unauthenticated,
        ),
        (
            "basic scheme",
            vec![auth("Basic dXNlcjpwYXNz"), ("x-tenant-id", id.as_bytes())],
            Code::Unauthenticated,
        ),
        (
            "unknown token",
            vec![auth("Bearer not-a-key"), ("x-tenant-id", id.as_bytes())],
            Code::Unauthenticated,
        ),
        (
            "forged secret",
            vec![
                ("authorization", forged.as_bytes()),
                ("x-tenant-id", id.as_bytes()),
            ],
            Code::Unauthenticated,
        ),
        (
            "two authorizations",
            vec![
                ("authorization", own.as_bytes()),
                ("authorization", own.as_bytes()),
                ("x-tenant-id", id.as_bytes()),
            ],
            Code::Unauthenticated,
        ),
        (
            "missing x-tenant-id",
            vec![("authorization", own.as_bytes())],
            Code::InvalidArgument,
        ),
        (
            "empty x-tenant-id",
            vec![("authorization", own.as_bytes()), ("x-tenant-id", b"")],
            Code::InvalidArgument,
        ),
        (
            "x-tenant-id twice, same",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", id.as_bytes()),
                ("x-tenant-id", id.as_bytes()),
            ],
            Code::InvalidArgument,
        ),
        (
            "x-tenant-id twice, own then other",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", id.as_bytes()),
                ("x-tenant-id", other.as_bytes()),
            ],
            Code::InvalidArgument,
        ),
        (
            "x-tenant-id twice, other then own",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", other.as_bytes()),
                ("x-tenant-id", id.as_bytes()),
            ],
            Code::InvalidArgument,
        ),
        (
            "own id in upper case",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", upper.as_bytes()),
            ],
            Code::InvalidArgument,
        ),
        (
            "other id in upper case",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", other_upper.as_bytes()),
            ],
            Code::InvalidArgument,
        ),
        (
            "braced id",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", braced.as_bytes()),
            ],
            Code::InvalidArgument,
        ),
        (
            "urn id",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", urn.as_bytes()),
            ],
            Code::InvalidArgument,
        ),
        (
            "id without hyphens",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", simple.as_bytes()),
            ],
            Code::InvalidArgument,
        ),
        (
            "id with leading space",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", padded.as_bytes()),
            ],
            Code::InvalidArgument,
        ),
        (
            "id with trailing tab",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", trailing.as_bytes()),
            ],
            Code::InvalidArgument,
        ),
        (
            "non-ASCII id",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", "é".repeat(18).as_bytes().to_vec().leak()),
            ],
            Code::InvalidArgument,
        ),
        (
            "very long id",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", long.as_bytes()),
            ],
            Code::InvalidArgument,
        ),
        (
            "path-shaped id",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", b"../catalog"),
            ],
            Code::InvalidArgument,
        ),
        (
            "another tenant's id",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", other.as_bytes()),
            ],
            Code::PermissionDenied,
        ),
        (
            "the nil id",
            vec![
                ("authorization", own.as_bytes()),
                ("x-tenant-id", nil.as_bytes()),
            ],
            Code::PermissionDenied,
        ),
        (
            "another tenant's key for this id",
            vec![
                ("authorization", globex_key.as_bytes()),
                ("x-tenant-id", id.as_bytes()),
            ],
            Code::PermissionDenied,
        ),
        (
            "the admin token with no tenant id",
            vec![("authorization", admin.as_bytes())],
            Code::InvalidArgument,
        ),
        (
            "the admin token with an upper-case id",
            vec![
                ("authorization", admin.as_bytes()),
                ("x-tenant-id", upper.as_bytes()),
            ],
            Code::InvalidArgument,
        ),
        (
            "the admin token for a tenant that does not exist",
            vec![
                ("authorization", admin.as_bytes()),
                ("x-tenant-id", nil.as_bytes()),
            ],
            Code::NotFound,
        ),
    ];
    let mut ran = 0;
    for (name, entries, code) in &cases {
        for write in [false, true] {
            let answer = if write {
                items
                    .create_item(with_raw(new_item("intruder"), entries))
                    .await
                    .map(|r| r.map(|_| ()))
            } else {
                items
                    .list_items(with_raw(pb::ListItemsRequest::default(), entries))
                    .await
                    .map(|r| r.map(|_| ()))
            };
            match answer {
                Ok(_) => panic!("{name} (write: {write}) was accepted"),
                Err(status) => {
                    assert_eq!(status.code(), *code, "{name} (write: {write}): {status:?}")
                }
            }
            ran += 1;
        }
    }
    // The scheme is case-insensitive (RFC 9110): this one is fine.
    items
        .list_items(with_raw(
            pb::ListItemsRequest::default(),
            &[
                ("authorization", lower_scheme.as_bytes()),
                ("x-tenant-id", id.as_bytes()),
            ],
        ))
        .await
        .expect("a lower-case scheme is accepted");
    // A tenant key on the admin API.
    expect_code(
        server
            .admin()
            .await
            .list_tenants(with_metadata(
                pb::ListTenantsRequest::default(),
                &[("authorization", &own)],
            ))
            .await,
        Code::PermissionDenied,
    );
    ran += 2;
    assert_eq!(snapshot(&server, &[&acme, &globex]).await, before);
    eprintln!("hostile metadata: {ran} cases");
}

#[tokio::test]
async fn tampered_and_foreign_page_tokens_are_refused() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let globex = server.tenant("globex").await;
    let mut items = server.items().await;
    for n in 0..3 {
        for tenant in [&acme, &globex] {
            items
                .create_item(tenant.call(new_item(&format!("item {n}"))))
                .await
                .unwrap();
        }
    }
    let before = snapshot(&server, &[&acme, &globex]).await;
    let token_of = |page: pb::ListItemsResponse| page.next_page_token;
    let first = |tenant: &TestTenant, completed| {
        tenant.call(pb::ListItemsRequest {
            page_size: 1,
            page_token: String::new(),
            completed,
        })
    };
    let own = token_of(
        items
            .list_items(first(&acme, None))
            .await
            .unwrap()
            .into_inner(),
    );
    let foreign = token_of(
        items
            .list_items(first(&globex, None))
            .await
            .unwrap()
            .into_inner(),
    );
    let other_filter = token_of(
        items
            .list_items(first(&acme, Some(false)))
            .await
            .unwrap()
            .into_inner(),
    );
    let tenants_token = server
        .admin()
        .await
        .list_tenants(as_admin(pb::ListTenantsRequest {
            page_size: 1,
            page_token: String::new(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    assert!(
        ![&own, &foreign, &other_filter, &tenants_token]
            .iter()
            .any(|t| t.is_empty())
    );
    let mut flipped = own.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let mut flipped_scope = own.clone().into_bytes();
    flipped_scope[3] = if flipped_scope[3] == b'A' { b'B' } else { b'A' };
    let flipped_scope = String::from_utf8(flipped_scope).unwrap();
    let tokens = [
        ("another tenant's token", foreign),
        ("a token of other filters", other_filter),
        ("a ListTenants token", tenants_token),
        ("a flipped cursor byte", flipped),
        ("a flipped scope byte", flipped_scope),
        ("truncated", own[..own.len() / 2].to_owned()),
        ("not base64", "%%%not-a-token%%%".to_owned()),
        ("base64 garbage", "QUFBQUFBQUFBQUFBQUFBQUFBQUE".to_owned()),
        ("very long", "A".repeat(100_000)),
        ("SQL-shaped", "' OR 1=1 --".to_owned()),
    ];
    let mut ran = 0;
    for (name, page_token) in tokens {
        let answer = items
            .list_items(acme.call(pb::ListItemsRequest {
                page_size: 1,
                page_token,
                completed: None,
            }))
            .await;
        match answer {
            // A flipped cursor byte may still decode to a position in acme's
            // own list: then it may only show acme's own items.
            Ok(page) if name == "a flipped cursor byte" => {
                let titles: Vec<_> = page
                    .into_inner()
                    .items
                    .into_iter()
                    .map(|i| i.title)
                    .collect();
                assert!(titles.iter().all(|t| before[0].contains(t)), "{titles:?}");
            }
            answer => {
                let status = expect_code(answer, Code::InvalidArgument);
                assert!(
                    status.message().contains("page_token"),
                    "{name}: {status:?}"
                );
            }
        }
        ran += 1;
    }
    assert_eq!(snapshot(&server, &[&acme, &globex]).await, before);
    eprintln!("hostile page tokens: {ran} cases");
}

/// A CreateItemRequest as raw protobuf: `title` as bytes, so it can be
/// invalid UTF-8, which the generated client cannot send.
#[derive(Clone, PartialEq, prost::Message)]
struct RawItem {
    #[prost(bytes = "vec", tag = "2")]
    title: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawCreateItemRequest {
    #[prost(message, optional, tag = "1")]
    item: Option<RawItem>,
}

#[tokio::test]
async fn malformed_fields_are_refused_and_sql_shaped_ones_are_stored_verbatim() {
    let server = spawn().await;
    let acme = server.tenant("acme").await;
    let globex = server.tenant("globex").await;
    let mut items = server.items().await;
    let kept = items
        .create_item(globex.call(new_item("globex keeps this")))
        .await
        .unwrap()
        .into_inner();
    let before = snapshot(&server, &[&acme, &globex]).await;

    let with = |title: &str, description: &str| pb::CreateItemRequest {
        item: Some(Item {
            title: title.into(),
            description: description.into(),
            ..Default::default()
        }),
    };
    let invalid = [
        ("title with NUL", with("a\0b", "")),
        ("title with BEL", with("ring\u{7}", "")),
        ("title with escape", with("\u{1b}[31mred", "")),
        ("title of spaces", with("   ", "")),
        ("empty title", with("", "")),
        ("title over 200 characters", with(&"t".repeat(201), "")),
        ("title of 201 emoji", with(&"🚀".repeat(201), "")),
        (
            "description over 10,000 characters",
            with("ok", &"d".repeat(10_001)),
        ),
        ("description with NUL", with("ok", "a\0b")),
        ("no item", pb::CreateItemRequest { item: None }),
    ];
    let mut ran = 0;
    for (name, request) in invalid {
        let status = expect_code(
            items.create_item(acme.call(request)).await,
            Code::InvalidArgument,
        );
        assert!(!status.message().is_empty(), "{name}");
        ran += 1;
    }
    for id in [
        "",
        "not-a-uuid",
        "1 OR 1=1",
        "'; DROP TABLE items;--",
        &kept.id.to_uppercase(),
        &format!("{{{}}}", kept.id),
        &kept.id.replace('-', ""),
        &format!(" {}", kept.id),
    ] {
        expect_code(
            items
                .get_item(acme.call(pb::GetItemRequest { id: id.into() }))
                .await,
            Code::InvalidArgument,
        );
        expect_code(
            items
                .delete_item(acme.call(pb::DeleteItemRequest { id: id.into() }))
                .await,
            Code::InvalidArgument,
        );
        ran += 2;
    }
    // Another tenant's item id, in canonical form: not found, not deleted.
    expect_code(
        items
            .delete_item(acme.call(pb::DeleteItemRequest {
                id: kept.id.clone(),
            }))
            .await,
        Code::NotFound,
    );
    ran += 1;

    // Invalid UTF-8 in a string field, sent as raw protobuf.
    let mut grpc = tonic::client::Grpc::new(
        Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    grpc.ready().await.unwrap();
    let raw = RawCreateItemRequest {
        item: Some(RawItem {
            title: vec![b'o', b'k', 0xff, 0xfe],
        }),
    };
    let answer: Result<tonic::Response<Item>, _> = grpc
        .unary(
            acme.call(raw),
            http::uri::PathAndQuery::from_static("/tenantry.v1.ItemService/CreateItem"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    expect_code(answer, Code::InvalidArgument);
    ran += 1;
    assert_eq!(snapshot(&server, &[&acme, &globex]).await, before);

    // SQL-shaped and other tricky titles are data, stored and read back as is.
    for title in TITLES {
        let created = items
            .create_item(acme.call(new_item(title)))
            .await
            .unwrap()
            .into_inner();
        let read = items
            .get_item(acme.call(pb::GetItemRequest { id: created.id }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.title.as_bytes(), title.as_bytes());
        ran += 1;
    }
    let mut stored = all_titles(&server, &acme).await;
    stored.sort();
    let mut expected: Vec<_> = TITLES.iter().map(|t| t.to_string()).collect();
    expected.sort();
    assert_eq!(
        stored, expected,
        "every title stored verbatim, the table intact"
    );
    assert_eq!(all_titles(&server, &globex).await, before[1]);
    eprintln!("hostile fields: {ran} cases");
}
