//! The connection cache: the proxy's fast path. Bounded in bytes (`store.cache_size`), least
//! recently used out first, sharded (no global lock on the request path); entries older than
//! `store.cache_ttl` are read again, so a change made by another process is seen within it.
//!
//! Owns what is cached and for how long; reading and opening rows is [`super::Connections`]'.

use std::sync::Arc;

use super::{Connection, Connections, Keyring};
use crate::store::Store;

/// A cached connection and when it was read.
#[derive(Clone)]
pub(super) struct Cached(Arc<Connection>, std::time::Instant);

/// What an entry costs, in bytes of resident memory: its strings and a fixed overhead, so that
/// `store.cache_size` bounds what the cache really holds. The overhead is measured: at 512 a
/// 16 MiB cache full of 100k spread connections held 23.4 MiB more RSS than an empty one
/// (`bench/scale.py`, 16 vs 32 MiB); the entry, its `Arc`, moka's node and the allocator's
/// rounding come to about 260 bytes more.
#[allow(clippy::ptr_arg)] // moka's weigher signature takes the key as stored
fn weight(id: &String, c: &Cached) -> u32 {
    let c = &c.0;
    let secrets = [&c.access_token, &c.refresh_token]
        .iter()
        .map(|s| s.as_ref().map_or(0, |s| s.expose().len()))
        .sum::<usize>();
    let size = 2 * id.len() + secrets + c.scopes.len() + c.metadata.to_string().len() + 768;
    u32::try_from(size).unwrap_or(u32::MAX)
}

impl Connections {
    pub fn new(
        store: Arc<dyn Store>,
        keys: Keyring,
        cache_ttl: std::time::Duration,
    ) -> Connections {
        let bytes = crate::config::StoreConfig::default().cache_size.0 as u64;
        Connections::with_cache(store, keys, cache_ttl, bytes)
    }

    /// `cache_bytes`: the cache's bound (`store.cache_size`).
    pub fn with_cache(
        store: Arc<dyn Store>,
        keys: Keyring,
        cache_ttl: std::time::Duration,
        cache_bytes: u64,
    ) -> Connections {
        Connections {
            store,
            keys,
            cache: moka::sync::Cache::builder()
                .max_capacity(cache_bytes)
                .weigher(weight)
                .build(),
            cache_ttl,
            metrics: Arc::default(),
        }
    }

    /// The cached connection however old, trusted for another `cache_ttl`: used when the store
    /// cannot be reached, so requests with valid tokens keep flowing through an outage and
    /// only one request per TTL pays for finding the store down.
    pub fn cached_stale(&self, id: &str) -> Option<Arc<Connection>> {
        let Cached(conn, _) = self.cache.get(id)?;
        self.cache.insert(
            id.to_string(),
            Cached(conn.clone(), std::time::Instant::now()),
        );
        Some(conn)
    }

    /// The cached connection if it was read within `cache_ttl`; the proxy's fast path (no I/O).
    pub fn cached(&self, id: &str) -> Option<Arc<Connection>> {
        let Cached(conn, at) = self.cache.get(id)?;
        (at.elapsed() < self.cache_ttl).then_some(conn)
    }

    pub(super) fn remember(&self, conn: Connection) -> Arc<Connection> {
        use moka::ops::compute::Op;
        let conn = Arc::new(conn);
        let mut kept = conn.clone();
        // Never replace a newer version of the same row with an older one (two readers
        // racing; the entry's lock serializes them); a row deleted and created again starts
        // over, so it always replaces.
        self.cache.entry(conn.id.clone()).and_compute_with(|have| {
            match have.map(|e| e.into_value()) {
                Some(Cached(have, at))
                    if have.created_at == conn.created_at && have.version > conn.version =>
                {
                    kept = have.clone();
                    Op::Put(Cached(have, at))
                }
                _ => Op::Put(Cached(conn.clone(), std::time::Instant::now())),
            }
        });
        kept
    }

    pub(super) fn forget(&self, id: &str) {
        self.cache.invalidate(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ConnectionRow;

    /// Regression (issue 14): the cache grew with every connection ever seen.
    #[tokio::test]
    async fn the_cache_stays_within_its_byte_bound_and_keeps_recent_connections() {
        let (_dir, plenty) = crate::connections::tests::connections().await;
        let bound = 64 * 1024;
        let c = Connections::with_cache(plenty.store.clone(), plenty.keys, plenty.cache_ttl, bound);
        let open = |i: usize| {
            let mut row = ConnectionRow::new(&format!("conn_{i}"), "slack", 0);
            row.version = 1;
            c.open(&row).unwrap()
        };
        for i in 0..2_000 {
            c.remember(open(i));
        }
        c.cache.run_pending_tasks();
        assert!(
            c.cache.weighted_size() <= bound,
            "{} bytes",
            c.cache.weighted_size()
        );
        assert!(c.cache.entry_count() < 2_000);
        c.remember(open(5_000));
        assert!(c.cached("conn_5000").is_some(), "the newest is kept");
    }
}
