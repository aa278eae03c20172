//! Connections end to end: admin API, token injection, the single-flight refresher, failure
//! classification, persistence and secrecy, against the fake provider in `oauth/`.

mod common;
mod oauth;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use oauth::{Mode, Provider};

fn start(p: &Provider, extra: &str) -> Grantd {
    grantd(&oauth::config(p, extra))
        .rule_file("lab.yaml", oauth::RULES)
        .start()
}

async fn call(g: &Grantd, id: &str) -> Got {
    let req = Request::get(format!("http://{}/lab/whoami", g.addr))
        .header("grantd-connection", id)
        .body(Full::default())
        .unwrap();
    send(req).await
}

#[tokio::test]
async fn a_thousand_concurrent_requests_on_an_expired_connection_cause_one_token_call() {
    let p = Provider::start().await;
    p.grant("rt-0");
    let g = start(&p, "");
    put_expired(&g, "acct_1", "rt-0").await;
    // One HTTP/2 connection carries all the requests, so the test needs no thousand sockets.
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (h2, addr) = (h2.clone(), g.addr);
            tokio::spawn(async move {
                let req = Request::get(format!("http://{addr}/lab/whoami"))
                    .header("authorization", "Bearer grantd:acct_1")
                    .body(Full::default())
                    .unwrap();
                h2.request(req).await.map(|r| r.status().as_u16())
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("request completes"), 200);
    }
    eprintln!(
        "measured: 1000 concurrent requests on an expired connection took {:?}",
        started.elapsed()
    );
    assert_eq!(p.calls(), 1, "exactly one token-endpoint call");
    assert_eq!(p.family_revocations.load(Ordering::SeqCst), 0);
    assert_eq!(
        p.api_rejections.load(Ordering::SeqCst),
        0,
        "no request reached the API with a dead token"
    );
}

#[tokio::test]
async fn the_app_authorization_is_replaced_and_views_never_show_tokens() {
    let p = Provider::start().await;
    p.grant("rt-0");
    let g = start(&p, "");
    put_expired(&g, "acct_1", "rt-0").await;
    assert_eq!(call(&g, "acct_1").await.status, 200);
    let view = admin(g.admin, "GET", "/v1/connections/acct_1", None).await;
    let text = String::from_utf8_lossy(&view.body).into_owned();
    assert_eq!(view.json()["status"], "active");
    assert_eq!(view.json()["version"], 2, "one refresh");
    assert_eq!(
        view.json()["metadata"]["instance_url"],
        "https://example.invalid",
        "token-response fields merge into metadata"
    );
    for token in p.all_tokens() {
        assert!(!text.contains(&token), "admin view leaked {token}");
    }
    assert!(!text.contains("at-stale"));
    let list = admin(
        g.admin,
        "GET",
        "/v1/connections?integration=lab&status=active",
        None,
    )
    .await
    .json();
    assert_eq!(list["connections"].as_array().unwrap().len(), 1);
    let integrations = admin(g.admin, "GET", "/v1/integrations", None).await.json();
    assert_eq!(integrations["integrations"][0]["connections"]["active"], 1);
    assert_eq!(integrations["integrations"][0]["oauth_client"], true);
    let unauthorized = send(
        Request::get(format!("http://{}/v1/connections/acct_1", g.admin))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(unauthorized.status, 401);
    assert_eq!(unauthorized.json()["error"], "unauthorized");
}

#[tokio::test]
async fn unknown_and_foreign_connections_are_refused() {
    let p = Provider::start().await;
    let g = grantd(&format!(
        "{}  other: {{ base_url: \"http://{}\" }}\n",
        oauth::config(&p, ""),
        p.addr
    ))
    .rule_file("lab.yaml", oauth::RULES)
    .start();
    let got = call(&g, "nope").await;
    assert_eq!(
        (got.status, got.json()["error"].as_str()),
        (404, Some("unknown_connection"))
    );
    p.grant("rt-0");
    put_expired(&g, "acct_1", "rt-0").await;
    let req = Request::get(format!("http://{}/other/x", g.addr))
        .header("grantd-connection", "acct_1")
        .body(Full::default())
        .unwrap();
    let got = send(req).await;
    assert_eq!(
        (got.status, got.json()["error"].as_str()),
        (400, Some("wrong_integration"))
    );
}

#[tokio::test]
async fn invalid_grant_pauses_the_connection_after_exactly_one_token_call() {
    let p = Provider::start().await;
    let g = start(&p, "");
    put_expired(&g, "acct_1", "rt-never-issued").await;
    for _ in 0..5 {
        let got = call(&g, "acct_1").await;
        assert_eq!(got.status, 401);
        assert_eq!(got.json()["error"], "needs_reauth");
        assert_eq!(got.json()["connection_id"], "acct_1");
        assert_eq!(got.header("grantd-action"), Some("reauth"));
    }
    assert_eq!(
        p.calls(),
        1,
        "one token call, then the connection is paused"
    );
    assert_eq!(
        p.api_calls.load(Ordering::SeqCst),
        0,
        "the provider's API was never called"
    );
    let view = admin(g.admin, "GET", "/v1/connections/acct_1", None)
        .await
        .json();
    assert_eq!(view["status"], "needs_reauth");
    assert_eq!(view["last_error"]["class"], "invalid_grant");
    // New credentials make it active again, recorded as a transition.
    p.grant("rt-fresh");
    put_expired(&g, "acct_1", "rt-fresh").await;
    assert_eq!(call(&g, "acct_1").await.status, 200);
    let app = g.app.as_ref().unwrap();
    let log = app.store.transitions("acct_1").await.unwrap();
    let causes: Vec<(&str, &str)> = log
        .iter()
        .map(|t| (t.to_status.as_str(), t.cause.as_str()))
        .collect();
    assert_eq!(
        causes,
        vec![
            ("active", "created"),
            ("needs_reauth", "refresh_failed"),
            ("active", "credentials_updated")
        ]
    );
}

#[tokio::test]
async fn invalid_client_is_a_config_error_not_a_dead_user() {
    let p = Provider::start().await;
    p.grant("rt-0");
    p.set_mode(Mode::InvalidClient);
    let g = start(&p, "");
    put_expired(&g, "acct_1", "rt-0").await;
    let got = call(&g, "acct_1").await;
    assert_eq!(
        (got.status, got.json()["error"].as_str()),
        (503, Some("config_error"))
    );
    assert_eq!(got.header("grantd-action"), Some("fix_config"));
    let view = admin(g.admin, "GET", "/v1/connections/acct_1", None)
        .await
        .json();
    assert_eq!(view["status"], "config_error");
    // Nothing retries in a loop: the next request is within the backoff.
    call(&g, "acct_1").await;
    assert_eq!(p.calls(), 1);
    // The operator fixes the provider side; a forced refresh recovers the connection.
    p.set_mode(Mode::Normal);
    let forced = admin(g.admin, "POST", "/v1/connections/acct_1/refresh", None)
        .await
        .json();
    assert_eq!(forced["outcome"], "ok", "{forced}");
    assert_eq!(
        admin(g.admin, "GET", "/v1/connections/acct_1", None)
            .await
            .json()["status"],
        "active"
    );
}

#[tokio::test]
async fn a_503_from_the_token_endpoint_backs_off_and_keeps_the_connection_active() {
    let p = Provider::start().await;
    p.grant("rt-0");
    p.set_mode(Mode::Unavailable);
    let g = start(&p, "");
    put_expired(&g, "acct_1", "rt-0").await;
    let got = call(&g, "acct_1").await;
    assert_eq!(
        (got.status, got.json()["error"].as_str()),
        (503, Some("refresh_unavailable"))
    );
    assert!(
        got.header("retry-after").is_some(),
        "the provider's Retry-After is passed on"
    );
    let again = call(&g, "acct_1").await;
    assert_eq!(again.status, 503);
    assert_eq!(
        p.calls(),
        1,
        "backing off, not hammering the token endpoint"
    );
    let view = admin(g.admin, "GET", "/v1/connections/acct_1", None)
        .await
        .json();
    assert_eq!(view["status"], "active");
    assert_eq!(view["refresh_failures"], 1);
    // After the Retry-After (2 s), the refresh goes through.
    p.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(call(&g, "acct_1").await.status, 200);
    assert_eq!(p.calls(), 2);
}

#[tokio::test]
async fn an_invalid_token_401_refreshes_once_and_replays_the_request() {
    let p = Provider::start().await;
    p.grant("rt-0");
    let g = start(&p, "");
    // grantd believes this token is good for an hour; the provider does not know it.
    let body = serde_json::json!({"integration": "lab", "credentials": {"access_token": "at-revoked", "refresh_token": "rt-0", "expires_in": 3600}});
    assert_eq!(
        admin(g.admin, "PUT", "/v1/connections/acct_1", Some(body))
            .await
            .status,
        200
    );
    let req = Request::post(format!("http://{}/lab/messages", g.addr))
        .header("grantd-connection", "acct_1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"text":"hi"}"#)))
        .unwrap();
    let got = send(req).await;
    assert_eq!(
        got.status,
        200,
        "replayed with the new token: {:?}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(p.calls(), 1);
    assert_eq!(
        p.api_rejections.load(Ordering::SeqCst),
        1,
        "exactly one rejected attempt before the replay"
    );
}

#[tokio::test]
async fn the_proactive_loop_refreshes_before_expiry_without_traffic() {
    let p = Provider::start().await;
    p.grant("rt-0");
    p.set_lifetime(Duration::from_secs(3));
    let g = start(
        &p,
        "refresh: { window_min: 1s, window_max: 2s, scan_interval: 100ms, expiry_margin: 0s }\n",
    );
    let body = serde_json::json!({"integration": "lab", "credentials": {"access_token": "at-x", "refresh_token": "rt-0", "expires_in": 3}});
    admin(g.admin, "PUT", "/v1/connections/acct_1", Some(body)).await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(p.calls() >= 1, "refreshed with no request in sight");
    let view = admin(g.admin, "GET", "/v1/connections/acct_1", None)
        .await
        .json();
    assert!(view["version"].as_i64().unwrap() >= 2);
    assert_eq!(p.api_calls.load(Ordering::SeqCst), 0);
}

/// A request on `acct_1` every 20 ms for `how_long`, each answered 200; how many were sent.
async fn steady_traffic(g: &Grantd, how_long: Duration) -> usize {
    let started = tokio::time::Instant::now();
    let mut requests = 0;
    while started.elapsed() < how_long {
        assert_eq!(call(g, "acct_1").await.status, 200);
        requests += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(requests > 50);
    requests
}

/// Regression (issue 14): a token that lives less than `refresh.expiry_margin` was refreshed on
/// every request. With the default margin and window and 3-second tokens, a connection under
/// steady traffic is renewed about once per half lifetime, never on every request.
#[tokio::test]
async fn three_second_tokens_are_renewed_about_once_per_half_lifetime() {
    let p = Provider::start().await;
    p.grant("rt-0");
    p.set_lifetime(Duration::from_secs(3));
    let g = start(&p, "refresh: { scan_interval: 100ms }\n");
    put_expired(&g, "acct_1", "rt-0").await;
    let requests = steady_traffic(&g, Duration::from_secs(6)).await;
    // At most one renewal per 1.5 s (half of 3 s) over 6 s, plus the first: 40 a minute.
    let calls = p.calls();
    assert!(
        (2..=5).contains(&calls),
        "{calls} token calls for {requests} requests in 6 s"
    );
}

#[tokio::test]
async fn steady_traffic_on_short_lived_tokens_never_sees_a_provider_401() {
    let p = Provider::start().await;
    p.grant("rt-0");
    p.set_lifetime(Duration::from_secs(2));
    let g = start(&p, "refresh: { window_min: 500ms, window_max: 1s, scan_interval: 100ms, expiry_margin: 200ms }\n");
    put_expired(&g, "acct_1", "rt-0").await;
    steady_traffic(&g, Duration::from_secs(6)).await;
    assert_eq!(
        p.api_rejections.load(Ordering::SeqCst),
        0,
        "no request carried an expired token"
    );
    assert!(
        p.calls() >= 3,
        "tokens were rotated along the way ({} calls)",
        p.calls()
    );
    assert_eq!(p.family_revocations.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_rotated_refresh_token_survives_a_restart() {
    let p = Provider::start().await;
    p.grant("rt-0");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let g = grantd(&oauth::config(&p, ""))
        .rule_file("lab.yaml", oauth::RULES)
        .start_in(dir);
    put_expired(&g, "acct_1", "rt-0").await;
    assert_eq!(
        admin(g.admin, "POST", "/v1/connections/acct_1/refresh", None)
            .await
            .json()["outcome"],
        "ok"
    );
    let dir = g.stop();
    assert_eq!(dir.path(), path);
    let g = grantd(&oauth::config(&p, ""))
        .rule_file("lab.yaml", oauth::RULES)
        .start_in(dir);
    let forced = admin(g.admin, "POST", "/v1/connections/acct_1/refresh", None)
        .await
        .json();
    assert_eq!(
        forced["outcome"], "ok",
        "the persisted rotated token works: {forced}"
    );
    assert_eq!(
        p.family_revocations.load(Ordering::SeqCst),
        0,
        "the old refresh token was never reused"
    );
    assert_eq!(p.calls(), 2);
}

#[tokio::test]
async fn the_sqlite_file_holds_no_token_in_plain_text() {
    let p = Provider::start().await;
    p.grant("rt-0");
    let g = start(&p, "");
    put_expired(&g, "acct_1", "rt-0").await;
    assert_eq!(call(&g, "acct_1").await.status, 200);
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(g.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("grantd.db")
        {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(bytes.len() > 1000, "found the database files");
    let mut tokens = p.all_tokens();
    tokens.push("at-stale".into());
    assert!(tokens.len() >= 3);
    for token in tokens {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "{token} is in the SQLite file"
        );
    }
}

#[tokio::test]
async fn requests_without_a_connection_still_pass_through_with_the_apps_own_auth() {
    let p = Provider::start().await;
    let g = start(&p, "");
    let req = Request::get(format!("http://{}/lab/whoami", g.addr))
        .header("authorization", "Bearer app-owned-token")
        .body(Full::default())
        .unwrap();
    let got = send(req).await;
    assert_eq!(
        got.status, 401,
        "the provider saw the app's own (unknown) token"
    );
    assert_eq!(p.calls(), 0);
    let _ = Arc::clone(&p);
}

#[tokio::test]
async fn a_token_response_without_a_refresh_token_keeps_the_old_one() {
    let p = Provider::start().await;
    p.grant("rt-keep");
    p.set_mode(Mode::NoRotation);
    let g = start(&p, "");
    put_expired(&g, "acct_1", "rt-keep").await;
    for _ in 0..3 {
        let forced = admin(g.admin, "POST", "/v1/connections/acct_1/refresh", None)
            .await
            .json();
        assert_eq!(forced["outcome"], "ok", "{forced}");
    }
    assert_eq!(
        p.calls(),
        3,
        "each refresh presented the kept refresh token"
    );
    assert_eq!(
        admin(g.admin, "GET", "/v1/connections/acct_1", None)
            .await
            .json()["has_refresh_token"],
        true
    );
}

#[tokio::test]
async fn a_live_reauth_verdict_pauses_the_connection() {
    let p = Provider::start().await;
    p.grant("rt-0");
    let rules = format!(
        "{}  - name: revoked\n    match: {{ status: [403] }}\n    expr: 'body.error = \"token_revoked\" ? {{ \"status\": 401, \"action\": \"reauth\", \"error\": \"token_revoked\" }}'\n",
        oauth::RULES.replace("rules: []\n", "rules:\n")
    );
    let g = grantd(&oauth::config(&p, ""))
        .rule_file("lab.yaml", &rules)
        .start();
    put_expired(&g, "acct_1", "rt-0").await;
    let req = Request::get(format!("http://{}/lab/revoked", g.addr))
        .header("grantd-connection", "acct_1")
        .body(Full::default())
        .unwrap();
    let got = send(req).await;
    assert_eq!(
        (got.status, got.header("grantd-action")),
        (401, Some("reauth"))
    );
    let view = admin(g.admin, "GET", "/v1/connections/acct_1", None)
        .await
        .json();
    assert_eq!(view["status"], "needs_reauth");
    let app = g.app.as_ref().unwrap();
    let last = app
        .store
        .transitions("acct_1")
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        (last.cause.as_str(), last.detail["error"].as_str()),
        ("rule_verdict", Some("token_revoked"))
    );
    let api_calls = p.api_calls.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(call(&g, "acct_1").await.json()["error"], "needs_reauth");
    assert_eq!(
        p.api_calls.load(std::sync::atomic::Ordering::SeqCst),
        api_calls,
        "paused: the provider is not called"
    );
}

#[tokio::test]
async fn refreshes_per_integration_are_capped_and_a_missing_expires_in_gets_the_default_lifetime() {
    let p = Provider::start().await;
    p.set_mode(Mode::Slow);
    let g = start(
        &p,
        "refresh: { max_concurrent_per_integration: 2, default_lifetime: 2h }\n",
    );
    for i in 0..8 {
        p.grant(&format!("rt-c{i}"));
        put_expired(&g, &format!("acct_{i}"), &format!("rt-c{i}")).await;
    }
    let ids: [&'static str; 8] = [
        "acct_0", "acct_1", "acct_2", "acct_3", "acct_4", "acct_5", "acct_6", "acct_7",
    ];
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let addr = g.addr;
            tokio::spawn(async move {
                let req = Request::get(format!("http://{addr}/lab/whoami"))
                    .header("grantd-connection", id)
                    .body(Full::default())
                    .unwrap();
                send(req).await.status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(p.calls(), 8);
    assert_eq!(
        p.max_in_flight.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "never more than the cap at once"
    );
    let view = admin(g.admin, "GET", "/v1/connections/acct_0", None)
        .await
        .json();
    let expires = grantd::time::parse_rfc3339(view["expires_at"].as_str().unwrap()).unwrap();
    let left = expires - grantd::time::now_ms();
    assert!(
        (7_000_000..=7_200_000).contains(&left),
        "about two hours left, got {left} ms"
    );
}

#[tokio::test]
async fn templated_base_urls_and_query_injection_follow_the_rule_file() {
    let p = Provider::start().await;
    p.grant("rt-0");
    let rules = oauth::RULES
        .replace(
            "base_url: http://127.0.0.1:1",
            "base_url: \"http://{metadata.host}/tenant\"\nallowed_hosts: [\"127.0.0.1:*\"]\nallow_http: true",
        )
        .replace(
            "  client_auth: basic\n",
            "  client_auth: basic\n  inject: { query: access_token }\n",
        );
    let config =
        oauth::config(&p, "").replace(&format!("    base_url: \"http://{}/api\"\n", p.addr), "");
    let g = grantd(&config).rule_file("lab.yaml", &rules).start();
    let body = serde_json::json!({"integration": "lab", "credentials": {"access_token": "at-x", "refresh_token": "rt-0", "expires_in": 0}, "metadata": {"host": p.addr.to_string()}});
    assert_eq!(
        admin(g.admin, "PUT", "/v1/connections/acct_1", Some(body))
            .await
            .status,
        200
    );
    let req = Request::get(format!("http://{}/lab/items?page=2", g.addr))
        .header("authorization", "Bearer grantd:acct_1")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(req).await.status, 200);
    let (path, query, auth) = p.last_api_request.lock().unwrap().clone().unwrap();
    assert_eq!(path, "/tenant/items");
    assert!(
        query
            .as_deref()
            .unwrap()
            .starts_with("page=2&access_token=at-"),
        "{query:?}"
    );
    assert_eq!(
        auth, None,
        "the app's Authorization never reaches the provider"
    );
    let without = send(
        Request::get(format!("http://{}/lab/items", g.addr))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (without.status, without.json()["error"].as_str()),
        (400, Some("connection_required"))
    );
}

#[tokio::test]
async fn token_rules_classify_a_lying_token_endpoint() {
    let p = Provider::start().await;
    p.grant("rt-0");
    p.set_mode(Mode::GithubLies);
    // The shipped GitHub token rules, on the fake provider.
    let github = std::fs::read_to_string(repo_path("rules/github.yaml")).unwrap();
    let token_rules = &github[github.find("  - name: token-endpoint-grant-dead").unwrap()
        ..github.find("\ntests:").unwrap()];
    let rules = format!(
        "{}{token_rules}\n",
        oauth::RULES.replace("rules: []\n", "rules:\n")
    );
    let g = grantd(&oauth::config(&p, ""))
        .rule_file("lab.yaml", &rules)
        .start();
    put_expired(&g, "acct_1", "rt-0").await;
    let got = call(&g, "acct_1").await;
    assert_eq!(
        got.json()["error"],
        "needs_reauth",
        "a 200 with error=bad_refresh_token is a dead grant"
    );
    assert_eq!(p.calls(), 1);
    let view = admin(g.admin, "GET", "/v1/connections/acct_1", None)
        .await
        .json();
    assert_eq!(
        (
            view["status"].as_str(),
            view["last_error"]["class"].as_str()
        ),
        (Some("needs_reauth"), Some("bad_refresh_token"))
    );
}

/// Regression (issue 12): token-endpoint rules ran with the command line's fixed budget, not the
/// configured `evaluation` limits. Here the configured sequence limit (5) is below what the rule
/// needs, so the rule fails, the RFC 6749 reading applies, and the grant is not declared dead.
#[tokio::test]
async fn token_rules_obey_the_configured_evaluation_limits() {
    let p = Provider::start().await;
    p.grant("rt-0");
    p.set_mode(Mode::GithubLies);
    let rules = oauth::RULES.replace(
        "rules: []\n",
        r#"rules:
  - name: needs-a-long-sequence
    on: token
    expr: '$count([1..10]) = 10 and $contains($string(body), "bad_refresh_token") ? { "status": 401, "action": "reauth" }'
"#,
    );
    let extra = "evaluation:\n  max_sequence_length: 5\n";
    let g = grantd(&oauth::config(&p, extra))
        .rule_file("lab.yaml", &rules)
        .start();
    put_expired(&g, "acct_1", "rt-0").await;
    let got = call(&g, "acct_1").await;
    assert_eq!(
        got.json()["error"],
        "refresh_unavailable",
        "{:?}",
        got.json()
    );
    let view = admin(g.admin, "GET", "/v1/connections/acct_1", None)
        .await
        .json();
    assert_eq!(view["status"], "active", "{view}");
}

/// Figma refreshes at a second endpoint (`auth.refresh_url`); codes still go to `token_url`.
#[tokio::test]
async fn a_separate_refresh_endpoint_gets_the_refresh_grant() {
    let p = Provider::start().await;
    p.grant("rt-0");
    let extra = format!("    refresh_url: \"http://{}/refresh\"\n", p.addr);
    let g = grantd(&oauth::config(&p, &extra))
        .rule_file("lab.yaml", oauth::RULES)
        .start();
    put_expired(&g, "acct_1", "rt-0").await;
    assert_eq!(call(&g, "acct_1").await.status, 200);
    assert_eq!(*p.token_paths.lock().unwrap(), vec!["/refresh".to_string()]);
}

#[tokio::test]
async fn deleted_connections_are_gone_for_the_proxy_too() {
    let p = Provider::start().await;
    p.grant("rt-0");
    let g = start(&p, "");
    put_expired(&g, "acct_1", "rt-0").await;
    assert_eq!(call(&g, "acct_1").await.status, 200);
    let deleted = admin(g.admin, "DELETE", "/v1/connections/acct_1", None).await;
    assert_eq!(
        (deleted.status, deleted.json()["revocation"].as_str()),
        (200, Some("not_supported")),
        "lab has no revocation_url"
    );
    assert_eq!(
        admin(g.admin, "DELETE", "/v1/connections/acct_1", None)
            .await
            .status,
        404
    );
    assert_eq!(
        call(&g, "acct_1").await.json()["error"],
        "unknown_connection"
    );
}

/// Another process holds the SQLite write lock when the new tokens come back: the write fails
/// (busy) and is retried until it lands. Dropping it would lose the rotated refresh token.
#[tokio::test]
async fn a_refresh_result_that_cannot_be_stored_yet_is_retried_not_dropped() {
    use sqlx::Connection as _;
    let p = Provider::start().await;
    p.grant("rt-0");
    p.set_mode(Mode::Slow);
    let g = grantd(&oauth::config(&p, ""))
        .rule_file("lab.yaml", oauth::RULES)
        .busy_timeout("200ms")
        .start();
    put_expired(&g, "acct_1", "rt-0").await;
    let addr = g.addr;
    let request = tokio::spawn(async move {
        let req = Request::get(format!("http://{addr}/lab/whoami"))
            .header("grantd-connection", "acct_1")
            .body(Full::default())
            .unwrap();
        send(req).await.status
    });
    while p.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The token call takes 200 ms: take the write lock before it returns, hold it 1.5 s.
    let db = g.dir.path().join("grantd.db");
    let mut blocker = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
    assert_eq!(request.await.unwrap(), 200);
    assert_eq!(p.calls(), 1);
    // The rotated refresh token was stored: the next refresh presents it and succeeds.
    p.set_mode(Mode::Normal);
    let forced = admin(g.admin, "POST", "/v1/connections/acct_1/refresh", None)
        .await
        .json();
    assert_eq!(forced["outcome"], "ok", "{forced}");
    assert_eq!(p.family_revocations.load(Ordering::SeqCst), 0);
}
