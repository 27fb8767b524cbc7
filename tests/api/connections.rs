//! The front end under connections no well-behaved client makes: more
//! streams than advertised, connections that never finish their handshake
//! or sit idle, and more connections than the server takes, none of which
//! needs a credential.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::pb::HealthCheckRequest;

use crate::common::{
    ServerProcess, TestTenant, as_admin, drive, grpc_frame, grpc_headers, new_item, raw_h2,
    spawn_with,
};

/// The client's HTTP/2 connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the server closes the connection; how long that took.
async fn closed_by_server(mut stream: TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut sink))
        .await
        .expect("the server closes the connection")
        .ok();
    started.elapsed()
}

#[tokio::test]
async fn the_server_advertises_its_stream_limit_and_refuses_oversized_headers() {
    let server = spawn_with(|config| {
        config.max_streams_per_connection = 8;
        config.max_header_bytes = 4096;
    })
    .await;
    let (mut calls, mut connection) = raw_h2(server.addr).await;
    let check = grpc_headers("/grpc.health.v1.Health/Check", &[]);
    let (response, mut body) = calls.send_request(check, false).unwrap();
    body.send_data(grpc_frame(&HealthCheckRequest::default()), true)
        .unwrap();
    let response = drive(&mut connection, response).await.unwrap();
    assert_eq!(response.status(), 200);
    // The SETTINGS the server sent before its answer.
    assert_eq!(connection.max_concurrent_send_streams(), 8);

    // A header block over the limit is refused; the connection lives on.
    let huge = "x".repeat(8192);
    let request = grpc_headers("/grpc.health.v1.Health/Check", &[("x-padding", &huge)]);
    let (response, mut body) = calls.send_request(request, false).unwrap();
    body.send_data(grpc_frame(&HealthCheckRequest::default()), true)
        .ok();
    let refused = drive(&mut connection, response).await;
    match refused {
        Err(_) => {}
        Ok(answer) => assert_eq!(answer.status(), 431, "{answer:?}"),
    }
    let check = grpc_headers("/grpc.health.v1.Health/Check", &[]);
    let (response, mut body) = calls.send_request(check, false).unwrap();
    body.send_data(grpc_frame(&HealthCheckRequest::default()), true)
        .unwrap();
    assert_eq!(
        drive(&mut connection, response).await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn connections_that_do_not_finish_their_handshake_are_closed() {
    let server = spawn_with(|config| config.handshake_timeout_ms = 300).await;
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&PREFACE[..10]).await.unwrap();
    let mut preface_only = TcpStream::connect(server.addr).await.unwrap();
    preface_only.write_all(PREFACE).await.unwrap();
    for (name, stream) in [
        ("silent", silent),
        ("half a preface", half),
        ("the preface alone", preface_only),
    ] {
        let took = closed_by_server(stream, Duration::from_secs(10)).await;
        assert!(took < Duration::from_secs(5), "{name}: {took:?}");
    }
    // A client that completes its handshake is served.
    server.admin().await;
}

#[tokio::test]
async fn a_connection_without_calls_is_told_to_go_away_once_idle() {
    let server = spawn_with(|config| config.connection_idle_secs = 1).await;
    let (mut calls, mut connection) = raw_h2(server.addr).await;
    let check = grpc_headers("/grpc.health.v1.Health/Check", &[]);
    let (response, mut body) = calls.send_request(check, false).unwrap();
    body.send_data(grpc_frame(&HealthCheckRequest::default()), true)
        .unwrap();
    drive(&mut connection, response).await.unwrap();
    // Nothing more is sent: the server ends the connection.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the server closes an idle connection")
        .ok();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "closed too soon: {took:?}"
    );
}

/// A connection with a call open on it that `metadata` authorizes, or not:
/// a CreateItem whose request never ends. It is open once a health check
/// sent after it is answered.
async fn connection_with_open_call(
    addr: std::net::SocketAddr,
    metadata: &[(&str, &str)],
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
    h2::SendStream<bytes::Bytes>,
) {
    let (mut calls, connection) = raw_h2(addr).await;
    let create = grpc_headers("/tenantry.v1.ItemService/CreateItem", metadata);
    let (_response, body) = calls.send_request(create, false).unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    assert_eq!(check(&mut calls).await, 200);
    (calls, driver, body)
}

/// A connection with a call that counts open: one with a credential.
async fn busy_connection(
    addr: std::net::SocketAddr,
    tenant: &TestTenant,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
    h2::SendStream<bytes::Bytes>,
) {
    let bearer = format!("Bearer {}", tenant.key);
    connection_with_open_call(
        addr,
        &[("authorization", &bearer), ("x-tenant-id", &tenant.id)],
    )
    .await
}

/// A health check on a connection whose driver runs elsewhere.
async fn check(calls: &mut h2::client::SendRequest<bytes::Bytes>) -> http::StatusCode {
    let request = grpc_headers("/grpc.health.v1.Health/Check", &[]);
    let (response, mut body) = calls.send_request(request, false).unwrap();
    body.send_data(grpc_frame(&HealthCheckRequest::default()), true)
        .unwrap();
    response.await.unwrap().status()
}

/// A new connection that is served, trying again while the server refuses
/// it: it may still count a connection that is going away.
async fn newcomer(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    for _ in 0..50 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let Ok((mut calls, connection)) = h2::client::handshake(tcp).await else {
            continue;
        };
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = grpc_headers("/grpc.health.v1.Health/Check", &[]);
        let Ok((response, mut body)) = calls.send_request(request, false) else {
            continue;
        };
        if body
            .send_data(grpc_frame(&HealthCheckRequest::default()), true)
            .is_ok()
            && response.await.is_ok_and(|r| r.status() == 200)
        {
            return (calls, driver);
        }
    }
    panic!("no new connection was served");
}

#[tokio::test]
async fn past_the_connection_cap_a_new_connection_displaces_an_idle_one_or_is_closed() {
    let server = spawn_with(|config| {
        config.max_connections = 3;
        config.request_body_timeout_ms = 60_000;
    })
    .await;
    let tenant = server.tenant("acme").await;
    let mut held = vec![
        busy_connection(server.addr, &tenant).await,
        busy_connection(server.addr, &tenant).await,
        busy_connection(server.addr, &tenant).await,
    ];
    // A call is open on every connection: a fourth is closed at once.
    let fourth = TcpStream::connect(server.addr).await.unwrap();
    let took = closed_by_server(fourth, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The connections within the cap are served meanwhile.
    assert_eq!(check(&mut held[0].0).await, 200);

    // One busy connection goes; another takes its place and is left idle.
    let (_, driver, _) = held.pop().unwrap();
    driver.abort();
    let (_, idle) = newcomer(server.addr).await;
    // The next newcomer displaces the idle one, not a busy one.
    let (mut calls, _driver) = newcomer(server.addr).await;
    assert_eq!(check(&mut calls).await, 200);
    tokio::time::timeout(Duration::from_secs(10), idle)
        .await
        .expect("the idle connection was told to go away, and went")
        .unwrap();
    for (calls, _, _) in &mut held {
        assert_eq!(check(calls).await, 200, "busy connections stay");
    }
}

#[tokio::test]
async fn connections_holding_only_calls_anyone_may_make_do_not_keep_newcomers_out() {
    let server = spawn_with(|config| {
        config.max_connections = 3;
        config.request_body_timeout_ms = 60_000;
        config.refusal_delay_ms = 5_000;
    })
    .await;
    let mut held = Vec::new();
    // A health check whose request never ends.
    let (mut calls, driver) = newcomer(server.addr).await;
    let request = grpc_headers("/grpc.health.v1.Health/Check", &[]);
    let (_check, body) = calls.send_request(request, false).unwrap();
    assert_eq!(check(&mut calls).await, 200);
    held.push((calls, driver, body));
    // A health watch, which stays open.
    let (mut calls, driver) = newcomer(server.addr).await;
    let request = grpc_headers("/grpc.health.v1.Health/Watch", &[]);
    let (_watch, mut body) = calls.send_request(request, false).unwrap();
    body.send_data(grpc_frame(&HealthCheckRequest::default()), false)
        .unwrap();
    assert_eq!(check(&mut calls).await, 200);
    held.push((calls, driver, body));
    // A call with a wrong key, whose refusal is held back.
    let (mut calls, driver) = newcomer(server.addr).await;
    let request = grpc_headers(
        "/tenantry.v1.TenantService/ListTenants",
        &[("authorization", "Bearer wrong")],
    );
    let (_refused, mut body) = calls.send_request(request, false).unwrap();
    body.send_data(
        grpc_frame(&tenantry::pb::ListTenantsRequest::default()),
        true,
    )
    .unwrap();
    assert_eq!(check(&mut calls).await, 200);
    held.push((calls, driver, body));

    // At the cap, a newcomer is served: one of them made room.
    let (mut calls, _driver) = newcomer(server.addr).await;
    assert_eq!(check(&mut calls).await, 200);
    let displaced = futures::future::select_all(held.iter_mut().map(|(_, driver, _)| driver));
    let (ended, _, _) = tokio::time::timeout(Duration::from_secs(10), displaced)
        .await
        .expect("a connection holding only such calls was closed");
    ended.expect("its driver ended on its own");
}

/// A connection that finishes its handshake (the preface and a SETTINGS
/// frame, acknowledged by the server) and then sends nothing, not even the
/// answer to the ping a GOAWAY carries.
async fn silent_connection(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    // Read frames until the server acknowledges those settings.
    loop {
        let mut header = [0u8; 9];
        tcp.read_exact(&mut header).await.unwrap();
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        tcp.read_exact(&mut payload).await.unwrap();
        if header[3] == 4 && header[4] & 1 == 1 {
            return tcp;
        }
    }
}

#[tokio::test]
async fn connections_that_ignore_being_told_to_go_do_not_keep_newcomers_out() {
    let server = spawn_with(|config| config.max_connections = 3).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(silent_connection(server.addr).await);
    }
    let (mut calls, _driver) = newcomer(server.addr).await;
    assert_eq!(check(&mut calls).await, 200);
    // The one displaced is closed, though it never answered.
    let mut closed = 0;
    for stream in silent {
        let mut stream = stream;
        let mut sink = Vec::new();
        if tokio::time::timeout(Duration::from_millis(50), stream.read_to_end(&mut sink))
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    assert!(closed >= 1, "none of the silent connections was closed");
}

/// The server binary under an open-file limit of 400, with room for 60
/// open tenants of 2 descriptors each: what is left after the tenants and
/// the reserve is the connection cap, so a flood of idle connections cannot
/// take the descriptors that tenant files need, nor keep new clients out.
#[tokio::test]
async fn a_flood_of_idle_connections_leaves_tenants_their_file_descriptors() {
    let dir = tempfile::TempDir::new().unwrap();
    let server = ServerProcess::start_with_file_limit(
        &dir,
        400,
        &[
            ("TENANTRY_MAX_OPEN_TENANTS", "60"),
            ("TENANTRY_HANDSHAKE_TIMEOUT_MS", "60000"),
        ],
    );
    let mut flood = Vec::new();
    for _ in 0..600 {
        match TcpStream::connect(server.addr()).await {
            Ok(stream) => flood.push(stream),
            Err(error) => panic!("the kernel refused a connection: {error}"),
        }
    }
    let cpu_before = server.cpu_time();
    let started = Instant::now();
    // Clients that arrive after the flood take the place of connections
    // that never sent anything.
    let mut admin = server.admin().await;
    let mut items = server.items().await;
    // Every tenant opens its file while the flood holds its connections.
    let mut tenants = Vec::new();
    for n in 0..20 {
        let tenant = crate::common::create_tenant(&mut admin, &format!("flooded-{n}")).await;
        items
            .create_item(tenant.call(new_item("written")))
            .await
            .expect("a tenant file opens during the flood");
        tenants.push(tenant);
    }
    admin
        .backup_tenant(as_admin(tenantry::pb::BackupTenantRequest {
            id: tenants[0].id.clone(),
        }))
        .await
        .expect("a backup during the flood");
    let cpu = server.cpu_time() - cpu_before;
    let wall = started.elapsed();
    println!(
        "600 idle connections against a cap of 24: {:.2} CPU-s in {:.2} s of work",
        cpu.as_secs_f64(),
        wall.as_secs_f64()
    );
    // The connections over the cap were closed, not kept.
    let mut closed = 0;
    for mut stream in flood {
        let mut sink = Vec::new();
        let read = stream.read_to_end(&mut sink);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(50), read).await {
            closed += 1;
        }
    }
    assert!(closed >= 570, "{closed} of 600 were closed");
}
