//! The metrics of everything around a request: upstream and rule timings, refreshes and
//! leases, connection statuses, callbacks and the connect flow.
//!
//! Owns their families, buckets and fixed label words. A series is created on first use (an
//! integration that never refreshes exports no refresh series), then reached through a handle
//! resolved once: the request path touches only the histogram. Label values are integration
//! names from the config and the fixed words below, nothing from a request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Labels;

/// Seconds: a provider's answer (an API call or a token call), 5 ms to 30 s.
const NETWORK: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Seconds: waiting for another refresher's lease, mostly nothing, at worst a token timeout.
const WAIT: &[f64] = &[0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Seconds: one rule evaluation, 50 µs up to past the default budget.
const EVALUATION: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

// A family's constructor is a plain `fn`, so each bucket set has its own.
fn network() -> Histogram {
    Histogram::new(NETWORK.iter().copied())
}
fn wait() -> Histogram {
    Histogram::new(WAIT.iter().copied())
}
fn evaluation() -> Histogram {
    Histogram::new(EVALUATION.iter().copied())
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One series of a family, created there on first use and then kept.
pub struct Lazy<M> {
    cell: OnceLock<M>,
    make: Box<dyn Fn() -> M + Send + Sync>,
}

impl<M: Clone + 'static> Lazy<M> {
    fn of<C>(family: &Family<Labels, M, C>, labels: Labels) -> Lazy<M>
    where
        C: prometheus_client::metrics::family::MetricConstructor<M> + Clone + Send + Sync + 'static,
        M: Send + Sync,
    {
        let family = family.clone();
        Lazy {
            cell: OnceLock::new(),
            make: Box::new(move || family.get_or_create(&labels).clone()),
        }
    }

    pub fn get(&self) -> &M {
        self.cell.get_or_init(|| (self.make)())
    }
}

/// How one token-endpoint call (a refresh or a mint) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    Ok,
    NeedsReauth,
    ConfigError,
    Transient,
}

impl RefreshOutcome {
    const ALL: [&'static str; 4] = ["ok", "needs_reauth", "config_error", "transient"];
}

/// How a step of the connect flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// An authorization request was recorded and its URL handed out.
    Started,
    /// The callback's code was exchanged and the tokens stored.
    Connected,
    /// The provider (or the user) did not grant access.
    Declined,
    /// The callback came after the request's `state` expired.
    Expired,
    /// The callback's `state` was missing, unknown, used, or from another browser.
    Invalid,
    /// The token endpoint refused the code, or the tokens could not be stored.
    ExchangeFailed,
}

impl ConnectOutcome {
    const ALL: [&'static str; 6] = [
        "started",
        "connected",
        "declined",
        "expired",
        "invalid",
        "exchange_failed",
    ];
}

/// The connection statuses, as the store spells them.
const STATUSES: [&str; 3] = ["active", "needs_reauth", "config_error"];

fn status_index(status: &str) -> Option<usize> {
    STATUSES.iter().position(|s| *s == status)
}

/// The families of this file, registered in the one registry.
pub(super) struct Families {
    upstream: Histograms,
    evaluation: Histograms,
    refresh: Histograms,
    lease_wait: Histograms,
    connections: Family<Labels, Gauge>,
    transitions: Family<Labels, Counter>,
    connect: Family<Labels, Counter>,
    deliveries: Family<Labels, Counter>,
    backlog: Gauge,
    oldest_pending: Gauge<f64, AtomicU64>,
}

impl Families {
    pub(super) fn register(registry: &mut Registry) -> Families {
        let f = Families {
            upstream: Family::new_with_constructor(network),
            evaluation: Family::new_with_constructor(evaluation),
            refresh: Family::new_with_constructor(network),
            lease_wait: Family::new_with_constructor(wait),
            connections: Family::default(),
            transitions: Family::default(),
            connect: Family::default(),
            deliveries: Family::default(),
            backlog: Gauge::default(),
            oldest_pending: Gauge::default(),
        };
        let r = registry;
        r.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response head, by integration",
            f.upstream.clone(),
        );
        r.register(
            "rule_evaluation_seconds",
            "Time to evaluate the rules on one response, by integration",
            f.evaluation.clone(),
        );
        r.register(
            "refresh_duration_seconds",
            "Token-endpoint calls (refresh or mint) by integration and outcome",
            f.refresh.clone(),
        );
        r.register(
            "lease_wait_seconds",
            "Time a refresh waited for the single-flight lease, by integration",
            f.lease_wait.clone(),
        );
        r.register(
            "connections",
            "Connections by integration and status, as last counted in the store",
            f.connections.clone(),
        );
        r.register(
            "connection_transitions",
            "Connections entering a status (active: reactivated), by integration",
            f.transitions.clone(),
        );
        r.register(
            "connect_outcomes",
            "Connect-flow steps by integration and outcome",
            f.connect.clone(),
        );
        r.register(
            "callback_deliveries",
            "Callback delivery attempts by outcome (failed: not delivered by that attempt)",
            f.deliveries.clone(),
        );
        r.register(
            "callback_backlog",
            "Callback deliveries not yet delivered, as last counted in the store",
            f.backlog.clone(),
        );
        r.register(
            "callback_oldest_pending_age_seconds",
            "Age of the oldest undelivered callback event (0 when none)",
            f.oldest_pending.clone(),
        );
        f
    }

    /// The request path's two histograms for `integration`.
    pub(super) fn timings(&self, integration: &str) -> Timings {
        let at = labels(&[("integration", integration)]);
        Timings {
            upstream: Arc::new(Lazy::of(&self.upstream, at.clone())),
            evaluation: Arc::new(Lazy::of(&self.evaluation, at)),
        }
    }

    pub(super) fn lifecycle(&self, integration: &str) -> Lifecycle {
        let with = |key: &str, value: &str| labels(&[("integration", integration), (key, value)]);
        Lifecycle {
            refresh: RefreshOutcome::ALL.map(|o| Lazy::of(&self.refresh, with("outcome", o))),
            lease_wait: Lazy::of(&self.lease_wait, labels(&[("integration", integration)])),
            entered: STATUSES.map(|s| Lazy::of(&self.transitions, with("status", s))),
            counted: STATUSES.map(|s| Lazy::of(&self.connections, with("status", s))),
            counted_ever: AtomicBool::new(false),
            connect: ConnectOutcome::ALL.map(|o| Lazy::of(&self.connect, with("outcome", o))),
        }
    }

    /// Connect outcomes whose integration is not known (the `state` was unknown): counted
    /// with an empty integration label.
    pub(super) fn connect_unattributed(&self, outcome: ConnectOutcome) {
        let labels = labels(&[
            ("integration", ""),
            ("outcome", ConnectOutcome::ALL[outcome as usize]),
        ]);
        self.connect.get_or_create(&labels).inc();
    }

    /// Creates both delivery outcomes' series (a rate over them is defined before any delivery).
    pub(super) fn callbacks(&self) -> CallbackMetrics {
        let outcome = |o: &str| {
            self.deliveries
                .get_or_create(&labels(&[("outcome", o)]))
                .clone()
        };
        CallbackMetrics {
            delivered: outcome("delivered"),
            failed: outcome("failed"),
            backlog: self.backlog.clone(),
            oldest_pending: self.oldest_pending.clone(),
        }
    }
}

/// The request path's histograms for one integration (cheap to clone).
#[derive(Clone)]
pub struct Timings {
    upstream: Arc<Lazy<Histogram>>,
    evaluation: Arc<Lazy<Histogram>>,
}

impl Timings {
    /// Request sent upstream → response head received.
    pub fn upstream(&self, seconds: f64) {
        self.upstream.get().observe(seconds);
    }

    /// One evaluation of the rules on a buffered response.
    pub fn evaluation(&self, seconds: f64) {
        self.evaluation.get().observe(seconds);
    }
}

/// One integration's metrics outside the request path.
pub struct Lifecycle {
    refresh: [Lazy<Histogram>; 4],
    lease_wait: Lazy<Histogram>,
    entered: [Lazy<Counter>; 3],
    counted: [Lazy<Gauge>; 3],
    /// Whether the store ever counted a connection here: from then on every status is set
    /// (to 0 when absent), so a status that empties reads 0, not its last count.
    counted_ever: AtomicBool,
    connect: [Lazy<Counter>; 6],
}

impl Lifecycle {
    /// One token-endpoint call and how it ended.
    pub fn refreshed(&self, outcome: RefreshOutcome, seconds: f64) {
        self.refresh[outcome as usize].get().observe(seconds);
    }

    pub fn lease_waited(&self, seconds: f64) {
        self.lease_wait.get().observe(seconds);
    }

    /// A connection entered `status` (`active`, `needs_reauth`, `config_error`).
    pub fn entered(&self, status: &str) {
        if let Some(i) = status_index(status) {
            self.entered[i].get().inc();
        }
    }

    pub fn connect(&self, outcome: ConnectOutcome) {
        self.connect[outcome as usize].get().inc();
    }

    /// The store's count of this integration's connections by status.
    fn set_counts(&self, counts: &HashMap<&str, i64>) {
        if counts.is_empty() && !self.counted_ever.load(Ordering::Relaxed) {
            return;
        }
        self.counted_ever.store(true, Ordering::Relaxed);
        for (i, status) in STATUSES.iter().enumerate() {
            self.counted[i]
                .get()
                .set(counts.get(status).copied().unwrap_or(0));
        }
    }
}

/// Sets every known integration's connection gauges from `(integration, status, count)` rows;
/// rows of integrations not configured (any more) are left out.
pub(super) fn set_connection_counts(
    lifecycles: &HashMap<String, Arc<Lifecycle>>,
    rows: &[(String, &str, i64)],
) {
    let mut by: HashMap<&str, HashMap<&str, i64>> = HashMap::new();
    for (integration, status, n) in rows {
        by.entry(integration.as_str())
            .or_default()
            .insert(status, *n);
    }
    let none = HashMap::new();
    for (name, lifecycle) in lifecycles {
        lifecycle.set_counts(by.get(name.as_str()).unwrap_or(&none));
    }
}

/// The callback worker's counters and the backlog gauges.
#[derive(Clone)]
pub struct CallbackMetrics {
    pub delivered: Counter,
    pub failed: Counter,
    backlog: Gauge,
    oldest_pending: Gauge<f64, AtomicU64>,
}

impl CallbackMetrics {
    /// `pending` deliveries, the oldest created `oldest_age_seconds` ago (0 when none).
    pub fn set_backlog(&self, pending: i64, oldest_age_seconds: f64) {
        self.backlog.set(pending);
        self.oldest_pending.set(oldest_age_seconds.max(0.0));
    }
}
