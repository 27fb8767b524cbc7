//! The HTTP/2 front end: accepting connections and serving calls on them,
//! with every resource a client without any credential could take bounded.
//!
//! - **A connection cap.** At most `max_connections` connections are open,
//!   so that connections can never take the file descriptors the tenants'
//!   databases need (start-up checks that both fit the process's limit). At
//!   the cap a new connection displaces one that has not finished its
//!   handshake or has been idle longest; with none of those, it is closed as
//!   soon as it is accepted.
//! - **Accept errors back off.** When `accept` fails for lack of
//!   descriptors or memory, the loop waits (10 ms, doubling to 1 s) instead
//!   of spinning on the error.
//! - **Handshakes and idle connections time out.** A connection that has
//!   not sent the HTTP/2 preface and its first frame within
//!   `handshake_timeout` is closed; one with no call open for
//!   `idle_timeout` is told to go away (GOAWAY) and closed. Keep-alive
//!   pings close connections whose peer no longer answers.
//! - **Streams per connection are bounded** in the SETTINGS the server
//!   advertises (`max_concurrent_streams`): a client cannot open more, and
//!   h2 refuses extra streams before any task is spawned for them. Header
//!   blocks are bounded too.
//!
//! Refused connections and accept errors are counted in the
//! [`crate::transport::log_summary`], never logged one by one. At shutdown the
//! listener is closed first, then every connection is asked to finish
//! (GOAWAY: calls in flight go on, no new ones start), and after the grace
//! period whatever is left is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tonic::body::Body;
use tower::{Service, ServiceExt};

use crate::transport::log_summary::{Subject, Summaries};

/// The client's connection preface (24 bytes) and the header of its first
/// frame, its SETTINGS (9 bytes): what a connection must send before
/// `handshake_timeout`.
const HANDSHAKE_BYTES: u64 = 24 + 9;
/// How often a connection checks its timeouts.
const TICK: Duration = Duration::from_millis(250);

/// How connections are accepted and served.
#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_streams_per_connection: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_list_bytes: u32,
}

/// The address a call came from, in its request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// Takes connections off a listener, backing off when accept fails for
/// lack of descriptors or memory instead of spinning on the error. Shared by
/// the gRPC listener and the metrics listener; each caps its connections.
pub struct Acceptor {
    listener: TcpListener,
    summaries: Arc<Summaries>,
    what: &'static str,
    backoff: Duration,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const LAST_BACKOFF: Duration = Duration::from_secs(1);

impl Acceptor {
    /// `what` names the connections in summaries, such as "refused connection".
    pub fn new(listener: TcpListener, summaries: Arc<Summaries>, what: &'static str) -> Self {
        Acceptor {
            listener,
            summaries,
            what,
            backoff: FIRST_BACKOFF,
        }
    }

    /// The next connection. Cancel-safe.
    pub async fn next(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    self.backoff = FIRST_BACKOFF;
                    return accepted;
                }
                Err(error) if is_resource_error(&error) => {
                    self.summaries
                        .count(self.what, "ACCEPT_FAILED", Subject::Unknown);
                    tracing::debug!(%error, backoff = ?self.backoff, "accept failed; backing off");
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(LAST_BACKOFF);
                }
                // A connection that went away before it was accepted.
                Err(error) => tracing::debug!(%error, "accept failed"),
            }
        }
    }

    /// Counts a connection closed at once for lack of room.
    pub fn refused(&self, peer: SocketAddr) {
        self.summaries
            .count(self.what, "TOO_MANY_CONNECTIONS", Subject::Peer(peer.ip()));
    }
}

/// Out of descriptors, buffers or memory: waiting helps, retrying at once
/// does not.
fn is_resource_error(error: &std::io::Error) -> bool {
    const RESOURCE: [i32; 4] = [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM];
    error
        .raw_os_error()
        .is_some_and(|code| RESOURCE.contains(&code))
}

/// How long a new connection may wait for one told to make room to go.
const ROOM_WAIT: Duration = Duration::from_millis(200);
/// How long a connection told to go may take to close on its own, when no
/// call that counts keeps it: less than [`ROOM_WAIT`], so that the newcomer
/// it makes room for gets in.
const LEAVE_GRACE: Duration = Duration::from_millis(100);

/// Serves gRPC over HTTP/2 on `listener` until `shutdown` completes, then
/// drains the connections for at most `grace`; false if calls were still in
/// flight then.
///
/// At the connection cap, a new connection takes the place of the least
/// useful open one, if there is one: the oldest that has not finished its
/// handshake, else the one idle longest (no call open). Only when every
/// connection is busy is the new one refused. So a flood of connections that
/// never send anything, or send nothing more, cannot keep working clients
/// out; it only displaces itself.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    settings: ConnectionSettings,
    summaries: Arc<Summaries>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> bool
where
    S: Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_streams_per_connection)
        .max_header_list_size(settings.max_header_list_bytes)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    let builder = Arc::new(builder);
    let mut acceptor = Acceptor::new(listener, summaries, "refused connection");
    let open = Arc::new(Open::default());
    let max = settings.max_connections.max(1);
    let (drain, draining) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = acceptor.next() => accepted,
        };
        if open.len() >= max && !(open.make_room() && open.wait_below(max, ROOM_WAIT).await) {
            // Closed at once: the client hears it and may retry.
            drop(stream);
            acceptor.refused(peer);
            continue;
        }
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "setting TCP_NODELAY");
        }
        let connection = open.add();
        tokio::spawn(serve_connection(
            stream,
            peer,
            connection,
            service.clone(),
            builder.clone(),
            settings.clone(),
            draining.clone(),
        ));
    }
    // No new connections: the listener closes with the acceptor.
    drop(acceptor);
    let _ = drain.send(true);
    if open.wait_below(1, grace).await {
        return true;
    }
    tracing::warn!(
        ?grace,
        "calls still in flight after the grace period: stopping anyway"
    );
    open.close_all();
    open.wait_below(1, ROOM_WAIT).await;
    false
}

/// The connections being served.
#[derive(Default)]
struct Open {
    entries: std::sync::Mutex<std::collections::HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    /// Notified whenever a connection ends.
    left: tokio::sync::Notify,
}

/// One connection being served, as the others see it.
struct Connection {
    id: u64,
    began: Instant,
    activity: Activity,
    /// Told when the connection must go: at once if it has not finished
    /// its handshake, else after its calls (GOAWAY).
    leave: tokio::sync::Notify,
}

impl Connection {
    fn handshaken(&self) -> bool {
        self.activity.bytes_read.load(Ordering::Relaxed) >= HANDSHAKE_BYTES
    }

    /// How long it has had no call open, if none is open.
    fn idle_for(&self) -> Option<Duration> {
        if self.activity.open_calls.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.since_last_call())
    }

    fn since_last_call(&self) -> Duration {
        let last = Duration::from_millis(self.activity.last_call_end_ms.load(Ordering::Relaxed));
        self.began.elapsed().saturating_sub(last)
    }

    /// Whether a call that counts is open on it: one that carries a
    /// credential and was not refused.
    fn busy(&self) -> bool {
        self.activity.busy_calls.load(Ordering::Relaxed) > 0
    }
}

impl Open {
    fn len(&self) -> usize {
        self.entries.lock().expect("never poisoned").len()
    }

    fn add(self: &Arc<Self>) -> Registered {
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            began: Instant::now(),
            activity: Activity::default(),
            leave: tokio::sync::Notify::new(),
        });
        self.entries
            .lock()
            .expect("never poisoned")
            .insert(connection.id, connection.clone());
        Registered {
            open: self.clone(),
            connection,
        }
    }

    /// Tells the least useful connection to go; false if every one is busy.
    /// The least useful: one that has not finished its handshake, then one
    /// without calls (the longest idle first), then one whose calls do not
    /// count (health, reflection, refusals): anyone can open those, so
    /// they keep no connection in place.
    fn make_room(&self) -> bool {
        let entries = self.entries.lock().expect("never poisoned");
        let unfinished = entries
            .values()
            .filter(|c| !c.handshaken())
            .min_by_key(|c| c.began);
        let victim = unfinished.or_else(|| {
            entries
                .values()
                .filter(|c| !c.busy())
                .max_by_key(|c| (c.idle_for().is_some(), c.since_last_call()))
        });
        match victim {
            Some(connection) => {
                connection.leave.notify_one();
                true
            }
            None => false,
        }
    }

    /// Waits until fewer than `count` connections are open, for at most
    /// `within`; whether that happened.
    async fn wait_below(&self, count: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = self.left.notified();
            if self.len() < count {
                return true;
            }
            if tokio::time::timeout_at(deadline, left).await.is_err() {
                return self.len() < count;
            }
        }
    }

    fn close_all(&self) {
        for connection in self.entries.lock().expect("never poisoned").values() {
            connection.activity.closing.store(true, Ordering::Relaxed);
            connection.leave.notify_one();
        }
    }
}

/// A connection's place among the open ones, given up when it ends.
struct Registered {
    open: Arc<Open>,
    connection: Arc<Connection>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open
            .entries
            .lock()
            .expect("never poisoned")
            .remove(&self.connection.id);
        self.open.left.notify_waiters();
    }
}

/// What one connection has been doing: for its timeouts, and to choose
/// which one makes room.
#[derive(Default)]
struct Activity {
    bytes_read: AtomicU64,
    open_calls: AtomicUsize,
    /// The open calls that count (see [`CallActivity`]).
    busy_calls: AtomicUsize,
    /// When the last call ended, in milliseconds since the connection began.
    last_call_end_ms: AtomicU64,
    /// Set when the connection must close now, calls or not.
    closing: std::sync::atomic::AtomicBool,
}

async fn serve_connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    registered: Registered,
    service: S,
    builder: Arc<hyper::server::conn::http2::Builder<TokioExecutor>>,
    settings: ConnectionSettings,
    mut draining: tokio::sync::watch::Receiver<bool>,
) where
    S: Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let this = registered.connection.clone();
    let io = TokioIo::new(Counted {
        inner: stream,
        connection: this.clone(),
    });
    let calls = Calls {
        inner: service,
        peer,
        connection: this.clone(),
    };
    let connection = builder.serve_connection(io, calls);
    tokio::pin!(connection);
    let mut ticks = tokio::time::interval(TICK);
    let mut going_away = false;
    // When a connection told to go that has no call that counts is closed,
    // whether or not its peer answers the GOAWAY's ping.
    let mut cut_at: Option<tokio::time::Instant> = None;
    let cut = || Some(tokio::time::Instant::now() + LEAVE_GRACE);
    loop {
        tokio::select! {
            served = &mut connection => {
                if let Err(error) = served {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            _ = ticks.tick() => {
                if !this.handshaken() && this.began.elapsed() >= settings.handshake_timeout {
                    tracing::debug!(%peer, "closing a connection that did not complete its handshake");
                    return;
                }
                if !going_away && this.idle_for().is_some_and(|idle| idle >= settings.idle_timeout) {
                    tracing::debug!(%peer, "closing an idle connection");
                    going_away = true;
                    cut_at = cut();
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = this.leave.notified() => {
                // Calls that do not count (a health watch, a request that
                // never ends) would keep it open past a GOAWAY: it closes.
                if !this.handshaken()
                    || this.activity.closing.load(Ordering::Relaxed)
                    || (!this.busy() && this.idle_for().is_none())
                {
                    return;
                }
                if !going_away {
                    going_away = true;
                    connection.as_mut().graceful_shutdown();
                }
                if !this.busy() {
                    cut_at = cut();
                }
            }
            () = sleep_until_some(cut_at) => {
                // A peer that does not answer keeps no idle connection open
                // (a call that counts, opened meanwhile, finishes first).
                if !this.busy() {
                    tracing::debug!(%peer, "closing a connection that did not leave when told");
                    return;
                }
                cut_at = None;
            }
            changed = draining.changed(), if !going_away => {
                if changed.is_err() || *draining.borrow() {
                    going_away = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A connection's socket, counting the bytes read from it.
struct Counted {
    inner: TcpStream,
    connection: Arc<Connection>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = (buf.filled().len() - before) as u64;
        self.connection
            .activity
            .bytes_read
            .fetch_add(read, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The calls of one connection: each is handed to the server's service
/// with its peer address, and counted until its response body is done.
#[derive(Clone)]
struct Calls<S> {
    inner: S,
    peer: SocketAddr,
    connection: Arc<Connection>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> hyper::service::Service<Request<Incoming>> for Calls<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Response<Body>, std::convert::Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(Peer(self.peer));
        let activity = &self.connection.activity;
        activity.open_calls.fetch_add(1, Ordering::Relaxed);
        activity.busy_calls.fetch_add(1, Ordering::Relaxed);
        let standing = CallActivity(Arc::new(Standing {
            connection: self.connection.clone(),
            counts: AtomicBool::new(true),
        }));
        request.extensions_mut().insert(standing.clone());
        let open = OpenCall { standing };
        let called = self.inner.clone().oneshot(request);
        Box::pin(async move {
            let response = called.await?;
            Ok(response.map(|body| {
                Body::new(Held {
                    inner: body,
                    _held: open,
                })
            }))
        })
    }
}

/// A call's standing on its connection, in the call's extensions: a call
/// counts (keeps its connection from being displaced when the server is at
/// its connection cap) until a layer says it does not, for a call that
/// needs no credential or was refused.
#[derive(Clone)]
pub struct CallActivity(Arc<Standing>);

struct Standing {
    connection: Arc<Connection>,
    counts: AtomicBool,
}

impl CallActivity {
    /// From now on the call does not count.
    pub fn discount(&self) {
        if self.0.counts.swap(false, Ordering::Relaxed) {
            self.0
                .connection
                .activity
                .busy_calls
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One call counted as open on its connection until dropped.
struct OpenCall {
    standing: CallActivity,
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.standing.discount();
        let connection = &self.standing.0.connection;
        let activity = &connection.activity;
        let now = connection.began.elapsed().as_millis() as u64;
        activity.last_call_end_ms.fetch_max(now, Ordering::Relaxed);
        activity.open_calls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps something alive (a count, a permit) until the
/// body is done with: its last frame sent, or the call abandoned.
pub struct Held<T> {
    pub inner: Body,
    pub _held: T,
}

impl<T: Send + Unpin + 'static> http_body::Body for Held<T> {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
