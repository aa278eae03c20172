//! Every credential kind end to end over real sockets: API keys and Basic logins injected
//! exactly as templated, a rejected one paused with one `authentication_error` and brought
//! back by a `PUT` with one `reactivated`; bad credentials refused without echoing them.
//! (Minted kinds: `tests/minted.rs`.)

mod common;
mod receiver;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use receiver::*;

/// An API that accepts one credential, in the header `expect.0` with the value `expect.1`, and
/// records every request's headers and query as received.
#[derive(Default)]
struct Api {
    expect: Mutex<(String, String)>,
    seen: Mutex<Vec<(http::HeaderMap, Option<String>)>>,
    calls: AtomicUsize,
}

impl Api {
    async fn start(header: &str, value: &str) -> (Arc<Api>, SocketAddr) {
        let api = Arc::new(Api::default());
        *api.expect.lock().unwrap() = (header.to_string(), value.to_string());
        let me = api.clone();
        let addr = upstream(handler(move |req: Request<Incoming>| {
            let me = me.clone();
            async move { me.handle(req) }
        }))
        .await;
        (api, addr)
    }

    fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (header, value) = self.expect.lock().unwrap().clone();
        let query = req.uri().query().map(str::to_string);
        let ok = match header.strip_prefix('?') {
            Some(param) => query
                .as_deref()
                .is_some_and(|q| q.split('&').any(|p| p == format!("{param}={value}"))),
            None => req.headers().get(&header).map(|v| v.as_bytes()) == Some(value.as_bytes()),
        };
        self.seen
            .lock()
            .unwrap()
            .push((req.headers().clone(), query));
        match ok {
            true => json_response(200, r#"{"ok":true}"#),
            false => json_response(401, r#"{"message":"bad credentials"}"#),
        }
    }

    fn last(&self) -> (http::HeaderMap, Option<String>) {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

fn rules(api: SocketAddr, credentials: &str) -> String {
    format!("integration: lab\nbase_url: http://{api}\ncredentials:\n{credentials}rules: []\n")
}

async fn put(g: &Grantd, id: &str, credentials: serde_json::Value) -> Got {
    let body = serde_json::json!({"integration": "lab", "credentials": credentials});
    admin(g.admin, "PUT", &format!("/v1/connections/{id}"), Some(body)).await
}

async fn call(g: &Grantd, id: &str) -> Got {
    let req = Request::get(format!("http://{}/lab/v1/things?page=2", g.addr))
        .header("grantd-connection", id)
        .header("authorization", "Bearer the-apps-own-token")
        .body(Full::default())
        .unwrap();
    send(req).await
}

#[tokio::test]
async fn an_api_key_goes_out_exactly_as_templated_and_a_rejected_one_pauses_until_replaced() {
    let (recv, raddr) = Receiver::start(0).await;
    let (api, addr) = Api::start("x-api-key", "key live/1+2").await;
    let g = grantd(&callbacks_config(raddr))
        .rule_file(
            "lab.yaml",
            &rules(
                addr,
                "  api_key: { header: X-Api-Key, format: \"{api_key}\" }\n",
            ),
        )
        .start();
    let stored = put(
        &g,
        "acct_1",
        serde_json::json!({"kind": "api_key", "api_key": "key live/1+2"}),
    )
    .await;
    assert_eq!(stored.status, 200, "{:?}", stored.json());
    let view = stored.json();
    assert_eq!(view["kind"], "api_key");
    assert!(
        view["fingerprint"].as_str().unwrap().starts_with("fp-"),
        "{view}"
    );
    assert!(!String::from_utf8_lossy(&stored.body).contains("live/1"));

    assert_eq!(call(&g, "acct_1").await.status, 200);
    let (headers, query) = api.last();
    assert_eq!(
        headers["x-api-key"].as_bytes(),
        b"key live/1+2",
        "byte for byte"
    );
    assert!(
        headers.get("authorization").is_none(),
        "the app's own token never goes out"
    );
    assert_eq!(query.as_deref(), Some("page=2"));

    // The provider stops taking the key: one 401, one pause, one event.
    api.expect.lock().unwrap().1 = "key-2".into();
    let got = call(&g, "acct_1").await;
    assert_eq!(got.status, 401);
    let errors = recv.wait_for("authentication_error", 1).await;
    assert_eq!(errors[0]["data"]["connection_id"], "acct_1");
    let before = api.calls.load(Ordering::SeqCst);
    for _ in 0..5 {
        let paused = call(&g, "acct_1").await;
        assert_eq!(
            (paused.status, paused.json()["error"].as_str()),
            (401, Some("needs_reauth"))
        );
    }
    assert_eq!(
        api.calls.load(Ordering::SeqCst),
        before,
        "a paused key never reaches the provider"
    );
    assert_eq!(recv.of_type("authentication_error").len(), 1);

    // A new key brings it back, with one `reactivated`.
    let replaced = put(
        &g,
        "acct_1",
        serde_json::json!({"kind": "api_key", "api_key": "key-2"}),
    )
    .await;
    assert_eq!(replaced.status, 200);
    assert_ne!(
        replaced.json()["fingerprint"],
        view["fingerprint"],
        "another key, another fingerprint"
    );
    recv.wait_for("reactivated", 1).await;
    assert_eq!(call(&g, "acct_1").await.status, 200);
    assert_eq!(recv.of_type("reactivated").len(), 1);
    let all = format!("{:?}", recv.accepted.lock().unwrap());
    assert!(
        !all.contains("key live") && !all.contains("key-2"),
        "no key in a callback"
    );
}

#[tokio::test]
async fn an_api_key_can_go_in_the_query_and_basic_logins_follow_their_template() {
    let (api, addr) = Api::start("?api_key", "k+1").await;
    let g = grantd("")
        .rule_file("lab.yaml", &rules(addr, "  api_key: { query: api_key }\n"))
        .start();
    assert_eq!(
        put(
            &g,
            "q",
            serde_json::json!({"kind": "api_key", "api_key": "k 1"})
        )
        .await
        .status,
        200
    );
    assert_eq!(call(&g, "q").await.status, 200);
    assert_eq!(api.last().1.as_deref(), Some("page=2&api_key=k+1"));

    // Zendesk API tokens: `{email}/token:{api_token}` in HTTP Basic.
    let expected = format!("Basic {}", base64_encode(b"alice@example.test/token:tok 9"));
    let (api, addr) = Api::start("authorization", &expected).await;
    let g = grantd("")
        .rule_file(
            "lab.yaml",
            &rules(addr, "  basic: { username: \"{username}/token\" }\n"),
        )
        .start();
    let creds =
        serde_json::json!({"kind": "basic", "username": "alice@example.test", "password": "tok 9"});
    assert_eq!(put(&g, "b", creds).await.status, 200);
    assert_eq!(call(&g, "b").await.status, 200);
    assert_eq!(
        api.last().0["authorization"].as_bytes(),
        expected.as_bytes()
    );
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn bad_credentials_are_refused_by_field_never_echoed_and_never_stored() {
    let (_api, addr) = Api::start("x-api-key", "k").await;
    let credentials = "  api_key: { header: X-Api-Key, format: \"{api_key}\" }\n  jwt_bearer: { algorithm: RS256 }\n";
    let g = grantd("")
        .rule_file(
            "lab.yaml",
            &format!("integration: lab\nbase_url: http://{addr}\nauth:\n  token_url: http://{addr}/token\ncredentials:\n{credentials}rules: []\n"),
        )
        .start();
    let ec = std::fs::read_to_string(repo_path("tests/keys/ec.pem")).unwrap();
    for (creds, field) in [
        (
            serde_json::json!({"kind": "api_key", "api_key": "sekrit\r\nX-Evil: 1"}),
            "api_key",
        ),
        (
            serde_json::json!({"kind": "api_key", "api_key": "sekrit\u{7f}"}),
            "api_key",
        ),
        (serde_json::json!({"kind": "api_key"}), "api_key"),
        (
            serde_json::json!({"kind": "api_key", "api_key": "sekrit", "refresh_token": "sekrit-rt"}),
            "refresh_token",
        ),
        (
            serde_json::json!({"kind": "basic", "username": "u", "password": "sekrit"}),
            "kind",
        ),
        (
            serde_json::json!({"kind": "jwt_bearer", "private_key": "-----BEGIN PRIVATE KEY-----\nsekritAAAA\n-----END PRIVATE KEY-----\n", "issuer": "i"}),
            "private_key",
        ),
        (
            serde_json::json!({"kind": "jwt_bearer", "private_key": ec, "issuer": "i"}),
            "private_key",
        ),
        (
            serde_json::json!({"kind": "telepathy", "api_key": "sekrit"}),
            "kind",
        ),
    ] {
        let got = put(&g, "bad", creds.clone()).await;
        let text = String::from_utf8_lossy(&got.body).to_string();
        assert_eq!(got.status, 400, "{creds}: {text}");
        assert!(text.contains(field), "names `{field}`: {text}");
        assert!(
            !text.contains("sekrit") && !text.contains("MIG"),
            "never echoed: {text}"
        );
        assert_eq!(
            admin(g.admin, "GET", "/v1/connections/bad", None)
                .await
                .status,
            404
        );
    }
}

/// Mailchimp: the key goes as the password of HTTP Basic, and its data centre suffix becomes
/// the `dc` metadata the (templated) base URL needs.
#[tokio::test]
async fn an_api_key_in_basic_auth_gives_its_data_centre_to_the_metadata() {
    let expected = format!("Basic {}", base64_encode(b"anystring:0123abcd-us6"));
    let (api, addr) = Api::start("authorization", &expected).await;
    let g = grantd("")
        .rule_file(
            "lab.yaml",
            &rules(
                addr,
                "  api_key: { basic: \"anystring:{api_key}\", suffix_metadata: dc }\n",
            ),
        )
        .start();
    let stored = put(
        &g,
        "m",
        serde_json::json!({"kind": "api_key", "api_key": "0123abcd-us6"}),
    )
    .await;
    assert_eq!(stored.status, 200);
    assert_eq!(stored.json()["metadata"]["dc"], "us6");
    assert_eq!(call(&g, "m").await.status, 200);
    assert_eq!(
        api.last().0["authorization"].as_bytes(),
        expected.as_bytes()
    );
}
