//! Several `grantd serve` processes on one SQLite file: one refresh across processes, takeover
//! of a dead holder's lease, and logs that never carry a token or a secret.

mod common;
mod oauth;
mod spawned;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use oauth::{Mode, Provider};
use spawned::{spawn, spawn_command, Process};

fn write_config(dir: &Path, p: &Provider, extra: &str) -> std::path::PathBuf {
    let path = dir.join("grantd.yaml");
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/lab.yaml"), oauth::RULES).unwrap();
    let text = format!(
        "listen: 127.0.0.1:0\nrules_dir: rules\nstore: {{ path: shared.db }}\nencryption: {{ key: {TEST_KEY} }}\nadmin: {{ listen: 127.0.0.1:0, token: {ADMIN_TOKEN} }}\n{}",
        oauth::config(p, extra)
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn put_expired(admin: SocketAddr, id: &str, refresh: &str) {
    let body = serde_json::json!({"integration": "lab", "credentials": {"access_token": "at-stale", "refresh_token": refresh, "expires_in": 0}});
    let req = Request::put(format!("http://{admin}/v1/connections/{id}"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    assert_eq!(send(req).await.status, 200);
}

fn call(proxy: SocketAddr, id: &'static str) -> tokio::task::JoinHandle<Option<u16>> {
    tokio::spawn(async move {
        let req = Request::get(format!("http://{proxy}/lab/whoami"))
            .header("grantd-connection", id)
            .body(Full::default())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req))
            .await
            .ok()?
            .ok()?;
        Some(resp.status().as_u16())
    })
}

#[tokio::test]
async fn two_processes_on_one_file_make_one_token_call_and_log_no_secrets() {
    let p = Provider::start().await;
    p.grant("rt-0");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &p, "");
    let a = spawn(&config);
    let b = spawn(&config);
    put_expired(a.admin, "acct_1", "rt-0").await;
    let calls: Vec<_> = (0..100)
        .map(|i| call(if i % 2 == 0 { a.proxy } else { b.proxy }, "acct_1"))
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), Some(200));
    }
    assert_eq!(
        p.calls(),
        1,
        "one token-endpoint call across both processes"
    );
    assert_eq!(
        p.family_revocations
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let logs = format!("{}{}", a.log.lock().unwrap(), b.log.lock().unwrap());
    assert!(logs.lines().count() > 20, "trace logging was on");
    let mut secrets = p.all_tokens();
    secrets.extend([
        "at-stale".to_string(),
        oauth::CLIENT_SECRET.to_string(),
        TEST_KEY.to_string(),
        ADMIN_TOKEN.to_string(),
    ]);
    for secret in secrets {
        assert!(!logs.contains(&secret), "a log line contains {secret}");
    }
}

#[tokio::test]
async fn a_killed_lease_holder_is_taken_over_after_the_lease_deadline() {
    killed_lease_holder_is_taken_over(None).await
}

#[tokio::test]
async fn a_killed_lease_holder_is_taken_over_on_postgres_too() {
    let Some(store) = common::postgres_store_config().await else {
        return;
    };
    killed_lease_holder_is_taken_over(Some(&store)).await
}

/// Either process may hold the lease when the token call hangs: the one a request went to, or
/// either one's proactive loop (the connection is due for both). The holder is killed, found by
/// its pid in the lease owner; the survivor must take over after the lease deadline.
async fn killed_lease_holder_is_taken_over(store: Option<&str>) {
    let p = Provider::start().await;
    p.grant("rt-0");
    p.set_mode(Mode::HangFirst);
    let dir = tempfile::tempdir().unwrap();
    let extra = "refresh: { lease: 2s, token_timeout: 1500ms, lease_poll: 50ms }\n";
    let config = match store {
        Some(store) => write_fleet_config(dir.path(), &p, store, extra),
        None => write_config(dir.path(), &p, extra),
    };
    let mut procs = [spawn(&config), spawn(&config)];
    put_expired(procs[0].admin, "acct_1", "rt-0").await;
    let stuck = call(procs[0].proxy, "acct_1");
    let deadline = Instant::now() + Duration::from_secs(10);
    let holder = loop {
        assert!(
            Instant::now() < deadline,
            "nobody called the token endpoint"
        );
        if p.calls() > 0 {
            let pid = lease_holder(dir.path(), store, "acct_1").await;
            if let Some(h) = procs.iter().position(|x| Some(x.child.id()) == pid) {
                break h;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    procs[holder].child.kill().unwrap(); // SIGKILL while it holds the lease
    let _ = procs[holder].child.wait();
    let survivor = &procs[1 - holder];
    let started = Instant::now();
    let status = call(survivor.proxy, "acct_1").await.unwrap();
    if status != Some(200) {
        eprintln!("the survivor's log:\n{}", survivor.log.lock().unwrap());
    }
    assert_eq!(status, Some(200), "the survivor completed the refresh");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no request hangs past its timeout"
    );
    assert_eq!(p.calls(), 2);
    let times = p.token_call_times.lock().unwrap().clone();
    let gap = times[1] - times[0];
    eprintln!("measured: takeover token call {gap:?} after the dead holder's (lease 2 s)");
    assert!(
        gap >= Duration::from_millis(1900),
        "the survivor waited for the lease deadline (gap {gap:?})"
    );
    let first = stuck.await.unwrap();
    if holder == 0 {
        assert_eq!(first, None, "the first request died with its process");
    } else {
        assert_eq!(
            first,
            Some(200),
            "the first request waited out the dead lease"
        );
    }
}

/// The pid of the process holding `id`'s lease, read from the store (owners are
/// `{pid}-{random}:{flight}`).
async fn lease_holder(dir: &Path, store: Option<&str>, id: &str) -> Option<u32> {
    use sqlx::Connection as _;
    let owner: Option<String> = match store {
        None => {
            let url = format!("sqlite://{}", dir.join("shared.db").display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.ok()?;
            sqlx::query_scalar("SELECT lease_owner FROM connections WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut c)
                .await
                .ok()??
        }
        Some(store) => {
            let field = |start: &str, end: char| {
                let rest = &store[store.find(start).unwrap() + start.len()..];
                rest[..rest.find(end).unwrap()].to_string()
            };
            let (url, schema) = (field("url: \"", '"'), field("schema: ", ' '));
            let mut c = sqlx::PgConnection::connect(&url).await.ok()?;
            let sql = format!("SELECT lease_owner FROM {schema}.connections WHERE id = $1");
            sqlx::query_scalar(&sql)
                .bind(id)
                .fetch_optional(&mut c)
                .await
                .ok()??
        }
    };
    owner?.split('-').next()?.parse().ok()
}

/// A receiver that counts accepted deliveries per webhook-id (signatures are checked by the
/// callbacks tests; here durability is the point).
async fn counting_receiver(port: u16) -> Arc<Mutex<Vec<(String, String)>>> {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let sink = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let id = req
                                .headers()
                                .get("webhook-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            sink.lock()
                                .unwrap()
                                .push((id, String::from_utf8_lossy(&body).into_owned()));
                            Ok::<_, std::convert::Infallible>(json_response(200, "{}"))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    seen
}

#[tokio::test]
async fn an_event_survives_kill_9_between_transition_and_delivery() {
    let p = Provider::start().await;
    // The receiver's port, free for now: every delivery attempt before the restart is refused.
    let port = unused_port();
    let dir = tempfile::tempdir().unwrap();
    let callbacks = format!(
        "callbacks:\n  retry_base: 100ms\n  retry_max: 300ms\n  poll_interval: 20ms\n  endpoints:\n    - url: \"http://127.0.0.1:{port}/hook\"\n      secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]\n"
    );
    let config = write_config(dir.path(), &p, &callbacks);
    let mut a = spawn(&config);
    put_expired(a.admin, "acct_1", "rt-never-issued").await;
    assert_eq!(
        call(a.proxy, "acct_1").await.unwrap(),
        Some(401),
        "invalid_grant: the transition happened"
    );
    a.child.kill().unwrap(); // SIGKILL: the event is only in the store
    let _ = a.child.wait();
    let seen = counting_receiver(port).await;
    let b = spawn(&config);
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the event was not delivered after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "delivered once: {seen:?}");
    assert!(seen[0].1.contains("\"authentication_error\""));
    drop(b);
}

/// `write_config` with the store replaced by PostgreSQL.
fn write_fleet_config(dir: &Path, p: &Provider, store: &str, extra: &str) -> std::path::PathBuf {
    let path = write_config(dir, p, extra);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("store: { path: shared.db }\n", store);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn three_replicas_on_postgres_make_one_token_call_for_3000_requests() {
    let Some(store) = common::postgres_store_config().await else {
        return;
    };
    let p = Provider::start().await;
    p.grant("rt-0");
    let dir = tempfile::tempdir().unwrap();
    let config = write_fleet_config(dir.path(), &p, &store, "");
    let replicas: Vec<Process> = (0..3).map(|_| spawn(&config)).collect();
    put_expired(replicas[0].admin, "acct_1", "rt-0").await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for r in &replicas {
        // One HTTP/2 connection per replica carries its thousand requests.
        let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http();
        for _ in 0..1000 {
            let (h2, addr) = (h2.clone(), r.proxy);
            tasks.push(tokio::spawn(async move {
                let req = Request::get(format!("http://{addr}/lab/whoami"))
                    .header("grantd-connection", "acct_1")
                    .body(Full::default())
                    .unwrap();
                h2.request(req).await.map(|r| r.status().as_u16()).ok()
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Some(200));
    }
    eprintln!(
        "measured: 3000 requests over 3 replicas on PostgreSQL took {:?}",
        started.elapsed()
    );
    assert_eq!(p.calls(), 1, "one token-endpoint call across the fleet");
    assert_eq!(
        p.family_revocations
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn three_replicas_on_postgres_deliver_one_event_for_one_transition() {
    let Some(store) = common::postgres_store_config().await else {
        return;
    };
    let p = Provider::start().await;
    let port = unused_port();
    let seen = counting_receiver(port).await;
    let callbacks = format!(
        "callbacks:\n  retry_base: 100ms\n  poll_interval: 20ms\n  endpoints:\n    - url: \"http://127.0.0.1:{port}/hook\"\n      secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_fleet_config(dir.path(), &p, &store, &callbacks);
    let replicas: Vec<Process> = (0..3).map(|_| spawn(&config)).collect();
    put_expired(replicas[0].admin, "acct_1", "rt-never-issued").await;
    let calls: Vec<_> = (0..30)
        .map(|i| call(replicas[i % 3].proxy, "acct_1"))
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), Some(401));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no event delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        1,
        "three replicas, one transition, one delivery: {seen:?}"
    );
    assert_eq!(p.calls(), 1);
}

#[tokio::test]
async fn three_replicas_refresh_a_thousand_due_connections_once_each_within_the_cap() {
    let Some(store) = common::postgres_store_config().await else {
        return;
    };
    let p = Provider::start().await;
    p.set_mode(Mode::Slow); // 20 ms per token call, so concurrency is visible
    p.set_slow(Duration::from_millis(20));
    let dir = tempfile::tempdir().unwrap();
    let extra = "refresh: { window_min: 50s, window_max: 60s, scan_interval: 100ms, max_concurrent_per_integration: 4, default_lifetime: 1h }\n";
    let config = write_fleet_config(dir.path(), &p, &store, extra);
    let replicas: Vec<Process> = (0..3).map(|_| spawn(&config)).collect();
    // All expired at once: every one is due now. (Tokens with a future expiry would be renewed
    // at 50-80% of their lifetime, see connections::timing, not all at once.)
    for i in 0..1000 {
        let refresh = format!("rt-due-{i}");
        p.grant(&refresh);
        let body = serde_json::json!({"integration": "lab", "credentials": {"access_token": "at-old", "refresh_token": refresh, "expires_in": 0}});
        let req = Request::put(format!(
            "http://{}/v1/connections/due_{i}",
            replicas[i % 3].admin
        ))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
        let answer = send(req).await;
        assert_eq!(answer.status, 200, "PUT due_{i}: {:?}", answer.body);
    }
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.calls() < 1000 {
        assert!(
            Instant::now() < deadline,
            "only {} of 1000 refreshed",
            p.calls()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        p.calls(),
        1000,
        "each connection refreshed exactly once across three replicas"
    );
    let max = p.max_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("measured: 1000 due connections, 3 replicas: all refreshed in {took:?}, max {max} token calls in flight (cap 4)");
    assert!(
        max <= 4,
        "fleet-wide concurrency {max} exceeded the cap of 4"
    );
    assert_eq!(
        p.family_revocations
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    drop(replicas);
}

/// A process's cached copy of a connection expires: a delete made through another process is
/// seen within `store.cache_ttl`.
#[tokio::test]
async fn a_change_made_through_another_process_is_seen_within_the_cache_ttl() {
    let p = Provider::start().await;
    p.grant("rt-0");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &p, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "store: { path: shared.db }",
        "store: { path: shared.db, cache_ttl: 300ms }",
    );
    std::fs::write(&config, text).unwrap();
    let a = spawn(&config);
    let b = spawn(&config);
    put_expired(a.admin, "acct_1", "rt-0").await;
    assert_eq!(
        call(a.proxy, "acct_1").await.unwrap(),
        Some(200),
        "refreshed and cached in a"
    );
    let delete = Request::delete(format!("http://{}/v1/connections/acct_1", b.admin))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(delete).await.status, 200, "deleted through b");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        call(a.proxy, "acct_1").await.unwrap(),
        Some(404),
        "a no longer uses its cached copy"
    );
}

/// CPU time (user + system) a process has used, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn accept_backs_off_instead_of_spinning_when_file_descriptors_run_out() {
    let p = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &p, "workers: 1\n");
    let mut command = Command::new("bash");
    command.args([
        "-c",
        "ulimit -n 64 && exec \"$0\" serve --config \"$1\"",
        env!("CARGO_BIN_EXE_grantd"),
        config.to_str().unwrap(),
    ]);
    let mut g = spawn_command(command);
    // More clients than descriptors: the rest wait in the backlog and accept() fails (EMFILE).
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(s) = tokio::net::TcpStream::connect(g.admin).await {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = g.child.id();
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    eprintln!("measured: {used} CPU ticks (1/100 s) in 2 s with descriptors exhausted");
    assert!(
        used < 60,
        "a spinning accept loop burns ~200 ticks in 2 s; used {used}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Ok(Some(status)) = g.child.try_wait() {
        let log = g.log.lock().unwrap().clone();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        panic!("grantd exited ({status}):\n{}", tail.join("\n"));
    }
    let served = tokio::time::timeout(
        Duration::from_secs(10),
        admin(g.admin, "GET", "/v1/integrations", None),
    )
    .await
    .expect("the admin API serves again once descriptors are free");
    assert_eq!(served.status, 200);
}

/// Issue 13: no secret of any credential kind (API key, Basic password, client secret, private
/// key, a minted token) reaches a trace-level log line, an error, the metrics or an admin
/// answer, through successes, rejections and refused `PUT`s.
#[tokio::test]
async fn no_credential_of_any_kind_reaches_logs_metrics_errors_or_admin_answers() {
    // Tokens are minted as `minted-<n>`; the API refuses everything with a 401.
    let minted = Arc::new(Mutex::new(Vec::<String>::new()));
    let issued = minted.clone();
    let api = upstream(handler(move |req: http::Request<hyper::body::Incoming>| {
        let issued = issued.clone();
        async move {
            if req.uri().path() == "/token" {
                let token = format!("minted-secret-{}", issued.lock().unwrap().len());
                issued.lock().unwrap().push(token.clone());
                return json_response(
                    200,
                    &format!(r#"{{"access_token":"{token}","expires_in":3600}}"#),
                );
            }
            json_response(401, r#"{"message":"no"}"#)
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    let rules = format!(
        "integration: kinds\nbase_url: http://{api}\nauth:\n  token_url: http://{api}/token\ncredentials:\n  api_key: {{ header: X-Key, format: \"k {{api_key}}\" }}\n  basic: {{}}\n  oauth2_client_credentials: {{}}\n  jwt_bearer: {{ algorithm: RS256 }}\nrules: []\n"
    );
    std::fs::write(dir.path().join("rules/kinds.yaml"), rules).unwrap();
    let config = dir.path().join("grantd.yaml");
    std::fs::write(
        &config,
        format!("listen: 127.0.0.1:0\nrules_dir: rules\nstore: {{ path: k.db }}\nencryption: {{ key: {TEST_KEY} }}\nadmin: {{ listen: 127.0.0.1:0, token: {ADMIN_TOKEN} }}\n"),
    )
    .unwrap();
    let g = spawn(&config);
    let pem = std::fs::read_to_string(repo_path("tests/keys/rsa.pem")).unwrap();
    let pem_body = pem.lines().nth(5).unwrap().to_string();
    let basic_pair = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode("user-b:basic-pw-secret")
    };
    let kinds = [
        serde_json::json!({"kind": "api_key", "api_key": "api-key-secret"}),
        serde_json::json!({"kind": "basic", "username": "user-b", "password": "basic-pw-secret"}),
        serde_json::json!({"kind": "oauth2_client_credentials", "client_id": "cid", "client_secret": "client-secret-secret"}),
        serde_json::json!({"kind": "jwt_bearer", "private_key": pem, "issuer": "iss@example"}),
        serde_json::json!({"kind": "api_key", "api_key": "refused-secret\r\nX: y"}),
        serde_json::json!({"kind": "basic", "username": "a:b", "password": "refused-pw-secret"}),
    ];
    let mut answers = String::new();
    for (i, credentials) in kinds.iter().enumerate() {
        let body = serde_json::json!({"integration": "kinds", "credentials": credentials});
        let put = admin(g.admin, "PUT", &format!("/v1/connections/c{i}"), Some(body)).await;
        answers.push_str(&String::from_utf8_lossy(&put.body));
        let req = Request::get(format!("http://{}/kinds/x", g.proxy))
            .header("grantd-connection", format!("c{i}"))
            .body(Full::default())
            .unwrap();
        let got = send(req).await;
        answers.push_str(&String::from_utf8_lossy(&got.body));
        answers.push_str(&format!("{:?}", got.headers));
    }
    for path in ["/v1/connections", "/v1/events", "/v1/integrations"] {
        answers.push_str(&String::from_utf8_lossy(
            &admin(g.admin, "GET", path, None).await.body,
        ));
    }
    answers.push_str(&String::from_utf8_lossy(
        &get(g.proxy, "/_grantd/metrics").await.body,
    ));
    assert!(!minted.lock().unwrap().is_empty(), "tokens were minted");
    let logs = g.log.lock().unwrap().clone();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace-level logs were on"
    );
    let mut secrets = vec![
        "api-key-secret".to_string(),
        "basic-pw-secret".into(),
        basic_pair,
        "client-secret-secret".into(),
        pem_body,
        "refused-secret".into(),
        "refused-pw-secret".into(),
    ];
    secrets.extend(minted.lock().unwrap().iter().cloned());
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a log line contains {secret}"
        );
        assert!(
            !answers.contains(secret.as_str()),
            "an answer contains {secret}"
        );
    }
}
