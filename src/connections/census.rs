//! The periodic reading of the store behind the gauges: connections by integration and
//! status, and the callback backlog with the age of its oldest event. One task on one
//! interval (`store.gauge_interval`), so a scrape never waits for the store and a fleet's
//! replicas each read two aggregates, not a row per connection.
//!
//! Owns only when to read and what to set; the statements are the store's, the gauges
//! `telemetry`'s.

use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;
use crate::telemetry::Metrics;
use crate::time::now_ms;

/// Reads the counts now and then every `every`, until the runtime stops.
pub async fn run(store: Arc<dyn Store>, metrics: Arc<Metrics>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sample(&*store, &metrics).await;
    }
}

/// One reading. A store that cannot answer leaves the gauges as they were (and readiness
/// says why).
pub async fn sample(store: &dyn Store, metrics: &Metrics) {
    match store.counts().await {
        Ok(rows) => {
            let rows: Vec<(String, &str, i64)> = rows
                .into_iter()
                .map(|(integration, status, n)| (integration, status.as_str(), n))
                .collect();
            metrics.set_connection_counts(&rows);
        }
        Err(e) => tracing::warn!(error = %e, "cannot count connections for the metrics"),
    }
    match store.backlog().await {
        Ok((pending, oldest)) => {
            let age = oldest.map_or(0.0, |at| (now_ms() - at) as f64 / 1000.0);
            metrics.callbacks().set_backlog(pending, age);
        }
        Err(e) => tracing::warn!(error = %e, "cannot count the callback backlog for the metrics"),
    }
}
