//! The fourth phase: one exchange with the upstream. Builds the URL on the integration's base,
//! injects the connection's credential, sends with the request timeout, and hands the response
//! to [`super::rewrite`].
//!
//! Owns request bodies on their way out (kept for replay within the budget, or streamed and
//! watched) and the mapping of transport failures to typed [`Failure`]s. It must not open a
//! connection anywhere but the route's base URL, and never sends a body that failed half-way.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::Instrument as _;

use super::headers::trace_context;
use super::inject::inject;
use super::respond::{error_chain, Failure};
use super::rewrite::Signal;
use super::route::Target;
use super::Proxy;
use crate::body::{empty, full, Body, BodyFailure, IdleTimeout, Watched};
use crate::connections::Connection;
use crate::traces;

/// The request as the app sent it, kept so it can be sent again after a refresh.
#[derive(Clone)]
pub(super) struct Head {
    pub(super) method: Method,
    pub(super) query: Option<String>,
    pub(super) headers: HeaderMap,
    /// Set when the request body is streamed: how it failed, if it did.
    body_failure: Option<Arc<OnceLock<BodyFailure>>>,
}

impl Head {
    pub(super) fn new(parts: http::request::Parts) -> Head {
        Head {
            query: parts.uri.query().map(str::to_string),
            method: parts.method,
            headers: parts.headers,
            body_failure: None,
        }
    }

    /// Watches a body that is sent as a stream, so its failure is told from the upstream's.
    pub(super) fn streamed(&mut self, body: Body) -> Body {
        let (watched, failure) = Watched::new(body);
        self.body_failure = Some(failure);
        watched.boxed()
    }
}

/// A request body as it will be sent: kept in memory (replayable; its share of the replay
/// budget is held until the request is done), or streamed once.
pub(super) enum Replay {
    Kept(Bytes, Option<tokio::sync::OwnedSemaphorePermit>),
    Streamed(Body),
}

impl Replay {
    /// A kept body, sent (again).
    pub(super) fn body(bytes: &Bytes) -> Body {
        if bytes.is_empty() {
            empty()
        } else {
            full(bytes.clone())
        }
    }
}

impl Proxy {
    /// Buffers a request body that is known to be small, so the request can be replayed after
    /// a refresh. A body that fails or stalls is an error: what was read is never sent.
    pub(super) async fn keep_for_replay(
        &self,
        head: &Head,
        body: IdleTimeout<Incoming>,
    ) -> Result<Replay, Failure> {
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
                    Err(e) => Err(self.client_body(BodyFailure::of(&e))),
                }
            }
            None if body.is_end_stream() => Ok(Replay::Kept(Bytes::new(), None)),
            _ => Ok(Replay::Streamed(body.boxed())),
        }
    }

    pub(super) fn client_body(&self, failure: BodyFailure) -> Failure {
        Failure::ClientBody {
            failure,
            timeout: self.server.body_timeout,
        }
    }

    /// One exchange with the upstream: build the URI, inject the token, send, run the rules.
    pub(super) async fn send(
        &self,
        target: Target<'_>,
        head: Head,
        body: Body,
        grant: Option<&Connection>,
    ) -> Result<(Response<Body>, Signal), Failure> {
        let Target { name, route, .. } = target;
        let Head {
            method,
            mut query,
            mut headers,
            body_failure,
        } = head;
        if let Some(grant) = grant {
            inject(&route.rules, grant, &mut headers, &mut query).map_err(Failure::Injection)?;
        }
        let base = route.base_for(grant.map(|g| &g.metadata))?;
        let uri = base
            .join(target.rest, query.as_deref())
            .map_err(|e| Failure::UpstreamUrl(e.to_string()))?;
        let span = traces::upstream(&method, name);
        trace_context(&mut headers, route.forward_traceparent, &span);
        let mut upstream_req = Request::new(body);
        *upstream_req.method_mut() = method.clone();
        *upstream_req.uri_mut() = uri;
        *upstream_req.headers_mut() = headers;
        let sent = tokio::time::timeout(self.request_timeout, target.client.request(upstream_req));
        let started = std::time::Instant::now();
        let resp = match sent.instrument(span.clone()).await {
            Ok(Ok(resp)) => {
                route
                    .metrics
                    .timings
                    .upstream(started.elapsed().as_secs_f64());
                traces::upstream_answered(&span, resp.status().as_u16());
                resp
            }
            Ok(Err(e)) => {
                traces::upstream_failed(&span, "unreachable");
                if let Some(failure) = body_failure.as_ref().and_then(|f| f.get()) {
                    return Err(self.client_body(*failure));
                }
                route.metrics.upstream_error.inc();
                let message = format!("cannot reach {}: {}", base.origin(), error_chain(&e));
                tracing::warn!(integration = name, %message, "upstream request failed");
                return Err(Failure::Unreachable(message));
            }
            Err(_) => {
                traces::upstream_failed(&span, "timeout");
                route.metrics.upstream_timeout.inc();
                let message = format!(
                    "{} sent no response headers within {:?}",
                    base.origin(),
                    self.request_timeout
                );
                tracing::warn!(integration = name, %message, "upstream timeout");
                return Err(Failure::UpstreamTimeout(message));
            }
        };
        drop(span); // the exchange ends with the response headers; rules are the request's
        let origin = base.origin();
        self.rewrite(target, &method, &origin, resp, grant.is_some())
            .await
    }
}
