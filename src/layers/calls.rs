//! One tracing span per call, and one event when it ends.
//!
//! The span `call` carries the method, and, once admission has verified the
//! caller, the tenant and the API key id (never a secret); every log line of
//! the call is inside it. When the call ends (its last frame sent, or the
//! client gone), the event `call finished` is logged, with the gRPC status
//! code and the latency as its fields (not recorded into the span as well:
//! each record formats into the span's text, a cost every call would pay
//! for lines that are mostly not logged), with target `tenantry::layers::calls`: at DEBUG for
//! `OK`, INFO for a failure the client can fix, WARN for a server-side
//! failure. `RUST_LOG=info,tenantry::layers::calls=debug` logs every call. The end
//! is also counted in the [`crate::metrics`].
//!
//! A flood must not become a flood of log lines, so refusals (UNAVAILABLE,
//! RESOURCE_EXHAUSTED, UNAUTHENTICATED, PERMISSION_DENIED) are never logged
//! one by one: each is counted against its subject (the tenant, the API key,
//! the peer) and logged as a summary per interval ([`crate::transport::log_summary`]).
//! Other failures are logged one by one within a budget of lines per second,
//! and counted the same way beyond it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use tonic::Code;
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Span;

use crate::error::code_name;
use crate::metrics::Metrics;
use crate::transport::log_summary::{Subject, Summaries};

/// Who the call is counted against when it is refused: set by the layers
/// as they learn it (the peer, then the API key a credential names, then
/// the verified tenant). In the request's extensions.
#[derive(Clone)]
pub struct CallSubject(Arc<std::sync::Mutex<Subject>>);

impl CallSubject {
    fn new(subject: Subject) -> Self {
        CallSubject(Arc::new(std::sync::Mutex::new(subject)))
    }

    pub fn set(&self, subject: Subject) {
        *self.0.lock().expect("never poisoned") = subject;
    }

    fn get(&self) -> Subject {
        *self.0.lock().expect("never poisoned")
    }
}

/// Codes that refuse a call before it does anything: counted, not logged.
fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::Unauthenticated
            | Code::PermissionDenied
    )
}

/// Records the verified caller of the current call in its span.
pub fn record_caller(tenant: Option<&dyn std::fmt::Display>, key_id: Option<&uuid::Uuid>) {
    let span = Span::current();
    if let Some(tenant) = tenant {
        span.record("tenant", tracing::field::display(tenant));
    }
    if let Some(key_id) = key_id {
        span.record("key_id", tracing::field::display(key_id));
    }
}

/// The outermost layer: a span per call, and the call's end logged and
/// counted in the metrics.
#[derive(Clone)]
pub struct CallLogLayer {
    metrics: Arc<Metrics>,
    summaries: Arc<Summaries>,
}

impl CallLogLayer {
    pub fn new(metrics: Arc<Metrics>, summaries: Arc<Summaries>) -> Self {
        CallLogLayer { metrics, summaries }
    }
}

impl<S> Layer<S> for CallLogLayer {
    type Service = CallLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLog {
            inner,
            metrics: self.metrics.clone(),
            summaries: self.summaries.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CallLog<S> {
    inner: S,
    metrics: Arc<Metrics>,
    summaries: Arc<Summaries>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> Service<Request<B>> for CallLog<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<std::result::Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let peer = request
            .extensions()
            .get::<crate::transport::connections::Peer>()
            .map_or(Subject::Unknown, |peer| Subject::Peer(peer.0.ip()));
        let subject = CallSubject::new(peer);
        request.extensions_mut().insert(subject.clone());
        let span = tracing::info_span!(
            "call",
            method = request.uri().path(),
            tenant = tracing::field::Empty,
            key_id = tracing::field::Empty,
        );
        let start = Instant::now();
        let path = request.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let summaries = self.summaries.clone();
        let mut inner = super::take_ready(&mut self.inner);
        let called = {
            let _entered = span.enter();
            inner.call(request)
        };
        Box::pin(async move {
            let response = tracing::Instrument::instrument(called, span.clone()).await?;
            let mut end = CallEnd {
                span,
                start,
                path,
                metrics,
                summaries,
                subject,
                done: false,
            };
            // A refusal is all in the headers ("trailers-only").
            if let Some(code) = status_in(response.headers()) {
                end.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| Body::new(ObservedBody { inner: body, end })))
        })
    }
}

fn status_in(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// The end of one call: logged once.
struct CallEnd {
    span: Span,
    start: Instant,
    path: String,
    metrics: Arc<Metrics>,
    summaries: Arc<Summaries>,
    subject: CallSubject,
    done: bool,
}

impl CallEnd {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.start.elapsed();
        let latency_ms = elapsed.as_secs_f64() * 1e3;
        let name = code_name(code);
        self.metrics.call_finished(&self.path, name, elapsed);
        if is_refusal(code) {
            self.summaries
                .count("refused call", name, self.subject.get());
            return;
        }
        if code != Code::Ok && !self.summaries.line_allowed() {
            self.summaries
                .count("failed call", name, self.subject.get());
            return;
        }
        let _entered = self.span.enter();
        match code {
            Code::Ok => {
                tracing::debug!(target: "tenantry::layers::calls", code = name, latency_ms, "call finished")
            }
            Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented => {
                tracing::warn!(target: "tenantry::layers::calls", code = name, latency_ms, "call finished")
            }
            _ => {
                tracing::info!(target: "tenantry::layers::calls", code = name, latency_ms, "call finished")
            }
        }
    }
}

/// A response body that reports the call's end when its trailers pass, or
/// when it is dropped before them (the client went away).
struct ObservedBody {
    inner: Body,
    end: CallEnd,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, tonic::Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_in(trailers).unwrap_or(Code::Unknown);
                    self.end.finish(code);
                }
            }
            Some(Err(status)) => self.end.finish(status.code()),
            None => self.end.finish(Code::Unknown),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.end.finish(Code::Cancelled);
    }
}
