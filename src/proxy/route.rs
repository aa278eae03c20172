//! The first phase: which integration a request is for, and whether it may go anywhere at all.
//!
//! Owns the routing table (one [`Route`] per integration, built at startup) and the checks on
//! the request line: no `CONNECT`, no absolute-form targets, no `.`/`..` segments in any reading
//! of the path. It never reads the request's authority and never touches headers or bodies.

use std::borrow::Cow;
use std::sync::Arc;

use http::{Method, Uri, Version};
use serde_json::json;

use super::respond::Failure;
use crate::rules::RuleSet;
use crate::telemetry::IntegrationMetrics;
use crate::template::{BaseUrl, Urls};
use crate::upstream::UpstreamClient;

/// Where a request goes: the worker's client, the integration and the path below its base.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub(super) client: &'a UpstreamClient,
    pub(super) name: &'a str,
    pub(super) route: &'a Route,
    pub(super) rest: &'a str,
}

/// One routable integration.
pub(super) struct Route {
    base: RouteBase,
    pub(super) urls: Arc<Urls>,
    pub(super) rules: Arc<RuleSet>,
    pub(super) metrics: IntegrationMetrics,
    /// `integrations.*.forward_traceparent`: W3C trace context goes on to the provider.
    pub(super) forward_traceparent: bool,
}

/// A fixed base URL, or one that depends on the connection's metadata
/// (`https://{metadata.subdomain}.zendesk.com/api/v2`).
enum RouteBase {
    Static(BaseUrl),
    /// Filled from `Route::urls` per connection.
    Template,
}

impl Route {
    pub(super) fn new(
        name: &str,
        urls: Urls,
        rules: RuleSet,
        metrics: IntegrationMetrics,
    ) -> anyhow::Result<Route> {
        let base = if urls.base.is_fixed() {
            let filled = urls
                .base
                .fill(&json!({}), &urls.hosts)
                .map_err(anyhow::Error::msg)?;
            let base = BaseUrl::parse(&filled)
                .map_err(|e| anyhow::anyhow!("integration {name}: base_url {e}"))?;
            if !base.is_https() {
                tracing::warn!(integration = %name, base_url = %base.origin(), "plain-HTTP upstream: tokens would cross the network unencrypted");
            }
            RouteBase::Static(base)
        } else {
            RouteBase::Template
        };
        Ok(Route {
            base,
            urls: Arc::new(urls),
            rules: Arc::new(rules),
            metrics,
            forward_traceparent: false,
        })
    }

    /// The base URL for a request made with `metadata` (the connection's, if one is named).
    pub(super) fn base_for(
        &self,
        metadata: Option<&serde_json::Value>,
    ) -> Result<Cow<'_, BaseUrl>, Failure> {
        match (&self.base, metadata) {
            (RouteBase::Static(b), _) => Ok(Cow::Borrowed(b)),
            (RouteBase::Template, Some(m)) => {
                let (t, hosts) = (&self.urls.base, &self.urls.hosts);
                match t.fill(m, hosts).and_then(|u| BaseUrl::parse(&u)) {
                    Ok(b) => Ok(Cow::Owned(b)),
                    Err(message) => Err(Failure::Metadata {
                        missing: t.missing(m).is_some(),
                        message,
                    }),
                }
            }
            (RouteBase::Template, None) => Err(Failure::ConnectionRequired),
        }
    }
}

/// Where the request line sends a request.
#[derive(Debug, PartialEq)]
pub(super) enum Routed<'a> {
    /// `/_grantd/{path}`: grantd's own endpoints.
    Internal(&'a str),
    /// `/{name}/{rest}`.
    Integration { name: &'a str, rest: &'a str },
}

/// Reads the request line. Whether `name` is a known integration, and whether `rest` is a safe
/// path ([`check_path`]), are the caller's to check, in that order.
pub(super) fn route<'a>(
    method: &Method,
    uri: &'a Uri,
    version: Version,
) -> Result<Routed<'a>, Failure> {
    if method == Method::CONNECT {
        return Err(Failure::ConnectMethod);
    }
    // HTTP/2 requests always carry :scheme/:authority (grantd's own); only an HTTP/1
    // absolute-form target asks us to go somewhere else. Routing never reads the authority.
    let absolute = uri.scheme().is_some() || uri.authority().is_some();
    if absolute && version < Version::HTTP_2 {
        return Err(Failure::AbsoluteForm);
    }
    let path = uri.path();
    if let Some(internal) = path.strip_prefix("/_grantd/") {
        return Ok(Routed::Internal(internal));
    }
    let (name, rest) = split_route(path);
    Ok(Routed::Integration { name, rest })
}

/// The path below the base URL may not climb out of it (checked once the integration is known).
pub(super) fn check_path(rest: &str) -> Result<(), Failure> {
    match has_dot_segment(rest) {
        true => Err(Failure::DotSegment),
        false => Ok(()),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(method: Method, target: &str, version: Version) -> Result<Routed<'static>, String> {
        let uri: &'static Uri = Box::leak(Box::new(target.parse().unwrap()));
        route(&method, uri, version).map_err(|f| format!("{f:?}"))
    }

    #[test]
    fn the_request_line_is_routed_without_a_socket() {
        assert_eq!(
            routed(Method::GET, "/slack/chat.postMessage?x=1", Version::HTTP_11),
            Ok(Routed::Integration {
                name: "slack",
                rest: "/chat.postMessage"
            })
        );
        assert_eq!(
            routed(Method::GET, "/_grantd/healthz", Version::HTTP_11),
            Ok(Routed::Internal("healthz"))
        );
        assert_eq!(
            routed(Method::CONNECT, "/slack/x", Version::HTTP_11),
            Err("ConnectMethod".into())
        );
        assert_eq!(
            routed(Method::GET, "http://evil.example/slack/x", Version::HTTP_11),
            Err("AbsoluteForm".into())
        );
        assert!(routed(Method::GET, "http://grantd/slack/x", Version::HTTP_2).is_ok());
        assert!(check_path("/a/%2e%2e/admin").is_err());
    }

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
}
