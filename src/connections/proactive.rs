//! The proactive loop: renews connections before any request finds them expired, draining
//! due work as fast as each integration's cap allows, and splitting it between replicas.
//!
//! Owns when a due connection is started; the renewal itself is [`super::refresh`]'s. Work is
//! *claimed* (leased in one statement per integration, `FOR UPDATE SKIP LOCKED` on PostgreSQL)
//! before it is started, so replicas never start the same connection and never exceed the
//! fleet-wide cap; a finished refresh wakes the loop to claim the next.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::refresh::{jitter, Refresher};
use super::timing;
use crate::store::{Claim, ConnectionRow};
use crate::time::now_ms;

/// Due connections found by the last scan and not claimed yet, per integration, soonest first.
type Pending = BTreeMap<String, VecDeque<(String, i64)>>;

impl Refresher {
    /// The proactive loop: refresh connections that will expire within the window, before
    /// any request sees an expired token. Runs until the process stops. A scan finds due rows;
    /// they are claimed as local permits and the fleet-wide cap allow; a scan that was full
    /// and yielded work is followed by another at once.
    pub async fn run_proactive(self: Arc<Self>) {
        const PAGE: u32 = 500;
        let interval = self.config.scan_interval.as_millis() as i64;
        let mut pending = Pending::new();
        let (mut scanned_at, mut full) = (i64::MIN / 2, false);
        loop {
            let now = now_ms();
            let idle = pending.values().all(VecDeque::is_empty);
            if now - scanned_at >= interval || (idle && full) {
                let rows = self.grants_due(now, PAGE).await.unwrap_or_default();
                full = rows.len() == PAGE as usize;
                scanned_at = now;
                pending = self.due_now(&rows, now);
            }
            let mut started = 0;
            for (integration, queue) in pending.iter_mut() {
                started += self.claim_and_start(integration, queue).await;
            }
            full &= started > 0;
            if pending.values().all(VecDeque::is_empty) {
                if !full {
                    let left = (scanned_at + interval - now_ms()).max(0) as u64;
                    tokio::time::sleep(Duration::from_millis(left)).await;
                }
            } else {
                // Waiting for a permit here, or for leases elsewhere in the fleet to end.
                let _ = tokio::time::timeout(self.config.lease_poll, self.freed.notified()).await;
            }
        }
    }

    async fn grants_due(&self, now: i64, page: u32) -> Option<Vec<ConnectionRow>> {
        let horizon = now + self.config.window_max.as_millis() as i64;
        match self.connections.store.due(now, horizon, page).await {
            Ok(rows) => Some(rows),
            Err(e) => {
                tracing::warn!(error = %e, "proactive refresh scan failed");
                None
            }
        }
    }

    /// The scanned rows whose time has come (each connection gets its own point within the
    /// window, so a fleet created at once does not refresh at once). A row being renewed holds
    /// its lease, so the scan has left it out already.
    fn due_now(&self, rows: &[ConnectionRow], now: i64) -> Pending {
        let configured = (
            self.config.window_min.as_millis() as i64,
            self.config.window_max.as_millis() as i64,
        );
        let mut pending = Pending::new();
        for row in rows {
            let (min, max) = timing::window(configured, row.updated_at, row.expires_at);
            let threshold = min + jitter(max - min + 1);
            let due = row.expires_at.is_some_and(|e| e - now <= threshold);
            if due && self.proactive.contains_key(&row.integration) {
                pending
                    .entry(row.integration.clone())
                    .or_default()
                    .push_back((row.id.clone(), row.version));
            }
        }
        pending
    }

    /// Claims as many of `queue` as this process's permits for the integration allow (the
    /// store bounds it by the fleet-wide cap) and starts each. Returns how many started.
    async fn claim_and_start(
        self: &Arc<Self>,
        integration: &str,
        queue: &mut VecDeque<(String, i64)>,
    ) -> usize {
        let budget = &self.proactive[integration];
        let (free, cap) = (
            budget.available_permits(),
            self.config.max_concurrent_per_integration,
        );
        // Claims are write transactions (an fsync on SQLite): while refreshes are running,
        // claim a quarter of the cap at a time rather than one row per finished refresh.
        let batch = (cap / 4).max(1).min(queue.len());
        if free == 0 || queue.is_empty() || free < batch {
            return 0;
        }
        let ids: Vec<String> = queue.iter().map(|(id, _)| id.clone()).collect();
        let (owner, now) = (self.lease_owner(), now_ms());
        let claim = Claim {
            integration,
            ids: &ids,
            owner: &owner,
            now,
            until: now + self.config.lease.as_millis() as i64,
            horizon: now + self.config.window_max.as_millis() as i64,
            cap,
            max: free,
        };
        let claimed = match self.connections.store.claim(&claim).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, integration, "proactive refresh claim failed");
                return 0;
            }
        };
        let mut started = 0;
        queue.retain(|(id, version)| {
            if !claimed.contains(id) {
                return true;
            }
            let Ok(permit) = budget.clone().try_acquire_owned() else {
                return true;
            };
            let (me, id, version, owner) = (self.clone(), id.clone(), *version, owner.clone());
            self.runtime.spawn(async move {
                let _ = me.refresh_with(&id, version, false, Some(owner)).await;
                drop(permit);
                me.freed.notify_one();
            });
            started += 1;
            false
        });
        started
    }
}
