//! Test harness: a fake provider on 127.0.0.1:0, grantd in-process on its own runtime, and a
//! plain HTTP client. Everything talks over real sockets.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub type Body = BoxBody<Bytes, Infallible>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

pub fn json_response(status: u16, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

/// Starts an HTTP/1.1 + h2c server on 127.0.0.1:0 that answers with `handler`.
pub async fn upstream(handler: Handler) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// An upstream that echoes what it received as JSON.
pub fn echo() -> Handler {
    handler(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let headers: BTreeMap<String, String> = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let out = serde_json::json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        });
        json_response(200, &out.to_string())
    })
}

/// The encryption key and admin token every test grantd uses.
pub const TEST_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A running in-process grantd, wired exactly as `grantd serve` (one proxy worker).
pub struct Grantd {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub app: Option<grantd::app::App>,
    pub dir: tempfile::TempDir,
}

impl Grantd {
    /// Shuts down gracefully and hands back the directory (store included) for a restart.
    pub fn stop(mut self) -> tempfile::TempDir {
        let app = self.app.take().expect("running");
        std::thread::spawn(move || app.shutdown())
            .join()
            .unwrap()
            .expect("clean shutdown");
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for Grantd {
    fn drop(&mut self) {
        // Dropping the app stops it without waiting (a runaway rule may still hold a thread).
        drop(self.app.take());
    }
}

pub struct GrantdBuilder {
    config: String,
    rule_files: Vec<(String, String)>,
    busy_timeout: &'static str,
    store: Option<String>,
}

/// `config` is grantd.yaml text without `rules_dir` (the builder writes the rules to a temp dir).
pub fn grantd(config: &str) -> GrantdBuilder {
    GrantdBuilder {
        config: config.to_string(),
        rule_files: Vec::new(),
        busy_timeout: "10s",
        store: None,
    }
}

impl GrantdBuilder {
    pub fn rule_file(mut self, name: &str, text: &str) -> Self {
        self.rule_files.push((name.to_string(), text.to_string()));
        self
    }

    /// How long store writes wait for a lock (short, to exercise write retries).
    pub fn busy_timeout(mut self, t: &'static str) -> Self {
        self.busy_timeout = t;
        self
    }

    /// Replaces the embedded store line (e.g. `store: { url: postgres://..., schema: x }`).
    pub fn store(mut self, line: &str) -> Self {
        self.store = Some(line.trim_end().to_string());
        self
    }

    /// Copies a shipped rule file from `rules/`.
    pub fn shipped_rules(self, integration: &str) -> Self {
        let text =
            std::fs::read_to_string(repo_path(&format!("rules/{integration}.yaml"))).unwrap();
        self.rule_file(&format!("{integration}.yaml"), &text)
    }

    pub fn start(self) -> Grantd {
        let dir = tempfile::tempdir().unwrap();
        self.start_in(dir)
    }

    /// Starts on an existing directory (its store survives a restart).
    pub fn start_in(self, dir: tempfile::TempDir) -> Grantd {
        let rules = dir.path().join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        for (name, text) in &self.rule_files {
            std::fs::write(rules.join(name), text).unwrap();
        }
        let config_path = dir.path().join("grantd.yaml");
        let text = format!(
            "rules_dir: rules\nlisten: 127.0.0.1:0\nworkers: 1\n{store}\nencryption: {{ key: {TEST_KEY} }}\nadmin: {{ listen: 127.0.0.1:0, token: {ADMIN_TOKEN} }}\n{}",
            self.config,
            store = self.store.clone().unwrap_or_else(|| format!("store: {{ path: grantd.db, busy_timeout: {} }}", self.busy_timeout)),
        );
        std::fs::write(&config_path, text).unwrap();
        let config = grantd::config::Config::load(&config_path).expect("test config loads");
        let sets = grantd::rules::load_dir(&config.rules_dir).expect("test rules load");
        // App::start builds runtimes, so it cannot run inside the test's runtime.
        let app = std::thread::spawn(move || grantd::app::App::start(&config, sets))
            .join()
            .unwrap()
            .expect("grantd starts");
        Grantd {
            addr: app.proxy_addr,
            admin: app.admin_addr.expect("admin API on"),
            app: Some(app),
            dir,
        }
    }
}

/// The rule files grantd ships; each must have tests and catalog coverage.
pub const SHIPPED: &[&str] = &[
    "slack",
    "github",
    "google",
    "microsoft",
    "salesforce",
    "hubspot",
];

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A response read to the end.
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

pub async fn get(addr: SocketAddr, path: &str) -> Got {
    send(
        Request::get(format!("http://{addr}{path}"))
            .body(Full::default())
            .unwrap(),
    )
    .await
}

pub async fn send(req: Request<Full<Bytes>>) -> Got {
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client().request(req))
        .await
        .expect("response within 30 s")
        .expect("request succeeds");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body reads").to_bytes();
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// An admin API call with the test admin token.
pub async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Got {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(
            body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
        ))
        .unwrap();
    send(req).await
}

/// Sends raw bytes and returns the raw response text (for requests a client library won't form).
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut out),
    )
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A fresh PostgreSQL schema for one test, or `None` (skipped loudly) when PostgreSQL is not
/// reachable outside CI.
pub async fn postgres_store_config() -> Option<String> {
    use sqlx::Connection as _;
    let url = std::env::var("GRANTD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match sqlx::PgConnection::connect(&url).await {
        Ok(c) => drop(c),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must run the fleet tests: {e}")
        }
        Err(e) => {
            eprintln!("\n*** SKIPPED fleet test: PostgreSQL unreachable ({e}).\n*** Start it on 127.0.0.1:5432 (trust auth, database test) or set GRANTD_TEST_POSTGRES.\n");
            return None;
        }
    }
    let schema = format!(
        "fleet_{}_{}",
        std::process::id(),
        std::time::Instant::now().elapsed().as_nanos() % 1_000_000 + rand_suffix()
    );
    Some(format!("store: {{ url: \"{url}\", schema: {schema} }}\n"))
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000
}

/// A port to bind later, for the few tests that must know it first (a redirect URI registered
/// before grantd starts, a receiver that comes up after the sender). Taken below Linux's
/// ephemeral range (32768+), so an outgoing connection of a parallel test cannot take it in
/// between, as one did in CI with a port from `bind(":0")` (`connect.listen`: address in use).
pub fn unused_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()),
        );
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Imports a `lab` connection whose access token is already expired (the next request refreshes).
pub async fn put_expired(g: &Grantd, id: &str, refresh: &str) {
    let body = serde_json::json!({
        "integration": "lab",
        "credentials": {"access_token": "at-stale", "refresh_token": refresh, "expires_in": 0}
    });
    let got = admin(g.admin, "PUT", &format!("/v1/connections/{id}"), Some(body)).await;
    assert_eq!(got.status, 200, "{:?}", String::from_utf8_lossy(&got.body));
}
