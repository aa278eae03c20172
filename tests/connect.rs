//! The connect flow end to end against an independently written OAuth 2.0 authorization
//! server (panva/oidc-provider: exact redirect URIs, PKCE, single-use codes whose reuse revokes
//! the grant, rotating refresh tokens, client_secret_basic and client_secret_post), driven by a
//! headless browser over real sockets.

mod authz;
#[path = "connect/binding.rs"]
mod binding;
mod common;
#[path = "connect/pages.rs"]
mod pages;
mod receiver;
#[path = "connect/world.rs"]
mod world;

use std::time::Duration;

use authz::{AuthzServer, Browser};
use common::*;
use http::Request;
use http_body_util::Full;
use world::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refresh_revoke_and_reconnect_in_place() {
    let Some(w) = world(
        3,
        &format!("  reconnect_return_to: {RETURN_TO}/reconnected\n"),
        "refresh: { window_min: 1s, window_max: 2s, scan_interval: 200ms, expiry_margin: 0s }\n",
    )
    .await
    else {
        return;
    };
    // Connect a new connection headlessly through the returned URL.
    let started = w
        .connect_url(
            "authz",
            &format!("connection_id=acme-1&login_hint=bob@example.test&return_to={RETURN_TO}&scopes=email"),
        )
        .await;
    assert_eq!(started["connection_id"], "acme-1");
    let auth_url = url::Url::parse(started["authorization_url"].as_str().unwrap()).unwrap();
    assert_eq!(
        query(&auth_url, "redirect_uri").unwrap(),
        format!("http://{}/oauth/callback", w.public)
    );
    assert_eq!(query(&auth_url, "code_challenge_method").unwrap(), "S256");
    assert_eq!(query(&auth_url, "scope").unwrap(), "email openid");
    assert_eq!(query(&auth_url, "prompt").unwrap(), "consent");
    let before = grantd::time::now_ms();
    let back = Browser::default()
        .visit(auth_url.as_str(), app_test)
        .await
        .stopped();
    let after = grantd::time::now_ms();
    assert!(back.as_str().starts_with(RETURN_TO), "{back}");
    assert_eq!(
        query(&back, "status").as_deref(),
        Some("connected"),
        "{back}"
    );
    assert_eq!(query(&back, "connection_id").as_deref(), Some("acme-1"));
    let c = w.connection("acme-1").await;
    assert_eq!(c["status"], "active");
    assert_eq!(c["has_refresh_token"], true);
    let created_at = c["created_at"].clone();
    // Expiry counts from our clock at receipt: expires_in (3 s) after the exchange.
    let expires = grantd::time::parse_rfc3339(c["expires_at"].as_str().unwrap()).unwrap();
    assert!(expires >= before + 3000 && expires <= after + 3000, "{c}");
    assert_eq!(w.authz.token_calls("authorization_code").await, 1);

    // Proxy requests with it.
    let me = w.me("authz", "acme-1").await;
    assert_eq!(me.status, 200, "{}", String::from_utf8_lossy(&me.body));
    assert_eq!(me.json()["sub"], "bob@example.test");

    // The access token expires; the refresher keeps the connection alive (rotating tokens).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let c = w.connection("acme-1").await;
    assert_eq!(c["status"], "active", "{c}");
    assert!(
        c["version"].as_i64().unwrap() >= 3,
        "refreshed at least twice: {c}"
    );
    assert!(w.authz.token_calls("refresh_token").await >= 2);
    assert_eq!(w.me("authz", "acme-1").await.status, 200);

    // The user revokes the grant at the server: needs_reauth and one authentication_error.
    assert_eq!(w.authz.revoke("bob@example.test").await, 1);
    let _ = w.me("authz", "acme-1").await;
    w.wait_status("acme-1", "needs_reauth").await;
    let errors = w.receiver.wait_for("authentication_error", 1).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let reconnect = errors[0]["data"]["reconnect_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reconnect.starts_with(&format!("http://{}/connect/", w.public)),
        "{reconnect}"
    );
    assert_eq!(w.me("authz", "acme-1").await.status, 401);

    // Reconnect through the link from the callback: same id, active, one reactivated.
    let mut browser = Browser::default();
    let (_, confirm) = browser.visit(&reconnect, |_| false).await.page();
    assert_eq!(confirm.status, 200);
    assert!(String::from_utf8_lossy(&confirm.body).contains("<form method=\"post\""));
    let back = browser.submit(&reconnect, app_test).await.stopped();
    assert_eq!(back.path(), "/settings/integrations/reconnected", "{back}");
    assert_eq!(
        query(&back, "status").as_deref(),
        Some("connected"),
        "{back}"
    );
    let c = w.wait_status("acme-1", "active").await;
    assert_eq!(c["id"], "acme-1");
    assert_eq!(
        c["created_at"], created_at,
        "updated in place, not re-created"
    );
    let reactivated = w.receiver.wait_for("reactivated", 1).await;
    assert_eq!(reactivated.len(), 1, "{reactivated:?}");
    assert_eq!(reactivated[0]["data"]["via"], "reauthorized");
    assert_eq!(reactivated[0]["data"]["connection_id"], "acme-1");
    assert_eq!(w.me("authz", "acme-1").await.status, 200);
    assert_eq!(w.receiver.of_type("authentication_error").len(), 1);

    // A link works once.
    let (_, again) = Browser::default()
        .submit(&reconnect, |_| false)
        .await
        .page();
    assert_eq!(again.status, 410);
    assert!(String::from_utf8_lossy(&again.body).contains("already used"));
}

/// Issue 13: deleting a connection revokes its refresh token at the provider first (RFC 7009);
/// the server no longer holds the grant afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_connection_revokes_its_grant_at_the_provider() {
    let Some(w) = world(60, "", "").await else {
        return;
    };
    let started = w
        .connect_url(
            "authz",
            &format!("connection_id=gone-1&login_hint=carol@example.test&return_to={RETURN_TO}&scopes=email"),
        )
        .await;
    let auth_url = started["authorization_url"].as_str().unwrap().to_string();
    let back = Browser::default()
        .visit(&auth_url, app_test)
        .await
        .stopped();
    assert_eq!(
        query(&back, "status").as_deref(),
        Some("connected"),
        "{back}"
    );
    assert_eq!(w.me("authz", "gone-1").await.status, 200);
    assert_eq!(w.authz.live_grants("carol@example.test").await, 1);

    let deleted = admin(w.g.admin, "DELETE", "/v1/connections/gone-1", None).await;
    assert_eq!(
        (deleted.status, deleted.json()["revocation"].as_str()),
        (200, Some("revoked"))
    );
    assert_eq!(
        w.authz.live_grants("carol@example.test").await,
        0,
        "the grant is gone at the server"
    );
    let gone = admin(w.g.admin, "GET", "/v1/connections/gone-1", None).await;
    assert_eq!(gone.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_callback_is_rejected_without_a_token_call() {
    let Some(w) = world(3600, "", "").await else {
        return;
    };
    let started = w
        .connect_url(
            "authzpost",
            &format!("connection_id=replay-1&return_to={RETURN_TO}"),
        )
        .await;
    // This time through the shareable link (what an app would email), which carries return_to.
    let link = started["link"].as_str().unwrap();
    assert!(link.starts_with(&format!("http://{}/connect/", w.public)));
    // Fetching the link (as mail scanners do) does not use it up; the user's POST does.
    let mut browser = Browser::default();
    for _ in 0..2 {
        let (_, confirm) = browser.visit(link, callback).await.page();
        assert_eq!(confirm.status, 200);
    }
    let cb = browser.submit(link, callback).await.stopped();
    // The browser (with the cookie that binds the flow to it) delivers the callback twice at
    // once, from two tabs, then once more later.
    let (mut tab1, mut tab2) = (browser.clone(), browser.clone());
    let (a, b) = tokio::join!(tab1.request("GET", &cb), tab2.request("GET", &cb));
    let statuses = {
        let mut s = [a.status, b.status];
        s.sort();
        s
    };
    assert_eq!(statuses, [303, 409], "one exchange, one rejection");
    let later = browser.request("GET", &cb).await;
    assert_eq!(later.status, 409);
    assert!(String::from_utf8_lossy(&later.body).contains("This sign-in is already finished"));
    assert_eq!(w.exchanges(), 1);
    assert_eq!(w.authz.token_calls("authorization_code").await, 1);
    // Had the code been sent twice, the server would have revoked what it issued.
    let me = w.me("authzpost", "replay-1").await;
    assert_eq!(me.status, 200, "{}", String::from_utf8_lossy(&me.body));
}

/// Every value of `key` in the query, in order.
fn all(u: &url::Url, key: &str) -> Vec<String> {
    u.query_pairs()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_to_that_already_has_a_status_gets_exactly_one() {
    let Some(w) = world(3600, "", "").await else {
        return;
    };
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    // A return_to copied from an earlier result: grantd's names are replaced, the app's kept.
    let return_to = format!("{RETURN_TO}?tab=slack&status=stale&error=old&connection_id=x#done");
    let started = w
        .connect_url(
            "authz",
            &format!("connection_id=rt-1&return_to={}", encode(&return_to)),
        )
        .await;
    let back = Browser::default()
        .visit(started["authorization_url"].as_str().unwrap(), app_test)
        .await
        .stopped();
    assert_eq!(back.path(), "/settings/integrations", "{back}");
    assert_eq!(all(&back, "status"), ["connected"], "{back}");
    assert_eq!(all(&back, "connection_id"), ["rt-1"], "{back}");
    assert_eq!(all(&back, "integration"), ["authz"], "{back}");
    assert!(all(&back, "error").is_empty(), "no stale error: {back}");
    assert_eq!(all(&back, "tab"), ["slack"], "{back}");
    assert_eq!(back.fragment(), Some("done"), "{back}");
    assert_eq!(w.connection("rt-1").await["status"], "active");

    // The same on the way back from a refusal.
    let return_to = format!("{RETURN_TO}?status=connected&connection_id=someone-else");
    let started = w
        .connect_url(
            "authz",
            &format!("connection_id=rt-2&return_to={}", encode(&return_to)),
        )
        .await;
    let auth_url = url::Url::parse(started["authorization_url"].as_str().unwrap()).unwrap();
    let state = query(&auth_url, "state").unwrap();
    let got = get(
        w.public,
        &format!("/oauth/callback?error=access_denied&state={state}"),
    )
    .await;
    assert_eq!(got.status, 303);
    let to = url::Url::parse(got.header("location").unwrap()).unwrap();
    assert_eq!(all(&to, "status"), ["error"], "{to}");
    assert_eq!(all(&to, "error"), ["access_denied"], "{to}");
    assert_eq!(all(&to, "connection_id"), ["rt-2"], "{to}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_or_expired_state_and_foreign_return_to_are_refused() {
    let Some(w) = world(3600, "", "").await else {
        return;
    };
    // return_to outside the allow-list: refused before anything starts.
    for bad in [
        "https://evil.example/settings/integrations",
        "http://app.test@evil.example/settings/integrations",
        "http://app.test/settings/integrationsX",
    ] {
        let got = admin(
            w.g.admin,
            "GET",
            &format!(
                "/v1/connect/authz?connection_id=x&return_to={}",
                form_urlencoded::byte_serialize(bad.as_bytes()).collect::<String>()
            ),
            None,
        )
        .await;
        assert_eq!(got.status, 400, "{bad}");
        assert_eq!(got.json()["error"], "return_to_not_allowed");
    }

    let started = w
        .connect_url("authz", &format!("connection_id=t-1&return_to={RETURN_TO}"))
        .await;
    let cb = Browser::default()
        .visit(started["authorization_url"].as_str().unwrap(), callback)
        .await
        .stopped();
    let state = query(&cb, "state").unwrap();
    let code = query(&cb, "code").unwrap();
    let mut tampered = state.clone();
    tampered.replace_range(0..1, if state.starts_with('A') { "B" } else { "A" });
    let got = get(
        w.public,
        &format!("/oauth/callback?code={code}&state={tampered}"),
    )
    .await;
    assert_eq!(got.status, 400);
    assert!(String::from_utf8_lossy(&got.body).contains("its address was changed"));
    let got = get(w.public, &format!("/oauth/callback?code={code}")).await;
    assert_eq!(got.status, 400);
    assert_eq!(w.exchanges(), 0, "no token call for a bad state");
    // The real state still works once: tampering did not use it up.
    let got = get(w.public, &path_and_query(&cb)).await;
    assert_eq!(got.status, 303);
    assert_eq!(w.connection("t-1").await["status"], "active");

    // A provider error goes back to the app, with the connection untouched.
    let started = w
        .connect_url("authz", &format!("connection_id=t-2&return_to={RETURN_TO}"))
        .await;
    let state = query(
        &url::Url::parse(started["authorization_url"].as_str().unwrap()).unwrap(),
        "state",
    )
    .unwrap();
    let got = get(
        w.public,
        &format!(
            "/oauth/callback?error=access_denied&error_description=user+said+no&state={state}"
        ),
    )
    .await;
    assert_eq!(got.status, 303);
    let to = url::Url::parse(got.header("location").unwrap()).unwrap();
    assert_eq!(query(&to, "status").as_deref(), Some("error"));
    assert_eq!(query(&to, "error").as_deref(), Some("access_denied"));
    assert_eq!(w.connection("t-2").await["error"], "unknown_connection");
    // Without return_to, the user gets a page that says what happened.
    let started = w.connect_url("authz", "connection_id=t-3").await;
    let auth_url = url::Url::parse(started["authorization_url"].as_str().unwrap()).unwrap();
    let state = query(&auth_url, "state").unwrap();
    let got = get(
        w.public,
        &format!("/oauth/callback?error=access_denied&state={state}"),
    )
    .await;
    assert_eq!(got.status, 400);
    let page = String::from_utf8_lossy(&got.body);
    assert!(
        page.contains("<h1>Not connected</h1>")
            && page.contains("Access to your Example Cloud account was not allowed"),
        "{page}"
    );
    assert_eq!(w.exchanges(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_state_is_refused_saying_to_start_again() {
    let Some(w) = world(3600, "  state_ttl: 1s\n", "").await else {
        return;
    };
    let started = w.connect_url("authz", "connection_id=late-1").await;
    let auth_url = url::Url::parse(started["authorization_url"].as_str().unwrap()).unwrap();
    let state = query(&auth_url, "state").unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let got = get(
        w.public,
        &format!("/oauth/callback?code=whatever&state={state}"),
    )
    .await;
    assert_eq!(got.status, 400);
    let page = String::from_utf8_lossy(&got.body);
    assert!(
        page.contains("This sign-in took too long") && page.contains("start again"),
        "{page}"
    );
    assert_eq!(w.exchanges(), 0);
}

#[tokio::test]
async fn shipped_providers_authorization_urls_carry_their_extra_parameters() {
    let mut b = grantd(
        "connect:\n  redirect_uri: https://connect.example.com/oauth/callback\n\
         integrations:\n  google: { client_id: g-id, client_secret: g-secret, scopes: [email] }\n\
         \x20 microsoft: { client_id: m-id }\n  slack: { client_id: s-id }\n  github: { client_id: gh-id }\n",
    );
    for p in ["google", "microsoft", "slack", "github"] {
        b = b.shipped_rules(p);
    }
    let g = b.start();
    let url_of = |body: serde_json::Value| {
        assert!(
            body.get("link").is_none(),
            "no public listener, no link: {body}"
        );
        url::Url::parse(body["authorization_url"].as_str().unwrap()).unwrap()
    };
    let get_url = |q: &'static str| async move {
        let got = admin(g.admin, "GET", &format!("/v1/connect/{q}"), None).await;
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
        url_of(got.json())
    };
    let google = get_url("google?connection_id=u1&login_hint=a@b.test").await;
    assert_eq!(google.host_str(), Some("accounts.google.com"));
    for (k, v) in [
        ("client_id", "g-id"),
        ("redirect_uri", "https://connect.example.com/oauth/callback"),
        ("response_type", "code"),
        ("access_type", "offline"),
        ("prompt", "consent"),
        ("scope", "email"),
        ("login_hint", "a@b.test"),
        ("code_challenge_method", "S256"),
    ] {
        assert_eq!(query(&google, k).as_deref(), Some(v), "{k} in {google}");
    }
    assert!(
        !google.as_str().contains("g-secret"),
        "the secret never travels in a URL"
    );
    let ms = get_url("microsoft?scopes=User.Read,Mail.Read").await;
    assert_eq!(
        query(&ms, "scope").as_deref(),
        Some("User.Read Mail.Read offline_access")
    );
    let slack = get_url("slack?scopes=chat:write+channels:read").await;
    assert_eq!(
        query(&slack, "scope").as_deref(),
        Some("chat:write,channels:read")
    );
    let gh = get_url("github").await;
    assert!(query(&gh, "state").unwrap().len() >= 43, "256-bit state");

    let put = serde_json::json!({"integration": "google", "credentials": {"access_token": "at"}});
    assert_eq!(
        admin(g.admin, "PUT", "/v1/connections/u-g", Some(put))
            .await
            .status,
        200
    );
    let got = admin(
        g.admin,
        "GET",
        "/v1/connect/microsoft?connection_id=u-g",
        None,
    )
    .await;
    assert_eq!(got.status, 409);
    assert_eq!(got.json()["error"], "integration_mismatch");
    let got = admin(g.admin, "GET", "/v1/connect/hubspot", None).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.json()["error"], "unknown_integration");
    let got = admin(g.admin, "GET", "/v1/connect/google?connection_id=a/b", None).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["error"], "invalid_connection_id");
    let got = admin(
        g.admin,
        "GET",
        "/v1/connect/google?return_to=https://app.example/",
        None,
    )
    .await;
    assert_eq!(
        got.json()["error"],
        "return_to_not_allowed",
        "empty allow-list allows nothing"
    );
}

#[tokio::test]
async fn connect_without_a_redirect_uri_says_what_to_configure() {
    let g = grantd("integrations:\n  google: { client_id: g-id }\n")
        .shipped_rules("google")
        .start();
    let got = admin(g.admin, "GET", "/v1/connect/google", None).await;
    assert_eq!(got.status, 409);
    assert_eq!(got.json()["error"], "connect_not_configured");
    assert!(got.json()["message"]
        .as_str()
        .unwrap()
        .contains("connect.public_url"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_callback_may_land_on_another_replica_and_still_counts_once() {
    let Some(store) = postgres_store_config().await else {
        return;
    };
    let Some(w) = world_on(3600, "", "", Some(&store)).await else {
        return;
    };
    // Replica B shares the store and the public URL (one load balancer in front of both).
    let b = replica(&w.authz, unused_port(), w.public.port(), "", Some(&store));
    let b_public = b.app.as_ref().unwrap().connect_addr.unwrap();
    let started = w
        .connect_url(
            "authz",
            &format!("connection_id=fleet-1&return_to={RETURN_TO}"),
        )
        .await;
    let cb = Browser::default()
        .visit(started["authorization_url"].as_str().unwrap(), callback)
        .await
        .stopped();
    let target = path_and_query(&cb);
    let on_b = get(b_public, &target).await;
    assert_eq!(on_b.status, 303, "{}", String::from_utf8_lossy(&on_b.body));
    let on_a = get(w.public, &target).await;
    assert_eq!(on_a.status, 409, "the state was used on the other replica");
    assert_eq!(w.exchanges(), 0);
    assert_eq!(b.app.as_ref().unwrap().connect.exchanges(), 1);
    assert_eq!(w.authz.token_calls("authorization_code").await, 1);
    assert_eq!(
        w.me("authz", "fleet-1").await.status,
        200,
        "replica A serves it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_hosting_the_redirect_uri_relays_the_callback_through_the_admin_api() {
    const APP_CALLBACK: &str = "http://app.test/oauth/callback";
    let Some(authz) = AuthzServer::start(
        serde_json::json!([{
            "client_id": "grantd-basic", "client_secret": BASIC_SECRET, "redirect_uris": [APP_CALLBACK],
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        }]),
        3600,
    ) else {
        return;
    };
    let g = grantd(&format!(
        "connect:\n  redirect_uri: {APP_CALLBACK}\n\
         integrations:\n  authz:\n    client_id: grantd-basic\n    client_secret: \"{BASIC_SECRET}\"\n"
    ))
    .rule_file("authz.yaml", &rule_file("authz", authz.addr, "basic"))
    .start();
    assert!(
        g.app.as_ref().unwrap().connect_addr.is_none(),
        "no public listener"
    );
    let got = admin(
        g.admin,
        "GET",
        "/v1/connect/authz?connection_id=relay-1",
        None,
    )
    .await;
    let started = got.json();
    assert!(started.get("link").is_none());
    let at_app = Browser::default()
        .visit(started["authorization_url"].as_str().unwrap(), app_test)
        .await
        .stopped();
    assert_eq!(at_app.path(), "/oauth/callback");
    let relay = format!("/v1/connect/callback?{}", at_app.query().unwrap());
    let got = admin(g.admin, "POST", &relay, None).await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.json()["status"], "connected");
    assert_eq!(got.json()["connection_id"], "relay-1");
    let again = admin(g.admin, "POST", &relay, None).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.json()["error"], "state_used");
    assert_eq!(authz.token_calls("authorization_code").await, 1);
    let me = send(
        Request::get(format!("http://{}/authz/me", g.addr))
            .header("grantd-connection", "relay-1")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(me.status, 200);
}
