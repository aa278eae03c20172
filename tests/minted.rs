//! Tokens grantd mints itself: the client-credentials grant against panva/oidc-provider (an
//! independent, certified authorization server), and the JWT bearer grant (RFC 7523) against
//! a token endpoint here that verifies each assertion with ring, not with the crate grantd
//! signs with. Also revocation on delete, checked at the server.

mod authz;
mod common;
mod receiver;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use receiver::*;

async fn call(g: &Grantd, integration: &str, id: &str) -> Got {
    call_at(g.addr, integration, id).await
}

async fn call_at(addr: SocketAddr, integration: &str, id: &str) -> Got {
    let req = Request::get(format!("http://{addr}/{integration}/whoami"))
        .header("grantd-connection", id)
        .body(Full::default())
        .unwrap();
    send(req).await
}

async fn put(g: &Grantd, integration: &str, id: &str, credentials: serde_json::Value) -> Got {
    let body = serde_json::json!({"integration": integration, "credentials": credentials});
    admin(g.admin, "PUT", &format!("/v1/connections/{id}"), Some(body)).await
}

/// The bearer token the echo upstream received.
fn token_seen(got: &Got) -> String {
    let auth = got.json()["headers"]["authorization"]
        .as_str()
        .unwrap()
        .to_string();
    auth.strip_prefix("Bearer ")
        .expect("a bearer token")
        .to_string()
}

#[tokio::test]
async fn client_credentials_are_minted_once_under_load_renewed_early_and_revoked_on_delete() {
    let clients = serde_json::json!([
        {"client_id": "svc", "client_secret": "svc-secret", "grant_types": ["client_credentials"],
         "redirect_uris": [], "response_types": [], "scope": "api.read",
         "token_endpoint_auth_method": "client_secret_basic"}
    ]);
    // Tokens live 10 s and are renewed when 2 s remain: the 1,000 requests below finish long
    // before (with 4 s tokens a loaded CI machine saw the renewal land among them).
    let Some(server) = authz::AuthzServer::start(clients, 10) else {
        return; // skipped loudly by AuthzServer::start (fails under CI=true)
    };
    let (recv, raddr) = Receiver::start(0).await;
    let api = upstream(echo()).await;
    let rules = format!(
        "integration: svc\nbase_url: http://{api}\nauth:\n  token_url: http://{a}/token\n  revocation_url: http://{a}/token/revocation\n  client_auth: basic\ncredentials:\n  oauth2_client_credentials: {{ params: {{ scope: api.read }} }}\nrules: []\n",
        a = server.addr
    );
    let config = format!(
        "refresh: {{ window_min: 2s, window_max: 2s, expiry_margin: 500ms, scan_interval: 200ms }}\n{}",
        callbacks_config(raddr)
    );
    let g = grantd(&config).rule_file("svc.yaml", &rules).start();
    let creds = serde_json::json!({"kind": "oauth2_client_credentials", "client_id": "svc", "client_secret": "svc-secret"});
    assert_eq!(put(&g, "svc", "tenant_a", creds).await.status, 200);

    let calls: Vec<_> = (0..1000)
        .map(|_| {
            let addr = g.addr;
            tokio::spawn(async move {
                let got = call_at(addr, "svc", "tenant_a").await;
                assert_eq!(got.status, 200, "{:?}", String::from_utf8_lossy(&got.body));
                token_seen(&got)
            })
        })
        .collect();
    let mut tokens = std::collections::HashSet::new();
    for c in calls {
        tokens.insert(c.await.unwrap());
    }
    assert_eq!(tokens.len(), 1, "one minted token for 1,000 requests");
    assert_eq!(server.token_calls("client_credentials").await, 1);
    let first = tokens.into_iter().next().unwrap();

    // Renewed by the proactive loop before the 10 s lifetime ends, once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.token_calls("client_credentials").await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the proactive loop renewed the token within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(server.token_calls("client_credentials").await, 2);
    let second = token_seen(&call(&g, "svc", "tenant_a").await);
    assert_ne!(second, first);
    assert!(server.active(&second).await);

    // Deleting revokes the token at the server first.
    let deleted = admin(g.admin, "DELETE", "/v1/connections/tenant_a", None).await;
    assert_eq!(
        (deleted.status, deleted.json()["revocation"].as_str()),
        (200, Some("revoked"))
    );
    assert!(
        !server.active(&second).await,
        "the server no longer honours the deleted connection's token"
    );

    // A wrong client secret is the operator's problem: config_error, one event.
    let bad = serde_json::json!({"kind": "oauth2_client_credentials", "client_id": "svc", "client_secret": "wrong"});
    assert_eq!(put(&g, "svc", "tenant_b", bad).await.status, 200);
    for _ in 0..5 {
        let got = call(&g, "svc", "tenant_b").await;
        assert_eq!(
            (got.status, got.json()["error"].as_str()),
            (503, Some("config_error"))
        );
    }
    let events = recv.wait_for("config_error", 1).await;
    assert_eq!(events[0]["data"]["integration"], "svc");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(recv.of_type("config_error").len(), 1);
    assert_eq!(
        recv.of_type("authentication_error").len(),
        0,
        "no user to send back"
    );
    let all = format!("{:?}", recv.accepted.lock().unwrap());
    assert!(!all.contains("svc-secret") && !all.contains(&second));
}

/// A token endpoint that takes only JWT bearer grants and verifies them itself.
struct JwtEndpoint {
    issuer: String,
    subject: String,
    scope: String,
    /// `None`: verify with RSA; `Some`: the raw P-256 public point.
    ec: bool,
    /// Set to make the endpoint refuse every assertion as Google does.
    refuse: Mutex<bool>,
    claims: Mutex<Vec<serde_json::Value>>,
    token_url: Mutex<String>,
}

impl JwtEndpoint {
    async fn start(ec: bool) -> (Arc<JwtEndpoint>, SocketAddr) {
        let me = Arc::new(JwtEndpoint {
            issuer: "svc@project.iam.example".into(),
            subject: "alice@corp.example".into(),
            scope: "https://www.googleapis.com/auth/drive.readonly".into(),
            ec,
            refuse: Mutex::new(false),
            claims: Mutex::new(Vec::new()),
            token_url: Mutex::new(String::new()),
        });
        let handle = me.clone();
        let addr = upstream(handler(move |req: Request<Incoming>| {
            let me = handle.clone();
            async move { me.handle(req).await }
        }))
        .await;
        *me.token_url.lock().unwrap() = format!("http://{addr}/token");
        (me, addr)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() != "/token" {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return json_response(
                200,
                &serde_json::json!({"headers": {"authorization": auth}}).to_string(),
            );
        }
        assert!(
            req.headers().get("authorization").is_none(),
            "no client authentication with an assertion"
        );
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let form: std::collections::HashMap<String, String> =
            form_urlencoded::parse(&body).into_owned().collect();
        assert_eq!(
            form["grant_type"],
            "urn:ietf:params:oauth:grant-type:jwt-bearer"
        );
        assert!(!form.contains_key("client_secret"));
        let claims = self.verify(&form["assertion"]);
        self.claims.lock().unwrap().push(claims);
        if *self.refuse.lock().unwrap() {
            return json_response(
                400,
                r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
            );
        }
        let n = self.claims.lock().unwrap().len();
        json_response(
            200,
            &format!(r#"{{"access_token":"at-jwt-{n}","expires_in":3600,"token_type":"Bearer"}}"#),
        )
    }

    /// Checks the signature with ring against the test key's public half, then every claim.
    fn verify(&self, jwt: &str) -> serde_json::Value {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "a compact JWS");
        let header: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        let signature = b64.decode(parts[2]).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        let (alg, key): (&dyn ring::signature::VerificationAlgorithm, Vec<u8>) = if self.ec {
            (
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                std::fs::read(repo_path("tests/keys/ec.pub.raw")).unwrap(),
            )
        } else {
            (
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                std::fs::read(repo_path("tests/keys/rsa.pub.der")).unwrap(),
            )
        };
        ring::signature::UnparsedPublicKey::new(alg, key)
            .verify(signed.as_bytes(), &signature)
            .expect("the assertion's signature verifies with the public key");
        assert_eq!(header["alg"], if self.ec { "ES256" } else { "RS256" });
        assert_eq!(claims["iss"], self.issuer.as_str());
        assert_eq!(claims["sub"], self.subject.as_str());
        assert_eq!(claims["aud"], self.token_url.lock().unwrap().as_str());
        assert_eq!(claims["scope"], self.scope.as_str());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let (iat, exp) = (
            claims["iat"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        assert!((now - 60..=now + 5).contains(&iat), "iat is now");
        assert!(exp > now && exp - iat <= 3600, "short-lived: {iat}..{exp}");
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
        claims
    }
}

async fn jwt_case(ec: bool) {
    let (recv, raddr) = Receiver::start(0).await;
    let (endpoint, addr) = JwtEndpoint::start(ec).await;
    let alg = if ec { "ES256" } else { "RS256" };
    let rules = format!(
        "integration: gsa\nbase_url: http://{addr}/api\nauth:\n  token_url: http://{addr}/token\ncredentials:\n  jwt_bearer: {{ algorithm: {alg}, scope: \"{}\" }}\nrules: []\n",
        endpoint.scope
    );
    let g = grantd(&callbacks_config(raddr))
        .rule_file("gsa.yaml", &rules)
        .start();
    let key = std::fs::read_to_string(repo_path(if ec {
        "tests/keys/ec.pem"
    } else {
        "tests/keys/rsa.pem"
    }))
    .unwrap();
    let creds = serde_json::json!({"kind": "jwt_bearer", "private_key": key, "key_id": "k1",
        "issuer": endpoint.issuer, "subject": endpoint.subject});
    let stored = put(&g, "gsa", "sa_1", creds.clone()).await;
    assert_eq!(
        stored.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&stored.body)
    );
    assert!(!String::from_utf8_lossy(&stored.body).contains("PRIVATE KEY"));

    let got = call(&g, "gsa", "sa_1").await;
    assert_eq!(got.status, 200);
    assert_eq!(token_seen(&got), "at-jwt-1");
    assert_eq!(endpoint.claims.lock().unwrap().len(), 1);

    // A refused assertion (Google says invalid_grant) has no user to send back: config_error.
    *endpoint.refuse.lock().unwrap() = true;
    assert_eq!(put(&g, "gsa", "sa_2", creds).await.status, 200);
    let refused = call(&g, "gsa", "sa_2").await;
    assert_eq!(
        (refused.status, refused.json()["error"].as_str()),
        (503, Some("config_error"))
    );
    recv.wait_for("config_error", 1).await;
    assert_eq!(recv.of_type("authentication_error").len(), 0);
    let view = admin(g.admin, "GET", "/v1/connections/sa_2", None)
        .await
        .json();
    assert_eq!(view["status"], "config_error");
    assert_eq!(view["kind"], "jwt_bearer");
}

#[tokio::test]
async fn jwt_bearer_assertions_verify_independently_with_rs256() {
    jwt_case(false).await;
}

#[tokio::test]
async fn jwt_bearer_assertions_verify_independently_with_es256() {
    jwt_case(true).await;
}
