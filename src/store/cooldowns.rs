//! Rate-limit cooldowns for both SQL stores: one row per rate-limited connection (or
//! integration), the later end kept, ended rows swept when a new one is written.
//!
//! Owns their storage only: what starts a cooldown and how long it may last is the proxy's
//! (`proxy::ratelimit`). Expanded inside `sql_store!`, which defines `Pool` and `q`.

/// Defines `put_cooldown` and `cooldowns` for one driver.
macro_rules! cooldown_statements {
    () => {
        async fn put_cooldown(pool: &Pool, c: &Cooldown) -> Result<(), StoreError> {
            sqlx::query(&q(
                "INSERT INTO ratelimit_cooldowns (integration, connection_id, until_ms) \
                 VALUES (?, ?, ?) ON CONFLICT (integration, connection_id) DO UPDATE \
                 SET until_ms = excluded.until_ms \
                 WHERE excluded.until_ms > ratelimit_cooldowns.until_ms",
            ))
            .bind(&c.integration)
            .bind(c.connection.as_deref().unwrap_or(""))
            .bind(c.until)
            .execute(pool)
            .await
            .map_err(db)?;
            sqlx::query(&q("DELETE FROM ratelimit_cooldowns WHERE until_ms <= ?"))
                .bind($crate::time::now_ms())
                .execute(pool)
                .await
                .map_err(db)?;
            Ok(())
        }

        async fn cooldowns(pool: &Pool, now: i64) -> Result<Vec<Cooldown>, StoreError> {
            let rows = sqlx::query(&q(
                "SELECT integration, connection_id, until_ms FROM ratelimit_cooldowns \
                 WHERE until_ms > ?",
            ))
            .bind(now)
            .fetch_all(pool)
            .await
            .map_err(db)?;
            rows.iter()
                .map(|r| {
                    let connection: String = r.try_get("connection_id").map_err(db)?;
                    Ok(Cooldown {
                        integration: r.try_get("integration").map_err(db)?,
                        connection: Some(connection).filter(|c| !c.is_empty()),
                        until: r.try_get("until_ms").map_err(db)?,
                    })
                })
                .collect()
        }
    };
}

pub(super) use cooldown_statements;
