//! The HTTP server: an accept loop over hyper instead of `axum::serve`, because the
//! gateway faces clients it cannot trust and `axum::serve` bounds neither how long a
//! client may take to send its headers nor how many connections it may hold open.
//!
//! - **Header timeout**: a connection that has not sent a complete request head within
//!   `header_timeout` is closed (slowloris). hyper starts that clock whenever it waits for
//!   a request head, so it also bounds how long a keep-alive connection may sit idle.
//! - **Connection cap**: at `max_connections` open connections the loop stops accepting;
//!   new clients wait in the kernel's backlog until a connection closes.
//! - **Request timeout** ([`request_timeout`]): a middleware, not part of the loop, so
//!   long-lived routes (long-poll, SSE, WebSocket) can be left out of it.
//! - **Graceful shutdown**: on `shutdown` the loop stops accepting, every connection
//!   finishes its in-flight request and closes, and whatever is still open after
//!   `shutdown_grace` is dropped.
//!
//! - **Lingering close**: when the gateway closes a connection whose client is still
//!   sending (a `413` for a body over the limit, a `408`), it first stops writing and
//!   reads what is still in flight for a moment; closing at once would reset the
//!   connection and the client would likely lose the answer it was sent.
//!
//! Connections speak HTTP/1.1 only: HTTP/2 without TLS (prior knowledge) needs a version
//! sniff that hyper does with no timeout at all, and clients reach the gateway over
//! HTTP/1.1 or through a proxy that terminates HTTP/2.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::error::ApiError;

/// Connections the kernel completes and queues while the loop is at its cap or busy
/// (capped by `net.core.somaxconn`). The standard library's 128 is easily overrun by a
/// burst, and a client whose handshake is dropped from a full queue hangs for seconds.
pub const LISTEN_BACKLOG: u32 = 1024;

/// How long a closing connection keeps reading (and discarding) what its client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// Binds `addr` with [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What the accept loop enforces (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `shutdown`, then drains connections (see module docs).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let connections = TaskTracker::new();
    // Cancelled when the grace period is over: every connection still open is dropped.
    let abandon = CancellationToken::new();

    loop {
        // Waiting for a permit before accepting is what leaves clients over the cap in
        // the backlog instead of accepting and then closing them.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning,
                    // and let open connections finish to free some.
                    tracing::error!(error = %e, "Could not accept a connection; retrying in 1 s.");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        let connection = serve_connection(
            builder.clone(),
            stream,
            app.clone(),
            shutdown.clone(),
            abandon.clone(),
        );
        connections.spawn(async move {
            connection.await;
            drop(permit);
        });
    }
    drop(listener);

    connections.close();
    let open = connections.len();
    if open > 0 {
        tracing::info!(
            open,
            grace_secs = limits.shutdown_grace.as_secs_f64(),
            "Finishing in-flight requests."
        );
    }
    if tokio::time::timeout(limits.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "Closing connections still open at the end of the shutdown grace period."
        );
        abandon.cancel();
        connections.wait().await;
    }
}

async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    app: Router,
    shutdown: CancellationToken,
    abandon: CancellationToken,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "Could not set TCP_NODELAY.");
    }
    let service = TowerToHyperService::new(
        app.map_request(|request: axum::http::Request<Incoming>| request.map(Body::new)),
    );
    // `with_upgrades` so WebSocket routes work; an upgraded connection leaves this task
    // (and the connection cap) and must watch the shutdown token itself.
    let connection = builder
        .serve_connection(TokioIo::new(Lingering::new(stream)), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            // Finish the request in flight (if any), then close.
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                () = abandon.cancelled() => return,
            }
        }
    };
    if let Err(e) = result {
        // Header timeouts, resets and malformed requests: the client's business.
        tracing::debug!(error = %e, "Connection ended with an error.");
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Middleware: a request that takes longer than the limit gets a problem+json answer.
/// If the client had not even finished sending its body that is its fault (`408`, and
/// the connection is closed); otherwise the gateway was too slow (`503`, retry).
///
/// Dropping the handler mid-way is safe for the same reason a client disconnect is: a
/// submission either certainly stored nothing or keeps its id/key claim for the retry.
pub async fn request_timeout(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    // A multipart submit carries its file: it takes as long as its bytes do, like
    // `POST /v1/blobs` (connections stay bounded by JETJOBS_MAX_CONNECTIONS).
    if crate::multipart::is_multipart(request.headers()) {
        return next.run(request).await;
    }
    let body_done = Arc::new(AtomicBool::new(request.body().is_end_stream()));
    let request = request.map(|body| {
        Body::new(Watched {
            inner: body,
            done: body_done.clone(),
        })
    });
    let Ok(response) = tokio::time::timeout(limit, next.run(request)).await else {
        let secs = limit.as_secs_f64();
        if body_done.load(Ordering::Acquire) {
            return ApiError::unavailable(
                format!(
                    "the gateway could not answer within {secs} s; retry (with an \
                     Idempotency-Key, or PUT with your own id, a retried submission cannot \
                     create a second job)"
                ),
                1,
            )
            .into_response();
        }
        let mut response = ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            format!("the request body did not arrive within {secs} s"),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    };
    response
}

/// A TCP stream whose shutdown lingers: hyper calls `poll_shutdown` when it is done with
/// a connection, and this sends FIN, then reads and discards until the client closes too
/// or [`LINGER`] has passed. (Connections ended by an error, like a header timeout, are
/// dropped without it.)
struct Lingering {
    inner: TcpStream,
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Lingering {
    fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            linger: None,
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let linger = match &mut this.linger {
            Some(linger) => linger,
            None => {
                if let Err(e) = std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx)) {
                    return Poll::Ready(Err(e));
                }
                this.linger.insert(Box::pin(tokio::time::sleep(LINGER)))
            }
        };
        if linger.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        let mut scratch = [0u8; 8192];
        // A budget, so a fast sender cannot keep this task from yielding.
        for _ in 0..64 {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A request body that records when it has been read to the end.
struct Watched {
    inner: Body,
    done: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.done.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.done.store(true, Ordering::Release);
        }
        end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

    async fn start(limits: Limits, app: Router) -> (std::net::SocketAddr, CancellationToken) {
        let listener = bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, app, limits, shutdown.clone()));
        (addr, shutdown)
    }

    fn limits() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            max_connections: 100,
            shutdown_grace: Duration::from_secs(5),
        }
    }

    /// Reads until the peer closes; `None` if it does not within `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        let mut seen = Vec::new();
        let read = async {
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(within, read).await.ok().map(|()| seen)
    }

    #[tokio::test]
    async fn a_connection_without_a_complete_head_is_closed() {
        let app = Router::new().route("/", get(|| async { "ok" }));
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            ..limits()
        };
        let (addr, _shutdown) = start(limits, app).await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut partial = TcpStream::connect(addr).await.expect("connect");
        partial.write_all(b"GET / HTT").await.expect("write");
        assert!(
            closed_within(&mut silent, Duration::from_secs(5))
                .await
                .is_some()
        );
        assert!(
            closed_within(&mut partial, Duration::from_secs(5))
                .await
                .is_some()
        );

        // An idle keep-alive connection is closed the same way, after its answer.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        idle.write_all(GET).await.expect("write");
        let seen = closed_within(&mut idle, Duration::from_secs(5))
            .await
            .expect("the idle connection is closed");
        assert!(seen.starts_with(b"HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn over_the_cap_a_client_waits_until_a_connection_closes() {
        let app = Router::new().route("/", get(|| async { "ok" }));
        let limits = Limits {
            max_connections: 2,
            ..limits()
        };
        let (addr, _shutdown) = start(limits, app).await;
        let first = TcpStream::connect(addr).await.expect("connect");
        let _second = TcpStream::connect(addr).await.expect("connect");
        // The kernel completes the handshake; the server does not accept it yet.
        let mut third = TcpStream::connect(addr).await.expect("connect");
        third.write_all(GET).await.expect("write");
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
        assert!(early.is_err(), "no answer while two connections are open");
        drop(first);
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("answered once a connection closed")
            .expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn shutdown_lets_the_request_in_flight_finish_and_closes_idle_connections() {
        let app = Router::new().route(
            "/",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "done"
            }),
        );
        let (addr, shutdown) = start(limits(), app).await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let mut busy = TcpStream::connect(addr).await.expect("connect");
        busy.write_all(GET).await.expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        let seen = closed_within(&mut busy, Duration::from_secs(5))
            .await
            .expect("closed after its answer");
        assert!(seen.starts_with(b"HTTP/1.1 200"), "{seen:?}");
        assert!(
            String::from_utf8_lossy(&seen).ends_with("done"),
            "the whole answer"
        );
        assert!(
            closed_within(&mut idle, Duration::from_secs(5))
                .await
                .is_some()
        );
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer accepting"
        );
    }

    #[tokio::test]
    async fn shutdown_drops_what_outlives_the_grace_period() {
        let app = Router::new().route(
            "/",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "never"
            }),
        );
        let limits = Limits {
            shutdown_grace: Duration::from_millis(200),
            ..limits()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, app, limits, shutdown.clone()));
        let mut stuck = TcpStream::connect(addr).await.expect("connect");
        stuck.write_all(GET).await.expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns after the grace period")
            .expect("serve task");
        assert!(
            closed_within(&mut stuck, Duration::from_secs(5))
                .await
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_slow_handler_is_a_503_and_a_slow_body_a_408() {
        let app = Router::new()
            .route(
                "/",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "never"
                })
                .post(|body: Bytes| async move { body }),
            )
            .layer(axum::middleware::from_fn_with_state(
                Duration::from_millis(300),
                request_timeout,
            ));
        let (addr, _shutdown) = start(limits(), app).await;

        let mut buf = vec![0u8; 4096];
        let mut slow_handler = TcpStream::connect(addr).await.expect("connect");
        slow_handler.write_all(GET).await.expect("write");
        let n = tokio::time::timeout(Duration::from_secs(5), slow_handler.read(&mut buf))
            .await
            .expect("answered")
            .expect("read");
        let text = String::from_utf8_lossy(&buf[..n]).to_lowercase();
        assert!(text.starts_with("http/1.1 503"), "{text}");
        assert!(text.contains("application/problem+json"), "{text}");
        assert!(text.contains("retry-after: 1"), "{text}");

        let mut slow_body = TcpStream::connect(addr).await.expect("connect");
        slow_body
            .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
            .await
            .expect("write");
        let seen = closed_within(&mut slow_body, Duration::from_secs(5))
            .await
            .expect("closed after the 408");
        let text = String::from_utf8_lossy(&seen).to_lowercase();
        assert!(text.starts_with("http/1.1 408"), "{text}");
        assert!(text.contains("application/problem+json"), "{text}");
    }
}
