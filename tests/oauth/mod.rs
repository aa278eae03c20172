//! A fake OAuth 2.0 provider written independently of grantd's code: a token endpoint that
//! rotates refresh tokens and revokes the whole family when one is reused (RFC 9700 §4.14.2),
//! requires HTTP Basic client authentication with form-urlencoded id and secret (RFC 6749
//! §2.3.1), and an API that accepts only live access tokens.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::common::{handler, json_response, upstream, Body};

pub const CLIENT_ID: &str = "lab client";
/// Needs form-urlencoding inside Basic: `&`, `=`, `+`, space and `%`.
pub const CLIENT_SECRET: &str = "s3cr&t=+ x%";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Normal,
    InvalidClient,
    Unavailable,
    /// The first token call never answers (its caller is about to be killed).
    HangFirst,
    /// Answers without a refresh_token and keeps the presented one valid (no rotation).
    NoRotation,
    /// GitHub-style: HTTP 200 with a form-encoded `error=bad_refresh_token`.
    GithubLies,
    /// Normal, but every token call takes 200 ms (to observe concurrency) and has no expires_in.
    Slow,
}

/// What the API last saw: path, query, Authorization header.
pub type SeenRequest = (String, Option<String>, Option<String>);

#[derive(Default)]
struct State {
    live_refresh: HashSet<String>,
    used_refresh: HashSet<String>,
    access: HashMap<String, Instant>,
    issued: usize,
}

pub struct Provider {
    pub addr: SocketAddr,
    state: Mutex<State>,
    pub token_calls: AtomicUsize,
    pub token_call_times: Mutex<Vec<Instant>>,
    /// The path of every token call (`/token`, or `/refresh` for a separate refresh endpoint).
    pub token_paths: Mutex<Vec<String>>,
    pub api_calls: AtomicUsize,
    pub api_rejections: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub last_api_request: Mutex<Option<SeenRequest>>,
    pub family_revocations: AtomicUsize,
    mode: Mutex<Mode>,
    lifetime: Mutex<Duration>,
    slow: Mutex<Duration>,
    /// Fields added to (or replacing those of) every successful token answer.
    extra: Mutex<serde_json::Map<String, serde_json::Value>>,
}

impl Provider {
    pub async fn start() -> Arc<Provider> {
        let cell: Arc<Mutex<Option<Arc<Provider>>>> = Arc::new(Mutex::new(None));
        let for_handler = cell.clone();
        let addr = upstream(handler(move |req: Request<Incoming>| {
            let provider = for_handler.lock().unwrap().clone().expect("provider set");
            async move { provider.handle(req).await }
        }))
        .await;
        let provider = Arc::new(Provider {
            addr,
            state: Mutex::new(State::default()),
            token_calls: AtomicUsize::new(0),
            token_call_times: Mutex::new(Vec::new()),
            token_paths: Mutex::new(Vec::new()),
            api_calls: AtomicUsize::new(0),
            api_rejections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            last_api_request: Mutex::new(None),
            family_revocations: AtomicUsize::new(0),
            mode: Mutex::new(Mode::Normal),
            lifetime: Mutex::new(Duration::from_secs(3600)),
            slow: Mutex::new(Duration::from_millis(200)),
            extra: Mutex::new(serde_json::Map::new()),
        });
        *cell.lock().unwrap() = Some(provider.clone());
        provider
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// How long each token call takes in `Mode::Slow` (default 200 ms).
    pub fn set_slow(&self, d: Duration) {
        *self.slow.lock().unwrap() = d;
    }

    pub fn set_lifetime(&self, lifetime: Duration) {
        *self.lifetime.lock().unwrap() = lifetime;
    }

    /// From now on, successful token answers also carry (or replace) these fields, as some
    /// providers' do: `{"expires_in": -5}`, `{"id_token": ...}`.
    pub fn answer_with(&self, fields: serde_json::Value) {
        *self.extra.lock().unwrap() = fields.as_object().expect("an object").clone();
    }

    /// A refresh token the provider will accept once.
    pub fn grant(&self, refresh_token: &str) {
        self.state
            .lock()
            .unwrap()
            .live_refresh
            .insert(refresh_token.to_string());
    }

    /// Revokes every token (the user removed the app).
    pub fn revoke_all(&self) {
        let mut s = self.state.lock().unwrap();
        s.live_refresh.clear();
        s.access.clear();
    }

    pub fn calls(&self) -> usize {
        self.token_calls.load(Ordering::SeqCst)
    }

    /// Every token string the provider ever issued or accepted (to look for leaks).
    pub fn all_tokens(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.live_refresh
            .iter()
            .chain(s.used_refresh.iter())
            .chain(s.access.keys())
            .cloned()
            .collect()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/token" | "/refresh" => self.token(req).await,
            _ => self.api(req),
        }
    }

    fn api(&self, req: Request<Incoming>) -> Response<Body> {
        self.api_calls.fetch_add(1, Ordering::SeqCst);
        let query_token = req.uri().query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "access_token")
                .map(|(_, v)| v.into_owned())
        });
        *self.last_api_request.lock().unwrap() = Some((
            req.uri().path().to_string(),
            req.uri().query().map(str::to_string),
            req.headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        ));
        if req.uri().path().ends_with("/revoked") {
            return json_response(403, r#"{"error":"token_revoked"}"#);
        }
        let token = query_token.unwrap_or_else(|| {
            req.headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("")
                .to_string()
        });
        let live = self
            .state
            .lock()
            .unwrap()
            .access
            .get(&token)
            .is_some_and(|exp| *exp > Instant::now());
        if live {
            json_response(200, &serde_json::json!({"ok": true, "token_suffix": &token[token.len().saturating_sub(4)..]}).to_string())
        } else {
            self.api_rejections.fetch_add(1, Ordering::SeqCst);
            let mut r = json_response(401, r#"{"error":"invalid_token"}"#);
            r.headers_mut().insert(
                "www-authenticate",
                http::HeaderValue::from_static(r#"Bearer error="invalid_token""#),
            );
            r
        }
    }

    async fn token(&self, req: Request<Incoming>) -> Response<Body> {
        let n = self.token_calls.fetch_add(1, Ordering::SeqCst);
        self.token_call_times.lock().unwrap().push(Instant::now());
        let path = req.uri().path().to_string();
        self.token_paths.lock().unwrap().push(path);
        let mode = *self.mode.lock().unwrap();
        if mode == Mode::HangFirst && n == 0 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if mode == Mode::Slow {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let slow = *self.slow.lock().unwrap();
            tokio::time::sleep(slow).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        match mode {
            Mode::GithubLies => {
                let mut r = json_response(200, "error=bad_refresh_token&error_description=The+refresh+token+passed+is+incorrect+or+expired.");
                r.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
                return r;
            }
            Mode::InvalidClient => {
                return json_response(
                    401,
                    r#"{"error":"invalid_client","error_description":"client secret expired"}"#,
                )
            }
            Mode::Unavailable => {
                let mut r = json_response(503, r#"{"error":"temporarily_unavailable"}"#);
                r.headers_mut()
                    .insert("retry-after", http::HeaderValue::from_static("2"));
                return r;
            }
            _ => {}
        }
        if !basic_auth_ok(
            req.headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
        ) {
            return json_response(401, r#"{"error":"invalid_client"}"#);
        }
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
        if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
            return json_response(400, r#"{"error":"unsupported_grant_type"}"#);
        }
        let presented = form.get("refresh_token").cloned().unwrap_or_default();
        let mut s = self.state.lock().unwrap();
        if s.used_refresh.contains(&presented) {
            // Reuse: revoke the whole family.
            s.live_refresh.clear();
            s.access.clear();
            self.family_revocations.fetch_add(1, Ordering::SeqCst);
            return json_response(
                400,
                r#"{"error":"invalid_grant","error_description":"refresh token reused; family revoked"}"#,
            );
        }
        if !s.live_refresh.remove(&presented) {
            return json_response(
                400,
                r#"{"error":"invalid_grant","error_description":"unknown refresh token"}"#,
            );
        }
        if mode == Mode::NoRotation {
            s.live_refresh.insert(presented);
            s.issued += 1;
            let access = format!("at-{}-{}", s.issued, self.addr.port());
            let lifetime = *self.lifetime.lock().unwrap();
            s.access.insert(access.clone(), Instant::now() + lifetime);
            return json_response(
                200,
                &serde_json::json!({"access_token": access, "expires_in": lifetime.as_secs()})
                    .to_string(),
            );
        }
        s.used_refresh.insert(presented);
        s.issued += 1;
        let access = format!("at-{}-{}", s.issued, self.addr.port());
        let refresh = format!("rt-{}-{}", s.issued, self.addr.port());
        let lifetime = *self.lifetime.lock().unwrap();
        s.access.insert(access.clone(), Instant::now() + lifetime);
        s.live_refresh.insert(refresh.clone());
        if mode == Mode::Slow {
            return json_response(
                200,
                &serde_json::json!({"access_token": access, "refresh_token": refresh}).to_string(),
            );
        }
        let mut answer = serde_json::json!({
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": lifetime.as_secs(),
            "instance_url": "https://example.invalid"
        });
        for (k, v) in self.extra.lock().unwrap().iter() {
            answer[k] = v.clone();
        }
        json_response(200, &answer.to_string())
    }
}

/// RFC 6749 §2.3.1: `Basic base64(urlencode(id) ":" urlencode(secret))`.
fn basic_auth_ok(header: Option<&str>) -> bool {
    let Some(b64) = header.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((id, secret)) = text.split_once(':') else {
        return false;
    };
    let dec = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    dec(id).as_deref() == Some(CLIENT_ID) && dec(secret).as_deref() == Some(CLIENT_SECRET)
}

/// The rule file for the fake provider: OAuth with Basic client auth, `instance_url` kept from
/// token answers, no response rules.
pub const RULES: &str = r#"
integration: lab
base_url: http://127.0.0.1:1
auth:
  token_url: http://127.0.0.1:1/token
  client_auth: basic
  token_metadata: [instance_url]
rules: []
"#;

/// Config lines routing `lab` to the provider, with the client credentials.
pub fn config(p: &Provider, extra: &str) -> String {
    format!(
        "integrations:\n  lab:\n    base_url: \"http://{a}/api\"\n    token_url: \"http://{a}/token\"\n    client_id: \"{CLIENT_ID}\"\n    client_secret: \"{CLIENT_SECRET}\"\n{extra}",
        a = p.addr
    )
}
