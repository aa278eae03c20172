//! Logging setup and Prometheus metrics.
//!
//! Owns the tracing subscriber and the metric registry. Counters are created per integration
//! and rule at startup so the request path only increments an atomic; the metrics of the other
//! parts (refreshes, statuses, callbacks, connect) are in [`lifecycle`]. Nothing here may
//! record a header value, a query string or a body: those can carry secrets.

mod lifecycle;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use tracing_subscriber::Layer;

use crate::config::LogFormat;
pub use lifecycle::{CallbackMetrics, ConnectOutcome, Lifecycle, RefreshOutcome, Timings};

/// The target of every span grantd exports (see `traces`). Logs never show these spans, and
/// the exporter sees nothing else (no log event, no library's span).
pub const TRACE_TARGET: &str = "grantd::traces";

/// A layer under the log lines, on the bare registry (the OpenTelemetry one).
pub type TraceLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

type Labels = Vec<(String, String)>;

/// Installs the global subscriber; `GRANTD_LOG` (env-filter syntax) sets the level. `traces`
/// is the OpenTelemetry layer when traces are on (see `traces`); its spans never reach the
/// log lines, so logs read the same either way.
pub fn init_logging(format: LogFormat, traces: Option<TraceLayer>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // A second init (tests start several servers in one process) is harmless. Without traces
    // there is no layer at all: an empty one would still have every span made and stored.
    let _ = match traces {
        Some(traces) => tracing_subscriber::registry()
            .with(traces)
            .with(log_lines(format))
            .try_init(),
        None => tracing_subscriber::registry()
            .with(log_lines(format))
            .try_init(),
    };
}

/// Log lines to stderr, at the level `GRANTD_LOG` sets, without the spans that are traces.
fn log_lines<S>(format: LogFormat) -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{filter_fn, FilterExt as _};
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRANTD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let not_a_trace_span = filter_fn(|meta| !(meta.is_span() && meta.target() == TRACE_TARGET));
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Json => lines.json().boxed(),
        LogFormat::Text => lines.boxed(),
    };
    lines.with_filter(filter.and(not_a_trace_span))
}

/// The metric families; see `/_grantd/metrics`.
pub struct Metrics {
    registry: Registry,
    responses: Family<Labels, Counter>,
    verdicts: Family<Labels, Counter>,
    rule_errors: Family<Labels, Counter>,
    oversize: Family<Labels, Counter>,
    parts: lifecycle::Families,
    /// Each integration's [`Lifecycle`], made when its route is (see [`Metrics::integration`]):
    /// only configured integrations get series.
    lifecycles: RwLock<HashMap<String, Arc<Lifecycle>>>,
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
    pub timings: Timings,
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
        let parts = lifecycle::Families::register(&mut registry);
        let runtime = RuntimeMetrics::register(&mut registry);
        Metrics {
            registry,
            responses,
            verdicts,
            rule_errors,
            oversize,
            parts,
            lifecycles: RwLock::default(),
            runtime,
        }
    }
}

impl Metrics {
    /// The request path's handles for `name`; also makes `name` known to [`Metrics::lifecycle`].
    pub fn integration(&self, name: &str) -> IntegrationMetrics {
        self.lifecycles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(self.parts.lifecycle(name)));
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
            timings: self.parts.timings(name),
            integration: name.into(),
            verdicts: self.verdicts.clone(),
            rule_errors: self.rule_errors.clone(),
        }
    }

    /// The metrics of a configured integration outside the request path; `None` for a name
    /// no route has (a stored connection of a removed integration): its label would be unbounded.
    pub fn lifecycle(&self, integration: &str) -> Option<Arc<Lifecycle>> {
        let lifecycles = self.lifecycles.read().unwrap_or_else(|p| p.into_inner());
        lifecycles.get(integration).cloned()
    }

    /// A connect-flow outcome; `integration` is `None` when the callback's `state` said nothing.
    pub fn connect(&self, integration: Option<&str>, outcome: ConnectOutcome) {
        match integration.and_then(|i| self.lifecycle(i)) {
            Some(l) => l.connect(outcome),
            None => self.parts.connect_unattributed(outcome),
        }
    }

    /// Sets the connection gauges from the store's `(integration, status, count)` rows.
    pub fn set_connection_counts(&self, rows: &[(String, &str, i64)]) {
        let lifecycles = self.lifecycles.read().unwrap_or_else(|p| p.into_inner());
        lifecycle::set_connection_counts(&lifecycles, rows);
    }

    pub fn callbacks(&self) -> CallbackMetrics {
        self.parts.callbacks()
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
