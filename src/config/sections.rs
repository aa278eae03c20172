//! The config's sections (`upstream`, `server`, `evaluation`, `store`, `refresh`, `callbacks`,
//! `connect`, `integrations.*`, ...): their fields and defaults, nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ByteSize;

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

pub(super) fn default_replay_budget() -> ByteSize {
    ByteSize(64 << 20)
}

pub(super) fn default_max_connections() -> usize {
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
    /// The in-memory cache's bound, in bytes; least recently used connections go first.
    #[serde(default = "default_cache_size")]
    pub cache_size: ByteSize,
    /// How often the connection and callback-backlog gauges are counted in the store.
    #[serde(with = "humantime_serde", default = "d15")]
    pub gauge_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            busy_timeout: d10(),
            url: None,
            schema: None,
            cache_ttl: d2(),
            cache_size: default_cache_size(),
            gauge_interval: d15(),
        }
    }
}

fn d15() -> Duration {
    Duration::from_secs(15)
}

pub(super) fn default_store_path() -> PathBuf {
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

pub(super) fn default_admin_listen() -> SocketAddr {
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

pub(super) fn d100ms() -> Duration {
    Duration::from_millis(100)
}
pub(super) fn d1() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn d2() -> Duration {
    Duration::from_secs(2)
}
pub(super) fn d5() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn d10() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn d30() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn d60() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn d180() -> Duration {
    Duration::from_secs(180)
}
pub(super) fn d300() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn d3600() -> Duration {
    Duration::from_secs(3600)
}
pub(super) fn default_refresh_cap() -> usize {
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

pub(super) fn d200ms() -> Duration {
    Duration::from_millis(200)
}
pub(super) fn d10h() -> Duration {
    Duration::from_secs(10 * 3600)
}
pub(super) fn d72h() -> Duration {
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
    /// How the public pages present the app (name, logo, colour, support contact).
    #[serde(default)]
    pub branding: super::BrandingConfig,
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
            branding: Default::default(),
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

    pub(super) fn validate(&self) -> Result<(), String> {
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
        self.branding.validate()
    }
}

pub(super) fn d10m() -> Duration {
    Duration::from_secs(600)
}
pub(super) fn d7d() -> Duration {
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
    /// Replaces the rule file's `auth.refresh_url`.
    #[serde(default)]
    pub refresh_url: Option<String>,
    /// Replaces the rule file's `auth.revocation_url`.
    #[serde(default)]
    pub revocation_url: Option<String>,
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
    /// Send W3C `traceparent`/`tracestate` on to the provider (grantd's upstream span when
    /// traces are on, else the app's). Off: they are stripped.
    #[serde(default)]
    pub forward_traceparent: bool,
}

impl std::fmt::Debug for IntegrationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationConfig")
            .field("base_url", &self.base_url)
            .field("token_url", &self.token_url)
            .field("refresh_url", &self.refresh_url)
            .field("revocation_url", &self.revocation_url)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("allow_http", &self.allow_http)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "***"))
            .field("authorize_url", &self.authorize_url)
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .field("forward_traceparent", &self.forward_traceparent)
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

pub(super) fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4180))
}
pub(super) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
pub(super) fn default_rules_dir() -> PathBuf {
    PathBuf::from("rules")
}
pub(super) fn default_max_buffered_body() -> ByteSize {
    ByteSize(1024 * 1024)
}
pub(super) fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
pub(super) fn default_pool_max_idle() -> usize {
    32
}
pub(super) fn default_eval_timeout() -> Duration {
    Duration::from_millis(100)
}
pub(super) fn default_max_depth() -> usize {
    200
}
pub(super) fn default_max_sequence() -> usize {
    100_000
}
pub(super) fn default_cache_size() -> ByteSize {
    ByteSize(24 << 20)
}
