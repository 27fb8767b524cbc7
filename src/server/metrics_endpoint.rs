//! The metrics endpoint: `GET /metrics` in the OpenMetrics text format, on
//! its own address (`--metrics-listen`), with few connections and a header
//! timeout, since anyone who can reach the address can call it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// A metrics request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on the acceptor's listener until the task is
/// dropped; the open tenants gauge is read at each scrape. Connections are
/// capped by the acceptor and must send their headers in time.
pub async fn serve(
    mut acceptor: crate::transport::connections::Acceptor,
    max_connections: usize,
    metrics: Arc<Metrics>,
    registry: crate::tenant::Registry,
) {
    use hyper::service::service_fn;
    let open = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (stream, peer) = acceptor.next().await;
        let Ok(permit) = open.clone().try_acquire_owned() else {
            drop(stream);
            acceptor.refused(peer);
            continue;
        };
        let (metrics, registry) = (metrics.clone(), registry.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let (metrics, registry) = (metrics.clone(), registry.clone());
                async move {
                    if request.uri().path() == "/metrics" {
                        metrics.open_tenants.set(registry.open_count().await as i64);
                        http::Response::builder()
                            .header(
                                http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(metrics.encode())))
                    } else {
                        http::Response::builder()
                            .status(http::StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n")))
                    }
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(%error, "a metrics connection ended with an error");
            }
        });
    }
}

/// Binds the metrics address, if one is configured.
pub async fn bind(addr: Option<SocketAddr>) -> crate::error::Result<Option<TcpListener>> {
    use crate::error::Context;
    match addr {
        None => Ok(None),
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .context(|| format!("binding the metrics address {addr}")),
    }
}
