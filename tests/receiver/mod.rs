//! A callback receiver on 127.0.0.1 that checks every signature with the official Standard
//! Webhooks library (not grantd's code).
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::common::{handler, json_response, upstream, Body};

pub const OLD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The receiver only knows the newer secret: signatures from every configured secret are sent.
pub const NEW_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3ItdGVzdHM=";

#[derive(Default)]
pub struct Receiver {
    /// (webhook-id, body) of every accepted delivery.
    pub accepted: Mutex<Vec<(String, serde_json::Value)>>,
    /// webhook-id of every attempt, accepted or not.
    pub attempts: Mutex<Vec<String>>,
    pub bad_signatures: AtomicUsize,
    fail_first: AtomicUsize,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> (Arc<Receiver>, SocketAddr) {
        let r = Arc::new(Receiver {
            fail_first: AtomicUsize::new(fail_first),
            ..Default::default()
        });
        let me = r.clone();
        let addr = upstream(handler(move |req: Request<Incoming>| {
            let me = me.clone();
            async move { me.handle(req).await }
        }))
        .await;
        (r, addr)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let id = parts
            .headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if standardwebhooks::Webhook::new(NEW_SECRET)
            .unwrap()
            .verify(&body, &parts.headers)
            .is_err()
        {
            self.bad_signatures.fetch_add(1, Ordering::SeqCst);
            return json_response(400, r#"{"error":"bad signature"}"#);
        }
        self.attempts.lock().unwrap().push(id.clone());
        if self.fail_first.load(Ordering::SeqCst) > 0 {
            self.fail_first.fetch_sub(1, Ordering::SeqCst);
            return json_response(500, "{}");
        }
        self.accepted
            .lock()
            .unwrap()
            .push((id, serde_json::from_slice(&body).unwrap()));
        json_response(204, "")
    }

    pub fn of_type(&self, kind: &str) -> Vec<serde_json::Value> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| b["type"] == kind)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Waits until `n` events of `kind` arrived, then a little longer to catch duplicates.
    pub async fn wait_for(&self, kind: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while self.of_type(kind).len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited 15 s for {n} {kind}: {:?}",
                self.accepted.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.of_type(kind)
    }
}

pub fn callbacks_config(receiver: SocketAddr) -> String {
    format!(
        "callbacks:\n  retry_base: 50ms\n  poll_interval: 20ms\n  endpoints:\n    - name: app\n      url: \"http://{receiver}/hook\"\n      secrets: [{OLD_SECRET}, {NEW_SECRET}]\n"
    )
}
