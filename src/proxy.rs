//! The proxy listener: route `/{integration}/{rest}` to the integration's base URL, stream
//! bodies both ways, and let rules rewrite the responses they select.
//!
//! Owns routing, header hygiene (hop-by-hop, `Host`), upstream error mapping and applying a
//! [`Verdict`] to a response. It must not open connections anywhere but a configured base URL,
//! must not evaluate rules on an async worker (they run on the blocking pool under a budget),
//! and must not buffer a response no rule selects.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::body::{
    collect_limited, empty, full, Body, BodyFailure, Collected, Frames, IdleTimeout, Stalled,
    Watched,
};
use crate::callers::{CallerRefusal, Callers};
use crate::config::{Config, EvaluationConfig, ServerConfig, UpstreamConfig};
use crate::grants::Grant;
use crate::inject::{take_names, Connections, Refusal};
use crate::listener::Gate;
use crate::rules::engine::Cancel;
use crate::rules::{Action, Endpoint, Facts, Outcome, RuleSet, Verdict};
use crate::telemetry::{IntegrationMetrics, Metrics};
use crate::template::{BaseUrl, Urls};
use crate::upstream::{self, UpstreamClient};

/// One routable integration.
struct Route {
    base: RouteBase,
    urls: Arc<Urls>,
    rules: Arc<RuleSet>,
    metrics: IntegrationMetrics,
}

/// A fixed base URL, or one that depends on the connection's metadata
/// (`https://{metadata.subdomain}.zendesk.com/api/v2`).
enum RouteBase {
    Static(BaseUrl),
    /// Filled from `Route::urls` per connection.
    Template,
}

fn route_base(name: &str, urls: &Urls) -> anyhow::Result<RouteBase> {
    if !urls.base.is_fixed() {
        return Ok(RouteBase::Template);
    }
    let base = BaseUrl::parse(
        &urls
            .base
            .fill(&json!({}), &urls.hosts)
            .map_err(anyhow::Error::msg)?,
    )
    .map_err(|e| anyhow::anyhow!("integration {name}: base_url {e}"))?;
    if !base.is_https() {
        tracing::warn!(integration = %name, base_url = %base.origin(), "plain-HTTP upstream: tokens would cross the network unencrypted");
    }
    Ok(RouteBase::Static(base))
}

/// What a response says should happen to the connection that made it.
#[derive(Debug, Clone, PartialEq)]
enum Signal {
    None,
    Refresh,
    Reauth(serde_json::Value),
}

/// Where a request goes: the worker's client, the integration and the path below its base.
#[derive(Clone, Copy)]
struct Target<'a> {
    client: &'a UpstreamClient,
    name: &'a str,
    route: &'a Route,
    rest: &'a str,
}

/// The request as the app sent it, kept so it can be sent again after a refresh.
#[derive(Clone)]
struct Head {
    method: Method,
    query: Option<String>,
    headers: HeaderMap,
    /// Set when the request body is streamed: how it failed, if it did.
    body_failure: Option<Arc<OnceLock<BodyFailure>>>,
}

impl Head {
    /// Watches a body that is sent as a stream, so its failure is told from the upstream's.
    fn streamed(&mut self, body: Body) -> Body {
        let (watched, failure) = Watched::new(body);
        self.body_failure = Some(failure);
        watched.boxed()
    }
}

/// A request body as it will be sent: kept in memory (replayable; its share of the replay
/// budget is held until the request is done), or streamed once.
enum Replay {
    Kept(Bytes, Option<tokio::sync::OwnedSemaphorePermit>),
    Streamed(Body),
}

fn replay_body(bytes: &Bytes) -> Body {
    if bytes.is_empty() {
        empty()
    } else {
        full(bytes.clone())
    }
}

/// Everything the request path needs, built once at startup.
pub struct Proxy {
    routes: BTreeMap<String, Route>,
    connections: Option<Arc<Connections>>,
    callers: Callers,
    upstream: UpstreamConfig,
    tls: Arc<rustls::ClientConfig>,
    request_timeout: Duration,
    server: ServerConfig,
    /// Shared by every worker: `server.max_connections` for the whole proxy listener.
    gate: Gate,
    max_buffered_body: usize,
    /// Bytes of request bodies kept for replay across all workers (`server.replay_budget`).
    replay_budget: Arc<tokio::sync::Semaphore>,
    eval: EvaluationConfig,
    metrics: Metrics,
}

impl Proxy {
    /// Builds routes from the rule files and the config's overrides. An override for an
    /// integration without a rule file is a plain proxy route (it must then give `base_url`).
    pub fn new(config: &Config, rule_sets: BTreeMap<String, RuleSet>) -> anyhow::Result<Proxy> {
        let metrics = Metrics::default();
        let mut routes = BTreeMap::new();
        let mut sets = rule_sets;
        for (name, over) in &config.integrations {
            if !sets.contains_key(name) {
                let base_url = over.base_url.clone().ok_or_else(|| {
                    anyhow::anyhow!("integrations.{name}: no rule file rules/{name}.yaml, so base_url is required")
                })?;
                sets.insert(name.clone(), RuleSet::empty(name, base_url));
            }
        }
        for (name, set) in sets {
            if name == crate::rules::file::BASE {
                continue; // rules for every integration, not a route
            }
            let urls = set
                .urls(config.integrations.get(&name))
                .map_err(anyhow::Error::msg)?;
            let base = route_base(&name, &urls)?;
            routes.insert(
                name.clone(),
                Route {
                    base,
                    urls: Arc::new(urls),
                    metrics: metrics.integration(&name),
                    rules: Arc::new(set),
                },
            );
        }
        Ok(Proxy {
            routes,
            connections: None,
            callers: Callers::new(&config.callers).map_err(anyhow::Error::msg)?,
            upstream: config.upstream.clone(),
            tls: upstream::tls_config(&config.upstream)?,
            request_timeout: config.upstream.request_timeout,
            server: config.server.clone(),
            gate: Gate::new(config.server.max_connections),
            max_buffered_body: config.max_buffered_body.0,
            replay_budget: Arc::new(tokio::sync::Semaphore::new(
                config
                    .server
                    .replay_budget
                    .0
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            eval: config.evaluation.clone(),
            metrics,
        })
    }

    /// Enables connections: token injection, refresh and pausing.
    pub fn with_connections(mut self, connections: Arc<Connections>) -> Proxy {
        self.connections = Some(connections);
        self
    }

    /// Each integration's URLs: what connection metadata must fit (checked on import).
    pub fn urls(&self) -> BTreeMap<String, Arc<Urls>> {
        self.routes
            .iter()
            .map(|(name, r)| (name.clone(), r.urls.clone()))
            .collect()
    }

    pub fn integrations(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    /// Serves until `shutdown` resolves, then drains open connections (up to 30 s). Call it
    /// once per runtime: each call owns its upstream connection pool.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let client = Arc::new(upstream::client(&self.upstream, self.tls.clone()));
        let mut builder = crate::listener::http(&self.server);
        // One flattened write per response instead of writev: measured ~8% less CPU per
        // request on small API responses (bench/proxy.py).
        builder.http1().writev(false);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, permit) = tokio::select! {
                accepted = self.gate.accept(&listener) => accepted,
                _ = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            let client = client.clone();
            let service = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                let client = client.clone();
                async move { Ok::<_, Infallible>(proxy.handle(&client, req).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                drop(permit);
            });
        }
        if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after 30 s; closing them");
        }
    }

    /// The whole request path: refuse, route, forward, rewrite.
    pub async fn handle(&self, client: &UpstreamClient, req: Request<Incoming>) -> Response<Body> {
        let mut resp = self.route(client, req).await;
        // Every 429 tells the app when to come back, whatever the provider said (or didn't).
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            crate::retry_after::ensure(resp.headers_mut(), std::time::SystemTime::now());
        }
        resp
    }

    async fn route(&self, client: &UpstreamClient, req: Request<Incoming>) -> Response<Body> {
        if req.method() == Method::CONNECT {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "connect_refused",
                None,
                "grantd is not an open proxy: CONNECT is refused".into(),
            );
        }
        // HTTP/2 requests always carry :scheme/:authority (grantd's own); only an HTTP/1
        // absolute-form target asks us to go somewhere else. Routing never reads the authority.
        let absolute = req.uri().scheme().is_some() || req.uri().authority().is_some();
        if absolute && req.version() < Version::HTTP_2 {
            return error(
                StatusCode::BAD_REQUEST,
                "absolute_form_refused",
                None,
                "grantd is not an open proxy: send origin-form requests like /slack/chat.postMessage".into(),
            );
        }
        let path = req.uri().path().to_string();
        if let Some(internal) = path.strip_prefix("/_grantd/") {
            return self.internal(internal).await;
        }
        let (name, rest) = split_route(&path);
        let Some(route) = self.routes.get(name) else {
            let known: Vec<&str> = self.integrations().collect();
            let mut resp = error(
                StatusCode::NOT_FOUND,
                "unknown_integration",
                None,
                format!("no integration `{name}`; requests look like /{{integration}}/{{path}}; known: {}", known.join(", ")),
            );
            *resp.body_mut() = json_body(&json!({
                "error": "unknown_integration",
                "message": format!("no integration `{name}`; requests look like /{{integration}}/{{path}}"),
                "known": known,
            }));
            return resp;
        };
        if has_dot_segment(rest) {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_path",
                Some(name),
                "`.` and `..` path segments are refused".into(),
            );
        }
        self.forward(client, name, route, rest, req).await
    }

    async fn forward(
        &self,
        client: &UpstreamClient,
        name: &str,
        route: &Route,
        rest: &str,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let named = take_names(&mut parts.headers);
        let connection = named.connection;
        let caller = named.caller_token.as_deref();
        if let Err(refusal) = self.callers.admit(caller, name, connection.as_deref()) {
            return caller_refused(name, refusal);
        }
        strip_hop_by_hop(&mut parts.headers);
        strip_grantd_headers(&mut parts.headers);
        parts.headers.remove(header::HOST);
        restrict_accept_encoding(&mut parts.headers);
        let mut head = Head {
            method: parts.method,
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers,
            body_failure: None,
        };
        let target = Target {
            client,
            name,
            route,
            rest,
        };
        // A client may stall or cut its body off midway: it is never sent upstream half-way.
        let body = IdleTimeout::new(body, self.server.body_timeout);
        match connection {
            None => {
                let body = head.streamed(body.boxed());
                self.send(target, head, body, None).await.0
            }
            Some(id) => self.forward_for(target, head, body, &id).await,
        }
    }

    /// A request that names a connection: resolve a usable token, send, and on a `refresh`
    /// signal refresh once and replay once (when the body was small enough to keep).
    async fn forward_for(
        &self,
        target: Target<'_>,
        mut head: Head,
        body: IdleTimeout<Incoming>,
        id: &str,
    ) -> Response<Body> {
        let name = target.name;
        let Some(connections) = &self.connections else {
            return error(
                StatusCode::BAD_REQUEST,
                "connections_disabled",
                Some(name),
                "this grantd has no connection store".into(),
            );
        };
        let grant = match connections.resolve(id, name).await {
            Ok(g) => g,
            Err(refusal) => return refused(name, id, refusal),
        };
        let (first, replayable, _budget) = match self.keep_for_replay(&head, body).await {
            Ok(Replay::Kept(bytes, held)) => (replay_body(&bytes), Some(bytes), held),
            Ok(Replay::Streamed(body)) => (head.streamed(body), None, None),
            Err(failure) => return self.client_body_error(name, failure),
        };
        let (resp, signal) = self.send(target, head.clone(), first, Some(&grant)).await;
        match signal {
            Signal::None => resp,
            Signal::Reauth(detail) => {
                connections.pause(&grant, detail).await;
                resp
            }
            Signal::Refresh => {
                let Some(fresh) = connections.refresh_after_rejection(&grant).await else {
                    return resp;
                };
                let Some(bytes) = replayable else {
                    // The body was streamed: the next call uses the new token.
                    return resp;
                };
                let (resp, signal) = self
                    .send(target, head, replay_body(&bytes), Some(&fresh))
                    .await;
                if let Signal::Reauth(detail) = signal {
                    connections.pause(&fresh, detail).await;
                }
                resp
            }
        }
    }

    /// Buffers a request body that is known to be small, so the request can be replayed after
    /// a refresh. A body that fails or stalls is an error: what was read is never sent.
    async fn keep_for_replay(
        &self,
        head: &Head,
        body: IdleTimeout<Incoming>,
    ) -> Result<Replay, BodyFailure> {
        let declared = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        match declared {
            Some(0) => Ok(Replay::Kept(Bytes::new(), None)),
            Some(n) if n <= self.max_buffered_body => {
                let Some(held) = u32::try_from(n)
                    .ok()
                    .and_then(|n| self.replay_budget.clone().try_acquire_many_owned(n).ok())
                else {
                    // The budget is spent (many uploads in flight): stream this one.
                    return Ok(Replay::Streamed(body.boxed()));
                };
                match body.collect().await {
                    Ok(collected) => Ok(Replay::Kept(collected.to_bytes(), Some(held))),
                    Err(e) => Err(BodyFailure::of(&e)),
                }
            }
            None if body.is_end_stream() => Ok(Replay::Kept(Bytes::new(), None)),
            _ => Ok(Replay::Streamed(body.boxed())),
        }
    }

    /// The client's body failed: say so (and close the connection: its framing is lost).
    fn client_body_error(&self, name: &str, failure: BodyFailure) -> Response<Body> {
        let mut resp = match failure {
            BodyFailure::Stalled => error(
                StatusCode::REQUEST_TIMEOUT,
                "request_body_timeout",
                Some(name),
                format!(
                    "the request body stopped arriving for {:?}; the request was not completed upstream",
                    self.server.body_timeout
                ),
            ),
            BodyFailure::Aborted => error(
                StatusCode::BAD_REQUEST,
                "request_body_incomplete",
                Some(name),
                "the request body ended early or its connection broke; the request was not completed upstream".into(),
            ),
        };
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }

    /// One exchange with the upstream: build the URI, inject the token, send, run the rules.
    async fn send(
        &self,
        target: Target<'_>,
        head: Head,
        body: Body,
        grant: Option<&Grant>,
    ) -> (Response<Body>, Signal) {
        let Target {
            client,
            name,
            route,
            rest,
        } = target;
        let Head {
            method,
            mut query,
            mut headers,
            body_failure,
        } = head;
        if let (Some(grant), Some(c)) = (grant, &self.connections) {
            if let Err(e) = c.apply(name, grant, &mut headers, &mut query) {
                return (
                    error(StatusCode::BAD_GATEWAY, "injection_failed", Some(name), e),
                    Signal::None,
                );
            }
        }
        let base = match (&route.base, grant) {
            (RouteBase::Static(b), _) => std::borrow::Cow::Borrowed(b),
            (RouteBase::Template, Some(g)) => {
                let (t, hosts) = (&route.urls.base, &route.urls.hosts);
                match t.fill(&g.metadata, hosts).and_then(|u| BaseUrl::parse(&u)) {
                    Ok(b) => std::borrow::Cow::Owned(b),
                    Err(e) => {
                        let code = match t.missing(&g.metadata) {
                            Some(_) => "missing_metadata",
                            None => "bad_connection_metadata",
                        };
                        let resp = error(StatusCode::BAD_REQUEST, code, Some(name), e);
                        return (resp, Signal::None);
                    }
                }
            }
            (RouteBase::Template, None) => {
                let message = "this integration's base URL depends on the connection: name one with Grantd-Connection".to_string();
                return (
                    error(
                        StatusCode::BAD_REQUEST,
                        "connection_required",
                        Some(name),
                        message,
                    ),
                    Signal::None,
                );
            }
        };
        let uri = match base.join(rest, query.as_deref()) {
            Ok(uri) => uri,
            Err(e) => {
                let message = format!("cannot build the upstream URL: {e}");
                return (
                    error(StatusCode::BAD_REQUEST, "bad_path", Some(name), message),
                    Signal::None,
                );
            }
        };
        let mut upstream_req = Request::new(body);
        *upstream_req.method_mut() = method.clone();
        *upstream_req.uri_mut() = uri;
        *upstream_req.headers_mut() = headers;
        let resp =
            match tokio::time::timeout(self.request_timeout, client.request(upstream_req)).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => {
                    if let Some(failure) = body_failure.as_ref().and_then(|f| f.get()) {
                        return (self.client_body_error(name, *failure), Signal::None);
                    }
                    route.metrics.upstream_error.inc();
                    let message = format!("cannot reach {}: {}", base.origin(), error_chain(&e));
                    tracing::warn!(integration = name, %message, "upstream request failed");
                    return (
                        error(
                            StatusCode::BAD_GATEWAY,
                            "upstream_unreachable",
                            Some(name),
                            message,
                        ),
                        Signal::None,
                    );
                }
                Err(_) => {
                    route.metrics.upstream_timeout.inc();
                    let message = format!(
                        "{} sent no response headers within {:?}",
                        base.origin(),
                        self.request_timeout
                    );
                    tracing::warn!(integration = name, %message, "upstream timeout");
                    return (
                        error(
                            StatusCode::GATEWAY_TIMEOUT,
                            "upstream_timeout",
                            Some(name),
                            message,
                        ),
                        Signal::None,
                    );
                }
            };
        let (mut parts, body) = resp.into_parts();
        let body = IdleTimeout::new(body, self.upstream.body_timeout).boxed();
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and hyper has already
        // decoded the chunks; a stale length sent on would truncate or desync the client.
        if parts.headers.contains_key(header::TRANSFER_ENCODING) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        strip_hop_by_hop(&mut parts.headers);
        strip_grantd_headers(&mut parts.headers);
        let status = parts.status.as_u16();
        let ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !route.rules.selects(Endpoint::Api, status, ct, rest) {
            route.metrics.passed.inc();
            let signal = if grant.is_some() {
                bearer_rejection(&parts)
            } else {
                Signal::None
            };
            return (Response::from_parts(parts, body), signal);
        }
        let facts = Facts {
            endpoint: Endpoint::Api,
            status,
            headers: rule_headers(&parts.headers),
            method: method.to_string(),
            path: rest.to_string(),
        };
        let origin = base.origin();
        self.rewrite(name, route, &origin, parts, body, facts).await
    }

    /// The buffered path: collect up to `max_buffered_body`, evaluate, apply.
    async fn rewrite(
        &self,
        name: &str,
        route: &Route,
        origin: &str,
        mut parts: http::response::Parts,
        body: Body,
        facts: Facts,
    ) -> (Response<Body>, Signal) {
        let declared = body.size_hint().exact().map(|n| n as usize);
        if declared.is_some_and(|n| n > self.max_buffered_body) {
            route.metrics.oversize.inc();
            return (Response::from_parts(parts, body), Signal::None);
        }
        let (bytes, trailers) = match collect_limited(body, self.max_buffered_body).await {
            Collected::Complete(bytes, trailers) => (bytes, trailers),
            Collected::TooLarge(prefixed) => {
                route.metrics.oversize.inc();
                tracing::debug!(
                    integration = name,
                    limit = self.max_buffered_body,
                    "matched response too large to evaluate; passing through"
                );
                return (Response::from_parts(parts, prefixed.boxed()), Signal::None);
            }
            Collected::Failed(e) if e.downcast_ref::<Stalled>().is_some() => {
                route.metrics.upstream_timeout.inc();
                let message = format!("{origin} stopped sending the response body: {e}");
                let resp = error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_body_timeout",
                    Some(name),
                    message,
                );
                return (resp, Signal::None);
            }
            Collected::Failed(e) => {
                route.metrics.upstream_error.inc();
                let message = format!("{origin} failed while sending the response body: {e}");
                let resp = error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_body_error",
                    Some(name),
                    message,
                );
                return (resp, Signal::None);
            }
        };
        let outcome = match decode_for_rules(&parts.headers, &bytes, self.max_buffered_body) {
            Ok(decoded) => self.evaluate(route.rules.clone(), facts, decoded).await,
            Err(message) => Outcome::RuleError {
                rule: "(body)".into(),
                message,
            },
        };
        let original = Frames {
            data: Some(bytes),
            trailers,
        };
        match outcome {
            Outcome::Unchanged => {
                route.metrics.passed.inc();
                let signal = bearer_rejection(&parts);
                (Response::from_parts(parts, original.boxed()), signal)
            }
            Outcome::RuleError { rule, message } => {
                route.metrics.rule_error.inc();
                route.metrics.rule_failed(&rule);
                tracing::warn!(integration = name, rule = %rule, %message, "rule failed; response passed through unmodified");
                let value = header_text(&format!("{name}/{rule}: {message}"));
                parts.headers.insert(GRANTD_RULE_ERROR, value);
                (Response::from_parts(parts, original.boxed()), Signal::None)
            }
            Outcome::Verdict(v) => {
                route.metrics.rewritten.inc();
                route.metrics.verdict(&v.rule, v.action.as_str());
                tracing::debug!(integration = name, rule = %v.rule, status = v.status, action = v.action.as_str(), "response rewritten");
                let original_status = parts.status.as_u16();
                apply_verdict(name, &v, &mut parts);
                let signal = match v.action {
                    Action::Refresh => Signal::Refresh,
                    Action::Reauth => Signal::Reauth(serde_json::json!({
                        "rule": format!("{name}/{}", v.rule),
                        "error": v.error,
                        "detail": v.detail,
                        "message": v.message,
                        "status": original_status,
                    })),
                    _ => Signal::None,
                };
                let resp = match replacement_body(&v, &mut parts.headers) {
                    Some(body) => Response::from_parts(parts, body),
                    None => Response::from_parts(parts, original.boxed()),
                };
                (resp, signal)
            }
        }
    }

    /// Runs the rules. Bounded rule sets (see [`RuleSet::is_bounded`]) run inline: the engine
    /// stops them within the budget, and a thread hand-off would cost more than the rules
    /// (measured in `benches/engines.rs`). Others run on the blocking pool; if the budget runs
    /// out there (some builtins ignore the engine's time limit) the evaluation is cancelled and
    /// the response passes through: a slow rule costs one blocking thread, never an async
    /// worker or other traffic.
    async fn evaluate(&self, rules: Arc<RuleSet>, facts: Facts, body: Bytes) -> Outcome {
        let cancel = Cancel::default();
        if rules.is_bounded() {
            return rules.evaluate(&facts, &body, &self.eval, &cancel);
        }
        let eval = self.eval.clone();
        let budget = eval.timeout;
        let task_cancel = cancel.clone();
        let task =
            tokio::task::spawn_blocking(move || rules.evaluate(&facts, &body, &eval, &task_cancel));
        match tokio::time::timeout(budget + BUDGET_GRACE, task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(join)) => Outcome::RuleError {
                rule: "(engine)".into(),
                message: format!("evaluation thread failed: {join}"),
            },
            Err(_) => {
                cancel.cancel();
                Outcome::RuleError {
                    rule: "(budget)".into(),
                    message: format!(
                        "rules did not finish within the {budget:?} evaluation budget"
                    ),
                }
            }
        }
    }

    async fn internal(&self, path: &str) -> Response<Body> {
        match path {
            "healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
            // Ready only while the store answers: requests with cached tokens still flow
            // without it, but refreshes and status changes would not.
            "readyz" => match &self.connections {
                None => json_response(StatusCode::OK, &json!({"status": "ready"})),
                Some(c) => {
                    match tokio::time::timeout(Duration::from_secs(2), c.grants.store().ping())
                        .await
                    {
                        Ok(Ok(())) => json_response(StatusCode::OK, &json!({"status": "ready"})),
                        Ok(Err(e)) => json_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &json!({"status": "not_ready", "reason": e.to_string()}),
                        ),
                        Err(_) => json_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &json!({"status": "not_ready", "reason": "the store did not answer within 2 s"}),
                        ),
                    }
                }
            },
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
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                None,
                format!("no internal endpoint /_grantd/{path}"),
            ),
        }
    }
}

/// An upstream 401 that says, per RFC 6750, that the token is invalid: worth one refresh.
fn bearer_rejection(parts: &http::response::Parts) -> Signal {
    let invalid = parts.status == StatusCode::UNAUTHORIZED
        && parts
            .headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("invalid_token"));
    if invalid {
        Signal::Refresh
    } else {
        Signal::None
    }
}

/// A caller without a valid token (401), or one asking for what it may not use (403).
fn caller_refused(name: &str, refusal: CallerRefusal) -> Response<Body> {
    match refusal {
        CallerRefusal::Unauthenticated => {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "caller_unauthenticated",
                Some(name),
                "this grantd authenticates its callers: send Proxy-Authorization: Bearer {caller token}".into(),
            );
            resp.headers_mut().insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="grantd""#),
            );
            resp
        }
        CallerRefusal::Forbidden { caller, what } => error(
            StatusCode::FORBIDDEN,
            "caller_forbidden",
            Some(name),
            format!("caller `{caller}` may not use {what}"),
        ),
    }
}

/// The response for a connection grantd will not use right now. Never contains a token.
fn refused(name: &str, id: &str, refusal: Refusal) -> Response<Body> {
    let (status, code, message, action, retry_at) = match refusal {
        Refusal::NotFound => (StatusCode::NOT_FOUND, "unknown_connection", format!("no connection `{id}`"), None, None),
        Refusal::WrongIntegration { actual } => (
            StatusCode::BAD_REQUEST,
            "wrong_integration",
            format!("connection `{id}` belongs to `{actual}`, not `{name}`"),
            None,
            None,
        ),
        Refusal::NeedsReauth => (
            StatusCode::UNAUTHORIZED,
            "needs_reauth",
            "the user must authorize this connection again".into(),
            Some("reauth"),
            None,
        ),
        Refusal::ConfigError { error } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "config_error",
            format!("the integration's client credentials were rejected ({error}): the operator must fix the config"),
            Some("fix_config"),
            None,
        ),
        Refusal::Unavailable { error, retry_at } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "refresh_unavailable",
            format!("the access token expired and refreshing it failed for now: {error}"),
            Some("retry"),
            retry_at,
        ),
        Refusal::Broken(e) => (StatusCode::INTERNAL_SERVER_ERROR, "connection_unusable", e, None, None),
    };
    let body = json!({"error": code, "message": message, "connection_id": id, "integration": name});
    let mut resp = json_response(status, &body);
    let h = resp.headers_mut();
    h.insert(HeaderName::from_static("grantd-error"), header_text(code));
    if let Some(action) = action {
        h.insert(GRANTD_ACTION, HeaderValue::from_static(action));
    }
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="invalid_token""#),
        );
    }
    if let Some(at) = retry_at {
        let secs = ((at - crate::time::now_ms()) / 1000).max(1);
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The engine checks its own deadline; this grace lets it report a precise error first.
const BUDGET_GRACE: Duration = Duration::from_millis(20);

const GRANTD_RULE: HeaderName = HeaderName::from_static("grantd-rule");
const GRANTD_ORIGINAL_STATUS: HeaderName = HeaderName::from_static("grantd-original-status");
const GRANTD_ERROR: HeaderName = HeaderName::from_static("grantd-error");
const GRANTD_ERROR_DETAIL: HeaderName = HeaderName::from_static("grantd-error-detail");
const GRANTD_ACTION: HeaderName = HeaderName::from_static("grantd-action");
const GRANTD_RULE_ERROR: HeaderName = HeaderName::from_static("grantd-rule-error");

/// `/slack/chat.postMessage` → (`slack`, `/chat.postMessage`).
fn split_route(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    match trimmed.find('/') {
        Some(i) => (&trimmed[..i], &trimmed[i..]),
        None => (trimmed, ""),
    }
}

/// `..` would let a request climb out of the base URL's path (`/api/../admin`). Upstream
/// servers differ in what they take for a separator or a dot, so every reading counts: percent
/// encoding (even double: `%252e`), `%2f` and backslashes as `/`, and `;` parameters after a
/// segment (`..;/`, as Tomcat and Spring read it). Paths with none of `.`, `%`, `\` and `;`
/// (most API paths) are passed without allocating: this runs on every request.
fn has_dot_segment(rest: &str) -> bool {
    if !rest
        .bytes()
        .any(|b| matches!(b, b'.' | b'%' | b'\\' | b';'))
    {
        return false;
    }
    let mut path = rest.to_string();
    for _ in 0..3 {
        if dot_segment_in(&path) {
            return true;
        }
        let decoded = percent_decode(&path);
        if decoded == path {
            return false;
        }
        path = decoded;
    }
    dot_segment_in(&path)
}

fn dot_segment_in(path: &str) -> bool {
    path.split(['/', '\\'])
        .map(|seg| seg.split(';').next().unwrap_or(""))
        .any(|seg| seg == "." || seg == "..")
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// RFC 9110 §7.6.1 hop-by-hop headers, plus any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// `Grantd-*` headers are grantd's own: an app's never reach the provider, and a provider's
/// never reach the app (one could otherwise fake `Grantd-Action: reauth`).
fn strip_grantd_headers(headers: &mut HeaderMap) {
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("grantd-"))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
}

/// Rules can only read bodies we can decode, so never ask the provider for `br` or `zstd`.
fn restrict_accept_encoding(headers: &mut HeaderMap) {
    let Some(ae) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let kept: Vec<&str> = ae
        .split(',')
        .map(str::trim)
        .filter(|c| {
            let coding = c
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(
                coding.as_str(),
                "gzip" | "x-gzip" | "deflate" | "identity" | "*"
            )
        })
        .collect();
    match HeaderValue::from_str(&kept.join(", ")) {
        Ok(v) if !kept.is_empty() => {
            headers.insert(header::ACCEPT_ENCODING, v);
        }
        _ => {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
    }
}

/// Response headers as rules see them: lower-case names, repeated values joined with ", ",
/// non-UTF-8 bytes replaced. Public only so the fuzz targets reach the proxy's real input path.
#[doc(hidden)]
pub fn rule_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.keys_len());
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        out.push((name.as_str().to_string(), joined));
    }
    out
}

/// Decodes `gzip`/`deflate` bodies for the rules only (the original bytes are what is sent
/// on), never inflating past the buffer limit. Public only for the fuzz targets.
#[doc(hidden)]
pub fn decode_for_rules(headers: &HeaderMap, body: &Bytes, limit: usize) -> Result<Bytes, String> {
    let coding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let mut out = Vec::new();
    let read = match coding.as_deref() {
        None | Some("") | Some("identity") => return Ok(body.clone()),
        Some("gzip") | Some("x-gzip") => flate2::read::GzDecoder::new(&body[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        Some("deflate") => flate2::read::ZlibDecoder::new(&body[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        Some(other) => {
            return Err(format!(
                "cannot decode content-encoding `{other}` for rules"
            ))
        }
    };
    read.map_err(|e| format!("cannot decode the {} body: {e}", coding.unwrap_or_default()))?;
    if out.len() > limit {
        return Err(format!(
            "decoded body exceeds max_buffered_body ({limit} bytes)"
        ));
    }
    Ok(Bytes::from(out))
}

fn apply_verdict(integration: &str, v: &Verdict, parts: &mut http::response::Parts) {
    let original = parts.status;
    parts.status = StatusCode::from_u16(v.status).unwrap_or(original);
    let h = &mut parts.headers;
    h.insert(
        GRANTD_RULE,
        header_text(&format!("{integration}/{}", v.rule)),
    );
    h.insert(GRANTD_ORIGINAL_STATUS, HeaderValue::from(original.as_u16()));
    h.insert(GRANTD_ACTION, HeaderValue::from_static(v.action.as_str()));
    if let Some(e) = &v.error {
        h.insert(GRANTD_ERROR, header_text(e));
    }
    if let Some(d) = &v.detail {
        h.insert(GRANTD_ERROR_DETAIL, header_text(d));
    }
    if let Some(www) = www_authenticate(v) {
        h.insert(header::WWW_AUTHENTICATE, www);
    }
    if let Some(secs) = v.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    for (name, value) in &v.headers {
        if let (Ok(n), Ok(val)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.insert(n, val);
        }
    }
}

/// RFC 6750 §3: `invalid_token` for 401, `insufficient_scope` for a 403 the user must fix by
/// consenting again.
fn www_authenticate(v: &Verdict) -> Option<HeaderValue> {
    let code = match (v.status, v.action) {
        (401, _) => "invalid_token",
        (403, crate::rules::Action::Reauth) => "insufficient_scope",
        _ => return None,
    };
    let mut value = format!("Bearer error=\"{code}\"");
    if let Some(msg) = &v.message {
        // error_description allows %x20-21 / %x23-5B / %x5D-7E only.
        let clean: String = msg
            .chars()
            .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
            .take(200)
            .collect();
        value.push_str(&format!(", error_description=\"{clean}\""));
    }
    HeaderValue::from_str(&value).ok()
}

/// The rule's replacement body, if any; fixes the framing headers to match it.
fn replacement_body(v: &Verdict, headers: &mut HeaderMap) -> Option<Body> {
    let body = v.body.as_ref()?;
    let (bytes, ct) = match body {
        serde_json::Value::String(s) => (Bytes::from(s.clone()), "text/plain; charset=utf-8"),
        other => (Bytes::from(other.to_string()), "application/json"),
    };
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    Some(full(bytes))
}

/// Visible ASCII only, at most 300 bytes: header values must never break framing.
fn header_text(s: &str) -> HeaderValue {
    let clean: String = s
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(300)
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("?"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// A JSON error from grantd itself (never from the provider), with a stable `error` code.
fn error(
    status: StatusCode,
    code: &str,
    integration: Option<&str>,
    message: String,
) -> Response<Body> {
    let mut body = json!({"error": code, "message": message});
    if let Some(i) = integration {
        body["integration"] = json!(i);
    }
    let mut resp = json_response(status, &body);
    resp.headers_mut()
        .insert(HeaderName::from_static("grantd-error"), header_text(code));
    resp
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(json_body(value));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_body(value: &serde_json::Value) -> Body {
    full(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_on_the_first_segment() {
        assert_eq!(
            split_route("/slack/chat.postMessage"),
            ("slack", "/chat.postMessage")
        );
        assert_eq!(split_route("/slack"), ("slack", ""));
        assert_eq!(split_route("/slack/"), ("slack", "/"));
        assert_eq!(split_route("/"), ("", ""));
    }

    #[test]
    fn dot_segments_are_detected_in_every_reading_of_the_path() {
        for bad in [
            "/..",
            "/a/../b",
            "/%2e%2e/x",
            "/.%2E/x",
            "/%2E./x",
            "/./x",
            "/%2e",
            "/x/%2E%2e",
            "/..%2f",
            "/%2e%2e%2f",
            "/..;/admin",
            "/.;x/y",
            "/..\\admin",
            "/a\\..\\b",
            "/..%5cadmin",
            "/%252e%252e/admin",
            "/%25252e%25252e/admin",
            "/%2e%2fx",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for ok in [
            "/a.b",
            "/..a",
            "/...",
            "/a%2e",
            "/v1/users.list",
            "/a;b=1",
            "/a%20b",
            "/%2e%2ea",
            "",
        ] {
            assert!(!has_dot_segment(ok), "{ok}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_connection_named_ones_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["x-kept"]
        );
    }

    #[test]
    fn accept_encoding_keeps_only_codings_rules_can_read() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0.8, zstd"),
        );
        restrict_accept_encoding(&mut h);
        assert_eq!(h[header::ACCEPT_ENCODING], "gzip;q=0.8");
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br"));
        restrict_accept_encoding(&mut h);
        assert_eq!(h[header::ACCEPT_ENCODING], "identity");
    }

    #[test]
    fn gzip_bodies_are_decoded_for_rules_within_the_limit() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(br#"{"ok":false}"#).unwrap();
        let gz = Bytes::from(enc.finish().unwrap());
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(
            &decode_for_rules(&h, &gz, 1024).unwrap()[..],
            br#"{"ok":false}"#
        );
        assert!(decode_for_rules(&h, &gz, 4)
            .unwrap_err()
            .contains("max_buffered_body"));
        assert!(decode_for_rules(&h, &Bytes::from_static(b"not gzip"), 1024).is_err());
    }
}
