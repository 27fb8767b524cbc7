//! Health and reflection: open to all, so grpcurl works without proto files.

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use crate::common::spawn;

const OUR_SERVICES: [&str; 3] = [
    "tenantry.v1.ItemService",
    "tenantry.v1.TenantService",
    "grpc.health.v1.Health",
];

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn health_answers_without_a_credential() {
    let server = spawn().await;
    let mut health = HealthClient::new(channel(server.addr).await);
    for service in ["", "tenantry.v1.ItemService", "tenantry.v1.TenantService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("{service:?}: {s:?}"))
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn reflection_v1_lists_every_service_and_describes_their_files() {
    let server = spawn().await;
    let mut reflection =
        v1::server_reflection_client::ServerReflectionClient::new(channel(server.addr).await);
    let requests = [
        v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "tenantry.v1.ItemService".into(),
        ),
    ]
    .map(|message| v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    });
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    let listed = answers
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap();
    let v1::server_reflection_response::MessageResponse::ListServicesResponse(listed) = listed
    else {
        panic!("unexpected answer {listed:?}");
    };
    let names: Vec<_> = listed.service.into_iter().map(|s| s.name).collect();
    for service in OUR_SERVICES {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }
    let file = answers
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap();
    let v1::server_reflection_response::MessageResponse::FileDescriptorResponse(file) = file else {
        panic!("unexpected answer {file:?}");
    };
    assert!(!file.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn reflection_v1alpha_answers_older_clients() {
    let server = spawn().await;
    let mut reflection =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel(server.addr).await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let listed = answers
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap();
    let v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(listed) = listed
    else {
        panic!("unexpected answer {listed:?}");
    };
    let names: Vec<_> = listed.service.into_iter().map(|s| s.name).collect();
    for service in OUR_SERVICES {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }
}
