//! The second phase: what a request's headers say about who is asking, and what may cross.
//!
//! Owns header hygiene both ways: the caller's token and the named connection are taken out
//! (neither ever reaches the provider), hop-by-hop and `Grantd-*` headers are dropped, and
//! `Accept-Encoding` is narrowed to codings rules can read, W3C trace context goes on only
//! where an integration asks for it. It decides nothing about whether a caller or connection
//! may be used (that is `callers` and [`super::connection`]).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Who is asking and for which connection, as a request's headers say.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Named {
    /// `Grantd-Connection: {id}` or, for SDKs that only let you set a token,
    /// `Authorization: Bearer grantd:{id}`.
    pub connection: Option<String>,
    /// The caller's token: `Proxy-Authorization: Bearer {token}`, or the SDK form
    /// `Authorization: Bearer grantd:{id}/{token}`.
    pub caller_token: Option<String>,
}

/// Takes the connection and the caller's token out of the headers. `Proxy-Authorization`
/// always goes; the app's `Authorization` goes whenever a connection is named, so neither ever
/// reaches the provider.
fn take_names(headers: &mut HeaderMap) -> Named {
    let bearer = |name: HeaderName, headers: &HeaderMap| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|v| v.trim().to_string())
    };
    let mut caller_token = bearer(header::PROXY_AUTHORIZATION, headers);
    headers.remove(header::PROXY_AUTHORIZATION);
    let named = headers
        .get("grantd-connection")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string());
    let from_auth = bearer(header::AUTHORIZATION, headers)
        .and_then(|v| v.strip_prefix("grantd:").map(str::to_string))
        .map(|v| match v.split_once('/') {
            Some((id, token)) => {
                caller_token = caller_token.take().or(Some(token.to_string()));
                id.to_string()
            }
            None => v,
        });
    let connection = named.or(from_auth).filter(|id| !id.is_empty());
    if connection.is_some() {
        headers.remove("grantd-connection");
        headers.remove(header::AUTHORIZATION);
    }
    Named {
        connection,
        caller_token,
    }
}

/// The app's request headers made fit to send on: names taken out, hygiene applied, `Host`
/// dropped (the upstream's comes from its URL).
pub(super) fn clean_request(headers: &mut HeaderMap) -> Named {
    let named = take_names(headers);
    strip_hop_by_hop(headers);
    strip_grantd_headers(headers);
    headers.remove(header::HOST);
    restrict_accept_encoding(headers);
    named
}

/// W3C trace context toward the provider: stripped unless the integration opted in
/// (`forward_traceparent`); when it did and traces are on, it names grantd's `upstream` span
/// (same trace, grantd as the parent), else the app's goes on as it came.
pub(super) fn trace_context(headers: &mut HeaderMap, forward: bool, upstream: &tracing::Span) {
    if forward {
        crate::traces::inject(upstream, headers);
    } else {
        headers.remove("traceparent");
        headers.remove("tracestate");
    }
}

/// The provider's response headers made fit to send back.
pub(super) fn clean_response(headers: &mut HeaderMap) {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and hyper has already
    // decoded the chunks; a stale length sent on would truncate or desync the client.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(headers);
    strip_grantd_headers(headers);
}

/// RFC 9110 §7.6.1 hop-by-hop headers, plus any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names costs less than nine removals, each
    // hashing its name (7.6% of pass-through instructions under callgrind).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Those listed in `Connection`, then those hop-by-hop by name (one list: `is_hop_by_hop`).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .chain(headers.keys().filter(|n| is_hop_by_hop(n)).cloned())
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Named hop-by-hop by RFC 9110 §7.6.1 (plus `Proxy-*` and the legacy `Keep-Alive` and
/// `Proxy-Connection`); others become so by being listed in `Connection`.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "keep-alive"
            | "proxy-connection"
    )
}

/// `Grantd-*` headers are grantd's own: an app's never reach the provider, and a provider's
/// never reach the app (one could otherwise fake `Grantd-Action: reauth`).
fn strip_grantd_headers(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| k.as_str().starts_with("grantd-")) {
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The fast path (nothing hop-by-hop present) must not skip a message that carries only
    /// one of them.
    #[test]
    fn each_hop_by_hop_header_alone_is_stripped() {
        for name in [
            "connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
            "keep-alive",
            "proxy-connection",
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("x"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            assert_eq!(
                h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
                vec!["x-kept"],
                "{name}"
            );
        }
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
    fn the_connection_comes_from_its_header_or_a_grantd_bearer() {
        let mut h = HeaderMap::new();
        h.insert("grantd-connection", HeaderValue::from_static("acct_1"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer app-token"),
        );
        assert_eq!(take_names(&mut h).connection.as_deref(), Some("acct_1"));
        assert!(
            h.get(header::AUTHORIZATION).is_none(),
            "the app's Authorization never goes upstream"
        );

        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer grantd:acct_2"),
        );
        assert_eq!(take_names(&mut h).connection.as_deref(), Some("acct_2"));
        assert!(h.is_empty());

        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer app-token"),
        );
        assert_eq!(take_names(&mut h), Named::default());
        assert!(
            h.get(header::AUTHORIZATION).is_some(),
            "no connection named: the app's own token is its business"
        );
    }

    #[test]
    fn the_caller_token_comes_from_proxy_authorization_or_the_sdk_form() {
        let mut h = HeaderMap::new();
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Bearer gdc_abc"),
        );
        h.insert("grantd-connection", HeaderValue::from_static("acct_1"));
        let named = take_names(&mut h);
        assert_eq!(named.caller_token.as_deref(), Some("gdc_abc"));
        assert_eq!(named.connection.as_deref(), Some("acct_1"));
        assert!(h.is_empty(), "{h:?}");

        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer grantd:acct:2@x/gdc_def"),
        );
        let named = take_names(&mut h);
        assert_eq!(named.connection.as_deref(), Some("acct:2@x"));
        assert_eq!(named.caller_token.as_deref(), Some("gdc_def"));
        assert!(h.is_empty());
    }
}
