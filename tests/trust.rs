//! Regression tests for the hostile review (issue 10): each is named after what it found and
//! fails on the build that review attacked. Real sockets throughout; the upstreams here are
//! raw TCP servers because the attacks live in HTTP framing that client libraries refuse to
//! produce.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as a raw upstream parsed it.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
    /// The declared body arrived in full.
    complete: bool,
}

/// Like nginx: answers as soon as a request's head is in, then reads and discards the body it
/// declared (by `Content-Length`) before parsing the next request on the same connection.
async fn framing_upstream() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(early_answers(stream, log.clone()));
        }
    });
    (addr, seen)
}

async fn early_answers(mut stream: TcpStream, log: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until_head(&mut stream, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let declared = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        while buf.len() < declared {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..declared.min(buf.len())).collect();
        let complete = body.len() == declared;
        log.lock().unwrap().push(Seen {
            head,
            body,
            complete,
        });
        if !complete {
            return;
        }
    }
}

/// Reads until `\r\n\r\n`; its offset, or `None` when the peer closed first.
async fn read_until_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

const LAB: &str = "integration: lab\nbase_url: http://127.0.0.1:1\nrules: []\n";

fn lab(upstream: SocketAddr, extra: &str) -> Grantd {
    grantd(&format!(
        "integrations:\n  lab: {{ base_url: \"http://{upstream}\" }}\n{extra}"
    ))
    .rule_file("lab.yaml", LAB)
    .start()
}

async fn put_token(g: &Grantd, id: &str, token: &str) {
    let body = serde_json::json!({"integration": "lab", "credentials": {"access_token": token, "expires_in": 3600}});
    let put = admin(g.admin, "PUT", &format!("/v1/connections/{id}"), Some(body)).await;
    assert_eq!(put.status, 200, "{:?}", put.body);
}

fn victim_request(g: &Grantd) -> Request<Full<bytes::Bytes>> {
    Request::get(format!("http://{}/lab/victim", g.addr))
        .header("grantd-connection", "tenant_b")
        .body(Full::default())
        .unwrap()
}

/// The attacker declares 400 bytes, sends 3 and hangs up; then another tenant's request
/// goes through the same worker's pool.
async fn aborted_body_then_victim(extra: &str) -> (Got, Vec<Seen>) {
    let (up, seen) = framing_upstream().await;
    let g = lab(up, extra);
    put_token(&g, "tenant_a", "token-of-tenant-a").await;
    put_token(&g, "tenant_b", "token-of-tenant-b").await;
    let mut attacker = TcpStream::connect(g.addr).await.unwrap();
    attacker
        .write_all(b"POST /lab/attack HTTP/1.1\r\nhost: x\r\ngrantd-connection: tenant_a\r\ncontent-length: 400\r\n\r\nabc")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(attacker);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim = tokio::time::timeout(Duration::from_secs(10), send(victim_request(&g)))
        .await
        .expect(
            "the victim is answered (a swallowed request would wait for the 30 s upstream timeout)",
        );
    let seen = seen.lock().unwrap().clone();
    (victim, seen)
}

fn assert_no_request_swallowed(victim: &Got, seen: &[Seen]) {
    assert_eq!(victim.status, 200, "{:?}", victim.body);
    let theirs = seen
        .iter()
        .find(|s| s.head.starts_with("GET /victim"))
        .expect("the victim's request reached the upstream as a request of its own");
    assert!(
        theirs
            .head
            .to_ascii_lowercase()
            .contains("authorization: bearer token-of-tenant-b"),
        "{theirs:?}"
    );
    for s in seen {
        let body = String::from_utf8_lossy(&s.body);
        assert!(
            !body.contains("token-of-tenant-b") && !body.contains("GET /victim"),
            "another tenant's request was swallowed as a body: {s:?}"
        );
    }
}

#[tokio::test]
async fn an_aborted_small_body_is_never_sent_and_cannot_swallow_the_next_request() {
    let (victim, seen) = aborted_body_then_victim("").await;
    assert_no_request_swallowed(&victim, &seen);
    assert!(
        !seen.iter().any(|s| s.head.starts_with("POST /attack")),
        "a body that failed while buffered is never sent: {seen:?}"
    );
}

#[tokio::test]
async fn an_aborted_streamed_body_abandons_its_upstream_connection() {
    // Past max_buffered_body the body streams; when it breaks, the upstream connection is
    // dropped mid-body instead of going back to the pool.
    let (victim, seen) = aborted_body_then_victim("max_buffered_body: 16\n").await;
    assert_no_request_swallowed(&victim, &seen);
    if let Some(attack) = seen.iter().find(|s| s.head.starts_with("POST /attack")) {
        assert!(!attack.complete, "{attack:?}");
    }
}

/// Sends a head and part of a declared body, then waits for grantd's answer without closing.
async fn stalled_client(g: &Grantd, declared: usize) -> (String, Duration) {
    let mut c = TcpStream::connect(g.addr).await.unwrap();
    let head = format!("POST /lab/slow HTTP/1.1\r\nhost: x\r\ngrantd-connection: tenant_a\r\ncontent-length: {declared}\r\n\r\nabc");
    c.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_frees_its_connection() {
    let up = upstream(echo()).await;
    let g = lab(
        up,
        "server: { body_timeout: 300ms }\nmax_buffered_body: 64\n",
    );
    put_token(&g, "tenant_a", "token-a").await;
    for declared in [40, 4000] {
        let (answer, took) = stalled_client(&g, declared).await;
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "content-length {declared}: {answer}"
        );
        assert!(answer.contains("request_body_timeout"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(took < Duration::from_secs(15), "closed after {took:?}");
    }
}

/// An upstream that sends its head and `sent` bytes of a longer body, then stalls.
async fn stalling_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_until_head(&mut s, &mut buf).await.is_none() {
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"ok\":false,";
                let _ = s.write_all(head.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_stalled_response_body_is_cut_off_both_when_streamed_and_when_a_rule_reads_it() {
    let up = stalling_upstream().await;
    let rules = "integration: lab\nbase_url: http://127.0.0.1:1\nrules:\n  - name: reads\n    match: { status: [200], path_prefix: /ruled }\n    expr: 'body.ok = false ? {\"status\": 401}'\n";
    let g = grantd(&format!(
        "integrations:\n  lab: {{ base_url: \"http://{up}\" }}\nupstream: {{ body_timeout: 300ms }}\n"
    ))
    .rule_file("lab.yaml", rules)
    .start();
    // A rule wants the body: grantd waits for it, then answers 504 itself (was: forever).
    let ruled = tokio::time::timeout(
        Duration::from_secs(10),
        send(
            Request::get(format!("http://{}/lab/ruled", g.addr))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .expect("answered");
    assert_eq!(ruled.status, 504);
    assert_eq!(ruled.json()["error"], "upstream_body_timeout");
    // Streamed through: the head arrives, then the body fails instead of hanging.
    let resp = client()
        .request(
            Request::get(format!("http://{}/lab/streamed", g.addr))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the body ends within the timeout");
    assert!(
        body.is_err(),
        "a cut-off body is an error, not a short success"
    );
}

#[tokio::test]
async fn a_response_with_transfer_encoding_and_content_length_is_not_truncated() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while read_until_head(&mut s, &mut buf).await.is_some() {
                    buf.clear();
                    let r = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
                    if s.write_all(r.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let g = lab(up, "");
    let got = get(g.addr, "/lab/letters").await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], b"abcdefghijklmnopqrstuvwxyz");
    assert_eq!(got.header("content-length"), None);
}

/// Writes `bytes` and waits for the server to close; how long that took, or `None` (10 s).
async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> Option<Duration> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(bytes).await.unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(started.elapsed())
}

#[tokio::test]
async fn every_listener_closes_clients_stuck_in_their_headers_or_idle() {
    let g = grantd(
        "server: { header_timeout: 300ms }\nconnect: { listen: 127.0.0.1:0, public_url: \"http://127.0.0.1:9\" }\n",
    )
    .start();
    let connect = g.app.as_ref().unwrap().connect_addr.unwrap();
    for (name, addr) in [("proxy", g.addr), ("admin", g.admin), ("connect", connect)] {
        let stuck = closed_after(addr, b"GET /x HTTP/1.1\r\nhost: x\r\n").await;
        assert!(
            stuck.is_some(),
            "{name}: a client stuck in its headers stays open"
        );
        // A finished request on a keep-alive connection, then silence: reaped as well.
        let idle = closed_after(addr, b"GET /_grantd/healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(
            idle.is_some(),
            "{name}: an idle keep-alive connection stays open"
        );
    }
}

#[tokio::test]
async fn a_listener_serves_at_most_max_connections_clients_at_once() {
    let g = grantd("server: { max_connections: 2 }\n").start();
    let hold_1 = TcpStream::connect(g.admin).await.unwrap();
    let _hold_2 = TcpStream::connect(g.admin).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = tokio::spawn(admin(g.admin, "GET", "/v1/integrations", None));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "a third client is served past the cap"
    );
    drop(hold_1);
    let got = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served once a slot frees")
        .unwrap();
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn the_proxy_port_serves_only_authenticated_callers_within_their_grants() {
    let up = upstream(echo()).await;
    let (billing, billing_sha) = grantd::callers::new_token();
    let g = lab(
        up,
        &format!("callers:\n  - {{ name: billing, token_sha256: {billing_sha}, integrations: [lab], connections: [acme-] }}\n"),
    );
    put_token(&g, "acme-1", "token-acme").await;
    put_token(&g, "globex-1", "token-globex").await;
    let call = |connection: &'static str, proxy_auth: Option<String>| {
        let mut req = Request::get(format!("http://{}/lab/me", g.addr))
            .header("grantd-connection", connection);
        if let Some(token) = proxy_auth {
            req = req.header("proxy-authorization", format!("Bearer {token}"));
        }
        send(req.body(Full::default()).unwrap())
    };
    let anonymous = call("acme-1", None).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["error"], "caller_unauthenticated");
    assert!(!String::from_utf8_lossy(&anonymous.body).contains("token-acme"));
    let forged = call("acme-1", Some(format!("{billing}x"))).await;
    assert_eq!(forged.status, 401);
    let other_tenant = call("globex-1", Some(billing.clone())).await;
    assert_eq!(other_tenant.status, 403);
    assert_eq!(other_tenant.json()["error"], "caller_forbidden");

    let allowed = call("acme-1", Some(billing.clone())).await;
    assert_eq!(allowed.status, 200, "{:?}", allowed.body);
    let seen = allowed.json();
    assert_eq!(seen["headers"]["authorization"], "Bearer token-acme");
    assert!(
        seen["headers"].get("proxy-authorization").is_none(),
        "the caller's token never reaches the provider: {seen}"
    );
    // SDKs that can only set a token: `grantd:{connection}/{caller token}`.
    let sdk = send(
        Request::get(format!("http://{}/lab/me", g.addr))
            .header("authorization", format!("Bearer grantd:acme-1/{billing}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(sdk.status, 200);
    assert_eq!(sdk.json()["headers"]["authorization"], "Bearer token-acme");
    assert_eq!(get(g.addr, "/_grantd/healthz").await.status, 200);
}

#[tokio::test]
async fn encoded_backslash_and_parameter_dot_segments_are_refused() {
    let up = upstream(echo()).await;
    let g = lab(up, "");
    for path in [
        "/lab/v1/..%2fadmin",
        "/lab/v1/%2e%2e%2fadmin",
        "/lab/v1/..;/admin",
        "/lab/v1/..\\admin",
        "/lab/v1/%252e%252e/admin",
    ] {
        let answer = raw(
            g.addr,
            &format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("bad_path"), "{path}: {answer}");
    }
    let fine = raw(
        g.addr,
        "GET /lab/v1/users.list HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
}

/// `lab` with its host from connection metadata, allowed where `allowed` says.
fn tenant_rules(allowed: &str) -> String {
    format!("integration: lab\nbase_url: \"http://{{metadata.host}}/tenant\"\nallowed_hosts: [\"{allowed}\"]\nallow_http: true\nauth:\n  token_url: \"http://{{metadata.host}}/token\"\nrules: []\n")
}

#[tokio::test]
async fn metadata_cannot_send_a_token_or_the_client_secret_to_another_host() {
    let (good, seen_good) = framing_upstream().await;
    let (evil, seen_evil) = framing_upstream().await;
    let config = "integrations:\n  lab: { client_id: id, client_secret: the-client-secret }\n";
    let g = grantd(config)
        .rule_file("lab.yaml", &tenant_rules(&good.to_string()))
        .start();
    let put = |host: String| {
        let body = serde_json::json!({"integration": "lab", "metadata": {"host": host},
            "credentials": {"access_token": "token-of-tenant", "refresh_token": "rt", "expires_in": 3600}});
        admin(g.admin, "PUT", "/v1/connections/c1", Some(body))
    };
    // Refused when stored, naming the key: another port, a host that ends early, a path.
    for bad in [
        evil.to_string(),
        format!("{evil}/#"),
        format!("{good}@{evil}"),
        "evil.example".to_string(),
    ] {
        let refused = put(bad.clone()).await;
        assert_eq!(refused.status, 400, "{bad}");
        assert_eq!(refused.json()["error"], "invalid_metadata");
        assert!(
            refused.json()["message"]
                .as_str()
                .unwrap()
                .contains("`host`"),
            "{bad}: {:?}",
            refused.json()
        );
    }
    assert_eq!(put(good.to_string()).await.status, 200);
    let ok = send(
        Request::get(format!("http://{}/lab/me", g.addr))
            .header("grantd-connection", "c1")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert!(seen_good.lock().unwrap()[0]
        .head
        .starts_with("GET /tenant/me"));

    // Checked again before use: the operator narrows the allow-list; the stored value no
    // longer fits, so neither a request nor a refresh goes anywhere.
    let dir = g.stop();
    let g = grantd(config)
        .rule_file("lab.yaml", &tenant_rules("127.0.0.1:1"))
        .start_in(dir);
    let refused = send(
        Request::get(format!("http://{}/lab/me", g.addr))
            .header("grantd-connection", "c1")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert_eq!(refused.json()["error"], "bad_connection_metadata");
    let forced = admin(g.admin, "POST", "/v1/connections/c1/refresh", None).await;
    assert_eq!(forced.status, 200);
    assert_eq!(
        seen_good.lock().unwrap().len(),
        1,
        "nothing more reached the old host"
    );
    assert!(seen_evil.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_stalled_admin_upload_gets_408_instead_of_holding_the_handler() {
    let g = grantd("server: { body_timeout: 300ms }\n").start();
    let mut c = TcpStream::connect(g.admin).await.unwrap();
    let head = format!("PUT /v1/connections/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-length: 100\r\n\r\n{{\"in");
    c.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("answered within the body timeout, not never")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_body_timeout"), "{answer}");
}

/// Records each request head the moment it arrives (and then answers nothing).
async fn head_recorder() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let log = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if let Some(end) = read_until_head(&mut s, &mut buf).await {
                    log.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..end]).into_owned());
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            });
        }
    });
    (addr, heads)
}

/// Starts an upload of `declared` bytes that sends only its first 3 and then waits.
async fn partial_upload(g: &Grantd, path: &str, declared: usize) -> TcpStream {
    let mut c = TcpStream::connect(g.addr).await.unwrap();
    let head = format!("POST /lab/{path} HTTP/1.1\r\nhost: x\r\ngrantd-connection: tenant_a\r\ncontent-length: {declared}\r\n\r\nabc");
    c.write_all(head.as_bytes()).await.unwrap();
    c
}

#[tokio::test]
async fn uploads_kept_for_replay_share_one_memory_budget() {
    let (up, heads) = head_recorder().await;
    let g = lab(up, "server: { replay_budget: 100 }\n");
    put_token(&g, "tenant_a", "token-a").await;
    let seen = |path: &str| {
        let needle = format!("POST /{path} ");
        heads.lock().unwrap().iter().any(|h| h.starts_with(&needle))
    };
    // Within the budget a body is kept whole before anything is sent.
    let _first = partial_upload(&g, "first", 80).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!seen("first"), "a replayable body is buffered first");
    // The budget is spent: the next upload streams instead of adding to memory.
    let _second = partial_upload(&g, "second", 50).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        seen("second"),
        "past the budget a body streams: {:?}",
        heads.lock().unwrap()
    );
}
