//! Health: `grpc.health.v1` reports SERVING while the server serves and
//! NOT_SERVING once it drains at shutdown; `tenantry health` turns the answer
//! into an exit status for container health checks.

use std::process::{Command, Output};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{connect, spawn};

/// Runs `tenantry health` with `args`, on a thread of its own.
async fn health_command(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tenantry"))
            .arg("health")
            .args(args)
            .env_remove("TENANTRY_LISTEN")
            .output()
            .expect("runs tenantry health")
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_health_command_exits_zero_only_for_a_serving_server() {
    let server = spawn().await;
    let addr = server.addr.to_string();

    for service in ["", "tenantry.v1.ItemService", "tenantry.v1.TenantService"] {
        let output = health_command(vec![
            "--addr".into(),
            addr.clone(),
            "--service".into(),
            service.into(),
        ])
        .await;
        assert!(output.status.success(), "{service:?}: {output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "SERVING");
    }

    let output = health_command(vec![
        "--addr".into(),
        addr.clone(),
        "--service".into(),
        "nope.v1.Nothing".into(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("NotFound"),
        "{output:?}"
    );

    // Nothing listens on a port the kernel just handed out and took back.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = health_command(vec!["--addr".into(), free.to_string()]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[tokio::test]
async fn watchers_hear_not_serving_as_soon_as_the_server_drains() {
    let mut server = spawn().await;
    let mut health = HealthClient::new(connect(server.addr).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("a first status");
    assert_eq!(first.status(), ServingStatus::Serving);

    // The open watch is a call in flight: the server drains, and says so.
    server.begin_stop();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), watch.message())
        .await
        .expect("the status changes when the drain starts")
        .unwrap()
        .expect("a status change");
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop(watch);
    drop(health);
    server.stop().await;
}
