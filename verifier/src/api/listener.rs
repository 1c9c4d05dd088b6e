//! The HTTP listeners: `verifier.http` (health, readiness, metrics; plaintext) and
//! `verifier.admin` (the admin API; over TLS with `verifier.tls`). HTTP/1.1 only, with
//! deadlines, so no client holds a connection by being slow:
//! - the TLS handshake must end within [`Limits::handshake`];
//! - a request's headers must arrive within [`Limits::read`] (an idle keep-alive connection is
//!   closed after as long);
//! - its body too, else `408` and the connection is closed;
//! - a body announced (`Content-Length`) over [`Limits::max_body`] gets `413` at once, before a
//!   byte of it is read, and the connection is closed; a chunked one as soon as it passes the
//!   limit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Headers, and then the body, must arrive within this long.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body (the admin API's routes are far smaller).
pub const MAX_BODY: usize = 64 * 1024;
/// Open requests get this long to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub read: Duration,
    pub handshake: Duration,
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            read: READ_TIMEOUT,
            handshake: crate::config::tls::HANDSHAKE_TIMEOUT,
            max_body: MAX_BODY,
        }
    }
}

/// An answer that ends the connection: the rest of what the client sends is not read.
fn closing(code: StatusCode, error: &str) -> Response {
    let mut r = (code, Json(json!({ "error": error }))).into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Reads the whole body within the deadline and under the size limit before the router sees the
/// request.
async fn read_body(limits: Limits, request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > limits.max_body as u64) {
        return closing(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    }
    let (parts, body) = request.into_parts();
    let limited = http_body_util::Limited::new(body, limits.max_body);
    match tokio::time::timeout(limits.read, limited.collect()).await {
        Err(_) => closing(StatusCode::REQUEST_TIMEOUT, "body_timeout"),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            closing(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
        }
        Ok(Err(_)) => closing(StatusCode::BAD_REQUEST, "body_unreadable"),
        Ok(Ok(collected)) => {
            let request = Request::from_parts(parts, Body::from(collected.to_bytes()));
            next.run(request).await
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, over TLS when `tls` is set.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, tls, Limits::default(), shutdown).await
}

pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::from_fn(move |r: Request, n: Next| {
        read_body(limits, r, n)
    }));
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(
            router
                .clone()
                .map_request(|r: Request<hyper::body::Incoming>| r.map(Body::new)),
        );
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.read)
                .keep_alive(true);
            let result = match acceptor {
                None => {
                    let conn = http.serve_connection(TokioIo::new(tcp), service);
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let conn = http.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(conn).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after {DRAIN:?} at shutdown; dropped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const QUICK: Limits = Limits {
        read: Duration::from_millis(400),
        handshake: Duration::from_millis(400),
        max_body: 1024,
    };

    async fn start(limits: Limits) -> std::net::SocketAddr {
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/echo", post(|body: axum::body::Bytes| async move { body }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve_with(
            listener,
            router,
            None,
            limits,
            std::future::pending(),
        ));
        addr
    }

    /// Everything the server sends until it closes the connection, or `None` if it is still
    /// open after `within`.
    async fn until_closed(s: &mut TcpStream, within: Duration) -> Option<String> {
        let mut out = Vec::new();
        let read = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
        match read {
            Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn announced_body_over_the_limit_is_refused_at_once_and_closed() {
        // The production limits: the answer must not wait for the read deadline.
        let addr = start(Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n")
            .await
            .expect("write");
        let answer = until_closed(&mut s, Duration::from_secs(2))
            .await
            .expect("closed at once");
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("body_too_large"), "{answer}");
    }

    #[tokio::test]
    async fn chunked_body_over_the_limit_is_refused() {
        let addr = start(QUICK).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let chunk = format!("{:x}\r\n{}\r\n", 2000, "a".repeat(2000));
        s.write_all(
            format!("POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{chunk}")
                .as_bytes(),
        )
        .await
        .expect("write");
        let answer = until_closed(&mut s, Duration::from_secs(2))
            .await
            .expect("closed");
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }

    #[tokio::test]
    async fn slow_body_gets_408_and_is_closed() {
        let addr = start(QUICK).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
            .await
            .expect("write");
        let started = std::time::Instant::now();
        let answer = until_closed(&mut s, Duration::from_secs(3))
            .await
            .expect("closed after the read deadline");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }

    #[tokio::test]
    async fn slow_headers_are_cut() {
        let addr = start(QUICK).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            .await
            .expect("write");
        let started = std::time::Instant::now();
        let answer = until_closed(&mut s, Duration::from_secs(3)).await;
        assert!(answer.is_some(), "still open after 3 s");
        assert!(started.elapsed() >= Duration::from_millis(300));
        // Nothing served: closed (or a 408), never a 200.
        assert!(!answer.unwrap_or_default().contains("200 OK"));

        // An idle connection, too.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        assert!(until_closed(&mut idle, Duration::from_secs(3))
            .await
            .is_some());
    }

    #[tokio::test]
    async fn prompt_requests_are_served_and_kept_alive() {
        let addr = start(QUICK).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        for _ in 0..2 {
            s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
                .await
                .expect("write");
            let mut buf = vec![0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
                .await
                .expect("answer in time")
                .expect("read");
            let answer = String::from_utf8_lossy(&buf[..n]);
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.ends_with("hello"), "{answer}");
        }
    }

    #[tokio::test]
    async fn tls_handshake_deadline() {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = crate::config::tls::test_pki::Pki::new(dir.path());
        let pem = crate::config::tls::TlsPem {
            cert: std::fs::read(&pki.cert).expect("cert"),
            key: std::fs::read(&pki.key).expect("key"),
            client_ca: None,
        };
        let config = crate::config::tls::server_config(&pem, &[b"http/1.1"]).expect("config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new().route("/healthz", get(|| async { "ok" }));
        tokio::spawn(serve_with(
            listener,
            router,
            Some(Arc::new(config)),
            QUICK,
            std::future::pending(),
        ));
        // Connected, never says hello: dropped after the handshake deadline.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        assert!(until_closed(&mut s, Duration::from_secs(3)).await.is_some());
        // Plaintext HTTP is no TLS handshake: refused, never served.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let answer = until_closed(&mut s, Duration::from_secs(3)).await;
        assert!(!answer.unwrap_or_default().contains("200 OK"));
    }
}
