//! The transition log and the outbox writes it causes, for both SQL stores: a status change
//! writes its transition, its events and their deliveries in the caller's transaction.
//!
//! Owns the storage of config-error episodes (one row per integration while it lasts). Must not
//! decide what a transition means: `store::events` says which transitions move an episode and
//! which events are due; this only stores and counts. Expanded inside `sql_store!`, which
//! defines `Db`, `Tx` and `q` (placeholders).

/// Defines `record` (transition + events + deliveries) and its helpers for one driver.
macro_rules! log_statements {
    () => {
        /// Writes the transition and the events it causes, in the caller's transaction.
        async fn record(
            tx: &mut Tx<'_>,
            outbox: &Outbox,
            row: &ConnectionRow,
            t: &Transition,
        ) -> Result<(), StoreError> {
            let now = row.updated_at;
            let down_since: Option<i64> = match t.from {
                Some(from) => sqlx::query_scalar(&q(
                    "SELECT at FROM transitions WHERE connection_id = ? AND to_status = ? \
                     ORDER BY seq DESC LIMIT 1",
                ))
                .bind(&row.id)
                .bind(from.as_str())
                .fetch_optional(&mut **tx)
                .await
                .map_err(db)?,
                None => None,
            };
            let mut out: Vec<Event> = events::for_transition(row, t, now, down_since)
                .into_iter()
                .collect();
            let change = match events::episode_move(t) {
                Some(EpisodeMove::Enter) => open_episode(tx, &row.integration, now).await?,
                Some(EpisodeMove::Leave) => close_episode(tx, &row.integration).await?,
                None => None,
            };
            out.extend(change.map(|c| events::episode_event(&row.integration, c, t, now)));
            for event in &out {
                write_event(tx, outbox, event, now).await?;
            }
            record_transition(tx, row, t).await
        }

        /// Opens the integration's episode if none is open: `Opened` only for the opener.
        async fn open_episode(
            tx: &mut Tx<'_>,
            integration: &str,
            now: i64,
        ) -> Result<Option<EpisodeChange>, StoreError> {
            let started = sqlx::query(&q(
                "INSERT INTO config_episodes (integration, since) VALUES (?, ?) \
                 ON CONFLICT (integration) DO NOTHING",
            ))
            .bind(integration)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(db)?
            .rows_affected();
            if started != 1 {
                return Ok(None);
            }
            let affected = in_config_error(tx, integration).await?;
            Ok(Some(EpisodeChange::Opened { affected }))
        }

        /// Closes the integration's episode once none of its connections is in `config_error`.
        async fn close_episode(
            tx: &mut Tx<'_>,
            integration: &str,
        ) -> Result<Option<EpisodeChange>, StoreError> {
            if let Some(lock) = <Db as Dialect>::LOCK_EPISODE {
                sqlx::query(&q(lock))
                    .bind(integration)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db)?;
            }
            if in_config_error(tx, integration).await? != 0 {
                return Ok(None);
            }
            let since: Option<i64> = sqlx::query_scalar(&q(
                "DELETE FROM config_episodes WHERE integration = ? RETURNING since",
            ))
            .bind(integration)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db)?;
            Ok(since.map(|since| EpisodeChange::Closed { since }))
        }

        async fn in_config_error(tx: &mut Tx<'_>, integration: &str) -> Result<i64, StoreError> {
            sqlx::query_scalar(&q(
                "SELECT COUNT(*) FROM connections WHERE integration = ? AND status = 'config_error'",
            ))
            .bind(integration)
            .fetch_one(&mut **tx)
            .await
            .map_err(db)
        }

        /// Writes the event and one pending delivery per endpoint that wants it.
        async fn write_event(
            tx: &mut Tx<'_>,
            outbox: &Outbox,
            event: &Event,
            now: i64,
        ) -> Result<(), StoreError> {
            let seq: i64 = sqlx::query_scalar(&q(
                "INSERT INTO events (id, type, connection_id, integration, payload, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?) RETURNING seq",
            ))
            .bind(&event.id)
            .bind(event.kind)
            .bind(&event.connection_id)
            .bind(&event.integration)
            .bind(&event.payload)
            .bind(now)
            .fetch_one(&mut **tx)
            .await
            .map_err(db)?;
            for endpoint in outbox.endpoints_for(event.kind) {
                sqlx::query(&q(
                    "INSERT INTO deliveries (event_seq, endpoint, status, attempts, window_start, \
                     next_attempt_at) VALUES (?, ?, 'pending', 0, ?, ?)",
                ))
                .bind(seq)
                .bind(endpoint)
                .bind(now)
                .bind(now)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            }
            Ok(())
        }

        async fn record_transition(
            tx: &mut Tx<'_>,
            row: &ConnectionRow,
            t: &Transition,
        ) -> Result<(), StoreError> {
            sqlx::query(&q(
                "INSERT INTO transitions (connection_id, integration, from_status, to_status, \
                 cause, detail, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ))
            .bind(&row.id)
            .bind(&row.integration)
            .bind(t.from.map(Status::as_str))
            .bind(t.to.as_str())
            .bind(&t.cause)
            .bind(t.detail.to_string())
            .bind(row.updated_at)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
            Ok(())
        }
    };
}

pub(super) use log_statements;
