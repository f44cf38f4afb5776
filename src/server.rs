//! The HTTP listener: accepts connections and serves the API on each, with the limits
//! that keep idle and half-open sockets from exhausting file descriptors.
//!
//! - A request head must arrive whole within `server.header_read_timeout` of its first
//!   byte, and a new connection must send one within that long: slow and half-open
//!   clients are closed.
//! - A connection with no request in progress and no bytes either way for
//!   `server.idle_timeout` is closed (keep-alive included). Streams stay open: their
//!   keep-alive comments are traffic.
//! - At most `server.max_connections` are open at once; past that a new connection is
//!   closed at once and a warning says which setting to raise.
//!
//! axum's own `serve` has none of these knobs, so the accept loop is ours, on
//! hyper-util's connection builder.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::ServerSettings;

/// The connection limits, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn from_settings(s: &ServerSettings) -> Limits {
        Limits {
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            max_connections: s.max_connections,
        }
    }
}

/// Raises the soft limit on open files to the hard limit, so the connection cap, not
/// the kernel, decides when to refuse (the soft default is often 1,024).
pub fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit raised to the hard limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Serves `router` on `listener` until `shutdown`; then stops accepting, lets every
/// connection finish the request it is serving, and returns once they are all closed.
/// The caller bounds that wait.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own header timeout would also run between keep-alive requests and cut
    // every idle connection at it; ours (below) tells a head in progress from idling.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let mut refused = Throttled::new(Duration::from_secs(10));
    let mut accept_errors = Throttled::new(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (stream, _peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of descriptors (EMFILE) or a connection reset before accept: wait
                // a moment rather than spin, then go on.
                if let Some(skipped) = accept_errors.due() {
                    tracing::error!(error = %e, skipped, "cannot accept a connection");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if let Some(skipped) = refused.due() {
                tracing::warn!(
                    limit = limits.max_connections,
                    refused_since_last_warning = skipped,
                    "connection refused: server.max_connections open connections reached \
                     (raise server.max_connections, or find who holds them open)"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let router = router.clone();
        let stop = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, router, builder, limits, stop).await;
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One connection, until the peer closes it, it stays idle too long, or shutdown.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Metered {
        inner: stream,
        activity: activity.clone(),
    });
    let in_service = activity.clone();
    let service = TowerToHyperService::new(tower::service_fn(
        move |mut request: axum::http::Request<Incoming>| {
            let busy = in_service.begin();
            // `/v1/accounts/{account}/…` is served by the unscoped route for that account.
            crate::api::scope_account(&mut request);
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(Body::new)).await;
                drop(busy);
                response
            }
        },
    ));
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = activity.deadline(limits);
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = sleep_until(deadline) => {
                if activity.expired(limits) {
                    // Nothing in progress: dropping the connection closes the socket.
                    break;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// What a connection has been doing, for the idle and header-read timeouts.
struct Activity {
    opened: Instant,
    /// Milliseconds after `opened` of the last byte read or written.
    last: AtomicU64,
    /// Requests being served now.
    busy: AtomicUsize,
    /// Requests seen at all.
    requests: AtomicU64,
    /// Milliseconds after `opened`, plus one, of the first byte of a request head not
    /// yet complete; 0 when none is arriving.
    head_since: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes came in: between requests, they start a request head.
    fn read(&self) {
        self.touch();
        if self.busy.load(Ordering::Relaxed) == 0 && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// When this connection is to be closed unless something happens first: a head in
    /// progress gets the header-read timeout from its first byte; a new connection the
    /// same from its opening; a connection between requests the idle timeout from its
    /// last byte; one serving a request never (the request timeout bounds that).
    fn close_at(&self, limits: Limits) -> Option<u64> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let head = self.head_since.load(Ordering::Relaxed);
        let header = limits.header_read_timeout.as_millis() as u64;
        if head > 0 {
            return Some(head - 1 + header);
        }
        let last = self.last.load(Ordering::Relaxed);
        if self.requests.load(Ordering::Relaxed) == 0 {
            Some(last + header)
        } else {
            Some(last + limits.idle_timeout.as_millis() as u64)
        }
    }

    fn deadline(&self, limits: Limits) -> Option<Instant> {
        // While busy, look again now and then: the request may end at any time.
        let at = self
            .close_at(limits)
            .unwrap_or(self.now_ms() + limits.idle_timeout.as_millis() as u64);
        let at = self.opened + Duration::from_millis(at);
        Some(at.max(Instant::now() + Duration::from_millis(10)))
    }

    fn expired(&self, limits: Limits) -> bool {
        self.close_at(limits).is_some_and(|at| self.now_ms() >= at)
    }
}

/// A request in progress on a connection.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that notes when bytes go through it.
struct Metered {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        result
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A warning that repeats at most once per period, counting what it left unsaid.
struct Throttled {
    period: Duration,
    last: Option<Instant>,
    skipped: u64,
}

impl Throttled {
    fn new(period: Duration) -> Throttled {
        Throttled {
            period,
            last: None,
            skipped: 0,
        }
    }

    /// `Some(how many were skipped)` when it is time to say it again.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.period)
        {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}
