//! The connect tests' world: the authorization server (oidc-provider), a callback receiver
//! and grantd wired to both, plus the URL helpers the tests share.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::Full;

use crate::authz::AuthzServer;
use crate::common::*;
use crate::receiver::{callbacks_config, Receiver};

/// Needs form-urlencoding in HTTP Basic: `&`, `=`, `+`, space and `%`.
pub(crate) const BASIC_SECRET: &str = "s3cr&t=+ x%";
pub(crate) const POST_SECRET: &str = "p0st&s3cr=t+%20";
pub(crate) const RETURN_TO: &str = "http://app.test/settings/integrations";

pub(crate) struct World {
    pub(crate) authz: AuthzServer,
    pub(crate) g: Grantd,
    pub(crate) public: SocketAddr,
    pub(crate) receiver: Arc<Receiver>,
}

pub(crate) fn rule_file(name: &str, authz: SocketAddr, client_auth: &str) -> String {
    format!(
        r#"integration: {name}
display_name: Example Cloud
scope_descriptions:
  email: See your email address
  openid: {{ en: Know who you are, fr: Savoir qui vous êtes }}
base_url: http://{authz}
auth:
  authorize_url: http://{authz}/auth
  token_url: http://{authz}/token
  revocation_url: http://{authz}/token/revocation
  client_auth: {client_auth}
  required_scopes: [openid]
  authorize_params: {{ prompt: consent }}
rules:
  - name: token-invalid
    match: {{ status: [401] }}
    expr: |
      {{ "status": 401, "action": "refresh", "error": "invalid_token" }}
"#
    )
}

pub(crate) async fn world(access_ttl: u64, connect_extra: &str, extra: &str) -> Option<World> {
    world_on(access_ttl, connect_extra, extra, None).await
}

/// The authorization server, a callback receiver and one grantd (on `store`, if given).
pub(crate) async fn world_on(
    access_ttl: u64,
    connect_extra: &str,
    extra: &str,
    store: Option<&str>,
) -> Option<World> {
    let port = unused_port();
    let redirect = format!("http://127.0.0.1:{port}/oauth/callback");
    let client = |id: &str, secret: &str, method: &str| {
        serde_json::json!({
            "client_id": id, "client_secret": secret, "redirect_uris": [redirect],
            "token_endpoint_auth_method": method,
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        })
    };
    let authz = AuthzServer::start(
        serde_json::json!([
            client("grantd-basic", BASIC_SECRET, "client_secret_basic"),
            client("grantd-post", POST_SECRET, "client_secret_post"),
        ]),
        access_ttl,
    )?;
    let (receiver, hooks) = Receiver::start(0).await;
    let extra = format!("{connect_extra}\u{0}{}{extra}", callbacks_config(hooks));
    let g = replica(&authz, port, port, &extra, store);
    let public = g.app.as_ref().unwrap().connect_addr.unwrap();
    Some(World {
        authz,
        g,
        public,
        receiver,
    })
}

/// One grantd whose public listener is on `listen_port` and whose public URL (what the
/// provider redirects to, e.g. a load balancer in front of several replicas) is on
/// `public_port`. `extra` is `connect lines \0 other config`.
pub(crate) fn replica(
    authz: &AuthzServer,
    listen_port: u16,
    public_port: u16,
    extra: &str,
    store: Option<&str>,
) -> Grantd {
    let (connect_extra, extra) = extra.split_once('\u{0}').unwrap_or(("", extra));
    let config = format!(
        "connect:\n  listen: 127.0.0.1:{listen_port}\n  public_url: http://127.0.0.1:{public_port}\n  return_to: [\"{RETURN_TO}\"]\n{connect_extra}\
         integrations:\n  authz:\n    client_id: grantd-basic\n    client_secret: \"{BASIC_SECRET}\"\n\
         \x20 authzpost:\n    client_id: grantd-post\n    client_secret: \"{POST_SECRET}\"\n{extra}",
    );
    let mut b = grantd(&config)
        .rule_file("authz.yaml", &rule_file("authz", authz.addr, "basic"))
        .rule_file(
            "authzpost.yaml",
            &rule_file("authzpost", authz.addr, "body"),
        );
    if let Some(store) = store {
        b = b.store(store);
    }
    let g = b.start();
    assert_eq!(
        g.app.as_ref().unwrap().connect_addr.unwrap().port(),
        listen_port
    );
    g
}

impl World {
    pub(crate) async fn connect_url(&self, integration: &str, query: &str) -> serde_json::Value {
        let got = admin(
            self.g.admin,
            "GET",
            &format!("/v1/connect/{integration}?{query}"),
            None,
        )
        .await;
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
        got.json()
    }

    pub(crate) async fn connection(&self, id: &str) -> serde_json::Value {
        admin(self.g.admin, "GET", &format!("/v1/connections/{id}"), None)
            .await
            .json()
    }

    /// `GET /{integration}/me` (the provider's userinfo) through the proxy.
    pub(crate) async fn me(&self, integration: &str, id: &str) -> Got {
        send(
            Request::get(format!("http://{}/{integration}/me", self.g.addr))
                .header("grantd-connection", id)
                .body(Full::default())
                .unwrap(),
        )
        .await
    }

    pub(crate) fn exchanges(&self) -> u64 {
        self.g.app.as_ref().unwrap().connect.exchanges()
    }

    pub(crate) async fn wait_status(&self, id: &str, status: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let c = self.connection(id).await;
            if c["status"] == status {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited 20 s for {status}: {c}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub(crate) fn app_test(u: &url::Url) -> bool {
    u.host_str() == Some("app.test")
}

pub(crate) fn callback(u: &url::Url) -> bool {
    u.path() == "/oauth/callback"
}

pub(crate) fn query(u: &url::Url, key: &str) -> Option<String> {
    u.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

pub(crate) fn path_and_query(u: &url::Url) -> String {
    format!("{}?{}", u.path(), u.query().unwrap_or(""))
}
