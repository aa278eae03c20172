//! `/_grantd/*`: grantd's own endpoints (liveness, readiness, metrics), on the proxy listener
//! and on the ops listener (`ops.listen`), which serves them and nothing else.
//!
//! Owns their answers only; it must not route to an integration or read request bodies.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::respond::{json_response, Failure};
use super::Proxy;
use crate::body::{full, Body};
use crate::config::ServerConfig;

impl Proxy {
    /// The ops listener: `/_grantd/{healthz,readyz,metrics}` with the proxy's own handlers,
    /// 404 for anything else (it never proxies). Once `draining` turns true, readyz answers 503
    /// so that the pod leaves its Service while the proxy drains; serves until `stop`.
    pub async fn serve_ops(
        self: Arc<Self>,
        listener: TcpListener,
        config: ServerConfig,
        draining: watch::Receiver<bool>,
        stop: watch::Receiver<bool>,
    ) {
        crate::listener::serve(listener, &config, stop, move |req| {
            let (proxy, draining) = (self.clone(), draining.clone());
            async move {
                let found = req.uri().path().strip_prefix("/_grantd/");
                let answer = match found {
                    Some("readyz") if *draining.borrow() => Ok(json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"status": "draining"}),
                    )),
                    Some(path @ ("healthz" | "readyz" | "metrics")) => proxy.internal(path).await,
                    _ => Err(Failure::NotOps),
                };
                answer.unwrap_or_else(|f| f.respond(None))
            }
        })
        .await
    }

    pub(super) async fn internal(&self, path: &str) -> Result<Response<Body>, Failure> {
        Ok(match path {
            "healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
            "readyz" => self.readiness().await,
            "metrics" => {
                let mut resp = Response::new(full(self.metrics.render()));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            _ => return Err(Failure::UnknownInternal(path.to_string())),
        })
    }

    /// Ready only while the store answers: requests with cached tokens still flow without it,
    /// but refreshes and status changes would not.
    async fn readiness(&self) -> Response<Body> {
        let Some(store) = &self.store else {
            return json_response(StatusCode::OK, &json!({"status": "ready"}));
        };
        let (status, body) = match tokio::time::timeout(Duration::from_secs(2), store.ping()).await
        {
            Ok(Ok(())) => (StatusCode::OK, json!({"status": "ready"})),
            Ok(Err(e)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready", "reason": e.to_string()}),
            ),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready", "reason": "the store did not answer within 2 s"}),
            ),
        };
        json_response(status, &body)
    }
}
