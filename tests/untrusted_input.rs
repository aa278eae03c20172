//! Values grantd does not control, end to end: what a token endpoint answers (lifetimes that
//! are negative, zero or huge; extra fields that are secrets) and what the admin API is sent.
//! Regressions from the security review (issue 10), against the fake provider in `oauth/`.

mod common;
mod oauth;

use common::*;
use http::Request;
use http_body_util::Full;
use oauth::Provider;
use serde_json::json;

/// What grantd clamps a token lifetime to.
const TEN_YEARS_MS: i64 = 10 * 365 * 86_400 * 1000;

fn start(p: &Provider) -> Grantd {
    grantd(&oauth::config(p, "refresh: { default_lifetime: 2h }\n"))
        .rule_file("lab.yaml", oauth::RULES)
        .start()
}

async fn put(g: &Grantd, id: &str, credentials: serde_json::Value) -> Got {
    let body = json!({"integration": "lab", "credentials": credentials});
    admin(g.admin, "PUT", &format!("/v1/connections/{id}"), Some(body)).await
}

async fn call(g: &Grantd, id: &str) -> u16 {
    let req = Request::get(format!("http://{}/lab/whoami", g.addr))
        .header("grantd-connection", id)
        .body(Full::default())
        .unwrap();
    send(req).await.status
}

/// Milliseconds from now until the connection's stored expiry.
async fn expires_in_ms(g: &Grantd, id: &str) -> i64 {
    let view = admin(g.admin, "GET", &format!("/v1/connections/{id}"), None)
        .await
        .json();
    let at = view["expires_at"].as_str().expect("an expiry");
    grantd::time::parse_rfc3339(at).unwrap() - grantd::time::now_ms()
}

/// A refresh answered with `expires_in` set to `value`, then `requests` requests: how many
/// token calls they caused, and how long the stored token has left.
async fn refresh_answered_with(
    p: &Provider,
    g: &Grantd,
    id: &str,
    value: serde_json::Value,
) -> (usize, i64) {
    p.answer_with(json!({ "expires_in": value }));
    let refresh = format!("rt-{id}");
    p.grant(&refresh);
    put_expired(g, id, &refresh).await;
    let before = p.calls();
    for _ in 0..5 {
        assert_eq!(call(g, id).await, 200, "expires_in {value}");
    }
    (p.calls() - before, expires_in_ms(g, id).await)
}

#[tokio::test]
async fn expires_in_minus_5_or_zero_from_the_token_endpoint_is_the_default_lifetime_and_one_token_call(
) {
    let p = Provider::start().await;
    let g = start(&p);
    for (i, value) in [json!(-5), json!(0), json!("-5"), json!("soon")]
        .into_iter()
        .enumerate()
    {
        let (calls, left) =
            refresh_answered_with(&p, &g, &format!("acct_{i}"), value.clone()).await;
        assert_eq!(
            calls, 1,
            "expires_in {value}: one token call for five requests"
        );
        assert!(
            (7_000_000..=7_200_000).contains(&left),
            "expires_in {value}: the configured two hours, got {left} ms"
        );
    }
}

#[tokio::test]
async fn a_huge_expires_in_from_the_token_endpoint_is_clamped_to_ten_years() {
    let p = Provider::start().await;
    let g = start(&p);
    for (i, value) in [
        json!(i64::MAX),
        json!(u64::MAX),
        json!(1e30),
        json!("9223372036854775807"),
    ]
    .into_iter()
    .enumerate()
    {
        let (calls, left) =
            refresh_answered_with(&p, &g, &format!("acct_{i}"), value.clone()).await;
        assert_eq!(
            calls, 1,
            "expires_in {value}: one token call for five requests"
        );
        assert!(
            (TEN_YEARS_MS - 60_000..=TEN_YEARS_MS).contains(&left),
            "expires_in {value}: clamped to ten years, got {left} ms"
        );
    }
}

#[tokio::test]
async fn put_with_a_huge_expires_in_is_refused_naming_the_field() {
    let p = Provider::start().await;
    let g = start(&p);
    for secs in [i64::MAX, i64::MAX / 1000 + 1, TEN_YEARS_MS / 1000 + 1, -1] {
        let got = put(
            &g,
            "acct_1",
            json!({"access_token": "at-x", "expires_in": secs}),
        )
        .await;
        assert_eq!(got.status, 400, "expires_in {secs}");
        assert_eq!(got.json()["error"], "invalid_connection");
        let message = got.json()["message"].as_str().unwrap().to_string();
        assert!(message.contains("credentials.expires_in"), "{message}");
        assert!(!message.contains("at-x"), "{message}");
    }
    assert_eq!(
        admin(g.admin, "GET", "/v1/connections/acct_1", None)
            .await
            .status,
        404,
        "nothing was stored"
    );
    let at_most = put(
        &g,
        "acct_1",
        json!({"access_token": "at-x", "expires_in": TEN_YEARS_MS / 1000}),
    )
    .await;
    assert_eq!(at_most.status, 200);
}

#[tokio::test]
async fn put_with_a_multibyte_expires_at_is_a_400_not_a_dropped_connection() {
    let p = Provider::start().await;
    let g = start(&p);
    for at in [
        "2026-11-22T06:40:47+€00",
        "2026-11-22T06:40:47+0€0",
        "2026-11-22T06:40:47.5€",
        "２026-11-22T06:40:47Z",
    ] {
        let got = put(
            &g,
            "acct_1",
            json!({"access_token": "at-x", "expires_at": at}),
        )
        .await;
        assert_eq!(got.status, 400, "{at}");
        assert_eq!(got.json()["error"], "invalid_connection");
        let message = got.json()["message"].as_str().unwrap().to_string();
        assert!(message.contains("credentials.expires_at"), "{message}");
    }
    let fine = put(
        &g,
        "acct_1",
        json!({"access_token": "at-x", "expires_at": "2099-01-01T00:00:00+02:00"}),
    )
    .await;
    assert_eq!(fine.status, 200);
}

#[tokio::test]
async fn token_response_extras_are_not_kept_unless_the_rule_file_lists_them() {
    let p = Provider::start().await;
    p.answer_with(json!({
        "id_token": "eyJ-secret-id-token",
        "bot_token": "xoxb-secret-bot-token",
        "authed_user": {"id": "U1", "access_token": "xoxp-secret-user-token"},
        "signature": "secret-signature",
        "team_name": "Acme",
    }));
    p.grant("rt-0");
    let g = start(&p);
    let body = json!({
        "integration": "lab",
        "credentials": {"access_token": "at-stale", "refresh_token": "rt-0", "expires_in": 0},
        "metadata": {"tenant": "t-1"},
    });
    let put = admin(g.admin, "PUT", "/v1/connections/acct_1", Some(body)).await;
    assert_eq!(put.status, 200);
    assert_eq!(call(&g, "acct_1").await, 200);
    assert_eq!(p.calls(), 1);
    let view = admin(g.admin, "GET", "/v1/connections/acct_1", None).await;
    assert_eq!(
        view.json()["metadata"],
        json!({"tenant": "t-1", "instance_url": "https://example.invalid"}),
        "the app's metadata and the one field the rule file lists"
    );
    let list = admin(g.admin, "GET", "/v1/connections", None).await;
    for text in [&view.body, &list.body] {
        let text = String::from_utf8_lossy(text);
        for secret in ["secret", "Acme", "U1"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}

#[test]
fn a_shipped_file_keeps_only_token_response_fields_its_urls_need() {
    let sets = grantd::rules::load_dir(&repo_path("rules")).expect("shipped rules load");
    let mut kept = 0;
    for (name, set) in &sets {
        let Some(auth) = &set.auth else { continue };
        let urls = set.urls(None).expect("shipped URLs parse");
        let read: Vec<&str> = urls
            .base
            .keys()
            .chain(urls.token.iter().flat_map(|t| t.keys()))
            .collect();
        for key in &auth.token_metadata {
            assert!(
                read.contains(&key.as_str()),
                "{name} keeps `{key}` but no URL reads it"
            );
            kept += 1;
        }
    }
    assert!(kept >= 1, "salesforce's instance_url at least");
}

#[test]
fn a_rule_file_cannot_keep_a_token_as_metadata() {
    let text = oauth::RULES.replace(
        "token_metadata: [instance_url]",
        "token_metadata: [instance_url, id_token]",
    );
    let errors = grantd::rules::file::parse("lab.yaml", &text, Some("lab")).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("auth.token_metadata") && e.contains("`id_token` is a token")),
        "{errors:?}"
    );
}

#[tokio::test]
async fn a_token_response_cannot_move_later_calls_to_another_host_or_plain_http() {
    let p = Provider::start().await;
    p.grant("rt-0");
    let rules = oauth::RULES.replace(
        "base_url: http://127.0.0.1:1",
        &format!(
            "base_url: \"{{metadata.instance_url}}/api\"\nallowed_hosts: [\"{}\"]\nallow_http: true",
            p.addr
        ),
    );
    let config =
        oauth::config(&p, "").replace(&format!("    base_url: \"http://{}/api\"\n", p.addr), "");
    let g = grantd(&config).rule_file("lab.yaml", &rules).start();
    let home = format!("http://{}", p.addr);
    let body = json!({"integration": "lab", "metadata": {"instance_url": home},
        "credentials": {"access_token": "at-stale", "refresh_token": "rt-0", "expires_in": 0}});
    let put = admin(g.admin, "PUT", "/v1/connections/sf", Some(body)).await;
    assert_eq!(put.status, 200, "{:?}", put.body);
    // The provider's answer tries to point the connection at PostgreSQL's port.
    p.answer_with(json!({"instance_url": "http://127.0.0.1:5432"}));
    assert_eq!(call(&g, "sf").await, 200, "the refreshed token is used");
    assert_eq!(p.calls(), 1);
    let view = admin(g.admin, "GET", "/v1/connections/sf", None)
        .await
        .json();
    assert_eq!(view["metadata"]["instance_url"], home.as_str(), "{view}");
    assert_eq!(
        view["version"], 2,
        "the new tokens were stored all the same"
    );
}
