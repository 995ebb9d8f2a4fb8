//! The server's connections: its own accept loop over hyper, for what a hostile network needs
//! and `axum::serve` does not give — a deadline for a request's headers (from their first
//! byte), idle keep-alive connections closed, a cap on open connections below the open-file
//! limit that closes the connection longest without a request to make room for a new one, and
//! a shutdown that waits for no client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// How long a client may take.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From a request's first byte to the end of its headers.
    pub header: Duration,
    /// From the end of a request's headers to the end of its body.
    pub body: Duration,
    /// A keep-alive connection without a request.
    pub idle: Duration,
}

/// One connection as the reaper and the cap see it.
struct Conn {
    /// Requests being answered; a streamed answer counts until its body ends.
    in_flight: AtomicUsize,
    /// When (milliseconds into the server's life) the connection last had no request: when it
    /// opened or its last answer ended.
    idle_since: AtomicU64,
    /// When the first byte of its next request came, or 0 before one has.
    first_byte: AtomicU64,
    /// Closes the connection, whatever it is doing.
    close: Notify,
}

/// Every open connection, and the rules they live by.
pub struct Connections {
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    max: usize,
    timeouts: Timeouts,
    epoch: Instant,
}

impl Connections {
    /// Room for `max` connections under `timeouts`.
    pub fn new(max: usize, timeouts: Timeouts) -> Arc<Self> {
        Arc::new(Connections {
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            max,
            timeouts,
            epoch: Instant::now(),
        })
    }

    /// Milliseconds since the server started, never 0 (0 means "not yet").
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.open().len()
    }

    /// A new connection's entry, after making room for it: at the cap, the connection longest
    /// without a request is closed. None when every connection is answering a request.
    fn admit(&self) -> Option<(u64, Arc<Conn>)> {
        let mut open = self.open();
        if open.len() >= self.max {
            let stalled = (open.iter())
                .filter(|(_, c)| c.in_flight.load(Ordering::SeqCst) == 0)
                .min_by_key(|(_, c)| c.idle_since.load(Ordering::SeqCst))
                .map(|(id, _)| *id)?;
            if let Some(victim) = open.remove(&stalled) {
                victim.close.notify_one();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now()),
            first_byte: AtomicU64::new(0),
            close: Notify::new(),
        });
        open.insert(id, conn.clone());
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        self.open().remove(&id);
    }

    /// Closes the connections whose headers take too long, and idle ones past their time.
    fn reap(&self) {
        let now = self.now();
        let late = |since: u64, limit: Duration| since != 0 && now - since > limit.as_millis() as u64;
        self.open().retain(|_, c| {
            if c.in_flight.load(Ordering::SeqCst) > 0 {
                return true;
            }
            let first = c.first_byte.load(Ordering::SeqCst);
            let over = match first {
                0 => late(c.idle_since.load(Ordering::SeqCst), self.timeouts.idle),
                _ => late(first, self.timeouts.header),
            };
            if over {
                c.close.notify_one();
            }
            !over
        });
    }
}

/// A request being answered on a connection: counted until its answer's body is dropped.
struct InFlight {
    conn: Arc<Conn>,
    connections: Arc<Connections>,
}

impl InFlight {
    fn start(conn: &Arc<Conn>, connections: &Arc<Connections>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        conn.first_byte.store(0, Ordering::SeqCst);
        InFlight { conn: conn.clone(), connections: connections.clone() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.idle_since.store(self.connections.now(), Ordering::SeqCst);
        self.conn.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An answer's body that keeps its request counted as in flight until it is done.
struct Tracked {
    body: Body,
    _request: InFlight,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A socket that notes when a request's first byte arrives.
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
    connections: Arc<Connections>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let c = &self.conn;
        if buf.filled().len() > before && c.in_flight.load(Ordering::SeqCst) == 0 {
            let now = self.connections.now();
            let _ = c.first_byte.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts connections until `stop` turns true, each served on a task of its own; then asks
/// every connection to finish its answer and close.
pub async fn accept(
    listener: TcpListener,
    router: Router,
    connections: Arc<Connections>,
    stop: watch::Receiver<bool>,
) {
    let reaper = {
        let connections = connections.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                connections.reap();
            }
        })
    };
    let mut stopping = stop.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(_) => {
                // Out of file descriptors or a connection reset before it was taken: wait a
                // moment rather than spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some((id, conn)) = connections.admit() else { continue }; // every connection is busy
        let (router, connections, stop) = (router.clone(), connections.clone(), stop.clone());
        tokio::spawn(async move {
            serve(stream, peer, &conn, router, &connections, stop).await;
            connections.remove(id);
        });
    }
    reaper.abort();
}

/// One connection: HTTP/1.1 requests through `router` until the client closes, the reaper or
/// the cap closes it, or the server stops (then the answer in progress ends first).
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    conn: &Arc<Conn>,
    router: Router,
    connections: &Arc<Connections>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(Watched { stream, conn: conn.clone(), connections: connections.clone() });
    let (service_conn, service_connections) = (conn.clone(), connections.clone());
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let in_flight = InFlight::start(&service_conn, &service_connections);
        request.extensions_mut().insert(ConnectInfo(peer));
        let answer = router.clone().oneshot(request.map(Body::new));
        async move {
            let response = answer.await.unwrap_or_else(|never: Infallible| match never {});
            Ok::<_, Infallible>(response.map(|body| Body::new(Tracked { body, _request: in_flight })))
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // The reaper keeps the header deadline (from the first byte, which hyper's own does not).
    http.timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
    let connection = http.serve_connection(io, service);
    tokio::pin!(connection);
    let mut asked_to_stop = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = conn.close.notified() => return,
            _ = stop.wait_for(|stop| *stop), if !asked_to_stop => {
                asked_to_stop = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}
