//! The proxy end to end: real sockets between a client, grantd and a fake provider.

mod common;

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};

/// Rules that exercise failure modes; routed to the fake upstream.
const LAB_RULES: &str = r#"
integration: lab
base_url: http://127.0.0.1:1
rules:
  - name: throws
    match: { status: [200], content_type: json }
    expr: 'body.throw = true ? $error("rule exploded")'
  - name: runaway
    match: { status: [200], content_type: json }
    expr: 'body.items ? ($count($distinct(body.items)) > 0 ? {"status": 500})'
  - name: malformed-result
    match: { status: [200], content_type: json }
    expr: 'body.bad_result = true ? {"status": 999}'
  - name: replace
    match: { status: [200], content_type: json }
    expr: |
      body.replace = true
        ? { "status": 429, "action": "retry", "error": "slow_down", "retry_after": 7,
            "headers": { "x-lab": "yes" }, "body": { "replaced": true } }
"#;

fn config_for(upstream: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "integrations:\n  slack: {{ base_url: \"http://{upstream}/api\" }}\n  lab: {{ base_url: \"http://{upstream}\" }}\n  plain: {{ base_url: \"http://{upstream}/plain\" }}\n{extra}"
    )
}

fn start(upstream: std::net::SocketAddr, extra: &str) -> Grantd {
    grantd(&config_for(upstream, extra))
        .shipped_rules("slack")
        .rule_file("lab.yaml", LAB_RULES)
        .start()
}

fn fixed(
    status: u16,
    content_type: &'static str,
    body: impl Into<Bytes> + Clone + Send + Sync + 'static,
) -> Handler {
    handler(move |_req| {
        let body = body.clone().into();
        async move {
            Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(full(body))
                .unwrap()
        }
    })
}

#[tokio::test]
async fn slack_token_expired_in_a_200_reaches_the_app_as_401() {
    let body = r#"{"ok":false,"error":"token_expired"}"#;
    let up = upstream(fixed(200, "application/json; charset=utf-8", body)).await;
    let g = start(up, "");
    let got = get(g.addr, "/slack/chat.postMessage").await;
    assert_eq!(got.status, 401);
    assert_eq!(got.header("grantd-rule"), Some("slack/token-expired"));
    assert_eq!(got.header("grantd-original-status"), Some("200"));
    assert_eq!(got.header("grantd-error"), Some("token_expired"));
    assert_eq!(got.header("grantd-action"), Some("refresh"));
    let www = got.header("www-authenticate").unwrap();
    assert!(www.starts_with(r#"Bearer error="invalid_token""#), "{www}");
    assert_eq!(
        &got.body[..],
        body.as_bytes(),
        "the provider's body is kept"
    );
}

#[tokio::test]
async fn missing_scope_gets_insufficient_scope_challenge() {
    let up = upstream(fixed(
        200,
        "application/json",
        r#"{"ok":false,"error":"missing_scope","needed":"chat:write"}"#,
    ))
    .await;
    let g = start(up, "");
    let got = get(g.addr, "/slack/chat.postMessage").await;
    assert_eq!(got.status, 403);
    assert!(got
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="insufficient_scope""#));
}

#[tokio::test]
async fn successful_responses_pass_through_untouched() {
    let body = r#"{"ok":true,"channel":"C1"}"#;
    let up = upstream(fixed(200, "application/json", body)).await;
    let g = start(up, "");
    let got = get(g.addr, "/slack/chat.postMessage").await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], body.as_bytes());
    assert!(got.header("grantd-rule").is_none());
}

#[tokio::test]
async fn rule_can_set_retry_after_headers_and_replace_the_body() {
    let up = upstream(fixed(200, "application/json", r#"{"replace":true}"#)).await;
    let g = start(up, "");
    let got = get(g.addr, "/lab/x").await;
    assert_eq!(got.status, 429);
    assert_eq!(got.header("retry-after"), Some("7"));
    assert_eq!(got.header("x-lab"), Some("yes"));
    assert_eq!(got.header("grantd-rule"), Some("lab/replace"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.json(), serde_json::json!({"replaced": true}));
    assert!(
        got.header("www-authenticate").is_none(),
        "only 401/403 get a challenge"
    );
}

#[tokio::test]
async fn request_path_query_method_and_body_reach_the_base_url() {
    let up = upstream(echo()).await;
    let g = start(up, "");
    let req = Request::post(format!("http://{}/plain/v1/items?limit=5&q=a%20b", g.addr))
        .header("x-app", "1")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let got = send(req).await.json();
    assert_eq!(got["method"], "POST");
    assert_eq!(got["path"], "/plain/v1/items");
    assert_eq!(got["query"], "limit=5&q=a%20b");
    assert_eq!(got["body"], "payload");
    assert_eq!(got["headers"]["x-app"], "1");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_host_rewritten() {
    let up = upstream(echo()).await;
    let g = start(up, "");
    let req = Request::get(format!("http://{}/plain/echo", g.addr))
        .header("host", "evil.example")
        .header("connection", "x-private-hop")
        .header("x-private-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("te", "trailers")
        .header("grantd-internal", "not for the provider")
        .header("x-kept", "1")
        .body(Full::default())
        .unwrap();
    let got = send(req).await.json();
    let headers = got["headers"].as_object().unwrap();
    assert_eq!(headers["host"], up.to_string(), "Host is the upstream's");
    for gone in [
        "x-private-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "grantd-internal",
    ] {
        assert!(
            !headers.contains_key(gone),
            "{gone} was forwarded: {headers:?}"
        );
    }
    assert_eq!(headers["x-kept"], "1");
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    let up = upstream(handler(|_req| async {
        Response::builder()
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("grantd-action", "reauth")
            .header("x-kept", "1")
            .body(full("ok"))
            .unwrap()
    }))
    .await;
    let g = start(up, "");
    let got = get(g.addr, "/plain/x").await;
    assert!(got.header("x-upstream-hop").is_none());
    assert!(got.header("keep-alive").is_none());
    assert!(
        got.header("grantd-action").is_none(),
        "a provider cannot speak for grantd"
    );
    assert_eq!(got.header("x-kept"), Some("1"));
}

#[tokio::test]
async fn unknown_integration_is_a_404_naming_the_known_ones() {
    let up = upstream(echo()).await;
    let g = start(up, "");
    let got = get(g.addr, "/nope/x").await;
    assert_eq!(got.status, 404);
    let body = got.json();
    assert_eq!(body["error"], "unknown_integration");
    let known: Vec<&str> = body["known"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(known, vec!["lab", "plain", "slack"]);
}

#[tokio::test]
async fn not_an_open_proxy() {
    let up = upstream(echo()).await;
    let g = start(up, "");
    let absolute = raw(
        g.addr,
        "GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(absolute.starts_with("HTTP/1.1 400"), "{absolute}");
    assert!(absolute.contains("absolute_form_refused"));
    let connect = raw(
        g.addr,
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    let climb = raw(
        g.addr,
        "GET /plain/../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(climb.starts_with("HTTP/1.1 400"), "{climb}");
    let encoded = raw(
        g.addr,
        "GET /plain/%2E%2e/admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(encoded.starts_with("HTTP/1.1 400"), "{encoded}");
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_naming_the_integration() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let g = grantd(&format!(
        "integrations:\n  dead: {{ base_url: \"http://{closed}\" }}\n"
    ))
    .start();
    let got = get(g.addr, "/dead/x?token=SECRET").await;
    assert_eq!(got.status, 502);
    let body = got.json();
    assert_eq!(body["error"], "upstream_unreachable");
    assert_eq!(body["integration"], "dead");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&closed.to_string()), "{message}");
    assert!(
        !message.contains("SECRET"),
        "query strings never reach errors: {message}"
    );
}

#[tokio::test]
async fn slow_upstream_is_a_504() {
    let up = upstream(handler(|_req| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        json_response(200, "{}")
    }))
    .await;
    let g = start(up, "upstream: { request_timeout: 300ms }\n");
    let got = get(g.addr, "/plain/x").await;
    assert_eq!(got.status, 504);
    assert_eq!(got.json()["error"], "upstream_timeout");
}

#[tokio::test]
async fn hostile_bodies_leave_the_process_alive_and_the_response_intact() {
    let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let cases: Vec<(&str, Bytes)> = vec![
        (
            "malformed",
            Bytes::from_static(br#"{"ok": false, "error": "#),
        ),
        ("deep", Bytes::from(deep)),
        (
            "non-utf8",
            Bytes::from_static(b"{\"ok\":false,\"error\":\"\xff\xfe\"}"),
        ),
    ];
    for (name, body) in cases {
        let up = upstream(fixed(200, "application/json", body.clone())).await;
        let g = start(up, "");
        let got = get(g.addr, "/slack/api.test").await;
        assert_eq!(got.status, 200, "{name}");
        assert_eq!(got.body, body, "{name}: body intact");
        assert!(
            got.header("grantd-rule-error").is_none(),
            "{name}: not even a rule error"
        );
        // Still serving.
        assert_eq!(get(g.addr, "/slack/api.test").await.status, 200, "{name}");
    }
}

#[tokio::test]
async fn a_rule_that_throws_passes_the_response_through_with_the_error_named() {
    let body = r#"{"throw":true}"#;
    let up = upstream(fixed(200, "application/json", body)).await;
    let g = start(up, "");
    let got = get(g.addr, "/lab/x").await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], body.as_bytes());
    let err = got.header("grantd-rule-error").unwrap();
    assert!(
        err.starts_with("lab/throws:") && err.contains("rule exploded"),
        "{err}"
    );
    assert_eq!(get(g.addr, "/lab/x").await.status, 200, "still serving");
}

#[tokio::test]
async fn a_malformed_rule_result_is_a_rule_error_not_a_crash() {
    let up = upstream(fixed(200, "application/json", r#"{"bad_result":true}"#)).await;
    let g = start(up, "");
    let got = get(g.addr, "/lab/x").await;
    assert_eq!(got.status, 200);
    let err = got.header("grantd-rule-error").unwrap();
    assert!(
        err.starts_with("lab/malformed-result:") && err.contains("999"),
        "{err}"
    );
}

/// `$distinct` ignores the engine's time limit (seconds on this body). grantd runs on one
/// single-threaded runtime here, as each production worker does: evaluating this rule on it
/// would stall everything and the budget timer could not fire.
#[tokio::test]
async fn a_runaway_rule_cannot_stall_unrelated_traffic() {
    let items: Vec<u32> = (0..40_000).collect();
    let slow_body = serde_json::json!({ "items": items }).to_string();
    let up = upstream(handler(move |req: Request<Incoming>| {
        let slow_body = slow_body.clone();
        async move {
            if req.uri().path().ends_with("/slow") {
                json_response(200, &slow_body)
            } else {
                json_response(200, r#"{"ok":true}"#)
            }
        }
    }))
    .await;
    let g = grantd(&config_for(
        up,
        "evaluation: { timeout: 300ms, max_sequence_length: 100000000 }\n",
    ))
    .shipped_rules("slack")
    .rule_file("lab.yaml", LAB_RULES)
    .start();
    let addr = g.addr;
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let order = |finished: &Arc<std::sync::atomic::AtomicUsize>| {
        finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    };
    let slow = tokio::spawn({
        let finished = finished.clone();
        async move {
            let got = get(addr, "/lab/slow").await;
            (order(&finished), got)
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fast: Vec<_> = (0..20)
        .map(|i| {
            let finished = finished.clone();
            tokio::spawn(async move {
                let got = get(
                    addr,
                    if i % 2 == 0 {
                        "/slack/api.test"
                    } else {
                        "/lab/fast"
                    },
                )
                .await;
                (order(&finished), got)
            })
        })
        .collect();
    for f in fast {
        let (rank, got) = f.await.unwrap();
        assert_eq!(got.status, 200);
        assert!(got.header("grantd-rule-error").is_none());
        assert!(
            rank < 20,
            "a fast request finished after the runaway one (rank {rank})"
        );
    }
    let (rank, got) = slow.await.unwrap();
    assert_eq!(rank, 20, "the runaway rule's response comes last");
    assert_eq!(
        got.status, 200,
        "the runaway rule's response passes through"
    );
    let err = got.header("grantd-rule-error").expect("rule error header");
    assert!(
        err.contains("evaluation budget"),
        "grantd's own budget stopped it: {err}"
    );
    assert!(got.body.len() > 100_000, "body intact");
}

/// The first chunk must reach the client while the upstream is still holding the rest back;
/// a buffering proxy would wait forever (and the test would time out).
#[tokio::test]
async fn response_bodies_stream() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let up = upstream(handler(move |_req| {
        let mut release = release_rx.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"first-chunk;"))))
                    .await;
                let _ = release.wait_for(|r| *r).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"rest")))).await;
            });
            let stream = tokio_stream_from(rx);
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(StreamBody::new(stream).boxed())
                .unwrap()
        }
    }))
    .await;
    let g = start(up, "");
    let resp = client()
        .request(
            Request::get(format!("http://{}/plain/download", g.addr))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("first chunk arrives before the upstream finishes")
        .unwrap()
        .unwrap();
    assert_eq!(
        first.into_data().unwrap(),
        Bytes::from_static(b"first-chunk;")
    );
    release_tx.send(true).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"rest"));
}

/// The upstream answers after reading only the first request chunk; the client sends the
/// second chunk only after it has that answer. Works only if grantd streams the request.
#[tokio::test]
async fn request_bodies_stream() {
    let up = upstream(handler(|req: Request<Incoming>| async move {
        let mut body = req.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(first))).await;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data() {
                    let _ = tx.send(Ok(Frame::data(d))).await;
                }
            }
        });
        Response::new(StreamBody::new(tokio_stream_from(rx)).boxed())
    }))
    .await;
    let g = start(up, "");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    let req = Request::post(format!("http://{}/plain/upload", g.addr))
        .body(StreamBody::new(tokio_stream_from(rx)))
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"one;"))))
        .await
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("upstream answered before the request body ended")
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, Bytes::from_static(b"one;"));
    tx.send(Ok(Frame::data(Bytes::from_static(b"two"))))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(
        body.collect().await.unwrap().to_bytes(),
        Bytes::from_static(b"two")
    );
}

#[tokio::test]
async fn matched_bodies_over_the_limit_pass_through_unmodified_and_are_counted() {
    // Looks like a Slack error but is bigger than max_buffered_body: it must not be rewritten.
    let mut big = br#"{"ok":false,"error":"token_expired","pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 300_000));
    big.extend(br#""}"#);
    let big = Bytes::from(big);
    let up = upstream(handler({
        let big = big.clone();
        move |_req| {
            let big = big.clone();
            async move {
                // Chunked (no content-length) so grantd must find out by reading.
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                tokio::spawn(async move {
                    for chunk in big.chunks(16 * 1024) {
                        let _ = tx
                            .send(Ok(Frame::data(Bytes::copy_from_slice(chunk))))
                            .await;
                    }
                });
                Response::builder()
                    .header("content-type", "application/json")
                    .body(StreamBody::new(tokio_stream_from(rx)).boxed())
                    .unwrap()
            }
        }
    }))
    .await;
    let g = start(up, "max_buffered_body: 64KiB\n");
    let got = get(g.addr, "/slack/files.info").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, big);
    let metrics = get(g.addr, "/_grantd/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(r#"grantd_oversize_passthrough_total{integration="slack"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn gzip_bodies_are_read_by_rules_and_sent_on_compressed() {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(br#"{"ok":false,"error":"token_expired"}"#)
        .unwrap();
    let gz = Bytes::from(enc.finish().unwrap());
    let up = upstream(handler({
        let gz = gz.clone();
        move |req: Request<Incoming>| {
            let gz = gz.clone();
            async move {
                // grantd must not have asked for an encoding it cannot read.
                let ae = req
                    .headers()
                    .get("accept-encoding")
                    .map(|v| v.to_str().unwrap().to_string());
                assert_eq!(ae.as_deref(), Some("gzip"));
                Response::builder()
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .body(full(gz))
                    .unwrap()
            }
        }
    }))
    .await;
    let g = start(up, "");
    let req = Request::get(format!("http://{}/slack/x", g.addr))
        .header("accept-encoding", "br, gzip")
        .body(Full::default())
        .unwrap();
    let got = send(req).await;
    assert_eq!(got.status, 401);
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    assert_eq!(got.body, gz);
}

#[tokio::test]
async fn metrics_count_verdicts_and_health_answers() {
    let up = upstream(fixed(
        200,
        "application/json",
        r#"{"ok":false,"error":"invalid_auth"}"#,
    ))
    .await;
    let g = start(up, "");
    assert_eq!(get(g.addr, "/slack/x").await.status, 401);
    assert_eq!(get(g.addr, "/slack/x").await.status, 401);
    let text = String::from_utf8_lossy(&get(g.addr, "/_grantd/metrics").await.body).into_owned();
    assert!(
        text.contains(
            r#"grantd_rule_verdicts_total{integration="slack",rule="token-dead",action="reauth"} 2"#
        ),
        "{text}"
    );
    assert_eq!(get(g.addr, "/_grantd/healthz").await.json()["status"], "ok");
    assert_eq!(
        get(g.addr, "/_grantd/readyz").await.json()["status"],
        "ready"
    );
}

#[tokio::test]
async fn http2_clients_are_served() {
    let up = upstream(fixed(
        200,
        "application/json",
        r#"{"ok":false,"error":"token_expired"}"#,
    ))
    .await;
    let g = start(up, "");
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let resp = h2
        .request(
            Request::get(format!("http://{}/slack/x", g.addr))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn concurrent_requests_all_get_their_own_verdicts() {
    let up = upstream(handler(|req: Request<Incoming>| async move {
        let ok = req.uri().path().ends_with("/good");
        json_response(
            200,
            if ok {
                r#"{"ok":true}"#
            } else {
                r#"{"ok":false,"error":"token_revoked"}"#
            },
        )
    }))
    .await;
    let g = Arc::new(start(up, ""));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let addr = g.addr;
            tokio::spawn(async move {
                let path = if i % 2 == 0 {
                    "/slack/good"
                } else {
                    "/slack/bad"
                };
                (i, get(addr, path).await.status)
            })
        })
        .collect();
    for t in tasks {
        let (i, status) = t.await.unwrap();
        assert_eq!(status, if i % 2 == 0 { 200 } else { 401 }, "request {i}");
    }
}

fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> tokio_stream::wrappers::ReceiverStream<T> {
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[tokio::test]
async fn every_429_leaves_with_a_retry_after_in_whole_seconds() {
    let up = upstream(handler(|req: Request<Incoming>| async move {
        let mut resp = Response::builder().status(429);
        match req.uri().path() {
            "/plain/reset-delta" => resp = resp.header("x-ratelimit-reset", "15"),
            "/plain/fractional" => resp = resp.header("retry-after", "2.5"),
            "/plain/ratelimit" => resp = resp.header("ratelimit-reset", "7"),
            _ => {}
        }
        resp.body(full("slow down")).unwrap()
    }))
    .await;
    let g = start(up, "");
    for (path, want) in [
        ("/plain/reset-delta", "15"),
        ("/plain/fractional", "3"),
        ("/plain/ratelimit", "7"),
        ("/plain/nothing", "60"),
    ] {
        let got = get(g.addr, path).await;
        assert_eq!(got.status, 429, "{path}");
        assert_eq!(got.header("retry-after"), Some(want), "{path}");
        assert_eq!(&got.body[..], b"slow down", "{path}: the body is untouched");
    }
}

#[tokio::test]
async fn the_shared_base_catches_what_a_provider_file_leaves_unless_it_opts_out() {
    let body =
        r#"{"data":null,"errors":[{"message":"login","extensions":{"code":"UNAUTHENTICATED"}}]}"#;
    let up = upstream(fixed(200, "application/json", body)).await;
    let mine = "integration: mine\nbase_url: http://127.0.0.1:1\nrules: []\n";
    let own = "integration: own\nbase: false\nbase_url: http://127.0.0.1:1\nrules: []\n";
    let g = grantd(&format!(
        "integrations:\n  mine: {{ base_url: \"http://{up}\" }}\n  own: {{ base_url: \"http://{up}\" }}\n"
    ))
    .shipped_rules("_base")
    .rule_file("mine.yaml", mine)
    .rule_file("own.yaml", own)
    .start();
    let got = get(g.addr, "/mine/graphql").await;
    assert_eq!(got.status, 401);
    assert_eq!(
        got.header("grantd-rule"),
        Some("mine/_base.graphql-unauthenticated")
    );
    assert_eq!(got.header("grantd-action"), Some("refresh"));
    let opted_out = get(g.addr, "/own/graphql").await;
    assert_eq!(opted_out.status, 200);
    assert_eq!(opted_out.header("grantd-rule"), None);
    assert_eq!(
        get(g.addr, "/_base/x").await.status,
        404,
        "the base is not a route"
    );
}
