//! Rate-limit memory, checked between the caller check and the connection phase: a provider's
//! 429 (or a rule's `retry` verdict with a `retry_after`) starts a cooldown for the connection,
//! or for the whole integration when its rule file says `ratelimit: {scope: integration}`, and
//! requests during it get grantd's own 429 without reaching the provider (or its token endpoint).
//!
//! Owns the in-process table, read on every request without I/O, and its sharing through the
//! store: a cooldown started here is written at once, off the request path, and every
//! `ratelimit.sync_interval` the running ones are read back, so replicas learn each other's
//! (and a replica that has not yet learned one learns it at its own next 429). It must not build
//! responses: a request turned away is a `Failure::RateLimited` for `respond`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, RETRY_AFTER};
use http::StatusCode;

use super::route::Target;
use super::Proxy;
use crate::rules::file::RateLimitScope;
use crate::store::Cooldown;
use crate::time::now_ms;

/// The running cooldowns this process knows, by integration.
pub(super) struct Cooldowns {
    table: RwLock<HashMap<String, Until>>,
    max: Duration,
}

/// When an integration may be called again: by anyone, and per connection.
#[derive(Default)]
struct Until {
    integration: i64,
    connections: HashMap<String, i64>,
}

impl Cooldowns {
    pub(super) fn new(max: Duration) -> Cooldowns {
        Cooldowns {
            table: RwLock::new(HashMap::new()),
            max,
        }
    }

    /// When `integration` may be called again for `connection` (`None`: the whole
    /// integration), if not at `now`.
    fn until(&self, integration: &str, connection: Option<&str>, now: i64) -> Option<i64> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let until = table.get(integration)?;
        let at = match connection {
            None => until.integration,
            Some(id) => *until.connections.get(id)?,
        };
        (at > now).then_some(at)
    }

    /// Records a cooldown (the later end wins); true when none was running for that key.
    fn learn(&self, c: &Cooldown, now: i64) -> bool {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let until = table.entry(c.integration.clone()).or_default();
        let slot = match &c.connection {
            None => &mut until.integration,
            Some(id) => until.connections.entry(id.clone()).or_default(),
        };
        let new = *slot <= now;
        *slot = (*slot).max(c.until);
        new
    }

    /// Forgets ended cooldowns, so the table holds only the running ones.
    fn sweep(&self, now: i64) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        table.retain(|_, until| {
            until.connections.retain(|_, at| *at > now);
            until.integration > now || !until.connections.is_empty()
        });
    }
}

/// Seconds the provider asked for, when a response tells the app to back off: a 429, or a
/// rule's `retry` verdict that set `Retry-After`.
fn asked_to_wait(status: StatusCode, headers: &HeaderMap) -> Option<u64> {
    let retry_verdict = headers
        .get(super::respond::GRANTD_ACTION)
        .is_some_and(|a| a == "retry")
        && headers.contains_key(RETRY_AFTER);
    (status == StatusCode::TOO_MANY_REQUESTS || retry_verdict)
        .then(|| crate::retry_after::seconds(headers, SystemTime::now()))
}

impl Proxy {
    /// The key this integration's cooldowns use for a request: `Some(None)` for the whole
    /// integration, `Some(Some(id))` for a connection, `None` when nothing is remembered (off
    /// in the rule file, or a per-connection limit and a request that names no connection).
    fn cooldown_key<'a>(
        target: &Target<'_>,
        connection: Option<&'a str>,
    ) -> Option<Option<&'a str>> {
        let spec = target.route.rules.ratelimit;
        match (spec.remember, spec.scope) {
            (false, _) => None,
            (true, RateLimitScope::Integration) => Some(None),
            (true, RateLimitScope::Connection) => connection.map(Some),
        }
    }

    /// The running cooldown that turns this request away: its scope and end.
    pub(super) fn cooling_down(
        &self,
        target: &Target<'_>,
        connection: Option<&str>,
    ) -> Option<(RateLimitScope, i64)> {
        let key = Self::cooldown_key(target, connection)?;
        let until = self.cooldowns.until(target.name, key, now_ms())?;
        let scope = target.route.rules.ratelimit.scope;
        self.metrics
            .runtime
            .ratelimited(target.name, scope.as_str());
        Some((scope, until))
    }

    /// After the provider answered: starts a cooldown when it asked to wait (capped at
    /// `ratelimit.max_cooldown`) and writes it to the store for the other replicas.
    pub(super) fn remember(
        &self,
        target: &Target<'_>,
        connection: Option<&str>,
        status: StatusCode,
        headers: &HeaderMap,
    ) {
        let Some(key) = Self::cooldown_key(target, connection) else {
            return;
        };
        let Some(secs) = asked_to_wait(status, headers) else {
            return;
        };
        let now = now_ms();
        let wait = Duration::from_secs(secs).min(self.cooldowns.max);
        let cooldown = Cooldown {
            integration: target.name.to_string(),
            connection: key.map(str::to_string),
            until: now + wait.as_millis() as i64,
        };
        if self.cooldowns.learn(&cooldown, now) {
            let scope = target.route.rules.ratelimit.scope.as_str();
            self.metrics.runtime.cooldown_started(target.name, scope);
            tracing::info!(
                integration = target.name,
                scope,
                seconds = wait.as_secs(),
                "provider rate limit: answering locally until it ends"
            );
        }
        if let Some(store) = self.store.clone() {
            tokio::spawn(async move {
                if let Err(e) = store.put_cooldown(&cooldown).await {
                    tracing::warn!(error = %e, "could not share a rate-limit cooldown through the store");
                }
            });
        }
    }

    /// Learns the other replicas' cooldowns every `ratelimit.sync_interval`, forever. Without
    /// a store there is no one to learn from: it only forgets ended cooldowns.
    pub async fn sync_cooldowns(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = now_ms();
            self.cooldowns.sweep(now);
            let Some(store) = &self.store else { continue };
            match store.cooldowns(now).await {
                Ok(running) => running.iter().for_each(|c| {
                    self.cooldowns.learn(c, now);
                }),
                Err(e) => tracing::debug!(error = %e, "could not read shared rate-limit cooldowns"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cooldown(connection: Option<&str>, until: i64) -> Cooldown {
        Cooldown {
            integration: "lab".into(),
            connection: connection.map(str::to_string),
            until,
        }
    }

    #[test]
    fn a_cooldown_holds_its_key_only_until_it_ends() {
        let c = Cooldowns::new(Duration::from_secs(900));
        assert!(c.learn(&cooldown(Some("a"), 2_000), 1_000));
        assert!(
            !c.learn(&cooldown(Some("a"), 1_500), 1_000),
            "running already"
        );
        assert_eq!(c.until("lab", Some("a"), 1_000), Some(2_000));
        assert_eq!(c.until("lab", Some("b"), 1_000), None);
        assert_eq!(c.until("lab", None, 1_000), None);
        assert_eq!(c.until("lab", Some("a"), 2_000), None);
        c.sweep(2_000);
        assert!(c.table.read().unwrap().is_empty());
    }

    #[test]
    fn a_429_or_a_retry_verdict_with_retry_after_asks_to_wait() {
        let mut h = HeaderMap::new();
        assert_eq!(asked_to_wait(StatusCode::TOO_MANY_REQUESTS, &h), Some(60));
        assert_eq!(asked_to_wait(StatusCode::SERVICE_UNAVAILABLE, &h), None);
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(asked_to_wait(StatusCode::SERVICE_UNAVAILABLE, &h), None);
        h.insert(
            super::super::respond::GRANTD_ACTION,
            "retry".parse().unwrap(),
        );
        assert_eq!(asked_to_wait(StatusCode::SERVICE_UNAVAILABLE, &h), Some(7));
    }
}
