//! Callbacks end to end: a receiver on 127.0.0.1 that checks every signature with the official
//! Standard Webhooks library (not grantd's code), against real transitions.

mod common;
mod oauth;
mod receiver;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::Full;
use oauth::{Mode, Provider};
use receiver::*;

fn start(p: &Provider, receiver: SocketAddr, extra: &str) -> Grantd {
    grantd(&oauth::config(
        p,
        &format!("{}{extra}", callbacks_config(receiver)),
    ))
    .rule_file("lab.yaml", oauth::RULES)
    .start()
}

async fn put(g: &Grantd, id: &str, refresh: &str) {
    let body = serde_json::json!({"integration": "lab", "credentials": {"access_token": "at-stale", "refresh_token": refresh, "expires_in": 0}});
    assert_eq!(
        admin(g.admin, "PUT", &format!("/v1/connections/{id}"), Some(body))
            .await
            .status,
        200
    );
}

async fn call(addr: SocketAddr, id: &str) -> u16 {
    let req = Request::get(format!("http://{addr}/lab/whoami"))
        .header("grantd-connection", id)
        .body(Full::default())
        .unwrap();
    send(req).await.status
}

#[tokio::test]
async fn one_authentication_error_under_load_one_reactivated_and_nothing_for_503s() {
    let (recv, raddr) = Receiver::start(0).await;
    let p = Provider::start().await;
    let g = start(&p, raddr, "");
    put(&g, "acct_1", "rt-never-issued").await;
    let tasks: Vec<_> = (0..200)
        .map(|_| tokio::spawn(call(g.addr, "acct_1")))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let errors = recv.wait_for("authentication_error", 1).await;
    assert_eq!(
        errors.len(),
        1,
        "exactly one event for one transition: {errors:?}"
    );
    let data = &errors[0]["data"];
    assert_eq!(data["connection_id"], "acct_1");
    assert_eq!(data["integration"], "lab");
    assert_eq!(data["previous_status"], "active");
    assert_eq!(data["cause"], "refresh_failed");
    assert_eq!(data["error"]["code"], "invalid_grant");
    assert_eq!(data["error"]["status"], 400);
    assert!(data["first_failed_at"].as_str().unwrap().ends_with('Z'));

    p.grant("rt-new");
    put(&g, "acct_1", "rt-new").await;
    let back = recv.wait_for("reactivated", 1).await;
    assert_eq!(back.len(), 1);
    assert_eq!(
        (
            back[0]["data"]["via"].as_str(),
            back[0]["data"]["previous_status"].as_str()
        ),
        (Some("credentials_updated"), Some("needs_reauth"))
    );
    assert!(back[0]["data"]["down_since"].is_string());

    // Transient trouble is not a transition: no event.
    p.grant("rt-2");
    put(&g, "acct_2", "rt-2").await;
    p.set_mode(Mode::Unavailable);
    for _ in 0..3 {
        assert_eq!(call(g.addr, "acct_2").await, 503);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        recv.accepted.lock().unwrap().len(),
        2,
        "only the two transitions above"
    );
    assert_eq!(recv.bad_signatures.load(Ordering::SeqCst), 0);
    // No token or secret in any payload.
    let all = format!("{:?}", recv.accepted.lock().unwrap());
    for secret in [
        "rt-never-issued",
        "rt-new",
        "at-stale",
        oauth::CLIENT_SECRET,
    ] {
        assert!(!all.contains(secret), "{secret} in a callback");
    }
}

#[tokio::test]
async fn a_receiver_that_fails_five_times_gets_the_event_once_with_one_id() {
    let (recv, raddr) = Receiver::start(5).await;
    let p = Provider::start().await;
    let g = start(&p, raddr, "");
    put(&g, "acct_1", "rt-never-issued").await;
    assert_eq!(call(g.addr, "acct_1").await, 401);
    let got = recv.wait_for("authentication_error", 1).await;
    assert_eq!(got.len(), 1);
    let attempts = recv.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 6, "five failures, then success");
    assert!(
        attempts
            .iter()
            .all(|id| id == &attempts[0] && id.starts_with("msg_")),
        "one webhook-id for every attempt: {attempts:?}"
    );
    let events = admin(g.admin, "GET", "/v1/events?status=delivered", None)
        .await
        .json();
    assert_eq!(events["events"][0]["attempts"], 6);
}

#[tokio::test]
async fn an_event_for_a_receiver_that_is_down_stays_pending_and_visible() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = Provider::start().await;
    let g = start(&p, closed, "");
    put(&g, "acct_1", "rt-never-issued").await;
    assert_eq!(call(g.addr, "acct_1").await, 401);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pending = admin(g.admin, "GET", "/v1/events?status=pending", None)
        .await
        .json();
    let list = pending["events"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{pending}");
    assert_eq!(list[0]["type"], "authentication_error");
    assert_eq!(list[0]["connection_id"], "acct_1");
    assert!(
        list[0]["attempts"].as_i64().unwrap() >= 2,
        "retrying: {pending}"
    );
    assert!(
        list[0]["last_error"].as_str().unwrap().contains("connect"),
        "{pending}"
    );
    let id = list[0]["id"].as_str().unwrap();
    assert_eq!(
        admin(g.admin, "POST", &format!("/v1/events/{id}/retry"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        admin(g.admin, "POST", "/v1/events/msg_nope/retry", None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn a_config_error_episode_is_one_event_and_recovery_is_one_more() {
    let (recv, raddr) = Receiver::start(0).await;
    let p = Provider::start().await;
    p.set_mode(Mode::InvalidClient);
    let g = start(&p, raddr, "");
    for id in ["acct_1", "acct_2"] {
        p.grant(&format!("rt-{id}"));
        put(&g, id, &format!("rt-{id}")).await;
        assert_eq!(call(g.addr, id).await, 503);
    }
    let errors = recv.wait_for("config_error", 1).await;
    assert_eq!(errors.len(), 1, "one per integration per episode");
    assert_eq!(errors[0]["data"]["integration"], "lab");
    assert_eq!(
        errors[0]["data"]["affected_connections"], 1,
        "counted when the episode began"
    );
    assert!(
        recv.of_type("authentication_error").is_empty(),
        "a config problem is not the user's"
    );
    p.set_mode(Mode::Normal);
    assert_eq!(
        admin(g.admin, "POST", "/v1/connections/acct_1/refresh", None)
            .await
            .json()["outcome"],
        "ok"
    );
    recv.wait_for("reactivated", 1).await;
    assert!(
        recv.of_type("config_recovered").is_empty(),
        "acct_2 is still failing"
    );
    assert_eq!(
        admin(g.admin, "POST", "/v1/connections/acct_2/refresh", None)
            .await
            .json()["outcome"],
        "ok"
    );
    let recovered = recv.wait_for("config_recovered", 1).await;
    assert_eq!(recovered.len(), 1);
    assert_eq!(recv.of_type("reactivated").len(), 2);
    let via: Vec<_> = recv
        .of_type("reactivated")
        .iter()
        .map(|e| e["data"]["via"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(via, vec!["refresh_succeeded", "refresh_succeeded"]);
}

/// A reconnect link is a bearer credential: it is minted when the event is sent (expiring
/// `link_ttl` after the event, whichever attempt carries it) and never written to the store.
#[tokio::test]
async fn reconnect_links_are_minted_at_delivery_and_never_stored() {
    use sqlx::Connection as _;
    let (recv, raddr) = Receiver::start(2).await;
    let p = Provider::start().await;
    let public_url = "http://connect.test";
    let g = start(
        &p,
        raddr,
        &format!(
            "connect: {{ listen: \"127.0.0.1:0\", public_url: \"{public_url}\", link_ttl: 1h }}\n"
        ),
    );
    put(&g, "acct_1", "rt-never-issued").await;
    assert_eq!(call(g.addr, "acct_1").await, 401);
    let got = recv.wait_for("authentication_error", 1).await;
    assert_eq!(
        recv.attempts.lock().unwrap().len(),
        3,
        "two failures, then success"
    );
    let url = got[0]["data"]["reconnect_url"].as_str().unwrap();
    let token = url
        .strip_prefix(&format!("{public_url}/connect/"))
        .unwrap_or_else(|| panic!("a connect link: {url}"));

    // It works: the public listener shows the confirmation page for it.
    let public = g.app.as_ref().unwrap().connect_addr.unwrap();
    let page = get(public, &format!("/connect/{token}")).await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("<form method=\"post\""));
    // It expires an hour after the event, not after the (third) attempt that carried it.
    let config = grantd::config::ConnectConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        public_url: Some(public_url.into()),
        link_ttl: Duration::from_secs(3600),
        ..Default::default()
    };
    let keys = grantd::connections::crypto::Keyring::new(TEST_KEY, &[]).unwrap();
    let links = grantd::connect::link::Links::new(std::sync::Arc::new(keys), &config).unwrap();
    let claims = links.open(token, grantd::time::now_ms()).unwrap();
    let at = grantd::time::parse_rfc3339(got[0]["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(claims.expires_at, at + 3_600_000);
    assert_eq!(claims.request.connection_id.as_deref(), Some("acct_1"));

    // Neither the events table nor the admin API holds a link.
    let db = g.dir.path().join("grantd.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let payloads: Vec<String> = sqlx::query_scalar("SELECT payload FROM events")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(payloads.len(), 1);
    assert!(
        payloads[0].contains("acct_1") && !payloads[0].contains(public_url),
        "{}",
        payloads[0]
    );
    let events = admin(g.admin, "GET", "/v1/events", None).await;
    assert_eq!(events.status, 200);
    let text = String::from_utf8_lossy(&events.body);
    assert!(
        text.contains("authentication_error") && !text.contains(public_url),
        "{text}"
    );
    assert_eq!(recv.bad_signatures.load(Ordering::SeqCst), 0);
}

#[test]
fn bad_callback_config_is_refused_naming_the_endpoint() {
    for (endpoints, needle) in [
        ("[{ url: \"http://x/hook\", secrets: [nope] }]", "whsec_"),
        ("[{ url: \"ftp://x\", secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw] }]", "http"),
        ("[{ url: \"http://x/hook\", secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw], events: [oops] }]", "oops"),
    ] {
        let config = grantd::config::Config::parse(&format!("callbacks: {{ endpoints: {endpoints} }}\n"), &|_| None).unwrap();
        let e = grantd::callbacks::deliver::outbox(&config.callbacks).unwrap_err();
        assert!(e.contains("callbacks.endpoints[0]") && e.contains(needle), "{e}");
        assert!(!e.contains("MfKQ9r8"), "no secret in errors: {e}");
    }
}
