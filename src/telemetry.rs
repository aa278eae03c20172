//! Logging setup and Prometheus metrics.
//!
//! Owns the tracing subscriber and the metric registry. Counters are created per integration
//! and rule at startup so the request path only increments an atomic. Nothing here may record
//! a header value, a query string or a body: those can carry secrets.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::config::LogFormat;

type Labels = Vec<(String, String)>;

/// Installs the global subscriber; `GRANTD_LOG` (env-filter syntax) sets the level.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRANTD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests start several servers in one process) is harmless.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The metric families; see `/_grantd/metrics`.
pub struct Metrics {
    registry: Registry,
    responses: Family<Labels, Counter>,
    verdicts: Family<Labels, Counter>,
    rule_errors: Family<Labels, Counter>,
    oversize: Family<Labels, Counter>,
    pub runtime: RuntimeMetrics,
}

/// Pre-resolved counters for one integration.
#[derive(Clone)]
pub struct IntegrationMetrics {
    pub passed: Counter,
    pub rewritten: Counter,
    pub rule_error: Counter,
    pub upstream_error: Counter,
    pub upstream_timeout: Counter,
    pub oversize: Counter,
    integration: String,
    verdicts: Family<Labels, Counter>,
    rule_errors: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("grantd");
        let responses = Family::default();
        let verdicts = Family::default();
        let rule_errors = Family::default();
        let oversize = Family::default();
        registry.register(
            "responses",
            "Proxied responses by integration and result",
            responses.clone(),
        );
        registry.register(
            "rule_verdicts",
            "Responses rewritten, by integration, rule and action",
            verdicts.clone(),
        );
        registry.register(
            "rule_errors",
            "Rule evaluations that failed (response passed through)",
            rule_errors.clone(),
        );
        registry.register(
            "oversize_passthrough",
            "Responses a rule matched but that exceeded max_buffered_body and passed through unevaluated",
            oversize.clone(),
        );
        let runtime = RuntimeMetrics::register(&mut registry);
        Metrics {
            registry,
            responses,
            verdicts,
            rule_errors,
            oversize,
            runtime,
        }
    }
}

impl Metrics {
    pub fn integration(&self, name: &str) -> IntegrationMetrics {
        let result = |r: &str| {
            self.responses
                .get_or_create(&vec![
                    ("integration".into(), name.into()),
                    ("result".into(), r.into()),
                ])
                .clone()
        };
        IntegrationMetrics {
            passed: result("passed"),
            rewritten: result("rewritten"),
            rule_error: result("rule_error"),
            upstream_error: result("upstream_error"),
            upstream_timeout: result("upstream_timeout"),
            oversize: self
                .oversize
                .get_or_create(&vec![("integration".into(), name.into())])
                .clone(),
            integration: name.into(),
            verdicts: self.verdicts.clone(),
            rule_errors: self.rule_errors.clone(),
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl IntegrationMetrics {
    pub fn verdict(&self, rule: &str, action: &str) {
        self.verdicts
            .get_or_create(&vec![
                ("integration".into(), self.integration.clone()),
                ("rule".into(), rule.into()),
                ("action".into(), action.into()),
            ])
            .inc();
    }

    pub fn rule_failed(&self, rule: &str) {
        self.rule_errors
            .get_or_create(&vec![
                ("integration".into(), self.integration.clone()),
                ("rule".into(), rule.into()),
            ])
            .inc();
    }
}

/// Hot reload and rate-limit memory (`reload`, `proxy::ratelimit`).
#[derive(Clone)]
pub struct RuntimeMetrics {
    pub reloads: Counter,
    pub reload_errors: Counter,
    ratelimited: Family<Labels, Counter>,
    cooldowns: Family<Labels, Counter>,
}

impl RuntimeMetrics {
    fn register(registry: &mut Registry) -> RuntimeMetrics {
        let m = RuntimeMetrics {
            reloads: Counter::default(),
            reload_errors: Counter::default(),
            ratelimited: Family::default(),
            cooldowns: Family::default(),
        };
        registry.register(
            "rules_reloads",
            "Rule reloads applied (SIGHUP or a change in rules_dir)",
            m.reloads.clone(),
        );
        registry.register(
            "rules_reload_errors",
            "Rule reloads rejected; the previous rules stay in force",
            m.reload_errors.clone(),
        );
        registry.register(
            "ratelimited",
            "Requests answered with grantd's own 429 during a remembered cooldown, by scope",
            m.ratelimited.clone(),
        );
        registry.register(
            "ratelimit_cooldowns",
            "Cooldowns started after a provider's 429 (or a rule's retry), by scope",
            m.cooldowns.clone(),
        );
        m
    }

    /// `scope` is `connection` or `integration`.
    pub fn ratelimited(&self, integration: &str, scope: &str) {
        self.ratelimited
            .get_or_create(&scoped(integration, scope))
            .inc();
    }

    pub fn cooldown_started(&self, integration: &str, scope: &str) {
        self.cooldowns
            .get_or_create(&scoped(integration, scope))
            .inc();
    }
}

fn scoped(integration: &str, scope: &str) -> Labels {
    vec![
        ("integration".into(), integration.into()),
        ("scope".into(), scope.into()),
    ]
}
