//! OpenTelemetry traces from a spawned `grantd serve`, received by a real OTLP/HTTP endpoint in
//! this test and decoded with the OpenTelemetry project's own protobuf types
//! (`opentelemetry-proto`): the request span and its children with their parent ids, an
//! incoming `traceparent` continued, `traceparent` forwarded only where an integration opts in,
//! the last spans flushed on SIGTERM, and no secret in any attribute.

mod common;
mod oauth;
mod spawned;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// What the receiver decoded: every batch's service name and spans.
#[derive(Default)]
struct Received {
    services: Vec<String>,
    spans: Vec<Span>,
    /// Every string the batches carry: resource and span attributes, names, events, status.
    strings: Vec<String>,
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with `application/x-protobuf`, as a collector.
async fn otlp_receiver() -> (SocketAddr, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let sink = received.clone();
    let addr = upstream(handler(move |req: Request<Incoming>| {
        let sink = sink.clone();
        async move {
            let wanted = req.method() == "POST"
                && req.uri().path() == "/v1/traces"
                && req.headers()["content-type"] == "application/x-protobuf";
            if !wanted {
                return json_response(404, "{}");
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let batch = ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf");
            sink.lock().unwrap().add(batch);
            Response::builder()
                .header("content-type", "application/x-protobuf")
                .body(full(Bytes::new()))
                .unwrap()
        }
    }))
    .await;
    (addr, received)
}

impl Received {
    fn add(&mut self, batch: ExportTraceServiceRequest) {
        for rs in batch.resource_spans {
            let resource = rs.resource.unwrap_or_default().attributes;
            self.services.extend(string_attr(&resource, "service.name"));
            self.strings.extend(resource.iter().filter_map(text));
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                self.strings.push(span.name.clone());
                self.strings.extend(span.attributes.iter().filter_map(text));
                for event in &span.events {
                    self.strings.push(event.name.clone());
                    self.strings
                        .extend(event.attributes.iter().filter_map(text));
                }
                self.strings
                    .extend(span.status.as_ref().map(|s| s.message.clone()));
                self.spans.push(span);
            }
        }
    }

    /// The one span `what` describes.
    fn one(&self, what: &str, pred: impl Fn(&Span) -> bool) -> &Span {
        let found: Vec<&Span> = self.spans.iter().filter(|s| pred(s)).collect();
        assert_eq!(found.len(), 1, "one span: {what}");
        found[0]
    }

    /// The children of `parent` named `name`.
    fn children<'a>(&'a self, parent: &Span, name: &str) -> Vec<&'a Span> {
        self.spans
            .iter()
            .filter(|s| s.name == name && s.parent_span_id == parent.span_id)
            .inspect(|s| assert_eq!(s.trace_id, parent.trace_id, "a child shares the trace"))
            .collect()
    }
}

fn value(attrs: &[KeyValue], key: &str) -> Option<any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value)
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match value(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn int_attr(span: &Span, key: &str) -> i64 {
    match value(&span.attributes, key) {
        Some(any_value::Value::IntValue(i)) => i,
        other => panic!("{} has no integer {key}: {other:?}", span.name),
    }
}

/// Any attribute value as text (a secret could hide in a non-string one's rendering too).
fn text(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        other => Some(format!(
            "{:?}",
            AnyValue {
                value: Some(other.clone())
            }
        )),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A rule that rewrites what `echo` answers for `/busy` into a 429 with `retry`.
const ECHO_RULES: &str = r#"
integration: echo
base_url: http://127.0.0.1:1
rules:
  - name: busy
    match: { status: [200], content_type: json }
    expr: |
      $contains(body.path, "/busy")
        ? { "status": 429, "action": "retry", "error": "busy", "message": "Come back later." }
"#;

fn write_config(dir: &Path, collector: SocketAddr, echo: SocketAddr, p: &oauth::Provider) {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/lab.yaml"), oauth::RULES).unwrap();
    std::fs::write(dir.join("rules/echo.yaml"), ECHO_RULES).unwrap();
    let integrations = format!(
        "  echo: {{ base_url: \"http://{echo}\" }}\n  echofwd: {{ base_url: \"http://{echo}\", forward_traceparent: true }}\n"
    );
    let text = format!(
        "listen: 127.0.0.1:0\nworkers: 1\nrules_dir: rules\nstore: {{ path: grantd.db }}\nencryption: {{ key: {TEST_KEY} }}\nadmin: {{ listen: 127.0.0.1:0, token: {ADMIN_TOKEN} }}\nrefresh: {{ scan_interval: 1h }}\ntelemetry: {{ otlp_endpoint: \"http://{collector}\", service_name: grantd-under-test }}\n{}",
        oauth::config(p, &integrations)
    );
    std::fs::write(dir.join("grantd.yaml"), text).unwrap();
}

async fn call(proxy: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::get(format!("http://{proxy}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(req.body(Full::default()).unwrap()).await
}

/// Another replica holds the connection's refresh lease for a while: the request must wait.
async fn hold_lease(db: &Path, id: &str, for_ms: i64) {
    use sqlx::Connection as _;
    let url = format!("sqlite://{}", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let done = sqlx::query(
        "UPDATE connections SET lease_owner = 'another-replica', lease_until = ? WHERE id = ?",
    )
    .bind(now + for_ms)
    .bind(id)
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

const APP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";
const FWD_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SECRETS: &[&str] = &["SECRETPATH-7d1f", "SECRETQUERY-93ab", "SECRETTOKEN-55c2"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_collector_with_parents_context_and_no_secrets() {
    let (collector, received) = otlp_receiver().await;
    let echo_addr = upstream(echo()).await;
    let provider = oauth::Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), collector, echo_addr, &provider);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_grantd"));
    command
        .args(["serve", "--config"])
        .arg(dir.path().join("grantd.yaml"))
        // Only the flush on shutdown may deliver the spans.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000");
    let mut g = spawned::spawn_command(command);

    // An app's traced call whose path, query and token carry secrets; traceparent stays here.
    let traceparent = format!("00-{APP_TRACE}-{APP_SPAN}-01");
    let secret_path = "/echo/items/SECRETPATH-7d1f?api_key=SECRETQUERY-93ab";
    let headers = [
        ("traceparent", traceparent.as_str()),
        ("tracestate", "app=1"),
        ("authorization", "Bearer SECRETTOKEN-55c2"),
    ];
    let got = call(g.proxy, secret_path, &headers).await;
    assert_eq!(got.status, 200);
    let seen = got.json()["headers"].clone();
    assert!(
        seen.get("traceparent").is_none() && seen.get("tracestate").is_none(),
        "{seen}"
    );

    // An integration that opted in gets grantd's own context, in the app's trace.
    let fwd_parent = format!("00-{FWD_TRACE}-b7ad6b7169203331-01");
    let got = call(
        g.proxy,
        "/echofwd/check",
        &[("traceparent", &fwd_parent), ("tracestate", "app=2")],
    )
    .await;
    let forwarded = got.json()["headers"].clone();
    let forwarded_parent = forwarded["traceparent"].as_str().unwrap().to_string();
    assert!(
        forwarded_parent.starts_with(&format!("00-{FWD_TRACE}-")),
        "{forwarded}"
    );
    assert_ne!(
        forwarded_parent, fwd_parent,
        "grantd's span is the provider's parent"
    );
    assert_eq!(forwarded["tracestate"], "app=2");

    // A rule's verdict.
    assert_eq!(call(g.proxy, "/echo/busy", &[]).await.status, 429);

    // A connection whose token expired while another replica holds its refresh lease.
    provider.grant("rt-trace-1");
    let body = serde_json::json!({"integration": "lab", "credentials": {"access_token": "at-stale-trace", "refresh_token": "rt-trace-1", "expires_in": 0}});
    assert_eq!(
        admin(g.admin, "PUT", "/v1/connections/c1", Some(body))
            .await
            .status,
        200
    );
    hold_lease(&dir.path().join("grantd.db"), "c1", 1200).await;
    let got = call(g.proxy, "/lab/whoami", &[("grantd-connection", "c1")]).await;
    assert_eq!(got.status, 200, "{:?}", got.body);

    // A token the provider no longer takes: 401, one refresh, one replay.
    provider.grant("rt-trace-2");
    let body = serde_json::json!({"integration": "lab", "credentials": {"access_token": "at-revoked-trace", "refresh_token": "rt-trace-2", "expires_in": 3600}});
    assert_eq!(
        admin(g.admin, "PUT", "/v1/connections/c2", Some(body))
            .await
            .status,
        200
    );
    let got = call(g.proxy, "/lab/whoami", &[("grantd-connection", "c2")]).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    // grantd's own answer: no provider involved.
    let got = call(g.proxy, "/lab/whoami", &[("grantd-connection", "nobody")]).await;
    assert_eq!(got.status, 404);

    assert!(
        received.lock().unwrap().spans.is_empty(),
        "spans are batched, not sent per request"
    );
    let exit = g
        .terminate(Duration::from_secs(20))
        .expect("grantd exits on SIGTERM");
    assert!(exit.success(), "{exit:?}\n{}", g.log.lock().unwrap());
    let r = received.lock().unwrap();
    for span in &r.spans {
        let mut keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(
            keys.len(),
            span.attributes.len(),
            "an attribute twice: {span:?}"
        );
    }
    assert!(r.services.iter().all(|s| s == "grantd-under-test") && !r.services.is_empty());

    // The app's trace is continued: its trace id, its span as the parent.
    let traced = r.one("the traced request", |s| {
        s.name == "GET /echo/{path}" && hex(&s.trace_id) == APP_TRACE
    });
    assert_eq!(
        string_attr(&traced.attributes, "grantd.integration").unwrap(),
        "echo"
    );
    assert_eq!(hex(&traced.trace_id), APP_TRACE);
    assert_eq!(hex(&traced.parent_span_id), APP_SPAN);
    assert_eq!(
        string_attr(&traced.attributes, "http.route").unwrap(),
        "/echo/{path}"
    );
    assert_eq!(
        string_attr(&traced.attributes, "http.request.method").unwrap(),
        "GET"
    );
    assert_eq!(int_attr(traced, "http.response.status_code"), 200);
    assert_eq!(traced.kind, SpanKind::Server as i32);
    let upstream = r.children(traced, "GET echo");
    assert_eq!(upstream.len(), 1);
    assert_eq!(upstream[0].kind, SpanKind::Client as i32);
    assert_eq!(int_attr(upstream[0], "http.response.status_code"), 200);

    // The forwarded traceparent names the upstream span of that request.
    let fwd = r.one("the forwarding request", |s| {
        s.name == "GET /echofwd/{path}" && hex(&s.trace_id) == FWD_TRACE
    });
    assert_eq!(hex(&fwd.trace_id), FWD_TRACE);
    let fwd_upstream = r.children(fwd, "GET echofwd");
    assert_eq!(fwd_upstream.len(), 1);
    let expected = format!("00-{FWD_TRACE}-{}-01", hex(&fwd_upstream[0].span_id));
    assert_eq!(forwarded_parent, expected);

    // The verdict's rule, action and both statuses.
    let busy = r.one("the rewritten request", |s| {
        string_attr(&s.attributes, "grantd.rule").as_deref() == Some("busy")
    });
    assert_eq!(
        string_attr(&busy.attributes, "grantd.action").unwrap(),
        "retry"
    );
    assert_eq!(int_attr(busy, "http.response.status_code"), 429);
    assert_eq!(int_attr(busy, "grantd.upstream.status_code"), 200);
    assert!(
        busy.parent_span_id.is_empty(),
        "no traceparent: a new trace"
    );

    // Refresh (with its lease wait and token call) and upstream call under the request.
    let lab = r.one("the request that waited for the lease", |s| {
        s.name == "GET /lab/{path}" && r.children(s, "GET lab").len() == 1
    });
    assert_eq!(lab.kind, SpanKind::Server as i32);
    assert_eq!(int_attr(lab, "http.response.status_code"), 200);
    let refresh = r.children(lab, "refresh");
    assert_eq!(refresh.len(), 1, "one refresh under the request");
    let refresh = refresh[0];
    assert_eq!(
        string_attr(&refresh.attributes, "grantd.integration").unwrap(),
        "lab"
    );
    assert_eq!(
        string_attr(&refresh.attributes, "grantd.refresh.outcome").unwrap(),
        "ok"
    );
    assert_eq!(r.children(refresh, "lease wait").len(), 1);
    let wait = r.children(refresh, "lease wait")[0];
    assert!(
        wait.end_time_unix_nano - wait.start_time_unix_nano >= 900_000_000,
        "waited for the lease"
    );
    let token = r.children(refresh, "token call");
    assert_eq!(token.len(), 1);
    assert!(
        token[0].start_time_unix_nano >= wait.end_time_unix_nano,
        "the wait ends before the token call"
    );
    let upstream = r.children(lab, "GET lab");
    assert_eq!(upstream.len(), 1);
    // (The refresh span itself closes a moment after its result is handed over.)
    assert!(upstream[0].start_time_unix_nano >= token[0].end_time_unix_nano);
    assert_eq!(int_attr(upstream[0], "http.response.status_code"), 200);

    // The replayed request: both exchanges, the refresh between them, the final statuses once.
    let replayed = r.one("the replayed request", |s| {
        s.name == "GET /lab/{path}"
            && int_attr(s, "http.response.status_code") == 200
            && s.span_id != lab.span_id
    });
    let exchanges = r.children(replayed, "GET lab");
    let statuses: Vec<i64> = exchanges
        .iter()
        .map(|s| int_attr(s, "http.response.status_code"))
        .collect();
    assert_eq!(statuses, [401, 200]);
    let refresh = r.children(replayed, "refresh");
    assert_eq!(refresh.len(), 1);
    assert!(refresh[0].start_time_unix_nano >= exchanges[0].end_time_unix_nano);
    let token = r.children(refresh[0], "token call");
    assert!(token[0].end_time_unix_nano <= exchanges[1].start_time_unix_nano);
    assert_eq!(int_attr(replayed, "grantd.upstream.status_code"), 200);

    // A refusal: grantd answered, no provider status, no upstream span.
    let refused = r.one("the refused request", |s| {
        s.name == "GET /lab/{path}" && int_attr(s, "http.response.status_code") == 404
    });
    assert!(value(&refused.attributes, "grantd.upstream.status_code").is_none());
    assert!(r.children(refused, "GET lab").is_empty());

    // No secret anywhere: not the path's, the query's, the app's token nor any OAuth token.
    let tokens = provider.all_tokens();
    let mut secrets: Vec<&str> = SECRETS.to_vec();
    secrets.extend(tokens.iter().map(String::as_str));
    secrets.extend([
        "at-stale-trace",
        "at-revoked-trace",
        "rt-trace-1",
        "rt-trace-2",
        "items/",
        "nobody", // a connection id: not a secret, but never recorded either
        oauth::CLIENT_SECRET,
    ]);
    assert!(
        r.strings.len() > 50,
        "the strings were collected: {:?}",
        r.strings
    );
    for s in &r.strings {
        for secret in &secrets {
            assert!(!s.contains(secret), "`{secret}` reached a span: {s}");
        }
    }
}

/// Traces off (no `telemetry` section, no layer installed in this process): the proxy strips
/// the app's trace context by default, and passes it on unchanged where an integration opts in.
#[tokio::test]
async fn with_traces_off_traceparent_is_stripped_unless_an_integration_forwards_it() {
    // Logging as `grantd serve` sets it up without traces: grantd's spans are not even made.
    grantd::telemetry::init_logging(grantd::config::LogFormat::Text, None);
    assert!(grantd::traces::request(&http::Method::GET, "plain").is_disabled());
    assert!(grantd::traces::refresh().is_disabled());
    let echo_addr = upstream(echo()).await;
    let g = grantd(&format!(
        "integrations:\n  plain: {{ base_url: \"http://{echo_addr}\" }}\n  fwd: {{ base_url: \"http://{echo_addr}\", forward_traceparent: true }}\n"
    ))
    .start();
    let traceparent = format!("00-{APP_TRACE}-{APP_SPAN}-01");
    let headers = [
        ("traceparent", traceparent.as_str()),
        ("tracestate", "app=1"),
    ];
    let stripped = call(g.addr, "/plain/x", &headers).await.json()["headers"].clone();
    assert!(stripped.get("traceparent").is_none(), "{stripped}");
    assert!(stripped.get("tracestate").is_none(), "{stripped}");
    let forwarded = call(g.addr, "/fwd/x", &headers).await.json()["headers"].clone();
    assert_eq!(forwarded["traceparent"], traceparent.as_str());
    assert_eq!(forwarded["tracestate"], "app=1");
}

/// A collector that accepts connections and never answers: requests do not wait for it, and
/// the exit waits for the last flush for `traces::FLUSH_TIMEOUT` at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_costs_requests_nothing_and_the_exit_five_seconds() {
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = hole.accept().await {
            held.push(conn); // read nothing, answer nothing
        }
    });
    let echo_addr = upstream(echo()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    let text = format!(
        "listen: 127.0.0.1:0\nworkers: 1\nrules_dir: rules\nstore: {{ path: grantd.db }}\nencryption: {{ key: {TEST_KEY} }}\nadmin: {{ listen: 127.0.0.1:0, token: {ADMIN_TOKEN} }}\ntelemetry: {{ otlp_endpoint: \"http://{collector}\" }}\nintegrations:\n  plain: {{ base_url: \"http://{echo_addr}\" }}\n"
    );
    std::fs::write(dir.path().join("grantd.yaml"), text).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_grantd"));
    command
        .args(["serve", "--config"])
        .arg(dir.path().join("grantd.yaml"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    let mut g = spawned::spawn_command(command);
    for _ in 0..20 {
        let started = std::time::Instant::now();
        assert_eq!(call(g.proxy, "/plain/x", &[]).await.status, 200);
        assert!(started.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = std::time::Instant::now();
    let exit = g.terminate(Duration::from_secs(30)).expect("grantd exits");
    assert!(exit.success(), "{exit:?}");
    let took = stopping.elapsed();
    assert!(
        took < grantd::traces::FLUSH_TIMEOUT + Duration::from_secs(3),
        "{took:?}"
    );
    let log = g.log.lock().unwrap().clone();
    assert!(log.contains("could not flush the last spans"), "{log}");
}
