//! An independently written OAuth 2.0 authorization server (panva/oidc-provider under Node.js,
//! `tests/authz/server.mjs`) on 127.0.0.1, and a headless "browser" that follows redirects
//! with cookies. The first use runs `npm ci` (versions pinned by `package-lock.json`), so
//! `cargo test` stays the one test command. Without Node.js or the npm registry, tests using
//! it are skipped loudly, except under `CI=true`, where they fail.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::common::{repo_path, send, Got};

pub struct AuthzServer {
    pub addr: SocketAddr,
    child: Child,
}

impl Drop for AuthzServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AuthzServer {
    /// `clients`: oidc-provider client metadata; `access_ttl`: access-token lifetime (s).
    pub fn start(clients: serde_json::Value, access_ttl: u64) -> Option<AuthzServer> {
        let dir = repo_path("tests/authz");
        if let Err(why) = npm_ci(&dir, "oidc-provider") {
            skip(&why);
            return None;
        }
        let mut child = match Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .env("AUTHZ_CLIENTS", clients.to_string())
            .env("AUTHZ_ACCESS_TTL", access_ttl.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                skip(&format!("cannot run node: {e}"));
                return None;
            }
        };
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = tx.send(port.trim().parse::<u16>().expect("a port"));
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the authorization server starts within 30 s");
        Some(AuthzServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        })
    }

    /// The user revokes every grant of `account` at the server. Returns how many.
    pub async fn revoke(&self, account: &str) -> u64 {
        let got = send(
            Request::post(format!(
                "http://{}/test/revoke?account={account}",
                self.addr
            ))
            .body(Full::default())
            .unwrap(),
        )
        .await;
        got.json()["revoked"].as_u64().unwrap()
    }

    /// Whether the server still honours an access token (what introspection would say).
    pub async fn active(&self, token: &str) -> bool {
        let got = crate::common::get(self.addr, &format!("/test/active?token={token}")).await;
        got.json()["active"].as_bool().unwrap()
    }

    /// How many of `account`'s grants the server still holds.
    pub async fn live_grants(&self, account: &str) -> u64 {
        let got = crate::common::get(self.addr, &format!("/test/grants?account={account}")).await;
        got.json()["live"].as_u64().unwrap()
    }

    /// Token-endpoint calls the server has answered, for one grant type.
    pub async fn token_calls(&self, grant_type: &str) -> u64 {
        let got = crate::common::get(self.addr, "/test/stats").await;
        got.json()["token_calls"][grant_type].as_u64().unwrap_or(0)
    }
}

/// `npm ci` in `dir` once per test binary (tests run in parallel threads), unless its
/// `package` is already installed.
pub(crate) fn npm_ci(dir: &std::path::Path, package: &str) -> Result<(), String> {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONCE.lock().unwrap_or_else(|p| p.into_inner());
    if dir
        .join(format!("node_modules/{package}/package.json"))
        .exists()
    {
        return Ok(());
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run npm (Node.js is needed): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`npm ci` in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI must run the authorization-server tests: {why}");
    }
    eprintln!("\n*** SKIPPED connect-flow tests against oidc-provider: {why}\n");
}

/// A headless browser: follows redirects, keeps cookies per host:port. A clone is another tab
/// of the same browser (its own copy of the jar from then on).
#[derive(Default, Clone)]
pub struct Browser {
    cookies: HashMap<String, HashMap<String, String>>,
}

/// Where a visit ended: a page, or a redirect the caller asked to stop at.
pub enum Visit {
    Page { url: String, got: Got },
    StoppedAt(url::Url),
}

impl Visit {
    pub fn page(self) -> (String, Got) {
        match self {
            Visit::Page { url, got } => (url, got),
            Visit::StoppedAt(u) => panic!("expected a page, was sent to {u}"),
        }
    }

    pub fn stopped(self) -> url::Url {
        match self {
            Visit::StoppedAt(u) => u,
            Visit::Page { url, got } => panic!(
                "expected a redirect, got {} at {url}: {}",
                got.status,
                String::from_utf8_lossy(&got.body)
            ),
        }
    }
}

impl Browser {
    /// GETs `url` and follows redirects until a page, or until `stop(next)` says so.
    pub async fn visit(&mut self, url: &str, stop: impl Fn(&url::Url) -> bool) -> Visit {
        self.go("GET", url, stop).await
    }

    /// Submits a form (POST, no fields) to `url`, then follows redirects like `visit`.
    pub async fn submit(&mut self, url: &str, stop: impl Fn(&url::Url) -> bool) -> Visit {
        self.go("POST", url, stop).await
    }

    async fn go(&mut self, method: &str, url: &str, stop: impl Fn(&url::Url) -> bool) -> Visit {
        let mut url = url::Url::parse(url).unwrap();
        let mut method = method;
        for _ in 0..20 {
            let got = self.request(method, &url).await;
            method = "GET"; // 302/303 after a POST are followed with GET, as browsers do
            let location = got.header("location").map(str::to_string);
            match location {
                Some(l) if (300..400).contains(&got.status) => {
                    let next = url.join(&l).unwrap();
                    if stop(&next) {
                        return Visit::StoppedAt(next);
                    }
                    url = next;
                }
                _ => {
                    return Visit::Page {
                        url: url.to_string(),
                        got,
                    }
                }
            }
        }
        panic!("more than 20 redirects");
    }

    pub async fn request(&mut self, method: &str, url: &url::Url) -> Got {
        let origin = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(80));
        let jar = self.cookies.entry(origin).or_default();
        let cookie = jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut req = Request::builder().method(method).uri(url.as_str());
        if !cookie.is_empty() {
            req = req.header("cookie", cookie);
        }
        let got = send(req.body(Full::<Bytes>::default()).unwrap()).await;
        for set in got.headers.get_all("set-cookie") {
            let set = set.to_str().unwrap_or("");
            let pair = set.split(';').next().unwrap_or("");
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let expired = set
                .to_ascii_lowercase()
                .contains("expires=thu, 01 jan 1970");
            if v.is_empty() || expired {
                jar.remove(k.trim());
            } else {
                jar.insert(k.trim().to_string(), v.to_string());
            }
        }
        got
    }
}
