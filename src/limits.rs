//! The tower layer that bounds every call before anything else looks at it:
//! how many calls run at once, how long a call may take, and how large a
//! message it may send.
//!
//! - **Load shedding.** At most `max_calls` calls are in flight; one more is
//!   refused at once with UNAVAILABLE, which clients retry with backoff,
//!   rather than queued where it would wait without bound. Health checks are
//!   exempt, so that an overloaded server still answers its probes.
//! - **Deadlines.** A call ends at the client's deadline (`grpc-timeout`) or
//!   at the server's default timeout, whichever comes first, with
//!   DEADLINE_EXCEEDED. The call's future is dropped then, so work it had not
//!   started is never done; work already handed to a blocking thread checks
//!   the deadline before it starts and before it commits ([`current`]).
//! - **Message size.** A request message larger than `max_message_bytes` is
//!   refused with RESOURCE_EXHAUSTED as soon as its length prefix arrives,
//!   before its bytes are buffered.
//!
//! Streamed responses (ExportTenant, MigrateTenants) keep streaming after
//! the call's handler has returned; their in-flight slot and deadline cover
//! the handler only.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::error::{Error, Result};

/// Paths whose calls may run longer than the default timeout: uploads of
/// whole tenant databases, and searches across every tenant. The client's
/// own deadline still applies.
const LONG_CALLS: [&str; 2] = [
    "/tenantry.v1.TenantService/ImportTenant",
    "/tenantry.v1.TenantService/SearchItems",
];
const HEALTH: &str = "/grpc.health.v1.Health/";

#[derive(Clone, Debug)]
pub struct Limits {
    /// Most calls in flight at once.
    pub max_calls: usize,
    /// A call's deadline when the client sets none, or a later one.
    pub default_timeout: Duration,
    /// Largest request message, in bytes.
    pub max_message_bytes: usize,
}

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The deadline of the call being served, if any: blocking work checks it
/// before it starts, so that a call nobody waits for any more is not done.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

/// Runs `f` with `deadline` as the call's deadline: for work a call goes on
/// with after its handler returned, such as the items of a stream.
pub async fn within<F: Future>(deadline: Option<Instant>, f: F) -> F::Output {
    match deadline {
        Some(deadline) => DEADLINE.scope(deadline, f).await,
        None => f.await,
    }
}

/// Fails if `deadline` has passed.
pub fn check(deadline: Option<Instant>) -> Result<()> {
    match deadline {
        Some(deadline) if Instant::now() >= deadline => Err(deadline_exceeded()),
        _ => Ok(()),
    }
}

fn deadline_exceeded() -> Error {
    Error::DeadlineExceeded(
        "the call's deadline passed before it was done; nothing was changed".into(),
    )
}

#[derive(Clone)]
pub struct LimitsLayer {
    limits: Limits,
    in_flight: Arc<Semaphore>,
}

impl LimitsLayer {
    pub fn new(limits: Limits) -> Self {
        LimitsLayer {
            in_flight: Arc::new(Semaphore::new(limits.max_calls)),
            limits,
        }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limited {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    layer: LimitsLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> Service<Request<Body>> for Limited<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<std::result::Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limits = &self.layer.limits;
        let path = request.uri().path();
        let refuse = |error: Error| -> Self::Future {
            Box::pin(std::future::ready(Ok(Status::from(error).into_http())))
        };
        let permit = if path.starts_with(HEALTH) {
            None
        } else {
            match self.layer.in_flight.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    tracing::warn!(
                        max_calls = limits.max_calls,
                        method = path,
                        "overloaded: refused a call"
                    );
                    return refuse(Error::Unavailable(format!(
                        "the server is at its limit of {} calls in flight: retry with backoff",
                        limits.max_calls
                    )));
                }
            }
        };
        let default = (!LONG_CALLS.contains(&path)).then_some(limits.default_timeout);
        let timeout = match client_timeout(request.headers()) {
            Ok(client) => [client, default].into_iter().flatten().min(),
            Err(error) => return refuse(error),
        };
        let max_message_bytes = limits.max_message_bytes;
        let request = request.map(|body| {
            Body::new(LimitedBody {
                inner: body,
                limit: max_message_bytes,
                prefix: [0; 5],
                prefix_len: 0,
                remaining: 0,
            })
        });
        Box::pin(async move {
            let _permit = permit;
            let Some(timeout) = timeout else {
                return inner.call(request).await.map(undecodable_is_invalid);
            };
            let deadline = Instant::now() + timeout;
            match tokio::time::timeout_at(deadline, DEADLINE.scope(deadline, inner.call(request)))
                .await
            {
                Ok(response) => response.map(undecodable_is_invalid),
                Err(_) => Ok(Status::from(deadline_exceeded()).into_http()),
            }
        })
    }
}

/// A request tonic could not decode (a string field that is not UTF-8, a
/// truncated message) is the client's fault: INVALID_ARGUMENT, where tonic
/// answers INTERNAL with its own message. The status is in the response's
/// headers (a trailers-only answer) or in its trailers.
fn undecodable_is_invalid(response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    if fix_status(&mut parts.headers) {
        return Response::from_parts(parts, body);
    }
    Response::from_parts(parts, Body::new(FixedTrailers { inner: body }))
}

/// Turns tonic's INTERNAL for an undecodable request into INVALID_ARGUMENT;
/// says whether the headers held a status at all.
fn fix_status(headers: &mut HeaderMap) -> bool {
    const INTERNAL: &str = "13";
    let Some(status) = headers.get("grpc-status") else {
        return false;
    };
    let undecodable = status == INTERNAL
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| {
                // Percent-encoded on the wire, spaces included.
                m.replace("%20", " ")
                    .starts_with("failed to decode Protobuf message")
            });
    if undecodable {
        let code = (tonic::Code::InvalidArgument as i32).to_string();
        headers.insert(
            "grpc-status",
            code.parse().expect("a number is a header value"),
        );
    }
    true
}

/// A response body whose trailers go through [`fix_status`].
struct FixedTrailers {
    inner: Body,
}

impl http_body::Body for FixedTrailers {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(frame.map(|frame| {
            frame.map(|mut frame| {
                if let Some(trailers) = frame.trailers_mut() {
                    fix_status(trailers);
                }
                frame
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The client's deadline from `grpc-timeout`: up to eight digits and a unit
/// (H, M, S, m, u, n), as the gRPC protocol over HTTP/2 defines it.
fn client_timeout(headers: &HeaderMap) -> Result<Option<Duration>> {
    let Some(value) = headers.get("grpc-timeout") else {
        return Ok(None);
    };
    let malformed = || {
        Error::invalid(
            "grpc-timeout",
            "must be up to 8 digits followed by a unit (H, M, S, m, u or n)",
        )
    };
    let text = value.to_str().map_err(|_| malformed())?;
    if text.len() < 2 || text.len() > 9 {
        return Err(malformed());
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let amount: u64 = digits.parse().map_err(|_| malformed())?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return Err(malformed()),
    };
    Ok(Some(timeout))
}

/// A request body that refuses a gRPC message longer than `limit` as soon as
/// the message's 5-byte prefix (compression flag, big-endian length) has
/// gone by. tonic's own limit answers OUT_OF_RANGE; gRPC says
/// RESOURCE_EXHAUSTED, which this error becomes in tonic's decoder.
struct LimitedBody {
    inner: Body,
    limit: usize,
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
}

impl LimitedBody {
    fn scan(&mut self, mut data: &[u8]) -> std::result::Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(data.len());
                self.remaining -= skip;
                data.advance(skip);
                continue;
            }
            self.prefix[self.prefix_len] = data[0];
            self.prefix_len += 1;
            data.advance(1);
            if self.prefix_len == self.prefix.len() {
                self.prefix_len = 0;
                let length = u32::from_be_bytes(self.prefix[1..].try_into().expect("4 bytes"));
                let length = length as usize;
                if length > self.limit {
                    return Err(Status::resource_exhausted(format!(
                        "the request message is {length} bytes, more than this server's limit \
                         of {} bytes: send less per call",
                        self.limit
                    )));
                }
                self.remaining = length;
            }
        }
        Ok(())
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            self.scan(data)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(text: &str) -> Result<Option<Duration>> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", text.parse().unwrap());
        client_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_malformed_ones_are_refused() {
        assert_eq!(timeout("2H").unwrap(), Some(Duration::from_secs(7200)));
        assert_eq!(timeout("3M").unwrap(), Some(Duration::from_secs(180)));
        assert_eq!(timeout("10S").unwrap(), Some(Duration::from_secs(10)));
        assert_eq!(timeout("250m").unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(
            timeout("99999999u").unwrap(),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout("5n").unwrap(), Some(Duration::from_nanos(5)));
        for bad in [
            "",
            "S",
            "10",
            "10s",
            "123456789S",
            "-1S",
            "1.5S",
            " 1S",
            "1 S",
        ] {
            assert!(timeout(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(client_timeout(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn a_message_prefix_split_across_frames_is_still_checked() {
        let mut body = LimitedBody {
            inner: Body::empty(),
            limit: 10,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
        };
        // A 10-byte message: allowed, in pieces.
        body.scan(&[0, 0, 0]).unwrap();
        body.scan(&[0, 10, 1, 2, 3]).unwrap();
        body.scan(&[4, 5, 6, 7, 8, 9, 10]).unwrap();
        // Then an 11-byte one, its prefix split.
        body.scan(&[0, 0]).unwrap();
        let refused = body.scan(&[0, 0, 11]).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    }
}
