//! The admin API (its own listener, default 127.0.0.1:4181, `Authorization: Bearer <token>`):
//! import, inspect, list, delete and refresh connections; per-integration counts.
//!
//! Owns the admin HTTP surface and its JSON error contract (`{"error": code, "message": ...}`).
//! It must never return or log a token: it serves [`ConnectionView`]s only.

mod import;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;
use tokio::net::TcpListener;

use crate::connect::{Connect, ConnectRequest};
use crate::connections::credential::Accepts;
use crate::connections::refresh::Refresher;
use crate::connections::revoke::Revocation;
use crate::connections::{ConnectionError, ConnectionView, Connections, PutConnection};
use crate::store::{ListQuery, Status, Store};
use crate::template::Urls;

type Body = Full<Bytes>;
/// Request bodies, with the listener's idle timeout (a stalled upload fails, never hangs).
type Incoming = crate::body::Body;

pub struct Admin {
    connections: Arc<Connections>,
    /// For the event outbox and per-integration counts; connections go through `grants`.
    store: Arc<dyn Store>,
    refresher: Arc<Refresher>,
    connect: Arc<Connect>,
    token_digest: Vec<u8>,
    integrations: BTreeMap<String, Known>,
}

/// What the admin API knows of an integration.
pub struct Known {
    pub oauth_client: bool,
    /// The credential kinds its rule file accepts.
    pub accepts: Accepts,
    /// What connection metadata must fit (checked before it is stored).
    pub urls: Arc<Urls>,
}

impl Admin {
    /// `integrations`: every integration the proxy routes.
    pub fn new(
        connections: Arc<Connections>,
        store: Arc<dyn Store>,
        refresher: Arc<Refresher>,
        connect: Arc<Connect>,
        token: &str,
        integrations: BTreeMap<String, Known>,
    ) -> Admin {
        Admin {
            connections,
            store,
            refresher,
            connect,
            token_digest: digest(token.as_bytes()),
            integrations,
        }
    }

    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        config: crate::config::ServerConfig,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        crate::listener::serve(listener, &config, stop, move |req| {
            let admin = self.clone();
            async move { admin.handle(req).await }
        })
        .await
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if !self.authorized(&req) {
            let mut resp = fail(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <admin token>",
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = req.method().clone();
        match (method, segments.as_slice()) {
            (Method::GET, ["v1", "integrations"]) => self.integrations().await,
            (Method::POST, ["v1", "connect", "callback"]) => self.relay(req).await,
            (Method::GET, ["v1", "connect", integration]) => {
                self.connect(integration, req.uri().query()).await
            }
            (Method::GET, ["v1", "connections"]) => self.list(req.uri().query()).await,
            (Method::POST, ["v1", "connections", "batch"]) => self.batch(req).await,
            (Method::PUT, ["v1", "connections", id]) => {
                let id = id.to_string();
                self.put(&id, req).await
            }
            (Method::GET, ["v1", "connections", id]) => self.get(id).await,
            (Method::DELETE, ["v1", "connections", id]) => self.delete(id, req.uri().query()).await,
            (Method::GET, ["v1", "events"]) => self.events(req.uri().query()).await,
            (Method::POST, ["v1", "events", id, "retry"]) => {
                match self.store.retry_event(id, crate::time::now_ms()).await {
                    Ok(true) => ok(StatusCode::OK, &json!({"id": id, "status": "pending"})),
                    Ok(false) => fail(
                        StatusCode::NOT_FOUND,
                        "unknown_event",
                        &format!("no undelivered event `{id}`"),
                    ),
                    Err(e) => grant_error(e.into()),
                }
            }
            (Method::POST, ["v1", "connections", id, "refresh"]) => {
                let outcome = self.refresher.force(id).await;
                let status = match &outcome {
                    crate::connections::refresh::Refreshed::NotFound => StatusCode::NOT_FOUND,
                    _ => StatusCode::OK,
                };
                ok(status, &serde_json::to_value(&outcome).unwrap_or_default())
            }
            _ => fail(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no admin endpoint {} {path}", req.method()),
            ),
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Comparing digests keeps the comparison's timing independent of the token's content.
        digest(presented.as_bytes()) == self.token_digest
    }

    /// Starts a connect (or reconnect): the provider's authorization URL, and a shareable
    /// single-use link when the public listener is on.
    async fn connect(&self, integration: &str, query: Option<&str>) -> Response<Body> {
        let mut req = ConnectRequest {
            integration: integration.to_string(),
            ..ConnectRequest::default()
        };
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let v = Some(v.into_owned()).filter(|v| !v.is_empty());
            match k.as_ref() {
                "connection_id" => req.connection_id = v,
                "login_hint" => req.login_hint = v,
                "return_to" => req.return_to = v,
                "scopes" => {
                    req.scopes = v.map(|s| {
                        s.split([',', ' '])
                            .filter(|x| !x.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                }
                other => {
                    return fail(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        &format!("unknown parameter `{other}` (known: connection_id, login_hint, return_to, scopes)"),
                    )
                }
            }
        }
        let link = match self.connect.link(&mut req).await {
            Ok(link) => link,
            Err(e) => return fail(e.status, e.code, &e.message),
        };
        match self.connect.start(req).await {
            Ok(started) => {
                let mut body = serde_json::to_value(&started).unwrap_or_default();
                if let Some((url, expires_at)) = link {
                    body["link"] = json!(url);
                    body["link_expires_at"] = json!(crate::time::rfc3339(expires_at));
                }
                ok(StatusCode::OK, &body)
            }
            Err(e) => fail(e.status, e.code, &e.message),
        }
    }

    /// The app hosts the redirect URI and relays the provider's query string here (as the
    /// body, or as this request's query).
    async fn relay(&self, req: Request<Incoming>) -> Response<Body> {
        let query = req.uri().query().unwrap_or("").to_string();
        let body = match read_body(req.into_body(), 16 * 1024).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let text = if body.is_empty() {
            query.as_bytes()
        } else {
            &body[..]
        };
        let mut params = std::collections::HashMap::new();
        for (k, v) in form_urlencoded::parse(text.strip_prefix(b"?").unwrap_or(text)) {
            params
                .entry(k.into_owned())
                .or_insert_with(|| v.into_owned());
        }
        // No browser comes here, only the app: a flow bound to a browser (one started from a
        // connect link) cannot be finished this way, and the app binds its own flows.
        let done = match self.connect.complete(&params, None).await {
            Ok(done) => done,
            Err(e) => return fail(e.status, e.code, &e.message),
        };
        let mut body = json!({"connection_id": done.state.connection_id,
                              "integration": done.state.integration, "return_to": done.return_to});
        match done.outcome {
            Ok(()) => {
                body["status"] = json!("connected");
                ok(StatusCode::OK, &body)
            }
            Err(e) => {
                body["error"] = json!(e.code);
                body["message"] = json!(e.message);
                ok(e.status, &body)
            }
        }
    }

    async fn get(&self, id: &str) -> Response<Body> {
        match self.connections.view(id).await {
            Ok(view) => ok(StatusCode::OK, &to_json(&view)),
            Err(e) => grant_error(e),
        }
    }

    /// Revokes the connection's token at the provider first (unless `?revoke=false`), then
    /// deletes it whatever the provider said; the answer says both.
    async fn delete(&self, id: &str, query: Option<&str>) -> Response<Body> {
        let skip = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .any(|(k, v)| k == "revoke" && v == "false");
        let revocation = match self.connections.load(id).await {
            Err(e) => return grant_error(e),
            Ok(_) if skip => Revocation::Skipped,
            Ok(connection) => self.refresher.revoke(&connection).await,
        };
        match self.connections.delete(id).await {
            Ok(true) => {
                let body = json!({"id": id, "deleted": true, "revocation": revocation.describe()});
                ok(StatusCode::OK, &body)
            }
            Ok(false) => fail(
                StatusCode::NOT_FOUND,
                "unknown_connection",
                &format!("no connection `{id}`"),
            ),
            Err(e) => grant_error(e),
        }
    }

    async fn list(&self, query: Option<&str>) -> Response<Body> {
        let mut q = ListQuery {
            limit: 100,
            ..Default::default()
        };
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "integration" => q.integration = Some(v.into_owned()),
                "status" => match Status::parse(&v) {
                    Some(s) => q.status = Some(s),
                    None => {
                        return fail(
                            StatusCode::BAD_REQUEST,
                            "invalid_query",
                            "status is active, needs_reauth or config_error",
                        )
                    }
                },
                "after" => q.after = Some(v.into_owned()),
                "limit" => match v.parse::<u32>() {
                    Ok(n) if (1..=1000).contains(&n) => q.limit = n,
                    _ => {
                        return fail(
                            StatusCode::BAD_REQUEST,
                            "invalid_query",
                            "limit is 1 to 1000",
                        )
                    }
                },
                other => {
                    return fail(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        &format!("unknown parameter `{other}`"),
                    )
                }
            }
        }
        match self.connections.list(&q).await {
            Ok(views) => {
                let next = (views.len() == q.limit as usize)
                    .then(|| views.last().map(|v| v.id.clone()))
                    .flatten();
                ok(
                    StatusCode::OK,
                    &json!({"connections": views.iter().map(to_json).collect::<Vec<_>>(), "next": next}),
                )
            }
            Err(e) => grant_error(e),
        }
    }

    /// `GET /v1/events?status=pending|delivered|failed&limit=N`: one entry per event and endpoint.
    async fn events(&self, query: Option<&str>) -> Response<Body> {
        let mut status = None;
        let mut limit = 100;
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match (k.as_ref(), v.as_ref()) {
                ("status", s @ ("pending" | "delivered" | "failed")) => {
                    status = Some(s.to_string())
                }
                ("status", _) => {
                    return fail(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        "status is pending, delivered or failed",
                    )
                }
                ("limit", n) => match n.parse::<u32>() {
                    Ok(n) if (1..=1000).contains(&n) => limit = n,
                    _ => {
                        return fail(
                            StatusCode::BAD_REQUEST,
                            "invalid_query",
                            "limit is 1 to 1000",
                        )
                    }
                },
                (other, _) => {
                    return fail(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        &format!("unknown parameter `{other}`"),
                    )
                }
            }
        }
        match self.store.deliveries(status.as_deref(), limit).await {
            Ok(list) => {
                let events: Vec<serde_json::Value> = list
                    .iter()
                    .map(|d| {
                        let mut v = serde_json::to_value(d).unwrap_or_default();
                        for key in ["next_attempt_at", "delivered_at", "created_at"] {
                            if let Some(ms) = v.get(key).and_then(|x| x.as_i64()) {
                                v[key] = json!(crate::time::rfc3339(ms));
                            }
                        }
                        v
                    })
                    .collect();
                ok(StatusCode::OK, &json!({"events": events}))
            }
            Err(e) => grant_error(e.into()),
        }
    }

    async fn integrations(&self) -> Response<Body> {
        let counts = match self.store.counts().await {
            Ok(c) => c,
            Err(e) => return grant_error(e.into()),
        };
        let list: Vec<serde_json::Value> = self
            .integrations
            .iter()
            .map(|(name, known)| {
                let mut by_status = json!({"active": 0, "needs_reauth": 0, "config_error": 0});
                for (i, status, n) in &counts {
                    if i == name {
                        by_status[status.as_str()] = json!(n);
                    }
                }
                json!({"integration": name, "oauth_client": known.oauth_client, "connections": by_status})
            })
            .collect();
        ok(StatusCode::OK, &json!({"integrations": list}))
    }
}

fn digest(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

fn to_json(view: &ConnectionView) -> serde_json::Value {
    serde_json::to_value(view).unwrap_or_default()
}

/// serde_json's "invalid type" messages quote the offending value, which could be a token:
/// only the field path and messages made of our own names (unknown/missing field) get out.
fn parse_put(body: &[u8]) -> Result<PutConnection, String> {
    put_from(&mut serde_json::Deserializer::from_slice(body))
}

/// A `PUT` body from any JSON source (a request body, or one item of a batch already parsed).
/// Errors name the field; only serde's own words about unknown or missing fields are kept, so a
/// value (maybe a secret) is never echoed.
fn put_from<'de, D>(de: D) -> Result<PutConnection, String>
where
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let safe = inner.starts_with("unknown field")
            || inner.starts_with("missing field")
            || inner.starts_with("unknown variant");
        let what = if safe {
            inner.split(" at line").next().unwrap_or("").to_string()
        } else {
            "invalid or malformed value".into()
        };
        format!("body is not a valid connection: {path}: {what}")
    })
}

fn grant_error(e: ConnectionError) -> Response<Body> {
    match e {
        ConnectionError::NotFound(id) => fail(
            StatusCode::NOT_FOUND,
            "unknown_connection",
            &format!("no connection `{id}`"),
        ),
        ConnectionError::Invalid(m) => fail(StatusCode::BAD_REQUEST, "invalid_connection", &m),
        other => {
            tracing::error!(error = %other, "admin request failed");
            fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &other.to_string(),
            )
        }
    }
}

fn ok(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A request body of at most `limit` bytes; too large, stalled or cut off is an error.
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Response<Body>> {
    use crate::body::{collect_limited, BodyFailure, Collected};
    match collect_limited(body, limit).await {
        Collected::Complete(bytes, _) => Ok(bytes),
        Collected::TooLarge(_) => Err(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("the body is limited to {} KiB", limit / 1024),
        )),
        Collected::Failed(e) => Err(match BodyFailure::of(&e) {
            BodyFailure::Stalled => fail(
                StatusCode::REQUEST_TIMEOUT,
                "request_body_timeout",
                "the request body stopped arriving",
            ),
            BodyFailure::Aborted => fail(
                StatusCode::BAD_REQUEST,
                "request_body_incomplete",
                "the request body ended early",
            ),
        }),
    }
}

fn fail(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    ok(status, &json!({"error": code, "message": message}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_name_the_field_but_never_echo_a_value() {
        let e =
            parse_put(br#"{"integration": "slack", "credentials": {"access_token": 12345678901}}"#)
                .unwrap_err();
        assert!(
            e.contains("credentials.access_token") && !e.contains("12345678901"),
            "{e}"
        );
        let e =
            parse_put(br#"{"integration": "slack", "credentials": {"expires_in": "xoxb-leaked"}}"#)
                .unwrap_err();
        assert!(!e.contains("xoxb-leaked"), "{e}");
        let e = parse_put(br#"{"integration": "slack", "credentials": {"acess_token": "x"}}"#)
            .unwrap_err();
        assert!(e.contains("unknown field `acess_token`"), "{e}");
    }
}
