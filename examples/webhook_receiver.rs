//! A minimal callback receiver that verifies grantd's Standard Webhooks signatures with the
//! official `standardwebhooks` library (any Standard Webhooks implementation works).
//!
//! `GRANTD_WEBHOOK_SECRET=whsec_... cargo run --example webhook_receiver -- 127.0.0.1:9901`
//!
//! Answer 2xx only after the event is safely handled: grantd retries anything else (with
//! backoff, for about three days). Deduplicate on `webhook-id`: a retry after a timeout can
//! bring an event you already handled, always with the same id.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9901".into());
    let secret =
        std::env::var("GRANTD_WEBHOOK_SECRET").expect("set GRANTD_WEBHOOK_SECRET=whsec_...");
    let webhook = Arc::new(standardwebhooks::Webhook::new(&secret).expect("a whsec_ secret"));
    let seen = Arc::new(Mutex::new(HashSet::<String>::new()));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("receiving grantd callbacks on http://{addr}/");
    loop {
        let (stream, _) = listener.accept().await?;
        let (webhook, seen) = (webhook.clone(), seen.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (webhook, seen) = (webhook.clone(), seen.clone());
                async move { Ok::<_, Infallible>(receive(&webhook, &seen, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn receive(
    webhook: &standardwebhooks::Webhook,
    seen: &Mutex<HashSet<String>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST);
    };
    // Checks the HMAC over "{webhook-id}.{webhook-timestamp}.{body}" and that the timestamp
    // is recent (replay protection).
    if webhook.verify(&body, &parts.headers).is_err() {
        return answer(StatusCode::UNAUTHORIZED);
    }
    let id = parts
        .headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !seen.lock().unwrap().insert(id.clone()) {
        return answer(StatusCode::NO_CONTENT); // already handled
    }
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let data = &event["data"];
    match event["type"].as_str() {
        Some("authentication_error") => println!(
            "{id}: connection {} needs the user to reconnect ({})",
            data["connection_id"], data["error"]["code"]
        ),
        Some("reactivated") => println!(
            "{id}: connection {} works again (via {})",
            data["connection_id"], data["via"]
        ),
        Some("config_error") => println!(
            "{id}: integration {} has rejected client credentials",
            data["integration"]
        ),
        Some("config_recovered") => println!("{id}: integration {} recovered", data["integration"]),
        _ => println!("{id}: {event}"),
    }
    answer(StatusCode::NO_CONTENT)
}

fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::default())
        .expect("static response")
}
