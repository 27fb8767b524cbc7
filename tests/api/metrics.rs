//! Metrics: the Prometheus text endpoint counts calls by method and status
//! code, call latency, the registry's work, migrations, backups and restores,
//! with no label that grows with the number of tenants.

use std::net::SocketAddr;

use tenantry::pb::{BackupTenantRequest, GetItemRequest, ListItemsRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::common::{as_admin, connect, expect_code, new_item, spawn, spawn_with};

/// `GET path` over plain HTTP/1.1: the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of one sample, by its name and labels as exposed.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_count_calls_latency_and_the_registrys_work_without_tenant_labels() {
    let server = spawn_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = server.metrics_addr.expect("metrics are served");
    let acme = server.tenant("acme").await;
    let globex = server.tenant("globex").await;
    let mut items = server.items().await;
    for tenant in [&acme, &globex] {
        items
            .create_item(tenant.call(new_item("counted")))
            .await
            .unwrap();
    }
    items
        .list_items(acme.call(ListItemsRequest::default()))
        .await
        .unwrap();
    let missing = uuid::Uuid::new_v4().to_string();
    expect_code(
        items
            .get_item(acme.call(GetItemRequest { id: missing }))
            .await,
        Code::NotFound,
    );
    server
        .admin()
        .await
        .backup_tenant(as_admin(BackupTenantRequest {
            id: acme.id.clone(),
        }))
        .await
        .unwrap();
    // A method the server does not have is counted as `unknown`.
    let mut unknown = tonic::client::Grpc::new(connect(server.addr).await);
    unknown.ready().await.unwrap();
    let made_up: tonic::Result<tonic::Response<()>> = unknown
        .unary(
            tonic::Request::new(()),
            "/tenantry.v1.ItemService/MadeUp12345".parse().unwrap(),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await;
    assert!(made_up.is_err());

    let (status, text) = get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let create = r#"method="/tenantry.v1.ItemService/CreateItem""#;
    assert_eq!(
        sample(
            &text,
            &format!(r#"tenantry_calls_total{{{create},code="OK"}}"#)
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tenantry_calls_total{method="/tenantry.v1.ItemService/GetItem",code="NOT_FOUND"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("tenantry_call_duration_seconds_count{{{create}}}")
        ),
        2.0
    );
    assert!(
        sample(
            &text,
            &format!("tenantry_call_duration_seconds_sum{{{create}}}")
        ) > 0.0
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(r#"tenantry_calls_total{method="unknown""#)),
        "{text}"
    );
    assert!(!text.contains("MadeUp12345"));
    // Two tenants opened (two misses), then found open.
    assert_eq!(sample(&text, "tenantry_registry_misses_total"), 2.0);
    assert!(sample(&text, "tenantry_registry_hits_total") >= 2.0);
    assert_eq!(sample(&text, "tenantry_open_tenants"), 2.0);
    assert_eq!(
        sample(&text, "tenantry_tenant_open_duration_seconds_count"),
        2.0
    );
    assert_eq!(
        sample(&text, r#"tenantry_backups_total{kind="backup"}"#),
        1.0
    );
    // No tenant id anywhere: the series do not grow with the tenants.
    for tenant in [&acme, &globex] {
        assert!(!text.contains(&tenant.id));
    }

    let (status, _) = get(addr, "/other").await;
    assert!(status.contains("404"), "{status}");
}

#[tokio::test]
async fn metrics_are_off_unless_an_address_is_set() {
    let server = spawn().await;
    assert!(server.metrics_addr.is_none());
}
