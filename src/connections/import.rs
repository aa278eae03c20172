//! Importing connections the app obtained itself: one `PUT`, or a batch (a migration from
//! another system) written in chunks of [`CHUNK`] rows, each chunk in one transaction, so an
//! import is fast on SQLite and a failure never leaves a row half-written.
//!
//! Owns checking and sealing what the app gives; which kinds an integration accepts is
//! checked before (`credential::check`), and storing is the store's.

use super::credential::{Held, Kind};
use super::token;
use super::{
    active_row, to_active, validate_id, ConnectionError, ConnectionView, Connections, Credentials,
    PutConnection,
};
use crate::store::{ConnectionRow, Transition};
use crate::time::{now_ms, parse_rfc3339};

/// Rows per transaction in a batch import.
pub const CHUNK: usize = 1000;

/// One item of a batch: the connection id, what to store, and its checked secret.
pub type Item = (String, PutConnection, Option<Held>);

impl Connections {
    /// Creates or replaces a connection. A connection that was not `active` becomes active
    /// again, recorded as a `credentials_updated` transition. `held` is the kind's secret,
    /// checked by [`super::credential::check`] against what the integration accepts.
    pub async fn put(
        &self,
        id: &str,
        req: PutConnection,
        held: Option<Held>,
    ) -> Result<ConnectionView, ConnectionError> {
        let (row, transition) = self.prepare(id, req, held, now_ms()).await?;
        let stored = self.store.put(row, transition.clone()).await?;
        self.count_transition(&stored.integration, transition.as_ref());
        self.settle(&stored)
    }

    /// A batch of [`Connections::put`]s: one answer per item, in order. Items that fail their
    /// checks are answered alone; the others are written [`CHUNK`] at a time, all or none. A
    /// migration does not fill the cache: written rows are only dropped from it.
    pub async fn put_many(&self, items: Vec<Item>) -> Vec<Result<(), ConnectionError>> {
        let now = now_ms();
        let mut answers: Vec<Option<Result<(), ConnectionError>>> =
            (0..items.len()).map(|_| None).collect();
        let mut ready: Vec<(usize, ConnectionRow, Option<Transition>)> = Vec::new();
        for (i, (id, req, held)) in items.into_iter().enumerate() {
            match self.prepare(&id, req, held, now).await {
                Ok((row, t)) => ready.push((i, row, t)),
                Err(e) => answers[i] = Some(Err(e)),
            }
        }
        while !ready.is_empty() {
            let rest = ready.split_off(ready.len().min(CHUNK));
            let chunk = std::mem::replace(&mut ready, rest);
            let (indices, rows): (Vec<usize>, Vec<_>) =
                chunk.into_iter().map(|(i, r, t)| (i, (r, t))).unzip();
            let transitions: Vec<Option<Transition>> =
                rows.iter().map(|(_, t)| t.clone()).collect();
            match self.store.put_many(rows).await {
                Ok(stored) => {
                    for ((i, row), t) in indices.into_iter().zip(&stored).zip(&transitions) {
                        self.count_transition(&row.integration, t.as_ref());
                        self.forget(&row.id);
                        answers[i] = Some(Ok(()));
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    for i in indices {
                        answers[i] = Some(Err(ConnectionError::Invalid(format!(
                            "not stored (its chunk failed as a whole): {why}"
                        ))));
                    }
                }
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every item is answered"))
            .collect()
    }

    /// The sealed row a `PUT` makes, and the transition it records.
    async fn prepare(
        &self,
        id: &str,
        req: PutConnection,
        held: Option<Held>,
        now: i64,
    ) -> Result<(ConnectionRow, Option<Transition>), ConnectionError> {
        validate_id(id)?;
        let c = &req.credentials;
        let kind = c.kind.unwrap_or_default();
        if kind == Kind::Oauth2 && c.access_token.is_none() && c.refresh_token.is_none() {
            return Err(ConnectionError::Invalid(
                "credentials need an access_token or a refresh_token".into(),
            ));
        }
        let expires_at = expiry(c, now)?;
        let previous = self.store.get(id).await?;
        let mut row = active_row(id, &req.integration, previous.as_ref(), now);
        row.kind = kind.as_str().to_string();
        row.expires_at = expires_at;
        row.scopes = c.scopes.as_ref().map(|s| s.join(" ")).unwrap_or_default();
        row.metadata = serde_json::Value::Object(req.metadata);
        self.seal_into(&mut row, c.access_token.as_ref(), c.refresh_token.as_ref());
        self.seal_secret(&mut row, held.as_ref());
        Ok((row, to_active(previous.as_ref(), "credentials_updated")))
    }
}

/// When imported tokens expire: `expires_in` seconds from `now`, or `expires_at`, or unknown.
fn expiry(c: &Credentials, now: i64) -> Result<Option<i64>, ConnectionError> {
    Ok(match (c.expires_in, &c.expires_at) {
        (Some(_), Some(_)) => {
            return Err(ConnectionError::Invalid(
                "give credentials.expires_in or credentials.expires_at, not both".into(),
            ))
        }
        (Some(secs), None) if (0..=token::MAX_LIFETIME_SECS).contains(&secs) => {
            Some(now + secs * 1000)
        }
        (Some(_), None) => {
            return Err(ConnectionError::Invalid(format!(
                "credentials.expires_in must be 0 to {} seconds (ten years)",
                token::MAX_LIFETIME_SECS
            )))
        }
        (None, Some(at)) => Some(parse_rfc3339(at).ok_or_else(|| {
            ConnectionError::Invalid(
                "credentials.expires_at is not an RFC 3339 time (2026-11-22T06:40:47Z)".into(),
            )
        })?),
        (None, None) => None,
    })
}
