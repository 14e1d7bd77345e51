//! Accepted sockets before they are WebSocket sessions: counted from accept and given a
//! deadline.
//!
//! Every accepted TCP socket takes a socket slot at once (upgraded or not), bounded by
//! `MAX_CONNECTIONS` plus [`SOCKET_HEADROOM`]; past it new sockets are closed unanswered. A
//! socket must then complete each HTTP request within `HANDSHAKE_TIMEOUT_MS` of its start (or of
//! the previous response), or it is closed: half-sent upgrade requests, slow bodies and silent
//! connections cannot pile up. A socket upgraded to a WebSocket is disarmed; from then on the
//! session's idle timeout applies.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::extract::connect_info::Connected;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// Sockets allowed beyond `MAX_CONNECTIONS`, so that refusals (503 with the reference's body)
/// and health checks still get through when the sessions are full.
pub const SOCKET_HEADROOM: usize = 64;

/// Open files kept free of sockets: database connections, journal segments, logs.
pub const DESCRIPTOR_RESERVE: usize = 256;

/// Deadline value meaning "none" (an upgraded socket).
const DISARMED: u64 = u64::MAX;

/// Counts accepted sockets.
#[derive(Debug)]
pub struct Sockets {
    open: AtomicUsize,
    max: usize,
    timeout: Duration,
    /// Origin of the deadlines' millisecond clock.
    epoch: Instant,
}

impl Sockets {
    /// `max_connections` 0 means no limit but the process's open-file limit, of which
    /// [`DESCRIPTOR_RESERVE`] are always left for the database, the journal and logs.
    pub fn new(max_connections: usize, timeout: Duration) -> Arc<Sockets> {
        let by_setting = if max_connections == 0 {
            usize::MAX
        } else {
            max_connections.saturating_add(SOCKET_HEADROOM)
        };
        let by_descriptors = rlimit::Resource::NOFILE
            .get()
            .ok()
            .and_then(|(soft, _)| usize::try_from(soft).ok())
            .map_or(usize::MAX, |soft| soft.saturating_sub(DESCRIPTOR_RESERVE));
        if by_descriptors < by_setting && max_connections != 0 {
            tracing::warn!(
                max_connections,
                sockets = by_descriptors,
                "the open-file limit allows fewer sockets than MAX_CONNECTIONS"
            );
        }
        Arc::new(Sockets {
            open: AtomicUsize::new(0),
            max: by_setting.min(by_descriptors).max(1),
            timeout,
            epoch: Instant::now(),
        })
    }

    /// Sockets open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Guards a freshly accepted socket; `None` (the caller drops it) when too many are open.
    pub fn admit<T>(self: &Arc<Self>, io: T) -> Option<Guarded<T>> {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        if before >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(
                open = before,
                "closing accepted socket: socket limit reached"
            );
            return None;
        }
        let deadline = Arc::new(Deadline {
            at: AtomicU64::new(0),
            sockets: self.clone(),
        });
        deadline.arm();
        let first = deadline.instant().unwrap_or_else(Instant::now);
        Some(Guarded {
            io,
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(first)),
            slept_until: first,
        })
    }
}

/// A socket's deadline, shared between its stream and the requests it carries.
#[derive(Debug)]
pub struct Deadline {
    /// Milliseconds since the epoch of [`Sockets`], or [`DISARMED`].
    at: AtomicU64,
    sockets: Arc<Sockets>,
}

impl Deadline {
    /// Gives the socket `HANDSHAKE_TIMEOUT_MS` from now.
    fn arm(&self) {
        let at = self.sockets.epoch.elapsed() + self.sockets.timeout;
        let millis = u64::try_from(at.as_millis()).unwrap_or(DISARMED - 1);
        self.at.store(millis, Ordering::Relaxed);
    }

    /// No deadline any more (the socket became a WebSocket session).
    fn disarm(&self) {
        self.at.store(DISARMED, Ordering::Relaxed);
    }

    fn instant(&self) -> Option<Instant> {
        match self.at.load(Ordering::Relaxed) {
            DISARMED => None,
            millis => Some(self.sockets.epoch + Duration::from_millis(millis)),
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.sockets.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An accepted socket: reads fail with `TimedOut` once its deadline passed, which makes the
/// HTTP server close it.
#[derive(Debug)]
pub struct Guarded<T> {
    io: T,
    deadline: Arc<Deadline>,
    sleep: Pin<Box<Sleep>>,
    slept_until: Instant,
}

impl<T> Guarded<T> {
    /// The handle requests on this socket use to move its deadline.
    pub fn connection(&self) -> Connection {
        Connection(self.deadline.clone())
    }

    /// Whether the deadline passed (registers the timer's wake-up otherwise).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(at) = self.deadline.instant() else {
            return false;
        };
        if at != self.slept_until {
            self.sleep.as_mut().reset(at);
            self.slept_until = at;
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "HANDSHAKE_TIMEOUT_MS passed",
            )));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A plain TCP listener whose sockets are counted and guarded.
#[derive(Debug)]
pub struct GuardedListener {
    inner: TcpListener,
    sockets: Arc<Sockets>,
}

impl GuardedListener {
    /// Wraps `inner`.
    pub fn new(inner: TcpListener, sockets: Arc<Sockets>) -> GuardedListener {
        GuardedListener { inner, sockets }
    }
}

impl Listener for GuardedListener {
    type Io = Guarded<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            if let Some(guarded) = self.sockets.admit(stream) {
                return (guarded, peer);
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A request's handle on its socket's deadline (axum connect info).
#[derive(Debug, Clone)]
pub struct Connection(Arc<Deadline>);

impl Connected<IncomingStream<'_, GuardedListener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Connection {
        stream.io().connection()
    }
}

/// Middleware: a request gets `HANDSHAKE_TIMEOUT_MS` from its start to be read and answered,
/// the socket as long again after the response for the next request; an upgrade disarms it.
pub async fn request_deadline(request: Request, next: Next) -> Response {
    let connection = request
        .extensions()
        .get::<axum::extract::ConnectInfo<Connection>>()
        .map(|info| info.0.clone());
    if let Some(Connection(deadline)) = &connection {
        deadline.arm();
    }
    let response = next.run(request).await;
    if let Some(Connection(deadline)) = &connection {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            deadline.disarm();
        } else {
            deadline.arm();
        }
    }
    response
}
