//! Limits: oversized messages, deadlines, load shedding and the per-tenant
//! concurrency limit, each answered with its status and without changing
//! stored data. (That a flooding tenant does not starve another is shown by
//! `tests/noisy_neighbour.rs`, which runs alone so that its latencies are
//! not other tests' noise.)

use std::time::Duration;

use tenantry::ids::TenantId;
use tenantry::pb;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{
    TestServer, TestTenant, all_titles, as_admin, expect_code, grpc_headers, grpc_status, new_item,
    raw_h2, spawn, spawn_with, suspend,
};

fn tenant_id(tenant: &TestTenant) -> TenantId {
    TenantId::parse("id", &tenant.id).unwrap()
}

/// A GetItem of a missing item: a cheap call that reaches the tenant's file.
fn probe(tenant: &TestTenant) -> tonic::Request<pb::GetItemRequest> {
    tenant.call(pb::GetItemRequest {
        id: uuid::Uuid::now_v7().to_string(),
    })
}

/// Starts a CreateItem for `tenant` in the background. It is sent again
/// while it is refused for lack of room, so that it ends up in flight even
/// when a probe briefly held the last slot.
fn create_in_background(
    server: &TestServer,
    tenant: &TestTenant,
    title: &str,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::Item>, tonic::Status>> {
    let (tenant, title, addr) = (tenant.clone(), title.to_owned(), server.addr);
    tokio::spawn(async move {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut items = pb::item_service_client::ItemServiceClient::new(channel);
        loop {
            match items.create_item(tenant.call(new_item(&title))).await {
                Err(status)
                    if matches!(status.code(), Code::ResourceExhausted | Code::Unavailable) =>
                {
                    continue;
                }
                answer => return answer,
            }
        }
    })
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_with_resource_exhausted() {
    let server = spawn().await;
    let tenant = server.tenant("big").await;
    let mut items = server.items().await;
    items
        .create_item(tenant.call(new_item("before")))
        .await
        .unwrap();
    let mut request = new_item("huge");
    request.item.as_mut().unwrap().description = "x".repeat(5 << 20);
    let status = expect_code(
        items.create_item(tenant.call(request)).await,
        Code::ResourceExhausted,
    );
    assert!(
        status.message().contains("limit of 4194304 bytes"),
        "{status:?}"
    );
    // The same connection still works, and nothing was stored.
    items
        .create_item(tenant.call(new_item("after")))
        .await
        .unwrap();
    assert_eq!(all_titles(&server, &tenant).await, ["after", "before"]);
}

#[tokio::test]
async fn a_call_past_its_deadline_is_abandoned_not_finished() {
    let server = spawn_with(|config| config.call_timeout_ms = 300).await;
    let tenant = server.tenant("late").await;
    let mut items = server.items().await;

    // The tenant's file is held (as a restore holds it): calls wait.
    let held = server.registry.exclusive(tenant_id(&tenant)).await;
    // The server's default timeout ends the call.
    let status = expect_code(
        items.create_item(tenant.call(new_item("by default"))).await,
        Code::DeadlineExceeded,
    );
    assert!(status.message().contains("deadline"), "{status:?}");
    // So does the client's deadline, whichever end notices first.
    let mut request = tenant.call(new_item("by the client"));
    request.set_timeout(Duration::from_millis(50));
    let status = items.create_item(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    drop(held);

    // Neither write happened once the file was free again.
    items
        .create_item(tenant.call(new_item("on time")))
        .await
        .unwrap();
    assert_eq!(all_titles(&server, &tenant).await, ["on time"]);
}

#[tokio::test]
async fn a_malformed_grpc_timeout_is_an_invalid_argument() {
    let server = spawn().await;
    let tenant = server.tenant("odd").await;
    let mut request = probe(&tenant);
    request
        .metadata_mut()
        .insert("grpc-timeout", "soon".parse().unwrap());
    let status = expect_code(
        server.items().await.get_item(request).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("grpc-timeout"), "{status:?}");
}

#[tokio::test]
async fn past_the_global_limit_calls_are_shed_with_unavailable_and_health_still_answers() {
    let server = spawn_with(|config| {
        config.max_concurrent_calls = 2;
        config.admin_reserved_calls = 0;
        config.tenant_max_concurrent_calls = 1;
    })
    .await;
    let a = server.tenant("tenant-a").await;
    let b = server.tenant("tenant-b").await;
    let c = server.tenant("tenant-c").await;
    let held_a = server.registry.exclusive(tenant_id(&a)).await;
    let held_b = server.registry.exclusive(tenant_id(&b)).await;
    let waiting = [
        create_in_background(&server, &a, "a waited"),
        create_in_background(&server, &b, "b waited"),
    ];

    // Once both waiting calls are in, a third is refused at once.
    let mut items = server.items().await;
    let shed = loop {
        match items.get_item(probe(&c)).await {
            Err(status) if status.code() == Code::NotFound => continue,
            Err(status) => break status,
            Ok(_) => panic!("a probe found an item"),
        }
    };
    assert_eq!(shed.code(), Code::Unavailable, "{shed:?}");
    assert!(shed.message().contains("limit of 2 calls"), "{shed:?}");
    let health = HealthClient::new(
        Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
    .check(HealthCheckRequest::default())
    .await
    .expect("health checks are never shed");
    assert_eq!(health.into_inner().status, 1, "SERVING");

    drop((held_a, held_b));
    for call in waiting {
        call.await.unwrap().expect("a waiting call finishes");
    }
    expect_code(items.get_item(probe(&c)).await, Code::NotFound);
    assert_eq!(all_titles(&server, &a).await, ["a waited"]);
}

#[tokio::test]
async fn past_its_own_limit_a_tenant_is_refused_while_others_are_served() {
    let server = spawn_with(|config| config.tenant_max_concurrent_calls = 2).await;
    let busy = server.tenant("busy").await;
    let calm = server.tenant("calm").await;
    let held = server.registry.exclusive(tenant_id(&busy)).await;
    let waiting = [
        create_in_background(&server, &busy, "first"),
        create_in_background(&server, &busy, "second"),
    ];

    // A probe that got in before both waiting calls times out and leaves.
    let mut items = server.items().await;
    let refused = loop {
        let mut request = probe(&busy);
        request.set_timeout(Duration::from_millis(20));
        match items.get_item(request).await {
            Err(status) if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled) => {
                continue;
            }
            Err(status) => break status,
            Ok(_) => panic!("a probe found an item"),
        }
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("2 calls in flight"),
        "{refused:?}"
    );
    // Another tenant is served meanwhile.
    items
        .create_item(calm.call(new_item("served")))
        .await
        .expect("another tenant is not limited");

    drop(held);
    for call in waiting {
        call.await.unwrap().expect("a waiting call finishes");
    }
    let mut titles = all_titles(&server, &busy).await;
    titles.sort();
    assert_eq!(titles, ["first", "second"]);
}

/// Opens `count` CreateItem calls for `tenant` on one connection, each with
/// its headers and no body: the connection (abort it to close it), and the
/// calls' answers as they come.
async fn calls_without_bodies(
    server: &TestServer,
    tenant: &TestTenant,
    count: usize,
) -> (
    tokio::task::JoinHandle<()>,
    Vec<tokio::task::JoinHandle<Code>>,
) {
    let (mut calls, connection) = raw_h2(server.addr).await;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut answers = Vec::new();
    for _ in 0..count {
        let headers = grpc_headers(
            "/tenantry.v1.ItemService/CreateItem",
            &[
                ("authorization", &format!("Bearer {}", tenant.key)),
                ("x-tenant-id", &tenant.id),
            ],
        );
        calls = calls.ready().await.unwrap();
        let (response, body) = calls.send_request(headers, false).unwrap();
        answers.push(tokio::spawn(async move {
            // The body is kept open, and never sent.
            let _body = body;
            match response.await {
                Ok(response) => grpc_status(response).await,
                Err(_) => Code::Cancelled,
            }
        }));
    }
    (connection, answers)
}

#[tokio::test]
async fn calls_whose_bodies_never_come_do_not_lock_out_the_admin() {
    let server = spawn_with(|config| {
        config.max_concurrent_calls = 64;
        config.tenant_max_concurrent_calls = 32;
        config.request_body_timeout_ms = 600_000;
    })
    .await;
    let a = server.tenant("stuck-a").await;
    let b = server.tenant("stuck-b").await;
    let other = server.tenant("other").await;
    let (first, mut stuck) = calls_without_bodies(&server, &a, 32).await;
    let (second, more) = calls_without_bodies(&server, &b, 32).await;
    stuck.extend(more);

    // Every shared slot is taken (or refused): the admin still acts.
    let mut admin = server.admin().await;
    suspend(&server, &b.id).await;
    let key = admin
        .list_api_keys(as_admin(pb::ListApiKeysRequest {
            tenant_id: a.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .api_keys
        .remove(0);
    admin
        .revoke_api_key(as_admin(pb::RevokeApiKeyRequest { id: key.id }))
        .await
        .expect("the admin revokes a key while tenants hold every shared slot");
    let holding = stuck.iter().filter(|call| !call.is_finished()).count();
    assert!(
        holding >= 48,
        "the calls in the shared slots were stuck meanwhile: {holding}"
    );

    // Once the stuck calls are gone, the other tenants are served again.
    first.abort();
    second.abort();
    let mut items = server.items().await;
    loop {
        match items.create_item(other.call(new_item("served"))).await {
            Err(status) if status.code() == Code::Unavailable => tokio::task::yield_now().await,
            answer => {
                answer.expect("another tenant is served once the calls are gone");
                break;
            }
        }
    }
    assert_eq!(all_titles(&server, &other).await, ["served"]);
}

#[tokio::test]
async fn a_call_whose_body_never_comes_ends_after_the_body_timeout() {
    let server = spawn_with(|config| config.request_body_timeout_ms = 300).await;
    let tenant = server.tenant("slow").await;
    let started = std::time::Instant::now();
    let (_connection, mut stuck) = calls_without_bodies(&server, &tenant, 1).await;
    let code = stuck.pop().unwrap().await.unwrap();
    assert_eq!(code, Code::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The slot it held is free: the tenant's calls go on.
    server
        .items()
        .await
        .create_item(tenant.call(new_item("on time")))
        .await
        .unwrap();
    assert_eq!(all_titles(&server, &tenant).await, ["on time"]);
}

#[tokio::test]
async fn health_watches_have_a_bound_of_their_own_and_checks_none() {
    let server = spawn_with(|config| config.max_open_streams = 3).await;
    let channel = crate::common::connect(server.addr).await;
    let mut health = HealthClient::new(channel);
    let mut watching = Vec::new();
    for _ in 0..3 {
        let mut stream = health
            .watch(HealthCheckRequest::default())
            .await
            .expect("a watch within the bound")
            .into_inner();
        stream.message().await.unwrap().expect("the first status");
        watching.push(stream);
    }
    let refused = health.watch(HealthCheckRequest::default()).await;
    let status = expect_code(refused, Code::ResourceExhausted);
    assert!(status.message().contains("3 open streams"), "{status:?}");
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("checks are not bounded");
    // A watch that ends makes room for another (once the server has seen
    // it go).
    drop(watching.pop());
    let again = loop {
        match health.watch(HealthCheckRequest::default()).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                tokio::task::yield_now().await;
            }
            other => break other,
        }
    };
    again.expect("a watch in the room a finished one left");
}

/// A reflection stream held open on a raw connection; the connection's
/// driver.
async fn reflection_stream(
    addr: std::net::SocketAddr,
) -> (
    h2::RecvStream,
    h2::SendStream<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let (mut calls, mut connection) = raw_h2(addr).await;
    let request = grpc_headers(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        &[],
    );
    let (response, body) = calls.send_request(request, false).unwrap();
    let response = crate::common::drive(&mut connection, response)
        .await
        .unwrap();
    assert_eq!(
        response.headers().get("grpc-status"),
        None,
        "the stream is open: {response:?}"
    );
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (response.into_body(), body, driver)
}

#[tokio::test]
async fn reflection_streams_without_a_credential_take_no_call_slot() {
    let server = spawn_with(|config| {
        config.max_concurrent_calls = 2;
        config.tenant_max_concurrent_calls = 2;
        config.admin_reserved_calls = 0;
        config.max_open_streams = 3;
    })
    .await;
    let tenant = server.tenant("acme").await;
    // More reflection streams than there are call slots, held open.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(reflection_stream(server.addr).await);
    }
    // Calls with a credential still have every slot.
    let mut items = server.items().await;
    items
        .create_item(tenant.call(new_item("served")))
        .await
        .expect("open streams take no call slot");
    assert_eq!(all_titles(&server, &tenant).await, ["served"]);
    // They count against the bound of open streams, as health watches do.
    let channel = crate::common::connect(server.addr).await;
    let refused = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await;
    let status = expect_code(refused, Code::ResourceExhausted);
    assert!(status.message().contains("3 open streams"), "{status:?}");
    drop(open);
}
