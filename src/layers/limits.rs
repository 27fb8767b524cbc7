//! The tower layer that bounds every call before anything else looks at it:
//! how many calls run at once, how long a call may take, how large a
//! message it may send and how long it may take to send it.
//!
//! - **Load shedding.** At most `max_calls` calls are in flight; one more is
//!   refused at once with UNAVAILABLE, which clients retry with backoff,
//!   rather than queued where it would wait without bound. A call holds its
//!   slot until its response is done, so a long stream counts for as long
//!   as it lasts.
//! - **A reserve for the admin.** `admin_reserved` of those slots are for
//!   the admin API alone: however many calls the tenants send, an operator
//!   can still suspend a tenant or revoke a key.
//! - **Calls without a credential.** Health checks are exempt, so that an
//!   overloaded server still answers its probes; health watches and
//!   reflection streams, which stay open and need no credential, have a
//!   bound of their own (`max_open_streams`) and never take the slots of
//!   calls that carry one.
//! - **Deadlines.** A call ends at the client's deadline (`grpc-timeout`) or
//!   at the server's default timeout, whichever comes first. The call's
//!   [`Deadline`] decides what its caller hears: DEADLINE_EXCEEDED "nothing
//!   was changed" if nothing was committed, the real outcome if a commit was
//!   under way, and "outcome unknown" with an operation id if the call handed
//!   its work to an operation that goes on by itself (see
//!   [`crate::deadline`]). A call whose client goes away expires too.
//! - **Message size.** A request message larger than `max_message_bytes` is
//!   refused with RESOURCE_EXHAUSTED as soon as its length prefix arrives,
//!   before its bytes are buffered.
//! - **Slow requests.** A unary call's request must arrive whole within
//!   `body_timeout` of the call's start, and an upload's messages must keep
//!   coming at least that often; otherwise the call ends, and its slot is
//!   free again.
//! - **Refusals are held back.** A call refused for a limit or a credential
//!   gets its answer after `refusal_delay`, its slot already free: a client
//!   that retries at once, as a flood does, waits instead of spinning the
//!   server.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::deadline::{Deadline, Expiry};
use crate::error::{Error, Result};
use crate::transport::connections::{CallActivity, Held};

/// Paths whose calls may run longer than the default timeout: uploads of
/// whole tenant databases, and streams that may legitimately run long
/// (searches across every tenant, exports of large tenants, migrations of
/// every tenant). The client's own deadline still applies; a stream whose
/// client stops reading is ended after the stall timeout instead.
const LONG_CALLS: [&str; 4] = [
    "/tenantry.v1.TenantService/ImportTenant",
    "/tenantry.v1.TenantService/SearchItems",
    "/tenantry.v1.TenantService/ExportTenant",
    "/tenantry.v1.TenantService/MigrateTenants",
];
/// The one client-streaming method: its messages must keep coming.
const UPLOAD: &str = "/tenantry.v1.TenantService/ImportTenant";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
const REFLECTION: &str = "/grpc.reflection.";
const ADMIN_API: &str = "/tenantry.v1.TenantService/";

/// How long a call whose deadline passed while its work was being
/// committed waits for that commit's outcome.
const COMMIT_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Limits {
    /// Most calls in flight at once.
    pub max_calls: usize,
    /// How many of them only the admin API may use.
    pub admin_reserved: usize,
    /// Most health watches and reflection streams open at once.
    pub max_open_streams: usize,
    /// A call's deadline when the client sets none, or a later one.
    pub default_timeout: Duration,
    /// Largest request message, in bytes.
    pub max_message_bytes: usize,
    /// How long a request may take to arrive (an upload: each message).
    pub body_timeout: Duration,
    /// How long a refusal (over a limit, or of a credential) is held back
    /// before it is sent, holding no call slot meanwhile. A client that
    /// sends again as soon as it is refused, as a flood does, is slowed to
    /// a call per stream per this delay: its refusals cost the server
    /// little, and take no CPU from the tenants that keep to their limits.
    pub refusal_delay: Duration,
}

#[derive(Clone)]
pub struct LimitsLayer {
    limits: Limits,
    /// Slots any call may take.
    shared: Arc<Semaphore>,
    /// Slots only admin calls may take, once the shared ones are gone.
    reserved: Arc<Semaphore>,
    open_streams: Arc<Semaphore>,
}

impl LimitsLayer {
    pub fn new(limits: Limits) -> Self {
        let reserved = limits
            .admin_reserved
            .min(limits.max_calls.saturating_sub(1));
        LimitsLayer {
            shared: Arc::new(Semaphore::new(limits.max_calls.max(1) - reserved)),
            reserved: Arc::new(Semaphore::new(reserved)),
            open_streams: Arc::new(Semaphore::new(limits.max_open_streams)),
            limits,
        }
    }

    /// The slot a call to `path` holds until its response is done; `None`
    /// for a health check, which needs none.
    fn slot(&self, path: &str) -> Result<Option<OwnedSemaphorePermit>> {
        if path == HEALTH_CHECK {
            return Ok(None);
        }
        if is_open_stream(path) {
            return self
                .open_streams
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| {
                    Error::ResourceExhausted(format!(
                        "the server already has {} open streams that need no credential \
                         (health watches and reflection), the most it keeps \
                         (--max-open-streams): use Health/Check, or watch from fewer clients",
                        self.limits.max_open_streams
                    ))
                });
        }
        let shared = self.shared.clone().try_acquire_owned();
        let slot = match shared {
            Ok(permit) => Ok(permit),
            Err(_) if path.starts_with(ADMIN_API) => self.reserved.clone().try_acquire_owned(),
            Err(error) => Err(error),
        };
        slot.map(Some).map_err(|_| {
            Error::Unavailable(format!(
                "the server is at its limit of {} calls in flight: retry with backoff",
                self.limits.max_calls
            ))
        })
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
        let mut inner = super::take_ready(&mut self.inner);
        let limits = &self.layer.limits;
        let path = request.uri().path();
        let refuse = |error: Error| -> Self::Future {
            Box::pin(std::future::ready(Ok(Status::from(error).into_http())))
        };
        let default = (!LONG_CALLS.contains(&path)).then_some(limits.default_timeout);
        let timeout = match client_timeout(request.headers()) {
            Ok(client) => [client.map(answer_in_time), default]
                .into_iter()
                .flatten()
                .min(),
            Err(error) => return refuse(error),
        };
        let started = Instant::now();
        // Calls anyone may make, without a credential, and calls refused,
        // keep no connection in place at the connection cap.
        let standing = request.extensions().get::<CallActivity>().cloned();
        let discount = move || {
            if let Some(standing) = &standing {
                standing.discount();
            }
        };
        if path == HEALTH_CHECK || is_open_stream(path) {
            discount();
        }
        // Held back, but heard well before the caller's deadline.
        let refusal_delay = timeout.map_or(limits.refusal_delay, |timeout| {
            limits.refusal_delay.min(timeout / 2)
        });
        let slot = match self.layer.slot(path) {
            Ok(slot) => slot,
            Err(error) => {
                discount();
                return Box::pin(async move {
                    tokio::time::sleep(refusal_delay).await;
                    Ok(Status::from(error).into_http())
                });
            }
        };
        let arrival = if path == UPLOAD {
            Arrival::Steady(limits.body_timeout)
        } else {
            Arrival::Whole(started + limits.body_timeout)
        };
        let max_message_bytes = limits.max_message_bytes;
        let body_timeout = limits.body_timeout;
        let request = request.map(|body| {
            Body::new(LimitedBody {
                inner: body,
                limit: max_message_bytes,
                prefix: [0; 5],
                prefix_len: 0,
                remaining: 0,
                arrival,
                timeout: body_timeout,
                late: None,
            })
        });
        let deadline = timeout.map(|timeout| Deadline::new(started + timeout));
        Box::pin(async move {
            let mut guard = ExpireOnDrop(deadline.clone());
            let response = match &deadline {
                None => inner.call(request).await,
                Some(deadline) => within(deadline, inner.call(request)).await,
            };
            // Answered: a stream goes on under the same deadline.
            guard.0 = None;
            let response = match response {
                Ok(response) if is_refusal(&response) => {
                    // Held back, without its slot: see `refusal_delay`.
                    drop(slot);
                    discount();
                    tokio::time::sleep(refusal_delay).await;
                    return Ok(response);
                }
                other => other,
            };
            response.map(|response| {
                let response = undecodable_is_invalid(response);
                match slot {
                    Some(slot) => response.map(|body| {
                        Body::new(Held {
                            inner: body,
                            _held: slot,
                        })
                    }),
                    None => response,
                }
            })
        })
    }
}

/// A call refused at admission (by its credential, or over its tenant's
/// limit): its whole answer is a status in the headers (trailers-only).
fn is_refusal(response: &Response<Body>) -> bool {
    use tonic::Code;
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<i32>().ok())
        .map(Code::from_i32);
    matches!(
        code,
        Some(
            Code::ResourceExhausted
                | Code::Unavailable
                | Code::Unauthenticated
                | Code::PermissionDenied
        )
    )
}

/// Whether `path` is a stream that stays open and needs no credential: a
/// health watch, or reflection.
pub fn is_open_stream(path: &str) -> bool {
    path == HEALTH_WATCH || path.starts_with(REFLECTION)
}

/// The server's deadline for a client's `timeout`: a little earlier, so
/// that the answer (and what it says of an operation under way) reaches the
/// client before the client's own deadline ends the call on its side.
fn answer_in_time(timeout: Duration) -> Duration {
    timeout - (timeout / 10).min(Duration::from_millis(100))
}

/// Runs a call under its deadline; when the deadline passes, answers as
/// [`Deadline::expire`] says the call stands.
async fn within<F, E>(deadline: &Arc<Deadline>, call: F) -> std::result::Result<Response<Body>, E>
where
    F: Future<Output = std::result::Result<Response<Body>, E>>,
{
    let call = crate::deadline::scope(Some(deadline.clone()), call);
    tokio::pin!(call);
    tokio::select! {
        biased;
        response = &mut call => return response,
        () = tokio::time::sleep_until(deadline.at()) => {}
    }
    let error = match deadline.expire() {
        Expiry::NothingDone => Error::DeadlineExceeded(
            "the call's deadline passed before it was done; nothing was changed".into(),
        ),
        Expiry::Committing => match tokio::time::timeout(COMMIT_GRACE, &mut call).await {
            Ok(response) => return response,
            Err(_) => Error::DeadlineExceeded(
                "the call's deadline passed while its change was being committed: it may have \
                 been made; read it back before retrying"
                    .into(),
            ),
        },
        Expiry::Operation(operation) => Error::OutcomeUnknown {
            operation,
            message: format!(
                "the call's deadline passed while operation {operation} was under way: it goes \
                 on, and how it ends is unknown to this call; look it up with GetOperation or in \
                 the audit trail, or retry the same call to hear its outcome"
            ),
        },
    };
    Ok(Status::from(error).into_http())
}

/// Expires a call's deadline if the call is dropped before it answered: its
/// client went away, and work it had not committed must not be done.
struct ExpireOnDrop(Option<Arc<Deadline>>);

impl Drop for ExpireOnDrop {
    fn drop(&mut self) {
        if let Some(deadline) = &self.0 {
            deadline.expire();
        }
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

/// How a request's body must arrive.
#[derive(Clone, Copy)]
enum Arrival {
    /// Whole, by this instant.
    Whole(Instant),
    /// With no pause longer than this between frames (an upload).
    Steady(Duration),
}

/// A request body that refuses a gRPC message longer than `limit` as soon as
/// the message's 5-byte prefix (compression flag, big-endian length) has
/// gone by, and a body that does not arrive in time. tonic's own limit
/// answers OUT_OF_RANGE; gRPC says RESOURCE_EXHAUSTED, which this error
/// becomes in tonic's decoder.
struct LimitedBody {
    inner: Body,
    limit: usize,
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
    arrival: Arrival,
    /// The setting behind `arrival`, for the message that says so.
    timeout: Duration,
    /// The timer of the next frame, while one is awaited.
    late: Option<Pin<Box<Sleep>>>,
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
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                let arrival = self.arrival;
                let late = self.late.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(match arrival {
                        Arrival::Whole(by) => by,
                        Arrival::Steady(pause) => Instant::now() + pause,
                    }))
                });
                ready!(late.as_mut().poll(cx));
                let within = match arrival {
                    Arrival::Whole(_) => "within",
                    Arrival::Steady(_) => "with no pause longer than",
                };
                return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                    "the request did not arrive {within} the {} ms the server waits for one \
                     (--request-body-timeout-ms): nothing was done",
                    self.timeout.as_millis()
                )))));
            }
        };
        if matches!(self.arrival, Arrival::Steady(_)) {
            self.late = None;
        }
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
            arrival: Arrival::Steady(Duration::from_secs(1)),
            timeout: Duration::from_secs(1),
            late: None,
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
