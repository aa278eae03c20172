//! A fake SaaS provider for the README walkthrough and the benchmark.
//!
//! `cargo run --example fake_provider -- 127.0.0.1:9900`
//!
//! - `POST /api/chat.postMessage` answers like Slack: the bearer token picks the outcome
//!   (`xoxb-expired` → `token_expired`, `xoxb-revoked` → `token_revoked`, `xoxb-ratelimited` →
//!   `ratelimited` with 429, anything else → `ok: true`), always with HTTP 200 except the rate limit.
//! - `GET /bench/json` answers a 1 KiB JSON document (Slack-shaped success).
//! - `GET /bench/bytes?n=N` streams N bytes of `application/octet-stream`.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = BoxBody<Bytes, Infallible>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9900".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "fake provider listening on http://{}",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(|req| async move { Ok::<_, Infallible>(route(req)) });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/api/chat.postMessage" => slack(&req),
        "/bench/json" => json(200, bench_json()),
        "/bench/bytes" => bytes(
            req.uri()
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1024),
        ),
        _ => json(404, r#"{"ok":false,"error":"unknown_method"}"#.into()),
    }
}

fn slack(req: &Request<Incoming>) -> Response<Body> {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match token {
        "xoxb-expired" => json(200, r#"{"ok":false,"error":"token_expired"}"#.into()),
        "xoxb-revoked" => json(200, r#"{"ok":false,"error":"token_revoked"}"#.into()),
        "xoxb-ratelimited" => {
            let mut r = json(429, r#"{"ok":false,"error":"ratelimited"}"#.into());
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("30"));
            r
        }
        _ => json(
            200,
            r#"{"ok":true,"channel":"C123","ts":"1700000000.000100"}"#.into(),
        ),
    }
}

/// A 1 KiB Slack-shaped success body.
fn bench_json() -> String {
    let mut s =
        String::from(r#"{"ok":true,"channel":"C123","ts":"1700000000.000100","message":{"text":""#);
    while s.len() < 1024 - 4 {
        s.push('x');
    }
    s.push_str(r#""}}"#);
    s
}

fn json(status: u16, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap()
}

fn bytes(n: usize) -> Response<Body> {
    static CHUNK: [u8; 64 * 1024] = [0x5a; 64 * 1024];
    let chunks = (0..n.div_ceil(CHUNK.len())).map(move |i| {
        let len = (n - i * CHUNK.len()).min(CHUNK.len());
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(&CHUNK[..len])))
    });
    Response::builder()
        .header("content-type", "application/octet-stream")
        .header("content-length", n)
        .body(StreamBody::new(tokio_stream::iter(chunks)).boxed())
        .unwrap()
}
