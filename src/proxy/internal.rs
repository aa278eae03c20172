//! `/_grantd/*`: grantd's own endpoints on the proxy listener (liveness, readiness, metrics).
//!
//! Owns their answers only; it must not route to an integration or read request bodies.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;

use super::respond::{json_response, Failure};
use super::Proxy;
use crate::body::{full, Body};

impl Proxy {
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
