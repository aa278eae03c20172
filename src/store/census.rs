//! The counts behind the gauges (connections by integration and status, the callback
//! backlog), for both SQL stores. Read every few seconds, whatever the store's size: each is
//! one aggregate over an index (`connections_by_integration`, `deliveries_due`).
//!
//! Expanded inside `sql_store!`, which defines `Pool`, `q` (placeholders) and the decoders.

/// Defines `counts` and `backlog` for one driver.
macro_rules! census_statements {
    () => {
        async fn counts(pool: &Pool) -> Result<Vec<(String, Status, i64)>, StoreError> {
            let rows = sqlx::query(&q(
                "SELECT integration, status, COUNT(*) AS n FROM connections \
                 GROUP BY integration, status",
            ))
            .fetch_all(pool)
            .await
            .map_err(db)?;
            rows.iter().map(count_from_row).collect()
        }

        async fn backlog(pool: &Pool) -> Result<(i64, Option<i64>), StoreError> {
            let row = sqlx::query(&q(
                "SELECT COUNT(*) AS n, MIN(e.created_at) AS oldest FROM deliveries d \
                 JOIN events e ON e.seq = d.event_seq WHERE d.status = 'pending'",
            ))
            .fetch_one(pool)
            .await
            .map_err(db)?;
            let n: i64 = row.try_get("n").map_err(db)?;
            let oldest: Option<i64> = row.try_get("oldest").map_err(db)?;
            Ok((n, oldest))
        }
    };
}

pub(super) use census_statements;
