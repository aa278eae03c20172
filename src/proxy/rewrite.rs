//! The fifth phase: the rules. A response a rule selects is buffered (up to
//! `max_buffered_body`), decoded for the rules, evaluated, and rewritten by the verdict; any
//! other response streams through untouched.
//!
//! Owns the decision to buffer and what a verdict signals to the connection phase
//! ([`Signal`]). It must not evaluate an unbounded rule on an async worker (`rules::run` puts
//! those on the blocking pool under the budget) and must not buffer a response no rule selects.

use std::io::Read;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::headers::{clean_response, rule_headers};
use super::respond::{apply_verdict, header_text, replacement_body, Failure, GRANTD_RULE_ERROR};
use super::route::Target;
use super::Proxy;
use crate::body::{collect_limited, Body, Collected, Frames, IdleTimeout, Stalled};
use crate::rules::{Action, Endpoint, Facts, Outcome, Verdict};

/// What a response says should happen to the connection that made it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Signal {
    None,
    Refresh,
    Reauth(serde_json::Value),
}

impl Proxy {
    /// Streams the response through, or, when a rule selects it, buffers and rewrites it.
    pub(super) async fn rewrite(
        &self,
        target: Target<'_>,
        method: &Method,
        origin: &str,
        resp: Response<Incoming>,
        connection: bool,
    ) -> Result<(Response<Body>, Signal), Failure> {
        let Target { route, rest, .. } = target;
        let (mut parts, body) = resp.into_parts();
        let body = IdleTimeout::new(body, self.upstream.body_timeout).boxed();
        clean_response(&mut parts.headers);
        let status = parts.status.as_u16();
        let ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !route.rules.selects(Endpoint::Api, status, ct, rest) {
            route.metrics.passed.inc();
            let signal = match connection {
                true => bearer_rejection(&parts),
                false => Signal::None,
            };
            return Ok((Response::from_parts(parts, body), signal));
        }
        let facts = Facts {
            endpoint: Endpoint::Api,
            status,
            headers: rule_headers(&parts.headers),
            method: method.to_string(),
            path: rest.to_string(),
        };
        let (bytes, trailers) = match self.buffer(target, origin, body).await? {
            Ok(collected) => collected,
            Err(passed) => return Ok((Response::from_parts(parts, passed), Signal::None)),
        };
        let outcome = match decode_for_rules(&parts.headers, &bytes, self.max_buffered_body) {
            Ok(decoded) => {
                let started = std::time::Instant::now();
                let outcome =
                    crate::rules::run(route.rules.clone(), facts, decoded, &self.eval).await;
                route
                    .metrics
                    .timings
                    .evaluation(started.elapsed().as_secs_f64());
                outcome
            }
            Err(message) => Outcome::RuleError {
                rule: "(body)".into(),
                message,
            },
        };
        let original = Frames {
            data: Some(bytes),
            trailers,
        };
        Ok(self.apply(target, outcome, parts, original))
    }

    /// Collects a selected body: `Ok(Ok(..))` to evaluate, `Ok(Err(body))` to pass through
    /// unread (too large for the rules), `Err` when the upstream failed while sending it.
    async fn buffer(
        &self,
        target: Target<'_>,
        origin: &str,
        body: Body,
    ) -> Result<Result<(Bytes, Option<HeaderMap>), Body>, Failure> {
        let (name, metrics) = (target.name, &target.route.metrics);
        let limit = self.max_buffered_body;
        if body.size_hint().exact().is_some_and(|n| n as usize > limit) {
            metrics.oversize.inc();
            return Ok(Err(body));
        }
        match collect_limited(body, limit).await {
            Collected::Complete(bytes, trailers) => Ok(Ok((bytes, trailers))),
            Collected::TooLarge(prefixed) => {
                metrics.oversize.inc();
                tracing::debug!(
                    integration = name,
                    limit,
                    "matched response too large to evaluate; passing through"
                );
                Ok(Err(prefixed.boxed()))
            }
            Collected::Failed(e) if e.downcast_ref::<Stalled>().is_some() => {
                metrics.upstream_timeout.inc();
                Err(Failure::UpstreamBodyTimeout(format!(
                    "{origin} stopped sending the response body: {e}"
                )))
            }
            Collected::Failed(e) => {
                metrics.upstream_error.inc();
                Err(Failure::UpstreamBodyError(format!(
                    "{origin} failed while sending the response body: {e}"
                )))
            }
        }
    }

    /// The rules' outcome on the buffered response, and what it signals.
    fn apply(
        &self,
        target: Target<'_>,
        outcome: Outcome,
        mut parts: http::response::Parts,
        original: Frames,
    ) -> (Response<Body>, Signal) {
        let (name, metrics) = (target.name, &target.route.metrics);
        match outcome {
            Outcome::Unchanged => {
                metrics.passed.inc();
                let signal = bearer_rejection(&parts);
                (Response::from_parts(parts, original.boxed()), signal)
            }
            Outcome::RuleError { rule, message } => {
                metrics.rule_error.inc();
                metrics.rule_failed(&rule);
                crate::traces::rule_failed(&rule);
                tracing::warn!(integration = name, rule = %rule, %message, "rule failed; response passed through unmodified");
                let value = header_text(&format!("{name}/{rule}: {message}"));
                parts.headers.insert(GRANTD_RULE_ERROR, value);
                (Response::from_parts(parts, original.boxed()), Signal::None)
            }
            Outcome::Verdict(v) => {
                metrics.rewritten.inc();
                metrics.verdict(&v.rule, v.action.as_str());
                tracing::debug!(integration = name, rule = %v.rule, status = v.status, action = v.action.as_str(), "response rewritten");
                let signal = signal_of(name, &v, parts.status.as_u16());
                apply_verdict(name, &v, &mut parts);
                let resp = match replacement_body(&v, &mut parts.headers) {
                    Some(body) => Response::from_parts(parts, body),
                    None => Response::from_parts(parts, original.boxed()),
                };
                (resp, signal)
            }
        }
    }
}

/// What a verdict asks of the connection; a `reauth` carries what the pause records.
fn signal_of(name: &str, v: &Verdict, original_status: u16) -> Signal {
    match v.action {
        Action::Refresh => Signal::Refresh,
        Action::Reauth => Signal::Reauth(serde_json::json!({
            "rule": format!("{name}/{}", v.rule),
            "error": v.error,
            "detail": v.detail,
            "message": v.message,
            "status": original_status,
        })),
        _ => Signal::None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

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
