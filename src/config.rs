//! Deployment configuration (`grantd.yaml`): parsed once at startup into typed structs.
//!
//! Owns `${VAR}` interpolation, defaults and the "unknown key" check. It must not touch
//! rule files (see `rules`) or open sockets: everything here is pure data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

/// Errors from loading the config; every message names the file.
#[derive(Debug, thiserror::Error)]
#[error("config {file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the proxy listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Threads serving the proxy, each a single-threaded runtime with its own listener
    /// (SO_REUSEPORT) and upstream pool, like nginx's workers. Default: one per core.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Directory of `{integration}.yaml` rule files, relative to the config file.
    #[serde(default = "default_rules_dir")]
    pub rules_dir: PathBuf,
    /// Largest response body a matching rule may buffer; larger ones pass through untouched.
    #[serde(default = "default_max_buffered_body")]
    pub max_buffered_body: ByteSize,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// How long clients of every listener (proxy, admin, connect) may stall, and how many
    /// may be connected at once.
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub evaluation: EvaluationConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub store: StoreConfig,
    /// Required by `serve`: tokens are encrypted at rest with it.
    #[serde(default)]
    pub encryption: Option<EncryptionConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub refresh: RefreshConfig,
    #[serde(default)]
    pub callbacks: CallbacksConfig,
    #[serde(default)]
    pub connect: ConnectConfig,
    /// Applications allowed to use the proxy port. None: the port is open (a sidecar on
    /// loopback); any non-loopback `listen` then also needs `allow_unauthenticated_callers`.
    #[serde(default)]
    pub callers: Vec<CallerConfig>,
    /// Serve a non-loopback proxy address without caller authentication (say so explicitly).
    #[serde(default)]
    pub allow_unauthenticated_callers: bool,
    /// Per-integration overrides, keyed by integration name.
    #[serde(default)]
    pub integrations: BTreeMap<String, IntegrationConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Time allowed from sending the request until the response headers arrive.
    #[serde(with = "humantime_serde", default = "default_request_timeout")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde", default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: Duration,
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_host: usize,
    /// Longest pause inside a provider's response body; past it the response is cut off
    /// (or, when a rule was reading it, answered with 504).
    #[serde(with = "humantime_serde", default = "d30")]
    pub body_timeout: Duration,
    /// Extra PEM CA bundle trusted in addition to the webpki and native roots.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
}

/// One application that may use the proxy port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// Shown in logs and refusals.
    pub name: String,
    /// Hex SHA-256 of the caller's token (`grantd caller-token` makes both).
    pub token_sha256: String,
    /// Integrations it may use; all when empty.
    #[serde(default)]
    pub integrations: Vec<String>,
    /// Connection-id prefixes it may use; all when empty.
    #[serde(default)]
    pub connections: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// A client must send a request's headers within this; an HTTP/1 keep-alive connection
    /// idle this long is closed too.
    #[serde(with = "humantime_serde", default = "d30")]
    pub header_timeout: Duration,
    /// Longest pause inside a client's request body; past it the client gets 408 and nothing
    /// more is sent upstream.
    #[serde(with = "humantime_serde", default = "d30")]
    pub body_timeout: Duration,
    /// Open client connections per listener; more wait in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Memory for request bodies the proxy keeps to replay after a refresh, all requests
    /// together; past it bodies stream (not replayable), so stalled uploads cannot pile up.
    #[serde(default = "default_replay_budget")]
    pub replay_budget: ByteSize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_timeout: d30(),
            body_timeout: d30(),
            max_connections: default_max_connections(),
            replay_budget: default_replay_budget(),
        }
    }
}

fn default_replay_budget() -> ByteSize {
    ByteSize(64 << 20)
}

fn default_max_connections() -> usize {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Wall-clock budget for all rules on one response; past it the response passes through.
    #[serde(with = "humantime_serde", default = "default_eval_timeout")]
    pub timeout: Duration,
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    #[serde(default = "default_max_sequence")]
    pub max_sequence_length: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The embedded store's SQLite file, relative to the config file.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// How long a write waits for another process's lock before failing (and being retried).
    #[serde(with = "humantime_serde", default = "d10")]
    pub busy_timeout: Duration,
    /// `postgres://...`: fleet mode, shared by every replica; `path` is then unused.
    #[serde(default)]
    pub url: Option<String>,
    /// PostgreSQL schema to use (created if missing); default the user's search_path.
    #[serde(default)]
    pub schema: Option<String>,
    /// How long a process trusts its in-memory copy of a connection before reading it again:
    /// the longest another replica's change (delete, pause, new credentials) goes unseen here.
    #[serde(with = "humantime_serde", default = "d2")]
    pub cache_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            busy_timeout: d10(),
            url: None,
            schema: None,
            cache_ttl: d2(),
        }
    }
}

fn default_store_path() -> PathBuf {
    PathBuf::from("grantd.db")
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Base64 of 32 random bytes; seals new writes.
    pub key: String,
    /// Older keys, still accepted for reading (key rotation).
    #[serde(default)]
    pub previous_keys: Vec<String>,
}

impl std::fmt::Debug for EncryptionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EncryptionConfig(key: ***, {} previous)",
            self.previous_keys.len()
        )
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Bearer token required on every admin request; the admin API is off without it.
    #[serde(default)]
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AdminConfig(listen: {}, token: {})",
            self.listen,
            if self.token.is_some() { "***" } else { "none" }
        )
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token: None,
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4181))
}

/// The refresher's timing. `lease` must exceed `token_timeout`, so a lease can only expire
/// after its holder's token call has already given up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    /// Refresh this long before expiry, at a random point between min and max.
    #[serde(with = "humantime_serde", default = "d60")]
    pub window_min: Duration,
    #[serde(with = "humantime_serde", default = "d180")]
    pub window_max: Duration,
    /// A token this close to expiry is treated as expired on the request path.
    #[serde(with = "humantime_serde", default = "d10")]
    pub expiry_margin: Duration,
    /// Lifetime assumed when a token response has no `expires_in`.
    #[serde(with = "humantime_serde", default = "d3600")]
    pub default_lifetime: Duration,
    #[serde(with = "humantime_serde", default = "d10")]
    pub token_timeout: Duration,
    #[serde(with = "humantime_serde", default = "d30")]
    pub lease: Duration,
    /// How often a waiter re-checks a lease held by someone else.
    #[serde(with = "humantime_serde", default = "d100ms")]
    pub lease_poll: Duration,
    #[serde(with = "humantime_serde", default = "d1")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde", default = "d300")]
    pub backoff_max: Duration,
    #[serde(default = "default_refresh_cap")]
    pub max_concurrent_per_integration: usize,
    /// How often the proactive loop looks for connections nearing expiry.
    #[serde(with = "humantime_serde", default = "d5")]
    pub scan_interval: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            window_min: d60(),
            window_max: d180(),
            expiry_margin: d10(),
            default_lifetime: d3600(),
            token_timeout: d10(),
            lease: d30(),
            lease_poll: d100ms(),
            backoff_base: d1(),
            backoff_max: d300(),
            max_concurrent_per_integration: default_refresh_cap(),
            scan_interval: d5(),
        }
    }
}

fn d100ms() -> Duration {
    Duration::from_millis(100)
}
fn d1() -> Duration {
    Duration::from_secs(1)
}
fn d2() -> Duration {
    Duration::from_secs(2)
}
fn d5() -> Duration {
    Duration::from_secs(5)
}
fn d10() -> Duration {
    Duration::from_secs(10)
}
fn d30() -> Duration {
    Duration::from_secs(30)
}
fn d60() -> Duration {
    Duration::from_secs(60)
}
fn d180() -> Duration {
    Duration::from_secs(180)
}
fn d300() -> Duration {
    Duration::from_secs(300)
}
fn d3600() -> Duration {
    Duration::from_secs(3600)
}
fn default_refresh_cap() -> usize {
    4
}

/// Where `authentication_error` & co. are sent, and how long delivery keeps trying.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbacksConfig {
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// First retry delay; doubles per attempt (jittered) up to `retry_max`.
    #[serde(with = "humantime_serde", default = "d5")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde", default = "d10h")]
    pub retry_max: Duration,
    /// After this long an undelivered event is marked failed (Standard Webhooks: about 3 days).
    #[serde(with = "humantime_serde", default = "d72h")]
    pub retry_for: Duration,
    /// How often the delivery worker looks for due deliveries.
    #[serde(with = "humantime_serde", default = "d200ms")]
    pub poll_interval: Duration,
}

impl Default for CallbacksConfig {
    fn default() -> Self {
        CallbacksConfig {
            endpoints: Vec::new(),
            retry_base: d5(),
            retry_max: d10h(),
            retry_for: d72h(),
            poll_interval: d200ms(),
        }
    }
}

fn d200ms() -> Duration {
    Duration::from_millis(200)
}
fn d10h() -> Duration {
    Duration::from_secs(10 * 3600)
}
fn d72h() -> Duration {
    Duration::from_secs(72 * 3600)
}

/// The connect flow (OAuth authorization code): where browsers reach grantd and where they
/// may be sent back to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// The public, browser-facing listener (`/connect/{token}`, `/oauth/callback`). Off when absent.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// How browsers reach that listener (e.g. `https://connect.example.com`); links are
    /// `{public_url}/connect/{token}`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The one redirect URI registered with every provider. Default `{public_url}/oauth/callback`.
    /// Never derived from request headers.
    #[serde(default)]
    pub redirect_uri: Option<String>,
    /// Where users may be sent back to: URL prefixes (same scheme, host and port; the path
    /// must start with the prefix's path at a `/` boundary).
    #[serde(default)]
    pub return_to: Vec<String>,
    /// Where a user who followed an event's `reconnect_url` lands afterwards (must be allowed
    /// by `return_to`). Without it they see a "connected" page.
    #[serde(default)]
    pub reconnect_return_to: Option<String>,
    /// How long an authorization request (`state`) stays valid.
    #[serde(with = "humantime_serde", default = "d10m")]
    pub state_ttl: Duration,
    /// How long a connect link (`/connect/{token}`, `reconnect_url`) stays valid.
    #[serde(with = "humantime_serde", default = "d7d")]
    pub link_ttl: Duration,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        ConnectConfig {
            listen: None,
            public_url: None,
            redirect_uri: None,
            return_to: Vec::new(),
            reconnect_return_to: None,
            state_ttl: d10m(),
            link_ttl: d7d(),
        }
    }
}

impl ConnectConfig {
    /// The configured redirect URI, or the one derived from `public_url`.
    pub fn default_redirect_uri(&self) -> Option<String> {
        self.redirect_uri.clone().or_else(|| {
            self.public_url
                .as_ref()
                .map(|p| format!("{}/oauth/callback", p.trim_end_matches('/')))
        })
    }

    fn validate(&self) -> Result<(), String> {
        let absolute = |key: &str, v: &str| -> Result<(), String> {
            match url::Url::parse(v) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
                Ok(_) => Err(format!("{key}: `{v}` must be an http(s) URL with a host")),
                Err(e) => Err(format!("{key}: `{v}` is not a URL: {e}")),
            }
        };
        if let Some(p) = &self.public_url {
            absolute("connect.public_url", p)?;
        }
        if let Some(r) = &self.redirect_uri {
            absolute("connect.redirect_uri", r)?;
        }
        for (i, r) in self.return_to.iter().enumerate() {
            absolute(&format!("connect.return_to[{i}]"), r)?;
        }
        if let Some(r) = &self.reconnect_return_to {
            if !crate::template::under_prefix(r, &self.return_to) {
                return Err(format!(
                    "connect.reconnect_return_to: `{r}` is not under any connect.return_to prefix"
                ));
            }
        }
        if self.listen.is_some() && self.public_url.is_none() {
            return Err("connect.public_url is required with connect.listen: links and the redirect URI are built from it".into());
        }
        if self.state_ttl.is_zero() || self.link_ttl.is_zero() {
            return Err("connect.state_ttl and connect.link_ttl must be greater than 0".into());
        }
        Ok(())
    }
}

fn d10m() -> Duration {
    Duration::from_secs(600)
}
fn d7d() -> Duration {
    Duration::from_secs(7 * 86_400)
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Defaults to the URL.
    #[serde(default)]
    pub name: Option<String>,
    pub url: String,
    /// `whsec_...`; every secret signs (rotation: receivers accept any).
    pub secrets: Vec<String>,
    /// Event types to send; all when absent.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    #[serde(with = "humantime_serde", default = "d10")]
    pub timeout: Duration,
}

impl EndpointConfig {
    pub fn key(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.url.clone())
    }
}

impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secrets", &format!("{} x whsec_***", self.secrets.len()))
            .field("events", &self.events)
            .finish()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationConfig {
    /// Replaces the rule file's `base_url` (e.g. a sandbox or a local fake provider).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Replaces the rule file's `auth.token_url`.
    #[serde(default)]
    pub token_url: Option<String>,
    /// Replaces the rule file's `allowed_hosts` (where templated URLs may point).
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    /// Replaces the rule file's `allow_http` (plain-http templated URLs, for local tests).
    #[serde(default)]
    pub allow_http: Option<bool>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Replaces the rule file's `auth.authorize_url`.
    #[serde(default)]
    pub authorize_url: Option<String>,
    /// This integration's redirect URI, if it differs from `connect.redirect_uri`.
    #[serde(default)]
    pub redirect_uri: Option<String>,
    /// Scopes asked for when a connect request names none.
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for IntegrationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationConfig")
            .field("base_url", &self.base_url)
            .field("token_url", &self.token_url)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("allow_http", &self.allow_http)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "***"))
            .field("authorize_url", &self.authorize_url)
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
            pool_idle_timeout: default_pool_idle_timeout(),
            pool_max_idle_per_host: default_pool_max_idle(),
            body_timeout: d30(),
            ca_bundle: None,
        }
    }
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            timeout: default_eval_timeout(),
            max_depth: default_max_depth(),
            max_sequence_length: default_max_sequence(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            workers: default_workers(),
            rules_dir: default_rules_dir(),
            max_buffered_body: default_max_buffered_body(),
            upstream: UpstreamConfig::default(),
            server: ServerConfig::default(),
            evaluation: EvaluationConfig::default(),
            log: LogConfig::default(),
            store: StoreConfig::default(),
            encryption: None,
            admin: AdminConfig::default(),
            refresh: RefreshConfig::default(),
            callbacks: CallbacksConfig::default(),
            connect: ConnectConfig::default(),
            callers: Vec::new(),
            allow_unauthenticated_callers: false,
            integrations: BTreeMap::new(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4180))
}
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
fn default_rules_dir() -> PathBuf {
    PathBuf::from("rules")
}
fn default_max_buffered_body() -> ByteSize {
    ByteSize(1024 * 1024)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_pool_max_idle() -> usize {
    32
}
fn default_eval_timeout() -> Duration {
    Duration::from_millis(100)
}
fn default_max_depth() -> usize {
    200
}
fn default_max_sequence() -> usize {
    100_000
}

/// A size in bytes, written as an integer or with a unit: `512KiB`, `1MiB`, `10MB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(usize),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => parse_byte_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

fn parse_byte_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 1048576, 512KiB, 1MiB)"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` in `{s}`")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

impl Config {
    /// Reads, interpolates and validates a config file. Relative paths in it are
    /// resolved against the file's directory, so `grantd serve --config x/y.yaml` works
    /// from any working directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let mut config = Self::parse(&text, &|name| std::env::var(name).ok()).map_err(err)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.rules_dir = base.join(&config.rules_dir);
        config.store.path = base.join(&config.store.path);
        if let Some(ca) = &config.upstream.ca_bundle {
            config.upstream.ca_bundle = Some(base.join(ca));
        }
        Ok(config)
    }

    /// Parses config text; `env` looks up `${VAR}` references.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
        let mut value: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if value.is_null() {
            value = Value::Mapping(Default::default());
        }
        interpolate_value(&mut value, &mut Vec::new(), env)?;
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if path == "." {
                inner
            } else {
                format!("{path}: {inner}")
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.workers == 0 || self.workers > 256 {
            return Err("workers: must be from 1 to 256".into());
        }
        if self.max_buffered_body.0 == 0 {
            return Err("max_buffered_body: must be greater than 0".into());
        }
        let r = &self.refresh;
        if r.lease <= r.token_timeout {
            return Err("refresh.lease must be longer than refresh.token_timeout".into());
        }
        if r.window_min > r.window_max {
            return Err("refresh.window_min must not exceed refresh.window_max".into());
        }
        if r.max_concurrent_per_integration == 0 {
            return Err("refresh.max_concurrent_per_integration must be at least 1".into());
        }
        let s = &self.server;
        if s.header_timeout.is_zero()
            || s.body_timeout.is_zero()
            || self.upstream.body_timeout.is_zero()
        {
            return Err("server.header_timeout, server.body_timeout and upstream.body_timeout must be greater than 0".into());
        }
        if s.max_connections == 0 {
            return Err("server.max_connections must be at least 1".into());
        }
        if self.evaluation.timeout.is_zero() {
            return Err("evaluation.timeout: must be greater than 0".into());
        }
        if self.callers.is_empty()
            && !self.listen.ip().is_loopback()
            && !self.allow_unauthenticated_callers
        {
            return Err(format!(
                "listen: {} is reachable from other hosts, and anyone who reaches it could use every connection's token: configure callers (grantd caller-token makes a token), or set allow_unauthenticated_callers: true if a network policy already restricts who connects",
                self.listen
            ));
        }
        self.connect.validate()?;
        for (name, i) in &self.integrations {
            if let Some(r) = &i.redirect_uri {
                ConnectConfig {
                    redirect_uri: Some(r.clone()),
                    ..ConnectConfig::default()
                }
                .validate()
                .map_err(|e| e.replace("connect.", &format!("integrations.{name}.")))?;
            }
        }
        Ok(())
    }
}

/// Replaces `${VAR}` (and `${VAR:-default}`) in every string of the document; `$$` is a
/// literal `$`. `path` tracks where we are so an unset variable is reported with its key.
fn interpolate_value(
    value: &mut Value,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    match value {
        Value::String(s) => {
            *s = interpolate(s, env).map_err(|e| format!("{}: {e}", display_path(path)))?;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                interpolate_value(item, path, env)?;
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                path.push(k.as_str().unwrap_or("?").to_string());
                interpolate_value(v, path, env)?;
                path.pop();
            }
        }
        Value::Tagged(t) => interpolate_value(&mut t.value, path, env)?,
        _ => {}
    }
    Ok(())
}

fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for p in path {
        if !p.starts_with('[') && !out.is_empty() {
            out.push('.');
        }
        out.push_str(p);
    }
    out
}

/// Expands `${VAR}`, `${VAR:-default}` and `$$` in one string.
///
/// ```
/// let env = |name: &str| (name == "HOST").then(|| "api.example.com".to_string());
/// let url = grantd::config::interpolate("https://${HOST}/v1?price=$$5", &env).unwrap();
/// assert_eq!(url, "https://api.example.com/v1?price=$5");
/// assert_eq!(grantd::config::interpolate("${PORT:-4180}", &env).unwrap(), "4180");
/// assert!(grantd::config::interpolate("${MISSING}", &env).unwrap_err().contains("MISSING"));
/// ```
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in `{s}`"))?;
            let (name, default) = match body[..end].split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (&body[..end], None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{name}}}` is not a valid variable name"));
            }
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SLACK_URL" => Some("http://127.0.0.1:9000/api".into()),
            "PORT" => Some("4999".into()),
            _ => None,
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", &env).unwrap();
        assert_eq!(c.listen, "127.0.0.1:4180".parse().unwrap());
        assert_eq!(c.max_buffered_body, ByteSize(1 << 20));
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn interpolates_any_string_with_defaults_and_escapes() {
        let c = Config::parse(
            "listen: 127.0.0.1:${PORT}\nintegrations:\n  slack: { base_url: \"${SLACK_URL}\" }\n  github: { base_url: \"${GH:-https://api.github.com}/$$x\" }\n",
            &env,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 4999);
        assert_eq!(
            c.integrations["slack"].base_url.as_deref(),
            Some("http://127.0.0.1:9000/api")
        );
        assert_eq!(
            c.integrations["github"].base_url.as_deref(),
            Some("https://api.github.com/$x")
        );
    }

    #[test]
    fn missing_variable_is_named_with_its_key() {
        let e = Config::parse(
            "integrations:\n  slack:\n    base_url: ${NOPE_NOT_SET}\n",
            &env,
        )
        .unwrap_err();
        assert!(e.contains("NOPE_NOT_SET"), "{e}");
        assert!(e.contains("integrations.slack.base_url"), "{e}");
    }

    #[test]
    fn unknown_key_reports_its_path() {
        let e = Config::parse("upstream:\n  conect_timeout: 3s\n", &env).unwrap_err();
        assert!(e.contains("upstream"), "{e}");
        assert!(e.contains("conect_timeout"), "{e}");
        let e = Config::parse("integrations:\n  slack: { bse_url: x }\n", &env).unwrap_err();
        assert!(e.contains("integrations.slack"), "{e}");
        assert!(e.contains("bse_url"), "{e}");
    }

    #[test]
    fn sizes_and_durations_parse_with_units() {
        let c = Config::parse(
            "max_buffered_body: 512KiB\nupstream: { request_timeout: 250ms }\n",
            &env,
        )
        .unwrap();
        assert_eq!(c.max_buffered_body, ByteSize(512 * 1024));
        assert_eq!(c.upstream.request_timeout, Duration::from_millis(250));
        let e = Config::parse("max_buffered_body: 3 parsecs\n", &env).unwrap_err();
        assert!(
            e.contains("max_buffered_body") && e.contains("parsecs"),
            "{e}"
        );
    }

    #[test]
    fn connect_urls_are_checked_at_startup() {
        let bad = [
            ("connect: { listen: 127.0.0.1:4182 }", "connect.public_url is required"),
            ("connect: { public_url: /relative }", "connect.public_url: `/relative` is not a URL"),
            ("connect: { return_to: [\"ftp://x/\"] }", "connect.return_to[0]"),
            (
                "connect: { return_to: [\"https://app.example/a\"], reconnect_return_to: \"https://app.example/b\" }",
                "connect.reconnect_return_to",
            ),
            ("integrations: { x: { redirect_uri: nope } }", "integrations.x.redirect_uri"),
        ];
        for (text, expected) in bad {
            let e = Config::parse(text, &env).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
        let ok = "connect: { listen: 127.0.0.1:0, public_url: \"https://c.example\" }";
        let c = Config::parse(ok, &env).unwrap();
        assert_eq!(
            c.connect.default_redirect_uri().as_deref(),
            Some("https://c.example/oauth/callback")
        );
    }

    #[test]
    fn a_non_loopback_proxy_needs_callers_or_an_explicit_opt_out() {
        let e = Config::parse("listen: 0.0.0.0:4180\n", &env).unwrap_err();
        assert!(e.contains("callers") && e.contains("0.0.0.0:4180"), "{e}");
        let hash = "0".repeat(64);
        let with_callers =
            format!("listen: 0.0.0.0:4180\ncallers: [{{ name: app, token_sha256: \"{hash}\" }}]\n");
        assert!(Config::parse(&with_callers, &env).is_ok());
        let opted_out = "listen: \"[::]:4180\"\nallow_unauthenticated_callers: true\n";
        assert!(Config::parse(opted_out, &env).is_ok());
        assert!(Config::parse("listen: \"[::1]:4180\"\n", &env).is_ok());
    }

    #[test]
    fn refresh_lease_must_outlive_the_token_call() {
        let e = Config::parse("refresh: { lease: 5s, token_timeout: 10s }\n", &env).unwrap_err();
        assert!(e.contains("refresh.lease"), "{e}");
    }

    #[test]
    fn secrets_in_config_never_print() {
        let c = Config::parse(
            "encryption: { key: c2VjcmV0LWtleQ== }\nadmin: { token: hunter2 }\nintegrations:\n  x: { base_url: 'http://a', client_id: id, client_secret: s3cr3t }\n",
            &env,
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("c2VjcmV0") && !shown.contains("hunter2") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }

    #[test]
    fn yaml_syntax_error_has_a_line() {
        let e = Config::parse("listen: [1,\n  rules_dir: x\n", &env).unwrap_err();
        assert!(e.contains("line"), "{e}");
    }
}
