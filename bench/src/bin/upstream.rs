//! `bench-upstream --port N [--threads 1]`: the benchmark's static API. Every method and path gets
//! `200` with the same small JSON body (`bench/run.py` gives Envoy's direct-response baseline the
//! same body, so both baselines move the same bytes).

use bytes::Bytes;
use tollway_bench::{reply, runtime, serve, Args};

const USAGE: &str = "usage: bench-upstream --port PORT [--threads 1]\n\
Answers every request with 200 and a fixed small JSON body (keep-alive HTTP/1.1).";

/// Keep in sync with `BODY` in bench/run.py (the direct-response baseline).
const BODY: &str = r#"{"quote":"42.00","currency":"USD","source":"bench-upstream"}"#;

fn main() {
    let args = Args::parse(USAGE);
    let port: u16 = args.number("port", 0);
    if port == 0 {
        tollway_bench::fail(USAGE, "--port is required");
    }
    let body = Bytes::from_static(BODY.as_bytes());
    runtime(args.number("threads", 1)).block_on(serve(port, "bench-upstream", move |_req| {
        let body = body.clone();
        async move { reply(200, "application/json", body) }
    }));
}
