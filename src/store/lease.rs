//! Refresh leases for both SQL stores: one refresher per connection across every process, and
//! at most `cap` live leases per integration fleet-wide (the limit on concurrent token calls).
//!
//! Owns the lease columns, the lease slots and the claim of due work. Must not decide *when* a
//! connection is due (the refresher's timing does) nor what a refresh writes. Expanded inside
//! `sql_store!`, which defines `Db`, `Pool` and `q` (placeholders).
//!
//! The cap is kept as `cap` slots per integration (migration 0008): every lease takes a free
//! slot, and a slot is live while its connection's lease is still its owner's and unexpired.
//! Releasing a lease (or writing a refresh's result, which clears it) frees the slot without
//! touching it. Counting costs `cap` primary-key lookups whatever the store's size; the
//! partial index it replaces bloated on PostgreSQL with an entry per lease ever taken.

/// Defines `acquire_lease`, `release_lease` and `claim` for one driver.
macro_rules! lease_statements {
    () => {
        /// Creates the integration's slots below `cap` that do not exist yet (a raised cap
        /// adds slots; a lowered one leaves the extra slots unread).
        const ENSURE_SLOTS: &str = "WITH RECURSIVE n(slot) AS \
             (SELECT 0 UNION ALL SELECT slot + 1 FROM n WHERE slot + 1 < ?) \
             INSERT INTO lease_slots (integration, slot) SELECT ?, slot FROM n WHERE true \
             ON CONFLICT DO NOTHING";

        /// Free slots of an integration below the cap, lowest first; the slot `id` holds (if
        /// any) first of all, so renewing a lease does not take a second slot.
        const FREE_SLOTS: &str = "SELECT s.slot FROM lease_slots s \
             WHERE s.integration = ? AND s.slot < ? AND NOT EXISTS (SELECT 1 FROM connections c \
               WHERE c.id = s.connection AND c.lease_owner = s.owner AND c.lease_until >= ? \
               AND c.id != ?) \
             ORDER BY CASE WHEN s.connection = ? THEN 0 ELSE 1 END, s.slot LIMIT ?";

        /// Up to `max` free slots of `integration` (`id`'s own first, when it holds one).
        async fn free_slots(
            tx: &mut Tx<'_>,
            integration: &str,
            id: &str,
            (now, cap, max): (i64, usize, usize),
        ) -> Result<Vec<i64>, StoreError> {
            sqlx::query(&q(ENSURE_SLOTS))
                .bind(cap as i64)
                .bind(integration)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            let slots: Vec<i32> = sqlx::query_scalar(&q(FREE_SLOTS))
                .bind(integration)
                .bind(cap as i64)
                .bind(now)
                .bind(id)
                .bind(id)
                .bind(max as i64)
                .fetch_all(&mut **tx)
                .await
                .map_err(db)?;
            Ok(slots.into_iter().map(i64::from).collect())
        }

        async fn take_slot(
            tx: &mut Tx<'_>,
            integration: &str,
            slot: i64,
            (id, owner): (&str, &str),
        ) -> Result<(), StoreError> {
            sqlx::query(&q(
                "UPDATE lease_slots SET connection = ?, owner = ? WHERE integration = ? AND slot = ?",
            ))
            .bind(id)
            .bind(owner)
            .bind(integration)
            .bind(slot as i32)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
            Ok(())
        }

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
            // The dialect's lock (if any) keeps concurrent writers from taking one free slot
            // each for more leases than the cap (SQLite runs writers one at a time).
            lock_leases(&mut tx, &integration).await?;
            let Some(&slot) = free_slots(&mut tx, &integration, id, (now, cap, 1))
                .await?
                .first()
            else {
                return Ok(false);
            };
            let n = sqlx::query(&q(
                "UPDATE connections SET lease_owner = ?, lease_until = ? \
                 WHERE id = ? AND (lease_owner IS NULL OR lease_until < ? OR lease_owner = ?)",
            ))
            .bind(owner)
            .bind(until)
            .bind(id)
            .bind(now)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
            if n == 0 {
                return Ok(false); // held elsewhere; dropping `tx` rolls back
            }
            take_slot(&mut tx, &integration, slot, (id, owner)).await?;
            tx.commit().await.map_err(db)?;
            Ok(true)
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

        /// Frees the slot too: it is live only while the connection's lease is its owner's.
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
            let slots = free_slots(&mut tx, c.integration, "", (c.now, c.cap, c.max)).await?;
            if slots.is_empty() {
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
            // Not kept prepared: its text changes with the number of ids, and each connection
            // would cache up to 100 variants of a statement with hundreds of parameters.
            let mut claim = sqlx::query_scalar::<_, String>(&statement)
                .persistent(false)
                .bind(c.owner)
                .bind(c.until)
                .bind(c.integration)
                .bind(c.now)
                .bind(c.horizon);
            for id in c.ids {
                claim = claim.bind(id);
            }
            let claimed = claim
                .bind(slots.len() as i64)
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
            for (id, &slot) in claimed.iter().zip(&slots) {
                take_slot(&mut tx, c.integration, slot, (id, c.owner)).await?;
            }
            tx.commit().await.map_err(db)?;
            Ok(claimed)
        }
    };
}

pub(super) use lease_statements;
