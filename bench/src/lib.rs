//! Helpers for `make bench` (see `bench/run.py`): a tiny keep-alive HTTP/1.1 server loop shared by
//! the static upstream and the instant facilitator double, and a minimal `--flag value` parser.
//!
//! These servers exist so that the benchmark measures Envoy and Tollway, not the things around
//! them: each answers in a few microseconds on one core, far below Envoy's own per-request cost.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::exit;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// `--name value` pairs from the command line; `usage` is printed on `--help` or a bad flag.
pub struct Args {
    values: HashMap<String, String>,
    usage: &'static str,
}

impl Args {
    pub fn parse(usage: &'static str) -> Args {
        let mut values = HashMap::new();
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                println!("{usage}");
                exit(0);
            }
            let Some(name) = flag.strip_prefix("--") else {
                fail(usage, &format!("unexpected argument {flag:?}"));
            };
            let Some(value) = it.next() else {
                fail(usage, &format!("{flag} needs a value"));
            };
            values.insert(name.to_owned(), value);
        }
        Args { values, usage }
    }

    pub fn get(&self, name: &str, default: &str) -> String {
        self.values
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }

    pub fn values_opt(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    pub fn required(&self, name: &str) -> String {
        match self.values.get(name) {
            Some(v) => v.clone(),
            None => fail(self.usage, &format!("--{name} is required")),
        }
    }

    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.values.get(name) {
            None => default,
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| fail(self.usage, &format!("--{name}: not a number: {v:?}"))),
        }
    }
}

pub fn fail(usage: &str, message: &str) -> ! {
    eprintln!("error: {message}\n\n{usage}");
    exit(2)
}

/// A tokio runtime with `threads` workers (1 keeps the server on the core it is pinned to).
pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("error: cannot start the tokio runtime: {e}");
            exit(1)
        })
}

/// Accepts connections on `127.0.0.1:port` forever and serves each with keep-alive HTTP/1.1,
/// answering every request with `handler`.
pub async fn serve<F, Fut>(port: u16, name: &str, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| {
        eprintln!("error: {name}: cannot listen on {addr}: {e}");
        exit(1)
    });
    eprintln!("{name} listening on http://{addr}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("{name}: accept failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            // Errors here are clients going away mid-request (wrk stopping): nothing to report.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A response with a body and a content type.
pub fn reply(status: u16, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
