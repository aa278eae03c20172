//! The proactive loop: renews connections before any request finds them expired, draining
//! due work as fast as each integration's cap allows.
//!
//! Owns when a due connection is started; the renewal itself is [`super::refresh`]'s.

use std::sync::Arc;

use super::refresh::{jitter, Refresher};
use super::timing;
use crate::store::ConnectionRow;
use crate::time::now_ms;

impl Refresher {
    /// The proactive loop: refresh connections that will expire within the window, before
    /// any request sees an expired token. Runs until the process stops. Due connections are
    /// drained as fast as each integration's cap allows: each gets a task that waits for the
    /// cap (none is skipped), and a scan that found a full page of new work rescans at once.
    pub async fn run_proactive(self: Arc<Self>) {
        const PAGE: u32 = 500;
        loop {
            let now = now_ms();
            let horizon = now + self.config.window_max.as_millis() as i64;
            let started = match self.grants_due(now, horizon, PAGE).await {
                Some(rows) => rows.into_iter().filter(|r| self.start_due(r, now)).count(),
                None => 0,
            };
            if started < PAGE as usize {
                tokio::time::sleep(self.config.scan_interval).await;
            }
        }
    }

    async fn grants_due(&self, now: i64, horizon: i64, page: u32) -> Option<Vec<ConnectionRow>> {
        match self.connections.store.due(now, horizon, page).await {
            Ok(rows) => Some(rows),
            Err(e) => {
                tracing::warn!(error = %e, "proactive refresh scan failed");
                None
            }
        }
    }

    /// Starts renewing `row` if its time within the window has come (each connection gets its
    /// own point, so a fleet created at once does not refresh at once) and it is not already
    /// on its way. Returns whether it started.
    fn start_due(self: &Arc<Self>, row: &ConnectionRow, now: i64) -> bool {
        let configured = (
            self.config.window_min.as_millis() as i64,
            self.config.window_max.as_millis() as i64,
        );
        let (min, max) = timing::window(configured, row.updated_at, row.expires_at);
        let threshold = min + jitter(max - min + 1);
        if row.expires_at.is_none_or(|e| e - now > threshold) {
            return false;
        }
        // At most `cap` proactive attempts per integration at once: waiting here, not taking a
        // lease for every due row while the fleet is at its cap.
        let Some(budget) = self.proactive.get(&row.integration).cloned() else {
            return false;
        };
        if !self
            .queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(row.id.clone())
        {
            return false;
        }
        let (me, id, version) = (self.clone(), row.id.clone(), row.version);
        self.runtime.spawn(async move {
            if let Ok(_permit) = budget.acquire_owned().await {
                let _ = me.refresh_with(&id, version, false, false).await;
            }
            me.queued
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
        true
    }
}
