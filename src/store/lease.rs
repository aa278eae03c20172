//! Refresh leases for both SQL stores: one refresher per connection across every process, and
//! at most `cap` live leases per integration fleet-wide (the limit on concurrent token calls).
//!
//! Owns the lease columns and the claim of due work. Must not decide *when* a connection is due
//! (the refresher's timing does) nor what a refresh writes. Expanded inside `sql_store!`, which
//! defines `Db`, `Pool` and `q` (placeholders).
//!
//! Counting live leases reads the partial index `connections_leased` (migration 0007): the
//! cost is the number of live leases, not the integration's size (a full count made each lease
//! cost O(connections) and the drain of 10k due rows at 100k connections fell to 46/s).

/// Defines `acquire_lease`, `release_lease` and `claim` for one driver.
macro_rules! lease_statements {
    () => {
        /// Live leases of `integration` other than `id`'s (none excluded when `id` is empty).
        const LIVE_LEASES: &str = "(SELECT COUNT(*) FROM connections c \
             WHERE c.integration = ? AND c.lease_owner IS NOT NULL AND c.lease_until >= ? \
             AND c.id != ?)";

        /// `(now, until)`: the lease is live until `until`; leases before `now` are expired.
        async fn acquire_lease(
            pool: &Pool,
            id: &str,
            owner: &str,
            (now, until): (i64, i64),
            cap: usize,
        ) -> Result<bool, StoreError> {
            let mut tx = pool
                .begin_with(<Db as Dialect>::BEGIN_WRITE)
                .await
                .map_err(db)?;
            let integration: Option<String> =
                sqlx::query_scalar(&q("SELECT integration FROM connections WHERE id = ?"))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
            let Some(integration) = integration else {
                return Ok(false);
            };
            // The dialect's lock (if any) keeps concurrent writers from both counting below
            // the cap (SQLite runs writers one at a time).
            lock_leases(&mut tx, &integration).await?;
            let n = sqlx::query(&q(&format!(
                "UPDATE connections SET lease_owner = ?, lease_until = ? \
                 WHERE id = ? AND (lease_owner IS NULL OR lease_until < ? OR lease_owner = ?) \
                 AND {LIVE_LEASES} < ?"
            )))
            .bind(owner)
            .bind(until)
            .bind(id)
            .bind(now)
            .bind(owner)
            .bind(&integration)
            .bind(now)
            .bind(id)
            .bind(cap as i64)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
            tx.commit().await.map_err(db)?;
            Ok(n > 0)
        }

        async fn lock_leases(tx: &mut Tx<'_>, integration: &str) -> Result<(), StoreError> {
            if let Some(lock) = <Db as Dialect>::LOCK_LEASES {
                sqlx::query(&q(lock))
                    .bind(integration)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
            }
            Ok(())
        }

        async fn release_lease(pool: &Pool, id: &str, owner: &str) -> Result<(), StoreError> {
            sqlx::query(&q(
                "UPDATE connections SET lease_owner = NULL, lease_until = NULL \
                 WHERE id = ? AND lease_owner = ?",
            ))
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await
            .map_err(db)?;
            Ok(())
        }

        /// See [`Claim`](crate::store::Claim); one transaction.
        async fn claim(pool: &Pool, c: &Claim<'_>) -> Result<Vec<String>, StoreError> {
            if c.ids.is_empty() || c.max == 0 {
                return Ok(Vec::new());
            }
            let mut tx = pool
                .begin_with(<Db as Dialect>::BEGIN_WRITE)
                .await
                .map_err(db)?;
            lock_leases(&mut tx, c.integration).await?;
            let live: i64 = sqlx::query_scalar(&q(&format!("SELECT {LIVE_LEASES}")))
                .bind(c.integration)
                .bind(c.now)
                .bind("")
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
            let room = (c.cap as i64 - live).clamp(0, c.max as i64);
            if room == 0 {
                return Ok(Vec::new());
            }
            let marks = vec!["?"; c.ids.len()].join(", ");
            let skip = <Db as Dialect>::SKIP_LOCKED;
            // `|| ''` and `+ 0` keep SQLite's planner on the primary key (the listed ids):
            // left free, it walked the integration's index, every row of it (56 ms a claim
            // at 100k rows, against 1.3 ms; the drain fell to 40/s).
            let statement = format!(
                "UPDATE connections SET lease_owner = ?, lease_until = ? WHERE id IN \
                 (SELECT id FROM connections WHERE integration || '' = ? AND status || '' = 'active' \
                  AND (lease_owner IS NULL OR lease_until < ?) AND expires_at + 0 < ? \
                  AND id IN ({marks}) ORDER BY expires_at LIMIT ?{skip}) RETURNING id"
            );
            let statement = q(&statement);
            let mut claim = sqlx::query_scalar::<_, String>(&statement)
                .bind(c.owner)
                .bind(c.until)
                .bind(c.integration)
                .bind(c.now)
                .bind(c.horizon);
            for id in c.ids {
                claim = claim.bind(id);
            }
            let claimed = claim.bind(room).fetch_all(&mut *tx).await.map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(claimed)
        }
    };
}

pub(super) use lease_statements;
