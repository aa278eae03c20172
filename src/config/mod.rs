//! Deployment configuration (`grantd.yaml`): parsed once at startup into typed structs.
//!
//! Owns `${VAR}` interpolation, defaults and the "unknown key" check. It must not touch
//! rule files (see `rules`) or open sockets: everything here is pure data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

mod branding;
mod ops;
mod runtime;
mod sections;
mod telemetry;
mod values;

pub use branding::BrandingConfig;
pub use ops::OpsConfig;
pub use runtime::*;
pub use sections::*;
pub use telemetry::TelemetryConfig;
use values::interpolate_value;
pub use values::{interpolate, ByteSize};

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
    /// OpenTelemetry traces (off unless `telemetry.otlp_endpoint` is set).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
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
    /// The probes-and-scrapes listener, when `ops.listen` is set.
    #[serde(default)]
    pub ops: OpsConfig,
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
    #[serde(default)]
    pub reload: ReloadConfig,
    #[serde(default)]
    pub ratelimit: RateLimitConfig,
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
            telemetry: TelemetryConfig::default(),
            store: StoreConfig::default(),
            encryption: None,
            admin: AdminConfig::default(),
            refresh: RefreshConfig::default(),
            callbacks: CallbacksConfig::default(),
            connect: ConnectConfig::default(),
            ops: OpsConfig::default(),
            callers: Vec::new(),
            allow_unauthenticated_callers: false,
            integrations: BTreeMap::new(),
            reload: ReloadConfig::default(),
            ratelimit: RateLimitConfig::default(),
        }
    }
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
        self.telemetry.validate()?;
        self.ops.validate(&self.listeners())?;
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

    /// The other listeners grantd serves, each with its key.
    fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let admin_on = self.admin.token.as_deref().is_some_and(|t| !t.is_empty());
        let admin = admin_on.then_some(("admin.listen", self.admin.listen));
        let connect = self.connect.listen.map(|a| ("connect.listen", a));
        [Some(("listen", self.listen)), admin, connect]
            .into_iter()
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn traces_are_off_by_default_and_the_endpoint_is_checked() {
        let c = Config::parse("", &env).unwrap();
        assert_eq!(c.telemetry.traces_url(), None);
        let c = Config::parse(
            "telemetry: { otlp_endpoint: \"http://collector:4318/\", service_name: edge }\n",
            &env,
        )
        .unwrap();
        assert_eq!(
            c.telemetry.traces_url().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(c.telemetry.service_name, "edge");
        for (text, expected) in [
            (
                "telemetry: { otlp_endpoint: collector:4318 }",
                "telemetry.otlp_endpoint",
            ),
            (
                "telemetry: { otlp_endpoint: \"http://c:4318?x=1\" }",
                "no query",
            ),
            ("telemetry: { sample_ratio: 1.5 }", "telemetry.sample_ratio"),
            ("telemetry: { otlp_endpoit: x }", "otlp_endpoit"),
        ] {
            let e = Config::parse(text, &env).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn yaml_syntax_error_has_a_line() {
        let e = Config::parse("listen: [1,\n  rules_dir: x\n", &env).unwrap_err();
        assert!(e.contains("line"), "{e}");
    }
}
